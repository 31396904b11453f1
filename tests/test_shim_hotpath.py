"""The shim's cheaper hot path keeps its promises (real file system).

What changed for speed, and what these tests hold it to:

* ``Path.write_text`` / ``write_bytes`` report after the call instead of
  through a file proxy; exactly once, with the final bytes, also when the
  write fails half-way (and never when it fails before the file is opened).
  In sync mode with ``closed``, a failed confirmation still raises from the
  call, and the API's own exception is never replaced.
* CPython's ``Path.open`` is left unpatched (it is ``io.open``, which is).
* The read-back walks the directories below the data dir with O_NOFOLLOW
  instead of asking /proc; symlinked directories, inside or out, go the old
  way and give the old answers.
* The async queue is a deque with a wake-up only after an idle spell: events
  after a pause, from many threads, and around ``flush``/``uninstall`` all
  arrive, in order per thread.
* The cached pid follows ``fork``.
"""

from __future__ import annotations

import errno
import os
import signal
import pathlib
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import shim  # noqa: E402
from shim import _intercept, _transport  # noqa: E402
from shim_helpers import WAIT, Recorder, RecordingHandler, ServerThread, wait_until  # noqa: E402


@pytest.fixture(autouse=True)
def _always_uninstalled():
    yield
    shim.uninstall()


@pytest.fixture
def real(tmp_path, monkeypatch):
    data = tmp_path / "data" / "system"
    data.mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    monkeypatch.chdir(tmp_path)
    recorder = Recorder()
    assert shim.install(transport=recorder, data_dir=str(data), mode="async")
    return recorder, data


# --- pathlib writes: reported after the call, once ---------------------------------


def test_write_text_and_write_bytes_report_once_with_final_bytes(real):
    recorder, data = real
    (data / "hubs").mkdir()
    (data / "hubs" / "a.json").write_text('{\n  "k": "é"\n}', encoding="utf-8")
    (data / "hubs" / "a.json").write_bytes(b"[]")
    (data / "top.json").write_text("{}")
    assert [(e.op, e.path, e.data) for e in recorder.events] == [
        ("write", "hubs/a.json", '{\n  "k": "é"\n}'.encode()),
        ("write", "hubs/a.json", b"[]"),
        ("write", "top.json", b"{}"),
    ]
    assert recorder.events[-1].mtime_ns == (data / "top.json").stat().st_mtime_ns


def test_write_text_failing_after_open_reports_what_is_on_disk(real):
    recorder, data = real
    target = data / "half.json"
    target.write_text("old")
    with pytest.raises(UnicodeEncodeError):
        target.write_text("\udc80", encoding="utf-8")  # opened (truncated), then fails
    assert [(e.path, e.data) for e in recorder.events] == [("half.json", b"old"), ("half.json", b"")]


def test_write_text_failing_before_open_reports_nothing(real):
    recorder, data = real
    with pytest.raises(TypeError):
        (data / "never.json").write_text(b"bytes, not str")  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        (data / "missing" / "x.json").write_text("x")
    assert recorder.events == []
    assert not (data / "never.json").exists()


