"""Hot-path benchmark: xmtpd's lazy insert protocol with and without partitiond, on real PostgreSQL.

K writer processes (default 8) share M originators (default 4); each originator has one sequence that its
writers draw from in order, like xmtpd's per-originator sequence.  Every insert follows xmtpd's protocol
(:class:`partitiond.xmtpd_writer.LazyWriter`): meta and blob in one statement inside a transaction holding
the shared side of advisory key 5; on 23514 roll back, create the band under the exclusive side in its own
transaction, retry.  Writers run flat out (or, with ``--rate``, each at a fixed pace) for a warm-up
(default 5 s, not measured), then for a fixed duration (measured).

Flat out, the machine is saturated and every band creation stalls every writer once, however short the
stall: the p99 then counts creations, not their length.  At a pace below saturation, as real traffic
mostly is, a stall catches only the inserts that arrive while it lasts, so its length shows.  Originators
start spread over their first band (originator k of M at id 1 + (k-1)·width/M), so that equal paces do
not make them all cross at the same moment; each database is primed with one envelope per originator just
below that start, so partitiond's first run finds every originator where it is, as it would in production.

The warm-up keeps start-up transients out of the comparison: in lazy mode the writers' first inserts
create every originator's first band in one pile-up; in partitiond mode the daemon creates every
originator's next band as soon as its first probe has a write rate.  Neither happens again in steady
state, which is what the measured window shows.  Correctness counts (cold-path creations, 40P01, rows
lost) cover the whole run, warm-up included; throughput, crossings, latencies and the timelines cover the
measured window.

Two modes, measured in the same run and alternated per round (ABBA), each on a fresh database copied from
one template:

* ``lazy``: no partitiond, every band crossing is a cold-path creation by a writer;
* ``partitiond``: the real daemon (``python -m partitiond run``) in a subprocess with short intervals; the
  writers start once its first run has finished and stop before it gets SIGTERM.

Reported per mode (counts summed over rounds, latencies pooled): envelopes/s, band crossings, cold-path
creations (a writer got 23514 and created the band itself; two writers hitting the same missing band count
twice), 40P01 deadlocks, insert latency p50/p99/max (the whole ``insert`` call, cold path included),
inserts stalled > 100 ms, and rows lost (acknowledged inserts missing from gateway_envelopes_meta or
gateway_envelopes_blob at the end).  Below the table: the p99 ratio, how many stalls coincided with a band
creation (key 5 held exclusively), partitiond's runs, probes, bands and CPU, and the issue's targets.
``--json`` adds per-round numbers and timelines (stalls, band creations).  Progress goes to stderr.

    python bench/hotpath.py [--writers 8] [--originators 4] [--band-width 10000] [--rate 0]
                            [--warmup 5] [--duration 30] [--rounds 2] [--seed 1] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue
import random
import shlex
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.context import SpawnContext
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue as QueueType
from multiprocessing.synchronize import Barrier as BarrierType
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg import sql

from partitiond import sqlfiles
from partitiond.child import Daemon as DemoDaemon
from partitiond.cluster import LocalCluster, throwaway_cluster
from partitiond.demo_report import percentile
from partitiond.xmtpd_writer import LazyWriter, WriterStats

MODES = ("lazy", "partitiond")
TEMPLATE_DB = "hotpath_template"
STALL_SECONDS = 0.100
CREATION_SLACK = 0.25  # a blocked insert ends shortly after the band's commit; log lines come a bit later
PAYLOAD_VARIANTS = 32
CONNECT_DEADLINE = 60.0
FIRST_RUN_DEADLINE = 60.0
WRITER_JOIN_TIMEOUT = 60.0
# partitiond's timing in partitiond mode (the "short intervals").
DAEMON_INTERVAL = "5s"
DAEMON_PROBE_INTERVAL = "1s"
DAEMON_RUNWAY = "30s"

Conn = psycopg.Connection[Any]
Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Options:
    writers: int = 8
    originators: int = 4
    band_width: int = 10_000
    rate: float = 0.0  # envelopes per second per writer; 0: flat out
    warmup: float = 5.0
    duration: float = 30.0
    rounds: int = 2
    seed: int = 1

    @property
    def originator_ids(self) -> tuple[int, ...]:
        return tuple(range(1, self.originators + 1))

    def command_line(self, json_path: str | None = None) -> str:
        argv = [
            *("--writers", str(self.writers), "--originators", str(self.originators)),
            *("--band-width", str(self.band_width), "--rate", f"{self.rate:g}"),
            *("--warmup", f"{self.warmup:g}", "--duration", f"{self.duration:g}"),
            *("--rounds", str(self.rounds), "--seed", str(self.seed)),
        ]
        if json_path is not None:
            argv += ["--json", json_path]
        return "$ python bench/hotpath.py " + shlex.join(argv)


# --- one measured run of one mode ---------------------------------------------------------------------


class OriginatorSequence:
    """One originator's sequence ids, handed out strictly increasing to every writer process sharing it."""

    def __init__(self, ctx: SpawnContext, first: int = 1) -> None:
        self._next = ctx.Value("q", first)  # a shared int64 with its own lock

    def next(self) -> int:
        with self._next.get_lock():
            value = int(self._next.value)
            self._next.value = value + 1
        return value

    def peek(self) -> int:
        """The id the next insert will get."""
        with self._next.get_lock():
            return int(self._next.value)


