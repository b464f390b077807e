"""Applies a plan band by band inside the lock-safety envelope.

The rule this module keeps: **while partitiond waits for anything, it holds no lock that an xmtpd insert or
creator can need; while it holds (or queues for) the exclusive side of key 5, it never waits longer than the
hold budget for anything.**  While key 5 is held every insert of every originator waits, and while partitiond
is queued for it every *new* insert queues behind it (advisory locks are writer-preferring), so both count
as holding.  One band, in order:

1. ``partitiond_band_exists``: a band already in both trees (another creator was faster) is left alone
   without taking key 5.
2. ``partitiond_preflight``: if a session holds a lock the band's DDL would wait for (VACUUM or ANALYZE on a
   meta partition, an open transaction that wrote to ``payers``, the pruner's DROP), the band is deferred
   *before* key 5, so inserts are not stalled for the budget just to find out.  While the originator has
   runway, a reader of its blob L1 that sits idle in its transaction counts too (reason ``blob_read``):
   it may keep the L1 for minutes, and the fast blob step needs the L1 to itself.
3. ``partitiond_stage_table`` (meta, then blob), each an autocommit statement under ``lock_timeout``: the
   band's two tables are created unattached under private names and committed.  The one lock each takes on
   an xmtpd table (ACCESS SHARE on the L1, for LIKE) is its first, so it waits holding nothing, and it is
   gone before key 5 is asked for.  (Staging used to share the band's transaction and held the L1s while
   queueing for key 5, which closed a cycle with xmtpd's creator re-attaching an L1 under key 5.)
4. ``partitiond_warm``: this backend's catalog caches are loaded for the band (every meta partition's
   entries, both L1s' partition descriptors), so a cold backend (``run-once``, a new connection) does not
   read them while holding key 5.  Bounded by the hold budget, optional.
5. ``partitiond_tables_free``, again and again a few milliseconds apart for at most ``reader_wait``:
   waits, holding nothing, for an instant when no query reads the originator's blob L1.  The fast blob step
   (``PARTITION OF``) needs that L1 to itself; a serving node reads it all the time, each query for some
   milliseconds, and waiting for them under key 5 would stall every insert, while queueing for the L1
   would stall every new reader behind partitiond's request.
6. The band transaction: ``lock_timeout`` = hold budget, ``statement_timeout`` = hold timeout and
   ``idle_in_transaction_session_timeout``, all ``SET LOCAL``; key 5 in a gap between inserts
   (``pg_try_advisory_xact_lock``, a few jittered tries) or queued for at most the budget; then one
   statement, ``partitiond_attach_staged`` (ACCESS EXCLUSIVE on the blob L1 without waiting, meta ATTACH,
   blob ``PARTITION OF``), or ``ensure_gateway_parts_v4`` when staging did not apply (a new originator, a
   half-built band, a table in the way); ``COMMIT``.  A query that took the blob L1 between step 5 and key 5
   refuses the statement at once (PD001): the transaction rolls back and step 5 goes on.  When the wait ends
   with no success the band is deferred (``blob_read``) while the originator has runway, else the staged
   blob table is ATTACHed (the slow path: the blob foreign key validated under key 5).
7. ``partitiond_unstage``, after COMMIT: whatever is still staged is dropped — the staged blob table the
   fast path's ``PARTITION OF`` replaced (dropping it under key 5 cost the hold ~0.5 ms and an unlink at
   COMMIT), or what an unsuccessful attempt staged.

A lock not free within the budget (before or under key 5), the hold timeout, or a blob L1 still in use at
the end of the wait while the originator has runway make the attempt a *deferral*: the transaction rolls
back at once (releasing key 5), the reason is counted, and the band is retried after jittered exponential
backoff, bounded per band (``lock_attempts``) and per run (``retry_budget``); what is still deferred then
waits for the next pass.  Deadlocks and serialisation failures are retried the same way.  Any other error
fails that band only: the caller moves on to the next one.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
from psycopg import errors, sql

from partitiond import faults
from partitiond.config import Settings
from partitiond.planner import PlannedBand

Conn = psycopg.Connection[Any]
Status = Literal["created", "existed", "deferred", "failed"]
Path = Literal["partition_of", "attach", "ensure"]

BACKOFF_BASE = 0.02
BACKOFF_CAP = 2.0
TRY_LOCK_TRIES = 20
TRY_LOCK_GAP = (0.001, 0.005)  # seconds between non-queueing tries: inserts take a few ms each
PROBE_GAP = (0.002, 0.006)  # seconds between looks at the tables a DDL needs: a serving read takes some ms
# Why a band was deferred (a metrics label): where the refused wait was.
DEFERRAL_REASONS = ("lock_busy", "stage_busy", "key5_busy", "held_lock", "blob_read", "hold_timeout")
# Key 5's exclusive side: first without queueing (in a gap between inserts), then queued.
TRY_KEY = "SELECT pg_catalog.pg_try_advisory_xact_lock(%s::bigint)"
QUEUE_KEY = "SELECT pg_catalog.pg_advisory_xact_lock(%s::bigint)"
BLOB_BUSY = "PD001"  # partitiond_attach_staged: the blob L1 is being read and the slow path is not allowed

# The calls the executor makes: schema-qualified, every argument cast to its parameter's exact type, so no
# other function (of another schema, or an overload with a better-matching signature) can be chosen.
CALLS = {
    "band_exists": "SELECT {s}.partitiond_band_exists(%(oid)s::integer, %(start)s::bigint, %(end)s::bigint)",
    "preflight": "SELECT {s}.partitiond_preflight(%(oid)s::integer, %(key)s::bigint, %(readers)s::boolean)",
    "stage": "SELECT {s}.partitiond_stage_table("
    "%(oid)s::integer, %(start)s::bigint, %(end)s::bigint, %(blob)s::boolean)",
    "warm": "SELECT {s}.partitiond_warm(%(oid)s::integer, %(budget_ms)s::integer)",
    "tables_free": "SELECT {s}.partitiond_tables_free(%(oid)s::integer, %(drop)s::boolean)",
    "attach": "SELECT {s}.partitiond_attach_staged("
    "%(oid)s::integer, %(start)s::bigint, %(end)s::bigint, %(allow_slow)s::boolean)",
    "unstage": "SELECT {s}.partitiond_unstage(%(oid)s::integer, %(start)s::bigint)",
    "unstage_all": "SELECT {s}.partitiond_unstage()",
    # The full ensure, and whether it wrote anything: nothing else in the transaction writes, so the
    # transaction has an xid exactly when the call created (part of) the band.  The MATERIALIZED CTE runs
    # the ensure before the outer SELECT looks at the xid.
    "ensure": "WITH ensured AS MATERIALIZED ("
    "SELECT {s}.partitiond_ensure(%(oid)s::integer, %(start)s::bigint, %(width)s::bigint)) "
    "SELECT pg_catalog.pg_current_xact_id_if_assigned() IS NOT NULL FROM ensured",
}


def calls(schema: str) -> dict[str, sql.Composed]:
    """:data:`CALLS` for the functions installed in ``schema``."""
    return {name: sql.SQL(text).format(s=sql.Identifier(schema)) for name, text in CALLS.items()}


SESSION_SETTINGS = (
    "SELECT pg_catalog.set_config('lock_timeout', %s, false),"
    " pg_catalog.set_config('statement_timeout', %s, false)"
)
BAND_SETTINGS = """SELECT pg_catalog.set_config('lock_timeout', %(budget)s, true),
       pg_catalog.set_config('statement_timeout', %(hold)s, true),
       pg_catalog.set_config('idle_in_transaction_session_timeout', %(idle)s, true)"""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one planned band.

    ``failure`` is the deferral reason (status ``deferred``) or the error class (status ``failed``).
    ``holds`` lists, per attempt that got key 5, the seconds from key 5 granted to COMMIT or ROLLBACK done:
    the stall every insert saw.  ``steps`` splits the successful attempt's hold by statement (seconds).
    """

    planned: PlannedBand
    status: Status
    attempts: int
    lock_wait: float
    failure: str | None = None
    error: str | None = None
    deferrals: tuple[str, ...] = ()
    holds: tuple[float, ...] = ()
    steps: dict[str, float] = field(default_factory=dict)
    path: Path | None = None


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


