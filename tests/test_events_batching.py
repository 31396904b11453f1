"""sidecar/events.py EventOutbox (the writer's, sidecar/writer.py): memory_events are batched while the writer has work queued,
and never lost: sent when a batch fills, when the oldest is old enough, when the
writer runs out of work, at shutdown, and kept across a MongoDB outage."""

from __future__ import annotations

import pytest

import sidecar.events as events_mod
from sidecar.config import Config
from sidecar.state import MirrorState
from sidecar.events import EVENTS_BATCH
from sidecar.mirror import Mirror
from sidecar.pending import Pending
from sidecar.status import Status
from sidecar.store import MongoUnavailable


class EventSink:
    def __init__(self) -> None:
        self.batches: list[list[dict]] = []
        self.down = False

    def record_events(self, events: list[dict]) -> None:
        if self.down:
            raise MongoUnavailable("down")
        self.batches.append(list(events))

    @property
    def sent(self) -> list[dict]:
        return [e for batch in self.batches for e in batch]


@pytest.fixture
def mirror(tmp_path):
    config = Config(runtime_data_dir=str(tmp_path))
    m = Mirror(config, EventSink(), Status(), Pending(), MirrorState())
    return m


def events(n: int, start: int = 0) -> list[dict]:
    return [{"event_type": "hub_updated", "n": i} for i in range(start, start + n)]


def test_small_batches_wait_while_work_is_queued_then_go_in_one_insert(mirror):
    sink = mirror.store
    for i in range(3):
        mirror.writer.record(events(5, i * 5), defer=True)
    assert sink.batches == []
    mirror.writer.record(events(EVENTS_BATCH, 15), defer=True)  # a full batch goes at once
    assert len(sink.batches) == 1
    assert [e["n"] for e in sink.sent] == list(range(15 + EVENTS_BATCH))  # in order, none lost


def test_old_events_go_even_under_load(mirror, monkeypatch):
    sink = mirror.store
    mirror.writer.record(events(2), defer=True)
    assert sink.batches == []
    clock = events_mod.time.monotonic() + events_mod.EVENTS_MAX_AGE + 1
    monkeypatch.setattr(events_mod.time, "monotonic", lambda: clock)
    mirror.writer.record(events(1, 2), defer=True)
    assert [e["n"] for e in sink.sent] == [0, 1, 2]


def test_not_deferred_and_flushed_when_idle_or_at_shutdown(mirror):
    sink = mirror.store
    mirror.writer.record(events(1), defer=False)
    assert len(sink.sent) == 1
    mirror.writer.record(events(2, 1), defer=True)
    mirror.writer.outbox.flush()  # what the loop does when nothing is queued
    assert [e["n"] for e in sink.sent] == [0, 1, 2]
    mirror.writer.record(events(1, 3), defer=True)
    import time

    mirror.stop(time.monotonic() + 5)  # never started: stop still sends what is kept
    assert [e["n"] for e in sink.sent] == [0, 1, 2, 3]


def test_kept_across_an_outage(mirror):
    sink = mirror.store
    mirror.writer.record(events(3), defer=True)
    sink.down = True
    with pytest.raises(MongoUnavailable):
        mirror.writer.outbox.flush()
    with pytest.raises(MongoUnavailable):
        mirror.writer.record(events(1, 3), defer=False)
    sink.down = False
    mirror.writer.outbox.flush()
    assert [e["n"] for e in sink.sent] == [0, 1, 2, 3]
