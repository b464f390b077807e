"""Leader lease: among partitiond replicas on one database, only the holder runs DDL.

Two sidecars, or a service plus a CronJob, may point at the same database.  Each tries a session-level
``pg_try_advisory_lock(leader_lock_key)`` on a connection of its own that it keeps open; PostgreSQL releases
the lock when that session ends, so if the leader dies (or its connection does) a follower takes over on
its next tick.  Losing the lease for a moment is harmless — every ensure is idempotent and serialised by
xmtpd's key 5 and the ensure function's own lock — the lease only keeps replicas from doing the same DDL
twice and from queueing for the same locks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
import structlog

from partitiond.pipeline import PassFailure

log = structlog.get_logger("partitiond.lease")

Conn = psycopg.Connection[Any]


@dataclass
class LeaderLease:
    """Holds (or tries to hold) the leader lock on a dedicated connection."""

    connect: Callable[[], Conn]
    key: int
    _conn: Conn | None = field(default=None, init=False)
    _held: bool = field(default=False, init=False)

    @property
    def held(self) -> bool:
        return self._held

    def refresh(self) -> bool:
        """Keep the lease if we have it and the session is alive; otherwise try to take it.  Never raises.

        A session that died while idle (server restart, failover) only shows when used: then the lease
        is re-taken on a fresh connection at once, not one pass later — a sole daemon must not spend a
        whole interval as a follower of nobody.
        """
        for _ in range(2):
            try:
                return self._hold()
            except (psycopg.Error, PassFailure) as exc:
                self._lost(f"lease connection failed: {str(exc).strip().splitlines()[0]}")
        return False

    def _hold(self) -> bool:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._drop()
            self._conn = self.connect()
        if self._held:
            self._conn.execute("SELECT 1")  # the session (and with it the lock) is still there
            return True
        row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", [self.key]).fetchone()
        if row and row[0]:
            self._held = True
            log.info("became leader", lease_key=self.key)
        return self._held

    def _lost(self, reason: str) -> None:
        if self._held:
            log.warning("lost leadership", reason=reason)
        self._drop()

    def _drop(self) -> None:
        self._held = False
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = None

    def release(self) -> None:
        """Give the lease up on shutdown so a follower takes over at once, not after a timeout."""
        if self._held and self._conn is not None and not self._conn.closed:
            with contextlib.suppress(psycopg.Error):
                self._conn.execute("SELECT pg_advisory_unlock(%s)", [self.key])
        self._drop()
