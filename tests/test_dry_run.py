"""``run-once --dry-run`` shows the statements a pass really sends, with their values, and sends none of them.

The proof is a comparison with the real thing: the same plan is applied by the executor on a connection that
records every statement it executes, rendered the same way, and the two sequences must agree.
"""

from __future__ import annotations

import psycopg
from psycopg import sql
from psycopg.abc import Params
from psycopg.rows import TupleRow

from partitiond import pipeline
from partitiond.config import Settings

from .pgtools import Conn, l2_bounds, partition_count, seed_rows
from .test_cli import cli

ENV: dict[str, str] = {}


class Recording(psycopg.Connection[TupleRow]):
    """A connection that keeps the text of every statement it executes, values rendered in, once
    ``sent`` is set to a list."""

    sent: list[str] | None = None

    def execute(  # type: ignore[override]  # the t-string overload is never used here
        self,
        query: str | bytes | sql.SQL | sql.Composed,
        params: Params | None = None,
        *,
        prepare: bool | None = None,
        binary: bool = False,
    ) -> psycopg.Cursor[TupleRow]:
        if self.sent is not None:
            self.sent.append(psycopg.ClientCursor(self).mogrify(query, params))
        return super().execute(query, params, prepare=prepare, binary=binary)


def statements(rendered: tuple[str, ...]) -> list[str]:
    """The SQL of dry-run entries ("-- note" line, then the statement and its semicolon)."""
    return [entry.split("\n", 1)[1].removesuffix(";") for entry in rendered]


def sent_by_a_first_attempt(rendered: list[str]) -> list[str]:
    """What a first attempt that gets key 5 at once sends through ``execute``: the transaction's BEGIN and
    COMMIT go through psycopg's transaction block instead, and the queued request for key 5 is only made
    when every non-queueing try failed."""
    return [s for s in rendered if s not in ("BEGIN", "COMMIT") and "pg_advisory_xact_lock(" not in s]


def test_dry_run_sends_nothing_and_matches_what_the_pass_sends(conn: Conn, db_dsn: str) -> None:
    """Originator 100 has band 0 and needs band 1 (staged: the plain case); originator 7 has nothing yet
    (no L1: the full ensure).  A server deadlock_timeout of 200 ms makes the pass clamp its hold timeout,
    and the dry run must show the clamped values, not the configured ones."""
    seed_rows(conn, 100, [712_034])
    dbname = conn.info.dbname
    conn.execute(sql.SQL("ALTER DATABASE {} SET deadlock_timeout = '200ms'").format(sql.Identifier(dbname)))
    settings = Settings(dsn=db_dsn, originators=(7,), metrics_address="")
    before = partition_count(conn)

    with pipeline.open_connection(settings, ENV) as dry_conn:
        dry = pipeline.dry_run(dry_conn, settings)
    assert partition_count(conn) == before
    assert [(p.originator, p.band.start) for p in dry.plan.creates] == [(7, 0), (100, 1_000_000)]
    assert all("'160ms'" in "".join(band) for band in dry.bands), "the hold timeout clamped to 80 % of 200 ms"

    with Recording.connect(db_dsn, autocommit=True) as real:
        snapshot, the_plan = pipeline.plan_pass(real, settings, None, None)
        assert the_plan.creates == dry.plan.creates
        held = pipeline.within_deadlock_timeout(settings, snapshot.state.deadlock_timeout_ms)
        real.sent = []
        outcomes = pipeline.apply(real, the_plan, held, clean_up=True)
    assert [(o.status, o.path) for o in outcomes] == [("created", "ensure"), ("created", "partition_of")]

    expected = statements(dry.first) + [
        s for band in dry.bands for s in sent_by_a_first_attempt(statements(band))
    ]
    assert real.sent == expected
    assert l2_bounds(conn, "gateway_envelopes_blob", 7) == ["FOR VALUES FROM ('0') TO ('1000000')"]


def test_the_command_prints_the_staged_sequence_and_the_full_ensure(conn: Conn, db_dsn: str) -> None:
    seed_rows(conn, 100, [712_034])
    before = partition_count(conn)
    result = cli("run-once", "--dry-run", "--dsn", db_dsn, "--originator", "7")
    assert result.returncode == 0, result.stderr
    assert partition_count(conn) == before
    out = result.stdout
    assert "seq 712,034 is 71.2% into band 0 (threshold 70%) → band 1" in out
    assert "ensure_gateway_parts_v4" not in out, "the pass never calls it; dry-run must not pretend it does"

    first, bands = out.split("band(s) to create, most urgent first:")
    assert in_order(first, ["set_config('lock_timeout', '500ms', false)", '"public".partitiond_unstage()'])
    ensured, staged = bands.split("  originator 100 band")
    assert "  originator 7 band [0, 1,000,000) (repair)" in ensured
    assert in_order(
        ensured,
        [
            '"public".partitiond_band_exists(7::integer, 0::bigint, 1000000::bigint)',
            '"public".partitiond_stage_table(7::integer, 0::bigint, 1000000::bigint, false::boolean)',
            "BEGIN",
            "pg_try_advisory_xact_lock(5::bigint)",
            '"public".partitiond_ensure(7::integer, 0::bigint, 1000000::bigint)',
            "COMMIT",
            '"public".partitiond_unstage(7::integer, 0::bigint)',
        ],
    )
    assert "partitiond_attach_staged" not in ensured and "partitiond_warm" not in ensured
    assert in_order(
        staged,
        [
            '"public".partitiond_band_exists(100::integer, 1000000::bigint, 2000000::bigint)',
            '"public".partitiond_preflight(100::integer, 5::bigint, true::boolean)',
            '"public".partitiond_stage_table(100::integer, 1000000::bigint, 2000000::bigint, false::boolean)',
            '"public".partitiond_stage_table(100::integer, 1000000::bigint, 2000000::bigint, true::boolean)',
            '"public".partitiond_warm(100::integer, 50::integer)',
            '"public".partitiond_tables_free(100::integer, false::boolean)',
            "BEGIN",
            "set_config('lock_timeout', '50ms', true)",
            "set_config('statement_timeout', '500ms', true)",
            "set_config('idle_in_transaction_session_timeout', '2000ms', true)",
            "pg_try_advisory_xact_lock(5::bigint)",
            "pg_catalog.pg_advisory_xact_lock(5::bigint)",
            "partitiond_attach_staged(100::integer, 1000000::bigint, 2000000::bigint, false::boolean)",
            "COMMIT",
        ],
    )
    assert "partitiond_ensure(" not in staged


def in_order(text: str, fragments: list[str]) -> bool:
    """Every fragment appears in ``text``'s SQL lines (comments skipped), each on a line after the
    previous one's."""
    lines = [line.strip() for line in text.splitlines() if not line.strip().startswith("--")]
    at = 0
    for fragment in fragments:
        hits = [i for i in range(at, len(lines)) if fragment in lines[i]]
        assert hits, f"{fragment!r} not found after line {at} of:\n" + "\n".join(lines)
        at = hits[0] + 1
    return True
