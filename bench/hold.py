"""Key-5 hold per band at scale: how long every insert waits while one band is created, by creator.

While a creator holds the exclusive side of xmtpd's key 5, no insert runs, so the time from "lock held" to
"COMMIT done" is a stall that every writer sees.  For each size (meta partitions already there, which the
blob foreign key makes every creation touch) and each reader mode, bands are created one at a time, the
creators taking turns band by band, in a new (seeded) order each round, so that machine noise, the slowly
growing trees and what one creation leaves behind hit them alike:

* ``xmtpd v3``: xmtpd's cold path today, ``ensure_gateway_parts_v3`` under key 5;
* ``v4 ensure``: the same with ``ensure_gateway_parts_v4``;
* ``partitiond warm``: partitiond's executor on a connection kept from band to band (the daemon);
* ``partitiond cold``: the same executor on a new connection per band (``run-once``, a timer, a CronJob);
* ``idle``: no creation at all, a window as long as a typical creation: the baseline for the stalls.

Reader modes, while one xmtpd-protocol writer process inserts all the time:

* ``none``: no reader;
* ``serving``: reader processes in a loop, like a serving node: blob reads by key and xmtpd's own page of
  one originator's envelopes after a cursor (``SelectGatewayEnvelopesBySingleOriginator``, joining meta and
  blob), near the newest band, every originator in turn, 50 ms apart (each reader keeps about half a core
  busy: the query is planned over every blob band of the originator);
* ``quiet``: not even the writer: the hold alone, as on an idle machine (not in the default modes);
* ``long reader``: one transaction that read ``gateway_envelopes_blob`` and stays open.  partitiond's
  cheap blob step (PARTITION OF) needs the blob L1 to itself; with runway left it defers the band rather
  than validating the blob foreign key under key 5 (serving readers, one query at a time, are waited out
  instead, before key 5).  xmtpd's v3 cold path re-attaches the L1, which
  waits for the reader while holding key 5, until xmtpd's statement timeout (here ``XMTPD_TIMEOUT``).

Reported per size, mode and creator: the key-5 hold (median, p90, max; partitiond's from its executor,
refused attempts included), bands not created (deferred, or timed out), the longest insert and the
longest read that overlapped the creator's bands (end to end, so a creator's whole visit counts, until the
writer has finished an insert begun after it: each writer backend re-plans its cached statements over the
changed tree on its next insert, whoever changed it), and the median hold's ratio to xmtpd's cold path,
measured side by side.

    python bench/hold.py [--originators 4] [--sizes 160,640,2000] [--samples 10] [--readers 2]
                         [--modes none,serving,long reader]
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from multiprocessing.queues import Queue as QueueType
from multiprocessing.synchronize import Event as EventType
from typing import Any

import psycopg
from psycopg import sql

from partitiond import sqlfiles
from partitiond.bands import Band
from partitiond.cluster import LocalCluster, throwaway_cluster
from partitiond.config import Settings
from partitiond.executor import Executor, RetryBudget
from partitiond.planner import PlannedBand
from partitiond.xmtpd_writer import LazyWriter

Conn = psycopg.Connection[Any]
Calls = tuple[str, list[tuple[float, float]]]  # a load process's kind and its (wall start, latency) per call
KEY = 5
WIDTH = 1_000_000  # xmtpd's band width, and
ORIGINATOR_STEP = 100  # node ids 100, 200, ...: names as long as production's, so index and key clone
# names cut to 63 bytes collide (and PostgreSQL numbers them) as they do there


def originator(index: int) -> int:
    """The id of the ``index``-th originator (1-based)."""
    return ORIGINATOR_STEP * index


MODES = ("none", "serving", "long reader", "quiet")
IDLE_WINDOW = 0.05  # seconds: about one creation
READER_PAUSE = 0.05  # between a reader's queries: each reader keeps about half a core busy
# After a creation every writer backend re-plans its cached statements over the changed partition tree on
# its next insert; that stall belongs to the creation, so each window lasts until the writer has finished an
# insert begun after the creation, and the next creation starts at least this long after the last one ended.
SETTLE = 0.5
SETTLE_DEADLINE = 60.0  # seconds to wait for that insert before the run is called broken
# Calls before a load process counts as ready: a new backend's first calls plan its statements, and the
# writer's foreign-key checks, over the whole tree (one of the writer's first inserts took 0.8 s at 2,000
# meta partitions, before any creation); none of that is any creator's doing.
WARM_UP = {"writer": 10, "reader": 4}
# xmtpd's connections run with statement_timeout = XMTPD_DB_READ_TIMEOUT, 10 s by default; shorter here so
# that a blocked cold path (a long blob reader makes v3's L1 re-attach wait) does not dominate the run.
XMTPD_TIMEOUT = "2s"
SETTINGS = Settings(metrics_address="", band_width=WIDTH, lock_attempts=1, retry_budget=0)
BLOB_READ = """SELECT originator_envelope FROM gateway_envelopes_blob
WHERE originator_node_id = %s AND originator_sequence_id = %s"""
# xmtpd's SelectGatewayEnvelopesBySingleOriginator: a subscriber's page of envelopes after its cursor.
CURSOR_QUERY = """SELECT m.originator_node_id, m.originator_sequence_id, m.gateway_time, m.topic,
       b.originator_envelope
