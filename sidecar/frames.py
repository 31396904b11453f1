"""What a sync shim frame is told (shim/PROTOCOL.md), once the writer's flush
that read its file after the frame arrived is through (``sidecar/mirror.py``).

The answer never claims more than MongoDB holds: "written"/"unchanged" for the
frame's own bytes, "stale" only when a newer version of the file was mirrored
(or the file is gone), AGAIN when the flush caught the next write mid-way (the
waiter waits for the re-check's flush), an error for a file with a problem.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from .pending import Waiter
from .reconcile import Problem
from .state import Op

# The flush caught the next write mid-way: the waiter goes back for the re-check.
AGAIN = "again"


def answers(claims: dict[str, list[Waiter]], seen: dict[str, str | None], ops: list[Op],
            problems: list[Problem], transient: Collection[str]) -> dict[int, tuple[str | None, BaseException | None]]:
    """What each sync frame of a flush is told (shim/PROTOCOL.md), by ``id`` of its
    waiter: "stale" when the file no longer held the frame's bytes when read (a
    newer write was mirrored, or it is gone), AGAIN (wait for the next flush) when
    that newer write was caught mid-write, an error when the file had a problem,
    else "written" or "unchanged"."""
    bad = {p.path: p.reason for p in problems}
    written = {op.rel for op in ops}
    out: dict[int, tuple[str | None, BaseException | None]] = {}
    for rel, waiters in claims.items():
        for waiter in waiters:
            if waiter.sha256 is not None and seen.get(rel) != waiter.sha256:
                if bad.get(rel) in transient:
                    # A newer write is under way (a torn read): nothing newer is stored
                    # yet, so "stale" would claim too much. Answered by the flush of the
                    # re-check, or with the problem once it is reported.
                    out[id(waiter)] = (AGAIN, ValueError(bad[rel]))
                else:
                    out[id(waiter)] = ("stale", None)
            elif rel in bad:
                out[id(waiter)] = (None, ValueError(bad[rel]))
            else:
                # ``written``: the paths of the flush's ops, acknowledged or refused by the
                # version guard as older than what MongoDB holds.
                out[id(waiter)] = ("written" if rel in written else "unchanged", None)
    return out


def answer_each(claims: dict[str, list[Waiter]], status: str | None = None,
                error: BaseException | None = None) -> None:
    for waiters in claims.values():
        for waiter in waiters:
            waiter.answer(status, error)


def deliver(claims: dict[str, list[Waiter]], said: dict[int, tuple[str | None, BaseException | None]],
            pending: Any) -> None:
    """Answer each waiter of a flush with what ``answers`` said; an AGAIN goes back to
    its path while that is queued for its re-check (else it gets the problem)."""
    again: dict[str, list[Waiter]] = {}
    for rel, waiters in claims.items():
        for waiter in waiters:
            status, error = said[id(waiter)]
            if status == AGAIN:
                again.setdefault(rel, []).append(waiter)
            else:
                waiter.answer(status, error)
    for waiter in pending.rewait(again, queued_only=True):
        waiter.answer(error=said[id(waiter)][1])
