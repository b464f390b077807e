"""Interference: what partitiond can add to any xmtpd insert, whatever else is running.

One row per interferer, each on a fresh database of one throwaway cluster.  In every row xmtpd-protocol
writers (one process per originator: shared side of key 5, meta + blob in one statement, the cold path
on 23514) write at a steady pace while the real daemon (``python -m partitiond run``, probes every
second) creates their next bands ahead; ``--interfere-at`` seconds in, the interferer acts for
``--interfere-for`` seconds:

* ``none``: nothing;
* ``v3 creator``: xmtpd's cold path creating the very band partitiond is about to create, over and over
  (key 5 exclusive, ``ensure_gateway_parts_v3``, which re-attaches the originator's L1 under ACCESS
  EXCLUSIVE);
* ``lazy creator``: an xmtpd writer whose every insert lands in a missing band (the #2026 cold path);
* ``vacuum``: SHARE UPDATE EXCLUSIVE held on a meta partition, as VACUUM and ANALYZE hold it;
* ``create index concurrently``: CREATE / DROP INDEX CONCURRENTLY on a meta partition, in a loop;
* ``open payers txn``: a transaction that inserted into ``payers`` and stays open;
* ``long blob reader``: a transaction that read ``gateway_envelopes_blob`` and stays open;
* ``pruner``: xmtpd's pruner dropping an old empty band (``DROP TABLE … CASCADE``) every second;
* ``frozen partitiond``: partitiond stops itself (SIGSTOP, the test-only fault hook) right after key 5 is
  granted, and is continued after ``--interfere-for``;
* ``restart``: PostgreSQL restarted (fast shutdown).

Per row: xmtpd errors by SQLSTATE (writers and the interferer's own xmtpd sessions; 40P01 counts), cold-path
creations, insert p99 and longest insert, bands created and deferred by partitiond (with the deferral
reasons), partitiond's longest key-5 hold, and whether every band existed once the interferer was gone
(each originator's current and next band, checked when the writers stop, at least three probe intervals
after the interferer left).  The server's ``deadlock_timeout`` and partitiond's ``--lock-timeout`` are
options, so the row set can be run at the worst combination too.

    python bench/interference.py [--rows all] [--seconds 12] [--interfere-at 3] [--interfere-for 5]
                                 [--lock-timeout 500ms] [--deadlock-timeout 1s] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from multiprocessing.queues import Queue as QueueType
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench.hotpath import create_template, first_id, fresh_database
from partitiond.catalog import latest_positions
from partitiond.child import Daemon
from partitiond.cluster import LocalCluster, throwaway_cluster
from partitiond.faults import ENV as FAULT_ENV
from partitiond.xmtpd_writer import LazyWriter

Conn = psycopg.Connection[Any]
PROBE_INTERVAL = 1.0
SPARE = 99  # the pruner's originator: empty old bands to drop
LAZY = 98  # the lazy creator's originator: every insert lands in a new band
BANDS_DEADLINE = 10.0  # seconds for every current and next band to be in place once the interferer is gone
CONNECTION_LOST = "08000"  # reported for a connection that broke without a SQLSTATE


@dataclass(frozen=True, slots=True)
class Options:
    rows: tuple[str, ...]
    originators: int = 4
    band_width: int = 2_000
    rate: float = 100.0  # envelopes per second per originator
    seconds: float = 12.0
    interfere_at: float = 3.0
    interfere_for: float = 5.0
    lock_timeout: str = "500ms"
    deadlock_timeout: str = "1s"
    idle_timeout: str = "2s"

    @property
    def originator_ids(self) -> tuple[int, ...]:
        return tuple(range(1, self.originators + 1))


@dataclass
class WriterReport:
    """What one writer process saw, sent back when it stops."""

    oid: int
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    cold_path: int = 0


@dataclass
class Row:
    """One interferer's row of the table."""

    name: str
    errors: dict[str, int]
    cold_path: int
    inserts: int
    p99: float
    max_stall: float
    created: int
    deferred: dict[str, int]
    max_hold: float
    bands_ok: bool
    partitiond_in_deadlock: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


# --- writers -----------------------------------------------------------------------------------------


