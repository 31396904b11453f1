"""The daemon's per-file memory, kept out of the heap: one SQLite database in a
temporary file.

At 500k files the per-file state (what MongoDB holds of each file, the lineage
the deletion model relies on, the quick-check records of a scan, the paths a
scan saw) cost ~0.8 KiB per file as Python dicts and objects: ~400 MiB. Here it
lives in tables of a private SQLite database (stdlib ``sqlite3``) whose page
cache is bounded (``CACHE_KIB``): the process keeps a few MiB of it resident and
the kernel's page cache holds the rest, as it would for any file.

It is a cache, never a source of truth: built from MongoDB (and from what this
process observed) at every start, so it needs no durability. The file is
unlinked as soon as it is open (nothing is left behind by a kill -9), no journal
is kept, writes are not synced. ``SIDECAR_STATE_DIR`` says where it lives (the
system's temp dir by default): on a memory-backed ``/tmp`` (tmpfs) point it at a
disk-backed volume, or the pages count against the container's memory.

``DiskMap`` and ``DiskSet`` are ``MutableMapping``/``MutableSet`` over one table:
the code that used dicts and sets uses them unchanged. Values are stored with
``marshal`` (a private file this process wrote; fast, exact for the ints, bytes,
strs, bools, None and tuples the state holds) through a per-table codec.
Every call takes the index's lock (the writer thread changes the state while the
status server counts it); iteration reads in key order, a chunk per statement,
so a change made meanwhile never breaks it (a key may be seen or not, like a
dict copied at some moment).
"""

from __future__ import annotations

import marshal
import os
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterator, MutableMapping, MutableSet
from typing import Any, Generic, TypeVar

V = TypeVar("V")

CACHE_KIB = 4096  # SQLite's page cache for the whole index
CHUNK = 2000  # rows per statement when iterating
BATCH = 5000  # rows a caller hands over at once (``put_many``: one transaction each)


class StateDirUnusable(RuntimeError):
    """``SIDECAR_STATE_DIR`` cannot hold the local index (a clear message, no traceback)."""


class LocalIndex:
    """One private SQLite database (see the module's docstring)."""

    def __init__(self, directory: str | os.PathLike[str] | None = None, cache_kib: int = CACHE_KIB) -> None:
        directory = os.fspath(directory) if directory else None
        where = directory or tempfile.gettempdir()
        try:
            if directory:
                os.makedirs(directory, exist_ok=True)
            fd, path = tempfile.mkstemp(prefix="sidecar-state-", suffix=".sqlite", dir=directory or None)
            os.close(fd)
            try:
                self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            finally:
                os.unlink(path)  # open: the database lives on in the file descriptor only
        except (OSError, sqlite3.Error) as exc:
            raise StateDirUnusable(
                f"SIDECAR_STATE_DIR {where}: cannot create the local state file "
                f"({getattr(exc, 'strerror', None) or type(exc).__name__})") from None
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "locking_mode=EXCLUSIVE",
                       "temp_store=FILE", f"cache_size=-{int(cache_kib)}", "mmap_size=0"):
            self._conn.execute(f"PRAGMA {pragma}")
        self.lock = threading.RLock()
        self._seq = 0
        self.directory = where

    def _table(self, prefix: str) -> str:
        with self.lock:
            self._seq += 1
            name = f"{prefix}_{self._seq}"
            self._conn.execute(f"CREATE TABLE {name} (k BLOB PRIMARY KEY, v, t INTEGER) WITHOUT ROWID")
        return name

    def map(self, prefix: str, encode: Callable[[Any], Any] | None = None,
            decode: Callable[[Any], Any] | None = None, tag: Callable[[Any], bool] | None = None) -> DiskMap[Any]:
        """A new, empty map (its own table). ``tag(value)``: a flag kept beside each
        value, so ``counts`` counts without decoding every value."""
        return DiskMap(self, self._table(prefix), encode, decode, tag)

    def set(self, prefix: str) -> DiskSet:
        """A new, empty set (its own table)."""
        return DiskSet(self, self._table(prefix))

    def drop(self, table: str) -> None:
        with self.lock:
            self._conn.execute(f"DROP TABLE IF EXISTS {table}")

    def tables(self) -> list[str]:
        with self.lock:
            return [r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]

    def execute(self, sql: str, args: tuple | list = ()) -> list[tuple]:
        with self.lock:
            return self._conn.execute(sql, args).fetchall()

    def executemany(self, sql: str, rows: Any) -> None:
        with self.lock:
            self._conn.execute("BEGIN")
            try:
                self._conn.executemany(sql, rows)
            finally:
                self._conn.execute("COMMIT")

    def close(self) -> None:
        with self.lock:
            self._conn.close()


def drop_tables(*tables: Any) -> None:
    """Drop each of ``tables`` that is a table of a local index (dicts and sets are left
    to the garbage collector)."""
    for table in tables:
        if isinstance(table, _Table):
            table.drop()


def put_many(mapping: MutableMapping[str, Any], pairs: list[tuple[str, Any]]) -> None:
    """``pairs`` into a dict or a ``DiskMap`` (one transaction there)."""
    if pairs:
        getattr(mapping, "update_many", mapping.update)(pairs)


def _dump(value: Any) -> bytes:
    return marshal.dumps(value)


def _key(key: str) -> bytes:
    """A key as stored: its UTF-8 bytes, a name that is not valid UTF-8 (Linux hands it over
    with lone surrogates, which SQLite cannot take as text) included. Byte order is code
    point order, as ``sorted`` (for valid UTF-8)."""
    return key.encode("utf-8", "surrogateescape")


