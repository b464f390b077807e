"""One pass end to end against a real PostgreSQL: discovery, planning, ensure, failures and exit codes."""

from __future__ import annotations

import time

import psycopg
import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

from partitiond import pipeline
from partitiond.cluster import LocalCluster
from partitiond.config import Settings
from partitiond.forecast import RateEstimator
from partitiond.metrics import Metrics
from partitiond.report import record

from .pgtools import (
    TREES,
    Conn,
    Inserter,
    children,
    ddl_count,
    hold_lock,
    install_ddl_log,
    l2_bounds,
    leftovers,
    partition_count,
    seed_rows,
)

ENV: dict[str, str] = {}


def band(start: int, end: int) -> str:
    return f"FOR VALUES FROM ('{start}') TO ('{end}')"


def run(dsn: str, **overrides: object) -> pipeline.PassReport:
    settings = Settings(dsn=dsn, metrics_address="", **overrides)  # type: ignore[arg-type]
    return pipeline.run_pass(settings, ENV)


def test_configured_originators_on_an_empty_schema_get_l1_and_band_0(conn: Conn, db_dsn: str) -> None:
    report = run(db_dsn, originators=(100, 200))
    assert (report.result, report.exit_code) == ("success", 0)
    assert report.counts["created"] == 2
    for oid in (100, 200):
        for tree in TREES:
            assert l2_bounds(conn, tree, oid) == [band(0, 1_000_000)]


def test_threshold_decides_the_next_band(conn: Conn, db_dsn: str) -> None:
    seed_rows(conn, 100, [5, 1_000_000, 1_700_000])  # 70.0% into band 1: not strictly above
    seed_rows(conn, 200, [2_700_001])  # 70.0001% into band 2
    report = run(db_dsn)
    assert report.counts["created"] == 1
    assert l2_bounds(conn, "gateway_envelopes_meta", 100) == [band(0, 1_000_000), band(1_000_000, 2_000_000)]
    assert l2_bounds(conn, "gateway_envelopes_blob", 200) == [
        band(2_000_000, 3_000_000),
        band(3_000_000, 4_000_000),
    ]


def test_upstream_worker_case_3_end_to_end(conn: Conn, db_dsn: str) -> None:
    """xmtpd worker_internal_test case 3: {100:1, 200:900000, 300:750000} -> 5 meta L2 partitions."""
    for oid, seq in ((100, 1), (200, 900_000), (300, 750_000)):
        seed_rows(conn, oid, [seq])
    assert run(db_dsn).exit_code == 0
    names = [
        n
        for tree_l1 in ("100", "200", "300")
        for n, _ in children(conn, f"gateway_envelopes_meta_o{tree_l1}")
    ]
    assert len(names) == 5
    assert "gateway_envelopes_meta_o200_s1000000_2000000" in names
    assert "gateway_envelopes_meta_o300_s1000000_2000000" in names
    assert "gateway_envelopes_meta_o100_s1000000_2000000" not in names


def test_second_run_issues_no_ddl(conn: Conn, db_dsn: str) -> None:
    seed_rows(conn, 100, [800_000])
    install_ddl_log(conn)
    first = run(db_dsn, originators=(300,))
    assert first.counts["created"] == 2
    after_first = ddl_count(conn)
    assert after_first > 0
    second = run(db_dsn, originators=(300,))
    assert second.counts == {
        "planned": 0,
        "created": 0,
        "skipped": 0,
        "deferred": 0,
        "failed": 0,
        "capped": 0,
    }
    assert ddl_count(conn) == after_first


def test_missing_current_band_is_repaired(conn: Conn, db_dsn: str) -> None:
    seed_rows(conn, 100, [10, 1_200_000])
    conn.execute(
        "UPDATE gateway_envelopes_latest SET originator_sequence_id = 2500000 WHERE originator_node_id = 100"
    )
    report = run(db_dsn)
    assert report.plan is not None
    repairs = [p for p in report.plan.creates if p.kind == "repair"]
    assert [(p.originator, p.band.start) for p in repairs] == [(100, 2_000_000)]
    assert "seq 2,500,000" in repairs[0].reason
    assert band(2_000_000, 3_000_000) in l2_bounds(conn, "gateway_envelopes_blob", 100)


