"""Bad input, table-driven: every row is one CLI invocation with its exit code and one-line message.

Each row runs ``python -m partitiond`` with a clean environment (``tests.test_cli.cli``) and asserts:
the exit code; that the expected text is on exactly one line (stderr, or stdout for ``check``'s report);
that stderr carries at most one human-readable message line (JSON log lines and click's "Usage:"/"Try"
lines aside) and never a traceback; that a secret never shows; and, where a database is involved, that
the partition count changed by exactly ``created`` (0: nothing was created).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import psycopg
import pytest

from partitiond.cluster import LocalCluster

from .pgtools import Conn, partition_count, seed_rows
from .test_cli import cli

NEAR_INT8_MAX = 9_223_372_036_854_000_001
SECRET = "hunter2-do-not-print"

Db = Literal["none", "db", "empty", "standby"]


@dataclass(frozen=True)
class Row:
    """One bad input.  ``args`` may use ``{dsn}``, ``{host}``, ``{port}``, ``{dbname}`` and ``{tmp}``."""

    id: str
    args: tuple[str, ...]
    exit_code: int
    message: str
    db: Db = "db"
    prepare: Callable[[Conn], None] | None = None
    files: Mapping[str, str | None] = field(default_factory=dict)  # name -> content, None: a directory
    created: int = 0
    secret: str | None = None
    stream: Literal["stderr", "stdout"] = "stderr"


def _sql(*statements: str) -> Callable[[Conn], None]:
    def run(conn: Conn) -> None:
        for statement in statements:
            conn.execute(statement.encode())

    return run


def _latest(oid: int, seq: int) -> Callable[[Conn], None]:
    """A vector-clock row without envelopes: xmtpd could not have stored one there either."""
    return _sql(f"INSERT INTO gateway_envelopes_latest VALUES ({oid}, {seq}, now())")


def _narrow_bands(conn: Conn) -> None:
    seed_rows(conn, 100, [10, 650_000], band_width=500_000)


def _conflict(conn: Conn) -> None:
    conn.execute("CREATE TABLE gateway_envelopes_meta_o150 (x int)")


ROWS: tuple[Row, ...] = (
    Row(
        "malformed DSN (password in it)",
        ("run-once", "--dsn", f"password={SECRET} host=127.0.0.1 dbname"),
        2,
        "DSN",
        db="none",
        secret=SECRET,
    ),
    Row(
        "unreachable host",
        ("run-once", "--dsn", f"postgresql://u:{SECRET}@127.0.0.1:9/db", "--connect-timeout", "2"),
        3,
        "cannot connect to PostgreSQL",
        db="none",
        secret=SECRET,
    ),
    Row(
        "check: unreachable host is critical",
        ("check", "--dsn", f"postgresql://u:{SECRET}@127.0.0.1:9/db", "--connect-timeout", "2"),
        2,
        "cannot connect to PostgreSQL",
        db="none",
        secret=SECRET,
    ),
    Row(
        "wrong password (real: pg_hba set to scram for pw_role)",
        ("run-once", "--dsn", f"postgresql://pw_role:{SECRET}@{{host}}:{{port}}/{{dbname}}"),
        3,
        'password authentication failed for user "pw_role"',
        secret=SECRET,
    ),
    Row(
        "wrong password substitute: unknown role + password (cluster trusts everyone)",
        ("run-once", "--dsn", f"postgresql://no_such_role:{SECRET}@{{host}}:{{port}}/{{dbname}}"),
        3,
        'role "no_such_role" does not exist',
        secret=SECRET,
    ),
    Row(
        "database does not exist",
        ("run-once", "--dsn", "host={host} port={port} user=postgres dbname=no_such_db"),
        3,
        'database "no_such_db" does not exist',
    ),
    Row(
        "tables missing",
        ("run-once", "--dsn", "{dsn}", "--originator", "1"),
        4,
        "not found in schema 'public'",
        db="empty",
    ),
    Row(
        "function missing",
        ("run-once", "--dsn", "{dsn}", "--originator", "1"),
        4,
        "partitiond install-sql",
        prepare=_sql("DROP FUNCTION ensure_gateway_parts_v4(int, bigint, bigint)"),
    ),
    Row(
        "function outdated",
        ("run-once", "--dsn", "{dsn}", "--originator", "1"),
        4,
        "are not the ones this partitiond ships (partitiond sql-version 0",
        prepare=_sql(
            "COMMENT ON FUNCTION ensure_gateway_parts_v4(int, bigint, bigint) IS 'partitiond sql-version 0';"
            "CREATE OR REPLACE FUNCTION partitiond_l2_name("
            "p_tree text, p_oid int, p_start bigint, p_end bigint)"
            " RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT p_tree $$"
        ),
    ),
    Row(
        "function replaced by someone else",
        ("run-once", "--dsn", "{dsn}", "--originator", "1"),
        4,
        "is not partitiond's",
        prepare=_sql(
            "CREATE OR REPLACE FUNCTION ensure_gateway_parts_v4(p_originator_node_id int,"
            " p_originator_sequence_id bigint, p_band_width bigint DEFAULT 1000000)"
            " RETURNS void LANGUAGE sql AS $$ SELECT $$"
        ),
    ),
    Row(
        "band width disagrees with existing partitions",
        ("run-once", "--dsn", "{dsn}", "--originator", "200"),
        2,
        "--band-width is 1,000,000 but partition",
        prepare=_narrow_bands,
    ),
    Row(
        "originator id outside int4",
        ("run-once", "--dsn", "{dsn}", "--originator", "2147483648"),
        2,
        "--originator must be a comma-separated list of originator ids from 0 to 2147483647 (e.g. 100,200), "
        'got "2147483648"',
    ),
    Row(
        "position near the bigint maximum: that originator is skipped with an error, exit 1",
        ("run-once", "--dsn", "{dsn}"),
        1,
        "exceeds the bigint maximum",
        prepare=_latest(300, NEAR_INT8_MAX),
    ),
    Row(
        "check: position near the bigint maximum is critical",
        ("check", "--dsn", "{dsn}"),
        2,
        "ends past the bigint maximum",
        prepare=_latest(300, NEAR_INT8_MAX),
        stream="stdout",
    ),
    Row(
        "negative position: that originator is skipped with an error, exit 1",
        ("run-once", "--dsn", "{dsn}"),
        1,
        "sequence id must be non-negative, got -5",
        prepare=_latest(400, -5),
    ),
    Row(
        "check: negative position is critical",
        ("check", "--dsn", "{dsn}"),
        2,
        "position -5 is negative",
        prepare=_latest(400, -5),
        stream="stdout",
    ),
    Row("interval 0", ("run-once", "--dsn", "{dsn}", "--interval", "0"), 2, "--interval must be"),
    Row(
        "fill threshold 1.5",
        ("run-once", "--dsn", "{dsn}", "--fill-threshold", "1.5"),
        2,
        "--fill-threshold must be",
    ),
    Row(
        "lock timeout 61s", ("run-once", "--dsn", "{dsn}", "--lock-timeout", "61s"), 2, "--lock-timeout must"
    ),
    Row(
        "statement timeout 0",
        ("run-once", "--dsn", "{dsn}", "--statement-timeout", "0"),
        2,
        "--statement-timeout must be",
    ),
    Row(
        "connect timeout 0.5s",
        ("run-once", "--dsn", "{dsn}", "--connect-timeout", "0.5"),
        2,
        "--connect-timeout must be",
    ),
    Row(
        "check: runway warning negative",
        ("check", "--dsn", "{dsn}", "--runway-warning", "-1m"),
        2,
        "--runway-warning must be",
    ),
    Row(
        "unknown config key",
        ("run-once", "--dsn", "{dsn}", "--config", "{tmp}/bad.toml"),
        2,
        'unknown key "band_widht"',
        files={"bad.toml": "band_widht = 5\n"},
    ),
    Row(
        "unreadable config file (a directory)",
        ("run-once", "--dsn", "{dsn}", "--config", "{tmp}/conf.d"),
        2,
        "cannot read config file",
        files={"conf.d": None},
    ),
    Row(
        "missing config file",
        ("run-once", "--dsn", "{dsn}", "--config", "{tmp}/absent.toml"),
        2,
        "No such file or directory",
    ),
    Row(
        "config file is not TOML",
        ("run-once", "--dsn", "{dsn}", "--config", "{tmp}/broken.toml"),
        2,
        "is not valid TOML",
        files={"broken.toml": "band_width = = 5\n"},
    ),
    Row(
        "schema name with a quote and a space",
        ("run-once", "--dsn", "{dsn}", "--schema", 'we"ird schema', "--originator", "1"),
        4,
        "not found in schema 'we\"ird schema'",
    ),
    Row(
        "check: schema name with a quote and a space",
        ("check", "--dsn", "{dsn}", "--schema", 'we"ird schema'),
        2,
        "not found in schema 'we\"ird schema'",
        stream="stdout",
    ),
    Row(
        "connected to a standby",
        ("run-once", "--dsn", "{dsn}", "--originator", "100"),
        3,
        "server is a standby",
        db="standby",
    ),
    Row(
        "check: a standby is checked read-only",
        ("check", "--dsn", "{dsn}", "--originator", "100"),
        0,
        "server is a standby: checking the replicated catalog read-only",
        db="standby",
        prepare=lambda conn: seed_rows(conn, 100, [5]),
        stream="stdout",
    ),
    Row(
        "a non-partition table holds a partition's name",
        ("run-once", "--dsn", "{dsn}", "--originator", "100", "--originator", "150", "--originator", "200"),
        1,
        "is in the way of a new partition",
        prepare=_conflict,
        created=8,  # originators 100 and 200: L1 + band 0, in both trees
    ),
)


def _human_lines(stderr: str) -> list[str]:
    """stderr lines meant for a person: not JSON log lines, not click's usage boilerplate."""
    lines = []
    for line in stderr.splitlines():
        if not line.strip() or line.startswith(("Usage:", "Try '")):
            continue
        if line.startswith("{"):
            try:
                json.loads(line)
                continue
            except ValueError:
                pass
        lines.append(line)
    return lines


