"""``partitiond repair``: reads what is there, runs the planned steps (:mod:`partitiond.repair_plan`) one
statement per transaction, and reports.

A statement that needs SHARE ROW EXCLUSIVE or stronger waits at most the hold budget for each lock (xmtpd's
inserts queue behind a waiting request) and is retried with backoff; validations take only SHARE UPDATE
EXCLUSIVE, which no insert waits for, so they may run as long as the rows take.  An interruption leaves
either a step done or nothing of it; a re-run reads what is there and continues.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
from psycopg import errors

from partitiond import access, catalog, pipeline
from partitiond.check_model import BLOB, META, CatalogFact
from partitiond.config import Settings
from partitiond.executor import RetryBudget, backoff
from partitiond.repair_plan import (
    BLOB_KEY,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REFUSED,
    MESSAGES,
    MESSAGES_KEY,
    Conn,
    Path,
    Plan,
    State,
    Step,
    Table,
    incomplete_keys,
    missing_keys,
    plan,
)

_STATE = """
WITH refs AS (
    SELECT pg_catalog.to_regclass(pg_catalog.format('%%I.%%I', %(schema)s::text, %(blob)s::text)) AS blob,
           pg_catalog.to_regclass(pg_catalog.format('%%I.%%I', %(schema)s::text, %(meta)s::text)) AS meta,
           pg_catalog.to_regclass(pg_catalog.format('%%I.%%I', %(schema)s::text, %(messages)s::text))
               AS messages
), tree AS (
    SELECT t.relid, t.parentrelid, t.isleaf, t.level, 'blob' AS kind
    FROM refs CROSS JOIN LATERAL pg_catalog.pg_partition_tree(refs.blob) AS t
    UNION ALL
    SELECT refs.messages, NULL, true, 0, 'messages' FROM refs WHERE refs.messages IS NOT NULL
)
SELECT t.kind, c.relname::text, p.relname::text, t.level, t.isleaf,
       (CASE WHEN c.reltuples >= 0 THEN c.reltuples  -- never analyzed: about 100 bytes a blob row
             ELSE pg_catalog.pg_relation_size(c.oid) / 100 END)::bigint,
       CASE WHEN k.oid IS NULL THEN 'none'
            WHEN k.contype <> 'f' OR k.confrelid <> refs.meta
              OR k.confdeltype <> (CASE t.kind WHEN 'blob' THEN 'c' ELSE 'a' END)::"char" THEN 'other'
            WHEN k.convalidated THEN 'valid' ELSE 'not-valid' END,
       coalesce(k.conparentid <> 0, false),
       (SELECT pg_catalog.count(*) FROM pg_catalog.pg_partition_tree(refs.meta))::int
FROM refs
JOIN tree AS t ON true
JOIN pg_catalog.pg_class AS c ON c.oid = t.relid
LEFT JOIN pg_catalog.pg_class AS p ON p.oid = t.parentrelid
LEFT JOIN pg_catalog.pg_constraint AS k
       ON k.conrelid = t.relid
      AND k.conname = (CASE t.kind WHEN 'blob' THEN %(blob_key)s ELSE %(messages_key)s END)
