"""The talk's leak, fixed: 2,000 idle connections from chat-testing fill the main room's shard to
maxclients, clue is refused and edges refuse messages. `chatops fix <incident>` plans the
incident's remediation and `chatops apply <id> --yes` carries it out over the control plane's
admin connection: no connection from chat-testing is left, the shard gets an idle `timeout`
(live and in the cluster file), clue reconnects, messages are accepted, the incident resolves
and the audit names who applied what. Real redis-server, haproxy, chat services, loadgen
traffic and control plane; the CLI runs as an operator would run it."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys

import yaml

from chat import keys
from chat.sharding import SlotMap
from collectors import redis as rc
from controlplane.database import Database
from controlplane.remediation.kill_clients import parse_clients
from tests.conftest import REPO, drop_at_maxclients, live_controlplane, open_idle, redis_creds, wait_for

TOKEN = "leak-fix-test-token"
LEAK = 2000
ROOM = "lobby"
SHARD = f"shard{SlotMap.even(2).shard_of(keys.bans(ROOM))}"


def _patch(doc: dict) -> None:
    doc["redis"]["maxclients"] = LEAK + 200
    doc["controlplane"]["thresholds"] = {"hold": "3s", "idle_client_after": "2s"}


def _chatops(c, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "controlplane.cli", *args, "--config", str(c.config),
                           "--run-dir", str(c.run)], capture_output=True, text=True, timeout=180, cwd=REPO)


def _from(admin: rc.Conn, address: str) -> list[dict]:
    return [cl for cl in parse_clients(admin.call("CLIENT", "LIST")) if cl["ip"] == address]


def leak_to_maxclients(c, admin: rc.Conn, db: Database) -> tuple[list[socket.socket], str]:
    """The talk's state: the leak, then the shard at maxclients with clue's connections dropped.
    Returns the leaked sockets and chat-testing's address."""
    procs = {p["name"]: p for p in c.state["processes"]}
    testing, chat1 = procs["haproxy-chat-testing"]["address"], procs["haproxy-chat1"]["address"]
    port = 2000 + int(SHARD.removeprefix("shard"))
    socks = open_idle(testing, port, LEAK)
    open_kinds = lambda: {(f["kind"], f["subject"]) for f in db.findings(open_only=True)}  # noqa: E731
    wait_for(lambda: ("leaked_clients", f"chat-testing->{SHARD}") in open_kinds(), 40, 0.5, "the leak to be found")
    drop_at_maxclients(admin, chat1)
    wanted = {("ingestion_timeouts", "clue-chat1"), ("leaked_clients", f"chat-testing->{SHARD}")}
    wait_for(lambda: wanted <= open_kinds(), 60, 0.5, f"findings {sorted(wanted)}")
    return socks, testing


def test_fix_and_apply_clean_the_talks_leak(monkeypatch):
    monkeypatch.setenv("CHATOPS_API_TOKEN", TOKEN)
    with live_controlplane(traffic=True, patch=_patch) as (c, base):
        db = Database(c.run / "controlplane.sqlite3")
        shard = {p["name"]: p for p in c.state["processes"]}[f"redis-{SHARD}"]
        admin = rc.Conn(shard["address"], shard["port"], auth=redis_creds())
        socks: list[socket.socket] = []
        try:
            socks, testing = leak_to_maxclients(c, admin, db)
            # Nobody new gets in: the talk's state.
            try:
                probe = rc.Conn(shard["address"], shard["port"])      # PING needs no login
                refused = probe.call("PING") != "PONG"
                probe.close()
            except (rc.RedisError, OSError):
                refused = True
            assert refused, "the shard still accepts new connections"

            incident = wait_for(lambda: next((i for i in db.incidents(state="open") if any(
                f["kind"] == "leaked_clients" for f in db.incident_findings(i["id"]))), None), 20, 0.5,
                "the incident")
            fix = _chatops(c, "fix", str(incident["id"]), "--json")
            assert fix.returncode == 0, fix.stderr
            plan = json.loads(fix.stdout)
            assert [s["action"] for s in plan["steps"]] == ["kill_clients", "set_redis_config"]
            kill = plan["steps"][0]["params"]
            # idle_client_after (2 s) when found idle, half the CLIENT LIST interval when found by growth
            assert (kill["shard"], kill["host"]) == (SHARD, "chat-testing") and kill["idle_over_s"] in (1.0, 2.0)
            assert plan["state"] == "planned" and plan["incident_id"] == incident["id"]
            # Planning changed nothing.
            assert len(_from(admin, testing)) >= LEAK

            applied = _chatops(c, "apply", plan["id"], "--yes", "--no-wait", "--json")
            assert applied.returncode == 0, applied.stdout + applied.stderr
            result = json.loads(applied.stdout)
            assert result["state"] == "applied", result
            kill = result["result"]["steps"][0]
            assert kill["ok"] and kill["changed"]["killed"] >= LEAK and kill["changed"]["left"] == 0

            # Not one leaked connection is left. The testing cluster's own clue keeps talking to the
            # shard through its pool (it is busy, not idle, so the plan -- idle over 2 s -- spares it).
            left = _from(admin, testing)
            assert [cl for cl in left if cl["idle"] > 2] == []
            assert len(left) <= 10, left          # at most clue's pool (services.clue.cache_max_conns)
            assert admin.call("CONFIG", "GET", "timeout")[1] in (b"300", "300")
            doc = yaml.safe_load(c.config.read_text())
            index = [s["name"] for s in doc["redis"]["shards"]].index(SHARD)
            assert doc["redis"]["shards"][index]["timeout"] == 300

            # Clue reconnects and messages are accepted again; the incident resolves itself.
            wait_for(lambda: db.incident(incident["id"])["state"] == "resolved", 90, 1.0, "the incident to resolve")
            # The resolved leak still reads as what it was at its worst, not as "0 idle connections".
            leak = next(f for f in db.incident_findings(incident["id"]) if f["kind"] == "leaked_clients"
                        and f["subject"] == f"chat-testing->{SHARD}")
            worst = int(re.search(r"(?:holds|opened) ([\d,]+) ", leak["title"]).group(1).replace(",", ""))
            assert worst >= LEAK * 0.8 and leak["peak"] >= LEAK * 0.8, leak["title"]
            verification = wait_for(lambda: (db.plan(plan["id"])["verification"] or {}).get("state") == "resolved"
                                    and db.plan(plan["id"])["verification"], 30, 0.5, "the verification")
            assert verification["after_s"] >= 0

            audit = db.audit_for_plan(plan["id"])
            actions = {a["action"] for a in audit}
            assert {"remediation.kill_clients", "remediation.set_redis_config"} <= actions, audit
            assert all(a["actor"].startswith("token:") for a in audit)

            again = _chatops(c, "apply", plan["id"], "--yes", "--no-wait", "--json")
            assert again.returncode == 0 and json.loads(again.stdout)["applied_at"] == result["applied_at"]
        finally:
            admin.close()
            for s in socks:
                s.close()
            db.close()
