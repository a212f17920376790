"""The running (or last) migration's progress, in the run directory, for whoever watches it.

The apply that moves slots may run in the control plane's web process while the CLI, the API
and the dashboard poll; a small JSON file replaced in one rename is readable by all of them,
and outlives a killed control plane so the next apply can say where the last one stopped.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

NAME = "reshard-progress.json"


def path(run) -> Path:
    return Path(run.root) / NAME


def write(run, what: dict[str, Any], progress: dict[str, Any]) -> None:
    p = path(run)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump({**what, **progress, "written_at": time.time()}, f)
    os.replace(tmp, p)


def read(run) -> dict[str, Any] | None:
    try:
        return json.loads(path(run).read_text())
    except (OSError, ValueError):
        return None


def reporter(run, what: dict[str, Any], every_s: float = 0.25):
    """A Progress callback writing at most every `every_s` (and always on a phase change)."""
    last = {"at": 0.0, "phase": None}

    def report(p) -> None:
        now = time.monotonic()
        if p.phase == last["phase"] and now - last["at"] < every_s:
            return
        last["at"], last["phase"] = now, p.phase
        write(run, what, p.as_dict())
    return report
