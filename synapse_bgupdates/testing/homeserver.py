"""Launch real Synapse homeserver processes for end-to-end tests and demos.

A ``HomeserverProcess`` runs ``python -m synapse.app.homeserver`` in a scratch
directory, listening for HTTP on a free port of 127.0.0.1, on a SQLite or
PostgreSQL database of its own. It offers a small JSON client, user and room
helpers, and direct access to its database.

A fresh database makes Synapse 1.163.2 queue 56 background updates of its own.
With Synapse's default one-second sleep between batches they take about a
minute, so tests would see them in the status API. ``prepare_template`` runs
them to completion once, and homeservers created with ``template=`` start from
a copy of that database::

    with prepare_template(tmp / "template", DatabaseKind.SQLITE) as template:
        with HomeserverProcess(tmp / "hs", template=template) as hs:
            user_id, token = hs.register_user("alice", admin=True)
"""

from __future__ import annotations

import http.client
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from synapse_bgupdates.testing.client import HomeserverClient
from synapse_bgupdates.testing.databases import (
    Database,
    DatabaseKind,
    PostgresServer,
    create_database,
    database_kind_from_env,
)
from synapse_bgupdates.testing.homeserver_config import (
    SERVER_NAME,
    HomeserverFiles,
    build_homeserver_config,
    build_log_config,
    generate_signing_key,
    validate_modules,
    write_yaml,
)

logger = logging.getLogger(__name__)

DEFAULT_STARTUP_TIMEOUT_S = 90.0
DEFAULT_STOP_TIMEOUT_S = 30.0
DEFAULT_BACKGROUND_UPDATES_TIMEOUT_S = 300.0

_POLL_INTERVAL_S = 0.1
_LOG_TAIL_LINES = 40

# The directory that contains the synapse_bgupdates package. The homeserver
# process gets it on PYTHONPATH so that it loads modules from the same checkout
# as the tests, whether or not the package is installed.
_SOURCE_ROOT = Path(__file__).resolve().parents[2]


class HomeserverError(RuntimeError):
    """The homeserver process exited unexpectedly or did not become healthy."""


class HomeserverStartError(HomeserverError):
    """The homeserver process exited or did not become healthy during start-up."""


@dataclass(frozen=True)
class Template:
    """A homeserver database whose own background updates have all finished.

    Attributes:
        database: The prepared database. Copies are made from it, so no
            homeserver may run on it.
        signing_key_path: Signing key of the homeserver that prepared it.
        registration_shared_secret: Shared secret of that homeserver.
    """

    database: Database
    signing_key_path: Path
    registration_shared_secret: str

    def cleanup(self) -> None:
        """Drop the prepared database."""
        self.database.drop()

    def __enter__(self) -> Template:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.cleanup()


def find_free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    NOTE: Another process can take the port before the homeserver binds it.
    The homeserver then fails to start with "Address already in use".
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _tail(path: Path, lines: int) -> str:
    if not path.exists():
        return f"({path} does not exist)"
    content = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(content[-lines:]) or f"({path} is empty)"


def _kill_leftover(process: subprocess.Popen[bytes]) -> None:
    # Runs when a HomeserverProcess is garbage collected or the interpreter
    # exits while its homeserver is still running.
    if process.poll() is None:
        logger.warning("Killing leftover homeserver process %d", process.pid)
        process.kill()
        process.wait()


