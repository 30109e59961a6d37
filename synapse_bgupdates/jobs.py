"""The homeserver's own rebuild jobs that ``start_job`` can queue."""

import itertools
import json
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import attr
from signedjson.key import decode_verify_key_base64
from synapse.module_api.errors import Codes, SynapseError

POPULATE_STATS = "populate_stats_process_rooms"
REGENERATE_DIRECTORY = "regenerate_directory"
EVENT_RESIGN = "event_resign"

# Names that start_job gives a meaning of its own; no module update may use them.
HOMESERVER_JOB_NAMES = frozenset({POPULATE_STATS, REGENERATE_DIRECTORY, EVENT_RESIGN})

# The user directory is rebuilt in four steps; each waits for the one before.
DIRECTORY_STEPS = (
    "populate_user_directory_createtables",
    "populate_user_directory_process_rooms",
    "populate_user_directory_process_users",
    "populate_user_directory_cleanup",
)


# The largest value of a signed 64-bit column, the type of Synapse's timestamps.
_MAX_TIMESTAMP_MS = 2**63 - 1

# Values quoted in error messages are cut to this many characters.
_MAX_QUOTED_CHARS = 100


def quote_value(value: Any) -> str:
    """Return ``value`` as JSON for an error message, cut if it is long."""
    text = json.dumps(value, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate from a \ud800 escape cannot be sent as UTF-8.
        text = json.dumps(value)
    if len(text) <= _MAX_QUOTED_CHARS:
        return text
    return f"{text[:_MAX_QUOTED_CHARS]}… ({len(text)} characters)"


@attr.s(frozen=True, auto_attribs=True)
class HomeserverUpdateRow:
    """A row for the homeserver's ``background_updates`` table."""

    update_name: str
    progress_json: str = "{}"
    # Synapse's own start_job stores "" for "no dependency"; so does this one.
    depends_on: str = ""


def build_job_rows(job_name: str, body: Mapping[str, Any]) -> list[HomeserverUpdateRow]:
    """Return the homeserver updates that a job consists of.

    Args:
        job_name: one of ``HOMESERVER_JOB_NAMES``.
        body: the request body, for the job's optional parameters.

    Raises:
        SynapseError: a parameter of the job is invalid (400 M_INVALID_PARAM).
        ValueError: ``job_name`` is not a homeserver job.
    """
    if job_name == POPULATE_STATS:
        return [HomeserverUpdateRow(POPULATE_STATS)]
    if job_name == REGENERATE_DIRECTORY:
        return _directory_rows()
    if job_name == EVENT_RESIGN:
        return [_event_resign_row(body)]
    raise ValueError(f"{job_name} is not a homeserver job")


def _directory_rows() -> list[HomeserverUpdateRow]:
    rows = [HomeserverUpdateRow(DIRECTORY_STEPS[0])]
    for previous, step in itertools.pairwise(DIRECTORY_STEPS):
        rows.append(HomeserverUpdateRow(step, depends_on=previous))
    return rows


def _event_resign_row(body: Mapping[str, Any]) -> HomeserverUpdateRow:
    old_key = body.get("old_key")
    if old_key is not None and not _is_verify_key(old_key):
        # The homeserver's updater fails on every batch with a key it cannot
        # parse, and stops all of its updates after five failures.
        raise SynapseError(
            HTTPStatus.BAD_REQUEST,
            "'old_key' must be a string 'algorithm:version base64key', such as"
            f" 'ed25519:a_xyz XGX0JRS2Af3be3k…', got {quote_value(old_key)}",
            Codes.INVALID_PARAM,
        )

    # JSON true/false arrive as bool, a subclass of int, and are no timestamp.
    # A value outside a 64-bit column would make every batch of the
    # homeserver's updater fail, so it is rejected here.
    before_ts = body.get("before_ts")
    if before_ts is not None and (
        isinstance(before_ts, bool)
        or not isinstance(before_ts, int)
        or not 0 <= before_ts <= _MAX_TIMESTAMP_MS
    ):
        raise SynapseError(
            HTTPStatus.BAD_REQUEST,
            "'before_ts' must be an integer timestamp in milliseconds from 0 to "
            f"{_MAX_TIMESTAMP_MS}, got {quote_value(before_ts)}",
            Codes.INVALID_PARAM,
        )

    progress = {"old_key": old_key, "before_ts": before_ts}
    return HomeserverUpdateRow(EVENT_RESIGN, json.dumps(progress))


def _is_verify_key(old_key: Any) -> bool:
    if not isinstance(old_key, str):
        return False
    key_id, _, key_base64 = old_key.partition(" ")
    algorithm, _, version = key_id.partition(":")
    try:
        decode_verify_key_base64(algorithm, version, key_base64)
    except Exception:
        # signedjson raises ValueError, binascii.Error or an error of the
        # crypto library, depending on what is wrong with the key.
        return False
    return True
