"""The module's own background updater.

Other Synapse modules register handlers by name. The updater runs the queued
updates one batch at a time from a looping call and sizes each batch from the
measured rate. The queue and each update's progress are kept in the
homeserver's database.
"""

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from synapse_bgupdates import metrics, store
from synapse_bgupdates.config import Config
from synapse_bgupdates.dependencies import QueueDecision, choose_next_update
from synapse_bgupdates.gate import BatchGate
from synapse_bgupdates.jobs import HOMESERVER_JOB_NAMES
from synapse_bgupdates.performance import UpdatePerformance
from synapse_bgupdates.scheduler import Scheduler
from synapse_bgupdates.store import (
    Cursor,
    Dialect,
    NewUpdate,
    QueuedUpdate,
    RunDbInteraction,
)

logger = logging.getLogger(__name__)

R = TypeVar("R")

UpdateHandler = Callable[[dict[str, Any], int], Awaitable[int]]
"""``async handler(progress, batch_size) -> items processed``."""

# The owner name that the module's updater gives when it takes a batch slot.
GATE_HOLDER = "synapse_bgupdates"

# A batch log line is written at most this often per update, at info level.
_BATCH_LOG_INTERVAL_S = 10.0


class BackgroundUpdater:
    """Runs background updates registered by Synapse modules.

    Added in synapse-bgupdates 0.1.0. Get the instance of a homeserver with
    ``synapse_bgupdates.get_updater(api)``.
    """

    def __init__(
        self,
        *,
        scheduler: Scheduler,
        run_db_interaction: RunDbInteraction,
        dialect: Callable[[], Dialect],
        gate: BatchGate | None = None,
        config: Config | None = None,
        database_name: str = "master",
    ):
        self._scheduler = scheduler
        self._run_db_interaction = run_db_interaction
        self._dialect = dialect
        self.gate = gate or BatchGate()
        self.config = config or Config()
        self.database_name = database_name
        # Set by BackgroundUpdatesModule; without it nothing runs the updates.
        self.module_enabled = False

        self._registrations: dict[str, UpdateHandler] = {}
        self._performance: dict[str, UpdatePerformance] = {}
        self._current_update: str | None = None
        self._running = False
        self._wake_requested = False
        self._retry_delay_s: float | None = None
        self._tables_ready = False
        self._last_blocked: dict[str, str] = {}
        self._last_batch_log_s: dict[str, float] = {}

    # Registration and queueing, for module authors.

    def register_update_handler(self, update_name: str, handler: UpdateHandler) -> None:
        """Register the handler that makes progress on an update.

        The handler is called as ``await handler(progress, batch_size)`` with
        the progress it saved last (``{}`` at first) and a suggested number of
        items. It returns how many items it processed. It saves its progress
        with ``save_progress_txn`` in the transaction that does the work, and
        ends the update with ``finish_update_txn`` (or ``finish_update``).

        Args:
            update_name: unique name of the update, also the ``job_name`` that
                starts it through the admin API.
            handler: the coroutine function described above.

        Raises:
            ValueError: the name is empty, registered already, or the name of
                one of the homeserver's jobs.
        """
        if not update_name:
            raise ValueError("update_name must be a non-empty string")
        if update_name in HOMESERVER_JOB_NAMES:
            raise ValueError(
                f"{update_name} is a job of the homeserver; choose another name"
            )
        if update_name in self._registrations:
            raise ValueError(f"A handler for update {update_name} is registered")
        self._registrations[update_name] = handler

    @property
    def registered_updates(self) -> list[str]:
        """Names of the updates that have a handler, sorted."""
        return sorted(self._registrations)

    async def queue_update(
        self,
        update_name: str,
        progress: dict[str, Any] | None = None,
        depends_on: str | None = None,
    ) -> None:
        """Put an update in the queue and start work on it.

        A failed update of that name is queued again from ``progress``.

        Raises:
            UpdateAlreadyQueuedError: the update is already queued.
        """
        await self.queue_updates([NewUpdate(update_name, progress or {}, depends_on)])

    async def queue_updates(self, updates: Sequence[NewUpdate]) -> None:
        """Queue several updates in one transaction, all or none.

        Raises:
            UpdateAlreadyQueuedError: one of them is already queued; nothing
                was added.
        """
        now_ms = self._now_ms()
        await self._db(
            "bgupdates_queue_updates", store.queue_updates_txn, updates, now_ms
        )
        logger.info(
            "Queued background updates %s",
            ", ".join(update.update_name for update in updates),
        )
        self.wake()

    async def queue_update_once(
        self, update_name: str, progress: dict[str, Any] | None = None
    ) -> bool:
        """Queue an update unless it is queued or has completed before.

        Meant for a module's start-up: the update runs once per database.

        Returns:
            Whether the update was added to the queue.
        """
        if await self.has_completed(update_name):
            return False
        try:
            await self.queue_update(update_name, progress)
        except store.UpdateAlreadyQueuedError:
            return False
        return True

    async def has_completed(self, update_name: str) -> bool:
        """Return whether the update has run to the end at least once."""
        return await self._db(
            "bgupdates_has_completed", store.has_completed_txn, update_name
        )

    def save_progress_txn(
        self, txn: Cursor, update_name: str, progress: dict[str, Any]
    ) -> None:
        """Save an update's progress inside the caller's transaction."""
        store.save_progress_txn(txn, update_name, progress)

    def finish_update_txn(self, txn: Cursor, update_name: str) -> None:
        """Mark an update completed inside the caller's transaction."""
        store.finish_update_txn(txn, update_name, self._now_ms())

    async def finish_update(self, update_name: str) -> None:
        """Mark an update completed in a transaction of its own."""
        await self._db("bgupdates_finish_update", self.finish_update_txn, update_name)

    # Visibility, for the admin API.

    def current_status(self) -> dict[str, object] | None:
        """Return the status entry of the update in progress, if any."""
        if self._current_update is None:
            return None
        return self._performance_of(self._current_update).status_entry()

    async def get_queue(self) -> list[QueuedUpdate]:
        """Return the rows of the queue, oldest first."""
        return await self._db("bgupdates_get_queue", store.get_queue_txn)

    def describe_queue(self, queue: Sequence[QueuedUpdate]) -> list[dict[str, object]]:
        """Return one JSON object per queued or failed update."""
        blocked = choose_next_update(queue, self._registrations).blocked
        return [
            {
                "name": row.update_name,
                "state": row.state,
                "depends_on": row.depends_on,
                "blocked_reason": blocked.get(row.update_name),
                "failure_count": row.failure_count,
                "last_error": row.last_error,
                "total_item_count": row.total_item_count,
                "total_duration_ms": row.total_duration_ms,
                "progress": row.progress,
            }
            for row in queue
        ]

    # Running.

    def start(self) -> None:
        """Start the looping call that runs queued updates."""
        self._scheduler.looping_call(
            "bgupdates_poll", self.run_until_idle, self.config.poll_interval_ms / 1000
        )
        self.wake()
        logger.info("Background updater started on database %s", self.database_name)

    def wake(self) -> None:
        """Look at the queue now instead of at the next poll."""
        if self._running:
            # The run in progress looks at the queue once more before it ends.
            self._wake_requested = True
            return
        self._scheduler.run_in_background("bgupdates_run", self.run_until_idle)

    async def run_until_idle(self) -> None:
        """Run batches until no queued update can run.

        Returns at once if a run is already in progress. An ``Exception`` is
        logged, not raised, so the looping call keeps going.
        """
        if self._running:
            return
        self._running = True
        try:
            self._wake_requested = True
            while self._wake_requested:
                self._wake_requested = False
                while await self.run_one_batch():
                    await self._scheduler.sleep(self._take_delay_s())
        except Exception:
            logger.exception("Background updater stopped on an unexpected error")
        finally:
            self._running = False

    def _take_delay_s(self) -> float:
        # After a failure, the retry backoff replaces the sleep between batches.
        delay_s = self._retry_delay_s
        self._retry_delay_s = None
        if delay_s is None:
            return self.config.sleep_duration_ms / 1000
        return delay_s

    async def run_one_batch(self) -> bool:
        """Run one batch of the next runnable update.

        Returns:
            False when no queued update can run, True otherwise.
        """
        # The update is chosen once the batch may start, so that a pause or
        # another batch on the database cannot leave the choice out of date.
        async with self.gate.batch(self.database_name, GATE_HOLDER):
            queue = await self.get_queue()
            _count_states(queue)
            decision = choose_next_update(queue, self._registrations)
            self._report_blocked(decision)
            update = decision.update
            if update is None:
                self._current_update = None
                return False

            self._current_update = update.update_name
            outcome = await self._run_handler(update)

        if isinstance(outcome, str):
            await self._handle_failure(update.update_name, outcome)
        else:
            await self._handle_success(update.update_name, *outcome)
        return True

    async def _run_handler(self, update: QueuedUpdate) -> tuple[int, float] | str:
        """Call the handler.

        Returns:
            The item count and the duration in ms, or the error message if
            the handler raised.
        """
        name = update.update_name
        handler = self._registrations[name]
        batch_size = self._performance_of(name).next_batch_size(
            self.config.update_duration_ms,
            self.config.min_batch_size,
            self.config.default_batch_size,
        )

        started_s = self._scheduler.seconds()
        try:
            item_count = await handler(update.progress, batch_size)
        except Exception as error:
            logger.exception("Batch of background update %s failed", name)
            return _storable_error(error)
        duration_ms = (self._scheduler.seconds() - started_s) * 1000

        if not isinstance(item_count, int) or isinstance(item_count, bool):
            logger.error(
                "Handler of background update %s returned %r, expected the number"
                " of items processed; counting 0",
                name,
                item_count,
            )
            item_count = 0
        return item_count, duration_ms

    async def _handle_success(
        self, update_name: str, item_count: int, duration_ms: float
    ) -> None:
        performance = self._performance_of(update_name)
        performance.record_batch(item_count, duration_ms)
        # NOTE: the totals commit after the handler's transaction, so a batch
        # that commits just before a shutdown is missing from them.
        finished = await self._db(
            "bgupdates_record_batch",
            store.record_batch_txn,
            update_name,
            item_count,
            duration_ms,
        )
        metrics.BATCHES.labels(update_name).inc()
        metrics.ITEMS.labels(update_name).inc(item_count)
        metrics.BATCH_SECONDS.labels(update_name).inc(duration_ms / 1000)
        self._log_batch(performance, item_count, duration_ms, finished)
        if finished:
            metrics.COMPLETED.labels(update_name).inc()
            self._current_update = None
            # A later run of the same update starts its figures from zero.
            del self._performance[update_name]
            self._last_batch_log_s.pop(update_name, None)

    def _log_batch(
        self,
        performance: UpdatePerformance,
        item_count: int,
        duration_ms: float,
        finished: bool,
    ) -> None:
        name = performance.update_name
        now_s = self._scheduler.seconds()
        last_s = self._last_batch_log_s.get(name)
        if finished:
            logger.info(
                "Background update %s finished: %d items in %.0f ms since this"
                " process started it",
                name,
                performance.total_item_count,
                performance.total_duration_ms,
            )
        elif last_s is None or now_s - last_s >= _BATCH_LOG_INTERVAL_S:
            self._last_batch_log_s[name] = now_s
            logger.info(
                "Background update %s: batch of %d items in %.1f ms"
                " (%.3g items/ms, %d items in total)",
                name,
                item_count,
                duration_ms,
                performance.average_items_per_ms() or 0.0,
                performance.total_item_count,
            )

    async def _handle_failure(self, update_name: str, error: str) -> None:
        metrics.FAILURES.labels(update_name).inc()
        failures = await self._db(
            "bgupdates_record_failure",
            store.record_failure_txn,
            update_name,
            error,
            self.config.max_failures,
        )
        if failures == 0:
            logger.warning(
                "Background update %s raised after it finished; not retried",
                update_name,
            )
            self._current_update = None
            return
        if failures >= self.config.max_failures:
            logger.error(
                "Background update %s failed %d times in a row and is set aside;"
                " restart it with the start_job admin API once fixed",
                update_name,
                failures,
            )
            self._current_update = None
            return

        backoff_ms = min(
            self.config.retry_backoff_ms * 2 ** (failures - 1),
            self.config.max_retry_backoff_ms,
        )
        logger.warning(
            "Retrying background update %s in %d ms (failure %d of %d)",
            update_name,
            backoff_ms,
            failures,
            self.config.max_failures,
        )
        self._retry_delay_s = backoff_ms / 1000

    def _report_blocked(self, decision: QueueDecision) -> None:
        # Logged when the set of blocked updates changes, not on every poll.
        if decision.blocked == self._last_blocked:
            return
        self._last_blocked = dict(decision.blocked)
        for name, reason in decision.blocked.items():
            if reason.startswith("waiting for"):
                logger.info("Background update %s is %s", name, reason)
            else:
                logger.warning("Background update %s cannot run: %s", name, reason)

    # Helpers.

    def _performance_of(self, update_name: str) -> UpdatePerformance:
        return self._performance.setdefault(update_name, UpdatePerformance(update_name))

    def _now_ms(self) -> int:
        return int(self._scheduler.seconds() * 1000)

    async def _db(self, desc: str, func: Callable[..., R], *args: Any) -> R:
        if not self._tables_ready:
            await self._run_db_interaction(
                "bgupdates_create_tables", store.create_tables_txn, self._dialect()
            )
            self._tables_ready = True
        return await self._run_db_interaction(desc, func, *args)


# The error stored in the queue row is cut to this many characters.
_MAX_ERROR_CHARS = 2000


def _storable_error(error: Exception) -> str:
    """Return the error as text that both databases store.

    PostgreSQL rejects NUL characters in text, and neither database takes a
    lone surrogate, so both are escaped.
    """
    text = f"{type(error).__name__}: {error}"[:_MAX_ERROR_CHARS]
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text.replace("\x00", "\\x00")


def _count_states(queue: Sequence[QueuedUpdate]) -> None:
    for state in (store.QUEUED, store.FAILED):
        metrics.QUEUED.labels(state).set(sum(row.state == state for row in queue))