@dataclass
class WriterResult:
    """What one writer process did, sent back to the parent when it stops."""

    oid: int
    stats: WriterStats = field(default_factory=WriterStats)
    error: str | None = None
    # (wall-clock start, latency, took the cold path) of every stalled or cold-path insert
    events: list[tuple[float, float, bool]] = field(default_factory=list)
    warmup_inserted: int = 0  # inserts acknowledged before the measured window

    def start_window(self) -> None:
        """Forget the warm-up's latencies and events; its counts stay (they are part of the run)."""
        self.warmup_inserted = self.stats.inserted
        self.stats.latencies.clear()
        self.events.clear()


@dataclass(frozen=True, slots=True)
class WriterJob:
    """Everything a writer process needs; picklable."""

    oid: int
    sequence: OriginatorSequence
    dsn: str
    band_width: int
    seed: int
    rate: float


def writer_process(
    job: WriterJob, start: BarrierType, window: EventType, stop: EventType, results: QueueType[WriterResult]
) -> None:
    """One writer with its own connection, writing one originator's envelopes flat out or at ``rate``.

    Writers are processes, not threads: xmtpd's Go writers do not share an interpreter lock, and with
    threads the GIL's switch interval (5 ms) would dominate the latency tail this benchmark measures."""
    rng = random.Random(job.seed)  # payload variety, not crypto
    payloads = [rng.randbytes(rng.randint(64, 512)) for _ in range(PAYLOAD_VARIANTS)]
    result = WriterResult(job.oid)
    try:
        with psycopg.connect(job.dsn, autocommit=True, application_name="hotpath-writer") as conn:
            writer = LazyWriter(conn, band_width=job.band_width, stats=result.stats)
            start.wait(CONNECT_DEADLINE)
            measuring = False
            due = time.monotonic()
            while not stop.wait(max(0.0, due - time.monotonic()) if job.rate else 0):  # paced: a schedule
                due += 1 / job.rate if job.rate else 0  # a late writer catches up, it never skips
                if not measuring and window.is_set():
                    measuring = True
                    result.start_window()
                cold = result.stats.cold_path
                writer.insert(job.oid, job.sequence.next(), rng.choice(payloads))
                latency = result.stats.latencies[-1]
                if latency > STALL_SECONDS or result.stats.cold_path != cold:
                    result.events.append((time.time() - latency, latency, result.stats.cold_path != cold))
    except threading.BrokenBarrierError:
        result.error = "start barrier broken (another writer failed to connect)"
    except Exception as exc:
        start.abort()
        result.error = f"{type(exc).__name__}: {exc}".strip()
    results.put(result)


