"""A throwaway local PostgreSQL cluster for tests, benchmarks and the demo.

Why this exists instead of Docker or pytest-postgresql: the CI machine has neither a Docker engine nor a
non-root user, and ``initdb`` refuses to run as root.  This module finds Debian's server binaries, runs the
server as the ``postgres`` OS user when we are root (``runuser``), and keeps everything in one temporary
directory so that stopping the cluster leaves nothing behind.  The cluster is tuned for speed, not
durability (``fsync=off``): it is never meant to hold data worth keeping.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from partitiond import pgbinaries

SERVER_OS_USER = "postgres"
FAST_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "max_locks_per_transaction": "256",
    "shared_buffers": "128MB",
    "log_min_messages": "warning",
}


class ClusterError(RuntimeError):
    """The throwaway cluster could not be created, started or stopped."""


def find_bindir(postgres: str | None = None) -> Path:
    """Locate the directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    ``PARTITIOND_PG_BINDIR`` overrides everything.  ``postgres`` (default: ``PARTITIOND_PG``) set to a
    major (15 to 18) picks the pinned build of that major from :mod:`partitiond.pgbinaries` (fetched once,
    then cached).  Otherwise, or with ``system``, the installed server: Debian puts nothing on PATH for it,
    so we ask ``pg_config`` first, then look in Debian's versioned directories (newest first), then PATH.
    """
    candidates: list[Path] = []
    choice = postgres or os.environ.get("PARTITIOND_PG") or "system"
    if override := os.environ.get("PARTITIOND_PG_BINDIR"):
        candidates.append(Path(override))
    elif choice != "system":
        try:
            return pgbinaries.bindir(pgbinaries.parse_major(choice))
        except pgbinaries.BinariesError as exc:
            raise ClusterError(f"PostgreSQL {choice}: {exc}") from None
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(subprocess.CalledProcessError, OSError):
            out = subprocess.run([pg_config, "--bindir"], check=True, capture_output=True, text=True).stdout
            candidates.append(Path(out.strip()))
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates.extend(debian)
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).parent)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    raise ClusterError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found. Install them, e.g. on Debian: "
        "`sudo apt-get install postgresql`, set PARTITIOND_PG to a major (15-18) to use a pinned build, "
        "or set PARTITIOND_PG_BINDIR to their directory."
    )


def free_port() -> int:
    """Ask the kernel for a free loopback TCP port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalCluster:
    """One initdb'ed, running PostgreSQL server listening on 127.0.0.1 only, with trust auth."""

    base_dir: Path
    port: int
    bindir: Path
    user: str = "postgres"
    _running: bool = field(default=False, init=False)

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "server.log"

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user={self.user} dbname={dbname}"

    def _as_server_user(self, argv: list[str]) -> list[str]:
        if os.geteuid() == 0:
            runuser = shutil.which("runuser") or "/usr/sbin/runuser"
            return [runuser, "-u", SERVER_OS_USER, "--", *argv]
        return argv

    def _run(self, argv: list[str]) -> None:
        proc = subprocess.run(self._as_server_user(argv), capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ClusterError(f"{Path(argv[0]).name} failed ({proc.returncode}): {proc.stderr.strip()}")

    def init(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.base_dir, SERVER_OS_USER)
            shutil.chown(self.data_dir, SERVER_OS_USER)
        self._run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                self.user,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )

    def start(self, extra_settings: dict[str, str] | None = None) -> None:
        settings = {
            **FAST_SETTINGS,
            "port": str(self.port),
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.base_dir),
            **(extra_settings or {}),
        }
        # pg_ctl hands -o to a shell: quote every value so prefixes like "%u|" or spaces survive intact.
        opts = " ".join(f"-c {key}={shlex.quote(value)}" for key, value in settings.items())
        self._run(
            [
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_file),
                "-o",
                opts,
                "-w",
                "-t",
                "60",
                "start",
            ]
        )
        self._running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; ``mode="immediate"`` simulates a crash."""
        if not self._running:
            return
        self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop"])
        self._running = False

    def clone_standby(self, base_dir: Path) -> LocalCluster:
        """A streaming replica of this cluster (pg_basebackup -R), started: a real ``pg_is_in_recovery()``."""
        base_dir.mkdir(parents=True, exist_ok=True)
        base_dir.chmod(0o755)
        standby = LocalCluster(base_dir=base_dir, port=free_port(), bindir=self.bindir, user=self.user)
        if os.geteuid() == 0:
            shutil.chown(base_dir, SERVER_OS_USER)
        standby._run(
            [
                str(self.bindir / "pg_basebackup"),
                "-D",
                str(standby.data_dir),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                self.user,
                "-R",
                "-X",
                "stream",
                "--no-sync",
                "--checkpoint=fast",
            ]
        )
        standby.start()
        return standby

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        with contextlib.suppress(ClusterError):
            self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)


@contextlib.contextmanager
def throwaway_cluster(parent: Path | None = None, prefix: str = "partitiond-pg-") -> Iterator[LocalCluster]:
    """Create, start and always remove a cluster, even when the body raises or is interrupted."""
    bindir = find_bindir()
    base = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(base, 0o755)  # noqa: S103 -- the postgres OS user must reach its data dir inside
    cluster = LocalCluster(base_dir=base, port=free_port(), bindir=bindir)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()