def _shown(line: str) -> str:
    """The observed message of a line, for the report: a JSON log line shows its event and reason."""
    if line.startswith("{"):
        event = json.loads(line)
        counts = ", ".join(f"{k}={event[k]}" for k in ("planned", "created", "failed") if k in event)
        detail = event.get("error") or event.get("reason") or counts
        return f"[log] {event.get('event')}: {detail}".rstrip(": ")
    return line.strip()


@contextlib.contextmanager
def _scram_for(cluster: LocalCluster, role: str) -> Iterator[None]:
    """Make ``role`` authenticate with scram-sha-256 on this throwaway cluster (everyone else keeps trust)."""
    hba = cluster.data_dir / "pg_hba.conf"
    original = hba.read_text()
    with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
        admin.execute(f"DROP ROLE IF EXISTS {role}".encode())
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{SECRET}-right'".encode())
        hba.write_text(f"host all {role} 127.0.0.1/32 scram-sha-256\n{original}")
        admin.execute("SELECT pg_reload_conf()")
        _wait_for_password_auth(cluster, role)
        try:
            yield
        finally:
            hba.write_text(original)
            admin.execute("SELECT pg_reload_conf()")
            admin.execute(f"DROP ROLE IF EXISTS {role}".encode())


def _wait_for_password_auth(cluster: LocalCluster, role: str) -> None:
    dsn = f"host=127.0.0.1 port={cluster.port} user={role} dbname=postgres password=wrong"
    deadline = time.monotonic() + 10
    while True:
        try:
            psycopg.connect(dsn, connect_timeout=2).close()
        except psycopg.OperationalError as exc:
            if "password authentication failed" in str(exc):
                return
        if time.monotonic() > deadline:
            raise AssertionError("pg_hba.conf reload did not take effect")
        time.sleep(0.05)


