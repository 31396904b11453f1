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
import threading
import time
from collections.abc import Iterable

from . import frames, quick
from .config import Config
from .state import MirrorState, Op, build_state
from .divergence import DivergenceBook
from .events import note_event
from .fullpass import FullPass, live_files, timed_load
from .heal import Healer
from .incarnation import Incarnation
from .lease import LeaseHeld
from .localindex import LocalIndex
from .model import utcnow
from .pending import Pending, Waiter
from .removals import Removals
from .reconcile import Problem, Reconciler
from .restore import Refill
from .retry import BACKOFF_MAX, BACKOFF_MIN, Backoff, Stopped
from .source import FileRead, SourceError, read_file
from .status import Status
from .store import MongoUnavailable, Store
from .writer import Writer

log = logging.getLogger("sidecar.mirror")

# A reader can catch a legacy write between truncate and write: these reasons usually heal
# with the writer's next close event, so they are re-checked before being reported.
TRANSIENT = {"empty", "invalid_json", "invalid_utf8", "unstable"}
TRANSIENT_RETRIES = 3
TRANSIENT_DELAY = 0.3
PING_EVERY = 2.0
# GridFS blobs no manifest or tombstone names any more are collected this often
# (the write path never deletes a blob: sidecar/store.py).
GC_BLOBS_EVERY = 600.0