def writer_process(
    dsn: str, oid: int, first: int, width: int, rate: float, stop: EventType, out: QueueType[WriterReport]
) -> None:
    """xmtpd's insert protocol at ``rate`` envelopes per second; every error is counted by SQLSTATE and the
    writer goes on (reconnecting after a lost connection), as xmtpd's workers do."""
    report = WriterReport(oid)
    seq, due = first, time.monotonic()
    conn: Conn | None = None
    writers: list[LazyWriter] = []
    while not stop.wait(max(0.0, due - time.monotonic())):
        due += 1 / rate
        try:
            if conn is None or conn.broken:
                conn = psycopg.connect(dsn, autocommit=True, application_name="interference-writer")
                writers.append(LazyWriter(conn, band_width=width))
            writers[-1].insert(oid, seq)
        except psycopg.Error as exc:
            report.errors[exc.sqlstate or CONNECTION_LOST] += 1
            continue
        except RuntimeError:  # LazyWriter gave up after its retries
            report.errors["gave up"] += 1
            continue
        seq += 1
    if conn is not None:
        conn.close()
    for writer in writers:
        report.latencies.extend(writer.stats.latencies)
        report.cold_path += writer.stats.cold_path
        report.errors["40P01"] += writer.stats.deadlocks
    out.put(report)


# --- interferers -------------------------------------------------------------------------------------


@dataclass
class Context:
    """What an interferer gets: where to act, for how long, and where to report xmtpd-side errors."""

    cluster: LocalCluster
    dsn: str
    options: Options
    stop: threading.Event
    daemon: Daemon
    errors: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def until(self) -> float:
        return time.monotonic() + self.options.interfere_for


def _hold(ctx: Context, statements: Sequence[str]) -> None:
    """Run ``statements`` in one transaction and keep it open for the interference time."""
    with psycopg.connect(ctx.dsn, application_name="interferer") as conn:
        for statement in statements:
            conn.execute(statement.encode())
        ctx.stop.wait(ctx.options.interfere_for)
        conn.rollback()


def v3_creator(ctx: Context) -> None:
    """xmtpd's EnsureGatewayPartitions for each originator's next band, racing partitiond."""
    width, end = ctx.options.band_width, ctx.until()
    with psycopg.connect(ctx.dsn, autocommit=True, application_name="xmtpd-v3-creator") as conn:
        conn.execute("SET statement_timeout = '10s'")  # xmtpd's connections
        while time.monotonic() < end and not ctx.stop.is_set():
            for oid, seq in latest_positions(conn, "public").items():
                if oid not in ctx.options.originator_ids:
                    continue
                try:
                    with conn.transaction():
                        conn.execute("SELECT pg_advisory_xact_lock(5)")
                        conn.execute("SELECT ensure_gateway_parts_v3(%s, %s, %s)", [oid, seq + width, width])
                except psycopg.Error as exc:
                    ctx.errors[exc.sqlstate or CONNECTION_LOST] += 1
            ctx.stop.wait(0.05)


def lazy_creator(ctx: Context) -> None:
    """One xmtpd writer whose every insert needs a new band: the cold path, continuously."""
    width, end, seq = ctx.options.band_width, ctx.until(), 1
    with psycopg.connect(ctx.dsn, autocommit=True, application_name="xmtpd-lazy-creator") as conn:
        writer = LazyWriter(conn, band_width=width)
        while time.monotonic() < end and not ctx.stop.is_set():
            try:
                writer.insert(LAZY, seq)
            except psycopg.Error as exc:
                ctx.errors[exc.sqlstate or CONNECTION_LOST] += 1
            seq += width
            ctx.stop.wait(0.1)
    ctx.errors["40P01"] += writer.stats.deadlocks


def vacuum(ctx: Context) -> None:
    _hold(ctx, [f"LOCK TABLE {_leaf('meta', 1, 0, ctx)} IN SHARE UPDATE EXCLUSIVE MODE"])


def create_index_concurrently(ctx: Context) -> None:
    end, leaf = ctx.until(), _leaf("meta", 1, 0, ctx)
    with psycopg.connect(ctx.dsn, autocommit=True, application_name="interferer") as conn:
        while time.monotonic() < end and not ctx.stop.is_set():
            conn.execute(f"CREATE INDEX CONCURRENTLY interference_idx ON {leaf} (expiry)".encode())
            conn.execute(b"DROP INDEX CONCURRENTLY interference_idx")


def open_payers_txn(ctx: Context) -> None:
    _hold(ctx, ["INSERT INTO payers (address) VALUES ('interference')"])


def long_blob_reader(ctx: Context) -> None:
    _hold(ctx, ["SELECT count(*) FROM gateway_envelopes_blob"])


