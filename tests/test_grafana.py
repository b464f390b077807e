"""deploy/grafana/partitiond.json: a well-formed dashboard whose queries name only metrics partitiond exports.

"Exports" is taken from a real ``partitiond run`` against the test database, scraped until every metric the
dashboard names has a sample, so a metric renamed or dropped in partitiond/metrics.py fails here rather
than leaving an empty panel.  The PromQL itself is parsed by the real ``promtool`` where it is installed
(``make tools``), with Grafana's variables replaced by values.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from partitiond.cluster import free_port

from .pgtools import Conn, seed_rows
from .test_daemon import scrape_until, start_daemon
from .test_deploy import REPO, metric_names_in

DASHBOARD = REPO / "deploy" / "grafana" / "partitiond.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
GRID_COLUMNS = 24
# Grafana's own variables, and a value each for promtool's parse.
BUILTIN_VARIABLES = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}
# What the dashboard is for: each of these must be on it.
REQUIRED_METRICS = {
    "partitiond_originator_seconds_to_exhaustion",
    "partitiond_originator_headroom_ids",
    "partitiond_partitions_created_total",
    "partitiond_band_deferrals_total",
    "partitiond_ensure_failures_total",
    "partitiond_key5_hold_seconds_bucket",
    "partitiond_lock_wait_seconds_bucket",
    "partitiond_last_success_timestamp_seconds",
    "partitiond_leader",
    "partitiond_probes_total",
}


def dashboard() -> dict[str, Any]:
    doc = json.loads(DASHBOARD.read_text())
    assert isinstance(doc, dict)
    return doc


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def queries(doc: dict[str, Any]) -> list[str]:
    """Every PromQL text: panel targets and query variables."""
    exprs = [t["expr"] for p in all_panels(doc["panels"]) for t in p.get("targets", [])]
    for var in doc["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(var["query"]["query"] if isinstance(var["query"], dict) else var["query"])
    return exprs


def test_the_dashboard_is_well_formed() -> None:
    doc = dashboard()
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", doc["uid"]) and doc["title"]
    assert isinstance(doc["schemaVersion"], int) and doc["schemaVersion"] >= 36
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = list(all_panels(doc["panels"]))
    ids = [p["id"] for p in panels]
    assert all(isinstance(i, int) for i in ids) and len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert panel["title"], panel["id"]
        assert_grid(panel)
        if panel["type"] != "row":
            assert_targets(panel)
    assert_no_overlap(panels)


def assert_grid(panel: dict[str, Any]) -> None:
    grid = panel["gridPos"]
    assert all(isinstance(grid[k], int) for k in ("h", "w", "x", "y")), panel["title"]
    assert grid["h"] > 0 and grid["w"] > 0 and grid["x"] >= 0 and grid["y"] >= 0, panel["title"]
    assert grid["x"] + grid["w"] <= GRID_COLUMNS, f"{panel['title']} is wider than the grid"


def assert_targets(panel: dict[str, Any]) -> None:
    assert panel["datasource"] == DATASOURCE, f"{panel['title']}: use the datasource variable"
    targets = panel["targets"]
    assert targets, f"{panel['title']} has no query"
    assert len({t["refId"] for t in targets}) == len(targets), f"{panel['title']}: duplicate refId"
    for target in targets:
        assert target["datasource"] == DATASOURCE, panel["title"]
        assert isinstance(target["expr"], str) and metric_names_in(target["expr"]), panel["title"]


def assert_no_overlap(panels: list[dict[str, Any]]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_the_dashboard_shows_what_operators_need() -> None:
    used = set().union(*(metric_names_in(e) for e in queries(dashboard())))
    missing = REQUIRED_METRICS - used
    assert not missing, f"not on the dashboard: {sorted(missing)}"


def test_every_variable_a_query_uses_is_defined() -> None:
    doc = dashboard()
    defined = {v["name"] for v in doc["templating"]["list"]} | set(BUILTIN_VARIABLES)
    for expr in queries(doc):
        used = set(re.findall(r"\$\{?(\w+)", expr))
        assert used <= defined, f"undefined variables {sorted(used - defined)} in {expr}"


def promql(expr: str, variables: list[dict[str, Any]]) -> str:
    """The query as Prometheus would get it from Grafana: variables replaced by values ("All" for ours)."""
    values = {**BUILTIN_VARIABLES, **{v["name"]: v.get("allValue", "") for v in variables}}
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], expr)


def promtool() -> str | None:
    local = Path(sys.prefix) / "tools" / "promtool"  # fetched by `make tools` (part of `make test`)
    return str(local) if local.is_file() else None


def test_every_query_parses_as_promql(tmp_path: Path) -> None:
    """promtool parses each panel query, as recording rules of a throwaway rule file."""
    binary = promtool()
    if binary is None:
        assert not os.environ.get("CI"), "CI must run promtool: `make test` fetches it with `make tools`"
        warnings.warn("promtool not installed (run `make tools`): PromQL not parsed", stacklevel=1)
        return
    doc = dashboard()
    exprs = [e for e in queries(doc) if not e.startswith("label_values(")]
    variables = doc["templating"]["list"]
    rules = [{"record": f"dashboard:query{i}", "expr": promql(e, variables)} for i, e in enumerate(exprs)]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = subprocess.run(
        [binary, "check", "rules", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, f"promtool check rules:\n{proc.stdout}{proc.stderr}"


@pytest.mark.slow
def test_a_running_daemon_exports_every_metric_the_dashboard_uses(conn: Conn, db_dsn: str) -> None:
    """Scrape `partitiond run` against PostgreSQL until every metric a panel or variable names has a sample.

    Originator 900 has rows (forecast, fill, headroom); 700's vector clock points into a missing band, a
    repair of a band holding rows (a cold-path suspicion); probes run every second between 3 s runs.
    """
    seed_rows(conn, 900, [800_000])
    conn.execute(
        "INSERT INTO gateway_envelopes_latest (originator_node_id, originator_sequence_id, gateway_time)"
        " VALUES (700, 5500000, now())"
    )
    wanted = set().union(*(metric_names_in(e) for e in queries(dashboard())))
    port = free_port()
    env = {
        "PARTITIOND_METRICS_ADDRESS": f"127.0.0.1:{port}",
        "PARTITIOND_INTERVAL": "3s",
        "PARTITIOND_JITTER": "0",
        "PARTITIOND_PROBE_INTERVAL": "1s",
    }
    proc = start_daemon(db_dsn, env=env)
    try:
        scrape_until(port, wanted, 60, "every dashboard metric in the scrape")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        proc.kill()
        proc.communicate()
