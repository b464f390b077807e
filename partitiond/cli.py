"""The ``partitiond`` command line: one function per command.

The settings each command takes (flags, environment variables, the TOML file) are declared once, in
:mod:`partitiond.options`.

Exit codes (run-once, plan, status, install-sql): 0 ok, 1 some bands failed, 2 usage or configuration
error, 3 cannot connect or wrong server state (standby), 4 required function, tables or privileges missing.
Every command reports a failure as one line on stderr, never a traceback: :mod:`partitiond.access` turns
permission and catalog errors into that line (what is missing, and the command that fixes it).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import click
import psycopg
import structlog

from partitiond import __version__, access, catalog, pipeline, prune, repair, sqlfiles
from partitiond.check import check_and_report
from partitiond.config import Settings
from partitiond.demo import demo_command
from partitiond.lease import LeaderLease, LeaseHolder, describe_holders, holders, lease_document
from partitiond.metrics import Metrics
from partitiond.options import build_settings, settings_loader, settings_options
from partitiond.planner import OriginatorStatus, Plan
from partitiond.report import record

log = structlog.get_logger("partitiond.cli")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="partitiond")
def main() -> None:
    """Keep xmtpd's gateway-envelope partitions ahead of demand.

    partitiond reads the highest sequence id per originator, decides which bands of
    gateway_envelopes_meta / gateway_envelopes_blob must exist, and creates each one in its own short,
    lock-safe transaction with ensure_gateway_parts_v4 (install it with `partitiond install-sql`).

    Exit codes: 0 ok, 1 some bands failed, 2 usage/configuration error, 3 cannot connect or server is a
    standby, 4 required function, tables or privileges missing.
    """


@main.command("run-once")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the plan with reasons and every statement the pass would send, in order and with its "
    "values; send none of them.",
)
@settings_options("run-once")
def run_once(dry_run: bool, **raw: Any) -> None:
    """Run one pass and exit (for cron, systemd timers and Kubernetes CronJobs).

    If another partitiond holds the leader lease on this database, the pass only reads and reports
    ("follower") and exits 0: the daemon is already doing the work.  Before the pass it checks that its
    role may read the positions and execute every function the pass calls, and exits 4 naming every
    missing grant otherwise.

    \b
    Example:
      partitiond run-once --dsn-file /etc/partitiond/dsn --originator 100
    """
    settings = build_settings(raw)
    if dry_run:
        _print_plan(settings, sql_too=True)
        return
    started = time.monotonic()
    refused = _guard(lambda: access.preflight(settings, os.environ))
    if refused is not None:
        report = _refused(refused, time.monotonic() - started)
    else:
        lease = LeaderLease(lambda: pipeline.open_connection(settings, os.environ), settings.leader_lock_key)
        try:
            report = _guard(lambda: pipeline.run_pass(settings, os.environ, leader=lease.refresh()))
        finally:
            lease.release()
    if settings.metrics_textfile is not None:
        _write_textfile(report, settings.metrics_textfile)
    if report.message:
        click.echo(f"partitiond: {report.message}", err=True)
    sys.exit(report.exit_code)


def _refused(failure: pipeline.PassFailure, duration: float) -> pipeline.PassReport:
    """The pre-flight found the pass could not work: report it as the pass would have (log and metrics)."""
    log.error("run failed", result=failure.result, reason=str(failure), exit_code=failure.exit_code)
    return pipeline.PassReport(failure.result, failure.exit_code, duration, message=str(failure))


def _write_textfile(pass_report: pipeline.PassReport, path: Path) -> None:
    """node-exporter textfile for timer/CronJob runs; a write error must not hide the run's own result."""
    metrics = Metrics()
    record(metrics, pass_report)
    try:
        metrics.write_textfile(path)
    except OSError as exc:
        click.echo(f"partitiond: cannot write metrics textfile {path}: {exc.strerror or exc}", err=True)


