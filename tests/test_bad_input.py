"""Bad input (issue 2): each case is a clear problem entry in the sync report
(reason code, message quoting no content), counted in ``by_reason``, a
``bad_input`` event in ``memory_events``; the rest of the sync goes on; nothing
previously mirrored is deleted or changed; the exit code is 1.

The command-line cases (missing data dir, MongoDB unreachable) run the CLI in a
subprocess so a traceback would be visible.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from testkit import ROOT
from testkit.measure import free_port

from sidecar.names import HUBS
from sidecar.restore import restore
from sidecar.sync import run_sync

pytestmark = pytest.mark.integration

SECRET = "S3CRET-CONTENT-never-in-reports"
HUB = "structured_hubs/soft_identity.json"
EPISODE = "episodes/skeleton_r1.json"
RUN = "runs/run_r1.json"
EP_CONTENT = {"run_id": "r1", "query": "q", "status": "completed",
              "updated_at": "2026-02-20T10:00:00", "nodes": [{"id": "n0"}], "edges": []}


def write(root: Path, rel: str, data: bytes | str | object) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    elif not isinstance(data, bytes):
        data = json.dumps(data, indent=2).encode()
    path.write_bytes(data)


def dump(db, files_coll: str) -> dict[str, dict]:
    """Every mirrored document (not the audit trail), by collection and _id."""
    return {name: {str(d["_id"]): d for d in db[name].find()}
            for name in ("memory_hubs", "episodic_memory", "runtime_snapshots", files_coll)}


def problems(report: dict, reason: str | None = None, path: str | None = None) -> list[dict]:
    return [p for p in report["bad_input"]["items"]
            if (reason is None or p["reason"] == reason) and (path is None or p["path"] == path)]


@pytest.fixture
def mirrored(legacy_dir, config, store, db):
    """Sample data plus an episode and a run file, synced once; returns the 'before' dump."""
    write(legacy_dir, EPISODE, EP_CONTENT)
    write(legacy_dir, RUN, {"run_id": "r1", "steps": [1, 2]})
    report, code = run_sync(config, store)
    assert code == 0, report["bad_input"]
    return dump(db, config.sidecar_files_collection)


def check_refused(report, code, db, config, before, rel, reason, *, new_file="runs/run_after.json"):
    """The shared contract of a refused file."""
    found = problems(report, reason, rel)
    assert found, report["bad_input"]
    assert found[0]["message"] and rel in found[0]["message"]
    assert report["bad_input"]["by_reason"].get(reason, 0) >= 1
    assert report["bad_input"]["count"] >= 1
    text = json.dumps(report, default=str)
    assert SECRET not in text
    ev = db.memory_events.find_one({"event_type": "bad_input", "path": rel, "reason": reason})
    assert ev is not None
    assert SECRET not in json.dumps(list(db.memory_events.find({}, {"_id": 0})), default=str)
    # The rest of the sync went on: the file written alongside is mirrored.
    files = db[config.sidecar_files_collection]
    assert files.find_one({"_id": new_file})["content"] == {"after": True}
    # Nothing previously mirrored was deleted or changed.
    after = dump(db, config.sidecar_files_collection)
    after[config.sidecar_files_collection].pop(new_file)
    assert after == before
    assert code == 1


# --- whole files refused ---------------------------------------------------------------

TRUNCATED_HUB = json.dumps({"a": {"note": SECRET}, "b": {"x": 1}}, indent=2)[:30]

WHOLE_FILE_CASES = [
    pytest.param(HUB, b"", "empty", id="empty-hub"),
    pytest.param(EPISODE, b"", "empty", id="empty-episode"),
    pytest.param(RUN, b"", "empty", id="empty-run"),
    pytest.param(HUB, TRUNCATED_HUB, "invalid_json", id="truncated-hub"),
    pytest.param("snapshot.json", '{\n  "timestamp": "' + SECRET, "invalid_json", id="truncated-snapshot"),
    pytest.param(RUN, '{"run_id": "r1", "steps": [1, ' + json.dumps(SECRET), "invalid_json", id="truncated-run"),
    pytest.param(HUB, b'{"a": {"note": "' + SECRET.encode() + b'\xff\xfe"}}', "invalid_utf8", id="utf8-hub"),
    pytest.param(EPISODE, b'{"run_id": "r1", "q": "\xc3\x28' + SECRET.encode() + b'"}', "invalid_utf8",
                 id="utf8-episode"),
    pytest.param(HUB, [{"a": SECRET}], "not_object", id="hub-list"),
    pytest.param(HUB, json.dumps(SECRET), "not_object", id="hub-string"),
    pytest.param("snapshot.json", [], "not_object", id="snapshot-list"),
    # NaN/Infinity, '$'/'.' keys, ints past int64 and deep nesting are no longer
    # refused: doubles, or stored raw (tests/test_special_values.py).
]


def nested(depth: int) -> dict:
    value: object = SECRET
    for _ in range(depth):
        value = {"n": value}
    return value


@pytest.mark.parametrize("rel, data, reason", WHOLE_FILE_CASES)
def test_whole_file_refused_and_old_documents_kept(mirrored, legacy_dir, config, store, db, rel, data, reason):
    write(legacy_dir, rel, data)
    write(legacy_dir, "runs/run_after.json", {"after": True})
    report, code = run_sync(config, store)
    check_refused(report, code, db, config, mirrored, rel, reason)


def test_bad_file_never_seen_before_is_reported_and_not_mirrored(legacy_dir, config, store, db):
    write(legacy_dir, "episodes/skeleton_bad.json", b'{"run_id": "bad", ')
    write(legacy_dir, "runs/run_after.json", {"after": True})
    report, code = run_sync(config, store)
    assert code == 1
    assert problems(report, "invalid_json", "episodes/skeleton_bad.json")
    assert report["kinds"]["episodes"]["bad_files"] == 1
    assert db.episodic_memory.count_documents({}) == 0
    assert db[config.sidecar_files_collection].find_one({"_id": "episodes/skeleton_bad.json"}) is None
    assert db.memory_hubs.count_documents({}) == 18  # the rest is mirrored
    # Fixing the file fixes parity.
    write(legacy_dir, "episodes/skeleton_bad.json", {"run_id": "bad"})
    report, code = run_sync(config, store)
    assert code == 0 and report["bad_input"]["count"] == 0


def test_many_bad_files_each_counted(mirrored, legacy_dir, config, store, db):
    write(legacy_dir, HUB, b"")
    write(legacy_dir, "structured_hubs/operating_context.json", b"{")
    write(legacy_dir, EPISODE, b"\xff")
    report, code = run_sync(config, store)
    assert code == 1
    assert report["bad_input"]["by_reason"] == {"empty": 1, "invalid_json": 1, "invalid_utf8": 1}
    assert report["bad_input"]["count"] == 3
    assert db.memory_events.count_documents({"event_type": "bad_input"}) == 3
    assert report["parity"]["hubs_match"] is False and report["parity"]["episodes_match"] is False
    assert dump(db, config.sidecar_files_collection) == mirrored


# --- one hub entry BSON cannot hold: stored raw, the rest of the hub file as usual -------------

ENTRY_CASES = [
    pytest.param({"prefs.density": "high", "n": SECRET}, "bad_key", id="dotted-key"),
    pytest.param({"$set": {"n": SECRET}}, "bad_key", id="dollar-key"),
    pytest.param({"deep": [{"k.v": 1}]}, "bad_key", id="dotted-key-in-list"),
    pytest.param({"n": 2**64, "s": SECRET}, "int_overflow", id="int-overflow"),
    pytest.param({"n": -(2**63) - 1}, "int_overflow", id="int-underflow"),
    pytest.param(None, "too_deep", id="200-levels"),
]


@pytest.mark.parametrize("bad_value, reason", ENTRY_CASES)
def test_hub_entry_bson_cannot_hold_is_stored_raw_alone(mirrored, legacy_dir, config, store, db, tmp_path,
                                                        bad_value, reason):
    if bad_value is None:
        bad_value = nested(200)
    data = json.loads((legacy_dir / HUB).read_text())
    keys = list(data)
    bad_key, changed_key = keys[1], keys[2]
    data[bad_key] = bad_value
    data[changed_key] = {"confidence_band": "changed-value"}
    data["new-learner"] = {"confidence_band": "steady"}
    write(legacy_dir, HUB, data)
    report, code = run_sync(config, store)
    assert code == 0, report["bad_input"]
    assert report["bad_input"]["count"] == 0
    assert report["stored_raw"]["items"] == [{"path": HUB, "key": bad_key, "reason": reason}]
    assert SECRET not in json.dumps(report, default=str)
    hubs = db.memory_hubs
    doc = hubs.find_one({"_id": f"soft_identity/{bad_key}"})
    assert doc["payload"] is None and doc["_sidecar"]["stored_raw"] == reason
    # the other entries of the same file still mirror
    assert hubs.find_one({"_id": f"soft_identity/{changed_key}"})["payload"] == \
        {"confidence_band": "changed-value"}
    assert hubs.find_one({"_id": "soft_identity/new-learner"})["payload"] == {"confidence_band": "steady"}
    assert hubs.count_documents({"hub_type": "soft_identity"}) == 7
    # nothing else changed: other hubs identical
    after = dump(db, config.sidecar_files_collection)
    for _id, doc in mirrored["memory_hubs"].items():
        if not _id.startswith("soft_identity/"):
            assert after["memory_hubs"][_id] == doc
    out = tmp_path / "restored"
    restore(store, out)
    assert (out / HUB).read_bytes() == (legacy_dir / HUB).read_bytes()


def test_hub_item_keys_with_dot_or_dollar_are_values_and_mirror(legacy_dir, config, store, db, tmp_path):
    """A hub's own keys become ``item_key`` values, where '.' and '$' are fine."""
    write(legacy_dir, "structured_hubs/odd.json", {"a.b": {"v": 1}, "$x": {"v": 2}})
    report, code = run_sync(config, store)
    assert code == 0, report["bad_input"]
    assert {d["item_key"] for d in db.memory_hubs.find({"hub_type": "odd"})} == {"a.b", "$x"}
    out = tmp_path / "restored"
    restore(store, out)
    assert (out / "structured_hubs/odd.json").read_bytes() == (legacy_dir / "structured_hubs/odd.json").read_bytes()


