"""Faults against real processes and a real PostgreSQL: kill -9 mid-run, a server restart under the daemon,
and a long lock holder while the daemon must create a band.

Every wait polls with a deadline (``wait_for``) or waits on a process/event with a timeout; the PostgreSQL
restart happens on a throwaway cluster of its own, never on the session cluster the other tests share.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psycopg
import pytest
from psycopg import sql

from partitiond import sqlfiles
from partitiond.cli import main as cli_main
from partitiond.cluster import LocalCluster, free_port, throwaway_cluster
from partitiond.config import Settings

from .conftest import TEMPLATE_DB
from .pgtools import TREES, Conn, Inserter, hold_lock, leftovers, seed_rows, wait_for

_L1_BOUND = re.compile(r"^FOR VALUES IN \('?(-?\d+)'?\)$")
_L2_BOUND = re.compile(r"^FOR VALUES FROM \('?(-?\d+)'?\) TO \('?(-?\d+)'?\)$")

# The executor's per-band statements (partitiond/executor.py): seeing one of them in pg_stat_activity means
# the process is past discovery and inside a band's transaction.  The discovery queries mention the
# function's name too, so match on the start of the statement, never on a substring.
BAND_STATEMENT = (
    "query ~ '^(SELECT pg_catalog\\."
    "(set_config\\(''lock_timeout''|pg_try_advisory_xact_lock|pg_advisory_xact_lock)"
    '|SELECT "[^"]+"\\.partitiond_(band_exists|stage_table|attach_staged)\\('
    "|WITH ensured AS MATERIALIZED)'"
)


# --- helpers shared with test_torture.py ------------------------------------------------------------------


def partitiond_argv(command: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "partitiond", command, "--log-format", "json", *args]


def originator_args(originators: Sequence[int]) -> list[str]:
    return [arg for oid in originators for arg in ("--originator", str(oid))]


def spawn(dsn: str, command: str, *args: str, log: IO[str]) -> subprocess.Popen[str]:
    """Start partitiond with stdout and stderr going to ``log`` (a file never fills up like a pipe)."""
    return subprocess.Popen(
        partitiond_argv(command, *args),
        env={**os.environ, "PARTITIOND_DSN": dsn},
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        text=True,
    )


def log_events(path: Path) -> list[dict[str, object]]:
    """The JSON log lines partitiond wrote (anything else, e.g. a traceback, is skipped)."""
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events


def http_get(port: int, path: str) -> tuple[int | None, str]:
    """(status, body) of a local GET; status None when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            return int(resp.status), str(resp.read().decode())
    except urllib.error.HTTPError as exc:
        return int(exc.code), str(exc.read().decode())
    except OSError:
        return None, ""


def metric(port: int, name: str, **labels: str) -> float:
    """One sample from /metrics, matched by name and labels (in any order); 0 when absent."""
    _, body = http_get(port, "/metrics")
    for line in body.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if match and match.group(1) == name:
            found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            if found == labels:
                return float(match.group(3))
    return 0.0


def stop_daemon(proc: subprocess.Popen[str], timeout: float = 20) -> int:
    """SIGTERM and wait; the return code is the daemon's exit status."""
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout)


