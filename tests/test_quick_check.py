"""The quick check (issue 13, point 1): a file whose stat data equals the record
made when it was last mirrored is not read again at start-up, reconcile or a warm
``sync``, unless the record is racily clean; a change made while the sidecar was
down is always found (ctime, inode, the racy rule, the clock going back);
``sync --checksum`` reads everything and reports drift on either side. The
deletion model is unchanged: a quick-checked file's lineage is still observed.

Most tests set ``quick.RACY_NS`` to 0 (a filesystem whose timestamps are exact):
their files are written a moment before the sidecar reads them, which with the
real 2 s margin would (rightly) be racy and read. The racy rule itself is tested
with the real margin.
"""

from __future__ import annotations

import json
import os
import time
import types
from pathlib import Path

import pytest

from deletion_helpers import HUB, keys_in_mongo, write_in_place
from testkit.daemon import RunningDaemon
from testkit.measure import wait_for
from sidecar import checkpoint, quick, source
from sidecar.cli import main
from sidecar.source import FileStat, probe_file, read_file
from sidecar.state import MirrorState, FileState, Op
from sidecar.sync import run_sync

@pytest.fixture(autouse=True)
def full_syncs(monkeypatch):
    """Every sync here goes the full way: these tests are about the quick check inside it.
    The checkpoint that answers a warm sync before it (nothing changed on either side)
    is tests/test_sync_checkpoint.py's."""
    monkeypatch.setattr(checkpoint, "check", lambda *a, **k: checkpoint.Outcome(None, "off in these tests"))


EPISODE = "episodes/skeleton_r1.json"
RUN = "runs/run_a.json"
OTHER = "notes/todo.txt"
FILES = [HUB, EPISODE, "episodes/skeleton_r2.json", RUN, "runs/run_b.json", OTHER]
NON_HUB = len(FILES) - 1


def seed(root: Path) -> None:
    write_in_place(root, HUB, {"l0": {"score": 0}, "l1": {"score": 1}, "l2": {"score": 2}})
    for run_id in ("r1", "r2"):
        write_in_place(root, f"episodes/skeleton_{run_id}.json", {"run_id": run_id, "status": "aaaa"})
    for run_id in ("a", "b"):
        write_in_place(root, f"runs/run_{run_id}.json", {"run_id": run_id, "status": "aaaa"})
    (root / "notes").mkdir(exist_ok=True)
    (root / OTHER).write_bytes(b"buy milk\n")


def qc(report: dict) -> dict:
    return report["quick_check"]


def manifests(db, config):
    return db[config.sidecar_files_collection]


def rewrite_same_size(root: Path, rel: str, old: str = "aaaa", new: str = "bbbb") -> os.stat_result:
    """Change the content, keep the size; return the stat from before."""
    path = root / rel
    before = os.stat(path)
    path.write_bytes(path.read_bytes().replace(old.encode(), new.encode()))
    assert os.stat(path).st_size == before.st_size
    return before


# --- warm sync ---------------------------------------------------------------------------------


@pytest.mark.integration
def test_unchanged_files_are_not_read_and_a_warm_sync_writes_nothing(data_dir, config, store, db,
                                                                     exact_clock):
    seed(data_dir)
    cold, code = run_sync(config, store)
    assert code == 0 and qc(cold)["files_read"] == len(FILES) and qc(cold)["unrecorded"] == len(FILES)
    stat = manifests(db, config).find_one({"_id": RUN})["_sidecar"]["stat"]
    assert stat["size"] == os.stat(data_dir / RUN).st_size and stat["ino"] == os.stat(data_dir / RUN).st_ino
    events = db.memory_events.count_documents({})
    warm, code = run_sync(config, store)
    assert code == 0 and warm["parity"]["all_match"]
    # Only the hub file is read (hubs always are); nothing is written, not even bookkeeping.
    assert qc(warm)["files_read"] == 1 and qc(warm)["files_quick_checked"] == NON_HUB
    assert warm["writes"]["total"] == 0 and warm["writes"]["stat_records_refreshed"] == 0
    assert db.memory_events.count_documents({}) == events
    # The report's source side is complete although the files were not read.
    assert warm["source_counts"] == cold["source_counts"]
    assert warm["checksums"] == cold["checksums"]