class Deferred(Exception):
    """An attempt refused because something else holds what it needs; retry later."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _Done:
    existed: bool
    path: Path | None = None
    steps: dict[str, float] = field(default_factory=dict)


def classify(exc: BaseException) -> str:
    """Map an error that is not a deferral to a retry class (and a metrics label)."""
    if isinstance(exc, errors.LockNotAvailable):
        return "lock_timeout"
    if isinstance(exc, errors.DeadlockDetected):
        return "deadlock"
    if isinstance(exc, errors.SerializationFailure):
        return "serialization"
    return "other"


def deferral(exc: psycopg.Error, under_key_5: bool) -> Deferred | None:
    """The deferral an error under (or queued for) key 5 stands for, or None for a real error."""
    if exc.sqlstate == BLOB_BUSY:
        return Deferred("blob_read", error_line(exc))
    if isinstance(exc, errors.LockNotAvailable):
        return Deferred("held_lock" if under_key_5 else "key5_busy", error_line(exc))
    if isinstance(exc, errors.QueryCanceled) and "statement timeout" in (exc.diag.message_primary or ""):
        return Deferred("hold_timeout", error_line(exc))
    return None


def pg_interval(seconds: float) -> str:
    """A duration as PostgreSQL settings take it: whole milliseconds, at least 1."""
    return f"{max(1, round(seconds * 1000))}ms"


def band_params(planned: PlannedBand) -> dict[str, int]:
    """The values every per-band call takes."""
    return {"oid": planned.originator, "start": planned.band.start, "end": planned.band.end}


def may_go_slow(planned: PlannedBand, settings: Settings) -> bool:
    """The slow path (ATTACH validating the blob foreign key under key 5) only when time is short:
    the band holds the current position (inserts need it now) or the originator's runway is below
    ``slow_path_runway``.  Otherwise deferring until the readers are gone costs nothing."""
    if planned.kind == "repair":
        return True
    return planned.runway is not None and planned.runway < settings.slow_path_runway


def session_params(settings: Settings) -> list[str]:
    return [pg_interval(settings.lock_timeout), pg_interval(settings.statement_timeout)]


def _preflight_params(planned: PlannedBand, settings: Settings) -> dict[str, Any]:
    # Readers of the blob L1 matter only to the fast blob step; the slow one does not wait for them.
    readers = not may_go_slow(planned, settings)
    return {"oid": planned.originator, "key": settings.protocol_lock_key, "readers": readers}


def _warm_params(planned: PlannedBand, settings: Settings) -> dict[str, int]:
    return {"oid": planned.originator, "budget_ms": max(1, round(settings.hold_budget * 1000))}


def band_settings_params(settings: Settings) -> dict[str, str]:
    return {
        "budget": pg_interval(settings.hold_budget),
        "hold": pg_interval(settings.hold_timeout),
        "idle": pg_interval(settings.idle_in_transaction_timeout),
    }


@dataclass(frozen=True, slots=True)
class Step:
    """One statement of a band's sequence as :class:`Executor` sends it: ``note`` says when and why."""

    note: str
    query: sql.SQL | sql.Composed
    params: dict[str, Any] | list[Any] | None = None


