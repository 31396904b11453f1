"""Daemon fixtures (pytest plugin) and the helpers the daemon tests share.

``daemon_config`` and ``running`` are registered through ``pytest_plugins`` in
``tests/conftest.py``: a test names them as arguments, it imports nothing. The daemon as a
real subprocess (kill -9 / SIGTERM tests) is ``testkit.process.DaemonProcess``.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from .corpus import LegacyWriter
from .daemon import RunningDaemon
from .measure import wait_for

__all__ = ["HUBS", "TOKEN", "SignalWriter", "assert_nothing_lost", "daemon_config", "reconcile_now", "running"]

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

    def start(wait_ready: bool = True, wait_reconciled: bool | None = None, **kw) -> RunningDaemon:
        d = RunningDaemon(daemon_config(**kw))
        started.append(d)
        return d.start(wait_ready=wait_ready, wait_reconciled=wait_reconciled)
    yield start
    for d in started:
        d.stop()


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