ORDER BY t.kind, t.level, c.relname
"""


# --- reading --------------------------------------------------------------------------------------------


def read_state(conn: Conn, schema: str) -> State:
    """check's own facts (which top-level keys exist) and the progress of a repair: three reads, each
    its own snapshot; a repair step that finds the catalog changed meanwhile fails alone and a re-run
    reads again."""
    server = catalog.server_state(conn, schema)
    facts = [CatalogFact(*row) for row in conn.execute(catalog.query("check_facts"), {"schema": schema})]
    params = {
        "schema": schema,
        "blob": BLOB,
        "meta": META,
        "messages": MESSAGES,
        "blob_key": BLOB_KEY,
        "messages_key": MESSAGES_KEY,
    }
    tables: list[Table] = []
    meta_tables = 0
    messages: Table | None = None
    for kind, name, parent, level, leaf, rows, key, attached, metas in conn.execute(_STATE, params):
        table = Table(name, parent, level, leaf, int(rows), key, bool(attached))
        meta_tables = int(metas)
        if kind == "messages":
            messages = table
        else:
            tables.append(table)
    return State(
        server.server_version,
        schema,
        tuple(f for f in facts if f.kind == "foreign_key"),
        any(f.kind == "table" for f in facts),
        tuple(tables),
        messages,
        meta_tables,
    )


# --- running --------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    step: Step
    status: Literal["planned", "done", "deferred", "failed", "not run"] = "planned"
    seconds: float | None = None
    attempts: int = 0
    error: str | None = None


@dataclass
class Runner:
    """Runs steps on one autocommit connection; sleep and randomness injectable for tests."""

    conn: Conn
    settings: Settings
    sleep: Callable[[float], object] = time.sleep
    rng: random.Random = field(default_factory=random.Random)

    def run(self, step: Step, budget: RetryBudget) -> Outcome:
        """One step in its own transaction; a lock refused within its timeout is retried with backoff."""
        outcome = Outcome(step)
        for attempt in range(self.settings.lock_attempts):
            outcome.attempts = attempt + 1
            started = time.perf_counter()
            try:
                self._once(step)
            except errors.LockNotAvailable:
                pause = budget.take(backoff(attempt, self.rng))
                if pause is None or attempt + 1 == self.settings.lock_attempts:
                    break
                self.sleep(pause)
                continue
            outcome.status, outcome.seconds = "done", time.perf_counter() - started
            return outcome
        outcome.status = "deferred"
        outcome.error = f"a lock it needs stayed busy for {outcome.attempts} attempt(s)"
        return outcome

    def _once(self, step: Step) -> None:
        lock_ms, statement_ms = self._timeouts(step)
        with self.conn.transaction():
            self.conn.execute("SELECT pg_catalog.set_config('lock_timeout', %s, true)", [f"{lock_ms}ms"])
            self.conn.execute(
                "SELECT pg_catalog.set_config('statement_timeout', %s, true)", [f"{statement_ms}ms"]
            )
            self.conn.execute(step.statement)

    def _timeouts(self, step: Step) -> tuple[int, int]:
        """(lock_timeout, statement_timeout) in ms: a request for SHARE ROW EXCLUSIVE makes every insert
        queue behind it, so it waits at most the hold budget; SHARE UPDATE EXCLUSIVE blocks no insert, so a
        validation waits up to --lock-timeout and may then read for as long as the rows take.  A brief
        step is capped by --statement-timeout; a scan the user allowed is not."""
        settings = self.settings
        if step.lock == "brief":
            return _ms(settings.hold_budget), _ms(settings.statement_timeout)
        if step.lock == "scan":
            return _ms(settings.hold_budget), 0
        return _ms(settings.lock_timeout), 0


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def apply(runner: Runner, steps: Sequence[Step], budget: RetryBudget) -> list[Outcome]:
    """Run the steps in order; stop at the first that does not complete (the next ones depend on it)."""
    outcomes = [Outcome(step) for step in steps]
    for index, step in enumerate(steps):
        try:
            outcomes[index] = runner.run(step, budget)
        except errors.InsufficientPrivilege:
            raise
        except psycopg.Error as exc:
            outcomes[index] = Outcome(step, "failed", error=_failure_text(exc))
        if outcomes[index].status != "done":
            for later in outcomes[index + 1 :]:
                later.status = "not run"
            break
    return outcomes


def _failure_text(exc: psycopg.Error) -> str:
    primary = pipeline.one_line(exc.diag.message_primary or str(exc))
    if isinstance(exc, errors.ForeignKeyViolation):
        return (
            f"{primary}: rows whose envelope is gone (list them with the runbook's query, see check "
            "`foreign-keys`); delete orphan blobs, then run repair again"
        )
    if isinstance(exc, errors.QueryCanceled):
        return f"{primary} (--statement-timeout): nothing of this step happened; run repair again"
    return f"{primary} (SQLSTATE {exc.sqlstate}): nothing of this step happened"


# --- the command ----------------------------------------------------------------------------------------


OWNER_ADVICE = (
    "repair alters the envelope tables, so it must run as their owner (xmtpd's migration role), e.g. "
    "`partitiond repair --apply --dsn postgresql://xmtpd_owner@db/xmtpd`"
)


@dataclass
class Report:
    state: State
    plan: Plan
    outcomes: list[Outcome]
    applied: bool  # --apply was given (the steps ran unless refused)
    after: list[str] | None = None  # keys still missing or NOT VALID after the steps ran

    @property
    def exit_code(self) -> int:
        """0 nothing missing, repaired, or a dry run; 1 a step failed or was deferred, or a key repair will
        not touch; 2 --apply refused (the blocking path without --allow-blocking)."""
        if self.applied and self.plan.refusal is not None:
            return EXIT_REFUSED
        if self.plan.problems or any(o.status in ("deferred", "failed") for o in self.outcomes):
            return EXIT_FAILED
        return EXIT_OK


def repair(
    settings: Settings,
    env: Mapping[str, str],
    *,
    apply_steps: bool,
    allow_blocking: bool,
    path: Path | None = None,
    sleep: Callable[[float], object] = time.sleep,
) -> Report:
    """Read, plan, and with ``apply_steps`` run; database trouble becomes a :class:`PassFailure` (exit 3
    or 4, owner advice for a permission error)."""
    with pipeline.open_connection(settings, env) as conn:
        role = access.session_role(conn)
        try:
            state = _read(conn, settings.schema)
            the_plan = plan(state, allow_blocking=allow_blocking, path=path)
            outcomes = [Outcome(step) for step in the_plan.steps]
            if not apply_steps or the_plan.refusal is not None or not the_plan.steps:
                return Report(state, the_plan, outcomes, applied=apply_steps)
            outcomes = apply(
                Runner(conn, settings, sleep), the_plan.steps, RetryBudget(settings.retry_budget)
            )
            after = incomplete_keys(_read(conn, settings.schema))
        except psycopg.Error as exc:
            raise access.failure(exc, role, settings.schema, OWNER_ADVICE) from None
    return Report(state, the_plan, outcomes, applied=True, after=after)


def _read(conn: Conn, schema: str) -> State:
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        server = catalog.server_state(conn, schema)
        if server.in_recovery:
            raise pipeline.PassFailure(pipeline.EXIT_SERVER, "server is a standby: nothing to repair there")
        if not (server.has_meta and server.has_blob):
            raise pipeline.PassFailure(
                pipeline.EXIT_MISSING, f"table {META} or {BLOB} not found in schema {schema!r} (see --schema)"
            )
        return read_state(conn, schema)


# --- output ---------------------------------------------------------------------------------------------


def _explain_path(path: Path | None) -> str:
    return {
        "not-valid": "NOT VALID on the parent, then each leaf validated without blocking inserts "
        "(PostgreSQL 18)",
        "leaf-by-leaf": "each blob leaf keyed NOT VALID and validated without blocking inserts, then the L1s "
        "and the parent attach the validated keys (PostgreSQL 15-17)",
        "blocking": "a plain ADD FOREIGN KEY: every insert waits while every blob row is checked",
        None: "-",
    }[path]


def document(report: Report) -> dict[str, Any]:
    """The JSON form: what was missing, the path, every step with its statement, lock and outcome."""
    state, the_plan = report.state, report.plan
    return {
        "server_version_num": state.server_version_num,
        "missing": missing_keys(state),
        "path": the_plan.path,
        "apply": report.applied,
        "steps": [
            {
                "statement": o.step.statement.as_string(),
                "lock": o.step.lock,
                "blocks": o.step.blocks,
                "status": o.status,
                "seconds": None if o.seconds is None else round(o.seconds, 4),
                "attempts": o.attempts,
                "error": o.error,
            }
            for o in report.outcomes
        ],
        "problems": list(the_plan.problems),
        "refusal": the_plan.refusal,
        "missing_after": report.after,
        "exit_code": report.exit_code,
    }


def render(report: Report, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(document(report), indent=2, ensure_ascii=False)
    return "\n".join(_lines(report))


def _lines(report: Report) -> Iterator[str]:
    state, the_plan = report.state, report.plan
    missing = missing_keys(state)
    yield (
        f"PostgreSQL {state.server_version_num} ({len(state.leaves):,} blob leaves, {state.meta_tables:,} "
        f"meta tables); missing: {', '.join(f'{t} → {META}' for t in missing) or 'none'}"
    )
    yield from the_plan.problems
    if not the_plan.steps:
        if not the_plan.problems:
            yield "nothing to repair: both foreign keys are in place and validated"
        return
    yield f"path: {the_plan.path or 'validate what an earlier run left'} — {_explain_path(the_plan.path)}"
    if the_plan.refusal is not None:
        yield f"--apply without --allow-blocking is {the_plan.refusal}"
    if not report.applied or the_plan.refusal is not None:
        yield (
            f"{'dry run' if not report.applied else 'refused'}, nothing sent: `partitiond repair --apply` "
            f"would run these {len(the_plan.steps)} statements in order, each in its own transaction:"
        )
    for number, outcome in enumerate(report.outcomes, 1):
        status = "" if outcome.status == "planned" else f"  [{_status(outcome)}]"
        yield f"{number:>4}. {outcome.step.statement.as_string()};{status}"
        yield f"      blocks: {outcome.step.blocks}"
    if report.after is not None:
        left = ", ".join(report.after)
        yield f"still missing or not validated: {left}" if left else "both foreign keys are back, validated"


def _status(outcome: Outcome) -> str:
    if outcome.status == "done" and outcome.seconds is not None:
        return f"done in {outcome.seconds * 1000:,.0f} ms"
    return f"{outcome.status}: {outcome.error}" if outcome.error else outcome.status
