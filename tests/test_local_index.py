"""The per-file state out of the heap (issue 13, point 3): ``sidecar/localindex.py``.

A ``DiskMap``/``DiskSet`` must behave as the dict/set it replaces (a model test
against a dict), survive changes made while it is iterated (the status server
counts while the writer writes), keep foreign values it cannot store as plain
types without crashing, and leave nothing on disk (the file is unlinked at once,
so a kill -9 leaves no state file behind). The daemon and ``sync`` keep their
state there; the setting has clear errors.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading

import pytest
from bson import ObjectId

from testkit.daemon import RunningDaemon
from testkit.measure import wait_for
from sidecar.cli import main
from sidecar.lineage import Lineage
from sidecar.localindex import CHUNK, DiskMap, DiskSet, LocalIndex, StateDirUnusable
from sidecar.source import FileRead
from sidecar.state import (EpisodeRow, FileRow, FileState, HubRow, Op, SnapshotRow, apply_to_state, build_state, count_files,
                           pack_hash, state_rows)
from sidecar.names import FILES


@pytest.fixture
def index(tmp_path):
    idx = LocalIndex(tmp_path / "state")
    yield idx
    idx.close()


def h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_the_state_file_is_unlinked_as_soon_as_it_is_open(tmp_path):
    idx = LocalIndex(tmp_path / "state")
    m = idx.map("files")
    m["a"] = (1, 2)
    assert os.listdir(tmp_path / "state") == []
    assert m["a"] == (1, 2)
    idx.close()


def test_a_disk_map_behaves_as_a_dict(index):
    rng = random.Random(7)
    m: DiskMap = index.map("t")
    d: dict = {}
    keys = [f"k{i:04d}" for i in range(300)]
    for step in range(4000):
        k = rng.choice(keys)
        op = rng.randrange(6)
        if op < 2:
            v = (rng.randrange(1 << 62), pack_hash(h(k + str(step))), None, rng.random() < 0.5)
            m[k] = v
            d[k] = v
        elif op == 2:
            assert m.pop(k, "none") == d.pop(k, "none")
        elif op == 3:
            assert (k in m) == (k in d)
            assert m.get(k) == d.get(k)
        elif op == 4:
            if k in d:
                del m[k]
                del d[k]
            else:
                with pytest.raises(KeyError):
                    del m[k]
        else:
            assert len(m) == len(d)
    assert dict(m.items()) == d
    assert sorted(m) == sorted(d)
    assert m == d
    with pytest.raises(KeyError):
        m["absent"]  # noqa: B018
    with pytest.raises(KeyError):
        m.pop("absent")


def test_keys_that_are_not_strings_are_never_found_and_never_stored(index):
    m = index.map("t")
    assert m.get(3) is None and 3 not in m and m.pop(3, "x") == "x"
    with pytest.raises(TypeError):
        m[3] = "v"


def test_a_disk_set_behaves_as_a_set(index):
    s: DiskSet = index.set("present")
    for k in ("b", "a", "c", "a"):
        s.add(k)
    s.discard("c")
    s.discard(5)
    assert len(s) == 2 and "a" in s and "c" not in s and 5 not in s
    assert sorted(s) == ["a", "b"]


def test_iterating_while_the_map_changes_ends_and_never_repeats_a_key(index):
    m = index.map("t")
    m.update_many((f"k{i:06d}", i) for i in range(3 * CHUNK + 17))
    seen = []
    for i, key in enumerate(m):
        seen.append(key)
        if i % 7 == 0:
            m.pop(key)  # the one being read
            m[f"k{int(key[1:]) + 1:06d}x"] = -1  # a key ahead of the cursor
            m[f"a{i}"] = -1  # a key behind it
    assert len(seen) == len(set(seen))
    assert {f"k{i:06d}" for i in range(3 * CHUNK + 17)} <= set(seen)  # every original key seen


def test_a_thread_counting_while_another_writes_sees_no_error(index):
    state = build_state([], index)
    errors: list[BaseException] = []
    stop = threading.Event()

    def count() -> None:
        try:
            while not stop.is_set():
                count_files(state)
                list(state.files.items())
        except BaseException as exc:  # pragma: no cover - what the test is for
            errors.append(exc)

    t = threading.Thread(target=count)
    t.start()
    try:
        for i in range(3000):
            apply_to_state(state, Op(FILES, "insert", f"f/{i}.json", i, doc={"kind": "other"}, after=h(str(i))))
            if i % 3 == 0:
                apply_to_state(state, Op(FILES, "mark_deleted", f"f/{i}.json", i))
    finally:
        stop.set()
        t.join(10)
    assert errors == []
    assert count_files(state) == (2000, 1000)


def rows_with_foreign_values():
    digest = pack_hash(h("x"))
    return [
        HubRow("learners", "k1", digest, 0, 3),
        EpisodeRow("r1", digest, 5),
        EpisodeRow("r2", "not-a-hash", None),
        SnapshotRow(h("s"), pack_hash(h("s")), None),
        FileRow("episodes/skeleton_r1.json", digest, 5, "episode", False, "r1", {"indent": 2}, digest),
        FileRow("runs/a.json", h("a"), 7, "run", True, None, {"indent": 4, "ascii": True}, pack_hash(h("b"))),
        FileRow("x/odd.json", ObjectId(), 8, "other", False, None, None, None),  # someone else's sha256
    ]


def test_a_state_built_on_the_index_equals_the_one_built_in_dicts(index):
    rows = rows_with_foreign_values()
    on_disk, in_heap = build_state(rows, index), build_state(rows)
    assert on_disk.max_version == in_heap.max_version == 8
    assert on_disk.hubs == in_heap.hubs and on_disk.snapshots == in_heap.snapshots
    assert dict(on_disk.episodes.items()) == dict(in_heap.episodes.items())
    for rel, fs in in_heap.files.items():
        got = on_disk.files[rel]
        if rel == "x/odd.json":
            # a foreign value of no plain type is kept as a marker that equals no hash
            assert got.sha256 != fs.sha256 and got.sha256 not in (None, h("x"))
            assert (got.version, got.kind, got.deleted) == (8, "other", False)
        else:
            assert got == fs
    assert count_files(on_disk) == count_files(in_heap) == (2, 1)
    assert len(list(state_rows(on_disk))) == len(rows)


def test_releasing_a_state_drops_its_tables(index):
    state = build_state(rows_with_foreign_values(), index)
    assert len(index.tables()) == 2
    state.release()
    assert index.tables() == []


def test_acknowledged_ops_change_the_indexed_state_as_the_dict_one(index):
    a, b = build_state(rows_with_foreign_values(), index), build_state(rows_with_foreign_values())
    ops = [Op(FILES, "mark_deleted", "episodes/skeleton_r1.json", 9),
           Op(FILES, "track", "runs/a.json", 10, after=h("new")),
           Op(FILES, "delete", "x/odd.json", 11),
           Op(FILES, "insert", "y/new.txt", 12, doc={"kind": "other", "format": {"indent": 2}}, after=h("n"),
              content_sha=h("n"))]
    for op in ops:
        apply_to_state(a, op)
        apply_to_state(b, op)
    assert dict(a.files.items()) == dict(b.files.items())
    assert a.files["episodes/skeleton_r1.json"].deleted
    assert a.files["runs/a.json"].sha256 == h("new")


def read_of(rel: str, ino: int, dir_ino: int = 5) -> FileRead:
    return FileRead(rel=rel, data=b"{}", sha256=h("{}"), mtime_ns=1, size=2, ino=ino, dev=1, dir_ino=dir_ino)


def test_lineage_on_the_index_keeps_what_it_kept_in_dicts(index):
    for lineage in (Lineage(index), Lineage()):
        first = read_of("a.json", 10)
        lineage.observe(first, frozenset({"k"}))
        assert lineage.same(first) and lineage.knows("a.json") and lineage.dir_ino("a.json") == 5
        assert not lineage.same(read_of("a.json", 11))  # another inode
        lineage.broken("a.json")
        assert not lineage.same(first)
        token = lineage.token("a.json")
        lineage.observe(first, token=token)
        assert lineage.same(first)
        lineage.forget("a.json")
        assert not lineage.knows("a.json") and lineage.dir_ino("a.json") is None
        lineage.observe(first)
        lineage.forget_all()
        assert len(lineage) == 0


@pytest.mark.integration
def test_the_daemon_keeps_its_state_in_the_index_and_leaves_no_file(data_dir, running, tmp_path):
    (data_dir / "runs").mkdir(parents=True, exist_ok=True)
    (data_dir / "runs" / "run_a.json").write_text('{"run_id": "a"}')
    state_dir = tmp_path / "state"
    d: RunningDaemon = running(sidecar_state_dir=str(state_dir), wait_reconciled=True)
    state = d.daemon.state
    assert isinstance(state.files, DiskMap) and isinstance(state.episodes, DiskMap)
    assert "runs/run_a.json" in state.files
    (data_dir / "runs" / "run_b.json").write_text('{"run_id": "b"}')
    wait_for(lambda: "runs/run_b.json" in state.files, 10, what="the watched write in the indexed state")
    assert os.listdir(state_dir) == []  # the one file is unlinked: nothing to leak on a kill -9
    # after more full reconciles, only the live state's tables (plus the lineage) remain
    for _ in range(3):
        before = d.daemon.status.last_reconcile_at
        d.daemon.pending.mark_full()
        wait_for(lambda: d.daemon.status.last_reconcile_at != before, 10, what="a full reconcile")
    tables = d.daemon.mirror.index.tables()
    assert sorted(t.split("_")[0] for t in tables) == ["episodes", "files", "lineage"], tables


def test_a_state_dir_inside_the_data_dir_is_refused(make_config, data_dir, capsys, monkeypatch):
    with pytest.raises(ValueError, match="SIDECAR_STATE_DIR"):
        make_config(sidecar_state_dir=str(data_dir / "state"))
    monkeypatch.setenv("RUNTIME_DATA_DIR", str(data_dir))
    monkeypatch.setenv("SIDECAR_STATE_DIR", str(data_dir))
    assert main(["config"]) == 2
    assert "SIDECAR_STATE_DIR" in capsys.readouterr().err


def test_a_state_dir_that_cannot_hold_the_file_is_a_clear_error(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(StateDirUnusable, match="SIDECAR_STATE_DIR .*file"):
        LocalIndex(not_a_dir / "sub")


@pytest.mark.integration
def test_sync_keeps_its_state_in_the_index_and_leaves_nothing(make_config, data_dir, tmp_path, store):
    from sidecar.sync import run_sync

    (data_dir / "runs").mkdir(parents=True, exist_ok=True)
    (data_dir / "runs" / "run_a.json").write_text('{"run_id": "a"}')
    state_dir = tmp_path / "state"
    report, code = run_sync(make_config(sidecar_state_dir=str(state_dir)), store)
    assert code == 0 and report["parity"]["all_match"]
    assert os.listdir(state_dir) == []


def test_parity_of_a_view_on_the_index_equals_the_one_in_dicts(index):
    from sidecar import parity
    from sidecar.reconcile import SourceView

    def view(on_index: bool) -> SourceView:
        v = SourceView()
        if on_index:
            v.episodes, v.files = index.map("view_episodes"), index.map("view_files")
        for i in range(50):
            v.episodes[f"r{i:03d}"] = pack_hash(h(f"e{i}"))
            v.files[f"runs/run_{i:03d}.json"] = pack_hash(h(f"f{i}"))
        return v

    mongo = [EpisodeRow(f"r{i:03d}", pack_hash(h(f"e{i}" if i % 10 else "changed")), 1) for i in range(5, 60)]
    mongo += [FileRow(f"runs/run_{i:03d}.json", None, 1, "run", False, None, None, pack_hash(h(f"f{i}")))
              for i in range(0, 50, 2)]
    state_heap, state_disk = build_state(mongo), build_state(mongo, index)
    pending = {"episodes/skeleton_r001.json", "runs/run_001.json"}
    heap = parity.compute(None, view(False), pending=pending, state=state_heap)
    disk = parity.compute(None, view(True), pending=pending, state=state_disk)
    assert disk == heap
    ep = disk["kinds"]["episodes"]
    assert (ep["missing"]["count"], ep["extra"]["count"], ep["different"]["count"]) == (5, 10, 4)
    assert ep["missing"]["keys"] == ["r000", "r001", "r002", "r003", "r004"]
    assert ep["pending"] == 1 and ep["mismatch"] == 18
    assert not disk["parity"]["all_match"]


def test_a_table_dropped_under_a_reader_reads_as_empty(index):
    """The status server may still hold the files of a state a reload just replaced."""
    state = build_state(rows_with_foreign_values(), index)
    files, present = state.files, index.set("present")
    present.add("a")
    state.release()
    present.drop()
    assert len(files) == 0 and files.get("runs/a.json") is None and "runs/a.json" not in files
    assert list(files.items()) == [] and count_files(state) == (0, 0)
    files["x"] = FileState(h("x"), 1, "other")  # a late write goes nowhere, without an error
    files.update_many([("z", FileState(None, 2, "other"))])
    assert len(present) == 0 and list(present) == []


@pytest.mark.integration
def test_a_state_file_that_fails_under_the_writer_is_a_restart_not_a_silent_outage(data_dir, running, store):
    """The local state file failing (its disk full, here: its connection closed) after a
    write was acknowledged ends the writer thread: the daemon must say so (/readyz and
    /healthz 503, the reason) instead of staying ready while nothing is mirrored; the
    restart's reconcile then mirrors what the failed one did not."""
    (data_dir / "runs").mkdir(parents=True, exist_ok=True)
    (data_dir / "runs" / "run_a.json").write_text('{"run_id": "a"}')
    d = running(wait_reconciled=True)
    assert d.get("/healthz").status == 200
    d.daemon.mirror.index.close()  # every later statement raises sqlite3.ProgrammingError
    (data_dir / "runs" / "run_b.json").write_text('{"run_id": "b"}')
    wait_for(lambda: d.daemon.status.writer_failed, 10, what="the writer to report its failure")
    ready, health = d.get("/readyz"), d.get("/healthz")
    assert ready.status == 503 and "writer failed" in ready.json()["reason"]
    assert health.status == 503 and health.json()["status"] == "writer_failed"
    d.stop()
    # (the sqlite error may or may not come after MongoDB took run_b: the restart decides)
    running(wait_reconciled=True)
    doc = store.db[store.files_name].find_one({"_id": "runs/run_b.json"})
    assert doc is not None and doc.get("deleted_at") is None


