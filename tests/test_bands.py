"""Band arithmetic: unit cases at the edges xmtpd documents, plus properties over the whole int8 range."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from partitiond.bands import INT4_MAX, INT4_MIN, INT8_MAX, Band, band_for, band_index, fill_ratio, next_band

W = 1_000_000
LAST_STORABLE_SEQ = 9_223_372_036_853_999_999  # the last band that fits in bigint
widths = st.integers(min_value=1, max_value=10**12)


def test_int_limits() -> None:
    assert (INT4_MIN, INT4_MAX) == (-2_147_483_648, 2_147_483_647)
    assert INT8_MAX == 9_223_372_036_854_775_807


@pytest.mark.parametrize(
    ("seq", "expected"),
    [
        (0, Band(0, W)),
        (1, Band(0, W)),
        (999_999, Band(0, W)),
        (1_000_000, Band(W, 2 * W)),
        (3_750_000, Band(3 * W, 4 * W)),
    ],
)
def test_band_for_examples(seq: int, expected: Band) -> None:
    assert band_for(seq, W) == expected


def test_band_width_index_contains() -> None:
    band = Band(3 * W, 4 * W)
    assert band.width == W
    assert band_index(band) == 3
    assert band.contains(3 * W) and band.contains(4 * W - 1)
    assert not band.contains(4 * W) and not band.contains(3 * W - 1)


def test_band_rejects_empty_or_inverted() -> None:
    with pytest.raises(ValueError, match="below its exclusive end"):
        Band(5, 5)
    with pytest.raises(ValueError, match="below its exclusive end"):
        Band(6, 5)


def test_last_storable_seq() -> None:
    band = band_for(LAST_STORABLE_SEQ, W)
    assert band.end == 9_223_372_036_854_000_000 <= INT8_MAX
    assert next_band(band) is None
    with pytest.raises(ValueError, match="exceeds the bigint maximum"):
        band_for(LAST_STORABLE_SEQ + 1, W)
    with pytest.raises(ValueError, match="exceeds the bigint maximum"):
        band_for(INT8_MAX, W)


def test_invalid_inputs_raise() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        band_for(-5, W)
    with pytest.raises(ValueError, match="positive"):
        band_for(5, 0)
    with pytest.raises(ValueError, match="positive"):
        band_for(5, -W)


def test_fill_ratio_boundaries() -> None:
    band = Band(0, W)
    assert fill_ratio(700_000, band) == 0.7
    assert fill_ratio(700_001, band) > 0.7
    assert fill_ratio(0, band) == 0.0
    assert fill_ratio(4_900_000, Band(4 * W, 5 * W)) == pytest.approx(0.9)


@settings(max_examples=200)
@given(seq=st.integers(min_value=0, max_value=INT8_MAX), width=widths)
def test_band_for_properties(seq: int, width: int) -> None:
    try:
        band = band_for(seq, width)
    except ValueError:
        # Only the int8 overflow may refuse a valid seq and width.
        assert seq // width * width + width > INT8_MAX
        return
    assert band.contains(seq)
    assert band.start % width == 0
    assert band.width == width
    assert band.end <= INT8_MAX
    assert band_index(band) == seq // width
    assert 0.0 <= fill_ratio(seq, band) < 1.0


@settings(max_examples=200)
@given(seq=st.integers(min_value=INT8_MAX - 10**13, max_value=INT8_MAX), width=st.integers(1, 10**12))
def test_overflow_raises_near_int8_max(seq: int, width: int) -> None:
    if seq // width * width + width > INT8_MAX:
        with pytest.raises(ValueError, match="exceeds the bigint maximum"):
            band_for(seq, width)
    else:
        assert band_for(seq, width).end <= INT8_MAX


@settings(max_examples=100)
@given(seq=st.integers(max_value=-1), width=widths)
def test_negative_seq_raises(seq: int, width: int) -> None:
    with pytest.raises(ValueError, match="non-negative"):
        band_for(seq, width)


@settings(max_examples=200)
@given(seq=st.integers(min_value=0, max_value=INT8_MAX), width=widths)
def test_next_band_is_adjacent_or_none(seq: int, width: int) -> None:
    try:
        band = band_for(seq, width)
    except ValueError:
        return
    above = next_band(band)
    if above is None:
        assert band.end + width > INT8_MAX
    else:
        assert above.start == band.end
        assert above.width == width
        assert band_index(above) == band_index(band) + 1
        assert band_for(above.start, width) == above
        assert above > band
