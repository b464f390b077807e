"""The README is the user's manual: it must name every command, option and metric the code has."""

from __future__ import annotations

from pathlib import Path

import pytest

from partitiond.cli import main
from partitiond.metrics import Metrics
from partitiond.options import OPTIONS

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


def test_nothing_in_the_repository_cites_documents_outside_it() -> None:
    """The project stands alone: docs, help texts, messages and comments say what they mean in their own
    words instead of pointing at design notes that a user of the repository does not have."""
    root = Path(__file__).resolve().parent.parent
    outside = (
        "shared" + "/docs",
        "schema" + "-facts",
        "facts " + "doc",
        "prior" + "-art-and",
        "daemon" + "-conventions",
    )
    suffixes = {".py", ".md", ".sql", ".yaml", ".yml", ".service", ".timer", ".toml", ".cfg"}
    skipped = {".venv", ".git", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis", ".demo"}
    cited = [
        f"{path.relative_to(root)}: {word}"
        for path in root.rglob("*")
        if path.is_file() and path.suffix in suffixes and not skipped & set(path.relative_to(root).parts)
        for word in outside
        if word in path.read_text(encoding="utf-8", errors="replace")
    ]
    assert cited == []
