"""Decide which (originator, band) pairs to create, and say why: pure, deterministic, no I/O.

The planner reproduces xmtpd's worker rule (a fill of the current band *strictly* above 0.7 creates exactly
the next band) and adds what the worker lacks:

* repair: the band holding an originator's position (band 0 for a configured originator without rows yet)
  is planned when it is missing or only half there (in one of the meta/blob trees), so the first insert
  never has to take the lazy path;
* runway: with a rate forecast, the next band is planned once the current run of bands would be exhausted
  within ``runway_seconds``, however low the fill, and with ``max_bands_ahead > 1`` further bands are added
  while the end of the last one is still within the runway.

Two limits protect against xmtpd's pruner: nothing is planned more than
``max_bands_ahead`` bands above the current band (the pruner drops empty bands below the highest one, so
empty future bands are at risk), and nothing is ever planned below the current band (pruned bands stay
pruned).  A band whose end would overflow ``bigint`` is silently never planned.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from partitiond.bands import INT4_MAX, INT4_MIN, INT8_MAX, Band, band_index, fill_ratio, next_band
from partitiond.forecast import Forecast

Kind = Literal["repair", "ahead"]

# A sanity bound, not a recommendation (1 is the only pruner-safe value): it keeps one plan finite even with
# an absurd forecast, since the runway rule may otherwise add a band per step of the loop.
MAX_BANDS_AHEAD = 1_000


@dataclass(frozen=True, slots=True)
class OriginatorView:
    """What the catalog and the vector clock say about one originator.

    ``complete`` holds bands present in both the meta and blob trees, ``partial`` bands present in only one.
    ``meta_only`` optionally says which partial bands are the meta-only ones (the rest are blob-only); when
    None, reasons cannot name the missing tree.  ``from_trees`` fills all three from the two trees.  Bands
    must be aligned to the policy's width to be recognised: others are ignored (and an overlapping
    partition would then make the ensure fail loudly, which is what we want).
    """

    originator: int
    position: int | None
    complete: frozenset[Band] = frozenset()
    partial: frozenset[Band] = frozenset()
    meta_only: frozenset[Band] | None = None

    def __post_init__(self) -> None:
        if not INT4_MIN <= self.originator <= INT4_MAX:
            raise ValueError(f"originator {self.originator} is outside int4")
        if self.position is not None and not 0 <= self.position <= INT8_MAX:
            raise ValueError(f"position {self.position} of originator {self.originator} is outside 0..int8")
        if self.complete & self.partial:
            raise ValueError(f"originator {self.originator}: bands both complete and partial")
        if self.meta_only is not None and not self.meta_only <= self.partial:
            raise ValueError(f"originator {self.originator}: meta_only must be a subset of partial")

    @classmethod
    def from_trees(
        cls, originator: int, position: int | None, meta: Iterable[Band], blob: Iterable[Band]
    ) -> OriginatorView:
        """Build a view from the bands found in each tree, so partial bands know which tree is missing."""
        meta_set, blob_set = frozenset(meta), frozenset(blob)
        return cls(originator, position, meta_set & blob_set, meta_set ^ blob_set, meta_set - blob_set)


@dataclass(frozen=True, slots=True)
class Policy:
    """Tuning knobs; the defaults reproduce xmtpd's worker (W = 1e6, fill > 0.7, one band ahead).

    ``max_bands_ahead > 1`` is only safe if xmtpd's pruner is changed: it drops empty bands below the highest.
    ``runway_seconds=None`` disables the rate-based rule.
    """

    band_width: int = 1_000_000
    fill_threshold: float = 0.7
    max_bands_ahead: int = 1
    max_creates_per_run: int = 100
    runway_seconds: float | None = None

    def __post_init__(self) -> None:
        if not 0 < self.band_width <= INT8_MAX:
            raise ValueError(f"band_width must be in 1..int8, got {self.band_width}")
        if not 0.0 <= self.fill_threshold <= 1.0:
            raise ValueError(f"fill_threshold must be within [0, 1], got {self.fill_threshold}")
        if not 0 <= self.max_bands_ahead <= MAX_BANDS_AHEAD:
            raise ValueError(f"max_bands_ahead must be in 0..{MAX_BANDS_AHEAD}, got {self.max_bands_ahead}")
        if self.max_creates_per_run < 0:
            raise ValueError(f"max_creates_per_run must be non-negative, got {self.max_creates_per_run}")
        if self.runway_seconds is not None and not (
            math.isfinite(self.runway_seconds) and self.runway_seconds >= 0.0
        ):
            raise ValueError(f"runway_seconds must be finite and non-negative, got {self.runway_seconds}")


@dataclass(frozen=True, slots=True)
class PlannedBand:
    """One band pair to ensure.  ``headroom`` is the originator's headroom before this plan (for urgency);
    ``runway`` the forecast seconds until its existing bands run out (0.0 for a repair, None without a
    rate), which decides whether a band may be created the slow way when the cheap one is blocked."""

    originator: int
    band: Band
    kind: Kind
    reason: str
    headroom: int
    runway: float | None = None


@dataclass(frozen=True, slots=True)
class OriginatorStatus:
    """Where an originator stands; the numbers behind the metrics and the plan.

    ``current`` is the band holding the position (band 0 without rows); it may be unstorable (end above
    ``INT8_MAX``) for a position in the last, partial band-width of the int8 range.  ``last`` is the top of
    the run of complete bands starting at ``current`` (None when ``current`` is not complete).  ``headroom``
    counts the ids that still fit without a new band; ``seconds_to_exhaustion`` is 0.0 when ``current`` is
    not complete and None without a rate.
    """

    originator: int
    position: int | None
    current: Band
    last: Band | None
    headroom: int
    fill: float
    seconds_to_exhaustion: float | None


@dataclass(frozen=True, slots=True)
class Plan:
    """``creates`` (capped, most urgent first), what the cap ``deferred``, and one status per originator."""

    creates: tuple[PlannedBand, ...]
    deferred: tuple[PlannedBand, ...]
    statuses: tuple[OriginatorStatus, ...]


def assess(view: OriginatorView, policy: Policy, forecast: Forecast | None = None) -> OriginatorStatus:
    """Compute an originator's status; ``plan`` builds on it, metrics can use it directly."""
    current = _current_band(view, policy.band_width)
    last = _contiguous_top(current, view.complete)
    position = _effective(view.position)
    headroom = max(0, last.end - position - 1) if last is not None else 0
    fill = 0.0 if view.position is None else fill_ratio(view.position, current)
    if last is None:
        exhaustion: float | None = 0.0
    elif forecast is None:
        exhaustion = None
    else:
        exhaustion = forecast.seconds_until(position, last.end)
    return OriginatorStatus(view.originator, view.position, current, last, headroom, fill, exhaustion)


