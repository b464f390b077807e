"""The SQL partitiond ships, and how it is put into a database.

The ``.sql`` files are package data (``sql/`` at the top of a checkout, ``partitiond/sql`` inside a wheel),
never strings in Python.  They use unqualified names: the installer points ``search_path`` at the target
schema for one transaction, and every function pins that path with ``SET search_path FROM CURRENT``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import psycopg
from psycopg import sql

# Bump whenever anything under sql/functions/ changes; run/check compare it with the installed marker.
SQL_VERSION = 4
VERSION_MARKER = f"partitiond sql-version {SQL_VERSION}"
ENSURE_SIGNATURE = "ensure_gateway_parts_v4(integer, bigint, bigint)"
# What the executor calls besides the ensure: its lock-free existence check, its pre-flight look at who holds
# the locks a band needs, and its staged creation path (stage, warm, attach under key 5, clean up).
EXECUTOR_SIGNATURES = (
    "partitiond_band_exists(integer, bigint, bigint)",
    "partitiond_preflight(integer, bigint, boolean)",
    "partitiond_stage_table(integer, bigint, bigint, boolean)",
    "partitiond_warm(integer, integer)",
    "partitiond_attach_staged(integer, bigint, bigint, boolean)",
    "partitiond_unstage(integer, bigint)",
)


def sql_root() -> Path:
    """Directory holding ``schema/`` and ``functions/``: inside the wheel, else the source checkout."""
    packaged = Path(__file__).parent / "sql"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "sql"


def _read_dir(name: str) -> str:
    files = sorted((sql_root() / name).glob("*.sql"))
    if not files:
        raise FileNotFoundError(f"no SQL files under {sql_root() / name}")
    return "\n".join(f.read_text(encoding="utf-8") for f in files)


def _grants(schema: str, roles: Sequence[str]) -> str:
    """What partitiond's runtime role needs: the schema, the executor's entry points, the vector clock."""
    functions = sql.SQL(", ").join(sql.SQL(sig) for sig in (ENSURE_SIGNATURE, *EXECUTOR_SIGNATURES))
    statements = [
        sql.SQL(
            "GRANT USAGE ON SCHEMA {schema} TO {role};\n"
            "GRANT EXECUTE ON FUNCTION {functions} TO {role};\n"
            "GRANT SELECT ON gateway_envelopes_latest TO {role};"
        ).format(schema=sql.Identifier(schema), functions=functions, role=sql.Identifier(role))
        for role in roles
    ]
    return "\n".join(s.as_string() for s in statements)


def _functions_body(schema: str, security_definer: bool, grant_to: Sequence[str]) -> str:
    marker = sql.SQL("COMMENT ON FUNCTION {sig} IS {marker};").format(
        sig=sql.SQL(ENSURE_SIGNATURE), marker=sql.Literal(VERSION_MARKER)
    )
    parts = [_read_dir("functions"), marker.as_string()]
    if security_definer:
        parts.append(_read_dir("privileges"))
    parts.append(_grants(schema, grant_to))
    return "\n".join(parts)


def functions_script(
    schema: str = "public", security_definer: bool = False, grant_to: Sequence[str] = ()
) -> str:
    """The whole install as a DBA would apply it with psql: one transaction, search_path set for it."""
    path = sql.SQL("SET LOCAL search_path = {}, pg_temp;").format(sql.Identifier(schema)).as_string()
    return f"BEGIN;\n{path}\n{_functions_body(schema, security_definer, grant_to)}\nCOMMIT;\n"


def schema_script() -> str:
    """The xmtpd-shaped tables and legacy v3 functions: tests and the demo only, never production."""
    return _read_dir("schema")


def _apply(conn: psycopg.Connection[object], script: str, schema: str) -> None:
    with conn.transaction():
        conn.execute("SELECT set_config('search_path', quote_ident(%s) || ', pg_temp', true)", [schema])
        conn.execute(script.encode())


def install_functions(
    conn: psycopg.Connection[object],
    schema: str = "public",
    security_definer: bool = False,
    grant_to: Sequence[str] = (),
) -> None:
    """Install or upgrade the function family idempotently, in one transaction (all or nothing)."""
    _apply(conn, _functions_body(schema, security_definer, grant_to), schema)


def install_schema(conn: psycopg.Connection[object], schema: str = "public") -> None:
    """Create the xmtpd-shaped tables (test/demo databases only)."""
    _apply(conn, schema_script(), schema)
