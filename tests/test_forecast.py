"""Rate estimation: convergence, idle decay, burst sensitivity, resets, jumps and int8-edge positions."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from partitiond.bands import INT8_MAX
from partitiond.forecast import Forecast, Observation, RateEstimator

ORIG = 100


def feed(est: RateEstimator, readings: list[tuple[float, int]], originator: int = ORIG) -> Observation:
    last: Observation | None = None
    for at, position in readings:
        last = est.observe(originator, at, position)
    assert last is not None
    return last


def test_one_reading_gives_no_estimate() -> None:
    est = RateEstimator()
    obs = est.observe(ORIG, 10.0, 1_000)
    assert obs == Observation(Forecast(None), jumped=False, reset=False)
    assert est.forecast(ORIG).rate is None
    assert est.forecast(999).rate is None


def test_two_readings_give_the_instantaneous_rate() -> None:
    est = RateEstimator()
    obs = feed(est, [(0.0, 0), (10.0, 1_000)])
    assert obs.forecast.rate == pytest.approx(100.0)
    assert est.forecast(ORIG) == obs.forecast


@settings(max_examples=100)
@given(
    rate=st.floats(min_value=0.0, max_value=1e6),
    step=st.floats(min_value=0.5, max_value=3_600.0),
    n=st.integers(min_value=2, max_value=40),
)
def test_constant_rate_converges(rate: float, step: float, n: int) -> None:
    est = RateEstimator()
    readings = [(i * step, round(rate * i * step)) for i in range(n)]
    got = feed(est, readings).forecast.rate
    assert got is not None
    # Positions are rounded to whole ids, so allow one id of error per step.
    assert got == pytest.approx(rate, abs=1.0 / step + 1e-9, rel=1e-9)


def test_idle_gap_decays_without_division_by_zero() -> None:
    est = RateEstimator(half_life=300.0)
    feed(est, [(0.0, 0), (60.0, 60_000), (120.0, 120_000)])
    assert est.forecast(ORIG).rate == pytest.approx(1_000.0)
    # Nothing happens for a day: the instantaneous rate is 0 and alpha is ~1, so the estimate collapses.
    obs = est.observe(ORIG, 86_520.0, 120_000)
    assert obs.forecast.rate is not None
    assert obs.forecast.rate < 1e-6
    assert obs.forecast.seconds_until(120_000, 1_000_000) is not None
    # A short idle gap decays only partially: one half-life halves the EWMA.
    est2 = RateEstimator(half_life=300.0)
    feed(est2, [(0.0, 0), (300.0, 300_000)])
    assert feed(est2, [(600.0, 300_000)]).forecast.rate == pytest.approx(500.0)


def test_burst_is_seen_immediately() -> None:
    est = RateEstimator(half_life=3_600.0)
    feed(est, [(i * 60.0, i * 60) for i in range(30)])  # 1 id/s for half an hour
    assert est.forecast(ORIG).rate == pytest.approx(1.0)
    burst = est.observe(ORIG, 30 * 60.0, 29 * 60 + 60_000)  # 1000 ids/s for the last minute
    assert burst.forecast.rate == pytest.approx(1_000.0, rel=1e-3)
    # After the burst the reported rate falls back to the (raised) EWMA, not to the idle instant.
    after = est.observe(ORIG, 31 * 60.0, 29 * 60 + 60_000)
    assert after.forecast.rate is not None
    assert 1.0 < after.forecast.rate < 1_000.0


def test_backwards_position_resets() -> None:
    est = RateEstimator()
    feed(est, [(0.0, 5_000_000), (10.0, 5_010_000)])
    obs = est.observe(ORIG, 20.0, 1_000)  # restored from an older backup
    assert obs == Observation(Forecast(None), jumped=False, reset=True)
    assert est.forecast(ORIG).rate is None
    # The restored reading is the new first one.
    assert est.observe(ORIG, 30.0, 2_000).forecast.rate == pytest.approx(100.0)


def test_jump_is_flagged_and_resets() -> None:
    est = RateEstimator(max_jump_ids=10_000_000)
    feed(est, [(0.0, 0), (10.0, 1_000)])
    ok = est.observe(ORIG, 20.0, 10_001_000)  # exactly max_jump_ids: not a jump
    assert not ok.jumped and not ok.reset
    jump = est.observe(ORIG, 30.0, 20_001_001)
    assert jump == Observation(Forecast(None), jumped=True, reset=True)
    assert est.observe(ORIG, 40.0, 20_002_001).forecast.rate == pytest.approx(100.0)


def test_no_jump_detection_by_default() -> None:
    est = RateEstimator()
    obs = feed(est, [(0.0, 0), (1.0, INT8_MAX)])
    assert not obs.jumped and not obs.reset
    assert obs.forecast.rate == pytest.approx(float(INT8_MAX))


@pytest.mark.parametrize("dt", [0.0, -5.0])
def test_non_increasing_time_is_ignored(dt: float) -> None:
    est = RateEstimator()
    feed(est, [(0.0, 0), (10.0, 1_000)])
    before = est.forecast(ORIG)
    obs = est.observe(ORIG, 10.0 + dt, 999_999)
    assert obs.ignored and not obs.reset and not obs.jumped
    assert obs.forecast == before == est.forecast(ORIG)
    # The ignored reading left no trace: the next one is measured from t=10.
    assert est.observe(ORIG, 20.0, 2_000).forecast.rate == pytest.approx(100.0)


def test_int8_edge_positions_stay_finite_and_exact() -> None:
    est = RateEstimator()
    top = INT8_MAX - 1_000
    feed(est, [(0.0, top - 1_000_000), (100.0, top)])
    fc = est.forecast(ORIG)
    assert fc.rate == pytest.approx(10_000.0)
    remaining = fc.seconds_until(top, INT8_MAX)
    assert remaining == pytest.approx(0.1)
    # A full-range jump over a tiny dt is clamped to a finite rate.
    tiny = RateEstimator()
    obs = feed(tiny, [(0.0, 0), (1e-300, INT8_MAX)])
    assert obs.forecast.rate is not None and math.isfinite(obs.forecast.rate)
    later = tiny.observe(ORIG, 1.0, INT8_MAX)
    assert later.forecast.rate is not None and math.isfinite(later.forecast.rate)


@settings(max_examples=200)
@given(
    readings=st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=1e9), st.integers(min_value=0, max_value=INT8_MAX)),
        max_size=30,
    ),
    half_life=st.floats(min_value=1e-3, max_value=1e6),
)
def test_rates_are_always_finite_and_non_negative(
    readings: list[tuple[float, int]], half_life: float
) -> None:
    est = RateEstimator(half_life=half_life)
    for at, position in readings:
        rate = est.observe(ORIG, at, position).forecast.rate
        assert rate is None or (math.isfinite(rate) and rate >= 0.0)


def test_forget_and_originators_are_independent() -> None:
    est = RateEstimator()
    feed(est, [(0.0, 0), (10.0, 100)], originator=1)
    feed(est, [(0.0, 0), (10.0, 1_000)], originator=2)
    assert est.forecast(1).rate == pytest.approx(10.0)
    assert est.forecast(2).rate == pytest.approx(100.0)
    est.forget(1)
    est.forget(12345)  # unknown: no error
    assert est.forecast(1).rate is None
    assert est.forecast(2).rate == pytest.approx(100.0)


def test_seconds_until() -> None:
    assert Forecast(None).seconds_until(0, 10) is None
    assert Forecast(0.0).seconds_until(0, 10) == math.inf
    assert Forecast(5.0).seconds_until(0, 10) == 2.0
    assert Forecast(5.0).seconds_until(10, 10) == 0.0
    assert Forecast(None).seconds_until(11, 10) == 0.0  # already reached: no rate needed


@pytest.mark.parametrize("rate", [-1.0, math.inf, math.nan])
def test_forecast_rejects_bad_rates(rate: float) -> None:
    with pytest.raises(ValueError, match="rate"):
        Forecast(rate)


def test_estimator_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="half_life"):
        RateEstimator(half_life=0.0)
    with pytest.raises(ValueError, match="max_jump_ids"):
        RateEstimator(max_jump_ids=-1)
    with pytest.raises(ValueError, match="finite"):
        RateEstimator().observe(ORIG, math.nan, 0)
