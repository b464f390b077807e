"""The key-5 hold benchmark (bench/hold.py) at smoke scale: every creator in the three default modes, nothing
timed."""

from __future__ import annotations

import pytest

from bench.hold import CREATORS, csv_ints, main, modes


def test_arguments_are_checked() -> None:
    assert csv_ints("160,2000") == [160, 2000]
    assert modes("none,long reader") == ["none", "long reader"]
    for bad in ("", "40,x", "0"):
        with pytest.raises(Exception, match=r"sizes|comma-separated"):
            csv_ints(bad)
    with pytest.raises(Exception, match="modes are"):
        modes("none,lunch")


def table(out: str, title: str) -> dict[str, list[str]]:
    """Rows of the table under ``title``: creator -> its cells."""
    lines = out.split(title, 1)[1].split("\n\n", 1)[0].splitlines()
    rows = [line.split("|")[1:-1] for line in lines[1:] if line.startswith("| ")]
    rows = [row for row in rows if "ms" not in row[1]]  # the header
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows}


def test_smoke_run_measures_every_creator_and_a_long_reader_defers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    main(
        [
            "--originators",
            "2",
            "--sizes",
            "6",
            "--samples",
            "2",
            "--readers",
            "1",
            "--modes",
            "none,serving,long reader",
        ]
    )
    out = capsys.readouterr().out
    quiet, serving = table(out, "readers: none"), table(out, "readers: serving")
    reading = table(out, "readers: long reader")
    assert set(quiet) == set(serving) == set(reading) == {c.name for c in CREATORS}
    for name in ("partitiond warm", "partitiond cold"):
        assert quiet[name][3] == "0"  # deferred: nothing in the way
        assert serving[name][3] == "0"  # a reader of the blob L1 at a time is waited out, not deferred
        assert reading[name][3] == "2"  # deferred: every band, rather than validating under key 5
    # xmtpd's v3 cold path re-attaches the blob L1: it waits for the reader holding key 5, until its
    # statement timeout; the v4 ensure finds the L1 by bound and validates the foreign key instead.
    assert reading["xmtpd v3"][3] == "2" and float(reading["xmtpd v3"][0]) >= 1900
    assert reading["v4 ensure"][3] == "0"
