"""The ignore rules, shared by the shim and the sidecar (standard library only).

This module is the one definition of which data-dir paths are never mirrored:
``sidecar.config`` takes ``DEFAULT_IGNORE`` from here and ``sidecar.classify``
matches with ``matches`` below, so the shim (in the API process) and the
daemon's watcher, shim server, reconcile and sync cannot disagree. It imports
nothing from the rest of either package.

A glob is matched with ``fnmatch.fnmatchcase`` against the path relative to the
data dir (POSIX, e.g. ``structured_hubs/x.json``); ``*`` also matches ``/``.
A path is ignored when a glob matches it, or matches ``path + "/"`` (how a
directory is tested: ``private/*`` matches the directory ``private`` itself),
or matches any directory above it in either spelling (``vault`` or ``vault/``
ignores everything below ``vault/``, as the directory walk never enters it).
"""

from __future__ import annotations

import fnmatch
import re
from typing import Iterable

# Temp files of atomic writers and editors, the sidecar's own temp files, and
# the sidecar's reports: never part of the memory.
DEFAULT_IGNORE: tuple[str, ...] = (
    "reports/*",
    "*.tmp",
    "*.swp",
    "*.swx",
    "*~",
    ".#*",
    "*/.#*",
    ".*.sw?",
    "*/.*.sw?",
    ".sidecar-*",
    "*/.sidecar-*",
    "export_from_mongo/*",
)

ENV_NAME = "SIDECAR_IGNORE"
_CACHE_MAX = 4096


def split_globs(raw: str | None) -> tuple[str, ...]:
    """``SIDECAR_IGNORE``'s value: comma-separated, blanks around each glob dropped."""
    if not raw:
        return ()
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def candidates(rel: str) -> list[str]:
    """The spellings a glob is tried on: the path, as a directory, and every
    directory above it (both spellings)."""
    out = [rel, rel + "/"]
    i = rel.find("/")
    while i > 0:
        out.append(rel[:i])
        out.append(rel[: i + 1])
        i = rel.find("/", i + 1)
    return out


class IgnoreRules:
    """Compiled globs with a bounded cache of answers (a data dir holds few
    distinct names; the shim asks once per write)."""

    __slots__ = ("globs", "_match", "_cache")

    def __init__(self, globs: Iterable[str]) -> None:
        self.globs = tuple(globs)
        # fnmatch.translate is what fnmatchcase uses: one alternation of them
        # matches exactly when one of the globs does.
        pattern = "|".join(f"(?:{fnmatch.translate(g)})" for g in self.globs)
        self._match = re.compile(pattern).match if self.globs else None
        self._cache: dict[str, bool] = {}

    def __call__(self, rel: str) -> bool:
        hit = self._cache.get(rel)
        if hit is not None:
            return hit
        match = self._match
        result = match is not None and any(match(c) is not None for c in candidates(rel))
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[rel] = result
        return result


_rules: dict[tuple[str, ...], IgnoreRules] = {}


def rules_for(globs: Iterable[str]) -> IgnoreRules:
    key = tuple(globs)
    rules = _rules.get(key)
    if rules is None:
        if len(_rules) >= 64:  # configurations are few; never grow without bound
            _rules.clear()
        rules = _rules[key] = IgnoreRules(key)
    return rules


def matches(rel: str, globs: Iterable[str]) -> bool:
    """True if ``rel`` (relative to the data dir) is ignored under ``globs``."""
    return rules_for(globs)(rel)
