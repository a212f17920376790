"""Shared by the alerting tests: a cluster file with destinations, an incident as the engine
writes one, in a real Database."""

from __future__ import annotations

import time

from cluster.spec import ClusterFile
from tests.conftest import small_cluster

LEAK_EVIDENCE = {"host": "chat-testing", "cluster": "testing", "shard": "shard1", "count": 2311, "idle": 2204,
                 "idle_after_s": 60, "thresholds": {"hold": "6s"},
                 "lines": ["Mar 04 10:21:07 clue-chat1: [10.0.0.1] Redis connection refused error=ECONNREFUSED"]}
KILL = {"action": "kill_clients", "summary": "Kill chat-testing's 2,204 idle connections to shard1",
        "params": {"shard": "shard1", "host": "chat-testing", "idle_over_s": 60}}


def cluster(alerts: list[dict], **controlplane) -> ClusterFile:
    doc = small_cluster("127.0.0")
    doc["controlplane"].update(controlplane)
    doc["alerts"] = alerts
    return ClusterFile.model_validate(doc)


def dest(name: str = "slack", type: str = "slack", **kw) -> dict:
    return {"name": name, "type": type, "url_env": f"URL_{name.upper().replace('-', '_')}", **kw}


def seed(db, kind: str = "leaked_clients", subject: str = "chat-testing->shard1", *, severity: str = "warning",
         evidence: dict | None = None, remediation: dict | None = KILL, about: dict | None = None,
         at: float | None = None) -> int:
    """An incident with one finding, written as controlplane.incidents.update writes it."""
    from controlplane import incidents
    f = db.upsert_finding(kind, subject, severity=severity, evidence=LEAK_EVIDENCE if evidence is None else evidence,
                          runbook=kind, remediation=remediation, title=f"{kind} {subject}",
                          about={"shard": "shard1", "host": "chat-testing", "cluster": "testing"} if about is None
                          else about, seen=at)
    incidents.update(db, None, db.findings(open_only=True), [], time.time() if at is None else at)
    return db.finding(f["id"])["incident_id"]