@dataclass(frozen=True)
class TreeShape:
    """Both trees as the catalog has them, read by bound (never by name).

    ``l1[tree][oid]`` counts the L1 partitions holding ``oid``; ``l2[tree][oid]`` lists every L2 band
    (start, end) under them, duplicates kept, so "exactly once" can be asserted.
    """

    l1: dict[str, dict[int, int]]
    l2: dict[str, dict[int, list[tuple[int, int]]]]

    def asymmetries(self) -> list[str]:
        """Differences between meta and blob: an originator or a band present in one tree only."""
        meta, blob = TREES
        problems = []
        for oid in sorted(set(self.l1[meta]) | set(self.l1[blob])):
            if self.l1[meta].get(oid, 0) != self.l1[blob].get(oid, 0):
                counts = f"meta x{self.l1[meta].get(oid, 0)}, blob x{self.l1[blob].get(oid, 0)}"
                problems.append(f"originator {oid}: L1 {counts}")
            m, b = sorted(self.l2[meta].get(oid, [])), sorted(self.l2[blob].get(oid, []))
            if m != b:
                problems.append(f"originator {oid}: meta bands {m} != blob bands {b}")
        return problems

    def duplicates(self) -> list[str]:
        """Anything present more than once in one tree."""
        problems = []
        for tree in TREES:
            problems += [f"{tree}: {n} L1 for originator {o}" for o, n in self.l1[tree].items() if n != 1]
            for oid, bands in self.l2[tree].items():
                problems += [
                    f"{tree}: band {b} of {oid} x{bands.count(b)}" for b in set(bands) if bands.count(b) > 1
                ]
        return problems

    def bands(self, tree: str, oid: int) -> list[tuple[int, int]]:
        return sorted(self.l2[tree].get(oid, []))


def tree_shape(conn: Conn) -> TreeShape:
    rows = conn.execute(
        """
        SELECT top.relname::text, pg_get_expr(l1.relpartbound, l1.oid), pg_get_expr(l2.relpartbound, l2.oid)
        FROM pg_class top
        JOIN pg_inherits i1 ON i1.inhparent = top.oid
        JOIN pg_class l1 ON l1.oid = i1.inhrelid
        LEFT JOIN pg_inherits i2 ON i2.inhparent = l1.oid
        LEFT JOIN pg_class l2 ON l2.oid = i2.inhrelid
        WHERE top.oid IN (to_regclass('gateway_envelopes_meta'), to_regclass('gateway_envelopes_blob'))
        """
    ).fetchall()
    l1: dict[str, dict[int, int]] = {tree: {} for tree in TREES}
    l2: dict[str, dict[int, list[tuple[int, int]]]] = {tree: {} for tree in TREES}
    seen_l1: set[tuple[str, str]] = set()
    for tree, l1_bound, l2_bound in rows:
        tree, l1_bound = str(tree), str(l1_bound)
        match = _L1_BOUND.match(l1_bound)
        assert match, f"unexpected L1 bound {l1_bound!r} in {tree}"
        oid = int(match.group(1))
        if (tree, l1_bound) not in seen_l1:  # one row per L2: count each L1 once
            seen_l1.add((tree, l1_bound))
            l1[tree][oid] = l1[tree].get(oid, 0) + 1
        l2[tree].setdefault(oid, [])
        if l2_bound is not None:
            band = _L2_BOUND.match(str(l2_bound))
            assert band, f"unexpected L2 bound {l2_bound!r} in {tree}"
            l2[tree][oid].append((int(band.group(1)), int(band.group(2))))
    return TreeShape(l1, l2)


def run_check_command(dsn: str, *args: str) -> tuple[int, str] | None:
    """(exit code, report) of ``partitiond check`` when that command exists in this build, else None."""
    if "check" not in cli_main.commands:
        return None
    done = subprocess.run(
        partitiond_argv("check", "--metrics-address", "", *args),
        env={**os.environ, "PARTITIOND_DSN": dsn},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


# --- kill -9 mid-run ---------------------------------------------------------------------------------------

KILL_ROUNDS = int(os.environ.get("PARTITIOND_KILL_ROUNDS", "20"))
KILL_ORIGINATORS = tuple(range(1, 51))
KILL_SEED = 20_251_107
KILL_LANES = 2  # rounds run two at a time, each on its own database: same rounds, less wall time


@dataclass
class KillRound:
    index: int
    delay: float
    alive_at_kill: bool
    bands_at_kill: int
    recovered: int
    check_exits: tuple[int, ...]


class KillWindow:
    """How long a run-once takes from its first band to its last: kill moments are drawn from it.

    Starts from a guess, then follows the mean ensure time per band that the recovery runs log, so the kills
    keep landing mid-run on faster and slower machines alike.
    """

    def __init__(self, guess: float) -> None:
        self._guess = guess
        self._band_seconds: list[float] = []
        self._lock = threading.Lock()

    @property
    def seconds(self) -> float:
        with self._lock:
            recent = self._band_seconds[-100:]  # the last rounds: the machine's load changes
            if not recent:
                return self._guess
            return sum(recent) / len(recent) * len(KILL_ORIGINATORS)

    def observe(self, events: list[dict[str, object]]) -> None:
        with self._lock:
            self._band_seconds += [
                float(str(e["lock_wait_ms"])) / 1000 for e in events if e.get("event") == "band created"
            ]


def _create_db(cluster: LocalCluster) -> str:
    name = f"kill_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(TEMPLATE_DB)
            )
        )
    return name


