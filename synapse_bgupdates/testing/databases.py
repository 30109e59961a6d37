"""Scratch databases for test homeservers: SQLite files and PostgreSQL databases.

Each homeserver started by the test launcher gets a database of its own, created
empty or copied from a prepared template. Tests also read and change that
database directly, with short-lived connections and ``?`` placeholders on both
engines.
"""

from __future__ import annotations

import abc
import enum
import logging
import os
import secrets
import sqlite3
from collections.abc import Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

logger = logging.getLogger(__name__)

TEST_DATABASE_ENV_VAR = "SYNAPSE_BGUPDATES_TEST_DB"
"""Environment variable that selects the database engine of the test suite."""

DATABASE_NAME_PREFIX = "bgupdates_test_"
"""Prefix of every PostgreSQL database that these helpers create and drop."""

SQLITE_FILE_NAME = "homeserver.db"


class DatabaseKind(enum.Enum):
    """A database engine that Synapse supports."""

    SQLITE = "sqlite"
    POSTGRES = "postgres"


def database_kind_from_env(environ: Mapping[str, str] | None = None) -> DatabaseKind:
    """Read the test database engine from ``SYNAPSE_BGUPDATES_TEST_DB``.

    Args:
        environ: The environment to read; ``os.environ`` when None.

    Returns:
        The engine named by the variable, or SQLite when it is unset or empty.

    Raises:
        ValueError: The variable names an unknown engine.
    """
    if environ is None:
        environ = os.environ
    value = environ.get(TEST_DATABASE_ENV_VAR, "").strip().lower()
    if not value:
        return DatabaseKind.SQLITE
    try:
        return DatabaseKind(value)
    except ValueError:
        valid = ", ".join(repr(kind.value) for kind in DatabaseKind)
        raise ValueError(
            f"Invalid {TEST_DATABASE_ENV_VAR}={value!r}: expected one of {valid}"
        ) from None


def to_pyformat(sql_text: str) -> str:
    """Convert a query with ``?`` placeholders to psycopg2's ``%s`` style.

    psycopg2 applies %-formatting to the whole query text whenever parameters
    are passed, so every literal ``%`` is doubled. A ``?`` inside a quoted
    string or identifier stays as it is.

    Args:
        sql_text: The query, with ``?`` placeholders.

    Returns:
        The query for ``cursor.execute(query, params)`` in psycopg2.
    """
    converted: list[str] = []
    open_quote: str | None = None
    for char in sql_text:
        if char == "%":
            converted.append("%%")
        elif open_quote is not None:
            # A doubled quote inside a literal closes and reopens it, which
            # leaves the state correct without special handling.
            if char == open_quote:
                open_quote = None
            converted.append(char)
        elif char in "'\"":
            open_quote = char
            converted.append(char)
        elif char == "?":
            converted.append("%s")
        else:
            converted.append(char)
    return "".join(converted)


