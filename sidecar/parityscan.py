"""``GET /parity``'s full scan, run in a short-lived child process.

A parity check reads, parses and hashes every file and streams every document.
In the daemon's own process that left it ~10 MiB larger for good at 50k files
(pymalloc keeps a 256 KiB arena while any object in it lives, and the few
hundred long-lived objects other threads allocate during the scan are enough
to pin dozens of them), and the scan held the GIL the writer needs. In a child
both go away with it.

Protocol: the parent writes a pickled ``(Config, pending paths)`` to stdin (a
pipe between two processes of the same program, never a file or the command
line, so the MongoDB URL's credentials stay out of ``ps``); the child writes one
JSON object to stdout: ``{"report": {...}}`` or ``{"error": kind, "message": ...}``
(messages are scrubbed of credentials like every other).
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from typing import Any

from .config import Config
from .store import MongoUnavailable

TIMEOUT = 900.0  # a scan of 50k files takes ~10 s here; this only stops a hung child


def compute(config: Config, pending: set[str] | None, store: Any = None) -> dict[str, Any]:
    """The report, computed in this process (with ``store`` if given: the daemon's
    fallback reuses its own client instead of opening another)."""
    from . import parity
    from .localindex import LocalIndex
    from .state import MirrorState
    from .reconcile import Reconciler
    from .store import Store

    own = store is None
    store = Store(config) if own else store
    # The view's hashes (one per file) out of the heap, as the daemon's state (sidecar/localindex.py).
    index = LocalIndex(config.sidecar_state_dir or None)
    try:
        _, view = Reconciler(config, index).scan(MirrorState(), "parity", view_only=True)
        report = parity.compute(store, view, pending=pending)
        report["bad_input"] = [p.as_dict() for p in view.problems[:200]]
        return report
    finally:
        index.close()
        if own:
            store.close()


class ChildFailed(RuntimeError):
    pass


def in_child(config: Config, pending: set[str] | None, timeout: float = TIMEOUT) -> dict[str, Any]:
    """The report, computed by ``python -m sidecar.parityscan``. Raises
    MongoUnavailable like ``compute``, ChildFailed when the child cannot run or
    dies (the caller may then compute in process), never with file data."""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "sidecar.parityscan"],
            input=pickle.dumps((config, pending)), capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ChildFailed(f"parity child could not run: {type(exc).__name__}") from None
    try:
        out = json.loads(proc.stdout)
    except ValueError:
        raise ChildFailed(f"parity child exited with {proc.returncode} and no report") from None
    if "report" in out:
        return out["report"]
    if out.get("error") == "mongo_unavailable":
        raise MongoUnavailable(str(out.get("message", "")))
    raise ChildFailed(f"parity child failed: {out.get('error')}")


def main() -> int:
    config, pending = pickle.load(sys.stdin.buffer)
    try:
        report = compute(config, pending)
    except MongoUnavailable as exc:
        print(json.dumps({"error": "mongo_unavailable", "message": config.scrub(str(exc))}))
        return 3
    except Exception as exc:  # the class name only: a message may quote data
        print(json.dumps({"error": type(exc).__name__}))
        return 1
    print(json.dumps({"report": report}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
