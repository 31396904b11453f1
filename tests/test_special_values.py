"""Every file the legacy writer can produce round-trips (DESIGN §5, round trip).

``json.dumps`` writes ``NaN``/``Infinity``/``-Infinity`` by default: they are
stored as BSON doubles (queryable) and restored byte for byte. What BSON cannot
hold (ints past int64, ``$``/``.`` keys, deep nesting) and layouts ``json.dumps``
would not write (``1e400``, ``1E5``, odd spacing, duplicate keys) are kept
verbatim ("stored raw"), reported by path and key (never the value), and
restored byte for byte too. Real files, the test server, ``run_sync`` and
``restore``; a daemon test at the end.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
from testkit.measure import wait_for

from sidecar.model import HubMemo, build_plan
from sidecar.restore import restore
from sidecar.source import FileRead, sha256_hex
from sidecar.sync import run_sync

pytestmark = pytest.mark.integration

SECRET = "S3CRET-special-values"
INF, NINF, NAN = float("inf"), float("-inf"), float("nan")
HUB = "structured_hubs/learner_preferences.json"
EPISODE = "episodes/skeleton_r1.json"


def legacy_write(root: Path, rel: str, payload) -> None:
    """Exactly what Mentorix does: Path.write_text(json.dumps(payload, indent=2))."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2), encoding="utf-8")


def raw_write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))


def tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file() and not p.relative_to(root).as_posix().startswith("reports/")}


def synced(config, store) -> dict:
    report, code = run_sync(config, store)
    assert code == 0, (report["bad_input"], report["parity"])
    return report


def round_trips(config, store, data_dir: Path, out: Path) -> dict:
    """sync, restore into a fresh dir: every file byte-identical; a second sync
    writes nothing and parity matches. Returns the first sync's report."""
    report = synced(config, store)
    result = restore(store, out)
    assert not result.skipped
    assert tree(out) == tree(data_dir)
    again = synced(config, store)
    assert again["writes"]["total"] == 0, again["writes"]
    assert again["parity"]["all_match"]
    return report


def no_secret(report: dict) -> None:
    assert SECRET not in json.dumps(report, default=str)


# --- NaN / Infinity / -Infinity, as json.dumps writes them ---------------------------------


def special_corpus(root: Path) -> None:
    legacy_write(root, HUB, {
        "learner-a": {"score": INF, "note": SECRET},
        "learner-b": {"score": NAN, "history": [NINF, 0.5, -0.0]},
        "learner-c": {"score": 1.0, "count": 1, "neg_zero": -0.0},
    })
    legacy_write(root, "structured_hubs/soft_identity.json", {})
    legacy_write(root, EPISODE, {"run_id": "r1", "query": "q", "status": "completed",
                                 "updated_at": "2026-02-20T10:00:00",
                                 "nodes": [{"id": "n0", "score": NINF}], "edges": [], "loss": NAN})
    legacy_write(root, "snapshot.json", {"timestamp": "2026-02-21T05:29:24.762951",
                                         "active_runs": ["r1"], "load": INF})
    legacy_write(root, "runs/run_r1.json", {"run_id": "r1", "best": INF, "worst": NINF, "avg": NAN})
    legacy_write(root, "scheduled_jobs.json", [{"id": "j1", "next_delay": INF}])
    legacy_write(root, "misc/metrics.json", {"ratio": NAN, "limits": [INF, NINF]})


