"""Applies a plan band by band inside the lock-safety envelope.

Everything done while the exclusive side of xmtpd's partition-creation lock (key 5) is held stalls every
insert, so the executor keeps that section as short as the DDL allows:

* A band that is already in both trees (created by another creator since the plan was made) is noticed
  with a lock-free catalog read and left alone: taking key 5 for it would stall inserts for nothing.
* Any other band gets its own short transaction:

  1. ``SET LOCAL lock_timeout`` / ``statement_timeout`` — never wait unboundedly in a lock queue, because
     a waiting DDL request blocks every later insert behind it;
  2. ``partitiond_stage_band``, *before* key 5: the catalog checks, and the band's two L2 tables created
     as plain tables under private names.  Nothing an insert needs is locked by this;
  3. the exclusive side of key 5.  partitiond first tries it without queueing
     (``pg_try_advisory_xact_lock``, a few jittered tries milliseconds apart), so it takes the lock in a
     gap between inserts when there is one.  Under continuous traffic there is no gap — some insert always
     holds the shared side — so it then queues like xmtpd's own cold path, but never longer than
     ``lock_timeout``: that bounds the stall any insert arriving meanwhile can see;
  4. ``partitiond_attach_staged``: rename and ATTACH, the only DDL that needs the lock, then ``COMMIT``.
     The blob child is instead created with ``PARTITION OF`` when its L1 can be locked at once (NOWAIT):
     ATTACH would validate the foreign key into meta with a query planned over every meta partition.

  When the band is not the plain case (a missing L1 for a new originator, a half-built band, a table in
  the way), step 2 creates nothing and step 4 is the full ``ensure_gateway_parts_v4`` instead, in the same
  statement that tells whether it created anything.  When xmtpd's cold path creates the band while
  partitiond waits for the lock, step 4 declines and the transaction rolls back, staged tables included.

Lock timeouts, deadlocks and serialisation failures are retried with jittered exponential backoff,
bounded per band (``lock_attempts``) and per run (``retry_budget`` seconds of backoff).  Any other error
fails that band only: the caller moves on to the next one.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
from psycopg import errors

from partitiond.config import Settings
from partitiond.planner import PlannedBand

Conn = psycopg.Connection[Any]
Status = Literal["created", "existed", "failed"]

BACKOFF_BASE = 0.02
BACKOFF_CAP = 2.0
TRY_LOCK_TRIES = 20
TRY_LOCK_GAP = (0.001, 0.005)  # seconds between non-queueing tries: inserts take a few ms each

BAND_EXISTS = "SELECT partitiond_band_exists(%(oid)s, %(start)s, %(end)s)"
# The L1 children to attach to (OIDs travel better than names), or NULL when staging does not apply.
STAGE = "SELECT partitiond_stage_band(%(oid)s, %(start)s, %(end)s)::oid[]"
ATTACH = "SELECT partitiond_attach_staged(%(oid)s, %(start)s, %(end)s, %(l1s)s::oid[]::regclass[])"
# The full ensure, and whether it wrote anything: it only runs when staging created nothing, and nothing
# else in the transaction writes, so the transaction has an xid exactly when the call created (part of)
# the band.  The MATERIALIZED CTE runs the ensure before the outer SELECT looks at the xid.
ENSURE = """WITH ensured AS MATERIALIZED (SELECT ensure_gateway_parts_v4(%(oid)s, %(start)s, %(width)s))
SELECT pg_current_xact_id_if_assigned() IS NOT NULL FROM ensured
"""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one planned band."""

    planned: PlannedBand
    status: Status
    attempts: int
    lock_wait: float
    failure: str | None = None  # lock_timeout|deadlock|serialization|other
    error: str | None = None


@dataclass
class RetryBudget:
    """Seconds of backoff a whole run may still spend; shared by every band of the run."""

    seconds: float

    def take(self, wanted: float) -> float | None:
        if self.seconds <= 0:
            return None
        granted = min(wanted, self.seconds)
        self.seconds -= granted
        return granted


