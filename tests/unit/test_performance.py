"""Batch sizing, checked against the figures that Synapse itself produces."""

from typing import Any

import pytest
from synapse.storage.background_updates import BackgroundUpdatePerformance

from synapse_bgupdates.config import Config
from synapse_bgupdates.performance import UpdatePerformance

from .support import Harness, NumberedItemsHandler

# Synapse's defaults for background_update_duration_ms, min_batch_size and
# default_batch_size (synapse/config/background_updates.py, 1.163).
TARGET_MS = 100
MIN_BATCH = 1
DEFAULT_BATCH = 100


class TestUpdatePerformance:
    def test_rate_is_none_before_first_item(self) -> None:
        performance = UpdatePerformance("update")

        assert performance.average_items_per_ms() is None

    def test_rate_is_none_after_empty_batch(self) -> None:
        performance = UpdatePerformance("update")
        performance.record_batch(0, 1000.0)

        assert performance.average_items_per_ms() is None

    def test_first_batch_uses_default(self) -> None:
        performance = UpdatePerformance("update")

        assert performance.next_batch_size(TARGET_MS, MIN_BATCH, 250) == 250

    def test_first_batch_figures(self) -> None:
        performance = UpdatePerformance("update")
        performance.record_batch(100, 1000.0)

        assert performance.average_items_per_ms() == 0.1
        assert performance.next_batch_size(TARGET_MS, MIN_BATCH, DEFAULT_BATCH) == 10

    def test_second_batch_figures(self) -> None:
        performance = UpdatePerformance("update")
        performance.record_batch(100, 1000.0)
        performance.record_batch(10, 1000.0)

        assert performance.average_items_per_ms() == 0.05263157894736842
        assert performance.total_item_count == 110
        assert performance.total_duration_ms == 2000.0
        assert performance.next_batch_size(TARGET_MS, MIN_BATCH, DEFAULT_BATCH) == 5

    def test_min_batch_size_clamps(self) -> None:
        performance = UpdatePerformance("update")
        # 1 item per second makes int(100 ms * 0.001 items/ms) == 0.
        performance.record_batch(1, 1000.0)

        assert performance.next_batch_size(TARGET_MS, 7, DEFAULT_BATCH) == 7

    def test_zero_duration_gives_min_batch(self) -> None:
        performance = UpdatePerformance("update")
        performance.record_batch(50, 0.0)

        assert performance.average_items_per_ms() == 0.0
        assert performance.next_batch_size(TARGET_MS, 3, DEFAULT_BATCH) == 3

    @pytest.mark.parametrize(
        "batches",
        [
            [(100, 1000.0), (10, 1000.0)],
            [(100, 1000.0), (10, 1000.0), (5, 230.0), (2, 17.5)],
            [(0, 10.0), (3, 0.0), (400, 12.25), (1, 9000.0)],
        ],
    )
    def test_rate_matches_synapse(self, batches: list[tuple[int, float]]) -> None:
        ours = UpdatePerformance("update")
        synapse = BackgroundUpdatePerformance("update")
        for item_count, duration_ms in batches:
            ours.record_batch(item_count, duration_ms)
            synapse.update(item_count, duration_ms)

            assert ours.average_items_per_ms() == synapse.average_items_per_ms()
            assert ours.total_item_count == synapse.total_item_count
            assert ours.total_duration_ms == synapse.total_duration_ms

    def test_status_entry(self) -> None:
        performance = UpdatePerformance("update")
        performance.record_batch(100, 1000.0)

        assert performance.status_entry() == {
            "name": "update",
            "total_item_count": 100,
            "total_duration_ms": 1000.0,
            "average_items_per_ms": 0.1,
        }


class TestUpdaterBatchSizing:
    """The sizes that the updater hands to a handler taking 1 s per batch."""

    def _run_two_batches(self) -> tuple[Harness, NumberedItemsHandler]:
        harness = Harness()
        handler = NumberedItemsHandler(harness, "sized", item_count=1000).register()
        harness.queue("sized")
        # Batches start at t=0 and t=2 and last 1 s each, with the default
        # 1 s sleep between them, so the third batch is running at t=4.
        harness.advance(4)
        return harness, handler

    def test_batch_sizes_follow_rate(self) -> None:
        _, handler = self._run_two_batches()

        batch_sizes = [call.batch_size for call in handler.calls]

        assert batch_sizes == [DEFAULT_BATCH, 10, 5]

    def test_status_after_two_batches(self) -> None:
        harness, _ = self._run_two_batches()

        assert harness.updater.current_status() == {
            "name": "sized",
            "total_item_count": 110,
            "total_duration_ms": 2000.0,
            "average_items_per_ms": 0.05263157894736842,
        }

    def test_totals_are_stored(self) -> None:
        harness, _ = self._run_two_batches()

        row = harness.row("sized")

        assert row.total_item_count == 110
        assert row.total_duration_ms == 2000.0

    def test_configured_sizes_are_used(self) -> None:
        config = Config(default_batch_size=40, min_batch_size=30)
        harness = Harness(config)
        handler = NumberedItemsHandler(harness, "sized", item_count=1000).register()
        harness.queue("sized")
        harness.advance(2)

        batch_sizes = [call.batch_size for call in handler.calls]

        # 40 items in 1000 ms makes int(100 * 0.04) == 4, raised to 30.
        assert batch_sizes == [40, 30]

    def test_non_integer_result_counts_zero(self) -> None:
        harness = Harness()
        batch_sizes: list[int] = []

        async def boolean_handler(progress: dict[str, Any], batch_size: int) -> int:
            batch_sizes.append(batch_size)
            return True

        harness.updater.register_update_handler("boolean", boolean_handler)
        harness.queue("boolean")
        harness.advance(1)

        # With no item counted there is no rate, so the default size stays.
        assert batch_sizes == [DEFAULT_BATCH, DEFAULT_BATCH]
        assert harness.row("boolean").total_item_count == 0
