"""``partitiond repair``: put back the top-level foreign keys that xmtpd's pruner drops, blocking as little
as the server's major allows.

xmtpd's pruner drops an empty band with ``DROP TABLE … CASCADE``, which removes the blob → meta key
(``ON DELETE CASCADE``) and the blockchain_messages → meta key of the whole tables; ``partitiond check``
then reports them as critical.  Adding them back naively (``ALTER TABLE gateway_envelopes_blob ADD FOREIGN
KEY …``) checks every blob row while holding SHARE ROW EXCLUSIVE on both partition trees, so every
envelope insert waits for the whole scan.  The paths, by major (measured, see the README):

* ``not-valid`` (PostgreSQL 18): the key is added ``NOT VALID`` on the parent (a catalog change under
  SHARE ROW EXCLUSIVE, no row read), then each blob leaf is validated on its own (SHARE UPDATE EXCLUSIVE on
  that leaf: inserts go on), then the parent (no row left to read).
* ``leaf-by-leaf`` (15 to 17, which refuse ``NOT VALID`` on a partitioned table): each blob leaf gets the key
  ``NOT VALID`` under xmtpd's exact name and is validated (inserts go on); then each L1 and finally the
  parent get the key, and PostgreSQL attaches the validated child keys instead of checking rows again.
  The catalog work of the per-leaf steps grows with leaves times meta partitions, so past
  :data:`LEAF_PAIR_LIMIT` this path is not offered.
* ``blocking``: the plain ``ADD FOREIGN KEY``, the only path left on 15 to 17 for large trees; refused
  without ``--allow-blocking``, with an estimate of how long inserts would wait.

``blockchain_messages`` is a plain table: ``NOT VALID`` then ``VALIDATE CONSTRAINT`` on every major.

Planning (:func:`plan`) is pure; :func:`read_state` and :func:`apply` do the I/O.  Every step is one
statement in its own transaction, so an interruption leaves either the step done or nothing of it, and a
re-run reads what is there (``NOT VALID`` keys left behind included) and continues.  A statement that needs
SHARE ROW EXCLUSIVE or stronger waits at most the hold budget for each lock (xmtpd's inserts queue behind a
waiting request) and is retried with backoff; validations take only SHARE UPDATE EXCLUSIVE, which no insert
waits for, so they may run as long as the rows take.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
from psycopg import errors, sql

from partitiond import access, catalog, pipeline
from partitiond.check_model import BLOB, META, CatalogFact
from partitiond.config import Settings
from partitiond.executor import RetryBudget, backoff

Conn = psycopg.Connection[Any]
Path = Literal["not-valid", "leaf-by-leaf", "blocking"]
Lock = Literal["brief", "validate", "scan"]
KeyState = Literal["none", "not-valid", "valid", "other"]

MESSAGES = "blockchain_messages"
BLOB_KEY = "gateway_envelope_blobs_originator_node_id_originator_seque_fkey"
MESSAGES_KEY = "blockchain_messages_originator_node_id_originator_sequence_fkey"
KEY_COLUMNS = ("originator_node_id", "originator_sequence_id")
NOT_VALID_ON_PARTITIONED = 180_000  # server_version_num from which a partitioned table accepts NOT VALID
# Beyond this many (blob leaf, meta table) pairs the per-leaf keys cost more catalog work under SHARE ROW
# EXCLUSIVE on the meta tree than they save (each leaf's key is cloned onto every meta partition, under a
# name PostgreSQL searches for across the schema): measured 50 ms for a leaf at 165 meta tables, 0.65 s at
# 645, 6 s at 2,005, each next leaf of an originator slower than the one before.
LEAF_PAIR_LIMIT = 10_000
# What a blocking ADD FOREIGN KEY costs on the machine the README's figures come from (2 cores): the row
# check (4.5 s for 1,000,000 envelopes, bench/repair.py on 15, 16 and 18), and planning a check query over
# the whole meta tree for every blob leaf (45 s for 640 empty leaves and 645 meta tables on 16).
SCAN_SECONDS_PER_ROW = 4.5e-6
PLAN_SECONDS_PER_PAIR = 1e-4

EXIT_OK, EXIT_FAILED, EXIT_REFUSED = 0, 1, 2

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


# --- what is there --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Table:
    """A table of the blob tree (or blockchain_messages) and the state of the key named as xmtpd names it
    on it: ``other`` is a constraint of that name that is not the key (wrong table, action or kind)."""

    name: str
    parent: str | None
    level: int
    leaf: bool
    rows: int  # pg_class.reltuples, or its size / 100 bytes before the first ANALYZE
    key: KeyState
    attached: bool = False


@dataclass(frozen=True, slots=True)
class State:
    """What :func:`plan` needs: the server's major, which keys ``check`` finds missing (from its own facts)
    and how far a repair got."""

    server_version_num: int
    schema: str
    foreign_keys: tuple[CatalogFact, ...]  # check's ``foreign_key`` facts: top-level keys into meta
    has_messages: bool
    blob_tree: tuple[Table, ...]  # the parent first, then by level
    messages: Table | None
    meta_tables: int

    def top_key(self, relation: str) -> CatalogFact | None:
        return next((f for f in self.foreign_keys if f.relation == relation), None)

    @property
    def leaves(self) -> tuple[Table, ...]:
        return tuple(t for t in self.blob_tree if t.leaf and t.level > 0)

    @property
    def blob_rows(self) -> int:
        return sum(t.rows for t in self.leaves)


def missing_keys(state: State) -> list[str]:
    """The tables whose top-level key into meta ``check`` reports missing."""
    return [t for t in (BLOB, MESSAGES) if state.top_key(t) is None and (t == BLOB or state.has_messages)]


def incomplete_keys(state: State) -> list[str]:
    """Missing keys, and keys left NOT VALID (by an interrupted or deferred repair)."""
    not_valid = [
        table.name
        for table in (state.blob_tree[0] if state.blob_tree else None, state.messages)
        if table is not None and table.key == "not-valid"
    ]
    return [t for t in (BLOB, MESSAGES) if t in missing_keys(state) or t in not_valid]


# --- the plan -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    """One statement, run in its own transaction.  ``lock``: ``brief`` takes SHARE ROW EXCLUSIVE or
    stronger but reads no row (hold budget as lock timeout, retried); ``validate`` takes SHARE UPDATE
    EXCLUSIVE and reads rows (no insert waits); ``scan`` reads rows under SHARE ROW EXCLUSIVE (inserts
    wait for all of it)."""

    lock: Lock
    statement: sql.Composed
    blocks: str


@dataclass(frozen=True, slots=True)
class Plan:
    path: Path | None
    steps: tuple[Step, ...] = ()
    problems: tuple[str, ...] = ()  # what repair will not do (a key of the wrong kind, no table)
    refusal: str | None = None  # the blocking path without --allow-blocking
    done: tuple[str, ...] = ()  # keys already complete


def choose_path(state: State) -> Path:
    """18 validates a NOT VALID key on the partitioned table; before 18, per leaf while the tree is small
    enough, else only the blocking ADD is left."""
    if state.server_version_num >= NOT_VALID_ON_PARTITIONED:
        return "not-valid"
    if len(state.leaves) * state.meta_tables <= LEAF_PAIR_LIMIT:
        return "leaf-by-leaf"
    return "blocking"


def blocking_estimate(state: State) -> float:
    """Seconds inserts would wait for a blocking ADD FOREIGN KEY (the README's machine)."""
    return (
        state.blob_rows * SCAN_SECONDS_PER_ROW + len(state.leaves) * state.meta_tables * PLAN_SECONDS_PER_PAIR
    )


def plan(state: State, *, allow_blocking: bool = False, path: Path | None = None) -> Plan:
    """Every statement still needed, in order, for the chosen (or given) path; pure."""
    problems: list[str] = []
    done: list[str] = []
    steps: list[Step] = []
    chosen: Path | None = None
    blob_top = state.top_key(BLOB)
    parent = state.blob_tree[0] if state.blob_tree else None
    if blob_top is not None and blob_top.detail != "c":
        problems.append(
            f"{blob_top.name} on {BLOB} is not ON DELETE CASCADE: drop it (ALTER TABLE {BLOB} DROP "
            f"CONSTRAINT {blob_top.name}) and run repair again"
        )
    elif odd := [t.name for t in state.blob_tree if t.key == "other"]:
        problems.append(
            f"{', '.join(odd[:3])} {'has' if len(odd) == 1 else 'have'} a constraint named {BLOB_KEY} that "
            f"is not xmtpd's key into {META}: drop it and run repair again"
        )
    elif parent is not None and (blob_top is None or parent.key == "not-valid"):
        chosen = path or choose_path(state)
        steps += _blob_steps(state, chosen)
    else:
        done.append(BLOB)
    steps_messages, problem = _messages_steps(state)
    steps += steps_messages
    if problem:
        problems.append(problem)
    elif not steps_messages:
        done.append(MESSAGES)
    refusal = None
    if chosen == "blocking" and not allow_blocking and any(s.lock == "scan" for s in steps):
        refusal = _refusal(state)
    return Plan(chosen, tuple(steps), tuple(problems), refusal, tuple(done))


def _refusal(state: State) -> str:
    return (
        f"refused: on PostgreSQL {state.server_version_num // 10_000} with {len(state.leaves):,} blob leaves "
        f"and {state.meta_tables:,} meta tables the only path left is a plain ADD FOREIGN KEY, which checks "
        f"every blob row (about {state.blob_rows:,}) while holding SHARE ROW EXCLUSIVE on both trees: every "
        f"envelope insert waits for it, an estimated {blocking_estimate(state):,.1f} s; run it in a quiet "
        "window with --allow-blocking"
    )


def _blob_steps(state: State, path: Path) -> list[Step]:
    if path == "not-valid":
        return _not_valid_steps(state)
    if path == "leaf-by-leaf":
        return _leaf_steps(state)
    return _blocking_steps(state)


def _not_valid_steps(state: State) -> list[Step]:
    parent = state.blob_tree[0]
    steps = []
    if parent.key == "none":
        steps.append(_add(state, parent, not_valid=True, blocks=_BRIEF_BOTH))
    steps += [_validate(state, t) for t in state.leaves if t.key != "valid"]
    steps.append(_validate(state, parent, _VALIDATE_PARENT))
    return steps


def _leaf_steps(state: State) -> list[Step]:
    steps: list[Step] = []
    parent = state.blob_tree[0]
    for group in _groups(state):
        for leaf in (t for t in state.leaves if t.parent == group.name):
            if leaf.key == "none":
                steps.append(_add(state, leaf, not_valid=True, blocks=_BRIEF_LEAF.format(leaf=leaf.name)))
            if leaf.key != "valid":
                steps.append(_validate(state, leaf))
        if group is not parent and group.key == "none":
            steps.append(_add(state, group, not_valid=False, blocks=_ATTACH.format(table=group.name)))
    steps.append(_add(state, parent, not_valid=False, blocks=_ATTACH.format(table=parent.name)))
    return steps


def _groups(state: State) -> list[Table]:
    """The L1s (partitioned children of the parent), then the parent itself for leaves right under it."""
    parent = state.blob_tree[0]
    inner = [t for t in state.blob_tree if t.level == 1 and not t.leaf]
    return [*inner, parent]


def _blocking_steps(state: State) -> list[Step]:
    """Leaves left NOT VALID by an interrupted run are validated first: before 18 the parent's key would
    attach them as they are."""
    parent = state.blob_tree[0]
    steps = [_validate(state, t) for t in state.leaves if t.key == "not-valid"]
    blocks = _SCAN.format(rows=state.blob_rows, seconds=blocking_estimate(state))
    steps.append(
        _step(state, "scan", parent.name, _key_definition(state.schema, BLOB_KEY, cascade=True), blocks)
    )
    return steps


def _messages_steps(state: State) -> tuple[list[Step], str | None]:
    if not state.has_messages or state.messages is None:
        return [], f"table {state.schema}.{MESSAGES} not found: its key cannot be restored"
    top, table = state.top_key(MESSAGES), state.messages
    if top is not None and table.key != "not-valid":
        return [], None
    if table.key == "other":
        return (
            [],
            f"{MESSAGES} has a constraint named {MESSAGES_KEY} that is not its key into {META}: drop it",
        )
    steps = []
    if table.key == "none":
        definition = _key_definition(state.schema, MESSAGES_KEY, cascade=False) + sql.SQL(" NOT VALID")
        steps.append(_step(state, "brief", MESSAGES, definition, _BRIEF_MESSAGES))
    steps.append(_validate(state, table, _VALIDATE_MESSAGES, MESSAGES_KEY))
    return steps, None


_BRIEF_BOTH = (
    "SHARE ROW EXCLUSIVE on every table of both trees while the catalog is updated (no row is read): "
    "envelope inserts wait for it"
)
_BRIEF_LEAF = (
    "SHARE ROW EXCLUSIVE on {leaf} and every meta table while the catalog is updated (no row is read): "
    "envelope inserts wait for it"
)
_ATTACH = (
    "ACCESS EXCLUSIVE on every meta table and the blob leaves below {table}, SHARE ROW EXCLUSIVE on the "
    "blob tables: inserts and meta reads wait while the validated child keys are attached (no row is read)"
)
_VALIDATE_LEAF = (
    "SHARE UPDATE EXCLUSIVE on {table}, ROW SHARE on {meta}: reads the leaf's rows; no insert or read waits"
)
_VALIDATE_PARENT = (
    "SHARE UPDATE EXCLUSIVE on the blob tables whose key is not yet marked valid: no row left to read; no "
    "insert or read waits"
)
_BRIEF_MESSAGES = (
    f"SHARE ROW EXCLUSIVE on {MESSAGES} and every meta table while the catalog is updated (no row is "
    "read): inserts wait for it"
)
_VALIDATE_MESSAGES = (
    f"SHARE UPDATE EXCLUSIVE on {MESSAGES}, ROW SHARE on {META}: reads its rows; no insert or read waits"
)
_SCAN = (
    "SHARE ROW EXCLUSIVE on every table of both trees while every blob row (about {rows:,}) is checked: "
    "every envelope insert waits, an estimated {seconds:,.1f} s"
)


def _key_definition(schema: str, name: str, *, cascade: bool) -> sql.Composed:
    """``ADD CONSTRAINT <name> FOREIGN KEY (…) REFERENCES <schema>.gateway_envelopes_meta (…)``, exactly as
    xmtpd's schema declares the key (the blob key with ON DELETE CASCADE, the messages key without)."""
    columns = sql.SQL(", ").join(map(sql.Identifier, KEY_COLUMNS))
    return sql.SQL("ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {}.{} ({}){}").format(
        sql.Identifier(name),
        columns,
        sql.Identifier(schema),
        sql.Identifier(META),
        columns,
        sql.SQL(" ON DELETE CASCADE" if cascade else ""),
    )


def _step(state: State, lock: Lock, table: str, action: sql.Composable, blocks: str) -> Step:
    """``ALTER TABLE <schema>.<table> <action>``."""
    statement = sql.SQL("ALTER TABLE {}.{} {}").format(
        sql.Identifier(state.schema), sql.Identifier(table), action
    )
    return Step(lock, statement, blocks)


def _add(state: State, table: Table, *, not_valid: bool, blocks: str) -> Step:
    definition = _key_definition(state.schema, BLOB_KEY, cascade=True)
    if not_valid:
        definition += sql.SQL(" NOT VALID")
    return _step(state, "brief", table.name, definition, blocks)


def _validate(state: State, table: Table, blocks: str | None = None, key: str = BLOB_KEY) -> Step:
    action = sql.SQL("VALIDATE CONSTRAINT {}").format(sql.Identifier(key))
    text = blocks or _VALIDATE_LEAF.format(table=table.name, meta=META)
    return _step(state, "validate", table.name, action, text)


# --- reading --------------------------------------------------------------------------------------------


def read_state(conn: Conn, schema: str) -> State:
    """check's own facts (which top-level keys exist) and the progress of a repair, in one snapshot."""
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
