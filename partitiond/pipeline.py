"""One pass of partitiond's main job: connect, verify, discover, plan, ensure, report.

``run-once``, ``plan``, ``status`` and every scheduled run of the daemon go through here, so they all
behave the same way.  The pass reads in three round trips (server state, partition inventory, positions),
plans with the pure planner, and ensures each planned band in its own transaction through the executor.
Anything that stops the pass as a whole raises :class:`PassFailure` carrying the documented exit code;
a band that fails only counts as failed, and the pass moves on to the next band.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import psycopg
import structlog
from psycopg.pq import TransactionStatus

from partitiond import access, catalog
from partitiond.bands import Band, band_for
from partitiond.config import Settings
from partitiond.dsn import DsnError, connect_kwargs, redact, resolve_dsn
from partitiond.executor import Executor, Outcome, RetryBudget, Step, band_steps, pass_steps, unstage_all
from partitiond.forecast import Forecast, RateEstimator
from partitiond.planner import OriginatorStatus, Plan, PlannedBand, Policy, assess, plan

Conn = psycopg.Connection[Any]
Result = Literal["success", "partial", "failed", "standby", "stopped", "follower"]
Kind = Literal["run", "probe"]

EXIT_OK = 0
EXIT_BANDS_FAILED = 1
EXIT_CONFIG = 2
EXIT_SERVER = 3
EXIT_MISSING = 4

log = structlog.get_logger("partitiond.pipeline")


@dataclass
class RunControl:
    """Lets another thread stop a pass: a stop flag checked between bands, and the live connection to cancel.

    The daemon's signal handler only sets ``stop``; the main thread then calls :meth:`cancel`, which uses
    ``cancel_safe`` on whatever query is in flight (never from a signal handler, as psycopg advises).
    """

    stop: threading.Event = field(default_factory=threading.Event)
    _conn: Conn | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def attach(self, conn: Conn | None) -> None:
        with self._lock:
            self._conn = conn

    def cancel(self, timeout: float) -> None:
        with self._lock:
            conn = self._conn
        if conn is not None and not conn.closed:
            with contextlib.suppress(psycopg.Error):
                conn.cancel_safe(timeout=timeout)


class PassFailure(Exception):
    """The pass could not act at all.  ``exit_code`` follows the run-once contract in the README."""

    def __init__(self, exit_code: int, message: str, result: Result = "failed", fatal: bool = False) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.result = result
        self.fatal = fatal  # the daemon stops too: waiting cannot fix it (someone else's functions)


def open_connection(settings: Settings, env: Mapping[str, str]) -> Conn:
    """A fresh autocommit connection; every error message is stripped of the password."""
    try:
        conninfo = connect_kwargs(resolve_dsn(settings.dsn, settings.dsn_file, env), settings.connect_timeout)
    except DsnError as exc:
        raise PassFailure(EXIT_CONFIG, str(exc)) from None
    try:
        conn = psycopg.connect(conninfo, autocommit=True)
    except psycopg.Error as exc:
        raise PassFailure(
            EXIT_SERVER, f"cannot connect to PostgreSQL: {one_line(redact(str(exc)))}"
        ) from None
    # Only built-ins resolve without a schema in partitiond's sessions: whatever a role can create in the
    # schemas of its default search_path (public, say) can never be picked by one of partitiond's queries.
    conn.execute("SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', false)")
    return conn


@dataclass
class KeptConnection:
    """The daemon's connection, kept from one pass to the next instead of a new one per pass.

    A new backend starts with cold caches, and a probe can come every second.  The cost that matters is
    paid under key 5: a partition's first ATTACH in a backend loads the relation cache of every meta
    partition its foreign-key check plans over, while every insert waits.  A kept backend pays that
    once.  Each pass first checks the session with one ``SELECT 1`` and replaces it if it ended while the
    daemon slept (server restart, ``idle_session_timeout``, a NAT timeout); a pass that fails with a
    database error drops it, so the next pass starts on a fresh backend.
    """

    _conn: Conn | None = field(default=None, init=False)

    @contextlib.contextmanager
    def use(self, settings: Settings, env: Mapping[str, str]) -> Iterator[Conn]:
        conn = self._usable()
        if conn is None:
            conn = self._conn = open_connection(settings, env)
        try:
            yield conn
        except psycopg.Error:
            self.close()
            raise

    def _usable(self) -> Conn | None:
        conn = self._conn
        if (
            conn is None
            or conn.broken
            or conn.closed
            or conn.info.transaction_status != TransactionStatus.IDLE
        ):
            self.close()
            return None
        try:
            conn.execute("SELECT 1")
        except psycopg.Error:
            self.close()
            return None
        return conn

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = None


def one_line(text: str) -> str:
    """libpq's messages span lines ("\tIs the server running…"); a log field or an error should not."""
    return " ".join(text.split())


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the database looked like at the start of the pass."""

    state: catalog.ServerState
    inventory: catalog.Inventory
    positions: dict[int, int | None]
    taken_at: float
    rejected: dict[int, str] = field(default_factory=dict)  # originator -> why no band can hold it


def verify(state: catalog.ServerState, schema: str) -> None:
    """Refuse loudly when partitiond must not or cannot act."""
    if state.in_recovery:
        raise PassFailure(
            EXIT_SERVER, "server is a standby (pg_is_in_recovery() is true): doing nothing", "standby"
        )
    missing = [
        name
        for name, ok in (
            ("gateway_envelopes_meta", state.has_meta),
            ("gateway_envelopes_blob", state.has_blob),
        )
        if not ok
    ]
    if missing:
        raise PassFailure(
            EXIT_MISSING,
            f"table {' and '.join(missing)} not found in schema {schema!r}: is this an xmtpd database "
            "(see --schema)?",
        )
    if problem := state.function_problem(schema):
        raise PassFailure(EXIT_MISSING, problem, fatal=state.functions == "foreign")


def check_band_width(inventory: catalog.Inventory, width: int) -> None:
    """Existing partitions must have the configured width, or new bands would overlap them."""
    for part in inventory.bands:
        if part.band.width != width or part.band.start % width:
            raise PassFailure(
                EXIT_CONFIG,
                f"--band-width is {width:,} but partition {part.name} covers [{part.band.start:,}, "
                f"{part.band.end:,}) ({part.band.width:,} wide): set --band-width to match the existing "
                "partitions",
            )


def take_snapshot(
    conn: Conn, settings: Settings, *, require_function: bool = True, known: catalog.Inventory | None = None
) -> Snapshot:
    """Server state, partitions and positions.  With ``known`` (a probe), the catalog is not read again."""
    state = catalog.server_state(conn, settings.schema)
    try:
        verify(state, settings.schema)
    except PassFailure as exc:
        if require_function or exc.exit_code != EXIT_MISSING or not (state.has_meta and state.has_blob):
            raise
    inv = known if known is not None else read_inventory(conn, settings)
    positions, rejected = screen_positions(
        catalog.positions(conn, settings.schema, state, inv, settings.originators), settings.band_width
    )
    return Snapshot(state, inv, positions, time.monotonic(), rejected)


def screen_positions(
    positions: Mapping[int, int | None], width: int
) -> tuple[dict[int, int | None], dict[int, str]]:
    """Set aside positions no band can hold (negative, or past the last storable band), with the reason.

    Such a value is corrupt or hostile input; rejecting it per originator keeps one bad value from
    stopping the pass for everybody else, and the pass then counts it as failed (exit 1).
    """
    kept: dict[int, int | None] = {}
    rejected: dict[int, str] = {}
    for originator, position in positions.items():
        problem = _unstorable(position, width)
        if problem:
            rejected[originator] = problem
            log.error("originator skipped", originator=originator, position=position, reason=problem)
        else:
            kept[originator] = position
    return kept, rejected


def _unstorable(position: int | None, width: int) -> str:
    """Why no band can hold ``position`` ("" when one can)."""
    if position is None:
        return ""
    try:
        band_for(position, width)
    except ValueError as exc:
        return str(exc)
    return ""


def read_inventory(conn: Conn, settings: Settings) -> catalog.Inventory:
    inv = catalog.inventory(conn, settings.schema)
    check_band_width(inv, settings.band_width)
    return inv


def plan_pass(
    conn: Conn, settings: Settings, estimator: RateEstimator | None, known: catalog.Inventory | None
) -> tuple[Snapshot, Plan]:
    """Snapshot and plan.  A probe plans against the inventory cached from earlier passes and reads the
    catalog only when that plan wants DDL, so no band is ever created on the word of a stale cache."""
    snapshot = take_snapshot(conn, settings, known=known)
    forecasts = forecasts_from(snapshot, settings, estimator)
    the_plan = plan_with(snapshot, settings, forecasts)
    if the_plan.creates and known is not None:
        snapshot = replace(snapshot, inventory=read_inventory(conn, settings))
        the_plan = plan_with(snapshot, settings, forecasts)
    return snapshot, the_plan


def policy_for(settings: Settings) -> Policy:
    return Policy(
        band_width=settings.band_width,
        fill_threshold=settings.fill_threshold,
        max_bands_ahead=settings.max_bands_ahead,
        max_creates_per_run=settings.max_creates_per_run,
        runway_seconds=settings.runway_seconds,
    )


def forecasts_from(
    snapshot: Snapshot, settings: Settings, estimator: RateEstimator | None
) -> dict[int, Forecast]:
    """Feed the positions to the rate estimator and return its forecasts; flag suspicious jumps."""
    if estimator is None:
        return {}
    result: dict[int, Forecast] = {}
    for originator, position in snapshot.positions.items():
        if position is None:
            continue
        seen = estimator.observe(originator, snapshot.taken_at, position)
        if seen.jumped:
            log.warning(
                "suspicious position jump",
                originator=originator,
                position=position,
                max_jump_bands=settings.max_jump_bands,
                note="only the band holding the position and its successor are considered",
            )
        result[originator] = seen.forecast
    return result


def make_plan(snapshot: Snapshot, settings: Settings, estimator: RateEstimator | None = None) -> Plan:
    return plan_with(snapshot, settings, forecasts_from(snapshot, settings, estimator))


def plan_with(snapshot: Snapshot, settings: Settings, forecasts: Mapping[int, Forecast]) -> Plan:
    """The one place a snapshot becomes a plan (the pure planner does the deciding)."""
    return plan(snapshot.inventory.views(snapshot.positions), policy_for(settings), forecasts)


def statuses_after(
    snapshot: Snapshot, settings: Settings, outcomes: list[Outcome], estimator: RateEstimator | None
) -> tuple[OriginatorStatus, ...]:
    """Each originator's standing once this pass's bands exist: what metrics and status should show."""
    made: dict[int, set[Band]] = {}
    for outcome in outcomes:
        if outcome.status != "failed":
            made.setdefault(outcome.planned.originator, set()).add(outcome.planned.band)
    policy = policy_for(settings)
    result = []
    for view in snapshot.inventory.views(snapshot.positions):
        extra = made.get(view.originator, set())
        now = replace(view, complete=view.complete | extra, partial=view.partial - extra, meta_only=None)
        forecast = estimator.forecast(view.originator) if estimator is not None else None
        result.append(assess(now, policy, forecast))
    return tuple(result)


@dataclass(frozen=True, slots=True)
class PassReport:
    """Everything a caller needs to log, export and turn into an exit code."""

    result: Result
    exit_code: int
    duration: float
    plan: Plan | None = None
    outcomes: tuple[Outcome, ...] = ()
    statuses: tuple[OriginatorStatus, ...] = ()  # after this pass's creations
    new_l1: int = 0  # originators that got their L1 (in both trees) in this pass
    message: str | None = None
    kind: Kind = "run"
    inventory: catalog.Inventory | None = None  # what exists after this pass: a probe's cache
    counts: dict[str, int] = field(default_factory=dict)
    fatal: bool = False  # the daemon must stop with exit_code (see PassFailure)


_warned_clamps: set[tuple[float, float, int]] = set()


def within_deadlock_timeout(settings: Settings, deadlock_timeout_ms: int) -> Settings:
    """Settings whose key-5 hold ends before the server's ``deadlock_timeout`` can fire.

    While partitiond holds key 5, an xmtpd session waiting behind it runs PostgreSQL's deadlock check once
    it has waited ``deadlock_timeout``; if partitiond were then itself waiting for a lock that session holds,
    the check would cancel *xmtpd's* statement (40P01).  Every statement under key 5 is cut off at
    ``hold_timeout``, so keeping that below ``deadlock_timeout`` (at 80 % of it, the budget at half of
    that at most) means partitiond always gives up first.  A clamp is logged once per setting pair.
    """
    limit = 0.8 * deadlock_timeout_ms / 1000
    if settings.hold_timeout <= limit:
        return settings
    hold_timeout = max(0.002, limit)
    hold_budget = max(0.001, min(settings.hold_budget, hold_timeout / 2))
    clamped = replace(settings, hold_timeout=hold_timeout, hold_budget=hold_budget)
    key = (settings.hold_timeout, settings.hold_budget, deadlock_timeout_ms)
    if key not in _warned_clamps:
        _warned_clamps.add(key)
        log.warning(
            "hold settings clamped below the server's deadlock_timeout",
            deadlock_timeout_ms=deadlock_timeout_ms,
            hold_timeout_ms=round(clamped.hold_timeout * 1000, 1),
            hold_budget_ms=round(clamped.hold_budget * 1000, 1),
        )
    return clamped


def apply(
    conn: Conn,
    the_plan: Plan,
    settings: Settings,
    control: RunControl | None = None,
    *,
    clean_up: bool = False,
) -> list[Outcome]:
    """Ensure every planned band, each in its own transaction; one band's failure never stops the rest.

    With ``clean_up`` (the leader's full runs) staged tables left by a crashed or killed run are dropped
    first.  A stop request ends the pass between bands; retry backoff waits on the stop flag, so it ends
    early too.
    """
    control = control or RunControl()
    if not the_plan.creates and not clean_up:
        return []
    executor = Executor(conn, settings, sleep=control.stop.wait)
    if clean_up and (dropped := unstage_all(conn, settings.schema)):
        log.warning("dropped staged tables an interrupted run left behind", tables=dropped)
    budget = RetryBudget(settings.retry_budget)
    outcomes: list[Outcome] = []
    for planned in the_plan.creates:
        if control.stop.is_set():
            raise PassFailure(EXIT_OK, "stopped on request before finishing the plan", "stopped")
        if conn.broken:
            raise PassFailure(EXIT_SERVER, "lost the connection to PostgreSQL during the run")
        outcome = executor.ensure(planned, budget)
        outcomes.append(outcome)
        _log_outcome(outcome, interrupted=control.stop.is_set())
    return outcomes


def _log_outcome(outcome: Outcome, *, interrupted: bool) -> None:
    p = outcome.planned
    fields: dict[str, object] = {
        "originator": p.originator,
        "band_start": p.band.start,
        "band_end": p.band.end,
        "kind": p.kind,
        "reason": p.reason,
        "attempts": outcome.attempts,
        "lock_wait_ms": round(outcome.lock_wait * 1000, 1),
    }
    if outcome.holds:  # how long every insert waited for partitiond, per attempt that got key 5
        fields["key5_hold_ms"] = [round(h * 1000, 1) for h in outcome.holds]
    if outcome.deferrals:
        fields["deferrals"] = list(outcome.deferrals)
    if outcome.status == "created":
        fields["path"] = outcome.path
        fields["hold_steps_ms"] = {k: round(v * 1000, 2) for k, v in outcome.steps.items()}
    if outcome.status in ("failed", "deferred") and interrupted:
        # Cancelled by our own shutdown: the transaction rolled back whole; the next start does it.
        log.warning("band interrupted by shutdown", error=outcome.error, **fields)
    elif outcome.status == "deferred":
        log.warning(
            "band deferred",
            why=outcome.failure,
            error=outcome.error,
            note="something else held what the band needs; retried at the next pass",
            **fields,
        )
    elif outcome.status == "failed":
        log.error("band failed", failure=outcome.failure, error=outcome.error, **fields)
    elif outcome.status == "created":
        log.info("band created", **fields)
    else:
        log.info("band skipped", note="already present when its turn came", **fields)


def summarise(the_plan: Plan, outcomes: list[Outcome]) -> dict[str, int]:
    def count(status: str) -> int:
        return sum(1 for o in outcomes if o.status == status)

    return {
        "planned": len(the_plan.creates),
        "created": count("created"),
        "skipped": count("existed"),
        "deferred": count("deferred"),
        "failed": count("failed"),
        "capped": len(the_plan.deferred),
    }


def run_pass(
    settings: Settings,
    env: Mapping[str, str],
    estimator: RateEstimator | None = None,
    control: RunControl | None = None,
    known: catalog.Inventory | None = None,
    leader: bool = True,
    log_fields: Mapping[str, object] | None = None,
    kept: KeptConnection | None = None,
) -> PassReport:
    """One pass.  Never raises for database trouble: the report says what happened.

    Without ``known`` it is a full run (the catalog is read); with ``known`` it is a probe: one read of
    the positions, and a catalog read plus DDL only if the forecast requires a band.  A follower
    (``leader=False``) reads and plans — its metrics stay meaningful — but creates nothing.  With
    ``kept`` the pass runs on the daemon's kept connection, else on a connection of its own.
    """
    kind: Kind = "run" if known is None else "probe"
    started = time.monotonic()
    control = control or RunControl()
    try:
        with open_connection(settings, env) if kept is None else kept.use(settings, env) as conn:
            control.attach(conn)
            try:
                snapshot, the_plan = plan_pass(conn, settings, estimator, known)
                held = within_deadlock_timeout(settings, snapshot.state.deadlock_timeout_ms)
                outcomes = apply(conn, the_plan, held, control, clean_up=kind == "run") if leader else []
                statuses = statuses_after(snapshot, settings, outcomes, estimator)
            finally:
                control.attach(None)
    except PassFailure as exc:
        return _failed(exc, started, kind)
    except psycopg.Error as exc:
        return _failed(access.failure(exc, schema=settings.schema), started, kind)
    counts = summarise(the_plan, outcomes)
    counts["failed"] += len(snapshot.rejected)
    missed = counts["failed"] + counts["deferred"]
    result: Result = "follower" if not leader else "partial" if missed else "success"
    report = PassReport(
        result=result,
        exit_code=EXIT_BANDS_FAILED if missed else EXIT_OK,
        duration=time.monotonic() - started,
        plan=the_plan,
        outcomes=tuple(outcomes),
        statuses=statuses,
        counts=counts,
        kind=kind,
        inventory=snapshot.inventory.with_bands(o.planned for o in outcomes if o.status != "failed"),
        new_l1=len(
            {o.planned.originator for o in outcomes if o.status == "created"}
            - snapshot.inventory.originators()
        ),
    )
    # A probe that found nothing to do is routine (up to one a second): debug, counted in the metrics.
    quiet = kind == "probe" and (not counts["planned"] or not leader)
    (log.debug if quiet else log.info)(
        f"{kind} finished",
        result=result,
        duration_ms=round(report.duration * 1000, 1),
        **counts,
        **(log_fields or {}),
    )
    return report


@dataclass(frozen=True, slots=True)
class DryRun:
    """What ``run-once`` would send, rendered with its values, without sending any of it.

    ``first`` is what a leader's full run sends before its bands (the session's timeouts, the clean-up of
    tables an interrupted run left staged); ``bands`` holds, per planned band in plan order, the statements
    of a successful first attempt.
    """

    plan: Plan
    first: tuple[str, ...]
    bands: tuple[tuple[str, ...], ...]


def dry_run(conn: Conn, settings: Settings) -> DryRun:
    """Plan as ``run-once`` would and render the executor's own statements for every band.

    The hold settings are the ones the pass would use (clamped below the server's ``deadlock_timeout``),
    and whether a band is staged or takes the full ensure is decided from the catalog the pass reads.
    """
    snapshot = take_snapshot(conn, settings, require_function=False)
    the_plan = make_plan(snapshot, settings)
    held = within_deadlock_timeout(settings, snapshot.state.deadlock_timeout_ms)
    cursor = psycopg.ClientCursor(conn)

    def render(steps: list[Step]) -> tuple[str, ...]:
        return tuple(f"-- {step.note}\n{cursor.mogrify(step.query, step.params)};" for step in steps)

    bands = tuple(render(band_steps(p, held, _plain_case(snapshot.inventory, p))) for p in the_plan.creates)
    return DryRun(the_plan, render(pass_steps(held)), bands)


def _plain_case(inv: catalog.Inventory, planned: PlannedBand) -> tuple[bool, bool]:
    """Per tree (meta, blob): will ``partitiond_stage_table`` stage the band?  It does when the
    originator's L1 exists and no partition overlaps the band (a table left under the band's final name
    also makes it decline, which the inventory of attached partitions cannot show)."""
    oid, band = planned.originator, planned.band

    def stages(tree: str) -> bool:
        overlaps = (
            p.tree == tree and p.originator == oid and p.band.start < band.end and band.start < p.band.end
            for p in inv.bands
        )
        return oid in inv.l1.get(tree, frozenset()) and not any(overlaps)

    return stages(catalog.META), stages(catalog.BLOB)


def _failed(exc: PassFailure, started: float, kind: Kind = "run") -> PassReport:
    report = PassReport(
        exc.result, exc.exit_code, time.monotonic() - started, message=str(exc), kind=kind, fatal=exc.fatal
    )
    if exc.result in ("standby", "stopped"):
        log.warning(f"{kind} skipped", result=exc.result, reason=str(exc))
    else:
        log.error(f"{kind} failed", result=exc.result, reason=str(exc), exit_code=exc.exit_code)
    return report
