"""``partitiond demo``: the real daemon keeping partitions ahead of xmtpd-like traffic, on its own database.

Why a command and not a script: the demo has to work on a fresh machine with nothing but ``make demo``, must
clean up after itself on every exit path (normal end, Ctrl-C, SIGTERM, a failure half-way through set-up),
and has to show the one number the project exists for: how many inserts had to create their own partition
(xmtpd's lazy "cold path") while ``partitiond run`` was doing its job.  It exercises the same pieces as the
tests: the throwaway cluster (:mod:`partitiond.cluster`), the shipped SQL (:mod:`partitiond.sqlfiles`), the
xmtpd insert protocol (:mod:`partitiond.xmtpd_writer`) and the real daemon as a subprocess, so what it shows
is what production would do, only faster (a narrow band width and short intervals).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import click
import psycopg

from partitiond import catalog, pipeline, sqlfiles
from partitiond.bands import band_index
from partitiond.child import Daemon, DaemonError, DaemonLog
from partitiond.cluster import SERVER_OS_USER, ClusterError, LocalCluster, find_bindir, free_port
from partitiond.config import Settings, _parse_duration, format_duration
from partitiond.dsn import redact
from partitiond.forecast import RateEstimator
from partitiond.planner import OriginatorStatus
from partitiond.xmtpd_writer import LazyWriter, WriterStats

Conn = psycopg.Connection[Any]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_SETUP = 2
EXIT_INTERRUPTED = 130

SCHEMA = "public"
RUNWAY_SECONDS = 30.0
WRITER_JOIN_TIMEOUT = 10.0
PACING_TICK = 0.05  # seconds of traffic per batch: fine enough to look steady, coarse enough to be cheap
MAX_LAG = 1.0  # a writer further behind its schedule than this drops the backlog instead of bursting
PAYLOAD_VARIANTS = 32


class DemoError(Exception):
    """The demo could not be set up or run; the message says what to do about it."""


# --- configuration ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WriterProfile:
    """One synthetic originator: its id, how fast it writes, and when (fraction of the run) it appears."""

    role: str
    originator: int
    rate: float  # envelopes (= sequence ids) per second
    appears_at: float = 0.0

    def label(self) -> str:
        when = f", from {self.appears_at:.0%} of the run" if self.appears_at else ""
        return f"{self.originator} ({self.role}, {self.rate:g}/s{when})"


# Measured on a 2-core machine: one LazyWriter tops out near 1,900 envelopes/s and three together near
# 1,850/s, so the peak here (1,300/s) leaves room for PostgreSQL, partitiond and the live table.
PROFILES = (
    WriterProfile("fast", 100, 800.0),
    WriterProfile("slow", 200, 100.0),
    WriterProfile("late", 300, 400.0, appears_at=1 / 3),
)


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """Everything one demo run needs; the daemon's timing is derived so that it keeps up by itself."""

    duration: float = 60.0
    band_width: int = 10_000
    seed: int = 1
    keep: bool = False
    dsn: str | None = None
    work_dir: Path = Path(".demo")
    profiles: tuple[WriterProfile, ...] = PROFILES
    refresh: float = 1.0  # live table on a terminal
    plain_every: float = 5.0  # plain status lines otherwise

    @property
    def originators(self) -> tuple[int, ...]:
        return tuple(p.originator for p in self.profiles)

    @property
    def interval(self) -> float:
        """Full runs at a quarter of the time the fastest writer needs for one band (1 to 10 s).

        Runway creation needs one run inside every band the fastest writer passes through; a quarter leaves
        room for slow passes, and does not rely on position probes between runs.
        """
        fastest = max(p.rate for p in self.profiles)
        return float(min(10, max(1, math.floor(self.band_width / fastest / 4))))

    @property
    def probe_interval(self) -> float:
        """Cheap position probes between runs; must stay below the interval (config rule)."""
        return min(1.0, self.interval / 2)

    def daemon_args(self, metrics_port: int) -> list[str]:
        """``partitiond run`` flags: every demo originator configured so each has band 0 before it writes."""
        args = [
            *("--band-width", str(self.band_width)),
            *("--interval", f"{self.interval:g}", "--jitter", "0"),
            *("--probe-interval", f"{self.probe_interval:g}", "--runway", f"{RUNWAY_SECONDS:g}"),
            *("--metrics-address", f"127.0.0.1:{metrics_port}", "--log-format", "json"),
        ]
        for oid in self.originators:
            args += ["--originator", str(oid)]
        return args

    def settings(self) -> Settings:
        """The daemon's view of the demo, for reading status exactly as ``partitiond status`` does."""
        return Settings(band_width=self.band_width, originators=self.originators)


