"""Band arithmetic for xmtpd's RANGE level (``originator_sequence_id`` in fixed-width bands).

xmtpd stores each originator's envelopes in bands ``[floor(seq / W) * W, + W)`` (end exclusive, ``W`` =
1,000,000).  Everything here is plain integer arithmetic on Python ints, so values at the very top of the
``bigint`` range are exact; the only limit we enforce is PostgreSQL's: a partition bound is a ``bigint``, so a
band whose exclusive end exceeds ``INT8_MAX`` cannot be created (xmtpd's own ensure raises "bigint out of
range" there).  With ``W = 1e6`` the last storable sequence id is 9,223,372,036,853,999,999.
"""

from __future__ import annotations

from dataclasses import dataclass

INT4_MIN = -(2**31)
INT4_MAX = 2**31 - 1
INT8_MAX = 2**63 - 1


@dataclass(frozen=True, order=True, slots=True)
class Band:
    """A half-open range ``[start, end)`` of sequence ids: one L2 partition of one originator.

    Only ``start < end`` is enforced.  Storability (``end <= INT8_MAX``) is checked where bands are *made*
    (``band_for``, ``next_band``), so that a catalog-derived or hypothetical band can still be represented.
    Ordering is by ``(start, end)``, i.e. by position in the sequence space.
    """

    start: int
    end: int

    def __post_init__(self) -> None:
        if self.start >= self.end:
            raise ValueError(f"band start {self.start} must be below its exclusive end {self.end}")

    @property
    def width(self) -> int:
        return self.end - self.start

    def contains(self, seq: int) -> bool:
        return self.start <= seq < self.end


def band_index(band: Band) -> int:
    """The band's ordinal (``start // width``): band 0 is ``[0, W)``.  Not stored, so Band stays two ints."""
    return band.start // band.width


def band_for(seq: int, width: int) -> Band:
    """The band that holds ``seq``.

    Raises ``ValueError`` instead of returning a band PostgreSQL cannot store: a negative ``seq`` (xmtpd's
    truncating division would map -5 to ``[0, W)``, which cannot hold it), a non-positive width, or a band
    whose end would exceed ``INT8_MAX``.
    """
    if width <= 0:
        raise ValueError(f"band width must be positive, got {width}")
    if seq < 0:
        raise ValueError(f"sequence id must be non-negative, got {seq}")
    start = seq // width * width
    end = start + width
    if end > INT8_MAX:
        raise ValueError(
            f"sequence id {seq} with band width {width} needs band [{start}, {end}), "
            f"whose end exceeds the bigint maximum {INT8_MAX}"
        )
    return Band(start, end)


def next_band(band: Band) -> Band | None:
    """The band directly above ``band`` with the same width, or None when its end would overflow int8."""
    end = band.end + band.width
    if end > INT8_MAX:
        return None
    return Band(band.end, end)


def fill_ratio(seq: int, band: Band) -> float:
    """How far ``seq`` is into ``band``: ``(seq - start) / width``, in ``[0, 1)`` when the band holds it.

    Not clamped: a seq outside the band yields a value outside ``[0, 1)``, which callers can detect.
    Integer true division is exact-then-rounded, so int8-edge values stay finite and accurate.
    """
    return (seq - band.start) / band.width
