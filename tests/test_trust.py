"""The trust boundary of the shipped SQL: what a caller with EXECUTE, a role with CREATE on the schema, an
operator upgrading, or a migration of xmtpd's can and cannot do (real PostgreSQL, real roles)."""

from __future__ import annotations

import re

import psycopg
import pytest
from psycopg import errors, sql

from partitiond import sqlfiles
from partitiond.cluster import LocalCluster

from .conftest import Roles
from .pgtools import TREES, Conn, ensure_band, l2_bounds
from .test_cli import cli
from .test_daemon import start_daemon

WIDTH = 1_000_000
ENTRY_POINTS = {
    "ensure": "SELECT ensure_gateway_parts_v4(%s, %s, %s)",
    "internal ensure": "SELECT partitiond_ensure(%s, %s, %s)",
    "stage meta": "SELECT partitiond_stage_table(%s, %s, %s + %s, false)",
    "attach": "SELECT partitiond_attach_staged(%s, %s, %s + %s, true)",
}


def created(conn: Conn) -> list[str]:
    """Every table of the envelope trees and every staged table, by name."""
    rows = conn.execute(
        "SELECT relname FROM pg_class WHERE relname ~ '^(gateway_envelopes_(meta|blob)_o|partitiond_stage_)'"
        " ORDER BY 1"
    ).fetchall()
    return [str(r[0]) for r in rows]


def call(conn: Conn, entry: str, oid: int, start: int, width: int) -> None:
    args = (oid, start, width) if "ensure" in entry else (oid, start, start, width)
    conn.execute(ENTRY_POINTS[entry], args)


MISFITS = {
    "negative originator": (-5, 0, WIDTH, "no such band [0, 1000000) of originator -5"),
    "width 1": (100, WIDTH, 1, "is 1 wide, but the existing bands are 1000000 wide"),
    "width 7, new originator": (7, 7 * WIDTH, 7, "is 7 wide, but the existing bands are 1000000 wide"),
    "not aligned": (100, WIDTH // 2, WIDTH, "does not start at a multiple of its width"),
}
# The ensures derive the band start from a sequence id, so it is always aligned.
CASES = [
    (entry, case)
    for entry in ENTRY_POINTS
    for case in MISFITS
    if not (case == "not aligned" and entry.endswith("ensure"))
]


@pytest.mark.parametrize(("entry", "case"), CASES, ids=[f"{e}: {c}" for e, c in CASES])
def test_every_entry_point_refuses_a_band_that_does_not_fit(conn: Conn, entry: str, case: str) -> None:
    """Only overlaps used to be refused: a band of width 1 was accepted, after which every insert into the
    ids its neighbours could not cover failed with 23514 for good.  Now 22023, nothing created."""
    oid, start, width, says = MISFITS[case]
    ensure_band(conn, 100, 0)
    before = created(conn)
    with pytest.raises(errors.InvalidParameterValue, match=re.escape(says)):
        call(conn, entry, oid, start, width)
    assert created(conn) == before


# --- planted objects ------------------------------------------------------------------------------------

# Functions and an operator with signatures that match partitiond's calls better than the built-ins do (or
# exactly, for those pg_catalog has exactly): each records that it ran.
PLANTED = [
    "CREATE FUNCTION public.format(text, name, text) RETURNS text LANGUAGE sql"
    " AS $$ INSERT INTO public.hijacked VALUES ('format(text,name,text)') RETURNING 'x' $$",
    "CREATE FUNCTION public.format(text, text, text) RETURNS text LANGUAGE sql"
    " AS $$ INSERT INTO public.hijacked VALUES ('format(text,text,text)') RETURNING 'x' $$",
    "CREATE FUNCTION public.format(text, text) RETURNS text LANGUAGE sql"
    " AS $$ INSERT INTO public.hijacked VALUES ('format(text,text)') RETURNING 'x' $$",
    "CREATE FUNCTION public.left(text, integer) RETURNS text LANGUAGE sql"
    " AS $$ INSERT INTO public.hijacked VALUES ('left') RETURNING 'x' $$",
    "CREATE FUNCTION public.regexp_match(text, text) RETURNS text[] LANGUAGE sql"
    " AS $$ INSERT INTO public.hijacked VALUES ('regexp_match') RETURNING ARRAY['0', '1'] $$",
    "CREATE FUNCTION public.to_regclass(text) RETURNS regclass LANGUAGE sql"
    " AS $$ INSERT INTO public.hijacked VALUES ('to_regclass') RETURNING NULL::regclass $$",
    "CREATE FUNCTION public.partitiond_band_exists(smallint, integer, integer) RETURNS boolean LANGUAGE sql"
    " AS $$ INSERT INTO public.hijacked VALUES ('partitiond_band_exists') RETURNING true $$",
    "CREATE FUNCTION public.hijack_concat(integer, text) RETURNS text LANGUAGE sql"
    " AS $$ INSERT INTO public.hijacked VALUES ('||(integer,text)') RETURNING 'x' $$",
    "CREATE OPERATOR public.|| (LEFTARG = integer, RIGHTARG = text, FUNCTION = public.hijack_concat)",
]


def planted_by_mallory(roles: Roles, admin_dsn: str) -> str:
    """A role that was given CREATE on public plants the objects above; returns its name."""
    mallory = f"mallory_{roles.owner[-8:]}"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(mallory)))
        admin.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(mallory)))
        admin.execute("CREATE TABLE public.hijacked (what text)")
        admin.execute("GRANT ALL ON public.hijacked TO PUBLIC")
        admin.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(mallory)))
        for statement in PLANTED:
            admin.execute(statement)
    return mallory


