"""What partitiond's database role may do, and the one line to print when it may not.

Every command turns a permission error (SQLSTATE 42501) or a catalog error (42P01 undefined table, 42883
undefined function, 3F000 undefined schema) into one line naming what is missing and the command that
fixes it, with exit code 4 (``EXIT_MISSING``: required function, tables or privileges missing); any other
database error is exit 3, as in a pass.  :func:`failure` is that mapping, the one place it is made.

:func:`preflight` asks the catalog up front what the role lacks for a pass (``queries/privileges.sql``), so
``run-once`` names every missing grant at once, and does so even when no band is due; ``check`` reports
the same facts as a finding.  Messages never contain the DSN: they are built from the server's message,
the role name and the schema, and pass through :func:`partitiond.dsn.redact` anyway.
"""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

# Module import, not names: pipeline may import this module too.
from partitiond import catalog, pipeline, sqlfiles
from partitiond.config import Settings
from partitiond.dsn import redact

PERMISSION_DENIED = "42501"
UNDEFINED_FUNCTION = "42883"
UNDEFINED_TABLE = "42P01"
UNDEFINED_SCHEMA = "3F000"
# Every function the executor calls: what --grant-to grants EXECUTE on.
ENTRY_POINTS = (sqlfiles.ENSURE_SIGNATURE, *sqlfiles.EXECUTOR_SIGNATURES)
UNTRUSTED_CREATORS = "partitiond_untrusted_creators()"
# At most this many objects are named in a message; the rest are counted.
NAMED = 2


def grant_command(role: str | None, schema: str) -> str:
    """The command that gives ``role`` (``ROLE`` when unknown) what partitiond needs, as the table owner."""
    return _install_command(schema, "--security-definer", "--grant-to", role or "ROLE")


def _install_command(schema: str, *flags: str) -> str:
    words = ["partitiond", "install-sql", *(["--schema", schema] if schema != "public" else []), *flags]
    return " ".join(word if word == "ROLE" else shlex.quote(word) for word in words)


def _one_line(text: str) -> str:
    return " ".join(redact(text).split())


def explain(
    exc: psycopg.Error, role: str | None = None, schema: str = "public", owner_only: str | None = None
) -> str | None:
    """One line saying what is missing and how to fix it, or None for errors that are not about grants or
    installs.  ``owner_only``: the command needs the tables' owner, so no grant to the runtime role can fix
    a permission error; the line gives this advice instead."""
    primary = _one_line(exc.diag.message_primary or str(exc))
    if exc.sqlstate == PERMISSION_DENIED and owner_only:
        return f"{primary}: {owner_only}"
    if exc.sqlstate == PERMISSION_DENIED:
        who = f"role {role}" if role else "the runtime role"
        return (
            f"{primary}: grant {who} its privileges with `{grant_command(role, schema)}` run as the table "
            "owner"
        )
    if exc.sqlstate == UNDEFINED_FUNCTION:
        return (
            f"{primary}: install or upgrade partitiond's functions with `{_install_command(schema)}` run as "
            "the table owner"
        )
    if exc.sqlstate in (UNDEFINED_TABLE, UNDEFINED_SCHEMA):
        return (
            f"{primary}: check that --schema {schema} is the schema of xmtpd's envelope tables, with "
            f"partitiond's functions installed there (`{_install_command(schema)}` run as the table owner)"
        )
    return None


def failure(
    exc: psycopg.Error, role: str | None = None, schema: str = "public", owner_only: str | None = None
) -> pipeline.PassFailure:
    """A database error as the command's failure: exit 4 with :func:`explain`'s line, else exit 3."""
    message = explain(exc, role, schema, owner_only)
    if message is not None:
        return pipeline.PassFailure(pipeline.EXIT_MISSING, message)
    return pipeline.PassFailure(pipeline.EXIT_SERVER, f"database error: {_one_line(str(exc))}")


def install_failure(exc: psycopg.Error, schema: str) -> pipeline.PassFailure:
    """install-sql could not install: nearly always the wrong role or schema in the settings (exit 2)."""
    primary = _one_line(exc.diag.message_primary or str(exc))
    if exc.diag.message_hint:
        advice = f" ({_one_line(exc.diag.message_hint)})"
    elif exc.sqlstate == PERMISSION_DENIED:
        advice = f": run it as the owner of the envelope tables in schema {schema} (xmtpd's migration role)"
    else:
        advice = ""
    return pipeline.PassFailure(pipeline.EXIT_CONFIG, f"install failed, nothing changed: {primary}{advice}")


def session_role(conn: psycopg.Connection[Any]) -> str | None:
    """The role the session logged in as; None when the connection cannot tell any more."""
    try:
        return conn.info.user or None
    except psycopg.Error:
        return None


@contextlib.contextmanager
def explained(conn: psycopg.Connection[Any], schema: str) -> Iterator[None]:
    """A database error inside the block becomes the command's failure (see :func:`failure`)."""
    try:
        yield
    except psycopg.Error as exc:
        raise failure(exc, session_role(conn), schema) from None


