"""Everything at once, for a while: two daemons, eight xmtpd-style writers, a long-running reader and a lazy
band creator on one database, with bands so narrow that band crossings happen all the time.

``PARTITIOND_TORTURE_SECONDS`` sets the length (30 s by default, which is what ``make test`` runs;
``make torture`` runs 300 s).  At the end: no writer saw a deadlock or an error, every band exists exactly
once in both trees, every acknowledged row is in meta and in blob, and both daemons exit 0 on SIGTERM.
Two daemons may both create bands (with or without a leader lease): the test holds either way.
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from partitiond.cluster import free_port
from partitiond.xmtpd_writer import LazyWriter

from .pgtools import TREES, Conn, leftovers, wait_for
from .test_faults import (
    http_get,
    log_events,
    metric,
    originator_args,
    run_check_command,
    spawn,
    stop_daemon,
    tree_shape,
)

TORTURE_SECONDS = float(os.environ.get("PARTITIOND_TORTURE_SECONDS", "30"))
BAND_WIDTH = 2_000
ORIGINATORS = (11, 12, 13, 14)
WRITERS = 8
DAEMONS = 2
READER_HOLD_SECONDS = 2.0
LAZY_CREATOR_PAUSE = 0.2
TORTURE_SEED = 20_251_107
PROTOCOL_LOCK_KEY = 5
# Probes must come more often than full runs (config refuses --probe-interval >= --interval).
PROBE_INTERVAL = "500ms"


class Sequencer:
    """One shared, increasing sequence counter per originator (two writers share each originator)."""

    def __init__(self, originators: tuple[int, ...]) -> None:
        self._next = dict.fromkeys(originators, 0)
        self._lock = threading.Lock()

    def take(self, oid: int) -> int:
        with self._lock:
            seq = self._next[oid]
            self._next[oid] = seq + 1
            return seq

    def high(self, oid: int) -> int:
        with self._lock:
            return self._next[oid]


@dataclass
class Worker:
    """Shared bookkeeping of the load threads: the first error stops the whole run early."""

    stop: threading.Event
    failed: threading.Event
    errors: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, who: str, exc: BaseException) -> None:
        with self._lock:
            self.errors.append(f"{who}: {type(exc).__name__}: {exc}")
        self.failed.set()


class Writer(threading.Thread):
    """xmtpd's insert path (LazyWriter: shared side of key 5, cold path on a missing band)."""

    def __init__(self, name: str, dsn: str, oid: int, seqs: Sequencer, shared: Worker) -> None:
        super().__init__(name=name, daemon=True)
        self.dsn, self.oid, self.seqs, self.shared = dsn, oid, seqs, shared
        self.acked: list[int] = []
        self.writer: LazyWriter | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True, application_name="torture-writer") as conn:
                self.writer = LazyWriter(conn, band_width=BAND_WIDTH, protocol_lock_key=PROTOCOL_LOCK_KEY)
                while not self.shared.stop.is_set():
                    seq = self.seqs.take(self.oid)
                    self.writer.insert(self.oid, seq)
                    self.acked.append(seq)  # acknowledged: the transaction committed
        except BaseException as exc:
            self.shared.fail(self.name, exc)


class Reader(threading.Thread):
    """Long read transactions over the view: AccessShare on every partition, held for seconds."""

    def __init__(self, dsn: str, shared: Worker) -> None:
        super().__init__(name="reader", daemon=True)
        self.dsn, self.shared = dsn, shared
        self.transactions = 0
        self.longest = 0.0

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True, application_name="torture-reader") as conn:
                while not self.shared.stop.is_set():
                    started = time.monotonic()
                    with conn.transaction():
                        conn.execute(
                            "SELECT count(*), count(DISTINCT originator_node_id), max(originator_sequence_id)"
                            ", sum(length(originator_envelope)) FROM gateway_envelopes_view"
                        )
                        conn.execute("SELECT pg_sleep(%s)", [READER_HOLD_SECONDS])
                        conn.execute(
                            "SELECT originator_node_id, count(*) FROM gateway_envelopes_meta GROUP BY 1"
                        )
                    self.transactions += 1
                    self.longest = max(self.longest, time.monotonic() - started)
        except BaseException as exc:
            self.shared.fail(self.name, exc)