def drop_role(admin_dsn: str, role: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_objects_planted_in_the_schema_never_run(roles: Roles, pg_cluster: LocalCluster) -> None:
    """A role with CREATE on public planted better-matching functions and an operator: partitiond's own
    queries and every function of the family (running as the table owner) still call the built-ins and its
    own functions, so every band is made, nothing planted runs and the foreign keys stay; `check` reports the
    writable schema as critical."""
    installed = cli("install-sql", "--dsn", roles.owner_dsn, "--security-definer", "--grant-to", roles.daemon)
    assert installed.returncode == 0, installed.stderr
    admin_dsn = roles.owner_dsn.replace(f"user={roles.owner}", "user=postgres")
    mallory = planted_by_mallory(roles, admin_dsn)
    try:
        for command in ("run-once", "plan", "status"):
            result = cli(command, "--dsn", roles.daemon_dsn, "--originator", "100", "--originator", "200")
            assert result.returncode == 0, (command, result.stderr)
        checked = cli("check", "--dsn", roles.daemon_dsn, "--originator", "100", "--originator", "200")
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            assert conn.execute("SELECT what FROM public.hijacked").fetchall() == []
            for oid in (100, 200):
                for tree in TREES:
                    assert l2_bounds(conn, tree, oid) == ["FOR VALUES FROM ('0') TO ('1000000')"]
            keys = conn.execute(
                "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND conparentid = 0"
                " AND confrelid = 'gateway_envelopes_meta'::regclass"
            ).fetchone()
        assert keys == (2,), "blob -> meta and blockchain_messages -> meta"
        assert checked.returncode == 2, checked.stdout
        assert f"writable by roles that do not own the envelope tables: {mallory}" in checked.stdout
    finally:
        drop_role(admin_dsn, mallory)


def test_a_security_definer_install_is_refused_while_others_can_create_in_the_schema(
    roles: Roles,
) -> None:
    admin_dsn = roles.owner_dsn.replace(f"user={roles.owner}", "user=postgres")
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
    result = cli("install-sql", "--dsn", roles.owner_dsn, "--security-definer", "--grant-to", roles.daemon)
    assert result.returncode != 0
    assert "REVOKE CREATE ON SCHEMA public FROM PUBLIC" in result.stderr
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT to_regproc('public.partitiond_ensure')").fetchone() == (None,)


# --- any schema ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("schema", ["xm", 'we"ird sch'])
def test_any_schema_name_works_end_to_end(roles: Roles, schema: str) -> None:
    """Install (SECURITY DEFINER, as the owner), run-once, plan, status and check, all in a schema other
    than public, one whose name needs quoting too: every call partitiond makes is schema-qualified."""
    with psycopg.connect(roles.owner_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        sqlfiles.install_schema(conn, schema)
    flags = ("--dsn", roles.owner_dsn, "--schema", schema)
    installed = cli("install-sql", *flags, "--security-definer", "--grant-to", roles.daemon)
    assert installed.returncode == 0, installed.stderr
    as_daemon = ("--dsn", roles.daemon_dsn, "--schema", schema, "--originator", "100")
    for command in ("run-once", "plan", "status", "check"):
        result = cli(command, *as_daemon)
        assert result.returncode == 0, (command, result.stdout, result.stderr)
    with psycopg.connect(roles.owner_dsn, autocommit=True) as conn:
        bands = conn.execute(
            "SELECT c.relname FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname LIKE 'gateway_envelopes_%%_o100_s0_1000000' ORDER BY 1",
            [schema],
        ).fetchall()
        elsewhere = conn.execute(
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace"
            " AND relname LIKE 'gateway_envelopes_%%_o100%%'"
        ).fetchone()
    assert bands == [("gateway_envelopes_blob_o100_s0_1000000",), ("gateway_envelopes_meta_o100_s0_1000000",)]
    assert elsewhere == (0,)


# --- ownership ------------------------------------------------------------------------------------------


def owners(conn: Conn) -> set[str]:
    rows = conn.execute(
        "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class"
        " WHERE relname ~ '^gateway_envelopes_(meta|blob)_o' AND relkind IN ('r', 'p')"
    ).fetchall()
    return {str(r[0]) for r in rows}


def test_a_security_definer_install_by_a_superuser_needs_the_owner_named(roles: Roles) -> None:
    """Run as postgres, the functions would belong to postgres and so would every partition they made,
    which xmtpd's own role could then neither drop nor attach to.  Refused; with --owner it installs as
    the owner."""
    admin_dsn = roles.owner_dsn.replace(f"user={roles.owner}", "user=postgres")
    refused = cli("install-sql", "--dsn", admin_dsn, "--security-definer", "--grant-to", roles.daemon)
    assert refused.returncode == 2, refused.stderr
    assert (
        f"must be run as the owner of gateway_envelopes_meta ({roles.owner}), not as postgres"
        in refused.stderr
    )
    assert f"--owner {roles.owner}" in refused.stderr
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT to_regproc('public.partitiond_ensure')").fetchone() == (None,)
    done = cli(
        "install-sql", "--dsn", admin_dsn, "--security-definer", "--grant-to", roles.daemon,
        "--owner", roles.owner,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert cli("run-once", "--dsn", roles.daemon_dsn, "--originator", "100").returncode == 0
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        function_owner = conn.execute(
            "SELECT DISTINCT pg_get_userbyid(proowner) FROM pg_proc WHERE proname LIKE 'partitiond\\_%'"
        ).fetchall()
        assert function_owner == [(roles.owner,)]
        assert owners(conn) == {roles.owner}


@pytest.mark.parametrize("path", ["ensure", "staged"])
def test_partitions_belong_to_the_tables_owner_whoever_creates_them(roles: Roles, path: str) -> None:
    """A plain install run by a superuser: the partitions it creates are still the table owner's."""
    admin_dsn = roles.owner_dsn.replace(f"user={roles.owner}", "user=postgres")
    assert cli("install-sql", "--dsn", admin_dsn).returncode == 0
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        if path == "staged":  # the L1s exist and the position is near the end: band 1 goes through staging
            conn.execute("SELECT ensure_gateway_parts_v4(100, 0, 1000000)")
            conn.execute("INSERT INTO gateway_envelopes_latest VALUES (100, 800000, now())")
        result = cli("run-once", "--dsn", admin_dsn, "--originator", "100")
        assert result.returncode == 0, result.stderr
        assert len(l2_bounds(conn, "gateway_envelopes_meta", 100)) >= (2 if path == "staged" else 1)
        assert owners(conn) == {roles.owner}


# --- upgrades -------------------------------------------------------------------------------------------


def security_definer(conn: Conn) -> set[bool]:
    rows = conn.execute(
        "SELECT DISTINCT prosecdef FROM pg_proc WHERE proname = 'partitiond_ensure'"
    ).fetchall()
    return {bool(r[0]) for r in rows}


def test_a_plain_upgrade_keeps_security_definer_and_the_grants(roles: Roles) -> None:
    """The README's upgrade command, run over a SECURITY DEFINER install, used to reset SECURITY DEFINER
    silently: the runtime role then failed every band while `check` said all was well."""
    first = cli("install-sql", "--dsn", roles.owner_dsn, "--security-definer", "--grant-to", roles.daemon)
    assert first.returncode == 0, first.stderr
    with psycopg.connect(roles.owner_dsn, autocommit=True) as conn:  # as if an older version lacked it
        conn.execute(
            sql.SQL("REVOKE EXECUTE ON FUNCTION partitiond_ensure(integer, bigint, bigint) FROM {}").format(
                sql.Identifier(roles.daemon)
            )
        )
    upgrade = cli("install-sql", "--dsn", roles.owner_dsn)
    assert upgrade.returncode == 0, upgrade.stderr
    assert "SECURITY DEFINER" in upgrade.stdout
    with psycopg.connect(roles.owner_dsn, autocommit=True) as conn:
        assert security_definer(conn) == {True}
    assert cli("run-once", "--dsn", roles.daemon_dsn, "--originator", "100").returncode == 0
    assert cli("check", "--dsn", roles.daemon_dsn, "--originator", "100").returncode == 0


def test_an_explicit_downgrade_is_reported_by_check(roles: Roles) -> None:
    """--no-security-definer is honoured, and `check`, run as the runtime role, says that role can no
    longer create a band (critical), instead of "0 critical"."""
    assert (
        cli(
            "install-sql", "--dsn", roles.owner_dsn, "--security-definer", "--grant-to", roles.daemon
        ).returncode
        == 0
    )
    down = cli("install-sql", "--dsn", roles.owner_dsn, "--no-security-definer")
    assert down.returncode == 0, down.stderr
    with psycopg.connect(roles.owner_dsn, autocommit=True) as conn:
        assert security_definer(conn) == {False}
    checked = cli("check", "--dsn", roles.daemon_dsn, "--originator", "100")
    assert checked.returncode == 2, checked.stdout
    assert "not SECURITY DEFINER" in checked.stdout


# --- someone else's ensure_gateway_parts_v4 ---------------------------------------------------------------

XMTPD_V4 = """CREATE OR REPLACE FUNCTION ensure_gateway_parts_v4(
    p_originator_node_id int, p_originator_sequence_id bigint, p_band_width bigint DEFAULT 1000000)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('xmtpd.ensure_gateway_parts'));
END $$"""


def test_a_replaced_ensure_is_detected_and_not_overwritten_without_consent(roles: Roles) -> None:
    """An xmtpd migration shipping its own ensure_gateway_parts_v4 (CREATE OR REPLACE keeps the OID, so the
    version comment survives): run-once refuses (exit 4), check is critical, install-sql will not overwrite
    it unless told to."""
    assert (
        cli(
            "install-sql", "--dsn", roles.owner_dsn, "--security-definer", "--grant-to", roles.daemon
        ).returncode
        == 0
    )
    with psycopg.connect(roles.owner_dsn, autocommit=True) as conn:
        conn.execute(XMTPD_V4)
    ran = cli("run-once", "--dsn", roles.daemon_dsn, "--originator", "100")
    assert ran.returncode == 4 and "is not partitiond's" in ran.stderr, ran.stderr
    daemon = start_daemon(roles.daemon_dsn, "--originator", "100", "--metrics-address", "")
    out, err = daemon.communicate(timeout=60)  # it stops by itself: waiting cannot fix this
    assert daemon.returncode == 4 and "is not partitiond's" in out + err
    checked = cli("check", "--dsn", roles.daemon_dsn, "--originator", "100")
    assert checked.returncode == 2 and "is not partitiond's" in checked.stdout
    refused = cli("install-sql", "--dsn", roles.owner_dsn)
    assert refused.returncode == 2, refused.stderr
    assert "--replace-foreign" in refused.stderr
    with psycopg.connect(roles.owner_dsn, autocommit=True) as conn:
        body = conn.execute("SELECT prosrc FROM pg_proc WHERE proname = 'ensure_gateway_parts_v4'").fetchone()
    assert body is not None and "partitiond_" not in str(body[0]), "left as it was"
    replaced = cli("install-sql", "--dsn", roles.owner_dsn, "--replace-foreign")
    assert replaced.returncode == 0, replaced.stderr
    assert cli("run-once", "--dsn", roles.daemon_dsn, "--originator", "100").returncode == 0


# --- the rule, statically ---------------------------------------------------------------------------------

# Words followed by "(" in SQL that are syntax, not function calls.
SYNTAX = {
    "in", "exists", "any", "all", "array", "values", "coalesce", "greatest", "least", "nullif", "extract",
    "cast", "if", "and", "or", "not", "on", "using", "as", "returns", "table", "from", "select", "where",
    "then", "else", "return", "perform", "char", "varchar", "numeric", "decimal", "row", "over", "filter",
    "recursive", "ordinality",
}  # fmt: skip


def code_only(sql_text: str) -> str:
    """The text with comments and string literals blanked out (one pass: either may contain the other's
    delimiter)."""
    out, i = [], 0
    while i < len(sql_text):
        if sql_text.startswith("--", i):
            i = sql_text.find("\n", i) % (len(sql_text) + 1)
        elif sql_text[i] == "'":
            end = i + 1
            while (end := sql_text.index("'", end)) + 1 < len(sql_text) and sql_text[end + 1] == "'":
                end += 2
            out.append("''")
            i = end + 1
        else:
            out.append(sql_text[i])
            i += 1
    return "".join(out)


def unqualified_calls(body: str) -> set[str]:
    """Names called as name(...) without a schema: not CTE or alias column lists (``x(col) AS (``,
    ``AS t(col)``), not partitiond's own functions."""
    code = code_only(body)
    code = re.sub(r"\b\w+(\s*\([^()]*\))?\s+AS\s+(NOT\s+)?(MATERIALIZED\s+)?\(", "(", code)  # WITH x(c) AS (
    code = re.sub(r"\bAS\s+\w+\s*\(", "(", code)  # AS t(col)
    calls = re.findall(r"(?<![\w.\"])([A-Za-z_]\w*)\s*\(", code)
    return {c for c in calls if c.lower() not in SYNTAX and not c.startswith("partitiond_")}


def test_every_built_in_called_by_the_shipped_sql_is_qualified() -> None:
    """The rule that makes a planted better-matching function harmless, checked over every function body
    and every DO block of sql/functions and sql/privileges (the types in signatures are not calls)."""
    texts = [*sqlfiles.function_bodies().values()]
    for directory in ("functions", "privileges"):
        for path in sorted((sqlfiles.sql_root() / directory).glob("*.sql")):
            texts += re.findall(r"DO \$\$(.*?)\$\$;", path.read_text(), re.DOTALL)
    found = {name for text in texts for name in unqualified_calls(text)}
    assert found == set(), f"call these as pg_catalog.<name>: {sorted(found)}"
    assert len(texts) > 20
