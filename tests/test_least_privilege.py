"""The recommended least-privilege set-up, end to end with real roles.

xmtpd's migration role owns the tables and installs the functions as SECURITY DEFINER; partitiond connects
as a role that can only connect, use the schema, execute the two entry points and read the vector clock.
That role runs partitiond fully, yet cannot create or drop a table itself.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors, sql

from partitiond import sqlfiles

from .conftest import Roles
from .pgtools import TREES, l2_bounds, seed_rows, server_major
from .test_cli import cli


def test_a_role_with_only_execute_runs_partitiond_but_cannot_create_tables(roles: Roles) -> None:
    installed = cli("install-sql", "--dsn", roles.owner_dsn, "--security-definer", "--grant-to", roles.daemon)
    assert installed.returncode == 0, installed.stderr
    result = cli("run-once", "--dsn", roles.daemon_dsn, "--originator", "100", "--originator", "200")
    assert result.returncode == 0, result.stderr
    assert cli("status", "--dsn", roles.daemon_dsn).returncode == 0
    with psycopg.connect(roles.daemon_dsn, autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE public.sneaky (x int)")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("DROP TABLE gateway_envelopes_meta_o100_s0_1000000")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("SELECT partitiond_ensure_l1('gateway_envelopes_meta', 300)")  # helpers: not granted
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("INSERT INTO gateway_envelopes_latest VALUES (1, 1, now())")
    with psycopg.connect(roles.owner_dsn, autocommit=True) as conn:
        for tree in TREES:
            assert l2_bounds(conn, tree, 200) == ["FOR VALUES FROM ('0') TO ('1000000')"]
        owners = conn.execute(
            "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class"
            " WHERE relname LIKE 'gateway_envelopes_%_o%'"
        ).fetchall()
        assert owners == [(roles.owner,)]


def test_the_runtime_role_holds_no_privilege_on_any_table_of_the_schema(roles: Roles) -> None:
    """Besides reading the vector clock, nothing: on PostgreSQL 17 and later that includes MAINTAIN, the
    privilege that lets a role VACUUM, REINDEX or LOCK a table, which a lock-safe daemon must not hold."""
    installed = cli("install-sql", "--dsn", roles.owner_dsn, "--security-definer", "--grant-to", roles.daemon)
    assert installed.returncode == 0, installed.stderr
    assert cli("run-once", "--dsn", roles.daemon_dsn, "--originator", "100").returncode == 0
    with psycopg.connect(roles.owner_dsn, autocommit=True) as conn:
        kinds = ["SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"]
        kinds += ["MAINTAIN"] if server_major(conn) >= 17 else []
        held = conn.execute(
            "SELECT c.relname, k FROM pg_class AS c CROSS JOIN unnest(%s::text[]) AS k"
            " WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v')"
            "   AND has_table_privilege(%s, c.oid, k)",
            [kinds, roles.daemon],
        ).fetchall()
        tables = conn.execute(
            "SELECT count(*) FROM pg_class WHERE relname LIKE 'gateway_envelopes_%%_o100_s0_1000000'"
        ).fetchone()
    assert held == [("gateway_envelopes_latest", "SELECT")]
    assert tables == (2,), "the band was created, so the privileges were looked at after real work"
    with psycopg.connect(roles.daemon_dsn, autocommit=True) as conn:
        for table in ("gateway_envelopes_meta", "gateway_envelopes_blob_o100"):
            with pytest.raises(errors.InsufficientPrivilege), conn.transaction():
                conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(sql.Identifier(table)))


def test_security_definer_install_by_another_role_is_refused_whole(roles: Roles) -> None:
    result = cli("install-sql", "--dsn", roles.daemon_dsn, "--security-definer")
    assert result.returncode == 2
    assert "permission denied" in result.stderr or "must be run by the owner" in result.stderr
    with psycopg.connect(roles.owner_dsn, autocommit=True) as conn:
        found = conn.execute(
            "SELECT count(*) FROM pg_proc WHERE proname = 'ensure_gateway_parts_v4'"
        ).fetchone()
    assert found == (0,)


def test_printed_script_applies_with_psql_semantics(roles: Roles) -> None:
    script = sqlfiles.functions_script("public", security_definer=True, grant_to=[roles.daemon])
    with psycopg.connect(roles.owner_dsn, autocommit=True) as conn:
        conn.execute(script.encode())
        marker = conn.execute(
            "SELECT obj_description('ensure_gateway_parts_v4(int, bigint, bigint)'::regprocedure, 'pg_proc')"
        ).fetchone()
    assert marker == (sqlfiles.VERSION_MARKER,)
    assert cli("run-once", "--dsn", roles.daemon_dsn, "--originator", "7").returncode == 0


def test_a_role_with_only_execute_creates_the_next_band_through_the_staged_path(roles: Roles) -> None:
    """Under existing L1s partitiond stages the band before key 5 and attaches it under it: both steps
    must work through SECURITY DEFINER with nothing but the granted EXECUTE."""
    installed = cli("install-sql", "--dsn", roles.owner_dsn, "--security-definer", "--grant-to", roles.daemon)
    assert installed.returncode == 0, installed.stderr
    with psycopg.connect(roles.owner_dsn, autocommit=True) as conn:
        seed_rows(conn, 100, [800_000])  # 80 % into band 0: the next band is due
    result = cli("run-once", "--dsn", roles.daemon_dsn)
    assert result.returncode == 0, result.stderr
    with psycopg.connect(roles.owner_dsn, autocommit=True) as conn:
        for tree in TREES:
            assert l2_bounds(conn, tree, 100)[-1] == "FOR VALUES FROM ('1000000') TO ('2000000')"
        owners = conn.execute(
            "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class"
            " WHERE relname LIKE 'gateway_envelopes_%_o100_s1000000%'"
        ).fetchall()
        assert owners == [(roles.owner,)]
    with (
        psycopg.connect(roles.daemon_dsn, autocommit=True) as conn,
        pytest.raises(errors.InsufficientPrivilege),
    ):
        conn.execute("SELECT * FROM partitiond_lock_holders(100, 5)")  # a helper