# --- signals ------------------------------------------------------------------------------------------


class Interrupts:
    """SIGTERM acts like Ctrl-C while the demo runs; both are ignored once cleanup has started.

    Why: the demo is stopped with Ctrl-C at a terminal or with SIGTERM by a supervisor, and either must reach
    the same finally-blocks that stop the writers and the daemon and remove the cluster.  A second Ctrl-C
    during that cleanup must not abort it half-way and leave a running server behind in ``.demo/``.
    Signal handlers can only be installed from the main thread; elsewhere this does nothing.
    """

    def __init__(self) -> None:
        self._enabled = threading.current_thread() is threading.main_thread()
        self._saved: dict[int, Any] = {}
        self.shielded = False

    def __enter__(self) -> Interrupts:
        if self._enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._saved[sig] = signal.getsignal(sig)
            signal.signal(signal.SIGTERM, _raise_interrupt)
        return self

    def shield(self) -> None:
        if self._enabled and not self.shielded:
            self.shielded = True
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, _note_still_stopping)

    def __exit__(self, *_exc: object) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)


def _raise_interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _note_still_stopping(_signum: int, _frame: FrameType | None) -> None:
    os.write(2, b"\npartitiond demo: still stopping and cleaning up, please wait\n")  # signal-safe


# --- the database -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DemoDatabase:
    """Where the demo writes: a local cluster it started, or the database given with ``--dsn``."""

    dsn: str
    cluster: LocalCluster | None = None


@contextlib.contextmanager
def local_cluster(run_dir: Path, keep: bool, guard: Interrupts) -> Iterator[LocalCluster]:
    """Like :func:`partitiond.cluster.throwaway_cluster`, but in ``run_dir`` and able to stay up (--keep).

    It is removed on every exit path, Ctrl-C and SIGTERM included; ``keep`` spares it only when the demo got
    as far as its summary (a run stopped early by Ctrl-C does; a failed or interrupted set-up does not).
    """
    base = run_dir / "pg"
    base.mkdir()
    base.chmod(0o755)  # the postgres OS user must reach its data dir inside
    cluster = LocalCluster(base_dir=base, port=free_port(), bindir=find_bindir())
    kept = False
    try:
        cluster.init()
        cluster.start()
        yield cluster
        kept = keep
    finally:
        guard.shield()
        if not kept:
            cluster.destroy()


@contextlib.contextmanager
def open_database(config: DemoConfig, run_dir: Path, guard: Interrupts) -> Iterator[DemoDatabase]:
    """The demo database with the xmtpd tables and partitiond's functions in place."""
    if config.dsn is not None:
        prepare_existing(config.dsn)
        yield DemoDatabase(config.dsn)
        return
    with local_cluster(run_dir, config.keep, guard) as cluster:
        with connect(cluster.dsn()) as conn:
            sqlfiles.install_schema(conn, SCHEMA)
            sqlfiles.install_functions(conn, SCHEMA)
        yield DemoDatabase(cluster.dsn(), cluster)


def connect(dsn: str) -> Conn:
    try:
        return psycopg.connect(dsn, autocommit=True, application_name="partitiond-demo")
    except psycopg.Error as exc:
        raise DemoError(f"cannot connect to PostgreSQL: {redact(str(exc)).strip()}") from None


