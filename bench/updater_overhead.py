"""Benchmark: the cost that ``BackgroundUpdater`` adds around a handler's work.

The work is a backfill that copies ``--items`` rows from a ``source`` table to
a ``target`` table of a SQLite file database, one batch per transaction, and
saves its progress in the queue row in the same transaction. Each round runs
it in two ways, on fresh copies of the same database:

- updater: ``BackgroundUpdater`` with ``sleep_duration_ms`` 0 on the real
  Twisted reactor, woken as ``queue_update`` wakes it, until it is idle;
- plain: a loop that calls the same handler with the same batch size until a
  batch comes back short.

Batch sizes are fixed so that both variants do the same transactions of work.
The updater hands out ``default_batch_size`` first and then
``max(update_duration_ms * rate, min_batch_size)``, so a large
``update_duration_ms`` would let batches grow. The benchmark builds ``Config``
directly with ``update_duration_ms=0`` and both batch sizes equal, which makes
every batch exactly that size. ``parse_config`` rejects 0. Its smallest valid
value, 1 ms, did not fix batches of 10, because the measured rate of this
handler went above 10 rows per millisecond at times: in a trial with 2000
items, 54 of the updater's batches grew. The table counts off-size batches,
which should be none.

Each round measures the wall time of both variants, and then the peak of
Python allocations (``tracemalloc``) of both in separate runs, because
tracing slows the code down. SQLite's own allocations are not traced. The
order of the two variants alternates from round to round.

NOTE: ``SqliteDatabase`` runs each transaction on the reactor thread. Synapse
runs them in a thread pool, so each of the updater's extra transactions costs
more inside a homeserver than here.

Run it as ``python bench/updater_overhead.py [--rounds N] [--items N]``.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import benchkit  # puts the checkout on sys.path for synapse_bgupdates
from synapse.module_api import make_deferred_yieldable
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime

from synapse_bgupdates import store
from synapse_bgupdates.config import Config
from synapse_bgupdates.store import Cursor, Dialect, NewUpdate
from synapse_bgupdates.testing.clock import SqliteDatabase
from synapse_bgupdates.updater import BackgroundUpdater

UPDATE_NAME = "bench_copy_rows"
DEFAULT_ITEMS = 20_000
DEFAULT_BATCH_SIZES = (10, 100, 1000)
DEFAULT_ROUNDS = 7
DEFAULT_SYNCHRONOUS = ("full", "off")
VARIANTS = ("updater", "plain")


class ReactorScheduler:
    """A ``Scheduler`` on the global Twisted reactor, outside Synapse.

    It keeps the Deferred of every background run, so that the benchmark can
    wait until the updater is idle.
    """

    def __init__(self, reactor: IReactorTime):
        self._reactor = reactor
        self._background: list[defer.Deferred[None]] = []
        self._looping_calls: list[task.LoopingCall] = []

    def seconds(self) -> float:
        # mypy reads the methods of a zope.interface as lacking ``self``.
        return self._reactor.seconds()  # type: ignore[misc]

    async def sleep(self, seconds: float) -> None:
        # Synapse's helper works without logging contexts, as here.
        await make_deferred_yieldable(task.deferLater(self._reactor, seconds))

    def run_in_background(self, desc: str, func: Callable[[], Awaitable[None]]) -> None:
        self._background.append(defer.ensureDeferred(_await(func)))

    def looping_call(
        self, desc: str, func: Callable[[], Awaitable[None]], interval_s: float
    ) -> None:
        call = task.LoopingCall(lambda: defer.ensureDeferred(_await(func)))
        call.clock = self._reactor
        call.start(interval_s, now=False)
        self._looping_calls.append(call)

    async def wait_for_background(self) -> None:
        """Wait for every background run started so far, re-raising its error."""
        while self._background:
            await self._background.pop(0)

    def stop(self) -> None:
        """Stop the looping calls started through this scheduler."""
        for call in self._looping_calls:
            if call.running:
                call.stop()


async def _await(func: Callable[[], Awaitable[None]]) -> None:
    await func()


class CopyHandler:
    """An update handler that copies a batch of ``source`` rows to ``target``.

    Attributes:
        expected_batch_size: The fixed batch size that the benchmark sets.
        off_size_batches: Calls whose batch size differed from it.
        progress: The progress saved by the last batch that was not the last.
    """

    def __init__(
        self,
        database: SqliteDatabase,
        updater: BackgroundUpdater,
        expected_batch_size: int,
    ):
        self._database = database
        self._updater = updater
        self.expected_batch_size = expected_batch_size
        self.off_size_batches = 0
        self.progress: dict[str, Any] = {}

    async def __call__(self, progress: dict[str, Any], batch_size: int) -> int:
        """Copy the ``batch_size`` rows after ``progress["after_id"]``."""
        if batch_size != self.expected_batch_size:
            self.off_size_batches += 1
        after_id = int(progress.get("after_id", 0))
        return await self._database.run_db_interaction(
            "bench_copy_rows", self._copy_txn, after_id, batch_size
        )

    def _copy_txn(self, txn: Cursor, after_id: int, batch_size: int) -> int:
        txn.execute(
            "SELECT id, value FROM source WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, batch_size),
        )
        rows = txn.fetchall()
        for row_id, value in rows:
            txn.execute(
                "INSERT INTO target (id, value) VALUES (?, ?)", (row_id, value * 2)
            )
        if len(rows) < batch_size:
            self._updater.finish_update_txn(txn, UPDATE_NAME)
        else:
            self.progress = {"after_id": rows[-1][0]}
            self._updater.save_progress_txn(txn, UPDATE_NAME, self.progress)
        return len(rows)


@dataclass
class Workload:
    """A fresh database with one queued update, and the updater over it."""

    database: SqliteDatabase
    scheduler: ReactorScheduler
    updater: BackgroundUpdater
    handler: CopyHandler
    batch_size: int


def fill_template(path: Path, item_count: int) -> None:
    """Create the source rows, the empty target and the queued update."""
    database = SqliteDatabase(str(path))
    connection = database.connection
    # Synapse 1.163 turns on write-ahead logging on its SQLite connections.
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("CREATE TABLE source (id INTEGER PRIMARY KEY, value INTEGER)")
    connection.execute("CREATE TABLE target (id INTEGER PRIMARY KEY, value INTEGER)")
    connection.executemany(
        "INSERT INTO source (id, value) VALUES (?, ?)",
        ((row_id, row_id % 977) for row_id in range(1, item_count + 1)),
    )
    cursor = connection.cursor()
    store.create_tables_txn(cursor, Dialect.SQLITE)
    store.queue_updates_txn(cursor, [NewUpdate(UPDATE_NAME)], 0)
    connection.commit()
    connection.close()


def open_workload(
    template: Path, copy: Path, batch_size: int, synchronous: str
) -> Workload:
    """Copy the template database and set up the updater and handler on it."""
    copy.unlink(missing_ok=True)
    source = SqliteDatabase(str(template))
    database = SqliteDatabase(str(copy))
    source.connection.backup(database.connection)
    source.connection.close()
    database.connection.execute("PRAGMA journal_mode = WAL")
    database.connection.execute(f"PRAGMA synchronous = {synchronous.upper()}")

    from twisted.internet import reactor

    scheduler = ReactorScheduler(cast(IReactorTime, reactor))
    updater = BackgroundUpdater(
        scheduler=scheduler,
        run_db_interaction=database.run_db_interaction,
        dialect=lambda: Dialect.SQLITE,
        config=Config(
            update_duration_ms=0,
            sleep_duration_ms=0,
            min_batch_size=batch_size,
            default_batch_size=batch_size,
        ),
    )
    handler = CopyHandler(database, updater, batch_size)
    updater.register_update_handler(UPDATE_NAME, handler)
    return Workload(database, scheduler, updater, handler, batch_size)


async def run_updater(workload: Workload) -> None:
    """Wake the updater, as ``queue_update`` does, and wait until it is idle."""
    workload.updater.wake()
    await workload.scheduler.wait_for_background()


async def run_plain(workload: Workload) -> None:
    """Call the handler with the fixed batch size until a batch is short."""
    progress: dict[str, Any] = {}
    while True:
        item_count = await workload.handler(progress, workload.batch_size)
        if item_count < workload.batch_size:
            return
        progress = workload.handler.progress


RUNNERS: dict[str, Callable[[Workload], Awaitable[None]]] = {
    "updater": run_updater,
    "plain": run_plain,
}


def check_result(workload: Workload, item_count: int) -> int:
    """Check that the backfill completed and count the off-size batches.

    Raises:
        RuntimeError: rows are missing in ``target`` or the update is still
            queued, which means a batch failed.
    """
    (copied,) = workload.database.query("SELECT COUNT(*) FROM target")[0]
    completed = workload.database.query(
        "SELECT 1 FROM bgupdates_completed WHERE update_name = ?", (UPDATE_NAME,)
    )
    if copied != item_count or not completed:
        raise RuntimeError(
            f"Backfill incomplete: {copied} of {item_count} rows copied,"
            f" completed={bool(completed)}"
        )
    return workload.handler.off_size_batches


@contextmanager
def traced_peak() -> Iterator[list[int]]:
    """Trace Python allocations in the body of the ``with`` block.

    The yielded list receives one value: the peak in bytes above the level at
    the start.
    """
    result: list[int] = []
    gc.collect()
    tracemalloc.start()
    baseline = tracemalloc.get_traced_memory()[0]
    try:
        yield result
        result.append(tracemalloc.get_traced_memory()[1] - baseline)
    finally:
        tracemalloc.stop()


@dataclass(frozen=True)
class Case:
    """One setting of the benchmark: a SQLite durability level and a batch size."""

    synchronous: str
    batch_size: int


@dataclass(frozen=True)
class Measurement:
    """Figures of one variant in one round of a case."""

    seconds: float
    peak_bytes: int
    transactions: int
    off_size_batches: int


async def measure(
    variant: str, case: Case, template: Path, scratch: Path, item_count: int
) -> Measurement:
    """Run one variant twice on fresh copies of the template, timed and traced."""
    run = RUNNERS[variant]
    copy = scratch / f"{variant}.db"
    workload = open_workload(template, copy, case.batch_size, case.synchronous)
    started = time.perf_counter()
    await run(workload)
    seconds = time.perf_counter() - started
    off_size = check_result(workload, item_count)
    transactions = workload.database.transaction_count
    workload.database.connection.close()

    workload = open_workload(template, copy, case.batch_size, case.synchronous)
    with traced_peak() as peak:
        await run(workload)
    check_result(workload, item_count)
    workload.database.connection.close()
    return Measurement(seconds, peak[0], transactions, off_size)


async def run_benchmark(arguments: argparse.Namespace) -> None:
    """Measure every case for ``arguments.rounds`` rounds and print the table."""
    cases = [
        Case(synchronous, batch_size)
        for synchronous in arguments.synchronous
        for batch_size in arguments.batch_sizes
    ]
    print(benchkit.describe_run())
    print(f"{arguments.items} items per run, {arguments.rounds} rounds")
    results: dict[tuple[Case, str], list[Measurement]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-updater-") as scratch_name:
        scratch = Path(scratch_name)
        template = scratch / "template.db"
        fill_template(template, arguments.items)
        for round_index in range(arguments.rounds):
            for case in cases:
                for variant in benchkit.ordered_pair(round_index, *VARIANTS):
                    measurement = await measure(
                        variant, case, template, scratch, arguments.items
                    )
                    results.setdefault((case, variant), []).append(measurement)
            print(f"round {round_index + 1} of {arguments.rounds} done", flush=True)
    print(format_results(results, cases))


def format_results(
    results: dict[tuple[Case, str], list[Measurement]], cases: list[Case]
) -> str:
    """Build the table of per-round comparisons, updater against plain."""
    rows = []
    for case in cases:
        updater = results[(case, "updater")]
        plain = results[(case, "plain")]
        pairs = list(zip(updater, plain, strict=True))
        time_ratios = [a.seconds / b.seconds for a, b in pairs]
        memory_ratios = [a.peak_bytes / b.peak_bytes for a, b in pairs]
        extra_kib = [(a.peak_bytes - b.peak_bytes) / 1024 for a, b in pairs]
        rows.append(
            [
                case.synchronous,
                str(case.batch_size),
                f"{updater[0].transactions / plain[0].transactions:.2f}",
                benchkit.Spread.of(time_ratios).format(),
                benchkit.Spread.of(memory_ratios).format(),
                benchkit.Spread.of(extra_kib).format(0),
                str(sum(m.off_size_batches for m in updater + plain)),
            ]
        )
    headers = [
        "synchronous",
        "batch size",
        "transactions updater/plain",
        "time updater/plain",
        "peak memory updater/plain",
        "extra peak KiB",
        "off-size batches",
    ]
    return benchkit.format_table(headers, rows)


def parse_arguments() -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rounds", type=int, default=DEFAULT_ROUNDS, help="rounds per batch size"
    )
    parser.add_argument(
        "--items", type=int, default=DEFAULT_ITEMS, help="rows copied per run"
    )
    parser.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=list(DEFAULT_BATCH_SIZES),
        help="fixed batch sizes to compare, in items",
    )
    parser.add_argument(
        "--synchronous",
        nargs="+",
        choices=["full", "normal", "off"],
        default=list(DEFAULT_SYNCHRONOUS),
        help="SQLite PRAGMA synchronous levels to compare: full (SQLite's"
        " default, which Synapse 1.163 keeps) syncs the disk at each commit,"
        " off never syncs",
    )
    arguments = parser.parse_args()
    if arguments.rounds < 1 or arguments.items < 1:
        parser.error("--rounds and --items must be at least 1")
    return arguments


def main() -> None:
    """Run the benchmark on the reactor and stop it at the end."""
    arguments = parse_arguments()
    task.react(lambda _reactor: defer.ensureDeferred(run_benchmark(arguments)))


if __name__ == "__main__":
    main()