@dataclass
class ModeRun:
    """What one mode did in one round, and what the database holds afterwards."""

    mode: str
    round: int
    seconds: float
    acknowledged: dict[int, int]  # the whole run, warm-up included
    in_meta: dict[int, int]
    in_blob: dict[int, int]
    crossings: int
    cold_path: int
    deadlocks: int
    latencies: list[float]
    errors: list[str]
    stalls: list[tuple[float, float]]  # (seconds into the window, latency) of inserts > 100 ms
    creations: list[float] = field(default_factory=list)  # seconds into the window: bands created
    started_wall: float = 0.0  # the measured window's start
    measured: int = 0  # inserts acknowledged in the measured window
    daemon_runs: int = 0
    daemon_probes: int = 0
    daemon_created: int = 0
    daemon_attempts: list[int] = field(default_factory=list)  # per band created while the writers ran
    daemon_failures: list[str] = field(default_factory=list)  # logged while the writers ran
    daemon_stop_failures: int = 0  # "band failed" lines after the writers stopped (cancelled by SIGTERM)
    daemon_exit: int | None = None
    daemon_cpu: float | None = None  # partitiond's CPU seconds while the writers ran

    @property
    def stalls_at_creation(self) -> int:
        """Stalls during which a band was created, i.e. the insert waited while key 5 was held exclusively.
        Creation times: partitiond's log lines, or the end of a writer's cold-path insert in lazy mode."""
        return sum(
            1 for at, lat in self.stalls if any(at <= c <= at + lat + CREATION_SLACK for c in self.creations)
        )

    @property
    def lost(self) -> int:
        return sum(
            max(0, acked - min(self.in_meta.get(oid, 0), self.in_blob.get(oid, 0)))
            for oid, acked in self.acknowledged.items()
        )


@dataclass(frozen=True, slots=True)
class Window:
    """The measured part of a run: when it started, how long it lasted, where each originator stood."""

    started_wall: float
    seconds: float  # to the last writer's end: in-flight inserts finish and count
    next_ids: dict[int, int]  # per originator, the id the first measured insert got


class Spread(Protocol):
    """What :func:`first_id` needs of a benchmark's options."""

    @property
    def band_width(self) -> int: ...

    @property
    def originators(self) -> int: ...


def first_id(options: Spread, oid: int) -> int:
    """Originators start spread over the first band, as real ones sit anywhere in theirs: at equal paces,
    equal starts would make every originator cross at the same moment, for ever."""
    return 1 + (oid - 1) * options.band_width // options.originators


PRIMED_ROWS = 1  # per originator, written by prime()


def prime(dsn: str, options: Options) -> None:
    """One envelope per originator just below its writers' first id, written the xmtpd way (band 0
    included) before partitiond starts, so that its first run sees every originator's position."""
    with psycopg.connect(dsn, autocommit=True, application_name="hotpath-prime") as conn:
        writer = LazyWriter(conn, band_width=options.band_width)
        for oid in options.originator_ids:
            writer.insert(oid, first_id(options, oid) - 1)


def run_writers(
    dsn: str, options: Options, round_no: int, on_window: Callable[[], object] = lambda: None
) -> tuple[Window, list[WriterResult]]:
    """All writers released at once, measured after ``warmup`` (``on_window`` is called then), stopped
    after ``duration``."""
    ctx = multiprocessing.get_context("spawn")
    sequences = {oid: OriginatorSequence(ctx, first_id(options, oid)) for oid in options.originator_ids}
    jobs = [
        WriterJob(
            oid=(oid := options.originator_ids[i % options.originators]),
            sequence=sequences[oid],
            dsn=dsn,
            band_width=options.band_width,
            seed=options.seed * 1_000_003 + round_no * 1_009 + i,
            rate=options.rate,
        )
        for i in range(options.writers)
    ]
    start, window, stop, results = ctx.Barrier(options.writers + 1), ctx.Event(), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(
            target=writer_process, args=(job, start, window, stop, results), name=f"writer-{i}", daemon=True
        )
        for i, job in enumerate(jobs)
    ]
    for proc in procs:
        proc.start()
    started, started_wall = time.perf_counter(), time.time()
    next_ids = {oid: seq.peek() for oid, seq in sequences.items()}
    try:
        start.wait(CONNECT_DEADLINE)
        time.sleep(options.warmup)  # a duration, not a synchronisation: the writers run meanwhile
        window.set()
        started, started_wall = time.perf_counter(), time.time()
        next_ids = {oid: seq.peek() for oid, seq in sequences.items()}
        on_window()
        stop.wait(options.duration)
    except threading.BrokenBarrierError:
        pass  # a writer failed to connect: its error is reported with the others
    finally:
        stop.set()
    writers = collect(procs, results)
    return Window(started_wall, time.perf_counter() - started, next_ids), writers


