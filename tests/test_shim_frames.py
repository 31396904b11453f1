"""Shim frames enter the mirror through ``Pending`` like watcher events (issue 12
point 3): an async frame queues its path (urgent, no linger), a sync frame waits
for the flush that read the file after it was written, and only the writer
thread writes to MongoDB. ``sidecar/pending.py`` (Waiter, claim, the answers),
``sidecar/mirror.py`` and ``Daemon.on_shim``."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import threading
import time

import pytest

from testkit.measure import wait_for
from sidecar.config import Config
from sidecar.state import MirrorState
from sidecar.lease import LeaseHeld
from sidecar.mirror import Mirror
from sidecar.pending import Pending
from sidecar.shimserver import ShimEvent
from sidecar.status import Status
from sidecar.store import ApplyResult, MongoUnavailable

REL = "scheduled_jobs.json"


def body(v: int) -> bytes:
    return json.dumps([{"id": "job-1", "v": v}], indent=2).encode()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def frame(data: bytes | None, ack: bool = True, rel: str = REL, op: str = "write") -> ShimEvent:
    return ShimEvent(op=op, path=rel, data=data, sha256=sha(data) if data is not None else None,
                     mtime_ns=time.time_ns(), seq=1, pid=4242, ack=ack)


def send(d, event: ShimEvent, timeout: float = 20.0):
    """Hand a frame to the daemon as its shim server does (on its loop)."""
    return asyncio.run_coroutine_threadsafe(d.daemon.on_shim(event), d._loop).result(timeout)


# --- Pending: waiters -------------------------------------------------------------------------

def test_a_waiter_is_answered_by_the_batch_that_took_its_path():
    p = Pending()
    w = p.wait("a.json", "f" * 64)
    assert p.queued() == 1 and p.waiting() == 1
    _, taken = p.take(timeout=1, linger=5.0)  # urgent: no linger for a burst to gather
    assert set(taken) == {"a.json"}
    claims = p.claim(taken)
    assert claims == {"a.json": [w]} and p.claim(taken) == {}  # handed over once
    assert not w.future.done()


def test_an_async_frames_path_is_claimed_without_waiters_a_watched_one_is_not():
    p = Pending()
    p.mark("frame.json", urgent=True)
    p.mark("watched.json")
    _, taken = p.take(timeout=1)
    assert set(taken) == {"frame.json", "watched.json"}
    assert p.claim(taken) == {"frame.json": []}  # landed as the shim's (``_sidecar.source``)


def test_a_waiter_that_arrives_while_its_path_is_in_flight_waits_for_the_next_flush():
    p = Pending()
    p.mark("a.json")
    _, taken = p.take(timeout=1)  # in flight: its read may come before the frame's write
    late = p.wait("a.json", "f" * 64)
    assert p.claim(taken) == {}  # not this batch's to answer
    p.done(taken)
    _, again = p.take(timeout=1)
    assert p.claim(again) == {"a.json": [late]}


def test_urgent_paths_are_taken_without_lingering_plain_ones_linger():
    p = Pending()
    p.mark("plain.json")
    t0 = time.monotonic()
    p.take(timeout=1, linger=0.3)
    lingered = time.monotonic() - t0
    p.mark("frame.json", urgent=True)
    t0 = time.monotonic()
    p.take(timeout=1, linger=30.0)  # a 30 s linger would show
    assert lingered >= 0.3 and time.monotonic() - t0 < 30.0


def test_stopping_answers_every_waiter_with_an_error():
    p = Pending()
    queued = p.wait("a.json", None)
    p.mark("b.json")
    p.wait("b.json", None)
    _, taken = p.take(timeout=1)
    p.answer_all(RuntimeError("stopping"))
    assert isinstance(queued.future.exception(timeout=1), RuntimeError)
    p.close()
    closed = p.wait("c.json", None)  # after close: answered at once, never left hanging
    assert isinstance(closed.future.exception(timeout=1), RuntimeError)


def test_a_cancelled_frame_does_not_break_the_writer():
    p = Pending()
    w = p.wait("a.json", None)
    w.future.cancel()  # the frame's connection went away
    w.answer("written")  # no InvalidStateError


# --- Mirror: the answers, with a store double -------------------------------------------------

class Store:
    """Enough of sidecar.store.Store for a flush; records the threads that write."""

    def __init__(self) -> None:
        self.down = False
        self.applied: list = []
        self.threads: set[str] = set()

    def shape(self, counts=False):
        return ()

    def apply(self, ops):
        if self.down:
            raise MongoUnavailable("down")
        self.threads.add(threading.current_thread().name)
        self.applied.extend(ops)
        return ApplyResult(applied=list(ops))

    def record_events(self, events):
        if self.down:
            raise MongoUnavailable("down")


@pytest.fixture
def mirror(tmp_path):
    return Mirror(Config(runtime_data_dir=str(tmp_path)), Store(), Status(), Pending(), MirrorState())


def flush_once(m: Mirror) -> bool:
    full, taken = m.pending.take(timeout=1)
    return m.flush(full, taken)


def test_answers_written_then_unchanged_then_stale(mirror, tmp_path):
    (tmp_path / REL).write_bytes(body(1))
    first = mirror.pending.wait(REL, sha(body(1)))
    assert flush_once(mirror)
    assert first.future.result(timeout=1) == "written"
    again = mirror.pending.wait(REL, sha(body(1)))
    assert flush_once(mirror)
    assert again.future.result(timeout=1) == "unchanged"
    # A frame whose bytes the file no longer holds (a later write): stale, and the
    # newer content is what was mirrored.
    (tmp_path / REL).write_bytes(body(2))
    late = mirror.pending.wait(REL, sha(body(1)))
    assert flush_once(mirror)
    assert late.future.result(timeout=1) == "stale"
    assert mirror.state.files[REL].sha256 == sha(body(2))


def test_two_frames_for_one_path_in_one_batch_are_each_told_their_own(mirror, tmp_path):
    (tmp_path / REL).write_bytes(body(1))
    older = mirror.pending.wait(REL, sha(body(1)))
    (tmp_path / REL).write_bytes(body(2))
    newer = mirror.pending.wait(REL, sha(body(2)))
    assert flush_once(mirror)
    assert (older.future.result(timeout=1), newer.future.result(timeout=1)) == ("stale", "written")


def test_a_frame_whose_next_write_is_caught_mid_way_is_not_told_stale_until_that_write_is_stored(
        mirror, tmp_path):
    """The frame's bytes were overwritten by a write still under way (the flush read a
    torn, empty file): nothing newer is in MongoDB yet, so "stale" would claim too
    much. The frame waits for the re-check's flush, which stores the newer write."""
    path = tmp_path / REL
    path.write_bytes(body(1))
    w = mirror.pending.wait(REL, sha(body(1)))
    path.write_bytes(b"")  # the next write_text has truncated, not yet written
    assert flush_once(mirror)
    assert not w.future.done() and mirror.pending.waiting() == 1
    assert REL not in mirror.state.files  # nothing stored
    path.write_bytes(body(2))  # that write completes
    ok = wait_for(lambda: flush_once(mirror) and w.future.done(), 10, what="the re-check's flush")
    assert ok and w.future.result(timeout=1) == "stale"
    assert mirror.state.files[REL].sha256 == sha(body(2))  # "stale" is true now: a newer version is stored


