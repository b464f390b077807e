"""A synthetic xmtpd writer that follows xmtpd's lazy insert protocol exactly.

Tests, benchmarks and the demo need traffic that behaves like xmtpd's insert path:
meta and blob rows go in with ONE statement, inside a transaction that holds the shared side of the
partition-creation advisory lock (key 5); when PostgreSQL answers 23514 "no partition of relation … found
for row", the transaction is rolled back, the band is created in a separate transaction holding the
exclusive side, and the insert is retried.  That fallback is the "cold path" partitiond exists to avoid, so
the writer counts it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import psycopg
from psycopg import errors

INSERT_ENVELOPE = """
WITH m AS (
    INSERT INTO gateway_envelopes_meta
        (originator_node_id, originator_sequence_id, topic, payer_id, expiry)
    VALUES (%(oid)s, %(seq)s, %(topic)s, NULL, %(expiry)s)
    ON CONFLICT DO NOTHING
    RETURNING 1
), b AS (
    INSERT INTO gateway_envelopes_blob (originator_node_id, originator_sequence_id, originator_envelope)
    VALUES (%(oid)s, %(seq)s, %(envelope)s)
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM m) + (SELECT count(*) FROM b)
"""

INSERT_BATCH = """
WITH m AS (
    INSERT INTO gateway_envelopes_meta
        (originator_node_id, originator_sequence_id, topic, payer_id, expiry)
    SELECT %(oid)s, s, 'topic', NULL, %(expiry)s FROM unnest(%(seqs)s::bigint[]) AS s
    ON CONFLICT DO NOTHING
    RETURNING 1
), b AS (
    INSERT INTO gateway_envelopes_blob (originator_node_id, originator_sequence_id, originator_envelope)
    SELECT %(oid)s, s, %(envelope)s FROM unnest(%(seqs)s::bigint[]) AS s
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM m) + (SELECT count(*) FROM b)
"""

MAX_ATTEMPTS = 10


def is_missing_partition(exc: BaseException) -> bool:
    """23514 is shared with ordinary CHECK violations; only the message tells a missing partition apart."""
    return isinstance(exc, errors.CheckViolation) and "no partition of relation" in str(exc)


@dataclass
class WriterStats:
    """What one writer saw; summed across writers by the caller."""

    inserted: int = 0
    cold_path: int = 0
    deadlocks: int = 0
    latencies: list[float] = field(default_factory=list)


@dataclass
class LazyWriter:
    """Inserts envelopes the way xmtpd does, on one autocommit connection it owns."""

    conn: psycopg.Connection[tuple[object, ...]]
    band_width: int = 1_000_000
    protocol_lock_key: int = 5
    stats: WriterStats = field(default_factory=WriterStats)

    def insert(self, oid: int, seq: int, payload: bytes = b"x" * 64) -> None:
        """Insert one envelope (xmtpd's InsertGatewayEnvelopeV3), creating its band on the cold path."""
        params = {
            "oid": oid,
            "seq": seq,
            "topic": b"topic-%d" % (seq % 16),
            "expiry": 2**40,
            "envelope": payload,
        }
        self._write(INSERT_ENVELOPE, params, oid, [seq])

    def insert_batch(self, oid: int, seqs: list[int], payload: bytes = b"x" * 64) -> None:
        """Insert many envelopes in one statement (xmtpd's batch insert); on a missing band, every band of
        the batch is ensured, one transaction each, as EnsureGatewayPartitionsForBatch does."""
        params = {"oid": oid, "seqs": seqs, "expiry": 2**40, "envelope": payload}
        self._write(INSERT_BATCH, params, oid, seqs)

    def _write(self, statement: str, params: dict[str, object], oid: int, seqs: list[int]) -> None:
        """The protocol: shared side of the lock, one statement; cold path and retry on a missing band.

        The latency recorded covers the whole call, cold path included: that is what a client of xmtpd
        would feel.
        """
        started = time.perf_counter()
        needs_band = False
        for _ in range(MAX_ATTEMPTS):
            try:
                if needs_band:
                    for start in sorted({s // self.band_width * self.band_width for s in seqs}):
                        self._create_band(oid, start)
                    needs_band = False
                with self.conn.transaction():
                    self.conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", [self.protocol_lock_key])
                    self.conn.execute(statement, params)
            except errors.DeadlockDetected:
                self.stats.deadlocks += 1
                continue
            except errors.CheckViolation as exc:
                if not is_missing_partition(exc):
                    raise
                self.stats.cold_path += 1
                needs_band = True
                continue
            self.stats.inserted += len(seqs)
            self.stats.latencies.append(time.perf_counter() - started)
            return
        raise RuntimeError(f"envelopes of originator {oid} not inserted after {MAX_ATTEMPTS} attempts")

    def _create_band(self, oid: int, seq: int) -> None:
        """xmtpd's EnsureGatewayPartitions: own transaction, exclusive side of the protocol lock."""
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)", [self.protocol_lock_key])
            self.conn.execute("SELECT ensure_gateway_parts_v4(%s, %s, %s)", [oid, seq, self.band_width])
