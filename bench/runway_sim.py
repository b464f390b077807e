"""Runway simulation: cold-path hits per partitioning policy over a simulated week (issue #4).

A deterministic, seeded, simulated-clock replay that drives partitiond's *real* planner
(``partitiond.planner.plan``) and rate estimator (``partitiond.forecast.RateEstimator``) with synthetic write
traces, and counts **cold-path hits**: writes whose band does not exist at that moment, so xmtpd's insert
path has to create it under an exclusive lock.

Model (all times are simulated seconds; nothing sleeps, nothing touches PostgreSQL):

* Writes are not simulated id by id.  Each originator has a piecewise-constant rate (integer ids/s, segments
  starting at whole seconds); its position (highest id written) at time ``t`` is
  ``initial + floor(ids written by t)``.  Only *band crossings* matter: the exact time the position enters
  band ``b`` is solved analytically.  A crossing into a band missing from the simulated catalog is one
  cold-path hit, and the writer creates the band on the spot (as xmtpd's insert path does); later writes to
  it find it.  An originator without rows "crosses" into band 0 with its first write (id 1).
* A planner run (a full run or a probe: both do the same here) reads every visible originator's position,
  feeds non-empty positions to one shared ``RateEstimator`` (as ``pipeline.forecasts_from`` does), builds
  ``OriginatorView``s from the simulated catalog (bands below the current one are left out: the planner
  never looks below the current band) and calls ``plan``.  Planned bands land in the catalog
  ``ddl_delay`` (default 0.1 s) after the run, standing in for the DDL's duration; a write that reaches the
  band before it lands is a cold-path hit, and the daemon's ensure then finds the band present (not counted
  as created by the policy).
* Policies:

  ``xmtpd``
      xmtpd's worker: a run every ``interval`` only, fill > 70 % creates exactly the next band, no rates,
      no probes; it sees only originators that have rows and never creates the current band.
  ``partitiond``
      the daemon's defaults (``pipeline.policy_for(Settings(...))``: 70 % rule, one band ahead, runway of two
      intervals), a full run every ``interval`` and adaptive probes in between: the next probe comes after
      ``planner.next_probe_delay(statuses, probe_interval)``, exactly as the daemon schedules them.
      Configured originators are visible (and get band 0) before their first write; others are learnt from
      the latest table, i.e. after their first write.
  ``partitiond-fixed``
      as ``partitiond``, but probes on a fixed ``probe_interval`` grid (for comparison).

* Not modelled: run jitter, run duration other than ``ddl_delay``, failures, the pruner, lock contention.

Run ``python bench/runway_sim.py --help``; ``make bench-sim`` runs the full week.
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import math
import random
import shlex
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from partitiond.bands import Band
from partitiond.config import Settings
from partitiond.forecast import Forecast, RateEstimator
from partitiond.pipeline import policy_for
from partitiond.planner import OriginatorStatus, OriginatorView, Policy, next_probe_delay, plan

DAY = 86_400
BAND_WIDTH = 1_000_000
CONSTANT_RATES = (10, 100, 167, 500, 1_000, 5_000, 10_000, 20_000)
DEFAULT_DDL_DELAY = 0.1

PolicyName = Literal["xmtpd", "partitiond-fixed", "partitiond"]
POLICIES: tuple[PolicyName, ...] = ("xmtpd", "partitiond-fixed", "partitiond")
Format = Literal["table", "markdown"]


# --- traces -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OriginatorTrace:
    """One originator's writes: ``segments`` are ``(start_second, ids_per_second)``, the first at 0, each
    rate holding until the next start.  ``initial_position`` is the highest id at t=0 (its band exists
    then), None for an originator without rows.  ``configured`` originators are known to partitiond from
    its configuration before they write."""

    originator: int
    segments: tuple[tuple[int, int], ...]
    initial_position: int | None = None
    configured: bool = True

    def __post_init__(self) -> None:
        if not self.segments or self.segments[0][0] != 0:
            raise ValueError("segments must start at second 0")
        starts = [s for s, _ in self.segments]
        if starts != sorted(set(starts)) or any(r < 0 for _, r in self.segments):
            raise ValueError("segment starts must increase and rates be non-negative")


@dataclass(frozen=True, slots=True)
class Trace:
    name: str
    originators: tuple[OriginatorTrace, ...]
    note: str = ""


def _trace_rng(seed: int, name: str) -> random.Random:
    # One stream per trace (str seeds are hashed deterministically), so adding a trace changes no other.
    return random.Random(f"{seed}:{name}")


def constant_trace(rate: int) -> Trace:
    """One originator writing ``rate`` ids/s from t=0, starting with one row (id 1) in band 0."""
    return Trace(f"const {rate:,}/s", (OriginatorTrace(1, ((0, rate),), initial_position=1),))


def bursty_trace(horizon: int, seed: int) -> Trace:
    """Quiet 5-20 min at 340 ids/s, then a 10x burst (3,400 ids/s) of 2-5 min; the mean is ~1,000 ids/s."""
    rng = _trace_rng(seed, "bursty")
    quiet, burst = 340, 3_400
    segments: list[tuple[int, int]] = []
    t = 0
    while t < horizon:
        segments.append((t, quiet))
        t += 60 * rng.randint(5, 20)
        if t >= horizon:
            break
        segments.append((t, burst))
        t += 60 * rng.randint(2, 5)
    mean = _mean_rate(segments, horizon)
    note = f"340/s quiet 5-20 min, 3,400/s bursts 2-5 min; mean {mean:,.0f}/s"
    return Trace("bursty", (OriginatorTrace(1, tuple(segments), initial_position=1),), note)


def diurnal_trace(horizon: int, seed: int) -> Trace:
    """A daily sinusoid between 500 and 5,000 ids/s (seeded phase), as 60 s constant steps."""
    rng = _trace_rng(seed, "diurnal")
    phase = rng.uniform(0.0, 2.0 * math.pi)
    low, high = 500, 5_000
    mid, amp = (high + low) / 2.0, (high - low) / 2.0
    segments = tuple(
        (t, round(mid - amp * math.cos(2.0 * math.pi * (t + 30) / DAY + phase)))
        for t in range(0, horizon, 60)
    )
    mean = _mean_rate(segments, horizon)
    note = f"500-5,000/s daily sinusoid in 60 s steps; mean {mean:,.0f}/s"
    return Trace("diurnal", (OriginatorTrace(1, segments, initial_position=1),), note)


def new_originator_trace(horizon: int, seed: int, *, configured: bool) -> Trace:
    """Originator 1 at 500 ids/s throughout; originator 2 (no rows) starts at 2,000 ids/s at 3/7 of the run
    (day 3 of a week) plus a seeded 1-59 s offset, so it is not aligned with the run grid."""
    rng = _trace_rng(seed, "new-originator")
    appear = 3 * horizon // 7 + rng.randint(1, 59)
    label = "configured" if configured else "unconfigured"
    note = f"orig 2 appears at t={appear:,} s at 2,000/s ({label}); orig 1 at 500/s"
    return Trace(
        f"new originator ({label})",
        (
            OriginatorTrace(1, ((0, 500),), initial_position=1),
            OriginatorTrace(2, ((0, 0), (appear, 2_000)), initial_position=None, configured=configured),
        ),
        note,
    )


def idle_wakeup_trace(horizon: int, seed: int) -> Trace:
    """Idle at 69 % of band 5 until 2/7 of the run (day 2 of a week) plus a seeded 1-59 s offset, then
    5,000 ids/s.  69 % is just below xmtpd's threshold, so nothing is created while idle."""
    rng = _trace_rng(seed, "idle-wakeup")
    wake = 2 * horizon // 7 + rng.randint(1, 59)
    position = 5 * BAND_WIDTH + 690_000
    note = f"idle at seq {position:,} (69% of band 5) until t={wake:,} s, then 5,000/s"
    return Trace("idle wakes up", (OriginatorTrace(1, ((0, 0), (wake, 5_000)), position),), note)


