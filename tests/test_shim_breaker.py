"""Sync-mode shim during an outage (issue 16): the daemon answers "not durable" at
once when it knows MongoDB cannot acknowledge, and the shim's circuit breaker stops
every later write from waiting until a probe shows the sidecar can confirm again.
Asserted by counts and states, never by timings."""

from __future__ import annotations

import errno
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Callable

import pytest

import shim
from testkit.measure import wait_for
from testkit.process import DaemonProcess
from shim._breaker import CLOSED, HALF_OPEN, OPEN, Breaker
from shim_helpers import RecordingHandler, Recorder, ServerThread, connect, frame, header, read_reply

TIMEOUT_MS = 1500  # the shim's wait for one confirmation
BREAKER_MS = 1000  # how long the breaker stays open after a failure
N = 6  # writes during the outage


def test_breaker_opens_probes_once_and_closes():
    now = [0.0]
    b = Breaker(5.0, clock=lambda: now[0])
    assert b.allow() and b.state == CLOSED
    b.failure()
    assert b.state == OPEN and b.opened == 1
    assert not b.allow() and b.view() == "open"
    now[0] = 5.0
    assert b.view() == "probe_due"
    assert b.allow() and b.state == HALF_OPEN  # the probe waits
    assert not b.allow()  # the others do not, while it is out
    b.failure()  # the probe failed: open again for another period
    assert b.state == OPEN and not b.allow() and b.opened == 2
    now[0] = 10.0
    assert b.allow()
    b.success()
    assert b.state == CLOSED and b.allow()




class FlakyRecorder(Recorder):
    """Sync deliveries fail (the breaker opens); async ones are recorded. ``up``: ready()."""

    def __init__(self) -> None:
        super().__init__()
        self.up = True
        self.reporter = None  # as SocketTransport: set by the shim once its breaker opened

    def ready(self) -> bool:
        return self.up

    def deliver(self, event, sync):
        if sync:
            raise shim.DeliveryError("timed out waiting for the sidecar")
        super().deliver(event, sync)


@pytest.mark.parametrize("policy", ["open", "closed"])
def test_open_breaker_takes_the_async_route_and_carries_the_report(tmp_path, policy):
    """While the breaker is open, a sync write costs what an async one does: the
    call's own bytes are queued (no read-back), or nothing at all while the sidecar
    is away; each is counted unconfirmed; with closed, each raises at once."""
    data = tmp_path / "data"
    data.mkdir()
    t = FlakyRecorder()
    assert shim.install(mode="sync", data_dir=str(data), transport=t, on_failure=policy, breaker_ms=60_000)
    try:
        def write(name, **kw):
            try:
                (data / name).write_text('{"a": 1}', **kw)
                return 0
            except OSError as exc:
                assert exc.errno == errno.EIO
                assert "circuit breaker open" in str(exc) or "timed out" in str(exc)
                return 1
        raised = write("first.json", encoding="utf-8")  # waits, fails: the breaker opens
        assert shim.breaker_state() == "open" and shim.stats()["sync_failed"] == 1
        assert t.reporter() == ',"shim":{"breaker":"open","unconfirmed":0,"sync_failed":1,"breaker_opened":1}'
        raised += write("known.json", encoding="utf-8")  # bytes known: queued as they are
        raised += write("guessed.json")  # default encoding: read back, then queued
        assert t.summary == [("write", "known.json"), ("write", "guessed.json")] and t.sync_flags == [False, False]
        t.up = False  # the sidecar away: nothing read back, nothing queued
        raised += write("away.json", encoding="utf-8") + write("away2.json")
        try:
            (data / "first.json").unlink()  # a delete that would not wait either
        except OSError as exc:
            assert exc.errno == errno.EIO and "circuit breaker open" in str(exc)
            raised += 1
        assert not (data / "first.json").exists()
        stats = shim.stats()
        assert stats["unconfirmed"] == 5, stats
        assert stats["dropped_unavailable"] == 3
        assert len(t.events) == 2
        assert raised == (6 if policy == "closed" else 0)  # the first failure too
        assert t.reporter().startswith(',"shim":{"breaker":"open","unconfirmed":%d,' % stats["unconfirmed"])
    finally:
        shim.uninstall()


