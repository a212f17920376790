"""Where runtime files live: one run directory holds pids, sockets, logs and rendered configs.

Nothing runtime is ever written into the source tree's code folders; the default `.run/` is
ignored by git, and CHATOPS_RUN_DIR or --run-dir moves it anywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT = ".run"
# sun_path is 108 bytes on Linux; leave room for the terminating NUL.
_MAX_SOCKET_PATH = 107


class RunDirError(Exception):
    pass


@dataclass(frozen=True)
class RunDir:
    root: Path

    @classmethod
    def resolve(cls, path: str | os.PathLike | None = None) -> "RunDir":
        chosen = path or os.environ.get("CHATOPS_RUN_DIR") or DEFAULT
        return cls(Path(chosen).absolute())

    def ensure(self) -> "RunDir":
        for sub in ("haproxy", "redis", "logs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        return self

    def _socket(self, name: str) -> Path:
        p = self.root / "haproxy" / name
        if len(os.fsencode(p)) > _MAX_SOCKET_PATH:
            raise RunDirError(
                f"socket path {p} is longer than {_MAX_SOCKET_PATH} bytes, the Unix limit; "
                "choose a shorter --run-dir (or CHATOPS_RUN_DIR)")
        # Spaces, quotes and '#' are fine (the HAProxy config quotes the path), but HAProxy
        # expands `$NAME` in a socket address even when quoted, its -S option splits at ',', and
        # no config line can carry a control character.
        bad = next((c for c in str(p) if c in "$," or ord(c) < 0x20 or ord(c) == 0x7f), None)
        if bad is not None:
            raise RunDirError(
                f"socket path {str(p)!r} contains {bad!r}, which HAProxy cannot take in a socket "
                "address; choose a --run-dir (or CHATOPS_RUN_DIR) without '$', ',' or control characters")
        return p

    def haproxy_config(self, host: str) -> Path:
        return self.root / "haproxy" / f"{host}.cfg"

    def haproxy_socket(self, host: str) -> Path:
        return self._socket(f"{host}.sock")

    def haproxy_master_socket(self, host: str) -> Path:
        return self._socket(f"{host}.master.sock")

    def redis_dir(self, name: str) -> Path:
        return self.root / "redis" / name

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def supervisor_pid(self) -> Path:
        return self.root / "supervisor.pid"

    @property
    def audit_log(self) -> Path:
        return self.root / "audit.jsonl"

    @property
    def secrets_file(self) -> Path:
        return self.root / "secrets.env"

    @property
    def database(self) -> Path:
        return self.root / "controlplane.sqlite3"
