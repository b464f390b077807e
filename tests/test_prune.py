"""``partitiond prune``: the bands xmtpd's pruner would drop, dropped without losing a foreign key (real
PostgreSQL).  The rule: per originator, every band below its highest band that holds no row."""

from __future__ import annotations

import json
import random
import threading
import time
from typing import Any

import psycopg
import pytest

from partitiond import prune
from partitiond.bands import Band
from partitiond.config import Settings
from partitiond.executor import RetryBudget

from .conftest import Roles
from .pgtools import TREES, Conn, ensure_band, l2_bounds, partition_count, seed_rows, wait_for
from .test_cli import cli
from .test_drop_band import envelope_keys

M = 1_000_000
KEYS = ["blockchain_messages", "gateway_envelopes_blob"]


def bounds(*starts: int) -> list[str]:
    return [f"FOR VALUES FROM ('{s}') TO ('{s + M}')" for s in starts]


def layout(conn: Conn) -> None:
    """Originator 100: bands 0-3, rows in band 1, the highest (3) empty.  Originator 200: bands 0-1, rows in
    its highest.  Originator 300: band 0 only, empty."""
    for oid, top in ((100, 3), (200, 1), (300, 0)):
        for band in range(top + 1):
            ensure_band(conn, oid, band * M)
    seed_rows(conn, 100, [M + 5])
    seed_rows(conn, 200, [M + 7])


def run(dsn: str, *args: str) -> tuple[int, dict[str, Any]]:
    result = cli("prune", "--dsn", dsn, "--format", "json", *args)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def listed(doc: dict[str, Any]) -> list[tuple[int, int]]:
    return [(b["originator"], b["band"][0]) for b in doc["bands"]]


def test_dry_run_lists_the_empty_bands_below_each_highest_and_changes_nothing(
    conn: Conn, db_dsn: str
) -> None:
    layout(conn)
    before = partition_count(conn)
    code, doc = run(db_dsn)
    assert code == 0 and doc["applied"] is False
    assert listed(doc) == [(100, 0), (100, 2 * M), (200, 0)]
    drop = 'SELECT "public".partitiond_drop_band(100::integer, 0::bigint);'
    assert drop in doc["bands"][0]["statements"][-2]
    assert "pg_try_advisory_xact_lock(5::bigint)" in "".join(doc["bands"][0]["statements"])
    text = cli("prune", "--dsn", db_dsn).stdout
    assert "3 band(s) xmtpd's pruner would drop" in text and "originator 200 band [0, 1,000,000)" in text
    assert partition_count(conn) == before


def test_apply_drops_them_and_both_foreign_keys_survive(conn: Conn, db_dsn: str) -> None:
    layout(conn)
    code, doc = run(db_dsn, "--apply")
    assert code == 0
    assert [(b["status"], b["tables"]) for b in doc["bands"]] == [
        ("dropped", [f"gateway_envelopes_{t}_o{oid}_s{s}_{s + M}" for t in ("blob", "meta")])
        for oid, s in ((100, 0), (100, 2 * M), (200, 0))
    ]
    for tree in TREES:
        assert l2_bounds(conn, tree, 100) == bounds(M, 3 * M)
        assert l2_bounds(conn, tree, 200) == bounds(M)
        assert l2_bounds(conn, tree, 300) == bounds(0)
    assert envelope_keys(conn) == KEYS
    assert run(db_dsn)[1]["bands"] == [], "nothing left to prune"


