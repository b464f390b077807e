"""``partitiond prune``: the drop step of xmtpd's pruner, without losing the envelope foreign keys.

xmtpd's pruner drops the empty bands below each originator's highest band with ``DROP TABLE IF EXISTS
<meta leaf>, <blob leaf> CASCADE``, and the CASCADE takes the blob -> meta and blockchain_messages -> meta
foreign keys of the whole tables with it.  Here the same bands are found from the partition tree
(``partitiond_prunable_bands``) and each is dropped by ``partitiond_drop_band`` (leaf by leaf, never
CASCADE), in its own short transaction under the lock discipline of band creation
(:mod:`partitiond.executor`): first a wait, holding nothing, for a moment when no query reads the tables
the drop needs to itself (:func:`~partitiond.executor.tables_free_by`, at most ``reader_wait``: both L1s,
and ``gateway_envelopes_blob``, ``blockchain_messages`` and ``payers``, whose foreign-key clones pointing
at the meta leaf go with it), then the hold settings, the exclusive side of key 5 taken by
:func:`~partitiond.executor.take_protocol_lock`, the drop (which takes those tables without waiting),
COMMIT.  Dropping needs key 5 for the same reason creating does: it changes the partition trees every
insert routes through.

Tables still in use when the wait ends (``in_use``), a lock not free within the hold budget, or the hold
timeout roll the band back (nothing changed) and it is retried with jittered backoff, like a deferred
band creation.  Every reader of a blob partition holds ``gateway_envelopes_blob`` too, so on a busy
serving node a drop waits for a moment between reads, or is deferred.  A band that gained rows or became its
originator's highest meanwhile is refused by the function (55000) and skipped.  Any other error fails that
band only; a missing grant or function fails the command (exit 4), as everywhere else.

The decisions (which bands, what an error means, the statements, the exit code) are pure functions; the
database is touched only by :func:`find`, :func:`drop` and :func:`prune`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
import structlog
from psycopg import sql

from partitiond import access, catalog, pipeline
from partitiond.bands import Band
from partitiond.config import Settings
from partitiond.executor import (
    BAND_SETTINGS,
    SESSION_SETTINGS,
    Deferred,
    RetryBudget,
    Step,
    backoff,
    band_settings_params,
    deferral,
    error_line,
    hold_steps,
    pg_interval,
    session_params,
    tables_free_by,
    take_protocol_lock,
)
from partitiond.executor import calls as executor_calls

Conn = psycopg.Connection[Any]
Sleep = Callable[[float], object]
Status = Literal["dropped", "deferred", "skipped", "failed"]
REFUSED = "55000"  # partitiond_drop_band: the band holds rows, or is its originator's highest
# Schema-qualified, arguments cast to the exact parameter types (see executor.CALLS for why).
CALLS = {
    "find": "SELECT originator_node_id, band_start, band_end FROM {s}.partitiond_prunable_bands()",
    "drop": "SELECT {s}.partitiond_drop_band(%(oid)s::integer, %(start)s::bigint)",
}
COLUMNS = ("originator", "band", "status", "attempts", "detail")

log = structlog.get_logger("partitiond.prune")


@dataclass(frozen=True, slots=True)
class Prunable:
    """A band xmtpd's pruner would drop: empty, below its originator's highest band."""

    originator: int
    band: Band


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one band.  ``tables``: the two dropped (blob leaf, then meta leaf); ``detail``: why
    it was not dropped; ``deferrals``: the reason of each deferred attempt (the executor's labels, or
    ``in_use`` when the tables the drop needs stayed in use)."""

    target: Prunable
    status: Status
    attempts: int
    tables: tuple[str, ...] = ()
    detail: str | None = None
    deferrals: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Report:
    """One prune.  A dry run has the statements (``first``, then per band) and no outcomes."""

    applied: bool
    bands: tuple[Prunable, ...]
    first: tuple[str, ...] = ()
    statements: tuple[tuple[str, ...], ...] = ()
    outcomes: tuple[Outcome, ...] = ()

    @property
    def exit_code(self) -> int:
        """1 when a band is still there that should not be (deferred or failed); a skipped band is the
        function doing its job."""
        missed = any(o.status in ("deferred", "failed") for o in self.outcomes)
        return pipeline.EXIT_BANDS_FAILED if missed else pipeline.EXIT_OK


# --- decisions ------------------------------------------------------------------------------------------


def calls(schema: str) -> dict[str, sql.Composed]:
    """:data:`CALLS` for the functions installed in ``schema``."""
    return {name: sql.SQL(text).format(s=sql.Identifier(schema)) for name, text in CALLS.items()}


def select(found: Iterable[Prunable], originators: Collection[int]) -> list[Prunable]:
    """The bands to prune: only those of ``originators`` when some are named (``--originator``)."""
    return [p for p in found if not originators or p.originator in originators]