@pytest.mark.parametrize("content", [
    pytest.param({"$where": 1, "a.b": [1]}, id="bad-keys"),
    pytest.param({"n": 2**70}, id="int-overflow"),
    pytest.param(nested(200), id="200-levels"),
])
def test_unknown_json_that_bson_cannot_hold_is_kept_verbatim(legacy_dir, config, store, db, tmp_path, content):
    """Generic files have no document shape to honour: they are kept byte for byte."""
    write(legacy_dir, "runs/run_odd.json", content)
    report, code = run_sync(config, store)
    assert code == 0, report["bad_input"]
    doc = db[config.sidecar_files_collection].find_one({"_id": "runs/run_odd.json"})
    assert doc["encoding"] == "bytes" and bytes(doc["raw"]) == (legacy_dir / "runs/run_odd.json").read_bytes()
    out = tmp_path / "restored"
    restore(store, out)
    assert (out / "runs/run_odd.json").read_bytes() == (legacy_dir / "runs/run_odd.json").read_bytes()


@pytest.mark.parametrize("rel", [HUB, EPISODE])
def test_float_overflow_literal_is_kept_verbatim_not_a_crash(mirrored, legacy_dir, config, store, db, tmp_path,
                                                             rel):
    """1e400 parses as infinity, which json.dumps writes as Infinity: the file's
    bytes are kept so it still round-trips (tests/test_special_values.py)."""
    if rel == HUB:
        data = (legacy_dir / HUB).read_text().replace('"low"', "1e400", 1)
    else:
        data = json.dumps(dict(EP_CONTENT, score=1.0), indent=2).replace("1.0", "1e400")
    write(legacy_dir, rel, data)
    report, code = run_sync(config, store)
    assert code == 0, report["bad_input"]
    assert {"path": rel, "reason": "layout"} in report["stored_raw"]["items"]
    out = tmp_path / "restored"
    restore(store, out)
    assert (out / rel).read_bytes() == data.encode()


