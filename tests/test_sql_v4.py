"""ensure_gateway_parts_v4 against a real PostgreSQL: xmtpd PR #1974's test plan plus the gaps it left."""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial

import psycopg
import pytest
from psycopg import errors, sql

from partitiond.xmtpd_writer import LazyWriter

from .pgtools import (
    TREES,
    Conn,
    children,
    l2_bounds,
    partition_count,
    run_concurrently,
    seed_constraints,
)
from .pgtools import ensure_band as ensure

BAND0 = "FOR VALUES FROM ('0') TO ('1000000')"
BAND1 = "FOR VALUES FROM ('1000000') TO ('2000000')"


def test_creates_l1_and_l2_in_both_trees_with_xmtpd_names(conn: Conn) -> None:
    ensure(conn, 100, 1_500_000)
    assert children(conn, "gateway_envelopes_meta") == [
        ("gateway_envelopes_meta_o100", "FOR VALUES IN (100)")
    ]
    assert children(conn, "gateway_envelopes_blob") == [
        ("gateway_envelopes_blob_o100", "FOR VALUES IN (100)")
    ]
    assert children(conn, "gateway_envelopes_meta_o100") == [
        ("gateway_envelopes_meta_o100_s1000000_2000000", BAND1)
    ]
    assert children(conn, "gateway_envelopes_blob_o100") == [
        ("gateway_envelopes_blob_o100_s1000000_2000000", BAND1)
    ]
    assert seed_constraints(conn) == []


def test_second_call_creates_nothing(conn: Conn) -> None:
    ensure(conn, 100, 5)
    before = partition_count(conn)
    relations = conn.execute("SELECT count(*) FROM pg_class").fetchone()
    ensure(conn, 100, 999_999)
    assert partition_count(conn) == before == 4
    assert conn.execute("SELECT count(*) FROM pg_class").fetchone() == relations


def test_idempotent_call_takes_no_table_lock(conn: Conn) -> None:
    """PR #1974 ran DROP CONSTRAINT IF EXISTS on every call: ACCESS EXCLUSIVE on a live partition."""
    ensure(conn, 100, 5)
    with conn.transaction():
        ensure(conn, 100, 6)
        modes = conn.execute(
            "SELECT DISTINCT mode FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'relation'"
        ).fetchall()
    strong = {"ShareUpdateExclusiveLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"}
    assert strong.isdisjoint({str(m[0]) for m in modes})


def test_coexists_with_partitions_created_by_v3(conn: Conn) -> None:
    conn.execute("SELECT ensure_gateway_parts_v3(200, 10)")
    before = partition_count(conn)
    ensure(conn, 200, 10)
    assert partition_count(conn) == before == 4
    ensure(conn, 200, 1_000_000)  # the next band goes under v3's L1
    assert l2_bounds(conn, "gateway_envelopes_meta", 200) == [BAND0, BAND1]
    assert l2_bounds(conn, "gateway_envelopes_blob", 200) == [BAND0, BAND1]
    assert seed_constraints(conn) == []


def test_v3_after_v4_is_also_a_no_op(conn: Conn) -> None:
    ensure(conn, 300, 10)
    conn.execute("SELECT ensure_gateway_parts_v3(300, 10)")
    assert partition_count(conn) == 4


def test_names_longer_than_63_bytes_stay_idempotent(conn: Conn) -> None:
    """PostgreSQL truncates the name; PR #1974's name lookup then never matches and the 2nd call fails."""
    ensure(conn, 2147483647, 10**16)
    ensure(conn, 2147483647, 10**16)
    meta = children(conn, "gateway_envelopes_meta_o2147483647")
    assert meta == [
        (
            "gateway_envelopes_meta_o2147483647_s10000000000000000_100000000",
            "FOR VALUES FROM ('10000000000000000') TO ('10000000001000000')",
        )
    ]
    assert len(meta[0][0]) == 63
    assert len(children(conn, "gateway_envelopes_blob_o2147483647")) == 1


def test_created_but_unattached_table_gets_attached(conn: Conn) -> None:
    ensure(conn, 100, 5)
    conn.execute(
        "CREATE TABLE gateway_envelopes_meta_o100_s1000000_2000000 "
        "(LIKE gateway_envelopes_meta_o100 INCLUDING DEFAULTS)"
    )
    ensure(conn, 101, 5)  # another originator is unaffected by the leftover
    ensure(conn, 100, 1_000_000)
    assert l2_bounds(conn, "gateway_envelopes_meta", 100) == [BAND0, BAND1]
    assert l2_bounds(conn, "gateway_envelopes_blob", 100) == [BAND0, BAND1]


