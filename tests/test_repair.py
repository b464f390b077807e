"""`partitiond repair` against the real PostgreSQL: the keys xmtpd's pruner drops come back as xmtpd's schema
declares them, by the path the server's major allows, without queueing for a lock inserts need.

The expected catalog is a twin database with the same partitions whose keys were never dropped (its band
was removed with ``partitiond_drop_band``).  Behaviour that differs between majors is asserted per major.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import psycopg
import pytest
from click.testing import CliRunner

from partitiond import repair, repair_plan
from partitiond.cli import main
from partitiond.cluster import LocalCluster
from partitiond.config import Settings
from partitiond.executor import RetryBudget

from .conftest import TEMPLATE_DB, Roles, _create_db, _drop_db
from .pgtools import TREES, Conn, seed_rows, server_major
from .test_cli import cli

SIGNATURE = """
SELECT c.conrelid::regclass::text, c.confrelid::regclass::text,
       coalesce((SELECT p.conrelid::regclass::text || ' > ' || p.confrelid::regclass::text
                 FROM pg_constraint AS p WHERE p.oid = c.conparentid), '-') AS parent,
       CASE WHEN c.confrelid = 'gateway_envelopes_meta'::regclass OR c.conparentid = 0
            THEN c.conname::text ELSE '(clone)' END AS name,
       c.confdeltype::text, c.confupdtype::text, c.convalidated, c.conkey::text, c.confkey::text,
       c.conislocal, c.coninhcount, c.connoinherit, c.condeferrable
FROM pg_constraint AS c WHERE c.contype = 'f'
"""
TRIGGERS = """
SELECT t.tgrelid::regclass::text, p.proname::text, k.conrelid::regclass::text, k.confrelid::regclass::text,
       t.tgparentid <> 0, t.tgenabled::text, t.tgtype
FROM pg_trigger AS t JOIN pg_proc AS p ON p.oid = t.tgfoid JOIN pg_constraint AS k ON k.oid = t.tgconstraint
WHERE t.tgisinternal
"""
PRUNER = f"DROP TABLE IF EXISTS {TREES[0]}_o100_s0_1000000, {TREES[1]}_o100_s0_1000000 CASCADE"
ENVELOPE = (
    "WITH m AS (INSERT INTO gateway_envelopes_meta"
    " (originator_node_id, originator_sequence_id, topic, expiry) VALUES (200, %(seq)s, 't', 1))"
    " INSERT INTO gateway_envelopes_blob VALUES (200, %(seq)s, 'e')"
)


def lay_out(conn: Conn) -> None:
    """Two originators, four bands with rows, and a blockchain message; band 0 of originator 100 empty."""
    seed_rows(conn, 100, [10, 1_000_005, 1_000_006, 2_000_001])
    seed_rows(conn, 200, [5, 7])
    conn.execute("INSERT INTO blockchain_messages VALUES (1, 'h', 100, 1000005, true)")
    conn.execute(
        "DELETE FROM gateway_envelopes_meta"
        " WHERE originator_node_id = 100 AND originator_sequence_id < 1000000"
    )


@pytest.fixture
def pruned(conn: Conn) -> Conn:
    """xmtpd's pruner drops the empty band: DROP TABLE … CASCADE takes both top-level keys with it."""
    lay_out(conn)
    conn.execute(PRUNER)
    return conn


@pytest.fixture
def twin(pg_cluster: LocalCluster) -> Iterator[Conn]:
    """The same partitions, the band removed without CASCADE: the catalog xmtpd's schema has."""
    name = _create_db(pg_cluster, TEMPLATE_DB)
    try:
        with psycopg.connect(pg_cluster.dsn(name), autocommit=True) as conn:
            lay_out(conn)
            conn.execute("SELECT partitiond_drop_band(100, 0)")
            yield conn
    finally:
        _drop_db(pg_cluster, name)


def catalog(conn: Conn) -> tuple[set[tuple[object, ...]], set[tuple[object, ...]]]:
    """Every foreign-key constraint row and internal trigger, by tables (clones on the referenced side
    are numbered by PostgreSQL in creation order, so their names are left out)."""
    return set(conn.execute(SIGNATURE).fetchall()), set(conn.execute(TRIGGERS).fetchall())


