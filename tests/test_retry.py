"""sidecar/retry.py: the one ``Backoff`` every retry loop takes its delays from,
and the daemon's one stop signal its waits end on."""

from __future__ import annotations

import asyncio
import random
import threading

import pytest

from sidecar.retry import Backoff, StopSignal


class RecordingStop:
    """A stop event that records the timeouts it was asked to wait (never sleeps)."""

    def __init__(self, stopped: bool = False) -> None:
        self.asked: list[float | None] = []
        self.stopped = stopped

    def wait(self, timeout=None) -> bool:
        self.asked.append(timeout)
        return self.stopped


def test_delays_grow_by_the_factor_from_initial_and_stop_at_the_cap():
    b = Backoff(0.1, 5.0)
    delays = [b.next() for _ in range(9)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0])
    assert b.delay == 5.0


def test_another_factor_and_a_fixed_poll():
    b = Backoff(0.5, 5.0, factor=3.0)
    assert [b.next() for _ in range(4)] == pytest.approx([0.5, 1.5, 4.5, 5.0])
    fixed = Backoff(0.25, 0.25, factor=1.0)
    assert [fixed.next() for _ in range(3)] == [0.25, 0.25, 0.25]


def test_reset_starts_again_from_initial():
    b = Backoff(0.1, 5.0)
    for _ in range(5):
        b.next()
    b.reset()
    assert b.delay == 0.0
    assert b.next() == pytest.approx(0.1)


def test_jitter_scales_each_delay_within_its_bounds_and_the_next_grows_from_it(monkeypatch):
    monkeypatch.setattr("sidecar.retry.random", random.Random(12))  # deterministic draws
    b = Backoff(0.1, 5.0, jitter=0.2)
    previous = 0.0
    seen = []
    for _ in range(200):
        unscaled = min(5.0, max(0.1, previous * 2))
        delay = b.next()
        assert 0.8 * unscaled <= delay <= unscaled
        seen.append(delay / unscaled)
        previous = delay
    assert max(seen) - min(seen) > 0.1  # it does vary (not a constant factor)
    assert max(seen) <= 1.0 and min(seen) >= 0.8


def test_a_floor_for_one_delay_without_jitter():
    """The writer's held-lease case: no sooner than 1 s, unscaled; growth continues from it."""
    b = Backoff(0.1, 5.0, jitter=0.2)
    assert b.next(at_least=1.0, jitter=False) == 1.0
    assert b.next(at_least=1.0, jitter=False) == 2.0
    assert 0.8 * 4.0 <= b.next() <= 4.0


@pytest.mark.parametrize("args", [(0, 5.0), (2.0, 1.0), (-1, 1.0)])
def test_bad_bounds_are_refused(args):
    with pytest.raises(ValueError):
        Backoff(*args)


def test_bad_factor_or_jitter_is_refused():
    with pytest.raises(ValueError):
        Backoff(0.1, 1.0, factor=0.5)
    with pytest.raises(ValueError):
        Backoff(0.1, 1.0, jitter=1.0)


def test_wait_asks_the_stop_event_for_the_next_delay_and_says_whether_it_stopped():
    b = Backoff(0.1, 5.0)
    running = RecordingStop()
    assert b.wait(running) is False and b.wait(running) is False
    assert running.asked == pytest.approx([0.1, 0.2])
    assert b.wait(RecordingStop(stopped=True)) is True


def test_a_stop_ends_a_long_wait_at_once():
    """A 1-hour delay: the waiter returns only because the stop was set (bounded join)."""
    stop = StopSignal()
    b = Backoff(3600.0, 3600.0)
    entered = threading.Event()
    result = {}

    class Watched:
        def wait(self, timeout=None):
            entered.set()
            return stop.wait(timeout)

    waiter = threading.Thread(target=lambda: result.setdefault("stopped", b.wait(Watched())), daemon=True)
    waiter.start()
    assert entered.wait(10)
    stop.set()
    waiter.join(10)
    assert not waiter.is_alive(), "the wait did not end on the stop signal"
    assert result == {"stopped": True}


def test_stop_signal_already_set_returns_at_once_for_threads_and_the_loop():
    stop = StopSignal()
    stop.set()
    stop.set()  # more than once is fine
    assert stop.is_set() and stop.wait(3600) is True
    asyncio.run(asyncio.wait_for(stop.until_set(), 10))


def test_stop_signal_set_from_another_thread_wakes_the_event_loop():
    stop = StopSignal()

    async def main():
        waiting = asyncio.ensure_future(stop.until_set())
        await asyncio.sleep(0)  # let it register (a step of the loop, not a timed wait)
        assert not waiting.done()
        setter = threading.Thread(target=stop.set)
        setter.start()
        await asyncio.wait_for(waiting, 10)
        setter.join(10)

    asyncio.run(main())
    assert stop.is_set()


def test_stop_signal_set_from_the_loop_itself_as_a_signal_handler_would():
    stop = StopSignal()

    async def main():
        asyncio.get_running_loop().call_soon(stop.set)
        await asyncio.wait_for(stop.until_set(), 10)

    asyncio.run(main())


def test_a_waiter_whose_loop_has_closed_does_not_break_set():
    stop = StopSignal()

    async def give_up():
        waiting = asyncio.ensure_future(stop.until_set())
        await asyncio.sleep(0)  # registered with this loop
        waiting.cancel()

    asyncio.run(give_up())  # that loop is closed now, its future left behind
    stop.set()
    assert stop.is_set()