@dataclass
class Setup:
    placeholders: dict[str, str]
    conn: Conn | None = None


@contextlib.contextmanager
def _database(row: Row, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    """Whatever the row needs: a fresh database (prepared), an empty one, a standby of one, or nothing."""
    setup = Setup({"tmp": str(tmp_path), "host": "127.0.0.1"})
    for name, content in row.files.items():
        if content is None:
            (tmp_path / name).mkdir()
        else:
            (tmp_path / name).write_text(content)
    if row.db == "none":
        yield setup
        return
    cluster: LocalCluster = request.getfixturevalue("pg_cluster")
    dsn: str = request.getfixturevalue("empty_db_dsn" if row.db == "empty" else "db_dsn")
    dbname = str(psycopg.conninfo.conninfo_to_dict(dsn)["dbname"])
    setup.placeholders.update(dsn=dsn, port=str(cluster.port), dbname=dbname)
    with contextlib.ExitStack() as stack:
        conn = stack.enter_context(psycopg.connect(dsn, autocommit=True))
        setup.conn = conn
        if row.prepare is not None:
            row.prepare(conn)
        if "pw_role" in " ".join(row.args):
            stack.enter_context(_scram_for(cluster, "pw_role"))
        if row.db == "standby":
            standby = cluster.clone_standby(Path(tempfile.mkdtemp(prefix="partitiond-standby-")))
            stack.callback(standby.destroy)
            setup.placeholders.update(dsn=standby.dsn(dbname), port=str(standby.port))
        yield setup


def _params() -> Iterator[Any]:
    for row in ROWS:
        marks = [pytest.mark.slow] if row.db == "standby" else []
        yield pytest.param(row, id=row.id, marks=marks)


@pytest.mark.parametrize("row", list(_params()))
def test_bad_input(row: Row, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    with _database(row, request, tmp_path) as setup:
        before = partition_count(setup.conn) if setup.conn is not None else None
        args = [arg.format(**setup.placeholders) for arg in row.args]
        result = cli(*args)
        after = partition_count(setup.conn) if setup.conn is not None else None
    out = result.stdout if row.stream == "stdout" else result.stderr
    hits = [line for line in out.splitlines() if row.message in line]
    human = _human_lines(result.stderr)
    last = result.stderr.splitlines()[-1:] or [""]
    observed = _shown(hits[0]) if hits else (human[0] if human else _shown(last[0]))
    print(f"MATRIX|{row.id}|{result.returncode}|{observed}")

    context = f"stdout={result.stdout!r}\nstderr={result.stderr!r}"
    assert result.returncode == row.exit_code, context
    if before is not None:
        assert after == before + row.created, context
    if row.secret is not None:
        assert row.secret not in result.stdout + result.stderr
    # message quality
    assert "Traceback" not in result.stderr, f"traceback on stderr\n{context}"
    assert len(hits) >= 1, f"{row.message!r} not in {row.stream}\n{context}"
    assert len(human) <= 1, f"more than one message line on stderr: {human}"
    if row.stream == "stderr" and human:
        assert row.message in human[0], f"the message line does not say {row.message!r}: {human[0]!r}"