# --- the half-open probe, against a sidecar whose answer the test holds ----------------------
class HeldHandler:
    """Fails the first frame (the breaker opens), then holds every frame until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    async def __call__(self, event) -> str:
        import asyncio
        self.calls += 1
        if self.calls == 1:
            return "not_durable"
        while not self.release.is_set():
            await asyncio.sleep(0.01)
        return "written"


@pytest.mark.parametrize("policy", ["open", "closed"])
def test_half_open_one_probe_waits_the_others_do_not(tmp_path, policy):
    data = tmp_path / "data"
    data.mkdir()
    handler = HeldHandler()
    with ServerThread(tmp_path / "s.sock", handler):
        assert shim.install(mode="sync", data_dir=str(data), socket_path=str(tmp_path / "s.sock"),
                            on_failure=policy, breaker_ms=200, timeout_ms=60_000)
        try:
            try:
                (data / "first.json").write_text("{}")
            except OSError:
                assert policy == "closed"
            assert shim.breaker_state() in ("open", "probe_due")
            assert shim.stats()["breaker_opened"] == 1
            wait_for(lambda: shim.breaker_state() == "probe_due", 10, 0.01, "the probe to be due")
            probe_error: list = []

            def probe():
                try:
                    (data / "probe.json").write_text('{"p": 1}')
                except OSError as exc:  # pragma: no cover - reported below
                    probe_error.append(exc)
            t = threading.Thread(target=probe)
            t.start()
            wait_for(lambda: shim.breaker_state() == "half_open", 10, 0.01, "the probe to be out")
            raised = 0
            for i in range(N):
                try:
                    (data / f"other{i}.json").write_text("{}")
                except OSError as exc:
                    assert exc.errno == errno.EIO
                    raised += 1
            # The probe still waits (its answer is held); the others went on without waiting.
            assert t.is_alive() and shim.breaker_state() == "half_open"
            stats = shim.stats()
            assert stats["unconfirmed"] == N and stats["sync_ok"] == 0
            assert raised == (N if policy == "closed" else 0)
            handler.release.set()
            t.join(30)
            assert not t.is_alive() and not probe_error
            assert shim.breaker_state() == "closed" and shim.stats()["sync_ok"] == 1
            (data / "after.json").write_text("{}")
            assert shim.stats()["sync_ok"] == 2 and shim.stats()["unconfirmed"] == N
        finally:
            shim.uninstall()


# --- the five situations of issue 16, against the real daemon and server ---------------------
@dataclass
class Outage:
    socket_path: str
    get: Callable  # (path) -> Response
    begin: Callable[[], None]
    end: Callable[[], None]
    daemon_up: bool  # frames reach the daemon during the outage
    kind: str = ""


def _status(outage: Outage) -> dict:
    r = outage.get("/memory/status")
    assert r is not None and r.status == 200
    return r.json()["sidecar"]


def _metric(outage: Outage, name: str) -> float:
    for line in outage.get("/metrics").body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.fixture
def outage(request, restartable_server, running, tmp_path, data_dir, mongo_url, db_name):
    """One of the outages of issue 16, with a daemon to write through."""
    kind = request.param
    server = restartable_server
    state: dict = {}
    if kind.startswith("mongodb"):
        d = running(sidecar_write_stall_s=0.5)
        if kind == "mongodb_killed":
            def begin():
                server.stop(kill=True)
                # The daemon's own ping knows: from then on it answers at once.
                wait_for(lambda: not d.daemon.status.mongo_connected, 30, what="the daemon to know MongoDB is down")

            def end():
                if server.proc is None:
                    server.start()
        else:
            def begin():
                state["pid"] = server.proc.pid
                os.kill(state["pid"], signal.SIGSTOP)

            def end():
                if "pid" in state:
                    os.kill(state.pop("pid"), signal.SIGCONT)
        o = Outage(str(d.config.socket_path), d.get, begin, end, daemon_up=True, kind=kind)
        o.wait_parity = d.wait_parity
        try:
            yield o
        finally:
            end()
        return
    p = DaemonProcess(tmp_path, data_dir, mongo_url, db_name)
    p.start()
    try:
        p.wait_ready()
        if kind == "daemon_frozen":
            def begin():
                os.kill(p.proc.pid, signal.SIGSTOP)
                state["frozen"] = True

            def end():
                if state.pop("frozen", False):
                    os.kill(p.proc.pid, signal.SIGCONT)
        else:
            def begin():
                p.kill()

            def end():
                if p.proc.poll() is not None:
                    p.close()
                    p.start()
                    p.wait_ready()
        o = Outage(p.env["SIDECAR_SOCKET"], p.get, begin, end, daemon_up=False)
        o.wait_parity = p.wait_parity
        try:
            yield o
        finally:
            try:
                end()
            finally:
                p.close()
    finally:
        p.close()


SITUATIONS = ["mongodb_killed", "mongodb_frozen", "daemon_frozen", "daemon_killed"]


@pytest.mark.integration
@pytest.mark.parametrize("policy", ["open", "closed"])
@pytest.mark.parametrize("outage", SITUATIONS, indirect=True)
def test_outage_costs_at_most_one_timeout_per_breaker_period(data_dir, outage, policy):
    assert shim.install(mode="sync", data_dir=str(data_dir), socket_path=outage.socket_path,
                        on_failure=policy, breaker_ms=BREAKER_MS, timeout_ms=TIMEOUT_MS)
    try:
        (data_dir / "before.json").write_text('{"v": 0}')
        assert shim.stats()["sync_ok"] == 1 and shim.breaker_state() == "closed"
        outage.begin()
        raised = 0
        t0 = time.monotonic()
        for i in range(N):
            try:
                (data_dir / f"during{i}.json").write_text('{"v": %d}' % i)
            except OSError as exc:
                assert exc.errno == errno.EIO and policy == "closed"
                raised += 1
        elapsed = time.monotonic() - t0
        stats = shim.stats()
        # Every write is accounted for: it waited and failed, or it did not wait.
        assert stats["sync_failed"] + stats["unconfirmed"] == N, stats
        assert stats["sync_ok"] == 1
        assert raised == (N if policy == "closed" else 0)
        # The bound of issue 16: one wait that fails per breaker period at most (the
        # first one opens the breaker; the next wait is the probe, a period later).
        assert 1 <= stats["sync_failed"] <= 1 + elapsed / (BREAKER_MS / 1000), (stats, elapsed)
        assert stats["breaker_opened"] >= 1
        assert shim.breaker_state() in ("open", "probe_due")
        if outage.daemon_up:
            # The unconfirmed writes' frames reach the daemon, which shows them at once.
            wait_for(lambda: _status(outage)["shim"]["clients"]["breakers_open"] == 1, 10, 0.05,
                     "the open breaker in /memory/status")
            assert _status(outage)["shim"]["clients"]["unconfirmed"] >= 1
        if outage.kind == "mongodb_killed":
            # The daemon knew: the sync frame was answered "not durable" (no timeout).
            assert _status(outage)["shim"]["frames"]["not_durable"] >= 1
        outage.end()

        def confirmed():
            before = shim.stats()["sync_ok"]
            try:
                (data_dir / "after.json").write_text('{"v": 9}')
            except OSError:
                return False
            return shim.stats()["sync_ok"] > before
        wait_for(confirmed, 60, 0.1, "a confirmed sync write after the outage")
        assert shim.breaker_state() == "closed"
        # What the outage cost reaches the sidecar with the frames after it.
        unconfirmed = shim.stats()["unconfirmed"]
        clients = _status(outage)["shim"]["clients"]
        assert clients["breakers_open"] == 0 and clients["unconfirmed"] == unconfirmed, clients
        assert [c["pid"] for c in clients["by_pid"]] == [os.getpid()]
        assert _metric(outage, "sidecar_shim_unconfirmed_writes") == unconfirmed
        assert _metric(outage, "sidecar_shim_breakers_open") == 0
        # The files written during the outage are mirrored all the same.
        outage.wait_parity(60)
    finally:
        shim.uninstall()


# --- the daemon's side of the report ---------------------------------------------------------
def test_shim_clients_keep_the_last_report_per_process_and_refuse_bad_ones():
    from sidecar.shimclients import ShimClients, parse_report

    now = [0.0]
    c = ShimClients(max_clients=2, ttl_s=60, clock=lambda: now[0])
    good = {"breaker": "open", "unconfirmed": 3, "sync_failed": 1, "breaker_opened": 1}
    c.heard(10, good, True)
    c.heard(11, None, False)  # never reported: not shown
    summary = c.summary()
    assert (summary["processes"], summary["breakers_open"], summary["unconfirmed"]) == (1, 1, 3)
    for bad in ({"breaker": "sideways", "unconfirmed": 1, "sync_failed": 0, "breaker_opened": 0},
                {**good, "unconfirmed": -1}, {**good, "unconfirmed": True}, {**good, "sync_failed": "2"},
                "open", None, [good]):
        assert parse_report(bad) is None
        c.heard(10, bad, True)  # ignored, counted; the last good report stays
    assert c.summary()["bad_reports"] == 7 and c.summary()["unconfirmed"] == 3
    c.confirmed(10)  # an ok reply to its sync frame: its breaker closes on it
    assert c.summary()["breakers_open"] == 0 and c.summary()["unconfirmed"] == 3
    c.heard(12, good, True)
    c.heard(13, good, True)  # bounded: the least recently heard goes
    assert sorted(e["pid"] for e in c.summary()["by_pid"]) == [12, 13]
    now[0] = 61.0  # silent for longer than the TTL: no longer counted
    assert c.summary()["processes"] == 0


def test_a_malformed_report_never_costs_the_write_it_rides_on(tmp_path):
    with ServerThread(tmp_path / "s.sock", RecordingHandler()) as srv:
        s = connect(tmp_path / "s.sock")
        try:
            s.sendall(frame(header(shim={"breaker": "open", "unconfirmed": "many"}), b"{}"))
            assert read_reply(s)["ok"] is True
            good = {"breaker": "open", "unconfirmed": 2, "sync_failed": 1, "breaker_opened": 1}
            s.sendall(frame(header(seq=2, shim=good), b"{}"))
            assert read_reply(s)["ok"] is True  # an ok sync reply: that breaker closes
        finally:
            s.close()
        report = srv.server.report()
        assert report["frames"]["bad_frames"] == 0 and report["frames"]["written"] == 2
        clients = report["clients"]
        assert clients["bad_reports"] == 1 and clients["unconfirmed"] == 2 and clients["breakers_open"] == 0