def test_sync_closed_raises_from_write_text_but_never_hides_the_apis_own_error(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    recorder = Recorder(fail=_transport.DeliveryError("sidecar unavailable"))
    assert shim.install(transport=recorder, data_dir=str(data), mode="sync", on_failure="closed")
    with pytest.raises(OSError) as raised:
        (data / "x.json").write_text("x")
    assert raised.value.errno == errno.EIO
    assert (data / "x.json").read_text() == "x"  # the write itself happened
    with pytest.raises(UnicodeEncodeError):  # not replaced by the EIO
        (data / "y.json").write_text("\udc80", encoding="utf-8")


def test_nested_write_text_calls_each_report_once(real):
    # A Path subclass whose open() journals through write_text first: a
    # write_text inside write_text. Each must be reported once, after its call.
    recorder, data = real

    class Journaled(type(pathlib.Path())):  # the concrete class (PosixPath)
        def open(self, mode="r", *args, **kwargs):
            if "w" in mode and self.suffix != ".journal":
                self.with_suffix(".journal").write_text(f"opening {self.name}")
            return super().open(mode, *args, **kwargs)

    Journaled(data / "j.json").write_text("1")
    assert [(e.path, e.data) for e in recorder.events] == [("j.journal", b"opening j.json"), ("j.json", b"1")]


def test_other_files_opened_during_write_text_are_reported_on_their_own(real, tmp_path):
    # Only the Path being written is passed through; any other file opened
    # meanwhile (here by a subclass's open()) goes the usual way.
    recorder, data = real

    class Logged(type(pathlib.Path())):
        def open(self, mode="r", *args, **kwargs):
            if "w" in mode:
                with open(data / "audit.log", "a") as log:  # inside: proxied, reported at close
                    log.write(f"{self.name}\n")
                with open(tmp_path / "outside" / "audit.log", "a") as log:  # outside: untouched
                    log.write(f"{self.name}\n")
            return super().open(mode, *args, **kwargs)

    Logged(data / "in.json").write_text("1")
    Logged(tmp_path / "outside" / "out.json").write_text("2")
    assert [(e.path, e.data) for e in recorder.events] == [
        ("audit.log", b"in.json\n"),
        ("in.json", b"1"),
        ("audit.log", b"in.json\nout.json\n"),
    ]


def test_path_open_is_left_to_io_open_and_still_reported(real):
    recorder, data = real
    assert not getattr(pathlib.Path.open, _intercept.MARK, False)
    with (data / "p.json").open("w") as f:
        f.write("via Path.open")
    with (data / "p.json").open() as f:  # a read: nothing
        assert f.read() == "via Path.open"
    assert [(e.path, e.data) for e in recorder.events] == [("p.json", b"via Path.open")]


def test_a_non_io_path_open_still_gets_the_pathlib_wrapper():
    def open_elsewhere(self, mode="r"):  # does not go through io.open
        return None

    assert not _intercept._calls(open_elsewhere, "io", _intercept.io, "open")
    assert _intercept._calls(pathlib.Path.open, "io", _intercept.io, "open")
    assert not _intercept._calls(len, "io", _intercept.io, "open")


# --- read-back without /proc: same answers ------------------------------------------


def test_deep_paths_and_odd_spellings_inside(real):
    recorder, data = real
    (data / "a" / "b" / "c").mkdir(parents=True)
    (data / "a" / "b" / "c" / "deep.json").write_text("d")
    with open(f"{data}/a//b/./c/odd.json", "w") as f:
        f.write("o")
    pathlib.Path("data/system/a/rel.json").write_text("r")  # relative to the cwd
    assert [(e.path, e.data) for e in recorder.events] == [
        ("a/b/c/deep.json", b"d"),
        ("a/b/c/odd.json", b"o"),
        ("a/rel.json", b"r"),
    ]


def test_symlinked_dirs_inside_resolve_and_outside_are_refused(real, tmp_path):
    recorder, data = real
    (data / "real" / "sub").mkdir(parents=True)
    (data / "alias").symlink_to(data / "real")
    (data / "real" / "deeplink").symlink_to(tmp_path / "outside")
    (data / "alias" / "x.json").write_text("x")  # first level is a symlink, inside
    (data / "real" / "sub" / "y.json").write_text("y")  # no symlink: the fast walk
    (data / "real" / "deeplink" / "z.json").write_text("z")  # second level leads out
    assert [(e.path, e.data) for e in recorder.events] == [("real/x.json", b"x"), ("real/sub/y.json", b"y")]
    assert (tmp_path / "outside" / "z.json").read_text() == "z"


def test_symlinked_final_component_is_skipped_at_any_depth(real, tmp_path):
    recorder, data = real
    secret = tmp_path / "outside" / "secret.json"
    secret.write_text("secret")
    (data / "d").mkdir()
    (data / "d" / "link.json").symlink_to(secret)
    (data / "top-link.json").symlink_to(secret)
    (data / "d" / "link.json").write_text("through the link")
    (data / "top-link.json").write_text("through the link")
    assert recorder.events == []
    assert shim.stats()["skipped_symlinks"] == 2


def test_configured_spelling_through_a_symlink_uses_the_fast_walk(tmp_path):
    real_dir = tmp_path / "real"
    (real_dir / "hubs").mkdir(parents=True)
    (tmp_path / "alias").symlink_to(real_dir)
    recorder = Recorder()
    assert shim.install(transport=recorder, data_dir=str(tmp_path / "alias"))
    (tmp_path / "alias" / "hubs" / "a.json").write_text("1")
    (real_dir / "hubs" / "b.json").write_text("2")
    assert recorder.summary == [("write", "hubs/a.json"), ("write", "hubs/b.json")]


# --- the async queue ------------------------------------------------------------------


@pytest.fixture
def server(tmp_path):
    import tempfile

    sockdir = tempfile.mkdtemp(prefix="shim-", dir="/tmp")
    path = os.path.join(sockdir, "s.sock")
    handler = RecordingHandler()
    srv = ServerThread(path, handler).start()
    yield path, handler
    shim.uninstall()
    srv.close()
    os.rmdir(sockdir) if not os.listdir(sockdir) else None


@pytest.mark.parametrize("keep_warm", [0.0, 0.01])
def test_events_after_an_idle_spell_wake_the_sender(tmp_path, server, monkeypatch, keep_warm):
    path, handler = server
    monkeypatch.setattr(_transport, "KEEP_WARM_S", keep_warm)
    data = tmp_path / "data"
    data.mkdir()
    assert shim.install(mode="async", data_dir=str(data), socket_path=path)
    for i in range(3):
        (data / f"f{i}.json").write_text(str(i))
        # Long enough for the sender to stop polling and block: the next event
        # must wake it (no flush() in between, which would only wait).
        wait_until(lambda: len(handler.events) == i + 1, what=f"event {i}")
        time.sleep(keep_warm + 0.05)
    assert [e.path for e in handler.events] == ["f0.json", "f1.json", "f2.json"]


def test_names_needing_json_escapes_arrive_intact(tmp_path, server):
    path, handler = server
    data = tmp_path / "data"
    (data / "dïr").mkdir(parents=True)
    assert shim.install(mode="async", data_dir=str(data), socket_path=path)
    names = ['dïr/é "quoted" \\ back.json', "dïr/tab\tand\u2028.json", "日本.json"]
    for name in names:
        (data / name).write_text(name)
    events = handler.wait_for(len(names))
    assert [(e.path, e.data) for e in events] == [(n, n.encode()) for n in names]


def test_steady_traffic_is_picked_up_by_polling(tmp_path, server, monkeypatch):
    # Writes a few ms apart: the sender polls instead of waiting to be woken,
    # and the API thread wakes it (almost) never. Everything still arrives.
    path, handler = server
    monkeypatch.setattr(_transport, "KEEP_WARM_S", 0.05)
    data = tmp_path / "data"
    data.mkdir()
    assert shim.install(mode="async", data_dir=str(data), socket_path=path)
    transport = shim._shim.transport
    releases = []
    real_signal = transport._signal
    monkeypatch.setattr(transport, "_signal", lambda: (releases.append(1), real_signal()))
    for i in range(40):
        (data / "steady.json").write_text(str(i))
        time.sleep(0.003)
    events = handler.wait_for(40)
    assert [e.data for e in events] == [str(i).encode() for i in range(40)]
    assert len(releases) < 10  # the first event, and a few after a slow send


def test_many_threads_lose_nothing_and_keep_their_order(tmp_path, server):
    path, handler = server
    data = tmp_path / "data"
    data.mkdir()
    assert shim.install(mode="async", data_dir=str(data), socket_path=path, queue_size=10_000)

    def work(t):
        for j in range(150):
            # One file per write: rewrites of one file may coalesce in the
            # sender (test_shim_transport.py), these must all arrive.
            (data / f"t{t}-{j}.json").write_text(f"{t}-{j}")
            if j % 50 == 0:
                time.sleep(0.03)  # let the sender go idle now and then

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert shim.flush(WAIT)
    events = handler.wait_for(600)
    stats = shim.stats()
    assert stats["sent"] == 600 and stats["dropped_queue_full"] == stats["errors"] == 0
    for t in range(4):
        mine = [e for e in events if e.path.startswith(f"t{t}-")]
        assert [e.data.decode() for e in mine] == [f"{t}-{j}" for j in range(150)]
        assert [e.path for e in mine] == [f"t{t}-{j}.json" for j in range(150)]
        seqs = [e.seq for e in mine]
        assert seqs == sorted(seqs)
    assert len({e.seq for e in events}) == 600


def test_flush_waits_for_the_batch_in_flight_and_uninstall_drains(tmp_path, server):
    path, handler = server
    data = tmp_path / "data"
    data.mkdir()
    assert shim.install(mode="async", data_dir=str(data), socket_path=path)
    for i in range(50):
        (data / f"x{i}.json").write_text("x" * 1000)
    assert shim.flush(WAIT)
    assert shim.stats()["sent"] == 50
    for i in range(20):
        (data / f"y{i}.json").write_text("y")
    assert shim.uninstall(timeout=WAIT)  # no flush: uninstall drains the queue first
    handler.wait_for(70)
    assert shim.stats()["sent"] == 70


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_the_cached_pid_follows_fork(real):
    recorder, data = real
    (data / "parent.json").write_text("p")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            (data / "child.json").write_text("c")
            os.write(write, str(recorder.events[-1].pid).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert int(os.read(read, 64)) == pid
    os.close(read)
    assert recorder.events[-1].pid == os.getpid()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_breaker_lock_held_at_fork_does_not_hang_the_child(real):
    """A pre-fork server forks while another thread is inside the breaker: the
    child gets a fresh lock (shim/__init__.py's at-fork hook), not a held one."""
    breaker = shim._shim.breaker
    breaker._lock.acquire()  # what another thread of the parent holds at fork()
    try:
        pid = os.fork()
        if pid == 0:
            signal.alarm(10)  # a hang ends the child (non-zero), never the test run
            code = 1
            try:
                breaker.failure()
                code = 0 if breaker.view() in ("open", "probe_due") else 2
            finally:
                os._exit(code)
    finally:
        breaker._lock.release()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
