"""Run the daemon in-process for tests: its own event loop thread, port 0, bounded waits."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass

from conftest import wait_for
from sidecar.daemon import Daemon


@dataclass
class Response:
    status: int
    body: bytes

    def json(self):
        return json.loads(self.body)


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

    def start(self, wait_ready: bool = True, timeout: float = 30.0) -> "RunningDaemon":
        self._thread.start()
        wait_for(lambda: self.daemon.http_port, timeout, what="the status server")
        if wait_ready:
            wait_for(lambda: self.daemon.status.ready, timeout, what="the daemon to be ready")
        return self

    def stop(self, timeout: float = 60.0) -> None:
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
        req = urllib.request.Request(self.url + path, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return Response(resp.status, resp.read())
        except urllib.error.HTTPError as exc:
            return Response(exc.code, exc.read())

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