@pytest.mark.integration
def test_a_warm_sync_of_every_kind_reports_what_a_full_read_would(legacy_dir, config, store, db, exact_clock,
                                                                  monkeypatch):
    """The snapshot, hubs, episodes, an episode copy, a layout kept raw, scheduled jobs,
    bytes and a GridFS-sized file: skipped, yet the report's source side is complete."""
    monkeypatch.setattr("sidecar.model.INLINE_MAX_BYTES", 64)
    seed(legacy_dir)
    write_in_place(legacy_dir, "episodes/backup_r1.json", {"run_id": "r1", "status": "aaaa"})
    (legacy_dir / "runs" / "run_c.json").write_text('{"odd" :  1E5}')  # kept raw: layout
    write_in_place(legacy_dir, "scheduled_jobs.json", [{"id": "j1"}])
    (legacy_dir / "notes" / "big.bin").write_bytes(b"x" * 200)
    cold, code = run_sync(config, store)
    assert code == 0 and cold["stored_raw"]["count"] >= 1
    warm, code = run_sync(config, store)
    assert code == 0 and warm["parity"]["all_match"]
    assert qc(warm)["files_read"] == 3 and qc(warm)["files_quick_checked"] == qc(cold)["files_read"] - 3
    for part in ("source_counts", "mongo_counts", "checksums", "parity", "stored_raw"):
        assert warm[part] == cold[part], part
    assert warm["writes"]["total"] == 0


@pytest.mark.integration
def test_a_touched_file_is_read_once_and_its_record_refreshed(data_dir, config, store, db, exact_clock):
    seed(data_dir)
    run_sync(config, store)
    os.utime(data_dir / RUN)  # same content, new mtime
    report, _ = run_sync(config, store)
    assert qc(report)["changed"] == 1 and qc(report)["files_read"] == 2
    assert report["writes"]["total"] == 0 and report["writes"]["stat_records_refreshed"] == 1
    again, _ = run_sync(config, store)
    assert qc(again)["files_read"] == 1 and again["writes"]["stat_records_refreshed"] == 0


@pytest.mark.integration
def test_a_structured_file_edited_gets_its_record_without_a_manifest_rewrite(data_dir, config, store, db,
                                                                            exact_clock):
    seed(data_dir)
    run_sync(config, store)
    manifest = manifests(db, config).find_one({"_id": EPISODE})
    write_in_place(data_dir, EPISODE, {"run_id": "r1", "status": "done", "extra": 1})
    report, _ = run_sync(config, store)
    assert report["writes"]["episodes_upserted"] == 1 and report["writes"]["files_upserted"] == 0
    assert report["writes"]["stat_records_refreshed"] == 1
    after = manifests(db, config).find_one({"_id": EPISODE})
    assert after["sha256"] == manifest["sha256"]  # the manifest itself is not rewritten ("track")
    assert after["_sidecar"]["stat"]["sha256"] == read_file(data_dir, EPISODE).sha256
    again, _ = run_sync(config, store)
    assert qc(again)["files_read"] == 1 and again["writes"]["total"] == 0


# --- changes made while the sidecar was down ----------------------------------------------------


@pytest.mark.integration
def test_touch_r_after_a_rewrite_keeps_size_and_mtime_and_ctime_catches_it(data_dir, config, store, db,
                                                                            exact_clock):
    seed(data_dir)
    run_sync(config, store)
    before = rewrite_same_size(data_dir, RUN)
    os.utime(data_dir / RUN, ns=(before.st_atime_ns, before.st_mtime_ns))  # touch -r
    now = os.stat(data_dir / RUN)
    assert (now.st_size, now.st_mtime_ns, now.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)
    report, code = run_sync(config, store)
    assert code == 0 and qc(report)["changed"] == 1
    assert manifests(db, config).find_one({"_id": RUN})["content"]["status"] == "bbbb"


@pytest.mark.integration
def test_a_file_replaced_by_rename_is_read(data_dir, config, store, db, exact_clock):
    seed(data_dir)
    run_sync(config, store)
    old = os.stat(data_dir / EPISODE)
    tmp = data_dir / "episodes" / "new.tmp"
    tmp.write_bytes((data_dir / EPISODE).read_bytes().replace(b"aaaa", b"cccc"))
    os.utime(tmp, ns=(old.st_atime_ns, old.st_mtime_ns))
    os.replace(tmp, data_dir / EPISODE)
    assert os.stat(data_dir / EPISODE).st_ino != old.st_ino
    report, _ = run_sync(config, store)
    assert qc(report)["changed"] == 1
    assert db.episodic_memory.find_one({"run_id": "r1"})["status"] == "cccc"