def test_positions_are_probed_when_the_latest_table_is_missing(conn: Conn, db_dsn: str) -> None:
    seed_rows(conn, 100, [10, 1_750_000])
    seed_rows(conn, 200, [300_000])
    conn.execute("SELECT ensure_gateway_parts_v4(200, 1000000)")  # an empty band above the data
    conn.execute("DROP TABLE gateway_envelopes_latest CASCADE")
    report = run(db_dsn)
    assert report.plan is not None
    positions = {s.originator: s.position for s in report.plan.statuses}
    assert positions == {100: 1_750_000, 200: 300_000}
    assert [(p.originator, p.band.start) for p in report.plan.creates] == [(100, 2_000_000)]


def test_dry_run_plan_touches_nothing(conn: Conn, db_dsn: str) -> None:
    seed_rows(conn, 100, [900_000])
    settings = Settings(dsn=db_dsn, originators=(5,), metrics_address="")
    before = partition_count(conn)
    with pipeline.open_connection(settings, ENV) as c:
        the_plan = pipeline.make_plan(pipeline.take_snapshot(c, settings), settings)
    assert len(the_plan.creates) == 2
    assert partition_count(conn) == before


def test_one_originators_failure_does_not_stop_the_others(conn: Conn, db_dsn: str) -> None:
    conn.execute("CREATE VIEW gateway_envelopes_meta_o150 AS SELECT 1 AS x")  # in the way of o150's L1
    report = run(db_dsn, originators=(100, 150, 200))
    assert (report.result, report.exit_code) == ("partial", 1)
    failed = [o for o in report.outcomes if o.status == "failed"]
    assert [(o.planned.originator, o.failure) for o in failed] == [(150, "other")]
    assert failed[0].error is not None and failed[0].error.startswith("42P07")
    assert l2_bounds(conn, "gateway_envelopes_meta", 100) == [band(0, 1_000_000)]
    assert l2_bounds(conn, "gateway_envelopes_meta", 200) == [band(0, 1_000_000)]
    assert leftovers(conn) == []


def test_band_width_mismatch_is_refused(conn: Conn, db_dsn: str) -> None:
    seed_rows(conn, 100, [10, 650_000], band_width=500_000)
    before = partition_count(conn)
    report = run(db_dsn, originators=(200,))
    assert report.exit_code == pipeline.EXIT_CONFIG
    assert report.message is not None and "--band-width is 1,000,000" in report.message
    assert partition_count(conn) == before


def test_missing_function_says_how_to_install_it(conn: Conn, db_dsn: str) -> None:
    conn.execute("DROP FUNCTION ensure_gateway_parts_v4(int, bigint, bigint)")
    report = run(db_dsn, originators=(1,))
    assert report.exit_code == pipeline.EXIT_MISSING
    assert report.message is not None and "partitiond install-sql" in report.message


def test_outdated_function_is_detected(conn: Conn, db_dsn: str) -> None:
    """A helper whose body is not the one this version ships (an older partitiond's) is outdated, whatever
    the version comment says; the comment alone decides nothing."""
    conn.execute(
        "COMMENT ON FUNCTION ensure_gateway_parts_v4(int, bigint, bigint) IS 'partitiond sql-version 0'"
    )
    assert run(db_dsn, originators=(1,)).exit_code == pipeline.EXIT_OK
    conn.execute(
        "CREATE OR REPLACE FUNCTION partitiond_l2_name(p_tree text, p_oid int, p_start bigint, p_end bigint)"
        " RETURNS text LANGUAGE sql IMMUTABLE AS"
        " $$ SELECT left(format('%s_o%s_s%s_%s', p_tree, p_oid, p_start, p_end), 63) $$"
    )
    report = run(db_dsn, originators=(1,))
    assert report.exit_code == pipeline.EXIT_MISSING
    assert report.message is not None and "not the ones this partitiond ships" in report.message


def test_missing_tables_exit_4(empty_db_dsn: str) -> None:
    report = run(empty_db_dsn)
    assert report.exit_code == pipeline.EXIT_MISSING
    assert report.message is not None and "gateway_envelopes_meta" in report.message