def settle(exc: psycopg.Error) -> Status:
    """A band's error that is not a deferral.  The function's refusal (rows arrived, or the band became its
    originator's highest, since it was found) means the band must stay: skipped.  Anything else: failed."""
    return "skipped" if exc.sqlstate == REFUSED else "failed"


def first_steps(settings: Settings) -> list[Step]:
    """What a prune sends before any band: the session's timeouts, then the read that finds the bands."""
    return [
        Step(
            "lock and statement timeouts outside key 5", sql.SQL(SESSION_SETTINGS), session_params(settings)
        ),
        Step(
            "the bands xmtpd's pruner would drop (reads one row at most per band)",
            calls(settings.schema)["find"],
        ),
    ]


def band_steps(target: Prunable, settings: Settings) -> list[Step]:
    """The statements a successful first attempt at ``target`` sends, in order: what :func:`drop` runs."""
    drop_call = calls(settings.schema)["drop"]
    wait = f"every few ms, for at most {pg_interval(settings.reader_wait)}"
    return [
        Step(
            f"until no query reads the tables the drop needs to itself ({wait})",
            executor_calls(settings.schema)["tables_free"],
            {"oid": target.originator, "drop": True},
        ),
        *hold_steps(settings),
        Step("under key 5: detach and drop the blob leaf, then the meta leaf", drop_call, _params(target)),
        Step("releases key 5", sql.SQL("COMMIT")),
    ]


def _params(target: Prunable) -> dict[str, int]:
    return {"oid": target.originator, "start": target.band.start}


# --- I/O ------------------------------------------------------------------------------------------------


def find(conn: Conn, schema: str, originators: Collection[int]) -> list[Prunable]:
    """The bands xmtpd's pruner would drop now (of ``originators`` when some are named)."""
    rows = conn.execute(calls(schema)["find"]).fetchall()
    return select((Prunable(int(oid), Band(int(start), int(end))) for oid, start, end in rows), originators)


def drop(
    conn: Conn, target: Prunable, settings: Settings, sleep: Sleep, rng: random.Random
) -> tuple[str, ...]:
    """One attempt at one band in its own transaction; returns the tables dropped.  Raises
    :class:`~partitiond.executor.Deferred` when the tables the drop needs stayed in use, a lock was not free
    within the budget or the hold timeout struck (the transaction rolled back: nothing changed), the
    database error otherwise."""
    deadline = time.perf_counter() + settings.reader_wait
    if not tables_free_by(conn, settings, target.originator, True, deadline, sleep, rng):
        wait = pg_interval(settings.reader_wait)
        raise Deferred("in_use", f"tables the drop needs were in use for {wait}")
    granted = False
    try:
        with conn.transaction():
            conn.execute(BAND_SETTINGS, band_settings_params(settings))
            take_protocol_lock(conn, settings, sleep, rng)
            granted = True
            row = conn.execute(calls(settings.schema)["drop"], _params(target)).fetchone()
    except psycopg.Error as exc:
        deferred = deferral(exc, under_key_5=granted)
        if deferred is None:
            raise
        raise deferred from None
    return tuple(row[0]) if row else ()


def prune_band(
    conn: Conn, target: Prunable, settings: Settings, budget: RetryBudget, sleep: Sleep, rng: random.Random
) -> Outcome:
    """One band, retried while deferred: at most ``lock_attempts`` attempts, backoff taken from ``budget``
    (shared by the whole prune).  A missing grant or function is raised: the command fails (exit 4)."""
    deferrals: list[str] = []
    while True:
        try:
            tables = drop(conn, target, settings, sleep, rng)
        except Deferred as exc:
            deferrals.append(exc.reason)
            detail = f"{exc.reason}: {exc}"
        except psycopg.Error as exc:
            if access.explain(exc) is not None:
                raise
            return Outcome(target, settle(exc), len(deferrals) + 1, (), error_line(exc), tuple(deferrals))
        else:
            return Outcome(target, "dropped", len(deferrals) + 1, tables, deferrals=tuple(deferrals))
        final = len(deferrals) >= settings.lock_attempts
        pause = None if final else budget.take(backoff(len(deferrals), rng))
        if pause is None:
            return Outcome(target, "deferred", len(deferrals), (), detail, tuple(deferrals))
        sleep(pause)


