"""Stage 1 of the data flow: which legacy file kind a relative path is.

Paths are always POSIX strings relative to the data dir (``structured_hubs/x.json``);
the rest of the pipeline never sees absolute paths, so nothing downstream can be
tricked into leaving the data dir.
"""

from __future__ import annotations

import enum
import posixpath
import re

from shim._ignore import matches


class Kind(str, enum.Enum):
    HUB = "hub"
    SNAPSHOT = "snapshot"
    EPISODE = "episode"
    RUN = "run"
    JOBS = "scheduled_jobs"
    OTHER = "other"
    # Never returned by ``classify`` (the path alone cannot tell): an episode file
    # that is not its run's canonical file (``model.build_plan`` decides from the
    # content's run_id), kept as a generic file.
    EPISODE_COPY = "episode_copy"

    @property
    def structured(self) -> bool:
        """Kinds whose content is split into documents of their own collection."""
        return self in (Kind.HUB, Kind.SNAPSHOT, Kind.EPISODE)


HUBS_DIR = "structured_hubs"
EPISODES_DIR = "episodes"
RUNS_DIR = "runs"
SNAPSHOT_FILE = "snapshot.json"
JOBS_FILE = "scheduled_jobs.json"

_EPISODE = re.compile(r"^skeleton_(?P<run_id>.+)\.json$")
_RUN = re.compile(r"^run_(?P<run_id>.+)\.json$")


class UnsafePath(ValueError):
    """A path that is absolute, escapes the data dir, or is not a plain name."""


def normalize(rel: str) -> str:
    """Validate a data-dir-relative path and return its canonical POSIX form."""
    if not rel or "\x00" in rel or rel.startswith("/") or "\\" in rel:
        raise UnsafePath("path must be relative, non-empty, POSIX, without NUL")
    # Check the components as given: normpath would fold "a/../../b" into "../b"
    # or "x/../snapshot.json" into another file's name before we could object.
    if any(part in ("", ".", "..") for part in rel.split("/")):
        raise UnsafePath("path has empty, '.' or '..' components")
    return posixpath.normpath(rel)


def classify(rel: str) -> Kind:
    parts = rel.split("/")
    if len(parts) == 1:
        if rel == SNAPSHOT_FILE:
            return Kind.SNAPSHOT
        if rel == JOBS_FILE:
            return Kind.JOBS
        return Kind.OTHER
    if len(parts) == 2:
        folder, name = parts
        if folder == HUBS_DIR and name.endswith(".json") and len(name) > len(".json"):
            return Kind.HUB
        if folder == EPISODES_DIR and _EPISODE.match(name):
            return Kind.EPISODE
        if folder == RUNS_DIR and _RUN.match(name):
            return Kind.RUN
    return Kind.OTHER


def hub_type_of(rel: str) -> str:
    return rel.split("/", 1)[1][: -len(".json")]


def hub_path(hub_type: str) -> str:
    return f"{HUBS_DIR}/{hub_type}.json"


def run_id_from_name(rel: str) -> str:
    match = _EPISODE.match(rel.rsplit("/", 1)[-1])
    return match.group("run_id") if match else rel


def episode_path(run_id: str) -> str:
    return f"{EPISODES_DIR}/skeleton_{run_id}.json"


def is_ignored(rel: str, globs: tuple[str, ...]) -> bool:
    """The ignore rule of every path in (watcher, shim frames, reconcile, sync,
    restore), shared with the shim (shim/_ignore.py): a glob matching ``rel``,
    ``rel + "/"``, or a directory above it."""
    return matches(rel, globs)
