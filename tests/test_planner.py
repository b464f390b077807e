"""The planner: xmtpd's worker table, the runway rule, edge cases, and properties over random catalogs."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from partitiond.bands import INT4_MAX, INT4_MIN, INT8_MAX, Band, band_for, band_index, next_band
from partitiond.forecast import Forecast
from partitiond.planner import OriginatorView, Plan, PlannedBand, Policy, assess, plan

W = 1_000_000
LAST_STORABLE_SEQ = 9_223_372_036_853_999_999


def band(index: int, width: int = W) -> Band:
    return Band(index * width, (index + 1) * width)


def with_current_band(positions: Mapping[int, int]) -> list[OriginatorView]:
    """The state the worker's tests leave behind: each row's insert already created the band holding it."""
    return [OriginatorView(o, seq, frozenset({band_for(seq, W)})) for o, seq in positions.items()]


def ahead(p: Plan) -> set[tuple[int, Band]]:
    return {(c.originator, c.band) for c in p.creates if c.kind == "ahead"}


def everything(p: Plan) -> tuple[PlannedBand, ...]:
    return p.creates + p.deferred


# --- xmtpd's worker_internal_test.go table, default Policy -----------------------------------------------


@pytest.mark.parametrize(
    ("positions", "expected"),
    [
        pytest.param({100: 0}, set(), id="case1-seq0"),
        pytest.param({100: 1, 200: 100_000, 300: 500_000}, set(), id="case2-below-threshold"),
        pytest.param(
            {100: 1, 200: 900_000, 300: 750_000}, {(200, band(1)), (300, band(1))}, id="case3-two-cross"
        ),
        pytest.param({100: 50, 200: 3_750_000}, {(200, band(4))}, id="case4-band3-to-4"),
        pytest.param({100: 4_900_000}, {(100, band(5))}, id="case5-band4-to-5"),
        pytest.param({1: 700_000}, set(), id="boundary-700000-does-nothing"),
        pytest.param({1: 700_001}, {(1, band(1))}, id="boundary-700001-creates"),
    ],
)
def test_worker_table(positions: dict[int, int], expected: set[tuple[int, Band]]) -> None:
    result = plan(with_current_band(positions), Policy())
    assert ahead(result) == expected
    assert all(c.kind == "ahead" for c in result.creates)
    assert result.deferred == ()


def test_worker_case5_is_idempotent() -> None:
    first = plan(with_current_band({100: 4_900_000}), Policy())
    assert [c.band for c in first.creates] == [band(5)]
    again = OriginatorView(100, 4_900_000, frozenset({band(4), band(5)}))
    assert plan([again], Policy()).creates == ()


def test_case3_status_numbers() -> None:
    result = plan(with_current_band({100: 1, 200: 900_000, 300: 750_000}), Policy())
    by_o = {s.originator: s for s in result.statuses}
    assert [s.originator for s in result.statuses] == [100, 200, 300]
    assert by_o[200].headroom == 99_999
    assert by_o[200].fill == pytest.approx(0.9)
    assert by_o[200].current == by_o[200].last == band(0)
    assert by_o[200].seconds_to_exhaustion is None
    # Least headroom first: o200 (99,999 left) before o300 (249,999 left).
    assert [c.originator for c in result.creates] == [200, 300]


# --- the runway rule -------------------------------------------------------------------------------------


def test_runway_plans_next_band_at_low_fill() -> None:
    view = OriginatorView(7, 1_010_000, frozenset({band(1)}))
    policy = Policy(runway_seconds=3_600.0)
    result = plan([view], policy, {7: Forecast(10_000.0)})
    assert [(c.band, c.kind) for c in result.creates] == [(band(2), "ahead")]
    assert result.statuses[0].fill == pytest.approx(0.01)
    assert result.statuses[0].seconds_to_exhaustion == pytest.approx(99.0)
    assert "ids/s" in result.creates[0].reason and "runway 1h0m" in result.creates[0].reason
    # Without a forecast (or with a rate too low for the runway) only the fill rule applies.
    assert plan([view], policy).creates == ()
    assert plan([view], policy, {7: Forecast(1.0)}).creates == ()
    assert plan([view], policy, {7: Forecast(None)}).creates == ()


def test_runway_with_more_bands_ahead_stops_at_the_cap_and_the_runway() -> None:
    view = OriginatorView(7, 1_010_000, frozenset({band(1)}))
    many = plan([view], Policy(runway_seconds=3_600.0, max_bands_ahead=3), {7: Forecast(10_000.0)})
    assert [c.band for c in many.creates] == [band(2), band(3), band(4)]
    short = plan([view], Policy(runway_seconds=300.0, max_bands_ahead=5), {7: Forecast(10_000.0)})
    # 100 s per band: band 1 ends in 99 s, band 2 in 199 s, band 3 in 299 s, band 4 in 399 s > 300 s.
    assert [c.band for c in short.creates] == [band(2), band(3), band(4)]
    existing = OriginatorView(7, 1_010_000, frozenset({band(1), band(2)}))
    again = plan([existing], Policy(runway_seconds=3_600.0, max_bands_ahead=3), {7: Forecast(10_000.0)})
    assert [c.band for c in again.creates] == [band(3), band(4)]


def test_zero_rate_never_triggers_runway() -> None:
    view = OriginatorView(7, 1_999_999, frozenset({band(1)}))
    result = plan([view], Policy(runway_seconds=1e9, fill_threshold=1.0), {7: Forecast(0.0)})
    assert result.creates == ()
    assert result.statuses[0].seconds_to_exhaustion == math.inf


# --- repairs, partial bands, configured originators without rows -----------------------------------------


def test_configured_originator_without_rows_gets_band_zero() -> None:
    result = plan([OriginatorView(42, None)], Policy())
    assert [(c.band, c.kind) for c in result.creates] == [(band(0), "repair")]
    assert "no rows yet" in result.creates[0].reason
    status = result.statuses[0]
    assert (status.current, status.last, status.headroom, status.fill) == (band(0), None, 0, 0.0)
    assert status.seconds_to_exhaustion == 0.0
    done = assess(OriginatorView(42, None, frozenset({band(0)})), Policy())
    assert (done.last, done.headroom) == (band(0), W)


def test_missing_current_band_is_repaired_and_ahead_still_planned() -> None:
    view = OriginatorView(9, 1_800_000, frozenset({band(0)}))  # band 0 pruned-or-not; band 1 missing
    result = plan([view], Policy())
    assert [(c.band, c.kind) for c in result.creates] == [(band(1), "repair"), (band(2), "ahead")]
    assert result.creates[0].reason == ("seq 1,800,000 has no band: band 1 [1,000,000, 2,000,000) is missing")
    assert result.creates[1].reason.startswith("seq 1,800,000 is 80.0% into band 1")


def test_partial_bands_name_the_missing_tree() -> None:
    view = OriginatorView.from_trees(3, 1_234_567, meta=[band(1)], blob=[])
    assert (
        view.partial == {band(1)} and view.meta_only == frozenset({band(1)}) and view.complete == frozenset()
    )
    repair = plan([view], Policy()).creates[0]
    assert repair.kind == "repair" and "blob tree missing" in repair.reason
    blob_only = OriginatorView.from_trees(3, 1_234_567, meta=[band(1)], blob=[band(1), band(2)])
    finished = plan([blob_only], Policy()).creates
    assert [(c.band, c.kind) for c in finished] == [(band(2), "ahead")]
    assert "meta tree missing" in finished[0].reason
    unknown = OriginatorView(3, 1_234_567, partial=frozenset({band(1)}))
    assert "only one of the meta/blob trees" in plan([unknown], Policy()).creates[0].reason


def test_pruned_bands_below_current_stay_pruned() -> None:
    view = OriginatorView(5, 7_100_000, frozenset({band(7)}), frozenset({band(2)}))
    assert plan([view], Policy(max_bands_ahead=0)).creates == ()


# --- int8 edges ------------------------------------------------------------------------------------------


def test_top_of_int8_never_plans_unstorable_bands() -> None:
    last = band_for(LAST_STORABLE_SEQ, W)
    view = OriginatorView(1, LAST_STORABLE_SEQ, frozenset({last}))
    result = plan([view], Policy(runway_seconds=1e9), {1: Forecast(1e6)})
    assert result.creates == ()
    assert result.statuses[0].headroom == 0
    # A missing last storable band is still repaired.
    assert [c.band for c in plan([OriginatorView(1, LAST_STORABLE_SEQ)], Policy()).creates] == [last]
    # A position past the last storable band (possible in bigint, not storable in any band): no exception.
    beyond = plan([OriginatorView(1, INT8_MAX)], Policy(runway_seconds=1e9), {1: Forecast(1e6)})
    assert beyond.creates == ()
    assert beyond.statuses[0].current.end > INT8_MAX


# --- ordering, cap, validation ---------------------------------------------------------------------------


def test_urgency_order_and_cap() -> None:
    views = [
        OriginatorView(1, 950_000, frozenset({band(0)})),  # ahead, headroom 49,999
        OriginatorView(2, 800_000, frozenset({band(0)})),  # ahead, headroom 199,999
        OriginatorView(3, None),  # repair
    ]
    full = plan(views, Policy())
    assert [(c.originator, c.kind) for c in full.creates] == [(3, "repair"), (1, "ahead"), (2, "ahead")]
    capped = plan(list(reversed(views)), Policy(max_creates_per_run=2))
    assert capped.creates == full.creates[:2]
    assert capped.deferred == full.creates[2:]


def test_validation() -> None:
    with pytest.raises(ValueError, match="more than once"):
        plan([OriginatorView(1, 5), OriginatorView(1, 6)], Policy())
    with pytest.raises(ValueError, match="int4"):
        OriginatorView(INT4_MAX + 1, 0)
    with pytest.raises(ValueError, match="int4"):
        OriginatorView(INT4_MIN - 1, 0)
    with pytest.raises(ValueError, match="position"):
        OriginatorView(1, -1)
    with pytest.raises(ValueError, match="both complete and partial"):
        OriginatorView(1, 0, frozenset({band(0)}), frozenset({band(0)}))
    with pytest.raises(ValueError, match="subset"):
        OriginatorView(1, 0, meta_only=frozenset({band(0)}))
    for bad in (
        {"band_width": 0},
        {"fill_threshold": 1.5},
        {"max_bands_ahead": -1},
        {"max_bands_ahead": 10_001},
        {"max_creates_per_run": -1},
        {"runway_seconds": -1.0},
        {"runway_seconds": math.inf},
    ):
        with pytest.raises(ValueError):
            Policy(**bad)


def test_negative_and_extreme_originator_ids_are_fine() -> None:
    result = plan(with_current_band({INT4_MIN: 900_000, INT4_MAX: 900_000}), Policy())
    assert ahead(result) == {(INT4_MIN, band(1)), (INT4_MAX, band(1))}


# --- properties ------------------------------------------------------------------------------------------


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[OriginatorView], Policy, dict[int, Forecast]]:
    width = draw(st.sampled_from([1, 10, 1_000, W]))
    policy = Policy(
        band_width=width,
        fill_threshold=draw(st.sampled_from([0.0, 0.5, 0.7, 0.99, 1.0])),
        max_bands_ahead=draw(st.integers(0, 4)),
        max_creates_per_run=draw(st.integers(0, 8)),
        runway_seconds=draw(st.none() | st.floats(0.0, 1e5)),
    )
    originators = draw(st.lists(st.integers(INT4_MIN, INT4_MAX), max_size=5, unique=True))
    top_index = INT8_MAX // width - 1  # indices near the int8 edge
    base = draw(st.sampled_from([0, max(top_index - 8, 0)]))
    views: list[OriginatorView] = []
    forecasts: dict[int, Forecast] = {}
    for o in originators:
        indices = st.integers(base, base + 10)
        position = draw(
            st.none()
            | st.builds(lambda i, f: min(i * width + f, INT8_MAX), indices, st.integers(0, width - 1))
        )
        bands = draw(st.lists(indices, max_size=8, unique=True))
        split = draw(st.integers(0, len(bands)))
        complete = frozenset(band(i, width) for i in bands[:split])
        partial = frozenset(band(i, width) for i in bands[split:])
        views.append(OriginatorView(o, position, complete, partial))
        if rate := draw(st.none() | st.floats(0.0, 1e6)):
            forecasts[o] = Forecast(rate)
    return views, policy, forecasts


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_plan_properties(scenario: tuple[list[OriginatorView], Policy, dict[int, Forecast]]) -> None:
    views, policy, forecasts = scenario
    result = plan(views, policy, forecasts)
    by_o = {v.originator: v for v in views}
    statuses = {s.originator: s for s in result.statuses}
    assert [s.originator for s in result.statuses] == sorted(by_o)
    planned = everything(result)
    assert len(result.creates) <= policy.max_creates_per_run
    assert len({(p.originator, p.band) for p in planned}) == len(planned)
    for p in planned:
        view, status = by_o[p.originator], statuses[p.originator]
        current_index = band_index(status.current)
        assert p.band not in view.complete
        assert p.band.width == policy.band_width and p.band.start % policy.band_width == 0
        assert p.band.end <= INT8_MAX
        assert p.reason.strip()
        assert p.headroom == status.headroom >= 0
        if p.kind == "repair":
            assert p.band == status.current
        else:
            assert 1 <= band_index(p.band) - current_index <= policy.max_bands_ahead
    keys = [(p.kind != "repair", p.headroom, p.originator, p.band.start) for p in planned]
    assert keys == sorted(keys)
    # The cap only splits the full plan; it never changes it.
    uncapped = plan(views, replace(policy, max_creates_per_run=10**9), forecasts)
    assert uncapped.creates == planned and uncapped.deferred == ()
    # Input order does not matter.
    assert plan(list(reversed(views)), policy, forecasts) == result


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_plan_is_idempotent(scenario: tuple[list[OriginatorView], Policy, dict[int, Forecast]]) -> None:
    views, policy, forecasts = scenario
    result = plan(views, policy, forecasts)
    assert plan(_apply(views, everything(result)), policy, forecasts).creates == ()
    # Applying only what the cap let through leaves exactly the deferred bands to do next time.
    rest = plan(_apply(views, result.creates), replace(policy, max_creates_per_run=10**9), forecasts)
    assert {(p.originator, p.band) for p in rest.creates} == {(p.originator, p.band) for p in result.deferred}


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_status_invariants(scenario: tuple[list[OriginatorView], Policy, dict[int, Forecast]]) -> None:
    views, policy, forecasts = scenario
    for view in views:
        status = assess(view, policy, forecasts.get(view.originator))
        assert status.headroom >= 0
        seq = 0 if view.position is None else view.position
        assert status.current.contains(seq) and status.current.width == policy.band_width
        if status.last is None:
            assert status.current not in view.complete and status.headroom == 0
            continue
        walk: Band | None = status.current
        while walk is not None and walk != status.last:
            assert walk in view.complete
            walk = next_band(walk)
        assert walk == status.last
        above = next_band(status.last)
        assert above is None or above not in view.complete
        effective = -1 if view.position is None else view.position
        assert status.headroom == status.last.end - effective - 1


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_fill_rule_matches_xmtpd(scenario: tuple[list[OriginatorView], Policy, dict[int, Forecast]]) -> None:
    views, policy, forecasts = scenario
    planned = {(p.originator, p.band) for p in everything(plan(views, policy, forecasts))}
    for view in views:
        if view.position is None or policy.max_bands_ahead < 1:
            continue
        current = assess(view, policy).current
        above = next_band(current) if current.end <= INT8_MAX else None
        fill = (view.position - current.start) / policy.band_width
        if above is not None and above not in view.complete and fill > policy.fill_threshold:
            assert (view.originator, above) in planned


def _apply(views: list[OriginatorView], done: tuple[PlannedBand, ...]) -> list[OriginatorView]:
    """The catalog after the given bands were ensured: they are complete, no longer partial."""
    made: dict[int, set[Band]] = {}
    for p in done:
        made.setdefault(p.originator, set()).add(p.band)
    return [
        OriginatorView(
            v.originator,
            v.position,
            v.complete | made.get(v.originator, set()),
            v.partial - made.get(v.originator, set()),
        )
        for v in views
    ]
