"""End-to-end tests of jobs that run to the end on a real homeserver.

Each test starts a homeserver with the module (and the example module of
``examples/room_event_counts.py``), queues jobs through ``start_job`` and
checks what they changed in the database and in what the homeserver serves.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import MODULE_CONFIG, StartHomeserver, with_module

from synapse_bgupdates.testing.client import HttpResponse
from synapse_bgupdates.testing.databases import DatabaseKind
from synapse_bgupdates.testing.homeserver import HomeserverProcess

API_PREFIX = "/_synapse/admin/v1/background_updates"
EXAMPLE_UPDATE = "example_room_event_counts"
DIRECTORY_STEPS = (
    "populate_user_directory_createtables",
    "populate_user_directory_process_rooms",
    "populate_user_directory_process_users",
    "populate_user_directory_cleanup",
)
DIRECTORY_TABLES = (
    "user_directory",
    "user_directory_search",
    "users_in_public_rooms",
    "users_who_share_private_rooms",
)
STATUS_ENTRY_KEYS = {
    "name",
    "total_item_count",
    "total_duration_ms",
    "average_items_per_ms",
}

# Half a second between batches and one room in the first batch, so that a test
# can watch or interrupt the example update while it runs. The 1 ms target
# duration keeps later batches small once the rate is measured.
SLOW_CONFIG: dict[str, Any] = {
    **MODULE_CONFIG,
    "default_batch_size": 1,
    "update_duration_ms": 1,
    "sleep_duration_ms": 500,
}

JOB_TIMEOUT_S = 30.0
_POLL_INTERVAL_S = 0.15


@dataclass
class AdminApi:
    """The Background Updates admin API of one homeserver, as a server admin.

    Attributes:
        homeserver: The homeserver under test.
        token: Access token of a server admin.
        last_status: Body of the last ``GET status`` response, for messages.
    """

    homeserver: HomeserverProcess
    token: str
    last_status: Any = field(default=None)

    def status(self) -> dict[str, Any]:
        """Fetch ``GET status`` and fail the test unless it returns 200."""
        response = self.homeserver.request(
            "GET", f"{API_PREFIX}/status", token=self.token
        )
        self.last_status = response.json
        if response.status != 200:
            pytest.fail(f"GET status returned HTTP {response.status}: {response.json}")
        return dict(response.json)

    def start_job(self, job_name: str) -> HttpResponse:
        """Send ``POST start_job`` for ``job_name``."""
        return self.homeserver.request(
            "POST", f"{API_PREFIX}/start_job", {"job_name": job_name}, token=self.token
        )

    def set_enabled(self, enabled: bool) -> HttpResponse:
        """Send ``POST enabled`` to pause (False) or resume (True) updates."""
        return self.homeserver.request(
            "POST", f"{API_PREFIX}/enabled", {"enabled": enabled}, token=self.token
        )

    def get_enabled(self) -> HttpResponse:
        """Send ``GET enabled``."""
        return self.homeserver.request("GET", f"{API_PREFIX}/enabled", token=self.token)

    def wait_until(
        self, predicate: Callable[[], bool], timeout_s: float, message: str
    ) -> None:
        """Poll ``predicate`` until it returns True.

        Fail the test after ``timeout_s`` seconds, or at once if the
        homeserver exits, with ``message`` and the last status seen.
        """
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if not self.homeserver.running:
                pytest.fail(
                    f"Homeserver exited while waiting until {message}.\n"
                    f"{self.homeserver.log_tail()}"
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"Timed out after {timeout_s:g} s waiting until {message}; "
                    f"last status: {self.last_status!r}"
                )
            time.sleep(_POLL_INTERVAL_S)

    def run_module_update(self, update_name: str, description: str) -> None:
        """Start a module update through start_job and wait until it finishes."""
        response = self.start_job(update_name)
        assert response.status == 200
        assert response.json == {}
        self.wait_until(
            lambda: self.module_update_done(update_name), JOB_TIMEOUT_S, description
        )

    # Conditions for wait_until.

    def homeserver_updates_done(self, update_names: Iterable[str]) -> bool:
        """Return whether status shows no current update and none of these is queued."""
        if self.status()["current_updates"]:
            return False
        return not queued_homeserver_updates(self.homeserver, update_names)

    def module_update_done(self, update_name: str) -> bool:
        """Return whether the update completed and the updater is done with it.

        The last batch leaves the queue before the updater records its totals,
        so the update must also be gone from ``current_updates``.
        """
        status = self.status()
        listed = {entry["name"] for entry in status["module_updates"]}
        current = {entry["name"] for entry in status["current_updates"].values()}
        if update_name in listed | current:
            return False
        return bool(
            self.homeserver.db_query(
                "SELECT 1 FROM bgupdates_completed WHERE update_name = ?",
                [update_name],
            )
        )


def start_admin(
    start_homeserver: StartHomeserver, config: dict[str, Any] | None = None
) -> AdminApi:
    """Start a homeserver with the module and the example, and register an admin."""
    homeserver = start_homeserver(modules=with_module(config))
    _, token = homeserver.register_user("admin", admin=True)
    return AdminApi(homeserver, token)


def queued_homeserver_updates(
    homeserver: HomeserverProcess, update_names: Iterable[str]
) -> set[str]:
    """Return which of ``update_names`` background_updates still contains."""
    rows = homeserver.db_query("SELECT update_name FROM background_updates")
    return {str(name) for (name,) in rows} & set(update_names)


def table_exists(homeserver: HomeserverProcess, table: str) -> bool:
    """Return whether the homeserver's database has a table of that name."""
    if homeserver.database_kind is DatabaseKind.SQLITE:
        sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
    else:
        sql = "SELECT 1 FROM pg_tables WHERE schemaname = 'public' AND tablename = ?"
    return bool(homeserver.db_query(sql, [table]))


