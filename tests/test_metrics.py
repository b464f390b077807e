"""Metrics exposition over real HTTP, originator series lifecycle, textfile writing and the HTTP server."""

from __future__ import annotations

import os
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from partitiond import __version__
from partitiond.health import HealthState
from partitiond.metrics import HealthServer, Metrics, parse_address


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def server(metrics: Metrics) -> Iterator[HealthServer]:
    srv = HealthServer("127.0.0.1:0", metrics, HealthState(stuck_after=60))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def scrape(server: HealthServer) -> dict[str, float]:
    """Fetch /metrics and index every sample as 'name{k="v",...}' -> value."""
    with urllib.request.urlopen(server.url + "/metrics", timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}"] = s.value
    return samples


def test_metrics_exposition_after_recording(metrics: Metrics, server: HealthServer) -> None:
    metrics.runs.labels(result="success").inc()
    metrics.run_duration.observe(1.5)
    metrics.partitions_created.labels(table="meta", level="l2").inc(3)
    metrics.ensure_failures.labels(reason="lock_timeout").inc()
    metrics.lock_wait.observe(0.02)
    metrics.last_success.set(1_700_000_000)
    metrics.cold_path.labels(originator="7").inc()
    metrics.probes.labels(result="ok").inc()
    metrics.connect_failures.inc()
    metrics.set_leader(True)
    metrics.set_noop("follower")

    got = scrape(server)
    assert got['partitiond_runs_total{result="success"}'] == 1
    assert got['partitiond_runs_total{result="failed"}'] == 0, "closed label sets start at zero"
    assert got["partitiond_run_duration_seconds_count{}"] == 1
    assert got['partitiond_run_duration_seconds_bucket{le="2.5"}'] == 1
    assert got['partitiond_partitions_created_total{level="l2",table="meta"}'] == 3
    assert got['partitiond_partitions_created_total{level="l1",table="blob"}'] == 0
    assert got['partitiond_ensure_failures_total{reason="lock_timeout"}'] == 1
    assert got['partitiond_lock_wait_seconds_bucket{le="0.025"}'] == 1
    assert got["partitiond_last_success_timestamp_seconds{}"] == 1_700_000_000
    assert got['partitiond_cold_path_suspicions_total{originator="7"}'] == 1
    assert got['partitiond_probes_total{result="ok"}'] == 1
    assert got["partitiond_db_connect_failures_total{}"] == 1
    assert got["partitiond_leader{}"] == 1
    assert got['partitiond_noop{reason="follower"}'] == 1
    assert got['partitiond_noop{reason="standby"}'] == 0
    assert got[f'partitiond_build_info{{version="{__version__}"}}'] == 1


def test_naming_conventions(metrics: Metrics, server: HealthServer) -> None:
    metrics.cold_path.labels(originator="1").inc()
    metrics.probes.labels(result="ok").inc()
    with urllib.request.urlopen(server.url + "/metrics", timeout=5) as resp:
        families = list(text_string_to_metric_families(resp.read().decode()))
    for family in families:
        for s in family.samples:
            assert s.name.startswith("partitiond_"), s.name
            assert not s.name.endswith("_created"), "_created series are disabled"
            if family.type == "counter":
                assert s.name.endswith("_total"), s.name


def test_originator_gauges_update_and_disappear(metrics: Metrics, server: HealthServer) -> None:
    metrics.set_originator(1, position=100, headroom=900, fill=0.1, seconds_to_exhaustion=3600.0)
    metrics.set_originator(2, position=5, headroom=10, fill=0.5, seconds_to_exhaustion=60.0)
    got = scrape(server)
    assert got['partitiond_originator_position{originator="1"}'] == 100
    assert got['partitiond_originator_headroom_ids{originator="1"}'] == 900
    assert got['partitiond_originator_fill_ratio{originator="2"}'] == 0.5
    assert got['partitiond_originator_seconds_to_exhaustion{originator="2"}'] == 60

    metrics.set_originator(1, position=200, headroom=800, fill=0.2, seconds_to_exhaustion=1800.0)
    metrics.forget_originators(keep=[1])
    got = scrape(server)
    assert got['partitiond_originator_position{originator="1"}'] == 200
    assert got['partitiond_originator_seconds_to_exhaustion{originator="1"}'] == 1800
    assert not [k for k in got if 'originator="2"' in k and "originator_" in k]

    metrics.forget_originators(keep=[])
    assert not [k for k in scrape(server) if k.startswith("partitiond_originator_")]


