"""``partitiond run``: the scheduled daemon around the pipeline.

Threads and their jobs:

* the **main thread** waits on a wake-up event, beats the health state, pings systemd's watchdog and
  applies SIGHUP reloads; signal handlers only set flags (SIGTERM/SIGINT → stop, SIGHUP → reload), and the
  real work — cancelling the in-flight query, stopping the scheduler, reloading — happens back here, as
  psycopg and APScheduler require.  A reload that changed anything queues a probe at once, so an added
  originator is provisioned now, not at the next scheduled probe;
* APScheduler's ``BackgroundScheduler`` (UTC, one worker thread) runs a full pass every ``interval`` with
  jitter, first run at start, ``max_instances=1``, ``coalesce=True`` and ``misfire_grace_time=None`` so a
  late run is run late rather than silently skipped; between full runs it runs adaptive probes, each one
  scheduled by the previous pass (:func:`partitiond.planner.next_probe_delay`);
* the metrics/health HTTP server thread answers scrapes from values recorded after each pass — it never
  queries the database.

Before each pass the leader lease is refreshed: followers plan and export metrics but create nothing.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import FrameType

import structlog
from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    JobEvent,
)
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from partitiond import pipeline, report
from partitiond.catalog import Inventory
from partitiond.config import ConfigError, Settings, describe_changes, format_duration
from partitiond.forecast import RateEstimator
from partitiond.health import HealthState
from partitiond.lease import LeaderLease
from partitiond.logs import configure_logging
from partitiond.metrics import HealthServer, Metrics
from partitiond.notify import notify, watchdog_interval
from partitiond.planner import next_probe_delay

log = structlog.get_logger("partitiond.daemon")

MAIN_LOOP_TICK = 5.0
JOB_ID = "partitiond-run"
PROBE_ID = "partitiond-probe"
RELOAD_PROBE_ID = "partitiond-reload-probe"  # its own id: the scheduled probe may still be finishing
# Changing these needs a restart: they are bound at start (listening socket, lease session).
RESTART_ONLY = ("metrics_address", "leader_lock_key", "dsn", "dsn_file")


def _quiet_apscheduler(level: str) -> None:
    """APScheduler logs every run at INFO; our own "run finished" line already says it, with numbers."""
    logging.getLogger("apscheduler").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)


@dataclass
class Daemon:
    """One daemon process; ``serve()`` blocks until a stop signal and returns the exit code.

    ``reload`` re-reads flags, environment and config file into fresh Settings (SIGHUP).
    """

    settings: Settings
    env: Mapping[str, str]
    reload: Callable[[], Settings] | None = None
    metrics: Metrics = field(default_factory=Metrics)
    control: pipeline.RunControl = field(default_factory=pipeline.RunControl)
    kept: pipeline.KeptConnection = field(default_factory=pipeline.KeptConnection)
    health: HealthState = field(init=False)
    estimator: RateEstimator = field(init=False)
    lease: LeaderLease = field(init=False)
    inventory: Inventory | None = field(default=None, init=False)  # probes plan against this cache
    scheduler: BackgroundScheduler | None = field(default=None, init=False)
    _wake: threading.Event = field(default_factory=threading.Event, init=False)
    _reload_requested: threading.Event = field(default_factory=threading.Event, init=False)
    _exit_code: int = field(default=0, init=False)  # what serve() returns: 0, or a fatal pass's exit code
    _job_lock: threading.Lock = field(default_factory=threading.Lock, init=False)  # held while a pass runs
    _ready_sent: bool = field(default=False, init=False)
    _probes: int = field(default=0, init=False)  # probes since the last full run

    def __post_init__(self) -> None:
        self.health = HealthState(stuck_after=2 * self.settings.interval)
        self.estimator = RateEstimator(max_jump_ids=self.settings.max_jump_bands * self.settings.band_width)
        self.lease = LeaderLease(
            connect=lambda: pipeline.open_connection(self.settings, self.env),
            key=self.settings.leader_lock_key,
        )

    # --- the jobs ---------------------------------------------------------------------------------------

    def run_job(self) -> None:
        """A full pass (catalog read); never raises: errors are in the report, and the schedule goes on."""
        self._pass(known=None)

    def probe_job(self) -> None:
        """A cheap probe between full runs: positions only, DDL only when the forecast requires it."""
        self._pass(known=self.inventory)

    def _pass(self, known: Inventory | None) -> None:
        with self._job_lock:
            if not self.control.stop.is_set():
                self._pass_locked(known)

    def _pass_locked(self, known: Inventory | None) -> None:
        self.health.job_started()
        leader = self.lease.refresh()
        self.metrics.set_leader(leader)
        # Routine probes log at debug; each full run's line says how many ran since the previous one.
        fields = {"probes_since_last_run": self._probes} if known is None else None
        result = pipeline.run_pass(
            self.settings, self.env, self.estimator, self.control, known, leader, fields, self.kept
        )
        self._probes = 0 if known is None else self._probes + 1
        report.record(self.metrics, result)
        healthy_noop = result.result in ("standby", "follower")
        self.health.set_standby(result.result if healthy_noop else None)
        self.health.job_finished(ok=result.result == "success" or healthy_noop)
        self.inventory = result.inventory
        if result.fatal:  # e.g. ensure_gateway_parts_v4 replaced by someone else: no retry can fix it
            log.critical("stopping: partitiond must not go on", reason=result.message, code=result.exit_code)
            self._exit_code = result.exit_code
            self.control.stop.set()
            self._wake.set()
            return
        if result.exit_code == pipeline.EXIT_SERVER and not healthy_noop:
            self.metrics.connect_failures.inc()
        else:
            self._announce_ready()
        self._schedule_probe(result)

    def _schedule_probe(self, result: pipeline.PassReport) -> None:
        """Adaptive: the next probe comes sooner when an originator's band is running out."""
        if self.settings.probe_interval <= 0 or self.scheduler is None or self.control.stop.is_set():
            return
        delay = next_probe_delay(result.statuses, self.settings.probe_interval)
        due = datetime.now(UTC) + timedelta(seconds=delay)
        full_run = self.scheduler.get_job(JOB_ID)
        if full_run is not None and full_run.next_run_time is not None and due >= full_run.next_run_time:
            return  # the full run comes first and schedules the next probe itself
        self.scheduler.add_job(
            self.probe_job,
            DateTrigger(run_date=due, timezone=UTC),
            id=PROBE_ID,
            name="probe",
            replace_existing=True,
        )

    def _announce_ready(self) -> None:
        """READY=1 once, after the first pass that reached the database."""
        if not self._ready_sent:
            self._ready_sent = True
            notify("READY=1")

    def _on_event(self, event: JobEvent) -> None:
        if event.code == EVENT_JOB_ERROR:
            self.health.job_finished(ok=False)
            self.metrics.runs.labels(result="failed").inc()
        elif event.job_id in (PROBE_ID, RELOAD_PROBE_ID):
            log.debug("probe skipped: a pass is already running or queued")
        else:
            reason = "missed" if event.code == EVENT_JOB_MISSED else "previous run still going"
            log.warning("run skipped by the scheduler", reason=reason)
            self.metrics.runs.labels(result="skipped").inc()

    # --- scheduling -------------------------------------------------------------------------------------

    def _interval_trigger(self) -> IntervalTrigger:
        return IntervalTrigger(
            seconds=self.settings.interval, jitter=self.settings.jitter or None, timezone=UTC
        )

    def _scheduler(self) -> BackgroundScheduler:
        scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={"default": ThreadPoolExecutor(1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        scheduler.add_listener(self._on_event, EVENT_JOB_ERROR | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
        scheduler.add_job(
            self.run_job,
            self._interval_trigger(),
            id=JOB_ID,
            name="full run",
            next_run_time=datetime.now(UTC),
        )
        return scheduler

    # --- signals and reload -----------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        def request_stop(_signum: int, _frame: FrameType | None) -> None:
            self.control.stop.set()  # flags only: the main thread does the work
            self._wake.set()

        def request_reload(_signum: int, _frame: FrameType | None) -> None:
            self._reload_requested.set()
            self._wake.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, request_stop)
        signal.signal(signal.SIGHUP, request_reload)

    def _apply_reload(self) -> None:
        """SIGHUP: re-read the configuration; an invalid one is refused and the old one stays."""
        self._reload_requested.clear()
        if self.reload is None:
            return
        try:
            new = self.reload()
        except ConfigError as exc:
            refused = str(exc)  # the message names the option; a traceback would add nothing
        else:
            refused = ""
        if refused:
            log.error("reload refused: configuration invalid, keeping the current one", error=refused)
            return
        changes = describe_changes(self.settings, new)
        needs_restart = sorted(set(changes) & set(RESTART_ONLY))
        if needs_restart:
            log.warning("these settings change only on restart", settings=needs_restart)
        with self._job_lock:  # never swap settings under a running pass
            self.settings = new
        configure_logging(new.log_format, new.log_level)
        _quiet_apscheduler(new.log_level)
        if self.scheduler is not None and ("interval" in changes or "jitter" in changes):
            self.scheduler.reschedule_job(JOB_ID, trigger=self._interval_trigger())
        log.info("configuration reloaded", changes={k: f"{a} -> {b}" for k, (a, b) in changes.items()})
        if changes:
            self._probe_now()

    def _probe_now(self) -> None:
        """A probe right away, so what a reload changed (an originator added, a lower threshold) acts now
        rather than at the next scheduled probe or run, which can be up to --interval away.  The probe
        reads the catalog again before it creates anything, and queues behind a running pass."""
        if self.scheduler is None or self.control.stop.is_set():
            return
        self.scheduler.add_job(
            self.probe_job,
            DateTrigger(run_date=datetime.now(UTC), timezone=UTC),
            id=RELOAD_PROBE_ID,
            name="probe after reload",
            replace_existing=True,
        )

    # --- process lifecycle ------------------------------------------------------------------------------

    def serve(self) -> int:
        _quiet_apscheduler(self.settings.log_level)
        self._install_signal_handlers()
        server = self._start_http()
        scheduler = self.scheduler = self._scheduler()
        scheduler.start()
        log.info(
            "partitiond started",
            interval=format_duration(self.settings.interval),
            probes=format_duration(self.settings.probe_interval) if self.settings.probe_interval else "off",
            runway=format_duration(self.settings.runway_seconds),
            schema=self.settings.schema,
            metrics=server.url if server else None,
        )
        watchdog = watchdog_interval()  # None unless systemd set WatchdogSec= for this process
        tick = min(MAIN_LOOP_TICK, watchdog or MAIN_LOOP_TICK)
        while not self.control.stop.is_set():
            self._wake.wait(tick)
            self._wake.clear()
            if self._reload_requested.is_set() and not self.control.stop.is_set():
                self._apply_reload()
            self.health.set_scheduler_alive(scheduler.running)
            self.health.beat()
            if watchdog is not None and self.health.live()[0]:
                notify("WATCHDOG=1")
        return self._shutdown(scheduler, server)

    def _start_http(self) -> HealthServer | None:
        if not self.settings.metrics_address:
            return None
        self.metrics.add_process_collectors()  # the daemon's own process: CPU, memory, open files
        server = HealthServer(self.settings.metrics_address, self.metrics, self.health)
        server.start()
        return server

    def _shutdown(self, scheduler: BackgroundScheduler, server: HealthServer | None) -> int:
        """Stop within ``shutdown_timeout``: pause scheduling, cancel the running query, wait for the job.

        The job is awaited through our own lock, never through ``scheduler.shutdown(wait=True)``: that holds
        the scheduler's job-store lock while it waits, and a job that touches the scheduler would deadlock.
        """
        log.info("stopping", timeout=format_duration(self.settings.shutdown_timeout))
        notify("STOPPING=1")
        scheduler.pause()
        self.control.cancel(timeout=self.settings.shutdown_timeout / 2)
        finished = self._job_lock.acquire(timeout=self.settings.shutdown_timeout)
        if server is not None:
            server.stop()
        if not finished:
            log.error("job did not stop in time; exiting without it", timeout=self.settings.shutdown_timeout)
            logging.shutdown()
            os._exit(1)  # the stuck worker thread would otherwise keep the interpreter alive
        self.lease.release()
        self.kept.close()
        scheduler.shutdown(wait=False)
        self._job_lock.release()  # a job already queued now sees the stop flag and returns at once
        log.info("stopped")
        return self._exit_code


def serve(settings: Settings, env: Mapping[str, str], reload: Callable[[], Settings] | None = None) -> int:
    return Daemon(settings, env, reload).serve()
