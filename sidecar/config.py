"""Settings: one ``Config`` object, built once and passed explicitly.

Env names of the Mentorix backend are read as they are (``RUNTIME_DATA_DIR``,
``MONGODB_URL`` ...), so the sidecar can share the API's env file; everything
that is only ours is prefixed ``SIDECAR_``. CLI flags override env by being
passed as keyword arguments to ``Config(...)``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# The built-in ignore globs (temp files of atomic writers and editors, the
# sidecar's own temp files and reports) are defined once, in a standard-library
# module of the shim (which never imports this package): the shim in the API
# process skips exactly what the daemon skips.
from shim._ignore import DEFAULT_IGNORE

# Greedy up to the last '@' of the URL: a password with an unescaped '@' must
# not leak its tail (better to hide too much than too little).
_URL_USERINFO = re.compile(r"(mongodb(?:\+srv)?://)(\S*)@", re.IGNORECASE)


def redact_url(url: str) -> str:
    """Hide the user info of a MongoDB URL (``mongodb://***@host``)."""
    return _URL_USERINFO.sub(r"\1***@", url)


class Config(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=None,
        case_sensitive=False,
        extra="ignore",
        populate_by_name=True,
    )

    # --- names shared with Mentorix -------------------------------------
    runtime_data_dir: Path = Path("data/system")
    mongodb_url: SecretStr = SecretStr("mongodb://localhost:27017")
    mongodb_db_name: str = "mentorix"
    memory_store_backend: Literal["file", "mongo"] = "file"
    memory_dual_write: bool = False
    mongodb_snapshots_ttl_days: int = Field(default=0, ge=0)
    mongodb_episodes_ttl_days: int = Field(default=0, ge=0)

    # --- sidecar's own ---------------------------------------------------
    sidecar_http_host: str = "127.0.0.1"
    sidecar_http_port: int = Field(default=8787, ge=0, le=65535)
    sidecar_socket: Path | None = None
    sidecar_token: SecretStr | None = None
    sidecar_ignore: Annotated[list[str], NoDecode] = Field(default_factory=list)
    sidecar_redact_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    sidecar_propagate_file_deletes: bool = False
    # The mass-removal guard (rsync's --max-delete): one change that removes more
    # hub entries, or files within a minute, than this is held as a divergence.
    # The legacy writers never remove a key or a file, so a legitimate removal is
    # an operator's, one or a few at a time; a wiped or swapped dir removes many.
    sidecar_max_removals: int = Field(default=10, ge=0)
    # The single-writer lease in MongoDB (sidecar/lease.py): renewed every third of
    # this while the holder runs; a holder that died is taken over once it expires.
    sidecar_lease_ttl_s: float = Field(default=30.0, ge=1.0, le=3600.0)
    # "majority" (a replica set's default durability) or a node count.
    sidecar_write_concern: str = "majority"
    sidecar_write_timeout_ms: int = Field(default=10_000, ge=0)
    sidecar_server_selection_timeout_ms: int = Field(default=5_000, ge=100)
    # /readyz turns 503 once one MongoDB write has been in flight this long. A
    # healthy write takes milliseconds; a failing one ends within the driver's
    # bounded waits (server selection 5 s, and once more for the retried write;
    # w=majority waits at most SIDECAR_WRITE_TIMEOUT_MS). A frozen server is only
    # given up on after 15-24 s, when the pool is cleared: 10 s reports that
    # stall before the driver does, without flagging a slow but working write.
    sidecar_write_stall_s: float = Field(default=10.0, gt=0)
    sidecar_batch_size: int = Field(default=1000, ge=1, le=100_000)
    sidecar_flush_interval_ms: int = Field(default=10, ge=0)
    # memory_events keep hashes of before/after by default; "full" stores values.
    sidecar_events_payload: Literal["hash", "full"] = "hash"
    # memory_events older than this many days are removed by a TTL index on created_at; 0 = kept forever.
    sidecar_events_ttl_days: int = Field(default=0, ge=0)
    sidecar_files_collection: str = "memory_files"
    # What leaves the live collections is kept this long in memory_tombstones (TTL).
    sidecar_tombstone_days: int = Field(default=30, ge=1)
    # How often the data dir itself is checked (deleted, re-created, replaced, a symlink).
    sidecar_root_check_ms: int = Field(default=500, ge=10, le=60_000)
    # A background verify (sidecar/quick.py): every this many seconds of an idle writer, a
    # full reconcile that reads and hashes every file (no quick check) and repairs and
    # reports drift on either side. 0 = off (sync --checksum does the same on demand).
    sidecar_verify_interval: float = Field(default=0.0, ge=0)
    # Where the per-file state (sidecar/localindex.py) spills: a private SQLite file,
    # unlinked once open. Empty = the system's temp dir. Not the data dir.
    sidecar_state_dir: str = ""
    sidecar_log_format: Literal["text", "json"] = "text"
    sidecar_log_level: str = "INFO"

    @field_validator("sidecar_ignore", "sidecar_redact_keys", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("memory_store_backend", mode="before")
    @classmethod
    def _backend_lower(cls, value: object) -> object:
        # Mentorix lower-cases this setting; accept what it accepts.
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("sidecar_write_concern")
    @classmethod
    def _check_wc(cls, value: str) -> str:
        if value != "majority" and not value.isdigit():
            raise ValueError("must be 'majority' or a number of nodes")
        return value

    @model_validator(mode="after")
    def _state_dir_outside_data_dir(self) -> Config:
        # The state file is private and unlinked at once, but a dir inside the data
        # dir would still be watched, walked and mirrored.
        if self.sidecar_state_dir:
            state = Path(self.sidecar_state_dir).expanduser().absolute()
            data = self.data_dir
            for a, b in ((state, data), (state.resolve(), data.resolve())):
                if a == b or b in a.parents:
                    raise ValueError("SIDECAR_STATE_DIR must not be the data dir or inside it (RUNTIME_DATA_DIR)")
        return self

    # --- derived -----------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return Path(self.runtime_data_dir).expanduser().absolute()

    @property
    def url(self) -> str:
        return self.mongodb_url.get_secret_value()

    @property
    def safe_url(self) -> str:
        return redact_url(self.url)

    @property
    def ignore_globs(self) -> tuple[str, ...]:
        return DEFAULT_IGNORE + tuple(self.sidecar_ignore)

    @property
    def write_concern_w(self) -> int | str:
        wc = self.sidecar_write_concern
        return int(wc) if wc.isdigit() else wc

    @property
    def token(self) -> str | None:
        return self.sidecar_token.get_secret_value() if self.sidecar_token else None

    @property
    def socket_path(self) -> Path:
        if self.sidecar_socket is not None:
            return Path(self.sidecar_socket)
        return self.data_dir.parent / ".memory-sidecar.sock"

    def scrub(self, text: str) -> str:
        """Remove the URL's credentials from any text meant for a log or a user."""
        text = redact_url(text)
        parts = urlsplit(self.url)
        for secret in (parts.password, parts.username):
            if secret and len(secret) >= 3:
                text = text.replace(secret, "***")
        return text


def describe(config: Config) -> dict[str, object]:
    """The settings as safe to print: no credentials, no token."""
    out = {}
    for name in type(config).model_fields:
        value = getattr(config, name)
        if name == "mongodb_url":
            value = config.safe_url
        elif isinstance(value, SecretStr):
            value = "***" if value.get_secret_value() else ""
        elif isinstance(value, Path):
            value = str(value)
        out[name.upper()] = value
    return out