def plan(
    views: Iterable[OriginatorView], policy: Policy, forecasts: Mapping[int, Forecast] | None = None
) -> Plan:
    """Plan every originator, order by urgency and apply ``max_creates_per_run``.

    Urgency: repairs first (inserts are failing over to the lazy path right now), then least headroom, then
    originator id and band start, so the result never depends on input order.
    """
    forecasts = forecasts or {}
    statuses: list[OriginatorStatus] = []
    planned: list[PlannedBand] = []
    for view in sorted(views, key=lambda v: v.originator):
        if statuses and statuses[-1].originator == view.originator:
            raise ValueError(f"originator {view.originator} appears more than once")
        status = assess(view, policy, forecasts.get(view.originator))
        statuses.append(status)
        planned.extend(_plan_originator(view, status, policy, forecasts.get(view.originator)))
    planned.sort(key=_urgency)
    cap = policy.max_creates_per_run
    return Plan(tuple(planned[:cap]), tuple(planned[cap:]), tuple(statuses))


def _urgency(p: PlannedBand) -> tuple[bool, int, int, int]:
    return (p.kind != "repair", p.headroom, p.originator, p.band.start)


def _effective(position: int | None) -> int:
    """A configured originator without rows behaves like one whose last id is -1 (band 0 is next)."""
    return -1 if position is None else position


def _current_band(view: OriginatorView, width: int) -> Band:
    # Not band_for: near INT8_MAX the band may be unstorable, and the planner must not raise for that.
    start = (view.position or 0) // width * width
    return Band(start, start + width)


def _contiguous_top(current: Band, complete: frozenset[Band]) -> Band | None:
    if current not in complete:
        return None
    top = current
    while (above := next_band(top)) is not None and above in complete:
        top = above
    return top