@pytest.mark.integration
def test_an_mtime_set_back_after_a_rewrite_is_read(data_dir, config, store, db, exact_clock):
    seed(data_dir)
    run_sync(config, store)
    before = rewrite_same_size(data_dir, RUN)
    day = 86_400 * 10**9
    os.utime(data_dir / RUN, ns=(before.st_atime_ns - day, before.st_mtime_ns - day))  # cp -p, tar x
    report, _ = run_sync(config, store)
    assert qc(report)["changed"] == 1
    assert manifests(db, config).find_one({"_id": RUN})["content"]["status"] == "bbbb"


@pytest.mark.integration
def test_a_same_tick_rewrite_is_racy_and_read(data_dir, config, store, db, monkeypatch):
    """The real margin. A rewrite in the tick of the recorded version keeps the stat
    data on a coarse filesystem: shown here by making the record equal the file's
    new stat data, as such a filesystem would."""
    seed(data_dir)
    run_sync(config, store)
    rewrite_same_size(data_dir, RUN)
    st = os.stat(data_dir / RUN)
    coll = manifests(db, config)
    coarse = {f"_sidecar.stat.{k}": v for k, v in (
        ("mtime_ns", st.st_mtime_ns), ("ctime_ns", st.st_ctime_ns), ("ino", st.st_ino), ("size", st.st_size))}
    # Recorded in the same tick (less than RACY_NS after the file's timestamps): racy.
    coll.update_one({"_id": RUN}, {"$set": {**coarse, "_sidecar.stat.at": st.st_ctime_ns + 10**6}})
    report, _ = run_sync(config, store)
    assert qc(report)["untrusted"] >= 1
    assert coll.find_one({"_id": RUN})["content"]["status"] == "bbbb"
    # The same record, made safely after the file's timestamps: trusted (the rule is what decides).
    rewrite_same_size(data_dir, RUN, "bbbb", "dddd")
    st = os.stat(data_dir / RUN)
    coll.update_one({"_id": RUN}, {"$set": {"_sidecar.stat.mtime_ns": st.st_mtime_ns,
                                            "_sidecar.stat.ctime_ns": st.st_ctime_ns,
                                            "_sidecar.stat.at": st.st_ctime_ns + quick.RACY_NS}})
    monkeypatch.setattr(quick, "wall_ns", lambda: st.st_ctime_ns + quick.RACY_NS + 1)  # checked after it
    run_sync(config, store)
    assert coll.find_one({"_id": RUN})["content"]["status"] == "bbbb"  # skipped: the stat data lied


@pytest.mark.integration
def test_a_clock_gone_back_since_the_record_reads_the_file(data_dir, config, store, db, exact_clock,
                                                           monkeypatch):
    """Records made "in the future" (the clock was ahead, or stepped back since) are
    not trusted: timestamps given meanwhile may repeat the recorded ones."""
    seed(data_dir)
    run_sync(config, store)
    before = rewrite_same_size(data_dir, RUN)
    os.utime(data_dir / RUN, ns=(before.st_atime_ns, before.st_mtime_ns))
    hour = 3600 * 10**9
    monkeypatch.setattr(quick, "wall_ns", lambda: time.time_ns() - hour)
    report, _ = run_sync(config, store)
    assert qc(report)["untrusted"] == len(FILES) and qc(report)["files_quick_checked"] == 0
    assert qc(report)["files_read"] == len(FILES)
    assert manifests(db, config).find_one({"_id": RUN})["content"]["status"] == "bbbb"


@pytest.mark.integration
def test_records_made_while_the_clock_was_behind_are_not_trusted(data_dir, config, store, db, exact_clock,
                                                                 monkeypatch):
    """The files' timestamps are after the moment the record says it was made: racy."""
    seed(data_dir)
    behind = types.SimpleNamespace(time_ns=lambda: time.time_ns() - 3600 * 10**9)
    monkeypatch.setattr(source, "time", behind)
    run_sync(config, store)
    monkeypatch.undo()
    monkeypatch.setattr(quick, "RACY_NS", 0)
    before = rewrite_same_size(data_dir, RUN)
    os.utime(data_dir / RUN, ns=(before.st_atime_ns, before.st_mtime_ns))
    report, _ = run_sync(config, store)
    assert qc(report)["untrusted"] == len(FILES) and qc(report)["files_quick_checked"] == 0
    assert manifests(db, config).find_one({"_id": RUN})["content"]["status"] == "bbbb"


