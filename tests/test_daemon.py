"""`partitiond run` as a real process: scheduling, metrics, systemd notify and SIGTERM mid-run."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import psycopg
import pytest

from partitiond.cluster import free_port

from .pgtools import Conn, l2_bounds, leftovers, seed_rows


def wait_for(condition: Callable[[], bool], deadline: float, what: str) -> None:
    """Poll with a deadline: the test's only form of waiting."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {deadline}s waiting for {what}")


def start_daemon(
    dsn: str, *args: str, env: dict[str, str] | None = None, log: IO[str] | None = None
) -> subprocess.Popen[str]:
    """Start `partitiond run`; pass ``log`` for long runs, since nobody drains a pipe while the test runs."""
    return subprocess.Popen(
        [sys.executable, "-m", "partitiond", "run", "--log-format", "json", *args],
        env={**os.environ, "PARTITIOND_DSN": dsn, **(env or {})},
        stdout=subprocess.PIPE if log is None else log,
        stderr=subprocess.PIPE if log is None else log,
        text=True,
    )


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            return str(resp.read().decode())
    except OSError:
        return ""


def sample_names(exposition: str) -> set[str]:
    """Names of the samples (not HELP/TYPE lines) in a text exposition, labelled or not."""
    return set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{|\s)", exposition, re.M))


def scrape_until(port: int, wanted: set[str], deadline: float, what: str) -> str:
    """Scrape until every metric in ``wanted`` has a sample; the last exposition.  On timeout the error
    names the missing metrics and shows the last scrape."""
    latest = {"text": ""}

    def all_present() -> bool:
        latest["text"] = scrape(port)
        return wanted <= sample_names(latest["text"])

    try:
        wait_for(all_present, deadline, what)
    except AssertionError as exc:
        missing = sorted(wanted - sample_names(latest["text"]))
        raise AssertionError(f"{exc}; missing {missing}\n{latest['text']}") from None
    return latest["text"]


def successful_runs(port: int) -> float:
    match = re.search(r'^partitiond_runs_total\{result="success"\} (\S+)$', scrape(port), re.M)
    return float(match.group(1)) if match else 0.0


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(10)
    try:
        yield sock
    finally:
        sock.close()


@pytest.mark.slow
def test_runs_at_start_then_every_interval_and_stops_cleanly(
    conn: Conn, db_dsn: str, notify_socket: socket.socket
) -> None:
    seed_rows(conn, 900, [800_000])
    port = free_port()
    proc = start_daemon(
        db_dsn,
        *("--originator", "100", "--interval", "1s", "--jitter", "0", "--probe-interval", "0"),
        *("--metrics-address", f"127.0.0.1:{port}"),
        env={"NOTIFY_SOCKET": notify_socket.getsockname()},
    )
    try:
        assert notify_socket.recv(64) == b"READY=1"
        wait_for(lambda: successful_runs(port) >= 3, 30, "three successful runs")
        assert l2_bounds(conn, "gateway_envelopes_meta", 100) == ["FOR VALUES FROM ('0') TO ('1000000')"]
        assert len(l2_bounds(conn, "gateway_envelopes_blob", 900)) == 2
        metrics = scrape(port)
        assert 'partitiond_originator_headroom_ids{originator="900"} 1.199999e+06' in metrics
        # The daemon's own process, for dashboards (never in run-once's textfile: see test_cli).
        assert re.search(r"^process_start_time_seconds [1-9]", metrics, re.M), metrics
        assert re.search(r"^process_resident_memory_bytes [1-9]", metrics, re.M), metrics
        assert re.search(r'^python_info\{.*version="', metrics, re.M), metrics
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()
    assert notify_socket.recv(64) == b"STOPPING=1"
    _, stderr = proc.communicate()
    assert '"event": "run finished"' in stderr


@pytest.mark.slow
def test_sigterm_mid_run_cancels_the_waiting_ensure_and_exits_0(conn: Conn, db_dsn: str) -> None:
    """partitiond waits up to --lock-timeout only before key 5, holding nothing; here staging waits for an
    uncommitted table of the staged name (a transaction-id wait no pre-flight look at pg_locks can see)."""
    seed_rows(conn, 100, [800_000])  # the next band is due
    with psycopg.connect(db_dsn) as holder:
        holder.execute("CREATE TABLE partitiond_stage_meta_o100_s1000000 (x int)")
        proc = start_daemon(
            db_dsn,
            *("--originator", "100", "--lock-timeout", "60s", "--lock-attempts", "1"),
            *("--statement-timeout", "120s", "--metrics-address", "", "--shutdown-timeout", "5s"),
        )
        try:

            def ensure_is_waiting() -> bool:
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'partitiond' "
                    "AND wait_event_type = 'Lock'"
                ).fetchone()
                return row == (1,)

            wait_for(ensure_is_waiting, 30, "the ensure to wait for the holder's lock")
            stopped_at = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0
            assert time.monotonic() - stopped_at < 5
        finally:
            proc.kill()
            proc.wait()
        holder.rollback()
    assert leftovers(conn) == []
    assert l2_bounds(conn, "gateway_envelopes_meta", 100) == ["FOR VALUES FROM ('0') TO ('1000000')"]
    _, stderr = proc.communicate()
    assert '"event": "band interrupted by shutdown"' in stderr  # our own cancel is not a failure
    assert '"event": "band failed"' not in stderr


