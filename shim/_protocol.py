"""The shim ⇄ sidecar wire format (shim/PROTOCOL.md), for both ends.

Standard library only, and importing nothing else of the shim or of the
sidecar: the client (``shim/_transport.py``, inside the API process) and the
server (``sidecar/shimserver.py``) take the frame layout and every constant
they share from here. The sidecar may import this module; the shim never
imports the sidecar.

A frame is a big-endian uint32 ``N``, ``N`` bytes of UTF-8 JSON header, then
``header["size"]`` bytes of body. A reply (sync frames only) is ``N`` and ``N``
bytes of UTF-8 JSON: ``{"ok": bool, "status": str, "error": str | null}``.
"""

from __future__ import annotations

import json
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from ._events import Event

PROTOCOL_VERSION = 1
LEN = struct.Struct(">I")  # the length prefix of a header or a reply
OPS = ("write", "delete")

# Limits: the server refuses larger headers, bodies and paths (a bad frame);
# the client refuses a larger reply.
MAX_HEADER = 64 * 1024
MAX_BODY = 256 * 1024 * 1024
MAX_PATH = 4096
MAX_REPLY = 64 * 1024

# Reply statuses. "queued": an async frame handed to the coalescing writer (never
# the reply to a sync frame, which waits for the write).
# "not_durable": a sync frame the daemon cannot confirm now (MongoDB known down or
# stalled, or another writer holds the lease): answered at once, the path is queued.
STATUSES = ("written", "unchanged", "stale", "queued", "ignored", "not_durable")
DURABLE = ("written", "unchanged", "stale")  # the store holds this version or a newer one
# What a sync writer may go on after (``"ok": true``): durable, or never to be
# stored ("ignored": the path matches the ignore rules; an error would stall or
# fail the API's write of, say, an atomic writer's temp file, which is not memory).
OK = DURABLE + ("ignored",)

# The shim's own health report: the optional "shim" key of a header, present
# once its sync breaker first opened (shim/_breaker.py; the states of Breaker.view()).
BREAKER_STATES = ("closed", "open", "probe_due", "half_open")
REPORT_COUNTS = ("unconfirmed", "sync_failed", "breaker_opened")
# Formatted by the client straight into the header (breaker state, then REPORT_COUNTS).
REPORT_FORMAT = ',"shim":{"breaker":"%s","unconfirmed":%d,"sync_failed":%d,"breaker_opened":%d}'

# What json.dumps does to a str (ASCII-only escaping), without its per-call setup.
_json_str = json.encoder.encode_basestring_ascii


def encode_header(event: "Event", ack: bool, report: str = "") -> bytes:
    """The length prefix and JSON header of one frame (the client's side).

    Formatted by hand: only the path needs JSON escaping, and this runs
    once per event on a thread that shares the GIL with the API. Only a sync
    frame carries the body's sha256: the daemon checks every body against the
    file before using it, so hashing async bodies here would only spend the
    API process's CPU. ``report``: the shim's own health (``"shim"`` key,
    ``REPORT_FORMAT``), already formatted; empty until the sync breaker first opened.
    """
    sha = event.sha256 if ack else None
    mtime = event.mtime_ns
    raw = (
        '{"v":%d,"op":"%s","path":%s,"size":%d,"sha256":%s,"mtime_ns":%s,"seq":%d,"pid":%d,"ack":%s%s}'
        % (
            PROTOCOL_VERSION,
            event.op,
            _json_str(event.path),
            0 if event.data is None else len(event.data),
            "null" if sha is None else '"' + sha + '"',
            "null" if mtime is None else "%d" % mtime,
            event.seq,
            event.pid,
            "true" if ack else "false",
            report,
        )
    ).encode("ascii")
    return LEN.pack(len(raw)) + raw


def encode_frames(events: "list[Event]", report: str = "") -> bytes:
    """Several ack-less frames as one buffer: one send for a burst of writes."""
    parts = []
    for event in events:
        parts.append(encode_header(event, False, report))
        if event.data:
            parts.append(event.data)
    return b"".join(parts)
