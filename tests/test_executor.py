"""The executor's band transaction against a real PostgreSQL: what it reports, and when it takes key 5.

The exclusive side of key 5 stalls every insert while it is held, so the executor must not take it for a
band that is already there, must create the band's tables before it queues for the lock, and must tell
"created" from "existed" without an extra round trip under it.
"""

from __future__ import annotations

import threading

import psycopg
import pytest

from partitiond.bands import Band
from partitiond.config import Settings
from partitiond.executor import Executor, Outcome, RetryBudget
from partitiond.planner import PlannedBand

from .pgtools import TREES, Conn, ensure_band, hold_lock, l2_bounds, leftovers, wait_for

WIDTH = 1_000_000
OID = 100


def planned(start: int) -> PlannedBand:
    return PlannedBand(OID, Band(start, start + WIDTH), "ahead", "test", 0)


def ensure(dsn: str, start: int, lock_timeout: float = 0.3, notices: list[str] | None = None) -> Outcome:
    """One band through a new executor; with ``notices``, collect the server's DEBUG1 messages too."""
    settings = Settings(dsn=dsn, metrics_address="", lock_timeout=lock_timeout, lock_attempts=1)
    with psycopg.connect(dsn, autocommit=True) as conn:
        if notices is not None:
            conn.execute("SET client_min_messages = debug1")
            conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        return Executor(conn, settings).ensure(planned(start), RetryBudget(0))


def waiting_for_key_5(conn: Conn) -> int | None:
    """The backend queued for the exclusive side of key 5, if any."""
    row = conn.execute(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = 5"
    ).fetchone()
    return int(str(row[0])) if row else None


def test_a_new_band_is_reported_created(conn: Conn, db_dsn: str) -> None:
    outcome = ensure(db_dsn, 0)
    assert (outcome.status, outcome.attempts, outcome.failure) == ("created", 1, None)
    for tree in TREES:
        assert l2_bounds(conn, tree, OID) == ["FOR VALUES FROM ('0') TO ('1000000')"]


def test_a_half_built_band_is_finished_and_reported_created(conn: Conn, db_dsn: str) -> None:
    ensure_band(conn, OID, 0)
    conn.execute("DROP TABLE gateway_envelopes_blob_o100_s0_1000000")
    outcome = ensure(db_dsn, 0)
    assert outcome.status == "created"
    assert l2_bounds(conn, "gateway_envelopes_blob", OID) == ["FOR VALUES FROM ('0') TO ('1000000')"]


def test_a_band_that_is_already_there_is_reported_without_taking_key_5(conn: Conn, db_dsn: str) -> None:
    """An insert in flight holds the shared side: queueing for the exclusive side would stall inserts and
    time out, for a band that needs nothing."""
    ensure_band(conn, OID, 0)
    with psycopg.connect(db_dsn) as holder:
        hold_lock(holder, "shared protocol lock")
        outcome = ensure(db_dsn, 0)
        holder.rollback()
    assert (outcome.status, outcome.attempts, outcome.failure) == ("existed", 1, None)


def test_a_band_created_while_waiting_for_key_5_is_reported_existed(conn: Conn, db_dsn: str) -> None:
    """xmtpd's cold path holds the exclusive side and creates the band; partitiond, queued behind it, finds
    the band there once it gets the lock and must not count it as its own."""
    outcomes: list[Outcome] = []
    with psycopg.connect(db_dsn) as cold_path:
        cold_path.execute("SELECT pg_advisory_xact_lock(5)")
        ensure_band(cold_path, OID, 0)  # not committed yet: the executor's first look finds nothing
        waiter = threading.Thread(target=lambda: outcomes.append(ensure(db_dsn, 0, lock_timeout=30)))
        waiter.start()
        wait_for(lambda: waiting_for_key_5(conn) is not None, 20, "the executor to queue for key 5")
        cold_path.commit()
    waiter.join(30)
    assert [(o.status, o.failure) for o in outcomes] == [("existed", None)]
    assert leftovers(conn) == []


def test_the_band_is_staged_before_queueing_for_key_5(conn: Conn, db_dsn: str) -> None:
    """While partitiond waits for the exclusive side, its new tables already exist (uncommitted), and on
    the tables inserts use it holds nothing stronger than ACCESS SHARE: waiting stalls no insert more."""
    ensure_band(conn, OID, 0)
    outcomes: list[Outcome] = []
    with psycopg.connect(db_dsn) as holder:
        hold_lock(holder, "shared protocol lock")
        waiter = threading.Thread(target=lambda: outcomes.append(ensure(db_dsn, WIDTH, lock_timeout=30)))
        waiter.start()
        wait_for(lambda: waiting_for_key_5(conn) is not None, 20, "the executor to queue for key 5")
        pid = waiting_for_key_5(conn)
        held = conn.execute(
            """
            SELECT l.mode, c.relname IS NOT NULL AS committed
            FROM pg_locks l LEFT JOIN pg_class c ON c.oid = l.relation
            WHERE l.pid = %s AND l.locktype = 'relation' AND l.granted
            """,
            [pid],
        ).fetchall()
        holder.rollback()
    waiter.join(30)
    assert {mode for mode, committed in held if committed} == {"AccessShareLock"}
    assert sum(1 for mode, committed in held if mode == "AccessExclusiveLock" and not committed) >= 2
    assert [(o.status, o.failure) for o in outcomes] == [("created", None)]
    for tree in TREES:
        assert l2_bounds(conn, tree, OID)[-1] == "FOR VALUES FROM ('1000000') TO ('2000000')"
    assert leftovers(conn) == []