def test_the_racy_rule_and_the_clock(monkeypatch):
    at = 10**18
    rec = {"mtime_ns": at - quick.RACY_NS, "ctime_ns": at - quick.RACY_NS - 5, "at": at}
    assert not quick.racy(rec, now=at + 1)
    assert quick.racy(dict(rec, mtime_ns=at - quick.RACY_NS + 1), now=at + 1)  # mtime within the margin
    assert quick.racy(dict(rec, ctime_ns=at), now=at + 1)  # ctime: the last change, whatever mtime says
    assert quick.racy(rec, now=at - 1)  # the clock is behind the record: it went back


def test_each_stat_field_tells_a_change(monkeypatch):
    monkeypatch.setattr(quick, "RACY_NS", 0)
    sha = "ab" * 32
    base = dict(size=10, mtime_ns=1_000, ctime_ns=2_000, ino=77, dev=5, at=3_000, sha256=sha, docs=sha,
                cfg="c", version=1)
    state = MirrorState(files={"runs/x.json": FileState(sha, 1, "run", content_sha=sha)})

    def verdict(**changed):
        book = quick.Book("c")
        rows = list(book.collect([type("Row", (), {"rel": "runs/x.json", "stat": base})()]))
        assert len(rows) == 1
        now = {k: base[k] for k in ("size", "mtime_ns", "ctime_ns", "ino", "dev")}
        now.update(changed)
        st = FileStat("runs/x.json", now["size"], now["mtime_ns"], now["ctime_ns"], now["dev"], now["ino"], 1, 0)
        return book.verdict("runs/x.json", st, state)

    assert verdict() == quick.CLEAN
    for field in ("size", "mtime_ns", "ctime_ns", "ino", "dev"):
        assert verdict(**{field: base[field] + 1}) == quick.CHANGED, field
    # A 64-bit inode number (btrfs, NFS) is kept as int64 and still compares.
    big = 2**64 - 3
    base.update(ino=quick.int64(big))
    assert verdict(ino=big) == quick.CLEAN


# --- records written by someone else --------------------------------------------------------------


@pytest.mark.integration
def test_foreign_or_invalid_records_mean_the_file_is_read(data_dir, config, store, db, exact_clock):
    seed(data_dir)
    run_sync(config, store)
    coll = manifests(db, config)
    targets = [rel for rel in FILES if rel != HUB]
    good = coll.find_one({"_id": RUN})["_sidecar"]["stat"]
    values = {
        targets[0]: "not a record",
        targets[1]: dict(good, mtime_ns=float(good["mtime_ns"])),
        targets[2]: dict(good, ino=True),
        targets[3]: dict(good, sha256=good["sha256"].upper()),
        targets[4]: {k: v for k, v in good.items() if k != "at"},
    }
    for rel, value in values.items():
        coll.update_one({"_id": rel}, {"$set": {"_sidecar.stat": value}})
    report, code = run_sync(config, store)
    assert code == 0 and report["parity"]["all_match"]
    assert qc(report)["records_invalid"] == len(values) and qc(report)["files_quick_checked"] == 0
    assert report["writes"]["stat_records_refreshed"] == len(values) and report["writes"]["total"] == 0
    again, _ = run_sync(config, store)
    assert qc(again)["files_quick_checked"] == NON_HUB
    # A record made under another redaction is not trusted either.
    redacting, _ = run_sync(config.model_copy(update={"sidecar_redact_keys": ["status"]}), store)
    assert qc(redacting)["files_quick_checked"] == 0 and qc(redacting)["untrusted"] == len(FILES)
    assert db.episodic_memory.find_one({"run_id": "r1"})["status"] == "***REDACTED***"


def test_parse_checks_every_field():
    sha = "0f" * 32
    good = dict(size=1, mtime_ns=2, ctime_ns=3, ino=4, dev=5, at=6, sha256=sha, docs=None, cfg="x", version=7)
    assert quick.parse(good) is good
    for bad in ({**good, "size": -1}, {**good, "at": 2**63}, {**good, "docs": "nope"}, {**good, "cfg": 1},
                {**good, "raw": "layout"}, {**good, "version": None}, [good], None):
        assert quick.parse(bad) is None, bad


# --- drift: --checksum, and MongoDB edited behind the sidecar's back ---------------------------------


