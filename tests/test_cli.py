"""The installed command line: help, exit codes, messages, configuration sources."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from partitiond.options import OPTIONS

from .pgtools import Conn, l2_bounds, partition_count, seed_rows


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith("PARTITIOND_") and not k.startswith("PG")
    }
    return subprocess.run(
        [sys.executable, "-m", "partitiond", *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("command", ["run-once", "run", "plan", "status", "install-sql", "check"])
def test_every_command_explains_itself(command: str) -> None:
    result = cli(command, "--help")
    assert result.returncode == 0
    assert "Example" in result.stdout
    assert "PARTITIOND_SCHEMA" in result.stdout and "PARTITIOND_DSN_FILE" in result.stdout


def listed(command: str) -> set[str]:
    """The long options ``command --help`` lists."""
    return set(re.findall(r"^  (--[a-z-]+)", cli(command, "--help").stdout, re.M))


DAEMON_ONLY = {"--interval", "--jitter", "--probe-interval", "--runway", "--max-jump-bands"}
DAEMON_ONLY |= {"--slow-path-runway", "--metrics-address", "--shutdown-timeout"}
CREATING = {"--lock-timeout", "--statement-timeout", "--hold-budget", "--hold-timeout", "--lock-attempts"}
CREATING |= {"--idle-in-transaction-timeout", "--protocol-lock", "--protocol-lock-key", "--retry-budget"}


def test_each_command_lists_only_the_options_it_uses() -> None:
    install = listed("install-sql")
    assert {
        "--config",
        "--dsn",
        "--dsn-file",
        "--schema",
        "--connect-timeout",
        "--print",
        "--owner",
    } <= install
    assert not install & (DAEMON_ONLY | CREATING | {"--band-width", "--originator", "--metrics-textfile"})
    for command in ("plan", "status", "check"):
        shown = listed(command)
        assert {"--dsn", "--originator", "--band-width"} <= shown, command
        assert not shown & (DAEMON_ONLY | CREATING | {"--metrics-textfile"}), command
    assert {"--leader-lock-key", "--runway-warning", "--fill-threshold"} <= listed("check")
    assert "--max-creates-per-run" in listed("plan") and "--fill-threshold" not in listed("status")
    once, daemon = listed("run-once"), listed("run")
    assert once >= CREATING | {"--metrics-textfile", "--dry-run", "--leader-lock-key"}
    assert not once & DAEMON_ONLY
    assert daemon >= CREATING | DAEMON_ONLY
    assert not daemon & {"--metrics-textfile", "--runway-warning"}
    every = set().union(*(listed(c) for c in ("install-sql", "plan", "status", "check", "run-once", "run")))
    assert {opt.flags[0].split("/")[0] for opt in OPTIONS} <= every, "an option no command shows"


def test_an_option_a_command_does_not_use_is_still_accepted_and_validated(db_dsn: str) -> None:
    """One shared command line (or unit file) keeps working for every command, as the environment and
    the config file do; a malformed value is still refused, naming the option."""
    printed = cli("install-sql", "--print", "--interval", "5m", "--band-width", "1000")
    assert printed.returncode == 0, printed.stderr
    assert "--interval" not in cli("install-sql", "--help").stdout
    refused = cli("plan", "--dsn", db_dsn, "--shutdown-timeout", "0")
    assert refused.returncode == 2 and "--shutdown-timeout must be" in refused.stderr


def test_top_level_help_lists_commands_and_exit_codes() -> None:
    result = cli("--help")
    assert result.returncode == 0
    for word in ("run-once", "plan", "status", "install-sql", "Exit codes"):
        assert word in result.stdout


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["run-once", "--interval", "-5"], {}, "--interval"),
        (["run-once", "--fill-threshold", "1.5"], {}, "--fill-threshold"),
        (["run-once", "--band-width", "0"], {}, "--band-width"),
        (["run-once", "--originator", "2147483648"], {}, "--originator"),
        (["run-once", "--originator", "-5"], {}, "--originator"),
        (["plan"], {"PARTITIOND_ORIGINATORS": "100,-5"}, "PARTITIOND_ORIGINATORS"),
        (["run-once"], {"PARTITIOND_LOCK_TIMEOUT": "soon"}, "PARTITIOND_LOCK_TIMEOUT"),
    ],
)
def test_invalid_settings_exit_2_naming_the_option(args: list[str], env: dict[str, str], named: str) -> None:
    result = cli(*args, env=env)
    assert result.returncode == 2
    assert named in result.stderr


def test_a_negative_originator_exits_2_and_creates_nothing(conn: Conn, db_dsn: str) -> None:
    before = partition_count(conn)
    result = cli("run-once", "--dsn", db_dsn, "--originator", "-5")
    assert result.returncode == 2
    assert (
        "--originator must be a comma-separated list of originator ids from 0 to 2147483647" in result.stderr
    )
    assert 'got "-5"' in result.stderr
    assert partition_count(conn) == before
    assert conn.execute("SELECT count(*) FROM pg_class WHERE relname LIKE '%%o-5%%'").fetchone() == (0,)


def test_unknown_config_file_key_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "partitiond.toml"
    config.write_text("band_widht = 5\n")
    result = cli("run-once", "--config", str(config))
    assert result.returncode == 2
    assert 'unknown key "band_widht"' in result.stderr and "band_width" in result.stderr


def test_flag_beats_env_beats_file(tmp_path: Path, conn: Conn, db_dsn: str) -> None:
    seed_rows(conn, 100, [600_000])
    config = tmp_path / "partitiond.toml"
    config.write_text("fill_threshold = 0.9\n")
    env = {"PARTITIOND_DSN": db_dsn}
    assert "nothing to create" in cli("plan", "--config", str(config), env=env).stdout
    env_wins = cli("plan", "--config", str(config), env={**env, "PARTITIOND_FILL_THRESHOLD": "0.5"})
    assert "1 band(s) to create" in env_wins.stdout
    flag_wins = cli(
        "plan",
        "--config",
        str(config),
        "--fill-threshold",
        "0.95",
        env={**env, "PARTITIOND_FILL_THRESHOLD": "0.5"},
    )
    assert "nothing to create" in flag_wins.stdout


def test_unreachable_server_exits_3_and_never_prints_the_password() -> None:
    result = cli(
        "run-once", "--dsn", "postgresql://u:hunter2-secret@127.0.0.1:9/db", "--connect-timeout", "2"
    )
    assert result.returncode == 3
    assert "cannot connect" in result.stderr
    assert "hunter2-secret" not in result.stderr + result.stdout


def test_dry_run_prints_reasons_and_sql_and_creates_nothing(conn: Conn, db_dsn: str) -> None:
    seed_rows(conn, 100, [712_034])
    before = partition_count(conn)
    result = cli("run-once", "--dry-run", "--dsn", db_dsn)
    assert result.returncode == 0, result.stderr
    assert "seq 712,034 is 71.2% into band 0 (threshold 70%) → band 1" in result.stdout
    # The statements the pass sends, with their values (tests/test_dry_run.py compares them to a real pass).
    attach = "partitiond_attach_staged(100::integer, 1000000::bigint, 2000000::bigint, false::boolean);"
    assert f'SELECT "public".{attach}' in result.stdout
    assert partition_count(conn) == before


def test_run_once_creates_and_exits_0(conn: Conn, db_dsn: str) -> None:
    result = cli(
        "run-once", "--originator", "7", env={"PARTITIOND_DSN": db_dsn, "PARTITIOND_LOG_FORMAT": "json"}
    )
    assert result.returncode == 0, result.stderr
    events = [json.loads(line)["event"] for line in result.stderr.splitlines()]
    assert events == ["became leader", "band created", "run finished"]
    assert l2_bounds(conn, "gateway_envelopes_meta", 7) == ["FOR VALUES FROM ('0') TO ('1000000')"]


def test_status_json_and_table(conn: Conn, db_dsn: str) -> None:
    seed_rows(conn, 100, [250_000])
    doc = json.loads(cli("status", "--format", "json", "--dsn", db_dsn).stdout)
    assert set(doc) == {"originators", "leader_lease"}
    assert doc["originators"] == [
        {
            "originator": 100,
            "position": 250_000,
            "current_band": [0, 1_000_000],
            "last_band": [0, 1_000_000],
            "headroom": 749_999,
            "fill_pct": 25.0,
            "seconds_to_exhaustion": None,
        }
    ]
    table = cli("status", "--dsn", db_dsn).stdout.splitlines()
    assert table[0].split() == ["originator", "position", "current_band", "last_band", "headroom", "fill_pct"]
    assert "749,999" in table[1]
    assert table[2] == "leader lease: none"


def test_status_tells_no_rows_from_a_real_position_0(conn: Conn, db_dsn: str) -> None:
    """Originator 7 has its band (provisioned by run-once) but no rows; originator 5 wrote sequence id 0."""
    assert cli("run-once", "--dsn", db_dsn, "--originator", "7").returncode == 0
    seed_rows(conn, 5, [0])
    doc = json.loads(cli("status", "--format", "json", "--dsn", db_dsn, "--originator", "7").stdout)
    assert {row["originator"]: row["position"] for row in doc["originators"]} == {5: 0, 7: None}
    table = cli("status", "--dsn", db_dsn, "--originator", "7").stdout.splitlines()
    cells = {int(line.split()[0]): line.split()[1] for line in table[1:3]}
    assert cells == {5: "0", 7: "—"}


def test_a_dsn_file_others_can_read_is_a_warning_not_a_refusal(tmp_path: Path, db_dsn: str) -> None:
    loose, tight = tmp_path / "loose", tmp_path / "tight"
    for path, mode in ((loose, 0o644), (tight, 0o600)):
        path.write_text(db_dsn + "\n")
        path.chmod(mode)
    warned = cli("plan", "--dsn-file", str(loose), "--log-format", "json")
    assert warned.returncode == 0, warned.stderr
    [event] = [json.loads(line) for line in warned.stderr.splitlines()]
    assert {k: event[k] for k in ("event", "level", "path", "mode", "fix")} == {
        "event": "DSN file is readable by group or others",
        "level": "warning",
        "path": str(loose),
        "mode": "0644",
        "fix": f"chmod 600 {loose}",
    }
    quiet = cli("plan", "--dsn-file", str(tight), "--log-format", "json")
    assert (quiet.returncode, quiet.stderr) == (0, "")


def test_install_sql_print_is_one_transaction_for_the_schema() -> None:
    result = cli("install-sql", "--print", "--schema", "my schema")
    assert result.returncode == 0
    assert result.stdout.startswith('BEGIN;\nSET LOCAL search_path = "my schema", pg_temp;')
    assert "CREATE OR REPLACE FUNCTION ensure_gateway_parts_v4" in result.stdout
    assert result.stdout.rstrip().endswith("COMMIT;")


def test_install_sql_then_run_once(conn: Conn, db_dsn: str) -> None:
    conn.execute("DROP FUNCTION ensure_gateway_parts_v4(int, bigint, bigint)")
    missing = cli("run-once", "--dsn", db_dsn, "--originator", "1")
    assert missing.returncode == 4
    assert "partitiond install-sql" in missing.stderr
    installed = cli("install-sql", "--dsn", db_dsn)
    assert installed.returncode == 0, installed.stderr
    assert cli("run-once", "--dsn", db_dsn, "--originator", "1").returncode == 0


def test_run_once_writes_a_node_exporter_textfile(tmp_path: Path, db_dsn: str) -> None:
    target = tmp_path / "partitiond.prom"
    result = cli("run-once", "--dsn", db_dsn, "--originator", "3", "--metrics-textfile", str(target))
    assert result.returncode == 0, result.stderr
    text = target.read_text()
    assert 'partitiond_runs_total{result="success"} 1.0' in text
    assert 'partitiond_partitions_created_total{level="l2",table="meta"} 1.0' in text
    assert 'partitiond_partitions_created_total{level="l1",table="blob"} 1.0' in text  # a new originator
    assert 'partitiond_originator_headroom_ids{originator="3"} 1e+06' in text
    # A finished process's CPU or memory would mislead: those are the daemon's /metrics only.
    assert "process_" not in text and "python_info" not in text
