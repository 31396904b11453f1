"""sidecar/parityscan.py: /parity's full scan in a short-lived child process."""

from __future__ import annotations

import json

import pytest

from testkit.measure import free_port
from sidecar import parityscan
from sidecar.store import MongoUnavailable
from sidecar.sync import run_sync

pytestmark = pytest.mark.integration


def test_the_child_reports_what_the_daemon_would(data_dir, config, store, db):
    (data_dir / "episodes").mkdir()
    for i in range(3):
        (data_dir / "episodes" / f"skeleton_r{i}.json").write_text(json.dumps({"run_id": f"r{i}"}, indent=2))
    (data_dir / "scheduled_jobs.json").write_text(json.dumps([{"id": "j"}], indent=2))
    run_sync(config, store)
    db.episodic_memory.delete_one({"_id": "r1"})  # one mismatch, so the report has something to say
    in_process = parityscan.compute(config, set())
    child = parityscan.in_child(config, set())
    assert child == in_process
    assert child["parity"]["all_match"] is False
    assert child["kinds"]["episodes"]["missing"]["keys"] == ["r1"]
    assert child["kinds"]["episodes"]["mismatch"] == 1
    # The daemon's pending paths travel to the child: a queued file is "pending", not a mismatch.
    queued = parityscan.in_child(config, {"episodes/skeleton_r1.json"})
    assert (queued["kinds"]["episodes"]["pending"], queued["kinds"]["episodes"]["mismatch"]) == (1, 0)


def test_mongodb_away_is_mongo_unavailable_without_the_credentials(make_config):
    password = "pw-not-to-be-seen"
    config = make_config(mongodb_url=f"mongodb://user:{password}@127.0.0.1:{free_port()}/?directConnection=true",
                         sidecar_server_selection_timeout_ms=300)
    with pytest.raises(MongoUnavailable) as err:
        parityscan.in_child(config, None)
    assert password not in str(err.value)


def test_a_child_that_cannot_run_is_reported_as_such(config, monkeypatch):
    monkeypatch.setattr(parityscan.sys, "executable", "/nonexistent/python")
    with pytest.raises(parityscan.ChildFailed):
        parityscan.in_child(config, None)


def test_in_process_fallback_reuses_the_given_store_and_leaves_it_open(data_dir, config, store):
    (data_dir / "scheduled_jobs.json").write_text(json.dumps([{"id": "j"}], indent=2))
    run_sync(config, store)
    report = parityscan.compute(config, set(), store)
    assert report["parity"]["all_match"] is True
    store.ping()  # still usable: the daemon's client is not closed by its fallback
