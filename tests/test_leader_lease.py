"""``status`` and ``check`` show who holds the leader lease, and ``check`` warns about a squatter: any role
that can connect can take the key, and while it holds it every partitiond stays a follower."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from partitiond import pipeline
from partitiond.cluster import LocalCluster
from partitiond.config import PARTITIOND_LEADER_LOCK_KEY, Settings
from partitiond.lease import LeaderLease, LeaseHolder, holders

from .pgtools import Conn, seed_rows
from .test_cli import cli

KEY = PARTITIOND_LEADER_LOCK_KEY


def hold(dsn: str, application_name: str, key: int = KEY) -> psycopg.Connection[tuple[object, ...]]:
    """A second session taking the lease key, the way a squatter (or partitiond) would."""
    conn = psycopg.connect(dsn, application_name=application_name, autocommit=True)
    conn.execute("SELECT pg_advisory_lock(%s)", [key])
    return conn


def session(conn: psycopg.Connection[tuple[object, ...]]) -> tuple[int, str]:
    row = conn.execute("SELECT pg_backend_pid(), current_user::text").fetchone()
    assert row is not None
    return int(str(row[0])), str(row[1])


def status_json(dsn: str, *args: str) -> dict[str, object]:
    result = cli("status", "--format", "json", "--dsn", dsn, *args)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert isinstance(doc, dict)
    return doc


def check_json(dsn: str) -> tuple[int, dict[str, object]]:
    result = cli("check", "--format", "json", "--dsn", dsn)
    doc = json.loads(result.stdout)
    [finding] = [f for f in doc["findings"] if f["check"] == "leader-lease"]
    return result.returncode, {**finding, "leader_lease": doc["leader_lease"]}


def test_nobody_holds_the_lease(conn: Conn, db_dsn: str) -> None:
    seed_rows(conn, 100, [10])
    assert status_json(db_dsn)["leader_lease"] == {"key": KEY, "holders": []}
    table = cli("status", "--dsn", db_dsn).stdout.splitlines()
    assert table[-1] == "leader lease: none"
    code, finding = check_json(db_dsn)
    assert code == 0
    assert (finding["severity"], finding["subject"]) == ("info", f"key {KEY}")
    assert str(finding["message"]).startswith("held by none")


def test_a_squatter_is_shown_and_check_warns(conn: Conn, db_dsn: str) -> None:
    seed_rows(conn, 100, [10])
    squatter = hold(db_dsn, "squatter")
    try:
        pid, role = session(squatter)
        expected = {"pid": pid, "application_name": "squatter", "role": role}
        assert status_json(db_dsn)["leader_lease"] == {"key": KEY, "holders": [expected]}
        table = cli("status", "--dsn", db_dsn).stdout.splitlines()
        assert table[-1] == f'leader lease: pid {pid} (application_name "squatter", role "{role}")'
        code, finding = check_json(db_dsn)
        assert code == 1
        assert finding["severity"] == "warning"
        message = str(finding["message"])
        assert message.startswith(f'held by pid {pid} (application_name "squatter", role "{role}"), whose')
        assert f"pg_terminate_backend({pid})" in message
        assert finding["leader_lease"] == {"key": KEY, "holders": [expected]}
        run = cli("run-once", "--dsn", db_dsn, "--log-format", "json")
        assert run.returncode == 0  # a follower: it reads and reports, and creates nothing
        assert json.loads(run.stderr.splitlines()[-1])["result"] == "follower"
    finally:
        squatter.close()
    assert status_json(db_dsn)["leader_lease"] == {"key": KEY, "holders": []}


def test_partitiond_holding_the_lease_is_ok(conn: Conn, db_dsn: str) -> None:
    """The real lease object, on a connection made the way partitiond makes them."""
    seed_rows(conn, 100, [10])
    settings = Settings(dsn=db_dsn, metrics_address="")
    lease = LeaderLease(lambda: pipeline.open_connection(settings, {}), KEY)
    assert lease.refresh()
    try:
        code, finding = check_json(db_dsn)
        assert code == 0
        assert finding["severity"] == "ok"
        assert str(finding["message"]).startswith("held by pid ")
        assert '(application_name "partitiond", ' in str(finding["message"])
        [holder] = holders(conn, KEY)
        assert holder.looks_like_partitiond and holder.application_name == "partitiond"
    finally:
        lease.release()


def test_a_custom_partitiond_application_name_is_recognised(conn: Conn, db_dsn: str) -> None:
    seed_rows(conn, 100, [10])
    named = hold(db_dsn, "partitiond-eu1")
    try:
        code, finding = check_json(db_dsn)
        assert (code, finding["severity"]) == (0, "ok")
    finally:
        named.close()


def test_the_lease_is_per_database_and_per_key(pg_cluster: LocalCluster, conn: Conn, db_dsn: str) -> None:
    elsewhere = hold(pg_cluster.dsn(), "squatter")  # same key, another database
    other_key = hold(db_dsn, "squatter", KEY + 1)
    try:
        assert holders(conn, KEY) == ()
        assert status_json(db_dsn)["leader_lease"] == {"key": KEY, "holders": []}
        pid, role = session(other_key)
        shown = status_json(db_dsn, "--leader-lock-key", str(KEY + 1))["leader_lease"]
        assert shown == {
            "key": KEY + 1,
            "holders": [{"pid": pid, "application_name": "squatter", "role": role}],
        }
    finally:
        elsewhere.close()
        other_key.close()


@pytest.mark.parametrize("key", [-1, -(2**63), 2**63 - 1, 2**32, 0])
def test_any_int8_key_is_found(conn: Conn, db_dsn: str, key: int) -> None:
    holder = hold(db_dsn, "squatter", key)
    try:
        pid, _role = session(holder)
        assert [h.pid for h in holders(conn, key)] == [pid]
        assert holders(conn, key ^ 1) == ()
    finally:
        holder.close()


@pytest.fixture
def reader(pg_cluster: LocalCluster, conn: Conn, db_dsn: str) -> Iterator[str]:
    """DSN of an unprivileged role that may read the vector clock and nothing else."""
    role = f"reader_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    conn.execute(sql.SQL("GRANT SELECT ON gateway_envelopes_latest TO {}").format(sql.Identifier(role)))
    try:
        yield f"{db_dsn} user={role}"
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        with psycopg.connect(pg_cluster.dsn(), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_an_unprivileged_role_sees_another_roles_holder(conn: Conn, db_dsn: str, reader: str) -> None:
    """pg_stat_activity hides most columns of other roles' sessions, but not pid, application_name and
    user name: what status shows."""
    seed_rows(conn, 100, [10])
    squatter = hold(db_dsn, "squatter")
    try:
        pid, role = session(squatter)
        shown = status_json(reader)["leader_lease"]
        assert shown == {"key": KEY, "holders": [{"pid": pid, "application_name": "squatter", "role": role}]}
    finally:
        squatter.close()


def test_names_with_control_characters_stay_on_one_line() -> None:
    holder = LeaseHolder(7, "evil\nname", None)
    assert holder.describe() == 'pid 7 (application_name "evil\\nname", role unknown)'
    assert not holder.looks_like_partitiond
    assert LeaseHolder(None, "PartitionD", "r").looks_like_partitiond
