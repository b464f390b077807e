"""The executor's band transaction against a real PostgreSQL: what it reports, and when it takes key 5.

The exclusive side of key 5 stalls every insert while it is held, so the executor must not take it for a
band that is already there, must create the band's tables before it queues for the lock, and must tell
"created" from "existed" without an extra round trip under it.
"""

from __future__ import annotations

import contextlib
import threading

import psycopg
import pytest

from partitiond.bands import Band
from partitiond.config import Settings
from partitiond.executor import Executor, Outcome, RetryBudget
from partitiond.planner import PlannedBand

from .pgtools import TREES, Conn, ensure_band, hold_lock, l2_bounds, leftovers, server_major, wait_for

WIDTH = 1_000_000
OID = 100


def planned(start: int, runway: float | None = None) -> PlannedBand:
    return PlannedBand(OID, Band(start, start + WIDTH), "ahead", "test", 0, runway)


def ensure(
    dsn: str,
    start: int,
    lock_timeout: float = 0.3,
    notices: list[str] | None = None,
    hold_budget: float = 0.05,
    runway: float | None = None,
    reader_wait: float = 0.5,
) -> Outcome:
    """One band, one attempt, through a new executor; with ``notices``, collect the server's DEBUG1
    messages too.  ``runway`` below the default slow-path runway allows the slow path."""
    settings = Settings(
        dsn=dsn,
        metrics_address="",
        lock_timeout=lock_timeout,
        lock_attempts=1,
        hold_budget=hold_budget,
        hold_timeout=max(0.5, 2 * hold_budget),
        reader_wait=reader_wait,
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        if notices is not None:
            conn.execute("SET client_min_messages = debug1")
            conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        return Executor(conn, settings).ensure(planned(start, runway), RetryBudget(0))


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
    """xmtpd's cold path holds the exclusive side and creates the band (a new originator: the full ensure
    path); partitiond, queued behind it, finds the band there once it gets the lock and must not count it
    as its own."""
    outcomes: list[Outcome] = []
    with psycopg.connect(db_dsn) as cold_path:
        cold_path.execute("SELECT pg_advisory_xact_lock(5)")
        waiter = threading.Thread(target=lambda: outcomes.append(ensure(db_dsn, 0, hold_budget=1.0)))
        waiter.start()
        wait_for(lambda: waiting_for_key_5(conn) is not None, 20, "the executor to queue for key 5", 0.01)
        ensure_band(cold_path, OID, 0)
        cold_path.commit()
    waiter.join(30)
    assert [(o.status, o.failure, o.path) for o in outcomes] == [("existed", None, None)]
    assert leftovers(conn) == []


def test_a_creator_at_work_defers_the_band_before_key_5(conn: Conn, db_dsn: str) -> None:
    """xmtpd's cold path holds key 5 and is creating a band (its locks show in pg_locks): partitiond does
    not queue behind it, where every new insert would queue behind partitiond."""
    with psycopg.connect(db_dsn) as cold_path:
        cold_path.execute("SELECT pg_advisory_xact_lock(5)")
        ensure_band(cold_path, OID, 0)
        outcome = ensure(db_dsn, 0)
        cold_path.commit()
    assert (outcome.status, outcome.failure, outcome.holds) == ("deferred", "lock_busy", ())
    assert leftovers(conn) == []


def test_a_band_created_by_a_creator_that_held_key_5_is_existed_not_a_name_clash(
    conn: Conn, db_dsn: str
) -> None:
    """The staged path's own catalog look-ups (the final names are free) happen before key 5; a creator
    then makes the band and commits while partitiond waits.  The check under key 5 must see it whatever
    this backend cached, and report "existed" — never fail with 42P07 on the rename."""
    ensure_band(conn, OID, 0)
    for attempt in range(3):  # deterministic: each round re-creates the race in the same order
        start = (attempt + 1) * WIDTH
        outcomes: list[Outcome] = []
        with psycopg.connect(db_dsn) as creator:
            creator.execute("SELECT pg_advisory_xact_lock(5)")
            waiter = threading.Thread(
                target=lambda s=start, out=outcomes: out.append(ensure(db_dsn, s, hold_budget=1.0))
            )
            waiter.start()
            wait_for(lambda: waiting_for_key_5(conn) is not None, 20, "the executor to queue for key 5", 0.01)
            ensure_band(creator, OID, start)
            creator.commit()
        waiter.join(30)
        assert [(o.status, o.failure, o.error) for o in outcomes] == [("existed", None, None)]
    assert leftovers(conn) == []


def test_a_band_half_built_while_waiting_for_key_5_is_finished(conn: Conn, db_dsn: str) -> None:
    """A creator that made only the meta child while partitiond waited (it crashed, say): the staged
    attach finds a name taken, and partitiond finishes the band with the full ensure instead."""
    ensure_band(conn, OID, 0)
    outcomes: list[Outcome] = []
    with psycopg.connect(db_dsn) as creator:
        creator.execute("SELECT pg_advisory_xact_lock(5)")
        waiter = threading.Thread(target=lambda: outcomes.append(ensure(db_dsn, WIDTH, hold_budget=1.0)))
        waiter.start()
        wait_for(lambda: waiting_for_key_5(conn) is not None, 20, "the executor to queue for key 5", 0.01)
        creator.execute(
            f"CREATE TABLE gateway_envelopes_meta_o{OID}_s{WIDTH}_{2 * WIDTH}"
            f" PARTITION OF gateway_envelopes_meta_o{OID} FOR VALUES FROM ({WIDTH}) TO ({2 * WIDTH})"
        )
        creator.commit()
    waiter.join(30)
    assert [(o.status, o.path, len(o.holds)) for o in outcomes] == [("created", "ensure", 2)]
    for tree in TREES:
        assert l2_bounds(conn, tree, OID)[-1] == "FOR VALUES FROM ('1000000') TO ('2000000')"
    assert leftovers(conn) == []


def test_a_busy_key_5_defers_the_band_within_the_budget(conn: Conn, db_dsn: str) -> None:
    """A slow transaction holding the shared side: partitiond queues for at most the budget (every new
    insert queues behind it meanwhile), then gives up, and nothing is left staged."""
    ensure_band(conn, OID, 0)
    with psycopg.connect(db_dsn) as holder:
        hold_lock(holder, "shared protocol lock")
        outcome = ensure(db_dsn, WIDTH, hold_budget=0.05)
        holder.rollback()
    assert (outcome.status, outcome.failure, outcome.holds) == ("deferred", "key5_busy", ())
    assert l2_bounds(conn, "gateway_envelopes_meta", OID) == ["FOR VALUES FROM ('0') TO ('1000000')"]
    assert leftovers(conn) == []


def test_the_band_is_staged_before_queueing_for_key_5_and_nothing_is_held_meanwhile(
    conn: Conn, db_dsn: str
) -> None:
    """While partitiond waits for the exclusive side, its new tables already exist (committed, under
    private names) and it holds no lock on any relation at all: nothing a creator holding key 5, a
    pruner or an insert could need, so its wait can close no cycle."""
    ensure_band(conn, OID, 0)
    outcomes: list[Outcome] = []
    with psycopg.connect(db_dsn) as holder:
        hold_lock(holder, "shared protocol lock")
        waiter = threading.Thread(target=lambda: outcomes.append(ensure(db_dsn, WIDTH, hold_budget=1.0)))
        waiter.start()
        wait_for(lambda: waiting_for_key_5(conn) is not None, 20, "the executor to queue for key 5", 0.01)
        pid = waiting_for_key_5(conn)
        held = conn.execute(
            "SELECT l.mode, l.relation::regclass::text FROM pg_locks l"
            " WHERE l.pid = %s AND l.locktype = 'relation' AND l.granted",
            [pid],
        ).fetchall()
        staged = conn.execute(
            "SELECT count(*) FROM pg_class WHERE relname LIKE 'partitiond_stage_%%'"
        ).fetchone()
        holder.rollback()
    waiter.join(30)
    assert held == []
    assert staged == (2,)
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
    holds ACCESS SHARE on it past the budget: with little runway left partitiond must not wait for it but
    attach the staged blob table instead (the slow path)."""
    ensure_band(conn, OID, 0)
    notices: list[str] = []
    with psycopg.connect(db_dsn) as reading:
        if reader:
            reading.execute(f"SELECT count(*) FROM gateway_envelopes_blob_o{OID}")
        outcome = ensure(db_dsn, WIDTH, notices=notices, runway=1.0)
        reading.rollback()
    assert (outcome.status, outcome.attempts) == ("created", 1)
    assert outcome.path == ("attach" if reader else "partition_of")
    blob = f"gateway_envelopes_blob_o{OID}_s{WIDTH}_{2 * WIDTH}"
    assert verified(notices, blob) == reader
    assert verified(notices, f"gateway_envelopes_meta_o{OID}_s{WIDTH}_{2 * WIDTH}")
    by_ensure = shape(conn, f"{tree}_o{OID}_s0_{WIDTH}")
    by_partitiond = shape(conn, f"{tree}_o{OID}_s{WIDTH}_{2 * WIDTH}")
    assert by_partitiond == by_ensure
    # From PostgreSQL 18 on, NOT NULL is a catalogued constraint, inherited like the others: the staged
    # table (LIKE, then ATTACH) must come out with the same inherited NOT NULL rows as a PARTITION OF child.
    not_null = [row for row in by_partitiond["constraints"] if row[0] == "n"]
    assert (len(not_null) > 0) == (server_major(conn) >= 18)
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


@pytest.mark.parametrize("runway", [None, 3600.0], ids=["no rate", "an hour of runway"])
def test_a_long_blob_reader_defers_the_band_while_runway_remains(
    conn: Conn, db_dsn: str, runway: float | None
) -> None:
    """Creating the band anyway would mean the slow path: validating the blob foreign key while every
    insert waits.  With runway left, partitiond defers instead; the pre-flight sees the reader, so key 5
    is not even taken, and nothing is left behind."""
    ensure_band(conn, OID, 0)
    with psycopg.connect(db_dsn) as reading:
        reading.execute(f"SELECT count(*) FROM gateway_envelopes_blob_o{OID}")
        outcome = ensure(db_dsn, WIDTH, runway=runway)
        reading.rollback()
    assert (outcome.status, outcome.failure, outcome.holds) == ("deferred", "blob_read", ())
    assert f"AccessShareLock on gateway_envelopes_blob_o{OID} held by pid" in (outcome.error or "")
    for tree in TREES:
        assert l2_bounds(conn, tree, OID) == ["FOR VALUES FROM ('0') TO ('1000000')"]
    assert leftovers(conn) == []


@pytest.mark.parametrize(
    "holder_sql",
    [
        "LOCK TABLE gateway_envelopes_meta_o100_s0_1000000 IN SHARE UPDATE EXCLUSIVE MODE",  # VACUUM/ANALYZE
        "INSERT INTO payers (address) VALUES ('an open transaction')",  # xmtpd writes payers without key 5
        "LOCK TABLE blockchain_messages IN ACCESS EXCLUSIVE MODE",
    ],
    ids=["vacuum on a meta partition", "open payers insert", "blockchain_messages locked"],
)
def test_a_lock_holder_defers_the_band_before_key_5(conn: Conn, db_dsn: str, holder_sql: str) -> None:
    """The pre-flight look at pg_locks sees the holder: partitiond defers without taking key 5 at all, so
    no insert waits for it."""
    ensure_band(conn, OID, 0)
    with psycopg.connect(db_dsn) as holder:
        holder.execute(holder_sql)
        outcome = ensure(db_dsn, WIDTH)
        holder.rollback()
    assert (outcome.status, outcome.failure, outcome.holds) == ("deferred", "lock_busy", ())
    assert "held by pid" in (outcome.error or "")
    assert leftovers(conn) == []


def blind(conn: Conn, function: str, signature: str, returns: str, answer: str) -> None:
    """Replace one of partitiond's looks before key 5 by one that always gives ``answer``: what the
    executor meets when the world changes right after it looked."""
    conn.execute(f"ALTER FUNCTION {function}({signature}) RENAME TO {function}_off")
    conn.execute(
        f"CREATE FUNCTION {function}({signature}) RETURNS {returns} LANGUAGE sql AS 'SELECT {answer}'"
    )


def test_a_lock_taken_after_the_pre_flight_is_waited_for_at_most_the_budget(conn: Conn, db_dsn: str) -> None:
    """The pre-flight is only a hint: VACUUM may start right after it.  Under key 5 every lock wait is
    bounded by the hold budget, then the band is rolled back (key 5 released) and deferred."""
    ensure_band(conn, OID, 0)
    blind(conn, "partitiond_preflight", "integer, bigint, boolean", "text", "NULL")
    with psycopg.connect(db_dsn) as holder:
        holder.execute("LOCK TABLE gateway_envelopes_meta_o100_s0_1000000 IN SHARE UPDATE EXCLUSIVE MODE")
        outcome = ensure(db_dsn, WIDTH, hold_budget=0.05)
        holder.rollback()
    assert (outcome.status, outcome.failure) == ("deferred", "held_lock")
    assert len(outcome.holds) == 1 and outcome.holds[0] < 0.05 + 0.5
    assert l2_bounds(conn, "gateway_envelopes_blob", OID) == ["FOR VALUES FROM ('0') TO ('1000000')"]
    assert leftovers(conn) == []


def reading_blob_l1(conn: Conn, db_dsn: str, seconds: float) -> threading.Thread:
    """A query that holds ACCESS SHARE on the blob L1 of ``OID`` for ``seconds`` while it runs (a serving
    node's read, stretched), started and seen in pg_locks before this returns."""

    def read() -> None:
        with (
            psycopg.connect(db_dsn, autocommit=True) as reader,
            contextlib.suppress(psycopg.errors.QueryCanceled),  # the test may cut it short
        ):
            reader.execute(f"SELECT count(*), pg_sleep({seconds}) FROM gateway_envelopes_blob_o{OID}")

    thread = threading.Thread(target=read)
    thread.start()
    wait_for(
        lambda: (
            conn.execute(
                "SELECT 1 FROM pg_locks WHERE relation = %s::regclass AND pid <> pg_backend_pid()",
                [f"gateway_envelopes_blob_o{OID}"],
            ).fetchone()
            is not None
        ),
        20,
        "the reader to hold the blob L1",
        0.01,
    )
    return thread


def test_a_query_reading_the_blob_l1_is_waited_out_before_key_5(conn: Conn, db_dsn: str) -> None:
    """A serving node reads the blob L1 all the time, a query at a time.  partitiond waits, holding
    nothing, for the moment no query reads it, then creates the band the fast way (PARTITION OF) without
    a deferral; the reader runs to its end undisturbed."""
    ensure_band(conn, OID, 0)
    reader = reading_blob_l1(conn, db_dsn, 1.0)
    outcome = ensure(db_dsn, WIDTH, reader_wait=20.0)
    reader.join(30)
    assert (outcome.status, outcome.path, outcome.deferrals) == ("created", "partition_of", ())
    assert len(outcome.holds) == 1
    assert l2_bounds(conn, "gateway_envelopes_blob", OID)[-1] == "FOR VALUES FROM ('1000000') TO ('2000000')"
    assert leftovers(conn) == []


def test_a_query_that_reads_the_blob_l1_for_long_defers_the_band_without_key_5(
    conn: Conn, db_dsn: str
) -> None:
    """While runway remains, a read that outlasts --reader-wait defers the band (blob_read) and key 5
    is never taken: every look at the L1 found it in use."""
    ensure_band(conn, OID, 0)
    with psycopg.connect(db_dsn, autocommit=True) as canceller:
        reader = reading_blob_l1(conn, db_dsn, 60.0)
        try:
            outcome = ensure(db_dsn, WIDTH, reader_wait=0.2)
        finally:
            canceller.execute(
                "SELECT pg_cancel_backend(pid) FROM pg_stat_activity"
                " WHERE query LIKE %s AND pid <> pg_backend_pid()",
                ["%pg_sleep(60.0)%"],
            )
            reader.join(30)
    assert (outcome.status, outcome.failure, outcome.holds) == ("deferred", "blob_read", ())
    assert l2_bounds(conn, "gateway_envelopes_blob", OID) == ["FOR VALUES FROM ('0') TO ('1000000')"]
    assert leftovers(conn) == []


def test_a_reader_that_slips_in_before_key_5_refuses_the_attempt_at_once(conn: Conn, db_dsn: str) -> None:
    """A query may take the blob L1 between partitiond's last look and key 5.  Under key 5 partitiond then
    does not queue for the L1 (every insert would wait, and every new reader behind it): the attempt is
    refused at once and rolled back, however long the hold budget, and the band is deferred when the wait
    ends."""
    ensure_band(conn, OID, 0)
    blind(conn, "partitiond_preflight", "integer, bigint, boolean", "text", "NULL")
    blind(conn, "partitiond_tables_free", "integer, boolean", "boolean", "true")
    with psycopg.connect(db_dsn) as holder:
        holder.execute(f"SELECT count(*) FROM gateway_envelopes_blob_o{OID}")
        outcome = ensure(db_dsn, WIDTH, hold_budget=0.5, reader_wait=0.1)
        holder.rollback()
    assert (outcome.status, outcome.failure) == ("deferred", "blob_read")
    assert outcome.holds and max(outcome.holds) < 0.5
    assert l2_bounds(conn, "gateway_envelopes_blob", OID) == ["FOR VALUES FROM ('0') TO ('1000000')"]
    assert leftovers(conn) == []


def test_staged_tables_of_an_interrupted_run_are_replaced_and_cleaned_up(conn: Conn, db_dsn: str) -> None:
    """Staged tables are committed, so a crash between staging and attaching leaves them: the next attempt
    rebuilds them (their shape may predate a migration) and partitiond_unstage() drops any leftover."""
    ensure_band(conn, OID, 0)
    conn.execute("SELECT partitiond_stage_table(%s, %s, %s, false)", [OID, WIDTH, 2 * WIDTH])
    conn.execute("SELECT partitiond_stage_table(%s, %s, %s, true)", [OID, 5 * WIDTH, 6 * WIDTH])
    assert sorted(leftovers(conn)) == [
        "partitiond_stage_blob_o100_s5000000",
        "partitiond_stage_meta_o100_s1000000",
    ]
    assert ensure(db_dsn, WIDTH).status == "created"
    assert leftovers(conn) == ["partitiond_stage_blob_o100_s5000000"]
    assert conn.execute("SELECT partitiond_unstage()").fetchone() == (1,)
    assert leftovers(conn) == []


@pytest.mark.parametrize(("start", "end"), [(-1, 10), (10, 10), (10, 5)])
def test_staging_refuses_an_impossible_band(conn: Conn, start: int, end: int) -> None:
    ensure_band(conn, OID, 0)
    for blob in (False, True):
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="no such band"):
            conn.execute("SELECT partitiond_stage_table(%s, %s, %s, %s)", [OID, start, end, blob])
    assert leftovers(conn) == []


def test_attaching_for_an_originator_without_l1s_is_refused(conn: Conn) -> None:
    """The held step derives its parents from the originator; with none there it refuses (22023) and
    creates nothing, instead of attaching anywhere else."""
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="no L1 partition"):
        conn.execute("SELECT partitiond_attach_staged(%s, %s, %s, false)", [OID, 0, WIDTH])
    assert l2_bounds(conn, "gateway_envelopes_meta", OID) == []
    assert leftovers(conn) == []