def collect(procs: Sequence[BaseProcess], results: QueueType[WriterResult]) -> list[WriterResult]:
    """Every writer's result, then the processes' exit.  The queue is drained before the joins: a process
    does not exit while its result is still in the queue's pipe."""
    try:
        writers = [results.get(timeout=WRITER_JOIN_TIMEOUT) for _ in procs]
    except queue.Empty:
        raise RuntimeError(
            f"a writer process sent no result within {WRITER_JOIN_TIMEOUT:g}s of the stop"
        ) from None
    finally:
        for proc in procs:
            proc.join(WRITER_JOIN_TIMEOUT)
            if proc.is_alive():
                proc.kill()
    return writers


def table_counts(conn: Conn, table: str) -> dict[int, tuple[int, int, int]]:
    """Per originator: (rows, lowest sequence id, highest sequence id)."""
    rows = conn.execute(
        sql.SQL(
            "SELECT originator_node_id, count(*), min(originator_sequence_id), max(originator_sequence_id)"
            " FROM {} GROUP BY 1"
        ).format(sql.Identifier(table))
    ).fetchall()
    return {int(oid): (int(n), int(lo), int(hi)) for oid, n, lo, hi in rows}


def measure(
    dsn: str, options: Options, mode: str, round_no: int, on_window: Callable[[], object] = lambda: None
) -> ModeRun:
    window, writers = run_writers(dsn, options, round_no, on_window)
    with psycopg.connect(dsn, autocommit=True) as conn:
        meta = table_counts(conn, "gateway_envelopes_meta")
        blob = table_counts(conn, "gateway_envelopes_blob")
    acknowledged = dict.fromkeys(options.originator_ids, PRIMED_ROWS)
    for w in writers:
        acknowledged[w.oid] += w.stats.inserted
    width = options.band_width
    events = [(at - window.started_wall, lat, cold) for w in writers for at, lat, cold in w.events]
    return ModeRun(
        mode=mode,
        round=round_no,
        seconds=window.seconds,
        acknowledged=acknowledged,
        in_meta={oid: n for oid, (n, _, _) in meta.items()},
        in_blob={oid: n for oid, (n, _, _) in blob.items()},
        crossings=sum(hi // width - (window.next_ids[oid] - 1) // width for oid, (_, _, hi) in meta.items()),
        cold_path=sum(w.stats.cold_path for w in writers),
        deadlocks=sum(w.stats.deadlocks for w in writers),
        latencies=[lat for w in writers for lat in w.stats.latencies],
        errors=[f"writer for originator {w.oid}: {w.error}" for w in writers if w.error],
        stalls=sorted((at, lat) for at, lat, _ in events if lat > STALL_SECONDS),
        creations=sorted(at + lat for at, lat, cold in events if cold),
        started_wall=window.started_wall,
        measured=sum(w.stats.inserted - w.warmup_inserted for w in writers),
    )


# --- partitiond, the real daemon ----------------------------------------------------------------------


class Daemon(DemoDaemon):
    """The demo's daemon wrapper, plus what the benchmark reports about the daemon itself."""

    @classmethod
    def for_bench(cls, dsn: str, options: Options, log_path: Path) -> Daemon:
        """``partitiond run`` with every benchmark originator configured (band 0 before the first insert)."""
        args = [
            *("--band-width", str(options.band_width), "--interval", DAEMON_INTERVAL, "--jitter", "0"),
            *("--probe-interval", DAEMON_PROBE_INTERVAL, "--runway", DAEMON_RUNWAY),
            *("--metrics-address", "", "--log-format", "json"),
        ]
        for oid in options.originator_ids:
            args += ["--originator", str(oid)]
        return cls.start(args, dsn, log_path)

    def cpu_seconds(self) -> float | None:
        """User + system CPU time so far, from /proc (None where there is no /proc)."""
        try:
            stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        except OSError:
            return None
        fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces; it ends at the last ")"
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_with_daemon(dsn: str, options: Options, round_no: int, work_dir: Path) -> ModeRun:
    daemon = Daemon.for_bench(dsn, options, work_dir / f"partitiond-round{round_no}.log")
    try:
        daemon.wait_first_run(FIRST_RUN_DEADLINE)
        cpu_before: list[float | None] = []  # read when the measured window starts
        result = measure(
            dsn, options, "partitiond", round_no, lambda: cpu_before.append(daemon.cpu_seconds())
        )
        cpu_after = daemon.cpu_seconds()
    finally:
        exit_code = daemon.stop()
    if cpu_before and cpu_before[0] is not None and cpu_after is not None:
        result.daemon_cpu = cpu_after - cpu_before[0]
    account_daemon(result, daemon.events())
    result.daemon_exit = exit_code
    return result


def account_daemon(result: ModeRun, events: Sequence[tuple[float, dict[str, Any]]]) -> None:
    """What partitiond did, from its log: failures count only while the writers ran (the SIGTERM at the end
    cancels whatever it is doing then, which it logs as a failed band)."""
    start, end = result.started_wall, result.started_wall + result.seconds
    for at, event in events:
        name = event.get("event")
        during = start <= at <= end
        if name == "run finished":
            result.daemon_runs += 1
        elif name == "probe finished":
            result.daemon_probes += 1
        elif name == "band created":
            result.daemon_created += 1
            if during:
                result.creations.append(at - start)
                result.daemon_attempts.append(int(event.get("attempts", 1)))
        elif name in ("band failed", "run failed", "probe failed"):
            if at > end:
                result.daemon_stop_failures += 1
            else:
                detail = event.get("error") or event.get("reason")
                result.daemon_failures.append(f"{name} at {at - start:+.1f}s: {detail}")
    result.creations.sort()


# --- rounds -------------------------------------------------------------------------------------------


def create_template(cluster: LocalCluster) -> None:
    with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE_DB)))
    with psycopg.connect(cluster.dsn(TEMPLATE_DB), autocommit=True) as conn:
        sqlfiles.install_schema(conn)
        sqlfiles.install_functions(conn)