@pytest.mark.integration
def test_checksum_reads_everything_and_finds_a_document_edited_in_mongo(data_dir, config, store, db,
                                                                       exact_clock, capsys):
    seed(data_dir)
    run_sync(config, store)
    clean, code = run_sync(config, store, checksum=True)
    assert code == 0 and qc(clean)["checksum"] and qc(clean)["files_read"] == len(FILES)
    assert qc(clean)["files_quick_checked"] == 0 and qc(clean)["drift"]["count"] == 0
    # A hub entry and an episode changed in MongoDB by someone else; the files are as recorded.
    db.memory_hubs.update_one({"_id": "learner_preferences/l1"}, {"$set": {"payload": {"score": "SECRET"}}})
    db.episodic_memory.update_one({"run_id": "r2"}, {"$set": {"status": "SECRET"}})
    report, code = run_sync(config, store, checksum=True)
    assert code == 0 and report["parity"]["all_match"]
    drift = {item["path"]: item for item in qc(report)["drift"]["items"]}
    assert set(drift) == {HUB, "episodes/skeleton_r2.json"} and qc(report)["drift"]["count"] == 2
    assert drift[HUB] == {"path": HUB, "side": "mongo", "documents": ["memory_hubs:learner_preferences/l1"]}
    assert drift["episodes/skeleton_r2.json"]["documents"] == ["episodic_memory:r2"]
    assert "SECRET" not in json.dumps(report, default=str)
    assert db.memory_hubs.find_one({"_id": "learner_preferences/l1"})["payload"] == {"score": 1}
    assert db.episodic_memory.find_one({"run_id": "r2"})["status"] == "aaaa"


@pytest.mark.integration
def test_a_plain_sync_also_repairs_a_document_changed_in_mongo(data_dir, config, store, db, exact_clock):
    """The record keeps the hash of the documents a file was mirrored into; the state
    load hashes MongoDB's content anyway, so a document edited or removed behind the
    sidecar's back makes its file be read, without reading the others."""
    seed(data_dir)
    run_sync(config, store)
    db.episodic_memory.update_one({"run_id": "r1"}, {"$set": {"status": "zzzz"}})
    manifests(db, config).update_one({"_id": RUN}, {"$set": {"content.status": "zzzz"}})
    report, _ = run_sync(config, store)
    assert qc(report)["mongo_changed"] == 2 and qc(report)["files_read"] == 3
    assert {i["path"] for i in qc(report)["drift"]["items"]} == {EPISODE, RUN}
    assert db.episodic_memory.find_one({"run_id": "r1"})["status"] == "aaaa"
    assert manifests(db, config).find_one({"_id": RUN})["content"]["status"] == "aaaa"


@pytest.mark.integration
def test_checksum_finds_a_change_the_stat_data_hides(data_dir, config, store, db, exact_clock, mongo_url,
                                                     db_name):
    """A record that matches the file although its content changed (a filesystem
    whose timestamps did not move): a plain sync trusts it; --checksum finds it."""
    seed(data_dir)
    run_sync(config, store)
    rewrite_same_size(data_dir, RUN)
    st = os.stat(data_dir / RUN)
    manifests(db, config).update_one({"_id": RUN}, {"$set": {
        "_sidecar.stat.mtime_ns": st.st_mtime_ns, "_sidecar.stat.ctime_ns": st.st_ctime_ns,
        "_sidecar.stat.at": time.time_ns()}})
    plain, _ = run_sync(config, store)
    assert qc(plain)["files_quick_checked"] == NON_HUB  # trusted, as the quick check must
    assert manifests(db, config).find_one({"_id": RUN})["content"]["status"] == "aaaa"
    cli = ["--data-dir", str(data_dir), "--mongodb-url", mongo_url, "--db-name", db_name]
    assert main(cli + ["sync", "--checksum"]) == 0
    report = json.loads((data_dir / "reports" / "memory_backfill_report.json").read_text())
    assert qc(report)["drift"]["items"] == [{"path": RUN, "side": "disk", "documents": [f"files:{RUN}"]}]
    assert manifests(db, config).find_one({"_id": RUN})["content"]["status"] == "bbbb"


# --- the bookkeeping write never claims what MongoDB refused -------------------------------------


