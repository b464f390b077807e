"""Running partitiond for months: leader lease between replicas, SIGHUP reloads, run-once beside a daemon."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from partitiond.cluster import free_port

from .pgtools import TREES, Conn, l2_bounds
from .test_cli import cli
from .test_daemon import scrape, start_daemon, wait_for


def leader_gauge(port: int) -> float | None:
    for line in scrape(port).splitlines():
        if line.startswith("partitiond_leader "):
            return float(line.split()[1])
    return None


def events(log: Path) -> list[dict[str, object]]:
    found = []
    for line in log.read_text().splitlines():
        try:
            found.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return found


def created_bands(log: Path) -> list[tuple[int, int]]:
    """(originator, band start) of every "band created" line of a daemon's log."""
    return [
        (int(str(e["originator"])), int(str(e["band_start"])))
        for e in events(log)
        if e.get("event") == "band created"
    ]


def test_two_daemons_one_leader_and_failover(conn: Conn, db_dsn: str, tmp_path: Path) -> None:
    ports = [free_port(), free_port()]
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs: list[subprocess.Popen[str]] = []
    try:
        for port, log in zip(ports, logs, strict=True):
            with log.open("w") as sink:
                procs.append(
                    start_daemon(
                        db_dsn,
                        *(
                            "--originator",
                            "100",
                            "--interval",
                            "1s",
                            "--jitter",
                            "0",
                            "--probe-interval",
                            "0",
                        ),
                        *("--metrics-address", f"127.0.0.1:{port}"),
                        log=sink,
                    )
                )
        wait_for(lambda: {leader_gauge(p) for p in ports} == {0.0, 1.0}, 30, "one leader and one follower")
        leader = 0 if leader_gauge(ports[0]) == 1.0 else 1
        follower = 1 - leader
        # Its log line, not the catalog: the band is visible at COMMIT, the line comes after the staged
        # leftovers are dropped, and a SIGKILL in between would lose it.
        wait_for(lambda: created_bands(logs[leader]) == [(100, 0)], 30, "the leader to create band 0")
        procs[leader].send_signal(signal.SIGKILL)
        procs[leader].wait(10)
        # The follower takes over on a later tick: PostgreSQL freed the lock when the session died.
        wait_for(lambda: leader_gauge(ports[follower]) == 1.0, 30, "the follower to take over")
        conn.execute("INSERT INTO gateway_envelopes_latest VALUES (100, 800000, now())")
        wait_for(lambda: len(l2_bounds(conn, TREES[1], 100)) == 2, 30, "the new leader to create band 1")
        procs[follower].send_signal(signal.SIGTERM)
        assert procs[follower].wait(10) == 0
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    for tree in TREES:
        assert l2_bounds(conn, tree, 100) == [
            "FOR VALUES FROM ('0') TO ('1000000')",
            "FOR VALUES FROM ('1000000') TO ('2000000')",
        ]
    assert sorted(band for log in logs for band in created_bands(log)) == [(100, 0), (100, 1_000_000)]
    follower_runs = [e for e in events(logs[follower]) if e.get("event") == "run finished"]
    assert any(e["result"] == "follower" for e in follower_runs)


def test_run_once_beside_a_leader_is_a_follower(conn: Conn, db_dsn: str, tmp_path: Path) -> None:
    port = free_port()
    with (tmp_path / "daemon.log").open("w") as sink:
        daemon = start_daemon(
            db_dsn, "--interval", "1h", "--jitter", "0", "--metrics-address", f"127.0.0.1:{port}", log=sink
        )
    try:
        wait_for(lambda: leader_gauge(port) == 1.0, 30, "the daemon to lead")
        result = cli("run-once", "--dsn", db_dsn, "--originator", "5", "--log-format", "json")
        assert result.returncode == 0, result.stderr
        finished = [json.loads(line) for line in result.stderr.splitlines() if '"run finished"' in line]
        assert [e["result"] for e in finished] == ["follower"]
        assert l2_bounds(conn, TREES[0], 5) == []
    finally:
        daemon.terminate()
        daemon.wait(10)
    assert cli("run-once", "--dsn", db_dsn, "--originator", "5").returncode == 0
    assert l2_bounds(conn, TREES[0], 5) == ["FOR VALUES FROM ('0') TO ('1000000')"]


def test_sighup_reloads_the_config_file_and_refuses_a_broken_one(db_dsn: str, tmp_path: Path) -> None:
    config = tmp_path / "partitiond.toml"
    config.write_text('fill_threshold = 0.9\ninterval = "1h"\n')
    log = tmp_path / "daemon.log"
    with log.open("w") as sink:
        proc = start_daemon(db_dsn, "--config", str(config), "--metrics-address", "", log=sink)
    try:
        wait_for(lambda: any(e.get("event") == "run finished" for e in events(log)), 30, "the first run")
        config.write_text('fill_threshold = 0.5\ninterval = "1h"\n')
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: any(e.get("event") == "configuration reloaded" for e in events(log)), 10, "reload")
        [reloaded] = [e for e in events(log) if e.get("event") == "configuration reloaded"]
        assert reloaded["changes"] == {"fill_threshold": "0.9 -> 0.5"}
        config.write_text("fill_threshold = 7\n")
        proc.send_signal(signal.SIGHUP)
        wait_for(
            lambda: any(str(e.get("event", "")).startswith("reload refused") for e in events(log)),
            10,
            "refusal",
        )
        [refused] = [e for e in events(log) if str(e.get("event", "")).startswith("reload refused")]
        assert "fill_threshold" in str(refused["error"])
        assert proc.poll() is None  # still running, on the previous configuration
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()


def test_each_full_run_says_how_many_probes_ran_since_the_last(db_dsn: str, tmp_path: Path) -> None:
    """Routine probes log at debug; the full run's line keeps them visible at the default level."""
    log = tmp_path / "daemon.log"
    with log.open("w") as sink:
        proc = start_daemon(
            db_dsn,
            *("--interval", "3s", "--jitter", "0", "--probe-interval", "0.5s", "--metrics-address", ""),
            log=sink,
        )
    try:

        def runs() -> list[dict[str, object]]:
            return [e for e in events(log) if e.get("event") == "run finished"]

        wait_for(lambda: len(runs()) >= 2, 30, "two full runs")
        first, second = runs()[:2]
        assert first["probes_since_last_run"] == 0
        assert isinstance(second["probes_since_last_run"], int) and second["probes_since_last_run"] >= 2
        assert not [e for e in events(log) if e.get("event") == "probe finished"]  # debug only
    finally:
        proc.terminate()
        proc.wait(10)