def create_rooms_with_messages(
    homeserver: HomeserverProcess, token: str, message_counts: Iterable[int]
) -> list[str]:
    """Create one room per entry with that many messages, and return the ids."""
    room_ids = []
    for index, message_count in enumerate(message_counts):
        room_id = homeserver.create_room(token, name=f"room {index}")
        for number in range(message_count):
            homeserver.send_message(token, room_id, f"message {number}")
        room_ids.append(room_id)
    return room_ids


def expected_event_counts(homeserver: HomeserverProcess) -> dict[str, int]:
    """Count the events of every room in the ``rooms`` table."""
    counts = {
        str(room_id): 0
        for (room_id,) in homeserver.db_query("SELECT room_id FROM rooms")
    }
    rows = homeserver.db_query("SELECT room_id, COUNT(*) FROM events GROUP BY room_id")
    for room_id, event_count in rows:
        if room_id in counts:
            counts[room_id] = int(event_count)
    return counts


def example_event_counts(homeserver: HomeserverProcess) -> dict[str, int]:
    """Return the rows that the example update wrote."""
    rows = homeserver.db_query(
        "SELECT room_id, event_count FROM example_room_event_counts"
    )
    return {str(room_id): int(event_count) for room_id, event_count in rows}


def queue_row(homeserver: HomeserverProcess, update_name: str) -> tuple[Any, ...]:
    """Return state, progress_json and total_item_count of a queued update."""
    rows = homeserver.db_query(
        "SELECT state, progress_json, total_item_count FROM bgupdates_queue"
        " WHERE update_name = ?",
        [update_name],
    )
    if len(rows) != 1:
        pytest.fail(f"Expected one bgupdates_queue row for {update_name}: {rows}")
    return rows[0]


