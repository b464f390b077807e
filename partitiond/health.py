"""Liveness and readiness state, kept apart from any I/O.

Why a separate, pure object: the HTTP probes must answer from memory (a probe that queries PostgreSQL turns a
slow database into a restart loop), and the rules for "alive" and "ready" are easiest to trust when they can
be driven by a fake clock in tests.  The scheduler thread, the job and the main loop write into this object;
the HTTP server only reads from it.

Liveness answers "should this process be restarted?": the scheduler is running, no job has been running
longer than ``stuck_after`` and something has beaten within ``stuck_after``.  Readiness answers "is it doing
its job?": the last run succeeded, or the node is a deliberate no-op (a standby in recovery or a follower
that is not the leader), which is healthy, not broken.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class HealthState:
    """Thread-safe liveness/readiness bookkeeping with an injectable monotonic clock.

    ``stuck_after`` is meant to be twice the run interval: one missed run can be bad luck (a slow lock
    queue), two in a row means the loop or the job is wedged.  The scheduler is assumed alive until told
    otherwise, and construction counts as a beat, so a freshly started daemon is live but not ready.
    Only one job is tracked at a time (the scheduler runs the job with ``max_instances=1``).
    """

    def __init__(self, stuck_after: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not stuck_after > 0:
            raise ValueError(f"stuck_after must be positive, got {stuck_after!r}")
        self._stuck_after = stuck_after
        self._clock = clock
        self._lock = threading.Lock()
        self._last_beat = clock()
        self._job_started_at: float | None = None
        self._last_ok: bool | None = None
        self._standby: str | None = None
        self._scheduler_alive = True

    @property
    def stuck_after(self) -> float:
        """Seconds after which a silent loop or a running job counts as stuck."""
        return self._stuck_after

    def beat(self) -> None:
        """Record that the main loop or the job made progress."""
        with self._lock:
            self._last_beat = self._clock()

    def job_started(self) -> None:
        """Start the stuck-job timer; a job that never finishes must eventually fail liveness."""
        with self._lock:
            now = self._clock()
            self._job_started_at = now
            self._last_beat = now

    def job_finished(self, ok: bool) -> None:
        """Stop the stuck-job timer and remember the outcome that readiness reports."""
        with self._lock:
            self._job_started_at = None
            self._last_beat = self._clock()
            self._last_ok = ok

    def set_standby(self, reason: str | None) -> None:
        """Mark a healthy no-op ("standby", "follower"), or clear it with None once the node acts again."""
        with self._lock:
            self._standby = reason

    def set_scheduler_alive(self, alive: bool) -> None:
        """Report whether the scheduler is running; a dead scheduler never runs the job again."""
        with self._lock:
            self._scheduler_alive = alive

    def live(self) -> tuple[bool, str]:
        """Return (ok, reason) for the liveness probe."""
        with self._lock:
            return self._live_locked()

    def ready(self) -> tuple[bool, str]:
        """Return (ok, reason) for the readiness probe; a process that is not live is not ready either."""
        with self._lock:
            ok, reason = self._live_locked()
            if not ok:
                return False, reason
            if self._standby is not None:
                return True, f"ok ({self._standby})"
            if self._last_ok is None:
                return False, "no run has completed yet"
            if not self._last_ok:
                return False, "last run failed"
            return True, "ok"

    def _live_locked(self) -> tuple[bool, str]:
        """Liveness rules; the caller holds the lock so the three checks see one consistent state."""
        if not self._scheduler_alive:
            return False, "scheduler is not running"
        now = self._clock()
        limit = self._stuck_after
        if self._job_started_at is not None and now - self._job_started_at > limit:
            return False, f"job running for {now - self._job_started_at:.0f}s (stuck after {limit:.0f}s)"
        if now - self._last_beat > limit:
            return False, f"no heartbeat for {now - self._last_beat:.0f}s (stuck after {limit:.0f}s)"
        return True, "ok"
