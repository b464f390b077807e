"""Read-only SQL: server state, originator positions and the partitions that exist.

Every function here is a read; none takes a lock stronger than ACCESS SHARE on a catalog or on
``gateway_envelopes_latest``.  The query texts live in ``partitiond/queries/*.sql``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from partitiond import sqlfiles
from partitiond.bands import Band
from partitiond.planner import OriginatorView, PlannedBand

Conn = psycopg.Connection[Any]
META = "gateway_envelopes_meta"
BLOB = "gateway_envelopes_blob"


@cache
def query(name: str) -> str:
    """The text of ``partitiond/queries/<name>.sql``."""
    return resources.files("partitiond.queries").joinpath(f"{name}.sql").read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class ServerState:
    """What must be true before partitiond may act, read in one round trip."""

    in_recovery: bool
    server_version: int
    deadlock_timeout_ms: int
    has_meta: bool
    has_blob: bool
    has_latest: bool
    has_function: bool
    function_marker: str | None
    ensure_ours: bool
    family_digest: str | None

    @property
    def functions(self) -> str:
        """``missing``; ``foreign`` (ensure_gateway_parts_v4 is someone else's); ``outdated`` (partitiond's,
        but not exactly the bodies this version ships); or ``current``."""
        if not self.has_function:
            return "missing"
        if not self.ensure_ours:
            return "foreign"
        return "current" if self.family_digest == sqlfiles.shipped_digest() else "outdated"

    def function_problem(self, schema: str) -> str | None:
        """Why partitiond must not run the installed functions (None: they are the ones it ships)."""
        subject = f"function {schema}.ensure_gateway_parts_v4"
        fix = f"run `partitiond install-sql --schema {schema}` (or apply `partitiond install-sql --print`)"
        match self.functions:
            case "missing":
                return f"{subject} is not installed: {fix}"
            case "foreign":
                return (
                    f"{subject} is not partitiond's: something else (an xmtpd migration, say) replaced it, "
                    "so partitiond will not run it; check what replaced it, then reinstall partitiond's "
                    f"with `partitiond install-sql --schema {schema} --replace-foreign`"
                )
            case "outdated":
                found = self.function_marker or "no version marker"
                return (
                    f"{subject} and its helpers are not the ones this partitiond ships ({found}; this is "
                    f"{sqlfiles.VERSION_MARKER}, and a function body differs): {fix}"
                )
        return None


def server_state(conn: Conn, schema: str) -> ServerState:
    family = sorted(sqlfiles.function_bodies())
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(query("server_state"), {"schema": schema, "family": family}).fetchone()
    assert row is not None
    return ServerState(**row)


@dataclass(frozen=True, slots=True)
class Partition:
    """One L2 band of one tree, identified by its bounds; ``name`` is only for messages."""

    tree: str
    originator: int
    band: Band
    name: str


@dataclass(frozen=True, slots=True)
class Inventory:
    """Everything that exists under both trees, from one catalog query."""

    l1: Mapping[str, frozenset[int]]  # tree -> originators that have an L1
    bands: tuple[Partition, ...]
    l1_names: Mapping[int, str] = field(default_factory=dict)  # originator -> meta L1 name

    def originators(self) -> set[int]:
        return set(self.l1.get(META, frozenset())) | set(self.l1.get(BLOB, frozenset()))

    def with_bands(self, planned: Iterable[PlannedBand]) -> Inventory:
        """This inventory plus bands now known to exist in both trees (e.g. just ensured)."""
        added = [Partition(tree, p.originator, p.band, "") for p in planned for tree in (META, BLOB)]
        oids = {part.originator for part in added}
        l1 = {tree: self.l1.get(tree, frozenset()) | oids for tree in (META, BLOB)}
        return replace(self, l1=l1, bands=self.bands + tuple(added))

    def views(self, positions: Mapping[int, int | None]) -> list[OriginatorView]:
        """Planner input: for each originator, the bands complete in both trees and those in only one."""
        per_tree: dict[tuple[int, str], set[Band]] = defaultdict(set)
        for part in self.bands:
            per_tree[(part.originator, part.tree)].add(part.band)
        return [
            OriginatorView.from_trees(
                originator, position, per_tree[(originator, META)], per_tree[(originator, BLOB)]
            )
            for originator, position in sorted(positions.items())
        ]


def inventory(conn: Conn, schema: str) -> Inventory:
    """Read every L1 and L2 partition of both trees, by bound."""
    l1: dict[str, set[int]] = defaultdict(set)
    l1_names: dict[int, str] = {}
    bands: list[Partition] = []
    for tree, originator, l1_name, l2_name, start, end in conn.execute(
        query("partitions"), {"schema": schema}
    ):
        l1[tree].add(originator)
        if tree == META:
            l1_names[originator] = l1_name
        if start is not None and end is not None:
            bands.append(Partition(tree, originator, Band(start, end), l2_name))
    return Inventory(
        l1={tree: frozenset(oids) for tree, oids in l1.items()}, bands=tuple(bands), l1_names=l1_names
    )


def latest_positions(conn: Conn, schema: str) -> dict[int, int]:
    """xmtpd's vector clock: the highest sequence id per originator, one indexed read."""
    stmt = sql.SQL(query("latest_positions")).format(schema=sql.Identifier(schema))
    return {int(oid): int(seq) for oid, seq in conn.execute(stmt)}


def probed_positions(conn: Conn, schema: str, l1_names: Mapping[int, str]) -> dict[int, int]:
    """Fallback when ``gateway_envelopes_latest`` is missing: ``max()`` per originator, index-backed.

    Each probe targets one L1 with its originator fixed, so PostgreSQL answers it with a backward scan of
    the primary key over an ordered Append, newest band first, stopping at the first row.  All probes go in
    one statement (one round trip); there is never a table-wide ``GROUP BY``.
    """
    if not l1_names:
        return {}
    probes = sql.SQL(" UNION ALL ").join(
        sql.SQL(
            "SELECT {oid}::int,"
            " (SELECT max(originator_sequence_id) FROM {l1} WHERE originator_node_id = {oid})"
        ).format(oid=sql.Literal(oid), l1=sql.Identifier(schema, name))
        for oid, name in sorted(l1_names.items())
    )
    return {int(oid): int(seq) for oid, seq in conn.execute(probes) if seq is not None}


def positions(
    conn: Conn, schema: str, state: ServerState, inv: Inventory, configured: Iterable[int]
) -> dict[int, int | None]:
    """Positions of every originator that is configured, has rows, or has partitions.

    A configured originator without rows or partitions maps to ``None`` (it gets its L1 and band 0).  An
    originator that has partitions but no visible rows (only possible without the latest table, e.g. after
    pruning emptied it) is placed at the start of its highest band: that never recreates pruned bands below.
    """
    found: dict[int, int] = (
        latest_positions(conn, schema) if state.has_latest else probed_positions(conn, schema, inv.l1_names)
    )
    top: dict[int, int] = {}
    for part in inv.bands:
        top[part.originator] = max(top.get(part.originator, part.band.start), part.band.start)
    merged: dict[int, int | None] = {oid: top.get(oid) for oid in (*configured, *inv.originators())}
    merged.update(found)
    return merged