def _drop_db(cluster: LocalCluster, name: str) -> None:
    with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _partitiond_sessions(conn: Conn, where: str = "true") -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity"
        f" WHERE datname = current_database() AND application_name = 'partitiond' AND {where}"
    ).fetchone()
    assert row is not None
    return int(str(row[0]))


def _complete_band0(shape: TreeShape) -> int:
    meta, blob = TREES
    return sum(
        1
        for oid in KILL_ORIGINATORS
        if (0, 1_000_000) in shape.bands(meta, oid) and (0, 1_000_000) in shape.bands(blob, oid)
    )


def _assert_check(dsn: str, round_index: int, *args: str) -> int | None:
    """``partitiond check`` may warn (1) but must find nothing critical (2): no half-done work."""
    result = run_check_command(dsn, "--format", "json", *args)
    if result is None:
        return None
    code, output = result
    assert code in (0, 1), f"round {round_index}: partitiond check exited {code}:\n{output}"
    return code


def _start_and_kill(conn: Conn, dsn: str, args: list[str], delay: float, log_path: Path) -> bool:
    """Start run-once, wait until it is inside a band's transaction, kill -9 it ``delay`` s later.

    Returns whether it was still running when killed.
    """
    with log_path.open("w") as log:
        proc = spawn(dsn, "run-once", *args, log=log)
    try:

        def creating_bands() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"run-once exited {proc.returncode} before creating any band")
            return _partitiond_sessions(conn, BAND_STATEMENT) > 0

        wait_for(creating_bands, 60, "run-once to start creating bands", poll=0.005)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=delay)  # returns early only when the run finished before its kill
        alive = proc.poll() is None
        proc.kill()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    # The server notices the dead client at its next read and rolls the open transaction back.
    wait_for(lambda: _partitiond_sessions(conn) == 0, 30, "the killed run's backend to end")
    return alive


def _kill_round(cluster: LocalCluster, index: int, window: KillWindow, log_dir: Path) -> KillRound:
    rng = random.Random(KILL_SEED + index)
    dbname = _create_db(cluster)
    dsn = cluster.dsn(dbname)
    args = ["--metrics-address", "", *originator_args(KILL_ORIGINATORS)]
    checks: list[int | None] = []
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            delay = rng.uniform(0, window.seconds)
            alive = _start_and_kill(conn, dsn, args, delay, log_dir / f"kill-{index:02d}.log")

            shape = tree_shape(conn)
            assert leftovers(conn) == [], f"round {index}: half-done work after kill -9"
            assert shape.asymmetries() == [], f"round {index}: meta/blob differ after kill -9"
            assert shape.duplicates() == [], f"round {index}: duplicates after kill -9"
            at_kill = _complete_band0(shape)
            if index % 10 == 0:  # what is there must be whole: not checking for the bands not made yet
                checks.append(_assert_check(dsn, index))

            rerun_log = log_dir / f"rerun-{index:02d}.log"
            with rerun_log.open("w") as log:
                rerun = spawn(dsn, "run-once", *args, log=log)
                assert rerun.wait(120) == 0, rerun_log.read_text()
            events = log_events(rerun_log)
            [finished] = [e for e in events if e.get("event") == "run finished"]
            created = int(str(finished["created"]))
            window.observe(events)

            shape = tree_shape(conn)
            for oid in KILL_ORIGINATORS:
                for tree in TREES:
                    assert shape.l1[tree].get(oid) == 1, f"round {index}: {tree} L1 of {oid}"
                    assert shape.bands(tree, oid) == [(0, 1_000_000)], f"round {index}: {tree} bands of {oid}"
            assert leftovers(conn) == []
            assert created == len(KILL_ORIGINATORS) - at_kill, (created, at_kill)
            if index % 10 == 0:
                checks.append(_assert_check(dsn, index, *originator_args(KILL_ORIGINATORS)))
        exits = tuple(c for c in checks if c is not None)
        return KillRound(index, delay, alive, at_kill, created, exits)
    finally:
        _drop_db(cluster, dbname)


