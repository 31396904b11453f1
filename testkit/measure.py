"""Measuring helpers for tests and benchmarks: stdlib only, so a benchmark's writer process
(a "legacy API" with only the shim on its path) can import them too."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from . import ROOT

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port nothing listens on right now (127.0.0.1)."""
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


def cpu_seconds(pid: int | None, children: bool = False) -> float | None:
    """user+system CPU of one process (all its threads), from /proc; ``children`` adds that
    of its reaped children. None when there is no such process."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = sum(int(x) for x in fields[11:15 if children else 13])  # utime stime [cutime cstime]
    return ticks / CLK_TCK


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM / VmSize / RssAnon ... of a process in kB, from /proc/<pid>/status."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key.startswith(("Vm", "Rss", "Threads")):
            parts = rest.split()
            if parts and parts[0].isdigit():
                out[key] = int(parts[0])
    return out


def system_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    vals = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(vals[:8])
    idle = vals[3] + vals[4]
    return total - idle, total


def loadavg() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def code_version(paths: tuple[str, ...] = ("sidecar", "shim")) -> dict:
    """Which code was measured: HEAD, and whether ``paths`` had uncommitted edits."""
    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.rstrip()
        except (OSError, subprocess.SubprocessError):
            return ""
    dirty = git("status", "--porcelain", "--", *paths)
    return {"head": git("rev-parse", "--short", "HEAD"), "uncommitted_changes": bool(dirty),
            "dirty_files": dirty.splitlines()[:20]}


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
