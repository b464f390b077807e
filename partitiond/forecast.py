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
        if not (math.isfinite(half_life) and half_life > 0.0):
            raise ValueError(f"half_life must be a finite positive number of seconds, got {half_life}")
        if max_jump_ids is not None and max_jump_ids < 0:
            raise ValueError(f"max_jump_ids must be non-negative or None, got {max_jump_ids}")
        self.half_life = half_life
        self.max_jump_ids = max_jump_ids
        self._histories: dict[int, _History] = {}

    def observe(self, originator: int, at: float, position: int) -> Observation:
        """Feed one reading (``at``: monotonic seconds; ``position``: highest stored sequence id)."""
        if not math.isfinite(at):
            raise ValueError(f"timestamp must be finite, got {at}")
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