def search_directory(homeserver: HomeserverProcess, token: str, term: str) -> set[str]:
    """Return the user ids that a user directory search for ``term`` finds."""
    response = homeserver.request(
        "POST",
        "/_matrix/client/v3/user_directory/search",
        {"search_term": term},
        token=token,
    )
    if response.status != 200:
        pytest.fail(f"User directory search returned HTTP {response.status}")
    return {str(result["user_id"]) for result in response.json["results"]}


def room_details(api: AdminApi, room_id: str) -> dict[str, Any]:
    """Fetch the admin API's details of a room."""
    room = urllib.parse.quote(room_id, safe="")
    response = api.homeserver.request(
        "GET", f"/_synapse/admin/v1/rooms/{room}", token=api.token
    )
    if response.status != 200:
        pytest.fail(f"GET room {room_id} returned HTTP {response.status}")
    return dict(response.json)


def test_regenerate_directory_rebuilds(start_homeserver: StartHomeserver) -> None:
    api = start_admin(start_homeserver)
    homeserver = api.homeserver
    alice_id, alice_token = homeserver.register_user("alice")
    bob_id, bob_token = homeserver.register_user("bob")
    carol_id, carol_token = homeserver.register_user("carol")
    private_room = homeserver.create_room(
        alice_token, preset="private_chat", invite=[bob_id]
    )
    homeserver.join_room(bob_token, private_room)
    public_room = homeserver.create_room(alice_token, preset="public_chat")
    homeserver.join_room(carol_token, public_room)

    def finds_room_mates() -> bool:
        return bob_id in search_directory(
            homeserver, alice_token, "bob"
        ) and carol_id in search_directory(homeserver, alice_token, "carol")

    api.wait_until(finds_room_mates, JOB_TIMEOUT_S, "the directory finds room-mates")
    for table in DIRECTORY_TABLES:
        homeserver.db_execute(f"DELETE FROM {table}")
    assert search_directory(homeserver, alice_token, "bob") == set()
    assert search_directory(homeserver, alice_token, "carol") == set()

    response = api.start_job("regenerate_directory")
    assert response.status == 200
    assert response.json == {}
    api.wait_until(
        lambda: api.homeserver_updates_done(DIRECTORY_STEPS),
        JOB_TIMEOUT_S,
        "the directory rebuild has finished",
    )

    assert search_directory(homeserver, alice_token, "bob") == {bob_id}
    assert search_directory(homeserver, alice_token, "carol") == {carol_id}
    assert search_directory(homeserver, bob_token, "alice") == {alice_id}


def test_populate_stats_recalculates(start_homeserver: StartHomeserver) -> None:
    api = start_admin(start_homeserver)
    homeserver = api.homeserver
    _, user_token = homeserver.register_user("member")
    room_id = homeserver.create_room(api.token, preset="public_chat")
    homeserver.join_room(user_token, room_id)
    api.wait_until(
        lambda: room_details(api, room_id)["joined_members"] == 2,
        JOB_TIMEOUT_S,
        "the room's statistics count both members",
    )

    homeserver.db_execute(
        "UPDATE room_stats_current SET joined_members = 0 WHERE room_id = ?",
        [room_id],
    )
    assert room_details(api, room_id)["joined_members"] == 0

    response = api.start_job("populate_stats_process_rooms")
    assert response.status == 200
    assert response.json == {}
    api.wait_until(
        lambda: api.homeserver_updates_done(["populate_stats_process_rooms"]),
        JOB_TIMEOUT_S,
        "the statistics recalculation has finished",
    )

    assert room_details(api, room_id)["joined_members"] == 2


