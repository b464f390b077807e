"""The demo's synthetic xmtpd traffic: who writes, how fast, and the paced writer threads that do it.

Each writer follows xmtpd's insert protocol through :class:`partitiond.xmtpd_writer.LazyWriter`, so an
insert that finds no partition takes xmtpd's cold path, exactly the event the demo counts.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

import psycopg

from partitiond.dsn import redact
from partitiond.xmtpd_writer import LazyWriter, WriterStats

PACING_TICK = 0.05  # seconds of traffic per batch: fine enough to look steady, coarse enough to be cheap
MAX_LAG = 1.0  # a writer further behind its schedule than this drops the backlog instead of bursting
PAYLOAD_VARIANTS = 32


@dataclass(frozen=True, slots=True)
class WriterProfile:
    """One synthetic originator: its id, how fast it writes, and when (fraction of the run) it appears."""

    role: str
    originator: int
    rate: float  # envelopes (= sequence ids) per second
    appears_at: float = 0.0

    def label(self) -> str:
        when = f", from {self.appears_at:.0%} of the run" if self.appears_at else ""
        return f"{self.originator} ({self.role}, {self.rate:g}/s{when})"


# Measured on a 2-core machine: one LazyWriter tops out near 1,900 envelopes/s and three together near
# 1,850/s, so the peak here (1,300/s) leaves room for PostgreSQL, partitiond and the live table.
PROFILES = (
    WriterProfile("fast", 100, 800.0),
    WriterProfile("slow", 200, 100.0),
    WriterProfile("late", 300, 400.0, appears_at=1 / 3),
)


@dataclass
class PacedWriter:
    """One originator's traffic: a thread with its own connection and a :class:`LazyWriter`.

    The writer follows a paced schedule (the next batch is due at ``start + ids / rate``); sleeping here is
    load generation, not synchronisation.  A writer that falls more than ``MAX_LAG`` behind (a slow machine)
    drops the backlog instead of bursting, so the measured rate is honest.
    """

    profile: WriterProfile
    dsn: str
    band_width: int
    first_seq: int
    delay: float
    stop: threading.Event
    seed: int
    stats: WriterStats = field(default_factory=WriterStats)
    error: str | None = None
    started_at: float | None = None
    stopped_at: float | None = None
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"writer-{self.profile.originator}", daemon=True
        )
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def next_seq(self) -> int:
        return self.first_seq + self.stats.inserted

    @property
    def active_seconds(self) -> float:
        if self.started_at is None:
            return 0.0
        return (self.stopped_at or time.monotonic()) - self.started_at

    def _run(self) -> None:
        if self.stop.wait(self.delay):
            return
        try:
            with psycopg.connect(self.dsn, autocommit=True, application_name="xmtpd-demo-writer") as conn:
                writer = LazyWriter(conn, band_width=self.band_width, stats=self.stats)
                self.started_at = time.monotonic()
                self._pace(writer)
        except Exception as exc:  # noqa: BLE001 -- reported in the summary, which then fails the demo
            self.error = redact(f"{type(exc).__name__}: {exc}").strip()
        finally:
            if self.started_at is not None:
                self.stopped_at = time.monotonic()

    def _pace(self, writer: LazyWriter) -> None:
        rng = random.Random(self.seed * 1_000_003 + self.profile.originator)  # noqa: S311 -- not crypto
        payloads = [rng.randbytes(rng.randint(64, 512)) for _ in range(PAYLOAD_VARIANTS)]
        batch = max(1, round(self.profile.rate * PACING_TICK))
        due = time.monotonic()
        while not self.stop.is_set():
            for _ in range(batch):
                writer.insert(self.profile.originator, self.next_seq, rng.choice(payloads))
            due += batch / self.profile.rate
            ahead = due - time.monotonic()
            if ahead > 0:
                self.stop.wait(ahead)
            elif ahead < -MAX_LAG:
                due = time.monotonic()
