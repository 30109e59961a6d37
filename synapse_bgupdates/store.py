"""SQL for the module's queue of background updates.

The tables live in the homeserver's main database and are reached through
``ModuleApi.run_db_interaction``, so every function that takes ``txn`` runs
inside one database transaction. Placeholders are ``?``: Synapse's transaction
wrapper rewrites them for PostgreSQL.
"""

import enum
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

import attr

logger = logging.getLogger(__name__)

R = TypeVar("R")

QUEUED = "queued"
FAILED = "failed"


class Cursor(Protocol):
    """The part of a DB-API cursor that the store and handlers use."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    @property
    def rowcount(self) -> int: ...


class RunDbInteraction(Protocol):
    """The signature of ``ModuleApi.run_db_interaction``."""

    def __call__(
        self, desc: str, func: Callable[..., R], *args: Any
    ) -> Awaitable[R]: ...


class Dialect(enum.Enum):
    """The SQL engine behind the homeserver's main database."""

    SQLITE = "sqlite"
    POSTGRES = "postgres"


class UpdateAlreadyQueuedError(Exception):
    """An update of that name is already waiting in the queue."""

    def __init__(self, update_name: str):
        super().__init__(f"Update {update_name} is already queued")
        self.update_name = update_name


@attr.s(frozen=True, auto_attribs=True, kw_only=True)
class QueuedUpdate:
    """One row of the module's queue."""

    update_name: str
    progress: dict[str, Any]
    depends_on: str | None
    state: str
    failure_count: int
    last_error: str | None
    total_item_count: int
    total_duration_ms: float
    queued_ts_ms: int


@attr.s(frozen=True, auto_attribs=True)
class NewUpdate:
    """An update to add to the queue."""

    update_name: str
    progress: dict[str, Any] = attr.Factory(dict)
    depends_on: str | None = None


# PostgreSQL and SQLite spell an auto-incrementing key differently. The key
# gives the order in which updates were queued.
_QUEUE_ID_COLUMN = {
    Dialect.POSTGRES: "queue_id BIGSERIAL PRIMARY KEY",
    Dialect.SQLITE: "queue_id INTEGER PRIMARY KEY AUTOINCREMENT",
}

_QUEUE_COLUMNS = (
    "update_name, progress_json, depends_on, state, failure_count, last_error,"
    " total_item_count, total_duration_ms, queued_ts"
)


def create_tables_txn(txn: Cursor, dialect: Dialect) -> None:
    """Create the module's tables unless they exist."""
    txn.execute(
        f"""
        CREATE TABLE IF NOT EXISTS bgupdates_queue (
            {_QUEUE_ID_COLUMN[dialect]},
            update_name TEXT NOT NULL UNIQUE,
            progress_json TEXT NOT NULL,
            depends_on TEXT,
            state TEXT NOT NULL,
            failure_count INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            total_item_count BIGINT NOT NULL DEFAULT 0,
            total_duration_ms DOUBLE PRECISION NOT NULL DEFAULT 0,
            queued_ts BIGINT NOT NULL
        )
        """
    )
    txn.execute(
        """
        CREATE TABLE IF NOT EXISTS bgupdates_completed (
            update_name TEXT NOT NULL PRIMARY KEY,
            completed_ts BIGINT NOT NULL,
            total_item_count BIGINT NOT NULL,
            total_duration_ms DOUBLE PRECISION NOT NULL
        )
        """
    )


def get_queue_txn(txn: Cursor) -> list[QueuedUpdate]:
    """Return every queued or failed update, oldest first."""
    txn.execute(f"SELECT {_QUEUE_COLUMNS} FROM bgupdates_queue ORDER BY queue_id")
    return [_row_to_update(row) for row in txn.fetchall()]


def get_update_txn(txn: Cursor, update_name: str) -> QueuedUpdate | None:
    """Return the queue row of one update, or None if it is not queued."""
    txn.execute(
        f"SELECT {_QUEUE_COLUMNS} FROM bgupdates_queue WHERE update_name = ?",
        (update_name,),
    )
    row = txn.fetchone()
    return None if row is None else _row_to_update(row)


def _row_to_update(row: Sequence[Any]) -> QueuedUpdate:
    return QueuedUpdate(
        update_name=row[0],
        progress=json.loads(row[1]),
        depends_on=row[2],
        state=row[3],
        failure_count=row[4],
        last_error=row[5],
        total_item_count=row[6],
        total_duration_ms=float(row[7]),
        queued_ts_ms=row[8],
    )


