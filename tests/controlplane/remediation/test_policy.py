"""remediation.auto: the control plane fixes a leak by itself, once; a second leak within the
cooldown is only planned. The decisions themselves (protected hosts, an acknowledged incident,
the cooldown, actions not listed) on a real database, then live on a real cluster."""

from __future__ import annotations

import socket
import time

from cluster.spec import ClusterFile
from collectors import redis as rc
from controlplane.database import Database
from controlplane.remediation import policy
from controlplane.remediation.base import Context
from controlplane.remediation.kill_clients import parse_clients
from tests.conftest import live_controlplane, open_idle, redis_creds, small_cluster, wait_for

LEAK = 300


def _ctx(tmp_path, **remediation) -> Context:
    doc = small_cluster("127.0.9")
    doc["remediation"] = remediation
    return Context(cf=ClusterFile.model_validate(doc), cluster_path=None, run=None,
                   db=Database(tmp_path / "db.sqlite3"))


def _finding(db: Database, host: str = "chat-testing") -> dict:
    row = db.upsert_finding("leaked_clients", f"{host}->shard0", severity="warning", state="open", seen=time.time(),
                            remediation={"action": "kill_clients", "summary": "kill",
                                         "params": {"shard": "shard0", "host": host, "idle_over_s": 60.0}})
    return db.finding(row["id"])


def test_an_action_not_listed_is_left_to_a_person(tmp_path):
    ctx = _ctx(tmp_path)
    assert policy.decide(ctx, _finding(ctx.db)) == (False, "kill_clients is not in remediation.auto", [])


def test_listed_actions_apply_unless_protected_acknowledged_or_cooling_down(tmp_path):
    ctx = _ctx(tmp_path, auto=["kill_clients"])
    go, why, steps = policy.decide(ctx, _finding(ctx.db))
    assert go and steps == [("kill_clients", {"shard": "shard0", "host": "chat-testing", "idle_over_s": 60.0})]

    # The main cluster's hosts are protected by default: planned, never applied by itself.
    go, why, steps = policy.decide(ctx, _finding(ctx.db, "chat1"))
    assert not go and "chat1 is protected" in why and steps

    # A person acknowledged the incident: they decide.
    f = _finding(ctx.db)
    inc = ctx.db.add_incident("leak")
    ctx.db.set_incident_state(inc["id"], "acknowledged", "session:127.0.0.1")
    go, why, _ = policy.decide(ctx, {**f, "incident_id": inc["id"]})
    assert not go and "acknowledged" in why

    # Applied automatically a minute ago on the same shard: within the 10m cooldown.
    ctx.db.add_plan("feedf00d", "kill_clients", "shard:shard0", "auto", {"steps": []})
    ctx.db.claim_plan("feedf00d", "auto")
    ctx.db.finish_plan("feedf00d", "applied", {"ok": True}, at=time.time() - 60)
    go, why, _ = policy.decide(ctx, _finding(ctx.db))
    assert not go and "remediation.auto_cooldown 10m" in why
    # A person's apply does not count against the policy's cooldown; an old one has expired.
    ctx2 = _ctx(tmp_path / "x", auto=["kill_clients"], auto_cooldown="30s")
    ctx2.db.add_plan("0badcafe", "kill_clients", "shard:shard0", "auto", {"steps": []})
    ctx2.db.claim_plan("0badcafe", "auto")
    ctx2.db.finish_plan("0badcafe", "applied", {"ok": True}, at=time.time() - 60)
    assert policy.decide(ctx2, _finding(ctx2.db))[0]


def _patch(doc: dict) -> None:
    doc["remediation"] = {"auto": ["kill_clients"], "auto_cooldown": "10m"}
    doc["controlplane"]["thresholds"] = {"hold": "2s", "idle_client_after": "2s", "leaked_idle_clients": 100}


def _leak(address: str, port: int) -> list[socket.socket]:
    return open_idle(address, port, LEAK)


def test_the_leak_is_cleaned_once_and_a_second_one_within_the_cooldown_is_only_planned():
    with live_controlplane(traffic=False, patch=_patch) as (c, _base):
        procs = {p["name"]: p for p in c.state["processes"]}
        testing, shard = procs["haproxy-chat-testing"]["address"], procs["redis-shard0"]
        db = Database(c.run / "controlplane.sqlite3")
        admin = rc.Conn(shard["address"], shard["port"], auth=redis_creds())
        socks: list[socket.socket] = []

        def idle_from_testing() -> int:
            return sum(1 for cl in parse_clients(admin.call("CLIENT", "LIST"))
                       if cl["ip"] == testing and cl["idle"] > 2)
        try:
            socks += _leak(testing, 2000)
            first = wait_for(lambda: next((p for p in db.plans() if p["created_by"] == "auto"
                                           and p["state"] == "applied"), None), 60, 0.5, "the automatic fix")
            assert first["applied_by"] == "auto" and first["steps"][0]["params"]["host"] == "chat-testing"
            assert first["result"]["steps"][0]["changed"]["killed"] >= LEAK
            wait_for(lambda: idle_from_testing() == 0, 10, 0.5, "no idle connection from chat-testing")
            wait_for(lambda: not any(f["kind"] == "leaked_clients" for f in db.findings(open_only=True)), 60, 0.5,
                     "the leak's finding to resolve")

            socks += _leak(testing, 2000)
            wait_for(lambda: any(a["action"] == "remediation.policy" and a["result"] == "planned only"
                                 for a in db.audit(limit=50)), 60, 0.5, "the second leak to be planned")
            applied = [p for p in db.plans() if p["created_by"] == "auto" and p["state"] == "applied"]
            assert [p["id"] for p in applied] == [first["id"]], "the policy applied twice within its cooldown"
            note = next(a for a in db.audit(limit=50) if a["result"] == "planned only")
            assert "auto_cooldown" in note["detail"]["detail"]
            time.sleep(3)
            assert idle_from_testing() >= LEAK            # still there: waiting for a person
        finally:
            admin.close()
            for s in socks:
                s.close()
            db.close()
