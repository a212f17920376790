"""The audit trail: one record per action that changed the cluster (who, when, what, result).

Records live in the run directory's SQLite database (controlplane/database.py), so the control
plane, the CLI and the remediations share one trail that survives restarts and concurrent
writers. An `audit.jsonl` left by an older chatops is imported on first use and kept, renamed
`audit.jsonl.imported`. Secrets never reach the audit: callers pass summaries, not configs or
tokens.
"""

from __future__ import annotations

import getpass
import os
from typing import Any

from cluster.rundir import RunDir
from controlplane.database import Database


def actor() -> str:
    """Who is acting from a shell: the login name, as sudo reports it when elevated."""
    return os.environ.get("SUDO_USER") or getpass.getuser()


def _flat(record: dict) -> dict:
    """The record in the shape the JSON-lines trail had: detail fields beside the core ones."""
    return {**record["detail"], **{k: v for k, v in record.items() if k != "detail"}}


def record(run: RunDir, who: str, action: str, target: str, result: str, **detail: Any) -> dict:
    with Database.for_run(run) as db:
        return _flat(db.add_audit(who, action, target, result, **detail))


def read(run: RunDir) -> list[dict]:
    """Every record, oldest first (empty when nothing was ever recorded in this run directory)."""
    if not run.database.exists() and not run.audit_log.exists():
        return []
    with Database.for_run(run) as db:
        return [_flat(r) for r in reversed(db.audit(limit=None))]
