"""docs/PII.md (issue 15 point 1): personal data never reaches the operator surfaces, and what
SIDECAR_REDACT_KEYS does and does not cover, checked on a real run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testkit.measure import wait_for
from testkit.process import DaemonProcess
from sidecar.cli import main
from sidecar.model import REDACTED
from sidecar.restore import restore
from sidecar.sync import run_sync

pytestmark = pytest.mark.integration

PLANT = "PLANTED-7f3a9c-learner-free-text"  # a value that must never leave MongoDB / the files
LEARNER = "L-pii-0001"
MENTORIX_REDACT = "password,pass,passwd,secret,token,api_key,authorization"


def write(root: Path, rel: str, data: bytes | str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def plant_everywhere(root: Path) -> None:
    """The planted value in every kind of file, in payloads, queries, free text, a value stored
    raw (int past int64 beside it) and a half-written file (bad input)."""
    hubs = {LEARNER: {"note": PLANT, "last_concept": "fractions"},
            **{f"L-pii-{i:04d}": {"note": f"{PLANT}-{i}"} for i in range(2, 6)}}
    write(root, "structured_hubs/learner_preferences.json", json.dumps(hubs, indent=2))
    write(root, "structured_hubs/operating_context.json", json.dumps({LEARNER: {"ctx": PLANT}}, indent=2))
    write(root, "structured_hubs/soft_identity.json",
          json.dumps({LEARNER: {"n": 2 ** 70, "s": PLANT}}, indent=2))  # stored raw
    write(root, "snapshot.json", json.dumps({"timestamp": "2026-02-21T05:29:24.762951",
                                             "active_runs": [{"learner_id": LEARNER, "q": PLANT}]}, indent=2))
    write(root, "episodes/skeleton_rp.json", json.dumps({"run_id": "rp", "query": PLANT, "status": "completed",
                                                         "updated_at": "2026-01-01T00:00:00"}, indent=2))
    write(root, "runs/run_rp.json", json.dumps({"run_id": "rp", "learner_id": LEARNER, "context": PLANT}))
    write(root, "scheduled_jobs.json", json.dumps([{"id": "j1", "payload": PLANT}], indent=2))
    write(root, "notes/free.txt", f"free text {PLANT}\n")


def test_planted_value_never_in_logs_metrics_status_parity_divergences_or_reports(
        data_dir, tmp_path, mongo_url, db_name, capsys):
    plant_everywhere(data_dir)
    cli = ["--data-dir", str(data_dir), "--mongodb-url", mongo_url, "--db-name", db_name]
    assert main(cli + ["sync"]) == 0
    outputs = {"first sync": capsys.readouterr()}
    # a removal nobody saw (held at the daemon's start) and a half-written file (bad input)
    write(data_dir, "structured_hubs/operating_context.json", "{\n  \"other\": {}\n}")
    write(data_dir, "runs/run_bad.json", '{"run_id": "bad", "context": "' + PLANT)
    proc = DaemonProcess(tmp_path, data_dir, mongo_url, db_name, SIDECAR_LOG_LEVEL="DEBUG",
                         SIDECAR_LOG_FORMAT="json", SIDECAR_TOKEN="tok-pii-test")
    try:
        proc.start()
        proc.wait_ready()
        # a live edit with a new planted value, seen by the watcher
        write(data_dir, "episodes/skeleton_rp.json", json.dumps({"run_id": "rp", "query": PLANT + "-2"}, indent=2))
        wait_for(lambda: (r := proc.get("/memory/status")) is not None and r.status == 200
                 and "runs/run_bad.json" in r.body.decode(), 20, what="the bad input in the status")

        def episode_updated():
            r = proc.get("/parity")
            return r is not None and r.status == 200 and r.json()["parity"].get("episodes_match")
        wait_for(episode_updated, 20, what="the live edit mirrored")
        for path in ("/metrics", "/parity", "/memory/status", "/divergences", "/healthz", "/readyz"):
            r = proc.get(path)
            assert r is not None and r.status == 200, path
            outputs[path] = r.body.decode()
        assert proc.terminate(30) == 0
    finally:
        proc.close()
    outputs["daemon log"] = proc.log_path.read_text()
    report = tmp_path / "report.json"
    for args in (["sync", "--report", str(report)], ["parity"], ["divergences"], ["restore", "--dry-run",
                 "--out", str(tmp_path / "r")], ["doctor"], ["config"],
                 ["archive", "--before", "2026-03-01", "--out", str(tmp_path / "a.jsonl.gz")]):
        main(cli + args)
        outputs[" ".join(args[:1])] = capsys.readouterr()
    outputs["report file"] = report.read_text()
    outputs["default report"] = (data_dir / "reports" / "memory_backfill_report.json").read_text()

    text = {name: (out if isinstance(out, str) else out.out + out.err) for name, out in outputs.items()}
    for name, body in text.items():
        assert PLANT not in body, f"the planted value appears in {name}"
    # what they do show: keys and paths (documented in docs/PII.md)
    assert LEARNER in text["/divergences"] and "structured_hubs/operating_context.json" in text["/divergences"]
    assert LEARNER in text["/parity"]  # the stored-raw entry's key
    assert "runs/run_bad.json" in text["/memory/status"]
    assert LEARNER not in text["/metrics"] and "run_bad" not in text["/metrics"]  # labels only
    assert '"level"' in text["daemon log"] and "DEBUG" in text["daemon log"]  # the log really was verbose


def test_mentorix_default_redaction_and_what_it_costs(data_dir, make_config, store, db, tmp_path):
    """SIDECAR_REDACT_KEYS set to Mentorix's list: those values never reach MongoDB (any collection,
    the events and tombstones included), parity holds, and restore writes the placeholder."""
    config = make_config(sidecar_redact_keys=MENTORIX_REDACT.split(","))
    hub = {LEARNER: {"password": PLANT, "nested": {"API_KEY": PLANT, "Authorization": PLANT, "kept": "ok"},
                     "passphrase": "not a listed key"}}
    write(data_dir, "structured_hubs/learner_preferences.json", json.dumps(hub, indent=2))
    write(data_dir, "episodes/skeleton_r1.json", json.dumps({"run_id": "r1", "token": PLANT}, indent=2))
    write(data_dir, "runs/run_r1.json", json.dumps({"run_id": "r1", "secret": PLANT, "pass": PLANT}))
    report, code = run_sync(config, store)
    assert code == 0 and report["parity"]["all_match"] is True
    doc = db.memory_hubs.find_one({"item_key": LEARNER})
    assert doc["payload"] == {"password": REDACTED, "nested": {"API_KEY": REDACTED, "Authorization": REDACTED,
                                                               "kept": "ok"}, "passphrase": "not a listed key"}
    # a removal puts the (redacted) document into the tombstones: still nothing to find
    write(data_dir, "structured_hubs/learner_preferences.json", json.dumps({"other": {}}, indent=2))
    from sidecar.sync import run_divergences
    run_divergences(config, store, accept_all=True)
    assert db.memory_tombstones.count_documents({"coll": "memory_hubs"}) == 1
    dump = json.dumps([list(db[n].find()) for n in db.list_collection_names()], default=str)
    assert PLANT not in dump
    # the cost: those values cannot be restored; the files get the placeholder
    out = tmp_path / "restored"
    restore(store, out, include_deleted=True)
    assert json.loads((out / "structured_hubs" / "learner_preferences.json").read_text())[LEARNER][
        "password"] == REDACTED
    assert json.loads((out / "episodes" / "skeleton_r1.json").read_text())["token"] == REDACTED
    assert json.loads((out / "runs" / "run_r1.json").read_text()) == {"run_id": "r1", "secret": REDACTED,
                                                                      "pass": REDACTED}


def test_redaction_does_not_reach_bytes_kept_verbatim(data_dir, make_config, store, db):
    """The documented limit: content kept as bytes (a non-JSON file, JSON that BSON cannot hold,
    a file over 8 MB in GridFS) is stored as it is, so SIDECAR_REDACT_KEYS cannot redact it."""
    config = make_config(sidecar_redact_keys=["password"])
    write(data_dir, "notes/free.txt", f'password="{PLANT}"\n')
    write(data_dir, "runs/run_big.json", json.dumps({"password": PLANT, "fill": "x" * (9 << 20)}))
    report, code = run_sync(config, store)
    assert code == 0
    man = db.memory_files.find_one({"_id": "notes/free.txt"})
    assert PLANT.encode() in bytes(man["raw"])
    big = db.memory_files.find_one({"_id": "runs/run_big.json"})
    assert big["encoding"] == "gridfs"
    assert PLANT.encode() in store.read_blob(big["blob_id"])