def prepare_existing(dsn: str) -> None:
    """--dsn: create the xmtpd tables only when both are missing (never drop or alter anything), then
    install or upgrade partitiond's functions, which is idempotent."""
    with connect(dsn) as conn:
        state = catalog.server_state(conn, SCHEMA)
        if state.in_recovery:
            raise DemoError("the --dsn server is a standby: the demo needs a primary it can write to")
        if state.has_meta != state.has_blob:
            raise DemoError(
                "only one of gateway_envelopes_meta / gateway_envelopes_blob exists in schema "
                f"{SCHEMA!r}: refusing to touch a half-installed xmtpd schema"
            )
        try:
            if not state.has_meta:
                sqlfiles.install_schema(conn, SCHEMA)
            sqlfiles.install_functions(conn, SCHEMA)
        except psycopg.Error as exc:
            raise DemoError(f"cannot install the demo schema: {redact(str(exc)).strip()}") from None


def start_positions(conn: Conn, originators: Sequence[int]) -> dict[int, int]:
    """The first sequence id each writer uses: one past what the database already holds (1 when empty), so
    a demo can be repeated against the same ``--dsn`` and its row counts stay exact."""
    latest = catalog.latest_positions(conn, SCHEMA)
    return {oid: latest.get(oid, 0) + 1 for oid in originators}


def count_rows(conn: Conn, table: str, oid: int, first: int, count: int) -> int:
    """Rows of ``oid`` in ``[first, first + count)``: what a writer acknowledged must be there."""
    row = conn.execute(
        f"SELECT count(*) FROM {table} WHERE originator_node_id = %s"  # noqa: S608 -- table is a constant
        " AND originator_sequence_id >= %s AND originator_sequence_id < %s",
        [oid, first, first + count],
    ).fetchone()
    return int(row[0]) if row else 0


# --- partitiond, the real daemon ----------------------------------------------------------------------


# --- synthetic xmtpd writers --------------------------------------------------------------------------


@dataclass
class PacedWriter:
    """One originator's traffic: a thread with its own connection and a :class:`LazyWriter`.

    The writer follows a paced schedule (the next batch is due at ``start + ids / rate``); sleeping here is
    load generation, not synchronisation.  A writer that falls more than ``MAX_LAG`` behind (a slow machine)
    drops the backlog instead of bursting, so the measured rate is honest.
    """

    profile: WriterProfile
    dsn: str
    band_width: int
    first_seq: int
    delay: float
    stop: threading.Event
    seed: int
    stats: WriterStats = field(default_factory=WriterStats)
    error: str | None = None
    started_at: float | None = None
    stopped_at: float | None = None
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"writer-{self.profile.originator}", daemon=True
        )
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def next_seq(self) -> int:
        return self.first_seq + self.stats.inserted

    @property
    def active_seconds(self) -> float:
        if self.started_at is None:
            return 0.0
        return (self.stopped_at or time.monotonic()) - self.started_at

    def _run(self) -> None:
        if self.stop.wait(self.delay):
            return
        try:
            with psycopg.connect(self.dsn, autocommit=True, application_name="xmtpd-demo-writer") as conn:
                writer = LazyWriter(conn, band_width=self.band_width, stats=self.stats)
                self.started_at = time.monotonic()
                self._pace(writer)
        except Exception as exc:  # noqa: BLE001 -- reported in the summary, which then fails the demo
            self.error = redact(f"{type(exc).__name__}: {exc}").strip()
        finally:
            if self.started_at is not None:
                self.stopped_at = time.monotonic()

    def _pace(self, writer: LazyWriter) -> None:
        rng = random.Random(self.seed * 1_000_003 + self.profile.originator)  # noqa: S311 -- not crypto
        payloads = [rng.randbytes(rng.randint(64, 512)) for _ in range(PAYLOAD_VARIANTS)]
        batch = max(1, round(self.profile.rate * PACING_TICK))
        due = time.monotonic()
        while not self.stop.is_set():
            for _ in range(batch):
                writer.insert(self.profile.originator, self.next_seq, rng.choice(payloads))
            due += batch / self.profile.rate
            ahead = due - time.monotonic()
            if ahead > 0:
                self.stop.wait(ahead)
            elif ahead < -MAX_LAG:
                due = time.monotonic()


