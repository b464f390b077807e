"""The key-5 hold benchmark (bench/hold.py) at smoke scale: every creator creates its bands, nothing timed."""

from __future__ import annotations

import pytest

from bench.hold import CREATORS, band_counts, main


def test_band_counts_are_checked() -> None:
    assert band_counts("40,160") == [40, 160]
    for bad in ("", "40,x", "0"):
        with pytest.raises(Exception, match=r"band counts|comma-separated"):
            band_counts(bad)


def test_smoke_run_measures_every_creator(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--originators", "2", "--bands", "3", "--samples", "2"])
    out = capsys.readouterr().out
    rows = {
        line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ") and "ms" not in line
    }
    assert rows == {c.name for c in CREATORS}
    assert "2 originators x 3 bands" in out
