"""What this daemon has seen of each file: the deletion model's evidence.

A removal (a hub key missing, a file gone) may only be mirrored when the
sidecar saw it happen as an edit of the same file it was watching (DESIGN §5).
"The same file" is its lineage: the inode that held the previous version, in
the same directory inode. The legacy writer's ``write_text`` truncates and
rewrites in place, so its edits keep both; a file re-created (new inode, or
absent then present), a hub dir re-created or a data dir swapped for another
give a new lineage, and what they lack is a divergence, never a deletion.

Inode numbers are reused: a file deleted and re-created at once often gets the
number its predecessor had. So the watcher also reports every event that ends
a lineage whatever the numbers say (a create, a delete, a rename from or onto
the path: the legacy in-place ``write_text`` produces none of them) as a
*break*; a read only continues the lineage when no break came before it.

Nothing here is persisted: lineage is what *this* process observed. After a
restart every file starts a new lineage at its first read (or, for a file the
quick check does not read, its first probe: the same inode, directory and
generation, sidecar/source.py ``Prober``), so a removal first noticed at
start-up is held, as the contract says.

For hub files the lineage also keeps the keys of the last version observed from
someone else: only those can be removed by an edit. Keys the sidecar wrote back
itself (mongo mode's heal) join only once the legacy writer has written them
again, so a writer that read the file before the heal cannot "remove" them.
"""

from __future__ import annotations

import itertools
from collections.abc import MutableMapping
from typing import TYPE_CHECKING

from .source import FileRead

if TYPE_CHECKING:
    from .localindex import LocalIndex


def _mark(read: FileRead) -> int:
    # One int per file (a tuple of three ints costs ~3x as much at 50k files);
    # a false "same lineage" would need a 64-bit hash collision on one path.
    return hash((read.dev, read.ino, read.dir_ino, read.gen))


class Lineage:
    """``index``: keep the per-file marks in a table of the local index
    (sidecar/localindex.py) instead of a dict (the daemon: 500k files)."""

    def __init__(self, index: LocalIndex | None = None) -> None:
        # rel -> (mark, directory inode)
        self._marks: MutableMapping[str, tuple[int, int]] = index.map("lineage") if index is not None else {}
        self._hub_keys: dict[str, frozenset[str]] = {}
        # rel -> sequence number of the last break not yet followed by a read.
        # Written by the watcher's thread, read by the writer's (single dict ops).
        self._breaks: dict[str, int] = {}
        self._seq = itertools.count(1)

    def __len__(self) -> int:
        return len(self._marks)

    def knows(self, rel: str) -> bool:
        return rel in self._marks

    def broken(self, rel: str) -> None:
        """The watcher saw the path created, deleted or renamed: a new lineage."""
        self._breaks[rel] = next(self._seq)

    def token(self, rel: str) -> int:
        """Taken before a read: which break (if any) the read comes after."""
        return self._breaks.get(rel, 0)

    def same(self, read: FileRead) -> bool:
        """True when ``read`` is the file this daemon last observed at that path
        (same inode, same directory inode, no create/delete/rename since)."""
        if read.ino == 0 or read.rel in self._breaks:
            return False
        held = self._marks.get(read.rel)
        return held is not None and held[0] == _mark(read)

    def dir_ino(self, rel: str) -> int | None:
        held = self._marks.get(rel)
        return held[1] if held is not None else None

    def hub_keys(self, rel: str) -> frozenset[str]:
        return self._hub_keys.get(rel, frozenset())

    def observe(self, read: FileRead, hub_keys: frozenset[str] | None = None,
                keep_keys: bool = False, token: int | None = None) -> None:
        """Record ``read`` as the lineage's latest version. ``keep_keys``: the
        bytes are the sidecar's own (a heal), keep the keys seen from the writer.
        ``token``: ``token(rel)`` taken before the read; a break newer than it
        stays (the read may predate the event it reports)."""
        if read.ino == 0:
            return
        brk = self._breaks.get(read.rel)
        if brk is not None and (token is None or brk == token):
            self._breaks.pop(read.rel, None)
        self._marks[read.rel] = (_mark(read), read.dir_ino)
        if hub_keys is not None and not keep_keys:
            self._hub_keys[read.rel] = hub_keys

    def forget(self, rel: str) -> None:
        self._marks.pop(rel, None)
        self._hub_keys.pop(rel, None)

    def forget_all(self) -> None:
        self._breaks.clear()
        self._marks.clear()
        self._hub_keys.clear()