@main.command("run")
@settings_options("run")
def run(**raw: Any) -> None:
    """Run as a daemon: a full pass at start and every --interval, until SIGTERM/SIGINT.

    Between full runs it probes positions (adaptive, at most every --probe-interval) and creates a band
    early when the forecast says the last one runs out within --runway.  Serves /metrics, /healthz and
    /readyz on --metrics-address, speaks systemd's notify protocol (READY, WATCHDOG, STOPPING) under
    Type=notify, re-reads its configuration on SIGHUP, and among replicas on one database only the holder
    of the leader lease (--leader-lock-key) creates partitions.

    \b
    Example:
      partitiond run --dsn-file /etc/partitiond/dsn --interval 30m --log-format json
    """
    from partitiond.daemon import serve

    load = settings_loader(raw)
    settings = build_settings(raw, load)
    sys.exit(_guard(lambda: serve(settings, os.environ, reload=load)))


@main.command("plan")
@settings_options("plan")
def plan_cmd(**raw: Any) -> None:
    """Show what the next run would create and why, without touching anything.

    \b
    Example:
      partitiond plan --dsn postgresql://partitiond@db/xmtpd
    """
    _print_plan(build_settings(raw), sql_too=False)


@main.command("status")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@settings_options("status")
def status(fmt: str, **raw: Any) -> None:
    """Per originator: position, current band, last existing band, headroom and fill; and who holds the
    leader lease (pid, application_name and role, or none).

    \b
    Example:
      partitiond status --format json
    """
    settings = build_settings(raw)

    def read(conn: pipeline.Conn) -> tuple[Plan, set[int], tuple[LeaseHolder, ...]]:
        snapshot = pipeline.take_snapshot(conn, settings, require_function=False)
        seen = _with_rows(conn, settings, snapshot)
        return pipeline.make_plan(snapshot, settings), seen, holders(conn, settings.leader_lock_key)

    the_plan, seen, holding = _read(settings, read)
    rows = [_status_row(s, has_rows=s.originator in seen) for s in the_plan.statuses]
    if fmt == "json":
        doc = {"originators": rows, "leader_lease": lease_document(settings.leader_lock_key, holding)}
        click.echo(json.dumps(doc, indent=2))
        return
    _print_table(rows, ["originator", "position", "current_band", "last_band", "headroom", "fill_pct"])
    click.echo(f"leader lease: {describe_holders(holding)}")


@main.command("install-sql")
@click.option("--print", "print_only", is_flag=True, help="Write the SQL to stdout instead of applying it.")
@click.option(
    "--security-definer/--no-security-definer",
    default=None,
    help="Make the entry points run with their owner's rights and revoke the family from PUBLIC, so the "
    "role partitiond connects as needs only EXECUTE.  Must be run as the owner of the envelope tables (or "
    "with --owner), in a schema no other role can create objects in.  Default: keep what is installed "
    "(an upgrade of a SECURITY DEFINER install stays one); --no-security-definer turns it off.",
)
@click.option(
    "--grant-to",
    "grant_to",
    multiple=True,
    metavar="ROLE",
    help="Role partitiond connects as: gets USAGE on the schema, EXECUTE on the entry points and SELECT on "
    "gateway_envelopes_latest (repeatable).  Roles granted by an earlier install keep their grants.",
)
@click.option(
    "--owner",
    metavar="ROLE",
    default=None,
    help="Install as this role (SET ROLE), normally the owner of the envelope tables: for a superuser or "
    "another member of that role.  The functions, and every partition they create, belong to it.",
)
@click.option(
    "--replace-foreign",
    is_flag=True,
    help="Replace an ensure_gateway_parts_v4 that is not partitiond's (one an xmtpd migration created, "
    "say).  Without it install-sql refuses to overwrite it.",
)
@settings_options("install-sql")
def install_sql(
    print_only: bool,
    security_definer: bool | None,
    grant_to: tuple[str, ...],
    owner: str | None,
    replace_foreign: bool,
    **raw: Any,
) -> None:
    """Install or upgrade the ensure_gateway_parts_v4 function family (idempotent, one transaction).

    It never creates or alters the envelope tables and is not an xmtpd migration: run it again after
    upgrading partitiond (run/run-once say so, exit 4, when the installed functions are not the ones this
    version ships).  An upgrade keeps SECURITY DEFINER and the grants of the install before it.  Refused
    (exit 2, nothing changed): a SECURITY DEFINER install by anyone but the owner of the envelope tables,
    or into a schema other roles can create objects in; overwriting an ensure_gateway_parts_v4 that is not
    partitiond's without --replace-foreign.

    \b
    Examples:
      partitiond install-sql --dsn postgresql://xmtpd_owner@db/xmtpd --security-definer --grant-to partitiond
      partitiond install-sql --dsn postgresql://xmtpd_owner@db/xmtpd          # upgrade: keeps what was there
      partitiond install-sql --dsn postgresql://postgres@db/xmtpd --owner xmtpd_owner --security-definer
      partitiond install-sql --print --security-definer --grant-to partitiond > partitiond.sql
    """
    settings = build_settings(raw)
    if print_only:
        script = sqlfiles.functions_script(
            settings.schema, bool(security_definer), grant_to, owner, replace_foreign
        )
        click.echo(script)
        return
    definer = _guard(lambda: _install(settings, security_definer, grant_to, owner, replace_foreign))
    mode = "SECURITY DEFINER" if definer else "with the caller's rights (not SECURITY DEFINER)"
    click.echo(f"installed {sqlfiles.VERSION_MARKER} into schema {settings.schema!r}, {mode}")