# --- what the role lacks, asked up front ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Privileges:
    """What ``role`` lacks in ``schema`` for a pass; every field empty (and ``usage`` true) when nothing."""

    role: str
    schema: str
    usage: bool = True
    unreadable: tuple[str, ...] = ()  # tables the position read needs
    not_executable: tuple[str, ...] = ()  # entry points, schema-qualified signatures
    absent: tuple[str, ...] = ()  # entry points not installed, likewise
    owns_tables: bool = False  # a member of the tables' owner: may create bands with its own rights
    not_definer: tuple[str, ...] = ()  # installed entry points without SECURITY DEFINER
    wrong_owner: tuple[str, ...] = ()  # installed entry points not owned by the tables' owner
    writers: tuple[str, ...] = ()  # roles not trusted with the tables that can create in the schema

    @property
    def complete(self) -> bool:
        return self.usage and not (self.unreadable or self.not_executable or self.absent)

    def cannot_create(self) -> list[str]:
        """Why a pass as this role could not create a band although every grant is there: a role that does
        not own the tables needs entry points that run as their owner, the tables' owner."""
        if self.owns_tables:
            return []
        reasons = []
        if self.not_definer:
            reasons.append(f"{_some(self.not_definer, 'functions')} not SECURITY DEFINER")
        if self.wrong_owner:
            reasons.append(f"{_some(self.wrong_owner, 'functions')} not owned by the owner of the tables")
        return reasons

    def lacks(self) -> list[str]:
        """The missing privileges, in words ("SELECT on public.gateway_envelopes_latest", ...)."""
        lacking = [] if self.usage else [f"USAGE on schema {self.schema}"]
        if self.unreadable:
            lacking.append(f"SELECT on {_some(self.unreadable, 'tables')}")
        if self.not_executable:
            lacking.append(f"EXECUTE on {_some(self.not_executable, 'functions')}")
        return lacking

    def message(self) -> str | None:
        """One line: what is missing and the command that fixes it; None when nothing is."""
        if self.complete:
            return None
        parts = []
        if lacking := self.lacks():
            parts.append(f"role {self.role} lacks {_join(lacking)}")
        if self.absent:
            verb = "is" if len(self.absent) == 1 else "are"
            parts.append(f"function {_some(self.absent, 'functions')} {verb} not installed")
        fix = grant_command(self.role, self.schema) if self.lacks() else _install_command(self.schema)
        return f"{'; '.join(parts)}: fix it with `{fix}` run as the table owner"


def _some(items: Sequence[str], noun: str) -> str:
    """The first few items by name, the rest as a count."""
    shown = ", ".join(items[:NAMED])
    rest = len(items) - NAMED
    return f"{shown} and {rest} more {noun}" if rest > 0 else shown


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def privileges(conn: psycopg.Connection[Any], schema: str) -> Privileges:
    """Read what the session's role lacks (``queries/privileges.sql``); needs no privilege itself."""
    row = conn.execute(
        catalog.query("privileges"), {"schema": schema, "functions": list(ENTRY_POINTS)}
    ).fetchone()
    assert row is not None
    role, usage, unreadable, not_executable, absent, owns_tables, not_definer, wrong_owner = row
    acl = sql.SQL("SELECT pg_catalog.array_agg(w) FROM {}.partitiond_untrusted_creators() AS w").format(
        sql.Identifier(schema)
    )
    readable = not any(sig.endswith(f".{UNTRUSTED_CREATORS}") for sig in (*absent, *not_executable))
    writers = (conn.execute(acl).fetchone() or [None])[0] if usage and readable else None
    return Privileges(
        str(role),
        schema,
        bool(usage),
        tuple(unreadable),
        tuple(not_executable),
        tuple(absent),
        bool(owns_tables),
        tuple(not_definer),
        tuple(wrong_owner),
        tuple(writers or ()),
    )


def preflight(settings: Settings, env: Mapping[str, str]) -> pipeline.PassFailure | None:
    """Before a pass that may create bands: what would stop it, as the pass's failure, or None.

    Only what the pass's own checks (:func:`partitiond.pipeline.verify`) do not cover, so their messages
    stay the same: a standby, missing tables and a missing or outdated ``ensure_gateway_parts_v4`` are left
    to the pass.  A connection or
    configuration failure is returned as it is (the pass would only repeat it, after waiting as long).
    """
    try:
        with pipeline.open_connection(settings, env) as conn, explained(conn, settings.schema):
            try:
                pipeline.verify(catalog.server_state(conn, settings.schema), settings.schema)
            except pipeline.PassFailure:
                return None  # the pass says it, in its own words
            found = privileges(conn, settings.schema)
    except pipeline.PassFailure as exc:
        return exc
    message = found.message()
    return None if message is None else pipeline.PassFailure(pipeline.EXIT_MISSING, message)