@contextmanager
def fresh_database(cluster: LocalCluster, name: str) -> Iterator[str]:
    """A copy of the template (schema and functions, no partitions), checkpointed so that the previous
    mode's dirty buffers are not flushed on this mode's time."""
    with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(TEMPLATE_DB)
            )
        )
        admin.execute("CHECKPOINT")
    os.sync()  # and the OS's dirty pages: else the previous mode's writeback lands on this mode's time
    try:
        yield cluster.dsn(name)
    finally:
        with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def mode_order(round_no: int) -> tuple[str, ...]:
    """ABBA: lazy first in even rounds, partitiond first in odd ones, so drift hits both modes alike."""
    return MODES if round_no % 2 == 0 else MODES[::-1]


def run_bench(cluster: LocalCluster, options: Options, progress: Progress) -> list[ModeRun]:
    create_template(cluster)
    runs: list[ModeRun] = []
    with tempfile.TemporaryDirectory(prefix="partitiond-hotpath-") as tmp:
        for round_no in range(options.rounds):
            for mode in mode_order(round_no):
                with fresh_database(cluster, f"hotpath_{round_no}_{mode}") as dsn:
                    prime(dsn, options)
                    if mode == "lazy":
                        result = measure(dsn, options, mode, round_no)
                    else:
                        result = measure_with_daemon(dsn, options, round_no, Path(tmp))
                runs.append(result)
                progress(progress_line(result, options.rounds))
    return runs


