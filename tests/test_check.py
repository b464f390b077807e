"""``partitiond check``: the pure rules on hand-made facts, then the real catalog and the command line."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import replace

import psycopg
import pytest

from partitiond import catalog, check, check_bands, check_model, sqlfiles
from partitiond.bands import Band
from partitiond.check_model import CatalogFact, Facts, Finding
from partitiond.cluster import LocalCluster
from partitiond.config import Settings
from partitiond.forecast import Forecast

from .pgtools import Conn, ddl_count, install_ddl_log, partition_count, seed_rows
from .test_cli import cli

META, BLOB = catalog.META, catalog.BLOB
W = 1_000_000
SETTINGS = Settings(metrics_address="")
HEALTHY_STATE = catalog.ServerState(
    in_recovery=False,
    server_version=150_000,
    deadlock_timeout_ms=1000,
    has_meta=True,
    has_blob=True,
    has_latest=True,
    has_function=True,
    function_marker=sqlfiles.VERSION_MARKER,
    ensure_ours=True,
    family_digest=sqlfiles.shipped_digest(),
)
FOREIGN_KEYS = (
    CatalogFact("foreign_key", BLOB, "gateway_envelope_blobs_fkey", "c"),
    CatalogFact("foreign_key", "blockchain_messages", "blockchain_messages_fkey", "a"),
    CatalogFact("table", "blockchain_messages"),
)


def parts(
    oid: int, *starts: int, trees: Sequence[str] = (META, BLOB), width: int = W
) -> list[catalog.Partition]:
    return [
        catalog.Partition(tree, oid, band, check_bands.expected_name(tree, oid, band))
        for start in starts
        for band in [Band(start, start + width)]
        for tree in trees
    ]


def facts(
    positions: dict[int, int | None],
    bands: Iterable[catalog.Partition] = (),
    extra: Sequence[CatalogFact] = FOREIGN_KEYS,
    state: catalog.ServerState = HEALTHY_STATE,
) -> Facts:
    bands = tuple(bands)
    l1 = {tree: frozenset(p.originator for p in bands if p.tree == tree) for tree in (META, BLOB)}
    return Facts("public", state, catalog.Inventory(l1=l1, bands=bands), positions, tuple(extra))


def only(findings: list[Finding], check_name: str) -> list[Finding]:
    return [f for f in findings if f.check == check_name]


def problems(findings: list[Finding]) -> list[tuple[str, str, str]]:
    return [(f.severity, f.check, f.subject) for f in findings if f.severity not in ("ok", "info")]


# --- pure rules ---------------------------------------------------------------------------------------


def test_a_healthy_database_is_all_ok() -> None:
    findings = check.evaluate(facts({100: 250_000, 200: None}, parts(100, 0) + parts(200, 0)), SETTINGS)
    assert problems(findings) == []
    assert check_model.exit_code(findings) == 0
    assert {f.check for f in findings} >= {
        "function",
        "tables",
        "foreign-keys",
        "current-band",
        "runway",
        "symmetry",
        "bounds",
        "names",
        "leftovers",
    }
    assert [f.message for f in only(findings, "runway")] == [
        "749,999 ids of headroom in band 0",
        "1,000,000 ids of headroom in band 0",
    ]


@pytest.mark.parametrize(
    ("trees", "says"),
    [
        ((), "is missing in both trees"),
        ((META,), "exists in meta only"),
        ((BLOB,), "exists in blob only"),
    ],
)
def test_a_missing_or_half_current_band_is_critical(trees: tuple[str, ...], says: str) -> None:
    findings = check.evaluate(facts({100: 1_500_000}, parts(100, 0) + parts(100, W, trees=trees)), SETTINGS)
    [current] = only(findings, "current-band")
    assert (current.severity, current.subject) == ("critical", "originator 100")
    assert "seq 1,500,000: band 1 [1,000,000, 2,000,000) " + says in current.message
    assert only(findings, "runway") == []  # no runway without a current band
    assert check_model.exit_code(findings) == 2


def test_a_configured_originator_without_partitions_is_critical() -> None:
    [current] = only(check.evaluate(facts({7: None}), SETTINGS), "current-band")
    assert current.severity == "critical"
    assert current.message.startswith("no rows yet: band 0 [0, 1,000,000) is missing in both trees")


@pytest.mark.parametrize(
    ("position", "next_exists", "severity"),
    [
        (700_000, False, "ok"),  # exactly 70%: the planner's rule is strictly above
        (700_001, False, "warning"),
        (950_000, True, "ok"),
    ],
)
def test_runway_without_forecast_is_headroom(position: int, next_exists: bool, severity: str) -> None:
    bands = parts(100, 0, W) if next_exists else parts(100, 0)
    [runway] = only(check.evaluate(facts({100: position}, bands), SETTINGS), "runway")
    assert runway.severity == severity
    if severity == "warning":
        assert "(threshold 70%) and band 1 does not exist: only 299,998 ids of headroom" in runway.message
    if next_exists:
        assert runway.message == "1,049,999 ids of headroom up to the end of band 1"


def test_runway_with_a_forecast_warns_below_the_runway_warning() -> None:
    settings = Settings(metrics_address="", runway_warning=3600)
    the_facts = facts({100: 100_000}, parts(100, 0, W))  # 1.9M ids ahead, fill far below the threshold
    fast = check.evaluate(the_facts, settings, {100: Forecast(1_000.0)})  # 1,900 s left
    [runway] = only(fast, "runway")
    assert runway.severity == "warning"
    assert "band 1 [1,000,000, 2,000,000) is full in 31m40s, below the runway warning of 1h" in runway.message
    slow = check.evaluate(the_facts, settings, {100: Forecast(10.0)})
    assert only(slow, "runway")[0].severity == "ok"


def test_symmetry_every_band_needs_its_twin() -> None:
    bands = parts(100, 0) + parts(100, W, trees=(META,)) + parts(200, 0, trees=(BLOB,)) + parts(200, W)
    findings = check.evaluate(facts({100: 10, 200: 1_500_000}, bands), SETTINGS)
    assert [(f.severity, f.subject, f.message) for f in only(findings, "symmetry")] == [
        (
            "warning",
            "gateway_envelopes_meta_o100_s1000000_2000000",
            "meta band [1,000,000, 2,000,000) has no blob twin",
        ),
        ("warning", "gateway_envelopes_blob_o200_s0_1000000", "blob band [0, 1,000,000) has no meta twin"),
    ]


def test_an_l1_in_one_tree_only_is_reported() -> None:
    the_facts = facts({100: None})
    the_facts = replace(
        the_facts, inventory=catalog.Inventory(l1={META: frozenset({100}), BLOB: frozenset()}, bands=())
    )
    [finding] = only(check.evaluate(the_facts, SETTINGS), "symmetry")
    assert finding.message == "has an L1 partition in meta but none in blob"


def test_bounds_must_match_the_band_width() -> None:
    findings = check.evaluate(facts({100: 10}, parts(100, 0, width=500_000)), SETTINGS)
    bounds = only(findings, "bounds")
    assert [(f.severity, f.subject) for f in bounds] == [
        ("critical", "gateway_envelopes_meta_o100_s0_500000"),
        ("critical", "gateway_envelopes_blob_o100_s0_500000"),
    ]
    assert "covers [0, 500,000) (500,000 wide), not a band of --band-width 1,000,000" in bounds[0].message


def test_names_are_compared_with_the_63_byte_truncated_name() -> None:
    start = 9_000_000_000_000_000_000
    long_ok = parts(2_147_483_647, start)
    assert len(long_ok[0].name) == 63 and long_ok[0].name.startswith("gateway_envelopes_meta_o2147483647_s9")
    renamed = catalog.Partition(META, 5, Band(W, 2 * W), "gateway_envelopes_meta_o5_s0_1000000")
    untruncated = catalog.Partition(BLOB, 5, Band(W, 2 * W), "gateway_envelopes_blob_o5_s1000000_2000000")
    l1 = CatalogFact("l1", META, "envelopes_o5", "FOR VALUES IN (5)")
    findings = check.evaluate(
        facts({2_147_483_647: start, 5: W}, [*long_ok, renamed, untruncated], [*FOREIGN_KEYS, l1]), SETTINGS
    )
    names = only(findings, "names")
    assert [(f.severity, f.subject) for f in names] == [
        ("warning", "gateway_envelopes_meta_o5_s0_1000000"),
        ("warning", "envelopes_o5"),
    ]
    assert "expected gateway_envelopes_meta_o5_s1000000_2000000" in names[0].message
    assert "expected gateway_envelopes_meta_o5" in names[1].message


def test_gaps_below_the_current_band_are_info_above_it_a_warning() -> None:
    below = check.evaluate(facts({100: 5_500_000}, parts(100, 2 * W, 3 * W, 5 * W)), SETTINGS)
    [gap] = only(below, "gaps")
    assert gap.severity == "info"
    assert "[0, 2,000,000), [4,000,000, 5,000,000)" in gap.message and "pruner" in gap.message
    assert check_model.exit_code(below) == 0
    above = check.evaluate(facts({100: 10}, parts(100, 0, 3 * W)), SETTINGS)
    [hole] = only(above, "gaps")
    assert hole.severity == "warning"
    assert "ids [1,000,000, 3,000,000) above the current band have no partition" in hole.message


def test_overlapping_bands_are_critical() -> None:
    bands = [*parts(100, 0), catalog.Partition(META, 100, Band(500_000, 1_500_000), "odd")]
    findings = check.evaluate(facts({100: 10}, bands), SETTINGS)
    assert ("critical", "gaps", "originator 100") in problems(findings)


def test_leftovers_are_warnings() -> None:
    extra = [
        *FOREIGN_KEYS,
        CatalogFact("seed_constraint", "gateway_envelopes_meta_o1_s0_1000000", "seq_id_check", "CHECK (…)"),
        CatalogFact("unattached", "gateway_envelopes_blob_o9", "gateway_envelopes_blob_o9", "p"),
        CatalogFact("detach_pending", "gateway_envelopes_meta_o1", "gateway_envelopes_meta_o1_s0_1000000"),
        CatalogFact("default", META, "gateway_envelopes_meta_default"),
    ]
    findings = only(check.evaluate(facts({1: 10}, parts(1, 0), extra), SETTINGS), "leftovers")
    assert [(f.severity, f.subject) for f in findings] == [
        ("warning", "gateway_envelopes_meta_o1_s0_1000000"),
        ("warning", "gateway_envelopes_blob_o9"),
        ("warning", "gateway_envelopes_meta_o1_s0_1000000"),
        ("warning", "gateway_envelopes_meta_default"),
    ]
    assert "DETACH PARTITION gateway_envelopes_meta_o1_s0_1000000 FINALIZE" in findings[2].message
    assert "DEFAULT partition of gateway_envelopes_meta" in findings[3].message


@pytest.mark.parametrize(
    ("extra", "subject", "says"),
    [
        (FOREIGN_KEYS[1:], f"{BLOB} → {META}", "top-level foreign key is missing"),
        (
            (CatalogFact("foreign_key", BLOB, "fk", "a"), *FOREIGN_KEYS[1:]),
            f"{BLOB} → {META}",
            "fk is ON DELETE NO ACTION, not CASCADE",
        ),
        (
            (FOREIGN_KEYS[0], FOREIGN_KEYS[2]),
            f"blockchain_messages → {META}",
            "top-level foreign key is missing",
        ),
        (FOREIGN_KEYS[:2], f"blockchain_messages → {META}", "table public.blockchain_messages not found"),
    ],
)
def test_missing_foreign_keys_are_critical(extra: tuple[CatalogFact, ...], subject: str, says: str) -> None:
    findings = check.evaluate(facts({1: 10}, parts(1, 0), extra), SETTINGS)
    [bad] = [f for f in only(findings, "foreign-keys") if f.severity != "ok"]
    assert (bad.severity, bad.subject) == ("critical", subject)
    assert says in bad.message


@pytest.mark.parametrize(
    ("state", "says"),
    [
        (replace(HEALTHY_STATE, has_function=False, function_marker=None), "not installed"),
        (
            replace(HEALTHY_STATE, function_marker="partitiond sql-version 0", family_digest="0" * 64),
            "not the ones this partitiond ships (partitiond sql-version 0",
        ),
        (replace(HEALTHY_STATE, function_marker=None, family_digest=None), "(no version marker"),
        (replace(HEALTHY_STATE, ensure_ours=False), "is not partitiond's"),
    ],
)
def test_function_missing_or_outdated_is_critical_with_the_fix(state: catalog.ServerState, says: str) -> None:
    [function] = only(check.evaluate(facts({1: 10}, parts(1, 0), state=state), SETTINGS), "function")
    assert function.severity == "critical"
    assert says in function.message and "partitiond install-sql --schema public" in function.message


def test_missing_tables_stop_the_check() -> None:
    state = replace(HEALTHY_STATE, has_blob=False, has_latest=False)
    findings = check.evaluate(Facts("public", state), SETTINGS)
    assert problems(findings) == [("critical", "tables", "public.gateway_envelopes_blob")]
    assert {f.check for f in findings} == {"function", "tables"}


def test_impossible_positions_are_critical_never_a_crash() -> None:
    findings = check.evaluate(facts({1: -5, 2: 9_223_372_036_854_000_001}), SETTINGS)
    negative, too_high = only(findings, "current-band")
    assert negative.message.startswith("position -5 is negative")
    assert "ends past the bigint maximum 9,223,372,036,854,775,807" in too_high.message
    assert check_model.exit_code(findings) == 2


def test_the_last_storable_band_says_nothing_can_follow() -> None:
    start = 9_223_372_036_853_000_000  # band end 9,223,372,036,854,000,000 <= INT8_MAX; the next would not be
    findings = check.evaluate(facts({1: start + 900_000}, parts(1, start)), SETTINGS)
    [runway] = only(findings, "runway")
    assert runway.severity == "warning" and "no band can follow it (bigint maximum)" in runway.message


def test_a_standby_is_only_info() -> None:
    findings = check.evaluate(
        facts({1: 10}, parts(1, 0), state=replace(HEALTHY_STATE, in_recovery=True)), SETTINGS
    )
    assert findings[0] == Finding(
        "info",
        "server",
        "server",
        "server is a standby: checking the replicated catalog read-only (partitiond creates partitions on "
        "the primary)",
    )
    assert check_model.exit_code(findings) == 0


def test_many_findings_of_one_check_are_folded() -> None:
    bands = [catalog.Partition(META, oid, Band(0, W), f"renamed_{oid}") for oid in range(30)] + parts(
        0, 0, trees=(BLOB,)
    )
    names = only(check.evaluate(facts({0: 10}, bands), SETTINGS), "names")
    assert len(names) == check_model.MAX_PER_CHECK + 1
    assert names[-1] == Finding("warning", "names", "10 more", "10 more findings like the above")


@pytest.mark.parametrize(
    ("severities", "code"),
    [((), 0), (("ok", "info"), 0), (("ok", "warning"), 1), (("warning", "critical", "info"), 2)],
)
def test_exit_code_is_the_worst_severity(severities: tuple[check_model.Severity, ...], code: int) -> None:
    assert check_model.exit_code(Finding(s, "c", "s", "m") for s in severities) == code


def test_render_table_and_json() -> None:
    findings = [
        Finding("ok", "function", "public.ensure_gateway_parts_v4", "installed"),
        Finding("warning", "runway", "originator 1", "low"),
        Finding("critical", "current-band", "originator 2", "missing"),
    ]
    lines = check.render(findings, "table").splitlines()
    assert lines[0].split() == ["severity", "check", "subject", "message"]
    assert re.split(r"\s{2,}", lines[2]) == ["warning", "runway", "originator 1", "low"]
    assert lines[-1] == "1 critical, 1 warning"
    doc = json.loads(check.render(findings, "json"))
    assert doc["findings"][2] == {
        "severity": "critical",
        "check": "current-band",
        "subject": "originator 2",
        "message": "missing",
    }
    assert doc["summary"] == {"ok": 1, "info": 0, "warning": 1, "critical": 1, "exit_code": 2}
    assert check.render([], "table").splitlines()[-1] == "0 critical, 0 warnings"


# --- the real catalog -----------------------------------------------------------------------------------


def run_check(dsn: str, **overrides: object) -> tuple[list[Finding], int]:
    settings = Settings(dsn=dsn, metrics_address="", **overrides)  # type: ignore[arg-type]
    return check.run_check(settings, {})


def test_a_fresh_xmtpd_database_passes(conn: Conn, db_dsn: str) -> None:
    seed_rows(conn, 100, [10, 1_200_000])
    seed_rows(conn, 200, [5])
    findings, code = run_check(db_dsn)
    assert (problems(findings), code) == ([], 0)


def test_check_is_read_only(conn: Conn, db_dsn: str) -> None:
    seed_rows(conn, 100, [900_000])  # the next band is overdue: check reports it, never creates it
    install_ddl_log(conn)
    before = partition_count(conn)
    findings, code = run_check(db_dsn, originators=(5,))
    assert code == 2
    assert ("warning", "runway", "originator 100") in problems(findings)
    assert ("critical", "current-band", "originator 5") in problems(findings)
    assert (partition_count(conn), ddl_count(conn)) == (before, 0)


def test_prune_drop_cascade_loses_both_foreign_keys(conn: Conn, db_dsn: str) -> None:
    """xmtpd's DropPrunablePartitions on PostgreSQL 15 (DROP TABLE … CASCADE of one band)."""
    seed_rows(conn, 100, [10, 1_000_005])
    conn.execute("DELETE FROM gateway_envelopes_meta WHERE originator_sequence_id < 1000000")
    conn.execute(
        "DROP TABLE IF EXISTS gateway_envelopes_meta_o100_s0_1000000, gateway_envelopes_blob_o100_s0_1000000 "
        "CASCADE"
    )
    findings, code = run_check(db_dsn)
    assert code == 2
    assert [(s, c) for s, c, _ in problems(findings)] == [("critical", "foreign-keys")] * 2
    [pruned] = only(findings, "gaps")
    assert pruned.severity == "info" and "[0, 1,000,000)" in pruned.message


