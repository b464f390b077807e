"""Turns a pass report into metric updates (the daemon's /metrics and run-once's textfile alike)."""

from __future__ import annotations

from partitiond.metrics import RUN_RESULTS, Metrics
from partitiond.pipeline import PassReport

NOOP_RESULTS = {"standby": "standby", "follower": "follower"}


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
        for status in report.statuses:
            metrics.set_originator(
                status.originator, status.position, status.headroom, status.fill, status.seconds_to_exhaustion
            )
        metrics.forget_originators(keep=[s.originator for s in report.statuses])
