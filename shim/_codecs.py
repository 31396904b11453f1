"""What a text write puts in the file, when that can be known without reading it.

Standard library only. A ``Path.write_text``/``write_bytes`` call whose bytes
are certain (bytes, or a str with an explicit stateless encoding, strict
errors and no newline translation) is reported with the call's own data in
async mode, so the API thread does not read the file back
(``Reporter.report_written``, ``Shim._write_direct``).
"""

from __future__ import annotations

import codecs
import os
from typing import Any

# Encodings for which ``str.encode`` gives exactly what TextIOWrapper writes
# (stateless, no BOM), keyed by the spelling the caller used.
_PLAIN_CODECS = frozenset(("utf-8", "ascii", "iso8859-1"))
_codec_of: dict[Any, str | None] = {}
# newline= values that write "\n" as it is (None means os.linesep).
_UNTRANSLATED = (None, "", "\n") if os.linesep == "\n" else ("", "\n")


def _plain_codec(encoding: Any) -> str | None:
    codec = _codec_of.get(encoding, False)
    if codec is not False:
        return codec  # type: ignore[return-value]
    codec = None
    if encoding.__class__ is str:
        try:
            name = codecs.lookup(encoding).name
        except LookupError:
            name = None
        codec = name if name in _PLAIN_CODECS else None
    if len(_codec_of) < 64:  # spellings are few; never grow without bound
        _codec_of[encoding] = codec
    return codec


_TEXT_KWARGS = frozenset(("encoding", "errors", "newline"))


def _text_args(args: tuple, kwargs: dict) -> tuple[Any, Any, Any] | None:
    """(encoding, errors, newline) of ``write_text(data, *args, **kwargs)``,
    None for an argument it does not take."""
    n = len(args)
    if n > 3:
        return None
    if not kwargs:
        return (args[0] if n else None, args[1] if n > 1 else None, args[2] if n > 2 else None)
    if not kwargs.keys() <= _TEXT_KWARGS:
        return None
    get = kwargs.get
    return (args[0] if n else get("encoding"), args[1] if n > 1 else get("errors"),
            args[2] if n > 2 else get("newline"))


def _known_codec(encoding: Any, errors: Any, newline: Any) -> str | None:
    """The codec whose ``str.encode`` gives exactly the bytes a text file opened
    with these arguments writes, or None if that is not certain: a default
    (locale) or stateful encoding, another error handler, newline translation."""
    if encoding is None or errors not in (None, "strict") or newline not in _UNTRANSLATED:
        return None
    return _plain_codec(encoding)


def _known_payload(text: bool, data: Any, args: tuple, kwargs: dict) -> tuple[Any, str | None] | None:
    """What a completed ``Path.write_text``/``write_bytes`` call put in the file,
    as (str to encode with codec, codec) or (bytes, None), without encoding it;
    None when that cannot be known for sure without reading the file back."""
    if not text:
        if data.__class__ is bytes:
            return data, None
        # A bytearray can change after the call: keep a copy of what was written.
        return (bytes(data), None) if data.__class__ is bytearray else None
    if data.__class__ is not str:
        return None
    targs = _text_args(args, kwargs)
    codec = None if targs is None else _known_codec(*targs)
    return None if codec is None else (data, codec)
