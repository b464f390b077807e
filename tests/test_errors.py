"""Errors, not tracebacks: every command run as a role without its grants, or against a catalog that lacks
a table or function, says in one line what is missing and how to fix it, with exit code 4 (``check``: 2).

The role here can log in and connect, nothing more: the functions are installed SECURITY DEFINER (revoked
from PUBLIC) by the owner of the tables, without ``--grant-to``.
"""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from partitiond import access, pipeline, sqlfiles
from partitiond.cluster import LocalCluster

from .pgtools import Conn, partition_count, seed_rows
from .test_cli import cli
from .test_daemon import start_daemon, wait_for

SECRET = "hunter2-not-for-logs"


@dataclass
class Ungranted:
    owner_dsn: str
    runtime_dsn: str  # carries a password (ignored: the test cluster trusts local connections)
    owner: str
    runtime: str


@pytest.fixture
def ungranted(pg_cluster: LocalCluster) -> Iterator[Ungranted]:
    """A database owned by ``owner`` whose only other user, ``runtime``, has LOGIN and CONNECT."""
    tag = uuid.uuid4().hex[:8]
    db, owner, runtime = f"err_{tag}", f"xmtpd_{tag}", f"partitiond_{tag}"
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(owner)))
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(runtime), SECRET))
        admin.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(db), sql.Identifier(owner))
        )
        admin.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(sql.Identifier(db)))
        admin.execute(
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(db), sql.Identifier(runtime))
        )
    with psycopg.connect(pg_cluster.dsn(db), autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(owner)))
        admin.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")  # PostgreSQL 15's default, made explicit
    owner_dsn = f"{pg_cluster.dsn(db)} user={owner}"
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        sqlfiles.install_schema(conn)  # as xmtpd's migrations would: the owner role owns every table
    installed = cli("install-sql", "--dsn", owner_dsn, "--security-definer")
    assert installed.returncode == 0, installed.stderr
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        seed_rows(conn, 100, [800_000])  # the next band is due: a pass would create it
    try:
        yield Ungranted(owner_dsn, f"{pg_cluster.dsn(db)} user={runtime} password={SECRET}", owner, runtime)
    finally:
        with psycopg.connect(pg_cluster.dsn(), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(db)))
            for role in (runtime, owner):
                admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def said(stderr: str) -> str:
    """The one ``partitiond: …`` line; every other line must be a structured log event."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr
    ours = [line for line in lines if line.startswith("partitiond: ")]
    assert len(ours) == 1, stderr
    for line in lines:
        if line not in ours:
            assert "event" in json.loads(line), line
    return ours[0]


def created(owner_dsn: str) -> int:
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        return partition_count(conn)


# (arguments, exit code, only the one line on stderr: run-once also logs its failure as a JSON event)
WITHOUT_GRANTS = {
    "plan": (["plan"], 4, True),
    "status": (["status"], 4, True),
    "status json": (["status", "--format", "json"], 4, True),
    "run-once --dry-run": (["run-once", "--dry-run"], 4, True),
    "run-once": (["run-once", "--originator", "200"], 4, False),
    "check": (["check"], 2, True),
}


@pytest.mark.parametrize(("args", "code", "alone"), WITHOUT_GRANTS.values(), ids=WITHOUT_GRANTS.keys())
def test_a_role_without_grants_gets_one_line_naming_the_grant(
    ungranted: Ungranted, args: list[str], code: int, alone: bool
) -> None:
    before = created(ungranted.owner_dsn)
    result = cli(*args, "--dsn", ungranted.runtime_dsn, env={"PARTITIOND_LOG_FORMAT": "json"})
    assert result.returncode == code, result.stderr
    line = said(result.stderr)
    if alone:
        assert result.stderr.strip() == line
    assert "gateway_envelopes_latest" in line
    assert f"`partitiond install-sql --security-definer --grant-to {ungranted.runtime}`" in line
    assert "run as the table owner" in line
    assert SECRET not in result.stdout + result.stderr
    assert created(ungranted.owner_dsn) == before


def test_the_daemon_keeps_running_and_logs_the_reason(ungranted: Ungranted, tmp_path: Path) -> None:
    """``run`` does not exit for a missing grant (it may be made while it runs): each run logs why it
    failed, in one structured line, and SIGTERM still ends it with 0."""
    log_path = tmp_path / "daemon.log"
    with log_path.open("w") as log:
        proc = start_daemon(
            ungranted.runtime_dsn,
            *("--interval", "1s", "--jitter", "0", "--probe-interval", "0", "--metrics-address", ""),
            log=log,
        )
    try:

        def failed_runs() -> list[dict[str, object]]:
            lines = log_path.read_text().splitlines()
            events = [json.loads(line) for line in lines if line.startswith("{")]
            return [e for e in events if e.get("event") == "run failed"]

        wait_for(lambda: len(failed_runs()) >= 2, 30, "two failed runs")
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()
    text = log_path.read_text()
    assert "Traceback" not in text and SECRET not in text
    assert all(line.startswith("{") for line in text.splitlines())
    reason = str(failed_runs()[0]["reason"])
    assert "permission denied for table gateway_envelopes_latest" in reason


def test_run_once_names_every_missing_grant_and_records_the_failure(
    ungranted: Ungranted, tmp_path: Path
) -> None:
    textfile = tmp_path / "partitiond.prom"
    result = cli(
        "run-once",
        "--dsn",
        ungranted.runtime_dsn,
        "--metrics-textfile",
        str(textfile),
        "--log-format",
        "json",
    )
    assert result.returncode == 4
    line = said(result.stderr)
    assert line.startswith(
        f"partitiond: role {ungranted.runtime} lacks SELECT on public.gateway_envelopes_latest "
    )
    assert "EXECUTE on public.ensure_gateway_parts_v4(integer, bigint, bigint)" in line
    [event] = [json.loads(x) for x in result.stderr.splitlines() if x.startswith("{")]
    assert (event["event"], event["exit_code"]) == ("run failed", 4)
    assert 'partitiond_runs_total{result="failed"} 1.0' in textfile.read_text()


def test_execute_missing_only_stops_the_passes_that_create(ungranted: Ungranted) -> None:
    """With the vector clock readable, plan and status work; run-once refuses before doing anything, even
    with nothing due (the grant would be missed exactly when a band is); check is critical: partitiond
    connecting as this role cannot create a band."""
    with psycopg.connect(ungranted.owner_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("GRANT SELECT ON gateway_envelopes_latest TO {}").format(
                sql.Identifier(ungranted.runtime)
            )
        )
    assert cli("plan", "--dsn", ungranted.runtime_dsn).returncode == 0
    assert cli("status", "--dsn", ungranted.runtime_dsn).returncode == 0
    for fill in ("0.7", "0.95"):  # a band due, and nothing due
        result = cli("run-once", "--dsn", ungranted.runtime_dsn, "--fill-threshold", fill)
        assert result.returncode == 4, result.stderr
        line = said(result.stderr)
        assert f"role {ungranted.runtime} lacks EXECUTE on public.ensure_gateway_parts_v4" in line
        assert "SELECT" not in line
    check = cli("check", "--dsn", ungranted.runtime_dsn, "--format", "json")
    assert check.returncode == 2
    [privileges] = [f for f in json.loads(check.stdout)["findings"] if f["check"] == "privileges"]
    assert privileges["severity"] == "critical" and privileges["subject"] == f"role {ungranted.runtime}"
    assert "lacks EXECUTE on public.ensure_gateway_parts_v4" in privileges["message"]

    granted = cli(
        "install-sql", "--dsn", ungranted.owner_dsn, "--security-definer", "--grant-to", ungranted.runtime
    )
    assert granted.returncode == 0, granted.stderr
    assert cli("run-once", "--dsn", ungranted.runtime_dsn).returncode == 0
    check = cli("check", "--dsn", ungranted.runtime_dsn, "--format", "json")
    assert check.returncode == 0, check.stdout
    [privileges] = [f for f in json.loads(check.stdout)["findings"] if f["check"] == "privileges"]
    assert privileges["severity"] == "ok"


def test_a_grant_on_the_columns_read_is_enough(ungranted: Ungranted) -> None:
    granted = cli(
        "install-sql", "--dsn", ungranted.owner_dsn, "--security-definer", "--grant-to", ungranted.runtime
    )
    assert granted.returncode == 0, granted.stderr
    with psycopg.connect(ungranted.owner_dsn, autocommit=True) as conn:
        role = sql.Identifier(ungranted.runtime)
        conn.execute(sql.SQL("REVOKE SELECT ON gateway_envelopes_latest FROM {}").format(role))
        conn.execute(
            sql.SQL(
                "GRANT SELECT (originator_node_id, originator_sequence_id) ON gateway_envelopes_latest TO {}"
            ).format(role)
        )
    result = cli("run-once", "--dsn", ungranted.runtime_dsn)
    assert result.returncode == 0, result.stderr


def test_install_sql_by_a_role_that_may_not_install_says_whom_to_run_it_as(ungranted: Ungranted) -> None:
    result = cli("install-sql", "--dsn", ungranted.runtime_dsn)
    assert result.returncode == 2
    line = said(result.stderr)
    assert line == (
        "partitiond: install failed, nothing changed: permission denied for schema public: run it as the "
        "owner of the envelope tables in schema public (xmtpd's migration role)"
    )


# --- catalog errors -------------------------------------------------------------------------------------

# gateway_envelopes_latest replaced by a view whose function fails the way a catalog changing under
# partitiond's feet does (a table or function dropped between the catalog read and the query).
VANISHED = {
    "table": (
        "RETURN QUERY SELECT * FROM public.gateway_envelopes_gone;",
        'relation "public.gateway_envelopes_gone"',
    ),
    "function": (
        "PERFORM public.partitiond_gone(); RETURN;",
        "function public.partitiond_gone() does not exist",
    ),
}


@pytest.mark.parametrize("what", VANISHED)
@pytest.mark.parametrize("command", [["plan"], ["status"], ["run-once", "--dry-run"]])
def test_a_vanished_table_or_function_is_exit_4_with_what_to_check(
    conn: Conn, db_dsn: str, what: str, command: list[str]
) -> None:
    body, says = VANISHED[what]
    conn.execute("ALTER TABLE gateway_envelopes_latest RENAME TO gateway_envelopes_latest_real")
    conn.execute(
        "CREATE FUNCTION public.latest_rows()"
        " RETURNS TABLE (originator_node_id int, originator_sequence_id bigint)"
        f" LANGUAGE plpgsql AS $$ BEGIN {body} END $$"
    )
    conn.execute("CREATE VIEW gateway_envelopes_latest AS SELECT * FROM public.latest_rows()")
    result = cli(*command, "--dsn", db_dsn)
    assert result.returncode == 4
    line = said(result.stderr)
    assert result.stderr.strip() == line
    assert says in line
    if what == "function":
        assert line.endswith(
            "install or upgrade partitiond's functions with `partitiond install-sql` run as the table owner"
        )
    else:
        assert "check that --schema public is the schema of xmtpd's envelope tables" in line


def test_other_database_errors_stay_exit_3(conn: Conn, db_dsn: str) -> None:
    conn.execute("ALTER TABLE gateway_envelopes_latest RENAME TO gateway_envelopes_latest_real")
    conn.execute(
        "CREATE VIEW gateway_envelopes_latest"
        " AS SELECT 1 / 0 AS originator_node_id, 1::bigint AS originator_sequence_id"
    )
    result = cli("plan", "--dsn", db_dsn)
    assert result.returncode == 3
    assert said(result.stderr) == "partitiond: database error: division by zero"


# --- the mapping itself ---------------------------------------------------------------------------------


def real_error(conn: Conn, statement: str) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as caught:
        conn.execute(statement)
    return caught.value


def test_failure_maps_sqlstates_to_exit_codes_and_never_the_dsn(conn: Conn) -> None:
    cases = [
        (real_error(conn, "SELECT * FROM public.nope"), 4, 'relation "public.nope" does not exist: check'),
        (real_error(conn, "SELECT public.nope()"), 4, "function public.nope() does not exist: install"),
        (real_error(conn, "SELECT * FROM nowhere.t"), 4, 'relation "nowhere.t" does not exist'),
        (real_error(conn, "SELECT 1 / 0"), 3, "database error: division by zero"),
        (
            real_error(conn, "SELECT 'postgresql://u:pw-SECRET@h/d'::int"),
            3,
            'database error: invalid input syntax for type integer: "postgresql://u:***@h/d"',
        ),
    ]
    for exc, code, starts in cases:
        failure = access.failure(exc, "rt", "public")
        assert failure.exit_code == code
        assert str(failure).startswith(starts), str(failure)
        assert "pw-SECRET" not in str(failure)


def test_permission_message_names_the_role_and_the_schema(ungranted: Ungranted) -> None:
    with psycopg.connect(ungranted.runtime_dsn, autocommit=True) as conn:
        exc = real_error(conn, "SELECT * FROM gateway_envelopes_latest")
    unknown = access.failure(exc)
    assert unknown.exit_code == pipeline.EXIT_MISSING
    assert str(unknown) == (
        "permission denied for table gateway_envelopes_latest: grant the runtime role its privileges with "
        "`partitiond install-sql --security-definer --grant-to ROLE` run as the table owner"
    )
    elsewhere = access.failure(exc, "my role", "xmtpd data")
    assert "`partitiond install-sql --schema 'xmtpd data' --security-definer --grant-to 'my role'`" in str(
        elsewhere
    )


def test_privileges_read_needs_no_privilege(ungranted: Ungranted) -> None:
    with psycopg.connect(ungranted.runtime_dsn, autocommit=True) as conn:
        found = access.privileges(conn, "public")
    assert found.role == ungranted.runtime and found.usage and not found.absent
    assert found.unreadable == ("public.gateway_envelopes_latest",)
    assert set(found.not_executable) == {f"public.{sig}" for sig in access.ENTRY_POINTS}
    with psycopg.connect(ungranted.owner_dsn, autocommit=True) as conn:
        assert access.privileges(conn, "public").complete
        assert access.privileges(conn, "no_such_schema").lacks() == []  # the table check reports that