class LazyCreator(threading.Thread):
    """xmtpd's cold-path creator, run ahead of time: each call in its own transaction holding the exclusive
    side of the protocol lock (key 5), with no lock timeout.

    It creates an originator's next band once the current one is filled past a random point between 60% and
    95%, so it sometimes beats the daemons (whose threshold is 70% plus a rate forecast), sometimes races
    them and sometimes comes after them; now and then it also re-ensures the current band, a no-op like
    xmtpd's own re-check.
    """

    def __init__(self, dsn: str, seqs: Sequencer, shared: Worker) -> None:
        super().__init__(name="lazy-creator", daemon=True)
        self.dsn, self.seqs, self.shared = dsn, seqs, shared
        self.rng = random.Random(TORTURE_SEED)
        self.calls = 0
        self.created = 0

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True, application_name="torture-creator") as conn:
                while not self.shared.stop.is_set():
                    for oid in ORIGINATORS:
                        high = self.seqs.high(oid)
                        current = high // BAND_WIDTH * BAND_WIDTH
                        if (high - current) / BAND_WIDTH >= self.rng.uniform(0.6, 0.95):
                            self._ensure(conn, oid, current + BAND_WIDTH)
                        elif self.rng.random() < 0.1:
                            self._ensure(conn, oid, current)
                    self.shared.stop.wait(LAZY_CREATOR_PAUSE)  # pacing, not synchronisation
        except BaseException as exc:
            self.shared.fail(self.name, exc)

    def _ensure(self, conn: Conn, oid: int, start: int) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [PROTOCOL_LOCK_KEY])
            row = conn.execute(
                "SELECT partitiond_band_exists(%s, %s, %s)", [oid, start, start + BAND_WIDTH]
            ).fetchone()
            conn.execute("SELECT ensure_gateway_parts_v4(%s, %s, %s)", [oid, start, BAND_WIDTH])
        self.calls += 1
        self.created += 0 if row and row[0] else 1


@dataclass
class DaemonHandle:
    proc: subprocess.Popen[str]
    port: int
    log: Path
    figures: dict[str, float] = field(default_factory=dict)

    def serving(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log_tail()}")
        return http_get(self.port, "/healthz")[0] == 200

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(encoding="utf-8").splitlines()[-lines:])

    def scrape_figures(self) -> None:
        for result in ("success", "partial", "failed", "follower", "skipped"):
            self.figures[f"runs_{result}"] = metric(self.port, "partitiond_runs_total", result=result)
        for result in ("success", "partial", "failed"):
            self.figures[f"probes_{result}"] = metric(self.port, "partitiond_probes_total", result=result)
        self.figures["bands_created"] = metric(
            self.port, "partitiond_partitions_created_total", table="meta", level="l2"
        )
        for reason in ("lock_timeout", "deadlock", "lock_busy", "other"):
            self.figures[f"ensure_failed_{reason}"] = metric(
                self.port, "partitiond_ensure_failures_total", reason=reason
            )


@pytest.fixture
def daemons(db_dsn: str, tmp_path: Path) -> Iterator[list[DaemonHandle]]:
    handles: list[DaemonHandle] = []
    with ExitStack() as stack:
        for i in range(DAEMONS):
            port = free_port()
            log_path = tmp_path / f"daemon-{i}.log"
            log = stack.enter_context(log_path.open("w"))
            proc = spawn(
                db_dsn,
                "run",
                *("--interval", "1s", "--jitter", "0", "--probe-interval", PROBE_INTERVAL),
                *("--band-width", str(BAND_WIDTH), "--metrics-address", f"127.0.0.1:{port}"),
                *originator_args(ORIGINATORS),
                log=log,
            )
            handles.append(DaemonHandle(proc, port, log_path))
        try:
            for handle in handles:
                wait_for(handle.serving, 30, f"daemon on port {handle.port} to serve /healthz")
            yield handles
        finally:
            for handle in handles:
                if handle.proc.poll() is None:
                    handle.proc.kill()
                    handle.proc.wait()


def _acked_missing(conn: Conn, acked: list[tuple[int, int]]) -> dict[str, int]:
    """How many acknowledged rows each tree lacks (checked in the database, not by counting)."""
    conn.execute("CREATE TEMP TABLE acked (oid int NOT NULL, seq bigint NOT NULL)")
    with conn.cursor() as cur, cur.copy("COPY acked (oid, seq) FROM STDIN") as copy:
        for key in acked:
            copy.write_row(key)
    missing = {}
    for tree in TREES:
        row = conn.execute(
            f"SELECT count(*) FROM acked a WHERE NOT EXISTS (SELECT 1 FROM {tree} t"
            " WHERE t.originator_node_id = a.oid AND t.originator_sequence_id = a.seq)"
        ).fetchone()
        assert row is not None
        missing[tree] = int(str(row[0]))
    return missing


def _row_count(conn: Conn, tree: str) -> int:
    row = conn.execute(f"SELECT count(*) FROM {tree}").fetchone()
    assert row is not None
    return int(str(row[0]))


