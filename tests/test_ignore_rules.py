"""Ignore rules on every path in (DESIGN §5 "Bad input"): watcher, shim (async and
sync), the daemon's shim server, reconcile and the one-shot sync.

The matrix: every way in × (a SIDECAR_IGNORE glob, ``*.tmp``, an editor's swap or
backup file, a file inside an ignored directory). Each ignored file holds a secret
string; after the control files (written the same way) are mirrored, no document of
any collection holds the secret or names an ignored path, and the counters say why.
"""

from __future__ import annotations

import json
import uuid

import bson
import pytest

from testkit.measure import wait_for
from testkit.daemon_fixtures import reconcile_now
from shim_helpers import connect, frame, header, read_reply
from test_shim_e2e import api_env, run_api

pytestmark = pytest.mark.integration

EXTRA_IGNORE = "private/*, vault"
IGNORED = [
    "private/api_keys.json",  # SIDECAR_IGNORE glob
    "snapshot.json.tmp",  # *.tmp (an atomic writer's temp file)
    "structured_hubs/soft_identity.json.tmp",
    ".scheduled_jobs.json.swp",  # vim swap files, top level and below
    "structured_hubs/.soft_identity.json.swp",
    "structured_hubs/soft_identity.json~",  # an editor's backup
    "vault/deep/keys.json",  # inside an ignored directory ("vault" names only the directory)
    "reports/leak.json",  # inside a directory ignored by default
]
CONTROL = {
    "structured_hubs/soft_identity.json": {"learner-a": {"band": "steady"}},
    "runs/run_ok.json": {"run_id": "ok"},
}


@pytest.fixture
def secret() -> str:
    return f"SECRET-{uuid.uuid4().hex}"


def write_files(root, rels, body: str) -> None:
    for rel in rels:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(body, encoding="utf-8")


def write_control(root) -> None:
    for rel, doc in CONTROL.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(doc, indent=2), encoding="utf-8")


def assert_nothing_ignored_stored(db, secret: str, extra_names: tuple[str, ...] = ()) -> None:
    """No document of any collection (GridFS blobs included) holds the secret or an ignored name."""
    needles = [secret.encode()] + [rel.encode() for rel in (*IGNORED, *extra_names)]
    names = db.list_collection_names()
    assert names, "nothing was mirrored at all: the check would prove nothing"
    for name in names:
        for doc in db[name].find():
            raw = bson.encode(doc)
            for needle in needles:
                assert needle not in raw, f"{needle.decode()!r} found in {name}: {doc.get('_id')!r}"


def assert_control_mirrored(db) -> None:
    files = db.memory_files
    wait_for(lambda: files.find_one({"_id": "runs/run_ok.json"}), 15, what="the control file mirrored")
    wait_for(lambda: db.memory_hubs.find_one({"hub_type": "soft_identity", "item_key": "learner-a"}), 15,
             what="the control hub mirrored")


def ignored_count(d, source: str) -> float:
    return d.daemon.status.ignored_total.labels(source=source)._value.get()


# --- the rule itself ------------------------------------------------------------------------------
def test_shim_defaults_and_env_parsing_are_the_sidecars():
    from shim import _config as shim_config
    from shim._ignore import DEFAULT_IGNORE as SHARED
    from sidecar.config import DEFAULT_IGNORE, Config

    assert DEFAULT_IGNORE == SHARED == shim_config.DEFAULT_IGNORE
    assert shim_config.load_config(environ={}).ignore == Config(_env_file=None).ignore_globs
    raw = " private/* ,, vault ,*.bak"
    shim_globs = shim_config.load_config(environ={"SIDECAR_IGNORE": raw}).ignore
    assert shim_globs == Config(_env_file=None, sidecar_ignore=raw).ignore_globs
    assert shim_globs[-3:] == ("private/*", "vault", "*.bak")


@pytest.mark.parametrize("rel, ignored", [
    ("private/api_keys.json", True),
    ("private", True),  # the directory itself: "private/" matches "private/*" (the walk's rule)
    ("private/a/b.json", True),
    ("vault/deep/keys.json", True),  # below a directory named by a glob
    ("vaults/x.json", False),
    ("x.json.tmp", True),
    ("structured_hubs/x.json.tmp", True),
    (".x.json.swp", True),
    ("structured_hubs/.x.json.swp", True),
    ("structured_hubs/.#x.json", True),
    ("x.json~", True),
    ("reports/r.json", True),
    ("structured_hubs/x.json", False),
    ("runs/run_a.json", False),
    ("snapshot.json", False),
])
def test_the_rule_is_one_function_for_shim_and_sidecar(rel, ignored):
    from shim import _config as shim_config
    from shim._intercept import Shim, Stats
    from sidecar.classify import is_ignored
    from sidecar.config import Config

    globs = Config(_env_file=None, sidecar_ignore=EXTRA_IGNORE).ignore_globs
    assert is_ignored(rel, globs) is ignored
    cfg = shim_config.load_config(data_dir="/srv/data", environ={"SIDECAR_IGNORE": EXTRA_IGNORE})
    assert Shim(cfg, None, Stats()).ignored(rel) is ignored


