"""Interception matrix of the shim, with a recording transport.

Most tests run on pyfakefs (the ``fs`` fixture): the shim is installed after
the fake file system is active and uninstalled before it ends, and patches the
fake modules the test code sees, so every call below goes through both. What
only means something on a real file system (identity of the restored
originals, CPython's own pathlib → io.open route, isinstance checks against
the real io classes) runs on ``tmp_path``.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import logging
import os
import pathlib
import sys
import threading

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import shim  # noqa: E402
from shim import _intercept  # noqa: E402
from shim_helpers import Recorder  # noqa: E402

DATA = "/app/data/system"


@pytest.fixture(autouse=True)
def _always_uninstalled():
    yield
    shim.uninstall()


@pytest.fixture
def fake(fs):
    """pyfakefs with the data dir; the shim is uninstalled before fs ends.

    The shim itself is installed in the test body (``start()``), not here:
    pyfakefs's pytest plugin pauses and resumes its patching around the
    setup report, which re-stubs ``builtins.open`` over anything a fixture
    installed on top of it.
    """
    fs.create_dir(DATA)
    fs.create_dir("/outside")
    os.chdir("/app")
    yield fs
    shim.uninstall()


def start(**kwargs) -> Recorder:
    recorder = kwargs.pop("transport", None) or Recorder()
    kwargs.setdefault("mode", "async")
    assert shim.install(transport=recorder, data_dir=DATA, **kwargs)
    return recorder


@pytest.fixture
def real(tmp_path, monkeypatch):
    """Real file system: (recorder, data dir) with the shim installed."""
    data = tmp_path / "data" / "system"
    data.mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    monkeypatch.chdir(tmp_path)
    recorder = Recorder()
    assert shim.install(transport=recorder, data_dir=str(data), mode="async")
    yield recorder, data
    shim.uninstall()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- open / io.open in every write mode ---------------------------------------

WRITE_MODES = [
    # (mode, pre-existing content, what to write, expected final bytes)
    ("w", None, "hé", "hé".encode()),
    ("wb", None, b"\x00\x01", b"\x00\x01"),
    ("a", b"x", "y", b"xy"),
    ("ab", b"x", b"y", b"xy"),
    ("x", None, "new", b"new"),
    ("xb", None, b"new", b"new"),
    ("w+", b"old", "n", b"n"),
    ("wb+", b"old", b"n", b"n"),
    ("a+", b"x", "y", b"xy"),
    ("r+", b"abc", "Z", b"Zbc"),
    ("rb+", b"abc", b"Z", b"Zbc"),
    ("wt", None, "t", b"t"),
]


@pytest.mark.parametrize("opener", ["builtins", "io"])
@pytest.mark.parametrize(("mode", "before", "payload", "expected"), WRITE_MODES)
def test_every_write_mode_inside_is_reported_once_with_final_bytes(fake, opener, mode, before, payload, expected):
    rec = start()
    path = f"{DATA}/f.bin"
    if before is not None:
        with open(path, "wb") as f:
            f.write(before)
        rec.events.clear()
    open_ = builtins.open if opener == "builtins" else io.open
    kwargs = {} if "b" in mode else {"encoding": "utf-8"}
    with open_(path, mode, **kwargs) as f:
        f.write(payload)
    assert rec.summary == [("write", "f.bin")]
    event = rec.events[0]
    assert event.data == expected
    assert event.sha256 == sha(expected)
    assert event.mtime_ns == os.stat(path).st_mtime_ns
    assert event.pid == os.getpid()


@pytest.mark.parametrize(("mode", "before", "payload", "expected"), WRITE_MODES)
def test_write_modes_outside_the_dir_are_untouched(fake, mode, before, payload, expected):
    rec = start()
    path = "/outside/f.bin"
    if before is not None:
        with open(path, "wb") as f:
            f.write(before)
    kwargs = {} if "b" in mode else {"encoding": "utf-8"}
    f = open(path, mode, **kwargs)
    assert not isinstance(f, _intercept.FileProxy)
    with f:
        f.write(payload)
    assert rec.events == []


@pytest.mark.parametrize("mode", ["r", "rb", "rt", "br"])
def test_reads_are_not_wrapped_nor_reported(fake, mode):
    rec = start()
    with open(f"{DATA}/r.txt", "w") as f:
        f.write("content")
    rec.events.clear()
    f = open(f"{DATA}/r.txt", mode)
    assert not isinstance(f, _intercept.FileProxy)
    f.read()
    f.close()
    assert pathlib.Path(f"{DATA}/r.txt").read_text() == "content"
    assert rec.events == []


def test_nested_dirs_give_posix_relative_paths(fake):
    rec = start()
    os.makedirs(f"{DATA}/a/b/c")
    with open(f"{DATA}/a/b/c/deep.json", "w") as f:
        f.write("{}")
    assert rec.summary == [("write", "a/b/c/deep.json")]


def test_relative_paths_follow_the_current_directory(fake):
    rec = start()
    with open("data/system/rel.json", "w") as f:  # cwd is /app
        f.write("1")
    os.chdir(DATA)
    with open("here.json", "w") as f:
        f.write("2")
    os.chdir("/outside")
    with open("../app/data/system/dots.json", "w") as f:
        f.write("3")
    with open("not-inside.json", "w") as f:
        f.write("4")
    assert rec.summary == [("write", "rel.json"), ("write", "here.json"), ("write", "dots.json")]


def test_pathlike_and_bytes_paths(fake):
    rec = start()
    class Custom:
        def __fspath__(self):
            return f"{DATA}/custom.json"

    class CustomBytes:
        def __fspath__(self):
            return f"{DATA}/custom-bytes.json".encode()

    for target in (Custom(), CustomBytes(), f"{DATA}/b.json".encode(), pathlib.Path(DATA) / "p.json"):
        with open(target, "w") as f:
            f.write("x")
    assert [p for _, p in rec.summary] == ["custom.json", "custom-bytes.json", "b.json", "p.json"]


def test_file_descriptor_is_passed_through(fake):
    rec = start()
    fd = os.open(f"{DATA}/fd.txt", os.O_WRONLY | os.O_CREAT, 0o644)
    f = open(fd, "w")
    assert not isinstance(f, _intercept.FileProxy)
    f.write("via fd")
    f.close()
    assert rec.events == []


def test_opener_argument_is_passed_through(fake):
    rec = start()
    # The opener decides what is opened (often relative to a dir_fd).
    with open(f"{DATA}/op.txt", "w", opener=lambda p, flags: os.open(p, flags, 0o644)) as f:
        f.write("x")
    assert rec.events == []


def test_escaping_and_odd_spellings(fake):
    rec = start()
    with open(f"{DATA}/../escaped.json", "w") as f:
        f.write("out")
    os.makedirs("/app/data/other")
    with open("/app/data/other/../system/back-in.json", "w") as f:
        f.write("in")
    with open(f"{DATA}//double.json", "w") as f:
        f.write("in")
    with open(f"{DATA}/./dot.json", "w") as f:
        f.write("in")
    assert [p for _, p in rec.summary] == ["back-in.json", "double.json", "dot.json"]


def test_symlinks_are_never_followed_out(fake):
    rec = start()
    with open("/outside/target.json", "w") as f:
        f.write("secret")
    os.symlink("/outside/target.json", f"{DATA}/link.json")
    os.symlink("/outside", f"{DATA}/linkdir")
    with open(f"{DATA}/link.json", "w") as f:  # final component is a symlink
        f.write("changed")
    with open(f"{DATA}/linkdir/x.json", "w") as f:  # parent resolves outside
        f.write("x")
    os.remove(f"{DATA}/link.json")  # removing the link itself: not a data file
    assert rec.events == []
    assert shim.stats()["skipped_symlinks"] >= 2


def test_symlinked_dir_inside_reports_the_resolved_path(fake):
    rec = start()
    os.makedirs(f"{DATA}/real")
    os.symlink(f"{DATA}/real", f"{DATA}/alias")
    with open(f"{DATA}/alias/x.json", "w") as f:
        f.write("x")
    assert rec.summary == [("write", "real/x.json")]


def test_the_data_dir_itself_and_missing_parents(fake):
    rec = start()
    with pytest.raises(IsADirectoryError):
        open(DATA, "w")
    with pytest.raises(FileNotFoundError):
        open(f"{DATA}/missing/x.json", "w")
    assert rec.events == []


# --- the file object ----------------------------------------------------------


def test_double_close_reports_once(fake):
    rec = start()
    f = open(f"{DATA}/twice.txt", "w")
    f.write("a")
    f.close()
    f.close()
    with open(f"{DATA}/ctx.txt", "w") as g:
        g.write("b")
    g.close()
    assert rec.summary == [("write", "twice.txt"), ("write", "ctx.txt")]


def test_proxy_behaves_like_the_file(fake):
    rec = start()
    with open(f"{DATA}/lines.txt", "w+") as f:
        assert f.writable() and f.readable() and f.seekable()
        f.writelines(["one\n", "two\n"])
        f.flush()
        f.seek(0)
        assert list(f) == ["one\n", "two\n"]
        f.seek(0)
        assert next(iter(f)) == "one\n"
        assert f.readline() == "two\n"
        f.seek(4)
        assert f.tell() == 4
        assert f.name == f"{DATA}/lines.txt"
        assert f.mode == "w+"
        assert not f.closed
    assert f.closed
    with pytest.raises(ValueError):
        f.write("after close")
    assert rec.events[0].data == b"one\ntwo\n"


def test_an_exception_in_the_with_block_still_closes_and_reports(fake):
    rec = start()
    with pytest.raises(KeyError):
        with open(f"{DATA}/partial.json", "w") as f:
            f.write("{")
            raise KeyError("boom")
    assert rec.summary == [("write", "partial.json")]
    assert rec.events[0].data == b"{"


def test_sequence_numbers_increase(fake):
    rec = start()
    for i in range(5):
        pathlib.Path(f"{DATA}/s{i}.json").write_text(str(i))
    seqs = [e.seq for e in rec.events]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5


# --- pathlib ----------------------------------------------------------------------


def test_pathlib_writes_are_reported_once(fake):
    rec = start()
    p = pathlib.Path(DATA) / "hub.json"
    p.write_text('{\n  "a": 1\n}', encoding="utf-8")
    p.write_bytes(b"[]")
    with p.open("a") as f:
        f.write(" ")
    with p.open() as f:  # read: nothing
        f.read()
    assert rec.summary == [("write", "hub.json")] * 3
    assert [e.data for e in rec.events] == [b'{\n  "a": 1\n}', b"[]", b"[] "]


def test_pathlib_unlink_rename_replace(fake):
    rec = start()
    a = pathlib.Path(DATA) / "a.json"
    a.write_text("a")
    b = a.rename(pathlib.Path(DATA) / "b.json")
    c = b.replace(pathlib.Path(DATA) / "c.json")
    c.unlink()
    pathlib.Path(DATA, "gone.json").unlink(missing_ok=True)
    assert rec.summary == [
        ("write", "a.json"),
        ("write", "b.json"),
        ("delete", "a.json"),
        ("write", "c.json"),
        ("delete", "b.json"),
        ("delete", "c.json"),
    ]


# --- os.replace / rename / remove --------------------------------------------------


@pytest.mark.parametrize("move", [os.replace, os.rename], ids=["replace", "rename"])
def test_atomic_writer_from_outside_reports_the_destination(fake, move):
    rec = start()
    with open("/outside/tmp123", "w") as f:
        f.write('{"final": true}')
    getattr(os, move.__name__)("/outside/tmp123", f"{DATA}/snapshot.json")
    assert rec.summary == [("write", "snapshot.json")]
    assert rec.events[0].data == b'{"final": true}'


def test_atomic_writer_inside_reports_the_destination_never_the_tmp(fake):
    # The temp file matches the built-in ignore globs (*.tmp): neither its write
    # nor its move away is reported; both are counted as ignored.
    rec = start()
    with open(f"{DATA}/.snapshot.json.tmp", "w") as f:
        f.write("v2")
    os.replace(f"{DATA}/.snapshot.json.tmp", f"{DATA}/snapshot.json")
    assert rec.summary == [("write", "snapshot.json")]
    assert rec.events[0].data == b"v2"
    assert shim.stats()["ignored"] == 2


def test_moving_out_of_the_dir_is_a_delete(fake):
    rec = start()
    with open(f"{DATA}/leaving.json", "w") as f:
        f.write("x")
    os.rename(f"{DATA}/leaving.json", "/outside/left.json")
    assert rec.summary == [("write", "leaving.json"), ("delete", "leaving.json")]


def test_renaming_a_directory_reports_nothing(fake):
    rec = start()
    os.makedirs(f"{DATA}/d1")
    os.rename(f"{DATA}/d1", f"{DATA}/d2")
    assert rec.events == []


@pytest.mark.parametrize("name", ["remove", "unlink"])
def test_remove_and_unlink_report_deletes(fake, name):
    rec = start()
    for target in (f"{DATA}/del.json", f"{DATA}/del.json".encode(), pathlib.Path(DATA, "del.json")):
        with open(f"{DATA}/del.json", "w") as f:
            f.write("x")
        getattr(os, name)(target)
    assert rec.summary == [("write", "del.json"), ("delete", "del.json")] * 3
    assert all(e.data is None and e.sha256 is None for e in rec.events if e.op == "delete")


def test_real_errors_are_unchanged(fake):
    rec = start()
    with pytest.raises(FileNotFoundError):
        os.remove(f"{DATA}/nope.json")
    with pytest.raises(FileNotFoundError):
        os.replace(f"{DATA}/nope.json", f"{DATA}/dst.json")
    with open(f"{DATA}/exists.json", "w") as f:
        f.write("x")
    with pytest.raises(FileExistsError):
        open(f"{DATA}/exists.json", "x")
    assert os.replace(f"{DATA}/exists.json", f"{DATA}/moved.json") is None
    assert rec.summary == [("write", "exists.json"), ("write", "moved.json"), ("delete", "exists.json")]


def test_outside_moves_and_deletes_are_untouched(fake):
    rec = start()
    with open("/outside/a", "w") as f:
        f.write("x")
    os.replace("/outside/a", "/outside/b")
    os.remove("/outside/b")
    assert rec.events == []


# --- failures inside the shim never break the API ----------------------------------


def test_transport_failure_in_async_mode_is_swallowed_and_counted(fake):
    start(transport=Recorder(fail=RuntimeError("boom")))
    pathlib.Path(DATA, "x.json").write_text("fine")
    assert pathlib.Path(DATA, "x.json").read_text() == "fine"
    assert shim.stats()["errors"] == 1


def test_read_back_failure_is_swallowed_in_async_mode(fake):
    rec = start()
    f = open(f"{DATA}/vanishing.json", "w")
    f.write("x")
    os.remove(f"{DATA}/vanishing.json")
    f.close()  # nothing to read back: no exception
    assert rec.summary == [("delete", "vanishing.json")]
    assert shim.stats()["errors"] == 1


def test_sync_failure_open_logs_once_without_contents(fake, caplog):
    start(transport=Recorder(fail=ConnectionRefusedError()), mode="sync", on_failure="open")
    with caplog.at_level(logging.WARNING, logger="mentorix_shim"):
        pathlib.Path(DATA, "a.json").write_text("TOP-SECRET-PAYLOAD")
        pathlib.Path(DATA, "b.json").write_text("TOP-SECRET-PAYLOAD")
    warnings = [r for r in caplog.records if r.name == "mentorix_shim"]
    assert len(warnings) == 1
    assert "TOP-SECRET-PAYLOAD" not in caplog.text
    assert (shim.stats()["sync_failed"], shim.stats()["unconfirmed"]) == (1, 1)  # the breaker opened


def test_sync_failure_closed_raises_eio(fake):
    start(transport=Recorder(fail=ConnectionRefusedError()), mode="sync", on_failure="closed")
    with pytest.raises(OSError) as info:
        pathlib.Path(DATA, "a.json").write_text("x")
    assert info.value.errno == errno.EIO
    assert "reached the disk but was not confirmed durable in MongoDB" in str(info.value)
    assert pathlib.Path(DATA, "a.json").read_text() == "x"  # the write itself happened
    with pytest.raises(OSError):
        os.remove(f"{DATA}/a.json")
    # An exception already leaving the with block is not replaced.
    with pytest.raises(KeyError):
        with open(f"{DATA}/b.json", "w") as f:
            raise KeyError("api error")


def test_sync_mode_delivers_on_the_callers_thread(fake):
    threads = []

    class ThreadRecorder(Recorder):
        def deliver(self, event, sync):
            threads.append(threading.current_thread())
            super().deliver(event, sync)

    recorder = start(transport=ThreadRecorder(), mode="sync")
    pathlib.Path(DATA, "a.json").write_text("x")
    assert recorder.sync_flags == [True]
    assert threads == [threading.current_thread()]
    assert shim.stats()["sync_ok"] == 1


# --- install / uninstall -------------------------------------------------------------


def _originals():
    return (
        builtins.open,
        io.open,
        os.replace,
        os.rename,
        os.remove,
        os.unlink,
        *(pathlib.Path.__dict__.get(n) for n in ("open", "write_text", "write_bytes", "unlink", "rename", "replace")),
    )


def test_uninstall_restores_the_originals_exactly(tmp_path):
    before = _originals()
    assert shim.install(transport=Recorder(), data_dir=str(tmp_path))
    assert builtins.open is not before[0] and os.replace is not before[2]
    assert shim.uninstall()
    after = _originals()
    assert all(a is b for a, b in zip(before, after))
    assert not shim.uninstall()  # second time: nothing to do


def test_install_twice_is_idempotent(real):
    recorder, data = real
    patched = _originals()
    assert shim.install(transport=Recorder(), data_dir="/elsewhere")
    assert all(a is b for a, b in zip(patched, _originals()))
    (data / "once.json").write_text("x")
    assert recorder.summary == [("write", "once.json")]


def test_a_second_copy_of_the_package_does_not_patch_again(real, monkeypatch):
    # e.g. sitecustomize loaded the shim under another name and the app
    # later calls shim.install() on a plain import.
    patched = _originals()
    monkeypatch.setattr(shim, "_shim", None)
    assert shim.install(transport=Recorder())
    assert all(a is b for a, b in zip(patched, _originals()))
    monkeypatch.undo()


def test_mode_off_installs_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("SIDECAR_SHIM", "off")
    before = _originals()
    assert shim.install(transport=Recorder(), data_dir=str(tmp_path)) is False
    assert not shim.is_installed()
    assert all(a is b for a, b in zip(before, _originals()))


def test_config_from_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "system").mkdir(parents=True)
    monkeypatch.delenv("RUNTIME_DATA_DIR", raising=False)
    monkeypatch.delenv("SIDECAR_SOCKET", raising=False)
    monkeypatch.setenv("SIDECAR_SHIM", "sync")
    monkeypatch.setenv("SIDECAR_SHIM_ON_FAILURE", "closed")
    monkeypatch.setenv("SIDECAR_SHIM_TIMEOUT_MS", "250")
    monkeypatch.setenv("SIDECAR_SHIM_QUEUE", "7")
    assert shim.install(transport=Recorder())
    cfg = shim.config()
    real_dir = os.path.realpath(tmp_path / "data" / "system")
    assert (cfg.mode, cfg.on_failure, cfg.timeout_s, cfg.queue_size) == ("sync", "closed", 0.25, 7)
    assert cfg.data_dir == real_dir
    assert cfg.socket_path == str(tmp_path / "data" / ".memory-sidecar.sock")
    shim.uninstall()
    monkeypatch.setenv("RUNTIME_DATA_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("SIDECAR_SOCKET", str(tmp_path / "s.sock"))
    monkeypatch.setenv("SIDECAR_SHIM_TIMEOUT_MS", "not a number")
    shim.install(transport=Recorder(), mode="async")
    cfg = shim.config()
    assert cfg.data_dir.endswith("elsewhere") and cfg.socket_path == str(tmp_path / "s.sock")
    assert cfg.timeout_s == 5.0  # bad env value: default, with a warning


def test_bad_keyword_arguments_are_programming_errors():
    with pytest.raises(ValueError):
        shim.install(transport=Recorder(), mode="fast")
    with pytest.raises(ValueError):
        shim.install(transport=Recorder(), data_dir="/")
    assert not shim.is_installed()


# --- real file system: what pyfakefs cannot show ------------------------------------


def test_real_fs_pathlib_goes_through_io_open_once(real):
    recorder, data = real
    (data / "hub.json").write_text('{\n  "k": 1\n}', encoding="utf-8")
    (data / "bin").write_bytes(b"\x00")
    assert recorder.summary == [("write", "hub.json"), ("write", "bin")]
    assert recorder.events[0].mtime_ns == (data / "hub.json").stat().st_mtime_ns


def test_real_fs_proxies_keep_io_isinstance(real):
    recorder, data = real
    with open(data / "t.txt", "w") as t, open(data / "b.bin", "wb") as b, open(data / "r.bin", "wb", buffering=0) as r:
        assert isinstance(t, io.TextIOBase) and isinstance(b, io.BufferedIOBase) and isinstance(r, io.RawIOBase)
        assert isinstance(t, io.IOBase)
        t.buffer.write(b"raw")
    assert sorted(p for _, p in recorder.summary) == ["b.bin", "r.bin", "t.txt"]


# utf-8: the call's own bytes are reported (no read-back); None: the locale's
# encoding is not assumed, the file is read back.
@pytest.mark.parametrize("encoding", [None, "utf-8"])
def test_real_fs_symlink_out_of_the_dir(real, tmp_path, encoding):
    recorder, data = real
    secret = tmp_path / "outside" / "secret.json"
    secret.write_text("secret")
    (data / "link.json").symlink_to(secret)
    (data / "dirlink").symlink_to(tmp_path / "outside")
    (data / "link.json").write_text("overwritten through the link", encoding=encoding)
    (data / "dirlink" / "new.json").write_text("x", encoding=encoding)
    (data / "dirlink" / "new.bin").write_bytes(b"x")
    os.replace(tmp_path / "outside" / "new.json", data / "dirlink" / "moved.json")
    assert recorder.events == []
    assert shim.stats()["skipped_symlinks"] >= 1


@pytest.mark.parametrize("encoding", [None, "utf-8"])
def test_real_fs_symlinked_dir_inside_reports_the_resolved_path(real, encoding):
    recorder, data = real
    (data / "real").mkdir()
    (data / "alias").symlink_to(data / "real")
    (data / "alias" / "x.json").write_text("x", encoding=encoding)
    assert [(e.path, e.data) for e in recorder.events] == [("real/x.json", b"x")]


@pytest.fixture
def read_backs(real, monkeypatch):
    """Paths the shim read back (instead of reporting the call's own bytes)."""
    seen = []
    orig = shim._shim.dir.read_back

    def spy(path):
        seen.append(os.path.basename(path))
        return orig(path)

    monkeypatch.setattr(shim._shim.dir, "read_back", spy)
    return seen


WRITE_CALLS = [
    # (name, call, bytes on disk, read back?)
    ("utf8.json", lambda p: p.write_text("é\n", encoding="utf-8"), "é\n".encode(), False),
    ("UTF8.json", lambda p: p.write_text("é", "UTF8"), "é".encode(), False),
    ("latin.json", lambda p: p.write_text("é", encoding="latin-1", errors="strict"), b"\xe9", False),
    ("ascii.json", lambda p: p.write_text("a\n", encoding="ascii", newline="\n"), b"a\n", False),
    ("bytes.bin", lambda p: p.write_bytes(b"\x00\x01"), b"\x00\x01", False),
    ("locale.json", lambda p: p.write_text("a"), b"a", True),
    ("sig.json", lambda p: p.write_text("a", encoding="utf-8-sig"), b"\xef\xbb\xbfa", True),
    ("utf16.json", lambda p: p.write_text("a", encoding="utf-16"), "a".encode("utf-16"), True),
    ("crlf.json", lambda p: p.write_text("a\nb", encoding="utf-8", newline="\r\n"), b"a\r\nb", True),
    ("replace.json", lambda p: p.write_text("é", encoding="ascii", errors="replace"), b"?", True),
    ("view.bin", lambda p: p.write_bytes(memoryview(b"mv")), b"mv", True),
]


@pytest.mark.parametrize(("name", "call", "expected", "read_back"), WRITE_CALLS, ids=[c[0] for c in WRITE_CALLS])
def test_real_fs_write_text_and_bytes_report_the_calls_own_bytes(real, read_backs, name, call, expected, read_back):
    # Reading the file back is most of what a report costs the API thread:
    # when the bytes of the call are known for sure they are sent instead
    # (the daemon checks every async body against the file anyway).
    recorder, data = real
    call(data / name)
    assert (data / name).read_bytes() == expected
    assert [(e.path, e.data) for e in recorder.events] == [(name, expected)]
    assert recorder.events[0].mtime_ns == (data / name).stat().st_mtime_ns
    assert read_backs == ([name] if read_back else [])


SPELLINGS = ["a.json", "sub/b.json", "sub/deeper/c.json", "sub/../d.json", ".hidden.json", "sub/.h.json",
             "sub/x/../../e.json"]


@pytest.mark.parametrize("rel", SPELLINGS)
def test_real_fs_the_short_route_and_plain_rel_agree(real, rel):
    # The short write_text route spells DataDir.plain_rel inline (measured: a
    # Python call per write is paid cold on an idle API). Both must agree: the
    # short route is taken exactly for the spellings plain_rel accepts.
    recorder, data = real
    for d in ("sub/deeper", "sub/x"):
        (data / d).mkdir(parents=True, exist_ok=True)
    path = pathlib.Path(str(data), *rel.split("/"))
    before = getattr(_intercept._tls, "n", 0)
    path.write_text("v", encoding="utf-8")
    short = getattr(_intercept._tls, "n", 0) == before
    assert short is (shim._shim.dir.plain_rel(str(path)) is not None)
    assert [(e.path, e.data) for e in recorder.events] == [(os.path.normpath(rel), b"v")]


def test_real_fs_write_text_short_route_only_for_cpythons_own_pathlib(real, monkeypatch):
    # The Mentorix write (write_text with an explicit utf-8) opens the file
    # with io.open's original itself: our io.open wrapper (which counts write
    # opens per thread) is not involved. Anything else takes the general route.
    recorder, data = real

    def opens():
        return getattr(_intercept._tls, "n", 0)

    before = opens()
    (data / "short.json").write_text('{"a": 1}', encoding="utf-8")
    (data / "short.bin").write_bytes(b"b")
    pathlib.Path("data/system/rel.json").write_text("r", encoding="utf-8")  # relative to the cwd
    (data / "x").mkdir()
    pathlib.Path(str(data), "x", "..", "odd.json").write_text("o", encoding="utf-8")  # resolved by the general route
    assert opens() == before + 1
    before = opens()
    (data / "general.json").write_text("x")  # locale encoding: read back
    assert opens() == before + 1
    outside = data.parent.parent / "outside"
    (outside / "o.json").write_text("o", encoding="utf-8")  # outside: only written
    (outside / "o.bin").write_bytes(b"o")
    assert opens() == before + 1
    assert (outside / "o.json").read_text() == "o" and (outside / "o.bin").read_bytes() == b"o"

    class Custom(type(data)):
        def open(self, *args, **kwargs):  # a subclass's own open is honoured
            opened.append(self.name)
            return super().open(*args, **kwargs)

    opened = []
    Custom(data / "custom.json").write_text("c", encoding="utf-8")
    assert opened == ["custom.json"]

    seen = []
    inner = io.open

    def outer_wrapper(*args, **kwargs):  # somebody patched io.open after us
        seen.append(1)
        return inner(*args, **kwargs)

    monkeypatch.setattr(io, "open", outer_wrapper)
    (data / "wrapped.json").write_text("w", encoding="utf-8")
    assert seen == [1]
    assert recorder.summary == [("write", n) for n in ("short.json", "short.bin", "rel.json", "odd.json",
                                                       "general.json", "custom.json", "wrapped.json")]
    assert [e.data for e in recorder.events] == [b'{"a": 1}', b"b", b"r", b"o", b"x", b"c", b"w"]


@pytest.mark.parametrize("installed", [False, True])
def test_real_fs_failing_writes_fail_as_without_the_shim(tmp_path, installed):
    data = tmp_path / "data"
    data.mkdir()
    recorder = Recorder()
    if installed:
        shim.install(transport=recorder, data_dir=str(data), mode="async")
    with pytest.raises(FileNotFoundError):
        (data / "missing" / "x.json").write_text("x", encoding="utf-8")
    with pytest.raises(TypeError):
        (data / "t.json").write_text(b"bytes", encoding="utf-8")
    with pytest.raises(TypeError):
        (data / "b.bin").write_bytes("text")
    (data / "e.json").write_text("old", encoding="ascii")
    with pytest.raises(UnicodeEncodeError):
        (data / "e.json").write_text("é", encoding="ascii")
    assert (data / "e.json").read_bytes() == b""  # opened, so truncated, then the encode failed
    assert not (data / "t.json").exists() and not (data / "b.bin").exists()
    if installed:
        # the truncation is reported like any write that reached the disk
        assert [(e.path, e.data) for e in recorder.events] == [("e.json", b"old"), ("e.json", b"")]


def test_real_fs_a_bytearray_changed_after_the_call_is_reported_as_written(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    held = []

    class Holding(Recorder):  # the sender has not run yet
        def deliver(self, event, sync):
            held.append(event)

    shim.install(transport=Holding(), data_dir=str(data), mode="async")
    buf = bytearray(b"first")
    (data / "b.bin").write_bytes(buf)
    buf[:] = b"FIRST"
    assert held[0].settle() and held[0].data == b"first"


def test_real_fs_a_write_overwritten_before_the_sender_looks_is_not_sent(tmp_path):
    data = tmp_path / "data"
    (data / "hubs").mkdir(parents=True)
    held = []

    class Holding(Recorder):
        def deliver(self, event, sync):
            held.append(event)

    shim.install(transport=Holding(), data_dir=str(data), mode="async")
    (data / "hubs" / "a.json").write_text("one", encoding="utf-8")
    (data / "hubs" / "b.json").write_text("two", encoding="utf-8")
    with open(data / "hubs" / "a.json", "w") as f:  # another write, not via pathlib, longer
        f.write("one, then more")
    os.remove(data / "hubs" / "b.json")
    first, second = held[0], held[1]
    assert not first.settle() and not second.settle()
    assert shim.stats()["superseded"] == 2 and shim.stats()["writes"] == 1  # the open() write's own event
    assert held[2].settle() and held[2].data == b"one, then more"


def test_real_fs_data_dir_reached_through_a_symlink(tmp_path):
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    (tmp_path / "alias").symlink_to(real_dir)
    recorder = Recorder()
    shim.install(transport=recorder, data_dir=str(tmp_path / "alias"))
    (tmp_path / "alias" / "a.json").write_text("1")  # configured spelling
    (real_dir / "b.json").write_text("2")  # resolved spelling
    assert recorder.summary == [("write", "a.json"), ("write", "b.json")]


def test_real_fs_unclosed_file_is_reported_when_collected(real):
    recorder, data = real
    f = open(data / "leaked.txt", "w")
    f.write("x")
    del f  # CPython: collected here, closing the file like the original would
    assert recorder.summary == [("write", "leaked.txt")]


def test_real_fs_shutil_copy_and_move(real, tmp_path):
    import shutil

    recorder, data = real
    src = tmp_path / "outside" / "src.json"
    src.write_text("copied")
    shutil.copyfile(src, data / "copy.json")
    shutil.move(str(data / "copy.json"), str(data / "moved.json"))
    assert recorder.summary == [("write", "copy.json"), ("write", "moved.json"), ("delete", "copy.json")]
    assert recorder.events[0].data == b"copied"


def test_real_fs_threads_each_report(real):
    recorder, data = real

    def work(i):
        for j in range(20):
            (data / f"t{i}-{j}.json").write_text(str(j))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(recorder.events) == 80
    assert len({e.seq for e in recorder.events}) == 80