def test_no_record_for_a_file_whose_documents_were_refused():
    manifest = Op("memory_files", "update", "episodes/skeleton_r1.json", 5,
                  doc={"_sidecar": {"stat": {"size": 1}}}, rel="episodes/skeleton_r1.json")
    refresh = Op("memory_files", "stat", "runs/run_a.json", 5, doc={"size": 1}, rel="runs/run_a.json")
    other = Op("memory_files", "stat", "runs/run_b.json", 5, doc={"size": 1}, rel="runs/run_b.json")
    stale = [Op("episodic_memory", "update", "r1", 5, rel="episodes/skeleton_r1.json")]
    failed = [Op("memory_files", "update", "x", 5, rel="runs/run_a.json")]
    kept = quick.unrecorded([manifest, refresh, other], stale, failed)
    assert kept == [manifest, other] and "stat" not in manifest.doc["_sidecar"]


# --- the daemon: start-up, and the deletion model after a restart -------------------------------------


@pytest.mark.integration
def test_a_warm_restart_reads_only_the_hubs_and_finds_what_changed_while_down(data_dir, running, daemon_config,
                                                                               config, store, db, exact_clock):
    seed(data_dir)
    for read in (len(FILES), 1):  # cold, then warm
        d = RunningDaemon(daemon_config())
        try:
            d.start()
            assert d.daemon.mirror.last_scan["files_read"] == read
            assert d.daemon.mirror.last_scan["files_quick_checked"] == len(FILES) - read
        finally:
            d.stop()
    before = rewrite_same_size(data_dir, RUN)
    os.utime(data_dir / RUN, ns=(before.st_atime_ns, before.st_mtime_ns))
    d3 = running()
    assert d3.daemon.mirror.last_scan["changed"] == 1 and d3.daemon.mirror.last_scan["files_read"] == 2
    assert manifests(db, config).find_one({"_id": RUN})["content"]["status"] == "bbbb"
    d3.wait_parity()


@pytest.mark.integration
def test_a_watched_deletion_of_a_quick_checked_file_after_a_restart_is_mirrored(data_dir, running, config,
                                                                                store, db, exact_clock):
    seed(data_dir)
    run_sync(config, store)
    d = running()
    assert d.daemon.mirror.last_scan["files_quick_checked"] == NON_HUB
    lineage = d.daemon.mirror.rec.lineage
    assert lineage.same(read_file(data_dir, RUN))  # observed without a read, as a read would have
    st = probe_file(data_dir, RUN)
    assert st.ino == os.stat(data_dir / RUN).st_ino and st.dir_ino == os.stat(data_dir / "runs").st_ino
    (data_dir / RUN).unlink()
    (data_dir / EPISODE).unlink()
    coll = manifests(db, config)
    wait_for(lambda: (coll.find_one({"_id": RUN}) or {}).get("deleted_at")
             and (coll.find_one({"_id": EPISODE}) or {}).get("deleted_at"), 10,
             what="the watched deletions to be recorded")
    assert d.get("/divergences").json()["items"] == []


@pytest.mark.integration
def test_a_hub_key_removed_after_a_restart_is_mirrored_and_one_noticed_at_start_held(
        data_dir, running, config, store, db, exact_clock):
    seed(data_dir)
    run_sync(config, store)
    write_in_place(data_dir, HUB, {"l0": {"score": 0}, "l1": {"score": 1}})  # while no sidecar watched
    d = running()
    items = {i["path"]: i for i in d.get("/divergences").json()["items"]}
    assert items[HUB]["keys"] == ["l2"] and items[HUB]["reason"] == "noticed_at_reconcile"
    write_in_place(data_dir, HUB, {"l0": {"score": 0}})  # watched, in place: l1 goes
    wait_for(lambda: keys_in_mongo(db) == {"l0", "l2"}, 10, what="the watched removal to be mirrored")


@pytest.mark.integration
def test_the_background_verify_repairs_a_document_edited_in_mongo(data_dir, running, config, db, exact_clock):
    seed(data_dir)
    d = running(sidecar_verify_interval=0.2)
    db.episodic_memory.update_one({"run_id": "r2"}, {"$set": {"status": "SECRET"}})
    wait_for(lambda: db.episodic_memory.find_one({"run_id": "r2"})["status"] == "aaaa", 15,
             what="the verify to repair the episode")
    scan = wait_for(lambda: d.daemon.mirror.last_scan if d.daemon.mirror.last_scan["checksum"] else None, 10,
                    what="a verify to have run")
    assert scan["files_read"] == len(FILES) and scan["files_quick_checked"] == 0
    metrics = d.get("/metrics").body.decode()
    assert 'sidecar_errors_total{kind="drift"} 1.0' in metrics
    assert "SECRET" not in metrics