def test_unattached_l1_leftover_is_finished(conn: Conn) -> None:
    conn.execute(
        "CREATE TABLE gateway_envelopes_blob_o100 (LIKE gateway_envelopes_blob) "
        "PARTITION BY RANGE (originator_sequence_id)"
    )
    ensure(conn, 100, 5)
    assert children(conn, "gateway_envelopes_blob") == [
        ("gateway_envelopes_blob_o100", "FOR VALUES IN (100)")
    ]


def test_attach_skips_the_validation_scan_at_both_levels(conn: Conn) -> None:
    messages: list[str] = []
    conn.add_notice_handler(lambda diag: messages.append(diag.message_primary or ""))
    conn.execute("SET client_min_messages = debug1")
    ensure(conn, 100, 5)
    implied = [m for m in messages if m.endswith("is implied by existing constraints")]
    assert implied == [
        f'partition constraint for table "{name}" is implied by existing constraints'
        for name in (
            "gateway_envelopes_meta_o100",
            "gateway_envelopes_blob_o100",
            "gateway_envelopes_meta_o100_s0_1000000",
            "gateway_envelopes_blob_o100_s0_1000000",
        )
    ]
    assert not [m for m in messages if m.startswith("verifying table")]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ((100, -1, 1_000_000), "must not be negative"),
        ((100, 5, 0), "band width must be positive"),
        ((100, 5, -10), "band width must be positive"),
        ((None, 5, 1_000_000), "must not be NULL"),
        ((100, None, 1_000_000), "must not be NULL"),
        ((100, 5, None), "must not be NULL"),
        ((100, 9_223_372_036_854_000_000, 1_000_000), "past the bigint maximum"),
        ((100, 9_223_372_036_854_775_807, 1), "past the bigint maximum"),
    ],
)
def test_bad_arguments_raise_22023_and_create_nothing(
    conn: Conn, args: tuple[int | None, int | None, int | None], fragment: str
) -> None:
    with pytest.raises(errors.InvalidParameterValue, match=fragment):
        conn.execute("SELECT ensure_gateway_parts_v4(%s::int, %s::bigint, %s::bigint)", list(args))
    assert partition_count(conn) == 0


def test_last_storable_band_is_created(conn: Conn) -> None:
    ensure(conn, 100, 9_223_372_036_853_999_999)
    assert l2_bounds(conn, "gateway_envelopes_meta", 100) == [
        "FOR VALUES FROM ('9223372036853000000') TO ('9223372036854000000')"
    ]


def test_band_width_mismatch_is_refused_and_nothing_is_half_done(conn: Conn) -> None:
    ensure(conn, 100, 1_500_000)
    before = partition_count(conn)
    with pytest.raises(errors.InvalidParameterValue, match="the existing bands are 1000000 wide"):
        ensure(conn, 100, 1_500_000, 500_000)
    assert partition_count(conn) == before


def test_conflicting_relation_in_the_way_is_reported(conn: Conn) -> None:
    conn.execute("CREATE VIEW gateway_envelopes_meta_o100 AS SELECT 1 AS x")
    with pytest.raises(errors.DuplicateTable, match="is in the way of a new partition"):
        ensure(conn, 100, 5)
    assert partition_count(conn) == 0


def test_other_errors_propagate_with_their_sqlstate(conn: Conn) -> None:
    """A leftover table holding a row outside the band cannot be attached: 23514 reaches the caller."""
    ensure(conn, 100, 5)
    conn.execute(
        "CREATE TABLE gateway_envelopes_meta_o100_s1000000_2000000 "
        "(LIKE gateway_envelopes_meta_o100 INCLUDING DEFAULTS)"
    )
    conn.execute(
        "INSERT INTO gateway_envelopes_meta_o100_s1000000_2000000 "
        "(originator_node_id, originator_sequence_id, topic, expiry) VALUES (100, 7, 'x', 1)"
    )
    with pytest.raises(errors.CheckViolation):
        ensure(conn, 100, 1_000_000)
    assert l2_bounds(conn, "gateway_envelopes_meta", 100) == [BAND0]
    assert l2_bounds(conn, "gateway_envelopes_blob", 100) == [BAND0]


