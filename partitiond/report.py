"""Turns a pass report into metric updates (the daemon's /metrics and run-once's textfile alike)."""

from __future__ import annotations

import time

from partitiond.metrics import RUN_RESULTS, Metrics
from partitiond.pipeline import PassReport

NOOP_RESULTS = {"standby": "standby", "follower": "follower"}
# Results only a pass that held the leader lease can have (a pass without it ends as "follower").
LEADER_RESULTS = frozenset({"success", "partial"})


def record(metrics: Metrics, report: PassReport) -> None:
    """Record one pass: result, duration, creations, failures, lock waits and per-originator runway."""
    result = report.result if report.result in RUN_RESULTS else "skipped"
    if report.kind == "probe":
        metrics.probes.labels(result=result).inc()
    else:
        metrics.runs.labels(result=result).inc()
        metrics.run_duration.observe(report.duration)
        if report.result == "success":
            metrics.last_success.set_to_current_time()
    metrics.set_noop(NOOP_RESULTS.get(report.result))
    record_leadership(metrics, report.result)
    has_rows = (
        {s.originator for s in report.plan.statuses if s.position is not None} if report.plan else set()
    )
    for outcome in report.outcomes:
        metrics.lock_wait.observe(outcome.lock_wait)
        for reason in outcome.deferrals:
            metrics.deferrals.labels(reason=reason).inc()
        for hold in outcome.holds:
            metrics.key5_hold.observe(hold)
        for step, seconds in outcome.steps.items():
            metrics.key5_hold_step.labels(step=step).observe(seconds)
        if outcome.status == "failed":
            metrics.ensure_failures.labels(reason=outcome.failure or "other").inc()
        elif outcome.status == "created":
            for table in ("meta", "blob"):
                metrics.partitions_created.labels(table=table, level="l2").inc()
            if outcome.planned.kind == "repair" and outcome.planned.originator in has_rows:
                # The band holding a stored position was missing: inserts had to (or will) take the cold path.
                metrics.cold_path.labels(originator=str(outcome.planned.originator)).inc()
    for table in ("meta", "blob"):
        metrics.partitions_created.labels(table=table, level="l1").inc(report.new_l1)
    if report.plan is not None:
        record_runway(metrics, report, time.monotonic())


def record_leadership(metrics: Metrics, result: str) -> None:
    """What the pass's result proves about leadership.

    The daemon sets ``partitiond_leader`` from its lease before each pass; run-once has no lease gauge of
    its own, and its textfile must not say "no leader" after a pass that did the leader's work.  A failed
    or standby pass proves nothing, so it leaves the gauge as it was.
    """
    if result in LEADER_RESULTS:
        metrics.set_leader(True)
        metrics.last_leader_pass.set_to_current_time()
    elif result == "follower":
        metrics.set_leader(False)


def record_runway(metrics: Metrics, report: PassReport, now: float) -> None:
    """Per-originator runway: the planner's conservative forecast and the steady one alerts use."""
    for status in report.statuses:
        steady = None
        if status.position is not None:
            rate = metrics.steady_rates.observe(status.originator, now, status.position)
            steady = rate.seconds_until(status.position, status.position + status.headroom)
        metrics.set_originator(
            status.originator,
            status.position,
            status.headroom,
            status.fill,
            status.seconds_to_exhaustion,
            steady_seconds_to_exhaustion=steady,
        )
    metrics.forget_originators(keep=[s.originator for s in report.statuses])
