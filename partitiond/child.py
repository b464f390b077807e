"""``partitiond run`` as a child process, and its JSON log: what the demo and the benchmarks drive.

They run the real daemon rather than calling its functions, so what they show is what an operator gets:
the same flags, the same scheduler, the same logs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Self

FIRST_RUN_DEADLINE = 30.0
DAEMON_STOP_TIMEOUT = 15.0


class DaemonError(Exception):
    """The child daemon failed to start or its first run failed; the message says why."""


@dataclass
class DaemonLog:
    """Follows partitiond's JSON log file and counts what the demo reports: bands created, runs, failures."""

    path: Path
    created: Counter[int] = field(default_factory=Counter)  # originator -> bands created
    created_kinds: Counter[str] = field(default_factory=Counter)  # "repair" (band 0 up front) / "ahead"
    runs: int = 0
    failures: list[str] = field(default_factory=list)
    last_created: str | None = None
    _offset: int = 0
    _partial: str = ""

    def poll(self) -> None:
        """Read the lines appended since the last call; a half-written last line waits for the next call."""
        try:
            with self.path.open("rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            return
        self._offset += len(data)
        *lines, self._partial = (self._partial + data.decode("utf-8", errors="replace")).split("\n")
        for line in lines:
            self._handle(line)

    def _handle(self, line: str) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        name = event.get("event")
        if name == "band created":
            self.created[int(event["originator"])] += 1
            self.created_kinds[str(event.get("kind"))] += 1
            self.last_created = (
                f"originator {event['originator']} band [{event['band_start']:,}, {event['band_end']:,}): "
                f"{event.get('reason', '')}"
            )
        elif name == "run finished":
            self.runs += 1
        elif name in ("run failed", "band failed"):
            self.failures.append(f"{name}: {event.get('reason') or event.get('error') or event}")

    def tail(self, lines: int = 5) -> str:
        try:
            return "\n".join(self.path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


@dataclass
class Daemon:
    """``partitiond run`` as a child process, its stderr captured to a log file in the demo directory."""

    proc: subprocess.Popen[bytes]
    log: DaemonLog
    metrics_port: int = 0

    @classmethod
    def start(
        cls,
        args: Sequence[str],
        dsn: str,
        log_path: Path,
        metrics_port: int = 0,
        extra_env: Mapping[str, str] | None = None,
    ) -> Self:
        """Start the real daemon (``partitiond run`` + ``args``).  Its environment drops every
        ``PARTITIOND_*`` setting of the calling shell (the flags must be what it runs with; ``extra_env``
        adds back what a benchmark means, such as a fault to inject) and gets the DSN there, not in argv,
        where ``ps`` would show a password.  Its own session keeps a terminal's Ctrl-C away from it: the
        caller stops the writers first, then the daemon, so the final picture is partitiond's."""
        env = {
            k: v for k, v in os.environ.items() if not k.startswith("PARTITIOND_") and k != "NOTIFY_SOCKET"
        }
        env["PARTITIOND_DSN"] = dsn
        env.update(extra_env or {})
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "partitiond", "run", *args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return cls(proc, DaemonLog(log_path), metrics_port)

    def wait_first_run(self, deadline: float = FIRST_RUN_DEADLINE) -> None:
        """Block until the first full run has finished, so every demo originator has its band 0 before any
        writer starts.  Polls with a deadline; a failed run or an early exit ends the wait with the reason."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            self.log.poll()
            if self.log.failures:
                raise DaemonError(f"partitiond's first run failed: {self.log.failures[0]}")
            if self.log.runs:
                return
            if self.proc.poll() is not None:
                raise DaemonError(f"partitiond exited with {self.proc.returncode}:\n{self.log.tail()}")
            time.sleep(0.1)
        raise DaemonError(f"partitiond did not finish its first run within {deadline:g}s:\n{self.log.tail()}")

    def events(self) -> list[tuple[float, dict[str, Any]]]:
        """Every JSON line of partitiond's log with its wall-clock time."""
        events = []
        for line in self.log.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                event = json.loads(line)
                at = datetime.fromisoformat(str(event["timestamp"])).timestamp()
            except (ValueError, TypeError, KeyError):
                continue
            events.append((at, event))
        return events

    def stop(self) -> int:
        """SIGTERM, then wait; kill only if the graceful shutdown hangs.  Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(DAEMON_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.poll()
        return self.proc.returncode
