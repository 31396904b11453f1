"""Sync-mode shim during an outage (issue 16): the daemon answers "not durable" at
once when it knows MongoDB cannot acknowledge, and the shim's circuit breaker stops
every later write from waiting until a probe shows the sidecar can confirm again.
Asserted by counts and states, never by timings."""

from __future__ import annotations

import errno

import pytest

import shim
from conftest import wait_for
from daemon_fixtures import daemon_config, running  # noqa: F401
from shim._breaker import CLOSED, HALF_OPEN, OPEN, Breaker


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


@pytest.mark.integration
@pytest.mark.parametrize("policy", ["open", "closed"])
def test_mongodb_down_sync_writes_fail_fast_then_recover(data_dir, running, restartable_server, policy):
    d = running()
    server = restartable_server
    try:
        assert shim.install(mode="sync", data_dir=str(data_dir), socket_path=str(d.config.socket_path),
                            on_failure=policy, breaker_ms=300, timeout_ms=30_000)
        (data_dir / "before.json").write_text('{"v": 0}')
        assert shim.stats()["sync_ok"] == 1
        server.stop(kill=True)
        wait_for(lambda: not d.daemon.status.mongo_connected, 30, what="the daemon to know MongoDB is down")
        raised = 0
        for i in range(5):
            try:
                (data_dir / f"during{i}.json").write_text('{"v": %d}' % i)
            except OSError as exc:
                assert exc.errno == errno.EIO and policy == "closed"
                raised += 1
        stats = shim.stats()
        # The first write was answered "not durable" at once (a 30 s timeout would
        # have failed this test's bounds); the breaker opened, the others did not wait.
        assert stats["sync_failed"] >= 1 and stats["breaker_opened"] >= 1
        assert stats["sync_failed"] + stats["unconfirmed"] == 5, stats
        assert raised == (5 if policy == "closed" else 0)
        assert d.daemon.status.shim_events.labels(status="not_durable")._value.get() >= 1
    finally:
        if server.proc is None:
            server.start()
    wait_for(lambda: d.daemon.status.mongo_connected, 30, what="MongoDB back")
    # Once the breaker's probe succeeds, sync writes are confirmed again.
    def confirmed():
        before = shim.stats()["sync_ok"]
        try:
            (data_dir / "after.json").write_text('{"v": 9}')
        except OSError:
            return False
        return shim.stats()["sync_ok"] > before
    try:
        wait_for(confirmed, 30, 0.1, "a confirmed sync write after the outage")
        assert shim.breaker_state() == "closed"
        d.wait_parity(30)  # the unconfirmed files were mirrored all the same
    finally:
        shim.uninstall()