def test_nan_and_infinity_round_trip_in_every_kind(data_dir, config, store, db, tmp_path):
    special_corpus(data_dir)
    report = round_trips(config, store, data_dir, tmp_path / "restored")
    assert report["bad_input"]["count"] == 0
    assert report["stored_raw"]["count"] == 0  # doubles: nothing needs keeping verbatim
    files = db[config.sidecar_files_collection]
    # Stored as BSON doubles: queryable as such.
    assert db.memory_hubs.find_one({"payload.score": INF})["item_key"] == "learner-a"
    assert db.memory_hubs.find_one({"payload.history": NINF})["item_key"] == "learner-b"
    nan_doc = db.memory_hubs.find_one({"item_key": "learner-b"})
    assert math.isnan(nan_doc["payload"]["score"]) and nan_doc["_sidecar"].get("raw") is None
    assert db.memory_hubs.count_documents({"payload.score": {"$type": "double"}}) == 3
    c = db.memory_hubs.find_one({"item_key": "learner-c"})["payload"]
    assert type(c["score"]) is float and type(c["count"]) is int  # 1.0 stays 1.0, 1 stays 1
    assert math.copysign(1, c["neg_zero"]) == -1.0
    episode = db.episodic_memory.find_one({"nodes.score": NINF})
    assert episode["run_id"] == "r1" and math.isnan(episode["loss"])
    assert db.runtime_snapshots.find_one({"load": INF})
    assert files.find_one({"content.best": INF})["_id"] == "runs/run_r1.json"
    assert files.find_one({"content.next_delay": INF})["_id"] == "scheduled_jobs.json"
    assert files.find_one({"content.limits": NINF})["_id"] == "misc/metrics.json"
    assert files.find_one({"_id": "misc/metrics.json"})["encoding"] == "json"
    assert report["parity"]["all_match"]


def test_hub_memo_takes_nan_entries_and_stays_exact():
    """The memo (only changed entries re-checked) now takes NaN entries; a literal
    json.dumps would not write (1e400) still falls to the full path."""
    memo = HubMemo()
    payload = {f"l{i}": {"score": [INF, NAN, NINF][i % 3], "i": i} for i in range(9)}

    def plan_of(data: bytes, m=None):
        return build_plan(FileRead(HUB, data, sha256_hex(data), len(data), 1), memo=m)

    def summary(plan):
        return ([(e.key, e.hash, e.stored_raw) for e in plan.entries], plan.fmt, plan.raw)
    plan_of(json.dumps(payload, indent=2).encode(), memo)
    payload["l4"] = {"score": NAN, "changed": True}
    data = json.dumps(payload, indent=2).encode()
    fast = plan_of(data, memo)
    assert memo.hits == 1 and summary(fast) == summary(plan_of(data))
    assert fast.raw is None and fast.fmt is not None
    odd = data.replace(b'"changed": true', b'"changed": 1e400')
    slow = plan_of(odd, memo)
    assert memo.hits == 1  # not provably the memo's format: the full checks ran
    assert slow.raw == odd and slow.fmt is None and summary(slow) == summary(plan_of(odd))


# --- what BSON cannot hold: stored raw ------------------------------------------------------------


def nested(depth: int):
    value: object = SECRET
    for _ in range(depth):
        value = {"n": value}
    return value