def _str(key: bytes) -> str:
    return key.decode("utf-8", "surrogateescape")


class _Table:
    def __init__(self, index: LocalIndex, table: str) -> None:
        self.index = index
        self.table = table
        self.dropped = False
        self._get = f"SELECT v FROM {table} WHERE k=?"
        self._put = f"INSERT OR REPLACE INTO {table} (k, v, t) VALUES (?, ?, ?)"
        self._del = f"DELETE FROM {table} WHERE k=?"
        self._has = f"SELECT 1 FROM {table} WHERE k=?"
        self._len = f"SELECT count(*) FROM {table}"
        self._first = f"SELECT k, v FROM {table} ORDER BY k LIMIT {CHUNK}"
        self._next = f"SELECT k, v FROM {table} WHERE k>? ORDER BY k LIMIT {CHUNK}"

    def _run(self, sql: str, args: tuple = ()) -> list[tuple]:
        """One statement; a table already dropped (a state replaced while the status
        server was still counting it) reads as empty and takes no writes."""
        with self.index.lock:
            if self.dropped:
                return []
            return self.index.execute(sql, args)

    def __len__(self) -> int:
        rows = self._run(self._len)
        return rows[0][0] if rows else 0

    def __contains__(self, key: object) -> bool:
        if type(key) is not str:
            return False
        return bool(self._run(self._has, (_key(key),)))

    def _rows(self) -> Iterator[tuple[str, Any]]:
        rows = self._run(self._first)
        while rows:
            yield from rows
            if len(rows) < CHUNK:
                return
            rows = self._run(self._next, (rows[-1][0],))

    def clear(self) -> None:
        self._run(f"DELETE FROM {self.table}")

    def drop(self) -> None:
        with self.index.lock:
            if not self.dropped:
                self.dropped = True
                self.index.drop(self.table)


class DiskMap(_Table, MutableMapping[str, V], Generic[V]):
    """A ``dict[str, V]`` in a table of the index (str keys only)."""

    def __init__(self, index: LocalIndex, table: str, encode: Callable[[Any], Any] | None = None,
                 decode: Callable[[Any], Any] | None = None, tag: Callable[[Any], bool] | None = None) -> None:
        super().__init__(index, table)
        self._encode = encode or (lambda v: v)
        self._decode = decode or (lambda v: v)
        self._tag = tag or (lambda v: False)

    def __getitem__(self, key: str) -> V:
        if type(key) is not str:
            raise KeyError(key)
        rows = self._run(self._get, (_key(key),))
        if not rows:
            raise KeyError(key)
        return self._decode(marshal.loads(rows[0][0]))

    def get(self, key: str, default: Any = None) -> Any:
        if type(key) is not str:
            return default
        rows = self._run(self._get, (_key(key),))
        return self._decode(marshal.loads(rows[0][0])) if rows else default

    def __setitem__(self, key: str, value: V) -> None:
        if type(key) is not str:
            raise TypeError(f"DiskMap keys are str, not {type(key).__name__}")
        self._run(self._put, (_key(key), _dump(self._encode(value)), 1 if self._tag(value) else 0))

    def __delitem__(self, key: str) -> None:
        with self.index.lock:
            if key not in self:
                raise KeyError(key)
            self._run(self._del, (_key(key),))

    def pop(self, key: str, *default: Any) -> Any:
        with self.index.lock:
            rows = self._run(self._get, (_key(key),)) if type(key) is str else []
            if not rows:
                if default:
                    return default[0]
                raise KeyError(key)
            self._run(self._del, (_key(key),))
        return self._decode(marshal.loads(rows[0][0]))

    def __iter__(self) -> Iterator[str]:
        for k, _ in self._rows():
            yield _str(k)

    def items(self) -> Iterator[tuple[str, V]]:  # type: ignore[override]
        decode = self._decode
        for k, v in self._rows():
            yield _str(k), decode(marshal.loads(v))

    def values(self) -> Iterator[V]:  # type: ignore[override]
        for _, v in self.items():
            yield v

    def update_many(self, pairs: Any) -> None:
        """Many ``key, value`` pairs in one transaction (building a state)."""
        encode, tag = self._encode, self._tag
        with self.index.lock:
            if not self.dropped:
                self.index.executemany(self._put, ((_key(k), _dump(encode(v)), 1 if tag(v) else 0)
                                                   for k, v in pairs))

    def counts(self) -> tuple[int, int]:
        """(entries, how many of them ``tag`` flagged), in one statement."""
        rows = self._run(f"SELECT count(*), coalesce(sum(t), 0) FROM {self.table}")
        return (rows[0][0], rows[0][1]) if rows else (0, 0)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, MutableMapping):
            return dict(self.items()) == dict(other.items())
        return NotImplemented

    def __repr__(self) -> str:
        return f"DiskMap({self.table}, {len(self)} entries)"


class DiskSet(_Table, MutableSet[str]):
    """A ``set[str]`` in a table of the index."""

    def __iter__(self) -> Iterator[str]:
        for k, _ in self._rows():
            yield _str(k)

    def add(self, value: str) -> None:
        self._run(self._put, (_key(value), None, None))

    def fill_from(self, other: _Table) -> None:
        """Add every key of another table of the same index (one statement)."""
        self._run(f"INSERT OR IGNORE INTO {self.table} (k) SELECT k FROM {other.table}")

    def discard(self, value: str) -> None:
        if type(value) is str:
            self._run(self._del, (_key(value),))

    def __repr__(self) -> str:
        return f"DiskSet({self.table}, {len(self)} entries)"
