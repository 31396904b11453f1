"""The session fixtures: a real MongoDB-wire server for the whole session (pytest plugin).

By default SecantusDB (a test-only dependency) is started on a free loopback
port with a temporary storage dir. With ``MONGODB_TEST_URL`` set, the same
tests run against that server (e.g. a real mongod) instead; tests that must
stop and restart the server are skipped there.
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from pathlib import Path

import pymongo
import pytest

from . import ROOT
from .measure import wait_for
from .mongo import TestServer

FIXTURES = ROOT / "tests" / "fixtures"


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
def exact_clock(monkeypatch):
    """The quick check's racy margin off (sidecar/quick.py): a filesystem whose timestamps
    are exact, so a file written a moment before a scan may be trusted by the next one."""
    from sidecar import quick

    monkeypatch.setattr(quick, "RACY_NS", 0)


@pytest.fixture
def change_streams(store):
    """Skip unless the server has change streams (a replica set: SecantusDB advertises one;
    a standalone ``mongod`` behind MONGODB_TEST_URL has none, and the sync checkpoint is then off)."""
    from sidecar.changefeed import ChangeFeed, ChangesUnknown

    try:
        ChangeFeed(store).change_point()
    except ChangesUnknown as exc:
        pytest.skip(f"the server has no change streams: {exc}")


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
