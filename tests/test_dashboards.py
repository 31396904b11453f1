"""The Grafana dashboard (deploy/grafana/memory-sidecar.json): importable, and every
panel reads only metrics a running daemon really exports, in valid PromQL (promtool).

promtool comes from Debian's `prometheus` package (`make tools`); the PromQL check
skips with a message where it is missing. The metric-name check needs no tool.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from promql_helpers import (
    check_exprs, exported_series, grafana_to_promql, metric_refs, scrape_after_activity, series_problems,
)

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "memory-sidecar.json"


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(dash: dict) -> list[dict]:
    out = []
    for panel in dash["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows hold their panels
    return out


def _exprs(dash: dict) -> dict[str, str]:
    """{"<panel title> / <refId>": PromQL} of every panel target."""
    return {f"{p['title']} / {t['refId']}": t["expr"] for p in _panels(dash) for t in p.get("targets", [])}


def _variable_queries(dash: dict) -> dict[str, str]:
    """The metric selectors inside the query variables' label_values(...)."""
    out = {}
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
            assert m, f"variable {var['name']}: unexpected query {query!r}"
            out[f"variable {var['name']}"] = m.group(1)
    return out


# --------------------------------------------------------------------------- importable


def test_dashboard_is_importable_with_the_datasource_as_a_variable(dashboard):
    assert dashboard["title"] and dashboard["uid"] and len(dashboard["uid"]) <= 40
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    assert "id" not in dashboard or dashboard["id"] is None  # an export with an id overwrites another dashboard
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    # nothing bound to one Grafana's data source uid
    text = DASHBOARD.read_text()
    uids = set(re.findall(r'"uid":\s*"([^"]*)"', text)) - {dashboard["uid"], "-- Grafana --"}
    assert uids == {"${datasource}"}, uids
    for panel in _panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert re.search(r'job=~"\$job", instance=~"\$instance"', target["expr"]), \
                f"{panel['title']}: not filtered by the job/instance variables"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_panel_ids_unique_and_grid_without_overlap(dashboard):
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]


REQUIRED = {  # what issue 14 asks the dashboard to show -> a metric that shows it
    "mirror throughput": "sidecar_writes_total",
    "errors by kind": "sidecar_errors_total",
    "lag": "sidecar_lag_seconds",
    "pending": "sidecar_pending_changes",
    "bulk-write latency quantiles": "sidecar_bulk_write_seconds_bucket",
    "readiness": "sidecar_ready",
    "MongoDB up": "sidecar_mongo_up",
    "shim outcomes": "sidecar_shim_events_total",
    "divergences": "sidecar_divergences_held",
}


def test_dashboard_covers_what_the_operator_needs(dashboard):
    read = {ref.name: ref for expr in _exprs(dashboard).values() for ref in metric_refs(expr)}
    missing = {topic: name for topic, name in REQUIRED.items() if name not in read}
    assert not missing, missing
    quantiles = [e for e in _exprs(dashboard).values() if "histogram_quantile" in e]
    assert {re.search(r"histogram_quantile\(([\d.]+)", e).group(1) for e in quantiles} >= {"0.5", "0.9", "0.99"}
    assert all("by (le)" in e for e in quantiles)


# --------------------------------------------------------------------------- against a daemon


@pytest.mark.integration
def test_every_panel_reads_only_exported_metrics(dashboard, running, data_dir):
    exported = exported_series(scrape_after_activity(running(), data_dir))
    problems = {}
    for where, expr in {**_exprs(dashboard), **_variable_queries(dashboard)}.items():
        refs = metric_refs(grafana_to_promql(expr))
        assert refs, f"{where}: reads no metric"
        bad = series_problems(refs, exported)
        if bad:
            problems[where] = bad
    assert not problems, json.dumps(problems, indent=2)


def test_the_name_check_catches_a_wrong_name_a_bare_counter_and_a_rated_gauge():
    """The check above can fail: a renamed metric, a counter without rate(), a gauge in rate()."""
    exported = {"sidecar_writes_total": "counter", "sidecar_lag_seconds": "gauge",
                "sidecar_bulk_write_seconds_bucket": "histogram"}
    assert series_problems(metric_refs("rate(sidecar_writes_total[5m])"), exported) == []
    assert series_problems(metric_refs("rate(sidecar_write_total[5m])"), exported) == [
        "sidecar_write_total is not exported by the daemon"]
    assert series_problems(metric_refs("sum(sidecar_writes_total)"), exported) == [
        "sidecar_writes_total (counter) read without rate()/increase()"]
    assert series_problems(metric_refs("rate(sidecar_lag_seconds[5m])"), exported) == [
        "sidecar_lag_seconds (gauge) inside ['rate']"]
    assert series_problems(metric_refs("sum(rate(sidecar_bulk_write_seconds_bucket[5m]))"), exported) == [
        "sidecar_bulk_write_seconds_bucket: buckets outside histogram_quantile()"]
    # label names, functions, strings and durations are not metric names
    refs = metric_refs('histogram_quantile(0.9, sum by (le) (rate(m_bucket{job=~"x_total"}[$__rate_interval])))')
    assert [(r.name, r.functions) for r in refs] == [("m_bucket", ("histogram_quantile", "sum", "rate"))]


# --------------------------------------------------------------------------- PromQL


def test_every_panel_expression_is_valid_promql(dashboard, tmp_path):
    exprs = {where: grafana_to_promql(e) for where, e in {**_exprs(dashboard), **_variable_queries(dashboard)}.items()}
    proc = check_exprs(exprs, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in proc.stdout


def test_promtool_rejects_invalid_promql(tmp_path):
    """The PromQL check can fail (a missing parenthesis, a range on an instant vector expression)."""
    for bad in ("sum(rate(sidecar_writes_total[5m])", "rate(sum(sidecar_writes_total)[5m])"):
        proc = check_exprs({"bad": bad}, tmp_path)
        assert proc.returncode != 0, bad