# --- watcher ---------------------------------------------------------------------------------------
def test_watcher_never_mirrors_ignored_files(data_dir, running, secret):
    d = running(sidecar_ignore=EXTRA_IGNORE)
    db = d.daemon.store.db
    write_files(data_dir, IGNORED, json.dumps({"api_key": secret}))
    # An atomic writer: the temp file, then os.replace onto the final name.
    tmp = data_dir / "runs" / "run_atomic.json.tmp"
    tmp.parent.mkdir(exist_ok=True)
    tmp.write_text(json.dumps({"run_id": "atomic"}))
    tmp.replace(data_dir / "runs" / "run_atomic.json")
    write_control(data_dir)
    assert_control_mirrored(db)
    wait_for(lambda: db.memory_files.find_one({"_id": "runs/run_atomic.json"}), 15, what="the atomic write")
    d.wait_parity(15)
    assert_nothing_ignored_stored(db, secret, ("runs/run_atomic.json.tmp",))
    assert ignored_count(d, "watcher") >= len(IGNORED) + 1
    assert ignored_count(d, "shim") == 0


# --- shim (a separate API process), async and sync --------------------------------------------------
SHIM_WRITER = r"""
import json, os, sys
from pathlib import Path
root, secret, ignored, control = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
body = json.dumps({"api_key": secret})
events = 0
for rel in ignored:                      # Path.write_text (the Mentorix write)
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(body, encoding="utf-8")
    events += 1
with open(root / "private" / "more.json", "w") as f:   # open(): reported at close
    f.write(body)
events += 1
os.remove(root / "private" / "more.json")             # a delete of an ignored path
events += 1
# An atomic writer: x.json.tmp, then os.replace to x.json (tmp write + tmp delete ignored).
tmp = root / "runs" / "run_atomic.json.tmp"
tmp.parent.mkdir(parents=True, exist_ok=True)
with open(tmp, "w") as f:
    f.write(json.dumps({"run_id": "atomic"}))
os.replace(tmp, root / "runs" / "run_atomic.json")
events += 2
for rel, doc in control.items():
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(doc, indent=2), encoding="utf-8")
import shim
shim.flush(5.0)
print(json.dumps({"expected_ignored": events, "stats": shim.stats()}))
"""


@pytest.fixture
def shim_daemon(daemon_config, tmp_path):
    from testkit.daemon import RunningDaemon

    d = RunningDaemon(daemon_config(sidecar_ignore=EXTRA_IGNORE)).start()
    yield d
    d.stop()


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_shim_never_sends_ignored_paths(mode, data_dir, shim_daemon, secret):
    d = shim_daemon
    db = d.daemon.store.db
    env = api_env(data_dir, d.config.socket_path, mode, SIDECAR_IGNORE=EXTRA_IGNORE,
                  SIDECAR_SHIM_ON_FAILURE="closed")
    proc = run_api(SHIM_WRITER, [data_dir, secret, json.dumps(IGNORED), json.dumps(CONTROL)], env)
    assert proc.returncode == 0, proc.stderr.decode()
    out = json.loads(proc.stdout.decode().splitlines()[-1])
    stats = out["stats"]
    assert stats["ignored"] == out["expected_ignored"]
    assert stats["errors"] == 0
    if mode == "sync":
        # Control files and the atomic writer's final file, each confirmed; nothing else sent.
        assert stats["sync_ok"] == len(CONTROL) + 1 and stats["sync_failed"] == 0
    else:
        # Only the control files and the atomic writer's final file were handed on.
        assert stats["sent"] >= 1
        assert stats["sent"] + stats["dropped_unavailable"] + stats["superseded"] == len(CONTROL) + 1
    assert_control_mirrored(db)
    wait_for(lambda: db.memory_files.find_one({"_id": "runs/run_atomic.json", "content.run_id": "atomic"}), 15,
             what="the atomic writer's final file")
    d.wait_parity(15)
    assert_nothing_ignored_stored(db, secret, ("runs/run_atomic.json.tmp", "private/more.json"))
    assert d.daemon.status.shim_events.labels(status="ignored")._value.get() == 0  # none was sent
    assert ignored_count(d, "watcher") > 0  # the watcher saw them on disk, and dropped them too