# --- names that are not valid UTF-8 (found by review: sqlite3 cannot bind lone surrogates) ------

NON_UTF8 = b"caf\xe9.txt"  # a latin-1 name: os.fsdecode gives "caf\udce9.txt"


def write_non_utf8(data_dir) -> str:
    with open(os.path.join(os.fsencode(data_dir), NON_UTF8), "wb") as f:
        f.write(b"hello")
    return os.fsdecode(NON_UTF8)


def test_the_index_takes_a_name_that_is_not_utf8_as_a_key(index):
    m, s = index.map("t"), index.set("present")
    rel = os.fsdecode(NON_UTF8)
    m[rel] = 1
    s.add(rel)
    assert m[rel] == 1 and rel in m and rel in s and list(m) == [rel] and list(s) == [rel]
    assert m.pop(rel) == 1 and rel not in m


@pytest.mark.parametrize("on_index", [False, True], ids=["dicts", "local-index"])
def test_a_name_that_is_not_utf8_is_bad_input_in_a_scan_and_a_parity_scan(make_config, data_dir, tmp_path,
                                                                           on_index):
    from sidecar import quick
    from sidecar.reconcile import Reconciler
    from sidecar.state import MirrorState

    (data_dir / "ok.txt").write_text("ok")
    rel = write_non_utf8(data_dir)
    idx = LocalIndex(tmp_path / "state") if on_index else None
    rec = Reconciler(make_config(), idx)
    ops, view = rec.scan(MirrorState(), "reconcile", book=quick.Book(rec.cfg, entries=idx.map("q") if idx else None))
    assert "ok.txt" in {op.id for op in ops} and rel not in {op.id for op in ops}
    assert [(p.path, p.reason) for p in view.problems] == [(rel, "bad_name")]
    assert "\udce9" not in view.problems[0].message  # printable: logged and stored as an escape
    _, pview = Reconciler(make_config(), idx).scan(MirrorState(), "parity", view_only=True)
    assert "ok.txt" in pview.files and [p.reason for p in pview.problems] == ["bad_name"]


