"""Benchmark: admin API latency of a homeserver with the module and without it.

Two homeservers start from the same prepared template database, one with
``synapse_bgupdates.BackgroundUpdatesModule`` and one without modules, and
both run for the whole benchmark. The script sends them the same requests,
interleaved one by one with the order alternating, on one keep-alive
connection per homeserver, and times each request from send to the last byte
of the response:

- ``GET /_synapse/admin/v1/background_updates/status``: the module's own
  servlet against the homeserver's own. Besides authenticating the admin in
  the same way, the module's servlet reads its queue from the database at
  each request, while the homeserver's reads memory only;
- ``GET /_synapse/admin/v1/background_updates/enabled``: the same comparison
  for a servlet that reads memory only in both, as a control;
- ``GET /_synapse/admin/v2/users/<admin>``: a request that the module passes
  to the homeserver's admin resource, against the homeserver serving it
  directly.

Each round gives one p50 and one p90 ratio per endpoint (with the module over
without). Every request goes to 127.0.0.1, and the loops are bounded by the
request count and by ``--max-seconds``.

Run it as ``python bench/status_latency.py [--db sqlite|postgres] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import tempfile
import time
import urllib.parse
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import benchkit  # puts the checkout on sys.path for synapse_bgupdates

from synapse_bgupdates.testing.databases import DatabaseKind
from synapse_bgupdates.testing.homeserver import HomeserverProcess, prepare_template

MODULE_ENTRY = {"module": "synapse_bgupdates.BackgroundUpdatesModule", "config": {}}
STATUS_PATH = "/_synapse/admin/v1/background_updates/status"
ENABLED_PATH = "/_synapse/admin/v1/background_updates/enabled"
DEFAULT_ROUNDS = 10
DEFAULT_REQUESTS = 100
DEFAULT_WARMUP = 20
DEFAULT_MAX_SECONDS = 300.0
VARIANTS = ("with module", "without")


class KeepAliveClient:
    """GET requests over one persistent HTTP connection to 127.0.0.1."""

    def __init__(self, port: int, token: str):
        self._port = port
        self._headers = {"Authorization": f"Bearer {token}"}
        self._connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def get(self, path: str) -> tuple[float, int, bytes]:
        """Send one GET request.

        Returns:
            The seconds from sending the request to reading the whole body,
            the HTTP status and the body.
        """
        try:
            return self._timed_get(path)
        except (http.client.RemoteDisconnected, ConnectionResetError):
            # The server closed the idle connection; open a new one.
            self._connection.close()
            return self._timed_get(path)

    def _timed_get(self, path: str) -> tuple[float, int, bytes]:
        started = time.perf_counter()
        self._connection.request("GET", path, headers=self._headers)
        response = self._connection.getresponse()
        body = response.read()
        return time.perf_counter() - started, response.status, body

    def close(self) -> None:
        """Close the connection."""
        self._connection.close()


@dataclass
class Target:
    """One homeserver under test, with a client logged in as its admin."""

    name: str
    homeserver: HomeserverProcess
    client: KeepAliveClient
    admin_user_id: str


Latencies = dict[tuple[str, str], list[float]]
"""Request latencies in seconds, keyed by endpoint and variant."""


def endpoint_paths(target: Target) -> dict[str, str]:
    """Return the path of each endpoint on that homeserver."""
    user = urllib.parse.quote(target.admin_user_id, safe="")
    return {
        "status": STATUS_PATH,
        "enabled": ENABLED_PATH,
        "users v2": f"/_synapse/admin/v2/users/{user}",
    }


def start_target(stack: ExitStack, name: str, homeserver: HomeserverProcess) -> Target:
    """Start a homeserver, register its admin and open a client to it."""
    stack.enter_context(homeserver)
    user_id, token = homeserver.register_user("admin", admin=True)
    client = KeepAliveClient(homeserver.port, token)
    stack.callback(client.close)
    return Target(name, homeserver, client, user_id)


def check_status_source(target: Target) -> None:
    """Raise unless ``status`` comes from the servlet that the variant expects.

    Raises:
        RuntimeError: the request failed, or the module's ``module_updates``
            key is present on the homeserver without it or missing on the one
            with it.
    """
    _, status, body = target.client.get(STATUS_PATH)
    if status != 200:
        raise RuntimeError(f"{target.name}: status returned HTTP {status}: {body!r}")
    has_module_key = "module_updates" in json.loads(body)
    if has_module_key != (target.name == "with module"):
        raise RuntimeError(
            f"{target.name}: status came from the wrong servlet: {body!r}"
        )


def send(target: Target, path: str) -> float:
    """Send one request and return its latency in seconds.

    Raises:
        RuntimeError: the homeserver returned a status other than 200.
    """
    seconds, status, body = target.client.get(path)
    if status != 200:
        raise RuntimeError(f"{target.name}: GET {path} returned {status}: {body!r}")
    return seconds


def send_interleaved(
    targets: Sequence[Target],
    paths: dict[str, dict[str, str]],
    count: int,
    deadline: float,
) -> Latencies:
    """Send ``count`` requests per endpoint to each homeserver, alternating.

    Raises:
        TimeoutError: the monotonic clock passed ``deadline``.
    """
    latencies: Latencies = {}
    for endpoint in paths[targets[0].name]:
        for index in range(count):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    "Timed out: requests still running at the --max-seconds limit;"
                    " lower --rounds or --requests, or raise --max-seconds"
                )
            for target in benchkit.ordered_pair(index, *targets):
                seconds = send(target, paths[target.name][endpoint])
                latencies.setdefault((endpoint, target.name), []).append(seconds)
    return latencies


def run_rounds(
    targets: Sequence[Target], arguments: argparse.Namespace
) -> list[Latencies]:
    """Send the warm-up requests, then every round's, and return the rounds.

    Raises:
        TimeoutError: the requests took longer than ``--max-seconds``.
    """
    deadline = time.monotonic() + arguments.max_seconds
    paths = {target.name: endpoint_paths(target) for target in targets}
    send_interleaved(targets, paths, arguments.warmup, deadline)
    rounds = []
    for round_index in range(arguments.rounds):
        rounds.append(send_interleaved(targets, paths, arguments.requests, deadline))
        print(f"round {round_index + 1} of {arguments.rounds} done", flush=True)
    return rounds


def format_results(rounds: list[Latencies]) -> str:
    """Build the table of p50 and p90 ratios, with the module over without."""
    endpoints = list(dict.fromkeys(endpoint for endpoint, _ in rounds[0]))
    rows = []
    for endpoint in endpoints:
        row = [endpoint]
        for percent in (50, 90):
            ratios = [
                benchkit.percentile(latencies[(endpoint, VARIANTS[0])], percent)
                / benchkit.percentile(latencies[(endpoint, VARIANTS[1])], percent)
                for latencies in rounds
            ]
            row.append(benchkit.Spread.of(ratios).format())
        rows.append(row)
    headers = ["endpoint", "p50 with/without", "p90 with/without"]
    return benchkit.format_table(headers, rows)


def run_benchmark(arguments: argparse.Namespace) -> None:
    """Start both homeservers, measure, print the table and stop them."""
    kind = DatabaseKind(arguments.db)
    print(benchkit.describe_run())
    print(
        f"{kind.value}; {arguments.rounds} rounds of {arguments.requests} requests"
        f" per endpoint and homeserver, after {arguments.warmup} warm-up requests"
    )
    with tempfile.TemporaryDirectory(prefix="bench-status-") as scratch_name:
        scratch = Path(scratch_name)
        with (
            prepare_template(scratch / "template", kind) as template,
            ExitStack() as stack,
        ):
            targets = [
                start_target(
                    stack,
                    VARIANTS[0],
                    HomeserverProcess(
                        scratch / "with-module",
                        template=template,
                        modules=[MODULE_ENTRY],
                    ),
                ),
                start_target(
                    stack,
                    VARIANTS[1],
                    HomeserverProcess(scratch / "without", template=template),
                ),
            ]
            for target in targets:
                check_status_source(target)
            rounds = run_rounds(targets, arguments)
    print(format_results(rounds))


def parse_arguments() -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    benchkit.add_database_argument(parser)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument(
        "--requests",
        type=int,
        default=DEFAULT_REQUESTS,
        help="timed requests per round, endpoint and homeserver",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=DEFAULT_WARMUP,
        help="untimed requests per endpoint and homeserver before the rounds",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=DEFAULT_MAX_SECONDS,
        help="time limit of all requests together, in seconds",
    )
    arguments = parser.parse_args()
    if arguments.rounds < 1 or arguments.requests < 2 or arguments.warmup < 0:
        parser.error("expected --rounds >= 1, --requests >= 2 and --warmup >= 0")
    return arguments


def main() -> None:
    """Run the benchmark."""
    run_benchmark(parse_arguments())


if __name__ == "__main__":
    main()
