"""Real-PostgreSQL test harness.

One throwaway cluster per test session (``partitiond.cluster``: initdb into a temp dir, own port,
fsync off, run as the ``postgres`` OS user when we are root).  A template database holds the xmtpd-shaped
schema and partitiond's functions; every test gets a fresh copy of it (``CREATE DATABASE … TEMPLATE``),
so tests never see each other's partitions.  The cluster is removed at the end even when tests fail.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from partitiond import sqlfiles
from partitiond.cluster import LocalCluster, throwaway_cluster

TEMPLATE_DB = "partitiond_template"


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[LocalCluster]:
    with throwaway_cluster(prefix="partitiond-test-") as cluster:
        with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE_DB)))
        with psycopg.connect(cluster.dsn(TEMPLATE_DB), autocommit=True) as conn:
            sqlfiles.install_schema(conn)
            sqlfiles.install_functions(conn)
        yield cluster


def _create_db(cluster: LocalCluster, template: str) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template))
        )
    return name


def _drop_db(cluster: LocalCluster, name: str) -> None:
    with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def db_dsn(pg_cluster: LocalCluster) -> Iterator[str]:
    """DSN of a fresh database with the xmtpd schema and partitiond's functions installed."""
    name = _create_db(pg_cluster, TEMPLATE_DB)
    try:
        yield pg_cluster.dsn(name)
    finally:
        _drop_db(pg_cluster, name)


@pytest.fixture
def empty_db_dsn(pg_cluster: LocalCluster) -> Iterator[str]:
    """DSN of a fresh, empty database (no tables, no functions)."""
    name = _create_db(pg_cluster, "template0")
    try:
        yield pg_cluster.dsn(name)
    finally:
        _drop_db(pg_cluster, name)


@pytest.fixture
def conn(db_dsn: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """An autocommit connection to the fresh database."""
    with psycopg.connect(db_dsn, autocommit=True) as connection:
        yield connection


@pytest.fixture
def standby(pg_cluster: LocalCluster, db_dsn: str) -> Iterator[LocalCluster]:
    """A real streaming replica of the session cluster (``pg_is_in_recovery()`` is true there)."""
    replica = pg_cluster.clone_standby(Path(tempfile.mkdtemp(prefix="partitiond-standby-")))
    try:
        yield replica
    finally:
        replica.destroy()


@dataclass
class Roles:
    owner_dsn: str
    daemon_dsn: str
    owner: str
    daemon: str


@pytest.fixture
def roles(pg_cluster: LocalCluster) -> Iterator[Roles]:
    """A database whose tables belong to an owner role (as xmtpd's migration role), and a second login
    role for partitiond that has nothing yet.  PUBLIC keeps no CREATE on ``public`` (PostgreSQL 15's
    default, made explicit), so a SECURITY DEFINER install is allowed."""
    tag = uuid.uuid4().hex[:8]
    db, owner, daemon = f"lp_{tag}", f"xmtpd_{tag}", f"partitiond_{tag}"
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(owner)))
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(daemon)))
        admin.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(db), sql.Identifier(owner))
        )
    with psycopg.connect(pg_cluster.dsn(db), autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(owner)))
        admin.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    with psycopg.connect(pg_cluster.dsn(db), user=owner, autocommit=True) as conn:
        sqlfiles.install_schema(conn)  # as xmtpd's migrations would: the owner role owns every table
    try:
        yield Roles(
            f"{pg_cluster.dsn(db)} user={owner}", f"{pg_cluster.dsn(db)} user={daemon}", owner, daemon
        )
    finally:
        with psycopg.connect(pg_cluster.dsn(), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(db)))
            for role in (daemon, owner):
                admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
