"""Key-5 hold per band: how long every insert waits while one band is created, by creator.

While a creator holds the exclusive side of xmtpd's key 5, no insert runs, so the time from "lock held"
to "COMMIT done" is a stall that every writer sees.  For each size (originators x bands already there, so
the number of meta partitions the foreign-key check into meta plans over), bands are created one at a
time, each in its own transaction, the creators taking turns band by band so that machine noise and the
slowly growing trees hit them alike:

* ``xmtpd v3``: the cold path of xmtpd today, ``ensure_gateway_parts_v3`` under key 5;
* ``v4 ensure``: the same with ``ensure_gateway_parts_v4`` (the hot-path benchmark's lazy writers);
* ``partitiond``: ``partitiond_stage_band`` before the lock (not part of the hold),
  ``partitiond_attach_staged`` under it — the blob child created with ``PARTITION OF``;
* ``partitiond, blob L1 read``: the same while a reader holds ACCESS SHARE on the blob L1, so the
  staged blob table is attached instead (ATTACH validates the foreign key into meta).

Medians over ``--samples`` bands per creator, and the ratios to partitiond, measured side by side.

    python bench/hold.py [--originators 4] [--bands 40,160] [--samples 15]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from partitiond import sqlfiles
from partitiond.cluster import throwaway_cluster

Conn = psycopg.Connection[Any]
KEY = 5
WIDTH = 1000
STAGE = "SELECT partitiond_stage_band(%s, %s, %s)::oid[]"
ATTACH = "SELECT partitiond_attach_staged(%s, %s, %s, %s::oid[]::regclass[])"


@dataclass(frozen=True, slots=True)
class Creator:
    """One way to create a band: ``prepare`` runs before key 5 (untimed), ``locked`` under it."""

    name: str
    locked: Callable[[Conn, int, int, Any], object]
    prepare: Callable[[Conn, int, int], Any] = lambda conn, oid, start: None
    read_blob_l1: bool = False


def _ensure(function: str) -> Callable[[Conn, int, int, Any], object]:
    statement = sql.SQL("SELECT {}(%s, %s, %s)").format(sql.Identifier(function))

    def locked(conn: Conn, oid: int, start: int, _: Any) -> object:
        return conn.execute(statement, [oid, start, WIDTH])

    return locked


def _stage(conn: Conn, oid: int, start: int) -> Any:
    row = conn.execute(STAGE, [oid, start, start + WIDTH]).fetchone()
    assert row and row[0], f"band {start} of originator {oid} could not be staged"
    return row[0]


def _attach(conn: Conn, oid: int, start: int, l1s: Any) -> object:
    return conn.execute(ATTACH, [oid, start, start + WIDTH, l1s])


CREATORS = (
    Creator("xmtpd v3", _ensure("ensure_gateway_parts_v3")),
    Creator("v4 ensure", _ensure("ensure_gateway_parts_v4")),
    Creator("partitiond", _attach, _stage),
    Creator("partitiond, blob L1 read", _attach, _stage, read_blob_l1=True),
)


def hold(conn: Conn, reader: Conn, creator: Creator, oid: int, start: int) -> float:
    """Seconds from key 5 held to COMMIT done, for one new band."""
    if creator.read_blob_l1:
        reader.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(f"gateway_envelopes_blob_o{oid}"))
        )
    try:
        with conn.transaction():
            prepared = creator.prepare(conn, oid, start)
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [KEY])
            held = time.perf_counter()
            creator.locked(conn, oid, start, prepared)
        return time.perf_counter() - held
    finally:
        reader.rollback()


def measure(originators: int, bands: int, samples: int) -> dict[str, list[float]]:
    holds: dict[str, list[float]] = {c.name: [] for c in CREATORS}
    with (
        throwaway_cluster(prefix="partitiond-hold-") as cluster,
        psycopg.connect(cluster.dsn(), autocommit=True) as conn,
        psycopg.connect(cluster.dsn()) as reader,
    ):
        sqlfiles.install_schema(conn)
        sqlfiles.install_functions(conn)
        for oid in range(1, originators + 1):
            for band in range(bands):
                conn.execute("SELECT ensure_gateway_parts_v4(%s, %s, %s)", [oid, band * WIDTH, WIDTH])
        next_band = dict.fromkeys(range(1, originators + 1), bands)
        for sample in range(samples):
            for turn in range(len(CREATORS)):
                creator = CREATORS[(sample + turn) % len(CREATORS)]  # rotate who goes first
                oid = (sample * len(CREATORS) + turn) % originators + 1
                holds[creator.name].append(hold(conn, reader, creator, oid, next_band[oid] * WIDTH))
                next_band[oid] += 1
    return holds


def render(originators: int, bands: int, holds: dict[str, list[float]]) -> list[str]:
    medians = {name: statistics.median(values) for name, values in holds.items()}
    ours = medians["partitiond"]
    lines = [f"{originators} originators x {bands} bands ({originators * bands:,} meta partitions and up):"]
    lines += ["| creator | median hold ms | p90 ms | / partitiond |", "|---|---:|---:|---:|"]
    for name, values in holds.items():
        p90 = statistics.quantiles(values, n=10)[-1] if len(values) >= 2 else values[0]
        lines.append(
            f"| {name} | {medians[name] * 1000:.2f} | {p90 * 1000:.2f} | {medians[name] / ours:.2f}x |"
        )
    return lines


def band_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"band counts must be >= 1, got {text!r}")
    return counts


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--originators", type=int, default=4, choices=range(1, 101), metavar="1..100")
    parser.add_argument("--bands", type=band_counts, default=[40, 160], help="bands per originator, per size")
    parser.add_argument("--samples", type=int, default=15, choices=range(2, 1001), metavar="2..1000")
    args = parser.parse_args(argv)
    print(
        f"$ python bench/hold.py --originators {args.originators} "
        f"--bands {','.join(map(str, args.bands))} --samples {args.samples}\n",
        flush=True,
    )
    for bands in args.bands:
        print("\n".join(render(args.originators, bands, measure(args.originators, bands, args.samples))))
        print(flush=True)


if __name__ == "__main__":
    main()