# --- the daemon's shim server: a shim configured otherwise (or an old one) ----------------------------
def test_shim_server_refuses_frames_for_ignored_paths(data_dir, shim_daemon, secret):
    d = shim_daemon
    db = d.daemon.store.db
    server = d.daemon.shim
    body = json.dumps({"api_key": secret}).encode()
    write_files(data_dir, IGNORED, body.decode())  # on disk too, as a real shim's frame would be
    s = connect(d.config.socket_path)
    try:
        for seq, rel in enumerate(IGNORED, 1):
            # A sync frame gets an answer at once, ok (the API must not stall or fail).
            s.sendall(frame(header(path=rel, seq=seq, ack=True, _body=body), body))
            assert read_reply(s) == {"ok": True, "status": "ignored", "error": None}
        for seq, rel in enumerate(IGNORED, 100):
            s.sendall(frame(header(path=rel, seq=seq, ack=False, sha256=None, _body=body), body))
        s.sendall(frame(header(op="delete", path="private/api_keys.json", seq=200, size=0, sha256=None,
                               mtime_ns=None, ack=True)))
        assert read_reply(s)["status"] == "ignored"
    finally:
        s.close()
    n = 2 * len(IGNORED) + 1
    wait_for(lambda: server.stats["ignored"] == n, 10, what="every frame counted as ignored")
    assert d.daemon.status.shim_events.labels(status="ignored")._value.get() == n
    assert ignored_count(d, "shim") == n
    assert server.stats["bad_frames"] == 0
    assert not (d.daemon.pending.paths() & set(IGNORED))  # not even queued for the writer
    write_control(data_dir)
    assert_control_mirrored(db)
    d.wait_parity(15)
    assert_nothing_ignored_stored(db, secret)


def test_a_differently_configured_sync_shim_is_answered_and_not_stalled(data_dir, shim_daemon, secret):
    """The API's shim lacks SIDECAR_IGNORE: it sends private/..., the daemon refuses
    to mirror it and answers ok, so even SIDECAR_SHIM_ON_FAILURE=closed goes on."""
    d = shim_daemon
    env = api_env(data_dir, d.config.socket_path, "sync", SIDECAR_SHIM_ON_FAILURE="closed")
    env.pop("SIDECAR_IGNORE", None)
    rels = ["private/api_keys.json", "vault/deep/keys.json"]
    proc = run_api(SHIM_WRITER, [data_dir, secret, json.dumps(rels), json.dumps(CONTROL)], env)
    assert proc.returncode == 0, proc.stderr.decode()
    stats = json.loads(proc.stdout.decode().splitlines()[-1])["stats"]
    # Sent by this shim and confirmed: the two files, private/more.json written and removed.
    assert stats["sync_failed"] == 0 and stats["sync_ok"] == len(CONTROL) + 1 + len(rels) + 2
    assert stats["ignored"] == 2  # the atomic writer's temp file: a built-in glob, the same everywhere
    assert d.daemon.status.shim_events.labels(status="ignored")._value.get() == len(rels) + 2
    assert_control_mirrored(d.daemon.store.db)
    d.wait_parity(15)
    assert_nothing_ignored_stored(d.daemon.store.db, secret, ("private/more.json",))


# --- reconcile (start-up and on demand) and the one-shot sync ---------------------------------------
def test_reconcile_never_mirrors_ignored_files(data_dir, running, secret):
    write_files(data_dir, IGNORED, json.dumps({"api_key": secret}))
    write_control(data_dir)
    d = running(sidecar_ignore=EXTRA_IGNORE)  # the start-up reconcile sees them all
    db = d.daemon.store.db
    assert_control_mirrored(db)
    report = d.wait_parity(15)
    assert report["source_counts"]["files"] == 1  # runs/run_ok.json only
    reconcile_now(d)
    assert_nothing_ignored_stored(db, secret)
    assert not d.daemon.status.problems  # skipped quietly, not bad input


def test_sync_never_mirrors_ignored_files(data_dir, make_config, store, secret):
    from sidecar.sync import run_sync

    write_files(data_dir, IGNORED, json.dumps({"api_key": secret}))
    write_control(data_dir)
    config = make_config(sidecar_ignore=EXTRA_IGNORE)
    report, code = run_sync(config, store)
    assert code == 0
    assert report["source_counts"]["files"] == 1
    assert report["bad_input"]["count"] == 0  # skipped quietly, not bad input
    assert_nothing_ignored_stored(store.db, secret)