class Database(abc.ABC):
    """A homeserver database that tests create, copy, query and drop."""

    kind: ClassVar[DatabaseKind]

    @abc.abstractmethod
    def synapse_config(self) -> dict[str, Any]:
        """Return the ``database`` section of homeserver.yaml for this database."""

    @abc.abstractmethod
    def copy(self, workdir: Path) -> Database:
        """Create a new database with the same content as this one.

        No homeserver may be using this database while it is copied.

        Args:
            workdir: Scratch directory of the homeserver that gets the copy.

        Returns:
            The new database.
        """

    @abc.abstractmethod
    def exists(self) -> bool:
        """Return whether the database exists."""

    @abc.abstractmethod
    def drop(self) -> None:
        """Delete the database. Dropping one that is already gone does nothing."""

    @abc.abstractmethod
    def _run(
        self, sql_text: str, params: Sequence[Any], fetch: bool
    ) -> list[tuple[Any, ...]]:
        """Run one statement in its own connection and transaction."""

    def execute(self, sql_text: str, params: Sequence[Any] = ()) -> None:
        """Run one statement and commit it.

        Args:
            sql_text: The statement, with ``?`` placeholders.
            params: Values for the placeholders.
        """
        self._run(sql_text, params, fetch=False)

    def query(self, sql_text: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one query and return all of its rows.

        Args:
            sql_text: The query, with ``?`` placeholders.
            params: Values for the placeholders.

        Returns:
            The rows, each as a tuple.
        """
        return self._run(sql_text, params, fetch=True)


@dataclass(frozen=True)
class SqliteDatabase(Database):
    """A SQLite database file.

    Attributes:
        path: The database file. Synapse creates it at its first start.
    """

    kind: ClassVar[DatabaseKind] = DatabaseKind.SQLITE

    path: Path

    @classmethod
    def in_workdir(cls, workdir: Path) -> SqliteDatabase:
        """Return the database file that a homeserver in ``workdir`` uses."""
        return cls(workdir / SQLITE_FILE_NAME)

    def synapse_config(self) -> dict[str, Any]:
        """Return the ``database`` section of homeserver.yaml for this file."""
        return {"name": "sqlite3", "args": {"database": str(self.path)}}

    def copy(self, workdir: Path) -> SqliteDatabase:
        """Copy the database file into ``workdir``.

        Synapse keeps SQLite in write-ahead-log mode, so copying the main file
        alone could miss committed pages. The backup API copies those too.

        Raises:
            FileNotFoundError: This database file does not exist.
            FileExistsError: ``workdir`` already has a database file.
        """
        if not self.path.exists():
            raise FileNotFoundError(f"SQLite database {self.path} does not exist")
        target = SqliteDatabase.in_workdir(workdir)
        if target.path.exists():
            raise FileExistsError(f"SQLite database {target.path} already exists")

        with (
            closing(sqlite3.connect(self.path)) as source,
            closing(sqlite3.connect(target.path)) as destination,
        ):
            source.backup(destination)
        logger.info("Copied SQLite database %s to %s", self.path, target.path)
        return target

    def exists(self) -> bool:
        """Return whether the database file exists."""
        return self.path.exists()

    def drop(self) -> None:
        """Delete the database file and its write-ahead-log files."""
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        logger.info("Deleted SQLite database %s", self.path)

    def _run(
        self, sql_text: str, params: Sequence[Any], fetch: bool
    ) -> list[tuple[Any, ...]]:
        # The timeout waits out the homeserver's own write transactions.
        with closing(sqlite3.connect(self.path, timeout=30.0)) as connection:
            cursor = connection.execute(sql_text, tuple(params))
            rows = [tuple(row) for row in cursor.fetchall()] if fetch else []
            connection.commit()
        return rows


@dataclass(frozen=True)
class PostgresServer:
    """Address and superuser of the PostgreSQL server that tests use.

    The defaults match a local server with trust authentication.

    Attributes:
        host: Host name or address of the server.
        port: TCP port of the server.
        user: A role that may create and drop databases.
        maintenance_database: An existing database to connect to when creating
            and dropping others.
    """

    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "postgres"
    maintenance_database: str = "postgres"

    def connect(self, database: str | None = None) -> psycopg2.extensions.connection:
        """Open a connection to one database on this server.

        Args:
            database: The database; the maintenance database when None.

        Returns:
            A new connection, which the caller closes.
        """
        return psycopg2.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            dbname=database or self.maintenance_database,
            connect_timeout=10,
        )

    def run_maintenance(self, statement: sql.Composable) -> None:
        """Run one statement outside a transaction in the maintenance database.

        ``CREATE DATABASE`` and ``DROP DATABASE`` cannot run inside a
        transaction block, hence autocommit.
        """
        with closing(self.connect()) as connection:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(statement)


@dataclass(frozen=True)
class PostgresDatabase(Database):
    """A PostgreSQL database that these helpers created.

    Attributes:
        server: The server that has the database.
        name: The database name, which starts with ``DATABASE_NAME_PREFIX``.
    """

    kind: ClassVar[DatabaseKind] = DatabaseKind.POSTGRES

    server: PostgresServer
    name: str

    def __post_init__(self) -> None:
        # The prefix keeps drop() away from databases that tests did not make.
        if not self.name.startswith(DATABASE_NAME_PREFIX):
            raise ValueError(
                f"Invalid test database name {self.name!r}: "
                f"expected the prefix {DATABASE_NAME_PREFIX!r}"
            )

    @classmethod
    def create(
        cls, server: PostgresServer, template: PostgresDatabase | None = None
    ) -> PostgresDatabase:
        """Create a database with a new unique name.

        Synapse rejects a database whose collation is not ``C`` or whose
        encoding is not UTF-8, so both are set explicitly.

        Args:
            server: The server to create the database on.
            template: A database to copy. No connection to it may be open. The
                new database is empty when None.

        Returns:
            The new database.
        """
        database = cls(server, DATABASE_NAME_PREFIX + secrets.token_hex(6))
        source = template.name if template is not None else "template0"
        server.run_maintenance(
            sql.SQL(
                "CREATE DATABASE {} ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' "
                "TEMPLATE {}"
            ).format(sql.Identifier(database.name), sql.Identifier(source))
        )
        logger.info("Created PostgreSQL database %s from %s", database.name, source)
        return database

    def synapse_config(self) -> dict[str, Any]:
        """Return the ``database`` section of homeserver.yaml for this database."""
        return {
            "name": "psycopg2",
            "args": {
                "host": self.server.host,
                "port": self.server.port,
                "user": self.server.user,
                "database": self.name,
                "cp_min": 1,
                "cp_max": 5,
            },
        }

    def copy(self, workdir: Path) -> PostgresDatabase:
        """Create a database with this one as its template, ignoring ``workdir``."""
        return PostgresDatabase.create(self.server, template=self)

    def exists(self) -> bool:
        """Return whether the server has a database with this name."""
        connection = self.server.connect()
        with closing(connection), connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.name,))
            return cursor.fetchone() is not None

    def drop(self) -> None:
        """Drop the database, ending any connections that are still open."""
        self.server.run_maintenance(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(self.name)
            )
        )
        logger.info("Dropped PostgreSQL database %s", self.name)

    def _run(
        self, sql_text: str, params: Sequence[Any], fetch: bool
    ) -> list[tuple[Any, ...]]:
        connection = self.server.connect(self.name)
        # Entering the connection itself commits on success and rolls back on
        # error, but only closing() closes it.
        with closing(connection), connection, connection.cursor() as cursor:
            cursor.execute(to_pyformat(sql_text), tuple(params))
            rows = [tuple(row) for row in cursor.fetchall()] if fetch else []
        return rows


def create_database(
    kind: DatabaseKind, workdir: Path, postgres: PostgresServer | None = None
) -> Database:
    """Create an empty database for a homeserver that has not started yet.

    Args:
        kind: The database engine.
        workdir: Scratch directory of the homeserver; the SQLite file goes here.
        postgres: The PostgreSQL server; ``PostgresServer()`` when None.

    Returns:
        The database. A SQLite file only appears when Synapse first opens it.
    """
    if kind is DatabaseKind.SQLITE:
        return SqliteDatabase.in_workdir(workdir)
    return PostgresDatabase.create(postgres or PostgresServer())
