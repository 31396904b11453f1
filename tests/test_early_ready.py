"""Readiness that does not wait for work it need not wait for (issue 13 point 2).

In file mode ``/readyz`` is 200 once the watcher is attached and the shim socket serves;
the start-up reconcile runs behind it, in the writer thread, with its progress in
``/memory/status`` (``sidecar.reconcile``) and ``/metrics``. Nothing written meanwhile is
lost or regressed, a sync frame is answered between the reconcile's files (truthfully),
the deletion model is the same, and in mongo mode readiness still waits for the restore
and the reconcile. ``sidecar/fullpass.py``, ``Mirror._reconcile``, ``Daemon.start_mirroring``.

The reconcile is slowed through the reconciler's public ``scan``: a ``Gate`` wraps the
``progress`` callback the daemon passes it (run after each file the scan has checked) and
stops the scan there until the test lets it go on. No sleep synchronises anything: every
wait is on an event or a polled condition with a deadline.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading

import pytest

from shim._config import DEFAULT_TIMEOUT_MS
from shim_helpers import frame, header, read_reply
from sidecar.sync import run_sync
from testkit.daemon import RunningDaemon
from testkit.http import parse_metrics
from testkit.measure import wait_for

pytestmark = pytest.mark.integration

N = 40  # files in the data dir
PAUSE_AT = 10  # the scan stops after this many files
CRAWL_S = 0.02  # once crawling: a file at most this often (the scan goes on, slowly)
WAIT_S = 30.0  # upper bound of every wait; the tests finish long before


def note(i: int) -> str:
    return f"notes/n_{i:03}.json"


def body(i: int, v: int) -> bytes:
    return (json.dumps({"i": i, "v": v}, indent=2) + "\n").encode()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_notes(root, v: int, n: int = N) -> None:
    (root / "notes").mkdir(exist_ok=True)
    for i in range(n):
        (root / note(i)).write_bytes(body(i, v))


def index(rel: str) -> int:
    return int(rel.rsplit("_", 1)[1].split(".")[0])


class Gate:
    """Slows a daemon's full reconciles through ``Reconciler.scan``: after the daemon's own
    ``progress`` callback for file ``pause_at`` the scan waits until ``crawl()`` (then at most
    one file per ``CRAWL_S``, and it waits again after file ``hold_at``) or ``go()`` (full
    speed from then on). ``read``: the files the scans checked, in order."""

    def __init__(self, d: RunningDaemon, pause_at: int = PAUSE_AT, hold_at: int | None = None) -> None:
        self.pause_at, self.hold_at = pause_at, hold_at
        self.read: list[str] = []
        self.paused = threading.Event()
        self.held = threading.Event()
        self._moved = threading.Event()  # crawl() or go()
        self._go = threading.Event()
        rec = d.daemon.mirror.rec
        scan = rec.scan

        def gated_scan(state, source, progress=None, **kw):
            def step(rel: str) -> None:
                if progress is not None:
                    progress(rel)
                self._step(rel)
            return scan(state, source, progress=step, **kw)
        rec.scan = gated_scan

    def _step(self, rel: str) -> None:
        self.read.append(rel)
        n = len(self.read)
        if self._go.is_set():
            return
        if n == self.pause_at:
            self.paused.set()
            self._moved.wait(WAIT_S)
        elif n == self.hold_at:
            self.held.set()
            self._go.wait(WAIT_S)
        elif n > self.pause_at:
            self._go.wait(CRAWL_S)

    def crawl(self) -> None:
        self._moved.set()

    def go(self) -> None:
        self._go.set()
        self._moved.set()


@pytest.fixture
def gated(daemon_config):
    """Start in-process daemons with a ``Gate`` on their reconcile, waiting for readiness
    only (never for the reconcile); all are let go and stopped at teardown."""
    made: list[tuple[RunningDaemon, Gate]] = []

    def start(pause_at: int = PAUSE_AT, hold_at: int | None = None, wait_ready: bool = True, **kw):
        d = RunningDaemon(daemon_config(**kw))
        gate = Gate(d, pause_at, hold_at)
        made.append((d, gate))
        d.start(wait_ready=wait_ready, wait_reconciled=False)
        return d, gate
    yield start
    for d, gate in made:
        gate.go()
        if not d.daemon.stopping.is_set():
            d.stop()


def files(d):
    return d.daemon.store.db[d.config.sidecar_files_collection]


def mirrored_sha(d, rel: str) -> str | None:
    doc = files(d).find_one({"_id": rel}, {"sha256": 1})
    return doc["sha256"] if doc else None


def reconcile_view(d) -> dict:
    return d.get("/memory/status").json()["sidecar"]["reconcile"]


def metrics(d) -> dict[str, float]:
    return parse_metrics(d.get("/metrics").body.decode())


def sync_frame(d, rel: str, data: bytes, replies: dict) -> threading.Thread:
    """A sync shim frame for ``rel`` (the API wrote ``data``) in a thread; its reply (or the
    exception, e.g. the shim's timeout) lands in ``replies[rel]``."""
    def run() -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(DEFAULT_TIMEOUT_MS / 1000)  # what the shim waits at most (SIDECAR_SHIM_TIMEOUT_MS)
        try:
            s.connect(str(d.config.socket_path))
            s.sendall(frame(header(path=rel, size=len(data), sha256=sha(data), ack=True), data))
            replies[rel] = read_reply(s)
        except Exception as exc:  # noqa: BLE001 - reported by the test's assertion
            replies[rel] = exc
        finally:
            s.close()
    t = threading.Thread(target=run, name="test-sync-frame", daemon=True)
    t.start()
    return t


# --- ready at once, progress while it runs -----------------------------------------------------

def test_file_mode_is_ready_while_the_start_up_reconcile_runs_and_shows_its_progress(
        data_dir, make_config, store, gated):
    write_notes(data_dir, 0)
    run_sync(make_config(), store)  # MongoDB holds every file: a warm restart
    d, gate = gated()
    assert gate.paused.wait(WAIT_S), "the reconcile never reached the gate"
    assert d.get("/readyz").status == 200
    sidecar = d.get("/memory/status").json()["sidecar"]
    assert sidecar["ready"] is True and sidecar["last_reconcile_at"] is None
    rec = sidecar["reconcile"]
    assert rec["running"] is True and rec["stage"] == "scanning"
    assert rec["checked"] == PAUSE_AT
    assert rec["total"] == N and rec["total_from"] == "mongodb_manifests"
    assert rec["eta_s"] is not None and rec["eta_s"] >= 0
    m = metrics(d)
    assert m["sidecar_reconcile_running"] == 1
    assert m["sidecar_reconcile_files_checked"] == PAUSE_AT
    assert m["sidecar_reconcile_files_total"] == N
    assert m["sidecar_ready"] == 1
    gate.go()
    d.wait_reconciled(WAIT_S)
    rec = reconcile_view(d)
    assert rec["running"] is False and rec["checked"] == N and rec["eta_s"] is None
    assert rec["finished_at"] is not None
    m = metrics(d)
    assert m["sidecar_reconcile_running"] == 0 and m["sidecar_reconcile_files_checked"] == N


def test_a_cold_start_is_ready_at_once_with_no_total_and_mirrors_everything(data_dir, gated):
    write_notes(data_dir, 0)
    d, gate = gated()
    assert gate.paused.wait(WAIT_S)
    assert d.get("/readyz").status == 200
    rec = reconcile_view(d)
    assert rec["running"] is True and rec["checked"] == PAUSE_AT
    assert rec["total"] is None and rec["eta_s"] is None  # MongoDB holds no manifest: no estimate
    assert metrics(d)["sidecar_reconcile_files_total"] == 0
    gate.go()
    d.wait_reconciled(WAIT_S)
    assert {doc["_id"]: doc["sha256"] for doc in files(d).find({}, {"sha256": 1})} == {
        note(i): sha(body(i, 0)) for i in range(N)}
    d.wait_parity(WAIT_S)


# --- no write lost or regressed -----------------------------------------------------------------

def test_writes_during_the_reconcile_before_and_after_the_scan_read_them_end_newest(
        data_dir, make_config, store, gated):
    write_notes(data_dir, 0)
    run_sync(make_config(), store)
    write_notes(data_dir, 1)  # changed while the sidecar was down: the scan has ops for each
    d, gate = gated(hold_at=N)  # it waits again after its last file: still running when we look
    assert gate.paused.wait(WAIT_S)
    read = list(gate.read)
    after = read[0]  # the scan read v1; its ops are handed over, maybe not written yet
    before = next(note(i) for i in range(N) if note(i) not in read)  # not reached yet
    new = "notes/n_new.json"  # created during the reconcile (its directory already listed)
    want = {note(i): sha(body(i, 1)) for i in range(N)}
    for rel, data in ((after, body(index(after), 2)), (before, body(index(before), 2)), (new, b'{"new": 1}\n')):
        (data_dir / rel).write_bytes(data)
        want[rel] = sha(data)
    wait_for(lambda: {after, before, new} <= d.daemon.pending.paths(), WAIT_S, what="the watcher's events queued")
    gate.crawl()  # served between the scan's files: after the scan's v1, before the scan reads `before`

    def newest(rels):
        return all(mirrored_sha(d, rel) == want[rel] for rel in rels)
    wait_for(lambda: newest((after, before, new)), WAIT_S, what="the writes mirrored during the reconcile")
    assert reconcile_view(d)["running"] is True
    gate.go()
    d.wait_reconciled(WAIT_S)
    wait_for(lambda: newest(want), WAIT_S, what="every file mirrored with its newest content")
    assert {doc["_id"] for doc in files(d).find({}, {"_id": 1})} == set(want)
    d.wait_parity(WAIT_S)
    # Nothing held: the new file, served during the reconcile (listed by its walk or not), is not "gone".
    assert not d.get("/divergences").json()["items"]
    assert files(d).count_documents({"deleted_at": {"$ne": None}}) == 0
    assert d.daemon.status.stale_refused == 0  # the scan's older reads landed first


def test_sync_frames_during_the_reconcile_are_answered_in_time_and_truthfully(
        data_dir, make_config, store, gated):
    write_notes(data_dir, 0)
    run_sync(make_config(), store)
    write_notes(data_dir, 1)
    # The scan stops again after its last file: the reconcile cannot end before the frames'
    # answers are looked at.
    d, gate = gated(hold_at=N)
    assert gate.paused.wait(WAIT_S)
    read = list(gate.read)
    after = read[0]  # read by the scan (v1, its ops handed over but maybe not written)
    before = next(note(i) for i in range(N) if note(i) not in read)
    new = {after: body(index(after), 2), before: body(index(before), 2)}
    replies: dict = {}
    threads = []
    for rel, data in new.items():  # the API's sync writes
        (data_dir / rel).write_bytes(data)
        threads.append(sync_frame(d, rel, data, replies))
    wait_for(lambda: d.daemon.pending.waiting() == 2, WAIT_S, what="both frames waiting")
    gate.crawl()  # the scan goes on, slowly: the frames are served between its files
    for t in threads:
        t.join(WAIT_S)
    for rel, data in new.items():
        reply = replies[rel]
        assert isinstance(reply, dict), f"{rel}: no answer within the shim's timeout: {reply!r}"
        # "unchanged" when the scan reached the file first (its write then carried these bytes)
        assert reply["ok"] is True and reply["status"] in ("written", "unchanged"), reply
        assert mirrored_sha(d, rel) == sha(data), "the reply claimed more than MongoDB holds"
    assert reconcile_view(d)["running"] is True  # answered during the reconcile, not after it
    gate.go()
    d.wait_reconciled(WAIT_S)
    for rel, data in new.items():
        assert mirrored_sha(d, rel) == sha(data), f"{rel} regressed after the reconcile"
    d.wait_parity(WAIT_S)


# --- the deletion model -----------------------------------------------------------------------------

def test_removals_during_the_reconcile_follow_the_deletion_model(data_dir, make_config, store, gated):
    write_notes(data_dir, 0)
    run_sync(make_config(), store)
    d, gate = gated()
    assert gate.paused.wait(WAIT_S)
    read = list(gate.read)
    seen = read[0]  # the scan read it: this daemon knows its lineage, a watched rm is mirrored
    unseen = next(note(i) for i in range(N) if note(i) not in read)  # no lineage yet: held
    (data_dir / seen).unlink()
    (data_dir / unseen).unlink()
    gate.go()
    d.wait_reconciled(WAIT_S)

    def settled():
        doc = files(d).find_one({"_id": seen}, {"deleted_at": 1}) or {}
        items = {i["path"]: i for i in d.get("/divergences").json()["items"]}
        return doc.get("deleted_at") is not None and unseen in items and items
    items = wait_for(settled, WAIT_S, what="the seen removal mirrored, the unseen one held")
    assert set(items) == {unseen}
    assert files(d).find_one({"_id": unseen})["deleted_at"] is None  # MongoDB keeps it
    assert files(d).count_documents({"deleted_at": {"$ne": None}}) == 1


# --- mongo mode still waits ---------------------------------------------------------------------------

def test_mongo_mode_waits_for_the_restore_and_the_reconcile(data_dir, make_config, store, gated):
    write_notes(data_dir, 0)
    run_sync(make_config(), store)
    (data_dir / note(3)).unlink()  # MongoDB holds it, the disk does not: restored before ready
    d, gate = gated(wait_ready=False, memory_store_backend="mongo")
    assert gate.paused.wait(WAIT_S)
    assert (data_dir / note(3)).read_bytes() == body(3, 0)  # the restore ran before the reconcile
    r = d.get("/readyz")
    assert r.status == 503 and r.json()["reason"] == "starting: reconciling"
    assert r.json()["reconcile"]["running"] is True and r.json()["reconcile"]["checked"] == PAUSE_AT
    assert d.daemon.status.ready is False
    gate.go()
    wait_for(lambda: d.get("/readyz").status == 200, WAIT_S, what="ready once the reconcile is done")
    assert d.daemon.status.last_reconcile_at is not None


# --- MongoDB lost, a stop: during the reconcile behind readiness -------------------------------------

def test_mongodb_lost_during_the_reconcile_is_503_then_it_completes(restartable_server, data_dir, gated):
    write_notes(data_dir, 0)
    server = restartable_server
    d, gate = gated(sidecar_server_selection_timeout_ms=400)
    assert gate.paused.wait(WAIT_S)
    try:
        server.stop()
        gate.go()  # its writes fail now: the reconcile is queued again, retried with backoff
        wait_for(lambda: (r := d.get("/readyz")).status == 503 and r.json()["reason"] == "mongodb unreachable",
                 WAIT_S, what="/readyz 503 while MongoDB is away")
        assert d.daemon.status.last_reconcile_at is None
    finally:
        if server.proc is None:
            server.start()
    d.wait_reconciled(WAIT_S)
    wait_for(lambda: d.get("/readyz").status == 200, WAIT_S, what="ready again")
    assert {doc["_id"] for doc in files(d).find({}, {"_id": 1})} == {note(i) for i in range(N)}
    d.wait_parity(WAIT_S)


def test_a_stop_during_the_reconcile_ends_it_and_the_next_start_completes_it(data_dir, daemon_config, gated):
    write_notes(data_dir, 0)
    d, gate = gated()
    assert gate.paused.wait(WAIT_S)
    stopper = threading.Thread(target=d.stop, name="test-stop", daemon=True)
    stopper.start()
    wait_for(d.daemon.stopping.is_set, WAIT_S, what="the stop signal")
    gate.crawl()  # the scan goes on: it sees the stop at its next check and ends
    stopper.join(WAIT_S)
    assert not stopper.is_alive(), "the stop waited for the whole reconcile"
    assert d.daemon.status.last_reconcile_at is None and len(gate.read) < N
    again = RunningDaemon(daemon_config()).start(timeout=WAIT_S)  # the files are the journal
    try:
        assert {doc["_id"] for doc in files(again).find({}, {"_id": 1})} == {note(i) for i in range(N)}
        again.wait_parity(WAIT_S)
    finally:
        again.stop()
