"""Per-originator insert-rate estimates from successive vector-clock readings.

Why: xmtpd's fixed 70% rule misses the next 30-minute tick at roughly >=167 ids/s, after which partitions
are created lazily on the insert path under an exclusive lock.  Sizing the runway by *time* needs a rate.

The estimator is a pure state machine: it has no clock, the caller passes monotonic timestamps.  It is
deliberately biased upwards (``max(EWMA, latest instantaneous rate)``): over-estimating only creates the next
band a little early, under-estimating sends inserts down the cold path.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

_LN2 = math.log(2.0)
# Rates are clamped here so that every float we hand out stays finite, even for int8-sized jumps observed
# over a sub-nanosecond dt.
_MAX_RATE = sys.float_info.max


@dataclass(frozen=True, slots=True)
class Forecast:
    """A rate in ids per second, or None when there is no estimate yet (callers use the fill rule)."""

    rate: float | None

    def __post_init__(self) -> None:
        if self.rate is not None and not (math.isfinite(self.rate) and self.rate >= 0.0):
            raise ValueError(f"rate must be a finite non-negative number or None, got {self.rate}")

    def seconds_until(self, position: int, target: int) -> float | None:
        """Seconds until ``position`` reaches ``target`` at this rate.

        0.0 when the target is already reached (a fact that needs no rate, so it is checked first); None
        when the rate is unknown; ``math.inf`` for a zero rate.  The id distance is a Python int, converted to
        float only for the division, so int8-edge positions cannot overflow.
        """
        if position >= target:
            return 0.0
        if self.rate is None:
            return None
        if self.rate == 0.0:
            return math.inf
        return (target - position) / self.rate


UNKNOWN = Forecast(None)


@dataclass(frozen=True, slots=True)
class Observation:
    """What one reading did.

    ``reset`` means the originator's history was discarded and this reading became its first one: the
    position went backwards (a restore) or jumped (``jumped``, by more than ``max_jump_ids``).  ``ignored``
    means the reading was dropped because its timestamp was not after the previous one.
    """

    forecast: Forecast
    jumped: bool
    reset: bool
    ignored: bool = False


@dataclass(slots=True)
class _History:
    at: float
    position: int
    ewma: float | None = None
    latest: float | None = None

    def forecast(self) -> Forecast:
        if self.ewma is None or self.latest is None:
            return UNKNOWN
        return Forecast(max(self.ewma, self.latest))


class RateEstimator:
    """Time-decayed EWMA of each originator's instantaneous rate, with restore and jump detection.

    ``alpha = 1 - exp(-dt * ln2 / half_life)``: a reading ``half_life`` seconds after the previous one carries
    half the weight, so irregular sampling is handled and a long idle gap (zero ids over a large dt) pulls the
    estimate towards zero instead of dividing by anything small.  Not thread-safe: one owner (the run loop).
    """

    __slots__ = ("_histories", "half_life", "max_jump_ids")

    def __init__(self, half_life: float = 300.0, max_jump_ids: int | None = None) -> None:
        _require_seconds("half_life", half_life)
        if max_jump_ids is not None and max_jump_ids < 0:
            raise ValueError(f"max_jump_ids must be non-negative or None, got {max_jump_ids}")
        self.half_life = half_life
        self.max_jump_ids = max_jump_ids
        self._histories: dict[int, _History] = {}

    def observe(self, originator: int, at: float, position: int) -> Observation:
        """Feed one reading (``at``: monotonic seconds; ``position``: highest stored sequence id)."""
        _require_finite_time(at)
        history = self._histories.get(originator)
        if history is None:
            self._histories[originator] = _History(at, position)
            return Observation(UNKNOWN, jumped=False, reset=False)
        dt = at - history.at
        if dt <= 0.0:
            return Observation(history.forecast(), jumped=False, reset=False, ignored=True)
        delta = position - history.position
        jumped = self.max_jump_ids is not None and delta > self.max_jump_ids
        if delta < 0 or jumped:
            self._histories[originator] = _History(at, position)
            return Observation(UNKNOWN, jumped=jumped, reset=True)
        self._update(history, dt, delta)
        history.at, history.position = at, position
        return Observation(history.forecast(), jumped=False, reset=False)

    def _update(self, history: _History, dt: float, delta: int) -> None:
        instant = min(delta / dt, _MAX_RATE)
        if history.ewma is None:
            history.ewma = instant
        else:
            alpha = -math.expm1(-dt * _LN2 / self.half_life)
            history.ewma = min(history.ewma + alpha * (instant - history.ewma), _MAX_RATE)
        history.latest = instant

    def forecast(self, originator: int) -> Forecast:
        """The current estimate; ``Forecast(None)`` for an unknown originator or one with a single reading."""
        history = self._histories.get(originator)
        return UNKNOWN if history is None else history.forecast()

    def forget(self, originator: int) -> None:
        """Drop an originator's history (e.g. it left the configuration).  Unknown originators are fine."""
        self._histories.pop(originator, None)