class HomeserverProcess(HomeserverClient):
    """A Synapse homeserver running as a child process, for tests.

    The database and the port are set up at the first ``start()`` and kept for
    later restarts. ``close()`` stops the process and drops the database, but
    the logs and configuration stay in the scratch directory for inspection.

    Use it as a context manager, which starts the homeserver on entry and
    closes it on exit.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        template: Template | None = None,
        database_kind: DatabaseKind | None = None,
        modules: Sequence[Mapping[str, Any]] = (),
        extra_config: Mapping[str, Any] | None = None,
        postgres: PostgresServer | None = None,
        startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
    ) -> None:
        """Configure a homeserver without starting it.

        Args:
            workdir: Scratch directory for the configuration, logs, media and
                the SQLite database. Created if missing.
            template: A prepared database to start from, with its signing key
                and shared secret. A fresh database is created when None.
            database_kind: The database engine. Defaults to the template's
                engine, or else to ``database_kind_from_env()``.
            modules: Entries for the ``modules`` option, each like
                ``{"module": "package.Class", "config": {...}}``.
            extra_config: Options merged on top of the generated
                homeserver.yaml, mappings key by key.
            postgres: The PostgreSQL server; ``PostgresServer()`` when None.
            startup_timeout_s: Seconds to wait for ``/health`` at each start.

        Raises:
            ValueError: ``database_kind`` differs from the template's engine,
                or a ``modules`` entry is invalid.
        """
        self.files = HomeserverFiles(Path(workdir))
        self._template = template
        self._database_kind = self._choose_database_kind(template, database_kind)
        self._modules = validate_modules(modules)
        self._extra_config = dict(extra_config or {})
        self._postgres = postgres or PostgresServer()
        self._startup_timeout_s = startup_timeout_s

        self._registration_shared_secret = (
            template.registration_shared_secret
            if template is not None
            else secrets.token_urlsafe(32)
        )
        self._database: Database | None = None
        self._port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._console: IO[bytes] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    @staticmethod
    def _choose_database_kind(
        template: Template | None, requested: DatabaseKind | None
    ) -> DatabaseKind:
        if template is None:
            return requested or database_kind_from_env()
        if requested is not None and requested is not template.database.kind:
            raise ValueError(
                f"Invalid database_kind {requested.value!r}: the template uses "
                f"{template.database.kind.value!r}"
            )
        return template.database.kind

    # Properties

    @property
    def database_kind(self) -> DatabaseKind:
        """The database engine of this homeserver."""
        return self._database_kind

    @property
    def database(self) -> Database:
        """The homeserver's database, which exists from the first ``start()``."""
        if self._database is None:
            raise RuntimeError(f"Homeserver in {self.files.workdir} has not started")
        return self._database

    @property
    def port(self) -> int:
        """TCP port of the HTTP listener, chosen at the first ``start()``."""
        if self._port is None:
            raise RuntimeError(f"Homeserver in {self.files.workdir} has not started")
        return self._port

    @property
    def base_url(self) -> str:
        """URL of the HTTP listener, like ``http://127.0.0.1:8008``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def server_name(self) -> str:
        """The homeserver's server name."""
        return SERVER_NAME

    @property
    def registration_shared_secret(self) -> str:
        """Secret for the shared-secret registration admin API."""
        return self._registration_shared_secret

    @property
    def pid(self) -> int | None:
        """Process id of the running homeserver, or None when it is stopped."""
        return self._process.pid if self.running and self._process else None

    @property
    def running(self) -> bool:
        """Whether the homeserver process has started and not exited."""
        return self._process is not None and self._process.poll() is None

    # Configuration

    def configure(
        self,
        *,
        modules: Sequence[Mapping[str, Any]] | None = None,
        extra_config: Mapping[str, Any] | None = None,
    ) -> None:
        """Replace the modules or extra options for the next ``start()``.

        Args:
            modules: New entries for the ``modules`` option; unchanged if None.
            extra_config: New extra options; unchanged if None.

        Raises:
            RuntimeError: The homeserver is running.
        """
        if self.running:
            raise RuntimeError("Stop the homeserver before changing its config")
        if modules is not None:
            self._modules = validate_modules(modules)
        if extra_config is not None:
            self._extra_config = dict(extra_config)

    def config(self) -> dict[str, Any]:
        """Return the homeserver.yaml contents that the next start uses.

        Raises:
            RuntimeError: The homeserver has never started, so it has no
                database or port yet.
        """
        return build_homeserver_config(
            files=self.files,
            port=self.port,
            database=self.database.synapse_config(),
            registration_shared_secret=self._registration_shared_secret,
            modules=self._modules,
            extra_config=self._extra_config,
        )

    # Lifecycle

    def start(self) -> None:
        """Start the process and wait until ``GET /health`` returns 200.

        Raises:
            RuntimeError: The homeserver is already running.
            HomeserverStartError: The process exited or did not become healthy
                within the start-up timeout; the message has the log's tail.
        """
        if self.running:
            raise RuntimeError(f"Homeserver on port {self.port} is already running")
        if self._process is not None:
            # The previous process exited by itself.
            self._forget_process()
        if self._database is None:
            self._set_up()

        write_yaml(self.files.config, self.config())
        started_at = time.monotonic()
        process = self._launch()
        try:
            self._wait_until_healthy(process)
        except BaseException:
            self.kill()
            raise
        logger.info(
            "Homeserver %d on port %d started in %.1f s",
            self.pid,
            self.port,
            time.monotonic() - started_at,
        )

    def stop(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Send SIGTERM to the process and wait; SIGKILL it after ``timeout_s``.

        Does nothing when the homeserver is not running.
        """
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "Homeserver %d did not exit %.0f s after SIGTERM; killing it",
                    process.pid,
                    timeout_s,
                )
                process.kill()
                process.wait()
        logger.info("Homeserver %d exited with code %s", process.pid, process.poll())
        self._forget_process()

    def kill(self) -> None:
        """Send SIGKILL to the process, as a crash would end it, and wait."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
            process.wait()
            logger.info("Homeserver %d killed", process.pid)
        self._forget_process()

    def restart(self) -> None:
        """Stop the homeserver and start it again on the same database."""
        self.stop()
        self.start()

    def close(self, *, keep_database: bool = False) -> None:
        """Stop the homeserver and drop its database.

        Args:
            keep_database: Leave the database in place, for example to use it
                as a template.
        """
        self.stop()
        if self._database is not None and not keep_database:
            self._database.drop()

    def __enter__(self) -> HomeserverProcess:
        # __exit__ does not run when __enter__ raises, so clean up here.
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _set_up(self) -> None:
        """Create the scratch directory, signing key, database and port."""
        self.files.workdir.mkdir(parents=True, exist_ok=True)
        self.files.media_store.mkdir(exist_ok=True)
        write_yaml(self.files.log_config, build_log_config(self.files.log))

        if self._template is not None:
            shutil.copyfile(self._template.signing_key_path, self.files.signing_key)
            self._database = self._template.database.copy(self.files.workdir)
        else:
            generate_signing_key(self.files.signing_key)
            self._database = create_database(
                self._database_kind, self.files.workdir, self._postgres
            )
        self._port = find_free_port()

    def _launch(self) -> subprocess.Popen[bytes]:
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(_SOURCE_ROOT), environment.get("PYTHONPATH")])
        )
        command = [
            sys.executable,
            "-m",
            "synapse.app.homeserver",
            "--config-path",
            str(self.files.config),
        ]
        self._console = self.files.console_log.open("ab")
        process = subprocess.Popen(
            command,
            cwd=self.files.workdir,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=self._console,
            stderr=subprocess.STDOUT,
        )
        self._process = process
        self._finalizer = weakref.finalize(self, _kill_leftover, process)
        logger.info("Started homeserver %d in %s", process.pid, self.files.workdir)
        return process

    def _wait_until_healthy(self, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self._startup_timeout_s
        while not self._is_healthy():
            exit_code = process.poll()
            if exit_code is not None:
                raise HomeserverStartError(
                    f"Homeserver in {self.files.workdir} exited with code "
                    f"{exit_code} during start-up.\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise HomeserverStartError(
                    f"Timed out after {self._startup_timeout_s:g} s waiting for "
                    f"{self.base_url}/health to return 200.\n{self.log_tail()}"
                )
            time.sleep(_POLL_INTERVAL_S)

    def _is_healthy(self) -> bool:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2.0)
        try:
            connection.request("GET", "/health")
            return connection.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            connection.close()

    def _forget_process(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
        if self._console is not None:
            self._console.close()
        self._process = None
        self._console = None
        self._finalizer = None

    # Logs and background updates

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """Return the last lines of the homeserver log and of its console output."""
        return (
            f"--- last lines of {self.files.log} ---\n"
            f"{_tail(self.files.log, lines)}\n"
            f"--- last lines of {self.files.console_log} ---\n"
            f"{_tail(self.files.console_log, lines)}"
        )

    def wait_for_background_updates(
        self, timeout_s: float = DEFAULT_BACKGROUND_UPDATES_TIMEOUT_S
    ) -> None:
        """Wait until Synapse's ``background_updates`` table is empty.

        Raises:
            HomeserverError: The process exited while waiting.
            TimeoutError: Updates were still queued after ``timeout_s``.
        """
        started_at = time.monotonic()
        deadline = started_at + timeout_s
        while True:
            remaining = self.db_query("SELECT update_name FROM background_updates")
            if not remaining:
                break
            if not self.running:
                raise HomeserverError(
                    f"Homeserver in {self.files.workdir} exited while "
                    f"{len(remaining)} background updates were queued.\n"
                    f"{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                names = ", ".join(sorted(str(row[0]) for row in remaining))
                raise TimeoutError(
                    f"Timed out after {timeout_s:g} s waiting for background "
                    f"updates; still queued: {names}"
                )
            time.sleep(_POLL_INTERVAL_S * 5)
        logger.info(
            "Background updates finished after %.1f s", time.monotonic() - started_at
        )

    # Database access

    def db_execute(self, sql_text: str, params: Sequence[Any] = ()) -> None:
        """Run one statement on the homeserver's database and commit it.

        Args:
            sql_text: The statement, with ``?`` placeholders on both engines.
            params: Values for the placeholders.
        """
        self.database.execute(sql_text, params)

    def db_query(
        self, sql_text: str, params: Sequence[Any] = ()
    ) -> list[tuple[Any, ...]]:
        """Run one query on the homeserver's database and return its rows.

        Args:
            sql_text: The query, with ``?`` placeholders on both engines.
            params: Values for the placeholders.
        """
        return self.database.query(sql_text, params)


def prepare_template(
    workdir: Path,
    database_kind: DatabaseKind | None = None,
    *,
    postgres: PostgresServer | None = None,
    timeout_s: float = DEFAULT_BACKGROUND_UPDATES_TIMEOUT_S,
) -> Template:
    """Create a database on which Synapse's own background updates have run.

    Starts a homeserver with no modules on a fresh database, waits until its
    ``background_updates`` table is empty and stops it.

    Args:
        workdir: Scratch directory of the preparing homeserver; the SQLite
            template and the signing key stay here.
        database_kind: The database engine; ``database_kind_from_env()`` when
            None.
        postgres: The PostgreSQL server; ``PostgresServer()`` when None.
        timeout_s: Seconds to wait for the background updates.

    Returns:
        The template. The caller drops it with ``cleanup()``.

    Raises:
        HomeserverError: The homeserver failed to start or exited.
        TimeoutError: The background updates did not finish in time.
    """
    homeserver = HomeserverProcess(
        workdir, database_kind=database_kind, postgres=postgres
    )
    started_at = time.monotonic()
    try:
        homeserver.start()
        homeserver.wait_for_background_updates(timeout_s)
        homeserver.stop()
    except BaseException:
        homeserver.close()
        raise

    logger.info(
        "Prepared %s template database in %.1f s",
        homeserver.database_kind.value,
        time.monotonic() - started_at,
    )
    return Template(
        database=homeserver.database,
        signing_key_path=homeserver.files.signing_key,
        registration_shared_secret=homeserver.registration_shared_secret,
    )
