"""Stage 2: bytes → validated JSON values, with the file's exact formatting.

What is only half written is a ``BadInput`` with a reason code and a message
that never quotes content. ``NaN``, ``Infinity`` and ``-Infinity`` (which
Python's ``json.dumps`` writes by default) are read as the floats they are:
BSON holds them as doubles. A value BSON cannot hold faithfully (an int past
int64, a ``$``/``.``/NUL key, nesting past ``MAX_DEPTH``, a lone surrogate) is
reported by ``validate`` as a ``BadInput`` too; the model keeps such values
verbatim ("stored raw", ``sidecar/model.py``) instead of losing them.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

# MongoDB refuses documents nested deeper than 100 levels; our documents wrap
# the content in two levels (document → payload), so keep a margin.
MAX_DEPTH = 90
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# A mirrored document must stay under the 16 MiB BSON limit with our metadata.
MAX_DOC_BYTES = 15 * 1024 * 1024


class BadInput(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def loads(data: bytes) -> Any:
    if not data.strip():
        raise BadInput("empty", "file is empty (possibly caught mid-write)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput("invalid_utf8", f"invalid UTF-8 at byte {exc.start}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(
            "invalid_json", f"invalid or truncated JSON at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise BadInput("too_deep", "JSON nested too deeply to parse") from None


# A lone surrogate can only come from a \\uD800-\\uDFFF escape (UTF-8 bytes cannot
# encode one): strings are only checked when the bytes hold such an escape.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def may_hold_surrogates(data: bytes) -> bool:
    return _SURROGATE_ESCAPE.search(data) is not None


def validate(value: Any, strings: bool = False) -> None:
    """Raise BadInput if ``value`` cannot round-trip through BSON unchanged.
    ``strings``: also check every string for lone surrogates (BSON strings are
    UTF-8); ``may_hold_surrogates(data)`` says when that is needed."""
    if strings:
        _check_strings(value)
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise BadInput("too_deep", f"nesting deeper than {MAX_DEPTH} levels")
        if isinstance(item, dict):
            for key, inner in item.items():
                if key.startswith("$"):
                    raise BadInput("bad_key", "an object key starts with '$'")
                if "." in key:
                    raise BadInput("bad_key", "an object key contains '.'")
                if "\x00" in key:
                    raise BadInput("bad_key", "an object key contains NUL")
                if isinstance(inner, (dict, list)):
                    stack.append((inner, depth + 1))
                else:
                    _check_scalar(inner)
        elif isinstance(item, list):
            for inner in item:
                if isinstance(inner, (dict, list)):
                    stack.append((inner, depth + 1))
                else:
                    _check_scalar(inner)
        else:
            _check_scalar(item)


def _check_scalar(value: Any) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise BadInput("int_overflow", "integer outside the 64-bit range BSON can hold")
    # Floats, NaN and the infinities included, are BSON doubles. (A literal such
    # as 1e400 parses to infinity and would be written back as Infinity: that is
    # the file's layout, which detect_format finds not reproducible.)


def _check_strings(value: Any) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            items: Any = (item,)
        elif isinstance(item, dict):
            items = item.keys()
            stack.extend(v for v in item.values() if not isinstance(v, (int, float, bool)) and v is not None)
        elif isinstance(item, list):
            stack.extend(item)
            continue
        else:
            continue
        for text in items:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise BadInput("bad_string", "a string holds a lone UTF-16 surrogate") from None


def canonical(value: Any) -> bytes:
    """Order-preserving compact serialisation: the basis of every content hash.

    ``NaN``/``Infinity``/``-Infinity`` are spelled as json.dumps spells them, so
    a value has one hash whatever the float objects are (NaN != NaN in Python)
    and the same after a round trip through BSON; a lone surrogate is kept as
    its code point (``surrogatepass``) so hashing never fails."""
    return json.dumps(
        value, ensure_ascii=False, separators=(",", ":"), allow_nan=True, default=str
    ).encode("utf-8", "surrogatepass")


def value_hash(value: Any) -> str:
    return hashlib.sha256(canonical(value)).hexdigest()


# --- formatting -----------------------------------------------------------
# The legacy writer is json.dumps(payload, indent=2) with no trailing newline;
# a few other common shapes are recognised so a restore can reproduce them too.
DEFAULT_FORMAT: dict[str, Any] = {"indent": 2, "ensure_ascii": True, "compact": False, "newline": False}
_CANDIDATES = [
    DEFAULT_FORMAT,
    {"indent": 2, "ensure_ascii": False, "compact": False, "newline": False},
    {"indent": 4, "ensure_ascii": True, "compact": False, "newline": False},
    {"indent": 4, "ensure_ascii": False, "compact": False, "newline": False},
    {"indent": None, "ensure_ascii": True, "compact": False, "newline": False},
    {"indent": None, "ensure_ascii": False, "compact": False, "newline": False},
    {"indent": None, "ensure_ascii": True, "compact": True, "newline": False},
    {"indent": None, "ensure_ascii": False, "compact": True, "newline": False},
]


def render(value: Any, fmt: dict[str, Any] | None) -> bytes:
    fmt = fmt or DEFAULT_FORMAT
    text = json.dumps(
        value,
        indent=fmt.get("indent"),
        ensure_ascii=fmt.get("ensure_ascii", True),
        separators=(",", ":") if fmt.get("compact") else None,
    )
    if fmt.get("newline"):
        text += "\n"
    return text.encode("utf-8")


def detect_format(value: Any, data: bytes) -> dict[str, Any] | None:
    """The formatting that reproduces ``data`` byte for byte, or None. (The mirror
    state keeps one shared dict per distinct format: ``state.intern_format``.)"""
    newline = data.endswith(b"\n")
    for cand in _CANDIDATES:
        fmt = dict(cand, newline=newline)
        if render(value, fmt) == data:
            return fmt
    return None