def as_xmtpd_declares(conn: Conn, twin: Conn) -> None:
    """The repaired catalog is the twin's; on 18 exactly.  Two flags differ on 15-17, and only those:
    VALIDATE CONSTRAINT on blockchain_messages marks its top-level row valid but not the rows PostgreSQL
    keeps per meta partition (18 marks them too), and a blob leaf's key created on the leaf itself (the
    leaf-by-leaf path) keeps connoinherit = true once attached, where a cloned one has false.  Neither row
    is enforced or dumped on its own: the parent's key is."""
    (keys, triggers), (expected, expected_triggers) = catalog(conn), catalog(twin)
    assert triggers == expected_triggers
    if server_major(conn) < 18:
        unmarked = {k for k in keys - expected if k[0] == "blockchain_messages" and k[3] == "(clone)"}
        assert unmarked and all(k[6] is False for k in unmarked)
        local = {
            k for k in keys - expected if str(k[0]).startswith("gateway_envelopes_blob_o") and k[11] is True
        }
        keys = (keys - unmarked - local) | {(*k[:6], True, *k[7:]) for k in unmarked}
        keys |= {(*k[:11], False, *k[12:]) for k in local}
    assert keys == expected


def top_keys(conn: Conn) -> list[tuple[str, str, str, bool]]:
    rows = conn.execute(
        "SELECT conrelid::regclass::text, conname::text, confdeltype::text, convalidated FROM pg_constraint"
        " WHERE contype = 'f' AND conparentid = 0 AND confrelid = 'gateway_envelopes_meta'::regclass"
        " ORDER BY 1"
    ).fetchall()
    return [(str(a), str(b), str(c), bool(d)) for a, b, c, d in rows]


XMTPD_KEYS = [
    ("blockchain_messages", repair_plan.MESSAGES_KEY, "a", True),
    ("gateway_envelopes_blob", repair_plan.BLOB_KEY, "c", True),
]


def check_foreign_keys(dsn: str) -> list[str]:
    result = cli("check", "--dsn", dsn, "--format", "json")
    return [f["severity"] for f in json.loads(result.stdout)["findings"] if f["check"] == "foreign-keys"]


def expected_path(conn: Conn) -> str:
    return "not-valid" if server_major(conn) >= 18 else "leaf-by-leaf"


def test_the_pruned_keys_come_back_exactly_as_xmtpd_declares_them(
    pruned: Conn, twin: Conn, db_dsn: str
) -> None:
    assert check_foreign_keys(db_dsn) == ["critical", "critical"]
    before = catalog(pruned)

    dry = cli("repair", "--dsn", db_dsn)
    assert dry.returncode == 0, dry.stderr
    assert "dry run, nothing sent" in dry.stdout
    assert (
        f'ALTER TABLE "public"."gateway_envelopes_blob" ADD CONSTRAINT "{repair_plan.BLOB_KEY}"' in dry.stdout
    )
    assert f'"blockchain_messages" ADD CONSTRAINT "{repair_plan.MESSAGES_KEY}"' in dry.stdout
    assert "blocks: " in dry.stdout
    assert catalog(pruned) == before

    applied = cli("repair", "--dsn", db_dsn, "--apply", "--format", "json")
    assert applied.returncode == 0, applied.stderr
    report = json.loads(applied.stdout)
    assert report["path"] == expected_path(pruned)
    assert report["missing"] == ["gateway_envelopes_blob", "blockchain_messages"]
    assert report["missing_after"] == []
    assert {s["status"] for s in report["steps"]} == {"done"}
    locks = {s["lock"] for s in report["steps"]}
    assert locks == {"brief", "validate"}, "no step read rows while holding a lock inserts need"

    assert check_foreign_keys(db_dsn) == ["ok", "ok"]
    assert top_keys(pruned) == XMTPD_KEYS
    as_xmtpd_declares(pruned, twin)
    # the cascade is back, and so is the check on new rows
    pruned.execute("DELETE FROM gateway_envelopes_meta WHERE originator_sequence_id = 1000006")
    assert pruned.execute(
        "SELECT count(*) FROM gateway_envelopes_blob WHERE originator_node_id = 100"
    ).fetchone() == (2,)
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        pruned.execute("INSERT INTO gateway_envelopes_blob VALUES (200, 8, 'orphan')")

    again = cli("repair", "--dsn", db_dsn, "--apply")
    assert again.returncode == 0 and "nothing to repair" in again.stdout


