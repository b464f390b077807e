"""``partitiond check``: verify what xmtpd needs from the partition trees, for people and for monitoring.

Two halves, so the rules can be tested without a database:

* :func:`collect` reads the catalog in one read-only, repeatable-read transaction (six queries: server
  state, partition inventory, positions, ``queries/check_facts.sql``, the role's privileges and the leader
  lease's holders) into :class:`Facts`;
* :func:`evaluate` is pure: it turns :class:`Facts` into a list of :class:`Finding`.

Severities follow the monitoring contract: ``critical`` (exit 2) means inserts fail, will fail, or data is
no longer protected; ``warning`` (exit 1) needs attention soon; ``info`` and ``ok`` never fail the check.
A check that cannot reach the database is ``critical`` too: for monitoring, unreachable is critical, and
so is a check whose role may not read what it needs (the message names the missing grant).

Without a rate forecast (a one-shot check has none) runway is judged by headroom, with the planner's own
rule: the next band is overdue once the position is more than ``fill_threshold`` into the last band of the
run that starts at the current band.  With forecasts (the daemon has them) it warns when that run ends
within ``runway_warning_seconds``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict
from typing import Any, Literal

import click
import psycopg

from partitiond import access, catalog, check_bands, pipeline, sqlfiles
from partitiond.check_model import (
    BLOB,
    META,
    RANK,
    CatalogFact,
    Facts,
    Finding,
    capped,
    exit_code,
)
from partitiond.config import Settings
from partitiond.forecast import Forecast
from partitiond.lease import describe_holders, holders, lease_document

Format = Literal["table", "json"]
FORMATS: tuple[Format, ...] = ("table", "json")
FATAL_CHECKS = frozenset({"connection", "database"})

_ON_DELETE = {"a": "NO ACTION", "r": "RESTRICT", "c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}
_PRUNE_HAZARD = (
    "xmtpd's pruner drops partitions with DROP TABLE … CASCADE, which removes the top-level foreign key "
    "of the whole table; `partitiond repair --apply` re-creates it"
)


# --- the pure half ------------------------------------------------------------------------------------


def evaluate(
    facts: Facts, settings: Settings, forecasts: Mapping[int, Forecast] | None = None
) -> list[Finding]:
    """Every finding, grouped by check in a fixed order; never raises for odd catalog contents."""
    out: list[Finding] = []
    schema = facts.schema
    if facts.state.in_recovery:
        out.append(
            Finding(
                "info",
                "server",
                "server",
                "server is a standby: checking the replicated catalog read-only (partitiond creates "
                "partitions on the primary)",
            )
        )
    out.extend(_function(facts.state, schema))
    tables = list(_tables(facts.state, schema))
    out.extend(tables)
    if any(f.severity == "critical" for f in tables):
        return out  # without both trees nothing below means anything
    out.extend(_privileges(facts))
    out.extend(_lease(facts, settings.leader_lock_key))
    out.extend(_foreign_keys(facts))
    out.extend(check_bands.originators(facts, settings, forecasts or {}))
    out.extend(capped(check_bands.symmetry(facts)))
    out.extend(capped(check_bands.bounds(facts, settings.band_width)))
    out.extend(capped(check_bands.names(facts)))
    out.extend(capped(check_bands.leftovers(facts)))
    return out


def _function(state: catalog.ServerState, schema: str) -> Iterator[Finding]:
    subject = f"{schema}.ensure_gateway_parts_v4"
    if problem := state.function_problem(schema):
        yield Finding("critical", "function", subject, problem)
    else:
        yield Finding("ok", "function", subject, f"installed, {sqlfiles.VERSION_MARKER}")


def _tables(state: catalog.ServerState, schema: str) -> Iterator[Finding]:
    for name, present in ((META, state.has_meta), (BLOB, state.has_blob)):
        if not present:
            yield Finding(
                "critical",
                "tables",
                f"{schema}.{name}",
                f"table not found in schema {schema!r}: is this an xmtpd database (see --schema)?",
            )
    if state.has_meta and state.has_blob:
        yield Finding("ok", "tables", schema, f"{META} and {BLOB} exist")
        if not state.has_latest:
            yield Finding(
                "info",
                "tables",
                f"{schema}.gateway_envelopes_latest",
                "table not found: positions were probed with max() per originator instead",
            )


def _privileges(facts: Facts) -> Iterator[Finding]:
    """Whether partitiond, connecting as this role, could do its job (missing functions: see "function")."""
    found = facts.privileges
    if found is None:
        return
    subject = f"role {found.role}"
    if found.writers:
        yield Finding(
            "critical",
            "schema",
            f"schema {facts.schema}",
            f"writable by roles that do not own the envelope tables: {', '.join(found.writers)}; any of "
            "them could create a function or operator for a call to resolve to, run as the table owner by "
            f"the SECURITY DEFINER functions: REVOKE CREATE ON SCHEMA {facts.schema} FROM PUBLIC (and from "
            "each role named)",
        )
    lacking, unable = found.lacks(), found.cannot_create()
    if not lacking and not unable:
        yield Finding("ok", "privileges", subject, "has every grant partitiond needs for a pass")
        return
    fix = access.grant_command(found.role, facts.schema)
    if lacking:
        yield Finding(
            "critical",
            "privileges",
            subject,
            f"lacks {', '.join(lacking)}: partitiond connecting as this role creates no bands (run-once "
            f"exits 4); grant them with `{fix}` run as the table owner",
        )
    if unable:
        yield Finding(
            "critical",
            "privileges",
            subject,
            f"cannot create a band although it may call every entry point: {'; '.join(unable)} (an "
            f"install without --security-definer, or by another role?); reinstall with `{fix}` run as the "
            "table owner",
        )


def _lease(facts: Facts, key: int) -> Iterator[Finding]:
    """Who holds the leader lease.  Any role that can connect can take the key, and while a session that is
    not partitiond holds it, every partitiond on the database stays a follower and creates nothing."""
    if facts.lease is None:
        return
    subject = f"key {key}"
    if not facts.lease:
        yield Finding(
            "info",
            "leader-lease",
            subject,
            "held by none: no partitiond daemon is running on this database (run-once holds it only while it "
            "runs)",
        )
        return
    strangers = [h for h in facts.lease if not h.looks_like_partitiond]
    if not strangers:
        yield Finding("ok", "leader-lease", subject, f"held by {describe_holders(facts.lease)}")
        return
    pids = ", ".join(str(h.pid) for h in strangers if h.pid is not None)
    how = f" (pg_terminate_backend({pids}))" if pids else ""
    yield Finding(
        "warning",
        "leader-lease",
        subject,
        f"held by {describe_holders(facts.lease)}, whose application_name does not start with "
        f'"partitiond": while it holds the key every partitiond on this database is a follower and creates '
        f"no bands; if it is not partitiond, end it{how} and grant CONNECT only to roles you trust",
    )


def _foreign_keys(facts: Facts) -> Iterator[Finding]:
    found = {f.relation: f for f in facts.of_kind("foreign_key")}
    blob = found.get(BLOB)
    subject = f"{BLOB} → {META}"
    if blob is None:
        yield Finding(
            "critical",
            "foreign-keys",
            subject,
            "top-level foreign key is missing: blob rows are no longer deleted with their meta row and "
            f"orphan blobs are accepted; {_PRUNE_HAZARD} with ON DELETE CASCADE",
        )
    elif blob.detail != "c":
        action = _ON_DELETE.get(blob.detail or "", blob.detail)
        yield Finding(
            "critical",
            "foreign-keys",
            subject,
            f"{blob.name} is ON DELETE {action}, not CASCADE: pruning meta rows no longer removes "
            "their blobs",
        )
    else:
        yield _present(facts, BLOB, subject, f"{blob.name} (ON DELETE CASCADE)")
    subject = f"blockchain_messages → {META}"
    messages = found.get("blockchain_messages")
    if not facts.of_kind("table"):
        missing = f"table {facts.schema}.blockchain_messages not found"
        yield Finding("critical", "foreign-keys", subject, missing)
    elif messages is None:
        yield Finding(
            "critical",
            "foreign-keys",
            subject,
            f"top-level foreign key is missing: blockchain messages may reference deleted envelopes; "
            f"{_PRUNE_HAZARD}",
        )
    else:
        yield _present(facts, "blockchain_messages", subject, f"{messages.name}")


def _present(facts: Facts, relation: str, subject: str, ok: str) -> Finding:
    """A key that is there: ok, unless it is still NOT VALID (rows older than it were never checked)."""
    unchecked = [f for f in facts.of_kind("foreign_key_not_valid") if f.relation == relation]
    if not unchecked:
        return Finding("ok", "foreign-keys", subject, ok)
    return Finding(
        "warning",
        "foreign-keys",
        subject,
        f"{unchecked[0].name} is NOT VALID: rows from before it was added were never checked (an "
        "interrupted repair, or one made by hand); `partitiond repair --apply` validates it without "
        "blocking inserts",
    )


# --- the I/O half -------------------------------------------------------------------------------------


def collect(conn: catalog.Conn, settings: Settings) -> Facts:
    """Read every fact; the caller decides the transaction (``run_check`` uses one read-only snapshot)."""
    schema = settings.schema
    state = catalog.server_state(conn, schema)
    if not (state.has_meta and state.has_blob):
        return Facts(schema, state)
    inv = catalog.inventory(conn, schema)
    positions = catalog.positions(conn, schema, state, inv, settings.originators)
    rows = conn.execute(catalog.query("check_facts"), {"schema": schema}).fetchall()
    return Facts(
        schema,
        state,
        inv,
        positions,
        tuple(CatalogFact(*row) for row in rows),
        access.privileges(conn, schema),
        holders(conn, settings.leader_lock_key),
    )


def examine(
    settings: Settings, env: Mapping[str, str], forecasts: Mapping[int, Forecast] | None = None
) -> tuple[list[Finding], Facts | None]:
    """Connect, collect, evaluate; the facts too when they could be read.  Never raises for database
    trouble: that is a critical finding, whose message says which grant or install is missing."""
    try:
        conn = pipeline.open_connection(settings, env)
    except pipeline.PassFailure as exc:
        return [Finding("critical", "connection", "server", pipeline.one_line(str(exc)))], None
    with conn:
        try:
            conn.read_only = True
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            with conn.transaction():
                facts = collect(conn, settings)
        except psycopg.Error as exc:
            failure = access.failure(exc, access.session_role(conn), settings.schema)
            return [Finding("critical", "database", settings.schema, str(failure))], None
    return evaluate(facts, settings, forecasts), facts


def run_check(
    settings: Settings, env: Mapping[str, str], forecasts: Mapping[int, Forecast] | None = None
) -> tuple[list[Finding], int]:
    """Connect, collect, evaluate.  Never raises for database trouble: that is a critical finding."""
    findings, _facts = examine(settings, env, forecasts)
    return findings, exit_code(findings)


def summary(findings: Sequence[Finding]) -> dict[str, int]:
    counts: dict[str, int] = {severity: 0 for severity in RANK}
    for finding in findings:
        counts[finding.severity] += 1
    return {**counts, "exit_code": exit_code(findings)}


def render(findings: Sequence[Finding], fmt: str, lease: Mapping[str, object] | None = None) -> str:
    """``table``: aligned columns and a final "N critical, M warnings" line; ``json``: findings, summary and
    (when read) the leader lease's holders, as ``status`` shows them."""
    counts = summary(findings)
    if fmt == "json":
        doc: dict[str, Any] = {"findings": [asdict(f) for f in findings], "summary": counts}
        if lease is not None:
            doc["leader_lease"] = lease
        return json.dumps(doc, indent=2, ensure_ascii=False)
    columns = ("severity", "check", "subject", "message")
    rows = [(f.severity, f.check, f.subject, f.message) for f in findings]
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns[:-1])]
    lines = [
        "  ".join([*(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)), row[-1]]).rstrip()
        for row in [columns, *rows]
    ]
    warnings = counts["warning"]
    lines.append(f"{counts['critical']} critical, {warnings} warning{'' if warnings == 1 else 's'}")
    return "\n".join(lines)


def check_and_report(settings: Settings, fmt: str, env: Mapping[str, str]) -> int:
    """What the ``check`` command does: report on stdout, a one-line reason on stderr when it could not
    look at all, and the exit code to use."""
    findings, facts = examine(settings, env)
    code = exit_code(findings)
    lease = None
    if facts is not None and facts.lease is not None:
        lease = lease_document(settings.leader_lock_key, facts.lease)
    click.echo(render(findings, fmt, lease))
    for finding in findings:
        if finding.check in FATAL_CHECKS:
            click.echo(f"partitiond: {finding.message}", err=True)
    return code