@pytest.mark.slow
def test_kill_9_mid_run_leaves_nothing_half_done(pg_cluster: LocalCluster, tmp_path: Path) -> None:
    window = KillWindow(guess=1.5)
    with ThreadPoolExecutor(max_workers=KILL_LANES) as pool:
        rounds = list(pool.map(lambda i: _kill_round(pg_cluster, i, window, tmp_path), range(KILL_ROUNDS)))
    mid_run = [r for r in rounds if r.alive_at_kill and r.bands_at_kill < len(KILL_ORIGINATORS)]
    check_exits = [code for r in rounds for code in r.check_exits]
    print(
        f"\nkill -9: {len(rounds)} rounds x {len(KILL_ORIGINATORS)} originators,"
        f" {len(mid_run)} killed mid-run;"
        f" complete bands at kill {sorted(r.bands_at_kill for r in rounds)};"
        f" delays {[round(r.delay, 2) for r in rounds]}; kill window {window.seconds:.2f}s;"
        f" partitiond check exits {check_exits or 'n/a (no check command)'}"
    )
    # The kills must really have hit runs at work, or the test proves nothing.
    assert len(mid_run) >= len(rounds) // 2, [(r.alive_at_kill, r.bands_at_kill) for r in rounds]


# --- PostgreSQL restart under the daemon ---------------------------------------------------------------


@pytest.fixture(scope="module")
def restart_cluster() -> Iterator[LocalCluster]:
    """A cluster only the restart tests stop and start; the shared session cluster is never touched."""
    with throwaway_cluster(prefix="partitiond-faults-") as cluster:
        yield cluster


@pytest.fixture
def own_cluster(restart_cluster: LocalCluster) -> Iterator[tuple[LocalCluster, str]]:
    """(the restartable cluster, DSN of a fresh database in it with the schema and functions)."""
    name = f"restart_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(restart_cluster.dsn(), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with psycopg.connect(restart_cluster.dsn(name), autocommit=True) as conn:
        sqlfiles.install_schema(conn)
        sqlfiles.install_functions(conn)
    yield restart_cluster, restart_cluster.dsn(name)


OUTAGE_SECONDS = 3.0


