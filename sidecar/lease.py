"""The single-writer lease: one sidecar process writes a database at a time.

A ``sync`` run beside a live daemon (or two daemons on one database) would
interleave their writes; the version guard keeps each document from going
back, but two writers can still undo each other's removals and positions.
So every writer holds a lease, one document in ``memory_sidecar_meta``:
``{_id: "writer_lease", owner, kind, host, pid, expires_at}``, taken with one
atomic ``find_one_and_update`` (free, expired, or already ours) and renewed
while the holder runs. A holder that died without releasing it is taken over
once it expires, at once when it is provably gone (the same host and its pid
no longer alive, or a previous incarnation with our pid: a restarted container).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pymongo

from .store import Store

log = logging.getLogger("sidecar.lease")


class LeaseHeld(Exception):
    """Another writer holds the lease."""

    def __init__(self, holder: dict[str, Any]) -> None:
        self.holder = holder
        super().__init__(describe(holder))


def describe(holder: dict[str, Any]) -> str:
    expires = holder.get("expires_at")
    left = ""
    if isinstance(expires, datetime):
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=timezone.utc)
        left = f", expires in {max(0.0, (expires - datetime.now(timezone.utc)).total_seconds()):.0f} s"
    return (f"another writer holds the MongoDB writer lease: {holder.get('kind', '?')} on host "
            f"{holder.get('host', '?')} pid {holder.get('pid', '?')}{left}")


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


LEASE_ID = "writer_lease"


def try_lease(store: Store, me: dict, now: datetime, until: datetime, steal_from: Any = None) -> dict | None:
    """Take the lease if it is free, expired, ours (or ``steal_from``'s). None when
    taken; else the holder's document (types not trusted). I/O only."""
    free = [{"owner": me["owner"]}, {"expires_at": {"$lt": now}}, {"expires_at": {"$exists": False}}]
    if steal_from is not None:
        free.append({"owner": steal_from})
    with store._mongo_errors():
        try:
            store.meta.find_one_and_update(
                {"_id": LEASE_ID, "$or": free},
                {"$set": {**me, "expires_at": until, "renewed_at": now}}, upsert=True)
            return None
        except pymongo.errors.DuplicateKeyError:
            doc = store.meta.find_one({"_id": LEASE_ID})
            return doc if isinstance(doc, dict) else {}


def release_lease(store: Store, owner: str) -> None:
    with store._mongo_errors():
        store.meta.delete_one({"_id": LEASE_ID, "owner": owner})


class Lease:
    def __init__(self, store: Store, kind: str, ttl_s: float, host: str | None = None) -> None:
        self.store = store
        self.kind = kind
        self.ttl = ttl_s
        self.owner = uuid.uuid4().hex
        self.host = host or socket.gethostname()
        self.pid = os.getpid()
        self.held = False
        self._renewed = 0.0

    def _me(self) -> dict[str, Any]:
        return {"owner": self.owner, "kind": self.kind, "host": self.host, "pid": self.pid}

    def _gone(self, holder: dict[str, Any]) -> bool:
        """The holder is provably dead: same host, and its pid is ours (an earlier
        incarnation of this container) or not alive."""
        if holder.get("host") != self.host or holder.get("owner") == self.owner:
            return False
        return holder.get("pid") == self.pid or not _pid_alive(holder.get("pid"))

    def acquire(self) -> None:
        """Take or renew the lease; raises LeaseHeld (MongoUnavailable passes through)."""
        now = datetime.now(timezone.utc)
        holder = try_lease(self.store, self._me(), now, now + timedelta(seconds=self.ttl))
        if holder is not None and self._gone(holder):
            log.warning("taking over the writer lease of a %s that is gone (pid %s)", holder.get("kind"),
                        holder.get("pid"))
            holder = try_lease(self.store, self._me(), now, now + timedelta(seconds=self.ttl),
                               steal_from=holder.get("owner"))
        if holder is not None:
            self.held = False
            raise LeaseHeld(holder)
        self.held = True
        self._renewed = time.monotonic()

    def ensure(self) -> None:
        """Renew when a third of the time-to-live has passed (cheap otherwise)."""
        if not self.held or time.monotonic() - self._renewed >= self.ttl / 3:
            self.acquire()

    def release(self) -> None:
        if self.held:
            self.held = False
            release_lease(self.store, self.owner)
