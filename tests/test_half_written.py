"""Half-written reads (DESIGN §5 "No false deletes"): a legacy writer that truncates,
pauses, then writes — or writes half the bytes, flushes, pauses, writes the rest —
must never make the daemon delete entries or store a partial payload.

The pauses live inside the *writer*: they are the behaviour under test (a reader
catching the file between truncate and write), not test synchronisation. The
test itself only waits by polling with a deadline.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pymongo
import pytest

from testkit.measure import wait_for

pytestmark = pytest.mark.integration

HUB = "learner_preferences"
REL = f"structured_hubs/{HUB}.json"
ENTRIES = 300
ROUNDS = 6  # alternating the two writer styles
# Longer than the watcher's quiet window (0.1 s) plus the writer's linger (50 ms): the
# daemon reads the file while it is empty / half-written, which is the point.
PAUSE = 0.3
TRANSIENT_REASONS = {"empty", "invalid_json", "invalid_utf8", "unstable"}


def payload(i: int, version: int) -> dict:
    return {"n": i, "version": version, "band": ["low", "steady", "improving"][(i + version) % 3],
            "note": f"entry {i} at version {version}"}


def touched_at(i: int, version: int) -> int:
    """Like a learner signal, version v (1..) changes one existing entry (learner-(v-1))
    and adds one new key (learner-(ENTRIES+v-1)); the whole file is rewritten."""
    if i < ENTRIES:
        return i + 1 if i < version else 0
    return i - ENTRIES + 1


def content(version: int) -> str:
    data = {f"learner-{i}": payload(i, touched_at(i, version)) for i in range(ENTRIES + version)}
    return json.dumps(data, indent=2)


def write_truncate_pause_write(path: Path, text: str, pause: threading.Event) -> None:
    with open(path, "w", encoding="utf-8") as f:  # O_TRUNC: the file is empty from here
        f.flush()
        pause.wait(PAUSE)
        f.write(text)


def write_half_flush_pause_rest(path: Path, text: str, pause: threading.Event) -> None:
    half = len(text) // 2
    with open(path, "w", encoding="utf-8") as f:
        f.write(text[:half])
        f.flush()  # half the bytes are on disk: invalid JSON until the rest arrives
        pause.wait(PAUSE)
        f.write(text[half:])


class Sampler(threading.Thread):
    """Concurrently counts the hub's documents and checks every payload it sees."""

    def __init__(self, url: str, db_name: str, max_version: int) -> None:
        super().__init__(name="test-sampler", daemon=True)
        self.client = pymongo.MongoClient(url, serverSelectionTimeoutMS=5000)
        self.coll = self.client[db_name].memory_hubs
        self.max_version = max_version
        self.stop = threading.Event()
        self.min_count: int | None = None
        self.samples = 0
        self.bad: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set() and self.samples < 100_000:
                n = self.coll.count_documents({"hub_type": HUB})
                self.min_count = n if self.min_count is None else min(self.min_count, n)
                for doc in self.coll.find({"hub_type": HUB}, {"item_key": 1, "payload": 1}):
                    i = int(doc["item_key"].split("-", 1)[1])
                    p = doc.get("payload")
                    v = p.get("version") if isinstance(p, dict) else None
                    if not (isinstance(v, int) and 0 <= v <= self.max_version and p == payload(i, v)):
                        self.bad.append(doc["item_key"])
                self.samples += 1
                self.stop.wait(0.005)  # the sampling rate
        except BaseException as exc:
            self.error = exc

    def finish(self) -> None:
        self.stop.set()
        self.join(30)
        self.client.close()
        assert not self.is_alive()
        if self.error:
            raise self.error


def _mirrored_version(db, version: int) -> bool:
    """Version v's flush is complete: its events are the flush's last write."""
    new_key = f"learner-{ENTRIES + version - 1}"
    done = db.memory_events.find_one({"event_type": "hub_inserted",
                                      "entity_key": f"memory_hubs:{HUB}/{new_key}"})
    doc = db.memory_hubs.find_one({"_id": f"{HUB}/learner-{version - 1}"}, {"payload": 1})
    return bool(done) and bool(doc) and doc["payload"]["version"] == version