def restart_trace(rate: int, fill: float) -> Trace:
    """Not in the issue's list: the daemon (re)starts while an originator writing ``rate`` ids/s is at
    ``fill`` of band 5 (its first reading has no rate, so only the 70 % rule can act until the next probe)."""
    position = 5 * BAND_WIDTH + round(fill * BAND_WIDTH)
    note = f"daemon starts with the position at {fill:.0%} of band 5 (seq {position:,}), {rate:,}/s"
    name = f"restart at {fill:.0%} {rate:,}/s"
    return Trace(name, (OriginatorTrace(1, ((0, rate),), initial_position=position),), note)


def extra_traces() -> list[Trace]:
    return [restart_trace(rate, 0.5) for rate in (5_000, 10_000, 20_000)]


def default_traces(days: float, seed: int) -> list[Trace]:
    horizon = horizon_seconds(days)
    return [
        *(constant_trace(r) for r in CONSTANT_RATES),
        bursty_trace(horizon, seed),
        diurnal_trace(horizon, seed),
        new_originator_trace(horizon, seed, configured=True),
        new_originator_trace(horizon, seed, configured=False),
        idle_wakeup_trace(horizon, seed),
    ]


def horizon_seconds(days: float) -> int:
    return round(days * DAY)


def _mean_rate(segments: Sequence[tuple[int, int]], horizon: int) -> float:
    ends = [s for s, _ in segments[1:]] + [horizon]
    total = sum(rate * (min(end, horizon) - start) for (start, rate), end in zip(segments, ends, strict=True))
    return total / horizon if horizon else 0.0