def test_unknown_forecast_removes_series(metrics: Metrics, server: HealthServer) -> None:
    metrics.set_originator(3, position=10, headroom=90, fill=0.1, seconds_to_exhaustion=120.0)
    metrics.set_originator(3, position=None, headroom=90, fill=0.1, seconds_to_exhaustion=None)
    got = scrape(server)
    assert 'partitiond_originator_seconds_to_exhaustion{originator="3"}' not in got
    assert 'partitiond_originator_position{originator="3"}' not in got
    assert got['partitiond_originator_headroom_ids{originator="3"}'] == 90
    assert all(v == v for v in got.values()), "no NaN anywhere"


def test_noop_reason_is_exclusive_and_validated(metrics: Metrics) -> None:
    metrics.set_noop("standby")
    metrics.set_noop(None)
    text = metrics.render().decode()
    assert 'partitiond_noop{reason="standby"} 0.0' in text
    with pytest.raises(ValueError, match="no-op reason"):
        metrics.set_noop("sleepy")


def test_metric_names_cover_alertable_series(metrics: Metrics) -> None:
    names = metrics.metric_names()
    expected = {
        "partitiond_runs_total",
        "partitiond_originator_headroom_ids",
        "partitiond_originator_seconds_to_exhaustion",
        "partitiond_cold_path_suspicions_total",
        "partitiond_probes_total",
        "partitiond_run_duration_seconds_bucket",
        "partitiond_lock_wait_seconds_count",
        "partitiond_last_success_timestamp_seconds",
        "partitiond_build_info",
        "partitiond_noop",
        "partitiond_leader",
    }
    assert expected <= names
    assert "partitiond_runs" not in names, "family names without a sample suffix are not sample names"


def test_registries_are_independent() -> None:
    a, b = Metrics(), Metrics()
    a.runs.labels(result="success").inc()
    assert 'partitiond_runs_total{result="success"} 0.0' in b.render().decode()


def test_write_textfile_is_parseable(metrics: Metrics, tmp_path: Path) -> None:
    metrics.runs.labels(result="success").inc()
    target = tmp_path / "partitiond.prom"
    metrics.write_textfile(target)
    metrics.write_textfile(target)  # overwriting an existing file works too
    names = {f.name for f in text_string_to_metric_families(target.read_text())}
    assert "partitiond_runs" in names
    assert os.listdir(tmp_path) == ["partitiond.prom"]
    assert target.stat().st_mode & 0o777 == 0o644, "node-exporter usually runs as another user"


def test_write_textfile_failure_leaves_nothing(
    metrics: Metrics, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(src: str, dst: Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        metrics.write_textfile(tmp_path / "partitiond.prom")
    assert os.listdir(tmp_path) == []


def test_write_textfile_failure_keeps_previous_file(
    metrics: Metrics, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "partitiond.prom"
    metrics.write_textfile(target)
    before = target.read_bytes()
    metrics.runs.labels(result="failed").inc()

    def boom(fd: int) -> None:
        raise OSError("io error")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="io error"):
        metrics.write_textfile(target)
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["partitiond.prom"]


def test_write_textfile_requires_prom_suffix(metrics: Metrics, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.prom"):
        metrics.write_textfile(tmp_path / "partitiond.txt")
    with pytest.raises(FileNotFoundError):
        metrics.write_textfile(tmp_path / "missing-dir" / "partitiond.prom")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:9187", ("127.0.0.1", 9187)),
        (":9187", ("0.0.0.0", 9187)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:9187", ("::1", 9187)),
    ],
)
def test_parse_address(address: str, expected: tuple[str, int]) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize("address", ["9187", "host:", "host:port", "host:70000", "::1:9187", "", "h:-1"])
def test_bad_address_names_it(address: str) -> None:
    with pytest.raises(ValueError, match="invalid listen address") as info:
        HealthServer(address, Metrics(), HealthState(stuck_after=60))
    assert repr(address) in str(info.value)


def test_server_lifecycle(metrics: Metrics) -> None:
    srv = HealthServer("127.0.0.1:0", metrics, HealthState(stuck_after=60))
    with pytest.raises(RuntimeError):
        _ = srv.port
    srv.start()
    port = srv.port
    assert port > 0
    assert srv.url == f"http://127.0.0.1:{port}"
    with urllib.request.urlopen(srv.url + "/metrics", timeout=5) as resp:
        assert b"partitiond_runs_total" in resp.read()
    started = time.monotonic()
    srv.stop()
    assert time.monotonic() - started < 2
    srv.stop()  # idempotent
    with socket.socket() as probe:  # the port is released: we can bind it ourselves
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))
