"""Progress saved with each batch survives a restart and a failed batch."""

from synapse_bgupdates.config import Config

from .support import Harness, NumberedItemsHandler, processed_item_ids

# 10 items in 1000 ms at a 1000 ms target keeps every batch at 10 items.
CONFIG = Config(default_batch_size=10, update_duration_ms=1000)


class TestResumeAfterRestart:
    def _restart_during_third_batch(
        self,
    ) -> tuple[Harness, NumberedItemsHandler, list[int]]:
        first = Harness(CONFIG)
        NumberedItemsHandler(first, "backfill", item_count=35).register()
        first.updater.start()
        first.queue("backfill")
        # Batches start at t=0, 2 and 4, and the third has not committed at t=4.5.
        first.advance(4.5, step=0.5)
        ids_before_restart = processed_item_ids(first.database, "backfill")
        # The first updater's clock is never advanced again, as if its
        # process had died. The second updater shares only the database.
        first.scheduler.stop()

        second = Harness(CONFIG, database=first.database)
        handler = NumberedItemsHandler(second, "backfill", item_count=35).register()
        second.updater.start()
        second.advance(20)
        return second, handler, ids_before_restart

    def test_crash_loses_uncommitted_batch(self) -> None:
        _, _, ids_before_restart = self._restart_during_third_batch()

        assert ids_before_restart == list(range(20))

    def test_resumes_from_saved_progress(self) -> None:
        _, handler, _ = self._restart_during_third_batch()

        assert handler.calls[0].progress == {"next_item": 20}

    def test_no_item_processed_twice(self) -> None:
        harness, _, _ = self._restart_during_third_batch()
        ids = processed_item_ids(harness.database, "backfill")

        assert len(ids) == len(set(ids))
        assert ids == list(range(35))

    def test_finishes_after_restart(self) -> None:
        harness, _, _ = self._restart_during_third_batch()

        assert harness.has_completed("backfill")


class TestFailedBatchIsNotApplied:
    def test_rolled_back_batch_is_retried_once(self) -> None:
        harness = Harness(CONFIG)
        handler = NumberedItemsHandler(harness, "backfill", item_count=30).register()
        handler.fail_in_transaction = {2}
        harness.queue("backfill")
        harness.advance(30)
        ids = processed_item_ids(harness.database, "backfill")

        assert handler.calls[2].progress == handler.calls[1].progress
        assert len(ids) == len(set(ids))
        assert ids == list(range(30))
        assert harness.has_completed("backfill")

    def test_committed_batch_is_not_redone(self) -> None:
        harness = Harness(CONFIG)
        handler = NumberedItemsHandler(harness, "backfill", item_count=30).register()
        handler.fail_after_commit = {2}
        harness.queue("backfill")
        harness.advance(30)
        ids = processed_item_ids(harness.database, "backfill")

        assert handler.calls[2].progress == {"next_item": 20}
        assert len(ids) == len(set(ids))
        assert ids == list(range(30))

    def test_failure_after_finish_is_not_retried(self) -> None:
        harness = Harness(CONFIG)
        handler = NumberedItemsHandler(harness, "backfill", item_count=20).register()
        # The second batch finishes the update, then raises.
        handler.fail_after_commit = {2}
        harness.queue("backfill")
        harness.updater.start()
        harness.advance(60)

        assert len(handler.calls) == 2
        assert harness.has_completed("backfill")
        assert processed_item_ids(harness.database, "backfill") == list(range(20))
