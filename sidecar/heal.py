"""mongo mode: held divergences are resolved toward MongoDB, on disk.

With ``MEMORY_STORE_BACKEND=mongo`` MongoDB is the truth: a hub file that lacks
entries MongoDB holds (re-created as ``{}``, copied over, put back from an old
backup) gets them back, and a missing file is restored. The API may be writing
at the same time, and the legacy writer does read-modify-write of whole hub
files with a non-atomic ``write_text`` (open with O_TRUNC, write, close), so a
heal must never lose one of its writes:

1. read the file through a descriptor that is kept open (the *old inode*);
2. merge: every entry of the file as it is, plus MongoDB's entries it lacks;
3. write the merge to a temp file, then, only if the old inode is unchanged
   (size, mtime, ctime) and still at the path, rename it over the path;
   otherwise give up for now (the writer's own close event brings us back);
4. keep watching the old inode for ``HEAL_WATCH_S``: a writer that opened the
   path just before the rename writes into the old inode, which nobody reads
   any more; when that happens its changes are merged into the file again.

The sidecar's own bytes are marked (``Reconciler.own_writes``), so the next
read of them does not teach the lineage keys the legacy writer never wrote:
a writer that read the file before the heal and writes after it cannot
"remove" the healed keys, they are held and healed again.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .classify import hub_type_of
from .documents import entry_value
from .names import HUBS
from .parse import DEFAULT_FORMAT, detect_format, render
from .source import _FILE_FLAGS, FileRead, SourceError, _open_parent, sha256_hex
from .store import Store

log = logging.getLogger("sidecar.heal")

# How long an old inode is watched after a heal. The legacy write_text opens,
# writes and closes within microseconds to milliseconds; a second is generous.
HEAL_WATCH_S = 2.0


@dataclass
class _OldInode:
    rel: str
    fd: int
    stamp: tuple[int, int, int]
    entries: dict[str, Any]
    until: float


def _stamp(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _content_stamp(st: os.stat_result) -> tuple[int, int, int]:
    """What a write changes (the rename over the path changes the old inode's ctime too)."""
    return (st.st_size, st.st_mtime_ns, 0)


def _read_fd(fd: int) -> bytes:
    chunks, offset = [], 0
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


def _hub_object(data: bytes) -> dict[str, Any] | None:
    """The file's entries, or None while it is not a whole JSON object (mid-write)."""
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


class Healer:
    """Puts MongoDB's data back into the data dir without losing a concurrent write."""

    def __init__(self, root: Path, store: Store, observe: Callable[[FileRead], None]) -> None:
        self.root = Path(root)
        self.store = store
        self.observe = observe  # records our own bytes as the lineage's latest version
        self._old: list[_OldInode] = []
        self.healed = 0
        self.merged_late_writes = 0

    def __len__(self) -> int:
        return len(self._old)

    def _mongo_entries(self, hub_type: str) -> list[tuple[Any, str, Any]]:
        """(position, key, payload) of MongoDB's entries; foreign types tolerated."""
        out = []
        for doc in self.store.find(HUBS, {"hub_type": hub_type},
                                   {"item_key": 1, "payload": 1, "_sidecar.pos": 1, "_sidecar.raw": 1}):
            key = doc.get("item_key")
            if not isinstance(key, str):
                continue
            meta = doc.get("_sidecar")
            pos = meta.get("pos") if isinstance(meta, dict) else None
            out.append((pos if isinstance(pos, int) and not isinstance(pos, bool) else None, key,
                        entry_value(doc)))  # the payload, or the value kept raw
        return out

    def heal_hub(self, rel: str, fmt: dict | None = None, late: dict[str, Any] | None = None,
                 base: dict[str, Any] | None = None, broken_ok: bool = False) -> str:
        """Give ``rel`` MongoDB's entries it lacks. Returns healed | unchanged | retry | missing.

        ``late``/``base``: a write that landed in an old inode after a heal (its
        entries, and the entries of the version it was written over): its changes
        are applied where the file still has ``base``'s value. ``broken_ok``: a file
        that does not parse (it stayed so through the re-checks) counts as no entries."""
        try:
            dir_fd, name = _open_parent(self.root, rel)
        except (OSError, SourceError):
            return "retry"  # the data dir is missing or a symlink (never followed): later
        fd = -1
        keep_fd = False
        try:
            try:
                fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
            except FileNotFoundError:
                return "missing"
            st0 = os.fstat(fd)
            if not stat.S_ISREG(st0.st_mode):
                return "retry"
            data = _read_fd(fd)
            current = _hub_object(data)
            if current is None and broken_ok:
                current = {}
            if current is None:
                return "retry"  # caught mid-write: the writer's close event brings us back
            merged = dict(current)
            if late:
                for key, value in late.items():
                    if key not in merged or base is None or merged.get(key) == base.get(key):
                        merged[key] = value
            stored = self._mongo_entries(hub_type_of(rel))
            added = [(pos, key, payload) for pos, key, payload in stored if key not in merged]
            if not added and merged == current:
                return "unchanged"
            # MongoDB's order where it has one, the file's own new keys after it.
            pos_of = {key: pos for pos, key, _ in stored}
            values = dict(merged)
            values.update({key: payload for _, key, payload in added})
            tail = max((p for p in pos_of.values() if p is not None), default=-1) + 1
            order = sorted(values, key=lambda k: (pos_of.get(k) if pos_of.get(k) is not None else tail,
                                                   0 if k in pos_of else 1))
            fmt = fmt or detect_format(current, data) or DEFAULT_FORMAT
            out = render({k: values[k] for k in order}, fmt)
            if not self._swap(dir_fd, name, fd, st0, out):
                return "retry"
            new = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            self.observe(FileRead(rel, out, sha256_hex(out), len(out), new.st_mtime_ns,
                                  new.st_dev, new.st_ino, os.fstat(dir_fd).st_ino))
            # The stamp the swap checked, not one taken now: a write that landed
            # between the check and this line is exactly the one to keep.
            self._old.append(_OldInode(rel, fd, _content_stamp(st0), current, time.monotonic() + HEAL_WATCH_S))
            keep_fd = True
            self.healed += 1
            log.info("%s: %d entries put back from MongoDB", rel, len(added))
            return "healed"
        finally:
            if fd >= 0 and not keep_fd:
                os.close(fd)
            os.close(dir_fd)

    @staticmethod
    def _swap(dir_fd: int, name: str, fd: int, st0: os.stat_result, out: bytes) -> bool:
        """Rename ``out`` over ``name`` if the file is still the version we read."""
        tmp = f".sidecar-heal-{os.getpid()}-{os.urandom(4).hex()}"
        tfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                      dir_fd=dir_fd)
        try:
            os.write(tfd, out)
            os.fsync(tfd)
        finally:
            os.close(tfd)
        try:
            now = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if _stamp(os.fstat(fd)) != _stamp(st0) or (now.st_dev, now.st_ino) != (st0.st_dev, st0.st_ino):
                os.unlink(tmp, dir_fd=dir_fd)
                return False
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError:
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except OSError:
                pass
            return False
        os.fsync(dir_fd)
        return True

    def check_old_inodes(self, fmt_of: Callable[[str], dict | None] = lambda rel: None) -> list[str]:
        """Merge writes that landed in an inode a heal replaced; forget the settled
        ones. Returns the paths re-healed (the caller re-reads them)."""
        again: list[str] = []
        now = time.monotonic()
        for old in list(self._old):
            stamp = _content_stamp(os.fstat(old.fd))
            if stamp != old.stamp:
                late = _hub_object(_read_fd(old.fd))
                if late is None:
                    old.stamp = stamp  # mid-write: look again at the next check
                    old.until = max(old.until, now + 0.5)
                    continue
                changed = {k: v for k, v in late.items() if old.entries.get(k, object()) != v}
                outcome = self.heal_hub(old.rel, fmt_of(old.rel), late=changed, base=old.entries)
                if outcome == "retry":
                    # The path is mid-write itself: keep the late write and try again.
                    old.stamp = (-1, -1, -1)
                    old.until = max(old.until, now + 0.5)
                    continue
                self.merged_late_writes += 1
                log.warning("%s: a write landed in the file a heal replaced; merged it back", old.rel)
                again.append(old.rel)
            elif now < old.until:
                continue
            os.close(old.fd)
            self._old.remove(old)
        return again

    def close(self) -> None:
        for old in self._old:
            os.close(old.fd)
        self._old.clear()