def test_pause_holds_queued_jobs(start_homeserver: StartHomeserver) -> None:
    api = start_admin(start_homeserver)
    homeserver = api.homeserver
    create_rooms_with_messages(homeserver, api.token, [1, 2])

    assert api.set_enabled(False).json == {"enabled": False}
    assert api.start_job("regenerate_directory").status == 200
    assert api.start_job(EXAMPLE_UPDATE).status == 200
    time.sleep(3)

    status = api.status()
    assert api.get_enabled().json == {"enabled": False}
    assert status["enabled"] is False
    # An update that waits at the pause for its first batch is not in progress.
    assert status["current_updates"] == {}
    assert queued_homeserver_updates(homeserver, DIRECTORY_STEPS) == set(
        DIRECTORY_STEPS
    )
    assert queue_row(homeserver, EXAMPLE_UPDATE) == ("queued", "{}", 0)
    if table_exists(homeserver, "example_room_event_counts"):
        assert example_event_counts(homeserver) == {}

    assert api.set_enabled(True).json == {"enabled": True}
    api.wait_until(
        lambda: api.homeserver_updates_done(DIRECTORY_STEPS),
        JOB_TIMEOUT_S,
        "the directory rebuild has finished after the resume",
    )
    api.wait_until(
        lambda: api.module_update_done(EXAMPLE_UPDATE),
        JOB_TIMEOUT_S,
        "the example update has finished after the resume",
    )

    assert example_event_counts(homeserver) == expected_event_counts(homeserver)


def test_pause_stops_running_example(start_homeserver: StartHomeserver) -> None:
    api = start_admin(start_homeserver, SLOW_CONFIG)
    homeserver = api.homeserver
    create_rooms_with_messages(homeserver, api.token, [0] * 8)
    assert api.start_job(EXAMPLE_UPDATE).status == 200
    api.wait_until(
        lambda: queue_row(homeserver, EXAMPLE_UPDATE)[2] >= 1,
        JOB_TIMEOUT_S,
        "the example update has counted a room",
    )

    assert api.set_enabled(False).json == {"enabled": False}
    # A batch that was running when the pause came may still complete.
    time.sleep(1)
    paused_row = queue_row(homeserver, EXAMPLE_UPDATE)
    paused_counts = example_event_counts(homeserver)
    time.sleep(2)

    assert queue_row(homeserver, EXAMPLE_UPDATE) == paused_row
    assert example_event_counts(homeserver) == paused_counts
    assert len(paused_counts) < 8

    assert api.set_enabled(True).json == {"enabled": True}
    api.wait_until(
        lambda: api.module_update_done(EXAMPLE_UPDATE),
        JOB_TIMEOUT_S,
        "the example update has finished after the resume",
    )

    assert example_event_counts(homeserver) == expected_event_counts(homeserver)
    assert logcontext_warnings(homeserver) == []


def logcontext_warnings(homeserver: HomeserverProcess) -> list[str]:
    """Return the log lines where Synapse reports a broken logging context."""
    markers = ("logcontext", "logging context", "from sentinel context")
    lines = homeserver.files.log.read_text(encoding="utf-8").splitlines()
    return [line for line in lines if any(marker in line for marker in markers)]


def test_example_update_counts_events(start_homeserver: StartHomeserver) -> None:
    api = start_admin(start_homeserver, {**MODULE_CONFIG, "default_batch_size": 2})
    homeserver = api.homeserver
    room_ids = create_rooms_with_messages(homeserver, api.token, [0, 1, 2, 3, 5])

    api.run_module_update(EXAMPLE_UPDATE, "the example update has finished")

    counts = example_event_counts(homeserver)
    assert counts == expected_event_counts(homeserver)
    assert set(room_ids) <= set(counts)
    # The rooms differ only in their number of messages, so every count differs.
    assert len({counts[room_id] for room_id in room_ids}) == len(room_ids)


def test_completed_totals_count_last_batch(
    start_homeserver: StartHomeserver,
) -> None:
    # With the default first batch of 100 items, one batch counts all rooms
    # and finishes the update.
    api = start_admin(start_homeserver)
    homeserver = api.homeserver
    create_rooms_with_messages(homeserver, api.token, [0, 0, 0])
    room_count = len(homeserver.db_query("SELECT room_id FROM rooms"))

    api.run_module_update(EXAMPLE_UPDATE, "the example update has finished")

    rows = homeserver.db_query(
        "SELECT total_item_count, total_duration_ms FROM bgupdates_completed"
        " WHERE update_name = ?",
        [EXAMPLE_UPDATE],
    )
    assert len(rows) == 1
    total_item_count, total_duration_ms = rows[0]
    assert total_item_count == room_count
    assert total_duration_ms > 0