def _install(
    settings: Settings,
    security_definer: bool | None,
    grant_to: tuple[str, ...],
    owner: str | None,
    replace_foreign: bool,
) -> bool:
    with pipeline.open_connection(settings, os.environ) as conn:
        try:
            return sqlfiles.install_functions(
                conn, settings.schema, security_definer, grant_to, owner, replace_foreign
            )
        except psycopg.Error as exc:
            raise access.install_failure(exc, settings.schema) from None


T = TypeVar("T")


def _guard(action: Callable[[], T]) -> T:
    """Run a command's work; a failure becomes one line on stderr and the documented exit code.

    Database errors that reach this far are mapped by :func:`partitiond.access.failure`: missing
    privileges, tables or functions exit 4 with the command that fixes them, anything else exits 3.
    """
    try:
        return action()
    except psycopg.Error as exc:
        failure = access.failure(exc)
    except pipeline.PassFailure as exc:
        failure = exc
    click.echo(f"partitiond: {failure}", err=True)
    sys.exit(failure.exit_code)


def _read(settings: Settings, read: Callable[[pipeline.Conn], T]) -> T:
    """Run ``read`` on a connection of its own; database errors name the missing grant or install."""

    def action() -> T:
        with pipeline.open_connection(settings, os.environ) as conn, access.explained(conn, settings.schema):
            return read(conn)

    return _guard(action)


def _plan_on(conn: pipeline.Conn, settings: Settings) -> Plan:
    """Read-only: what the next pass would do.  Works before install-sql, so it can show what is missing."""
    snapshot = pipeline.take_snapshot(conn, settings, require_function=False)
    return pipeline.make_plan(snapshot, settings)


def _print_plan(settings: Settings, *, sql_too: bool) -> None:
    """``plan``, and with ``sql_too`` (``run-once --dry-run``) every statement the pass would send, in
    order, with its values: the executor's own texts, rendered on the connection the plan was read on."""
    if sql_too:
        dry = _read(settings, lambda conn: pipeline.dry_run(conn, settings))
        the_plan, per_band = dry.plan, dry.bands
        click.echo("SQL of the pass, in order, with its values (nothing is sent); first:")
        _echo_sql(dry.first)
    else:
        the_plan = _read(settings, lambda conn: _plan_on(conn, settings))
        per_band = ()
    if not the_plan.creates:
        click.echo(f"nothing to create: every originator ({len(the_plan.statuses)}) has its bands")
        return
    click.echo(f"{len(the_plan.creates)} band(s) to create, most urgent first:")
    for index, p in enumerate(the_plan.creates):
        click.echo(
            f"  originator {p.originator} band [{p.band.start:,}, {p.band.end:,}) ({p.kind}): {p.reason}"
        )
        if per_band:
            _echo_sql(per_band[index])
    if the_plan.deferred:
        click.echo(f"{len(the_plan.deferred)} more deferred by --max-creates-per-run to the next run")