def pruner(ctx: Context) -> None:
    """xmtpd's pruner's statement for one old, empty band per second (there are plenty of them)."""
    end, band = ctx.until(), 0
    with psycopg.connect(ctx.dsn, autocommit=True, application_name="xmtpd-pruner") as conn:
        conn.execute("SET statement_timeout = '10s'")
        while time.monotonic() < end and not ctx.stop.is_set():
            meta, blob = _leaf("meta", SPARE, band, ctx), _leaf("blob", SPARE, band, ctx)
            try:
                conn.execute(f"DROP TABLE IF EXISTS {meta}, {blob} CASCADE".encode())
            except psycopg.Error as exc:
                ctx.errors[exc.sqlstate or CONNECTION_LOST] += 1
            band += 1
            ctx.stop.wait(1.0)


def frozen_partitiond(ctx: Context) -> None:
    """partitiond stopped itself at its next key-5 grant (the daemon was started with the fault hook);
    once it is stopped, keep it so for the interference time, then continue it."""
    pid = ctx.daemon.proc.pid
    stopped_at: float | None = None
    deadline = time.monotonic() + ctx.options.seconds
    while time.monotonic() < deadline and not ctx.stop.is_set():
        if _process_state(pid) == "T":
            stopped_at = time.monotonic()
            break
        ctx.stop.wait(0.01)
    if stopped_at is None:
        ctx.notes.append("partitiond never reached key 5 while frozen-at-key-5 was armed")
        return
    ctx.stop.wait(ctx.options.interfere_for)
    os.kill(pid, signal.SIGCONT)
    ctx.notes.append(f"partitiond frozen while holding key 5 for {time.monotonic() - stopped_at:.1f}s")


def restart(ctx: Context) -> None:
    ctx.cluster.restart()
    ctx.notes.append("PostgreSQL restarted: every session of the writers was cut off once")


def _process_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "?"


def _leaf(tree: str, oid: int, band: int, ctx: Context) -> str:
    w = ctx.options.band_width
    return f"gateway_envelopes_{tree}_o{oid}_s{band * w}_{(band + 1) * w}"


def nothing(ctx: Context) -> None:
    """The baseline row."""


INTERFERERS: dict[str, Callable[[Context], None]] = {
    "none": nothing,
    "v3 creator": v3_creator,
    "lazy creator": lazy_creator,
    "vacuum": vacuum,
    "create index concurrently": create_index_concurrently,
    "open payers txn": open_payers_txn,
    "long blob reader": long_blob_reader,
    "pruner": pruner,
    "frozen partitiond": frozen_partitiond,
    "restart": restart,
}


# --- one row -----------------------------------------------------------------------------------------


