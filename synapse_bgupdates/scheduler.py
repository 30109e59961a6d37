"""Time and background work for the updater, behind one small interface.

Inside Synapse the updater uses the ModuleApi, which keeps Synapse's logging
contexts and metrics right. Unit tests use
``synapse_bgupdates.testing.ClockScheduler`` on a ``twisted.internet.task.Clock``.
"""

from collections.abc import Awaitable, Callable
from typing import Protocol, cast

from synapse.module_api import ModuleApi
from twisted.internet.interfaces import IReactorTime


class Scheduler(Protocol):
    """The time and background-work services that the updater uses."""

    def seconds(self) -> float:
        """Return the current time in seconds."""

    async def sleep(self, seconds: float) -> None:
        """Return after ``seconds`` have passed."""

    def run_in_background(self, desc: str, func: Callable[[], Awaitable[None]]) -> None:
        """Start ``func`` without waiting for it; ``desc`` labels it in metrics."""

    def looping_call(
        self, desc: str, func: Callable[[], Awaitable[None]], interval_s: float
    ) -> None:
        """Call ``func`` every ``interval_s`` seconds."""


class SynapseScheduler:
    """A ``Scheduler`` backed by Synapse's clock through the ModuleApi."""

    def __init__(self, api: ModuleApi):
        self._api = api

    def seconds(self) -> float:
        # The global reactor is the one that Synapse runs on.
        from twisted.internet import reactor

        return cast(IReactorTime, reactor).seconds()  # type: ignore[misc]

    async def sleep(self, seconds: float) -> None:
        await self._api.sleep(seconds)

    def run_in_background(self, desc: str, func: Callable[[], Awaitable[None]]) -> None:
        self._api.run_as_background_process(desc, func)

    def looping_call(
        self, desc: str, func: Callable[[], Awaitable[None]], interval_s: float
    ) -> None:
        # The ModuleApi wraps each call in a background process. It runs only
        # on the instance that runs background tasks.
        self._api.looping_background_call(func, interval_s * 1000, desc=desc)
