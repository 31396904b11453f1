"""Settings of the shim, read from the environment once, at install time.

Environment values come from an operator, possibly through a shared env file,
so a bad value must never stop the API from starting: it is logged and the
default is used (or, for ``SIDECAR_SHIM``, the shim stays off). Keyword
arguments come from code (tests, an explicit ``install()``) and are validated
strictly, because a typo there is a programming error.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Iterable, Mapping

from ._ignore import DEFAULT_IGNORE, ENV_NAME, split_globs

log = logging.getLogger("mentorix_shim")

MODES = ("async", "sync", "off")
ON_FAILURE = ("open", "closed")
DEFAULT_DATA_DIR = "data/system"
DEFAULT_TIMEOUT_MS = 5000
DEFAULT_BREAKER_MS = 5000
DEFAULT_QUEUE = 1000
SOCKET_NAME = ".memory-sidecar.sock"


@dataclass(frozen=True)
class ShimConfig:
    mode: str
    # realpath of the data dir: the authority for "inside".
    data_dir: str
    # the absolute, normalised spelling the operator gave (may contain
    # symlinks); accepted as a cheap prefix so that API code using the
    # configured spelling does not pay a resolution on every write.
    data_dir_abs: str
    socket_path: str
    on_failure: str
    timeout_s: float
    queue_size: int
    # Sync mode: how long the circuit breaker stays open after a failed
    # confirmation before one write probes again (shim/_breaker.py).
    breaker_s: float = 5.0
    # The sidecar's built-in ignore globs plus SIDECAR_IGNORE (shim/_ignore.py):
    # a write or delete of a matching path is never sent (counted "ignored").
    ignore: tuple[str, ...] = DEFAULT_IGNORE


def _env_choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    value = raw.strip().lower()
    if value not in choices:
        log.warning("%s=%r is not one of %s; using %r", name, raw, "|".join(choices), default)
        return default
    return value


def _env_int(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        value = minimum - 1
    if value < minimum:
        log.warning("%s=%r is not an integer >= %d; using %d", name, raw, minimum, default)
        return default
    return value


def load_config(
    *,
    mode: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    socket_path: str | os.PathLike[str] | None = None,
    on_failure: str | None = None,
    timeout_ms: int | None = None,
    queue_size: int | None = None,
    ignore: Iterable[str] | None = None,
    environ: Mapping[str, str] | None = None,
    breaker_ms: int | None = None,
) -> ShimConfig:
    env = os.environ if environ is None else environ

    if mode is None:
        # Default "async": whoever calls install() explicitly wants the shim on.
        mode = _env_choice(env, "SIDECAR_SHIM", MODES, "async")
    elif mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")

    if on_failure is None:
        on_failure = _env_choice(env, "SIDECAR_SHIM_ON_FAILURE", ON_FAILURE, "open")
    elif on_failure not in ON_FAILURE:
        raise ValueError(f"on_failure must be one of {ON_FAILURE}, not {on_failure!r}")

    if timeout_ms is None:
        timeout_ms = _env_int(env, "SIDECAR_SHIM_TIMEOUT_MS", DEFAULT_TIMEOUT_MS, 1)
    elif isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int) or timeout_ms < 1:
        raise ValueError("timeout_ms must be a positive integer")

    if queue_size is None:
        queue_size = _env_int(env, "SIDECAR_SHIM_QUEUE", DEFAULT_QUEUE, 1)
    elif isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
        raise ValueError("queue_size must be a positive integer")

    if data_dir is None:
        data_dir = env.get("RUNTIME_DATA_DIR") or DEFAULT_DATA_DIR
    data_dir_abs = os.path.abspath(os.path.expanduser(os.fspath(data_dir)))
    data_dir_real = os.path.realpath(data_dir_abs)
    if data_dir_real == "/" or data_dir_abs == "/":
        # Mirroring every file of the machine is never what anyone meant.
        raise ValueError("the data dir must not be the filesystem root")

    if socket_path is None:
        socket_path = env.get("SIDECAR_SOCKET") or None
    if socket_path is None:
        # Same rule as the daemon (sidecar/config.py): beside the data dir,
        # on the configured (not resolved) spelling.
        socket_path = os.path.join(os.path.dirname(data_dir_abs), SOCKET_NAME)
    socket_path = os.path.abspath(os.fspath(socket_path))

    if ignore is None:
        # Same variable, same parsing as the daemon (sidecar/config.py): the API
        # container gets the sidecar's SIDECAR_IGNORE (docker-compose.yml, deploy/).
        extra = split_globs(env.get(ENV_NAME))
    else:
        extra = () if isinstance(ignore, str) else tuple(ignore)
        if isinstance(ignore, str) or not all(isinstance(g, str) and g for g in extra):
            raise ValueError("ignore must be an iterable of non-empty glob strings")

    return ShimConfig(
        mode=mode,
        data_dir=data_dir_real,
        data_dir_abs=data_dir_abs,
        socket_path=socket_path,
        on_failure=on_failure,
        timeout_s=timeout_ms / 1000.0,
        queue_size=queue_size,
        breaker_s=(breaker_ms if breaker_ms is not None
                   else _env_int(env, "SIDECAR_SHIM_BREAKER_MS", DEFAULT_BREAKER_MS, 1)) / 1000.0,
        ignore=DEFAULT_IGNORE + extra,
    )