def progress_line(r: ModeRun, rounds: int) -> str:
    p99 = percentile(r.latencies, 0.99)
    daemon = (
        f", partitiond runs {r.daemon_runs}, probes {r.daemon_probes}, bands created {r.daemon_created}"
        if r.mode != "lazy"
        else ""
    )
    return (
        f"round {r.round + 1}/{rounds} {r.mode}: {r.seconds:.1f}s, {r.measured:,} envelopes, "
        f"{r.crossings} crossings, cold-path {r.cold_path}, 40P01 {r.deadlocks}, "
        f"p99 {_ms(p99)} ms, lost {r.lost}{daemon}"
    )


# --- report -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModeTotals:
    """One mode summed over its rounds; latency percentiles over the pooled inserts."""

    mode: str
    seconds: float
    envelopes: int
    crossings: int
    cold_path: int
    deadlocks: int
    p50: float | None
    p99: float | None
    max: float | None
    stalls: int
    stalls_at_creation: int
    creations: int
    lost: int
    daemon_runs: int
    daemon_probes: int
    daemon_created: int
    daemon_attempts: tuple[int, ...]
    daemon_cpu: float | None
    problems: tuple[str, ...]

    @property
    def rate(self) -> float:
        return self.envelopes / self.seconds if self.seconds > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "seconds": round(self.seconds, 3),
            "envelopes": self.envelopes,
            "envelopes_per_s": round(self.rate, 1),
            "band_crossings": self.crossings,
            "cold_path": self.cold_path,
            "deadlocks_40p01": self.deadlocks,
            "p50_ms": _ms_value(self.p50),
            "p99_ms": _ms_value(self.p99),
            "max_ms": _ms_value(self.max),
            "stalls_over_100ms": self.stalls,
            "stalls_during_band_creation": self.stalls_at_creation,
            "band_creations_during_writes": self.creations,
            "rows_lost": self.lost,
            "partitiond_runs": self.daemon_runs,
            "partitiond_probes": self.daemon_probes,
            "partitiond_bands_created": self.daemon_created,
            "partitiond_attempts_per_band_during_writes": list(self.daemon_attempts),
            "partitiond_cpu_s_during_writes": None if self.daemon_cpu is None else round(self.daemon_cpu, 2),
            "problems": list(self.problems),
        }


def totals(runs: Sequence[ModeRun], mode: str) -> ModeTotals:
    mine = [r for r in runs if r.mode == mode]
    latencies = sorted(lat for r in mine for lat in r.latencies)
    problems = [e for r in mine for e in r.errors]
    problems += [f"partitiond: {f}" for r in mine for f in r.daemon_failures]
    problems += [f"partitiond exited with {r.daemon_exit}" for r in mine if r.daemon_exit]
    cpu = [r.daemon_cpu for r in mine if r.daemon_cpu is not None]
    return ModeTotals(
        mode=mode,
        seconds=sum(r.seconds for r in mine),
        envelopes=sum(r.measured for r in mine),
        crossings=sum(r.crossings for r in mine),
        cold_path=sum(r.cold_path for r in mine),
        deadlocks=sum(r.deadlocks for r in mine),
        p50=percentile(latencies, 0.50),
        p99=percentile(latencies, 0.99),
        max=latencies[-1] if latencies else None,
        stalls=sum(1 for lat in latencies if lat > STALL_SECONDS),
        stalls_at_creation=sum(r.stalls_at_creation for r in mine),
        creations=sum(len(r.creations) for r in mine),
        lost=sum(r.lost for r in mine),
        daemon_runs=sum(r.daemon_runs for r in mine),
        daemon_probes=sum(r.daemon_probes for r in mine),
        daemon_created=sum(r.daemon_created for r in mine),
        daemon_attempts=tuple(a for r in mine for a in r.daemon_attempts),
        daemon_cpu=sum(cpu) if cpu else None,
        problems=tuple(problems),
    )