def test_a_torn_read_that_never_heals_ends_in_an_error_not_a_wait_forever(mirror, tmp_path):
    path = tmp_path / REL
    path.write_bytes(body(1))
    w = mirror.pending.wait(REL, sha(body(1)))
    path.write_bytes(b"")  # and it stays empty
    wait_for(lambda: flush_once(mirror) is not None and w.future.done(), 15, what="the re-checks to run out")
    assert isinstance(w.future.exception(timeout=1), ValueError)
    assert mirror.pending.waiting() == 0


def test_a_file_with_a_problem_is_an_error_for_its_frame(mirror, tmp_path):
    (tmp_path / "broken.json").write_bytes(b"{not json")
    w = mirror.pending.wait("broken.json", sha(b"{not json"))
    flush_once(mirror)
    assert isinstance(w.future.exception(timeout=1), ValueError)


def test_mongodb_away_fails_the_frame_and_keeps_the_path(mirror, tmp_path):
    (tmp_path / REL).write_bytes(body(1))
    mirror.store.down = True
    w = mirror.pending.wait(REL, sha(body(1)))
    assert flush_once(mirror) is False
    assert isinstance(w.future.exception(timeout=1), MongoUnavailable)
    assert REL in mirror.pending.paths()  # requeued: mirrored when MongoDB is back
    mirror.store.down = False
    assert flush_once(mirror)
    assert mirror.state.files[REL].sha256 == sha(body(1))