def test_a_session_holding_key_5_defers_every_band_and_nothing_is_dropped(conn: Conn, db_dsn: str) -> None:
    layout(conn)
    with psycopg.connect(db_dsn, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(5)")
        started = time.monotonic()
        code, doc = run(db_dsn, "--apply", "--lock-attempts", "2")
        elapsed = time.monotonic() - started
    assert code == 1
    assert {(b["status"], b["attempts"], tuple(b["deferrals"])) for b in doc["bands"]} == {
        ("deferred", 2, ("key5_busy", "key5_busy"))
    }
    assert elapsed < 20, f"took {elapsed:.1f}s"
    for tree in TREES:
        assert l2_bounds(conn, tree, 100) == bounds(0, M, 2 * M, 3 * M)
    assert envelope_keys(conn) == KEYS


def test_only_the_originators_named_are_pruned(conn: Conn, db_dsn: str) -> None:
    layout(conn)
    result = cli("prune", "--dsn", db_dsn, "--apply", "--originator", "200")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "1 dropped, 0 deferred, 0 skipped, 0 failed"
    assert "gateway_envelopes_meta_o200_s0_1000000" in result.stdout
    assert l2_bounds(conn, "gateway_envelopes_meta", 200) == bounds(M)
    assert l2_bounds(conn, "gateway_envelopes_meta", 100) == bounds(0, M, 2 * M, 3 * M)


def test_a_band_that_must_stay_is_skipped_not_failed(conn: Conn) -> None:
    """Rows arrived, or the band became the highest, between finding and dropping: the function refuses
    (55000) and the band is skipped, nothing changed."""
    layout(conn)
    settings = Settings()
    for start in (M, 3 * M):  # holds rows; the highest
        target = prune.Prunable(100, Band(start, start + M))
        outcome = prune.prune_band(conn, target, settings, RetryBudget(1.0), time.sleep, random.Random(0))
        assert (outcome.status, outcome.attempts) == ("skipped", 1), outcome
    assert l2_bounds(conn, "gateway_envelopes_blob", 100) == bounds(0, M, 2 * M, 3 * M)


def test_a_role_with_only_execute_can_prune(roles: Roles) -> None:
    installed = cli("install-sql", "--dsn", roles.owner_dsn, "--security-definer", "--grant-to", roles.daemon)
    assert installed.returncode == 0, installed.stderr
    with psycopg.connect(roles.owner_dsn, autocommit=True) as owner:
        layout(owner)
    code, doc = run(roles.daemon_dsn, "--apply")
    assert code == 0 and [b["status"] for b in doc["bands"]] == ["dropped"] * 3
    with psycopg.connect(roles.owner_dsn, autocommit=True) as owner:
        assert l2_bounds(owner, "gateway_envelopes_meta", 100) == bounds(M, 3 * M)
        assert envelope_keys(owner) == KEYS


def held_by_another(conn: Conn, table: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM pg_locks WHERE relation = %s::regclass AND pid <> pg_backend_pid()", [table]
    ).fetchone()
    return row is not None


def test_a_query_reading_an_l1_is_waited_out_before_key_5(conn: Conn, db_dsn: str) -> None:
    """Dropping a band needs both of the originator's L1s to itself.  A query reading the meta L1 is
    waited out, holding nothing, and the drops go through without a deferral."""
    layout(conn)

    def read() -> None:
        with psycopg.connect(db_dsn, autocommit=True) as reader:
            reader.execute("SELECT count(*), pg_sleep(1.0) FROM gateway_envelopes_meta_o100")

    reader = threading.Thread(target=read)
    reader.start()
    wait_for(lambda: held_by_another(conn, "gateway_envelopes_meta_o100"), 20, "the reader", 0.01)
    code, doc = run(db_dsn, "--apply", "--reader-wait", "20s")
    reader.join(30)
    assert code == 0
    assert [(b["status"], b["deferrals"]) for b in doc["bands"]] == [("dropped", [])] * 3
    for tree in TREES:
        assert l2_bounds(conn, tree, 100) == bounds(M, 3 * M)


def test_a_table_read_past_the_wait_defers_the_drop_without_key_5(conn: Conn, db_dsn: str) -> None:
    """Dropping a band needs gateway_envelopes_blob to itself (detaching the meta leaf removes the key
    clones that point at it), and every reader of a blob partition holds it: a reader that stays past
    --reader-wait defers every band (in_use), and key 5 is never taken."""
    layout(conn)
    with psycopg.connect(db_dsn) as reader:
        reader.execute("SELECT count(*) FROM gateway_envelopes_blob_o100")
        code, doc = run(db_dsn, "--apply", "--reader-wait", "100ms", "--lock-attempts", "1")
        reader.rollback()
    assert code == 1
    assert [(b["originator"], b["status"], b["deferrals"]) for b in doc["bands"]] == [
        (100, "deferred", ["in_use"]),
        (100, "deferred", ["in_use"]),
        (200, "deferred", ["in_use"]),
    ]
    for tree in TREES:
        assert l2_bounds(conn, tree, 100) == bounds(0, M, 2 * M, 3 * M)
        assert l2_bounds(conn, tree, 200) == bounds(0, M)
    assert envelope_keys(conn) == KEYS


def test_the_drop_never_waits_for_a_reader(conn: Conn, db_dsn: str) -> None:
    """Under key 5 the drop takes the tables it needs to itself without waiting: a reader that slipped in
    since partitiond looked refuses it at once (55P03), even with no lock_timeout at all, nothing
    changed."""
    layout(conn)
    with psycopg.connect(db_dsn) as reader:
        reader.execute("SELECT count(*) FROM gateway_envelopes_blob_o100")
        conn.execute("SET lock_timeout = 0")
        conn.execute("SET statement_timeout = '20s'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            conn.execute("SELECT partitiond_drop_band(200, 0)")
        reader.rollback()
    for tree in TREES:
        assert l2_bounds(conn, tree, 200) == bounds(0, M)
    assert envelope_keys(conn) == KEYS