def _echo_sql(statements: tuple[str, ...]) -> None:
    for statement in statements:
        for line in statement.splitlines():
            click.echo(f"    {line}")


def _with_rows(conn: pipeline.Conn, settings: Settings, snapshot: pipeline.Snapshot) -> set[int]:
    """Originators whose position was read from rows.  The snapshot places an originator that has bands
    but no rows at the start of its highest band (so the plan never recreates pruned bands), which would
    read as a real position; positions read against an inventory without bands keep only real ones."""
    bandless = replace(snapshot.inventory, bands=())
    found = catalog.positions(conn, settings.schema, snapshot.state, bandless, ())
    return {oid for oid, position in found.items() if position is not None}


def _status_row(s: OriginatorStatus, *, has_rows: bool) -> dict[str, object]:
    """One originator for ``status``; ``position`` is None (JSON null, "—" in the table) without rows."""
    return {
        "originator": s.originator,
        "position": s.position if has_rows else None,
        "current_band": [s.current.start, s.current.end],
        "last_band": [s.last.start, s.last.end] if s.last else None,
        "headroom": s.headroom,
        "fill_pct": round(s.fill * 100, 1),
        "seconds_to_exhaustion": s.seconds_to_exhaustion,
    }


def _cell(value: object) -> str:
    """A table cell: bands as [start, end), numbers with separators, "—" for nothing (never "0")."""
    if isinstance(value, list):
        return f"[{value[0]:,}, {value[1]:,})"
    if isinstance(value, int):
        return f"{value:,}"
    return "—" if value is None else str(value)


