"""The file object a write-mode ``open()`` inside the data dir hands back.

Standard library only. A thin proxy: everything is delegated to the real file
(the hot methods explicitly), and the write is reported once, at close (or at
``__exit__``, or when the proxy is collected unclosed). ``Path.write_text`` /
``write_bytes`` never get one (they report after the call: ``_intercept.py``).
The subclasses keep ``isinstance(f, io.TextIOBase)`` etc. true for code that
checks.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ._report import Reporter


class FileProxy:
    """Delegates everything to the real file object; reports once at close."""

    __slots__ = ("_shim_f", "_shim_path", "_shim_owner", "_shim_done", "__weakref__")

    def __init__(self, f: Any, path: str, owner: "Reporter") -> None:
        object.__setattr__(self, "_shim_f", f)
        object.__setattr__(self, "_shim_path", path)
        object.__setattr__(self, "_shim_owner", owner)
        object.__setattr__(self, "_shim_done", False)

    # -- the hook ------------------------------------------------------------
    def _shim_finish(self, suppress: bool) -> None:
        if self._shim_done:
            return
        object.__setattr__(self, "_shim_done", True)
        self._shim_owner.report_write(self._shim_path, suppress=suppress)

    def close(self) -> None:
        try:
            self._shim_f.close()
        except BaseException:
            # The API sees the close failure itself; what reached the disk is
            # the watcher's business, not something to confirm.
            object.__setattr__(self, "_shim_done", True)
            raise
        self._shim_finish(False)

    def __enter__(self) -> "FileProxy":
        self._shim_f.__enter__()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Any:
        try:
            result = self._shim_f.__exit__(exc_type, exc, tb)
        except BaseException:
            object.__setattr__(self, "_shim_done", True)
            raise
        # With an exception already on its way out, do not replace it by a
        # "not durable" error: the API is failing anyway.
        self._shim_finish(exc_type is not None)
        return result

    def __del__(self) -> None:
        try:
            if not self._shim_done:
                self._shim_f.close()
                self._shim_finish(True)
        except BaseException:
            pass

    # -- plain delegation (explicit for the hot methods) ---------------------
    def write(self, data: Any) -> Any:
        return self._shim_f.write(data)

    def writelines(self, lines: Any) -> None:
        return self._shim_f.writelines(lines)

    def flush(self) -> None:
        return self._shim_f.flush()

    def read(self, *args: Any) -> Any:
        return self._shim_f.read(*args)

    def readline(self, *args: Any) -> Any:
        return self._shim_f.readline(*args)

    def readlines(self, *args: Any) -> Any:
        return self._shim_f.readlines(*args)

    def seek(self, *args: Any) -> int:
        return self._shim_f.seek(*args)

    def tell(self) -> int:
        return self._shim_f.tell()

    def truncate(self, *args: Any) -> int:
        return self._shim_f.truncate(*args)

    def fileno(self) -> int:
        return self._shim_f.fileno()

    def __iter__(self) -> "FileProxy":
        iter(self._shim_f)  # raises on a closed file, like the original
        return self

    def __next__(self) -> Any:
        return next(self._shim_f)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._shim_f, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._shim_f, name, value)

    def __delattr__(self, name: str) -> None:
        delattr(self._shim_f, name)

    def __repr__(self) -> str:
        return repr(self._shim_f)

    def __dir__(self) -> list[str]:
        return dir(self._shim_f)


# isinstance(f, io.TextIOBase) etc. keep working for code that checks.
class TextFileProxy(FileProxy):
    __slots__ = ()


class BufferedFileProxy(FileProxy):
    __slots__ = ()


class RawFileProxy(FileProxy):
    __slots__ = ()


io.TextIOBase.register(TextFileProxy)
io.BufferedIOBase.register(BufferedFileProxy)
io.RawIOBase.register(RawFileProxy)


def _proxy_for(f: Any, path: str, owner: "Reporter") -> FileProxy:
    if isinstance(f, io.TextIOBase):
        return TextFileProxy(f, path, owner)
    if isinstance(f, io.BufferedIOBase):
        return BufferedFileProxy(f, path, owner)
    if isinstance(f, io.RawIOBase):
        return RawFileProxy(f, path, owner)
    return FileProxy(f, path, owner)
