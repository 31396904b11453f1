"""The daemon in-process: its own event-loop thread, port 0, bounded waits.

This is the one module of the package that imports the daemon class.

``python -m testkit.daemon --no-watcher`` runs the daemon configured from the environment
(as ``python -m sidecar run``) and, once ready, stops its watcher and root monitor through
their public ``stop()``: only shim frames (and requested reconciles) reach MongoDB. The shim
benchmark measures the shim path alone with it; SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import threading

from sidecar.daemon import Daemon

from .http import Response, http
from .measure import wait_for

__all__ = ["Daemon", "Response", "RunningDaemon"]


class RunningDaemon:
    def __init__(self, config) -> None:
        self.config = config
        self.daemon = Daemon(config)
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="sidecar-test-daemon", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        async def main():
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await self.daemon.serve(self._stop)
        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced by stop()
            self._error = exc

    def start(self, wait_ready: bool = True, timeout: float = 30.0,
              wait_reconciled: bool | None = None) -> "RunningDaemon":
        """``wait_ready``: until ``/readyz`` would say ready. ``wait_reconciled`` (by default
        as ``wait_ready``): also until the start-up reconcile is done — in file mode it
        runs behind readiness, and most tests look at MongoDB as it leaves it."""
        self._thread.start()
        wait_for(lambda: self.daemon.http_port, timeout, what="the status server")
        if wait_ready:
            wait_for(lambda: self.daemon.status.ready, timeout, what="the daemon to be ready")
        if wait_ready if wait_reconciled is None else wait_reconciled:
            self.wait_reconciled(timeout)
        return self

    def wait_reconciled(self, timeout: float = 30.0) -> None:
        """Until a full reconcile (the start-up one, the first time) has completed."""
        wait_for(lambda: self.daemon.status.last_reconcile_at is not None, timeout,
                 what="the start-up reconcile")

    def stop(self, timeout: float = 60.0) -> None:
        """Stop it (again: nothing more; the fixture stops what a test already stopped)."""
        if self._thread.ident is not None and not self._thread.is_alive() and self._loop is not None \
                and self._loop.is_closed():
            return
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "daemon did not stop"
        if self._error:
            raise self._error

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.daemon.http_port}"

    def get(self, path: str, method: str = "GET", headers: dict | None = None) -> Response:
        resp = http(self.url + path, method, headers)
        if resp is None:
            raise AssertionError(f"the daemon did not answer {method} {path}")
        return resp

    def parity(self) -> dict:
        return self.get("/parity").json()

    def wait_parity(self, timeout: float = 10.0) -> dict:
        holder = {}

        def ok():
            report = self.parity()
            holder["last"] = report
            return report if report.get("parity", {}).get("all_match") else None
        try:
            return wait_for(ok, timeout, 0.05, "parity")
        except AssertionError:
            raise AssertionError(f"no parity: {json.dumps(holder.get('last'), default=str)[:3000]}") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="The daemon in-process, configured from the environment.")
    ap.add_argument("--no-watcher", action="store_true",
                    help="once ready, stop the watcher and the root monitor: the shim path alone")
    ap.add_argument("--ready-timeout", type=float, default=600.0)
    args = ap.parse_args(argv)
    from sidecar.config import Config
    from sidecar.logs import setup_logging

    config = Config()
    setup_logging(config.sidecar_log_format, config.sidecar_log_level)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    d = RunningDaemon(config).start(timeout=args.ready_timeout)
    try:
        if args.no_watcher:
            d.daemon.rootwatch.stop()
            d.daemon.watcher.stop()
        while not stop.wait(0.5):
            pass
    finally:
        d.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
