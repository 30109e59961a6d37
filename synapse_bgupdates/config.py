"""Configuration of the module, parsed once from ``homeserver.yaml``."""

import logging
from collections.abc import Mapping
from typing import Any

import attr
from synapse.module_api.errors import ConfigError

logger = logging.getLogger(__name__)


@attr.s(frozen=True, auto_attribs=True, kw_only=True)
class Config:
    """Settings of the module's own updater.

    The four batch settings have the meaning and defaults of Synapse's
    ``background_updates`` section, so an admin can reuse the same figures.
    The homeserver's own updates keep following that section.
    """

    update_duration_ms: int = 100
    """Target duration of one batch, in milliseconds."""

    sleep_duration_ms: int = 1000
    """Pause between two batches of the module's updates, in milliseconds."""

    min_batch_size: int = 1
    """Smallest batch handed to a handler once a rate is known."""

    default_batch_size: int = 100
    """Batch size of the first batch of an update, before a rate is known."""

    poll_interval_ms: int = 5000
    """Interval at which an idle updater looks for newly queued updates."""

    max_failures: int = 5
    """Consecutive failures after which an update is marked failed."""

    retry_backoff_ms: int = 1000
    """Wait after a first failure, doubled on each further failure."""

    max_retry_backoff_ms: int = 60000
    """Upper bound of the wait between two attempts, in milliseconds."""


_DAY_MS = 24 * 60 * 60 * 1000
_MAX_BATCH_SIZE = 1_000_000_000

# The range of values that each setting accepts. The upper bounds keep the
# timers and batch sizes within what Twisted and the databases take.
_BOUNDS: dict[str, tuple[int, int]] = {
    "update_duration_ms": (1, _DAY_MS),
    "sleep_duration_ms": (0, _DAY_MS),
    "min_batch_size": (1, _MAX_BATCH_SIZE),
    "default_batch_size": (1, _MAX_BATCH_SIZE),
    "poll_interval_ms": (10, _DAY_MS),
    "max_failures": (1, 1000),
    "retry_backoff_ms": (0, _DAY_MS),
    "max_retry_backoff_ms": (0, _DAY_MS),
}


def parse_config(raw: Any) -> Config:
    """Validate the ``config`` block of the module entry.

    Args:
        raw: the value under ``config:`` in ``homeserver.yaml``; ``None`` when
            the block is empty.

    Returns:
        The parsed configuration.

    Raises:
        ConfigError: a key is unknown, or a value has the wrong type or range.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(
            "The config of synapse_bgupdates must be a mapping of settings, "
            f"got {type(raw).__name__}"
        )

    unknown = sorted(str(key) for key in raw if key not in _BOUNDS)
    if unknown:
        raise ConfigError(
            f"Unknown setting(s) {', '.join(unknown)} in the config of "
            f"synapse_bgupdates; valid settings: {', '.join(sorted(_BOUNDS))}"
        )

    values = {key: _parse_int(key, value) for key, value in raw.items()}
    config = Config(**values)
    if config.min_batch_size > config.default_batch_size:
        raise ConfigError(
            f"min_batch_size ({config.min_batch_size}) must not exceed "
            f"default_batch_size ({config.default_batch_size})"
        )
    return config


def _parse_int(key: str, value: Any) -> int:
    minimum, maximum = _BOUNDS[key]

    # bool is a subclass of int, and `true` is never a meaningful count.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{key} must be at least {minimum}, got {value}")
    if value > maximum:
        raise ConfigError(f"{key} must be at most {maximum}, got {value}")
    return value