def test_leftovers_in_a_real_catalog(conn: Conn, db_dsn: str) -> None:
    seed_rows(conn, 100, [10])
    conn.execute(
        "CREATE TABLE gateway_envelopes_meta_o100_s1000000_2000000 (LIKE gateway_envelopes_meta, "
        "CONSTRAINT seq_id_check CHECK (originator_sequence_id >= 1000000))"
    )
    conn.execute("CREATE TABLE gateway_envelopes_blob_default PARTITION OF gateway_envelopes_blob DEFAULT")
    conn.execute("CREATE TABLE partitiond_stage_blob_o100_s7000000 (LIKE gateway_envelopes_blob)")  # by hand
    conn.execute(
        "CREATE TABLE odd_name PARTITION OF gateway_envelopes_meta_o100"
        " FOR VALUES FROM (5000000) TO (6000000)"
    )
    findings, code = run_check(db_dsn)
    assert code == 1
    assert sorted(problems(findings)) == [
        ("warning", "gaps", "originator 100"),  # [1M, 5M) is a hole above the current band
        ("warning", "leftovers", "gateway_envelopes_blob_default"),
        ("warning", "leftovers", "gateway_envelopes_meta_o100_s1000000_2000000"),
        ("warning", "leftovers", "gateway_envelopes_meta_o100_s1000000_2000000"),
        ("warning", "leftovers", "partitiond_stage_blob_o100_s7000000"),
        ("warning", "names", "odd_name"),
        ("warning", "symmetry", "odd_name"),
    ]


