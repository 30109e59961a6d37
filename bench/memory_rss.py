"""Benchmark: resident memory of a homeserver with the module and without it.

A vanilla homeserver creates ``--rooms`` rooms once, and its database becomes
the template of every round. Each round starts two homeservers from it, side
by side: one with ``synapse_bgupdates.BackgroundUpdatesModule`` and the
example module ``examples/room_event_counts.py``, one without modules. The
script reads ``VmRSS`` from ``/proc/<pid>/status`` of both processes, one
right after the other, at two stages:

- after start: once both return 200 on ``/health`` and have idled
  ``--settle`` seconds;
- after the update: once the homeserver with the module has run the example
  update over every room through ``start_job``. The other homeserver idles
  meanwhile, so this stage shows what the update leaves behind.

Which homeserver starts first alternates from round to round. Every request
goes to 127.0.0.1, and the wait for the update is bounded by ``--timeout``.

Run it as ``python bench/memory_rss.py [--db sqlite|postgres] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchkit  # puts the checkout on sys.path for synapse_bgupdates

from synapse_bgupdates.testing.databases import DatabaseKind
from synapse_bgupdates.testing.homeserver import (
    HomeserverProcess,
    Template,
    prepare_template,
)

EXAMPLE_UPDATE = "example_room_event_counts"
START_JOB_PATH = "/_synapse/admin/v1/background_updates/start_job"
MODULES: list[dict[str, Any]] = [
    {"module": "synapse_bgupdates.BackgroundUpdatesModule", "config": {}},
    {"module": "room_event_counts.RoomEventCountsModule"},
]
VARIANTS = ("with module", "without")
STAGES = ("after start", "after update")
DEFAULT_ROUNDS = 5
DEFAULT_ROOMS = 200
DEFAULT_SETTLE_S = 5.0
DEFAULT_TIMEOUT_S = 120.0
_POLL_INTERVAL_S = 0.2


@dataclass(frozen=True)
class RoomsTemplate:
    """A template database with rooms, and an admin token valid on it."""

    template: Template
    admin_token: str


def read_rss_bytes(pid: int) -> int:
    """Return the resident set size of a process, from ``/proc/<pid>/status``.

    Raises:
        RuntimeError: the file has no ``VmRSS`` line, as for a zombie process.
    """
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"No VmRSS line in /proc/{pid}/status")


def rss_of(homeserver: HomeserverProcess) -> int:
    """Return the resident set size of a running homeserver.

    Raises:
        RuntimeError: the homeserver is not running.
    """
    pid = homeserver.pid
    if pid is None:
        raise RuntimeError(f"Homeserver in {homeserver.files.workdir} is not running")
    return read_rss_bytes(pid)


def create_rooms_template(
    scratch: Path, base: Template, room_count: int
) -> RoomsTemplate:
    """Create rooms on a vanilla homeserver and keep its database as a template."""
    homeserver = HomeserverProcess(scratch / "rooms-template", template=base)
    with ExitStack() as on_error:
        on_error.callback(homeserver.close)
        homeserver.start()
        _, token = homeserver.register_user("admin", admin=True)
        for number in range(room_count):
            homeserver.create_room(token, name=f"Room {number}")
        homeserver.stop()
        on_error.pop_all()
    homeserver.close(keep_database=True)
    template = Template(
        database=homeserver.database,
        signing_key_path=homeserver.files.signing_key,
        registration_shared_secret=homeserver.registration_shared_secret,
    )
    return RoomsTemplate(template, token)


def run_example_update(
    homeserver: HomeserverProcess, admin_token: str, room_count: int, timeout_s: float
) -> None:
    """Start the example update through the admin API and wait for its end.

    Raises:
        RuntimeError: ``start_job`` failed, or the count table has fewer rows
            than there are rooms.
        TimeoutError: the update did not complete within ``timeout_s``.
    """
    response = homeserver.request(
        "POST", START_JOB_PATH, {"job_name": EXAMPLE_UPDATE}, token=admin_token
    )
    if response.status != 200:
        raise RuntimeError(f"start_job returned {response.status}: {response.json}")
    deadline = time.monotonic() + timeout_s
    while not homeserver.db_query(
        "SELECT 1 FROM bgupdates_completed WHERE update_name = ?", (EXAMPLE_UPDATE,)
    ):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{EXAMPLE_UPDATE} did not complete in {timeout_s:g} s")
        time.sleep(_POLL_INTERVAL_S)
    (counted,) = homeserver.db_query("SELECT COUNT(*) FROM example_room_event_counts")[
        0
    ]
    if counted < room_count:
        raise RuntimeError(f"{EXAMPLE_UPDATE} counted {counted} of {room_count} rooms")


def measure_round(
    round_index: int,
    scratch: Path,
    rooms: RoomsTemplate,
    arguments: argparse.Namespace,
) -> dict[tuple[str, str], int]:
    """Start both homeservers, read their memory at each stage and stop them.

    Returns:
        The resident set size in bytes, keyed by stage and variant.
    """
    homeservers = {
        VARIANTS[0]: HomeserverProcess(
            scratch / f"round-{round_index}-with",
            template=rooms.template,
            modules=MODULES,
        ),
        VARIANTS[1]: HomeserverProcess(
            scratch / f"round-{round_index}-without", template=rooms.template
        ),
    }
    rss: dict[tuple[str, str], int] = {}
    with ExitStack() as stack:
        for variant in benchkit.ordered_pair(round_index, *VARIANTS):
            stack.enter_context(homeservers[variant])
        time.sleep(arguments.settle)
        for variant, homeserver in homeservers.items():
            rss[(STAGES[0], variant)] = rss_of(homeserver)

        run_example_update(
            homeservers[VARIANTS[0]],
            rooms.admin_token,
            arguments.rooms,
            arguments.timeout,
        )
        for variant, homeserver in homeservers.items():
            rss[(STAGES[1], variant)] = rss_of(homeserver)
    return rss


def format_results(results: list[dict[tuple[str, str], int]]) -> str:
    """Build the table of memory ratios and differences per stage."""
    rows = []
    for stage in STAGES:
        with_module = [result[(stage, VARIANTS[0])] for result in results]
        without = [result[(stage, VARIANTS[1])] for result in results]
        pairs = list(zip(with_module, without, strict=True))
        ratios = [a / b for a, b in pairs]
        extra_mib = [(a - b) / 2**20 for a, b in pairs]
        rows.append(
            [
                stage,
                benchkit.Spread.of(ratios).format(3),
                benchkit.Spread.of(extra_mib).format(1),
            ]
        )
    headers = ["stage", "RSS with/without", "extra RSS MiB, with minus without"]
    return benchkit.format_table(headers, rows)


def add_examples_to_pythonpath() -> None:
    """Let homeserver processes import the example module."""
    examples = str(benchkit.REPO_ROOT / "examples")
    current = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [examples, current]))


def run_benchmark(arguments: argparse.Namespace) -> None:
    """Prepare the templates, measure every round and print the table."""
    kind = DatabaseKind(arguments.db)
    add_examples_to_pythonpath()
    print(benchkit.describe_run())
    print(f"{kind.value}; {arguments.rooms} rooms; {arguments.rounds} rounds")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as scratch_name:
        scratch = Path(scratch_name)
        with prepare_template(scratch / "template", kind) as base:
            rooms = create_rooms_template(scratch, base, arguments.rooms)
            with rooms.template:
                for round_index in range(arguments.rounds):
                    results.append(
                        measure_round(round_index, scratch, rooms, arguments)
                    )
                    print(
                        f"round {round_index + 1} of {arguments.rounds} done",
                        flush=True,
                    )
    print(format_results(results))


def parse_arguments() -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    benchkit.add_database_argument(parser)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument(
        "--rooms", type=int, default=DEFAULT_ROOMS, help="rooms in the template"
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=DEFAULT_SETTLE_S,
        help="seconds to idle after start before the first reading",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help="seconds to wait for the example update in each round",
    )
    arguments = parser.parse_args()
    if arguments.rounds < 1 or arguments.rooms < 1:
        parser.error("--rounds and --rooms must be at least 1")
    return arguments


def main() -> None:
    """Run the benchmark."""
    run_benchmark(parse_arguments())


if __name__ == "__main__":
    main()