def test_unreachable_server_exit_3_without_the_password() -> None:
    report = run("postgresql://partitiond:s3cret-pw@127.0.0.1:9/xmtpd", connect_timeout=2)
    assert report.exit_code == pipeline.EXIT_SERVER
    assert report.message is not None and "s3cret-pw" not in report.message


def test_a_standby_is_refused_loudly(standby: LocalCluster, db_dsn: str) -> None:
    dbname = psycopg.conninfo.conninfo_to_dict(db_dsn)["dbname"]
    report = run(standby.dsn(str(dbname)), originators=(100,))
    assert (report.result, report.exit_code) == ("standby", pipeline.EXIT_SERVER)
    assert report.message is not None and "standby" in report.message


@pytest.mark.slow
@pytest.mark.parametrize("holder_kind", ["shared protocol lock", "row exclusive on meta"])
def test_a_lock_holder_bounds_the_wait_and_never_stalls_inserts(
    conn: Conn, db_dsn: str, holder_kind: str
) -> None:
    lock_timeout = 0.3
    seed_rows(conn, 900, [1])
    seed_rows(conn, 901, [1])
    with psycopg.connect(db_dsn) as holder:
        hold_lock(holder, holder_kind)
        inserter = Inserter(db_dsn, 901)
        inserter.start()
        assert inserter.started_writing.wait(10)
        started = time.monotonic()
        report = run(db_dsn, originators=(100,), lock_timeout=lock_timeout, lock_attempts=3, retry_budget=1)
        elapsed = time.monotonic() - started
        inserter.stop.set()
        inserter.join(10)
        holder.rollback()
    assert (report.result, report.exit_code) == ("partial", 1)
    [outcome] = report.outcomes
    # An insert in flight (shared side of key 5): partitiond queues for the budget, then gives up.  A writer
    # outside the protocol shows in pg_locks: partitiond does not even take key 5.
    why = "key5_busy" if holder_kind == "shared protocol lock" else "lock_busy"
    assert (outcome.status, outcome.failure, outcome.attempts) == ("deferred", why, 3)
    assert outcome.deferrals == (why,) * 3
    assert elapsed < 3 * lock_timeout + 1 + 2  # attempts + backoff budget + slack
    assert inserter.max_latency() < Settings().hold_budget + 0.5
    assert leftovers(conn) == []
    assert run(db_dsn, originators=(100,)).counts["created"] == 1


def test_a_suspicious_jump_is_logged_and_creates_only_two_bands(conn: Conn, db_dsn: str) -> None:
    """A bad high value must not make partitiond fill the range in between (pg_partman #316/#462)."""
    settings = Settings(dsn=db_dsn, metrics_address="", max_jump_bands=10)
    estimator = RateEstimator(max_jump_ids=settings.max_jump_bands * settings.band_width)
    seed_rows(conn, 100, [500_000])
    assert pipeline.run_pass(settings, ENV, estimator).exit_code == 0
    conn.execute("UPDATE gateway_envelopes_latest SET originator_sequence_id = 40750000")
    with structlog.testing.capture_logs() as logs:
        report = pipeline.run_pass(settings, ENV, estimator)
    assert [e["originator"] for e in logs if e["event"] == "suspicious position jump"] == [100]
    assert report.plan is not None
    assert sorted(p.band.start for p in report.plan.creates) == [40_000_000, 41_000_000]
    assert l2_bounds(conn, TREES[0], 100) == [
        band(0, 1_000_000),
        band(40_000_000, 41_000_000),
        band(41_000_000, 42_000_000),
    ]


def backend_pid(kept: pipeline.KeptConnection, settings: Settings) -> int:
    with kept.use(settings, ENV) as conn:
        return conn.info.backend_pid


def test_the_daemon_keeps_one_backend_from_pass_to_pass(conn: Conn, db_dsn: str) -> None:
    """A new backend per probe would pay cold caches on every ATTACH, while key 5 is held."""
    settings = Settings(dsn=db_dsn, metrics_address="", originators=(100,))
    kept = pipeline.KeptConnection()
    try:
        first = pipeline.run_pass(settings, ENV, kept=kept)
        pid = backend_pid(kept, settings)
        second = pipeline.run_pass(settings, ENV, kept=kept)
        assert (first.result, second.result) == ("success", "success")
        assert first.counts["created"] == 1
        assert backend_pid(kept, settings) == pid
    finally:
        kept.close()


