"""Shared doubles for the unit tests.

Every test drives time with a ``twisted.internet.task.Clock`` and runs SQL on a
real in-memory SQLite database, so nothing here sleeps or opens a socket.
"""

from collections.abc import Coroutine
from typing import Any, TypeVar

import attr
from twisted.internet import defer, task
from twisted.python.failure import Failure

from synapse_bgupdates.config import Config
from synapse_bgupdates.gate import BatchGate
from synapse_bgupdates.store import Cursor, Dialect, QueuedUpdate
from synapse_bgupdates.testing.clock import ClockScheduler, SqliteDatabase
from synapse_bgupdates.updater import BackgroundUpdater

T = TypeVar("T")


def result_of(deferred: "defer.Deferred[T]") -> T:
    """Return the result of a deferred that has already fired.

    Raises:
        The deferred's exception if it failed.
        AssertionError: the deferred has not fired yet.
    """
    results: list[T] = []
    failures: list[Failure] = []
    deferred.addCallbacks(results.append, failures.append)
    if failures:
        failures[0].raiseException()
    assert len(results) == 1, "the deferred has not fired yet"
    return results[0]


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never waits on the clock and return its result."""
    return result_of(defer.ensureDeferred(coroutine))


class Harness:
    """A BackgroundUpdater on a fake clock and a real SQLite database.

    Pass the ``database`` of an earlier harness to simulate a restart of the
    homeserver: the new harness gets a fresh clock and updater, and the old
    ones are never run again. Pass the ``clock`` and ``gate`` of another
    harness instead to run two updaters side by side.
    """

    def __init__(
        self,
        config: Config | None = None,
        database: SqliteDatabase | None = None,
        *,
        clock: task.Clock | None = None,
        gate: BatchGate | None = None,
        database_name: str = "master",
    ) -> None:
        self.clock = task.Clock() if clock is None else clock
        self.scheduler = ClockScheduler(self.clock)
        self.database = SqliteDatabase() if database is None else database
        self.updater = BackgroundUpdater(
            scheduler=self.scheduler,
            run_db_interaction=self.database.run_db_interaction,
            dialect=lambda: Dialect.SQLITE,
            gate=gate,
            config=config,
            database_name=database_name,
        )

    def advance(self, seconds: float, step: float = 1.0) -> None:
        """Move the clock forward in steps of ``step`` seconds.

        Small steps matter because ``Clock.advance`` sets the new time before
        it runs the calls that fell due, so a call due halfway through one big
        step would read the time at the end of that step.
        """
        self.clock.pump([step] * round(seconds / step))

    def queue(
        self,
        update_name: str,
        progress: dict[str, Any] | None = None,
        depends_on: str | None = None,
    ) -> None:
        """Queue an update, which also starts a run of the updater."""
        run(self.updater.queue_update(update_name, progress, depends_on))

    def row(self, update_name: str) -> QueuedUpdate:
        """Return the queue row of an update that is queued or failed."""
        rows = {row.update_name: row for row in run(self.updater.get_queue())}
        assert update_name in rows, f"{update_name} is not in the queue"
        return rows[update_name]

    def has_completed(self, update_name: str) -> bool:
        return run(self.updater.has_completed(update_name))


@attr.s(frozen=True, auto_attribs=True)
class HandlerCall:
    """One call of an update handler, as the handler saw it."""

    time_s: float
    progress: dict[str, Any]
    batch_size: int


def create_items_table(database: SqliteDatabase) -> None:
    """Create the table that ``NumberedItemsHandler`` writes to.

    It has no unique key, so that an item processed twice shows up as a
    duplicate row instead of an error.
    """
    database.connection.execute(
        "CREATE TABLE IF NOT EXISTS processed_items"
        " (update_name TEXT NOT NULL, item_id INTEGER NOT NULL)"
    )
    database.connection.commit()


def processed_item_ids(database: SqliteDatabase, update_name: str) -> list[int]:
    """Return the ids that an update has written, sorted, duplicates kept."""
    rows = database.query(
        "SELECT item_id FROM processed_items WHERE update_name = ? ORDER BY item_id",
        (update_name,),
    )
    return [row[0] for row in rows]


class NumberedItemsHandler:
    """An update handler that processes the items ``0 .. item_count - 1``.

    Each batch first waits ``batch_seconds`` on the clock, to stand for the
    time the work takes. Then one transaction inserts the batch's ids into
    ``processed_items``, saves ``{"next_item": n}`` as progress and, after the
    last item, finishes the update.

    Calls whose 1-based number is in ``fail_in_transaction`` raise inside that
    transaction after doing the work, so the work is rolled back. Calls in
    ``fail_after_commit`` raise after the transaction has committed.
    """

    def __init__(
        self,
        harness: Harness,
        update_name: str,
        item_count: int,
        batch_seconds: float = 1.0,
    ) -> None:
        self.harness = harness
        self.update_name = update_name
        self.item_count = item_count
        self.batch_seconds = batch_seconds
        self.calls: list[HandlerCall] = []
        self.fail_in_transaction: set[int] = set()
        self.fail_after_commit: set[int] = set()
        create_items_table(harness.database)

    def register(self) -> "NumberedItemsHandler":
        self.harness.updater.register_update_handler(self.update_name, self)
        return self

    async def __call__(self, progress: dict[str, Any], batch_size: int) -> int:
        self.calls.append(
            HandlerCall(self.harness.clock.seconds(), dict(progress), batch_size)
        )
        call_number = len(self.calls)
        if self.batch_seconds:
            await self.harness.scheduler.sleep(self.batch_seconds)

        processed = await self.harness.database.run_db_interaction(
            "process_items", self._process_txn, progress, batch_size, call_number
        )
        if call_number in self.fail_after_commit:
            raise RuntimeError(f"call {call_number} failed after its commit")
        return processed

    def _process_txn(
        self,
        txn: Cursor,
        progress: dict[str, Any],
        batch_size: int,
        call_number: int,
    ) -> int:
        start = int(progress.get("next_item", 0))
        stop = min(start + batch_size, self.item_count)
        for item_id in range(start, stop):
            txn.execute(
                "INSERT INTO processed_items (update_name, item_id) VALUES (?, ?)",
                (self.update_name, item_id),
            )

        updater = self.harness.updater
        updater.save_progress_txn(txn, self.update_name, {"next_item": stop})
        if stop >= self.item_count:
            updater.finish_update_txn(txn, self.update_name)
        if call_number in self.fail_in_transaction:
            raise RuntimeError(f"call {call_number} failed inside its transaction")
        return stop - start