def test_role_with_only_execute_can_call_a_security_definer_install(conn: Conn, db_dsn: str) -> None:
    dbname = conn.info.dbname
    role = f"exec_only_{dbname}"
    conn.execute("ALTER FUNCTION ensure_gateway_parts_v4(int, bigint, bigint) SECURITY DEFINER")
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    conn.execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(sql.Identifier(role)))
    conn.execute(
        sql.SQL("GRANT EXECUTE ON FUNCTION ensure_gateway_parts_v4(int, bigint, bigint) TO {}").format(
            sql.Identifier(role)
        )
    )
    try:
        with psycopg.connect(db_dsn, user=role, autocommit=True) as limited:
            ensure(limited, 100, 5)
            with pytest.raises(errors.InsufficientPrivilege):
                limited.execute("CREATE TABLE public.sneaky (x int)")
            with pytest.raises(errors.InsufficientPrivilege):
                limited.execute("DROP TABLE gateway_envelopes_meta_o100_s0_1000000")
        assert l2_bounds(conn, "gateway_envelopes_meta", 100) == [BAND0]
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.mark.slow
def test_32_concurrent_callers_on_one_band_create_it_once(conn: Conn, db_dsn: str) -> None:
    errs = run_concurrently(db_dsn, [lambda c: ensure(c, 4242, 1)] * 32)
    assert errs == []
    for tree in TREES:
        assert children(conn, tree) == [(f"{tree}_o4242", "FOR VALUES IN (4242)")]
        assert l2_bounds(conn, tree, 4242) == [BAND0]


def _insert_rows(conn: Conn, oid: int, seqs: range) -> None:
    writer = LazyWriter(conn)
    for seq in seqs:
        writer.insert(oid, seq)
    assert writer.stats.cold_path == 0
    assert writer.stats.deadlocks == 0


def _protocol_ensure(oid: int, seq: int) -> Callable[[Conn], None]:
    """What partitiond does: its own transaction holding the exclusive side of xmtpd's key 5."""

    def job(c: Conn) -> None:
        with c.transaction():
            c.execute("SELECT pg_advisory_xact_lock(5)")
            ensure(c, oid, seq)

    return job


@pytest.mark.slow
def test_32_callers_on_different_originators_beside_8_inserters(conn: Conn, db_dsn: str) -> None:
    inserter_oids = range(900, 908)
    for oid in inserter_oids:
        ensure(conn, oid, 0)
    creators = [_protocol_ensure(1000 + i, (i % 4) * 1_000_000) for i in range(32)]
    inserters = [partial(_insert_rows, oid=oid, seqs=range(200)) for oid in inserter_oids]
    errs = run_concurrently(db_dsn, [*creators, *inserters])
    assert errs == []
    assert not [e for e in errs if isinstance(e, errors.DeadlockDetected)]
    for i in range(32):
        band = (i % 4) * 1_000_000
        for tree in TREES:
            assert l2_bounds(conn, tree, 1000 + i) == [
                f"FOR VALUES FROM ('{band}') TO ('{band + 1_000_000}')"
            ]
    counted = conn.execute(
        "SELECT count(*) FROM gateway_envelopes_view WHERE originator_node_id BETWEEN 900 AND 907"
    ).fetchone()
    assert counted == (8 * 200,)


@pytest.mark.slow
def test_16_lazy_inserters_into_a_missing_band_all_succeed(conn: Conn, db_dsn: str) -> None:
    lock = threading.Lock()
    writers: list[LazyWriter] = []

    def job(c: Conn, seq: int) -> None:
        writer = LazyWriter(c)
        with lock:
            writers.append(writer)
        writer.insert(777, seq)

    errs = run_concurrently(db_dsn, [partial(job, seq=s) for s in range(16)])
    assert errs == []
    assert sum(w.stats.deadlocks for w in writers) == 0
    assert sum(w.stats.cold_path for w in writers) >= 1
    rows = conn.execute(
        "SELECT count(*) FROM gateway_envelopes_view WHERE originator_node_id = 777"
    ).fetchone()
    assert rows == (16,)
    for tree in TREES:
        assert l2_bounds(conn, tree, 777) == [BAND0]
