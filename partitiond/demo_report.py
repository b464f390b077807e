"""What ``partitiond demo`` shows: the live table of originators while it runs, and the verdict at the end.

Kept apart from :mod:`partitiond.demo`, which sets up the cluster, drives the writers and the daemon and
cleans up: this module only turns what they did into lines of text (and reads the positions the table
shows, the way ``partitiond status`` does).
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

import click
import psycopg

from partitiond import pipeline
from partitiond.bands import band_index
from partitiond.config import format_duration

if TYPE_CHECKING:
    from partitiond.child import DaemonLog
    from partitiond.demo import DemoConfig
    from partitiond.demo_writers import PacedWriter, WriterProfile
    from partitiond.forecast import RateEstimator
    from partitiond.planner import OriginatorStatus

Conn = psycopg.Connection[Any]

COLUMNS = ("originator", "writer", "position", "band", "last band", "headroom", "runway", "created", "cold")


def read_statuses(conn: Conn, config: DemoConfig, estimator: RateEstimator) -> list[OriginatorStatus]:
    """Positions and bands as ``partitiond status`` reads them (same snapshot, same planner maths)."""
    settings = config.settings()
    snapshot = pipeline.take_snapshot(conn, settings)
    return list(pipeline.make_plan(snapshot, settings, estimator).statuses)


def status_rows(
    statuses: Sequence[OriginatorStatus], config: DemoConfig, writers: Sequence[PacedWriter], log: DaemonLog
) -> list[tuple[str, ...]]:
    """One row per demo originator: where it is, how much room it has, who created its bands."""
    by_oid = {w.profile.originator: w for w in writers}
    rows: list[tuple[str, ...]] = []
    for s in statuses:
        if s.originator not in config.originators:
            continue
        writer = by_oid.get(s.originator)
        runway = s.seconds_to_exhaustion
        rows.append(
            (
                str(s.originator),
                _writer_state(writer),
                "-" if s.position is None else f"{s.position:,}",
                str(band_index(s.current)),
                "-" if s.last is None else str(band_index(s.last)),
                f"{s.headroom:,}",
                "-" if runway is None or math.isinf(runway) else f"{runway:.0f}s",
                str(log.created[s.originator]),
                str(writer.stats.cold_path if writer else 0),
            )
        )
    return rows


def _writer_state(writer: PacedWriter | None) -> str:
    if writer is None:
        return "-"
    if writer.error:
        return f"{writer.profile.role} FAILED"
    if writer.started_at is None:
        return f"{writer.profile.role} (waiting)"
    seconds = writer.active_seconds
    if seconds < 1.0:  # an average over a few milliseconds says nothing
        return f"{writer.profile.role} (starting)"
    return f"{writer.profile.role} {writer.stats.inserted / seconds:,.0f}/s"


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return lines


def plain_lines(elapsed: float, rows: Sequence[Sequence[str]]) -> list[str]:
    """Non-terminal output: one self-contained line per originator, easy to grep in a CI log."""
    return [
        f"[{elapsed:5.1f}s] originator {r[0]}: writer {r[1]}, position {r[2]}, band {r[3]}, "
        f"last band {r[4]}, headroom {r[5]}, runway {r[6]}, created by partitiond {r[7]}, cold-path {r[8]}"
        for r in rows
    ]


@dataclass
class LiveView:
    """Redraws the table in place on a terminal (ANSI cursor-up and clear-line); prints plain lines otherwise,
    and then only every ``plain_every`` seconds so a CI log stays readable."""

    tty: bool
    plain_every: float
    out: TextIO
    _drawn: int = 0
    _last_plain: float = -math.inf

    def show(self, elapsed: float, duration: float, rows: Sequence[Sequence[str]], note: str) -> None:
        if self.tty:
            self._redraw([f"t = {elapsed:4.0f}s / {duration:.0f}s   {note}", *format_table(COLUMNS, rows)])
        elif elapsed - self._last_plain >= self.plain_every:
            self._last_plain = elapsed
            for line in plain_lines(elapsed, rows):
                self._echo(line)

    def final(self, elapsed: float, rows: Sequence[Sequence[str]]) -> None:
        self._drawn = 0
        self._echo("")
        self._echo(f"final state after {elapsed:.1f}s:")
        for line in format_table(COLUMNS, rows):
            self._echo("  " + line)

    def _redraw(self, lines: list[str]) -> None:
        # A wrapped line would take two rows and break the cursor-up count, so lines are cut to the width.
        width = max(20, shutil.get_terminal_size().columns - 1)
        prefix = f"\x1b[{self._drawn}F" if self._drawn else ""
        frame = [f"\x1b[2K{line[:width]}" for line in lines]
        frame += ["\x1b[2K"] * max(0, self._drawn - len(lines))
        self.out.write(prefix + "\n".join(frame) + "\n")
        self.out.flush()
        self._drawn = len(frame)

    def _echo(self, line: str) -> None:
        click.echo(line, file=self.out)


@dataclass(frozen=True, slots=True)
class WriterResult:
    """What one writer did, and what the database holds of it."""

    profile: WriterProfile
    first_seq: int
    acknowledged: int
    in_meta: int
    in_blob: int
    cold_path: int
    deadlocks: int
    seconds: float
    error: str | None

    @property
    def lost(self) -> int:
        return max(0, self.acknowledged - min(self.in_meta, self.in_blob))

    def crossings(self, width: int) -> int:
        if not self.acknowledged:
            return 0
        return (self.first_seq + self.acknowledged - 1) // width - self.first_seq // width


@dataclass(frozen=True, slots=True)
class Summary:
    """The demo's verdict.  ``ok`` (exit 0): no writer took the cold path, no row went missing, every writer
    and partitiond itself ran to the end."""

    config: DemoConfig
    seconds: float
    writers: tuple[WriterResult, ...]
    latencies: tuple[float, ...]
    created_kinds: dict[str, int]
    runs: int
    failures: tuple[str, ...]
    daemon_exit: int
    interrupted: bool

    @property
    def written(self) -> int:
        return sum(w.acknowledged for w in self.writers)

    @property
    def cold_path(self) -> int:
        return sum(w.cold_path for w in self.writers)

    @property
    def lost(self) -> int:
        return sum(w.lost for w in self.writers)

    @property
    def ok(self) -> bool:
        return (
            self.cold_path == 0
            and self.lost == 0
            and self.written > 0
            and self.daemon_exit == 0
            and not any(w.error for w in self.writers)
        )

    def lines(self) -> list[str]:
        width = self.config.band_width
        per_writer = ", ".join(
            f"{w.profile.originator} {w.profile.role}: {w.acknowledged:,}" for w in self.writers
        )
        rate = self.written / self.seconds if self.seconds > 0 else 0.0
        p50, p99 = percentile(self.latencies, 0.50), percentile(self.latencies, 0.99)
        created = sum(self.created_kinds.values())
        meta = sum(w.in_meta for w in self.writers)
        blob = sum(w.in_blob for w in self.writers)
        lines = [
            "",
            f"summary{' (interrupted)' if self.interrupted else ''}:",
            f"  duration: {self.seconds:.1f}s (band width {width:,}, partitiond interval "
            f"{format_duration(self.config.interval)}, {self.runs} full runs)",
            f"  envelopes written: {self.written:,} ({per_writer})",
            f"  envelopes/s: {rate:,.0f}",
            f"  band crossings by writers: {sum(w.crossings(width) for w in self.writers)}",
            f"  bands created ahead by partitiond: {created} ({self.created_kinds.get('repair', 0)} current "
            f"band up front, {self.created_kinds.get('ahead', 0)} ahead of a crossing)",
            f"  cold-path creations by writers: {self.cold_path}",
            f"  deadlocks: {sum(w.deadlocks for w in self.writers)}",
            f"  insert latency p50/p99: {_ms(p50)} / {_ms(p99)}",
            f"  rows lost: {self.lost:,} ({self.written:,} acknowledged; {meta:,} in gateway_envelopes_meta, "
            f"{blob:,} in gateway_envelopes_blob)",
        ]
        lines += [f"  writer {w.profile.originator} FAILED: {w.error}" for w in self.writers if w.error]
        lines += [f"  partitiond reported: {f}" for f in self.failures[:5]]
        if self.daemon_exit:
            lines.append(f"  partitiond exited with {self.daemon_exit}")
        lines.append(
            "  OK: every band existed before the first envelope that needed it"
            if self.ok
            else "  FAILED: see above (exit status 1)"
        )
        return lines


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (no interpolation: a reported p99 is a latency that really happened)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f} ms"
