"""HealthState rules and the /healthz, /readyz endpoints, driven by a fake clock over real HTTP."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from partitiond.health import HealthState
from partitiond.metrics import HealthServer, Metrics

STUCK_AFTER = 3600.0


class FakeClock:
    """A monotonic clock the test moves by hand, so stuck detection needs no sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def health(clock: FakeClock) -> HealthState:
    return HealthState(stuck_after=STUCK_AFTER, clock=clock)


@pytest.fixture
def server(health: HealthState) -> Iterator[HealthServer]:
    srv = HealthServer("127.0.0.1:0", Metrics(), health)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def get(server: HealthServer, path: str) -> tuple[int, str]:
    """GET a path and return (status, body) for success and error statuses alike."""
    try:
        with urllib.request.urlopen(server.url + path, timeout=5) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read().decode()


def test_rejects_non_positive_stuck_after() -> None:
    with pytest.raises(ValueError, match="stuck_after"):
        HealthState(stuck_after=0)


def test_before_first_run_live_but_not_ready(server: HealthServer) -> None:
    assert get(server, "/healthz") == (200, "ok\n")
    status, body = get(server, "/readyz")
    assert status == 503
    assert "no run has completed yet" in body


def test_after_success_ready(server: HealthServer, health: HealthState) -> None:
    health.job_started()
    health.job_finished(ok=True)
    assert get(server, "/healthz") == (200, "ok\n")
    assert get(server, "/readyz") == (200, "ok\n")


def test_failed_run_not_ready_but_live(server: HealthServer, health: HealthState) -> None:
    health.job_started()
    health.job_finished(ok=True)
    health.job_started()
    health.job_finished(ok=False)
    assert get(server, "/healthz") == (200, "ok\n")
    status, body = get(server, "/readyz")
    assert (status, body) == (503, "last run failed\n")
    health.job_started()
    health.job_finished(ok=True)
    assert get(server, "/readyz") == (200, "ok\n")


def test_job_stuck_past_threshold_fails_liveness(
    server: HealthServer, health: HealthState, clock: FakeClock
) -> None:
    health.job_started()
    clock.advance(STUCK_AFTER - 1)
    health.beat()  # the main loop still beats: a wedged job must fail liveness on its own
    assert get(server, "/healthz") == (200, "ok\n")
    clock.advance(2)
    health.beat()
    status, body = get(server, "/healthz")
    assert status == 503
    assert "job running for" in body
    assert get(server, "/readyz")[0] == 503, "a process that is not live is not ready"
    health.job_finished(ok=True)
    assert get(server, "/healthz") == (200, "ok\n")


def test_missing_heartbeat_fails_liveness(
    server: HealthServer, health: HealthState, clock: FakeClock
) -> None:
    clock.advance(STUCK_AFTER + 1)
    status, body = get(server, "/healthz")
    assert status == 503
    assert "no heartbeat" in body
    health.beat()
    assert get(server, "/healthz") == (200, "ok\n")


def test_standby_and_follower_are_ready(server: HealthServer, health: HealthState) -> None:
    health.set_standby("standby")
    assert get(server, "/readyz") == (200, "ok\n")
    assert health.ready() == (True, "ok (standby)")
    health.set_standby("follower")
    assert health.ready() == (True, "ok (follower)")
    health.set_standby(None)
    assert get(server, "/readyz")[0] == 503


def test_standby_still_needs_liveness(health: HealthState, clock: FakeClock) -> None:
    health.set_standby("standby")
    clock.advance(STUCK_AFTER + 1)
    ok, reason = health.ready()
    assert not ok
    assert "no heartbeat" in reason


def test_dead_scheduler_fails_liveness(server: HealthServer, health: HealthState) -> None:
    health.job_started()
    health.job_finished(ok=True)
    health.set_scheduler_alive(False)
    assert get(server, "/healthz") == (503, "scheduler is not running\n")
    assert get(server, "/readyz")[0] == 503
    health.set_scheduler_alive(True)
    assert get(server, "/healthz") == (200, "ok\n")


def test_unknown_paths_are_404(server: HealthServer) -> None:
    for path in ("/", "/health", "/healthz/extra", "/metricsx"):
        assert get(server, path)[0] == 404, path


def test_probes_reject_other_methods(server: HealthServer) -> None:
    req = urllib.request.Request(server.url + "/healthz", method="POST", data=b"")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=5)
    assert info.value.code == 405
    info.value.close()