def test_a_pending_detach_is_reported(conn: Conn, db_dsn: str) -> None:
    seed_rows(conn, 100, [10])
    conn.execute("SELECT ensure_gateway_parts_v4(100, 1000000)")
    leaf = "gateway_envelopes_blob_o100_s1000000_2000000"
    with psycopg.connect(db_dsn) as holder:  # an old snapshot makes the second phase wait
        holder.execute("SELECT count(*) FROM gateway_envelopes_blob")
        conn.execute("SET statement_timeout = '500ms'")
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute(f"ALTER TABLE gateway_envelopes_blob_o100 DETACH PARTITION {leaf} CONCURRENTLY")
        conn.execute("RESET statement_timeout")
        holder.rollback()
    findings, code = run_check(db_dsn)
    assert code == 1
    [pending] = [f for f in only(findings, "leftovers") if "pending detach" in f.message]
    assert pending.subject == leaf
    assert f"ALTER TABLE gateway_envelopes_blob_o100 DETACH PARTITION {leaf} FINALIZE" in pending.message


def test_long_names_truncated_by_postgresql_are_fine(conn: Conn, db_dsn: str) -> None:
    conn.execute("SELECT ensure_gateway_parts_v4(2147483647, 9000000000000000000)")
    findings, code = run_check(db_dsn)
    assert (problems(findings), code) == ([], 0)
    assert only(findings, "names")[0].message == "every name matches its bounds"


