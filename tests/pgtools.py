"""Catalog look-ups shared by the real-database tests (assertions read pg_inherits, never names alone)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import psycopg

from partitiond.xmtpd_writer import LazyWriter

Conn = psycopg.Connection[tuple[object, ...]]
TREES = ("gateway_envelopes_meta", "gateway_envelopes_blob")


def children(conn: Conn, parent: str) -> list[tuple[str, str]]:
    """(child name, bound expression) of every partition attached to ``parent``."""
    rows = conn.execute(
        """
        SELECT c.relname::text, pg_get_expr(c.relpartbound, c.oid)
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid AND c.relkind IN ('r', 'p')
        WHERE i.inhparent = to_regclass(%s)
        ORDER BY c.relname
        """,
        [parent],
    ).fetchall()
    return [(str(name), str(bound)) for name, bound in rows]


def l2_bounds(conn: Conn, tree: str, oid: int) -> list[str]:
    """Bound expressions of the L2 partitions under the L1 that holds ``oid`` (found by bound)."""
    l1 = [
        name
        for name, bound in children(conn, tree)
        if bound in (f"FOR VALUES IN ({oid})", f"FOR VALUES IN ('{oid}')")
    ]
    assert len(l1) <= 1, l1
    return [bound for _, bound in children(conn, l1[0])] if l1 else []


def partition_count(conn: Conn) -> int:
    """All partitions (L1 and L2) under both trees."""
    row = conn.execute(
        """
        SELECT count(*) FROM pg_inherits i
        JOIN pg_class p ON p.oid = i.inhparent
        JOIN pg_class c ON c.oid = i.inhrelid AND c.relkind IN ('r', 'p')
        WHERE p.relname LIKE 'gateway_envelopes_meta%%' OR p.relname LIKE 'gateway_envelopes_blob%%'
        """
    ).fetchone()
    assert row is not None
    return int(str(row[0]))


def seed_constraints(conn: Conn) -> list[str]:
    rows = conn.execute(
        "SELECT conrelid::regclass::text || '.' || conname FROM pg_constraint "
        "WHERE conname IN ('oid_check', 'seq_id_check')"
    ).fetchall()
    return [str(r[0]) for r in rows]


def run_concurrently(dsn: str, jobs: Sequence[Callable[[Conn], None]]) -> list[BaseException]:
    """Run each job on its own connection, all released at once by a barrier; return the errors raised."""
    barrier = threading.Barrier(len(jobs))

    def runner(job: Callable[[Conn], None]) -> BaseException | None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            barrier.wait(timeout=60)
            try:
                job(conn)
            except Exception as exc:
                return exc
        return None

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results = list(pool.map(runner, jobs))
    return [r for r in results if r is not None]


def ensure_band(conn: Conn, oid: int, seq: int, band_width: int = 1_000_000) -> None:
    """The band holding ``seq``, as a plain ensure call (no protocol lock): test set-up, not partitiond."""
    conn.execute("SELECT ensure_gateway_parts_v4(%s, %s, %s)", [oid, seq, band_width])


def wait_for(condition: Callable[[], bool], deadline: float, what: str, poll: float = 0.05) -> None:
    """Poll with a deadline: the only form of waiting in these tests."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out after {deadline}s waiting for {what}")


def seed_rows(conn: Conn, oid: int, seqs: Sequence[int], band_width: int = 1_000_000) -> None:
    """Insert envelopes as xmtpd would have left them: bands created first, the latest table maintained."""
    for start in sorted({s // band_width * band_width for s in seqs}):
        ensure_band(conn, oid, start, band_width)
    conn.execute(
        """
        WITH m AS (
            INSERT INTO gateway_envelopes_meta (originator_node_id, originator_sequence_id, topic, expiry)
            SELECT %(oid)s, s, 'topic', 1 FROM unnest(%(seqs)s::bigint[]) AS s
        )
        INSERT INTO gateway_envelopes_blob (originator_node_id, originator_sequence_id, originator_envelope)
        SELECT %(oid)s, s, 'envelope' FROM unnest(%(seqs)s::bigint[]) AS s
        """,
        {"oid": oid, "seqs": list(seqs)},
    )


def install_ddl_log(conn: Conn) -> None:
    """Record every DDL command in ddl_log: proof that a run issued no DDL at all."""
    conn.execute("CREATE TABLE ddl_log (tag text NOT NULL)")
    conn.execute(
        "CREATE FUNCTION log_ddl() RETURNS event_trigger LANGUAGE plpgsql AS "
        "$$ BEGIN INSERT INTO ddl_log VALUES (tg_tag); END $$"
    )
    conn.execute("CREATE EVENT TRIGGER log_ddl ON ddl_command_start EXECUTE FUNCTION log_ddl()")


def ddl_count(conn: Conn) -> int:
    row = conn.execute("SELECT count(*) FROM ddl_log").fetchone()
    assert row is not None
    return int(str(row[0]))


def leftovers(conn: Conn) -> list[str]:
    """Half-done work: tables named like partitions (or staged ones) but not attached, seed constraints."""
    rows = conn.execute(
        """
        SELECT c.relname::text FROM pg_class c
        WHERE c.relname ~ '^(gateway_envelopes_(meta|blob)_o|partitiond_stage_)' AND c.relkind IN ('r', 'p')
          AND NOT c.relispartition
        """
    ).fetchall()
    return [str(r[0]) for r in rows] + seed_constraints(conn)


class Inserter(threading.Thread):
    """Writes envelopes the xmtpd way (LazyWriter) into an existing band until stopped; records latencies."""

    def __init__(self, dsn: str, oid: int) -> None:
        super().__init__(daemon=True)
        self.dsn, self.oid = dsn, oid
        self.stop = threading.Event()
        self.started_writing = threading.Event()
        self.writer: LazyWriter | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                self.writer = LazyWriter(conn)
                seq = 10
                while not self.stop.is_set():
                    self.writer.insert(self.oid, seq)
                    self.started_writing.set()
                    seq += 1
        except BaseException as exc:  # reported by the test through self.error
            self.error = exc

    @property
    def inserted(self) -> int:
        return self.writer.stats.inserted if self.writer else 0

    def max_latency(self) -> float:
        assert self.writer is not None
        return max(self.writer.stats.latencies)


def hold_lock(holder: Conn, kind: str) -> None:
    """Start what blocks partition DDL in ``holder``'s open transaction: an xmtpd insert in flight
    ("shared protocol lock", the shared side of key 5), VACUUM on originator 100's band 0 ("vacuum"), or a
    writer that ignores the protocol ("row exclusive on meta", a row inserted into originator 900's band 0,
    which must exist)."""
    if kind == "shared protocol lock":
        holder.execute("SELECT pg_advisory_xact_lock_shared(5)")
    elif (
        kind == "vacuum"
    ):  # what VACUUM, ANALYZE and CREATE INDEX CONCURRENTLY hold on originator 100's band 0
        holder.execute("LOCK TABLE gateway_envelopes_meta_o100_s0_1000000 IN SHARE UPDATE EXCLUSIVE MODE")
    else:
        holder.execute(
            "INSERT INTO gateway_envelopes_meta"
            " (originator_node_id, originator_sequence_id, topic, expiry) VALUES (900, 2, 't', 1)"
        )


def server_major(conn: Conn) -> int:
    """The server's major version (15, 16, …), for tests of behaviour that differs between majors."""
    row = conn.execute("SELECT current_setting('server_version_num')::int").fetchone()
    assert row is not None
    return int(str(row[0])) // 10_000
