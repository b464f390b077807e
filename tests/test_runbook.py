"""The README's runbook: a section for every critical ``check`` finding, and SQL that does what it says.

The foreign-key statements are taken from the README itself and run against the real PostgreSQL after
xmtpd's pruner has dropped the keys; the locks they are documented to take are read from ``pg_locks`` while
they run, and an insert is shown to wait (or not) behind them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from partitiond.check import run_check
from partitiond.config import Settings

from .pgtools import TREES, Conn, seed_rows, server_major

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")
CHECK_SOURCES = ("check.py", "check_bands.py")
INSERT_META = (
    "INSERT INTO gateway_envelopes_meta (originator_node_id, originator_sequence_id, topic, expiry)"
    " VALUES (100, %s, 't', 1)"
)


def section(heading: str) -> str:
    """The text of one README section with its subsections: up to the next heading of its level or above."""
    level = len(heading) - len(heading.lstrip("#"))
    body = README.index(f"\n{heading}\n") + len(heading) + 2
    after = re.search(rf"^#{{1,{level}}} ", README[body:], re.M)
    assert after is not None
    return README[body : body + after.start()]


def sql_blocks(text: str) -> list[list[str]]:
    """Each ```sql block of ``text`` as its statements."""
    blocks = re.findall(r"```sql\n(.*?)```", text, re.S)
    return [[s.strip() for s in block.split(";") if s.strip()] for block in blocks]


def critical_checks() -> set[str]:
    """Every ``check`` name that ``partitiond check`` can report as critical, read from its source."""
    names = set()
    for source in CHECK_SOURCES:
        text = (REPO / "partitiond" / source).read_text(encoding="utf-8")
        names.update(re.findall(r'Finding\(\s*"critical",\s*"([a-z-]+)"', text))
    return names | {"connection", "database"}


def test_every_critical_check_has_a_runbook_section() -> None:
    names = critical_checks()
    assert {"foreign-keys", "current-band", "function", "privileges"} <= names
    runbook = section("### Runbook: critical `check` findings")
    headings = re.findall(r"^#### check (.+)$", README, re.M)
    for name in names:
        assert any(f"`{name}`" in h for h in headings), f"no runbook section for check {name}"
        assert f"`{name}`" in runbook


@pytest.fixture
def pruned(conn: Conn) -> Conn:
    """xmtpd's pruner on a band of originator 100: DROP TABLE … CASCADE takes both top-level keys."""
    seed_rows(conn, 100, [10, 1_000_005, 1_000_006])
    conn.execute("INSERT INTO blockchain_messages VALUES (1, 'h', 100, 1000005, true)")
    conn.execute("DELETE FROM gateway_envelopes_meta WHERE originator_sequence_id < 1000000")
    conn.execute(f"DROP TABLE {TREES[0]}_o100_s0_1000000, {TREES[1]}_o100_s0_1000000 CASCADE")
    return conn


def foreign_key_findings(dsn: str) -> list[str]:
    findings, _ = run_check(Settings(dsn=dsn, metrics_address=""), {})
    return [f.severity for f in findings if f.check == "foreign-keys"]


def fix_statements() -> list[str]:
    fix, _orphans = sql_blocks(section("#### check `foreign-keys`"))
    return fix


def test_the_runbook_sql_restores_the_foreign_keys(pruned: Conn, db_dsn: str) -> None:
    assert foreign_key_findings(db_dsn) == ["critical", "critical"]
    _fix, orphans = sql_blocks(section("#### check `foreign-keys`"))
    pruned.execute("INSERT INTO gateway_envelopes_blob VALUES (100, 1000007, 'orphan')")
    assert [pruned.execute(q).fetchall() for q in orphans] == [[(100, 1000007)], []]
    pruned.execute("DELETE FROM gateway_envelopes_blob WHERE originator_sequence_id = 1000007")
    for statement in fix_statements():
        pruned.execute(statement)
    assert foreign_key_findings(db_dsn) == ["ok", "ok"]
    # the cascade is back, and blockchain_messages refuses an envelope that does not exist
    pruned.execute("DELETE FROM gateway_envelopes_meta WHERE originator_sequence_id = 1000006")
    row = pruned.execute("SELECT count(*) FROM gateway_envelopes_blob").fetchone()
    assert row == (1,)
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        pruned.execute("INSERT INTO blockchain_messages VALUES (2, 'h', 100, 1000999, true)")


@pytest.fixture
def sessions(db_dsn: str) -> Iterator[tuple[Conn, Conn]]:
    """A session that runs a runbook statement in an open transaction, and one that watches it."""
    with psycopg.connect(db_dsn) as runner, psycopg.connect(db_dsn, autocommit=True) as watcher:
        yield runner, watcher
        runner.rollback()


def locks_of(watcher: Conn, pid: int) -> dict[str, set[str]]:
    rows = watcher.execute(
        "SELECT c.relname, l.mode FROM pg_locks AS l JOIN pg_class AS c ON c.oid = l.relation"
        " WHERE l.pid = %s AND l.granted AND c.relkind IN ('r', 'p')",
        [pid],
    ).fetchall()
    found: dict[str, set[str]] = {}
    for name, mode in rows:
        found.setdefault(str(name), set()).add(str(mode))
    return found


def tree(watcher: Conn, parent: str) -> set[str]:
    rows = watcher.execute("SELECT relid::regclass::text FROM pg_partition_tree(%s)", [parent]).fetchall()
    return {str(r[0]) for r in rows}


def insert_waits(watcher: Conn, statement: str, params: list[object]) -> bool:
    """Whether ``statement`` would wait for a lock (given 200 ms, it does not wait longer)."""
    with watcher.transaction():
        watcher.execute("SET LOCAL lock_timeout = '200ms'")
        try:
            with watcher.transaction():
                watcher.execute(statement, params)
        except psycopg.errors.LockNotAvailable:
            return True
    return False


def test_adding_the_blob_key_locks_both_trees_against_inserts(
    pruned: Conn, sessions: tuple[Conn, Conn]
) -> None:
    """SHARE ROW EXCLUSIVE on every table of both trees for the whole statement: inserts wait, reads go on."""
    runner, watcher = sessions
    set_timeout, add_blob_key, *_ = fix_statements()
    runner.execute(set_timeout)
    runner.execute(add_blob_key)
    held = locks_of(watcher, runner.info.backend_pid)
    for table in tree(watcher, TREES[0]) | tree(watcher, TREES[1]):
        assert "ShareRowExclusiveLock" in held.get(table, set()), (table, held.get(table))
    assert insert_waits(watcher, INSERT_META, [1_000_100])
    assert watcher.execute(f"SELECT count(*) FROM {TREES[1]}").fetchone() == (2,)


def test_validating_the_blockchain_messages_key_does_not_block_inserts(
    pruned: Conn, sessions: tuple[Conn, Conn]
) -> None:
    runner, watcher = sessions
    set_timeout, _blob, add_unvalidated, validate = fix_statements()
    assert "NOT VALID" in add_unvalidated and "VALIDATE CONSTRAINT" in validate
    runner.execute(set_timeout)
    runner.execute(add_unvalidated)  # no row is checked, but for a moment inserts would wait
    adding = locks_of(watcher, runner.info.backend_pid)
    for table in ("blockchain_messages", TREES[0]):
        assert "ShareRowExclusiveLock" in adding[table], adding
    runner.commit()
    runner.execute(validate)
    held = locks_of(watcher, runner.info.backend_pid)
    assert "ShareUpdateExclusiveLock" in held["blockchain_messages"], held
    assert {name for name, modes in held.items() if "ShareUpdateExclusiveLock" in modes} == {
        "blockchain_messages"
    }
    assert set().union(*held.values()) <= {"AccessShareLock", "RowShareLock", "ShareUpdateExclusiveLock"}
    assert not insert_waits(watcher, INSERT_META, [1_000_100])
    assert not insert_waits(watcher, "INSERT INTO gateway_envelopes_blob VALUES (100, %s, 'e')", [1_000_100])
    assert not insert_waits(
        watcher, "INSERT INTO blockchain_messages VALUES (3, 'h', 100, %s, true)", [1_000_100]
    )


def test_not_valid_on_the_partitioned_blob_table_is_refused_before_postgresql_18(conn: Conn) -> None:
    """The runbook's claim, per major: before 18 the blob key cannot be added NOT VALID (and checked
    later), so restoring it means one blocking statement; 18 accepts it."""
    conn.execute(
        "ALTER TABLE gateway_envelopes_blob"
        " DROP CONSTRAINT gateway_envelope_blobs_originator_node_id_originator_seque_fkey"
    )
    add = (
        "ALTER TABLE gateway_envelopes_blob ADD CONSTRAINT blob_meta_fkey"
        " FOREIGN KEY (originator_node_id, originator_sequence_id)"
        " REFERENCES gateway_envelopes_meta (originator_node_id, originator_sequence_id)"
        " ON DELETE CASCADE NOT VALID"
    )
    if server_major(conn) >= 18:
        conn.execute(add)
        row = conn.execute(
            "SELECT convalidated FROM pg_constraint WHERE conname = 'blob_meta_fkey'"
        ).fetchone()
        assert row == (False,)
    else:
        with pytest.raises(psycopg.errors.WrongObjectType, match="not yet supported on partitioned tables"):
            conn.execute(add)
    assert "PostgreSQL 15\u201317 cannot add it `NOT VALID`" in section("#### check `foreign-keys`")