def test_the_blob_l1_probe_answers_at_once_and_keeps_no_lock(conn: Conn, db_dsn: str) -> None:
    """partitiond looks again and again at the blob L1 before key 5; a look must neither wait for a
    reader nor leave a lock behind, even inside an open transaction (it is callable by the runtime
    role)."""
    ensure_band(conn, OID, 0)
    probe = "SELECT partitiond_tables_free(%s, false)"
    with conn.transaction():
        assert conn.execute(probe, [OID]).fetchone() == (True,)
        held = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND relation = %s::regclass",
            [f"gateway_envelopes_blob_o{OID}"],
        ).fetchone()
        assert held == (0,)
    assert conn.execute(probe, [OID + 1]).fetchone() == (True,), "no L1: nothing to wait for"
    with psycopg.connect(db_dsn) as reader:
        reader.execute(f"SELECT count(*) FROM gateway_envelopes_blob_o{OID}")
        conn.execute("SET lock_timeout = 0")  # NOWAIT, not a wait bounded by the session's timeout
        conn.execute("SET statement_timeout = '20s'")
        assert conn.execute(probe, [OID]).fetchone() == (False,)
        reader.rollback()
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="no such originator"):
        conn.execute(probe, [-1])


@pytest.mark.parametrize("allow_slow", [False, True], ids=["fast only", "slow allowed"])
def test_the_held_step_never_waits_for_a_reader_of_the_blob_l1(
    conn: Conn, db_dsn: str, allow_slow: bool
) -> None:
    """Under key 5 a reader of the blob L1 refuses the fast step at once (PD001, nothing created), even
    with no lock_timeout at all; with the slow path allowed, the staged blob table is attached instead."""
    ensure_band(conn, OID, 0)
    for blob in (False, True):
        conn.execute("SELECT partitiond_stage_table(%s, %s, %s, %s)", [OID, WIDTH, 2 * WIDTH, blob])
    attach = "SELECT partitiond_attach_staged(%s, %s, %s, %s)"
    with psycopg.connect(db_dsn) as reader:
        reader.execute(f"SELECT count(*) FROM gateway_envelopes_blob_o{OID}")
        conn.execute("SET lock_timeout = 0")
        conn.execute("SET statement_timeout = '20s'")
        if allow_slow:
            row = conn.execute(attach, [OID, WIDTH, 2 * WIDTH, True]).fetchone()
            assert row is not None and isinstance(result := row[0], dict)
            assert (result["status"], result["path"]) == ("created", "attach")
        else:
            with pytest.raises(psycopg.Error) as refused:
                conn.execute(attach, [OID, WIDTH, 2 * WIDTH, False])
            assert refused.value.sqlstate == "PD001"
        reader.rollback()
    expected = 2 if allow_slow else 1
    assert len(l2_bounds(conn, "gateway_envelopes_blob", OID)) == expected
    assert len(l2_bounds(conn, "gateway_envelopes_meta", OID)) == expected
