"""Fixtures and helpers shared by the daemon resilience / watcher tests.

Import the fixtures by name into a test module (``from daemon_fixtures import
daemon_config, running``) so pytest sees them there. ``DaemonProcess`` runs
``python -m sidecar run`` as a real subprocess (for kill -9 / SIGTERM tests);
always ``close()`` it in a ``finally``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT, free_port, wait_for
from daemon_helpers import Response, RunningDaemon

TOKEN = "test-token-123"
HUBS = ("learner_preferences", "operating_context", "soft_identity")


@pytest.fixture
def daemon_config(make_config, tmp_path):
    def make(**kw):
        kw.setdefault("sidecar_http_port", 0)
        kw.setdefault("sidecar_socket", tmp_path / "sock" / "sidecar.sock")
        kw.setdefault("sidecar_token", TOKEN)
        return make_config(**kw)
    return make


@pytest.fixture
def running(daemon_config):
    """Start in-process daemons; all are stopped at teardown."""
    started: list[RunningDaemon] = []

    def start(wait_ready: bool = True, **kw) -> RunningDaemon:
        d = RunningDaemon(daemon_config(**kw))
        started.append(d)
        return d.start(wait_ready=wait_ready)
    yield start
    for d in started:
        d.stop()


# --- plain HTTP ---------------------------------------------------------------------------
def http(url: str, method: str = "GET", headers: dict | None = None, timeout: float = 30) -> Response | None:
    """One request; None when nothing answers (process not up yet, or gone)."""
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Response(resp.status, resp.read())
    except urllib.error.HTTPError as exc:
        return Response(exc.code, exc.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def reconcile_now(d: RunningDaemon, timeout: float = 10.0) -> None:
    """Ask for a full reconcile through the API and wait until it has run."""
    before = d.daemon.status.last_reconcile_at
    assert d.get("/reconcile", "POST", {"Authorization": f"Bearer {TOKEN}"}).status == 202
    wait_for(lambda: d.daemon.status.last_reconcile_at != before, timeout, what="the requested reconcile")


# --- a Mentorix-pattern writer in a thread -------------------------------------------------
class SignalWriter(threading.Thread):
    """LegacyWriter.learner_signal for learner-0..learner-(n-1), one new key per call,
    plus an episode every ``episode_every`` calls. ``pace`` is the writer's own
    behaviour (its write rate), not test synchronisation."""

    def __init__(self, root: Path, n: int, pace: float = 0.0, episode_every: int = 0, seed: int = 7,
                 prefix: str = "learner") -> None:
        super().__init__(name="test-signal-writer", daemon=True)
        from corpus import LegacyWriter

        self.w = LegacyWriter(root, seed=seed)
        self.w.start()
        self.n = n
        self.pace = pace
        self.episode_every = episode_every
        self.prefix = prefix
        self.count = 0
        self.learners: list[str] = []
        self.episodes: list[str] = []
        self.stop_event = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for i in range(self.n):
                if self.stop_event.is_set():
                    break
                learner = f"{self.prefix}-{i}"
                self.w.learner_signal(learner, i)
                self.learners.append(learner)
                if self.episode_every and i % self.episode_every == 0:
                    self.episodes.append(self.w.save_episode(f"{self.prefix}-run-{i}"))
                self.count = i + 1
                if self.pace:
                    self.stop_event.wait(self.pace)
        except BaseException as exc:  # surfaced by finish()
            self.error = exc

    def finish(self, timeout: float = 60.0, stop: bool = True) -> None:
        """Join the writer; ``stop=False`` lets it write all ``n`` signals first."""
        if stop:
            self.stop_event.set()
        self.join(timeout)
        assert not self.is_alive(), "writer did not stop"
        if self.error:
            raise self.error


def assert_nothing_lost(db, root: Path, learners: list[str], episodes: list[str]) -> None:
    """Every learner key written is in memory_hubs (all three hubs); episodes = files."""
    for hub in HUBS:
        keys = {d["item_key"] for d in db.memory_hubs.find({"hub_type": hub}, {"item_key": 1})}
        missing = [k for k in learners if k not in keys]
        assert not missing, f"{hub}: {len(missing)} learner keys lost, e.g. {missing[:5]}"
        on_disk = json.loads((root / "structured_hubs" / f"{hub}.json").read_text())
        assert keys == set(on_disk), f"{hub}: MongoDB keys differ from the file's"
    files = sorted((root / "episodes").glob("skeleton_*.json")) if (root / "episodes").exists() else []
    assert len(files) == len(episodes)
    assert db.episodic_memory.count_documents({}) == len(files)
    run_ids = {d["run_id"] for d in db.episodic_memory.find({}, {"run_id": 1})}
    assert run_ids == set(episodes)
    assert db.memory_events.count_documents({"event_type": "hub_deleted"}) == 0


# --- the daemon as a real process ----------------------------------------------------------
_OWN_ENV_PREFIXES = ("SIDECAR_", "MONGODB_", "MEMORY_", "RUNTIME_DATA_DIR")


class DaemonProcess:
    """``python -m sidecar run`` in a subprocess, configured through the environment."""

    def __init__(self, tmp_path: Path, data_dir: Path, mongo_url: str, db_name: str, **env: str) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_ENV_PREFIXES)}
        self.env = {
            **base,
            "RUNTIME_DATA_DIR": str(data_dir),
            "MONGODB_URL": mongo_url,
            "MONGODB_DB_NAME": db_name,
            "SIDECAR_SOCKET": str(tmp_path / "sock" / "sidecar.sock"),
            "SIDECAR_SERVER_SELECTION_TIMEOUT_MS": "1000",
            "SIDECAR_LOG_LEVEL": "INFO",
            **env,
        }
        self.log_path = tmp_path / "daemon.log"
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self._log = None

    def start(self) -> "DaemonProcess":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.port = free_port()
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "sidecar", "run"], cwd=ROOT,
                                     env={**self.env, "SIDECAR_HTTP_PORT": str(self.port)},
                                     stdout=self._log, stderr=subprocess.STDOUT)
        return self

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def get(self, path: str, method: str = "GET", timeout: float = 30) -> Response | None:
        return http(f"http://127.0.0.1:{self.port}{path}", method, timeout=timeout)

    def _alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise AssertionError(f"daemon exited ({code}):\n{self.log_tail()}")

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready():
            self._alive()
            r = self.get("/readyz", timeout=5)
            return r is not None and r.status == 200
        try:
            wait_for(ready, timeout, 0.05, "the daemon process to be ready")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log_tail()}") from None

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
