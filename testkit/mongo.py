"""The MongoDB-wire test server: SecantusDB (a test-only dependency) on a free loopback port.

The tests' session server (``testkit.fixtures``) and every benchmark start it here. With a
URL given (``MONGODB_TEST_URL``, ``--mongodb-url``) nothing is started: ``external`` is True
and ``start``/``stop`` do nothing.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pymongo

from .measure import cpu_seconds, free_port, stop_process


def launch_secantus(port: int, storage: Path, log_path: Path, timeout: float = 60.0) -> subprocess.Popen:
    """Start ``secantusd-py`` on 127.0.0.1:port and return once it answers a ping.

    The server's output goes to ``log_path`` (the child keeps its own handle).
    If it exits or does not answer within ``timeout``, it is stopped and this raises."""
    exe = Path(sys.executable).with_name("secantusd-py")
    cmd = [str(exe) if exe.exists() else "secantusd-py", "--host", "127.0.0.1", "--port", str(port),
           "--storage-path", str(storage), "--enable-test-commands", "--log-level", "WARNING"]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"mongodb://127.0.0.1:{port}/?directConnection=true"
    client = pymongo.MongoClient(url, serverSelectionTimeoutMS=500)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"secantusd-py exited with {proc.returncode}; see {log_path}")
            try:
                client.admin.command("ping")
                return proc
            except pymongo.errors.PyMongoError:
                if time.monotonic() > deadline:
                    proc.kill()
                    proc.wait(timeout=30)
                    raise RuntimeError(f"secantusd-py did not answer within {timeout}s") from None
                time.sleep(0.1)
    finally:
        client.close()


class TestServer:
    """A MongoDB-wire server the tests and benchmarks can stop and start (SecantusDB).

    ``storage`` is its data dir (kept across ``stop``/``start``: a restart is the same server);
    the log goes next to it unless ``log_path`` is given."""

    __test__ = False

    def __init__(self, storage: Path | None, url: str | None = None, log_path: Path | None = None) -> None:
        self.storage = storage
        self.external = url is not None
        self.port = free_port() if url is None else None
        self.url = url or f"mongodb://127.0.0.1:{self.port}/?directConnection=true"
        self.log_path = log_path or (storage.parent / "secantus.log" if storage is not None else None)
        self.proc: subprocess.Popen | None = None

    @classmethod
    def in_dir(cls, workdir: Path, name: str = "secantus") -> "TestServer":
        """A server with its storage ``<name>-data`` and log ``<name>.log`` in ``workdir``."""
        workdir.mkdir(parents=True, exist_ok=True)
        return cls(workdir / f"{name}-data", log_path=workdir / f"{name}.log")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self, timeout: float = 60.0) -> None:
        if self.external:
            return
        self.proc = launch_secantus(self.port, self.storage, self.log_path, timeout)

    def stop(self, kill: bool = False, timeout: float = 30.0) -> None:
        if self.external or self.proc is None:
            return
        stop_process(self.proc, timeout=timeout, kill=kill)
        self.proc = None

    def restart(self, kill: bool = False, timeout: float = 60.0) -> None:
        self.stop(kill=kill)
        self.start(timeout)

    def cpu_seconds(self) -> float | None:
        """The server's CPU so far (with its reaped children), or None when it is not ours or not up."""
        return cpu_seconds(self.pid, children=True)