def test_values_bson_cannot_hold_are_stored_raw_and_round_trip(data_dir, config, store, db, tmp_path):
    legacy_write(data_dir, HUB, {
        "ok": {"score": 0.5},
        "big": {"n": 2**64, "s": SECRET},
        "dollar": {"$set": {"n": SECRET}},
        "dotted": {"prefs.density": "high"},
        "deep": nested(200),
        "low": {"n": -(2**63) - 1},
    })
    legacy_write(data_dir, EPISODE, {"run_id": "r1", "query": "q", "status": "completed",
                                     "nodes": [{"id": "n0", "a.b": SECRET}], "big": 2**70, "edges": []})
    legacy_write(data_dir, "snapshot.json", {"timestamp": "2026-02-21T05:29:24.762951",
                                             "active_runs": [], "$meta": SECRET})
    legacy_write(data_dir, "runs/run_r2.json", {"run_id": "r2", "n": 2**80})
    report = round_trips(config, store, data_dir, tmp_path / "restored")
    no_secret(report)
    assert report["bad_input"]["count"] == 0
    items = report["stored_raw"]["items"]
    assert {(i["path"], i.get("key"), i["reason"]) for i in items} == {
        (HUB, "big", "int_overflow"), (HUB, "dollar", "bad_key"), (HUB, "dotted", "bad_key"),
        (HUB, "deep", "too_deep"), (HUB, "low", "int_overflow"),
        (EPISODE, None, "int_overflow"), ("snapshot.json", None, "bad_key"),
        ("runs/run_r2.json", None, "int_overflow")}
    assert report["stored_raw"]["count"] == 8
    # The entry document keeps the value as bytes; its neighbours are plain.
    big = db.memory_hubs.find_one({"item_key": "big"})
    assert big["payload"] is None and big["_sidecar"]["stored_raw"] == "int_overflow"
    assert json.loads(bytes(big["_sidecar"]["raw"])) == {"n": 2**64, "s": SECRET}
    assert db.memory_hubs.find_one({"item_key": "ok"})["payload"] == {"score": 0.5}
    # The episode document keeps the fields BSON can hold (queryable), all of it raw.
    ep = db.episodic_memory.find_one({"run_id": "r1"})
    assert ep["query"] == "q" and "big" not in ep and "nodes" not in ep
    assert ep["_sidecar"]["stored_raw"] == "int_overflow"
    snap = db.runtime_snapshots.find_one({})
    assert snap["timestamp"] == "2026-02-21T05:29:24.762951" and "$meta" not in snap
    # Recorded once, when written: path, key and reason, never a value.
    events = list(db.memory_events.find({"event_type": "stored_raw"}, {"_id": 0}))
    assert len(events) == 8 and SECRET not in json.dumps(events, default=str)


def test_an_entry_going_raw_and_back(data_dir, config, store, db, tmp_path):
    legacy_write(data_dir, HUB, {"a": {"n": 1}, "b": {"n": 2}})
    synced(config, store)
    legacy_write(data_dir, HUB, {"a": {"n": 2**64}, "b": {"n": 2}})
    round_trips(config, store, data_dir, tmp_path / "r1")
    assert db.memory_hubs.find_one({"item_key": "a"})["payload"] is None
    legacy_write(data_dir, HUB, {"a": {"n": 3}, "b": {"n": 2}})
    round_trips(config, store, data_dir, tmp_path / "r2")
    a = db.memory_hubs.find_one({"item_key": "a"})
    assert a["payload"] == {"n": 3} and "raw" not in a["_sidecar"]


# --- layouts json.dumps would not write: the file's bytes are kept -----------------------------

ODD_NUMBERS = ["1e400", "-1e400", "1E5", "1.10", "1.0e3", "-0"]


@pytest.mark.parametrize("literal", ODD_NUMBERS)
def test_number_literals_json_dumps_would_not_write_round_trip(data_dir, config, store, db, tmp_path,
                                                                literal):
    hub = json.dumps({"a": {"v": 1}, "b": {"v": "X"}}, indent=2).replace('"X"', literal)
    raw_write(data_dir, HUB, hub)
    ep = json.dumps({"run_id": "r1", "nodes": [], "v": "X"}, indent=2).replace('"X"', literal)
    raw_write(data_dir, EPISODE, ep)
    raw_write(data_dir, "snapshot.json", '{"timestamp": "2026-02-21T05:29:24", "v": %s}' % literal)
    raw_write(data_dir, "runs/run_r1.json", '{"v": %s}' % literal)
    report = round_trips(config, store, data_dir, tmp_path / "restored")
    reasons = {(i["path"], i["reason"]) for i in report["stored_raw"]["items"]}
    assert {(HUB, "layout"), (EPISODE, "layout"), ("snapshot.json", "layout"),
            ("runs/run_r1.json", "layout")} <= reasons
    # The documents still hold the values as Python reads them (1e400 is infinity).
    value = json.loads(literal)
    stored = db.memory_hubs.find_one({"item_key": "b"})["payload"]["v"]
    assert stored == value and type(stored) is type(value)
    assert db.episodic_memory.find_one({"run_id": "r1"})["v"] == value


