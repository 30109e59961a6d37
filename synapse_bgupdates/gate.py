"""The pause switch and the one-batch-per-database lock.

The homeserver's own updates (through the controller callbacks) and the
module's updater both start each batch through the same gate, so a pause
stops the next batch of either, and a database never runs two batches at once.
"""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from synapse.logging.context import PreserveLoggingContext
from synapse.module_api import make_deferred_yieldable
from twisted.internet import defer

logger = logging.getLogger(__name__)


class BatchGate:
    """Lets a batch start only while updates are enabled, one per database."""

    def __init__(self) -> None:
        self._enabled = True
        self._locks: dict[str, defer.DeferredLock] = {}
        self._waiting_for_resume: list[defer.Deferred[None]] = []
        self._running: dict[str, str] = {}

    @property
    def enabled(self) -> bool:
        """Whether new batches may start."""
        return self._enabled

    def set_enabled(self, enabled: bool) -> None:
        """Pause or resume. Resuming releases every batch waiting to start."""
        self._enabled = enabled
        if not enabled:
            return

        waiting, self._waiting_for_resume = self._waiting_for_resume, []
        for waiter in waiting:
            _fire(waiter)

    def running_batch(self, database_name: str) -> str | None:
        """Return the holder of the database's batch slot, None if it is free."""
        return self._running.get(database_name)

    @asynccontextmanager
    async def batch(self, database_name: str, holder: str) -> AsyncIterator[None]:
        """Hold the database's batch slot for the body of the ``async with``.

        Waits while updates are paused and while another batch runs on the
        same database.

        Args:
            database_name: the database that the batch works on.
            holder: the owner of the slot. It is the update's name for the
                homeserver's batches and ``synapse_bgupdates`` for the module's
                updater.
        """
        lock = self._locks.setdefault(database_name, defer.DeferredLock())
        while True:
            await self._wait_until_enabled()
            await make_deferred_yieldable(lock.acquire())
            # A pause may have come while this batch waited for the lock.
            if self._enabled:
                break
            _release(lock)

        self._running[database_name] = holder
        try:
            yield
        finally:
            del self._running[database_name]
            _release(lock)

    async def _wait_until_enabled(self) -> None:
        while not self._enabled:
            waiter: defer.Deferred[None] = defer.Deferred()
            self._waiting_for_resume.append(waiter)
            await make_deferred_yieldable(waiter)


# The waiters await these deferreds through make_deferred_yieldable, which
# restores each waiter's own logging context. Such a deferred must fire from
# Synapse's sentinel context, because firing it from the request or batch
# that resumes or releases would leak that context into the waiter.


def _fire(waiter: "defer.Deferred[None]") -> None:
    with PreserveLoggingContext():
        waiter.callback(None)


def _release(lock: defer.DeferredLock) -> None:
    with PreserveLoggingContext():
        lock.release()