def test_a_kept_connection_that_died_is_replaced_before_the_pass(conn: Conn, db_dsn: str) -> None:
    """Server restarts and idle timeouts end sessions while the daemon sleeps: the next pass must not
    fail for it."""
    settings = Settings(dsn=db_dsn, metrics_address="", originators=(100,))
    kept = pipeline.KeptConnection()
    try:
        pid = backend_pid(kept, settings)
        conn.execute("SELECT pg_terminate_backend(%s)", [pid])
        report = pipeline.run_pass(settings, ENV, kept=kept)
        assert (report.result, report.counts["created"]) == ("success", 1)
        assert backend_pid(kept, settings) != pid
    finally:
        kept.close()


def test_a_database_error_drops_the_kept_connection(conn: Conn, db_dsn: str) -> None:
    settings = Settings(dsn=db_dsn, metrics_address="")
    kept = pipeline.KeptConnection()
    try:
        pid = backend_pid(kept, settings)
        with pytest.raises(psycopg.errors.UndefinedTable), kept.use(settings, ENV) as failing:
            failing.execute("SELECT * FROM no_such_table")
        assert backend_pid(kept, settings) != pid
    finally:
        kept.close()


def test_the_hold_is_kept_below_the_servers_deadlock_timeout() -> None:
    """A session waiting behind partitiond's key 5 runs the deadlock check after deadlock_timeout; the
    hold must end before, so that partitiond, not xmtpd, is the one that gives up."""
    settings = Settings(metrics_address="", hold_budget=0.1, hold_timeout=0.5)
    assert pipeline.within_deadlock_timeout(settings, 1000) is settings
    with structlog.testing.capture_logs() as logs:
        clamped = pipeline.within_deadlock_timeout(settings, 200)
        pipeline.within_deadlock_timeout(settings, 200)
    assert (clamped.hold_timeout, clamped.hold_budget) == pytest.approx((0.16, 0.08))
    assert [e["event"] for e in logs] == ["hold settings clamped below the server's deadlock_timeout"]


def test_a_full_run_drops_what_a_killed_run_left_staged(conn: Conn, db_dsn: str) -> None:
    """Staged tables are committed before key 5, so a run killed before attaching them leaves them: the
    leader's next full run drops them, and says so."""
    seed_rows(conn, 100, [10])
    conn.execute("SELECT partitiond_stage_table(100, 1000000, 2000000, true)")
    assert leftovers(conn) == ["partitiond_stage_blob_o100_s1000000"]
    with structlog.testing.capture_logs() as logs:
        report = run(db_dsn, originators=(100,))
    assert report.exit_code == 0
    assert leftovers(conn) == []
    [dropped] = [e for e in logs if e["event"] == "dropped staged tables an interrupted run left behind"]
    assert dropped["tables"] == 1


def test_the_key_5_hold_and_deferrals_reach_the_metrics(conn: Conn, db_dsn: str) -> None:
    """A created band's hold (and its split by statement) and a deferred band's reason are exported."""
    seed_rows(conn, 100, [800_000])  # the next band is due
    seed_rows(conn, 900, [1])
    metrics = Metrics()
    record(metrics, run(db_dsn, originators=(100,)))
    with psycopg.connect(db_dsn) as holder:
        hold_lock(holder, "row exclusive on meta")  # a writer outside the protocol: pre-flight defers
        record(metrics, run(db_dsn, originators=(100, 200), lock_attempts=1))
        holder.rollback()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for s in family.samples
    }
    assert samples[("partitiond_key5_hold_seconds_count", ())] == 1
    for step in ("check", "blob_lock", "meta", "blob", "commit"):
        assert samples[("partitiond_key5_hold_step_seconds_count", (("step", step),))] == 1
    assert samples[("partitiond_band_deferrals_total", (("reason", "lock_busy"),))] == 1
