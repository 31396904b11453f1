"""Mentorix memory sidecar shim: report the API's data-dir writes in-process.

Standard library only, and never imports ``sidecar``: this package is loaded
into the legacy API's interpreter.

    import shim
    shim.install()            # idempotent; config from the environment
    ...
    shim.stats()              # counters, e.g. {"sent": 12, "dropped_unavailable": 0, ...}
    shim.uninstall()          # the original open/os/pathlib functions are back

Without code changes, put ``shim/activate`` on ``PYTHONPATH`` and set
``SIDECAR_SHIM=async`` (or ``sync``); see ``shim/activate/sitecustomize.py``.
The wire format is in ``shim/PROTOCOL.md``.
"""

from __future__ import annotations

import atexit
import builtins
import logging
import os
import threading
from typing import Any

from ._config import ShimConfig, load_config
from ._events import Event, Stats
from ._intercept import MARK, Shim
from ._transport import DeliveryError, SocketTransport

__all__ = [
    "DeliveryError",
    "Event",
    "ShimConfig",
    "activate_from_env",
    "config",
    "flush",
    "install",
    "is_installed",
    "stats",
    "uninstall",
]

log = logging.getLogger("mentorix_shim")

_lock = threading.RLock()
_shim: Shim | None = None
_stats = Stats()


def install(
    *,
    mode: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    socket_path: str | os.PathLike[str] | None = None,
    on_failure: str | None = None,
    timeout_ms: int | None = None,
    queue_size: int | None = None,
    ignore: Any = None,
    transport: Any = None,
    breaker_ms: int | None = None,
) -> bool:
    """Start intercepting writes under the data dir; True if the shim is active.

    Every argument left as None comes from the environment (RUNTIME_DATA_DIR,
    SIDECAR_SOCKET, SIDECAR_SHIM, SIDECAR_SHIM_ON_FAILURE,
    SIDECAR_SHIM_TIMEOUT_MS, SIDECAR_SHIM_QUEUE, SIDECAR_IGNORE,
    SIDECAR_SHIM_BREAKER_MS: how long sync writes stop waiting after one failed
    confirmation, see shim/_breaker.py). ``ignore``:
    globs added to the built-in ones (in place of SIDECAR_IGNORE); a path they
    match is never reported. ``mode`` defaults to
    "async"; with "off" nothing is installed and False is returned.
    ``transport`` replaces the socket (tests): any object with
    ``deliver(event, sync)``. A second call while installed changes nothing
    (uninstall first to reconfigure).
    """
    global _shim, _stats
    with _lock:
        if _shim is not None:
            return True
        if getattr(builtins.open, MARK, False):
            # Another copy of this package (loaded under another name)
            # already patched this interpreter: patching again would report
            # every write twice.
            return True
        cfg = load_config(
            mode=mode,
            data_dir=data_dir,
            socket_path=socket_path,
            on_failure=on_failure,
            timeout_ms=timeout_ms,
            queue_size=queue_size,
            ignore=ignore,
            breaker_ms=breaker_ms,
        )
        if cfg.mode == "off":
            return False
        stats = Stats()
        if transport is None:
            transport = SocketTransport(cfg.socket_path, cfg.timeout_s, cfg.queue_size, stats)
        shim = Shim(cfg, transport, stats)
        shim.patch()
        _stats = stats
        _shim = shim
        log.debug("shim installed: mode=%s data_dir=%s socket=%s", cfg.mode, cfg.data_dir, cfg.socket_path)
        return True


def uninstall(timeout: float = 2.0) -> bool:
    """Restore the original functions and stop the sender; True if it was installed.

    Events still queued get up to ``timeout`` seconds to go out.
    """
    global _shim
    with _lock:
        shim = _shim
        if shim is None:
            return False
        _shim = None
        shim.unpatch()
        close = getattr(shim.transport, "close", None)
        if close is not None:
            try:
                close(timeout)
            except Exception:
                _stats.inc("errors")
        return True


def is_installed() -> bool:
    return _shim is not None


def config() -> ShimConfig | None:
    """The effective settings of the installed shim (None if not installed)."""
    shim = _shim
    return None if shim is None else shim.config


def breaker_state() -> str | None:
    """The sync-mode circuit breaker (shim/_breaker.py): closed | open | probe_due |
    half_open; None when no shim is installed."""
    shim = _shim
    return shim.breaker.view() if shim is not None else None


def stats() -> dict[str, int]:
    """Counters of the current (or last) installation.

    writes, deletes: events built; sent: async frames on the wire;
    dropped_queue_full, dropped_unavailable: async events given up;
    sync_ok, sync_failed: sync confirmations; skipped_symlinks; ignored:
    writes/deletes not reported because the path matches the ignore rules
    (the built-in globs, e.g. ``*.tmp`` and editor files, plus SIDECAR_IGNORE;
    an atomic writer's temp file counts twice: written, then moved away); errors
    (swallowed exceptions of the shim itself); connect_attempts,
    connect_failures, send_failures.
    """
    return _stats.snapshot()


def flush(timeout: float = 1.0) -> bool:
    """Wait until the async queue is empty (sent or dropped); True if it is."""
    shim = _shim
    if shim is None:
        return True
    flush_ = getattr(shim.transport, "flush", None)
    return True if flush_ is None else bool(flush_(timeout))


def activate_from_env() -> bool:
    """Install if SIDECAR_SHIM is async or sync; used by the startup hooks.

    Never raises: a broken shim must not stop the API from starting.
    """
    mode = os.environ.get("SIDECAR_SHIM", "").strip().lower()
    if mode not in ("async", "sync"):
        if mode not in ("", "off"):
            log.warning("SIDECAR_SHIM=%r is not async|sync|off; the shim stays off", mode)
        return False
    try:
        return install(mode=mode)
    except Exception as exc:
        log.warning("mentorix shim not installed: %s: %s", type(exc).__name__, exc)
        return False


def _after_fork_in_child() -> None:
    shim = _shim
    _stats.after_fork()
    if shim is None:
        return
    shim.stats.after_fork()
    # A lock another thread held at fork() stays held in the child for ever: the
    # breaker's too (a forked API worker's first sync write would hang on it).
    shim.breaker.after_fork()
    hook = getattr(shim.transport, "after_fork", None)
    if hook is not None:
        try:
            hook()
        except Exception:
            shim.stats.inc("errors")


def _at_exit() -> None:
    # The API writes snapshot.json at shutdown, the write most likely to be
    # still queued. Give it a short, bounded chance to go out; the watcher
    # catches it anyway if the sidecar is slow or away.
    try:
        flush(1.0)
    except Exception:
        pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_at_exit)
