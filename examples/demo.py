"""Demo: a homeserver with synapse-bgupdates, two jobs followed to the end.

Starts Synapse on SQLite in a scratch folder, bound to 127.0.0.1, with the
module and the example module ``room_event_counts``. It creates an admin,
users and rooms, then rebuilds the user directory through ``start_job`` and
prints ``status`` until the rebuild finishes. It then runs the example
module's backfill, prints its result and stops the homeserver. Run it with
``scripts/demo.sh``.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from synapse_bgupdates.jobs import DIRECTORY_STEPS
from synapse_bgupdates.testing.databases import DatabaseKind
from synapse_bgupdates.testing.homeserver import HomeserverProcess, prepare_template

STATUS_PATH = "/_synapse/admin/v1/background_updates/status"
START_JOB_PATH = "/_synapse/admin/v1/background_updates/start_job"
EXAMPLE_UPDATE = "example_room_event_counts"

# Small batches and short sleeps, so each job takes several visible batches.
HOMESERVER_SETTINGS = {
    "background_updates": {
        "sleep_enabled": True,
        "sleep_duration_ms": 300,
        "default_batch_size": 2,
        "min_batch_size": 1,
        "background_update_duration_ms": 1,
    }
}
MODULES: list[dict[str, Any]] = [
    {
        "module": "synapse_bgupdates.BackgroundUpdatesModule",
        "config": {
            "default_batch_size": 2,
            "min_batch_size": 1,
            "update_duration_ms": 1,
            "sleep_duration_ms": 300,
            "poll_interval_ms": 1000,
        },
    },
    {"module": "room_event_counts.RoomEventCountsModule"},
]
USER_COUNT = 6
ROOM_COUNT = 8
TIMEOUT_S = 120.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workdir",
        type=Path,
        help="scratch folder for the homeserver (default: a new temporary one)",
    )
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bgupdates-demo-"))
    print(f"Scratch folder (logs and config stay there): {workdir}")

    # The homeserver process imports the example module from this folder.
    examples = str(Path(__file__).resolve().parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [examples, os.environ.get("PYTHONPATH")])
    )

    with prepare_template(workdir / "template", DatabaseKind.SQLITE) as template:
        homeserver = HomeserverProcess(
            workdir / "homeserver",
            template=template,
            modules=MODULES,
            extra_config=HOMESERVER_SETTINGS,
        )
        with homeserver:
            print(f"Homeserver listening on {homeserver.base_url}")
            run_demo(homeserver)
        print("Homeserver stopped.")
    return 0


def run_demo(homeserver: HomeserverProcess) -> None:
    _, admin_token = homeserver.register_user("admin", admin=True)
    room_ids = create_users_and_rooms(homeserver)

    print("\n== Rebuilding the user directory (start_job regenerate_directory)")
    start_job(homeserver, admin_token, "regenerate_directory")
    follow_status(homeserver, admin_token, lambda: directory_pending(homeserver))

    print(f"\n== Backfilling per-room event counts (start_job {EXAMPLE_UPDATE})")
    start_job(homeserver, admin_token, EXAMPLE_UPDATE)
    follow_status(homeserver, admin_token, lambda: example_pending(homeserver))

    print("\n== Result: example_room_event_counts against the events table")
    show_result(homeserver, room_ids)


def create_users_and_rooms(homeserver: HomeserverProcess) -> list[str]:
    tokens = [
        homeserver.register_user(f"user{number}")[1] for number in range(USER_COUNT)
    ]
    room_ids = []
    for number in range(ROOM_COUNT):
        owner = tokens[number % USER_COUNT]
        room_id = homeserver.create_room(owner, name=f"Room {number}")
        guest = tokens[(number + 1) % USER_COUNT]
        homeserver.request(
            "POST",
            f"/_matrix/client/v3/rooms/{room_id}/invite",
            token=owner,
            body={
                "user_id": f"@user{(number + 1) % USER_COUNT}:{homeserver.server_name}"
            },
        )
        homeserver.join_room(guest, room_id)
        for message in range(number + 1):
            homeserver.send_message(owner, room_id, f"message {message}")
        room_ids.append(room_id)
    print(f"Created {USER_COUNT} users and {ROOM_COUNT} rooms with messages.")
    return room_ids


def start_job(homeserver: HomeserverProcess, token: str, job_name: str) -> None:
    response = homeserver.request(
        "POST", START_JOB_PATH, token=token, body={"job_name": job_name}
    )
    print(f"POST start_job {job_name} -> {response.status} {json.dumps(response.json)}")
    if response.status != 200:
        raise SystemExit(
            f"start_job {job_name} failed; see {homeserver.files.log} for details"
        )


def follow_status(
    homeserver: HomeserverProcess, token: str, pending: Callable[[], bool]
) -> None:
    """Print ``status`` whenever it changes, until ``pending()`` is false."""
    deadline = time.monotonic() + TIMEOUT_S
    last_line = ""
    while pending():
        if time.monotonic() > deadline:
            raise SystemExit(f"The job did not finish within {TIMEOUT_S:.0f} s")
        line = describe_status(homeserver.request("GET", STATUS_PATH, token=token).json)
        if line != last_line:
            print(f"  status: {line}")
            last_line = line
        time.sleep(0.2)
    print("  finished")


def describe_status(status: dict[str, Any]) -> str:
    current = status.get("current_updates") or {}
    queue = [
        f"{update['name']} {update['state']}"
        for update in status.get("module_updates") or []
    ]
    queue_text = f" | module queue: {', '.join(queue) or 'empty'}"
    if not current:
        return "no update in progress" + queue_text
    parts = []
    for database, entry in current.items():
        rate = entry["average_items_per_ms"]
        rate_text = "n/a" if rate is None else f"{rate:.3f}"
        parts.append(
            f"{database}: {entry['name']} {entry['total_item_count']} items"
            f" in {entry['total_duration_ms']:.0f} ms ({rate_text} items/ms)"
        )
    return "; ".join(parts) + queue_text


def directory_pending(homeserver: HomeserverProcess) -> bool:
    placeholders = ", ".join("?" for _ in DIRECTORY_STEPS)
    rows = homeserver.db_query(
        "SELECT COUNT(*) FROM background_updates"
        f" WHERE update_name IN ({placeholders})",
        DIRECTORY_STEPS,
    )
    return bool(rows[0][0])


def example_pending(homeserver: HomeserverProcess) -> bool:
    rows = homeserver.db_query(
        "SELECT COUNT(*) FROM bgupdates_queue WHERE update_name = ?", (EXAMPLE_UPDATE,)
    )
    return bool(rows[0][0])


def show_result(homeserver: HomeserverProcess, room_ids: list[str]) -> None:
    counted = dict(
        homeserver.db_query(
            "SELECT room_id, event_count FROM example_room_event_counts"
        )
    )
    actual = dict(
        homeserver.db_query("SELECT room_id, COUNT(*) FROM events GROUP BY room_id")
    )
    print(f"  {'room':<46} {'backfilled':>10} {'events':>7}")
    for room_id in room_ids:
        print(f"  {room_id:<46} {counted.get(room_id, '-'):>10} {actual[room_id]:>7}")
    mismatched = [room for room in actual if counted.get(room) != actual[room]]
    if mismatched:
        raise SystemExit(f"Counts differ from the events table for {mismatched}")
    print(f"  all {len(actual)} rooms match")


if __name__ == "__main__":
    sys.exit(main())
