"""What each writing process's shim last said about itself (its sync breaker, its
writes not confirmed durable), from the ``shim`` report in its frame headers
(shim/PROTOCOL.md): shown in ``/memory/status`` and ``/metrics`` so operators
see an outage's cost once frames flow again.
"""

from __future__ import annotations

import collections
import time
from typing import Any, Callable

from shim._protocol import BREAKER_STATES, REPORT_COUNTS

# Writing processes remembered (the most recently heard from), and for how long a
# report counts in the summary after that process's last frame.
MAX_CLIENTS = 256
CLIENT_TTL_S = 900.0


def _is_int(value: Any) -> bool:
    return type(value) is int  # bool is an int subclass: not accepted


def parse_report(value: Any) -> dict[str, Any] | None:
    """The shim's health report, or None if absent or malformed (never a bad frame:
    the write it rides on is valid on its own)."""
    if not isinstance(value, dict) or value.get("breaker") not in BREAKER_STATES:
        return None
    report: dict[str, Any] = {"breaker": value["breaker"]}
    for key in REPORT_COUNTS:
        n = value.get(key)
        if not _is_int(n) or n < 0:
            return None
        report[key] = n
    return report


class ShimClients:
    """What each writing process last said about itself (its breaker, its
    unconfirmed writes), so operators see an outage's cost once frames flow again."""

    def __init__(self, max_clients: int = MAX_CLIENTS, ttl_s: float = CLIENT_TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_clients = max_clients
        self.ttl_s = ttl_s
        self._clock = clock
        self._by_pid: "collections.OrderedDict[int, dict[str, Any]]" = collections.OrderedDict()
        self.bad_reports = 0

    def heard(self, pid: int, raw: Any, present: bool) -> None:
        now = self._clock()
        entry = self._by_pid.get(pid)
        if present:
            report = parse_report(raw)
            if report is None:
                self.bad_reports += 1
            else:
                entry = {**report, "pid": pid}
        if entry is None:
            return  # a process that never reported: nothing to show
        entry["seen"] = now
        self._by_pid[pid] = entry
        self._by_pid.move_to_end(pid)
        while len(self._by_pid) > self.max_clients:
            self._by_pid.popitem(last=False)

    def confirmed(self, pid: int) -> None:
        """An ok reply to a sync frame: that shim's breaker closes on it."""
        entry = self._by_pid.get(pid)
        if entry is not None:
            entry["breaker"] = "closed"

    def summary(self) -> dict[str, Any]:
        now = self._clock()
        live = [e for e in self._by_pid.values() if now - e["seen"] <= self.ttl_s]
        return {
            "processes": len(live),
            "breakers_open": sum(1 for e in live if e["breaker"] != "closed"),
            "unconfirmed": sum(e["unconfirmed"] for e in live),
            "sync_failed": sum(e["sync_failed"] for e in live),
            "bad_reports": self.bad_reports,
            "by_pid": [
                {"pid": e["pid"], "breaker": e["breaker"], "unconfirmed": e["unconfirmed"],
                 "sync_failed": e["sync_failed"], "breaker_opened": e["breaker_opened"],
                 "seen_seconds_ago": round(now - e["seen"], 1)}
                for e in sorted(live, key=lambda e: -e["seen"])[:20]
            ],
        }
