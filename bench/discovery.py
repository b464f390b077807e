"""Discovery benchmark: the cost of a no-op pass, and position discovery without the latest table.

Part 1 — a no-op ``run-once`` (every band present) at 10, 100 and 1,000 originators: wall time in-process
(``pipeline.run_pass``) and as the installed CLI (interpreter start included), and the number of SQL
statements the pass sends, counted by the server itself (``log_statement = all`` for a dedicated role).

Part 2 — positions when ``gateway_envelopes_latest`` is missing: partitiond's index-backed probes
(``catalog.probed_positions``) against a naive ``GROUP BY max()`` over the same >= 2 M rows, measured
alternately in the same run so machine noise hits both sides alike.

    python bench/discovery.py [--originators 10,100,1000] [--rows 2000000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

from partitiond import catalog, pipeline, sqlfiles
from partitiond.cluster import LocalCluster, throwaway_cluster
from partitiond.config import Settings
from partitiond.logs import configure_logging

BENCH_ROLE = "partitiond_bench"
STATEMENT_LOG = re.compile(r"LOG:  (statement|execute [^:]*):")
Conn = psycopg.Connection[Any]


def median_seconds(action: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


@contextmanager
def database(cluster: LocalCluster, name: str) -> Iterator[str]:
    with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = cluster.dsn(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        sqlfiles.install_schema(conn)
        sqlfiles.install_functions(conn)
    try:
        yield dsn
    finally:
        with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def provision(dsn: str, originators: int) -> None:
    """Every originator has its current band and a position 10% into it: a pass has nothing to do."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for oid in range(1, originators + 1):
            conn.execute("SELECT ensure_gateway_parts_v4(%s, 0)", [oid])
        conn.execute(
            "INSERT INTO gateway_envelopes_latest"
            " SELECT oid, 100000, now() FROM generate_series(1, %s) AS oid",
            [originators],
        )


def count_statements(cluster: LocalCluster, action: Callable[[], object]) -> int:
    """Statements the server logged for the bench role while ``action`` ran."""

    def logged() -> int:
        lines = cluster.log_file.read_text(errors="replace").splitlines()
        return sum(
            1 for line in lines if line.startswith(f"{BENCH_ROLE}|LOG:  ") and STATEMENT_LOG.search(line)
        )

    before = logged()
    action()
    time.sleep(0.2)  # the server writes its log asynchronously; a log file, not a synchronisation point
    return logged() - before


def noop_pass_row(cluster: LocalCluster, size: int, repeat: int) -> str:
    with database(cluster, f"bench_noop_{size}") as dsn:
        provision(dsn, size)
        bench_dsn = f"{dsn} user={BENCH_ROLE}"
        settings = Settings(dsn=bench_dsn, metrics_address="")

        def in_process() -> None:
            report = pipeline.run_pass(settings, {})
            assert report.exit_code == 0 and report.counts["planned"] == 0, report

        def via_cli() -> None:
            subprocess.run(
                [sys.executable, "-m", "partitiond", "run-once", "--log-level", "warning"],
                env={**os.environ, "PARTITIOND_DSN": bench_dsn},
                check=True,
            )

        statements = count_statements(cluster, in_process)
        wall = median_seconds(in_process, repeat)
        cli_wall = median_seconds(via_cli, max(3, repeat // 2))
    return f"| {size:,} | {wall * 1000:.1f} ms | {cli_wall * 1000:.0f} ms | {statements} |"


def noop_pass_table(cluster: LocalCluster, sizes: list[int], repeat: int) -> list[str]:
    configure_logging("console", "warning")
    header = [
        "| originators | run_pass (in-process) | `partitiond run-once` (CLI) | SQL statements per pass |",
        "|---:|---:|---:|---:|",
    ]
    return header + [noop_pass_row(cluster, size, repeat) for size in sizes]


def load_rows(dsn: str, rows: int, originators: int = 20, width: int = 100_000) -> None:
    per = rows // originators
    with psycopg.connect(dsn, autocommit=True) as conn:
        for oid in range(1, originators + 1):
            for start in range(0, per, width):
                conn.execute("SELECT ensure_gateway_parts_v4(%s, %s, %s)", [oid, start, width])
        conn.execute(
            """
            INSERT INTO gateway_envelopes_meta (originator_node_id, originator_sequence_id, topic, expiry)
            SELECT oid, seq, '\\x00', 1 FROM generate_series(1, %s) AS oid, generate_series(0, %s) AS seq
            """,
            [originators, per - 1],
        )
        conn.execute("DROP TABLE gateway_envelopes_latest CASCADE")
        conn.execute("VACUUM ANALYZE gateway_envelopes_meta")


def discovery_table(cluster: LocalCluster, rows: int, repeat: int) -> list[str]:
    with database(cluster, "bench_discovery") as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        load_rows(dsn, rows)
        inv = catalog.inventory(conn, "public")

        def probe() -> dict[int, int]:
            return catalog.probed_positions(conn, "public", inv.l1_names)

        def naive() -> dict[int, int]:
            rows = conn.execute(
                "SELECT originator_node_id, max(originator_sequence_id)"
                " FROM gateway_envelopes_meta GROUP BY 1"
            ).fetchall()
            return {int(oid): int(seq) for oid, seq in rows}

        assert probe() == naive(), "both methods must find the same positions"
        probe_samples, naive_samples = [], []
        for _ in range(repeat):  # alternate, so noise hits both sides alike
            probe_samples.append(median_seconds(probe, 1))
            naive_samples.append(median_seconds(naive, 1))
        p, n = statistics.median(probe_samples), statistics.median(naive_samples)
        return [
            f"| method ({rows:,} rows, 20 originators) | median | ratio |",
            "|---|---:|---:|",
            f"| naive `GROUP BY max()` | {n * 1000:.1f} ms | 1x |",
            f"| partitiond index probes | {p * 1000:.2f} ms | {n / p:,.0f}x faster |",
        ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--originators", default="10,100,1000", help="comma-separated sizes for part 1")
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows for part 2")
    parser.add_argument("--repeat", type=int, default=7, help="samples per measurement (median reported)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.originators.split(",")]
    with throwaway_cluster(prefix="partitiond-bench-") as cluster:
        cluster.stop()
        cluster.start({"log_line_prefix": "%u|", "log_min_messages": "warning"})
        with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER").format(sql.Identifier(BENCH_ROLE)))
            admin.execute(
                sql.SQL("ALTER ROLE {} SET log_statement = 'all'").format(sql.Identifier(BENCH_ROLE))
            )
        print(
            f"$ python bench/discovery.py --originators {args.originators} --rows {args.rows} "
            f"--repeat {args.repeat}\n"
        )
        print("\n".join(noop_pass_table(cluster, sizes, args.repeat)))
        print()
        print("\n".join(discovery_table(cluster, args.rows, args.repeat)))


if __name__ == "__main__":
    main()
