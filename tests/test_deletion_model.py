"""The deletion model (DESIGN §5, issue 10): a removal is mirrored only when the
daemon watched it happen as an edit of the same file lineage; everything else is
a divergence, held and reported, accepted only by an operator, and in mongo mode
resolved toward MongoDB. Real filesystem, the test server, the daemon in-process
(or as a real process for kill -9).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from testkit.measure import wait_for
from testkit.corpus import LegacyWriter, generate
from testkit.daemon_fixtures import TOKEN
from testkit.process import DaemonProcess
from deletion_helpers import AUTH, HUB, keys_in_mongo, write_in_place, write_new_inode  # noqa: F401
from sidecar.cli import main
from sidecar.lineage import Lineage
from sidecar.source import read_file
from sidecar.sync import run_sync

pytestmark = pytest.mark.integration

def held(d) -> dict[str, dict]:
    return {i["path"]: i for i in d.get("/divergences").json()["items"]}


def tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "reports" not in p.parts}


def entries(n: int, prefix: str = "l") -> dict:
    return {f"{prefix}{i}": {"score": i} for i in range(n)}


# --- lineage (pure) ------------------------------------------------------------------------


def test_lineage_same_inode_in_place_new_inode_not(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    lineage = Lineage()
    first = read_file(tmp_path, "a.json")
    assert not lineage.same(first)
    lineage.observe(first, frozenset({"x"}))
    (tmp_path / "a.json").write_text('{"y": 1}')  # in place
    assert lineage.same(read_file(tmp_path, "a.json"))
    write_new_inode(tmp_path, "a.json", {})
    assert not lineage.same(read_file(tmp_path, "a.json"))
    assert lineage.hub_keys("a.json") == {"x"}
    lineage.forget_all()
    assert not lineage.knows("a.json")


# --- what is mirrored at once --------------------------------------------------------------


def test_a_key_removed_in_place_is_mirrored_at_once(data_dir, running):
    write_in_place(data_dir, HUB, entries(5))
    d = running()
    db = d.daemon.store.db
    data = entries(5)
    del data["l2"]
    write_in_place(data_dir, HUB, data)
    wait_for(lambda: keys_in_mongo(db) == set(data), 10, what="the in-lineage removal to be mirrored")
    wait_for(lambda: db.memory_events.find_one({"event_type": "hub_deleted"}), 10, what="the event")
    assert held(d) == {}
    d.wait_parity()


def test_a_watched_file_deleted_alone_is_recorded_deleted(data_dir, running):
    write_in_place(data_dir, "runs/run_a.json", {"run_id": "a"})
    d = running()
    files = d.daemon.store.db.memory_files
    (data_dir / "runs" / "run_a.json").unlink()
    wait_for(lambda: (files.find_one({"_id": "runs/run_a.json"}) or {}).get("deleted_at"), 10,
             what="the watched deletion to be recorded")
    assert held(d) == {}


# --- what is held ----------------------------------------------------------------------------


def test_a_key_missing_from_a_new_inode_is_held(data_dir, running):
    write_in_place(data_dir, HUB, entries(5))
    d = running()
    db = d.daemon.store.db
    data = entries(5)
    del data["l2"]
    data["new"] = {"score": 9}
    write_new_inode(data_dir, HUB, data)
    wait_for(lambda: "new" in keys_in_mongo(db), 10, what="the new key to be mirrored")
    item = wait_for(lambda: held(d).get(HUB), 10, what="the divergence")
    assert item["keys"] == ["l2"] and item["reason"] == "recreated" and item["what"] == "hub_entries"
    assert "l2" in keys_in_mongo(db)
    event = wait_for(lambda: db.memory_events.find_one({"event_type": "divergence_held"}), 10, what="event")
    assert event["path"] == HUB and event["count"] == 1 and event["keys"] == ["l2"]
    assert "score" not in json.dumps(d.get("/divergences").json())  # keys and counts, never values
    metrics = d.get("/metrics").body.decode()
    assert 'sidecar_divergences_held{what="hub_entries"} 1.0' in metrics
    assert 'sidecar_divergences_total{reason="recreated"} 1.0' in metrics
    status = d.get("/memory/status").json()["sidecar"]["divergences"]
    assert status["entries"] == 1 and "divergences accept" in status["accept"]
    parity = d.get("/parity").json()
    assert parity["divergences"]["items"][0]["path"] == HUB
    # Later in-place edits of the new inode do not turn the held key into a deletion.
    data["newer"] = {"score": 10}
    write_in_place(data_dir, HUB, data)
    wait_for(lambda: "newer" in keys_in_mongo(db), 10, what="the next edit")
    assert "l2" in keys_in_mongo(db) and held(d)[HUB]["keys"] == ["l2"]


def test_a_hub_deleted_then_recreated_with_fewer_keys_is_held(data_dir, running):
    write_in_place(data_dir, HUB, entries(4))
    d = running()
    db = d.daemon.store.db
    (data_dir / HUB).unlink()
    write_in_place(data_dir, HUB, {"l0": {"score": 0}, "x": {"score": 1}})
    wait_for(lambda: "x" in keys_in_mongo(db), 10, what="the new key")
    wait_for(lambda: set(held(d).get(HUB, {}).get("keys", [])) == {"l1", "l2", "l3"}, 10, what="held keys")
    assert keys_in_mongo(db) == {"l0", "l1", "l2", "l3", "x"}
    assert db.memory_files.find_one({"_id": HUB})["deleted_at"] is None


def test_the_hub_dir_recreated_and_api_start_signal_delete_nothing(data_dir, running):
    generate(data_dir, learners=30, episodes=3, runs=2)
    d = running()
    db = d.daemon.store.db
    before = db.memory_hubs.count_documents({})
    shutil.rmtree(data_dir / "structured_hubs")
    w = LegacyWriter(data_dir)
    w.start()  # the API's start: hubs re-created as {}
    w.learner_signal("fresh-learner", 1)
    wait_for(lambda: db.memory_hubs.count_documents({"item_key": "fresh-learner"}) == 3, 10,
             what="the new signal to be mirrored")
    wait_for(lambda: len(held(d)) == 3, 10, what="the three hubs held")
    assert db.memory_hubs.count_documents({}) == before + 3
    assert db.memory_events.count_documents({"event_type": "hub_deleted"}) == 0
    assert db.memory_files.count_documents({"deleted_at": {"$ne": None}}) == 0


def test_mass_removal_guard_holds_a_large_edit_in_place(data_dir, running):
    write_in_place(data_dir, HUB, entries(10))
    d = running(sidecar_max_removals=3)
    db = d.daemon.store.db
    write_in_place(data_dir, HUB, {k: v for k, v in entries(10).items() if k in ("l0", "l1", "l2", "l3", "l4", "l5")})
    item = wait_for(lambda: held(d).get(HUB), 10, what="the mass removal to be held")
    assert item["reason"] == "mass_removal" and item["count"] == 4
    assert len(keys_in_mongo(db)) == 10
    # Within the limit: mirrored at once.
    write_in_place(data_dir, HUB, {k: v for k, v in entries(10).items() if k in ("l0", "l1", "l2")})
    wait_for(lambda: keys_in_mongo(db) == {"l0", "l1", "l2", "l6", "l7", "l8", "l9"}, 10,
             what="three in-lineage removals to be mirrored")
    assert set(held(d)[HUB]["keys"]) == {"l6", "l7", "l8", "l9"}


def test_an_edit_that_empties_a_hub_is_held(data_dir, running):
    write_in_place(data_dir, HUB, entries(1))
    d = running()
    write_in_place(data_dir, HUB, {})
    assert wait_for(lambda: held(d).get(HUB), 10, what="held")["reason"] == "emptied"
    assert keys_in_mongo(d.daemon.store.db) == {"l0"}


def test_mass_removal_guard_holds_many_files_gone(data_dir, running, monkeypatch):
    from sidecar import removals

    for i in range(6):
        write_in_place(data_dir, f"runs/run_{i}.json", {"run_id": str(i)})
    d = running(sidecar_max_removals=3)
    files = d.daemon.store.db.memory_files
    for i in range(5):
        (data_dir / "runs" / f"run_{i}.json").unlink()
    wait_for(lambda: len(held(d)) == 5, 10, what="five files held")
    assert {i["reason"] for i in held(d).values()} == {"mass_removal"}
    assert files.count_documents({"deleted_at": {"$ne": None}}) == 0
    # Within the window every removal counts, held ones too; once it has passed,
    # one more alone is within the limit.
    monkeypatch.setattr(removals, "REMOVAL_WINDOW_S", 0.0)
    (data_dir / "runs" / "run_5.json").unlink()
    wait_for(lambda: (files.find_one({"_id": "runs/run_5.json"}) or {}).get("deleted_at"), 10,
             what="a single deletion to be recorded")


def test_rm_rf_of_a_directory_is_held_not_deleted(data_dir, running):
    for i in range(3):
        write_in_place(data_dir, f"episodes/skeleton_e{i}.json", {"run_id": f"e{i}", "nodes": []})
    d = running(sidecar_propagate_file_deletes=True)
    db = d.daemon.store.db
    shutil.rmtree(data_dir / "episodes")
    wait_for(lambda: len(held(d)) == 3, 10, what="the removed dir's files held")
    # Seen by the settled removal (its directory is gone) or by the reconcile the
    # directory's deletion asks for: held either way.
    assert {i["reason"] for i in held(d).values()} <= {"directory_replaced", "noticed_at_reconcile"}
    assert db.episodic_memory.count_documents({}) == 3
    assert db.memory_files.count_documents({"deleted_at": {"$ne": None}}) == 0


def test_a_removal_noticed_at_start_is_held_and_accepted_from_the_cli(data_dir, running, make_config, store,
                                                                    mongo_url, db_name, monkeypatch):
    write_in_place(data_dir, HUB, entries(3))
    write_in_place(data_dir, "runs/run_x.json", {"run_id": "x"})
    run_sync(make_config(), store)
    write_in_place(data_dir, HUB, {"l0": {"score": 0}})  # edited while no sidecar watched
    (data_dir / "runs" / "run_x.json").unlink()
    d = running()
    db = d.daemon.store.db
    items = held(d)
    assert items[HUB]["reason"] == "noticed_at_reconcile" and items[HUB]["keys"] == ["l1", "l2"]
    assert items["runs/run_x.json"]["what"] == "file"
    assert keys_in_mongo(db) == {"l0", "l1", "l2"}
    cli = ["--data-dir", str(data_dir), "--mongodb-url", mongo_url, "--db-name", db_name]
    monkeypatch.setenv("SIDECAR_TOKEN", TOKEN)
    monkeypatch.setenv("SIDECAR_HTTP_PORT", str(d.daemon.http_port))
    assert main(cli + ["divergences"]) == 1
    assert main(cli + ["divergences", "accept", HUB]) == 0
    assert keys_in_mongo(db) == {"l0"}
    # The daemon was asked to reconcile: it re-read MongoDB and now holds only the file.
    wait_for(lambda: set(held(d)) == {"runs/run_x.json"}, 10, what="the daemon to forget the accepted one")
    # And through the endpoint: token required, then applied.
    assert d.get("/divergences/accept", "POST").status == 401
    r = d.get("/divergences/accept", "POST", AUTH)
    assert r.status == 200 and r.json()["accepted"] == ["runs/run_x.json"]
    assert db.memory_files.find_one({"_id": "runs/run_x.json"})["deleted_at"] is not None
    assert held(d) == {}
    d.wait_parity()


def test_accept_rechecks_the_disk(data_dir, running):
    write_in_place(data_dir, HUB, entries(3))
    d = running()
    db = d.daemon.store.db
    write_new_inode(data_dir, HUB, {"l0": {"score": 0}})
    wait_for(lambda: held(d).get(HUB), 10, what="held")
    write_in_place(data_dir, HUB, {"l0": {"score": 0}, "l1": {"score": 1}})  # l1 came back
    wait_for(lambda: held(d)[HUB]["keys"] == ["l2"], 10, what="l1 to be present again")
    r = d.get("/divergences/accept", "POST", AUTH)
    assert r.status == 200 and r.json()["documents"] == 1
    assert keys_in_mongo(db) == {"l0", "l1"}


# --- fresh volumes, both start orders, both modes ----------------------------------------------------


def _wipe(root: Path) -> None:
    shutil.rmtree(root)
    root.mkdir()


def test_api_first_on_a_wiped_volume_file_mode_deletes_nothing(data_dir, running, make_config, store, db):
    generate(data_dir, learners=20, episodes=5, runs=3)
    run_sync(make_config(), store)
    before = db.memory_hubs.count_documents({})
    _wipe(data_dir)
    w = LegacyWriter(data_dir)
    w.start()
    w.learner_signal("api-first", 1)
    d = running()
    assert db.memory_hubs.count_documents({}) == before + 3
    assert db.memory_files.count_documents({"deleted_at": {"$ne": None}}) == 0
    assert db.episodic_memory.count_documents({}) == 5
    items = held(d)
    assert sum(1 for i in items.values() if i["what"] == "file") == 5 + 3 + 2  # episodes, runs, jobs+snapshot
    assert {items[f"structured_hubs/{h}.json"]["count"] for h in
            ("learner_preferences", "operating_context", "soft_identity")} == {20}


@pytest.mark.parametrize("order", ["sidecar_first", "api_first"])
def test_mongo_mode_start_restores_what_is_missing_in_either_order(data_dir, running, make_config, store, db,
                                                                   tmp_path, order):
    generate(data_dir, learners=20, episodes=5, runs=3)
    original = tree(data_dir)
    run_sync(make_config(), store)
    _wipe(data_dir)
    if order == "api_first":
        w = LegacyWriter(data_dir)
        w.start()
        w.learner_signal("api-first", 1)
    d = running(memory_store_backend="mongo")
    now = tree(data_dir)
    hubs = {f"structured_hubs/{h}.json" for h in ("learner_preferences", "operating_context", "soft_identity")}
    for rel, sha in original.items():
        if order == "api_first" and rel in hubs:
            continue
        assert now.get(rel) == sha, rel
    if order == "api_first":
        for rel in hubs:
            on_disk = json.loads((data_dir / rel).read_text())
            assert len(on_disk) == 21 and "api-first" in on_disk
        assert db.memory_hubs.count_documents({}) == 63
    assert held(d) == {}
    assert db.memory_files.count_documents({"deleted_at": {"$ne": None}}) == 0
    d.wait_parity()


def test_mongo_mode_heals_a_hub_recreated_while_running(data_dir, running):
    write_in_place(data_dir, HUB, entries(4))
    original = (data_dir / HUB).read_bytes()
    d = running(memory_store_backend="mongo")
    db = d.daemon.store.db
    write_new_inode(data_dir, HUB, {"l1": {"score": 1}})  # a backup copied over the hub
    wait_for(lambda: (data_dir / HUB).read_bytes() == original, 10, what="the hub to be healed")
    # A writer that read the file before the heal writes after it, in place: the
    # healed keys it lacks are not "removed" (the writer never saw them).
    write_in_place(data_dir, HUB, {"l1": {"score": 1}, "late": {"score": 5}})
    wait_for(lambda: set(json.loads((data_dir / HUB).read_text())) == {"l0", "l1", "l2", "l3", "late"}, 10,
             what="the stale write to be healed too")
    assert keys_in_mongo(db) == {"l0", "l1", "l2", "l3", "late"}
    assert db.memory_events.count_documents({"event_type": "hub_deleted"}) == 0
    d.wait_parity()


def test_heal_keeps_a_write_that_lands_in_the_replaced_inode(data_dir, running, monkeypatch):
    """The race: the API opens the hub (O_TRUNC) after the heal read it, and writes
    after the heal renamed its merge over the path: its bytes land in the old inode."""
    from sidecar import heal

    write_in_place(data_dir, HUB, entries(3))
    d = running(memory_store_backend="mongo")
    db = d.daemon.store.db
    api_file = {}
    real_swap = heal.Healer._swap

    def racing_swap(dir_fd, name, fd, st0, out):
        ok = real_swap(dir_fd, name, fd, st0, out)
        if ok and "f" not in api_file:
            # The API's write_text opened the old inode just before the rename.
            api_file["f"] = os.fdopen(os.dup(fd), "r")  # keep the old inode reachable for the test
        return ok

    monkeypatch.setattr(heal.Healer, "_swap", staticmethod(racing_swap))
    monkeypatch.setattr(heal, "HEAL_WATCH_S", 60.0)  # the test's own pace must not matter
    write_new_inode(data_dir, HUB, {"l0": {"score": 0}})
    wait_for(lambda: "f" in api_file, 10, what="a heal")
    old_inode = api_file["f"]
    # The API's late write, into the old inode: l0 changed and a new learner.
    with open(f"/proc/self/fd/{old_inode.fileno()}", "w") as late:
        late.write(json.dumps({"l0": {"score": 100}, "newcomer": {"score": 7}}, indent=2))
    old_inode.close()
    wait_for(lambda: json.loads((data_dir / HUB).read_text()).get("newcomer") == {"score": 7}, 10,
             what="the late write to be merged back")
    on_disk = json.loads((data_dir / HUB).read_text())
    assert set(on_disk) == {"l0", "l1", "l2", "newcomer"} and on_disk["l0"] == {"score": 100}
    wait_for(lambda: keys_in_mongo(db) == {"l0", "l1", "l2", "newcomer"}, 10, what="mirrored")
    assert d.daemon.mirror.healer.merged_late_writes == 1


def test_kill_9_during_a_mongo_mode_restore_resumes_and_marks_nothing_deleted(
        tmp_path, data_dir, mongo_url, db_name, make_config, store, db):
    generate(data_dir, learners=50, episodes=1500, runs=300)
    original = tree(data_dir)
    run_sync(make_config(), store)
    _wipe(data_dir)
    proc = DaemonProcess(tmp_path, data_dir, mongo_url, db_name, MEMORY_STORE_BACKEND="mongo",
                         SIDECAR_PROPAGATE_FILE_DELETES="true")
    kills, reasons = [], []
    try:
        for target in (50, 400, 900):  # kill at a few points of the restore (bounded loop)
            proc.start()
            count = lambda: sum(1 for _ in data_dir.rglob("*.json"))  # noqa: E731
            wait_for(lambda: count() >= target or (proc.get("/readyz") or None) and proc.get("/readyz").status == 200,
                     60, 0.005, f"the restore to pass {target} files")
            r = proc.get("/readyz", timeout=5)
            if r is not None and count() < len(original):
                assert r.status == 503, r.body
                reasons.append(r.json()["reason"])
            proc.kill()
            kills.append(count())
            assert db.memory_files.count_documents({"deleted_at": {"$ne": None}}) == 0
        proc.start().wait_ready(120)
        proc.wait_parity(60)
    finally:
        proc.close()
    assert any(0 < k < len(original) for k in kills), kills  # at least one kill landed mid-restore
    # /readyz said why while it ran.
    assert reasons and all(r.startswith("starting: restoring missing files from MongoDB") for r in reasons), reasons
    assert tree(data_dir) == original
    assert db.memory_files.count_documents({"deleted_at": {"$ne": None}}) == 0
    assert db.memory_hubs.count_documents({}) == 150
    assert db.episodic_memory.count_documents({}) == 1500
    assert not list(data_dir.rglob(".sidecar-*"))


def test_a_burst_of_removals_maturing_in_separate_flushes_is_still_one_mass_removal(data_dir, running):
    for i in range(3):
        write_in_place(data_dir, f"runs/run_{i}.json", {"run_id": str(i)})
    d = running(sidecar_max_removals=2)
    files = d.daemon.store.db.memory_files
    stop = __import__("threading").Event()
    for i in range(3):
        (data_dir / "runs" / f"run_{i}.json").unlink()
        stop.wait(0.3)  # the remover's own pace: each file settles in a flush of its own
    wait_for(lambda: len(held(d)) == 3, 10, what="all three held")
    assert files.count_documents({"deleted_at": {"$ne": None}}) == 0
