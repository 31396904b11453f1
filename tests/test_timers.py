"""sidecar/timers.py: the daemon and ``sync`` time their own stages; operators and
benchmarks read the same figures (``/memory/status`` ``stages``, ``/metrics``
``sidecar_stage_seconds``, the sync report's ``stages``)."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from testkit.measure import wait_for
from sidecar.sync import run_sync
from sidecar.timers import STAGES, Timers


def test_counts_totals_and_longest_per_stage():
    t = Timers()
    t.observe("flush", 0.010)
    t.observe("flush", 0.030)
    with t.time("plan"):
        pass
    snap = t.snapshot()
    assert snap["flush"] == {"calls": 2, "total_s": 0.04, "max_ms": 30.0}
    assert snap["plan"]["calls"] == 1 and snap["plan"]["total_s"] >= 0
    assert set(snap) == {"flush", "plan"}


def test_a_stage_that_raised_is_still_timed():
    t = Timers()
    with pytest.raises(RuntimeError):
        with t.time("write"):
            raise RuntimeError("boom")
    assert t.snapshot()["write"]["calls"] == 1


def test_unknown_stage_is_refused_so_metric_labels_stay_a_fixed_set():
    with pytest.raises(ValueError, match="unknown stage"):
        Timers().observe("payload-value", 1.0)


def test_histogram_in_the_registry():
    registry = CollectorRegistry()
    t = Timers(registry)
    t.observe("events", 0.002)
    text = generate_latest(registry).decode()
    assert 'sidecar_stage_seconds_count{stage="events"} 1.0' in text
    assert all(name.replace("_", "").replace(".", "").isalnum() for name in STAGES)


@pytest.mark.integration
def test_sync_report_says_where_its_time_went(legacy_dir, config, store):
    report, code = run_sync(config, store)
    assert code == 0
    stages = report["stages"]
    assert {"ensure_indexes", "load_state", "scan", "write", "events", "report"} <= set(stages)
    assert all(row["calls"] == 1 for row in stages.values())
    json.dumps(stages)  # goes into the report file as it is


@pytest.mark.integration
def test_daemon_status_and_metrics_show_its_stages(running):
    d = running()
    (d.config.data_dir / "structured_hubs").mkdir(parents=True, exist_ok=True)
    (d.config.data_dir / "structured_hubs" / "learner_preferences.json").write_text('{"a": {"x": 1}}')
    stages = wait_for(lambda: (d.get("/memory/status").json()["sidecar"].get("stages") or {}).get("flush"),
                      10, what="a flush timed")
    assert stages["calls"] >= 1
    snap = d.get("/memory/status").json()["sidecar"]["stages"]
    assert {"reconcile", "plan", "write", "queue_wait"} <= set(snap)
    assert snap["write.memory_hubs"]["calls"] >= 1
    assert 'sidecar_stage_seconds_count{stage="flush"}' in d.get("/metrics").body.decode()
