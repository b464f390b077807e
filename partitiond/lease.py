"""Leader lease: among partitiond replicas on one database, only the holder runs DDL.

Two sidecars, or a service plus a CronJob, may point at the same database.  Each tries a session-level
``pg_try_advisory_lock(leader_lock_key)`` on a connection of its own that it keeps open; PostgreSQL releases
the lock when that session ends, so if the leader dies (or its connection does) a follower takes over on
its next tick.  Losing the lease for a moment is harmless — every ensure is idempotent and serialised by
xmtpd's key 5 and the ensure function's own lock — the lease only keeps replicas from doing the same DDL
twice and from queueing for the same locks.

:func:`holders` tells who holds the key, for ``status`` and ``check``.  Any role that can connect can take
the key, so ``check`` warns when the holder's ``application_name`` does not look like partitiond's (a
squatter keeps every partitiond a follower, so nothing creates bands).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
import structlog

from partitiond import catalog
from partitiond.dsn import APPLICATION_NAME
from partitiond.pipeline import PassFailure

log = structlog.get_logger("partitiond.lease")

Conn = psycopg.Connection[Any]


@dataclass(frozen=True, slots=True)
class LeaseHolder:
    """A session holding the leader lock; ``application_name`` and ``role`` are None when not visible."""

    pid: int | None
    application_name: str | None
    role: str | None

    @property
    def looks_like_partitiond(self) -> bool:
        """partitiond connects with ``application_name=partitiond`` unless the DSN names another one."""
        return (self.application_name or "").lower().startswith(APPLICATION_NAME)

    def describe(self) -> str:
        """'pid 4242 (application_name "partitiond", role "partitiond")'; unknown when not visible."""
        who = f"pid {self.pid}" if self.pid is not None else "a prepared transaction"
        return f"{who} (application_name {_shown(self.application_name)}, role {_shown(self.role)})"

    def as_dict(self) -> dict[str, object]:
        return {"pid": self.pid, "application_name": self.application_name, "role": self.role}


def _shown(value: str | None) -> str:
    """Quoted, with control characters escaped: any role that can connect chooses these names."""
    if value is None:
        return "unknown"
    return '"' + "".join(c if c.isprintable() else ascii(c)[1:-1] for c in value) + '"'


def holders(conn: Conn, key: int) -> tuple[LeaseHolder, ...]:
    """Sessions of this database holding the lease key (``queries/lease_holders.sql``); () when free."""
    rows = conn.execute(catalog.query("lease_holders"), {"key": key}).fetchall()
    return tuple(LeaseHolder(pid, name, role) for pid, name, role in rows)


def describe_holders(found: tuple[LeaseHolder, ...]) -> str:
    """One line for people: "none", or each holder."""
    return "; ".join(h.describe() for h in found) if found else "none"


def lease_document(key: int, found: tuple[LeaseHolder, ...]) -> dict[str, object]:
    """The JSON form ``status`` and ``check`` print: the key and its holders (an empty list: none)."""
    return {"key": key, "holders": [h.as_dict() for h in found]}


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
