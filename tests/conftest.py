"""Shared fixtures: a real MongoDB-wire server for the whole session.

By default SecantusDB (a test-only dependency) is started on a free loopback
port with a temporary storage dir. With ``MONGODB_TEST_URL`` set, the same
tests run against that server (e.g. a real mongod) instead; tests that must
stop and restart the server are skipped there.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pymongo
import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(ROOT / "bench"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """Poll with a deadline; return the predicate's truthy value or fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class TestServer:
    """A MongoDB-wire server the tests can stop and start (SecantusDB)."""

    __test__ = False

    def __init__(self, storage: Path | None, url: str | None = None) -> None:
        self.storage = storage
        self.external = url is not None
        self.port = free_port() if url is None else None
        self.url = url or f"mongodb://127.0.0.1:{self.port}/?directConnection=true"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> None:
        if self.external:
            return
        from common import launch_secantus  # bench/common.py, shared with the benchmarks

        self.proc = launch_secantus(self.port, self.storage, self.storage.parent / "secantus.log", timeout)

    def stop(self, kill: bool = False) -> None:
        if self.external or self.proc is None:
            return
        from common import stop_process  # bench/common.py, shared with the benchmarks

        stop_process(self.proc, kill=kill)
        self.proc = None


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory):
    url = os.environ.get("MONGODB_TEST_URL")
    if url:
        yield TestServer(None, url)
        return
    base = tmp_path_factory.mktemp("secantus")
    server = TestServer(base / "data")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def restartable_server(mongo_server):
    if mongo_server.external:
        pytest.skip("needs a server the tests can stop (not MONGODB_TEST_URL)")
    yield mongo_server
    if mongo_server.proc is None:
        mongo_server.start()


@pytest.fixture
def mongo_url(mongo_server) -> str:
    return mongo_server.url


def _scratch_db(mongo_url):
    """A database name of its own, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    client = pymongo.MongoClient(mongo_url, serverSelectionTimeoutMS=5000)
    try:
        client.drop_database(name)
    except pymongo.errors.PyMongoError:
        pass
    finally:
        client.close()


@pytest.fixture
def db_name(mongo_url):
    yield from _scratch_db(mongo_url)


@pytest.fixture
def other_db(mongo_url):
    """A second scratch database (e.g. a restore target)."""
    yield from _scratch_db(mongo_url)


@pytest.fixture
def data_dir(tmp_path) -> Path:
    d = tmp_path / "data" / "system"
    d.mkdir(parents=True)
    return d


@pytest.fixture
def legacy_dir(data_dir) -> Path:
    """A data dir holding the real Mentorix sample files."""
    shutil.copytree(FIXTURES / "legacy", data_dir, dirs_exist_ok=True)
    for p in data_dir.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return data_dir


@pytest.fixture
def make_config(mongo_url, db_name, data_dir):
    from sidecar.config import Config

    def make(**overrides):
        values = dict(runtime_data_dir=data_dir, mongodb_url=mongo_url, mongodb_db_name=db_name,
                      sidecar_server_selection_timeout_ms=5000)
        values.update(overrides)
        return Config(**values)
    return make


@pytest.fixture
def config(make_config):
    return make_config()


@pytest.fixture
def store(config):
    from sidecar.store import Store

    s = Store(config)
    yield s
    s.close()


@pytest.fixture
def db(store):
    """The raw pymongo database the sidecar writes to."""
    return store.db


@pytest.fixture(autouse=True)
def no_thread_leaks():
    """Every test must stop the threads it started (watchdog-style guard)."""
    before = {t for t in threading.enumerate()}
    yield
    def settled():
        # Our own threads are all named "sidecar-*"; any non-daemon thread counts too.
        extra = [t for t in threading.enumerate() if t not in before and t.is_alive()
                 and (t.name.startswith("sidecar") or not t.daemon)]
        return not extra
    try:
        wait_for(settled, 5.0, 0.05, "threads started by the test to stop")
    except AssertionError:
        names = [t.name for t in threading.enumerate() if t not in before]
        raise AssertionError(f"threads leaked by the test: {names}") from None
