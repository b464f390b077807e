"""``partitiond run``: the scheduled daemon around the pipeline.

Threads and their jobs:

* the **main thread** waits on a stop event, beats the health state and pings systemd's watchdog; signal
  handlers only set flags (SIGTERM/SIGINT → stop), and all real work — cancelling the in-flight query,
  stopping the scheduler — happens back on the main thread, as psycopg and APScheduler require;
* APScheduler's ``BackgroundScheduler`` (UTC, one worker thread) runs the pass every ``interval`` with
  jitter, first run at start, ``max_instances=1``, ``coalesce=True`` and ``misfire_grace_time=None`` so a
  late run is run late rather than silently skipped;
* the metrics/health HTTP server thread answers scrapes from values recorded after each pass — it never
  queries the database.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import structlog
from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    JobEvent,
)
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from partitiond import pipeline, report
from partitiond.config import Settings, format_duration
from partitiond.forecast import RateEstimator
from partitiond.health import HealthState
from partitiond.metrics import HealthServer, Metrics
from partitiond.notify import notify, watchdog_interval

log = structlog.get_logger("partitiond.daemon")

MAIN_LOOP_TICK = 5.0
JOB_ID = "partitiond-run"


@dataclass
class Daemon:
    """One daemon process; ``serve()`` blocks until a stop signal and returns the exit code."""

    settings: Settings
    env: Mapping[str, str]
    metrics: Metrics = field(default_factory=Metrics)
    control: pipeline.RunControl = field(default_factory=pipeline.RunControl)
    health: HealthState = field(init=False)
    estimator: RateEstimator = field(init=False)
    _ready_sent: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.health = HealthState(stuck_after=2 * self.settings.interval)
        self.estimator = RateEstimator(max_jump_ids=self.settings.max_jump_bands * self.settings.band_width)

    # --- the job ---------------------------------------------------------------------------------------

    def run_job(self) -> None:
        """One scheduled pass; never raises (errors are in the report), so the schedule keeps going."""
        self.health.job_started()
        result = pipeline.run_pass(self.settings, self.env, self.estimator, self.control)
        report.record(self.metrics, result)
        self.health.set_standby("standby" if result.result == "standby" else None)
        self.health.job_finished(ok=result.result in ("success", "standby"))
        if result.exit_code != pipeline.EXIT_SERVER or result.result == "standby":
            self._announce_ready()
        else:
            self.metrics.connect_failures.inc()

    def _announce_ready(self) -> None:
        if not self._ready_sent:
            self._ready_sent = True
            notify("READY=1")

    def _on_event(self, event: JobEvent) -> None:
        if event.code == EVENT_JOB_ERROR:
            self.health.job_finished(ok=False)
            self.metrics.runs.labels(result="failed").inc()
        else:
            reason = "missed" if event.code == EVENT_JOB_MISSED else "previous run still going"
            log.warning("run skipped by the scheduler", reason=reason)
            self.metrics.runs.labels(result="skipped").inc()

    # --- process lifecycle ------------------------------------------------------------------------------

    def _scheduler(self) -> BackgroundScheduler:
        scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={"default": ThreadPoolExecutor(1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        scheduler.add_listener(self._on_event, EVENT_JOB_ERROR | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
        scheduler.add_job(
            self.run_job,
            IntervalTrigger(
                seconds=self.settings.interval, jitter=self.settings.jitter or None, timezone=UTC
            ),
            id=JOB_ID,
            name="full run",
            next_run_time=datetime.now(UTC),
        )
        return scheduler

    def _install_signal_handlers(self) -> None:
        def request_stop(signum: int, _frame: FrameType | None) -> None:
            self.control.stop.set()  # flag only: the main thread does the work

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, request_stop)

    def serve(self) -> int:
        # APScheduler logs every run at INFO; our own "run finished" line already says it, with numbers.
        logging.getLogger("apscheduler").setLevel(
            logging.DEBUG if self.settings.log_level == "debug" else logging.WARNING
        )
        self._install_signal_handlers()
        server = self._start_http()
        scheduler = self._scheduler()
        scheduler.start()
        log.info(
            "partitiond started",
            interval=format_duration(self.settings.interval),
            runway=format_duration(self.settings.runway_seconds),
            schema=self.settings.schema,
            metrics=server.url if server else None,
        )
        tick = min(MAIN_LOOP_TICK, watchdog_interval() or MAIN_LOOP_TICK)
        while not self.control.stop.wait(tick):
            self.health.set_scheduler_alive(scheduler.running)
            self.health.beat()
            if self.health.live()[0]:
                notify("WATCHDOG=1")
        self._shutdown(scheduler, server)
        return 0

    def _start_http(self) -> HealthServer | None:
        if not self.settings.metrics_address:
            return None
        server = HealthServer(self.settings.metrics_address, self.metrics, self.health)
        server.start()
        return server

    def _shutdown(self, scheduler: BackgroundScheduler, server: HealthServer | None) -> None:
        """Stop within ``shutdown_timeout``: cancel the running query first, then let the job thread end."""
        log.info("stopping", timeout=format_duration(self.settings.shutdown_timeout))
        notify("STOPPING=1")
        self.control.cancel(timeout=self.settings.shutdown_timeout / 2)
        stopper = threading.Thread(target=scheduler.shutdown, kwargs={"wait": True}, daemon=True)
        stopper.start()
        stopper.join(self.settings.shutdown_timeout)
        if stopper.is_alive():
            log.error("job did not stop in time; exiting anyway", timeout=self.settings.shutdown_timeout)
        if server is not None:
            server.stop()
        log.info("stopped")


def serve(settings: Settings, env: Mapping[str, str], **kwargs: Any) -> int:
    return Daemon(settings, env, **kwargs).serve()
