"""The band-drop benchmark (bench/drop.py) at smoke scale: every way drops its bands, nothing timed."""

from __future__ import annotations

import pytest

from bench.drop import main

KEYS = (
    "['blockchain_messages_originator_node_id_originator_sequence_fkey', "
    "'gateway_envelope_blobs_originator_node_id_originator_seque_fkey']"
)


def test_smoke_run_keeps_the_keys_until_the_pruners_own_statement(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--originators", "2", "--sizes", "8,10", "--samples", "1"])
    out = capsys.readouterr().out
    assert out.count(f"keys after the safe drops: {KEYS}") == 2  # one per size
    assert out.count("keys after xmtpd's pruner statement: []") == 1  # the largest size only
    for way in ("| detach first | 1 |", "| partitiond_drop_band | 1 |"):
        assert out.count(way) == 2
    assert out.count("| xmtpd pruner (keys lost) | 1 |") == 1


def test_a_size_too_small_for_the_samples_is_refused() -> None:
    with pytest.raises(SystemExit, match="too small"):
        main(["--originators", "2", "--sizes", "4", "--samples", "3"])
