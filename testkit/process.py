"""``python -m sidecar run`` as a real subprocess, configured through the environment only.

For the tests that kill -9 or SIGTERM the daemon, and for every benchmark (the daemon in
its own process, as in a Pod). Always ``close()`` it (tests: in a ``finally``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import ROOT
from .http import Response, http, parse_metrics
from .measure import free_port, stop_process, wait_for

# The daemon's own settings are never inherited from the caller's environment.
OWN_ENV_PREFIXES = ("SIDECAR_", "MONGODB_", "MEMORY_", "RUNTIME_DATA_DIR")
# What the tests want on top (a dead server is noticed within a second; INFO logs to read).
TEST_DEFAULTS = {"SIDECAR_SERVER_SELECTION_TIMEOUT_MS": "1000", "SIDECAR_LOG_LEVEL": "INFO"}
RUN = [sys.executable, "-m", "sidecar", "run"]


def clean_env() -> dict[str, str]:
    """This process's environment without any of the daemon's settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith(OWN_ENV_PREFIXES)}


class DaemonProcess:
    """The daemon in a subprocess: HTTP on a free port (a new one per ``start``), its output
    in ``workdir/<log_name>``. ``cmd`` replaces ``python -m sidecar run`` (e.g. the shim-only
    daemon, ``python -m testkit.daemon --no-watcher``); ``defaults`` are the settings given
    unless ``env`` names them (``{}`` for the product defaults, as the benchmarks run it)."""

    def __init__(self, workdir: Path, data_dir: Path, mongo_url: str, db_name: str, *,
                 socket: Path | None = None, log_name: str = "daemon.log", cmd: list[str] | None = None,
                 defaults: dict[str, str] = TEST_DEFAULTS, **env: str) -> None:
        self.env = {
            **clean_env(),
            "RUNTIME_DATA_DIR": str(data_dir),
            "MONGODB_URL": mongo_url,
            "MONGODB_DB_NAME": db_name,
            "SIDECAR_SOCKET": str(socket or workdir / "sock" / "sidecar.sock"),
            **defaults,
            **env,
        }
        self.data_dir = data_dir
        self.cmd = cmd or RUN
        self.log_path = workdir / log_name
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.started_at: float | None = None
        self.phases: dict[str, float] = {}  # /readyz reason -> seconds after start it was first seen
        self._log = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "DaemonProcess":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.port = free_port()
        if self._log is None:
            self._log = open(self.log_path, "ab")
        self.started_at = time.monotonic()
        self.phases = {}
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env={**self.env, "SIDECAR_HTTP_PORT": str(self.port)},
                                     stdout=self._log, stderr=subprocess.STDOUT)
        return self

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def get(self, path: str, method: str = "GET", timeout: float = 30) -> Response | None:
        return http(f"{self.base}{path}", method, timeout=timeout)

    def metrics(self) -> dict[str, float]:
        r = self.get("/metrics", timeout=5)
        return parse_metrics(r.body.decode()) if r is not None and r.status == 200 else {}

    def _alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise AssertionError(f"daemon exited ({code}):\n{self.log_tail()}")

    def wait_ready(self, timeout: float = 30.0, on_poll=None, reconciled: bool = False) -> float:
        """Until ``/readyz`` answers 200; seconds since ``start``. Each start-up phase (the
        503's reason) is noted in ``phases`` when first seen; ``on_poll`` runs every poll.
        ``reconciled``: then also until the start-up reconcile is done (in file mode it runs
        behind readiness; noted in ``phases`` as "reconciled")."""
        def ready():
            self._alive()
            r = self.get("/readyz", timeout=5)
            now = time.monotonic() - self.started_at
            if r is not None and r.status != 200:
                self.phases.setdefault("http_up", now)
                try:
                    self.phases.setdefault(json.loads(r.body).get("reason", "").replace("starting: ", ""), now)
                except ValueError:
                    pass
            if on_poll is not None:
                on_poll()
            return r is not None and r.status == 200
        took = self._wait(ready, timeout, "the daemon process to be ready", "ready")
        if reconciled:
            self.wait_reconciled(timeout)
        return took

    def wait_reconciled(self, timeout: float = 30.0) -> float:
        """Until ``/memory/status`` shows a completed full reconcile; seconds since ``start``."""
        def done():
            self._alive()
            r = self.get("/memory/status", timeout=5)
            return r is not None and r.status == 200 and r.json()["sidecar"]["last_reconcile_at"] is not None
        return self._wait(done, timeout, "the start-up reconcile", "reconciled")

    def _wait(self, predicate, timeout: float, what: str, phase: str) -> float:
        """``wait_for`` with the daemon's log in the failure; notes ``phase`` in ``phases``."""
        try:
            wait_for(predicate, timeout, 0.05, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log_tail()}") from None
        took = time.monotonic() - self.started_at
        self.phases.setdefault(phase, took)
        return took

    def wait_parity(self, timeout: float = 20.0) -> dict:
        last: dict = {}

        def ok():
            self._alive()
            r = self.get("/parity")
            if r is None or r.status != 200:
                return None
            last["report"] = r.json()
            return last["report"] if last["report"]["parity"]["all_match"] else None
        try:
            return wait_for(ok, timeout, 0.05, "parity")
        except AssertionError:
            raise AssertionError(f"no parity: {json.dumps(last.get('report'), default=str)[:3000]}\n"
                                 f"{self.log_tail()}") from None

    def kill(self) -> None:
        """kill -9."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def terminate(self, timeout: float) -> int:
        """SIGTERM; the exit code (raises TimeoutExpired past ``timeout``)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 40.0) -> None:
        """SIGTERM, then SIGKILL past ``timeout``: the graceful stop a benchmark ends with."""
        stop_process(self.proc, timeout=timeout)
        self.close()

    def close(self) -> None:
        """Always called in ``finally``: no process outlives its test."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not ignorable
                pass
        if self._log is not None:
            self._log.close()
            self._log = None