FROM gateway_envelopes_meta AS m
JOIN gateway_envelopes_blob AS b
  ON b.originator_node_id = m.originator_node_id
 AND b.originator_sequence_id = m.originator_sequence_id
 AND b.originator_node_id = %(oid)s::int
WHERE m.originator_node_id = %(oid)s::int AND m.originator_sequence_id > %(cursor)s::bigint
ORDER BY m.originator_sequence_id LIMIT 20"""


@dataclass
class Creation:
    """One creator's visit: when it started and ended (wall clock), its key-5 holds, and whether the band
    was left uncreated (partitiond deferred it, or xmtpd's cold path hit its statement timeout).
    ``settled`` is when its window closes: the end, or, with a writer, once the writer finished an insert
    begun after the end (its first insert over the changed tree)."""

    start: float
    end: float
    holds: list[float]
    deferred: bool = False
    settled: float = 0.0


@dataclass(frozen=True, slots=True)
class Creator:
    name: str
    create: Callable[[Conn | None, str, int, int], Creation]


def _ensure(function: str) -> Callable[[Conn | None, str, int, int], Creation]:
    statement = sql.SQL("SELECT {}(%s, %s, %s)").format(sql.Identifier(function))

    def create(conn: Conn | None, dsn: str, oid: int, start: int) -> Creation:
        assert conn is not None
        began, held = time.time(), None
        try:
            with conn.transaction():
                conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(XMTPD_TIMEOUT)))
                conn.execute(
                    "SET LOCAL lock_timeout = 0"
                )  # as xmtpd: the shared connection's is partitiond's
                conn.execute("SELECT pg_advisory_xact_lock(%s)", [KEY])
                held = time.perf_counter()
                conn.execute(statement, [oid, start, WIDTH])
        except psycopg.errors.QueryCanceled:  # blocked for xmtpd's whole statement timeout
            assert held is not None
            return Creation(began, time.time(), [time.perf_counter() - held], deferred=True)
        return Creation(began, time.time(), [time.perf_counter() - held])

    return create


def _partitiond(warm: bool) -> Callable[[Conn | None, str, int, int], Creation]:
    def create(conn: Conn | None, dsn: str, oid: int, start: int) -> Creation:
        began = time.time()
        with nullcontext(conn) if warm else psycopg.connect(dsn, autocommit=True) as c:
            assert c is not None
            band = PlannedBand(oid, Band(start, start + WIDTH), "ahead", "bench", 0)
            outcome = Executor(c, SETTINGS).ensure(band, RetryBudget(0))
        if outcome.status not in ("created", "deferred"):
            raise RuntimeError(f"partitiond {outcome.status} band {start} of {oid}: {outcome.error}")
        return Creation(began, time.time(), list(outcome.holds), outcome.status == "deferred")

    return create


def _idle(conn: Conn | None, dsn: str, oid: int, start: int) -> Creation:
    began = time.time()
    time.sleep(IDLE_WINDOW)  # the baseline window itself, not a synchronisation
    return Creation(began, time.time(), [], deferred=True)


CREATORS = (
    Creator("xmtpd v3", _ensure("ensure_gateway_parts_v3")),
    Creator("v4 ensure", _ensure("ensure_gateway_parts_v4")),
    Creator("partitiond warm", _partitiond(warm=True)),
    Creator("partitiond cold", _partitiond(warm=False)),
    Creator("idle", _idle),
)


# --- load: one writer, readers ------------------------------------------------------------------------


def load_process(
    dsn: str,
    kind: str,
    originators: int,
    tip: int,
    stop: EventType,
    ready: QueueType[str],
    progress: Any,
    out: QueueType[Calls],
) -> None:
    """``writer``: xmtpd-protocol inserts, again and again into band 0 of originator 1 (ON CONFLICT DO
    NOTHING keeps the table small; the locks are those of any insert).  ``reader``: alternately a blob
    read by key and xmtpd's single-originator page after a cursor, both near ``tip`` (the start of the
    highest band filled), one originator after the other.  Says ``ready`` after its warm-up calls
    (``WARM_UP``), keeps ``progress`` at the wall start of its last finished call, and sends back
    (wall start, latency) per call.

    Readers plan every query (``prepare_threshold=None``): with server-side prepared statements, each
    reader's cached generic plan covers the whole tree and is rebuilt after *every* partition change,
    whoever makes it (17.5 s for the cursor query at 2,000 meta partitions on the 2-core machine), which
    would hide what a creator itself does to readers."""
    done: list[tuple[float, float]] = []
    with psycopg.connect(dsn, autocommit=True, application_name=f"hold-{kind}") as conn:
        conn.prepare_threshold = None if kind == "reader" else conn.prepare_threshold
        writer = LazyWriter(conn, band_width=WIDTH)
        i = 0
        while not stop.is_set():
            began, t = time.time(), time.perf_counter()
            oid = originator(i // 2 % originators + 1)
            if kind == "writer":
                writer.insert(originator(1), i % WIDTH)
            elif i % 2:
                conn.execute(BLOB_READ, [oid, tip + i % WIDTH]).fetchall()
            else:
                conn.execute(CURSOR_QUERY, {"oid": oid, "cursor": tip}).fetchall()
            done.append((began, time.perf_counter() - t))
            progress.value = began
            i += 1
            if i == WARM_UP[kind]:
                ready.put(kind)
            stop.wait(0.01 if kind == "writer" else READER_PAUSE)  # paced: 100 inserts/s, a serving reader
    out.put((kind, done))


@dataclass
class Load:
    stop: EventType
    ready: QueueType[str]
    out: QueueType[Calls]
    writer_progress: Any = None  # the writer's multiprocessing Value, when there is a writer
    procs: list[Any] = field(default_factory=list)
    progress: list[Any] = field(default_factory=list)  # every process's Value, alive while it runs

    def wait_ready(self, timeout: float = 120) -> None:
        """Until every load process made its warm-up calls."""
        for _ in self.procs:
            self.ready.get(timeout=timeout)

    def settled_after(self, end: float) -> float:
        """When the writer has finished an insert begun after ``end`` (polled): the wall time then, or
        ``end`` without a writer."""
        if self.writer_progress is None:
            return end
        deadline = time.monotonic() + SETTLE_DEADLINE
        while self.writer_progress.value <= end:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the writer did not insert for {SETTLE_DEADLINE:.0f}s after a creation")
            time.sleep(0.005)  # a poll with a deadline
        return time.time()

    def finish(self) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        """Stop everything; (the writer's calls, the readers' calls)."""
        self.stop.set()
        results = [self.out.get(timeout=120) for _ in self.procs]  # in the order they finish
        for proc in self.procs:
            proc.join(30)
        writes = [call for kind, calls in results if kind == "writer" for call in calls]
        return writes, [call for kind, calls in results if kind == "reader" for call in calls]


def start_load(dsn: str, readers: int, originators: int, tip: int = 0, writer: bool = True) -> Load:
    mp = multiprocessing.get_context("spawn")
    load = Load(mp.Event(), mp.Queue(), mp.Queue())
    for kind in ["writer"] * writer + ["reader"] * readers:
        progress = mp.Value("d", 0.0)
        load.progress.append(progress)
        if kind == "writer":
            load.writer_progress = progress
        proc = mp.Process(
            target=load_process,
            args=(dsn, kind, originators, tip, load.stop, load.ready, progress, load.out),
            daemon=True,
        )
        proc.start()
        load.procs.append(proc)
    return load


def fill(conn: Conn, originators: int, bands: int) -> None:
    """Bands 0..``bands``-1 for every originator, those missing created fast (PARTITION OF, 50 per
    transaction; band 0 by the ensure, which makes the L1s): set-up, not measured."""
    for oid in map(originator, range(1, originators + 1)):
        conn.execute("SELECT ensure_gateway_parts_v4(%s, 0, %s)", [oid, WIDTH])
        for chunk in range(1, bands, 50):
            with conn.transaction():
                for b in range(chunk, min(bands, chunk + 50)):
                    for tree in ("meta", "blob"):
                        conn.execute(
                            sql.SQL(
                                "CREATE TABLE IF NOT EXISTS {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})"
                            ).format(
                                sql.Identifier(
                                    f"gateway_envelopes_{tree}_o{oid}_s{b * WIDTH}_{(b + 1) * WIDTH}"
                                ),
                                sql.Identifier(f"gateway_envelopes_{tree}_o{oid}"),
                                sql.Literal(b * WIDTH),
                                sql.Literal((b + 1) * WIDTH),
                            )
                        )


# --- measuring ----------------------------------------------------------------------------------------


@dataclass
class Cell:
    """One creator in one size and mode."""

    creations: list[Creation] = field(default_factory=list)
    writer_max: float = 0.0
    reader_max: float = 0.0

    @property
    def holds(self) -> list[float]:
        return [h for c in self.creations for h in c.holds]

    @property
    def deferred(self) -> int:
        return sum(c.deferred for c in self.creations)


def longest(calls: Sequence[tuple[float, float]], creations: Sequence[Creation]) -> float:
    """The longest call that overlapped any of the creations' windows."""
    return max(
        (lat for began, lat in calls for c in creations if began < c.settled and began + lat > c.start),
        default=0.0,
    )