def test_status_shows_running_example(start_homeserver: StartHomeserver) -> None:
    api = start_admin(start_homeserver, SLOW_CONFIG)
    homeserver = api.homeserver
    create_rooms_with_messages(homeserver, api.token, [0] * 6)
    seen: list[dict[str, Any]] = []

    def record_current_entry() -> bool:
        current = api.status()["current_updates"]
        if current:
            seen.append(current)
        return api.module_update_done(EXAMPLE_UPDATE)

    assert api.start_job(EXAMPLE_UPDATE).status == 200
    api.wait_until(record_current_entry, JOB_TIMEOUT_S, "the example update ends")

    assert seen, "status never showed the example update in current_updates"
    for current in seen:
        assert set(current) == {"master"}
        entry = current["master"]
        assert set(entry) == STATUS_ENTRY_KEYS
        assert entry["name"] == EXAMPLE_UPDATE
        assert isinstance(entry["total_item_count"], int)
        assert isinstance(entry["total_duration_ms"], (int, float))
        average = entry["average_items_per_ms"]
        if entry["total_item_count"] == 0:
            assert average is None
        else:
            assert isinstance(average, (int, float))
            assert not isinstance(average, bool)
    assert any(current["master"]["total_item_count"] > 0 for current in seen)
    assert api.status()["current_updates"] == {}


def test_example_update_survives_kill(start_homeserver: StartHomeserver) -> None:
    api = start_admin(start_homeserver, SLOW_CONFIG)
    homeserver = api.homeserver
    create_rooms_with_messages(homeserver, api.token, [0, 1, 2, 3, 4, 5, 6, 7])
    first_room = min(expected_event_counts(homeserver))

    assert api.start_job(EXAMPLE_UPDATE).status == 200
    api.wait_until(
        lambda: queue_row(homeserver, EXAMPLE_UPDATE)[2] >= 2,
        JOB_TIMEOUT_S,
        "the example update has counted two rooms",
    )
    homeserver.kill()

    state, progress_json, _ = queue_row(homeserver, EXAMPLE_UPDATE)
    assert state == "queued"
    assert progress_json != "{}"
    assert first_room in example_event_counts(homeserver)
    # A sentinel count on a room counted before the kill shows whether the
    # restarted updater counts that room again.
    homeserver.db_execute(
        "UPDATE example_room_event_counts SET event_count = -1 WHERE room_id = ?",
        [first_room],
    )

    homeserver.start()
    api.wait_until(
        lambda: api.module_update_done(EXAMPLE_UPDATE),
        JOB_TIMEOUT_S,
        "the example update has finished after the restart",
    )

    counts = example_event_counts(homeserver)
    expected = expected_event_counts(homeserver)
    assert counts.pop(first_room) == -1
    del expected[first_room]
    assert counts == expected


def test_example_update_runs_again(start_homeserver: StartHomeserver) -> None:
    api = start_admin(start_homeserver)
    homeserver = api.homeserver
    room_ids = create_rooms_with_messages(homeserver, api.token, [1, 2])
    api.run_module_update(
        EXAMPLE_UPDATE, "the first run of the example update has finished"
    )
    first_counts = example_event_counts(homeserver)
    for number in range(3):
        homeserver.send_message(api.token, room_ids[0], f"later {number}")

    api.run_module_update(
        EXAMPLE_UPDATE, "the second run of the example update has finished"
    )

    counts = example_event_counts(homeserver)
    assert counts == expected_event_counts(homeserver)
    assert counts[room_ids[0]] == first_counts[room_ids[0]] + 3
