"""Validation of the module's ``config`` block."""

import re
from typing import Any

import pytest
from synapse.module_api.errors import ConfigError

from synapse_bgupdates.config import Config, parse_config

# Each setting with the smallest value that parse_config accepts.
MINIMUMS = {
    "update_duration_ms": 1,
    "sleep_duration_ms": 0,
    "min_batch_size": 1,
    "default_batch_size": 1,
    "poll_interval_ms": 10,
    "max_failures": 1,
    "retry_backoff_ms": 0,
    "max_retry_backoff_ms": 0,
}

# Each setting with the largest value that parse_config accepts.
MAXIMUMS = {
    "update_duration_ms": 86_400_000,
    "sleep_duration_ms": 86_400_000,
    "min_batch_size": 1_000_000_000,
    "default_batch_size": 1_000_000_000,
    "poll_interval_ms": 86_400_000,
    "max_failures": 1000,
    "retry_backoff_ms": 86_400_000,
    "max_retry_backoff_ms": 86_400_000,
}


def config_error(raw: Any) -> str:
    """Return the message of the ConfigError that parsing ``raw`` raises."""
    with pytest.raises(ConfigError) as raised:
        parse_config(raw)
    return str(raised.value)


def mentions_number(message: str, number: int) -> bool:
    """Return whether ``number`` appears in ``message`` as a whole number."""
    return re.search(rf"(?<![\d-]){number}(?!\d)", message) is not None


class TestParseConfig:
    @pytest.mark.parametrize("raw", [None, {}])
    def test_empty_gives_defaults(self, raw: Any) -> None:
        assert parse_config(raw) == Config()

    def test_defaults_match_synapse(self) -> None:
        config = Config()

        assert config.update_duration_ms == 100
        assert config.sleep_duration_ms == 1000
        assert config.min_batch_size == 1
        assert config.default_batch_size == 100

    def test_module_defaults(self) -> None:
        config = Config()

        assert config.poll_interval_ms == 5000
        assert config.max_failures == 5
        assert config.retry_backoff_ms == 1000
        assert config.max_retry_backoff_ms == 60000

    def test_values_are_read(self) -> None:
        raw = {key: minimum + 7 for key, minimum in MINIMUMS.items()}

        config = parse_config(raw)

        for key, value in raw.items():
            assert getattr(config, key) == value

    def test_minimums_are_accepted(self) -> None:
        config = parse_config(MINIMUMS)

        for key, value in MINIMUMS.items():
            assert getattr(config, key) == value

    def test_unknown_key_is_named(self) -> None:
        message = config_error({"max_failures": 3, "batch_limit": 10})

        assert "batch_limit" in message

    @pytest.mark.parametrize("raw", [["max_failures"], "max_failures: 3", 5])
    def test_non_mapping_is_rejected(self, raw: Any) -> None:
        message = config_error(raw)

        assert type(raw).__name__ in message

    @pytest.mark.parametrize(
        ("key", "value"),
        [
            ("max_failures", True),
            ("sleep_duration_ms", False),
            ("default_batch_size", "100"),
            ("update_duration_ms", 100.0),
            ("retry_backoff_ms", 1.5),
            ("poll_interval_ms", None),
        ],
    )
    def test_wrong_type_names_key_and_value(self, key: str, value: Any) -> None:
        message = config_error({key: value})

        assert key in message
        assert repr(value) in message

    @pytest.mark.parametrize(("key", "minimum"), sorted(MINIMUMS.items()))
    def test_below_minimum_names_key_and_value(self, key: str, minimum: int) -> None:
        value = minimum - 1

        message = config_error({key: value})

        assert key in message
        assert mentions_number(message, value)
        assert mentions_number(message, minimum)

    @pytest.mark.parametrize(("key", "maximum"), sorted(MAXIMUMS.items()))
    def test_above_maximum_names_key_and_value(self, key: str, maximum: int) -> None:
        value = maximum + 1

        message = config_error({key: value})

        assert key in message
        assert mentions_number(message, value)
        assert mentions_number(message, maximum)

    def test_maximums_are_accepted(self) -> None:
        # default_batch_size must stay at least min_batch_size, so both
        # maximums together are valid too.
        config = parse_config(MAXIMUMS)

        assert config.poll_interval_ms == MAXIMUMS["poll_interval_ms"]

    def test_min_batch_above_default(self) -> None:
        message = config_error({"min_batch_size": 250, "default_batch_size": 200})

        assert "min_batch_size" in message
        assert mentions_number(message, 250)
        assert "default_batch_size" in message
        assert mentions_number(message, 200)

    def test_min_batch_above_unset_default(self) -> None:
        message = config_error({"min_batch_size": 101})

        assert "min_batch_size" in message
        assert mentions_number(message, 101)