def queue_updates_txn(txn: Cursor, updates: Sequence[NewUpdate], now_ms: int) -> None:
    """Add updates to the queue, all or none.

    A failed update of the same name is put back in the queue with its saved
    progress replaced and its failure count reset.

    Raises:
        UpdateAlreadyQueuedError: one of the updates is already waiting; the
            caller's transaction must roll back, so nothing is added.
    """
    for update in updates:
        existing = get_update_txn(txn, update.update_name)
        if existing is not None and existing.state == QUEUED:
            raise UpdateAlreadyQueuedError(update.update_name)
        if existing is not None:
            txn.execute(
                "DELETE FROM bgupdates_queue WHERE update_name = ?",
                (update.update_name,),
            )
        _insert_txn(txn, update, now_ms)


def _insert_txn(txn: Cursor, update: NewUpdate, now_ms: int) -> None:
    # A concurrent insert from another instance makes this a no-op, which
    # the rowcount reveals. ON CONFLICT works on PostgreSQL and SQLite >= 3.24.
    txn.execute(
        """
        INSERT INTO bgupdates_queue
            (update_name, progress_json, depends_on, state, queued_ts)
        VALUES (?, ?, ?, ?, ?)
        ON CONFLICT (update_name) DO NOTHING
        """,
        (
            update.update_name,
            json.dumps(update.progress),
            update.depends_on,
            QUEUED,
            now_ms,
        ),
    )
    if txn.rowcount == 0:
        raise UpdateAlreadyQueuedError(update.update_name)


def has_completed_txn(txn: Cursor, update_name: str) -> bool:
    """Return whether the update ran to the end at least once."""
    txn.execute(
        "SELECT 1 FROM bgupdates_completed WHERE update_name = ?", (update_name,)
    )
    return txn.fetchone() is not None


def save_progress_txn(txn: Cursor, update_name: str, progress: dict[str, Any]) -> None:
    """Store the progress of a queued update."""
    txn.execute(
        "UPDATE bgupdates_queue SET progress_json = ? WHERE update_name = ?",
        (json.dumps(progress), update_name),
    )


def finish_update_txn(txn: Cursor, update_name: str, now_ms: int) -> None:
    """Remove an update from the queue and record that it completed."""
    row = get_update_txn(txn, update_name)
    if row is None:
        logger.warning("Finished update %s was not in the queue", update_name)
        return

    txn.execute("DELETE FROM bgupdates_queue WHERE update_name = ?", (update_name,))
    txn.execute("DELETE FROM bgupdates_completed WHERE update_name = ?", (update_name,))
    txn.execute(
        """
        INSERT INTO bgupdates_completed
            (update_name, completed_ts, total_item_count, total_duration_ms)
        VALUES (?, ?, ?, ?)
        """,
        (update_name, now_ms, row.total_item_count, row.total_duration_ms),
    )


def record_batch_txn(
    txn: Cursor, update_name: str, item_count: int, duration_ms: float
) -> bool:
    """Add a successful batch to the totals and clear the failure count.

    The last batch of an update finished it, so its queue row is gone and the
    batch is added to the completion record instead.

    Returns:
        Whether the update has finished.
    """
    txn.execute(
        """
        UPDATE bgupdates_queue
        SET total_item_count = total_item_count + ?,
            total_duration_ms = total_duration_ms + ?,
            failure_count = 0,
            last_error = NULL
        WHERE update_name = ?
        """,
        (item_count, duration_ms, update_name),
    )
    if txn.rowcount > 0:
        return False
    txn.execute(
        """
        UPDATE bgupdates_completed
        SET total_item_count = total_item_count + ?,
            total_duration_ms = total_duration_ms + ?
        WHERE update_name = ?
        """,
        (item_count, duration_ms, update_name),
    )
    return True


def record_failure_txn(
    txn: Cursor, update_name: str, error: str, max_failures: int
) -> int:
    """Count a failed batch, marking the update failed at ``max_failures``.

    Returns:
        The number of consecutive failures, this one included; 0 when the
        update is no longer queued.
    """
    row = get_update_txn(txn, update_name)
    if row is None:
        return 0

    failures = row.failure_count + 1
    state = FAILED if failures >= max_failures else QUEUED
    txn.execute(
        """
        UPDATE bgupdates_queue
        SET failure_count = ?, last_error = ?, state = ?
        WHERE update_name = ?
        """,
        (failures, error, state, update_name),
    )
    return failures