def prepare(dsn: str, options: Options) -> None:
    """Band 0 and a first envelope for every originator (xmtpd's way), and old empty bands for the pruner.
    Originators start spread over their first band (:func:`first_id`); with 4 of them the last starts
    past the fill threshold, so partitiond's first run creates a band (the frozen row needs one while the
    writers write)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        writer = LazyWriter(conn, band_width=options.band_width)
        for oid in options.originator_ids:
            writer.insert(oid, first_id(options, oid) - 1)
        for band in range(12):
            conn.execute(
                "SELECT ensure_gateway_parts_v4(%s, %s, %s)",
                [SPARE, band * options.band_width, options.band_width],
            )


def start_daemon(dsn: str, options: Options, log_path: Path, frozen: bool) -> Daemon:
    args = [
        *("--band-width", str(options.band_width), "--interval", "5s", "--jitter", "0"),
        # Bands last 20 s here: "runway left" (no slow path past a busy blob L1) means more than 5 s of it.
        *("--probe-interval", f"{PROBE_INTERVAL:g}s", "--runway", "60s", "--slow-path-runway", "5s"),
        *("--lock-timeout", options.lock_timeout, "--idle-in-transaction-timeout", options.idle_timeout),
        *("--metrics-address", "", "--log-format", "json"),
    ]
    for oid in options.originator_ids:
        args += ["--originator", str(oid)]
    return Daemon.start(args, dsn, log_path, extra_env={FAULT_ENV: "holding-key5"} if frozen else None)


def wait_for_writers(dsn: str, options: Options) -> None:
    """Until every writer has written (each originator's position moved past its first id)."""
    deadline = time.monotonic() + 60
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            positions = latest_positions(conn, "public")
            if all(positions.get(oid, -1) >= first_id(options, oid) for oid in options.originator_ids):
                return
            time.sleep(0.05)  # polling with a deadline
    raise RuntimeError("the writers did not start writing within 60 s")


def bands_missing(dsn: str, options: Options) -> list[tuple[int, int]]:
    """(originator, band start) of each current or next band missing from either tree, polled until none
    is missing or ``BANDS_DEADLINE`` passes.

    Checked while the writers still write: partitiond plans the next band from the rate it sees, and one
    that is only planned after the position enters the current band (``--max-bands-ahead 1``) is due one
    probe after the crossing — a writer that stops right after crossing leaves no rate to plan from, which
    would test the writers' timing, not partitiond.  Positions are re-read on every poll, so an originator
    that crosses meanwhile is checked against its new band."""
    w = options.band_width
    deadline = time.monotonic() + BANDS_DEADLINE
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            positions = latest_positions(conn, "public")
            missing = [
                (oid, start)
                for oid in options.originator_ids
                for start in (positions.get(oid, 0) // w * w, positions.get(oid, 0) // w * w + w)
                if not _exists(conn, oid, start, w)
            ]
            if not missing or time.monotonic() > deadline:
                return missing
            time.sleep(0.1)  # polling the catalog with a deadline


def _exists(conn: Conn, oid: int, start: int, width: int) -> bool:
    row = conn.execute("SELECT partitiond_band_exists(%s, %s, %s)", [oid, start, start + width]).fetchone()
    return bool(row and row[0])


def daemon_events(daemon: Daemon) -> tuple[int, Counter[str], float]:
    """Bands created, deferrals by reason and the longest key-5 hold (seconds), from partitiond's log."""
    created, deferred, hold = 0, Counter[str](), 0.0
    for _, event in daemon.events():
        created += event.get("event") == "band created"
        deferred.update(str(reason) for reason in event.get("deferrals") or ())
        hold = max([hold, *(float(ms) / 1000 for ms in event.get("key5_hold_ms") or ())])
    return created, deferred, hold


def run_row(cluster: LocalCluster, name: str, options: Options, work_dir: Path) -> Row:
    act = INTERFERERS[name]
    log_offset = cluster.log_file.stat().st_size if cluster.log_file.exists() else 0
    with fresh_database(cluster, "interference_" + name.replace(" ", "_").replace("-", "_")) as dsn:
        with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
            db = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
            admin.execute(
                sql.SQL("ALTER DATABASE {} SET deadlock_timeout = {}").format(
                    sql.Identifier(str(db)), sql.Literal(options.deadlock_timeout)
                )
            )
        prepare(dsn, options)
        log_path = work_dir / f"{name.replace(' ', '-')}.log"
        # The frozen row starts partitiond once the writers write: its first run, which creates a band and
        # so freezes it holding key 5, must find them running.
        frozen = name == "frozen partitiond"
        daemon = None if frozen else start_daemon(dsn, options, log_path, frozen=False)
        try:
            if daemon is not None:
                daemon.wait_first_run()
            mp = multiprocessing.get_context("spawn")
            stop, out = mp.Event(), mp.Queue()
            procs = [
                mp.Process(
                    target=writer_process,
                    args=(dsn, oid, first_id(options, oid), options.band_width, options.rate, stop, out),
                    daemon=True,
                )
                for oid in options.originator_ids
            ]
            for proc in procs:
                proc.start()
            if daemon is None:
                wait_for_writers(dsn, options)
                daemon = start_daemon(dsn, options, log_path, frozen=True)
            ctx = Context(cluster, dsn, options, threading.Event(), daemon)
            interferer = threading.Timer(0.0 if frozen else options.interfere_at, act, [ctx])
            interferer.start()
            time.sleep(options.seconds)  # a duration: the writers and the daemon run meanwhile
            ctx.stop.set()
            interferer.join(60)
            missing = bands_missing(dsn, options)
            stop.set()
            reports = [out.get(timeout=60) for _ in procs]
            for proc in procs:
                proc.join(30)
            ctx.notes += [
                f"band [{start:,}, +{options.band_width:,}) of originator {oid} missing"
                for oid, start in missing
            ]
        finally:
            if daemon is not None:
                daemon.stop()
        created, deferred, hold = daemon_events(daemon)
    with cluster.log_file.open("rb") as server_log:
        server_log.seek(log_offset)
        cycles = deadlocks(server_log.read().decode("utf-8", errors="replace"))
    ctx.notes += [f"deadlock between {' and '.join(sorted(cycle))}" for cycle in cycles]
    latencies = sorted(lat for r in reports for lat in r.latencies)
    errors = Counter[str]()
    for r in reports:
        errors.update(r.errors)
    errors.update(ctx.errors)
    return Row(
        name=name,
        errors={k: v for k, v in errors.items() if v},
        cold_path=sum(r.cold_path for r in reports),
        inserts=len(latencies),
        p99=latencies[int(0.99 * (len(latencies) - 1))] if latencies else 0.0,
        max_stall=latencies[-1] if latencies else 0.0,
        created=created,
        deferred=dict(deferred),
        max_hold=hold,
        bands_ok=not missing,
        partitiond_in_deadlock=any("partitiond" in cycle for cycle in cycles),
        notes=ctx.notes,
    )


@contextmanager
def bench_cluster() -> Iterator[LocalCluster]:
    """The cluster, logging every connection's application name, so that a deadlock in its log can be
    traced to the sessions that made it (see :func:`deadlocks`)."""
    with throwaway_cluster(prefix="partitiond-interference-") as cluster:
        with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
            admin.execute("ALTER SYSTEM SET log_connections = on")
            admin.execute("SELECT pg_reload_conf()")
        create_template(cluster)
        yield cluster


_CONNECTION = re.compile(r"\[(\d+)\] LOG:  connection authorized: .*application_name=(\S+)")
_DEADLOCK_EDGE = re.compile(r"Process (\d+) waits for [^;]*; blocked by process (\d+)")


def deadlocks(log_text: str) -> list[set[str]]:
    """For each deadlock the server reported, the application names of the sessions in the cycle."""
    names = {pid: app.rstrip(",") for pid, app in _CONNECTION.findall(log_text)}
    cycles = []
    for report in log_text.split("deadlock detected")[1:]:
        detail = report.split("HINT:", 1)[0]
        pids = {pid for edge in _DEADLOCK_EDGE.findall(detail) for pid in edge}
        cycles.append({names.get(pid, f"pid {pid}") for pid in pids})
    return cycles


def render(options: Options, rows: Sequence[Row]) -> list[str]:
    lines = [
        f"--lock-timeout {options.lock_timeout}, deadlock_timeout {options.deadlock_timeout}, "
        f"hold budget 50ms, {options.originators} writers at {options.rate:g} envelopes/s each, "
        f"interferer from {options.interfere_at:g}s for {options.interfere_for:g}s of {options.seconds:g}s",
        "",
        "| interferer | xmtpd errors | cold path | p99 ms | max stall ms | created | deferred "
        "| max key-5 hold ms | bands in place |",
        "|---|---|---:|---:|---:|---:|---|---:|---|",
    ]
    for r in rows:
        errors = ", ".join(f"{k} x{v}" for k, v in sorted(r.errors.items())) or "0"
        deferred = ", ".join(f"{k} x{v}" for k, v in sorted(r.deferred.items())) or "0"
        lines.append(
            f"| {r.name} | {errors} | {r.cold_path} | {r.p99 * 1000:.1f} | {r.max_stall * 1000:.1f} | "
            f"{r.created} | {deferred} | {r.max_hold * 1000:.1f} | {'yes' if r.bands_ok else '**no**'} |"
        )
    notes = [f"* {r.name}: {note}" for r in rows for note in r.notes]
    if any(r.partitiond_in_deadlock for r in rows):
        notes.append("* **partitiond was part of a deadlock** (see above)")
    return lines + (["", *notes] if notes else [])


def parse_args(argv: Sequence[str] | None) -> tuple[Options, str | None]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", default="all", help=f"comma-separated, of: {', '.join(INTERFERERS)}")
    parser.add_argument("--seconds", type=float, default=12.0, help="writers' time per row")
    parser.add_argument("--interfere-at", type=float, default=3.0)
    parser.add_argument("--interfere-for", type=float, default=5.0)
    parser.add_argument("--lock-timeout", default="500ms", help="partitiond's --lock-timeout")
    parser.add_argument("--deadlock-timeout", default="1s", help="the server's deadlock_timeout")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    rows = tuple(INTERFERERS) if args.rows == "all" else tuple(r.strip() for r in args.rows.split(","))
    unknown = [r for r in rows if r not in INTERFERERS]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {', '.join(INTERFERERS)}")
    if args.interfere_at < 0 or args.interfere_at + args.interfere_for + 3 * PROBE_INTERVAL > args.seconds:
        parser.error("the interferer must be gone three probe intervals before the row ends")
    options = Options(
        rows=rows,
        seconds=args.seconds,
        interfere_at=args.interfere_at,
        interfere_for=args.interfere_for,
        lock_timeout=args.lock_timeout,
        deadlock_timeout=args.deadlock_timeout,
    )
    return options, args.json


def main(argv: Sequence[str] | None = None) -> None:
    options, json_path = parse_args(argv)
    rows: list[Row] = []
    with bench_cluster() as cluster, tempfile.TemporaryDirectory(prefix="interference-") as work:
        for name in options.rows:
            rows.append(run_row(cluster, name, options, Path(work)))
            print(f"  {name}: done", flush=True)
    print("\n".join(render(options, rows)))
    if json_path:
        Path(json_path).write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")


if __name__ == "__main__":
    main()
