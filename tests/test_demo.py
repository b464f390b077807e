"""`partitiond demo`: the real daemon, real writers, a real (throwaway or given) database, and the cleanup."""

from __future__ import annotations

import io
import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner, Result

from partitiond.child import DaemonLog
from partitiond.cli import main
from partitiond.demo import DemoConfig, Duration
from partitiond.demo_report import LiveView, percentile

# A narrow band so the fast writer (800 ids/s) crosses two bands in 8 s; the derived interval is then 1 s.
TEST_BAND_WIDTH = "3000"


@pytest.fixture
def demo_parent() -> Iterator[Path]:
    """A directory the ``postgres`` OS user can traverse (pytest's tmp_path is 0700, so initdb could not
    reach a cluster inside it when the tests run as root)."""
    parent = Path(tempfile.mkdtemp(prefix="partitiond-demo-test-"))
    parent.chmod(0o755)
    try:
        yield parent
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def run_demo(*args: str) -> Result:
    return CliRunner().invoke(main, ["demo", *args], catch_exceptions=False)


def summary_number(output: str, label: str) -> int:
    match = re.search(rf"^  {re.escape(label)}: ([\d,]+)", output, re.M)
    assert match, f"{label!r} missing from:\n{output}"
    return int(match.group(1).replace(",", ""))


def assert_clean_success(result: Result) -> None:
    assert result.exit_code == 0, result.output
    assert summary_number(result.output, "envelopes written") > 0
    assert "cold-path creations by writers: 0" in result.output
    assert summary_number(result.output, "rows lost") == 0
    assert "OK: every band existed" in result.output


@pytest.mark.slow
def test_demo_on_a_throwaway_cluster_keeps_the_writers_off_the_cold_path(demo_parent: Path) -> None:
    work_dir = demo_parent / ".demo"
    result = run_demo("--duration", "8s", "--band-width", TEST_BAND_WIDTH, "--dir", str(work_dir))
    assert_clean_success(result)
    assert "throwaway PostgreSQL cluster in" in result.output
    assert summary_number(result.output, "band crossings by writers") >= 1
    match = re.search(
        r"bands created ahead by partitiond: \d+ \((\d+) current band up front, (\d+) ahead", result.output
    )
    assert match, result.output
    assert int(match.group(1)) == 3  # band 0 of each demo originator, before any writer started
    assert int(match.group(2)) >= 1
    # Not a TTY: plain status lines, no ANSI escapes.
    assert "originator 100: writer fast" in result.output
    assert "\x1b[" not in result.output
    assert not work_dir.exists(), list(work_dir.rglob("*"))


@pytest.mark.slow
def test_demo_against_an_existing_database_creates_no_cluster_and_can_be_repeated(
    db_dsn: str, demo_parent: Path
) -> None:
    work_dir = demo_parent / ".demo"
    first = run_demo(
        "--dsn", db_dsn, "--duration", "4s", "--band-width", TEST_BAND_WIDTH, "--dir", str(work_dir)
    )
    assert_clean_success(first)
    assert "using the existing database given with --dsn" in first.output
    assert "throwaway PostgreSQL cluster" not in first.output
    assert not work_dir.exists()

    # Again on the same database: the tables are kept, the writers continue after the rows already there.
    second = run_demo(
        "--dsn", db_dsn, "--duration", "3s", "--band-width", TEST_BAND_WIDTH, "--dir", str(work_dir)
    )
    assert_clean_success(second)
    written = summary_number(first.output, "envelopes written") + summary_number(
        second.output, "envelopes written"
    )
    with psycopg.connect(db_dsn) as conn:
        row = conn.execute("SELECT count(*) FROM gateway_envelopes_meta").fetchone()
    assert row == (written,)


def test_demo_help_has_an_example_and_the_exit_status() -> None:
    result = CliRunner().invoke(main, ["demo", "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output
    assert "Exit status: 0 when no writer" in result.output.replace("\n", " ")
    for option in ("--duration", "--keep", "--dsn", "--band-width", "--seed", "--dir"):
        assert option in result.output


def test_demo_rejects_a_bad_duration() -> None:
    result = CliRunner().invoke(main, ["demo", "--duration", "soon"])
    assert result.exit_code == 2
    assert "not a positive duration" in result.output


@pytest.mark.parametrize(("raw", "seconds"), [("60s", 60.0), ("2m", 120.0), ("90", 90.0), ("1m30s", 90.0)])
def test_duration_accepts_what_partitiond_settings_accept(raw: str, seconds: float) -> None:
    assert Duration().convert(raw, None, None) == seconds


@pytest.mark.parametrize(("band_width", "interval"), [(10_000, 3.0), (3_000, 1.0), (1_000_000, 10.0)])
def test_the_interval_leaves_several_runs_per_band_of_the_fastest_writer(
    band_width: int, interval: float
) -> None:
    config = DemoConfig(band_width=band_width)
    assert config.interval == interval
    assert 0 < config.probe_interval < config.interval
    args = config.daemon_args(9999)
    assert args.count("--originator") == len(config.profiles)
    assert ["--interval", f"{interval:g}"] == args[args.index("--interval") : args.index("--interval") + 2]


def test_daemon_log_counts_created_bands_and_tolerates_partial_lines(tmp_path: Path) -> None:
    path = tmp_path / "partitiond.log"
    created = {"event": "band created", "originator": 100, "band_start": 0, "band_end": 10, "kind": "ahead"}
    path.write_text(json.dumps(created) + "\nnot json\n" + '{"event": "run fin')
    log = DaemonLog(path)
    log.poll()
    assert log.created[100] == 1 and log.created_kinds["ahead"] == 1
    assert log.runs == 0  # the last line is still being written
    with path.open("a") as handle:
        handle.write('ished"}\n' + json.dumps({"event": "run failed", "reason": "boom"}) + "\n")
    log.poll()
    assert log.runs == 1
    assert log.failures == ["run failed: boom"]


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([], 0.5) is None


def test_live_view_redraws_in_place_on_a_terminal() -> None:
    out = io.StringIO()
    view = LiveView(tty=True, plain_every=5.0, out=out)
    rows = [("100", "fast 800/s", "1,000", "0", "1", "18,999", "23s", "2", "0")]
    view.show(1.0, 60.0, rows, "")
    view.show(2.0, 60.0, rows, "")
    first_frame, second_frame = out.getvalue().split("\x1b[3F")
    assert first_frame.count("\n") == 3  # header, column names, one originator
    assert second_frame.count("\x1b[2K") == 3


def test_live_view_prints_plain_lines_at_most_every_few_seconds() -> None:
    out = io.StringIO()
    view = LiveView(tty=False, plain_every=5.0, out=out)
    rows = [("100", "fast 800/s", "1,000", "0", "1", "18,999", "23s", "2", "0")]
    for elapsed in (0.0, 1.0, 4.0, 5.0):
        view.show(elapsed, 60.0, rows, "")
    assert out.getvalue().count("originator 100") == 2
    assert "\x1b[" not in out.getvalue()