# --- the live table -----------------------------------------------------------------------------------


COLUMNS = ("originator", "writer", "position", "band", "last band", "headroom", "runway", "created", "cold")


def read_statuses(conn: Conn, config: DemoConfig, estimator: RateEstimator) -> list[OriginatorStatus]:
    """Positions and bands as ``partitiond status`` reads them (same snapshot, same planner maths)."""
    settings = config.settings()
    snapshot = pipeline.take_snapshot(conn, settings)
    return list(pipeline.make_plan(snapshot, settings, estimator).statuses)


def status_rows(
    statuses: Sequence[OriginatorStatus], config: DemoConfig, writers: Sequence[PacedWriter], log: DaemonLog
) -> list[tuple[str, ...]]:
    """One row per demo originator: where it is, how much room it has, who created its bands."""
    by_oid = {w.profile.originator: w for w in writers}
    rows: list[tuple[str, ...]] = []
    for s in statuses:
        if s.originator not in config.originators:
            continue
        writer = by_oid.get(s.originator)
        runway = s.seconds_to_exhaustion
        rows.append(
            (
                str(s.originator),
                _writer_state(writer),
                "-" if s.position is None else f"{s.position:,}",
                str(band_index(s.current)),
                "-" if s.last is None else str(band_index(s.last)),
                f"{s.headroom:,}",
                "-" if runway is None or math.isinf(runway) else f"{runway:.0f}s",
                str(log.created[s.originator]),
                str(writer.stats.cold_path if writer else 0),
            )
        )
    return rows


def _writer_state(writer: PacedWriter | None) -> str:
    if writer is None:
        return "-"
    if writer.error:
        return f"{writer.profile.role} FAILED"
    if writer.started_at is None:
        return f"{writer.profile.role} (waiting)"
    seconds = writer.active_seconds
    if seconds < 1.0:  # an average over a few milliseconds says nothing
        return f"{writer.profile.role} (starting)"
    return f"{writer.profile.role} {writer.stats.inserted / seconds:,.0f}/s"


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return lines


def plain_lines(elapsed: float, rows: Sequence[Sequence[str]]) -> list[str]:
    """Non-terminal output: one self-contained line per originator, easy to grep in a CI log."""
    return [
        f"[{elapsed:5.1f}s] originator {r[0]}: writer {r[1]}, position {r[2]}, band {r[3]}, "
        f"last band {r[4]}, headroom {r[5]}, runway {r[6]}, created by partitiond {r[7]}, cold-path {r[8]}"
        for r in rows
    ]


@dataclass
class LiveView:
    """Redraws the table in place on a terminal (ANSI cursor-up and clear-line); prints plain lines otherwise,
    and then only every ``plain_every`` seconds so a CI log stays readable."""

    tty: bool
    plain_every: float
    out: TextIO
    _drawn: int = 0
    _last_plain: float = -math.inf

    def show(self, elapsed: float, duration: float, rows: Sequence[Sequence[str]], note: str) -> None:
        if self.tty:
            self._redraw([f"t = {elapsed:4.0f}s / {duration:.0f}s   {note}", *format_table(COLUMNS, rows)])
        elif elapsed - self._last_plain >= self.plain_every:
            self._last_plain = elapsed
            for line in plain_lines(elapsed, rows):
                self._echo(line)

    def final(self, elapsed: float, rows: Sequence[Sequence[str]]) -> None:
        self._drawn = 0
        self._echo("")
        self._echo(f"final state after {elapsed:.1f}s:")
        for line in format_table(COLUMNS, rows):
            self._echo("  " + line)

    def _redraw(self, lines: list[str]) -> None:
        # A wrapped line would take two rows and break the cursor-up count, so lines are cut to the width.
        width = max(20, shutil.get_terminal_size().columns - 1)
        prefix = f"\x1b[{self._drawn}F" if self._drawn else ""
        frame = [f"\x1b[2K{line[:width]}" for line in lines]
        frame += ["\x1b[2K"] * max(0, self._drawn - len(lines))
        self.out.write(prefix + "\n".join(frame) + "\n")
        self.out.flush()
        self._drawn = len(frame)

    def _echo(self, line: str) -> None:
        click.echo(line, file=self.out)


