"""The watched root (DESIGN §5): the data dir deleted, re-created or replaced while
the daemon runs is noticed (the watcher re-attaches, or /readyz turns 503 with the
reason); a root that is a symlink is never followed, at start or later.

On the real filesystem, with the in-process daemon and the test server; every
wait is a bounded poll.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from testkit import ROOT
from testkit.measure import free_port, wait_for
from testkit.daemon_fixtures import reconcile_now
from sidecar.reconcile import Reconciler
from sidecar.state import build_state
from sidecar.source import DataDirMissing, SourceError, check_root, exists, read_file, sha256_hex, walk

# watchdog's own recursive re-add of a just-created directory can warn about a duplicate
# callback (its internals, harmless): keep it out of the report.
pytestmark = pytest.mark.filterwarnings("ignore:Callback with id:RuntimeWarning")

SECRET = "outside-secret-7c2f91"
SYMLINK_REASON = "data dir is a symlink; not followed"
MISSING_REASON = "data dir missing"
HUB = "structured_hubs/learner_preferences.json"
RUN = "runs/run_a.json"
EPISODE = "episodes/skeleton_r1.json"


def write(root: Path, rel: str, obj) -> bytes:
    data = json.dumps(obj, indent=2).encode()
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def fill(root: Path) -> dict[str, bytes]:
    """A hub, a run and an episode, as the legacy writer lays them out."""
    return {
        HUB: write(root, HUB, {"learner-1": {"pace": "slow"}, "learner-2": {"pace": "fast"}}),
        RUN: write(root, RUN, {"run_id": "a", "steps": [1, 2, 3]}),
        EPISODE: write(root, EPISODE, {"run_id": "r1", "status": "completed", "nodes": []}),
    }


def manifest(db, rel: str) -> dict | None:
    return db.memory_files.find_one({"_id": rel})


def wait_mirrored(db, rel: str, data: bytes, timeout: float = 10.0) -> dict:
    sha = sha256_hex(data)

    def ok():
        doc = manifest(db, rel)
        return doc if doc and doc.get("sha256") == sha and doc.get("deleted_at") is None else None
    return wait_for(ok, timeout, 0.02, f"{rel} mirrored")


def everything(db) -> str:
    """Every stored byte, as text (GridFS chunks included)."""
    out = []
    for name in db.list_collection_names():
        if name.endswith(".chunks"):
            out.extend(bytes(d["data"]).decode("latin-1") for d in db[name].find())
        else:
            out.extend(json.dumps(d, default=str) for d in db[name].find())
    return "\n".join(out)


def mirrored_docs(db) -> dict[str, list]:
    """The mirrored documents (not the event log), for before/after comparisons."""
    return {name: sorted((json.dumps(d, default=str, sort_keys=True) for d in db[name].find()))
            for name in ("memory_hubs", "memory_files", "episodic_memory", "runtime_snapshots")}


def readyz(d):
    return d.get("/readyz")


def wait_not_ready(d, reason: str, timeout: float = 10.0):
    def ok():
        r = readyz(d)
        return r if r.status == 503 and r.json() == {"ready": False, "reason": reason} else None
    return wait_for(ok, timeout, 0.02, f"/readyz 503 {reason!r}")


def wait_ready(d, timeout: float = 10.0) -> None:
    wait_for(lambda: readyz(d).status == 200, timeout, 0.02, "/readyz 200")


def wait_attached(d, root: Path, timeout: float = 10.0) -> None:
    """The watcher is on the directory now at ``root`` (not on an old inode)."""
    watcher = d.daemon.watcher

    def ok():
        st = os.lstat(root)
        att = watcher.attached
        return att is not None and (att.dev, att.ino) == (st.st_dev, st.st_ino) and watcher.alive() \
            and d.daemon.rootwatch.state == "ok"
    wait_for(ok, timeout, 0.02, f"the watcher re-attached to {root}")


def spy_marks(d) -> list[str]:
    """Every path the watcher (or anyone) queues from now on."""
    pending = d.daemon.pending
    seen: list[str] = []
    original = pending.mark

    def mark(rel, *args, **kwargs):
        seen.append(rel)
        return original(rel, *args, **kwargs)
    pending.mark = mark
    return seen


def quiesce(d) -> None:
    wait_for(lambda: len(d.daemon.pending) == 0, 10, what="the queue to drain")
    with d.daemon.mirror.lock:  # held by the writer for the whole of a flush or reconcile
        pass


@pytest.fixture
def outside(tmp_path) -> Path:
    """A directory outside the data dir holding a secret."""
    d = tmp_path / "outside"
    write(d, HUB, {"intruder": {"password": SECRET}})
    write(d, "runs/run_secret.json", {"run_id": "secret", "token": SECRET})
    return d


# --- (f) source.py: nothing reads through a symlinked root; a missing root is never "vanished" --------
def test_source_never_reads_through_a_symlinked_root(tmp_path, outside):
    link = tmp_path / "link"
    os.symlink(outside, link)
    for rel in (HUB, "runs/run_secret.json"):
        with pytest.raises(DataDirMissing) as info:
            read_file(link, rel)
        assert info.value.reason == "data_dir_symlink"
        assert SECRET not in info.value.message
        assert exists(link, rel) is False
    with pytest.raises(DataDirMissing) as info:
        list(walk(link, ()))
    assert info.value.reason == "data_dir_symlink"
    with pytest.raises(DataDirMissing):
        list(walk(link, (), under="runs"))
    with pytest.raises(DataDirMissing) as info:
        check_root(link)
    assert info.value.message == f"data dir {str(link)!r} is a symlink; refusing to follow it"
    with pytest.raises(DataDirMissing):
        check_root(link, must_exist=False)


def test_source_missing_root_is_data_dir_missing_never_vanished(tmp_path):
    root = tmp_path / "gone"
    for call in (lambda: read_file(root, RUN), lambda: list(walk(root, ())), lambda: check_root(root)):
        with pytest.raises(DataDirMissing) as info:
            call()
        assert info.value.reason == "data_dir_missing"
    assert exists(root, RUN) is False
    assert check_root(root, must_exist=False) == root  # the daemon creates it
    # A root that is a regular file: not a directory, still not "vanished".
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataDirMissing) as info:
        read_file(tmp_path / "file", RUN)
    assert info.value.reason == "data_dir_missing"
    # One file gone from a root that is there: that, and only that, is "vanished".
    root.mkdir()
    with pytest.raises(SourceError) as info:
        read_file(root, RUN)
    assert info.value.reason == "vanished" and not isinstance(info.value, DataDirMissing)


def test_walk_goes_by_directory_fds_and_never_descends_a_link(tmp_path, outside):
    root = tmp_path / "root"
    files = fill(root)
    os.symlink(outside / "runs", root / "linked_runs")
    os.symlink(outside, root / "episodes" / "deeper")
    items = [i if isinstance(i, str) else (i.rel, i.reason) for i in walk(root, ())]
    # The same order as ever: a directory's own entries (sorted), then its subdirectories.
    assert items == [("linked_runs", "symlink"), ("episodes/deeper", "symlink"), EPISODE, RUN, HUB]
    assert set(files) == {EPISODE, RUN, HUB}
    # Walking a part of the tree whose last component is a link does not follow it.
    part = list(walk(root, (), under="linked_runs"))
    assert [(i.rel, i.reason) for i in part] == [("linked_runs", "symlink")]
    assert [i for i in walk(root, (), under="runs")] == [RUN]
    # An abandoned walk leaves no descriptor open.
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        it = walk(root, ())
        next(it)
        it.close()
    assert len(os.listdir("/proc/self/fd")) == fds


@pytest.mark.integration
def test_reconcile_without_a_root_records_nothing_deleted(make_config, data_dir, store):
    from sidecar.sync import run_sync

    config = make_config()
    fill(data_dir)
    run_sync(config, store)
    state = build_state(store.iter_state())
    assert len(state.files) == 3
    shutil.rmtree(data_dir)
    ops, view = Reconciler(config).scan(state, "reconcile")
    assert ops == []
    assert [(p.path, p.reason) for p in view.problems] == [(".", "data_dir_missing")]
    data_dir.parent.joinpath("elsewhere").mkdir()
    os.symlink(data_dir.parent / "elsewhere", data_dir)
    ops, view = Reconciler(config).scan(state, "reconcile")
    assert ops == [] and [p.reason for p in view.problems] == ["data_dir_symlink"]


# --- (a) rm -rf D; mkdir D ------------------------------------------------------------------------
@pytest.mark.integration
def test_root_deleted_and_recreated_is_reattached(data_dir, running):
    d = running()
    db = d.daemon.store.db
    for rel, data in fill(data_dir).items():
        wait_mirrored(db, rel, data)

    shutil.rmtree(data_dir)
    data_dir.mkdir()  # often the very same inode number again (ext4): not what tells it apart
    first = write(data_dir, "runs/run_new.json", {"run_id": "new", "steps": [9]})
    wait_mirrored(db, "runs/run_new.json", first)
    wait_attached(d, data_dir)
    wait_ready(d)
    assert d.daemon.status.root_problem is None
    # The watch itself (not only a reconcile) is on the new directory now.
    seen = spy_marks(d)
    later = write(data_dir, "runs/run_later.json", {"run_id": "later"})
    wait_for(lambda: "runs/run_later.json" in seen, 10, what="the watcher to see a write in the new dir")
    wait_mirrored(db, "runs/run_later.json", later)
    events = d.get("/metrics").body.decode()
    assert 'kind="root"' in events and "sidecar_root_ok 1.0" in events


# --- (b) a volume swap: D moved away, another dir moved into its place ----------------------------
@pytest.mark.integration
def test_volume_swap_reattaches_and_ignores_the_old_dir(data_dir, running, tmp_path):
    d = running()
    db = d.daemon.store.db
    for rel, data in fill(data_dir).items():
        wait_mirrored(db, rel, data)
    prepared = tmp_path / "new-volume"
    swapped_in = write(prepared, "runs/run_swapped.json", {"run_id": "swapped"})
    old = tmp_path / "old-volume"

    os.rename(data_dir, old)
    os.rename(prepared, data_dir)
    wait_attached(d, data_dir)
    wait_ready(d)
    wait_mirrored(db, "runs/run_swapped.json", swapped_in)  # what it held already (a full look)

    seen = spy_marks(d)
    # A write in the old directory (now elsewhere), then one in the new: the watch is on the
    # new inode only, and one inotify queue keeps their order, so once the second was seen
    # the first would have been too.
    write(old, "runs/run_from_old.json", {"run_id": "from_old"})
    in_new = write(data_dir, "runs/run_in_new.json", {"run_id": "in_new"})
    wait_for(lambda: "runs/run_in_new.json" in seen, 10, what="the write in the new dir seen")
    wait_mirrored(db, "runs/run_in_new.json", in_new)
    quiesce(d)
    assert "runs/run_from_old.json" not in seen, "the watcher still watches the moved-away directory"
    assert manifest(db, "runs/run_from_old.json") is None
    assert db.memory_events.count_documents({"path": "runs/run_from_old.json"}) == 0


@pytest.mark.integration
def test_events_from_the_moved_away_dir_are_dropped_before_the_monitor_polls(data_dir, running, tmp_path):
    # The poll is far away: only the watcher's own check can notice the swap in time.
    d = running(sidecar_root_check_ms=60_000)
    db = d.daemon.store.db
    files = fill(data_dir)
    for rel, data in files.items():
        wait_mirrored(db, rel, data)
    prepared = tmp_path / "new-volume"
    kept = write(prepared, RUN, {"run_id": "a", "steps": ["the new volume's"]})
    old = tmp_path / "old-volume"
    os.rename(data_dir, old)
    os.rename(prepared, data_dir)
    seen = spy_marks(d)
    # The old watch still follows the moved-away inode and names its files under D:
    # this event says "runs/run_a.json" and "runs/run_only_old.json" changed.
    write(old, RUN, {"run_id": "a", "steps": ["the old volume's, written after the swap"]})
    write(old, "runs/run_only_old.json", {"run_id": "only_old"})
    wait_attached(d, data_dir, timeout=10)  # the dropped event asked the monitor to check now
    wait_mirrored(db, RUN, kept)  # the re-attach's full look reads the new volume
    quiesce(d)
    assert "runs/run_only_old.json" not in seen
    assert manifest(db, "runs/run_only_old.json") is None
    assert db.memory_events.count_documents({"path": "runs/run_only_old.json"}) == 0


# --- (c) D replaced by a symlink, then by a real directory again ----------------------------------
@pytest.mark.integration
def test_root_replaced_by_a_symlink_is_never_followed(data_dir, running, outside, tmp_path):
    d = running()
    db = d.daemon.store.db
    for rel, data in fill(data_dir).items():
        wait_mirrored(db, rel, data)
    d.wait_parity()
    before = mirrored_docs(db)
    moved = tmp_path / "moved"

    os.rename(data_dir, moved)
    os.symlink(outside, data_dir)
    wait_not_ready(d, SYMLINK_REASON)
    assert d.daemon.watcher.observer is None, "mirroring must stop: the observer is not stopped"
    sidecar = d.get("/memory/status").json()["sidecar"]
    assert sidecar["root_problem"] == SYMLINK_REASON
    assert "sidecar_root_ok 0.0" in d.get("/metrics").body.decode()
    # The API goes on writing through the path (into the outside dir); an operator asks for
    # a reconcile: neither reads through the link.
    write(data_dir, "runs/run_through.json", {"run_id": "through", "token": SECRET})
    write(data_dir, RUN, {"run_id": "a", "token": SECRET})
    reconcile_now(d)
    quiesce(d)
    assert readyz(d).status == 503
    assert SECRET not in everything(db)
    assert mirrored_docs(db) == before, "something was written while the root was a symlink"
    for path in ("/memory/status", "/parity", "/metrics"):
        assert SECRET not in d.get(path).body.decode()

    # A real directory in its place again: ready, watched, mirrored.
    os.unlink(data_dir)
    os.rename(moved, data_dir)
    wait_attached(d, data_dir)
    wait_ready(d)
    assert d.daemon.status.root_problem is None
    after = write(data_dir, "runs/run_after.json", {"run_id": "after"})
    wait_mirrored(db, "runs/run_after.json", after)
    d.wait_parity()
    assert SECRET not in everything(db)


# --- (d) start with a symlink root ----------------------------------------------------------------
def run_cli(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("SIDECAR_", "MONGODB_", "RUNTIME_"))}
    full.update(env)
    return subprocess.run([sys.executable, "-m", "sidecar", *args], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.integration
@pytest.mark.parametrize("command", ["run", "sync", "parity"])
def test_cli_refuses_a_symlink_root(command, tmp_path, outside, mongo_url, db_name, db):
    link = tmp_path / "data" / "link"
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(outside, link)
    listing = sorted(str(p.relative_to(outside)) for p in outside.rglob("*"))
    proc = run_cli(command, env={"RUNTIME_DATA_DIR": str(link), "MONGODB_URL": mongo_url,
                                 "MONGODB_DB_NAME": db_name, "SIDECAR_HTTP_PORT": str(free_port()),
                                 "SIDECAR_SOCKET": str(tmp_path / "sock" / "s.sock"),
                                 "SIDECAR_SERVER_SELECTION_TIMEOUT_MS": "1000"})
    assert proc.returncode == 2, proc.stderr
    assert f"data dir {str(link)!r} is a symlink; refusing to follow it" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(str(p.relative_to(outside)) for p in outside.rglob("*")) == listing  # no report written
    assert SECRET not in everything(db)


@pytest.mark.integration
def test_daemon_started_on_a_symlink_root_stays_not_ready(make_config, data_dir, store, running, tmp_path):
    from sidecar.sync import run_sync

    # mongo mode with MongoDB holding files: a fresh-volume restore must not write through the link.
    src = tmp_path / "src"
    files = fill(src)
    run_sync(make_config(runtime_data_dir=src), store)
    empty = tmp_path / "empty-outside"
    empty.mkdir()
    link = tmp_path / "link"
    os.symlink(empty, link)
    d = running(wait_ready=False, runtime_data_dir=link, memory_store_backend="mongo")
    wait_not_ready(d, SYMLINK_REASON)
    assert d.get("/memory/status").json()["sidecar"]["root_problem"] == SYMLINK_REASON
    assert "sidecar_root_ok 0.0" in d.get("/metrics").body.decode()
    assert not d.daemon.status.ready
    assert list(empty.iterdir()) == [], "something was written through the symlink"
    assert d.daemon.watcher.observer is None

    # A real directory in its place: the start-up goes on (restore, reconcile) and is ready.
    os.unlink(link)
    link.mkdir()
    wait_for(lambda: d.daemon.status.ready, 30, what="the daemon to be ready")
    wait_ready(d)
    for rel, data in files.items():
        assert (link / rel).read_bytes() == data
    assert list(empty.iterdir()) == []


# --- (e) D deleted and not re-created ---------------------------------------------------------------
@pytest.mark.integration
def test_root_deleted_is_not_ready_and_marks_nothing_deleted(data_dir, running, tmp_path):
    d = running()
    db = d.daemon.store.db
    for rel, data in fill(data_dir).items():
        wait_mirrored(db, rel, data)
    # The directory entry goes first (an unmount, `mv D /trash && rm -rf /trash/D`): every
    # deletion event that follows comes from a dir that is no longer the data dir.
    trash = tmp_path / "trash"
    os.rename(data_dir, trash)
    shutil.rmtree(trash)
    wait_not_ready(d, MISSING_REASON)
    reconcile_now(d)  # a full reconcile without a data dir: nothing to say about any file
    quiesce(d)
    assert readyz(d).status == 503
    assert d.get("/memory/status").json()["sidecar"]["root_problem"] == MISSING_REASON
    assert db.memory_files.count_documents({"deleted_at": {"$ne": None}}) == 0
    assert db.memory_files.count_documents({}) == 3
    assert db.memory_hubs.count_documents({"hub_type": "learner_preferences"}) == 2
    assert db.episodic_memory.count_documents({"run_id": "r1"}) == 1
    assert db.memory_events.count_documents({"event_type": {"$regex": "deleted"}}) == 0

    # Re-created later (the API's mkdir): watched again, ready again.
    data_dir.mkdir()
    wait_attached(d, data_dir)
    wait_ready(d)


@pytest.mark.integration
def test_root_removed_in_place_is_not_ready(data_dir, running):
    """``rm -rf D`` itself: the files go one by one first, then D."""
    d = running()
    db = d.daemon.store.db
    for rel, data in fill(data_dir).items():
        wait_mirrored(db, rel, data)
    shutil.rmtree(data_dir)
    wait_not_ready(d, MISSING_REASON)
    reconcile_now(d)
    quiesce(d)
    assert readyz(d).status == 503
    # Deletes are recorded, never propagated by default: the hub entries stay.
    assert db.memory_hubs.count_documents({"hub_type": "learner_preferences"}) == 2
    assert db.episodic_memory.count_documents({"run_id": "r1"}) == 1


# --- what depends on the deletion model (issue 10) ---------------------------------------------------
@pytest.mark.integration
def test_root_replaced_with_other_content_marks_nothing_deleted(data_dir, running):
    d = running()
    db = d.daemon.store.db
    for rel, data in fill(data_dir).items():
        wait_mirrored(db, rel, data)
    shutil.rmtree(data_dir)
    data_dir.mkdir()
    other = write(data_dir, "runs/run_other.json", {"run_id": "other"})
    wait_attached(d, data_dir)
    wait_mirrored(db, "runs/run_other.json", other)
    reconcile_now(d)
    quiesce(d)
    # The old files are absent from a new lineage: a divergence, never a deletion.
    assert db.memory_files.count_documents({"deleted_at": {"$ne": None}}) == 0
    assert db.memory_hubs.count_documents({"hub_type": "learner_preferences"}) == 2
    assert db.memory_events.count_documents({"event_type": {"$regex": "deleted"}}) == 0


@pytest.mark.integration
def test_root_removed_in_place_marks_nothing_deleted(data_dir, running):
    """``rm -rf D`` unlinks the files before D: whether the writer reads one of them in
    between (a file deletion seen as it happened) is a race only the deletion model's
    mass-removal guard settles."""
    d = running()
    db = d.daemon.store.db
    for rel, data in fill(data_dir).items():
        wait_mirrored(db, rel, data)
    shutil.rmtree(data_dir)
    wait_not_ready(d, MISSING_REASON)
    reconcile_now(d)
    quiesce(d)
    assert db.memory_files.count_documents({"deleted_at": {"$ne": None}}) == 0


@pytest.mark.parametrize("spilled", [False, True], ids=["streamed", "spilled"])
def test_a_large_directory_is_walked_each_file_once(tmp_path, monkeypatch, spilled):
    """A directory over ``SORTED_UP_TO`` entries is not sorted in memory (450k DirEntry objects
    held for the whole scan were the 500k start-up's memory peak): spilled into a table of the
    local index (the daemon's and sync's scans) it is walked in name order from there, the
    table dropped after; without one (the watcher's small walks) in listing order. Either way
    every file comes exactly once and subdirectories are walked in name order; a small
    directory is still walked in name order."""
    from sidecar import source
    from sidecar.localindex import LocalIndex

    monkeypatch.setattr(source, "SORTED_UP_TO", 5)
    monkeypatch.setattr(source, "SPILL_BATCH", 7)
    root = tmp_path / "root"
    big = root / "episodes"
    big.mkdir(parents=True)
    names = [f"skeleton_{i:03d}.json" for i in range(40)]
    for name in names:
        (big / name).write_text("{}")
    for sub in ("b", "a"):
        (big / sub).mkdir()
        (big / sub / "x.json").write_text("{}")
    os.symlink(tmp_path, big / "zlink")
    (root / "small").mkdir()
    for name in ("c.json", "a.json", "b.json"):
        (root / "small" / name).write_text("{}")
    index = LocalIndex(tmp_path / "state")
    spill = (lambda: index.map("listing")) if spilled else None
    items = list(walk(root, (), spill=spill))
    got = [i for i in items if isinstance(i, str)]
    assert [(i.rel, i.reason) for i in items if not isinstance(i, str)] == [("episodes/zlink", "symlink")]
    assert len(got) == len(set(got)) == 40 + 2 + 3
    top = [g for g in got if g.count("/") == 1 and g.startswith("episodes/")]
    assert set(top) == {f"episodes/{n}" for n in names}
    if spilled:
        assert top == sorted(top)
        assert index.tables() == []  # the listing's table is dropped once walked
    assert got.index("episodes/a/x.json") < got.index("episodes/b/x.json")
    assert [g for g in got if g.startswith("small/")] == ["small/a.json", "small/b.json", "small/c.json"]
    index.close()


@pytest.mark.parametrize("when", ["at_open", "part_way"])
def test_a_directory_that_cannot_be_listed_is_skipped_whole(tmp_path, monkeypatch, when):
    """An error listing a directory (at the open, or part-way through a large one) yields
    one ``Skipped`` for that directory, so nothing under it is taken for gone; the other
    directories are walked as ever."""
    from sidecar import source

    monkeypatch.setattr(source, "SORTED_UP_TO", 2)
    root = tmp_path / "root"
    for d in ("runs", "episodes"):
        (root / d).mkdir(parents=True)
        for i in range(5):
            (root / d / f"{i}.json").write_text("{}")
    real = os.scandir

    class Failing:
        def __init__(self, it):
            self.it, self.n = it, 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.it.close()

        def __iter__(self):
            return self

        def __next__(self):
            self.n += 1
            if self.n > 3:
                raise OSError(5, "Input/output error")
            return next(self.it)

    def scandir(fd):
        if isinstance(fd, int) and os.readlink(f"/proc/self/fd/{fd}").endswith("/runs"):
            if when == "at_open":
                raise OSError(5, "Input/output error")
            return Failing(real(fd))
        return real(fd)
    monkeypatch.setattr(source.os, "scandir", scandir)
    items = list(walk(root, ()))
    skipped = [(i.rel, i.reason) for i in items if not isinstance(i, str)]
    assert skipped == [("runs", "io_error")]
    assert sorted(i for i in items if isinstance(i, str) and i.startswith("episodes/")) == \
        [f"episodes/{i}.json" for i in range(5)]
