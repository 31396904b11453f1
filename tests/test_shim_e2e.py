"""The shim end to end: a separate legacy-API process, changed only by PYTHONPATH and env."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from testkit import ROOT
from testkit.measure import wait_for
from testkit.daemon import RunningDaemon

pytestmark = pytest.mark.integration

ACTIVATE = ROOT / "shim" / "activate"

# Exactly the Mentorix pattern; knows nothing about the shim.
LEGACY_API = r"""
import json, sys
sys.path.insert(0, sys.argv[2])
from testkit.corpus import LegacyWriter
w = LegacyWriter(sys.argv[1], seed=11)
w.start()
for i in range(int(sys.argv[3])):
    w.learner_signal(f"learner-{i % 10}", i)
    if i % 5 == 0:
        w.save_episode(f"run-{i}")
        w.save_run(f"run-{i}")
        w.save_jobs(i % 4 + 1)
        w.save_snapshot([f"run-{i}"])
import shim
print(json.dumps({"installed": shim.is_installed(), "stats": shim.stats()}))
"""

# Sync mode: each write must already be in MongoDB when the call returns.
SYNC_CHECK = r"""
import json, sys, pymongo
from pathlib import Path
root, url, db_name, n = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
coll = pymongo.MongoClient(url)[db_name].memory_hubs
hub = root / "structured_hubs" / "learner_preferences.json"
hub.parent.mkdir(parents=True, exist_ok=True)
data, misses = {}, 0
for i in range(n):
    data[f"k{i}"] = {"i": i}
    hub.write_text(json.dumps(data, indent=2), encoding="utf-8")
    if coll.find_one({"hub_type": "learner_preferences", "item_key": f"k{i}", "payload.i": i}) is None:
        misses += 1
import shim
print(json.dumps({"misses": misses, "stats": shim.stats()}))
"""

WRITE_ONE = r"""
import sys
from pathlib import Path
p = Path(sys.argv[1]) / "snapshot.json"
try:
    p.write_text('{"timestamp": "2026-01-01T00:00:00", "active_runs": []}', encoding="utf-8")
except OSError as exc:
    print("OSError", exc.errno)
    sys.exit(7)
print("ok")
"""


def api_env(data_dir, socket_path, mode, **extra):
    env = dict(os.environ)
    # The activation dir, then the shim package's parent, as the deployments do
    # (docker-compose.yml, deploy/): a checkout other than the one an editable
    # install points at (a git worktree) must load its own shim, not that one.
    env.update(PYTHONPATH=f"{ACTIVATE}:{ROOT}", RUNTIME_DATA_DIR=str(data_dir), SIDECAR_SOCKET=str(socket_path),
               SIDECAR_SHIM=mode, **extra)
    return env


def run_api(code, args, env, timeout=120):
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env, capture_output=True,
                          timeout=timeout, cwd=str(ROOT))
    return proc


@pytest.fixture
def sock(tmp_path):
    return tmp_path / "sock" / "sidecar.sock"


@pytest.fixture
def daemon(make_config, sock):
    d = RunningDaemon(make_config(sidecar_http_port=0, sidecar_socket=sock)).start()
    yield d
    d.stop()


def test_async_legacy_process_reaches_parity(data_dir, sock, daemon):
    proc = run_api(LEGACY_API, [data_dir, ROOT / "bench", 60], api_env(data_dir, sock, "async"))
    assert proc.returncode == 0, proc.stderr.decode()
    out = json.loads(proc.stdout.decode().splitlines()[-1])
    assert out["installed"] is True
    assert out["stats"]["sent"] > 0
    daemon.wait_parity(timeout=20)
    seen = sum(daemon.daemon.status.shim_events.labels(status=s)._value.get()
               for s in ("written", "unchanged", "stale", "queued"))
    assert seen > 0  # the frames reached the sidecar (the writer coalesces them with the watcher's)


def test_sync_mode_write_is_in_mongodb_when_the_call_returns(data_dir, sock, daemon, mongo_url, db_name):
    proc = run_api(SYNC_CHECK, [data_dir, mongo_url, db_name, 25], api_env(data_dir, sock, "sync"))
    assert proc.returncode == 0, proc.stderr.decode()
    out = json.loads(proc.stdout.decode().splitlines()[-1])
    assert out["misses"] == 0
    assert out["stats"]["sync_ok"] >= 25


def test_async_with_sidecar_down_never_blocks_then_watcher_catches_up(data_dir, sock, make_config):
    proc = run_api(LEGACY_API, [data_dir, ROOT / "bench", 40], api_env(data_dir, sock, "async"))
    assert proc.returncode == 0, proc.stderr.decode()
    out = json.loads(proc.stdout.decode().splitlines()[-1])
    dropped = out["stats"].get("dropped_unavailable", 0) + out["stats"].get("dropped_queue_full", 0)
    assert dropped > 0 and out["stats"].get("sent", 0) == 0
    d = RunningDaemon(make_config(sidecar_http_port=0, sidecar_socket=sock)).start()
    try:
        d.wait_parity(timeout=20)
    finally:
        d.stop()


def test_sync_closed_raises_when_sidecar_is_away(data_dir, sock):
    proc = run_api(WRITE_ONE, [data_dir], api_env(data_dir, sock, "sync", SIDECAR_SHIM_ON_FAILURE="closed",
                                                 SIDECAR_SHIM_TIMEOUT_MS="500"))
    assert proc.returncode == 7, proc.stdout.decode() + proc.stderr.decode()
    assert (data_dir / "snapshot.json").exists()  # on disk, but the API was told it is not durable


def test_sync_open_continues_when_sidecar_is_away(data_dir, sock):
    proc = run_api(WRITE_ONE, [data_dir], api_env(data_dir, sock, "sync", SIDECAR_SHIM_TIMEOUT_MS="500"))
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().strip() == "ok"


def test_same_bytes_twice_are_one_write(data_dir, sock, daemon):
    before = daemon.daemon.status.writes.labels(collection="runtime_snapshots", op="insert")._value.get()
    env = api_env(data_dir, sock, "sync")
    for _ in range(3):
        assert run_api(WRITE_ONE, [data_dir], env).returncode == 0
    wait_for(lambda: daemon.parity()["parity"]["all_match"], 20, what="parity")
    after = daemon.daemon.status.writes.labels(collection="runtime_snapshots", op="insert")._value.get()
    assert after - before == 1
    assert daemon.daemon.store.db.runtime_snapshots.count_documents({}) == 1