def p99_ratio(lazy: ModeTotals, daemon: ModeTotals) -> float | None:
    if lazy.p99 is None or daemon.p99 is None or lazy.p99 == 0:
        return None
    return daemon.p99 / lazy.p99


def round_ratios(runs: Sequence[ModeRun]) -> list[float]:
    """partitiond p99 / lazy p99 of each round: the two modes of a round ran back to back, so these
    ratios are the least exposed to the machine's speed drifting over the whole run."""
    ratios = []
    for round_no in sorted({r.round for r in runs}):
        pair = {r.mode: totals([r], r.mode) for r in runs if r.round == round_no}
        if set(pair) == set(MODES) and (ratio := p99_ratio(pair["lazy"], pair["partitiond"])) is not None:
            ratios.append(ratio)
    return ratios


def _yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def render(options: Options, runs: Sequence[ModeRun]) -> list[str]:
    by_mode = {mode: totals(runs, mode) for mode in MODES}
    pace = f"{options.rate:g} envelopes/s each" if options.rate else "flat out"
    lines = [
        f"{options.writers} writers ({pace}) over {options.originators} originators, band width "
        f"{options.band_width:,}, "
        f"{options.rounds} round(s) x ({options.warmup:g}s warm-up + "
        f"{options.duration:g}s measured) per mode (ABBA); "
        f"partitiond: --interval {DAEMON_INTERVAL} --runway {DAEMON_RUNWAY} "
        f"--probe-interval {DAEMON_PROBE_INTERVAL}",
        "",
        "| mode | envelopes/s | band crossings | cold-path creations | 40P01 | p50 ms | p99 ms | max ms "
        "| stalls > 100 ms | rows lost |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in by_mode.values():
        lines.append(
            f"| {t.mode} | {t.rate:,.0f} | {t.crossings:,} | {t.cold_path:,} | {t.deadlocks:,} | "
            f"{_ms(t.p50)} | {_ms(t.p99)} | {_ms(t.max)} | {t.stalls:,} | {t.lost:,} |"
        )
    lazy, daemon = by_mode["lazy"], by_mode["partitiond"]
    ratio = p99_ratio(lazy, daemon)
    cpu = ""
    if daemon.daemon_cpu is not None and daemon.seconds > 0:
        share = daemon.daemon_cpu / daemon.seconds
        cpu = f"; its CPU while the writers ran: {daemon.daemon_cpu:.2f}s ({share:.1%} of a core)"
    attempts = ""
    if daemon.daemon_attempts:
        retried = sum(1 for a in daemon.daemon_attempts if a > 1)
        attempts = f", {retried} of them after > 1 attempt, at most {max(daemon.daemon_attempts)}"
    lines += [
        "",
        f"p99 ratio partitiond/lazy: {'-' if ratio is None else f'{ratio:.2f}'}{_per_round(runs)}",
        f"stalls > 100 ms while a band was being created (key 5 held exclusively): "
        f"lazy {lazy.stalls_at_creation} of {lazy.stalls}, "
        f"partitiond {daemon.stalls_at_creation} of {daemon.stalls}",
        f"partitiond: {daemon.daemon_runs} full runs, {daemon.daemon_probes} probes, "
        f"{daemon.daemon_created} bands created ({daemon.creations} while the writers ran{attempts}){cpu}",
        "targets (partitiond mode; writers start after its first run): "
        f"0 cold-path {_yes(daemon.cold_path == 0)}, "
        f"0 deadlocks {_yes(daemon.deadlocks == 0)}, 0 rows lost {_yes(daemon.lost == 0)}, "
        f"p99 <= lazy p99 {_yes(ratio is not None and ratio <= 1.0)}",
    ]
    for t in by_mode.values():
        lines += [f"{t.mode} problem: {p}" for p in t.problems[:10]]
    return lines


def _per_round(runs: Sequence[ModeRun]) -> str:
    ratios = round_ratios(runs)
    if len(ratios) < 2:
        return ""
    lower = sum(1 for r in ratios if r < 1.0)
    listed = " ".join(f"{r:.2f}" for r in ratios)
    return (
        f" (per round: {listed}; median {statistics.median(ratios):.2f}; "
        f"partitiond lower in {lower} of {len(ratios)} rounds)"
    )


def as_json(options: Options, runs: Sequence[ModeRun], command: str, elapsed: float) -> dict[str, Any]:
    by_mode = {mode: totals(runs, mode) for mode in MODES}
    ratio = p99_ratio(by_mode["lazy"], by_mode["partitiond"])
    return {
        "command": command,
        "options": {
            "writers": options.writers,
            "originators": options.originators,
            "band_width": options.band_width,
            "rate_per_writer": options.rate,
            "warmup_s": options.warmup,
            "duration_s": options.duration,
            "rounds": options.rounds,
            "seed": options.seed,
            "partitiond": {
                "interval": DAEMON_INTERVAL,
                "runway": DAEMON_RUNWAY,
                "probe_interval": DAEMON_PROBE_INTERVAL,
            },
        },
        "modes": {mode: t.as_json() for mode, t in by_mode.items()},
        "p99_ratio_partitiond_over_lazy": None if ratio is None else round(ratio, 4),
        "p99_ratio_per_round": [round(r, 4) for r in round_ratios(runs)],
        "runs": [
            {
                "round": r.round,
                "mode": r.mode,
                **totals([r], r.mode).as_json(),
                # timelines, in seconds after the measured window started
                "stalls_at_s": [[round(at, 3), round(lat * 1000, 1)] for at, lat in r.stalls],
                "band_creations_at_s": [round(c, 3) for c in r.creations],
                "partitiond_failures_at_shutdown": r.daemon_stop_failures,
            }
            for r in runs
        ],
        "total_seconds": round(elapsed, 1),
    }


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f}"


