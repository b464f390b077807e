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

import itertools
import json
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import click
import psycopg

from partitiond import access, catalog, pipeline, sqlfiles
from partitiond.bands import INT8_MAX, Band, band_index, fill_ratio, next_band
from partitiond.config import Settings, format_duration
from partitiond.forecast import Forecast
from partitiond.lease import LeaseHolder, describe_holders, holders, lease_document
from partitiond.planner import OriginatorView, assess

Severity = Literal["ok", "info", "warning", "critical"]
Format = Literal["table", "json"]
FORMATS: tuple[Format, ...] = ("table", "json")

EXIT_OK = 0
EXIT_WARNING = 1
EXIT_CRITICAL = 2

# Per-relation checks (bounds, names, leftovers...) report at most this many relations each; the rest are
# folded into one finding, so a wrong --band-width on a big database gives a readable report.
MAX_PER_CHECK = 20
FATAL_CHECKS = frozenset({"connection", "database"})

META, BLOB = catalog.META, catalog.BLOB
_TREE_SHORT = {META: "meta", BLOB: "blob"}
_LIST_BOUND = re.compile(r"^FOR VALUES IN \('?(-?[0-9]+)'?\)$")
_ON_DELETE = {"a": "NO ACTION", "r": "RESTRICT", "c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}
_PRUNE_HAZARD = (
    "xmtpd's pruner drops partitions with DROP TABLE … CASCADE, which removes the whole top-level "
    "foreign key (xmtpd-schema-facts §6); re-create it"
)


@dataclass(frozen=True, slots=True)
class Finding:
    """One verdict: ``check`` is a stable short name, ``subject`` what it is about."""

    severity: Severity
    check: str
    subject: str
    message: str


@dataclass(frozen=True, slots=True)
class CatalogFact:
    """One row of ``queries/check_facts.sql`` (see that file for the kinds)."""

    kind: str
    relation: str
    name: str | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Facts:
    """Everything :func:`evaluate` looks at; ``inventory`` is empty when the trees do not exist."""

    schema: str
    state: catalog.ServerState
    inventory: catalog.Inventory = field(default_factory=lambda: catalog.Inventory(l1={}, bands=()))
    positions: Mapping[int, int | None] = field(default_factory=dict)
    extra: tuple[CatalogFact, ...] = ()
    privileges: access.Privileges | None = None  # None: not read
    lease: tuple[LeaseHolder, ...] | None = None  # None: not read; (): nobody holds it

    def of_kind(self, kind: str) -> list[CatalogFact]:
        return [f for f in self.extra if f.kind == kind]


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
    out.extend(_originators(facts, settings, forecasts or {}))
    out.extend(_capped(_symmetry(facts)))
    out.extend(_capped(_bounds(facts, settings.band_width)))
    out.extend(_capped(_names(facts)))
    out.extend(_capped(_leftovers(facts)))
    return out


def exit_code(findings: Iterable[Finding]) -> int:
    severities = {f.severity for f in findings}
    if "critical" in severities:
        return EXIT_CRITICAL
    return EXIT_WARNING if "warning" in severities else EXIT_OK


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
        yield Finding("ok", "foreign-keys", subject, f"{blob.name} (ON DELETE CASCADE)")
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
        yield Finding("ok", "foreign-keys", subject, f"{messages.name}")


def _bands_by_tree(facts: Facts) -> dict[tuple[int, str], set[Band]]:
    per_tree: dict[tuple[int, str], set[Band]] = defaultdict(set)
    for part in facts.inventory.bands:
        per_tree[(part.originator, part.tree)].add(part.band)
    return per_tree


def _originators(facts: Facts, settings: Settings, forecasts: Mapping[int, Forecast]) -> Iterator[Finding]:
    if not facts.positions:
        yield Finding(
            "info",
            "current-band",
            "originators",
            "no originator has rows or partitions and none is configured (--originator): nothing to check",
        )
        return
    per_tree = _bands_by_tree(facts)
    for originator, position in sorted(facts.positions.items()):
        meta, blob = per_tree[(originator, META)], per_tree[(originator, BLOB)]
        yield from _originator(originator, position, meta, blob, settings, forecasts.get(originator))


def _originator(
    originator: int,
    position: int | None,
    meta: set[Band],
    blob: set[Band],
    settings: Settings,
    forecast: Forecast | None,
) -> Iterator[Finding]:
    subject = f"originator {originator}"
    width = settings.band_width
    if position is not None and position < 0:
        yield Finding(
            "critical",
            "current-band",
            subject,
            f"position {position:,} is negative: sequence ids start at 0, so no band can hold it "
            "(check gateway_envelopes_latest)",
        )
        return
    start = (position or 0) // width * width
    current = Band(start, start + width)
    if current.end > INT8_MAX:
        yield Finding(
            "critical",
            "current-band",
            subject,
            f"seq {position or 0:,} needs band [{current.start:,}, {current.end:,}), which ends past the "
            f"bigint maximum {INT8_MAX:,}: no partition can hold it, the originator's sequence space is "
            "exhausted",
        )
        return
    view = OriginatorView.from_trees(originator, position, meta, blob)
    status = assess(view, pipeline.policy_for(settings), forecast)
    where = f"seq {position:,}" if position is not None else "no rows yet"
    if status.last is None:
        yield Finding(
            "critical", "current-band", subject, f"{where}: {_label(current)} {_missing(current, meta, blob)}"
        )
    else:
        yield Finding("ok", "current-band", subject, f"{where}: {_label(current)} exists in both trees")
        yield _runway(subject, position, current, status.last, status.seconds_to_exhaustion, settings)
    yield from _gaps(subject, current, meta | blob)


def _runway(
    subject: str,
    position: int | None,
    current: Band,
    last: Band,
    seconds: float | None,
    settings: Settings,
) -> Finding:
    headroom = max(0, last.end - (position if position is not None else -1) - 1)
    after = next_band(last)
    if seconds is not None and seconds < settings.runway_warning_seconds:
        return Finding(
            "warning",
            "runway",
            subject,
            f"at the current rate {_label(last)} is full in {format_duration(seconds)}, below the runway "
            f"warning of {format_duration(settings.runway_warning_seconds)} ({headroom:,} ids of headroom)",
        )
    fill = fill_ratio(position, last) if position is not None else 0.0
    if fill > settings.fill_threshold:
        follow = (
            f"band {band_index(last) + 1} does not exist"
            if after is not None
            else "no band can follow it (bigint maximum)"
        )
        return Finding(
            "warning",
            "runway",
            subject,
            f"seq {position:,} is {fill * 100:.1f}% into {_label(last)} (threshold "
            f"{settings.fill_threshold * 100:g}%) and {follow}: only {headroom:,} ids of headroom",
        )
    top = f"up to the end of band {band_index(last)}" if last != current else f"in band {band_index(last)}"
    return Finding("ok", "runway", subject, f"{headroom:,} ids of headroom {top}")


def _gaps(subject: str, current: Band, present: set[Band]) -> Iterator[Finding]:
    """Holes between existing bands: below the current band they are pruning's work (info), above it
    inserts will hit them (warning); overlaps are impossible in one PostgreSQL parent but reported."""
    ordered = sorted(present)
    below: list[tuple[int, int]] = []
    for lower, upper in itertools.pairwise(ordered):
        if lower.end > upper.start:
            yield Finding(
                "critical",
                "gaps",
                subject,
                f"bands [{lower.start:,}, {lower.end:,}) and [{upper.start:,}, {upper.end:,}) overlap",
            )
        elif lower.end < upper.start:
            if upper.start <= current.start:
                below.append((lower.end, upper.start))
            elif lower.end >= current.end:
                yield Finding(
                    "warning",
                    "gaps",
                    subject,
                    f"ids [{lower.end:,}, {upper.start:,}) above the current band have no partition while "
                    f"higher bands exist: inserts reaching them take xmtpd's lazy path",
                )
    if ordered and ordered[0].start > 0 and ordered[0].start <= current.start:
        below.insert(0, (0, ordered[0].start))
    if below:
        ranges = ", ".join(f"[{a:,}, {b:,})" for a, b in below[:5]) + (" …" if len(below) > 5 else "")
        yield Finding(
            "info",
            "gaps",
            subject,
            f"no partition below the current band for ids {ranges}: expected where xmtpd's pruner dropped "
            "empty bands",
        )


def _symmetry(facts: Facts) -> Iterator[Finding]:
    per_tree = _bands_by_tree(facts)
    names = {(p.tree, p.originator, p.band): p.name for p in facts.inventory.bands}
    problems = 0
    for originator in sorted(facts.inventory.originators()):
        for tree, other in ((META, BLOB), (BLOB, META)):
            if originator not in facts.inventory.l1.get(other, frozenset()) and originator in (
                facts.inventory.l1.get(tree, frozenset())
            ):
                problems += 1
                yield Finding(
                    "warning",
                    "symmetry",
                    f"originator {originator}",
                    f"has an L1 partition in {_TREE_SHORT[tree]} but none in {_TREE_SHORT[other]}",
                )
            for band in sorted(per_tree[(originator, tree)] - per_tree[(originator, other)]):
                problems += 1
                yield Finding(
                    "warning",
                    "symmetry",
                    names[(tree, originator, band)],
                    f"{_TREE_SHORT[tree]} band [{band.start:,}, {band.end:,}) has no "
                    f"{_TREE_SHORT[other]} twin",
                )
    if not problems:
        yield Finding("ok", "symmetry", "all bands", "every meta band has its blob twin and vice versa")


def _bounds(facts: Facts, width: int) -> Iterator[Finding]:
    bad = 0
    for part in facts.inventory.bands:
        if part.band.width != width or part.band.start % width:
            bad += 1
            yield Finding(
                "critical",
                "bounds",
                part.name,
                f"covers [{part.band.start:,}, {part.band.end:,}) ({part.band.width:,} wide), not a band of "
                f"--band-width {width:,}: partitiond refuses to run until they agree",
            )
    if not bad:
        yield Finding("ok", "bounds", "all bands", f"{len(facts.inventory.bands):,} bands of width {width:,}")


def expected_name(tree: str, originator: int, band: Band | None = None) -> str:
    """The child name xmtpd and partitiond give, cut to PostgreSQL's 63 bytes as CREATE TABLE does."""
    name = f"{tree}_o{originator}" if band is None else f"{tree}_o{originator}_s{band.start}_{band.end}"
    return name.encode()[:63].decode("utf-8", "ignore")


def _names(facts: Facts) -> Iterator[Finding]:
    bad = 0
    for part in facts.inventory.bands:
        want = expected_name(part.tree, part.originator, part.band)
        if part.name != want:
            bad += 1
            yield Finding(
                "warning",
                "names",
                part.name,
                f"name disagrees with its bounds [{part.band.start:,}, {part.band.end:,}) of originator "
                f"{part.originator}: expected {want} (xmtpd's pruner reads bounds from names)",
            )
    for fact in facts.of_kind("l1"):
        match = _LIST_BOUND.match(fact.detail or "")
        if match is None or fact.name is None:
            continue  # a DEFAULT partition: reported by the leftovers check
        want = expected_name(fact.relation, int(match.group(1)))
        if fact.name != want:
            bad += 1
            yield Finding(
                "warning",
                "names",
                fact.name,
                f"name disagrees with its bound (originator {match.group(1)}): expected {want}",
            )
    if not bad:
        yield Finding("ok", "names", "all partitions", "every name matches its bounds")


# Leftover kind -> (subject, message): interrupted or foreign work partitiond must not paper over.
_LEFTOVERS: dict[str, tuple[Callable[[CatalogFact], str], Callable[[CatalogFact], str]]] = {
    "seed_constraint": (
        lambda f: f.relation,
        lambda f: (
            f"seed constraint {f.name} is still there ({f.detail}): an interrupted creation; drop it "
            "at a quiet moment (DROP CONSTRAINT takes ACCESS EXCLUSIVE)"
        ),
    ),
    "unattached": (
        lambda f: f.relation,
        lambda f: (
            f"named like a partition but not attached (relkind {f.detail}): a half-done creation or "
            "something in the way of one; inspect it, then attach, rename or drop it"
        ),
    ),
    "detach_pending": (
        lambda f: f.name or f.relation,
        lambda f: (
            "pending detach (an interrupted DETACH … CONCURRENTLY): finish it with ALTER TABLE "
            f"{f.relation} DETACH PARTITION {f.name} FINALIZE"
        ),
    ),
    "default": (
        lambda f: f.name or f.relation,
        lambda f: (
            f"DEFAULT partition of {f.relation}: xmtpd never creates one; it hides missing partitions "
            "and every new partition must scan it under lock"
        ),
    ),
}


def _leftovers(facts: Facts) -> Iterator[Finding]:
    bad = 0
    for kind, (subject, message) in _LEFTOVERS.items():
        for fact in facts.of_kind(kind):
            bad += 1
            yield Finding("warning", "leftovers", subject(fact), message(fact))
    if not bad:
        yield Finding(
            "ok",
            "leftovers",
            facts.schema,
            "no seed constraints, unattached look-alikes, pending detaches or DEFAULT partitions",
        )


def _capped(findings: Iterable[Finding], limit: int = MAX_PER_CHECK) -> list[Finding]:
    """At most ``limit`` findings of one check; the rest become one finding with the worst severity."""
    items = list(findings)
    if len(items) <= limit:
        return items
    rest = items[limit:]
    worst = max((f.severity for f in rest), key=_RANK.__getitem__)
    more = Finding(worst, rest[0].check, f"{len(rest):,} more", f"{len(rest):,} more findings like the above")
    return [*items[:limit], more]


_RANK: dict[Severity, int] = {"ok": 0, "info": 1, "warning": 2, "critical": 3}


def _label(band: Band) -> str:
    return f"band {band_index(band)} [{band.start:,}, {band.end:,})"


def _missing(band: Band, meta: set[Band], blob: set[Band]) -> str:
    if band in meta:
        return "exists in meta only: blob inserts fail or take the lazy path"
    if band in blob:
        return "exists in blob only: meta inserts fail or take the lazy path"
    return "is missing in both trees: inserts take xmtpd's lazy path"


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
        return [Finding("critical", "connection", "server", _one_line(str(exc)))], None
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


def _one_line(text: str) -> str:
    """libpq's messages continue on indented lines ("\tIs the server running…"): monitoring wants one."""
    return " ".join(text.split())


def summary(findings: Sequence[Finding]) -> dict[str, int]:
    counts: dict[str, int] = {severity: 0 for severity in _RANK}
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