def pass_steps(settings: Settings) -> list[Step]:
    """What a leader's full run sends before its first band (``--dry-run``): the session's timeouts
    (:class:`Executor`), then the clean-up of tables an interrupted run left staged (:func:`unstage_all`)."""
    return [
        Step(
            "lock and statement timeouts outside key 5", sql.SQL(SESSION_SETTINGS), session_params(settings)
        ),
        Step("drop tables an interrupted run left staged", calls(settings.schema)["unstage_all"]),
    ]


def hold_steps(settings: Settings) -> list[Step]:
    """How a transaction that must hold key 5 starts (``--dry-run``): BEGIN, the hold settings, then key 5
    as :func:`take_protocol_lock` takes it (nothing when ``protocol_lock`` is off)."""
    steps = [
        Step("the band's transaction", sql.SQL("BEGIN")),
        Step(
            "hold budget, hold timeout, idle-in-transaction timeout",
            sql.SQL(BAND_SETTINGS),
            band_settings_params(settings),
        ),
    ]
    if settings.protocol_lock:
        key = [settings.protocol_lock_key]
        steps += [
            Step(f"key 5 without queueing, up to {TRY_LOCK_TRIES} tries", sql.SQL(TRY_KEY), key),
            Step("else queued for key 5, for at most the hold budget", sql.SQL(QUEUE_KEY), key),
        ]
    return steps