def test_truncating_and_half_writing_writers_never_delete_or_store_partials(data_dir, running, mongo_url,
                                                                            db_name):
    path = data_dir / REL
    path.parent.mkdir()
    path.write_text(content(0))
    d = running()
    d.wait_parity()
    db = d.daemon.store.db
    initial = db.memory_hubs.count_documents({"hub_type": HUB})
    assert initial == ENTRIES

    # Record what the daemon actually read, to show the half-written states were seen.
    seen_reasons: list[str] = []
    rec = d.daemon.mirror.rec
    original = rec.process_file

    def spy(rel, *args, **kw):
        ops, problems = original(rel, *args, **kw)
        if rel == REL:
            seen_reasons.extend(p.reason for p in problems)
        return ops, problems
    rec.process_file = spy

    sampler = Sampler(mongo_url, db_name, ROUNDS)
    sampler.start()
    pause = threading.Event()  # never set: only the writer's own bounded pause
    try:
        for version in range(1, ROUNDS + 1):
            writer = write_truncate_pause_write if version % 2 else write_half_flush_pause_rest
            writer(path, content(version), pause)
            wait_for(lambda: _mirrored_version(db, version), 10, 0.01, f"version {version} mirrored")
    finally:
        sampler.finish()
        rec.process_file = original

    assert sampler.samples >= 10
    assert sampler.min_count is not None and sampler.min_count >= initial, \
        f"the hub shrank to {sampler.min_count} documents while being rewritten"
    assert not sampler.bad, f"partial or unknown payloads seen: {sorted(set(sampler.bad))[:10]}"
    assert db.memory_events.count_documents({"event_type": "hub_deleted"}) == 0
    report = d.wait_parity()
    assert report["mongo_counts"]["hub_entries"] == ENTRIES + ROUNDS
    # The daemon did read the file mid-write (otherwise this test proves nothing)...
    assert set(seen_reasons) & {"empty"}, seen_reasons
    assert set(seen_reasons) & {"invalid_json", "unstable"}, seen_reasons
    assert set(seen_reasons) <= TRANSIENT_REASONS, seen_reasons
    # ...and re-checked instead of reporting: the file healed each time, so no bad_input
    # event, no current problem and no error counted for it. (Deterministic: each
    # half-written window is one read at most — PAUSE is shorter than the re-check
    # delay — and the writer's close event re-reads at once; TRANSIENT_RETRIES is 3.)
    assert db.memory_events.count_documents({"event_type": "bad_input", "path": REL}) == 0
    status = d.get("/memory/status").json()["sidecar"]
    assert REL not in {p["path"] for p in status["problems"]}
    assert not set(status["errors_by_kind"]) & TRANSIENT_REASONS, status["errors_by_kind"]


def test_a_file_left_half_written_is_reported_but_deletes_nothing(data_dir, running):
    """A writer that died mid-write: after the re-checks it is bad input (event, status),
    the entries stay; once a good version is written the problem clears."""
    path = data_dir / REL
    path.parent.mkdir()
    path.write_text(content(0))
    d = running()
    d.wait_parity()
    db = d.daemon.store.db
    text = content(1)
    path.write_text(text[: len(text) // 2])
    wait_for(lambda: db.memory_events.find_one({"event_type": "bad_input", "path": REL}), 10,
             what="the half-written file to be reported after its re-checks")
    event = db.memory_events.find_one({"event_type": "bad_input", "path": REL})
    assert event["reason"] == "invalid_json"
    status = d.get("/memory/status").json()["sidecar"]
    assert {p["path"]: p["reason"] for p in status["problems"]}[REL] == "invalid_json"
    assert db.memory_hubs.count_documents({"hub_type": HUB}) == ENTRIES
    assert db.memory_hubs.find_one({"_id": f"{HUB}/learner-0"})["payload"] == payload(0, 0)
    assert db.memory_hubs.find_one({"_id": f"{HUB}/learner-{ENTRIES}"}) is None
    assert db.memory_events.count_documents({"event_type": "hub_deleted"}) == 0
    path.write_text(text)
    d.wait_parity()
    assert db.memory_hubs.count_documents({"hub_type": HUB}) == ENTRIES + 1
    wait_for(lambda: REL not in {p["path"] for p in d.get("/memory/status").json()["sidecar"]["problems"]},
             5, what="the problem to clear")


def test_a_reconcile_catching_a_file_mid_write_does_not_report_it(data_dir, running):
    from testkit.daemon_fixtures import reconcile_now

    path = data_dir / REL
    path.parent.mkdir()
    path.write_text(content(0))
    d = running()
    d.wait_parity()
    db = d.daemon.store.db
    text = content(1)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text[: len(text) // 2])
        f.flush()
        # A full reconcile runs while the file is half-written (the writer is mid-write;
        # far shorter than the watcher's own re-check budget of ~1 s).
        reconcile_now(d)
        f.write(text[len(text) // 2:])
    d.wait_parity()
    assert db.memory_hubs.count_documents({"hub_type": HUB}) == ENTRIES + 1
    assert db.memory_events.count_documents({"event_type": "hub_deleted"}) == 0
    assert db.memory_events.count_documents({"event_type": "bad_input", "path": REL}) == 0, \
        "a transient read during a reconcile was reported as bad input"