# --- one run ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WriterResult:
    """What one writer did, and what the database holds of it."""

    profile: WriterProfile
    first_seq: int
    acknowledged: int
    in_meta: int
    in_blob: int
    cold_path: int
    deadlocks: int
    seconds: float
    error: str | None

    @property
    def lost(self) -> int:
        return max(0, self.acknowledged - min(self.in_meta, self.in_blob))

    def crossings(self, width: int) -> int:
        if not self.acknowledged:
            return 0
        return (self.first_seq + self.acknowledged - 1) // width - self.first_seq // width


@dataclass(frozen=True, slots=True)
class Summary:
    """The demo's verdict.  ``ok`` (exit 0): no writer took the cold path, no row went missing, every writer
    and partitiond itself ran to the end."""

    config: DemoConfig
    seconds: float
    writers: tuple[WriterResult, ...]
    latencies: tuple[float, ...]
    created_kinds: dict[str, int]
    runs: int
    failures: tuple[str, ...]
    daemon_exit: int
    interrupted: bool

    @property
    def written(self) -> int:
        return sum(w.acknowledged for w in self.writers)

    @property
    def cold_path(self) -> int:
        return sum(w.cold_path for w in self.writers)

    @property
    def lost(self) -> int:
        return sum(w.lost for w in self.writers)

    @property
    def ok(self) -> bool:
        return (
            self.cold_path == 0
            and self.lost == 0
            and self.written > 0
            and self.daemon_exit == 0
            and not any(w.error for w in self.writers)
        )

    def lines(self) -> list[str]:
        width = self.config.band_width
        per_writer = ", ".join(
            f"{w.profile.originator} {w.profile.role}: {w.acknowledged:,}" for w in self.writers
        )
        rate = self.written / self.seconds if self.seconds > 0 else 0.0
        p50, p99 = percentile(self.latencies, 0.50), percentile(self.latencies, 0.99)
        created = sum(self.created_kinds.values())
        meta = sum(w.in_meta for w in self.writers)
        blob = sum(w.in_blob for w in self.writers)
        lines = [
            "",
            f"summary{' (interrupted)' if self.interrupted else ''}:",
            f"  duration: {self.seconds:.1f}s (band width {width:,}, partitiond interval "
            f"{format_duration(self.config.interval)}, {self.runs} full runs)",
            f"  envelopes written: {self.written:,} ({per_writer})",
            f"  envelopes/s: {rate:,.0f}",
            f"  band crossings by writers: {sum(w.crossings(width) for w in self.writers)}",
            f"  bands created ahead by partitiond: {created} ({self.created_kinds.get('repair', 0)} current "
            f"band up front, {self.created_kinds.get('ahead', 0)} ahead of a crossing)",
            f"  cold-path creations by writers: {self.cold_path}",
            f"  deadlocks: {sum(w.deadlocks for w in self.writers)}",
            f"  insert latency p50/p99: {_ms(p50)} / {_ms(p99)}",
            f"  rows lost: {self.lost:,} ({self.written:,} acknowledged; {meta:,} in gateway_envelopes_meta, "
            f"{blob:,} in gateway_envelopes_blob)",
        ]
        lines += [f"  writer {w.profile.originator} FAILED: {w.error}" for w in self.writers if w.error]
        lines += [f"  partitiond reported: {f}" for f in self.failures[:5]]
        if self.daemon_exit:
            lines.append(f"  partitiond exited with {self.daemon_exit}")
        lines.append(
            "  OK: every band existed before the first envelope that needed it"
            if self.ok
            else "  FAILED: see above (exit status 1)"
        )
        return lines


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (no interpolation: a reported p99 is a latency that really happened)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f} ms"