@pytest.mark.slow
def test_watchdog_pings_only_when_systemd_asks(db_dsn: str, notify_socket: socket.socket) -> None:
    proc = start_daemon(
        db_dsn,
        *("--interval", "1h", "--metrics-address", ""),
        env={"NOTIFY_SOCKET": notify_socket.getsockname(), "WATCHDOG_USEC": "1000000"},
    )
    try:
        assert notify_socket.recv(64) == b"READY=1"
        assert notify_socket.recv(64) == b"WATCHDOG=1"  # every WATCHDOG_USEC / 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()
    messages = []
    with contextlib.suppress(TimeoutError):
        notify_socket.settimeout(1)
        while True:
            messages.append(notify_socket.recv(64))
    assert messages[-1] == b"STOPPING=1"
    assert set(messages) <= {b"WATCHDOG=1", b"STOPPING=1"}


@pytest.mark.slow
def test_sighup_rereads_the_config_file_and_provisions_an_added_originator_at_once(
    conn: Conn, db_dsn: str, tmp_path: Path
) -> None:
    """The scheduled probe after the first run is --probe-interval (60 s) away, since no originator has a
    rate to watch; the band of an originator added by a reload must come long before that."""
    config = tmp_path / "partitiond.toml"
    config.write_text("originators = [100]\n")
    port = free_port()
    log_path = tmp_path / "daemon.log"
    started = time.monotonic()
    with log_path.open("w") as log:
        proc = start_daemon(
            db_dsn,
            *("--config", str(config), "--interval", "1h", "--jitter", "0", "--probe-interval", "60s"),
            *("--metrics-address", f"127.0.0.1:{port}"),
            log=log,
        )
    next_probe_not_before = started + 60  # the first run ends after the start, its probe 60 s later
    try:
        wait_for(lambda: successful_runs(port) >= 1, 30, "the first run")
        assert l2_bounds(conn, "gateway_envelopes_meta", 100) == ["FOR VALUES FROM ('0') TO ('1000000')"]
        assert l2_bounds(conn, "gateway_envelopes_meta", 200) == []

        config.write_text("originators = [100, 200]\n")
        proc.send_signal(signal.SIGHUP)
        both_trees = ["FOR VALUES FROM ('0') TO ('1000000')"] * 2
        wait_for(
            lambda: (
                l2_bounds(conn, "gateway_envelopes_meta", 200)
                + l2_bounds(conn, "gateway_envelopes_blob", 200)
                == both_trees
            ),
            next_probe_not_before - 20 - time.monotonic(),
            "originator 200's band, 20 s or more before the next scheduled probe",
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()
    events = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    [reloaded] = [e for e in events if e["event"] == "configuration reloaded"]
    assert reloaded["changes"] == {"originators": "100 -> 100,200"}
    created = [e for e in events if e["event"] == "band created"]
    assert [(e["originator"], e["band_start"]) for e in created] == [(100, 0), (200, 0)]
    assert events.index(reloaded) < events.index(created[1])


@pytest.mark.slow
def test_sighup_with_an_invalid_config_file_keeps_the_running_configuration(
    conn: Conn, db_dsn: str, tmp_path: Path
) -> None:
    config = tmp_path / "partitiond.toml"
    config.write_text("originators = [100]\n")
    log_path = tmp_path / "daemon.log"
    with log_path.open("w") as log:
        proc = start_daemon(
            db_dsn,
            *("--config", str(config), "--interval", "1h", "--jitter", "0", "--probe-interval", "0"),
            *("--metrics-address", ""),
            log=log,
        )
    try:
        wait_for(lambda: '"run finished"' in log_path.read_text(), 30, "the first run")
        config.write_text("originators = [100, -7]\n")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: '"reload refused' in log_path.read_text(), 20, "the refusal")
        assert proc.poll() is None, "a bad reload must not stop the daemon"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()
    events = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    [refused] = [e for e in events if e["event"].startswith("reload refused")]
    assert f"originators in {config} must be" in refused["error"] and "-7" in refused["error"]
    assert l2_bounds(conn, "gateway_envelopes_meta", 100) == ["FOR VALUES FROM ('0') TO ('1000000')"]