def tables_free_by(
    conn: Conn,
    settings: Settings,
    originator: int,
    drop: bool,
    deadline: float,
    sleep: Callable[[float], object],
    rng: random.Random,
) -> bool:
    """Look every few milliseconds, holding nothing, until no other session holds a table the DDL needs to
    itself (creating a band of ``originator``: its blob L1; with ``drop``, dropping one: both L1s,
    ``gateway_envelopes_blob``, ``blockchain_messages`` and ``payers``): True at once when they are free,
    False once ``deadline`` (a ``time.perf_counter()`` value) has passed.  Band creation and ``partitiond
    prune`` both wait so for the queries reading those tables, before they take key 5."""
    probe = calls(settings.schema)["tables_free"]
    while True:
        row = conn.execute(probe, {"oid": originator, "drop": drop}).fetchone()
        if row and row[0]:
            return True
        if time.perf_counter() >= deadline:
            return False
        sleep(rng.uniform(*PROBE_GAP))


def backoff(attempt: int, rng: random.Random) -> float:
    """Full-jitter exponential backoff: spreads competing creators (and prunes) apart instead of in
    lock-step."""
    return rng.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt))


def take_protocol_lock(
    conn: Conn, settings: Settings, sleep: Callable[[float], object], rng: random.Random
) -> None:
    """Exclusive side of xmtpd's key (``protocol_lock_key``), inside the caller's transaction, after its
    hold settings: in a gap between inserts if one comes, else queued (for at most the hold budget, the
    transaction's lock_timeout: every new insert queues behind the request).  Nothing when
    ``protocol_lock`` is off.  Band creation and ``partitiond prune`` both take it this way."""
    if not settings.protocol_lock:
        return
    key = settings.protocol_lock_key
    for _ in range(TRY_LOCK_TRIES):
        row = conn.execute(TRY_KEY, [key]).fetchone()
        if row and row[0]:
            return
        sleep(rng.uniform(*TRY_LOCK_GAP))
    conn.execute(QUEUE_KEY, [key])


def band_steps(planned: PlannedBand, settings: Settings, plain: tuple[bool, bool]) -> list[Step]:
    """The statements one successful first attempt at ``planned`` sends, in order (``--dry-run``).

    ``plain`` says, per tree (meta, blob), whether ``partitiond_stage_table`` will find the plain case and
    stage; when either does not, the band takes the full ensure under key 5 instead of the attach.  The
    texts and values are the ones :meth:`Executor.ensure` uses.
    """
    c, band = calls(settings.schema), band_params(planned)
    meta, blob = plain
    staged = meta and blob
    steps = [
        Step("already in both trees? then nothing else runs", c["band_exists"], band),
        Step(
            "pre-flight: a session holding a lock the band needs defers it",
            c["preflight"],
            _preflight_params(planned, settings),
        ),
        Step(
            "stage the meta table (autocommit, before key 5)"
            if meta
            else "staging: declines (not the plain case)",
            c["stage"],
            {**band, "blob": False},
        ),
    ]
    if meta:
        note = "stage the blob table" if blob else "staging the blob table: declines (not the plain case)"
        steps.append(Step(note, c["stage"], {**band, "blob": True}))
    if staged:
        steps.append(Step("warm this backend's caches", c["warm"], _warm_params(planned, settings)))
        steps.append(
            Step(
                "until no query reads the blob L1 (every few ms, for at most "
                f"{pg_interval(settings.reader_wait)})",
                c["tables_free"],
                {"oid": planned.originator, "drop": False},
            )
        )
    steps += hold_steps(settings)
    if staged:
        attach = {**band, "allow_slow": False}
        steps.append(Step("under key 5: attach the staged tables", c["attach"], attach))
    else:
        ensure = {**band, "width": settings.band_width}
        steps.append(Step("under key 5: the full ensure (staging does not apply)", c["ensure"], ensure))
    steps.append(Step("releases key 5", sql.SQL("COMMIT")))
    steps.append(
        Step(
            "after key 5: drop whatever is still staged (the blob table PARTITION OF replaced)",
            c["unstage"],
            band,
        )
    )
    return steps


