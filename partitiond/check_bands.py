"""``partitiond check``'s rules about the bands themselves: the current band of every originator and its
runway, gaps, meta/blob symmetry, bounds, names and leftovers.  Pure: :class:`Facts` in, findings out.
"""

from __future__ import annotations

import itertools
import re
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping

from partitiond import pipeline
from partitiond.bands import INT8_MAX, Band, band_index, fill_ratio, next_band
from partitiond.check_model import BLOB, META, CatalogFact, Facts, Finding
from partitiond.config import Settings, format_duration
from partitiond.forecast import Forecast
from partitiond.planner import OriginatorView, assess

_TREE_SHORT = {META: "meta", BLOB: "blob"}
_LIST_BOUND = re.compile(r"^FOR VALUES IN \('?(-?[0-9]+)'?\)$")


def _bands_by_tree(facts: Facts) -> dict[tuple[int, str], set[Band]]:
    per_tree: dict[tuple[int, str], set[Band]] = defaultdict(set)
    for part in facts.inventory.bands:
        per_tree[(part.originator, part.tree)].add(part.band)
    return per_tree


def originators(facts: Facts, settings: Settings, forecasts: Mapping[int, Forecast]) -> Iterator[Finding]:
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


def symmetry(facts: Facts) -> Iterator[Finding]:
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


def bounds(facts: Facts, width: int) -> Iterator[Finding]:
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


def names(facts: Facts) -> Iterator[Finding]:
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


def leftovers(facts: Facts) -> Iterator[Finding]:
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


def _label(band: Band) -> str:
    return f"band {band_index(band)} [{band.start:,}, {band.end:,})"


def _missing(band: Band, meta: set[Band], blob: set[Band]) -> str:
    if band in meta:
        return "exists in meta only: blob inserts fail or take the lazy path"
    if band in blob:
        return "exists in blob only: meta inserts fail or take the lazy path"
    return "is missing in both trees: inserts take xmtpd's lazy path"