def classify(exc: BaseException) -> str:
    """Map an error to a retry class (and a metrics label)."""
    if isinstance(exc, errors.LockNotAvailable):
        return "lock_timeout"
    if isinstance(exc, errors.DeadlockDetected):
        return "deadlock"
    if isinstance(exc, errors.SerializationFailure):
        return "serialization"
    return "other"


def _pg_interval(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def ensure_sql(planned: PlannedBand, band_width: int) -> str:
    """The call as a human would type it (for --dry-run and logs)."""
    return f"SELECT ensure_gateway_parts_v4({planned.originator}, {planned.band.start}, {band_width});"


@dataclass
class Executor:
    """Runs ensure calls on one autocommit connection; sleeping and randomness are injectable for tests."""

    conn: Conn
    settings: Settings
    sleep: Callable[[float], object] = time.sleep
    rng: random.Random = field(default_factory=random.Random)

    def ensure(self, planned: PlannedBand, budget: RetryBudget) -> Outcome:
        attempts = 0
        waited = 0.0
        while True:
            attempts += 1
            final = attempts >= self.settings.lock_attempts
            started = time.perf_counter()
            try:
                existed = self._attempt(planned)
            except psycopg.Error as exc:
                failure, error = classify(exc), _one_line(exc)
            else:
                waited += time.perf_counter() - started
                return Outcome(planned, "existed" if existed else "created", attempts, waited)
            waited += time.perf_counter() - started
            pause = None if final or failure == "other" else budget.take(self._backoff(attempts))
            if pause is None:
                return Outcome(planned, "failed", attempts, waited, failure, error)
            self.sleep(pause)

    def _backoff(self, attempt: int) -> float:
        """Full-jitter exponential backoff: spreads competing creators apart instead of in lock-step."""
        return self.rng.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt))

    def _attempt(self, planned: PlannedBand) -> bool:
        """One band; returns whether it already existed in both trees."""
        band = {"oid": planned.originator, "start": planned.band.start, "end": planned.band.end}
        if self._scalar(BAND_EXISTS, band):
            return True
        created = self._create(band, stage=True)
        if created is None:  # xmtpd's cold path took a name of the band while we waited for key 5
            if self._scalar(BAND_EXISTS, band):
                return True
            created = bool(self._create(band, stage=False))
        return not created

    def _create(self, band: dict[str, int], stage: bool) -> bool | None:
        """The band's transaction; returns whether it created anything, or None if it rolled back unchanged.

        While key 5 is held, one statement runs and then COMMIT: the staged path's rename-and-attach, or
        the full ensure when staging does not apply.
        """
        s = self.settings
        with self.conn.transaction() as tx:
            self.conn.execute(
                "SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true)",
                [_pg_interval(s.lock_timeout), _pg_interval(s.statement_timeout)],
            )
            l1s = self._scalar(STAGE, band) if stage else None
            if s.protocol_lock:
                self._protocol_lock()
            if l1s is None:
                return bool(self._scalar(ENSURE, {**band, "width": s.band_width}))
            if self._scalar(ATTACH, {**band, "l1s": l1s}):
                return True
            raise psycopg.Rollback(tx)
        return None

    def _scalar(self, query: str, params: dict[str, Any]) -> Any:
        row = self.conn.execute(query, params).fetchone()
        return row[0] if row else None

    def _protocol_lock(self) -> None:
        """Exclusive side of xmtpd's key: in a gap between inserts if one comes, else queued (bounded)."""
        key = self.settings.protocol_lock_key
        for _ in range(TRY_LOCK_TRIES):
            row = self.conn.execute("SELECT pg_try_advisory_xact_lock(%s)", [key]).fetchone()
            if row and row[0]:
                return
            self.sleep(self.rng.uniform(*TRY_LOCK_GAP))
        self.conn.execute("SELECT pg_advisory_xact_lock(%s)", [key])  # waits at most lock_timeout


def _one_line(exc: psycopg.Error) -> str:
    primary = exc.diag.message_primary or str(exc).splitlines()[0]
    return f"{exc.sqlstate or '?????'}: {primary}"
