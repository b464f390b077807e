"""The hot-path benchmark (bench/hotpath.py) at smoke scale, so it cannot rot unnoticed.

A real run end to end (own throwaway cluster, real ``partitiond run`` subprocess), only tiny: 2 writers,
2 s per mode, 1 round.  Nothing here is timed: the assertions are about the shape of the output and the
invariants that hold at any speed (both modes measured, partitiond mode loses no rows).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.hotpath import ModeRun, Options, first_id, main, mode_order, round_ratios


def test_mode_order_alternates_abba() -> None:
    assert [mode_order(r) for r in range(4)] == [
        ("lazy", "partitiond"),
        ("partitiond", "lazy"),
        ("lazy", "partitiond"),
        ("partitiond", "lazy"),
    ]


def test_command_line_echoes_every_option() -> None:
    options = Options(
        writers=2, originators=1, band_width=500, rate=50, warmup=0.5, duration=2.5, rounds=3, seed=7
    )
    assert options.command_line("x.json") == (
        "$ python bench/hotpath.py --writers 2 --originators 1 --band-width 500 --rate 50 --warmup 0.5 "
        "--duration 2.5 --rounds 3 --seed 7 --json x.json"
    )


def mode_run(mode: str, round_no: int, latencies: list[float]) -> ModeRun:
    return ModeRun(mode, round_no, 1.0, {}, {}, {}, 0, 0, 0, latencies, [], [])


def test_round_ratios_pair_the_modes_of_each_round() -> None:
    """p99 of 100 evenly spread latencies is the 99th; a round missing a mode has no ratio."""
    runs = [
        mode_run("lazy", 0, [i / 1000 for i in range(1, 101)]),
        mode_run("partitiond", 0, [i / 2000 for i in range(1, 101)]),
        mode_run("partitiond", 1, [i / 1000 for i in range(1, 101)]),
        mode_run("lazy", 1, [i / 4000 for i in range(1, 101)]),
        mode_run("lazy", 2, [0.001]),
    ]
    assert round_ratios(runs) == pytest.approx([0.5, 4.0])


@pytest.mark.slow
def test_smoke_run_reports_both_modes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_json = tmp_path / "hotpath.json"
    main(
        [
            *("--writers", "2", "--originators", "2", "--band-width", "300"),
            *("--warmup", "0.5", "--duration", "2"),
            *("--rounds", "1", "--json", str(out_json)),
        ]
    )
    out = capsys.readouterr().out
    assert out.startswith("$ python bench/hotpath.py --writers 2 --originators 2 --band-width 300 ")

    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert {"lazy", "partitiond"} <= rows.keys(), out
    assert "p99 ratio partitiond/lazy:" in out
    assert "problem:" not in out, out

    data = json.loads(out_json.read_text())
    lazy, daemon = data["modes"]["lazy"], data["modes"]["partitiond"]
    assert lazy["envelopes"] > 0 and daemon["envelopes"] > 0
    assert daemon["rows_lost"] == 0 and lazy["rows_lost"] == 0
    assert daemon["partitiond_runs"] >= 1
    # Lazy mode has no partitiond: every band its writers crossed into came from the cold path.
    assert lazy["band_crossings"] >= 1
    assert lazy["cold_path"] >= lazy["band_crossings"]
    assert [r["mode"] for r in data["runs"]] == ["lazy", "partitiond"]
    # The table reports partitiond's rows lost as 0 (last column).
    assert rows["partitiond"].rstrip(" |").rsplit("|", 1)[-1].strip() == "0"


def test_originators_start_spread_over_the_first_band() -> None:
    options = Options(originators=4, band_width=1000)
    starts = [first_id(options, oid) for oid in options.originator_ids]
    assert starts == sorted(set(starts)) and starts[0] == 1 and starts[-1] < 1000
