"""What every benchmark (and the test fixture) needs: a SecantusDB process on loopback, and which code ran."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pymongo

ROOT = Path(__file__).resolve().parent.parent


def code_version(paths: tuple[str, ...] = ("sidecar", "shim")) -> dict:
    """Which code was measured: HEAD, and whether ``paths`` had uncommitted edits."""
    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.rstrip()
        except (OSError, subprocess.TimeoutExpired):
            return ""
    dirty = git("status", "--porcelain", "--", *paths)
    return {"head": git("rev-parse", "--short", "HEAD"), "uncommitted_changes": bool(dirty),
            "dirty_files": dirty.splitlines()[:20]}


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


def stop_process(proc: subprocess.Popen | None, timeout: float = 30.0, kill: bool = False) -> None:
    """SIGTERM (or SIGKILL), wait, then SIGKILL: only the process we started, by its pid."""
    if proc is None or proc.poll() is not None:
        return
    if kill:
        proc.kill()
    else:
        proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def pct(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..1); None for no values."""
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)
