"""Key-5 hold per band dropped at scale: how long every insert waits while one empty band is dropped.

Dropping a band changes the partition trees every insert routes through, so it runs under the exclusive
side of key 5, like creating one, and the time from "lock held" to "COMMIT done" is a stall every writer
sees.  For each size (meta partitions already there), empty bands are dropped one at a time, the ways
taking turns band by band so that machine noise hits them alike:

* ``detach first``: each leaf detached, then dropped, blob then meta (partitiond's first safe drop);
* ``partitiond_drop_band``: the blob leaf dropped as it is, the meta leaf detached and dropped.

A detached blob leaf keeps its foreign key as a key of its own into the partitioned meta table, which
PostgreSQL builds over every meta partition; dropping the leaf as it is takes its key along instead.

Last, once and at the largest size only, xmtpd's pruner statement (``DROP TABLE IF EXISTS <meta leaf>,
<blob leaf> CASCADE``) for reference: it also removes both envelope foreign keys (reported), and putting
them back over thousands of partitions takes longer than the whole benchmark, so nothing runs after it.

    python bench/drop.py [--originators 4] [--sizes 400,2000] [--samples 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg import sql

from bench.hold import WIDTH, csv_ints, envelope_cluster, fill, originator

Conn = psycopg.Connection[Any]
KEY = 5
KEYS = """SELECT conname FROM pg_catalog.pg_constraint
WHERE contype = 'f' AND conparentid = 0 AND confrelid = 'gateway_envelopes_meta'::regclass ORDER BY 1"""


def _leaf(tree: str, oid: int, band: int) -> sql.Identifier:
    return sql.Identifier(f"gateway_envelopes_{tree}_o{oid}_s{band * WIDTH}_{(band + 1) * WIDTH}")


def _l1(tree: str, oid: int) -> sql.Identifier:
    return sql.Identifier(f"gateway_envelopes_{tree}_o{oid}")


def detach_first(conn: Conn, oid: int, band: int) -> None:
    for tree in ("blob", "meta"):
        conn.execute(
            sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(_l1(tree, oid), _leaf(tree, oid, band))
        )
        conn.execute(sql.SQL("DROP TABLE {}").format(_leaf(tree, oid, band)))


def drop_band(conn: Conn, oid: int, band: int) -> None:
    conn.execute("SELECT partitiond_drop_band(%s, %s)", [oid, band * WIDTH])


def pruner(conn: Conn, oid: int, band: int) -> None:
    conn.execute(
        sql.SQL("DROP TABLE IF EXISTS {}, {} CASCADE").format(
            _leaf("meta", oid, band), _leaf("blob", oid, band)
        )
    )


WAYS: dict[str, Callable[[Conn, int, int], None]] = {
    "detach first": detach_first,
    "partitiond_drop_band": drop_band,
}


def held(conn: Conn, drop: Callable[[Conn, int, int], None], oid: int, band: int) -> float:
    """Seconds from key 5 granted to COMMIT done."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [KEY])
        started = time.perf_counter()
        drop(conn, oid, band)
    return time.perf_counter() - started


def measure(
    conn: Conn, originators: int, samples: int, next_drop: dict[int, int], last: bool
) -> dict[str, list[float]]:
    """``samples`` bands per way (and, when ``last``, one by xmtpd's pruner statement), the lowest bands
    first: every one is below its originator's highest band, so every way may drop it."""
    holds: dict[str, list[float]] = {name: [] for name in WAYS}
    names = list(WAYS)
    for sample in range(samples):
        for turn in range(len(names)):
            name = names[(sample + turn) % len(names)]  # rotate who goes first
            oid = originator((sample * len(names) + turn) % originators + 1)
            holds[name].append(held(conn, WAYS[name], oid, next_drop[oid]))
            next_drop[oid] += 1
    print(f"keys after the safe drops: {_keys(conn)}")
    if last:
        first = originator(1)
        holds["xmtpd pruner (keys lost)"] = [held(conn, pruner, first, next_drop[first])]
        print(f"keys after xmtpd's pruner statement: {_keys(conn)}")
    return holds


def _keys(conn: Conn) -> list[str]:
    return [str(name) for (name,) in conn.execute(KEYS).fetchall()]


def render(size: int, holds: dict[str, list[float]]) -> list[str]:
    base = statistics.median(holds["detach first"])
    lines = [
        f"{size:,} meta partitions",
        "| drop | bands | hold median ms | max ms | detach first / this |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, values in holds.items():
        med = statistics.median(values)
        lines.append(
            f"| {name} | {len(values)} | {med * 1000:.1f} | {max(values) * 1000:.1f} | {base / med:.0f}x |"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--originators", type=int, default=4, choices=range(1, 101), metavar="1..100")
    parser.add_argument("--sizes", type=csv_ints, default=[400, 2000], help="meta partitions, per size")
    parser.add_argument("--samples", type=int, default=5, choices=range(1, 101), metavar="1..100")
    args = parser.parse_args(argv)
    print(
        f"$ python bench/drop.py --originators {args.originators} "
        f"--sizes {','.join(map(str, args.sizes))} --samples {args.samples}\n",
        flush=True,
    )
    with envelope_cluster("partitiond-drop-") as (_, conn):
        print(f"PostgreSQL {conn.info.parameter_status('server_version')}\n")
        # band 0 of the first originator holds a row
        next_drop = dict.fromkeys(map(originator, range(1, args.originators + 1)), 1)
        for size in (sizes := sorted(args.sizes)):
            bands = max(1, size // args.originators)
            needed = max(next_drop.values()) + args.samples + 2  # the drops, and a highest band kept above
            if bands < needed:
                raise SystemExit(
                    f"size {size} is too small for {args.samples} samples: use at least "
                    f"{needed * args.originators}"
                )
            fill(conn, args.originators, bands)
            holds = measure(conn, args.originators, args.samples, next_drop, last=size == sizes[-1])
            print("\n".join(render(size, holds)) + "\n", flush=True)


if __name__ == "__main__":
    main()
