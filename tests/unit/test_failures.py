"""Retries with backoff, the failure cap and restarting a failed update."""

import itertools
from typing import Any

from synapse_bgupdates.config import Config
from synapse_bgupdates.store import FAILED, QUEUED

from .support import Harness


class ScriptedHandler:
    """A handler whose calls follow a script, repeating its last entry.

    ``"fail"`` raises RuntimeError, ``"ok"`` reports one item and ``"finish"``
    finishes the update. Each call also records the time and the queue row's
    failure count and last error as they were when the call started.
    """

    def __init__(self, harness: Harness, update_name: str, script: list[str]) -> None:
        self.harness = harness
        self.update_name = update_name
        self.script = script
        self.call_times: list[float] = []
        self.failure_counts_seen: list[int] = []
        self.last_errors_seen: list[str | None] = []
        harness.updater.register_update_handler(update_name, self)

    async def __call__(self, progress: dict[str, Any], batch_size: int) -> int:
        row = self.harness.row(self.update_name)
        self.call_times.append(self.harness.clock.seconds())
        self.failure_counts_seen.append(row.failure_count)
        self.last_errors_seen.append(row.last_error)

        call_number = len(self.call_times)
        outcome = self.script[min(call_number, len(self.script)) - 1]
        if outcome == "fail":
            raise RuntimeError(f"disk full on call {call_number}")
        if outcome == "finish":
            await self.harness.updater.finish_update(self.update_name)
        return 1


def intervals(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(times)]


class TestRetryBackoff:
    def test_backoff_doubles_and_caps(self) -> None:
        # No sleep between batches, so the wait between attempts is the backoff.
        config = Config(
            sleep_duration_ms=0,
            retry_backoff_ms=1000,
            max_retry_backoff_ms=3000,
            max_failures=6,
        )
        harness = Harness(config)
        handler = ScriptedHandler(harness, "flaky", ["fail"])
        harness.queue("flaky")
        harness.advance(60)

        assert intervals(handler.call_times) == [1.0, 2.0, 3.0, 3.0, 3.0]

    def test_wait_stays_within_cap(self) -> None:
        config = Config(
            retry_backoff_ms=1000, max_retry_backoff_ms=3000, max_failures=6
        )
        harness = Harness(config)
        handler = ScriptedHandler(harness, "flaky", ["fail"])
        harness.queue("flaky")
        harness.advance(60)

        assert max(intervals(handler.call_times)) <= 3.0


class TestFailureCap:
    def _fail_until_capped(self) -> tuple[Harness, ScriptedHandler]:
        harness = Harness()
        handler = ScriptedHandler(harness, "broken", ["fail"])
        harness.queue("broken")
        # With the defaults the five attempts start at t=0, 1, 3, 7 and 15.
        harness.advance(60)
        return harness, handler

    def test_state_is_failed(self) -> None:
        harness, _ = self._fail_until_capped()

        assert harness.row("broken").state == FAILED

    def test_failure_count_is_max(self) -> None:
        harness, _ = self._fail_until_capped()

        assert harness.row("broken").failure_count == 5

    def test_last_error_has_message(self) -> None:
        harness, _ = self._fail_until_capped()

        assert "disk full on call 5" in str(harness.row("broken").last_error)

    def test_no_attempt_after_cap(self) -> None:
        harness, handler = self._fail_until_capped()
        harness.updater.start()
        harness.advance(600, step=5.0)

        assert len(handler.call_times) == 5

    def test_configured_cap(self) -> None:
        harness = Harness(Config(max_failures=2))
        handler = ScriptedHandler(harness, "broken", ["fail"])
        harness.queue("broken")
        harness.advance(60)

        assert len(handler.call_times) == 2
        assert harness.row("broken").state == FAILED

    def test_queue_moves_on(self) -> None:
        harness = Harness()
        ScriptedHandler(harness, "broken", ["fail"])
        ScriptedHandler(harness, "healthy", ["finish"])
        harness.queue("broken")
        harness.queue("healthy")
        harness.advance(60)

        assert harness.has_completed("healthy")
        assert harness.row("broken").state == FAILED

    def test_success_resets_failure_count(self) -> None:
        config = Config(
            retry_backoff_ms=1000, max_retry_backoff_ms=1000, max_failures=3
        )
        harness = Harness(config)
        handler = ScriptedHandler(
            harness, "flaky", ["fail", "fail", "ok", "fail", "fail", "finish"]
        )
        harness.queue("flaky")
        harness.advance(60)

        # Four failures in all, but never three in a row.
        assert handler.failure_counts_seen == [0, 1, 2, 0, 1, 2]
        assert handler.last_errors_seen[3] is None
        assert harness.has_completed("flaky")

    def test_queue_update_restarts_failed(self) -> None:
        harness, _ = self._fail_until_capped()
        # Paused, so that no batch changes the row before it is read.
        harness.updater.gate.set_enabled(False)
        harness.queue("broken", progress={"restart": True})
        row = harness.row("broken")

        assert row.state == QUEUED
        assert row.failure_count == 0
        assert row.last_error is None
        assert row.progress == {"restart": True}

    def test_restarted_update_finishes(self) -> None:
        harness, handler = self._fail_until_capped()
        handler.script = ["finish"]
        harness.queue("broken")
        harness.advance(10)

        assert harness.has_completed("broken")
        assert len(handler.call_times) == 6


class TestErrorText:
    def _record_error(self, message: str) -> str | None:
        harness = Harness()

        async def handler(progress: dict[str, Any], batch_size: int) -> int:
            raise ValueError(message)

        harness.updater.register_update_handler("odd_error", handler)
        harness.queue("odd_error")
        harness.advance(0.5)
        return harness.row("odd_error").last_error

    def test_nul_is_escaped(self) -> None:
        last_error = self._record_error("row has a \x00 byte")

        assert last_error == "ValueError: row has a \\x00 byte"

    def test_lone_surrogate_is_escaped(self) -> None:
        last_error = self._record_error(
            "caf" + b"\xe9".decode("utf-8", "surrogateescape")
        )

        assert last_error == "ValueError: caf\\udce9"

    def test_long_error_is_cut(self) -> None:
        last_error = self._record_error("x" * 10_000)

        assert last_error is not None
        assert len(last_error) == 2000
