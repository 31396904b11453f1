"""Stage 2: bytes → validated JSON values, with the file's exact formatting.

Anything MongoDB cannot hold faithfully (or that is only half written) is a
``BadInput`` with a reason code and a message that never quotes content.
"""

from __future__ import annotations

import hashlib
import json
import math
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


def _reject_constant(name: str) -> Any:
    raise BadInput("nan", f"non-standard JSON number {name} (NaN/Infinity) cannot be stored")


def loads(data: bytes) -> Any:
    if not data.strip():
        raise BadInput("empty", "file is empty (possibly caught mid-write)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput("invalid_utf8", f"invalid UTF-8 at byte {exc.start}") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise BadInput(
            "invalid_json", f"invalid or truncated JSON at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise BadInput("too_deep", "JSON nested too deeply to parse") from None


def validate(value: Any) -> None:
    """Raise BadInput if ``value`` cannot round-trip through BSON unchanged."""
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
    elif isinstance(value, float) and not math.isfinite(value):
        # e.g. the literal 1e400: valid JSON syntax, but it parses to infinity.
        raise BadInput("nan", "number outside the double range (parses to Infinity)")


def canonical(value: Any) -> bytes:
    """Order-preserving compact serialisation: the basis of every content hash."""
    return json.dumps(
        value, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str
    ).encode("utf-8")


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


_FORMATS: dict[tuple, dict[str, Any]] = {}


def intern_format(fmt: dict[str, Any] | None) -> dict[str, Any] | None:
    """One shared dict per distinct format: the mirror state keeps one per file,
    and 50k copies of the same four keys would cost tens of MB."""
    if fmt is None:
        return None
    key = tuple(sorted(fmt.items()))
    return _FORMATS.setdefault(key, dict(fmt))


def detect_format(value: Any, data: bytes) -> dict[str, Any] | None:
    """The formatting that reproduces ``data`` byte for byte, or None."""
    newline = data.endswith(b"\n")
    for cand in _CANDIDATES:
        fmt = dict(cand, newline=newline)
        if render(value, fmt) == data:
            return intern_format(fmt)
    return None
