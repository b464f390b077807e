"""Prometheus metrics and the tiny HTTP server for ``/metrics``, ``/healthz`` and ``/readyz``.

Why an own ``CollectorRegistry``: the default one carries process/GC collectors and whatever other libraries
register, which would leak into the node-exporter textfile of ``run-once``.  The daemon adds the process
and platform collectors to its own registry for ``/metrics`` (:meth:`Metrics.add_process_collectors`); the
textfile never has them.  Why our own WSGI dispatcher instead of ``prometheus_client.start_http_server``:
that server answers *every* path with metrics, so it cannot host the probes.

``_created`` series are switched off at import with ``disable_created_metrics()``.  The switch is global to
the process (prometheus-client reads it at collection time), which is acceptable because partitiond is the
only instrumented code in its process; it keeps the exposition and the textfile free of series that no
alert uses and that would double the sample count of every counter.

Nothing here touches PostgreSQL: the job records values, scrapes and probes only read memory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import cast
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
    make_wsgi_app,
)
from prometheus_client.parser import text_string_to_metric_families

from partitiond import __version__
from partitiond.executor import DEFERRAL_REASONS
from partitiond.forecast import SteadyRateEstimator
from partitiond.health import HealthState

disable_created_metrics()  # type: ignore[no-untyped-call]

log = logging.getLogger(__name__)

NAMESPACE = "partitiond"
RUN_RESULTS = ("success", "partial", "failed", "standby", "follower", "skipped")
TABLES = ("meta", "blob")
LEVELS = ("l1", "l2")
ENSURE_FAILURE_REASONS = ("lock_timeout", "deadlock", "serialization", "other")
HOLD_STEPS = ("check", "meta", "blob_lock", "blob", "ensure", "commit")
NOOP_REASONS = ("standby", "follower")
RUN_DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
LOCK_WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
HOLD_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)
# Timestamps a run-once textfile keeps from the file it replaces: every run-once starts a fresh registry, so
# without this one failed pass after a good one would reset them to 0 and hide how long ago the work was done.
CARRIED_TIMESTAMPS = (
    f"{NAMESPACE}_last_success_timestamp_seconds",
    f"{NAMESPACE}_last_leader_pass_timestamp_seconds",
)

# Sample-name suffixes per metric family type: lets metric_names() list series that have no child yet.
_SAMPLE_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("", "_count", "_sum"),
    "info": ("_info",),
    "stateset": ("",),
    "enum": ("",),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "unknown": ("",),
}


class Metrics:
    """Every metric partitiond exports, on a private registry.

    Label values with a closed set (run results, failure and deferral reasons, hold steps, tables and
    levels, no-op reasons) are created at zero up front, so ``rate()`` and ``increase()`` work from the
    first scrape and alerts do not depend on a series appearing.  ``probes`` is left open: its results are
    the caller's vocabulary.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._process_collectors = False
        self._originators: set[int] = set()
        self._originators_lock = threading.Lock()
        self._make_run_metrics()
        self._make_ensure_metrics()
        self._make_originator_metrics()
        self._make_state_metrics()
        self._initialise_label_sets()

    def _make_run_metrics(self) -> None:
        reg, ns = self.registry, NAMESPACE
        self.runs = Counter(
            "runs", "Scheduled or one-shot runs by outcome.", ["result"], namespace=ns, registry=reg
        )
        self.run_duration = Histogram(
            "run_duration_seconds",
            "Wall time of one run.",
            namespace=ns,
            registry=reg,
            buckets=RUN_DURATION_BUCKETS,
        )
        self.last_success = Gauge(
            "last_success_timestamp_seconds",
            "Unix time of the last successful run.",
            namespace=ns,
            registry=reg,
        )
        self.probes = Counter("probes", "Probes by result.", ["result"], namespace=ns, registry=reg)
        self.connect_failures = Counter(
            "db_connect_failures", "Failed attempts to connect to PostgreSQL.", namespace=ns, registry=reg
        )

    def _make_ensure_metrics(self) -> None:
        reg, ns = self.registry, NAMESPACE
        self.partitions_created = Counter(
            "partitions_created",
            "Partitions created by partitiond (l1: per-originator LIST partition, l2: sequence-id band).",
            ["table", "level"],
            namespace=ns,
            registry=reg,
        )
        self.ensure_failures = Counter(
            "ensure_failures", "Failed partition ensures by cause.", ["reason"], namespace=ns, registry=reg
        )
        self.lock_wait = Histogram(
            "lock_wait_seconds",
            "Time a band's attempts took, waits included: for the blob L1 to be free, for key 5, for locks.",
            namespace=ns,
            registry=reg,
            buckets=LOCK_WAIT_BUCKETS,
        )
        self.deferrals = Counter(
            "band_deferrals",
            "Band attempts refused because something else held what they needed; the band is retried.",
            ["reason"],
            namespace=ns,
            registry=reg,
        )
        self.key5_hold = Histogram(
            "key5_hold_seconds",
            "Time from key 5 granted to COMMIT or ROLLBACK done, per attempt: every insert waits meanwhile.",
            namespace=ns,
            registry=reg,
            buckets=HOLD_BUCKETS,
        )
        self.key5_hold_step = Histogram(
            "key5_hold_step_seconds",
            "The key-5 hold of each created band, split by statement.",
            ["step"],
            namespace=ns,
            registry=reg,
            buckets=HOLD_BUCKETS,
        )
        self.cold_path = Counter(
            "cold_path_suspicions",
            "Bands that had to be repaired because nobody created them in time.",
            ["originator"],
            namespace=ns,
            registry=reg,
        )

    def _make_originator_metrics(self) -> None:
        reg, ns, lbl = self.registry, NAMESPACE, ["originator"]
        self.position = Gauge(
            "originator_position", "Highest sequence id seen.", lbl, namespace=ns, registry=reg
        )
        self.headroom = Gauge(
            "originator_headroom_ids",
            "Sequence ids left in pre-created bands.",
            lbl,
            namespace=ns,
            registry=reg,
        )
        self.fill = Gauge(
            "originator_fill_ratio", "Fill of the current band, 0 to 1.", lbl, namespace=ns, registry=reg
        )
        self.exhaustion = Gauge(
            "originator_seconds_to_exhaustion",
            "Forecast seconds until the headroom is used up; absent when unknown.",
            lbl,
            namespace=ns,
            registry=reg,
        )
        self.steady_exhaustion = Gauge(
            "originator_steady_seconds_to_exhaustion",
            "Seconds until the headroom is used up at the steady (burst-robust) rate, for alerts; "
            "absent when unknown.",
            lbl,
            namespace=ns,
            registry=reg,
        )
        # The state behind steady_exhaustion: it needs readings across passes, and this object lives as long
        # as the series it feeds (the daemon's whole life; one pass for run-once, which has no rate anyway).
        self.steady_rates = SteadyRateEstimator()

    def _make_state_metrics(self) -> None:
        reg, ns = self.registry, NAMESPACE
        self.leader = Gauge(
            "leader",
            "1 when this instance holds leadership (run-once: when its pass ran as the leader).",
            namespace=ns,
            registry=reg,
        )
        self.last_leader_pass = Gauge(
            "last_leader_pass_timestamp_seconds",
            "Unix time of the last run or probe that did the work as the leader (0 until then).",
            namespace=ns,
            registry=reg,
        )
        self.noop = Gauge(
            "noop",
            "1 for the reason this instance is deliberately doing nothing.",
            ["reason"],
            namespace=ns,
            registry=reg,
        )
        self.build_info = Info("build", "Build information.", namespace=ns, registry=reg)
        self.build_info.info({"version": __version__})

    def _initialise_label_sets(self) -> None:
        """Create the closed label sets at zero so alerts see them before the first event."""
        for result in RUN_RESULTS:
            self.runs.labels(result=result)
        for reason in ENSURE_FAILURE_REASONS:
            self.ensure_failures.labels(reason=reason)
        for reason in DEFERRAL_REASONS:
            self.deferrals.labels(reason=reason)
        for step in HOLD_STEPS:
            self.key5_hold_step.labels(step=step)
        for table in TABLES:
            for level in LEVELS:
                self.partitions_created.labels(table=table, level=level)
        self.set_noop(None)

    def set_originator(
        self,
        originator: int,
        position: int | None,
        headroom: int,
        fill: float,
        seconds_to_exhaustion: float | None,
        steady_seconds_to_exhaustion: float | None = None,
    ) -> None:
        """Publish one originator's forecast; unknown values remove their series instead of exporting NaN."""
        label = str(originator)
        with self._originators_lock:
            self._originators.add(originator)
            _set_or_remove(self.position, label, position)
            self.headroom.labels(label).set(headroom)
            self.fill.labels(label).set(fill)
            _set_or_remove(self.exhaustion, label, seconds_to_exhaustion)
            _set_or_remove(self.steady_exhaustion, label, steady_seconds_to_exhaustion)

    def forget_originators(self, keep: Iterable[int]) -> None:
        """Drop the series of originators no longer present, so dashboards don't show stale ones."""
        keep_set = set(keep)
        with self._originators_lock:
            gone = self._originators - keep_set
            gauges = (self.position, self.headroom, self.fill, self.exhaustion, self.steady_exhaustion)
            for originator in gone:
                for gauge in gauges:
                    _remove(gauge, str(originator))
                self.steady_rates.forget(originator)
            self._originators &= keep_set

    def set_leader(self, leader: bool) -> None:
        """Export leadership as 0/1."""
        self.leader.set(1 if leader else 0)

    def set_noop(self, reason: str | None) -> None:
        """Make the no-op loud: 1 for the current reason, 0 for the others (None: not a no-op)."""
        if reason is not None and reason not in NOOP_REASONS:
            raise ValueError(f"unknown no-op reason {reason!r}; expected one of {NOOP_REASONS}")
        for candidate in NOOP_REASONS:
            self.noop.labels(reason=candidate).set(1 if candidate == reason else 0)

    def add_process_collectors(self) -> None:
        """``process_*`` (CPU, memory, open files, start time) and ``python_info`` on this registry, for
        the daemon's /metrics only: in run-once's textfile they would describe a process that has already
        exited.  Idempotent."""
        if self._process_collectors:
            return
        self._process_collectors = True
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def render(self) -> bytes:
        """Prometheus text exposition of the registry."""
        return generate_latest(self.registry)

    def write_textfile(self, path: Path) -> None:
        """Write the exposition for node-exporter's textfile collector, atomically.

        The temp file lives in the target directory (so ``os.replace`` is a rename, never a copy) and does
        not end in ``.prom`` (so the collector never reads it half-written).  It is made world-readable
        because node-exporter usually runs as another user.  On any error the temp file is removed.  The
        timestamps in ``CARRIED_TIMESTAMPS`` keep the newer of this registry's and the replaced file's value.
        """
        if path.suffix != ".prom":
            raise ValueError(f"textfile path must end in .prom: {path}")
        self.carry_forward(path)
        data = self.render()
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as tmp:
                os.fchmod(tmp.fileno(), 0o644)
                tmp.write(data)
                tmp.flush()
                os.fsync(tmp.fileno())
            os.replace(tmp_name, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise

    def carry_forward(self, path: Path) -> None:
        """Raise each carried timestamp to the previous textfile's value when that one is newer.

        Why: the alerts ask "when did partitiond last succeed / last work as the leader?", and a timer's
        answer must survive passes that failed.  A missing or unreadable previous file carries nothing.
        """
        try:
            previous = _timestamps(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            log.debug("previous metrics textfile %s not carried forward: %s", path, exc)
            return
        current = _timestamps(self.render().decode())
        gauges = dict(zip(CARRIED_TIMESTAMPS, (self.last_success, self.last_leader_pass), strict=True))
        for name, gauge in gauges.items():
            if previous.get(name, 0.0) > current.get(name, 0.0):
                gauge.set(previous[name])

    def metric_names(self) -> set[str]:
        """Every sample name the registry can export, including labelled metrics with no child yet."""
        names: set[str] = set()
        for family in self.registry.collect():
            names.update(family.name + suffix for suffix in _SAMPLE_SUFFIXES.get(family.type, ("",)))
            names.update(sample.name for sample in family.samples)
        return names


def _timestamps(exposition: str) -> dict[str, float]:
    """The unlabelled ``CARRIED_TIMESTAMPS`` samples of a text exposition."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name in CARRIED_TIMESTAMPS and not sample.labels:
                found[sample.name] = sample.value
    return found


def _set_or_remove(gauge: Gauge, label: str, value: float | None) -> None:
    """Set a labelled gauge, or drop its series when the value is unknown."""
    if value is None:
        _remove(gauge, label)
    else:
        gauge.labels(label).set(value)


def _remove(gauge: Gauge, label: str) -> None:
    """Remove a series that may not exist (older prometheus-client raises KeyError for that)."""
    with contextlib.suppress(KeyError):
        gauge.remove(label)


class _QuietHandler(WSGIRequestHandler):
    """Request handler that does not write a line to stderr per request."""

    timeout = 10  # a client that never sends its request must not pin a thread forever

    def log_message(self, format: str, *args: object) -> None:
        """Log nothing: scrapes and probes every few seconds would drown the daemon's own logs."""


class _Server(ThreadingMixIn, WSGIServer):
    """Thread per request, so a slow scrape never blocks a liveness probe."""

    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """Log client-side errors (resets, timeouts) at debug instead of printing a traceback."""
        log.debug("http request from %s failed", client_address, exc_info=True)


class _Server6(_Server):
    """The same server for IPv6 listen addresses."""

    address_family = socket.AF_INET6


def parse_address(address: str) -> tuple[str, int]:
    """Split "host:port" ("[v6]:port" and ":port" too; an empty host means all IPv4 interfaces)."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ValueError(f"invalid listen address {address!r}: expected host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host or "[" in host or "]" in host:
        raise ValueError(f"invalid listen address {address!r}: write IPv6 hosts as [addr]:port")
    return host or "0.0.0.0", int(port_text)  # noqa: S104 - ":port" explicitly asks for all interfaces


class HealthServer:
    """Serves ``/metrics``, ``/healthz`` and ``/readyz`` from memory in a daemon thread."""

    def __init__(self, address: str, metrics: Metrics, health: HealthState) -> None:
        self._host, self._requested_port = parse_address(address)
        self._health = health
        self._metrics_app = cast(WSGIApplication, make_wsgi_app(metrics.registry))
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when the address asked for port 0)."""
        if self._server is None:
            raise RuntimeError("HealthServer is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL of the running server, e.g. http://127.0.0.1:9187."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        """Bind and start serving; the socket is listening when this returns (no race for callers)."""
        if self._server is not None:
            raise RuntimeError("HealthServer already started")
        server_class = _Server6 if ":" in self._host else _Server
        server = make_server(
            self._host,
            self._requested_port,
            self._app,
            server_class=server_class,
            handler_class=_QuietHandler,
        )
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="partitiond-http", daemon=True
        )
        thread.start()
        self._server, self._thread = server, thread

    def stop(self) -> None:
        """Stop serving and release the port; safe to call twice or without start()."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=2)

    def _app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Dispatch by path; probes answer from HealthState, never from the database."""
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._metrics_app(environ, start_response)
        if path == "/healthz":
            return _probe(self._health.live(), environ, start_response)
        if path == "/readyz":
            return _probe(self._health.ready(), environ, start_response)
        return _plain("404 Not Found", "not found\n", start_response)


def _probe(state: tuple[bool, str], environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    """200 "ok" or 503 with the human reason, for GET/HEAD only."""
    if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
        return _plain(
            "405 Method Not Allowed", "method not allowed\n", start_response, [("Allow", "GET, HEAD")]
        )
    ok, reason = state
    if ok:
        return _plain("200 OK", "ok\n", start_response)
    return _plain("503 Service Unavailable", reason + "\n", start_response)


def _plain(
    status: str, body: str, start_response: StartResponse, extra: Iterable[tuple[str, str]] = ()
) -> list[bytes]:
    """A small uncached text/plain response."""
    data = body.encode()
    headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(data))),
        ("Cache-Control", "no-store"),
        *extra,
    ]
    start_response(status, headers)
    return [data]