# --- writer model -------------------------------------------------------------------------------------


class _Writer:
    """Exact piecewise-constant write curve of one originator, plus where its crossings have got to."""

    def __init__(self, spec: OriginatorTrace, width: int) -> None:
        self.spec = spec
        self.width = width
        self.starts = [s for s, _ in spec.segments]
        self.rates = [r for _, r in spec.segments]
        cum = [0]
        for i in range(1, len(self.starts)):
            cum.append(cum[-1] + self.rates[i - 1] * (self.starts[i] - self.starts[i - 1]))
        self.cum = cum
        # ids written by the end of each segment (the last one runs forever)
        self.cum_end: list[float] = [*cum[1:], math.inf if self.rates[-1] > 0 else float(cum[-1])]
        # Band the position is in (None: no rows yet), and the next band to be entered.
        self.band: int | None = None if spec.initial_position is None else spec.initial_position // width
        self.next_band = 0 if self.band is None else self.band + 1
        self.next_time = self._crossing_time(self.next_band)

    def _written(self, t: float) -> float:
        i = bisect.bisect_right(self.starts, t) - 1
        return self.cum[i] + self.rates[i] * (t - self.starts[i])

    def _target(self, band: int) -> int:
        """ids that must have been written for the position to reach ``band``."""
        if self.spec.initial_position is None:
            return max(1, band * self.width)
        return band * self.width - self.spec.initial_position

    def _crossing_time(self, band: int) -> float:
        target = self._target(band)
        i = bisect.bisect_left(self.cum_end, target)
        if i >= len(self.starts) or self.rates[i] == 0:
            return math.inf
        return self.starts[i] + (target - self.cum[i]) / self.rates[i]

    def cross(self) -> int:
        """Enter the next band; returns it."""
        entered = self.next_band
        self.band = entered
        self.next_band = entered + 1
        self.next_time = self._crossing_time(self.next_band)
        return entered

    def position(self, t: float) -> int | None:
        """Highest id at ``t``; consistent with the processed crossings despite float rounding."""
        if self.band is None:
            return None
        base = self.spec.initial_position or 0
        pos = base + math.floor(self._written(t))
        return min(max(pos, self.band * self.width), self.next_band * self.width - 1)


# --- simulation ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SimConfig:
    days: float = 7.0
    seed: int = 1
    interval: float = 1800.0
    probe_interval: float = 60.0
    ddl_delay: float = DEFAULT_DDL_DELAY
    band_width: int = BAND_WIDTH

    def settings(self) -> Settings:
        """The daemon's settings for this run: everything else at its default."""
        return Settings(
            interval=self.interval, probe_interval=self.probe_interval, band_width=self.band_width
        )


@dataclass(slots=True)
class Result:
    trace: str
    policy: PolicyName
    cold_hits: int = 0
    created_ahead: int = 0
    bands_crossed: int = 0
    max_ahead: int = 0
    runs: int = 0
    hit_times: list[float] = field(default_factory=list)


