"""``memory-sidecar run``: the continuous daemon.

Shaped like uvicorn's ``Server``: ``serve()`` is ``startup()`` → ``main_loop()``
(until the one stop signal, ``Daemon.stopping``) → ``shutdown()``.

Start-up order matters and is the whole no-missed-write argument:
  1. HTTP up at once (``/healthz`` 200, ``/readyz`` 503 until ready), then the
     shim socket; the rest (``start_mirroring``) runs in a worker thread so
     both keep answering meanwhile;
  2. wait for MongoDB (backoff, never exit), ensure indexes; take the lease;
  3. start the watcher *before* anything touches the files, so a write the API
     makes during the restore or the reconcile is queued rather than missed;
  4. mongo mode: restore every file MongoDB holds that is missing on disk (and
     whose deletion was never accepted), whatever the API created meanwhile is
     kept; a restore killed halfway simply resumes here at the next start;
  5. the full reconcile (removals it notices are held, or in mongo mode healed
     toward MongoDB), then the writer drains what queued meanwhile. Mongo mode:
     ready after it. File mode: ready at once, the watcher and the shim socket
     serving; the reconcile is the writer thread's first batch, its progress in
     the status (sidecar/fullpass.py: the shim's files are served between its
     files, the version guard keeps any older write from landing over a newer).
On SIGTERM: stop taking shim frames, stop the watcher, final flush with a
bounded deadline (whatever is left is reconciled at the next start: the files
on disk are the journal).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import os
import signal
import threading
import time
from typing import Any, Callable, TypeVar

from . import parityscan, server
from .classify import is_ignored
from .config import Config
from .state import MirrorState
from .divergence import DivergenceBook
from .mirror import Mirror
from .lease import Lease, LeaseHeld
from .pending import Pending
from .diskwrite import clean_temp_files
from .restore import restore
from .retry import BACKOFF_MAX, BACKOFF_MIN, Backoff, Stopped, StopSignal
from .rootwatch import RootMonitor
from .shimserver import ShimEvent, ShimServer
from .source import DataDirMissing, check_root
from .status import Status
from .store import MongoUnavailable, Store
from .watcher import Watcher

log = logging.getLogger("sidecar")

T = TypeVar("T")

SHUTDOWN_SECONDS = 10.0

# /readyz reasons while the data dir cannot be watched (the root monitor's events).
ROOT_REASONS = {"missing": "data dir missing", "symlink": "data dir is a symlink; not followed",
                "not_dir": "data dir is not a directory"}


def _load_malloc_trim():
    """glibc's ``malloc_trim``, or None where there is none (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_MALLOC_TRIM = _load_malloc_trim()


def release_memory() -> bool:
    """Hand freed memory back to the OS after a large transient peak (the start-up
    reconcile, a /parity scan). glibc keeps freed heap pages mapped unless told;
    measured on 50k files: several MiB of RSS. No-op (False) without glibc."""
    gc.collect()
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