@contextmanager
def long_reader(dsn: str, active: bool) -> Iterator[None]:
    if not active:
        yield
        return
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT count(*) FROM gateway_envelopes_blob")
        yield
        conn.rollback()


def measure_mode(
    dsn: str, mode: str, originators: int, samples: int, readers: int, next_band: dict[int, int]
) -> dict[str, Cell]:
    cells = {c.name: Cell() for c in CREATORS}
    tip = (min(next_band.values()) - 1) * WIDTH
    load = start_load(dsn, readers if mode == "serving" else 0, originators, tip, writer=mode != "quiet")
    try:
        with psycopg.connect(dsn, autocommit=True) as conn, long_reader(dsn, mode == "long reader"):
            load.wait_ready()
            for sample in range(samples):
                # A new order each sample (seeded: the same every run), so that no creator always follows
                # the same one and inherits what that one leaves behind (a writer still re-planning, say).
                order = random.Random(sample).sample(CREATORS, len(CREATORS))
                for turn, creator in enumerate(order):
                    oid = originator((sample * len(CREATORS) + turn) % originators + 1)
                    creation = creator.create(conn, dsn, oid, next_band[oid] * WIDTH)
                    creation.settled = load.settled_after(creation.end)
                    cells[creator.name].creations.append(creation)
                    time.sleep(max(0.0, creation.end + SETTLE - time.time()))  # pacing, see SETTLE
                    if creation.holds and not creation.deferred:
                        next_band[oid] += 1
    finally:
        writes, reads = load.finish()
    for cell in cells.values():
        cell.writer_max = longest(writes, cell.creations)
        cell.reader_max = longest(reads, cell.creations)
    return cells