def _ms_value(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


# --- command line -------------------------------------------------------------------------------------


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def parse_args(argv: Sequence[str] | None) -> tuple[Options, str | None]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--writers", type=positive_int, default=8, help="writer processes (one connection each)"
    )
    parser.add_argument("--originators", type=positive_int, default=4, help="originators shared by writers")
    parser.add_argument("--band-width", type=positive_int, default=10_000, help="sequence ids per band")
    parser.add_argument(
        "--rate",
        type=non_negative_float,
        default=0.0,
        help="envelopes per second per writer (0: flat out, saturating the machine)",
    )
    parser.add_argument(
        "--warmup", type=non_negative_float, default=5.0, help="seconds per mode per round before measuring"
    )
    parser.add_argument(
        "--duration", type=positive_float, default=30.0, help="seconds measured per mode per round"
    )
    parser.add_argument("--rounds", type=positive_int, default=2, help="rounds; mode order alternates (ABBA)")
    parser.add_argument("--seed", type=int, default=1, help="seed for the envelope payloads")
    parser.add_argument("--json", metavar="PATH", default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.writers < args.originators:
        parser.error("--writers must be >= --originators (every originator needs a writer)")
    options = Options(
        writers=args.writers,
        originators=args.originators,
        band_width=args.band_width,
        rate=args.rate,
        warmup=args.warmup,
        duration=args.duration,
        rounds=args.rounds,
        seed=args.seed,
    )
    return options, args.json


def main(argv: Sequence[str] | None = None) -> None:
    options, json_path = parse_args(argv)
    command = options.command_line(json_path)
    print(command + "\n", flush=True)
    started, load_before = time.monotonic(), os.getloadavg()[0]

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    with throwaway_cluster(prefix="partitiond-bench-") as cluster:
        runs = run_bench(cluster, options, progress)
    elapsed, load_after = time.monotonic() - started, os.getloadavg()[0]
    print("\n".join(render(options, runs)))
    # The machine is shared (2 cores here): other work running at the same time skews every number above.
    print(
        f"total run time: {elapsed:.0f}s (set-up and both modes); {os.cpu_count()} CPUs, "
        f"1-min load average {load_before:.2f} before, {load_after:.2f} after"
    )
    if json_path is not None:
        report = as_json(options, runs, command, elapsed)
        report["load_average_1min"] = {"before": load_before, "after": load_after}
        Path(json_path).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
