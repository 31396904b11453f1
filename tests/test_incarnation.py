"""The settle before a reconcile that follows a restore seen in the running server
(sidecar/incarnation.py): pure logic with a fake store and a fake clock."""

from __future__ import annotations

import pytest

from sidecar import incarnation
from sidecar.incarnation import Incarnation


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeStore:
    """``shapes``: what each look at MongoDB's collections answers, in turn (the last one stays)."""

    def __init__(self, shapes: list[tuple]) -> None:
        self.shapes = list(shapes)
        self.looks = 0

    def shape(self, counts: bool = True):
        self.looks += 1
        return self.shapes.pop(0) if len(self.shapes) > 1 else self.shapes[0]


class GrowingStore(FakeStore):
    """A database that never stops changing: each counted look finds one more document."""

    def __init__(self) -> None:
        super().__init__([])
        self._n = 0

    def shape(self, counts: bool = False):
        self.looks += 1
        self._n += 1
        return (("memory_hubs", "u1", self._n if counts else -1),)


class FakeStatus:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def error(self, kind: str) -> None:
        self.errors.append(kind)


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(incarnation.time, "monotonic", c)
    return c


class Stopped(Exception):
    pass


def _waiter(clock, stop_after: float | None = None):
    def pause(seconds: float) -> None:
        clock.now += seconds
        if stop_after is not None and clock.now >= stop_after:
            raise Stopped
    return pause


A = ("memory_hubs", "u1", 3)
B = ("memory_hubs", "u1", 7)
C = ("episodic_memory", "u2", 2)


def test_nothing_suspect_costs_no_look(clock):
    store = FakeStore([(A,)])
    inc = Incarnation(store, FakeStatus())
    assert inc.settle(_waiter(clock)) is True
    assert store.looks == 0


def test_waits_until_the_collections_stop_changing(clock):
    # A restore filling memory_hubs, then creating episodic_memory, then done.
    store = FakeStore([(), (A,), (A,), (B,), (B, C), (B, C)])
    inc = Incarnation(store, FakeStatus())
    inc.suspect = True
    start = clock.now
    assert inc.settle(_waiter(clock)) is True
    # The last change was seen at the 5th look (4 waits in); then QUIET_S unchanged.
    assert clock.now - start >= 4 * incarnation.LOOK_S + incarnation.QUIET_S - 1e-9
    assert store.looks >= 5


def test_a_restore_that_never_ends_is_loaded_as_it_is_and_said(clock):
    status = FakeStatus()
    inc = Incarnation(GrowingStore(), status)
    inc.suspect = True
    start = clock.now
    assert inc.settle(_waiter(clock)) is False
    assert clock.now - start >= incarnation.SETTLE_MAX_S
    assert status.errors == ["collections_still_changing"]
    start = clock.now
    assert inc.settle(_waiter(clock)) is True and clock.now == start  # the next reconcile does not wait again


def test_a_stop_ends_the_wait(clock):
    inc = Incarnation(GrowingStore(), FakeStatus())
    inc.suspect = True
    with pytest.raises(Stopped):
        inc.settle(_waiter(clock, stop_after=clock.now + 1.0))


def test_a_load_during_which_a_collection_moved_stays_suspect(clock):
    store = FakeStore([(A,)])
    status = FakeStatus()
    inc = Incarnation(store, status)
    inc.suspect = True
    inc.load()
    store.shapes = [(B,)]  # filled while it loaded
    assert inc.moved_since_load() is True
    assert inc.suspect and status.errors == ["collections_replaced"]
    inc.load()
    assert inc.moved_since_load() is False
    assert not inc.suspect  # a load of a quiet database ends the suspicion


def test_a_replacement_makes_the_next_reconcile_suspect(clock):
    store = FakeStore([(A,)])
    inc = Incarnation(store, FakeStatus())
    inc.load()
    assert not inc.replaced() and not inc.suspect
    store.shapes = [(("memory_hubs", "u9", 3),)]  # dropped and re-created
    assert inc.replaced() and inc.suspect


def test_a_writer_that_never_stops_does_not_keep_it_reconciling(clock):
    """Mentorix's own store writing the same collections (DESIGN §8): every load moves
    under it; after RELOADS reconciles in a row the sidecar goes on and says so."""
    status = FakeStatus()
    inc = Incarnation(GrowingStore(), status)
    inc.suspect = True
    asked = 0
    for _ in range(incarnation.RELOADS + 5):
        inc.load()
        if not inc.moved_since_load():
            break
        asked += 1
    assert asked == incarnation.RELOADS
    assert not inc.suspect and status.errors[-1] == "collections_still_changing"


# --------------------------------------------------------------------------- Store.shape and odd servers
@pytest.mark.integration
@pytest.mark.parametrize("reply", [{"ok": 1.0}, {"ok": 1.0, "n": float("inf")}], ids=["no_n", "inf_n"])
def test_a_count_reply_the_driver_cannot_read_is_an_unknown_count_not_a_crash(store, monkeypatch, reply):
    """A MongoDB-wire server whose ``count`` answers ok without a usable ``n``: pymongo's
    ``int(res["n"])`` raises KeyError / OverflowError, neither a PyMongoError. ``shape``
    says "count unknown" (-1) as for a refused count; it must not escape (in the writer's
    idle look or a settle it would stop the writer)."""
    from pymongo.synchronous.collection import Collection

    store.db["memory_hubs"].insert_one({"_id": "x"})
    real = Collection._command

    def odd(self, conn, command, *args, **kwargs):
        if "count" in command:
            return dict(reply)
        return real(self, conn, command, *args, **kwargs)
    monkeypatch.setattr(Collection, "_command", odd)
    shape = store.shape(counts=True)
    assert [(name, count) for name, _, count in shape] == [("memory_hubs", -1)]


class _Listing:
    """A ``db`` whose listCollections ignores its filter (a server that does not take one)."""

    def __init__(self, db, extra: list) -> None:
        self._db, self._extra = db, extra

    def list_collections(self, filter=None):
        return list(self._db.list_collections()) + list(self._extra)

    def __getitem__(self, name):
        return self._db[name]


@pytest.mark.integration
def test_shape_holds_only_the_mirrored_collections_whatever_the_server_lists(store, monkeypatch):
    """A server that ignores the listCollections filter, or odd entries (not a dict, no
    name, a view without uuid, a foreign collection): ``shape`` holds the mirrored
    collections only, so a foreign collection dropped or filled is no replacement."""
    store.db["memory_hubs"].insert_one({"_id": "x"})
    store.db["mentorix_scratch"].insert_one({"_id": "y"})  # not mirrored
    monkeypatch.setattr(store, "db", _Listing(store.db, [
        "junk", {"name": 7, "info": {"uuid": "u"}}, {"name": "memory_hubs_view", "type": "view", "info": {}},
        {"name": "", "info": {"uuid": "u-empty"}}]))
    assert [name for name, _, _ in store.shape()] == ["memory_hubs"]
    assert [name for name, _, _ in store.shape(counts=True)] == ["memory_hubs"]
