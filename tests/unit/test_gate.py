"""BatchGate: the pause switch and one batch at a time per database."""

import itertools

import pytest
from twisted.internet import defer, task

from synapse_bgupdates.config import Config
from synapse_bgupdates.gate import BatchGate
from synapse_bgupdates.testing.clock import ClockScheduler

from .support import Harness, NumberedItemsHandler, result_of


class BatchRecorder:
    """A runner of stand-in batches on one gate, with the times they start and end."""

    def __init__(self) -> None:
        self.clock = task.Clock()
        self.scheduler = ClockScheduler(self.clock)
        self.gate = BatchGate()
        self.events: list[tuple[float, str]] = []
        self.running: dict[str, int] = {}
        self.max_running: dict[str, int] = {}

    def start(
        self, database_name: str, update_name: str, seconds: float = 1.0
    ) -> "defer.Deferred[None]":
        return defer.ensureDeferred(self._batch(database_name, update_name, seconds))

    async def _batch(
        self, database_name: str, update_name: str, seconds: float
    ) -> None:
        async with self.gate.batch(database_name, update_name):
            running = self.running.get(database_name, 0) + 1
            self.running[database_name] = running
            self.max_running[database_name] = max(
                running, self.max_running.get(database_name, 0)
            )
            self.events.append((self.clock.seconds(), f"start {update_name}"))

            await self.scheduler.sleep(seconds)

            self.events.append((self.clock.seconds(), f"end {update_name}"))
            self.running[database_name] -= 1

    def advance(self, seconds: float) -> None:
        self.clock.pump([0.5] * round(seconds / 0.5))


class TestBatchGate:
    def test_same_database_never_overlaps(self) -> None:
        recorder = BatchRecorder()
        for name in ("first", "second", "third"):
            recorder.start("master", name)
        recorder.advance(5)

        assert recorder.max_running == {"master": 1}
        assert recorder.events == [
            (0.0, "start first"),
            (1.0, "end first"),
            (1.0, "start second"),
            (2.0, "end second"),
            (2.0, "start third"),
            (3.0, "end third"),
        ]

    def test_different_databases_may_overlap(self) -> None:
        recorder = BatchRecorder()
        recorder.start("master", "on_master")
        recorder.start("state", "on_state")

        assert recorder.events == [(0.0, "start on_master"), (0.0, "start on_state")]

    def test_running_batch_names_update(self) -> None:
        recorder = BatchRecorder()
        recorder.start("master", "busy")

        assert recorder.gate.running_batch("master") == "busy"
        assert recorder.gate.running_batch("state") is None

    def test_slot_is_freed_after_batch(self) -> None:
        recorder = BatchRecorder()
        recorder.start("master", "busy")
        recorder.advance(1)

        assert recorder.gate.running_batch("master") is None

    def test_slot_is_freed_after_error(self) -> None:
        recorder = BatchRecorder()

        async def failing_batch() -> None:
            with pytest.raises(RuntimeError):
                async with recorder.gate.batch("master", "failing"):
                    raise RuntimeError("batch failed")

        result_of(defer.ensureDeferred(failing_batch()))
        recorder.start("master", "next")

        assert recorder.events == [(0.0, "start next")]

    def test_pause_blocks_start(self) -> None:
        recorder = BatchRecorder()
        recorder.gate.set_enabled(False)
        recorder.start("master", "waiting")
        recorder.advance(3600)

        assert recorder.gate.enabled is False
        assert recorder.events == []

    def test_resume_releases_waiting_batches(self) -> None:
        recorder = BatchRecorder()
        recorder.gate.set_enabled(False)
        recorder.start("master", "first")
        recorder.start("state", "second")
        recorder.advance(10)
        recorder.gate.set_enabled(True)

        assert recorder.events == [(10.0, "start first"), (10.0, "start second")]

    def test_pause_lets_running_batch_end(self) -> None:
        recorder = BatchRecorder()
        batch = recorder.start("master", "running")
        recorder.advance(0.5)
        recorder.gate.set_enabled(False)
        recorder.advance(1)

        assert result_of(batch) is None
        assert recorder.events == [(0.0, "start running"), (1.0, "end running")]

    def test_pause_while_waiting_for_lock(self) -> None:
        recorder = BatchRecorder()
        recorder.start("master", "holder")
        recorder.start("master", "waiter")
        recorder.advance(0.5)
        recorder.gate.set_enabled(False)
        recorder.advance(10)
        events_while_paused = list(recorder.events)
        recorder.gate.set_enabled(True)

        assert events_while_paused == [(0.0, "start holder"), (1.0, "end holder")]
        assert recorder.events[-1] == (10.5, "start waiter")


def batch_spans(handler: NumberedItemsHandler) -> list[tuple[float, float]]:
    return [
        (call.time_s, call.time_s + handler.batch_seconds) for call in handler.calls
    ]


class TestGateSharedByUpdaters:
    """Two updaters on one clock and one gate, as the homeserver and module share it."""

    def _run_two(
        self, first_database: str, second_database: str
    ) -> list[tuple[float, float]]:
        config = Config(default_batch_size=10, update_duration_ms=1000)
        first = Harness(config, database_name=first_database)
        second = Harness(
            config,
            clock=first.clock,
            gate=first.updater.gate,
            database_name=second_database,
        )
        handlers = [
            NumberedItemsHandler(first, "first", item_count=30).register(),
            NumberedItemsHandler(second, "second", item_count=30).register(),
        ]
        first.queue("first")
        second.queue("second")
        first.advance(20, step=0.5)
        return sorted(span for handler in handlers for span in batch_spans(handler))

    def test_same_database_never_overlaps(self) -> None:
        spans = self._run_two("master", "master")

        assert len(spans) == 6
        for (_, earlier_end), (later_start, _) in itertools.pairwise(spans):
            assert later_start >= earlier_end

    def test_different_databases_overlap(self) -> None:
        spans = self._run_two("master", "state")

        assert spans[0][0] == spans[1][0]