@dataclass
class Run:
    """The moving parts of one demo run against a ready database."""

    config: DemoConfig
    db: DemoDatabase
    run_dir: Path
    guard: Interrupts
    view: LiveView
    stop: threading.Event = field(default_factory=threading.Event)
    writers: list[PacedWriter] = field(default_factory=list)
    interrupted: bool = False

    def execute(self) -> Summary:
        """Daemon first (band 0 for all), then the writers, the live table, an orderly stop, the checks."""
        with connect(self.db.dsn) as conn:
            first = start_positions(conn, self.config.originators)
        port = free_port()
        daemon = Daemon.start(
            self.config.daemon_args(port), self.db.dsn, self.run_dir / "partitiond.log", port
        )
        self._echo(
            f"partitiond run: pid {daemon.proc.pid}, interval {format_duration(self.config.interval)}, "
            f"runway {format_duration(RUNWAY_SECONDS)}, metrics http://127.0.0.1:{daemon.metrics_port}/metrics"
        )
        started = time.monotonic()
        try:
            daemon.wait_first_run()
            oids = ", ".join(map(str, self.config.originators))
            self._echo(f"first run done: originators {oids} have their current band (band 0 when new)")
            started = time.monotonic()
            self._start_writers(first)
            self._drive(daemon, started)
        finally:
            self.guard.shield()
            self.stop.set()
            for writer in self.writers:
                writer.join(WRITER_JOIN_TIMEOUT)
            daemon_exit = daemon.stop()
        return self._summarise(daemon, time.monotonic() - started, daemon_exit)

    def _start_writers(self, first: dict[int, int]) -> None:
        for profile in self.config.profiles:
            writer = PacedWriter(
                profile=profile,
                dsn=self.db.dsn,
                band_width=self.config.band_width,
                first_seq=first[profile.originator],
                delay=profile.appears_at * self.config.duration,
                stop=self.stop,
                seed=self.config.seed,
            )
            writer.start()
            self.writers.append(writer)
        self._echo("writers: " + "; ".join(p.label() for p in self.config.profiles))

    def _drive(self, daemon: Daemon, started: float) -> None:
        """Refresh the view until the duration is up; Ctrl-C or SIGTERM end the run early, not the cleanup."""
        estimator = RateEstimator(half_life=5.0)
        try:
            with connect(self.db.dsn) as conn:
                while (elapsed := time.monotonic() - started) < self.config.duration:
                    self._refresh(conn, daemon, estimator, elapsed)
                    if daemon.proc.poll() is not None:
                        self._echo(f"partitiond exited early with {daemon.proc.returncode}")
                        break
                    self.stop.wait(min(self.config.refresh, self.config.duration - elapsed))
                self.view.final(time.monotonic() - started, self._rows(conn, daemon, estimator))
        except KeyboardInterrupt:
            self.guard.shield()
            self.interrupted = True
            self._echo("\ninterrupted: stopping the writers and partitiond")

    def _refresh(self, conn: Conn, daemon: Daemon, estimator: RateEstimator, elapsed: float) -> None:
        rows = self._rows(conn, daemon, estimator)
        note = f"last created: {daemon.log.last_created}" if daemon.log.last_created else ""
        self.view.show(elapsed, self.config.duration, rows, note)

    def _rows(self, conn: Conn, daemon: Daemon, estimator: RateEstimator) -> list[tuple[str, ...]]:
        daemon.log.poll()
        try:
            statuses = read_statuses(conn, self.config, estimator)
        except (pipeline.PassFailure, psycopg.Error) as exc:
            self._echo(f"status unavailable: {redact(str(exc)).strip()}")
            return []
        return status_rows(statuses, self.config, self.writers, daemon.log)

    def _summarise(self, daemon: Daemon, seconds: float, daemon_exit: int) -> Summary:
        with connect(self.db.dsn) as conn:
            results = tuple(self._result(conn, w) for w in self.writers)
        return Summary(
            config=self.config,
            seconds=seconds,
            writers=results,
            latencies=tuple(lat for w in self.writers for lat in w.stats.latencies),
            created_kinds=dict(daemon.log.created_kinds),
            runs=daemon.log.runs,
            failures=tuple(daemon.log.failures),
            daemon_exit=daemon_exit,
            interrupted=self.interrupted,
        )

    @staticmethod
    def _result(conn: Conn, w: PacedWriter) -> WriterResult:
        oid, acked = w.profile.originator, w.stats.inserted
        return WriterResult(
            profile=w.profile,
            first_seq=w.first_seq,
            acknowledged=acked,
            in_meta=count_rows(conn, catalog.META, oid, w.first_seq, acked),
            in_blob=count_rows(conn, catalog.BLOB, oid, w.first_seq, acked),
            cold_path=w.stats.cold_path,
            deadlocks=w.stats.deadlocks,
            seconds=w.active_seconds,
            error=w.error,
        )

    def _echo(self, line: str) -> None:
        click.echo(line, file=self.view.out)