def _plan_originator(
    view: OriginatorView, status: OriginatorStatus, policy: Policy, forecast: Forecast | None
) -> list[PlannedBand]:
    """Repair the current band, then walk upwards from the top of the contiguous complete run.

    Existing bands count towards ``max_bands_ahead`` but are not planned; the first band no rule asks for
    ends the walk, so the plan never leaves a hole between what exists and what it creates.
    """
    out: list[PlannedBand] = []
    current = status.current
    if current not in view.complete and current.end <= INT8_MAX:
        reason = _repair_reason(view, current)
        out.append(PlannedBand(view.originator, current, "repair", reason, status.headroom, 0.0))
    top = status.last or current
    limit = band_index(current) + policy.max_bands_ahead
    while (above := next_band(top)) is not None and band_index(above) <= limit:
        if above not in view.complete:
            why = _ahead_reason(view, status, policy, forecast, top, above)
            if why is None:
                break
            runway = status.seconds_to_exhaustion
            out.append(PlannedBand(view.originator, above, "ahead", why, status.headroom, runway))
        top = above
    return out


def _ahead_reason(
    view: OriginatorView,
    status: OriginatorStatus,
    policy: Policy,
    forecast: Forecast | None,
    top: Band,
    above: Band,
) -> str | None:
    """Why ``above`` (the band right over ``top``) should be created now, or None if it should not."""
    target = _label(above)
    if above in view.partial:
        return f"{target} is partial ({_missing_tree(view, above)}) → finishing it"
    is_next = band_index(above) == band_index(status.current) + 1
    if is_next and view.position is not None and status.fill > policy.fill_threshold:
        pct = _pct(status.fill, policy.fill_threshold)
        return (
            f"seq {view.position:,} is {pct} into band {band_index(status.current)} "
            f"(threshold {policy.fill_threshold * 100:g}%) → {target}"
        )
    return _runway_reason(view, policy, forecast, top, target)


def _runway_reason(
    view: OriginatorView, policy: Policy, forecast: Forecast | None, top: Band, target: str
) -> str | None:
    if policy.runway_seconds is None or forecast is None or forecast.rate is None:
        return None
    seconds = forecast.seconds_until(_effective(view.position), top.end)
    if seconds is None or seconds > policy.runway_seconds:
        return None
    return (
        f"at ~{_rate(forecast.rate)} ids/s band {band_index(top)} ends in {_duration(seconds)} "
        f"≤ runway {_duration(policy.runway_seconds)} → {target}"
    )


def _repair_reason(view: OriginatorView, band: Band) -> str:
    state = f"is partial ({_missing_tree(view, band)})" if band in view.partial else "is missing"
    if view.position is None:
        return f"originator {view.originator} has no rows yet: {_label(band)} {state}"
    return f"seq {view.position:,} has no band: {_label(band)} {state}"


def _missing_tree(view: OriginatorView, band: Band) -> str:
    if view.meta_only is None:
        return "present in only one of the meta/blob trees"
    if band in view.meta_only:
        return "meta present, blob tree missing"
    return "blob present, meta tree missing"


def _label(band: Band) -> str:
    return f"band {band_index(band)} [{band.start:,}, {band.end:,})"


def _pct(fill: float, threshold: float) -> str:
    """Fill as a percentage, with enough decimals that it visibly exceeds the threshold (70.0001%)."""
    decimals = 1
    while decimals < 6 and round(fill * 100, decimals) <= threshold * 100:
        decimals += 1
    return f"{fill * 100:.{decimals}f}%"


def _rate(rate: float) -> str:
    return f"{rate:,.1f}" if rate < 1e12 else f"{rate:.3g}"


def _duration(seconds: float) -> str:
    """Compact human duration: 45s, 5m12s, 1h0m, 2d3h."""
    if not math.isfinite(seconds) or seconds >= 1e9:
        return f"{seconds:.3g}s"
    total = round(seconds)
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def next_probe_delay(
    statuses: Iterable[OriginatorStatus], probe_interval: float, warmup: float = 5.0
) -> float:
    """Seconds until the next position probe: adaptive, so fast originators are looked at more often.

    ``min(probe_interval, max(floor, least seconds_to_exhaustion / 2))``: a band about to run out is looked
    at again before it does.  An originator with rows but no rate yet (daemon just started, or its history
    was reset) gets a second reading after ``warmup`` seconds, because until then only the fill threshold
    can act — the runway simulation shows that gap costs a cold-path insert at high rates.  The floor,
    1 s or the probe interval if that is shorter, bounds the probe rate.
    """
    floor = min(1.0, probe_interval)
    delay = probe_interval
    for status in statuses:
        if status.seconds_to_exhaustion is not None:
            delay = min(delay, max(floor, status.seconds_to_exhaustion / 2.0))
        elif status.position is not None:
            delay = min(delay, warmup)
    return delay
