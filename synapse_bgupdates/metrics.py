"""Prometheus metrics, served on Synapse's own metrics listener."""

from prometheus_client import Counter, Gauge

BATCHES = Counter(
    "synapse_bgupdates_batches_total",
    "Batches of the module's background updates that completed",
    ["update_name"],
)
ITEMS = Counter(
    "synapse_bgupdates_items_total",
    "Items processed by the module's background updates",
    ["update_name"],
)
BATCH_SECONDS = Counter(
    "synapse_bgupdates_batch_seconds_total",
    "Time spent in batches of the module's background updates, in seconds",
    ["update_name"],
)
FAILURES = Counter(
    "synapse_bgupdates_failures_total",
    "Batches of the module's background updates that raised an error",
    ["update_name"],
)
COMPLETED = Counter(
    "synapse_bgupdates_completed_total",
    "Background updates of the module that ran to the end",
    ["update_name"],
)
ENABLED = Gauge(
    "synapse_bgupdates_enabled",
    "1 while background updates are enabled, 0 while they are paused",
)
QUEUED = Gauge(
    "synapse_bgupdates_queued_updates",
    "Updates in the module's queue at the last check, by state",
    ["state"],
)