def test_another_writer_holding_the_lease_is_not_durable(mirror, tmp_path):
    class Held:
        def ensure(self):
            raise LeaseHeld({"owner": "daemon", "host": "elsewhere"})

    (tmp_path / REL).write_bytes(body(1))
    mirror.lease = Held()
    w = mirror.pending.wait(REL, sha(body(1)))
    assert flush_once(mirror) is False
    assert w.future.result(timeout=1) == "not_durable"
    assert mirror.store.applied == []


def test_a_batch_that_became_a_full_reconcile_answers_its_frames_on_the_next_flush(mirror, tmp_path):
    (tmp_path / REL).write_bytes(body(1))
    w = mirror.pending.wait(REL, sha(body(1)))
    mirror.pending.mark_full()
    full, taken = mirror.pending.take(timeout=1)
    assert full is not None and REL in taken
    mirror.reconcile = lambda checksum=False: None  # the reconcile itself is tested elsewhere
    assert mirror.flush(full, taken)
    assert not w.future.done() and mirror.pending.waiting() == 1
    assert flush_once(mirror)
    assert w.future.result(timeout=1) == "written"


# --- the daemon: frames through its writer thread -----------------------------------------

@pytest.mark.integration
def test_sync_frames_are_written_by_the_writer_thread_only(running):
    d = running()
    calls: list[str] = []
    apply = d.daemon.store.apply

    def recording(*a, **k):
        calls.append(threading.current_thread().name)
        return apply(*a, **k)

    d.daemon.store.apply = recording
    path = d.config.data_dir / REL
    for v in range(1, 6):
        path.write_bytes(body(v))
        assert send(d, frame(body(v))) in ("written", "unchanged", "stale")
    files = d.daemon.store.db[d.config.sidecar_files_collection]
    assert files.find_one({"_id": REL})["content"] == [{"id": "job-1", "v": 5}]  # durable on return
    assert calls and set(calls) == {"sidecar-mirror"}
    outcomes = d.daemon.status.shim_outcomes()
    assert outcomes.get("written", 0) + outcomes.get("unchanged", 0) + outcomes.get("stale", 0) == 5


@pytest.mark.integration
def test_late_frame_never_regresses_even_with_the_same_mtime(running):
    """Watcher vs shim race: an older frame arriving after a newer write is refused."""
    d = running()
    path = d.config.data_dir / REL
    path.write_bytes(body(2))
    files = d.daemon.store.db[d.config.sidecar_files_collection]
    wait_for(lambda: files.find_one({"_id": REL, "content.0.v": 2}), 10, what="v2 mirrored")
    # The late frame claims the very same mtime as the newer write (coarse clocks).
    old = dataclasses.replace(frame(body(1)), mtime_ns=path.stat().st_mtime_ns)
    assert send(d, old) == "stale"
    assert files.find_one({"_id": REL})["content"] == [{"id": "job-1", "v": 2}]
    assert send(d, frame(body(2))) == "unchanged"


@pytest.mark.integration
def test_async_frames_are_queued_and_coalesced_while_the_writer_is_busy(running):
    d = running()
    mirror = d.daemon.mirror
    files = d.daemon.store.db[d.config.sidecar_files_collection]
    path = d.config.data_dir / REL
    path.write_bytes(body(1))
    wait_for(lambda: files.find_one({"_id": REL, "content.0.v": 1}), 10, what="v1 mirrored")
    writes = d.daemon.status.writes_by_collection().get(d.config.sidecar_files_collection, 0)
    with mirror.lock:  # what a flush in progress holds: the writer cannot write meanwhile
        for v in (2, 3, 4):
            path.write_bytes(body(v))
            assert send(d, frame(body(v), ack=False)) == "queued"
        assert files.find_one({"_id": REL})["content"] == [{"id": "job-1", "v": 1}]
    wait_for(lambda: files.find_one({"_id": REL, "content.0.v": 4}), 10, what="v4 mirrored")
    after = d.daemon.status.writes_by_collection().get(d.config.sidecar_files_collection, 0)
    assert after - writes <= 2  # the three frames (and their watcher events) coalesced


def test_a_sync_frame_still_waiting_at_shutdown_is_answered(mirror, tmp_path):
    (tmp_path / REL).write_bytes(body(1))
    mirror.store.down = True  # the shutdown flush cannot write it
    w = mirror.pending.wait(REL, sha(body(1)))
    mirror.stop(time.monotonic() + 1)
    assert w.future.exception(timeout=1) is not None  # an error: not durable, never left hanging
    assert isinstance(mirror.pending.wait(REL, None).future.exception(timeout=1), RuntimeError)
