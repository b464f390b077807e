"""What restoring the pruned foreign keys costs xmtpd's inserts: `partitiond repair`'s path for this major
against the blocking fallback (a plain ADD FOREIGN KEY), side by side in one run.

A throwaway cluster (the major from ``PARTITIOND_PG``) gets xmtpd's schema, ``--rows`` envelopes spread over
``--originators`` originators in bands of ``--band-width`` (bulk-loaded with generate_series, meta then
blob), a few thousand blockchain messages, and then xmtpd's pruner statement on an empty band
(``DROP TABLE … CASCADE``), which takes both top-level keys with it.  That database is the template of one
copy per path.  On each copy an xmtpd-protocol writer (meta and blob in one statement under the shared side
of key 5, paced at ``--rate`` inserts per second) inserts all the time; first an idle window with nothing
else (``--idle`` seconds: the baseline), then the repair by one path, then a second of settling.  Reported
per path: the repair's duration, its longest single statement, the longest insert that overlapped it, the
idle window's longest insert, and their ratio.

    python bench/repair.py [--rows 1000000] [--originators 4] [--band-width 50000] [--rate 100]
                           [--idle 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from multiprocessing.queues import Queue as QueueType
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench.hotpath import positive_float, positive_int
from partitiond import repair, repair_plan, sqlfiles
from partitiond.cluster import LocalCluster, throwaway_cluster
from partitiond.config import Settings
from partitiond.xmtpd_writer import LazyWriter

Conn = psycopg.Connection[Any]
Calls = list[tuple[float, float]]  # (wall start, latency) per insert
TEMPLATE = "repair_template"
PATHS: tuple[tuple[str, repair_plan.Path | None], ...] = (
    ("partitiond repair", None),
    ("blocking ADD", "blocking"),
)


@dataclass(frozen=True, slots=True)
class Options:
    rows: int
    originators: int
    band_width: int
    rate: float
    idle: float

    @property
    def per_originator(self) -> int:
        return self.rows // self.originators

    def command_line(self, json_path: str | None) -> str:
        extra = f" --json {json_path}" if json_path else ""
        return (
            f"$ python bench/repair.py --rows {self.rows} --originators {self.originators} --band-width "
            f"{self.band_width} --rate {self.rate:g} --idle {self.idle:g}{extra}"
        )


@dataclass
class Result:
    name: str
    path: str | None
    seconds: float
    statements: int
    longest_statement: float
    longest_blocking: float  # the longest statement holding a lock inserts wait for (brief or scan)
    longest_insert: float
    idle_longest_insert: float
    inserts_during: int

    @property
    def ratio(self) -> float:
        return self.longest_insert / self.idle_longest_insert if self.idle_longest_insert else 0.0


# --- set-up -------------------------------------------------------------------------------------------


def build_template(cluster: LocalCluster, options: Options) -> None:
    """xmtpd's schema, the bands, the rows (none in band 0), then the pruner's statement on band 0 of
    originator 1: both top-level keys gone."""
    with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE)))
    with psycopg.connect(cluster.dsn(TEMPLATE), autocommit=True) as conn:
        sqlfiles.install_schema(conn)
        sqlfiles.install_functions(conn)
        width, per = options.band_width, options.per_originator
        for oid in range(1, options.originators + 1):
            for start in range(0, width + per + 2 * width, width):
                conn.execute("SELECT ensure_gateway_parts_v4(%s, %s, %s)", [oid, start, width])
            bounds = [oid, width, width + per - 1]
            conn.execute(
                "INSERT INTO gateway_envelopes_meta"
                " (originator_node_id, originator_sequence_id, topic, expiry)"
                " SELECT %s, s, convert_to('topic-' || (s %% 16), 'UTF8'), 1"
                " FROM generate_series(%s::bigint, %s::bigint) AS s",
                bounds,
            )
            conn.execute(
                "INSERT INTO gateway_envelopes_blob SELECT %s, s, repeat('x', 64)::bytea"
                " FROM generate_series(%s::bigint, %s::bigint) AS s",
                bounds,
            )
        conn.execute(
            "INSERT INTO blockchain_messages SELECT s, 'h', 1, s, true"
            " FROM generate_series(%s::bigint, %s::bigint) AS s",
            [width, width + min(per, 5000) - 1],
        )
        conn.execute(
            sql.SQL("DROP TABLE IF EXISTS {}, {} CASCADE").format(
                sql.Identifier(f"gateway_envelopes_meta_o1_s0_{width}"),
                sql.Identifier(f"gateway_envelopes_blob_o1_s0_{width}"),
            )
        )
        conn.execute("VACUUM ANALYZE")


def copy_of_template(cluster: LocalCluster, name: str) -> str:
    with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(TEMPLATE))
        )
    return cluster.dsn(name)


# --- the writer ---------------------------------------------------------------------------------------


def writer_process(
    dsn: str, first: int, width: int, rate: float, stop: EventType, out: QueueType[Calls]
) -> None:
    """xmtpd's insert protocol into originator 1's last band, paced; sends back (wall start, latency)."""
    calls: Calls = []
    with psycopg.connect(dsn, autocommit=True, application_name="bench-writer") as conn:
        writer = LazyWriter(conn, band_width=width)
        seq = first
        while not stop.is_set():
            began = time.time()
            writer.insert(1, seq)
            calls.append((began, writer.stats.latencies[-1]))
            seq += 1
            stop.wait(1 / rate)
    out.put(calls)


def longest(calls: Calls, start: float, end: float) -> tuple[float, int]:
    """The longest insert that overlapped [start, end), and how many did."""
    overlapping = [lat for began, lat in calls if began < end and began + lat > start]
    return max(overlapping, default=0.0), len(overlapping)


def measure(cluster: LocalCluster, options: Options, name: str, path: repair_plan.Path | None) -> Result:
    dsn = copy_of_template(cluster, f"repair_{len(name)}_{path or 'best'}".replace("-", "_"))
    mp = multiprocessing.get_context("spawn")
    stop, out = mp.Event(), mp.Queue()
    first = options.band_width + options.per_originator
    proc = mp.Process(
        target=writer_process, args=(dsn, first, options.band_width, options.rate, stop, out), daemon=True
    )
    proc.start()
    try:
        time.sleep(1.0)  # the writer connects and settles: load generation, not synchronisation
        idle_start = time.time()
        time.sleep(options.idle)  # the idle baseline window itself
        idle_end = began = time.time()
        settings = Settings(dsn=dsn, metrics_address="", statement_timeout=3600)
        report = repair.repair(settings, {}, apply_steps=True, allow_blocking=True, path=path)
        ended = time.time()
        time.sleep(1.0)  # inserts right after the repair still count as its window
    finally:
        stop.set()
        calls = out.get(timeout=120)
        proc.join(30)
    if report.exit_code != 0 or report.after:
        raise RuntimeError(f"{name}: repair did not complete: {repair.render(report, 'table')}")
    worst, during = longest(calls, began, ended + 1.0)
    idle_worst, _ = longest(calls, idle_start, idle_end)
    seconds = [o.seconds or 0.0 for o in report.outcomes]
    blocking = [o.seconds or 0.0 for o in report.outcomes if o.step.lock != "validate"]
    return Result(
        name,
        report.plan.path,
        ended - began,
        len(seconds),
        max(seconds),
        max(blocking, default=0.0),
        worst,
        idle_worst,
        during,
    )


# --- output -------------------------------------------------------------------------------------------


def render(server: str, options: Options, results: Sequence[Result], layout: str) -> list[str]:
    lines = [
        f"PostgreSQL {server}; {options.rows:,} envelopes, {layout}; writer at {options.rate:g} inserts/s",
        "",
        "| repair | path | duration s | statements | longest statement ms | longest blocking statement ms "
        "| longest insert ms | idle longest insert ms | during / idle |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.path} | {r.seconds:.2f} | {r.statements} | {r.longest_statement * 1000:.1f} "
            f"| {r.longest_blocking * 1000:.1f} | {r.longest_insert * 1000:.1f} "
            f"| {r.idle_longest_insert * 1000:.1f} | {r.ratio:.1f}x |"
        )
    return lines


def parse_args(argv: Sequence[str] | None) -> tuple[Options, str | None]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=positive_int, default=1_000_000, help="envelopes loaded")
    parser.add_argument("--originators", type=positive_int, default=4, help="originators sharing the rows")
    parser.add_argument("--band-width", type=positive_int, default=50_000, help="sequence ids per band")
    parser.add_argument("--rate", type=positive_float, default=100.0, help="writer inserts per second")
    parser.add_argument("--idle", type=positive_float, default=5.0, help="seconds of the idle baseline")
    parser.add_argument("--json", metavar="PATH", default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.rows < args.originators:
        parser.error("--rows must be >= --originators")
    options = Options(args.rows, args.originators, args.band_width, args.rate, args.idle)
    return options, args.json


def main(argv: Sequence[str] | None = None) -> None:
    options, json_path = parse_args(argv)
    command = options.command_line(json_path)
    print(command + "\n", flush=True)
    started = time.monotonic()
    with throwaway_cluster(prefix="partitiond-repair-") as cluster:
        build_template(cluster, options)
        with psycopg.connect(cluster.dsn(TEMPLATE), autocommit=True) as conn:
            server = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
            state = repair.read_state(conn, "public")
        layout = f"{len(state.leaves)} blob leaves, {state.meta_tables} meta tables"
        print(f"set-up {time.monotonic() - started:.0f}s: {layout}", flush=True)
        results = [measure(cluster, options, name, path) for name, path in PATHS]
    print("\n".join(render(server, options, results, layout)))
    print(f"\ntotal run time: {time.monotonic() - started:.0f}s; {os.cpu_count()} CPUs")
    if json_path is not None:
        doc = {
            "command": command,
            "server_version": server,
            "layout": layout,
            "options": asdict(options),
            "results": [{**asdict(r), "ratio": r.ratio} for r in results],
        }
        Path(json_path).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
