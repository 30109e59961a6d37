"""The queueing and registration API that other modules call."""

from typing import Any

import pytest

from synapse_bgupdates.config import Config
from synapse_bgupdates.store import NewUpdate, UpdateAlreadyQueuedError

from .support import Harness, NumberedItemsHandler, run


async def unused_handler(progress: dict[str, Any], batch_size: int) -> int:
    raise AssertionError("this handler must not be called")


def queued_names(harness: Harness) -> list[str]:
    return [row.update_name for row in run(harness.updater.get_queue())]


class TestQueueUpdate:
    def test_queue_twice_raises(self) -> None:
        # No handler is registered, so the first update stays in the queue.
        harness = Harness()
        harness.queue("twice")

        with pytest.raises(UpdateAlreadyQueuedError) as raised:
            harness.queue("twice")

        assert raised.value.update_name == "twice"

    def test_queue_updates_is_all_or_none(self) -> None:
        harness = Harness()
        harness.queue("existing")
        batch = [NewUpdate("first"), NewUpdate("existing"), NewUpdate("last")]

        with pytest.raises(UpdateAlreadyQueuedError):
            run(harness.updater.queue_updates(batch))

        assert queued_names(harness) == ["existing"]

    def test_duplicate_in_one_call_adds_none(self) -> None:
        harness = Harness()
        batch = [NewUpdate("first"), NewUpdate("repeated"), NewUpdate("repeated")]

        with pytest.raises(UpdateAlreadyQueuedError):
            run(harness.updater.queue_updates(batch))

        assert queued_names(harness) == []

    def test_queue_keeps_order_and_fields(self) -> None:
        harness = Harness()
        run(
            harness.updater.queue_updates(
                [
                    NewUpdate("second", {"from": 5}, depends_on="first"),
                    NewUpdate("first"),
                ]
            )
        )
        second = harness.row("second")

        assert queued_names(harness) == ["second", "first"]
        assert second.progress == {"from": 5}
        assert second.depends_on == "first"


class TestQueueUpdateOnce:
    def test_adds_new_update(self) -> None:
        harness = Harness()

        added = run(harness.updater.queue_update_once("fresh"))

        assert added is True
        assert queued_names(harness) == ["fresh"]

    def test_skips_queued_update(self) -> None:
        harness = Harness()
        harness.queue("waiting")

        added = run(harness.updater.queue_update_once("waiting"))

        assert added is False

    def test_skips_completed_update(self) -> None:
        harness = Harness()
        handler = NumberedItemsHandler(harness, "done", item_count=5).register()
        harness.queue("done")
        harness.advance(5)

        added = run(harness.updater.queue_update_once("done"))
        harness.advance(5)

        assert added is False
        assert queued_names(harness) == []
        assert len(handler.calls) == 1


class TestRegisterUpdateHandler:
    def test_rejects_duplicate(self) -> None:
        harness = Harness()
        harness.updater.register_update_handler("taken", unused_handler)

        with pytest.raises(ValueError, match="taken"):
            harness.updater.register_update_handler("taken", unused_handler)

    def test_rejects_empty_name(self) -> None:
        harness = Harness()

        with pytest.raises(ValueError):
            harness.updater.register_update_handler("", unused_handler)

    def test_lists_registered_sorted(self) -> None:
        harness = Harness()
        for name in ("zeta", "alpha", "mu"):
            harness.updater.register_update_handler(name, unused_handler)

        assert harness.updater.registered_updates == ["alpha", "mu", "zeta"]


class TestMissingHandler:
    def test_reported_blocked(self) -> None:
        harness = Harness()
        harness.queue("orphan")

        described = harness.updater.describe_queue(run(harness.updater.get_queue()))

        assert "no handler" in str(described[0]["blocked_reason"])

    def test_does_not_block_others(self) -> None:
        harness = Harness()
        NumberedItemsHandler(harness, "served", item_count=5).register()
        harness.queue("orphan")
        harness.queue("served")
        harness.advance(5)

        assert harness.has_completed("served")
        assert queued_names(harness) == ["orphan"]

    def test_runs_once_registered(self) -> None:
        harness = Harness()
        harness.updater.start()
        harness.queue("late")
        NumberedItemsHandler(harness, "late", item_count=5).register()
        # The next poll, 5 s after start, finds the handler.
        harness.advance(10)

        assert harness.has_completed("late")


class TestDescribeQueue:
    def test_entry_fields(self) -> None:
        harness = Harness()
        harness.queue("orphan", progress={"from": 3}, depends_on="gone")

        described = harness.updater.describe_queue(run(harness.updater.get_queue()))

        assert described == [
            {
                "name": "orphan",
                "state": "queued",
                "depends_on": "gone",
                "blocked_reason": "no handler is registered for this update",
                "failure_count": 0,
                "last_error": None,
                "total_item_count": 0,
                "total_duration_ms": 0.0,
                "progress": {"from": 3},
            }
        ]


class TestCompletedRecord:
    def test_totals_include_last_batch(self) -> None:
        config = Config(default_batch_size=10, update_duration_ms=1000)
        harness = Harness(config)
        NumberedItemsHandler(harness, "counted", item_count=25).register()
        harness.queue("counted")
        harness.advance(10)

        rows = harness.database.query(
            "SELECT total_item_count, total_duration_ms FROM bgupdates_completed"
            " WHERE update_name = ?",
            ("counted",),
        )

        # Batches of 10, 10 and 5 items, 1000 ms each.
        assert rows == [(25, 3000.0)]