# --- the whole demo -----------------------------------------------------------------------------------


def make_run_dir(work_dir: Path) -> Path:
    """``<work_dir>/run-XXXX``: traversable by the postgres OS user, since the cluster lives inside."""
    work_dir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=work_dir)).resolve()
    run_dir.chmod(0o755)
    return run_dir


def run_demo(config: DemoConfig, out: TextIO) -> int:
    """Run the demo and return its exit status; the cluster is gone afterwards unless ``--keep``."""
    view = LiveView(tty=out.isatty(), plain_every=config.plain_every, out=out)
    run_dir = make_run_dir(config.work_dir)
    summary: Summary | None = None
    kept: LocalCluster | None = None
    with Interrupts() as guard:
        try:
            with open_database(config, run_dir, guard) as db:
                click.echo(_where(db, run_dir), file=out)
                summary = Run(config, db, run_dir, guard, view).execute()
                kept = db.cluster if config.keep else None
        except KeyboardInterrupt:
            click.echo("\ninterrupted during set-up; everything started so far was stopped", file=out)
            _tidy(config.work_dir, run_dir, keep_log=False, out=out)
            return EXIT_INTERRUPTED
        except (DemoError, DaemonError, ClusterError) as exc:
            click.echo(f"partitiond demo: {exc}", file=out)
            _tidy(config.work_dir, run_dir, keep_log=True, out=out)
            return EXIT_SETUP
    assert summary is not None  # every path that leaves it unset has returned
    for line in summary.lines():
        click.echo(line, file=out)
    if kept is not None:
        for line in _kept_instructions(kept, run_dir):
            click.echo(line, file=out)
    else:
        _tidy(config.work_dir, run_dir, keep_log=not summary.ok, out=out)
    return EXIT_OK if summary.ok else EXIT_FAILED


def _where(db: DemoDatabase, run_dir: Path) -> str:
    if db.cluster is None:
        return f"using the existing database given with --dsn; partitiond's log: {run_dir / 'partitiond.log'}"
    return f"throwaway PostgreSQL cluster in {db.cluster.base_dir} ({db.dsn})"