def render(size: int, mode: str, cells: dict[str, Cell]) -> list[str]:
    base = statistics.median(cells["xmtpd v3"].holds) if cells["xmtpd v3"].holds else None
    lines = [
        f"{size:,} meta partitions, readers: {mode}",
        "| creator | hold median ms | p90 ms | max ms | not created | longest insert ms | longest read ms "
        "| xmtpd v3 / this |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, cell in cells.items():
        holds = sorted(cell.holds)
        if holds:
            med, p90 = statistics.median(holds), holds[min(len(holds) - 1, int(0.9 * len(holds)))]
            figures = f"{med * 1000:.1f} | {p90 * 1000:.1f} | {holds[-1] * 1000:.1f}"
            ratio = f"{base / med:.1f}x" if base and med else "-"
        else:
            figures, ratio = "- | - | -", "-"
        deferred = "-" if name == "idle" else str(cell.deferred)
        reads = f"{cell.reader_max * 1000:.1f}" if mode in ("serving", "long reader") else "-"
        lines.append(
            f"| {name} | {figures} | {deferred} | {cell.writer_max * 1000:.1f} | {reads} | {ratio} |"
        )
    return lines


@contextmanager
def envelope_cluster(prefix: str) -> Iterator[tuple[LocalCluster, Conn]]:
    """A throwaway cluster with xmtpd's tables, partitiond's functions and one envelope (originator 1,
    band 0), and an autocommit connection to it."""
    with (
        throwaway_cluster(prefix=prefix) as cluster,
        psycopg.connect(cluster.dsn(), autocommit=True) as conn,
    ):
        sqlfiles.install_schema(conn)
        sqlfiles.install_functions(conn)
        LazyWriter(conn, band_width=WIDTH).insert(originator(1), 0)
        yield cluster, conn


def csv_ints(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be >= 1, got {text!r}")
    return values


def modes(text: str) -> list[str]:
    chosen = [m.strip() for m in text.split(",")]
    if not chosen or any(m not in MODES for m in chosen):
        raise argparse.ArgumentTypeError(f"modes are {', '.join(MODES)}; got {text!r}")
    return chosen


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--originators", type=int, default=4, choices=range(1, 101), metavar="1..100")
    parser.add_argument("--sizes", type=csv_ints, default=[160, 640, 2000], help="meta partitions, per size")
    parser.add_argument("--samples", type=int, default=10, choices=range(1, 1001), metavar="1..1000")
    parser.add_argument("--readers", type=int, default=2, choices=range(0, 65), metavar="0..64")
    parser.add_argument("--modes", type=modes, default=list(MODES[:3]), help=f"of {', '.join(MODES)}")
    args = parser.parse_args(argv)
    print(
        f"$ python bench/hold.py --originators {args.originators} --sizes {','.join(map(str, args.sizes))} "
        f"--samples {args.samples} --readers {args.readers} --modes '{','.join(args.modes)}'\n",
        flush=True,
    )
    with envelope_cluster("partitiond-hold-") as (cluster, conn):
        next_band = dict.fromkeys(map(originator, range(1, args.originators + 1)), 0)
        for size in sorted(args.sizes):
            bands = max(1, size // args.originators)
            fill(conn, args.originators, bands)
            next_band = {oid: max(at, bands) for oid, at in next_band.items()}
            for mode in args.modes:
                cells = measure_mode(
                    cluster.dsn(), mode, args.originators, args.samples, args.readers, next_band
                )
                print("\n".join(render(size, mode, cells)) + "\n", flush=True)


if __name__ == "__main__":
    main()
