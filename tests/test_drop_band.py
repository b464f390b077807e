"""Dropping an empty band without losing the envelope foreign keys (real PostgreSQL).

xmtpd's pruner drops an empty band with ``DROP TABLE IF EXISTS <meta leaf>, <blob leaf> CASCADE``; the
CASCADE removes the blob -> meta and blockchain_messages -> meta foreign keys of the whole tables.
``partitiond_drop_band`` drops the blob leaf as it is, then detaches and drops the meta leaf, never CASCADE.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors

from .conftest import Roles
from .pgtools import TREES, Conn, ensure_band, l2_bounds, seed_rows
from .test_cli import cli

BAND0 = "FOR VALUES FROM ('0') TO ('1000000')"
BAND1 = "FOR VALUES FROM ('1000000') TO ('2000000')"
BAND2 = "FOR VALUES FROM ('2000000') TO ('3000000')"


def envelope_keys(conn: Conn) -> list[str]:
    """The top-level foreign keys into gateway_envelopes_meta, by referencing table."""
    rows = conn.execute(
        "SELECT conrelid::regclass::text FROM pg_constraint"
        " WHERE contype = 'f' AND conparentid = 0 AND confrelid = 'gateway_envelopes_meta'::regclass"
        " ORDER BY 1"
    ).fetchall()
    return [str(r[0]) for r in rows]


def three_bands(conn: Conn) -> None:
    for start in (0, 1_000_000, 2_000_000):
        ensure_band(conn, 100, start)


def test_the_pruners_own_statement_loses_both_foreign_keys(conn: Conn) -> None:
    """The defect, documented: one band of one originator, and the keys of the whole tables are gone."""
    three_bands(conn)
    assert envelope_keys(conn) == ["blockchain_messages", "gateway_envelopes_blob"]
    conn.execute(
        "DROP TABLE IF EXISTS gateway_envelopes_meta_o100_s0_1000000, gateway_envelopes_blob_o100_s0_1000000"
        " CASCADE"
    )
    assert envelope_keys(conn) == []


def test_the_safe_drop_keeps_both_foreign_keys(conn: Conn) -> None:
    three_bands(conn)
    dropped = conn.execute("SELECT partitiond_drop_band(100, 0)").fetchone()
    assert dropped == (["gateway_envelopes_blob_o100_s0_1000000", "gateway_envelopes_meta_o100_s0_1000000"],)
    for tree in TREES:
        assert l2_bounds(conn, tree, 100) == [BAND1, BAND2]
    assert envelope_keys(conn) == ["blockchain_messages", "gateway_envelopes_blob"]
    seed_rows(conn, 100, [1_500_000])  # the keys still work: a blob needs its meta row
    with pytest.raises(errors.ForeignKeyViolation):
        conn.execute(
            "INSERT INTO gateway_envelopes_blob"
            " (originator_node_id, originator_sequence_id, originator_envelope) VALUES (100, 1500001, 'x')"
        )


@pytest.mark.parametrize(
    ("start", "error", "says"),
    [
        (2_000_000, errors.ObjectNotInPrerequisiteState, "is the highest band of originator 100"),
        (1_000_000, errors.ObjectNotInPrerequisiteState, "still holds rows"),
        (500_000, errors.InvalidParameterValue, "has no band starting at 500000"),
        (-1_000_000, errors.InvalidParameterValue, "no such band"),
    ],
    ids=["highest band", "holds rows", "not a band", "negative"],
)
def test_a_band_that_may_not_go_is_refused_and_nothing_changes(
    conn: Conn, start: int, error: type[psycopg.Error], says: str
) -> None:
    three_bands(conn)
    seed_rows(conn, 100, [1_000_001])
    with pytest.raises(error, match=says):
        conn.execute("SELECT partitiond_drop_band(100, %s)", [start])
    for tree in TREES:
        assert l2_bounds(conn, tree, 100) == [BAND0, BAND1, BAND2]
    assert envelope_keys(conn) == ["blockchain_messages", "gateway_envelopes_blob"]


def test_a_band_in_one_tree_only_is_refused(conn: Conn) -> None:
    """Both leaves go or neither: a blob leaf without its meta twin is not a band to drop."""
    three_bands(conn)
    conn.execute(
        "ALTER TABLE gateway_envelopes_meta_o100 DETACH PARTITION gateway_envelopes_meta_o100_s0_1000000"
    )
    with pytest.raises(errors.InvalidParameterValue, match="in gateway_envelopes_meta"):
        conn.execute("SELECT partitiond_drop_band(100, 0)")
    assert l2_bounds(conn, "gateway_envelopes_blob", 100) == [BAND0, BAND1, BAND2]


def test_a_role_with_only_execute_can_drop_an_empty_band_and_nothing_else(roles: Roles) -> None:
    """SECURITY DEFINER-ready: the runtime role of the least-privilege set-up drops an empty band through
    the function, and still cannot drop a table itself."""
    installed = cli("install-sql", "--dsn", roles.owner_dsn, "--security-definer", "--grant-to", roles.daemon)
    assert installed.returncode == 0, installed.stderr
    with psycopg.connect(roles.owner_dsn, autocommit=True) as owner:
        three_bands(owner)
    with psycopg.connect(roles.daemon_dsn, autocommit=True) as daemon:
        with pytest.raises(errors.InsufficientPrivilege):
            daemon.execute("DROP TABLE gateway_envelopes_blob_o100_s0_1000000")
        daemon.execute("SELECT partitiond_drop_band(100, 0)")
    with psycopg.connect(roles.owner_dsn, autocommit=True) as owner:
        for tree in TREES:
            assert l2_bounds(owner, tree, 100) == [BAND1, BAND2]
        assert envelope_keys(owner) == ["blockchain_messages", "gateway_envelopes_blob"]
