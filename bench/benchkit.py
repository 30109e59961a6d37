"""Shared helpers of the benchmarks in this folder.

Importing this module puts the checkout's root on ``sys.path``, so that the
scripts run as ``python bench/<name>.py`` without the package being installed.
Every comparison in the benchmarks is a ratio between two variants measured
side by side in one run, summarised over rounds by ``Spread``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

T = TypeVar("T")


@dataclass(frozen=True)
class Spread:
    """Median, minimum and maximum of a per-round figure."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        """Summarise the values of all rounds.

        Raises:
            ValueError: ``values`` is empty.
        """
        if not values:
            raise ValueError("Cannot summarise an empty list of rounds")
        return cls(statistics.median(values), min(values), max(values))

    def format(self, digits: int = 2) -> str:
        """Format as ``median (min to max)``."""
        median, low, high = (
            f"{value:.{digits}f}" for value in (self.median, self.low, self.high)
        )
        return f"{median} ({low} to {high})"


def ordered_pair(round_index: int, first: T, second: T) -> tuple[T, T]:
    """Return the two variants in the order in which a round runs them.

    The order alternates from round to round, so that neither variant always
    runs first, on a warmer cache or a quieter machine.
    """
    return (first, second) if round_index % 2 == 0 else (second, first)


def percentile(values: Sequence[float], percent: int) -> float:
    """Return a percentile with linear interpolation between samples.

    Raises:
        ValueError: fewer than two values, or ``percent`` outside 1..99.
    """
    if not 1 <= percent <= 99:
        raise ValueError(f"Invalid percent {percent}: expected 1..99")
    if len(values) < 2:
        raise ValueError("A percentile needs at least two samples")
    cut_points = statistics.quantiles(values, n=100, method="inclusive")
    return cut_points[percent - 1]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Format rows as a Markdown table, ready to paste into the docs."""
    lines = ["| " + " | ".join(headers) + " |"]
    lines.append("|" + "|".join("---" for _ in headers) + "|")
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return "\n".join(lines)


def describe_run() -> str:
    """Return one line on when and where the benchmark runs.

    The load average at start shows how busy the machine was with other work.
    """
    import synapse

    load_1m, load_5m, _ = os.getloadavg()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{now}; Python {platform.python_version()}; Synapse {synapse.__version__};"
        f" {os.cpu_count()} CPUs; load average {load_1m:.2f} (1 min),"
        f" {load_5m:.2f} (5 min) at start"
    )


def add_database_argument(parser: argparse.ArgumentParser) -> None:
    """Add the ``--db`` option that chooses the homeserver's database engine."""
    # Imported here so that benchmarks without homeservers need no harness.
    from synapse_bgupdates.testing.databases import DatabaseKind

    parser.add_argument(
        "--db",
        choices=[kind.value for kind in DatabaseKind],
        default=DatabaseKind.SQLITE.value,
        help="database engine; postgres needs a server on 127.0.0.1:5432 that"
        " lets the postgres role in without a password",
    )
