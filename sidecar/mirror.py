"""Stage 5 loop: the batched writer.

One thread takes every ready path from ``Pending`` (a burst becomes one flush),
diffs each file against the mirror state and writes all resulting ops in
unordered bulk batches. When MongoDB is away the *paths* go back into
``Pending`` and are retried with capped exponential backoff: nothing is
dropped, memory stays bounded, and the retry re-reads the files, so it always
writes the newest content.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time

from .classify import UnsafePath
from .config import Config
from .state import MirrorState, Op, build_state
from .divergence import DIR_REPLACED, MASS_REMOVAL, Divergence, DivergenceBook
from .events import build_events, note_event
from .heal import Healer
from .lease import LeaseHeld
from .model import utcnow
from .pending import Pending
from .reconcile import Problem, Reconciler
from .restore import restore_file
from .source import FileRead, SourceError, parent_ino, read_file, sha256_hex
from .status import Status
from .store import MongoUnavailable, Store

log = logging.getLogger("sidecar.mirror")

# A reader can catch a legacy write between truncate and write: these reasons
# usually heal with the writer's next close event, so they are re-checked
# before being reported.
TRANSIENT = {"empty", "invalid_json", "invalid_utf8", "unstable"}
TRANSIENT_RETRIES = 3
TRANSIENT_DELAY = 0.3
BACKOFF_MIN, BACKOFF_MAX = 0.1, 5.0
PING_EVERY = 2.0
# GridFS blobs no manifest or tombstone names any more are collected this often
# (the write path never deletes a blob: sidecar/store.py).
GC_BLOBS_EVERY = 600.0
MAX_UNSENT_EVENTS = 10_000
# Under steady load the writer's events are sent in batches of this many, or
# when the oldest is this old, or as soon as the writer has nothing queued: an
# insert of 5-8 events cost the server 2-3x more per event than one of 50
# (~7 % of a core at 200 writes/s), all of it on the writer's critical path.
EVENTS_BATCH = 50
EVENTS_MAX_AGE = 0.5
# A watched file's removal is mirrored only once it has stayed gone this long,
# and only if its directory and the data dir are still the ones it was in:
# ``rm -rf`` of a directory or of the data dir deletes the files first, and
# inside this window it is seen as what it is (a directory gone: held).
REMOVAL_SETTLE_S = 1.0
# Every watched file seen gone within this window counts against
# SIDECAR_MAX_REMOVALS, whether it was mirrored, held or is still settling: a
# burst whose files mature in separate flushes, or a slow ``find -delete``, is
# still one mass removal.
REMOVAL_WINDOW_S = 60.0


class Mirror:
    def __init__(self, config: Config, store: Store, status: Status, pending: Pending,
                 state: MirrorState, book: DivergenceBook | None = None) -> None:
        self.config = config
        self.store = store
        self.status = status
        self.pending = pending
        self.state = state
        self.book = book if book is not None else DivergenceBook()
        self.rec = Reconciler(config)
        self.healer = Healer(config.data_dir, store, self._observe_own)
        self._vanished: dict[str, float] = {}  # watched files gone, settling (monotonic first seen)
        self._gone_seen: dict[str, float] = {}  # watched files seen gone (REMOVAL_WINDOW_S)
        self._root_id: tuple[int, int] | None = None
        self._touched: set[str] | None = None  # paths a running full reconcile looked at
        self.lease = None  # the writer lease (sidecar/lease.py), set by the daemon
        self._was_down = False  # MongoDB was unreachable: reload its state when it is back
        self.lock = threading.RLock()  # one writer at a time: the loop, the shim, shutdown
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._backoff = 0.0
        self._transient: dict[str, int] = {}
        self._last_error_log = 0.0
        self._last_ping = 0.0
        # (name, uuid) of the mirrored collections when the state was loaded: a restore
        # from a dump into the running server re-creates them (Store.identity).
        self._identity: tuple[tuple[str, str], ...] | None = None
        self._last_identity = 0.0
        self._last_gc = time.monotonic()
        # Events whose documents were written but which MongoDB did not take
        # (it went away in between), or which wait for a batch (EVENTS_BATCH):
        # sent first on the next successful write.
        self._unsent: list[dict] = []
        self._unsent_since = 0.0

    # --- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sidecar-mirror", daemon=True)
        self._thread.start()

    def stop(self, deadline: float) -> None:
        """Stop the loop, then flush whatever is pending until ``deadline`` (monotonic)."""
        self._stop.set()
        self.pending.close()
        if self._thread is not None:
            self._thread.join(timeout=max(0.1, deadline - time.monotonic()))
        while self.pending.queued() and time.monotonic() < deadline:
            full, taken = self.pending.take(0, ignore_delay=True)
            if not self.flush(full, taken):
                break
        try:
            self._flush_events()
        except MongoUnavailable:
            log.warning("shutdown: %d events not recorded (MongoDB unavailable)", len(self._unsent))
        left = len(self.pending)
        if left:
            log.warning("shutdown: %d changed paths not mirrored (the next start reconciles them)", left)
        self.healer.close()

    def _run(self) -> None:
        flush_s = self.config.sidecar_flush_interval_ms / 1000
        while not self._stop.is_set():
            full, taken = self.pending.take(timeout=PING_EVERY / 2, linger=flush_s,
                                            limit=self.config.sidecar_batch_size)
            if self._stop.is_set():
                self.pending.requeue(taken, 0.0, full)
                break
            if taken:
                now = time.monotonic()
                for first in taken.values():
                    self.status.timers.observe("queue_wait", now - first)
            if full is None and not taken:
                self._idle()
                continue
            if not self.flush(full, taken):
                self._stop.wait(self._backoff)
                continue
            self._check_heals()
            if self._unsent and not self.pending.queued():
                try:
                    self._flush_events()  # nothing queued: the writer would idle, send them now
                except MongoUnavailable as exc:
                    self._mongo_down(str(exc))
            self._update_gauges()

    def _idle(self) -> None:
        self._update_gauges()
        self._check_heals()
        now = time.monotonic()
        if now - self._last_ping >= PING_EVERY:
            self._last_ping = now
            try:
                self.store.ping()
                self.status.set_mongo(True)
                self._mongo_back()
                if self._replaced():
                    self.pending.mark_full()
                if self.lease is not None:
                    try:
                        self._keep_lease()  # an idle writer keeps its lease too
                    except LeaseHeld as exc:
                        self.status.lease_problem = str(exc)
                self._flush_events()
                if now - self._last_gc >= GC_BLOBS_EVERY:
                    self._last_gc = now
                    self.store.gc_blobs()
            except MongoUnavailable as exc:
                self._was_down = True
                self.status.set_mongo(False, str(exc))

    def _update_gauges(self) -> None:
        self.status.set_pending(len(self.pending), self.pending.oldest_age())

    # --- one flush ------------------------------------------------------------------
    def flush(self, full: float | None, taken: dict[str, float]) -> bool:
        """Mirror a batch. False (and everything requeued) when MongoDB is away or
        another writer holds the lease.

        The batch stays in flight in ``Pending`` (pending, lag, /parity) until
        MongoDB acknowledged it or it is requeued."""
        try:
            if self.lease is not None:
                try:
                    self._keep_lease()
                except LeaseHeld as exc:
                    self.pending.requeue(taken, 0.0, full)
                    if self.status.lease_problem is None:
                        log.warning("not writing: %s", exc)
                    self.status.lease_problem = str(exc)
                    self._backoff = min(BACKOFF_MAX, max(1.0, self._backoff * 2))
                    return False
            with self.lock:
                if full is not None:
                    self.reconcile()
                else:
                    with self.status.timers.time("flush"):
                        self._flush_paths(taken)
        except MongoUnavailable as exc:
            self.pending.requeue(taken, 0.0, full)
            self._mongo_down(str(exc))
            return False
        except BaseException:
            self.pending.done(taken, full)
            raise
        self.pending.done(taken, full)
        self._backoff = 0.0
        self.status.set_mongo(True)
        self._mongo_back()
        return True

    def _keep_lease(self) -> None:
        """Renew the writer lease (raises LeaseHeld). Back after another writer held
        it: MongoDB changed behind our state, so a full reconcile reloads it."""
        self.lease.ensure()
        if self.status.lease_problem is not None:
            self.status.lease_problem = None
            self.pending.mark_full()

    def _mongo_back(self) -> None:
        """MongoDB answers again. What it holds may not be what it acknowledged (a
        restart that lost its last writes, a restore from an older dump): a full
        reconcile compares every file with it again, so nothing is left unmirrored."""
        if self._was_down:
            self._was_down = False
            log.info("MongoDB is back: a full reconcile re-checks every file against it")
            self.pending.mark_full()

    def _mongo_down(self, message: str) -> None:
        self._was_down = True
        self.status.set_mongo(False, message)
        self.status.error("mongo_unavailable")
        self._backoff = min(BACKOFF_MAX, max(BACKOFF_MIN, self._backoff * 2))
        self._backoff *= random.uniform(0.8, 1.0)
        now = time.monotonic()
        if now - self._last_error_log > 30:  # rate-limited: one line per 30 s
            self._last_error_log = now
            log.warning("MongoDB unavailable, retrying with backoff (pending %d): %s",
                        len(self.pending), message)

    def _flush_paths(self, taken: dict[str, float]) -> None:
        now = utcnow()
        ops: list[Op] = []
        problems: list[Problem] = []
        good: list[str] = []
        t0 = time.perf_counter()
        for rel in taken:
            file_ops, file_problems = self.rec.process_file(rel, self.state, "watch", now=now)
            ops.extend(file_ops)
            if file_problems:
                problems.extend(file_problems)
            else:
                good.append(rel)
        self.status.timers.observe("plan", time.perf_counter() - t0)
        vanished, self.rec.vanished = self.rec.vanished, []
        for rel in taken:
            if rel not in vanished:
                self._vanished.pop(rel, None)  # there again (or never gone)
        ops.extend(self._settle_removals(vanished, taken))
        removes = any(op.action in ("delete", "mark_deleted") for op in ops)
        if (removes or time.monotonic() - self._last_identity >= PING_EVERY) and self._replaced():
            # MongoDB is not what the state says (a dump restored into the running
            # server): a removal now would tombstone the dump's older value, and the
            # newer files would stay unmirrored. Compare every file again instead.
            self.reconcile()
            return
        self._write(ops, problems, good, "watch", taken)

    def _replaced(self) -> bool:
        """True when a mirrored collection was dropped or re-created since the state
        was loaded from MongoDB (until the next full reconcile loads it again)."""
        ident = self.store.identity()
        self._last_identity = time.monotonic()
        old = dict(self._identity or ())
        new = dict(ident)
        gone = sorted(name for name, uuid in old.items() if new.get(name) != uuid)
        if gone:
            log.warning("MongoDB's %s %s re-created or dropped since the sidecar loaded them (a restore from "
                        "a dump?): a full reconcile compares every file with it again", ", ".join(gone),
                        "was" if len(gone) == 1 else "were")
            self.status.error("collections_replaced")
            return True
        self._identity = ident  # collections created since (the first writes) join it
        return False

    # --- file removals: settle, directory checks, the mass-removal guard ---------------------
    def _root_now(self) -> tuple[int, int] | None:
        try:
            st = os.lstat(self.config.data_dir)
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    def _settle_removals(self, vanished: list[str], taken: dict[str, float]) -> list[Op]:
        now = time.monotonic()
        ready: list[str] = []
        for rel in vanished:
            first = self._vanished.setdefault(rel, now)
            self._gone_seen.setdefault(rel, first)
            wait = REMOVAL_SETTLE_S - (now - first)
            if wait > 0:
                self.pending.mark(rel, wait, taken.get(rel))
            else:
                ready.append(rel)
        if not ready:
            return []
        root_same = self._root_id is not None and self._root_now() == self._root_id
        keep: list[str] = []
        for rel in ready:
            self._vanished.pop(rel, None)
            seen_dir = self.rec.lineage.dir_ino(rel)
            if not root_same or seen_dir is None or parent_ino(self.config.data_dir, rel) != seen_dir:
                self._hold_file(rel, DIR_REPLACED)
            else:
                keep.append(rel)
        for rel, seen in list(self._gone_seen.items()):
            if now - seen > REMOVAL_WINDOW_S:
                del self._gone_seen[rel]
        if len(set(self._gone_seen) | set(keep)) > self.config.sidecar_max_removals:
            for rel in keep:
                self._hold_file(rel, MASS_REMOVAL)
            return []
        ops: list[Op] = []
        for rel in keep:
            ops.extend(self.rec.removal_ops(rel, self.state))
            self.rec.resolved.append((rel, None))
        return ops

    def _hold_file(self, rel: str, reason: str) -> None:
        self.rec.lineage.forget(rel)
        prev = self.state.files.get(rel)
        self.rec.held.append(Divergence(rel, prev.kind if prev else "other", reason, missing_file=True))

    def root_replaced(self) -> None:
        """The data dir was replaced: whatever it holds now is a new lineage; look at all of it."""
        with self.lock:
            self.rec.lineage.forget_all()
            self._vanished.clear()
            self._root_id = None
        self.pending.mark_full()

    def reconcile(self) -> None:
        """Full pass over the data dir (start-up, overflow, on request). Every removal
        it notices is held (nobody saw it happen), or in mongo mode resolved toward MongoDB."""
        with self.status.timers.time("reconcile"):
            self._reconcile()

    def _reconcile(self) -> None:
        with self.pending.writing():  # the writer waits on it as on a write
            self._identity = self.store.identity()  # before the load: a restore after it shows
            self._last_identity = time.monotonic()
            fresh = build_state(self.store.iter_state())
        self.state.hubs, self.state.episodes = fresh.hubs, fresh.episodes
        self.state.snapshots, self.state.files = fresh.snapshots, fresh.files
        self.state.max_version = fresh.max_version
        if self._root_id is None:
            self._root_id = self._root_now()
        self.rec.drain()
        self._touched = set()
        try:
            # hashes=False: only problems and present paths are used here, and every
            # file's hash held for the whole scan was the start-up's memory peak.
            ops, view = self.rec.scan(self.state, "reconcile", hashes=False,
                                      flush=lambda chunk: self._write(chunk, [], [], "reconcile", {}))
            problem_paths = {p.path for p in view.problems}
            # A file caught mid-write gets the same re-check as on the event path.
            transient = {p.path: time.monotonic() for p in view.problems if p.reason in TRANSIENT}
            self._write(ops, view.problems, [r for r in view.present if r not in problem_paths], "reconcile",
                        transient)
            touched = self._touched
        finally:
            self._touched = None
        for div in self.book.items():
            if div.path not in touched:
                self.book.resolve(div.path)  # neither held nor seen: it no longer applies
        self._update_divergence_gauges()
        self.status.last_reconcile_at = utcnow().isoformat()

    def _write(self, ops: list[Op], problems: list[Problem], good: list[str], source: str,
               taken: dict[str, float]) -> None:
        started = time.monotonic()
        result = None
        if ops:
            with self.pending.writing(), self.status.timers.time("write"):
                result = self.store.apply(ops)
                self.state.apply(result)
        now = utcnow()
        events: list[dict] = []
        if result is not None:
            self.status.wrote(result.counts(), time.monotonic() - started)
            self.status.stale_refused += len(result.stale)
            for op, why in result.failed:
                problems.append(Problem(op.rel, "mongo_rejected", f"{op.rel}: {op.entity}: {why}", op.coll))
            events = build_events(result.applied, source, now, summarize_inserts=source == "reconcile",
                                  full_payload=self.config.sidecar_events_payload == "full")
        for rel in good:
            self.status.clear_problem(rel)
            self._transient.pop(rel, None)
        for p in problems:
            events.extend(self._problem(p, source, now, taken))
        events.extend(self._divergences(source, now))
        # A watch flush with more work queued behind it defers small batches.
        self._send_events(events, defer=source == "watch" and bool(self.pending.queued()))

    def _flush_events(self) -> None:
        """Send the deferred events now. Raises MongoUnavailable (they stay kept)."""
        if self._unsent:
            with self.lock:
                self._send_events([])

    def _send_events(self, events: list[dict], defer: bool = False) -> None:
        if events:
            self.status.saw_events(events)
        if events and not self._unsent:
            self._unsent_since = time.monotonic()
        pending, self._unsent = self._unsent + events, []
        if not pending:
            return
        if defer and len(pending) < EVENTS_BATCH and time.monotonic() - self._unsent_since < EVENTS_MAX_AGE:
            self._unsent = pending
            return
        try:
            with self.pending.writing(), self.status.timers.time("events"):
                self.store.record_events(pending)
        except MongoUnavailable:
            self._unsent = pending[-MAX_UNSENT_EVENTS:]
            if len(pending) > MAX_UNSENT_EVENTS:
                self.status.error("events_dropped")
            raise

    def _problem(self, p: Problem, source: str, now, taken: dict[str, float]) -> list[dict]:
        if p.reason in TRANSIENT and p.path in taken:
            tries = self._transient.get(p.path, 0) + 1
            self._transient[p.path] = tries
            if tries <= TRANSIENT_RETRIES:
                self.pending.mark(p.path, TRANSIENT_DELAY, taken[p.path])
                return []
        if (p.reason in TRANSIENT and p.kind == "hub" and self.config.memory_store_backend == "mongo"
                and self._heal_broken_hub(p.path)):
            self._transient.pop(p.path, None)
            self.status.restored_files += 1
            return [note_event("restored_from_mongo", p.path, source, now, reason=p.reason)]
        if self.status.problem(p.path, p.reason, p.message):
            log.warning("bad input: %s (%s)", p.message, p.reason)
            return [note_event("bad_input", p.path, source, now, reason=p.reason)]
        return []

    # --- divergences: held, or in mongo mode resolved toward MongoDB ---------------------------
    def _divergences(self, source: str, now) -> list[dict]:
        held, resolved, _ = self.rec.drain()
        touched = self._touched
        for rel, keys in resolved:
            self.book.resolve(rel, keys)
            if touched is not None:
                touched.add(rel)
        events: list[dict] = []
        mongo = self.config.memory_store_backend == "mongo"
        for div in held:
            if touched is not None:
                touched.add(div.path)
            if mongo and self._toward_mongo(div):
                self.book.resolve(div.path)
                self.status.restored_files += 1
                events.append(note_event("restored_from_mongo", div.path, source, now, reason=div.reason,
                                         count=div.count))
                continue
            if self.book.hold(div):
                self.status.divergence(div.reason)
                log.warning("divergence held: %s (%s, %d %s); MongoDB keeps the data, "
                            "accept with `memory-sidecar divergences accept %s`", div.path, div.reason,
                            div.count, "file" if div.missing_file else "entries", div.path)
                events.append(note_event("divergence_held", div.path, source, now, reason=div.reason,
                                         count=div.count, keys=sorted(div.keys)[:50]))
        self._update_divergence_gauges()
        return events

    def _update_divergence_gauges(self) -> None:
        items = self.book.items()
        self.status.set_divergences(sum(1 for d in items if d.missing_file),
                                    sum(d.count for d in items if not d.missing_file))

    def _toward_mongo(self, div: Divergence) -> bool:
        """mongo mode: give the file MongoDB's data back. False: held (reported) for now."""
        rel = div.path
        try:
            if not div.missing_file:
                prev = self.state.files.get(rel)
                outcome = self.healer.heal_hub(rel, prev.fmt if prev else None)
                if outcome == "retry":
                    self.pending.mark(rel, TRANSIENT_DELAY)  # mid-write or raced: look again
                    return False
                if outcome != "missing":
                    return True
            written = restore_file(self.store, self.config.data_dir, rel)
            if written:
                log.info("restored %s from MongoDB (%s)", rel, div.reason)
            return True
        except (UnsafePath, SourceError, LookupError, OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("could not restore %s from MongoDB: %s", rel, type(exc).__name__)
            return False

    def _heal_broken_hub(self, rel: str) -> bool:
        """mongo mode: a hub that stayed empty or unparsable through the re-checks (a
        torn write_text) gets MongoDB's entries, by the same compare-and-swap as a heal
        (a writer finishing into the old inode meanwhile is merged back)."""
        prev = self.state.files.get(rel)
        try:
            outcome = self.healer.heal_hub(rel, prev.fmt if prev else None, broken_ok=True)
        except (SourceError, OSError, ValueError, TypeError) as exc:
            log.warning("could not heal %s from MongoDB: %s", rel, type(exc).__name__)
            return False
        if outcome == "healed":
            log.info("%s stayed unreadable; MongoDB's entries written back (mongo mode)", rel)
            return True
        return False

    def _observe_own(self, read: FileRead) -> None:
        self.rec.own_writes[read.rel] = read.sha256
        self.rec.lineage.observe(read, keep_keys=True)

    def _check_heals(self) -> None:
        if not len(self.healer):
            return
        with self.lock:
            try:
                again = self.healer.check_old_inodes(
                    lambda rel: self.state.files[rel].fmt if rel in self.state.files else None)
            except MongoUnavailable as exc:
                self._mongo_down(str(exc))
                return
        for rel in again:
            self.pending.mark(rel, 0.0)

    def accept(self, paths: list[str] | None = None, source: str = "accept") -> dict:
        """Apply held divergences (all, or those of ``paths``): the operator said so.
        Each is checked against the disk first; one that no longer holds is dropped."""
        with self.lock:
            chosen = [d for d in self.book.items() if paths is None or d.path in set(paths)]
            ops: list[Op] = []
            accepted, gone = [], []
            for div in chosen:
                div_ops = self.rec.accept_ops(div, self.state)
                if div_ops is None:
                    gone.append(div.path)
                    continue
                ops.extend(div_ops)
                accepted.append(div)
            self._write(ops, [], [], source, {})
            now = utcnow()
            events = []
            for div in accepted:
                self.book.resolve(div.path)
                events.append(note_event("divergence_accepted", div.path, source, now, reason=div.reason,
                                         count=div.count, keys=sorted(div.keys)[:50]))
            for rel in gone:
                self.book.resolve(rel)
            self._update_divergence_gauges()
            self._send_events(events)
        return {"accepted": [d.path for d in accepted], "no_longer_held": gone,
                "documents": sum(1 for op in ops if op.action != "track")}

    # --- the shim's path ----------------------------------------------------------------
    def queue_if_busy(self, rel: str) -> bool:
        """For an async shim frame, which nobody waits for: queue ``rel`` for the
        writer if it is busy (something pending or a flush running) and say so.

        Only an idle writer's frame is then mirrored at once (``mirror_bytes``, the
        lowest latency); otherwise the path joins ``Pending``, so a burst of frames
        is coalesced like the watcher's events (which usually queued this very
        write already) rather than costing one MongoDB write and one event insert
        per frame on the cores the API runs on. The writer re-reads the file, so
        it mirrors this version or a newer one. Never blocks: the shim server
        calls it on its event loop."""
        if len(self.pending) or not self.lock.acquire(blocking=False):
            self.pending.mark(rel, 0.0)
            return True
        self.lock.release()
        return False

    def mirror_bytes(self, rel: str, data: bytes, mtime_ns: int = 0) -> str:
        """Mirror bytes handed over by the in-process shim. Returns written|unchanged|stale.

        The shim's bytes are checked against the file as it is now: if the file
        has moved on (a later write), the frame is stale and the path is queued
        for the watcher's path instead. The version is the read's (sidecar/clock.py),
        never the frame's mtime: mtimes go backwards.
        """
        sha = sha256_hex(data)
        with self.lock:
            prev = self.state.files.get(rel)
            if prev is not None and not prev.deleted and prev.sha256 == sha:
                return "unchanged"
            try:
                current = read_file(self.config.data_dir, rel)
            except SourceError:
                self.pending.mark(rel, 0.0)
                return "stale"
            if current.sha256 != sha:
                self.pending.mark(rel, 0.0)
                return "stale"
            ops, problems = self.rec.process_file(rel, self.state, "shim", read=current)
            self._write(ops, problems, [] if problems else [rel], "shim", {})
            if problems:
                raise ValueError(problems[0].reason)
        return "written" if ops else "unchanged"