# --- size limits ----------------------------------------------------------------------


def test_generic_file_over_16mb_goes_to_gridfs_and_restores(legacy_dir, config, store, db, tmp_path):
    blob = os.urandom(17 * 1024 * 1024)
    write(legacy_dir, "exports/big.bin", blob)
    report, code = run_sync(config, store)
    assert code == 0, report["bad_input"]
    man = db[config.sidecar_files_collection].find_one({"_id": "exports/big.bin"})
    assert man["encoding"] == "gridfs" and man["size"] == len(blob)
    assert man["sha256"] == hashlib.sha256(blob).hexdigest()
    assert "raw" not in man and "content" not in man
    assert db[f"{config.sidecar_files_collection}_blobs.files"].count_documents({}) == 1
    # idempotent: no second upload, no write
    report, code = run_sync(config, store)
    assert code == 0 and report["writes"]["total"] == 0
    out = tmp_path / "restored"
    restore(store, out)
    assert hashlib.sha256((out / "exports/big.bin").read_bytes()).hexdigest() == man["sha256"]


def test_hub_entry_over_16mb_refused_as_too_large(mirrored, legacy_dir, config, store, db):
    data = json.loads((legacy_dir / HUB).read_text())
    keys = list(data)
    data[keys[0]] = {"blob": "x" * (16 * 1024 * 1024 + 1024)}
    data[keys[1]] = {"confidence_band": "changed-value"}
    write(legacy_dir, HUB, data)
    report, code = run_sync(config, store)
    assert code == 1
    found = problems(report, "too_large", HUB)
    assert len(found) == 1 and keys[0] in found[0]["message"]
    assert report["bad_input"]["by_reason"] == {"too_large": 1}
    assert db.memory_events.find_one({"event_type": "bad_input", "reason": "too_large"})
    assert db.memory_hubs.find_one({"_id": f"soft_identity/{keys[0]}"}) == \
        mirrored["memory_hubs"][f"soft_identity/{keys[0]}"]
    assert db.memory_hubs.find_one({"_id": f"soft_identity/{keys[1]}"})["payload"] == \
        {"confidence_band": "changed-value"}