@pytest.mark.slow
def test_torture_two_daemons_writers_reader_and_lazy_creator(
    conn: Conn, db_dsn: str, daemons: list[DaemonHandle], record_property: Callable[[str, object], None]
) -> None:
    shared = Worker(stop=threading.Event(), failed=threading.Event())
    seqs = Sequencer(ORIGINATORS)
    writers = [
        Writer(f"writer-{i}", db_dsn, ORIGINATORS[i % len(ORIGINATORS)], seqs, shared) for i in range(WRITERS)
    ]
    reader = Reader(db_dsn, shared)
    creator = LazyCreator(db_dsn, seqs, shared)
    threads: list[threading.Thread] = [*writers, reader, creator]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        # The run lasts TORTURE_SECONDS unless a load thread fails first.
        shared.failed.wait(TORTURE_SECONDS)
        for d in daemons:
            assert d.proc.poll() is None, f"a daemon died during the run:\n{d.log_tail()}"
        for d in daemons:
            d.scrape_figures()
    finally:
        shared.stop.set()
        for thread in threads:
            thread.join(30)
    elapsed = time.monotonic() - started
    assert not any(t.is_alive() for t in threads), "a load thread did not stop"
    assert shared.errors == []

    exit_codes = [stop_daemon(d.proc) for d in daemons]

    stats = [w.writer.stats for w in writers if w.writer is not None]
    assert len(stats) == WRITERS
    deadlocks = sum(s.deadlocks for s in stats)
    cold_path = sum(s.cold_path for s in stats)
    acked = [(w.oid, seq) for w in writers for seq in w.acked]
    latencies = sorted(lat for s in stats for lat in s.latencies)

    shape = tree_shape(conn)
    bands = {oid: shape.bands(TREES[0], oid) for oid in ORIGINATORS}
    missing = _acked_missing(conn, acked)
    rows = {tree: _row_count(conn, tree) for tree in TREES}
    check = run_check_command(db_dsn, "--band-width", str(BAND_WIDTH), *originator_args(ORIGINATORS))
    failure_lines = [
        e
        for d in daemons
        for e in log_events(d.log)
        if e.get("event") in ("run failed", "probe failed", "band failed")
    ]

    assert acked and latencies, "no writer got a single row in"
    figures: dict[str, object] = {
        "seconds": round(elapsed, 1),
        "rows_acknowledged": len(acked),
        "rows_per_second": round(len(acked) / elapsed),
        "insert_latency_p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
        "insert_latency_p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 1),
        "insert_latency_max_ms": round(latencies[-1] * 1000, 1),
        "bands": sum(len(b) for b in bands.values()),
        "bands_per_originator": {oid: len(b) for oid, b in bands.items()},
        "cold_path": cold_path,
        "writer_deadlocks": deadlocks,
        "lazy_creator_calls": creator.calls,
        "lazy_creator_created": creator.created,
        "reader_transactions": reader.transactions,
        "reader_longest_s": round(reader.longest, 1),
        "daemon_failure_log_lines": len(failure_lines),
        "check_exit": check[0] if check else None,
    }
    for i, d in enumerate(daemons):
        figures[f"daemon_{i}"] = {k: int(v) for k, v in d.figures.items() if v}
    for name, value in figures.items():
        record_property(f"torture_{name}", value)
    print("\ntorture figures:\n" + "\n".join(f"  {name}: {value}" for name, value in figures.items()))

    assert deadlocks == 0
    assert exit_codes == [0] * DAEMONS
    assert missing == dict.fromkeys(TREES, 0), missing
    assert rows == dict.fromkeys(TREES, len(acked)), (rows, len(acked))
    assert leftovers(conn) == []
    assert shape.asymmetries() == [] and shape.duplicates() == []
    for oid in ORIGINATORS:
        for tree in TREES:
            assert shape.l1[tree].get(oid) == 1, (tree, oid)
        assert all(start % BAND_WIDTH == 0 and end == start + BAND_WIDTH for start, end in bands[oid]), bands[
            oid
        ]
        # Every band that holds an acknowledged row exists (and, by the checks above, exactly once per tree).
        needed = {seq // BAND_WIDTH * BAND_WIDTH for o, seq in acked if o == oid}
        assert needed <= {start for start, _ in bands[oid]}, (oid, sorted(needed))
    assert len(acked) > 0 and reader.transactions > 0 and creator.calls > 0
    assert sum(d.figures["runs_success"] for d in daemons) > 0
    assert sum(d.figures["bands_created"] for d in daemons) > 0  # partitiond really took part in the races
    if check is not None:
        assert check[0] in (0, 1), check[1]