def test_nothing_missing_is_nothing_to_repair(conn: Conn, db_dsn: str) -> None:
    lay_out(conn)
    before = catalog(conn)
    for args in ((), ("--apply",)):
        result = cli("repair", "--dsn", db_dsn, *args)
        assert result.returncode == 0, result.stderr
        assert "missing: none" in result.stdout and "nothing to repair" in result.stdout
    assert catalog(conn) == before


def test_a_key_left_not_valid_is_a_warning_until_repair_validates_it(conn: Conn, db_dsn: str) -> None:
    """A top-level key that exists but was never validated (a repair interrupted between its two steps, or
    one made by hand) is not ok: old rows were never checked.  blockchain_messages is a plain table, so
    this state exists on every major."""
    lay_out(conn)
    conn.execute(f"ALTER TABLE blockchain_messages DROP CONSTRAINT {repair_plan.MESSAGES_KEY}")
    conn.execute(
        f"ALTER TABLE blockchain_messages ADD CONSTRAINT {repair_plan.MESSAGES_KEY}"
        " FOREIGN KEY (originator_node_id, originator_sequence_id)"
        " REFERENCES gateway_envelopes_meta (originator_node_id, originator_sequence_id) NOT VALID"
    )
    result = cli("check", "--dsn", db_dsn, "--format", "json")
    [finding] = [
        f
        for f in json.loads(result.stdout)["findings"]
        if f["check"] == "foreign-keys" and f["subject"].startswith("blockchain_messages")
    ]
    assert finding["severity"] == "warning" and "NOT VALID" in finding["message"]
    assert cli("repair", "--dsn", db_dsn, "--apply").returncode == 0
    assert check_foreign_keys(db_dsn) == ["ok", "ok"]
    assert ("blockchain_messages", repair_plan.MESSAGES_KEY, "a", True) in top_keys(conn)


def interrupt(dsn: str) -> list[str]:
    """What an interrupted --apply leaves: every ADD … NOT VALID step done, nothing validated or attached."""
    settings = Settings(dsn=dsn, metrics_address="")
    with psycopg.connect(dsn, autocommit=True) as conn:
        the_plan = repair_plan.plan(repair.read_state(conn, "public"))
        first = [s for s in the_plan.steps if s.statement.as_string().endswith("NOT VALID")]
        outcomes = repair.apply(repair.Runner(conn, settings), first, RetryBudget(1))
    assert {o.status for o in outcomes} == {"done"}
    return [s.statement.as_string() for s in first]


def test_a_rerun_completes_what_an_interrupted_repair_left(pruned: Conn, twin: Conn, db_dsn: str) -> None:
    added = interrupt(db_dsn)
    leftovers = pruned.execute(
        "SELECT conrelid::regclass::text FROM pg_constraint WHERE contype = 'f' AND NOT convalidated"
        " AND conname IN (%s, %s) AND confrelid = 'gateway_envelopes_meta'::regclass ORDER BY 1",
        [repair_plan.BLOB_KEY, repair_plan.MESSAGES_KEY],
    ).fetchall()
    leaves = 3 + 1  # originator 100's two bands left and 200's one, and blockchain_messages
    if server_major(pruned) >= 18:
        assert len(added) == 2  # the parent NOT VALID, with a NOT VALID child on every L1 and leaf
        assert len(leftovers) == 1 + 2 + leaves
    else:
        assert len(added) == leaves and len(leftovers) == leaves
    result = cli("repair", "--dsn", db_dsn, "--apply", "--format", "json")
    assert result.returncode == 0, result.stderr
    statements = [s["statement"] for s in json.loads(result.stdout)["steps"]]
    assert not [s for s in statements if s.endswith("NOT VALID")], "the NOT VALID keys were reused"
    assert any("VALIDATE CONSTRAINT" in s for s in statements)
    assert top_keys(pruned) == XMTPD_KEYS
    as_xmtpd_declares(pruned, twin)


def insert_waits(conn: Conn) -> bool:
    """Whether an envelope insert (meta and blob in one statement) would wait (200 ms at most)."""
    with conn.transaction():
        conn.execute("SET LOCAL lock_timeout = '200ms'")
        try:
            with conn.transaction():
                conn.execute(ENVELOPE, {"seq": 9})
                raise psycopg.Rollback()
        except psycopg.errors.LockNotAvailable:
            return True
    return False


