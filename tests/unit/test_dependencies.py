"""Ordering by ``depends_on``: the pure choice and the updater that follows it."""

from typing import Any

from twisted.internet import defer

from synapse_bgupdates.dependencies import choose_next_update, find_cycle
from synapse_bgupdates.store import FAILED, QUEUED, NewUpdate, QueuedUpdate

from .support import Harness, result_of, run


def queue_row(
    update_name: str, depends_on: str | None = None, state: str = QUEUED
) -> QueuedUpdate:
    return QueuedUpdate(
        update_name=update_name,
        progress={},
        depends_on=depends_on,
        state=state,
        failure_count=0,
        last_error=None,
        total_item_count=0,
        total_duration_ms=0.0,
        queued_ts_ms=0,
    )


class OneBatchHandler:
    """A handler that takes 1 s and finishes its update, noting both in ``log``."""

    def __init__(self, harness: Harness, update_name: str, log: list[str]) -> None:
        self.harness = harness
        self.update_name = update_name
        self.log = log
        harness.updater.register_update_handler(update_name, self)

    async def __call__(self, progress: dict[str, Any], batch_size: int) -> int:
        self.log.append(f"start {self.update_name}")
        await self.harness.scheduler.sleep(1.0)
        await self.harness.updater.finish_update(self.update_name)
        self.log.append(f"finish {self.update_name}")
        return 1


class TestChooseNextUpdate:
    def test_dependency_queued_later_runs_first(self) -> None:
        queue = [queue_row("child", depends_on="parent"), queue_row("parent")]

        decision = choose_next_update(queue, {"child", "parent"})

        assert decision.update == queue[1]
        assert decision.blocked == {"child": "waiting for parent"}

    def test_finished_dependency_does_not_block(self) -> None:
        queue = [queue_row("child", depends_on="parent")]

        decision = choose_next_update(queue, {"child"})

        assert decision.update == queue[0]

    def test_failed_dependency_blocks(self) -> None:
        queue = [queue_row("parent", state=FAILED), queue_row("child", "parent")]

        decision = choose_next_update(queue, {"child", "parent"})

        assert decision.update is None
        assert "failed" in decision.blocked["child"]

    def test_failed_update_is_skipped(self) -> None:
        queue = [queue_row("broken", state=FAILED), queue_row("healthy")]

        decision = choose_next_update(queue, {"broken", "healthy"})

        assert decision.update == queue[1]
        assert decision.blocked == {}

    def test_cycle_is_reported(self) -> None:
        queue = [queue_row("alpha", "beta"), queue_row("beta", "alpha")]

        decision = choose_next_update(queue, {"alpha", "beta"})

        assert decision.update is None
        for name in ("alpha", "beta"):
            assert "cycle" in decision.blocked[name]
            assert "alpha" in decision.blocked[name]
            assert "beta" in decision.blocked[name]

    def test_unrelated_update_runs_beside_cycle(self) -> None:
        queue = [
            queue_row("alpha", "beta"),
            queue_row("beta", "alpha"),
            queue_row("gamma"),
        ]

        decision = choose_next_update(queue, {"alpha", "beta", "gamma"})

        assert decision.update == queue[2]

    def test_missing_handler_blocks_only_that_update(self) -> None:
        queue = [queue_row("orphan"), queue_row("served")]

        decision = choose_next_update(queue, {"served"})

        assert decision.update == queue[1]
        assert "no handler" in decision.blocked["orphan"]


class TestFindCycle:
    def test_two_update_cycle(self) -> None:
        in_queue = {
            "alpha": queue_row("alpha", "beta"),
            "beta": queue_row("beta", "alpha"),
        }

        assert find_cycle("alpha", in_queue) == ["alpha", "beta", "alpha"]

    def test_self_dependency(self) -> None:
        in_queue = {"alpha": queue_row("alpha", "alpha")}

        assert find_cycle("alpha", in_queue) == ["alpha", "alpha"]

    def test_chain_without_cycle(self) -> None:
        in_queue = {
            "alpha": queue_row("alpha", "beta"),
            "beta": queue_row("beta", "gone"),
        }

        assert find_cycle("alpha", in_queue) == []

    def test_chain_into_other_cycle(self) -> None:
        in_queue = {
            "delta": queue_row("delta", "alpha"),
            "alpha": queue_row("alpha", "beta"),
            "beta": queue_row("beta", "alpha"),
        }

        assert find_cycle("delta", in_queue) == []


class TestUpdaterDependencies:
    def test_dependency_runs_first(self) -> None:
        harness = Harness()
        log: list[str] = []
        OneBatchHandler(harness, "child", log)
        OneBatchHandler(harness, "parent", log)
        # One call queues the dependent update first, with the lower queue id.
        run(
            harness.updater.queue_updates(
                [NewUpdate("child", depends_on="parent"), NewUpdate("parent")]
            )
        )
        harness.advance(10)

        assert log == ["start parent", "finish parent", "start child", "finish child"]

    def test_cycle_is_reported(self) -> None:
        harness = Harness()
        log: list[str] = []
        for name in ("alpha", "beta"):
            OneBatchHandler(harness, name, log)
        run(
            harness.updater.queue_updates(
                [
                    NewUpdate("alpha", depends_on="beta"),
                    NewUpdate("beta", depends_on="alpha"),
                ]
            )
        )

        described = harness.updater.describe_queue(run(harness.updater.get_queue()))
        reasons = {entry["name"]: str(entry["blocked_reason"]) for entry in described}

        for name in ("alpha", "beta"):
            assert "cycle" in reasons[name]
            assert "alpha" in reasons[name]
            assert "beta" in reasons[name]

    def test_cycle_does_not_spin(self) -> None:
        harness = Harness()
        log: list[str] = []
        for name in ("alpha", "beta", "gamma"):
            OneBatchHandler(harness, name, log)
        run(
            harness.updater.queue_updates(
                [
                    NewUpdate("alpha", depends_on="beta"),
                    NewUpdate("beta", depends_on="alpha"),
                    NewUpdate("gamma"),
                ]
            )
        )
        harness.updater.start()
        harness.advance(10)
        transactions_before = harness.database.transaction_count

        # 100 poll intervals of the default 5 s.
        harness.advance(500, step=5.0)
        transactions = harness.database.transaction_count - transactions_before
        idle_run = defer.ensureDeferred(harness.updater.run_until_idle())

        assert log == ["start gamma", "finish gamma"]
        assert transactions <= 100
        assert result_of(idle_run) is None
        assert harness.row("alpha").state == QUEUED
        assert harness.row("beta").state == QUEUED

    def test_dependency_queued_during_pause(self) -> None:
        harness = Harness()
        log: list[str] = []
        OneBatchHandler(harness, "child", log)
        OneBatchHandler(harness, "parent", log)
        harness.updater.gate.set_enabled(False)
        harness.queue("child", depends_on="parent")
        harness.queue("parent")
        harness.updater.gate.set_enabled(True)
        harness.advance(10)

        assert log == ["start parent", "finish parent", "start child", "finish child"]
