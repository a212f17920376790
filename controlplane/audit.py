"""The audit trail: one JSON line per action that changed the cluster (who, when, what, result).

It is an append-only file in the run directory, written with O_APPEND so concurrent writers never
interleave a record. Secrets never reach it: callers pass summaries, not configs or tokens.
"""

from __future__ import annotations

import getpass
import json
import os
import time
from typing import Any

from controlplane.rundir import RunDir


def actor() -> str:
    """Who is acting from a shell: the login name, as sudo reports it when elevated."""
    return os.environ.get("SUDO_USER") or getpass.getuser()


def record(run: RunDir, who: str, action: str, target: str, result: str, **detail: Any) -> dict:
    entry = {"ts": time.time(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "actor": who,
             "action": action, "target": target, "result": result, **detail}
    run.root.mkdir(parents=True, exist_ok=True)
    fd = os.open(run.audit_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(entry, default=str) + "\n").encode())
    finally:
        os.close(fd)
    return entry


def read(run: RunDir) -> list[dict]:
    try:
        lines = run.audit_log.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(ln) for ln in lines if ln.strip()]