def test_validating_a_leaf_lets_envelope_inserts_through(pruned: Conn, db_dsn: str) -> None:
    """The steps that read rows hold nothing an insert waits for: a validation left open in a transaction,
    and an insert into the same originator's band goes through."""
    settings = Settings(dsn=db_dsn, metrics_address="")
    with psycopg.connect(db_dsn, autocommit=True) as runner:
        steps = repair_plan.plan(repair.read_state(runner, "public")).steps
        at = next(
            i
            for i, s in enumerate(steps)
            if s.lock == "validate" and "gateway_envelopes_blob_o200_s0" in s.statement.as_string()
        )
        done = repair.apply(repair.Runner(runner, settings), steps[:at], RetryBudget(1))
        assert {o.status for o in done} == {"done"}
        with psycopg.connect(db_dsn) as validating:
            validating.execute(steps[at].statement)
            assert not insert_waits(pruned)
            validating.rollback()


def test_a_busy_lock_defers_without_queueing_and_a_rerun_completes(pruned: Conn, db_dsn: str) -> None:
    """An open insert transaction holds a lock the first step needs: repair waits at most the hold budget
    per attempt, gives up (exit 1, nothing changed), and completes once the transaction ends."""
    with psycopg.connect(db_dsn) as writer:
        writer.execute(ENVELOPE, {"seq": 9})  # open transaction: ROW EXCLUSIVE on both trees' band
        started = time.monotonic()
        result = cli("repair", "--dsn", db_dsn, "--apply", "--lock-attempts", "3", "--format", "json")
        assert result.returncode == 1, result.stderr
        assert time.monotonic() - started < 20
        report = json.loads(result.stdout)
        assert [s["status"] for s in report["steps"]][:2] == ["deferred", "not run"]
        assert report["steps"][0]["attempts"] == 3
        assert top_keys(pruned) == []
        writer.rollback()
    result = cli("repair", "--dsn", db_dsn, "--apply")
    assert result.returncode == 0, result.stderr
    assert top_keys(pruned) == XMTPD_KEYS


def test_the_blocking_path_is_refused_without_consent(
    pruned: Conn, twin: Conn, db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before 18, a tree past the per-leaf limit leaves only the plain ADD FOREIGN KEY, which makes inserts
    wait for the whole check: --apply refuses it (exit 2, nothing changed) and --allow-blocking runs it.
    18 never needs it."""
    monkeypatch.setattr(repair_plan, "LEAF_PAIR_LIMIT", 0)
    before = catalog(pruned)
    refused = CliRunner().invoke(main, ["repair", "--dsn", db_dsn, "--apply", "--format", "json"])
    report = json.loads(refused.stdout)
    if server_major(pruned) >= 18:
        assert refused.exit_code == 0 and report["path"] == "not-valid"
        return
    assert refused.exit_code == 2, refused.output
    assert report["path"] == "blocking" and report["refusal"].startswith("refused: ")
    assert "every envelope insert waits" in report["refusal"] and "estimated" in report["refusal"]
    assert catalog(pruned) == before
    allowed = CliRunner().invoke(main, ["repair", "--dsn", db_dsn, "--apply", "--allow-blocking"])
    assert allowed.exit_code == 0, allowed.output
    assert "[done in" in allowed.stdout
    assert top_keys(pruned) == XMTPD_KEYS
    as_xmtpd_declares(pruned, twin)


def test_the_runtime_role_is_told_to_run_it_as_the_owner(roles: Roles) -> None:
    installed = cli("install-sql", "--dsn", roles.owner_dsn, "--security-definer", "--grant-to", roles.daemon)
    assert installed.returncode == 0, installed.stderr
    with psycopg.connect(roles.owner_dsn, autocommit=True) as owner:
        lay_out(owner)
        owner.execute(PRUNER)
        result = cli("repair", "--dsn", roles.daemon_dsn, "--apply")
        assert result.returncode == 4, result.stderr
        assert "must be owner of table" in result.stderr and "run as their owner" in result.stderr
        assert "Traceback" not in result.stderr
        assert top_keys(owner) == []
        result = cli("repair", "--dsn", roles.owner_dsn, "--apply")
        assert result.returncode == 0, result.stderr
        assert top_keys(owner) == XMTPD_KEYS


def test_help_explains_the_command() -> None:
    result = cli("repair", "--help")
    assert result.returncode == 0
    assert "Example" in result.stdout and "--allow-blocking" in result.stdout and "--apply" in result.stdout
    assert "--hold-budget" in result.stdout and "--band-width" not in result.stdout