@pytest.mark.slow
def test_postgres_restart_under_the_daemon_is_counted_and_survived(
    own_cluster: tuple[LocalCluster, str], tmp_path: Path
) -> None:
    cluster, dsn = own_cluster
    originators = tuple(range(1, 31))
    port = free_port()
    log_path = tmp_path / "daemon.log"

    def runs(result: str) -> float:
        return metric(port, "partitiond_runs_total", result=result)

    with log_path.open("w") as log:
        proc = spawn(
            dsn,
            "run",
            *("--interval", "1s", "--jitter", "0", "--probe-interval", "0", "--connect-timeout", "2s"),
            *("--metrics-address", f"127.0.0.1:{port}", *originator_args(originators)),
            log=log,
        )
    try:
        wait_for(lambda: runs("success") >= 1, 60, "the first successful run")
        assert http_get(port, "/readyz")[0] == 200
        with psycopg.connect(dsn, autocommit=True) as conn:
            # Every originator's band 0 becomes 75% full at once (one statement): the next run must create
            # a band 1 for each of them, and the server goes down while it does.
            conn.execute(
                "WITH m AS (INSERT INTO gateway_envelopes_meta"
                " (originator_node_id, originator_sequence_id, topic, expiry)"
                " SELECT o, 750000, 'topic', 1 FROM unnest(%(oids)s::int[]) AS o)"
                " INSERT INTO gateway_envelopes_blob"
                " (originator_node_id, originator_sequence_id, originator_envelope)"
                " SELECT o, 750000, 'envelope' FROM unnest(%(oids)s::int[]) AS o",
                {"oids": list(originators)},
            )

            def band1s() -> int:
                meta = tree_shape(conn).l2[TREES[0]]
                return sum(1 for oid in originators if (1_000_000, 2_000_000) in meta.get(oid, []))

            wait_for(lambda: band1s() >= 3, 30, "the run creating band 1 to be under way", poll=0.01)
        failed_before = runs("failed")
        cluster.stop(mode="immediate")  # a crash, in the middle of the run
        outage_started = time.monotonic()
        liveness: list[int | None] = []

        def failure_counted() -> bool:
            liveness.append(http_get(port, "/healthz")[0])
            # The interrupted run and connect failures, over an outage longer than the liveness threshold
            # (2 x interval): liveness must not follow the database.
            return runs("failed") >= failed_before + 2 and time.monotonic() - outage_started >= OUTAGE_SECONDS

        wait_for(failure_counted, 30, "failed runs to be counted while the server is down")
        ready_status, ready_body = http_get(port, "/readyz")
        assert ready_status == 503, ready_body
        liveness.append(http_get(port, "/healthz")[0])
        outage = time.monotonic() - outage_started
        assert set(liveness) == {200}, liveness  # liveness never depends on the database
        assert metric(port, "partitiond_db_connect_failures_total") >= 1
        assert proc.poll() is None

        cluster.start()
        success_before = runs("success")
        wait_for(lambda: runs("success") > success_before, 60, "a successful run after the restart")
        wait_for(lambda: http_get(port, "/readyz")[0] == 200, 10, "/readyz to be 200 again")
        assert proc.poll() is None
        with psycopg.connect(dsn, autocommit=True) as conn:
            shape = tree_shape(conn)
            assert leftovers(conn) == []
            assert shape.asymmetries() == [] and shape.duplicates() == []
            for oid in originators:
                for tree in TREES:
                    assert shape.l1[tree][oid] == 1
                    assert shape.bands(tree, oid) == [(0, 1_000_000), (1_000_000, 2_000_000)], (tree, oid)
        failed_total = runs("failed")
        assert stop_daemon(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    events = log_events(log_path)
    failures = [e for e in events if e.get("event") == "run failed"]
    assert failures and all(e.get("level") == "error" for e in failures)
    assert any(
        "lost the connection" in str(e.get("reason")) or "database error" in str(e.get("reason"))
        for e in failures
    ), failures
    assert any("cannot connect" in str(e.get("reason")) for e in failures), failures
    print(
        f"\nrestart: outage {outage:.1f}s, {failed_total:g} failed runs counted,"
        f" {len(liveness)} /healthz polls all 200, {len(failures)} 'run failed' log lines"
    )


@pytest.mark.slow
def test_a_quick_restart_between_runs_keeps_the_only_daemon_leader(
    own_cluster: tuple[LocalCluster, str], tmp_path: Path
) -> None:
    """A restart that falls between two runs (no pass sees the outage): the next pass must act, not idle."""
    cluster, dsn = own_cluster
    port = free_port()

    def runs() -> dict[str, float]:
        return {r: metric(port, "partitiond_runs_total", result=r) for r in ("success", "failed", "follower")}

    with (tmp_path / "daemon.log").open("w") as log:
        proc = spawn(
            dsn,
            "run",
            *("--interval", "3s", "--jitter", "0", "--probe-interval", "0", "--originator", "1"),
            *("--metrics-address", f"127.0.0.1:{port}"),
            log=log,
        )
    try:
        wait_for(lambda: runs()["success"] >= 1, 60, "the first successful run")
        before = runs()
        cluster.restart()  # well inside the 3 s gap before the next run
        wait_for(lambda: sum(runs().values()) > sum(before.values()), 30, "the next run after the restart")
        after = runs()
        assert stop_daemon(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert {k: after[k] - before[k] for k in after} == {"success": 1, "failed": 0, "follower": 0}


# --- a long lock holder while the daemon must create a band -------------------------------------------


LOCK_TIMEOUT = 0.3
HOLD_BUDGET = Settings().hold_budget
HOLD_SECONDS = 3.0
LATENCY_MARGIN = 0.5


@pytest.mark.slow
@pytest.mark.parametrize("holder_kind", ["row exclusive on meta", "shared protocol lock"])
def test_a_long_lock_holder_bounds_insert_stalls_and_the_band_follows_its_commit(
    conn: Conn, db_dsn: str, tmp_path: Path, holder_kind: str
) -> None:
    seed_rows(conn, 900, [1])
    seed_rows(conn, 901, [1])
    port = free_port()
    inserter = Inserter(db_dsn, 901)
    inserter.start()
    assert inserter.started_writing.wait(10)
    proc: subprocess.Popen[str] | None = None
    try:
        with psycopg.connect(db_dsn) as holder, (tmp_path / "daemon.log").open("w") as log:
            hold_lock(holder, holder_kind)
            held_at = time.monotonic()
            proc = spawn(
                db_dsn,
                "run",
                *("--originator", "100", "--interval", "1s", "--jitter", "0", "--probe-interval", "0"),
                *(
                    "--lock-timeout",
                    f"{int(LOCK_TIMEOUT * 1000)}ms",
                    "--metrics-address",
                    f"127.0.0.1:{port}",
                ),
                log=log,
            )

            # An insert in flight: partitiond queues for at most the budget, then defers.  A writer outside
            # the protocol shows in pg_locks: partitiond defers without taking key 5.
            why = "key5_busy" if holder_kind == "shared protocol lock" else "lock_busy"

            def held_long_enough() -> bool:
                deferrals = metric(port, "partitiond_band_deferrals_total", reason=why)
                return deferrals >= 1 and time.monotonic() - held_at >= HOLD_SECONDS

            written_before = inserter.inserted
            wait_for(held_long_enough, 30, "the daemon to give up a band on the holder's lock")
            assert [tree_shape(conn).bands(tree, 100) for tree in TREES] == [[], []]
            written_during_hold = inserter.inserted - written_before
            holder.commit()
            committed_at = time.monotonic()
        wait_for(
            lambda: all(tree_shape(conn).bands(tree, 100) == [(0, 1_000_000)] for tree in TREES),
            10,
            "band 0 of originator 100 after the holder committed",
        )
        band_after = time.monotonic() - committed_at
        deferrals = metric(port, "partitiond_band_deferrals_total", reason=why)
        inserter.stop.set()
        inserter.join(10)
        assert inserter.error is None
        assert stop_daemon(proc) == 0
    finally:
        inserter.stop.set()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
    assert inserter.writer is not None
    latencies = inserter.writer.stats.latencies
    print(
        f"\nlock holder ({holder_kind}): held {committed_at - held_at:.1f}s,"
        f" {written_during_hold} inserts during the hold, {deferrals:g} attempts deferred ({why}),"
        f" max insert latency {max(latencies) * 1000:.0f} ms"
        f" (bound {(HOLD_BUDGET + LATENCY_MARGIN) * 1000:.0f} ms),"
        f" band created {band_after:.2f}s after the commit"
    )
    assert written_during_hold > 50  # inserts kept flowing while partitiond was trying
    assert max(latencies) < HOLD_BUDGET + LATENCY_MARGIN
    assert inserter.writer.stats.deadlocks == 0
    assert leftovers(conn) == []