def test_episode_over_16mb_refused_as_too_large(mirrored, legacy_dir, config, store, db):
    write(legacy_dir, EPISODE, dict(EP_CONTENT, nodes=[{"out": "y" * (16 * 1024 * 1024)}]))
    write(legacy_dir, "runs/run_after.json", {"after": True})
    report, code = run_sync(config, store)
    check_refused(report, code, db, config, mirrored, EPISODE, "too_large")


# --- symlinks -------------------------------------------------------------------------


def _everything(db) -> str:
    out = []
    for name in db.list_collection_names():
        if name.endswith(".chunks"):
            out.extend(bytes(d["data"]).decode("latin-1") for d in db[name].find())
        else:
            out.extend(json.dumps(d, default=lambda v: bytes(v).decode("latin-1")
                                  if isinstance(v, (bytes, bytearray)) else str(v))
                       for d in db[name].find())
    return "\n".join(out)


@pytest.fixture
def outside(tmp_path) -> Path:
    """A directory beside the data dir holding a secret that must never be read."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "secret.json").write_text(json.dumps({"learner": {"password": SECRET}}, indent=2))
    (d / "skeleton_x.json").write_text(json.dumps({"run_id": "x", "note": SECRET}))
    return d


def test_symlinked_files_and_dirs_never_followed(legacy_dir, config, store, db, outside):
    os.symlink(outside / "secret.json", legacy_dir / "structured_hubs" / "evil.json")
    os.symlink(outside / "secret.json", legacy_dir / "leak.json")
    os.symlink(outside, legacy_dir / "linked_dir")
    (legacy_dir / "episodes").mkdir()
    os.symlink(outside / "skeleton_x.json", legacy_dir / "episodes" / "skeleton_x.json")
    report, code = run_sync(config, store)
    flagged = {p["path"] for p in problems(report, "symlink")}
    assert flagged == {"structured_hubs/evil.json", "leak.json", "linked_dir", "episodes/skeleton_x.json"}
    assert report["bad_input"]["by_reason"] == {"symlink": 4}
    assert all(SECRET not in p["message"] for p in report["bad_input"]["items"])
    assert db.memory_events.count_documents({"event_type": "bad_input", "reason": "symlink"}) == 4
    assert SECRET not in _everything(db)
    assert db.memory_hubs.count_documents({}) == 18  # the real files are mirrored
    assert db.memory_hubs.count_documents({"hub_type": "evil"}) == 0
    assert db.episodic_memory.count_documents({}) == 0


def test_symlink_exit_code_is_one_even_when_the_rest_matches(legacy_dir, config, store, db, outside):
    os.symlink(outside / "secret.json", legacy_dir / "leak.json")
    report, code = run_sync(config, store)
    assert problems(report, "symlink", "leak.json")
    assert code == 1, "bad input seen must not exit 0"


SYMLINK_IS_DELETE = ("BUG: reconcile.scan never adds walk()'s Skipped paths to view.present, so a mirrored "
                     "file (or dir) replaced by a symlink counts as deleted: its manifest is marked deleted "
                     "(restore then skips it) and with SIDECAR_PROPAGATE_FILE_DELETES its documents are deleted")


@pytest.mark.parametrize("propagate", [False, True], ids=["default", "propagate-deletes"])
def test_mirrored_file_replaced_by_a_symlink_keeps_its_documents(
        mirrored, legacy_dir, make_config, store, db, outside, propagate):
    config = make_config(sidecar_propagate_file_deletes=propagate)
    (legacy_dir / HUB).unlink()
    os.symlink(outside / "secret.json", legacy_dir / HUB)
    write(legacy_dir, "runs/run_after.json", {"after": True})
    report, code = run_sync(config, store)
    assert SECRET not in _everything(db)
    check_refused(report, code, db, config, mirrored, HUB, "symlink")


def test_mirrored_dir_replaced_by_a_symlink_keeps_its_documents(mirrored, legacy_dir, make_config, store, db,
                                                                 outside):
    config = make_config(sidecar_propagate_file_deletes=True)
    (legacy_dir / EPISODE).unlink()
    (legacy_dir / "episodes").rmdir()
    os.symlink(outside, legacy_dir / "episodes")
    write(legacy_dir, "runs/run_after.json", {"after": True})
    report, code = run_sync(config, store)
    assert SECRET not in _everything(db)
    check_refused(report, code, db, config, mirrored, "episodes", "symlink")


# --- the command line: missing data dir, MongoDB unreachable ------------------------------
# Each case is a real subprocess (a traceback would show on stderr); the cases of
# one test run concurrently to keep the interpreter start-up cost down.


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIDECAR_", "MONGODB_", "RUNTIME_"))}
    env.update(extra or {})
    return env


def cli_many(runs: dict[str, tuple[list[str], dict[str, str] | None]]) -> dict[str, subprocess.CompletedProcess]:
    procs = {name: subprocess.Popen([sys.executable, "-m", "sidecar", *args], cwd=ROOT, env=_env(env),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, (args, env) in runs.items()}
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=60)
        out[name] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    return out


def test_missing_data_dir_exit_2_clear_message(tmp_path, mongo_url, db_name):
    missing = tmp_path / "no" / "such" / "dir"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    base = ["--mongodb-url", mongo_url, "--db-name", db_name]
    results = cli_many({
        "sync": (["--data-dir", str(missing), *base, "sync"], None),
        "parity": (["--data-dir", str(missing), *base, "parity"], None),
        "env": ([*base, "sync"], {"RUNTIME_DATA_DIR": str(missing)}),
        "file": (["--data-dir", str(a_file), *base, "sync"], None),
    })
    for name, proc in results.items():
        assert proc.returncode == 2, (name, proc.stderr)
        assert "Traceback" not in proc.stderr + proc.stdout, name
        assert proc.stderr.startswith("memory-sidecar: ") and proc.stderr.count("\n") == 1, (name, proc.stderr)
    for name in ("sync", "parity", "env"):
        assert str(missing) in results[name].stderr and "does not exist" in results[name].stderr
    assert "not a directory" in results["file"].stderr
    assert not missing.exists()  # not created behind the operator's back


def test_mongodb_unreachable_exit_3_credentials_hidden(data_dir, tmp_path):
    port = free_port()
    url = f"mongodb://mentorixuser:S3cretPassw0rd@127.0.0.1:{port}/"
    env = {"SIDECAR_SERVER_SELECTION_TIMEOUT_MS": "300"}
    flags = ["--data-dir", str(data_dir), "--mongodb-url", url]
    results = cli_many({
        "sync": ([*flags, "sync"], env),
        "parity": ([*flags, "parity"], env),
        "indexes": ([*flags, "indexes"], env),
        "restore": ([*flags, "restore", "--out", str(tmp_path / "out")], env),
        "env-url": (["sync"], dict(env, RUNTIME_DATA_DIR=str(data_dir), MONGODB_URL=url + "?authSource=admin")),
    })
    for name, proc in results.items():
        output = proc.stdout + proc.stderr
        assert proc.returncode == 3, (name, output)
        assert "Traceback" not in output, name
        assert "S3cretPassw0rd" not in output, name
        assert "mentorixuser" not in output, name
        assert f"mongodb://***@127.0.0.1:{port}/" in proc.stderr, (name, proc.stderr)
        assert "unreachable" in proc.stderr.lower(), name
    assert not (data_dir / "reports").exists()  # nothing reported as if it had run
    assert not (tmp_path / "out").exists()


# --- size is BSON size, not JSON length ----------------------------------------------------
# A JSON array of small integers costs ~2 bytes per element as text but ~13 as
# BSON (type byte + the index as a key + int32), so "under 15 MB of JSON" does
# not mean "fits in a 16 MB document".


def test_hub_entry_over_16mb_as_bson_is_too_large(mirrored, legacy_dir, config, store, db):
    data = json.loads((legacy_dir / HUB).read_text())
    keys = list(data)
    data[keys[0]] = {"steps": [1] * 1_400_000}
    data[keys[1]] = {"confidence_band": "changed-value"}
    write(legacy_dir, HUB, data)
    report, code = run_sync(config, store)
    assert code == 1
    assert report["bad_input"]["by_reason"] == {"too_large": 1}, report["bad_input"]["by_reason"]
    assert db.memory_hubs.find_one({"_id": f"soft_identity/{keys[0]}"}) == \
        mirrored["memory_hubs"][f"soft_identity/{keys[0]}"]
    assert db.memory_hubs.find_one({"_id": f"soft_identity/{keys[1]}"})["payload"] == \
        {"confidence_band": "changed-value"}


def test_one_oversized_document_fails_alone(store, db):
    from sidecar.state import Op

    big = {"_id": "h/big", "hub_type": "h", "item_key": "big", "payload": [1] * 3_800_000,
           "_sidecar": {"version": 1}}
    ok = {"_id": "h/ok", "hub_type": "h", "item_key": "ok", "payload": 1, "_sidecar": {"version": 1}}
    result = store.apply([Op(HUBS, "insert", "h/big", 1, big), Op(HUBS, "insert", "h/ok", 1, ok)])
    assert [op.id for op, _ in result.failed] == ["h/big"]
    assert [op.id for op in result.applied] == ["h/ok"]
    assert db.memory_hubs.find_one({"_id": "h/ok"})["payload"] == 1