def shape(conn: Conn, table: str) -> dict[str, list[tuple[object, ...]]]:
    """What makes a partition what it is, with the table's own name factored out of index definitions
    (index names only have to be PostgreSQL's choice for the table's name: "<tree>_o<oid>_s…")."""
    queries = {
        "columns": """
            SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                   pg_get_expr(d.adbin, d.adrelid), a.attislocal, a.attinhcount
            FROM pg_attribute a LEFT JOIN pg_attrdef d ON (d.adrelid, d.adnum) = (a.attrelid, a.attnum)
            WHERE a.attrelid = %(t)s::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum""",
        "constraints": """
            SELECT contype, pg_get_constraintdef(oid), conparentid <> 0, conislocal, coninhcount
            FROM pg_constraint
            WHERE conrelid = %(t)s::regclass ORDER BY 1, 2""",
        "indexes": """
            SELECT starts_with(i.indexrelid::regclass::text, substring(%(t)s FROM '^(.*_o[0-9]+_s)')),
                   regexp_replace(pg_get_indexdef(i.indexrelid),
                                  '^CREATE (UNIQUE )?INDEX \\S+ ON \\S+', '\\1'),
                   EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = i.indexrelid)
            FROM pg_index i WHERE i.indrelid = %(t)s::regclass ORDER BY 2""",
        "triggers": """
            SELECT tgfoid::regproc::text, tgtype, tgisinternal, tgparentid <> 0 FROM pg_trigger
            WHERE tgrelid = %(t)s::regclass ORDER BY 1, 2""",
        "table": """
            SELECT relkind, relpersistence, reloptions, relispartition FROM pg_class
            WHERE oid = %(t)s::regclass""",
    }
    return {k: conn.execute(q, {"t": table}).fetchall() for k, q in queries.items()}


def verified(notices: list[str], table: str) -> bool:
    """ATTACH scans the new table to check its partition constraint (DEBUG1 "verifying table");
    PARTITION OF has nothing to verify."""
    return any(n == f'verifying table "{table}"' for n in notices)


@pytest.mark.parametrize("reader", [False, True], ids=["blob by PARTITION OF", "blob L1 being read"])
@pytest.mark.parametrize("tree", TREES)
def test_a_staged_band_is_the_same_as_one_the_ensure_creates(
    conn: Conn, db_dsn: str, tree: str, reader: bool
) -> None:
    """Both ways partitiond creates a band give exactly what the ensure gives.  A reader of the blob L1
    holds ACCESS SHARE on it: partitiond must not wait for it (the 0.3 s lock timeout would fail the band)
    but attach the staged blob table instead."""
    ensure_band(conn, OID, 0)
    notices: list[str] = []
    with psycopg.connect(db_dsn) as reading:
        if reader:
            reading.execute(f"SELECT count(*) FROM gateway_envelopes_blob_o{OID}")
        outcome = ensure(db_dsn, WIDTH, notices=notices)
        reading.rollback()
    assert (outcome.status, outcome.attempts) == ("created", 1)
    blob = f"gateway_envelopes_blob_o{OID}_s{WIDTH}_{2 * WIDTH}"
    assert verified(notices, blob) == reader
    assert verified(notices, f"gateway_envelopes_meta_o{OID}_s{WIDTH}_{2 * WIDTH}")
    by_ensure = shape(conn, f"{tree}_o{OID}_s0_{WIDTH}")
    by_partitiond = shape(conn, f"{tree}_o{OID}_s{WIDTH}_{2 * WIDTH}")
    assert by_partitiond == by_ensure
    assert all(named_after_table for named_after_table, *_ in by_partitiond["indexes"])
    assert by_partitiond["triggers"], "the foreign keys' triggers were cloned onto the new partition"


def test_a_table_in_the_way_falls_back_to_the_full_ensure(conn: Conn, db_dsn: str) -> None:
    """A leftover under the band's final name is not the plain case: the ensure attaches it, as it
    would for xmtpd."""
    ensure_band(conn, OID, 0)
    conn.execute(
        f"CREATE TABLE gateway_envelopes_blob_o{OID}_s{WIDTH}_{2 * WIDTH} (LIKE gateway_envelopes_blob)"
    )
    assert ensure(db_dsn, WIDTH).status == "created"
    assert l2_bounds(conn, "gateway_envelopes_blob", OID)[-1] == "FOR VALUES FROM ('1000000') TO ('2000000')"
    assert leftovers(conn) == []


@pytest.mark.parametrize(("start", "end"), [(-1, 10), (10, 10), (10, 5)])
def test_staging_refuses_an_impossible_band(conn: Conn, start: int, end: int) -> None:
    ensure_band(conn, OID, 0)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="no such band"):
        conn.execute("SELECT partitiond_stage_band(%s, %s, %s)", [OID, start, end])
    assert leftovers(conn) == []