class Mirror:
    def __init__(self, config: Config, store: Store, status: Status, pending: Pending,
                 state: MirrorState, book: DivergenceBook | None = None) -> None:
        self.config = config
        self.store = store
        self.status = status
        self.pending = pending
        self.state = state
        self.book = book if book is not None else DivergenceBook()
        # The per-file state out of the heap (sidecar/localindex.py): the mirror state's
        # files and episodes, the lineage, a scan's quick-check records and paths seen.
        self.index = LocalIndex(config.sidecar_state_dir or None)
        self.rec = Reconciler(config, self.index, wants_resolved=lambda rel: self.book.get(rel) is not None)
        self.healer = Healer(config.data_dir, store, self._observe_own)
        self.writer = Writer(config, store, state, status, pending)
        self.refill = Refill(store, config.data_dir, self.healer)
        self.removals = Removals(config, self.rec.lineage, pending)
        self._touched: set[str] | None = None  # paths a running full reconcile looked at
        self.lease = None  # the writer lease (sidecar/lease.py), set by the daemon
        # Set by the daemon: its stop signal (a full reconcile ends on it), what to call after
        # each full reconcile (give memory back), and with an unexpected error of a flush.
        self.stopping = self.on_reconciled = self.on_failure = None
        self._was_down = False  # MongoDB was unreachable: reload its state when it is back
        self.lock = threading.RLock()  # one writer at a time: the loop, the shim, shutdown
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # After a failed flush: 0.1 s doubling to 5 s, jittered (so retries do not
        # fall in step); a held lease waits at least 1 s, unjittered.
        self._backoff = Backoff(BACKOFF_MIN, BACKOFF_MAX, jitter=0.2)
        self._transient: dict[str, int] = {}
        self._last_error_log = 0.0
        self._last_ping = 0.0
        # A dump restored into the running server shows there (what was seen of the files then ends).
        self.incarnation = Incarnation(store, status, forget=lambda: self.root_replaced(full=False), timed=pending.writing)
        self._last_gc = time.monotonic()
        self._last_verify, self._verify = time.monotonic(), False  # SIDECAR_VERIFY_INTERVAL
        self.last_scan: dict | None = None  # the last full reconcile's quick check (sidecar/quick.py)

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
            # The queued paths, not a full reconcile (the next start runs one anyway).
            taken = self.pending.take_now(self.config.sidecar_batch_size, ignore_delay=True)
            if not taken or not self.flush(None, taken):
                break
        try:
            self._flush_events()
        except MongoUnavailable:
            log.warning("shutdown: %d events not recorded (MongoDB unavailable)", len(self.writer.outbox))
        if left := len(self.pending):
            log.warning("shutdown: %d changed paths not mirrored (the next start reconciles them)", left)
        self.pending.answer_all(RuntimeError("stopping"))  # sync frames not covered: not durable
        self.healer.close()

    def _run(self) -> None:
        flush_s = self.config.sidecar_flush_interval_ms / 1000
        while not self._stop.is_set():
            full, taken = self.pending.take(timeout=PING_EVERY / 2, linger=flush_s,
                                            limit=self.config.sidecar_batch_size)
            if self._stop.is_set():
                self.pending.requeue(taken, 0.0, full)
                break
            now = time.monotonic()
            for first in taken.values():
                self.status.timers.observe("queue_wait", now - first)
            if full is None and not taken:
                self._idle()
                continue
            if not self.flush(full, taken):
                self._stop.wait(self._backoff.delay)
                continue
            self._check_heals()
            if len(self.writer.outbox) and not self.pending.queued():
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
                if self.incarnation.replaced():
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
                every = self.config.sidecar_verify_interval  # 0: off
                if every and now - self._last_verify >= every and self.status.lease_problem is None:
                    self._last_verify, self._verify = now, True  # the next full reconcile reads every file
                    self.pending.mark_full()
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
        MongoDB acknowledged it or it is requeued. The sync shim frames it covers
        (``Pending.claim``) are answered here, whatever happens."""
        claims = self.pending.claim(taken)
        try:
            if self.lease is not None:
                self._keep_lease()
            with self.lock:
                if full is not None:
                    # Its sync frames queue again: served between its files (fullpass.py).
                    self.pending.rewait(claims)
                    checksum, self._verify = self._verify, False
                    self.reconcile(checksum)
                    said = None
                else:
                    with self.status.timers.time("flush"):
                        said = self._flush_paths(taken, claims)
        except MongoUnavailable as exc:
            self.pending.requeue(taken, 0.0, full)
            frames.answer_each(claims, error=exc)
            self._mongo_down(str(exc))
            return False
        except (LeaseHeld, Stopped) as exc:  # another writer holds the lease; a full reconcile stopped
            self.pending.requeue(taken, 0.0, full)
            frames.answer_each(claims, "not_durable")
            if isinstance(exc, LeaseHeld):
                if self.status.lease_problem is None:
                    log.warning("not writing: %s", exc)
                self.status.lease_problem = str(exc)
                self._backoff.next(at_least=1.0, jitter=False)
            else:
                self._backoff.next()
            return False
        except BaseException as exc:
            self.pending.done(taken, full)
            frames.answer_each(claims, error=exc)
            if self.on_failure is None or not isinstance(exc, Exception):
                raise
            self.on_failure(exc)  # logged with its traceback and shown: the writer stops here
            self._stop.set()
            return False
        self.pending.done(taken, full)
        if said is not None:
            frames.deliver(claims, said, self.pending)
        elif full is None:
            self.pending.rewait(claims)  # it turned into a full reconcile: the next flush answers them
        self._backoff.reset()
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
        self._backoff.next()
        now = time.monotonic()
        if now - self._last_error_log > 30:  # rate-limited: one line per 30 s
            self._last_error_log = now
            log.warning("MongoDB unavailable, retrying with backoff (pending %d): %s",
                        len(self.pending), message)

    def _flush_paths(self, taken: dict[str, float], claims: dict[str, list[Waiter]] | None = None
                     ) -> dict[int, tuple[str | None, BaseException | None]] | None:
        """Mirror the files of one batch; the answers for the sync frames in
        ``claims`` (None: it turned into a full reconcile)."""
        claims = claims or {}
        now = utcnow()
        ops: list[Op] = []
        problems: list[Problem] = []
        good: list[str] = []
        seen: dict[str, str | None] = {}  # a waited-for path -> the sha256 this flush read
        t0 = time.perf_counter()
        for rel in taken:
            read = None
            if claims.get(rel):
                # Read here (once) to tell the frame's bytes from a newer write's.
                try:
                    read = read_file(self.config.data_dir, rel)
                except SourceError:
                    read = None  # gone or unreadable now: process_file says what it is
                seen[rel] = read.sha256 if read is not None else None
            file_ops, file_problems = self.rec.process_file(rel, self.state, "shim" if rel in claims else "watch",
                                                            now=now, read=read)
            ops.extend(file_ops)
            if file_problems:
                problems.extend(file_problems)
            else:
                good.append(rel)
        self.status.timers.observe("plan", time.perf_counter() - t0)
        vanished, self.rec.vanished = self.rec.vanished, []
        for rel in taken:
            if rel not in vanished:
                self.removals.present(rel)  # there again (or never gone)
        ops.extend(self._settle_removals(vanished, taken))
        removes = any(op.action in ("delete", "mark_deleted") for op in ops)
        if (removes or self.incarnation.age() >= PING_EVERY) and self.incarnation.replaced():
            # MongoDB is not what the state says (a dump restored into the running server): a removal
            # now would tombstone the dump's older value, and the newer files would stay unmirrored.
            # Compare every file again instead (after the one running, when this batch is served in it).
            if self._touched is not None:
                self.pending.mark_full()
            else:
                self.reconcile()
            return None
        self._write(ops, problems, good, "watch", taken)
        return frames.answers(claims, seen, ops, problems, TRANSIENT)

    def _settle_removals(self, vanished: list[str], taken: dict[str, float]) -> list[Op]:
        """The removal ops of the files gone long enough (``sidecar/removals.py``)."""
        keep, held = self.removals.settle(vanished, taken, self.state)
        self.rec.held.extend(held)
        ops: list[Op] = []
        for rel in keep:
            ops.extend(self.rec.removal_ops(rel, self.state))
            self.rec.resolved.append((rel, None))
        return ops

    def root_replaced(self, full: bool = True) -> None:
        """The data dir was replaced (or, ``full=False``, MongoDB's collections: its reconcile follows
        anyway): what it holds now is a new lineage, a removal is held until the file is read again."""
        with self.lock:
            self.rec.lineage.forget_all()
            self.removals.root_replaced()
        if full:
            self.pending.mark_full()

    def reconcile(self, checksum: bool = False) -> None:
        """Full pass over the data dir (start-up, overflow, on request). Every removal
        it notices is held (nobody saw it happen), or in mongo mode resolved toward MongoDB.
        Files the quick check finds unchanged are not read, unless ``checksum`` (the verify)."""
        with self.status.timers.time("reconcile"):
            self._reconcile(checksum)

    def _reconcile(self, checksum: bool = False) -> None:
        run = FullPass(self.pending, self.status.reconcile,
                       write=lambda ops: self._write(ops, [], [], "reconcile", {}), flush_paths=self._flush_paths,
                       stopping=lambda: self._stop.is_set() or bool(self.stopping and self.stopping.is_set()),
                       keep_lease=self.lease.ensure if self.lease else lambda: None,
                       limit=self.config.sidecar_batch_size)
        run.check_stop()
        self.status.reconcile.begin()
        try:
            self.incarnation.settle(run.pause)  # after a dump restored into the running server: once it is done
            self.incarnation.load()  # before the state: a restore after it shows (timed as a write)
            book = quick.Book(self.rec.cfg, read_all=checksum, entries=self.index.map("quick"))  # this reconcile's
            self.state.replace(build_state(book.collect(timed_load(self.store.iter_state(), self.pending.writing,
                                                                   run.check_stop)), self.index))
            if self.incarnation.moved_since_load():  # loaded while a restore still ran: again once done
                self.pending.mark_full()
            for item in self.store.foreign_skipped:  # written by others, in a shape it cannot use
                self.status.problem(f"mongodb:{item['collection']}:{item['_id']}", "foreign_document", item["reason"])
            self.removals.note_root()
            self.rec.drain()
            self._touched = set()
            self.status.reconcile.scanning(live_files(self.state))
            # hashes=False: only problems and present paths are used here, and every
            # file's hash held for the whole scan was the start-up's memory peak.
            # chunk=1: ``run`` gets each file's ops (it writes them in chunks; sidecar/fullpass.py).
            try:
                ops, view = self.rec.scan(self.state, "reconcile", hashes=False, progress=run.checked,
                                          flush=run.add, chunk=1, book=book)
            finally:
                book.release()
            self.status.last_scan = self.last_scan = book.report(view.files_read, view.files_quick_checked, view.bytes_read)
            book.log_drift(self.status.error)
            del book
            self.rec.held = run.settle_served(self.rec.held, self.config.data_dir)
            problem_paths = {p.path for p in view.problems}
            # A file caught mid-write gets the same re-check as on the event path.
            transient = {p.path: time.monotonic() for p in view.problems if p.reason in TRANSIENT}
            try:
                self._write(run.ops + ops, view.problems, (r for r in view.present if r not in problem_paths),
                            "reconcile", transient)
            finally:
                view.release()
            touched = self._touched
        finally:
            self._touched = None
            self.status.reconcile.end()
        for div in self.book.items():
            if div.path not in touched:
                self.book.resolve(div.path)  # neither held nor seen: it no longer applies
        self._update_divergence_gauges()
        self.status.last_reconcile_at = utcnow().isoformat()
        if self.on_reconciled is not None:
            self.on_reconciled()

    def _write(self, ops: list[Op], problems: list[Problem], good: Iterable[str], source: str,
               taken: dict[str, float]) -> None:
        now = utcnow()
        _, events = self.writer.write(ops, source, problems, now, summarize_inserts=source == "reconcile")
        for rel in good:
            self.status.clear_problem(rel)
            self._transient.pop(rel, None)
        for p in problems:
            events.extend(self._problem(p, source, now, taken))
        events.extend(self._divergences(source, now))
        # A watch flush with more work queued behind it defers small batches.
        self.writer.record(events, defer=source == "watch" and bool(self.pending.queued()))

    def _flush_events(self) -> None:
        """Send the deferred events now. Raises MongoUnavailable (they stay kept)."""
        if len(self.writer.outbox):
            with self.lock:
                self.writer.outbox.flush()

    def _problem(self, p: Problem, source: str, now, taken: dict[str, float]) -> list[dict]:
        if p.reason in TRANSIENT and p.path in taken:
            tries = self._transient.get(p.path, 0) + 1
            self._transient[p.path] = tries
            if tries <= TRANSIENT_RETRIES:
                self.pending.mark(p.path, TRANSIENT_DELAY, taken[p.path])
                return []
        if (p.reason in TRANSIENT and p.kind == "hub" and self.config.memory_store_backend == "mongo"
                and self.refill.broken_hub(p.path, self._fmt(p.path))):
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
            if touched is not None and self.book.get(rel) is not None:
                touched.add(rel)  # only what the book holds is ever looked up
            self.book.resolve(rel, keys)
        events: list[dict] = []
        mongo = self.config.memory_store_backend == "mongo"
        for div in held:
            if touched is not None:
                touched.add(div.path)
            outcome = self.refill.divergence(div, self._fmt(div.path)) if mongo else "held"
            if outcome == "retry":
                self.pending.mark(div.path, TRANSIENT_DELAY)  # mid-write or raced: look again
            if outcome == "restored":
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
        self.status.set_divergences(*self.book.gauges())

    def _fmt(self, rel: str) -> dict | None:
        prev = self.state.files.get(rel)
        return prev.fmt if prev else None

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
            self.writer.record(events)
        return {"accepted": [d.path for d in accepted], "no_longer_held": gone,
                "documents": sum(1 for op in ops if op.action != "track")}
