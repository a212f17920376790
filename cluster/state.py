"""`state.json`: what the supervisor says is running, for `chatops status`, the process collector,
the control plane and the tests.

The document: `supervisor_pid`, `started_at`, `config` (the cluster file's path), `ready` (every
process up after the first start), and `processes`, one entry per process with `name`, `kind`,
`host`, `address`, `port`, `describe`, `pid`, `started_at`, `restarts` and `status`. It is replaced
atomically, so a reader sees the old document or the new one, never half of either.
"""

from __future__ import annotations

import json
import os

from cluster.rundir import RunDir


def write_state(run: RunDir, state: dict) -> None:
    tmp = run.state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, run.state_file)


def running_config(run: RunDir) -> str | None:
    """The cluster file the cluster running from `run` was started with, if it still exists: what
    every reader of "the cluster" (the CLI, the control plane, the Ansible inventory) falls back
    to when no file is named."""
    state = read_state(run)
    config = (state or {}).get("config")
    return config if isinstance(config, str) and config and os.path.exists(config) else None


def read_state(run: RunDir) -> dict | None:
    """The document, or None when nothing runs (no file) or it cannot be read."""
    try:
        return json.loads(run.state_file.read_text())
    except (OSError, ValueError):
        return None
