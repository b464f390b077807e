"""The executor's band transaction against a real PostgreSQL: what it reports, and when it takes key 5.

The exclusive side of key 5 stalls every insert while it is held, so the executor must not take it for a
band that is already there, and must tell "created" from "existed" without an extra round trip under it.
"""

from __future__ import annotations

import threading

import psycopg

from partitiond.bands import Band
from partitiond.config import Settings
from partitiond.executor import Executor, Outcome, RetryBudget
from partitiond.planner import PlannedBand

from .pgtools import TREES, Conn, ensure_band, hold_lock, l2_bounds, leftovers, wait_for

WIDTH = 1_000_000
OID = 100


def planned(start: int) -> PlannedBand:
    return PlannedBand(OID, Band(start, start + WIDTH), "ahead", "test", 0)


def ensure(dsn: str, start: int, lock_timeout: float = 0.3) -> Outcome:
    settings = Settings(dsn=dsn, metrics_address="", lock_timeout=lock_timeout, lock_attempts=1)
    with psycopg.connect(dsn, autocommit=True) as conn:
        return Executor(conn, settings).ensure(planned(start), RetryBudget(0))


def waiting_for_advisory_lock(conn: Conn) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = 5"
    ).fetchone()
    return bool(row and row[0])


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
        wait_for(lambda: waiting_for_advisory_lock(conn), 20, "the executor to queue for key 5")
        cold_path.commit()
    waiter.join(30)
    assert [(o.status, o.failure) for o in outcomes] == [("existed", None)]
    assert leftovers(conn) == []