def _tidy(work_dir: Path, run_dir: Path, *, keep_log: bool, out: TextIO) -> None:
    """Remove this run's directory, then ``work_dir`` if that left it empty.  After a failure, partitiond's
    log is kept (the cluster's own directory is gone already) and its path printed."""
    log = run_dir / "partitiond.log"
    if keep_log and log.exists():
        click.echo(f"partitiond's log kept at {log}", file=out)
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    with contextlib.suppress(OSError):
        work_dir.rmdir()


def _kept_instructions(cluster: LocalCluster, run_dir: Path) -> list[str]:
    pg_ctl = f"{cluster.bindir / 'pg_ctl'} -D {cluster.data_dir} stop"
    if os.geteuid() == 0:
        pg_ctl = f"runuser -u {SERVER_OS_USER} -- {pg_ctl}"
    return [
        "",
        "--keep: the cluster is still running (partitiond and the writers are stopped).",
        f"  DSN:      {cluster.dsn()}",
        f'  connect:  psql "{cluster.dsn()}"',
        f"  stop it:  {pg_ctl} && rm -rf {run_dir}",
    ]


# --- click --------------------------------------------------------------------------------------------


class Duration(click.ParamType[float]):
    """``60s``, ``2m``, ``1m30s`` or plain seconds, parsed exactly like partitiond's own duration settings."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            seconds = float(_parse_duration(value))
        except (TypeError, ValueError):
            seconds = math.nan
        if not (math.isfinite(seconds) and seconds > 0):
            self.fail(f"{value!r} is not a positive duration (e.g. 60s, 2m, 90)", param, ctx)
        return seconds


@click.command("demo")
@click.option(
    "--duration", type=Duration(), default="60s", show_default=True, help="How long the writers run."
)
@click.option(
    "--keep",
    is_flag=True,
    help="Leave the local cluster running at the end and print its DSN and how to stop it.",
)
@click.option(
    "--dsn",
    default=None,
    help="Run against this existing database instead of a local cluster. Creates the xmtpd tables only if "
    "both are missing (never drops anything), installs partitiond's functions, writes demo rows for "
    "originators 100, 200 and 300. Never point it at production.",
)
@click.option(
    "--band-width",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="Sequence ids per band.",
)
@click.option(
    "--seed", type=int, default=1, show_default=True, help="Seed for the synthetic envelope payloads."
)
@click.option(
    "--dir",
    "work_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".demo"),
    show_default=True,
    help="Where the throwaway cluster and partitiond's log live (removed at the end unless --keep/failure).",
)
def demo_command(
    duration: float, keep: bool, dsn: str | None, band_width: int, seed: int, work_dir: Path
) -> None:
    """Show partitiond's main job: bands created ahead of xmtpd-like writers, none on the insert path.

    Starts a throwaway PostgreSQL cluster in ./.demo (as the postgres OS user when run as root), installs
    the xmtpd tables and partitiond's functions, runs the real `partitiond run` with a narrow band width and
    short intervals, and starts synthetic writers: a fast one (originator 100), a slow one (200) and one that
    appears a third of the way in (300).  A live table shows each originator's position, band, headroom and
    the bands partitiond created; at the end a summary reports envelopes written, bands created ahead,
    cold-path creations by writers (should be 0), insert latency p50/p99 and a rows-lost check.  Ctrl-C or
    SIGTERM stops early and still removes the cluster (unless --keep).

    Exit status: 0 when no writer had to create a partition itself (cold path), no acknowledged row is
    missing and the writers and partitiond ran cleanly; 1 otherwise; 2 when the demo could not be set up;
    130 when interrupted during set-up.  Ctrl-C during the run still ends with the summary and 0 or 1.

    \b
    Examples:
      partitiond demo
      partitiond demo --duration 2m --band-width 20000
      partitiond demo --keep
      partitiond demo --dsn postgresql://postgres@localhost/scratch --duration 30s
    """
    config = DemoConfig(
        duration=duration, band_width=band_width, seed=seed, keep=keep, dsn=dsn, work_dir=work_dir
    )
    sys.exit(run_demo(config, sys.stdout))
