"""What ``partitiond repair`` does, decided without I/O: put back the top-level foreign keys that
xmtpd's pruner drops, blocking as little as the server's major allows.

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

Planning (:func:`plan`) is pure; :mod:`partitiond.repair` reads the catalog and runs the steps.  Every
step is one statement in its own transaction, so an interruption leaves either the step done or nothing of
it, and a re-run reads what is there (``NOT VALID`` keys left behind included) and continues.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg import sql

from partitiond.check_model import BLOB, META, CatalogFact

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
