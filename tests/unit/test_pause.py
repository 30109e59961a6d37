"""Pausing the updater through its gate stops it at a batch boundary."""

from synapse_bgupdates.config import Config

from .support import Harness, NumberedItemsHandler, processed_item_ids

# 10 items in 1000 ms at a 1000 ms target keeps every batch at 10 items.
CONFIG = Config(default_batch_size=10, update_duration_ms=1000)

# An hour, which would fit hundreds of batches and poll intervals if the pause
# had no effect.
PAUSE_S = 3600


class TestPauseAtBatchBoundary:
    def _pause_during_first_batch(self) -> tuple[Harness, NumberedItemsHandler]:
        harness = Harness(CONFIG)
        handler = NumberedItemsHandler(harness, "paused", item_count=30).register()
        harness.updater.start()
        harness.queue("paused")
        # The first batch runs from t=0 to t=1, and the pause comes halfway.
        harness.advance(0.5, step=0.5)
        harness.updater.gate.set_enabled(False)
        harness.advance(PAUSE_S, step=0.5)
        return harness, handler

    def test_running_batch_completes(self) -> None:
        harness, _ = self._pause_during_first_batch()

        assert processed_item_ids(harness.database, "paused") == list(range(10))

    def test_next_batch_does_not_start(self) -> None:
        _, handler = self._pause_during_first_batch()

        assert len(handler.calls) == 1

    def test_progress_unchanged_while_paused(self) -> None:
        harness, _ = self._pause_during_first_batch()

        assert harness.row("paused").progress == {"next_item": 10}

    def test_resume_continues_from_progress(self) -> None:
        harness, handler = self._pause_during_first_batch()
        harness.updater.gate.set_enabled(True)

        assert handler.calls[1].progress == {"next_item": 10}

    def test_resume_finishes(self) -> None:
        harness, handler = self._pause_during_first_batch()
        harness.updater.gate.set_enabled(True)
        harness.advance(10, step=0.5)

        assert harness.has_completed("paused")
        assert processed_item_ids(harness.database, "paused") == list(range(30))
        assert len(handler.calls) == 3
