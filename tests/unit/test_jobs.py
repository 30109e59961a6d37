"""The homeserver jobs that start_job queues, and their parameter checks."""

import json
from typing import Any

import pytest
from signedjson.key import (
    encode_verify_key_base64,
    generate_signing_key,
    get_verify_key,
)
from synapse.module_api.errors import Codes, SynapseError

from synapse_bgupdates.jobs import (
    EVENT_RESIGN,
    POPULATE_STATS,
    REGENERATE_DIRECTORY,
    build_job_rows,
    quote_value,
)


def resign_error(body: dict[str, Any]) -> SynapseError:
    with pytest.raises(SynapseError) as raised:
        build_job_rows(EVENT_RESIGN, body)
    return raised.value


class TestBuildJobRows:
    def test_populate_stats_is_one_row(self) -> None:
        rows = build_job_rows(POPULATE_STATS, {})

        assert [row.update_name for row in rows] == [POPULATE_STATS]
        assert rows[0].depends_on == ""

    def test_directory_steps_chain(self) -> None:
        rows = build_job_rows(REGENERATE_DIRECTORY, {})

        assert [row.depends_on for row in rows[1:]] == [
            row.update_name for row in rows[:-1]
        ]
        assert rows[0].depends_on == ""
        assert len(rows) == 4

    def test_resign_keeps_parameters(self) -> None:
        old_key = verify_key_text()
        rows = build_job_rows(EVENT_RESIGN, {"old_key": old_key, "before_ts": 5})

        assert json.loads(rows[0].progress_json) == {
            "old_key": old_key,
            "before_ts": 5,
        }

    @pytest.mark.parametrize("before_ts", [-1, 2**63, 10**30, True, "5", 1.5])
    def test_resign_rejects_before_ts(self, before_ts: Any) -> None:
        error = resign_error({"before_ts": before_ts})

        assert error.code == 400
        assert error.errcode == Codes.INVALID_PARAM
        assert "before_ts" in error.msg

    def test_resign_accepts_largest_timestamp(self) -> None:
        rows = build_job_rows(EVENT_RESIGN, {"before_ts": 2**63 - 1})

        assert str(2**63 - 1) in rows[0].progress_json

    @pytest.mark.parametrize(
        "old_key",
        [
            5,
            ["ed25519:a"],
            "ed25519:a",
            "ed25519:a not-base64!",
            "rsa:a AAAA",
            "ed25519:a AAAA",
            "ed25519:☃\u0000",
        ],
    )
    def test_resign_rejects_old_key(self, old_key: Any) -> None:
        error = resign_error({"old_key": old_key})

        assert error.errcode == Codes.INVALID_PARAM
        assert "old_key" in error.msg
        assert "algorithm:version base64key" in error.msg

    def test_unknown_job_raises(self) -> None:
        with pytest.raises(ValueError, match="not a homeserver job"):
            build_job_rows("other", {})


class TestQuoteValue:
    def test_short_value_is_json(self) -> None:
        assert quote_value(True) == "true"

    def test_long_value_is_cut(self) -> None:
        quoted = quote_value("x" * 10_000)

        assert len(quoted) < 150
        assert "10002 characters" in quoted

    def test_unicode_is_kept(self) -> None:
        assert quote_value("é") == '"é"'

    def test_lone_surrogate_is_escaped(self) -> None:
        quoted = quote_value("a\ud800")

        assert quoted == '"a\\ud800"'
        assert quoted.encode("utf-8")


def verify_key_text() -> str:
    """Return a real verify key as 'algorithm:version base64key'."""
    verify_key = get_verify_key(generate_signing_key("a_xyz"))
    return f"ed25519:a_xyz {encode_verify_key_base64(verify_key)}"
