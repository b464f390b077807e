"""What the alerts read: the steady runway forecast, leadership from a pass, and run-once's textfile.

The steady forecast is pure maths and is driven directly, with writers whose true rate is known by
construction; the textfile is a real file and, end to end, a real ``run-once`` against PostgreSQL.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from partitiond.bands import Band
from partitiond.forecast import RateEstimator, SteadyRateEstimator, weighted_median
from partitiond.metrics import Metrics
from partitiond.pipeline import PassReport
from partitiond.planner import OriginatorStatus
from partitiond.report import record, record_runway

from .test_cli import cli

WIDTH = 1_000_000
THRESHOLD = 2 * 1800.0  # PartitiondLowRunway's, at the default interval
PROBE_INTERVAL = 60.0


def samples(text: str) -> dict[str, float]:
    """'name{k="v"}' -> value for every sample of an exposition."""
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            found[f"{s.name}{{{labels}}}"] = s.value
    return found


# --- the steady rate ----------------------------------------------------------------------------------


def test_weighted_median_is_the_rate_held_for_more_than_half_the_time() -> None:
    assert weighted_median([]) is None
    assert weighted_median([(5.0, 0.0)]) is None
    assert weighted_median([(45.0, 540.0), (12_000.0, 60.0)]) == 45.0
    assert weighted_median([(45.0, 200.0), (600.0, 400.0)]) == 600.0
    assert weighted_median([(45.0, 300.0), (600.0, 300.0)]) == 600.0, "a tie goes to the higher rate"
    assert weighted_median([(3.0, 1.0), (1.0, 1.0), (2.0, 1.0)]) == 2.0


def replay(
    rate_after: float, jump_to: int | None, minutes_after: float = 30.0
) -> Iterator[tuple[float, float, float]]:
    """A writer at 45 ids/s for 40 minutes, then (optionally) a one-off jump, then ``rate_after`` ids/s.

    Readings come as the daemon schedules its probes: after min(probe interval, max(1 s, the conservative
    time to exhaustion / 2)).  The last band ends at 2,000,000 after the change (band 1 exists, as the fill
    rule makes it at 72 %).  Yields (seconds since the change, conservative, steady) time to exhaustion.
    """
    conservative, steady = RateEstimator(max_jump_ids=10 * WIDTH), SteadyRateEstimator()
    at, position = 0.0, 30_000.0
    while at < 2400.0:
        conservative.observe(1, at, int(position))
        steady.observe(1, at, int(position))
        at, position = at + PROBE_INTERVAL, position + 45.0 * PROBE_INTERVAL
    changed_at, position, end = at, float(jump_to or position), 2 * WIDTH
    while at < changed_at + minutes_after * 60.0:
        pos = int(position)
        fast = conservative.observe(1, at, pos).forecast.seconds_until(pos, end)
        slow = steady.observe(1, at, pos).seconds_until(pos, end)
        assert fast is not None and slow is not None
        yield at - changed_at, fast, slow
        delay = min(PROBE_INTERVAL, max(1.0, fast / 2.0))
        at, position = at + delay, position + rate_after * delay


def test_a_one_off_jump_keeps_the_steady_forecast_at_the_real_runway() -> None:
    """The field case: a jump to 720,000, then 45 ids/s, band 1 in place; the real runway is hours."""
    readings = list(replay(rate_after=45.0, jump_to=720_000))
    below = [t for t, fast, _ in readings if fast < THRESHOLD]
    assert max(below) >= 10 * 60, "the conservative forecast pages for more than the alert's 5 minutes"
    for t, _, slow in readings:
        real = (2 * WIDTH - (720_000 + 45.0 * t)) / 45.0
        assert slow == pytest.approx(real, rel=0.01), t
        assert slow > 7 * 3600


def test_a_sustained_high_rate_still_alerts() -> None:
    readings = list(replay(rate_after=600.0, jump_to=None, minutes_after=15.0))
    first_below = min(t for t, _, slow in readings if slow < THRESHOLD)
    assert 4 * 60 < first_below <= 6 * 60, "after half of the 10-minute window, not before"
    later = [(t, slow) for t, _, slow in readings if t >= 11 * 60]
    assert later
    for t, slow in later:
        position = 30_000 + 45 * 2400 + 600.0 * t
        assert slow == pytest.approx((2 * WIDTH - position) / 600.0, rel=0.02), t


def test_steady_estimator_contract() -> None:
    steady = SteadyRateEstimator(window=100.0)
    assert steady.observe(1, 0.0, 1000).rate is None
    assert steady.observe(1, 10.0, 2000).rate == 100.0
    assert steady.observe(1, 10.0, 9999).rate == 100.0, "a reading not after the previous one is ignored"
    assert steady.observe(1, 20.0, 500).rate is None, "a position going backwards (a restore) starts afresh"
    assert steady.observe(1, 30.0, 600).rate == 10.0
    assert steady.observe(1, 1000.0, 600).rate == 0.0, "segments older than the window are dropped"
    assert steady.forecast(1).seconds_until(600, 700) == math.inf
    steady.forget(1)
    assert steady.forecast(1).rate is None
    assert steady.forecast(2).rate is None
    with pytest.raises(ValueError, match="window"):
        SteadyRateEstimator(window=0.0)
    with pytest.raises(ValueError, match="finite"):
        steady.observe(1, math.nan, 1)


def test_a_long_segment_counts_only_with_its_part_inside_the_window() -> None:
    steady = SteadyRateEstimator(window=600.0)
    steady.observe(1, 0.0, 0)
    steady.observe(1, 3000.0, 3000 * 500)  # 500 ids/s for 50 minutes, 10 of them inside the window
    steady.observe(1, 3400.0, 3000 * 500 + 400 * 10)  # then 10 ids/s for 400 s: the majority of the window
    assert steady.forecast(1).rate == 10.0


# --- leadership and runway as recorded ----------------------------------------------------------------


def status(originator: int, position: int | None, headroom: int) -> OriginatorStatus:
    band = Band(0, WIDTH)
    return OriginatorStatus(originator, position, band, band, headroom, 0.5, None)


@pytest.mark.parametrize(
    ("before", "result", "after"),
    [
        (False, "success", 1.0),
        (False, "partial", 1.0),
        (True, "follower", 0.0),
        (True, "failed", 1.0),  # a failed pass proves nothing: the daemon's lease gauge stands
        (False, "failed", 0.0),
        (False, "standby", 0.0),
    ],
)
def test_a_pass_records_what_it_proves_about_leadership(before: bool, result: str, after: float) -> None:
    metrics = Metrics()
    metrics.set_leader(before)
    record(metrics, PassReport(result, 0, 0.1))  # type: ignore[arg-type]
    got = samples(metrics.render().decode())
    assert got["partitiond_leader{}"] == after
    leader_pass = got["partitiond_last_leader_pass_timestamp_seconds{}"]
    assert (leader_pass > 0) == (result in ("success", "partial"))


def test_steady_runway_is_exported_after_two_readings_and_forgotten_with_the_originator() -> None:
    metrics = Metrics()
    report = PassReport("success", 0, 0.1, statuses=(status(7, 1000, 9000), status(8, None, WIDTH)))
    record_runway(metrics, report, now=100.0)
    assert not [k for k in samples(metrics.render().decode()) if "steady" in k]
    moved = PassReport("success", 0, 0.1, statuses=(status(7, 2000, 8000), status(8, None, WIDTH)))
    record_runway(metrics, moved, now=110.0)
    got = samples(metrics.render().decode())
    assert got['partitiond_originator_steady_seconds_to_exhaustion{originator="7"}'] == 80.0
    assert 'partitiond_originator_steady_seconds_to_exhaustion{originator="8"}' not in got
    record_runway(metrics, PassReport("success", 0, 0.1, statuses=(status(8, None, WIDTH),)), now=120.0)
    assert not [k for k in samples(metrics.render().decode()) if 'originator="7"' in k]
    assert metrics.steady_rates.forecast(7).rate is None


# --- run-once's textfile ------------------------------------------------------------------------------


def textfile(path: Path) -> dict[str, float]:
    return samples(path.read_text())


def test_the_textfile_keeps_the_newer_timestamps_of_the_file_it_replaces(tmp_path: Path) -> None:
    path = tmp_path / "partitiond.prom"
    good = Metrics()
    record(good, PassReport("success", 0, 0.1))
    good.write_textfile(path)
    first = textfile(path)
    assert first["partitiond_leader{}"] == 1
    success = first["partitiond_last_success_timestamp_seconds{}"]
    leader_pass = first["partitiond_last_leader_pass_timestamp_seconds{}"]
    assert success > 0 and leader_pass == pytest.approx(success, abs=5)

    bad = Metrics()
    record(bad, PassReport("failed", 3, 0.1))
    bad.write_textfile(path)
    second = textfile(path)
    assert second["partitiond_leader{}"] == 0
    assert second['partitiond_runs_total{result="failed"}'] == 1
    assert second["partitiond_last_success_timestamp_seconds{}"] == success
    assert second["partitiond_last_leader_pass_timestamp_seconds{}"] == leader_pass

    newer = Metrics()
    newer.last_success.set(success + 1800)
    newer.write_textfile(path)
    assert textfile(path)["partitiond_last_success_timestamp_seconds{}"] == success + 1800


def test_an_unreadable_previous_textfile_carries_nothing(tmp_path: Path) -> None:
    path = tmp_path / "partitiond.prom"
    path.write_text("this is { not an exposition\n")
    Metrics().write_textfile(path)
    assert textfile(path)["partitiond_last_success_timestamp_seconds{}"] == 0


def test_run_once_textfile_says_leader_after_a_leader_pass(db_dsn: str, tmp_path: Path) -> None:
    """The timer deployment end to end: a leader pass, then a pass that cannot connect."""
    path = tmp_path / "partitiond.prom"
    ok = cli("run-once", "--dsn", db_dsn, "--originator", "5", "--metrics-textfile", str(path))
    assert ok.returncode == 0, ok.stderr
    first = textfile(path)
    assert first["partitiond_leader{}"] == 1
    assert first["partitiond_last_leader_pass_timestamp_seconds{}"] > 0
    unreachable = "postgresql://nobody@127.0.0.1:1/nothing?connect_timeout=2"
    failed = cli("run-once", "--dsn", unreachable, "--metrics-textfile", str(path))
    assert failed.returncode == 3, failed.stderr
    second = textfile(path)
    assert second["partitiond_leader{}"] == 0
    for name in (
        "partitiond_last_success_timestamp_seconds{}",
        "partitiond_last_leader_pass_timestamp_seconds{}",
    ):
        assert second[name] == first[name], name