def _policy_settings(name: PolicyName, config: SimConfig) -> tuple[Policy, RateEstimator | None]:
    if name == "xmtpd":
        return Policy(band_width=config.band_width, fill_threshold=0.7, max_bands_ahead=1), None
    settings = config.settings()
    estimator = RateEstimator(max_jump_ids=settings.max_jump_bands * settings.band_width)
    return policy_for(settings), estimator


def simulate(trace: Trace, policy_name: PolicyName, config: SimConfig) -> Result:
    """Replay ``trace`` under one policy; see the module docstring for the model."""
    horizon = horizon_seconds(config.days)
    width = config.band_width
    policy, estimator = _policy_settings(policy_name, config)
    writers = {spec.originator: _Writer(spec, width) for spec in trace.originators}
    # The simulated catalog: band indexes per originator (a band holding an initial position exists).
    catalog: dict[int, set[int]] = {o: set() if w.band is None else {w.band} for o, w in writers.items()}
    pending: list[tuple[float, int, int]] = []  # (lands at, originator, band index)
    result = Result(trace.name, policy_name)

    def advance(until: float) -> None:
        """Apply every crossing and landing up to and including ``until``, in time order (landings first
        on ties: a band that lands exactly when the write arrives is there)."""
        while True:
            o, w = min(writers.items(), key=lambda item: (item[1].next_time, item[0]))
            land = pending[0][0] if pending else math.inf
            if min(land, w.next_time) > until:
                return
            if land <= w.next_time:
                _, lo, lb = heapq.heappop(pending)
                if lb not in catalog[lo]:
                    catalog[lo].add(lb)
                    result.created_ahead += 1
                    current = writers[lo].band or 0
                    result.max_ahead = max(result.max_ahead, max(catalog[lo]) - current)
                continue
            at = w.next_time
            band = w.cross()
            result.bands_crossed += 1
            if band not in catalog[o]:
                catalog[o].add(band)
                result.cold_hits += 1
                result.hit_times.append(at)
            # Bands far below the position are irrelevant to the planner; drop them to keep views small.
            catalog[o] = {b for b in catalog[o] if b >= band - 1}

    def visible(o: int) -> bool:
        w = writers[o]
        if w.band is not None:
            return True  # has rows: the latest table shows it
        return estimator is not None and (w.spec.configured or bool(catalog[o]))

    def run(t: float) -> tuple[OriginatorStatus, ...]:
        result.runs += 1
        views: list[OriginatorView] = []
        forecasts: dict[int, Forecast] = {}
        for o in sorted(writers):
            if not visible(o):
                continue
            position = writers[o].position(t)
            current = 0 if position is None else position // width
            bands = frozenset(Band(b * width, (b + 1) * width) for b in catalog[o] if b >= current)
            views.append(OriginatorView(o, position, complete=bands))
            if estimator is not None and position is not None:
                forecasts[o] = estimator.observe(o, t, position).forecast
        the_plan = plan(views, policy, forecasts)
        for planned in the_plan.creates:
            if policy_name == "xmtpd" and planned.kind == "repair":
                continue  # xmtpd's worker never creates the current band (never needed here anyway)
            heapq.heappush(pending, (t + config.ddl_delay, planned.originator, planned.band.start // width))
        return the_plan.statuses

    probes = policy_name != "xmtpd" and config.probe_interval > 0
    t = 0.0
    full = 0  # index of the next full run, at full * interval
    while t < horizon:
        advance(t)
        statuses = run(t)
        if t == full * config.interval:
            full += 1
        next_full = full * config.interval
        if not probes:
            t = next_full
            continue
        if policy_name == "partitiond":
            t_next = t + next_probe_delay(statuses, config.probe_interval)
        else:  # on the fixed grid k * interval + j * probe_interval
            last_full = (full - 1) * config.interval
            j = round((t - last_full) / config.probe_interval) + 1
            t_next = last_full + j * config.probe_interval
        t = next_full if t_next >= next_full - 1e-9 else t_next
    advance(horizon)
    return result


def run_all(config: SimConfig, traces: Sequence[Trace] | None = None) -> list[Result]:
    traces = default_traces(config.days, config.seed) if traces is None else traces
    return [simulate(trace, name, config) for trace in traces for name in POLICIES]


# --- output -------------------------------------------------------------------------------------------

HEADERS = ("trace", "policy", "cold-path hits", "bands crossed", "created ahead", "max bands ahead", "plans")


def _rows(results: Iterable[Result]) -> list[tuple[str, ...]]:
    return [
        (
            r.trace,
            r.policy,
            f"{r.cold_hits:,}",
            f"{r.bands_crossed:,}",
            f"{r.created_ahead:,}",
            str(r.max_ahead),
            f"{r.runs:,}",
        )
        for r in results
    ]


def render(results: Sequence[Result], config: SimConfig, traces: Sequence[Trace], fmt: Format) -> str:
    """The results table and its notes; deterministic for a given config (no timings)."""
    rows = _rows(results)
    numeric = [False, False, True, True, True, True, True]
    if fmt == "markdown":
        lines = [
            "| " + " | ".join(HEADERS) + " |",
            "|" + "|".join("---:" if n else "---" for n in numeric) + "|",
            *("| " + " | ".join(row) + " |" for row in rows),
        ]
    else:
        widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(HEADERS)]

        def fmt_row(row: Sequence[str]) -> str:
            cells = (c.rjust(w) if n else c.ljust(w) for c, w, n in zip(row, widths, numeric, strict=True))
            return "  ".join(cells).rstrip()

        lines = [fmt_row(HEADERS), fmt_row(["-" * w for w in widths]), *(fmt_row(row) for row in rows)]
    settings = config.settings()
    bullet = "- " if fmt == "markdown" else "  "
    notes = [
        f"Simulated {config.days:g} day(s), seed {config.seed}, band width {config.band_width:,}, "
        f"full run every {config.interval:g} s, DDL takes {config.ddl_delay:g} s (simulated).",
        "xmtpd: fill > 70% -> next band, one run per interval, no probes, sees only originators with rows.",
        f"partitiond: daemon defaults (runway {settings.runway_seconds:g} s, max {settings.max_bands_ahead} "
        f"band ahead, rate estimator), adaptive probes between full runs: next probe after min("
        f"{config.probe_interval:g} s, max(1 s, least time to exhaustion / 2)), 5 s while an originator has "
        "rows but no rate yet; configured originators get band 0 before their first write.",
        f"partitiond-fixed: as partitiond, but a probe every {config.probe_interval:g} s on a fixed grid.",
        "cold-path hits = bands created by the writer; plans = planner runs (full runs + probes).",
        "const traces start at seq 1 with band 0 present; at 5,000/s and up a whole number of bands passes "
        "per interval, so every xmtpd run sees the position at the start of a band and creates nothing.",
        *(f"{t.name}: {t.note}" for t in traces if t.note),
    ]
    return "\n".join([*lines, "", *(bullet + n for n in notes)])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--days", type=float, default=7.0, help="simulated days (default 7)")
    parser.add_argument("--seed", type=int, default=1, help="trace seed (default 1)")
    parser.add_argument("--interval", type=float, default=1800.0, help="full-run interval, s (default 1800)")
    parser.add_argument("--probe-interval", type=float, default=60.0, help="probe interval, s; 0: no probes")
    parser.add_argument("--ddl-delay", type=float, default=DEFAULT_DDL_DELAY, help="simulated DDL time, s")
    parser.add_argument("--format", choices=("table", "markdown"), default="table")
    parser.add_argument(
        "--extra", action="store_true", help="also run daemon-restart traces (not in the issue's list)"
    )
    args = parser.parse_args(argv)
    config = SimConfig(
        days=args.days,
        seed=args.seed,
        interval=args.interval,
        probe_interval=args.probe_interval,
        ddl_delay=args.ddl_delay,
    )
    fmt: Format = "markdown" if args.format == "markdown" else "table"
    started = time.perf_counter()
    traces = default_traces(config.days, config.seed) + (extra_traces() if args.extra else [])
    results = run_all(config, traces)
    elapsed = time.perf_counter() - started
    command = shlex.join(["python", "bench/runway_sim.py", *(sys.argv[1:] if argv is None else argv)])
    print(render(results, config, traces, fmt))
    print()
    print(f"command: {command}")
    print(f"wall time: {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
