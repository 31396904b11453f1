"""Watcher edge cases against a running daemon: moves in/out/within, directories,
atomic writers, ignore globs, symlinks, queue overflow, propagated deletes — plus
unit tests of the coalescing ``Pending`` queue.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from testkit.measure import wait_for
from testkit.daemon_fixtures import TOKEN, reconcile_now

from sidecar import watcher as watcher_mod
from sidecar.pending import Pending
from sidecar.source import sha256_hex
from sidecar.status import Status

# watchdog's own recursive re-add of a just-created directory can warn about a duplicate
# callback (its internals, harmless): keep it out of the report.
pytestmark = pytest.mark.filterwarnings("ignore:Callback with id:RuntimeWarning")

SECRET = "outside-secret-5b1e0c"


def write(root: Path, rel: str, obj) -> bytes:
    data = json.dumps(obj, indent=2).encode()
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def manifest(db, rel: str) -> dict | None:
    return db.memory_files.find_one({"_id": rel})


def wait_mirrored(db, rel: str, data: bytes, timeout: float = 10.0) -> dict:
    sha = sha256_hex(data)

    def ok():
        doc = manifest(db, rel)
        return doc if doc and doc.get("sha256") == sha and doc.get("deleted_at") is None else None
    return wait_for(ok, timeout, 0.02, f"{rel} mirrored")


def wait_recorded_deleted(db, rel: str, timeout: float = 10.0) -> dict:
    def ok():
        doc = manifest(db, rel)
        return doc if doc and doc.get("deleted_at") is not None else None
    doc = wait_for(ok, timeout, 0.02, f"the deletion of {rel} recorded")
    # Events are written after the documents they describe: wait for it too.
    wait_for(lambda: db.memory_events.find_one({"event_type": "file_deleted_recorded", "path": rel}),
             timeout, 0.02, f"the file_deleted_recorded event of {rel}")
    return doc


def everything(db) -> str:
    """Every stored byte, as text (GridFS chunks included)."""
    out = []
    for name in db.list_collection_names():
        if name.endswith(".chunks"):
            out.extend(bytes(d["data"]).decode("latin-1") for d in db[name].find())
        else:
            out.extend(json.dumps(d, default=str) for d in db[name].find())
    return "\n".join(out)


def quiesced_reconcile_at(d) -> str | None:
    """last_reconcile_at once nothing is queued and no flush (or reconcile) is running,
    so a later change can only come from what the test does next."""
    wait_for(lambda: len(d.daemon.pending) == 0, 10, what="the queue to drain")
    with d.daemon.mirror.lock:  # held by the writer for the whole of a flush or reconcile
        return d.daemon.status.last_reconcile_at


@pytest.fixture
def outside(tmp_path) -> Path:
    d = tmp_path / "outside"
    d.mkdir()
    return d


# --- moves ---------------------------------------------------------------------------------
@pytest.mark.integration
def test_file_moves_into_out_of_and_within_the_dir(data_dir, running, outside):
    d = running()
    db = d.daemon.store.db
    # In from outside (same filesystem, so a real rename: only IN_MOVED_TO is seen).
    data = write(outside, "run_in.json", {"run_id": "in", "steps": [1, 2]})
    (data_dir / "runs").mkdir()
    os.rename(outside / "run_in.json", data_dir / "runs" / "run_in.json")
    wait_mirrored(db, "runs/run_in.json", data)

    # Within the dir: the new name is mirrored, the old one recorded as deleted.
    os.rename(data_dir / "runs" / "run_in.json", data_dir / "runs" / "run_renamed.json")
    wait_mirrored(db, "runs/run_renamed.json", data)
    wait_recorded_deleted(db, "runs/run_in.json")

    # Out of the dir: recorded as deleted, data kept (deletes are not propagated by default).
    ep = write(data_dir, "episodes/skeleton_r1.json", {"run_id": "r1", "status": "completed", "nodes": []})
    wait_mirrored(db, "episodes/skeleton_r1.json", ep)
    assert db.episodic_memory.find_one({"run_id": "r1"})
    os.rename(data_dir / "episodes" / "skeleton_r1.json", outside / "skeleton_r1.json")
    wait_recorded_deleted(db, "episodes/skeleton_r1.json")
    assert db.episodic_memory.find_one({"run_id": "r1"}), "a moved-out file must not delete its data"
    assert db.memory_events.count_documents({"event_type": "episode_deleted"}) == 0
    d.wait_parity()


@pytest.mark.integration
def test_directories_created_moved_in_renamed_and_deleted(data_dir, running, outside):
    d = running()
    db = d.daemon.store.db
    # A nested directory created inside, files written straight away (before or after
    # the new watch exists: the directory scan covers the race).
    nested = {f"notes/deep/er/n{i}.json": write(data_dir, f"notes/deep/er/n{i}.json", {"n": i}) for i in range(3)}
    for rel, data in nested.items():
        wait_mirrored(db, rel, data)

    # A whole directory tree moved in from outside.
    moved = {}
    for rel in ("a.json", "b.json", "sub/c.json"):
        moved[f"incoming/{rel}"] = write(outside / "batch", rel, {"file": rel})
    os.rename(outside / "batch", data_dir / "incoming")
    for rel, data in moved.items():
        wait_mirrored(db, rel, data)

    # A directory renamed within the dir: new paths mirrored; the old ones went with
    # their directory, which is not an edit of a file: held as divergences.
    os.rename(data_dir / "incoming", data_dir / "arrived")
    for rel, data in moved.items():
        wait_mirrored(db, rel.replace("incoming/", "arrived/", 1), data)
    held = lambda: {i["path"] for i in d.get("/divergences").json()["items"]}  # noqa: E731
    wait_for(lambda: set(moved) <= held(), 10, what="the old paths to be held")

    # A directory deleted: a full reconcile holds every file in it, marks none deleted.
    before = quiesced_reconcile_at(d)
    shutil.rmtree(data_dir / "notes")
    wait_for(lambda: d.daemon.status.last_reconcile_at != before, 10, what="a full reconcile")
    wait_for(lambda: set(nested) <= held(), 10, what="the deleted dir's files to be held")
    assert db.memory_files.count_documents({"_id": {"$regex": "^notes/"}, "deleted_at": None}) == 3
    # The operator accepts: now they are recorded deleted, and parity holds.
    accept = d.get("/divergences/accept", "POST", {"Authorization": f"Bearer {TOKEN}"})
    assert accept.status == 200 and sorted(accept.json()["accepted"]) == sorted(set(moved) | set(nested))
    for rel in list(nested) + list(moved):
        wait_recorded_deleted(db, rel)
    assert d.get("/divergences").json()["count"] == 0
    d.wait_parity()


@pytest.mark.integration
def test_atomic_writer_is_mirrored_once_with_final_content(data_dir, running):
    d = running()
    db = d.daemon.store.db
    rel = "runs/run_atomic.json"
    (data_dir / "runs").mkdir()

    def atomic_write(obj) -> bytes:
        data = json.dumps(obj, indent=2).encode()
        tmp = data_dir / "runs" / "run_atomic.json.tmp"
        with open(tmp, "wb") as f:
            f.write(data[:10])
            f.flush()
            f.write(data[10:])
            os.fsync(f.fileno())
        os.replace(tmp, data_dir / rel)
        return data

    v1 = atomic_write({"v": 1, "steps": list(range(50))})
    wait_mirrored(db, rel, v1)
    v2 = atomic_write({"v": 2, "steps": list(range(60))})
    wait_mirrored(db, rel, v2)
    wait_for(lambda: db.memory_events.count_documents({"path": rel}) >= 2, 10, what="the events of both writes")
    d.wait_parity()
    events = list(db.memory_events.find({"path": rel}, {"event_type": 1}))
    assert sorted(e["event_type"] for e in events) == ["file_inserted", "file_updated"]
    assert db.memory_files.count_documents({"_id": {"$regex": r"\.tmp$"}}) == 0
    assert db.memory_events.count_documents({"path": {"$regex": r"\.tmp$"}}) == 0


# --- ignore globs ----------------------------------------------------------------------------
@pytest.mark.integration
def test_ignore_globs_custom_and_default(data_dir, running):
    d = running(sidecar_ignore="*.bak, cache/*")
    db = d.daemon.store.db
    ignored = ["notes.bak", "runs/run_x.json.bak", "cache/c.json", "cache/deep/d.json",  # SIDECAR_IGNORE
               "reports/sync_report.json", "reports/deep/r.json",  # the sidecar's own reports
               "scratch.tmp", "runs/run_y.json.tmp",  # temp files
               "foo.swp", ".scheduled_jobs.json.swp", "runs/.run_z.json.swp", "notes/x.json~"]  # editors
    for rel in ignored:
        write(data_dir, rel, {"ignored": rel})
    sentinel = write(data_dir, "runs/run_sentinel.json", {"seen": True})
    wait_mirrored(db, "runs/run_sentinel.json", sentinel)
    reconcile_now(d)  # the full walk honours the same globs
    d.wait_parity()
    stored = {doc["_id"] for doc in db.memory_files.find({}, {"_id": 1})}
    assert stored == {"runs/run_sentinel.json"}
    assert db.memory_events.count_documents({"path": {"$in": ignored}}) == 0
    assert d.parity()["source_counts"]["files"] == 1


@pytest.mark.integration
def test_path_ignore_glob_holds_for_a_directory_moved_in(data_dir, running, outside):
    d = running(sidecar_ignore="incoming/private/*")
    db = d.daemon.store.db
    a = write(outside / "batch", "a.json", {"a": 1})
    write(outside / "batch", "private/p.json", {"private": True})
    os.rename(outside / "batch", data_dir / "incoming")
    wait_mirrored(db, "incoming/a.json", a)
    # The directory scan marks both files at once (a.json then private/p.json); a later
    # write is taken no earlier than p.json, so once it is mirrored p.json was handled.
    later = write(data_dir, "runs/run_later.json", {"later": True})
    wait_mirrored(db, "runs/run_later.json", later)
    assert manifest(db, "incoming/private/p.json") is None, "an ignored file was mirrored"


# --- symlinks ----------------------------------------------------------------------------------
@pytest.mark.integration
def test_symlinks_created_inside_are_never_followed(data_dir, running, outside):
    (outside / "secret.json").write_text(json.dumps({"learner": {"password": SECRET}}, indent=2))
    (outside / "dir").mkdir()
    (outside / "dir" / "skeleton_x.json").write_text(json.dumps({"run_id": "x", "note": SECRET}))
    d = running()
    db = d.daemon.store.db
    (data_dir / "structured_hubs").mkdir()
    os.symlink(outside / "secret.json", data_dir / "structured_hubs" / "evil.json")
    os.symlink(outside / "secret.json", data_dir / "leak.json")
    os.symlink(outside / "dir", data_dir / "episodes")
    links = {"structured_hubs/evil.json", "leak.json", "episodes"}

    def flagged():
        problems = d.get("/memory/status").json()["sidecar"]["problems"]
        got = {p["path"] for p in problems if p["reason"] == "symlink"}
        return got if links <= got else None
    wait_for(flagged, 10, what="the symlinks to show as problems")
    reconcile_now(d)  # the full walk does not follow them either
    assert links <= flagged()
    stored = everything(db)
    assert SECRET not in stored
    assert db.memory_hubs.count_documents({"hub_type": "evil"}) == 0
    assert db.episodic_memory.count_documents({}) == 0
    for path in ("/memory/status", "/parity", "/metrics"):
        assert SECRET not in d.get(path).body.decode()
    # Parity: nothing missing, extra or different; the links count as bad input, not as data.
    report = d.parity()
    for kind, row in report["kinds"].items():
        assert (row["missing"]["count"], row["extra"]["count"], row["different"]["count"]) == (0, 0, 0), kind
    assert report["kinds"]["hubs"]["bad_files"] == 1
    assert report["source_counts"]["hub_entries"] == 0 and report["mongo_counts"]["hub_entries"] == 0


# --- overflow ----------------------------------------------------------------------------------
# The daemon learns of an inotify queue overflow through watchdog's own callback for it
# (>= 7.1: InotifyFD calls on_queue_overflow() of each watch group; sidecar/watcher.py
# _OverflowWatchGroup), never from its log text.
inotify_only = pytest.mark.skipif(not watcher_mod.INOTIFY, reason="inotify (Linux) only")
MAX_QUEUED = Path("/proc/sys/fs/inotify/max_queued_events")


def watch_group(watcher):
    """The watchdog watch group (the overflow callback's owner) of the watcher's emitter."""
    [emitter] = watcher.observer.emitters
    group = wait_for(lambda: getattr(emitter, "_inotify", None), 10, what="the emitter's watches")
    assert isinstance(group, watcher_mod._OverflowWatchGroup)
    return group


def overflow_event():
    """What watchdog's InotifyFD.read_events builds from the kernel's IN_Q_OVERFLOW record
    (wd -1, no name) and hands to InotifyFD.handle_event."""
    from watchdog.observers.inotify_c import InotifyConstants, InotifyEvent  # Linux only
    return InotifyEvent(-1, InotifyConstants.IN_Q_OVERFLOW, 0, b"")


@pytest.mark.integration
@inotify_only
def test_queue_overflow_runs_a_full_reconcile(data_dir, running):
    """A real kernel overflow: watchdog's reader is held up, as by a busy process, while
    more events than the inotify queue holds are made; the events of a write after
    that are dropped by the kernel, and only the full reconcile can find it."""
    max_queued = int(MAX_QUEUED.read_text())
    if max_queued > 1 << 17:
        pytest.skip(f"fs.inotify.max_queued_events={max_queued}: too many events to make")
    d = running()
    db = d.daemon.store.db
    group = watch_group(d.daemon.watcher)
    before = quiesced_reconcile_at(d)
    # watchdog's inotify thread takes this lock for each event it reads: holding it stops
    # the reading after at most one buffer (<= 2,560 events of a short name).
    with group._lock:
        noise = os.open(data_dir / "noise.tmp", os.O_WRONLY | os.O_CREAT, 0o644)  # ignored (*.tmp)
        os.close(noise)
        # Open-write-close gives IN_MODIFY, IN_CLOSE_WRITE: no two in a row alike, so
        # the kernel coalesces none of them.
        for _ in range((max_queued + 8192) // 2):
            noise = os.open(data_dir / "noise.tmp", os.O_WRONLY)
            os.write(noise, b"x")
            os.close(noise)
        lost = write(data_dir, "runs/run_lost.json", {"lost": True})  # past the full queue
        assert "runs/run_lost.json" not in d.daemon.pending.paths()
        assert manifest(db, "runs/run_lost.json") is None
        assert d.daemon.status.error_counts.get("watch_overflow") is None
    wait_mirrored(db, "runs/run_lost.json", lost)
    wait_for(lambda: d.daemon.status.last_reconcile_at != before, 10, what="the full reconcile")
    status = d.get("/memory/status").json()["sidecar"]
    assert status["errors_by_kind"].get("watch_overflow") == 1
    assert status["watcher"] == "running"
    assert 'sidecar_events_total{event="overflow",kind="all"} 1.0' in d.get("/metrics").body.decode()
    d.wait_parity()
    # The watcher still works after the overflow (watchdog re-added its watches).
    after = write(data_dir, "runs/run_after.json", {"after": True})
    wait_mirrored(db, "runs/run_after.json", after)


@pytest.mark.integration
@inotify_only
def test_queue_overflow_is_detected_whatever_the_log_level(data_dir, running):
    d = running()
    db = d.daemon.store.db
    logging.disable(logging.CRITICAL)  # no log record is made at all, not even watchdog's
    try:
        d.daemon.watcher.stop()
        try:
            lost = write(data_dir, "runs/run_lost.json", {"lost": True})
        finally:
            d.daemon.watcher.start()
        # Hand watchdog's inotify instance the event it reads on IN_Q_OVERFLOW.
        d.daemon.watcher.observer.inotify_fd.handle_event(overflow_event())
    finally:
        logging.disable(logging.NOTSET)
    # The hook runs synchronously inside handle_event: no wait needed to see it.
    assert d.daemon.status.error_counts.get("watch_overflow") == 1, "the overflow went unnoticed"
    wait_mirrored(db, "runs/run_lost.json", lost)


@inotify_only
def test_overflow_hook_runs_after_watchdog_rewatched_the_tree(tmp_path):
    """Once per overflow, and after watchdog re-added its watches (new watch descriptors
    for the same directories): a reconcile it starts cannot miss a change unwatched."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    pending, status = Pending(), Status()
    watcher = watcher_mod.Watcher(tmp_path, (), pending, status)
    watcher.start()
    try:
        group = watch_group(watcher)
        watched = dict(group._active_callbacks_by_watch)  # watch descriptor -> directory
        seen = []
        real = watcher.overflow
        group.on_overflow = lambda: (seen.append(dict(group._active_callbacks_by_watch)), real())
        watcher.observer.inotify_fd.handle_event(overflow_event())
    finally:
        watcher.stop()
    assert sorted(watched.values()) == sorted(os.fsencode(p) for p in (tmp_path, tmp_path / "a", tmp_path / "a" / "b"))
    [rewatched] = seen
    assert sorted(rewatched.values()) == sorted(watched.values())
    assert not set(rewatched) & set(watched), "the hook ran before watchdog rebuilt its watches"
    assert status.error_counts == {"watch_overflow": 1}
    assert pending.take(timeout=0)[0] is not None, "no full reconcile asked for"


def test_watchdog_log_text_is_not_an_overflow_signal(tmp_path):
    """The old detection matched watchdog's warning text; the exact text now counts for nothing."""
    assert not hasattr(watcher_mod, "OVERFLOW_TEXT") and not hasattr(watcher_mod, "_OverflowHook")
    source = Path(watcher_mod.__file__).read_text()
    assert "logging.Handler" not in source and "queue overflowed" not in source.lower()
    loggers = [logging.getLogger(n) for n in ("watchdog.observers", "watchdog.observers.inotify",
                                             "watchdog.observers.inotify_c")]
    handlers = [list(lg.handlers) for lg in loggers]
    levels = [lg.level for lg in loggers]
    pending, status = Pending(), Status()
    watcher = watcher_mod.Watcher(tmp_path, (), pending, status)
    watcher.start()
    try:
        assert [list(lg.handlers) for lg in loggers] == handlers, "the watcher hooked watchdog's logging"
        assert [lg.level for lg in loggers] == levels
        logging.getLogger("watchdog.observers.inotify_c").warning(
            "Inotify queue overflowed; filesystem events were lost")
        logging.getLogger("watchdog.observers.inotify").warning(
            "Inotify queue overflowed; reconciling recursive watches below %r", os.fsencode(tmp_path))
    finally:
        watcher.stop()
    assert "watch_overflow" not in status.error_counts
    assert len(pending) == 0


def test_the_watchdog_tested_here_is_in_the_pinned_range():
    """pyproject.toml pins the watchdog releases that have the overflow callback; the one these
    tests run against must be one of them."""
    spec = next(Requirement(r) for r in tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
                ["project"]["dependencies"] if Requirement(r).name == "watchdog")
    assert spec.specifier.contains(version("watchdog")), (version("watchdog"), str(spec))
    assert not spec.specifier.contains("7.0.0"), "7.0 has no on_queue_overflow: the pin must exclude it"


# --- propagated deletes --------------------------------------------------------------------------
@pytest.mark.integration
def test_propagate_file_deletes_removes_the_episode_document(data_dir, running):
    d = running(sidecar_propagate_file_deletes=True)
    db = d.daemon.store.db
    rel = "episodes/skeleton_gone.json"
    data = write(data_dir, rel, {"run_id": "gone", "status": "completed", "nodes": []})
    wait_mirrored(db, rel, data)
    assert db.episodic_memory.find_one({"run_id": "gone"})
    (data_dir / rel).unlink()
    wait_for(lambda: db.episodic_memory.find_one({"run_id": "gone"}) is None, 10,
             what="the episode document to be deleted")
    wait_for(lambda: manifest(db, rel) is None, 10, what="the manifest to be deleted")
    wait_for(lambda: db.memory_events.find_one({"event_type": "episode_deleted", "path": rel}), 10,
             what="the episode_deleted event")
    d.wait_parity()


# --- Pending (unit) ------------------------------------------------------------------------------
def test_pending_coalesces_a_burst_into_one_entry():
    p = Pending()
    for _ in range(1000):
        p.mark("structured_hubs/a.json")
    assert len(p) == 1
    full, taken = p.take(timeout=1)
    assert full is None and list(taken) == ["structured_hubs/a.json"]
    assert len(p) == 1  # in flight: pending until the writer says it is done
    assert p.take(timeout=0) == (None, {})
    p.done(taken)
    assert len(p) == 0


def test_pending_delay_is_honoured_by_take():
    p = Pending()
    p.mark("later.json", delay=3600)
    p.mark("now.json", delay=0)
    _, taken = p.take(timeout=1)
    assert list(taken) == ["now.json"]
    # Not ready within a short timeout: take returns empty rather than early.
    assert p.take(timeout=0.05) == (None, {})
    assert p.paths() == {"later.json", "now.json"}  # queued, and in flight
    p.done(taken)
    assert p.paths() == {"later.json"}
    # ignore_delay (shutdown's final flush) takes it regardless.
    _, taken = p.take(timeout=0, ignore_delay=True)
    assert list(taken) == ["later.json"]
    # A new event re-arms the delay: the last event counts.
    p.mark("x.json", delay=0)
    p.mark("x.json", delay=3600)
    assert p.take(timeout=0.05) == (None, {})


def _record_waits(p: Pending) -> list:
    waits = []
    real = p._cond.wait
    p._cond.wait = lambda timeout=None: waits.append(timeout) or real(0)
    return waits


def test_pending_lingers_for_a_fresh_burst_only(monkeypatch):
    import sidecar.pending as pending_mod

    p = Pending()
    waits = _record_waits(p)
    p.mark("fresh.json")
    _, taken = p.take(timeout=1, linger=30)
    assert list(taken) == ["fresh.json"]
    assert waits and waits[-1] > 29  # a burst just starting gathers for up to the linger
    # Work that became ready while the writer was busy (a flush took a minute here)
    # is taken at once: it has waited long enough.
    p.mark("queued.json")
    waits.clear()
    real = time.monotonic
    monkeypatch.setattr(pending_mod.time, "monotonic", lambda: real() + 60)
    _, taken = p.take(timeout=1, linger=30)
    assert list(taken) == ["queued.json"]
    assert waits == []


def test_pending_limit_and_full_reconcile():
    p = Pending()
    for i in range(5):
        p.mark(f"f{i}.json")
    _, taken = p.take(timeout=1, limit=2)
    assert len(taken) == 2 and len(p) == 5 and p.queued() == 3
    p.done(taken)
    assert len(p) == 3
    p.mark("late.json", delay=3600)
    p.mark_full()
    full, taken = p.take(timeout=1, limit=1)
    assert full is not None
    assert set(taken) == {"f2.json", "f3.json", "f4.json", "late.json"}  # a full pass takes everything
    assert p.queued() == 0 and len(p) == 5  # four paths and the full pass, in flight
    p.done(taken, full)
    assert len(p) == 0


def test_pending_requeue_keeps_first_seen():
    p = Pending()
    first = time.monotonic() - 30
    p.mark("a.json", first_seen=first)
    p.mark("a.json")  # later events never make the entry younger
    _, taken = p.take(timeout=1)
    assert taken == {"a.json": first}
    p.requeue(taken, 0.0)
    p.mark("a.json")
    _, again = p.take(timeout=1)
    assert again == {"a.json": first}
    # A full-reconcile request survives a requeue with its own first_seen.
    p.requeue({}, 0.0, full=first)
    full, _ = p.take(timeout=1)
    assert full == first


def test_pending_oldest_age():
    p = Pending()
    assert p.oldest_age() == 0.0
    p.mark("young.json")
    p.mark("old.json", first_seen=time.monotonic() - 100)
    assert 100 <= p.oldest_age() < 1000
    _, taken = p.take(timeout=1)
    assert 100 <= p.oldest_age() < 1000  # in flight: still lagging
    p.done(taken)
    assert p.oldest_age() == 0.0
    p.mark_full(first_seen=time.monotonic() - 50)
    assert 50 <= p.oldest_age() < 1000


def test_pending_counts_a_batch_in_flight_until_done_or_requeued():
    p = Pending()
    first = time.monotonic() - 30
    p.mark("a.json", first_seen=first)
    p.mark("b.json")
    _, taken = p.take(timeout=1)
    assert set(taken) == {"a.json", "b.json"}
    assert len(p) == 2 and p.queued() == 0 and p.inflight() == {"a.json", "b.json"}
    assert p.oldest_age() >= 30
    p.mark("a.json")  # written again while its batch is in flight: still one path
    assert len(p) == 2 and p.queued() == 1
    p.requeue(taken, 0.0)  # not acknowledged: queued again, no longer in flight
    assert p.inflight() == set() and len(p) == 2 and p.oldest_age() >= 30
    _, taken = p.take(timeout=1)
    assert taken["a.json"] == first
    p.done(taken)
    assert len(p) == 0 and p.paths() == set() and p.oldest_age() == 0.0
    # A full reconcile being run counts as one entry, with its own age.
    p.mark_full(first_seen=time.monotonic() - 50)
    full, taken = p.take(timeout=1)
    assert len(p) == 1 and p.oldest_age() >= 50
    p.done(taken, full)
    assert len(p) == 0


def test_pending_times_the_writes_under_way():
    p = Pending()
    assert p.write_age() == 0.0
    with p.writing():
        wait_for(lambda: p.write_age() > 0, 5, 0.001, "the write's clock to run")
        with p.writing():
            first = p.write_age()
        assert p.write_age() >= first  # the oldest write under way counts
    assert p.write_age() == 0.0


def test_pending_close_unblocks_take():
    p = Pending()
    result = {}

    def taker():
        result["value"] = p.take(timeout=60)
    t = threading.Thread(target=taker, name="test-pending-taker")
    t.start()
    # Blocked inside take(): waiting on the queue's condition (CPython's Condition keeps
    # its waiters in ``_waiters``).
    wait_for(lambda: len(p._cond._waiters) > 0, 10, 0.005, "take() to block")
    p.close()
    t.join(30)
    assert not t.is_alive(), "close() must wake a blocked take()"
    assert result["value"] == (None, {})
    # After close, what is left can still be drained (the shutdown flush does this).
    p.mark("left.json", delay=3600)
    full, taken = p.take(timeout=0, ignore_delay=True)
    assert full is None and list(taken) == ["left.json"]