def prune(
    conn: Conn,
    settings: Settings,
    *,
    apply: bool,
    sleep: Sleep = time.sleep,
    rng: random.Random | None = None,
) -> Report:
    """Find the bands; with ``apply`` drop them one by one, else render what that would send.

    The server is checked first as for a pass (a standby, missing tables, functions missing or not this
    version's: the pass's own failures), and the hold settings are clamped below its ``deadlock_timeout``
    as for band creation."""
    state = catalog.server_state(conn, settings.schema)
    pipeline.verify(state, settings.schema)
    held = pipeline.within_deadlock_timeout(settings, state.deadlock_timeout_ms)
    conn.execute(SESSION_SETTINGS, session_params(held))
    found = tuple(find(conn, held.schema, held.originators))
    if not apply:
        per_band = tuple(_render(conn, band_steps(target, held)) for target in found)
        return Report(False, found, _render(conn, first_steps(held)), per_band)
    rng = rng or random.Random()  # noqa: S311 - backoff jitter, not a secret
    report = Report(True, found, outcomes=tuple(_drop_all(conn, found, held, sleep, rng)))
    log.info("prune finished", **tally(report))
    return report


def _drop_all(
    conn: Conn, found: Iterable[Prunable], settings: Settings, sleep: Sleep, rng: random.Random
) -> Iterator[Outcome]:
    """Each band in turn; one band's trouble never stops the others, a lost connection stops them all."""
    budget = RetryBudget(settings.retry_budget)
    for target in found:
        if conn.broken:
            raise pipeline.PassFailure(
                pipeline.EXIT_SERVER, "lost the connection to PostgreSQL during the prune"
            )
        outcome = prune_band(conn, target, settings, budget, sleep, rng)
        _log(outcome)
        yield outcome


def _render(conn: Conn, steps: list[Step]) -> tuple[str, ...]:
    cursor = psycopg.ClientCursor(conn)
    return tuple(f"-- {step.note}\n{cursor.mogrify(step.query, step.params)};" for step in steps)


def _log(outcome: Outcome) -> None:
    fields: dict[str, object] = {
        "originator": outcome.target.originator,
        "band_start": outcome.target.band.start,
        "band_end": outcome.target.band.end,
        "attempts": outcome.attempts,
    }
    if outcome.deferrals:
        fields["deferrals"] = list(outcome.deferrals)
    if outcome.status == "dropped":
        log.info("band dropped", tables=list(outcome.tables), **fields)
    elif outcome.status == "skipped":
        log.info(
            "band skipped", error=outcome.detail, note="it must stay (rows, or now the highest)", **fields
        )
    elif outcome.status == "deferred":
        log.warning(
            "band deferred", error=outcome.detail, note="something held what the drop needs", **fields
        )
    else:
        log.error("band failed", error=outcome.detail, **fields)


# --- what the command prints ------------------------------------------------------------------------------


def tally(report: Report) -> dict[str, int]:
    """How many bands were found, and how many ended in each status."""
    counts = {"found": len(report.bands)}
    for status in ("dropped", "deferred", "skipped", "failed"):
        counts[status] = sum(1 for o in report.outcomes if o.status == status)
    return counts


def rows(report: Report) -> list[dict[str, object]]:
    """One row per band of an applied prune (``--format table``): the tables dropped, or why not."""
    return [
        {
            "originator": o.target.originator,
            "band": [o.target.band.start, o.target.band.end],
            "status": o.status,
            "attempts": o.attempts,
            "detail": ", ".join(o.tables) or o.detail,
        }
        for o in report.outcomes
    ]


def document(report: Report) -> dict[str, object]:
    """``--format json``: per band its outcome (applied) or the statements it would send (dry run)."""
    if report.applied:
        bands: list[dict[str, object]] = [
            {**row, "tables": list(o.tables), "deferrals": list(o.deferrals)}
            for row, o in zip(rows(report), report.outcomes, strict=True)
        ]
    else:
        bands = [
            {"originator": p.originator, "band": [p.band.start, p.band.end], "statements": list(statements)}
            for p, statements in zip(report.bands, report.statements, strict=True)
        ]
    doc: dict[str, object] = {"applied": report.applied, "bands": bands, "counts": tally(report)}
    if not report.applied:
        doc["first"] = list(report.first)
    return doc


def dry_run_lines(report: Report) -> list[str]:
    """``--format table`` without ``--apply``: the bands, and every statement ``--apply`` would send."""
    if not report.bands:
        return ["nothing to prune: no originator has an empty band below its highest band"]
    lines = [
        "dry run, nothing dropped.  A prune sends, in order (values included), first (this dry run too):"
    ]
    lines += _indented(report.first)
    lines.append(
        f"{len(report.bands)} band(s) xmtpd's pruner would drop (empty, below their originator's highest "
        "band), each in its own transaction:"
    )
    for p, statements in zip(report.bands, report.statements, strict=True):
        lines.append(f"  originator {p.originator} band [{p.band.start:,}, {p.band.end:,})")
        lines += _indented(statements)
    return lines


def summary(report: Report) -> str:
    """The last line of an applied prune."""
    counts = tally(report)
    return ", ".join(f"{counts[s]} {s}" for s in ("dropped", "deferred", "skipped", "failed"))


def _indented(statements: Iterable[str]) -> list[str]:
    return [f"    {line}" for statement in statements for line in statement.splitlines()]
