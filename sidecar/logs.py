"""Logging setup: plain text for terminals, one JSON object per line for collectors.

``setup_logging("json")`` makes every record one line::

    {"ts": "2026-02-21T05:29:24.762Z", "level": "INFO", "logger": "sidecar.sync",
     "msg": "mirrored", "path": "structured_hubs/x.json", "docs": 3}

Structured fields are passed by the caller with ``extra={"fields": {...}}``.
This module never looks inside them and never adds payload values of its own:
it logs exactly what callers give it, so keeping payloads out of the logs is the
callers' job (log keys, paths, counts and hashes, not values). As a last line of
defence the user info of any ``mongodb://user:pass@`` URL is masked in the
rendered line, in both formats.

Calling ``setup_logging`` again replaces the handler it installed earlier (no
duplicate lines); handlers installed by others (pytest's caplog, for example)
are left alone.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any, Callable, TextIO

from .config import redact_url

__all__ = ["setup_logging", "JsonFormatter", "TextFormatter"]

# Attributes of a LogRecord that are ours to render; a colliding field name is
# kept under "field_<name>" instead of silently replacing the core value.
_CORE_KEYS = ("ts", "level", "logger", "msg")
_MARK = "_mentorix_sidecar_handler"


def _timestamp(record: logging.LogRecord) -> str:
    dt = datetime.fromtimestamp(record.created, tz=timezone.utc)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return dict(fields) if isinstance(fields, dict) else {}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, then the caller's fields."""

    def __init__(self, scrub: Callable[[str], str] = redact_url) -> None:
        super().__init__()
        self._scrub = scrub

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _fields(record).items():
            key = str(key)
            obj[f"field_{key}" if key in _CORE_KEYS else key] = value
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            obj["stack"] = self.formatStack(record.stack_info)
        # default=str: a stray datetime/Path/exception must not kill the log line.
        line = json.dumps(obj, ensure_ascii=False, default=str)
        return self._scrub(line)


class TextFormatter(logging.Formatter):
    """``<ts> <LEVEL> <logger>: <msg> key=value ...``"""

    def __init__(self, scrub: Callable[[str], str] = redact_url) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._scrub = scrub

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _fields(record)
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return self._scrub(line)


def _parse_level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    name = str(level).strip().upper()
    if name.isdigit():
        return int(name)
    value = logging.getLevelName(name)
    if not isinstance(value, int):
        raise ValueError(f"unknown log level {level!r} (use DEBUG, INFO, WARNING, ERROR)")
    return value


def setup_logging(
    fmt: str = "text",
    level: str | int = "INFO",
    *,
    stream: TextIO | None = None,
    scrub: Callable[[str], str] | None = None,
) -> logging.Handler:
    """Configure the root logger; safe to call more than once.

    ``fmt`` is ``"text"`` or ``"json"`` (``SIDECAR_LOG_FORMAT``), ``level`` a
    level name (``SIDECAR_LOG_LEVEL``). ``scrub`` post-processes each rendered
    line (pass ``config.scrub`` to also hide the configured URL's password);
    the default masks URL user info. Returns the installed handler.
    """
    fmt = (fmt or "text").strip().lower()
    if fmt not in ("text", "json"):
        raise ValueError(f"unknown log format {fmt!r} (use 'text' or 'json')")
    numeric_level = _parse_level(level)

    if scrub is None:
        scrub = redact_url
    else:
        outer = scrub
        scrub = lambda text: outer(redact_url(text))  # noqa: E731

    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter(scrub) if fmt == "json" else TextFormatter(scrub))
    setattr(handler, _MARK, True)

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(numeric_level)
    # pymongo's DEBUG logs (pymongo.command, .connection ...) carry the commands and
    # replies themselves: learner payloads. Never below INFO, whatever the level.
    logging.getLogger("pymongo").setLevel(max(numeric_level, logging.INFO))
    return handler