def test_missing_tables_are_critical(empty_db_dsn: str) -> None:
    findings, code = run_check(empty_db_dsn)
    assert code == 2
    assert ("critical", "tables", "public.gateway_envelopes_meta") in problems(findings)


@pytest.fixture
def seeded(conn: Conn) -> None:
    seed_rows(conn, 100, [10])


@pytest.mark.slow
def test_a_standby_can_be_checked(seeded: None, standby: LocalCluster, db_dsn: str) -> None:
    dbname = str(psycopg.conninfo.conninfo_to_dict(db_dsn)["dbname"])
    findings, code = run_check(standby.dsn(dbname))
    assert code == 0
    assert findings[0].check == "server" and "standby" in findings[0].message


# --- the command line -----------------------------------------------------------------------------------


def test_check_help_has_an_example_and_explains_the_contract() -> None:
    result = cli("check", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for words in (
        "Example",
        "PARTITIOND_BAND_WIDTH",
        "unreachable database",
        "is critical (exit 2)",
        "headroom",
    ):
        assert words in text


def test_check_command_table_and_json(conn: Conn, db_dsn: str) -> None:
    seed_rows(conn, 100, [800_000])
    table = cli("check", "--dsn", db_dsn)
    assert table.returncode == 1, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["severity", "check", "subject", "message"]
    assert lines[-1] == "0 critical, 1 warning"
    assert any(line.startswith("warning   runway") for line in lines)
    doc = json.loads(cli("check", "--dsn", db_dsn, "--format", "json").stdout)
    assert doc["summary"]["exit_code"] == 1
    assert [f["check"] for f in doc["findings"] if f["severity"] == "warning"] == ["runway"]


def test_check_unreachable_is_critical_and_one_line() -> None:
    result = cli("check", "--dsn", "postgresql://u:s3cret-pw@127.0.0.1:9/db", "--connect-timeout", "2")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("partitiond: cannot connect")
    assert "s3cret-pw" not in result.stdout + result.stderr
    doc = json.loads(
        cli(
            "check", "--format", "json", "--dsn", "postgresql://u@127.0.0.1:9/db", "--connect-timeout", "2"
        ).stdout
    )
    assert doc["summary"] == {"ok": 0, "info": 0, "warning": 0, "critical": 1, "exit_code": 2}
    assert doc["findings"][0]["check"] == "connection"
