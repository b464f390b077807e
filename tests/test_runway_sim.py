"""The runway simulation (bench/runway_sim.py) at small scale: a planner regression fails CI here.

Pure: no PostgreSQL.  A simulated day of a few traces, driving the real planner and rate estimator.
"""

from __future__ import annotations

import math

import pytest

from bench.runway_sim import (
    POLICIES,
    OriginatorTrace,
    Result,
    SimConfig,
    Trace,
    constant_trace,
    default_traces,
    idle_wakeup_trace,
    main,
    new_originator_trace,
    render,
    run_all,
    simulate,
)
from partitiond.bands import Band
from partitiond.planner import OriginatorStatus, next_probe_delay

DAY = SimConfig(days=1.0)


def _status(seconds: float | None, position: int | None = 5) -> OriginatorStatus:
    return OriginatorStatus(1, position, Band(0, 10), Band(0, 10), 4, 0.5, seconds)


def _results(trace: Trace) -> dict[str, Result]:
    return {name: simulate(trace, name, DAY) for name in POLICIES}


def test_partitiond_has_no_cold_path_hits_at_10000_ids_per_second() -> None:
    results = _results(constant_trace(10_000))
    for name in ("partitiond", "partitiond-fixed"):
        assert results[name].cold_hits == 0, name
        assert results[name].max_ahead <= 1, name
        assert results[name].bands_crossed == 864
    assert results["xmtpd"].cold_hits > 0


def test_xmtpd_misses_at_1000_ids_per_second() -> None:
    results = _results(constant_trace(1_000))
    assert results["xmtpd"].cold_hits >= 1
    assert results["xmtpd"].max_ahead <= 1
    assert results["partitiond"].cold_hits == 0


@pytest.mark.parametrize(
    "trace",
    [
        idle_wakeup_trace(86_400, 1),
        new_originator_trace(86_400, 1, configured=True),
        constant_trace(500),
    ],
    ids=lambda t: t.name,
)
def test_partitiond_stays_ahead_on_other_traces(trace: Trace) -> None:
    for name in ("partitiond", "partitiond-fixed"):
        result = simulate(trace, name, DAY)
        assert result.cold_hits == 0, name
        assert result.max_ahead <= 1, name


def test_an_unconfigured_new_originator_costs_exactly_its_first_write() -> None:
    result = simulate(new_originator_trace(86_400, 1, configured=False), "partitiond", DAY)
    assert result.cold_hits == 1


def test_adaptive_probing_keeps_up_where_fixed_probes_cannot() -> None:
    # 20,000 ids/s fills a band in 50 s, less than the 60 s probe interval.
    results = _results(constant_trace(20_000))
    assert results["partitiond-fixed"].cold_hits > 0
    # The warm-up probe (5 s after the first reading) gives a rate before the first band runs out.
    assert results["partitiond"].cold_hits == 0
    assert results["partitiond"].max_ahead <= 1


def test_simulation_is_deterministic() -> None:
    config = SimConfig(days=0.5, seed=7)
    traces = default_traces(config.days, config.seed)
    first = render(run_all(config, traces), config, traces, "markdown")
    again = render(run_all(config, traces), config, traces, "markdown")
    assert first == again
    other = SimConfig(days=0.5, seed=8)
    other_traces = default_traces(other.days, other.seed)
    assert [t.note for t in other_traces] != [t.note for t in traces]


def test_a_write_that_beats_the_ddl_is_a_cold_path_hit() -> None:
    # At t=0 the position is past 70 %, so band 1 is planned at once; the writer reaches it after 0.05 s.
    trace = Trace("tight", (OriginatorTrace(1, ((0, 20),), initial_position=999_999),))
    result = simulate(trace, "partitiond", SimConfig(days=0.01, ddl_delay=0.1))
    assert result.cold_hits == 1
    assert result.hit_times == [pytest.approx(0.05)]
    assert simulate(trace, "partitiond", SimConfig(days=0.01, ddl_delay=0.01)).cold_hits == 0


def test_next_probe_delay_is_half_the_least_time_to_exhaustion() -> None:
    assert next_probe_delay([_status(100.0), _status(30.0), _status(None, position=None)], 60.0) == 15.0
    assert next_probe_delay([_status(1000.0)], 60.0) == 60.0
    assert next_probe_delay([_status(math.inf)], 60.0) == 60.0


def test_next_probe_delay_bounds() -> None:
    assert next_probe_delay([], 60.0) == 60.0
    assert next_probe_delay([_status(None, position=None)], 60.0) == 60.0
    assert next_probe_delay([_status(None)], 60.0) == 5.0  # rows but no rate yet: warm up quickly
    assert next_probe_delay([_status(0.0)], 60.0) == 1.0
    assert next_probe_delay([_status(0.5)], 60.0) == 1.0


def test_cli_prints_table_and_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--days", "0.1", "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    assert "| const 10,000/s | partitiond | 0 |" in out
    assert "command: python bench/runway_sim.py --days 0.1 --format markdown" in out