class Daemon:
    def __init__(self, config: Config, store: Store | None = None) -> None:
        self.config = config
        # The one stop signal: a signal handler, a test or the caller's event sets
        # it; every wait (MongoDB, the lease, the data dir) and the main loop end on it.
        self.stopping = StopSignal()
        self.pending = Pending()
        self.divergences = DivergenceBook()
        # Built here (it opens nothing until ``start``), so the status has all its
        # sources from the start; ``self.shim`` is set once the socket listens.
        self._shim_server = ShimServer(config.socket_path, self.on_shim)
        self.status = Status(pending=self.pending, divergences=self.divergences, shim=self._shim_server,
                             write_stall_s=config.sidecar_write_stall_s)
        self.store = store or Store(config, timers=self.status.timers)
        self.state = MirrorState()
        self.mirror = Mirror(config, self.store, self.status, self.pending, self.state, self.divergences)
        self.mirror.stopping = self.stopping  # a full reconcile ends on it
        # The reconcile's reads, parses and source view are freed: give the pages back.
        self.mirror.on_reconciled = release_memory
        self.mirror.on_failure = self._writer_failed
        self.lease = Lease(self.store, "daemon", config.sidecar_lease_ttl_s)
        self.watcher = Watcher(config.data_dir, config.ignore_globs, self.pending, self.status,
                               lineage_break=self.mirror.rec.lineage.broken)
        self.rootwatch = RootMonitor(self.watcher, config.sidecar_root_check_ms / 1000, self._on_root_change)
        self.watcher.on_root_suspect = self.rootwatch.poke
        self.shim: ShimServer | None = None
        self.http_port: int | None = None
        self._started = threading.Event()  # mirroring started: shim frames are taken
        self._runner = None  # the HTTP server (aiohttp AppRunner)
        self._mirroring: asyncio.Future | None = None  # ``start_mirroring`` in its worker thread

    # --- the server's view ---------------------------------------------------------
    def parity_report(self) -> dict[str, Any]:
        # The full scan runs in a short-lived child process (sidecar/parityscan.py):
        # its transient objects would otherwise leave this long-running process
        # ~10 MiB larger at 50k files, and it would hold the writer's GIL.
        pending = self.pending.paths()
        try:
            report = parityscan.in_child(self.config, pending)
        except parityscan.ChildFailed as exc:
            log.warning("%s; computing parity in the daemon instead", exc)
            try:
                report = parityscan.compute(self.config, pending, self.store)
            finally:
                release_memory()
        report["pending"] = {"paths": len(self.pending), "lag_seconds": round(self.pending.oldest_age(), 3)}
        report["divergences"] = self.divergences.summary()
        return report

    def request_reconcile(self) -> None:
        self.pending.mark_full()

    def accept_divergences(self, paths: list[str] | None) -> dict[str, Any]:
        return self.mirror.accept(paths)

    # --- lifecycle: serve = startup → main_loop → shutdown ------------------------------
    async def serve(self, stop: asyncio.Event | None = None) -> None:
        """Run until the stop signal. ``stop``: an event of the caller's that sets it
        too (the in-process test daemon and the benchmarks set theirs)."""
        follow = asyncio.ensure_future(self._follow(stop)) if stop is not None else None
        try:
            await self.startup()
            try:
                await self.main_loop()
            finally:
                await self.shutdown()
        finally:
            if follow is not None:
                follow.cancel()

    async def _follow(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self.stopping.set()

    async def startup(self) -> None:
        """HTTP and the shim socket up at once; mirroring starts in a worker thread."""
        self._runner = await server.start(self)
        self.http_port = server.bound_port(self._runner)
        log.info("status server on %s:%s", self.config.sidecar_http_host, self.http_port)
        try:
            await self._shim_server.start()
            self.shim = self._shim_server
        except OSError as exc:
            log.warning("shim socket unavailable (%s); the watcher alone mirrors writes", exc.strerror)
        self._mirroring = asyncio.get_running_loop().run_in_executor(None, self._start_mirroring_logged)

    async def main_loop(self) -> None:
        await self.stopping.until_set()

    async def shutdown(self) -> None:
        """No more shim frames, start-up left, watcher stopped, a last flush with a
        bounded deadline, HTTP down, the lease handed back."""
        self.stopping.set()
        if self.shim is not None:
            await self.shim.stop()
        await asyncio.wait_for(asyncio.shield(self._mirroring), timeout=SHUTDOWN_SECONDS + 30)
        self.status.set_ready(False)
        self.status.phase = "stopping"
        self.rootwatch.stop()
        self.watcher.stop()
        deadline = time.monotonic() + SHUTDOWN_SECONDS
        await asyncio.get_running_loop().run_in_executor(None, self.mirror.stop, deadline)
        await self._runner.cleanup()
        try:
            self.lease.release()  # the next writer need not wait for it to expire
        except MongoUnavailable:
            pass
        self.store.close()

    # --- start mirroring (blocking; in a worker thread) --------------------------------
    def start_mirroring(self) -> None:
        """MongoDB, the lease, the data dir, the watcher, the restore and the full
        reconcile (mongo mode), the writer thread: then ready. In file mode the full
        reconcile is the writer's first batch, after ready. Each wait retries with
        backoff until the stop signal (``Stopped``)."""
        self._connect()
        self._take_lease()
        root = self.config.data_dir
        self._wait_root_not_symlink(root)
        root.mkdir(parents=True, exist_ok=True)
        self.watcher.start()
        self.rootwatch.start()
        if self.config.memory_store_backend == "mongo":
            # MongoDB is the truth: the API is let in once the files hold it.
            self._restore_missing(root)
            self.status.phase = "reconciling"
            self._retry(self._reconcile_locked)
        else:
            self.pending.mark_full()
        self.mirror.start()
        self.status.phase = "running"
        self.status.set_ready(True)
        self._started.set()
        log.info("ready: watching %s", root)

    def _start_mirroring_logged(self) -> None:
        """``start_mirroring`` in the executor: an unexpected failure is logged with its
        traceback and shown (``/readyz`` 503 and ``/memory/status``), never lost."""
        try:
            self.start_mirroring()
        except Stopped:
            pass
        except Exception as exc:  # noqa: BLE001 - anything: a bug or a document we cannot use
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        log.error("start-up failed", exc_info=exc)
        self.status.startup_error = self.config.scrub(f"{type(exc).__name__}: {exc}")[:300]
        self.status.phase = "failed"
        self.status.set_ready(False)

    def _writer_failed(self, exc: BaseException) -> None:
        """A flush ended on an unexpected error (the writer thread ends with it). Before the
        first full reconcile was done (in file mode it runs there) that is the start-up
        failing, shown as such; later the daemon is not ready and /healthz says 503, so
        the liveness probe restarts it (nothing is lost: the files are on disk, and the
        restart's reconcile mirrors what this process did not)."""
        if self.status.last_reconcile_at is None:
            self._failed(exc)
            return
        log.error("the writer thread failed; nothing is mirrored until a restart", exc_info=exc)
        self.status.writer_failed = self.config.scrub(f"{type(exc).__name__}: {exc}")[:300]
        self.status.set_ready(False)

    def _connect(self) -> None:
        self.status.phase = "connecting"
        self._retry(self._ping_and_index, waiting=True)

    def _ping_and_index(self) -> None:
        self.store.ping()
        self.store.ensure_indexes()
        self.status.set_mongo(True)

    def _retry(self, fn: Callable[[], T], waiting: bool = False) -> T:
        """``fn()``'s value, called again with backoff while MongoDB is unavailable
        (``waiting``: each failure logged); ``Stopped`` when the stop signal comes first."""
        backoff = Backoff(BACKOFF_MIN, BACKOFF_MAX)
        while not self.stopping.is_set():
            try:
                return fn()
            except MongoUnavailable as exc:
                self.status.set_mongo(False, str(exc))
                if waiting:
                    log.warning("waiting for MongoDB: %s", exc)
                backoff.wait(self.stopping)
        raise Stopped

    def _take_lease(self) -> None:
        """Wait for the single-writer lease (a ``sync`` or another daemon may hold it)."""
        told = False
        backoff = Backoff(0.5, BACKOFF_MAX)
        while not self.stopping.is_set():
            try:
                self.lease.acquire()
                self.status.lease_problem = None
                self.mirror.lease = self.lease
                return
            except LeaseHeld as exc:
                self.status.lease_problem = str(exc)
                self.status.phase = "waiting_for_lease"
                if not told:
                    log.warning("waiting: %s", exc)
                    told = True
            except MongoUnavailable as exc:
                self.status.set_mongo(False, str(exc))
            backoff.wait(self.stopping)
        raise Stopped

    def _restore_missing(self, root) -> None:
        """Mongo mode: write back every file MongoDB holds that is missing on disk."""
        self.status.phase = "restoring"
        self.status.restore_progress = {"done": 0}
        clean_temp_files(root)  # what a killed restore or heal left behind

        def progress(result) -> None:
            self.status.restore_progress = {"done": len(result.written)}

        result = self._retry(lambda: restore(self.store, root, missing_only=True, ignore=self._ignored,
                                             progress=progress))
        self.status.restored_files += len(result.written)
        for item in result.skipped:
            self.status.problem(item["path"], "restore_skipped", item["reason"])
        if result.written:
            log.info("restored %d missing files from MongoDB", len(result.written))

    def _reconcile_locked(self) -> None:
        while True:
            try:
                with self.mirror.lock:
                    return self.mirror.reconcile()
            except LeaseHeld as exc:  # taken over meanwhile (it renews the lease as it goes)
                self.status.lease_problem = str(exc)
                self._take_lease()
                self.status.phase = "reconciling"

    def _ignored(self, rel: str) -> bool:
        return is_ignored(rel, self.config.ignore_globs)

    # --- the watched root ---------------------------------------------------------------
    def _wait_root_not_symlink(self, root) -> None:
        """A data dir that is a symlink (or not a directory) is never followed, nor
        written through (mkdir, restore): stay not ready, with the reason, until it
        is a real directory or missing (then created). ``Stopped`` when stopping."""
        interval = self.config.sidecar_root_check_ms / 1000
        every = Backoff(interval, interval, factor=1.0)  # a fixed poll, like the root monitor's
        while not self.stopping.is_set():
            try:
                check_root(root, must_exist=False)
            except DataDirMissing as exc:
                if self.status.root_problem is None:
                    log.error("%s; not ready until it is a directory", exc.message)
                self.status.set_root_problem(ROOT_REASONS["symlink" if exc.reason == "data_dir_symlink"
                                                          else "not_dir"])
                every.wait(self.stopping)
                continue
            self.status.set_root_problem(None)
            return
        raise Stopped

    def _on_root_change(self, event: str) -> None:
        """The root monitor saw the data dir change (runs in its thread)."""
        self.status.events.labels(kind="root", event=event).inc()
        if event in ("missing", "symlink"):
            self.status.error(f"data_dir_{event}")
            # "symlink" also stands for anything else that is not a directory.
            kind = "not_dir" if event == "symlink" and not os.path.islink(self.config.data_dir) else event
            self.status.set_root_problem(ROOT_REASONS[kind])
            return
        # "replaced" / "restored": watched again, as a new lineage.
        self.status.set_root_problem(None)
        self.status.clear_problem(".")  # a reconcile that found no data dir
        self.mirror.root_replaced()

    # --- shim frames ---------------------------------------------------------------------
    async def on_shim(self, event: ShimEvent) -> str:
        if self._ignored(event.path):
            # The shim skips these itself; a frame for one comes from a shim
            # configured otherwise (or an older one). Never mirrored, never
            # queued; a sync writer is answered ok ("ignored") and goes on.
            self.status.ignored("shim")
            self.status.shim_events.labels(status="ignored").inc()
            return "ignored"
        if not self._started.is_set():
            # Not ready yet: the watcher (started before reconcile) has the file.
            self.status.shim_events.labels(status="deferred").inc()
            self.pending.mark(event.path, 0.0)
            raise RuntimeError("not ready")
        if event.ack and (not self.status.mongo_connected or self.status.lease_problem
                          or self.status.write_stalled() or self.mirror.incarnation.settling):
            # The daemon knows MongoDB cannot acknowledge now (the last write or ping failed, a
            # write is stalled, another writer holds the lease, a restore is settling): say so at
            # once instead of holding the API until its timeout. The file is queued
            # and mirrored when MongoDB is back; the shim's breaker stops waiting.
            self.pending.mark(event.path, 0.0)
            self.status.shim_events.labels(status="not_durable").inc()
            return "not_durable"
        try:
            if event.op == "delete" or not event.ack:
                # An async frame (nobody waits for it) only queues its path, urgent:
                # an idle writer takes it at once, a busy one coalesces a burst of
                # frames (and the watcher's events for the same writes) into one
                # flush. The writer reads the file: this version or a newer one.
                self.pending.mark(event.path, 0.0, urgent=event.op != "delete")
                outcome = "written" if event.op == "delete" else "queued"
            else:
                # A sync frame waits for the flush that read the file after it was
                # written (sidecar/pending.py): one thread writes to MongoDB.
                waiter = self.pending.wait(event.path, event.sha256)
                outcome = await asyncio.wrap_future(waiter.future)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.status.shim_events.labels(status="error").inc()
            # The watcher still sees the file: make sure it is looked at.
            self.pending.mark(event.path, 0.0)
            raise
        self.status.shim_events.labels(status=outcome).inc()
        return outcome


def run_daemon(config: Config) -> int:
    async def main() -> None:
        daemon = Daemon(config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, daemon.stopping.set)
        await daemon.serve()

    asyncio.run(main())
    return 0
