"""The SQL partitiond ships, and how it is put into a database.

The ``.sql`` files are package data (``sql/`` at the top of a checkout, ``partitiond/sql`` inside a wheel),
never strings in Python.  They use unqualified names: the installer points ``search_path`` at the target
schema for one transaction, and every function pins that path with ``SET search_path FROM CURRENT``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

# Bump whenever anything under sql/functions/ changes.  The marker (a comment on the ensure) is for people;
# whether the installed functions are partitiond's current ones is decided by a digest of their bodies
# (family_digest), which a CREATE OR REPLACE by anyone else changes while the comment survives.
SQL_VERSION = 8
VERSION_MARKER = f"partitiond sql-version {SQL_VERSION}"
ENSURE_SIGNATURE = "ensure_gateway_parts_v4(integer, bigint, bigint)"
# What the runtime role calls: the executor's ensure (never ensure_gateway_parts_v4, which others may
# replace), its lock-free existence check, its pre-flight look at who holds the locks a band needs, its
# staged creation path (stage, warm, wait out the blob L1's readers, attach under key 5, clean up),
# check's look at the schema's ACL, and `partitiond prune`'s two: the bands xmtpd's pruner would drop,
# and the safe drop of an empty band.
EXECUTOR_SIGNATURES = (
    "partitiond_ensure(integer, bigint, bigint)",
    "partitiond_band_exists(integer, bigint, bigint)",
    "partitiond_preflight(integer, bigint, boolean)",
    "partitiond_stage_table(integer, bigint, bigint, boolean)",
    "partitiond_warm(integer, integer)",
    "partitiond_tables_free(integer, boolean)",
    "partitiond_attach_staged(integer, bigint, bigint, boolean)",
    "partitiond_unstage(integer, bigint)",
    "partitiond_untrusted_creators()",
    "partitiond_drop_band(integer, bigint)",
    "partitiond_prunable_bands()",
)
_FUNCTION = re.compile(r"CREATE OR REPLACE FUNCTION (\w+)\(.*?\bAS \$\$(.*?)\$\$;", re.DOTALL)


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


@cache
def function_bodies() -> dict[str, str]:
    """Name -> body of every function the shipped SQL creates, exactly as PostgreSQL stores it (prosrc)."""
    return {m.group(1): m.group(2) for m in _FUNCTION.finditer(_read_dir("functions"))}


def family_digest(bodies: dict[str, str]) -> str:
    """SHA-256 over the bodies, name by name in byte order: what ``catalog.server_state`` computes from
    ``pg_proc`` for the same names, so the two are equal exactly when the installed bodies are these."""
    text = "\n".join(f"{name}\n{bodies[name]}" for name in sorted(bodies))
    return hashlib.sha256(text.encode()).hexdigest()


@cache
def shipped_digest() -> str:
    """The digest of the functions this version ships."""
    return family_digest(function_bodies())


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


def _preamble(schema: str, owner: str | None, replace_foreign: bool) -> list[sql.Composed | sql.SQL]:
    """What the install's transaction sets first: the path (objects go into ``schema``), the role that
    will own what is created, and the consent to replace someone else's ensure_gateway_parts_v4."""
    path = sql.SQL("SET LOCAL search_path = {}, pg_temp;").format(sql.Identifier(schema))
    steps: list[sql.Composed | sql.SQL] = [path]
    if owner:
        steps.append(sql.SQL("SET LOCAL ROLE {};").format(sql.Identifier(owner)))
    if replace_foreign:
        steps.append(sql.SQL("SET LOCAL partitiond.replace_foreign = on;"))
    return steps


def functions_script(
    schema: str = "public",
    security_definer: bool = False,
    grant_to: Sequence[str] = (),
    owner: str | None = None,
    replace_foreign: bool = False,
) -> str:
    """The whole install as a DBA would apply it with psql: one transaction, search_path set for it."""
    preamble = "\n".join(step.as_string() for step in _preamble(schema, owner, replace_foreign))
    return f"BEGIN;\n{preamble}\n{_functions_body(schema, security_definer, grant_to)}\nCOMMIT;\n"


@dataclass(frozen=True, slots=True)
class Installed:
    """What an earlier install left, which an upgrade keeps: SECURITY DEFINER, and who may execute."""

    security_definer: bool
    grantees: tuple[str, ...]


def installed(conn: psycopg.Connection[Any], schema: str) -> Installed | None:
    """The ensure already in ``schema`` (None if there is none): is it SECURITY DEFINER, and which roles
    besides its owner hold EXECUTE on it or on partitiond's entry points."""
    row = conn.execute(_INSTALLED, {"schema": schema}).fetchone()
    if row is None:
        return None
    return Installed(bool(row[0]), tuple(row[1] or ()))


_INSTALLED = """
SELECT COALESCE((SELECT q.prosecdef FROM pg_catalog.pg_proc AS q  -- partitiond's own, whoever replaced v4
                 WHERE q.pronamespace = p.pronamespace AND q.proname = 'partitiond_ensure'), p.prosecdef),
       (SELECT pg_catalog.array_agg(DISTINCT pg_catalog.pg_get_userbyid(a.grantee))
        FROM pg_catalog.pg_proc AS q, pg_catalog.aclexplode(q.proacl) AS a
        WHERE q.pronamespace = p.pronamespace
          AND (q.proname = 'ensure_gateway_parts_v4' OR q.proname LIKE 'partitiond\\_%%')
          AND a.privilege_type = 'EXECUTE' AND a.grantee <> 0 AND a.grantee <> q.proowner)
FROM pg_catalog.pg_proc AS p
JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace
WHERE n.nspname = %(schema)s AND p.proname = 'ensure_gateway_parts_v4'
  AND p.proargtypes = '23 20 20'::pg_catalog.oidvector
"""


def install_functions(
    conn: psycopg.Connection[Any],
    schema: str = "public",
    security_definer: bool | None = None,
    grant_to: Sequence[str] = (),
    owner: str | None = None,
    replace_foreign: bool = False,
) -> bool:
    """Install or upgrade the function family idempotently, in one transaction (all or nothing).

    An upgrade keeps what was installed: ``security_definer`` None means "as before" (SECURITY DEFINER
    stays SECURITY DEFINER), and every role that could execute the old entry points is granted the new
    ones too.  Returns whether the install is SECURITY DEFINER."""
    with conn.transaction():
        for step in _preamble(schema, owner, replace_foreign):
            conn.execute(step)
        before = installed(conn, schema)
        if security_definer is None:
            security_definer = before is not None and before.security_definer
        roles = sorted({*grant_to, *(before.grantees if before else ())})
        conn.execute(_functions_body(schema, security_definer, roles).encode())
    return security_definer


def install_schema(conn: psycopg.Connection[Any], schema: str = "public") -> None:
    """Create the xmtpd-shaped tables (test/demo databases only)."""
    with conn.transaction():
        conn.execute(_preamble(schema, None, False)[0])
        conn.execute(schema_script().encode())


def schema_script() -> str:
    """The xmtpd-shaped tables and legacy v3 functions: tests and the demo only, never production."""
    return _read_dir("schema")