def test_odd_layouts_and_duplicate_keys_round_trip(data_dir, config, store, tmp_path):
    raw_write(data_dir, HUB, '{"a": {"v": 1},   "b":{"v":2}}\n\n')
    raw_write(data_dir, "structured_hubs/soft_identity.json", '{\n  "a": 1,\n  "a": 2\n}')
    raw_write(data_dir, EPISODE, '{\n\t"run_id": "r1",\n\t"nodes": [NaN, Infinity]\n}')
    raw_write(data_dir, "snapshot.json", '{"timestamp": "t", "timestamp": "u"}')
    raw_write(data_dir, "runs/run_r1.json", '{"x": 1,\n"x": 2}')
    round_trips(config, store, data_dir, tmp_path / "restored")


def test_raw_layout_file_back_to_json_dumps_layout(data_dir, config, store, db, tmp_path):
    raw_write(data_dir, HUB, '{"a": {"v": 1e400}}')
    raw_write(data_dir, EPISODE, '{"run_id": "r1", "v": 1E5}')
    round_trips(config, store, data_dir, tmp_path / "r1")
    man = db[config.sidecar_files_collection].find_one({"_id": HUB})
    assert man["raw"] and man["docs_hash"]
    legacy_write(data_dir, HUB, {"a": {"v": INF}, "b": {"v": 2}})
    legacy_write(data_dir, EPISODE, {"run_id": "r1", "v": 1e5})
    round_trips(config, store, data_dir, tmp_path / "r2")
    man = db[config.sidecar_files_collection].find_one({"_id": HUB})
    assert "raw" not in man and man["format"] is not None


def test_kept_bytes_yield_to_newer_documents(data_dir, config, store, db, tmp_path):
    """After the kept bytes were recorded MongoDB moved on (a Mongo-backed
    Mentorix wrote): restore renders the documents, it does not go back in time."""
    raw_write(data_dir, HUB, '{"a": {"v": 1E5}, "b": {"v": 2}}')
    raw_write(data_dir, EPISODE, '{"run_id": "r1", "v": 1E5}')
    synced(config, store)
    db.memory_hubs.update_one({"hub_type": "learner_preferences", "item_key": "b"},
                              {"$set": {"payload": {"v": 3}}})
    db.episodic_memory.replace_one({"run_id": "r1"}, {"run_id": "r1", "v": 4})
    out = tmp_path / "restored"
    restore(store, out)
    assert json.loads((out / HUB).read_text()) == {"a": {"v": 1e5}, "b": {"v": 3}}
    assert json.loads((out / EPISODE).read_text()) == {"run_id": "r1", "v": 4}


# --- the daemon --------------------------------------------------------------------------------


def test_daemon_mirrors_special_values_and_raw_files(data_dir, running, db, tmp_path):
    d = running()
    legacy_write(data_dir, HUB, {"a": {"score": NAN}, "b": {"score": INF}, "c": {"n": 2**64}})
    legacy_write(data_dir, EPISODE, {"run_id": "r1", "nodes": [], "loss": NINF})
    raw_write(data_dir, "runs/run_r1.json", '{"v": 1e400}')
    report = d.wait_parity()
    assert report["stored_raw"]["by_reason"] == {"int_overflow": 1, "layout": 1}
    assert db.memory_hubs.find_one({"payload.score": INF})["item_key"] == "b"
    assert db.episodic_memory.find_one({"loss": NINF})["run_id"] == "r1"
    # an edit of the hub (the memo path) keeps it exact
    legacy_write(data_dir, HUB, {"a": {"score": NAN}, "b": {"score": NINF}, "c": {"n": 2**64}})
    wait_for(lambda: db.memory_hubs.find_one({"payload.score": NINF}), what="the edit mirrored")
    d.wait_parity()
    out = tmp_path / "restored"
    assert not restore(d.daemon.store, out).skipped
    assert tree(out) == tree(data_dir)
