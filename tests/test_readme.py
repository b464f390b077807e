"""The README is the user's manual: it must name every command, option and metric the code has."""

from __future__ import annotations

from pathlib import Path

import pytest

from partitiond.cli import OPTIONS, main
from partitiond.metrics import Metrics

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("command", sorted(main.commands))
def test_every_command_has_a_section(command: str) -> None:
    assert f"### `partitiond {command}`" in README


@pytest.mark.parametrize("flag", [opt.flags[0] for opt in OPTIONS])
def test_every_option_is_documented(flag: str) -> None:
    assert f"`{flag}`" in README


def test_every_metric_is_documented() -> None:
    names = set()
    for family in Metrics().registry.collect():
        names.add(f"{family.name}_total" if family.type == "counter" else family.name)
    missing = sorted(n for n in names if f"`{n}" not in README)
    assert missing == []


def test_the_first_screen_gives_the_two_commands() -> None:
    first_screen = "\n".join(README.splitlines()[:30])
    assert "make demo" in first_screen
    assert "make test" in first_screen