def _print_table(rows: list[dict[str, object]], columns: list[str]) -> None:
    cells = [[_cell(row[c]) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in cells:
        click.echo("  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)))


@main.command("prune")
@click.option(
    "--apply",
    is_flag=True,
    help="Drop the bands.  Without it, a dry run: list them with every statement --apply would send.",
)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@settings_options("prune")
def prune_command(apply: bool, fmt: str, **raw: Any) -> None:
    """Drop the bands xmtpd's pruner would drop, keeping the envelope tables' foreign keys.

    xmtpd's pruner drops every empty band below an originator's highest band with DROP TABLE ... CASCADE,
    and the CASCADE silently removes the foreign keys blob -> meta and blockchain_messages -> meta of the
    whole tables.  prune finds the same bands from the partition tree and drops each one leaf by leaf
    (partitiond_drop_band: the blob leaf dropped, then the meta leaf detached and dropped, never
    CASCADE), each in its own short transaction holding xmtpd's key 5 as band creation does
    (--hold-budget, --hold-timeout).  A busy lock
    defers the band (retried, then reported: exit 1, nothing changed); a band that got rows or became the
    highest meanwhile is skipped.  xmtpd's pruner still deletes expired envelopes: only its DROP is
    replaced.

    --originator limits the prune to those originators; so do PARTITIOND_ORIGINATORS and the file's
    originators, which a shared configuration may set for provisioning.

    Dry run by default.  Exit codes: 0 every band dropped (or a dry run), 1 some band deferred or failed,
    2 usage, 3 cannot connect, 4 function or privileges missing.

    \b
    Examples:
      partitiond prune --dsn-file /etc/partitiond/dsn                 # what would go, and the SQL
      partitiond prune --dsn-file /etc/partitiond/dsn --apply --format json
      partitiond prune --apply --originator 100 --originator 200
    """
    settings = build_settings(raw)
    report = _read(settings, lambda conn: prune.prune(conn, settings, apply=apply))
    if fmt == "json":
        click.echo(json.dumps(prune.document(report), indent=2))
    elif report.outcomes:
        _print_table(prune.rows(report), list(prune.COLUMNS))
        click.echo(prune.summary(report))
    else:
        click.echo("\n".join(prune.dry_run_lines(report)))
    sys.exit(report.exit_code)


@main.command("check")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@settings_options("check")
def check_command(fmt: str, **raw: Any) -> None:
    """Verify the partition trees and print a report; exit 0 ok, 1 warning, 2 critical.

    Checks: the band holding each originator's position exists in both trees (critical); runway, which
    without a rate forecast is headroom: a warning when the position is more than --fill-threshold into
    the last band of the run and no next band exists (with forecasts: below --runway-warning); every meta
    band has its blob twin; bounds match --band-width and the (63-byte truncated) names; holes above the
    current band (holes below it are pruning's and only info); leftover seed constraints, unattached
    look-alikes, pending detaches and DEFAULT partitions; the top-level foreign keys blob → meta (ON DELETE
    CASCADE) and blockchain_messages → meta (critical if missing); the installed function version; the
    connecting role's grants (warning when partitiond could not create bands as that role); who holds the
    leader lease (warning when its application_name does not start with partitiond: a squatter keeps
    every partitiond a follower).

    For monitoring, an unreachable database or a bad DSN is critical (exit 2), not exit 3, and so is a
    role that may not read what check needs.

    \b
    Example:
      partitiond check --dsn-file /etc/partitiond/dsn --format json
    """
    sys.exit(check_and_report(build_settings(raw), fmt, os.environ))


@main.command("repair")
@click.option(
    "--apply",
    is_flag=True,
    help="Run the statements.  Without it, a dry run: print each statement and what it blocks, send none.",
)
@click.option(
    "--allow-blocking",
    is_flag=True,
    help="Consent to the blocking path (a plain ADD FOREIGN KEY that makes every insert wait while every "
    "blob row is checked) when it is the only one left; without it --apply refuses (exit 2).",
)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@settings_options("repair")
def repair_command(apply: bool, allow_blocking: bool, fmt: str, **raw: Any) -> None:
    """Restore the foreign keys xmtpd's pruner drops, blocking inserts as little as the server allows.

    Finds what `partitiond check` reports missing (gateway_envelopes_blob -> gateway_envelopes_meta ON
    DELETE CASCADE, blockchain_messages -> gateway_envelopes_meta) and re-creates them under xmtpd's exact
    names.  PostgreSQL 18: the blob key NOT VALID on the parent, then validated leaf by leaf (inserts go
    on).  15-17 (no NOT VALID on a partitioned table): each blob leaf keyed NOT VALID and validated, then
    the L1s and the parent attach the validated keys; for trees too big for that (blob leaves x meta
    tables above 10,000) only a plain ADD FOREIGN KEY is left, which makes every insert wait for the whole
    check: refused without --allow-blocking, with an estimate.  blockchain_messages: NOT VALID, then
    VALIDATE, on every major.

    Each statement runs in its own transaction; one that needs a lock inserts wait for waits at most
    --hold-budget per lock and is retried (--lock-attempts, --retry-budget); validations wait up to
    --lock-timeout and then run as long as the rows take.  An interrupted repair is completed by running
    it again.  Must run as the owner of the envelope tables (exit 4 otherwise).

    Dry run by default.  Exit codes: 0 nothing missing, repaired, or a dry run; 1 a step failed or was
    deferred (run it again), or a key repair will not touch; 2 refused (blocking path without
    --allow-blocking); 3 cannot connect; 4 not the tables' owner, or tables missing.

    \b
    Examples:
      partitiond repair --dsn postgresql://xmtpd_owner@db/xmtpd            # the statements, and what blocks
      partitiond repair --dsn postgresql://xmtpd_owner@db/xmtpd --apply
      partitiond repair --dsn postgresql://xmtpd_owner@db/xmtpd --apply --allow-blocking --format json
    """
    settings = build_settings(raw)
    report = _guard(
        lambda: repair.repair(settings, os.environ, apply_steps=apply, allow_blocking=allow_blocking)
    )
    click.echo(repair.render(report, fmt))
    if apply and report.plan.refusal is not None:
        click.echo(f"partitiond: {report.plan.refusal}", err=True)
    sys.exit(report.exit_code)


main.add_command(demo_command)