def weighted_median(rates: list[tuple[float, float]]) -> float | None:
    """The lowest rate held for *more* than half of the total time, from ``(rate, seconds)`` pairs.

    "More than half" breaks a tie towards the higher rate: with one quiet and one busy interval of equal
    length the answer is the busy one, so the estimate errs on the side of alerting.  None for no time.
    """
    ordered = sorted((rate, seconds) for rate, seconds in rates if seconds > 0.0)
    if not ordered:
        return None
    half = sum(seconds for _, seconds in ordered) / 2.0
    held = 0.0
    for rate, seconds in ordered:
        held += seconds
        if held > half:
            return rate
    return ordered[-1][0]  # only reached if float rounding left the running sum a hair short of the total


@dataclass(slots=True)
class _Trail:
    at: float
    position: int
    segments: list[tuple[float, float, float]]  # (start, end, ids per second), oldest first


class SteadyRateEstimator:
    """The time-weighted median of each originator's rate over a trailing window: the rate *alerts* use.

    Why a second estimator: :class:`RateEstimator` is biased upwards on purpose, which is right for creating
    bands early and wrong for paging someone.  After a one-off sequence-id jump its forecast stays far below
    the real runway for as long as the jump takes to decay out of the EWMA (several half-lives), so a
    runway alert built on it fires for a burst that is already over.  The median over time ignores any burst
    that lasts less than half of ``window`` however large it is, and follows a rate that is held for more
    than half of it, so a sustained high rate still alerts.  The planner never uses this estimate.

    Same contract as :class:`RateEstimator`: no clock (the caller passes monotonic seconds), a position that
    goes backwards (a restore) starts the originator afresh, a reading not after the previous one is ignored.
    """

    __slots__ = ("_trails", "window")

    def __init__(self, window: float = 600.0) -> None:
        _require_seconds("window", window)
        self.window = window
        self._trails: dict[int, _Trail] = {}

    def observe(self, originator: int, at: float, position: int) -> Forecast:
        """Feed one reading and return the steady rate (unknown until a second reading)."""
        _require_finite_time(at)
        trail = self._trails.get(originator)
        if trail is None or position < trail.position:
            self._trails[originator] = _Trail(at, position, [])
            return UNKNOWN
        if at <= trail.at:
            return self.forecast(originator)
        rate = min((position - trail.position) / (at - trail.at), _MAX_RATE)
        trail.segments.append((trail.at, at, rate))
        trail.at, trail.position = at, position
        horizon = at - self.window
        trail.segments = [s for s in trail.segments if s[1] > horizon]
        return self.forecast(originator)

    def forecast(self, originator: int) -> Forecast:
        """The current steady rate; ``Forecast(None)`` for an unknown originator or one with one reading."""
        trail = self._trails.get(originator)
        if trail is None:
            return UNKNOWN
        horizon = trail.at - self.window
        rate = weighted_median([(r, end - max(start, horizon)) for start, end, r in trail.segments])
        return UNKNOWN if rate is None else Forecast(rate)

    def forget(self, originator: int) -> None:
        """Drop an originator's history (it left the configuration).  Unknown originators are fine."""
        self._trails.pop(originator, None)


def _require_seconds(name: str, value: float) -> None:
    """Both estimators take a time span: finite and positive, or a clear error."""
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"{name} must be a finite positive number of seconds, got {value}")


def _require_finite_time(at: float) -> None:
    """A reading's timestamp: NaN or infinity would poison every rate computed from it."""
    if not math.isfinite(at):
        raise ValueError(f"timestamp must be finite, got {at}")