@pytest.mark.integration
def test_sync_and_the_daemon_report_a_name_that_is_not_utf8_and_go_on(make_config, data_dir, store, running):
    from sidecar.sync import run_sync

    (data_dir / "runs").mkdir(parents=True, exist_ok=True)
    (data_dir / "runs" / "run_a.json").write_text('{"run_id": "a"}')
    write_non_utf8(data_dir)
    report, _ = run_sync(make_config(), store)
    assert report["bad_input"]["by_reason"] == {"bad_name": 1}
    assert store.db[store.files_name].find_one({"_id": "runs/run_a.json"}) is not None
    d = running(wait_reconciled=True)
    (data_dir / "runs" / "run_b.json").write_text('{"run_id": "b"}')
    with open(os.path.join(os.fsencode(data_dir), b"runs", b"r\xff.json"), "wb") as f:
        f.write(b"{}")  # a watched write of another such name
    wait_for(lambda: store.db[store.files_name].find_one({"_id": "runs/run_b.json"}), 10, what="run_b mirrored")
    wait_for(lambda: any(p["reason"] == "bad_name" and p["path"].startswith("runs/")
                         for p in d.get("/memory/status").json()["sidecar"]["problems"]), 10,
             what="the watched bad name reported")
    assert d.daemon.status.writer_failed is None and d.get("/healthz").status == 200


def test_counts_while_the_state_is_swapped_are_never_negative(index):
    rows = [FileRow(f"runs/r{i}.json", None, 1, "run", i < 3, None, None, None) for i in range(200)]
    state = build_state(rows, index)
    stop, seen = threading.Event(), []

    def count() -> None:
        while not stop.is_set():
            seen.append(count_files(state))
    t = threading.Thread(target=count)
    t.start()
    try:
        for _ in range(50):
            state.replace(build_state(rows, index))
    finally:
        stop.set()
        t.join(10)
    assert seen and all(live >= 0 and deleted >= 0 for live, deleted in seen)
    assert count_files(state) == (197, 3)