@dataclass
class Executor:
    """Creates bands on one autocommit connection; sleeping and randomness are injectable for tests.

    The connection's session ``lock_timeout`` and ``statement_timeout`` are set to the settings' values, so
    every statement outside a band transaction (the catalog reads too) is bounded by them.
    """

    conn: Conn
    settings: Settings
    sleep: Callable[[float], object] = time.sleep
    rng: random.Random = field(default_factory=random.Random)
    _staged: bool = field(default=False, init=False)  # tables of the current band may be left staged
    _granted: float | None = field(default=None, init=False)  # perf_counter() when key 5 was granted
    _calls: dict[str, sql.Composed] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        s = self.settings
        self._calls = calls(s.schema)
        self.conn.execute(SESSION_SETTINGS, session_params(s))

    def ensure(self, planned: PlannedBand, budget: RetryBudget) -> Outcome:
        attempts = 0
        waited = 0.0
        deferrals: list[str] = []
        holds: list[float] = []
        band = band_params(planned)
        try:
            while True:
                attempts += 1
                started = time.perf_counter()
                failure: str | None = None
                status: Status = "failed"
                try:
                    done = self._attempt(planned, band, holds)
                except Deferred as exc:
                    failure, error, status = exc.reason, str(exc), "deferred"
                    deferrals.append(exc.reason)
                except psycopg.Error as exc:
                    failure, error = classify(exc), error_line(exc)
                waited += time.perf_counter() - started
                if failure is None:
                    return Outcome(
                        planned,
                        "existed" if done.existed else "created",
                        attempts,
                        waited,
                        deferrals=tuple(deferrals),
                        holds=tuple(holds),
                        steps=done.steps,
                        path=done.path,
                    )
                final = attempts >= self.settings.lock_attempts or failure == "other"
                pause = None if final else budget.take(backoff(attempts, self.rng))
                if pause is None:
                    return Outcome(
                        planned, status, attempts, waited, failure, error, tuple(deferrals), tuple(holds)
                    )
                self.sleep(pause)
        finally:
            if self._staged:
                self._unstage(band)

    def _attempt(self, planned: PlannedBand, band: dict[str, int], holds: list[float]) -> _Done:
        """One try at one band; raises :class:`Deferred` when something else holds what it needs."""
        if self._scalar(self._calls["band_exists"], band):
            return _Done(existed=True)
        busy = self._scalar(self._calls["preflight"], _preflight_params(planned, self.settings))
        if busy:
            reason = "blob_read" if busy.startswith("AccessShareLock ") else "lock_busy"
            raise Deferred(reason, f"{busy}: not taking key 5 now")
        staged = self._stage(band)
        if staged:
            self._scalar(self._calls["warm"], _warm_params(planned, self.settings))
            done, hold = self._attach_when_blob_free(planned, band, holds)
        else:
            done, hold = self._timed(band, None, holds)
        if staged and done.existed and not self._scalar(self._calls["band_exists"], band):
            # A creator took a name of the band meanwhile but did not finish it: the full ensure does.
            done, hold = self._timed(band, None, holds)
        if done.steps:
            done.steps["commit"] = max(0.0, hold - sum(done.steps.values()))
        return done

    def _attach_when_blob_free(
        self, planned: PlannedBand, band: dict[str, int], holds: list[float]
    ) -> tuple[_Done, float]:
        """The staged band's transaction, started the moment the originator's blob L1 is seen free, for
        at most ``reader_wait``; a query that takes the L1 before key 5 is granted refuses the attempt at
        once (PD001), and the wait goes on.  Then the slow path when time is short, else a deferral."""
        s = self.settings
        deadline = time.perf_counter() + s.reader_wait
        while tables_free_by(self.conn, s, planned.originator, False, deadline, self.sleep, self.rng):
            try:
                return self._timed(band, False, holds)
            except Deferred as exc:
                if exc.reason != "blob_read":
                    raise
            if time.perf_counter() >= deadline:  # refused each time the L1 was seen free
                break
        if may_go_slow(planned, s):
            return self._timed(band, True, holds)
        wait = pg_interval(s.reader_wait)
        raise Deferred("blob_read", f"originator {planned.originator}'s blob partition was in use for {wait}")

    def _timed(
        self, band: dict[str, int], allow_slow: bool | None, holds: list[float]
    ) -> tuple[_Done, float]:
        """The band's transaction (``allow_slow`` None: the full ensure, else the attach of the staged
        tables); appends its key-5 hold to ``holds`` (also when it fails under key 5) and turns a refusal
        into :class:`Deferred`."""
        try:
            done = self._band_transaction(band, allow_slow)
        except psycopg.Error as exc:
            if self._granted is not None:
                holds.append(time.perf_counter() - self._granted)
            deferred = deferral(exc, under_key_5=self._granted is not None)
            if deferred is None:
                raise
            raise deferred from None
        assert self._granted is not None
        holds.append(time.perf_counter() - self._granted)
        return done, holds[-1]

    def _band_transaction(self, band: dict[str, int], allow_slow: bool | None) -> _Done:
        """BEGIN, the hold settings, key 5, the held statement, COMMIT (ROLLBACK when the band existed).
        ``_granted`` records when key 5 was granted (None until then), for the caller's hold figures."""
        s = self.settings
        self._granted = None
        with self.conn.transaction() as tx:
            self.conn.execute(BAND_SETTINGS, band_settings_params(s))
            take_protocol_lock(self.conn, s, self.sleep, self.rng)
            self._granted = time.perf_counter()
            faults.inject("holding-key5")
            done = self._held(band, allow_slow)
            if done.existed:
                raise psycopg.Rollback(tx)
        return done

    def _stage(self, band: dict[str, int]) -> bool:
        """The band's two tables, staged and committed; False when the band is not the plain case."""
        self._staged = True
        try:
            return bool(self._scalar(self._calls["stage"], {**band, "blob": False})) and bool(
                self._scalar(self._calls["stage"], {**band, "blob": True})
            )
        except errors.LockNotAvailable as exc:
            raise Deferred("stage_busy", error_line(exc)) from None

    def _held(self, band: dict[str, int], allow_slow: bool | None) -> _Done:
        """The one statement run while key 5 is held."""
        if allow_slow is None:
            started = time.perf_counter()
            if not self._scalar(self._calls["ensure"], {**band, "width": self.settings.band_width}):
                return _Done(existed=True)
            return _Done(existed=False, path="ensure", steps={"ensure": time.perf_counter() - started})
        result = self._scalar(self._calls["attach"], {**band, "allow_slow": allow_slow})
        if result["status"] == "existed":  # taken meanwhile: whole, or half-built (see _attempt)
            return _Done(existed=True)
        return _Done(existed=False, path=result["path"], steps={k: v / 1000 for k, v in result["ms"].items()})

    def _unstage(self, band: dict[str, int]) -> None:
        """Drop what an unsuccessful attempt staged; never fails the band."""
        self._staged = False
        if self.conn.broken:
            return
        # On failure the next full run's clean-up (partitiond_unstage for every band) and `check` cover it.
        with contextlib.suppress(psycopg.Error):
            self._scalar(self._calls["unstage"], band)

    def _scalar(self, query: sql.Composed, params: dict[str, Any]) -> Any:
        row = self.conn.execute(query, params).fetchone()
        return row[0] if row else None


def unstage_all(conn: Conn, schema: str) -> int:
    """Drop every staged table a crashed or killed run left behind; the leader calls it at each full run."""
    row = conn.execute(calls(schema)["unstage_all"]).fetchone()
    return int(row[0]) if row else 0


def error_line(exc: psycopg.Error) -> str:
    primary = exc.diag.message_primary or str(exc).splitlines()[0]
    return f"{exc.sqlstate or '?????'}: {primary}"
