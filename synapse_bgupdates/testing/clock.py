"""In-process doubles for unit tests of update handlers.

``ClockScheduler`` runs the updater on a ``twisted.internet.task.Clock`` that
the test advances, and ``SqliteDatabase`` replaces
``ModuleApi.run_db_interaction`` with a real SQLite database, so a handler's
SQL runs for real::

    clock = Clock()
    database = SqliteDatabase()
    updater = BackgroundUpdater(
        scheduler=ClockScheduler(clock),
        run_db_interaction=database.run_db_interaction,
        dialect=lambda: Dialect.SQLITE,
    )

Added in synapse-bgupdates 0.1.0.
"""

import logging
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime

logger = logging.getLogger(__name__)

R = TypeVar("R")


class ClockScheduler:
    """A ``Scheduler`` on a ``twisted.internet.task.Clock``."""

    def __init__(self, clock: task.Clock):
        self.clock = clock
        self.looping_calls: list[task.LoopingCall] = []

    def seconds(self) -> float:
        return self.clock.seconds()

    async def sleep(self, seconds: float) -> None:
        await task.deferLater(cast(IReactorTime, self.clock), seconds)

    def run_in_background(self, desc: str, func: Callable[[], Awaitable[None]]) -> None:
        deferred = defer.ensureDeferred(_call(func))
        deferred.addErrback(
            lambda failure: logger.error("%s failed: %s", desc, failure.value)
        )

    def looping_call(
        self, desc: str, func: Callable[[], Awaitable[None]], interval_s: float
    ) -> None:
        call = task.LoopingCall(lambda: defer.ensureDeferred(_call(func)))
        call.clock = cast(IReactorTime, self.clock)
        call.start(interval_s, now=False)
        self.looping_calls.append(call)

    def stop(self) -> None:
        """Stop every looping call started through this scheduler."""
        for call in self.looping_calls:
            if call.running:
                call.stop()


async def _call(func: Callable[[], Awaitable[None]]) -> None:
    await func()


class SqliteDatabase:
    """Runs transactions on one SQLite connection, committing each one."""

    def __init__(self, path: str = ":memory:"):
        self.connection = sqlite3.connect(path)
        self.transaction_count = 0

    async def run_db_interaction(
        self, desc: str, func: Callable[..., R], *args: Any
    ) -> R:
        """Run ``func(cursor, *args)`` in a transaction; roll back if it raises."""
        cursor = self.connection.cursor()
        try:
            result = func(cursor, *args)
        except BaseException:
            self.connection.rollback()
            raise
        self.connection.commit()
        self.transaction_count += 1
        return result

    def query(self, sql: str, parameters: tuple[Any, ...] = ()) -> list[Any]:
        """Return the rows of a query, for assertions."""
        return self.connection.execute(sql, parameters).fetchall()
