"""Rates and batch sizes, with the figures that Synapse's status reports."""

# Weight of the newest batch in the exponentially weighted averages. Synapse
# uses 0.1, and the figures in status must mean what Synapse's mean.
SMOOTHING = 0.1


class UpdatePerformance:
    """Throughput of one update since this process started it."""

    def __init__(self, update_name: str):
        self.update_name = update_name
        self.total_item_count = 0
        self.total_duration_ms = 0.0
        self._average_item_count = 0.0
        self._average_duration_ms = 0.0

    def record_batch(self, item_count: int, duration_ms: float) -> None:
        """Add one finished batch to the totals and the weighted averages."""
        self.total_item_count += item_count
        self.total_duration_ms += duration_ms
        self._average_item_count += SMOOTHING * (item_count - self._average_item_count)
        self._average_duration_ms += SMOOTHING * (
            duration_ms - self._average_duration_ms
        )

    def average_items_per_ms(self) -> float | None:
        """Return the weighted items per millisecond, None before any item."""
        if self.total_item_count == 0:
            return None
        if self._average_duration_ms == 0:
            return 0.0
        return self._average_item_count / self._average_duration_ms

    def next_batch_size(
        self, target_duration_ms: int, min_batch_size: int, default_batch_size: int
    ) -> int:
        """Return how many items the next batch should cover.

        The first batch uses ``default_batch_size``. Later batches aim at
        ``target_duration_ms`` at the weighted rate, and never go below
        ``min_batch_size`` so that every batch makes progress.
        """
        rate = self.average_items_per_ms()
        if rate is None:
            return default_batch_size
        return max(int(target_duration_ms * rate), min_batch_size)

    def status_entry(self) -> dict[str, object]:
        """Return the entry that the status endpoint shows for this update."""
        return {
            "name": self.update_name,
            "total_item_count": self.total_item_count,
            "total_duration_ms": self.total_duration_ms,
            "average_items_per_ms": self.average_items_per_ms(),
        }
