"""kill-leaked.yml on the live default cluster: 1,000 idle connections from chat-testing's
address through its HAProxy listener for shard1 -- the talk's leak -- are closed by the playbook
through the control plane's plan API (kill_clients), and the audit, the plan's created_by and its
applied_by name the playbook's actor.

The shared cluster keeps the default `idle_client_after` (60 s), so waiting for the leaked_clients
finding would cost a minute. The playbook does not need it: kill_clients without idle_over_s
closes every connection chat-testing holds to shard1 (what the talk's engineers did by hand), so
the test runs it that way, and the verification has nothing to watch."""

from __future__ import annotations

import socket

from collectors import redis as rc
from controlplane.remediation.kill_clients import parse_clients
from tests.ansible.conftest import api_get, recap
from tests.conftest import open_idle, redis_creds

LEAK = 1000
ACTOR = "ansible:kill-leaked.yml"


def _from(admin: rc.Conn, address: str) -> list[dict]:
    return [c for c in parse_clients(admin.call("CLIENT", "LIST")) if c["ip"] == address]


def _closed(s: socket.socket) -> bool:
    s.settimeout(10)
    try:
        return s.recv(16) == b""
    except ConnectionResetError:
        return True


def test_kill_leaked_closes_1000_idle_connections_and_the_audit_names_the_playbook(live_default):
    spec = live_default.spec
    names = [s.name for s in spec.redis.shards]
    shard1 = spec.redis.shards[names.index("shard1")]
    testing = spec.address("chat-testing")
    admin = rc.Conn(spec.address(shard1.host), shard1.port, auth=redis_creds(live_default.run))
    socks: list[socket.socket] = []
    try:
        before = len(_from(admin, testing))
        socks = open_idle(testing, spec.listener_port(names.index("shard1")), LEAK)
        assert len(_from(admin, testing)) >= before + LEAK     # HAProxy opened one to Redis for each

        run = live_default.play("kill-leaked.yml", "-e", "host=chat-testing", "-e", "shard=shard1",
                                "-e", "yes=true")
        out = run.stdout + run.stderr
        assert run.returncode == 0, out
        counts = recap(run.stdout)["controlplane"]
        assert counts["failed"] == 0 and counts["changed"] >= 1, counts
        assert "kill_clients on shard:shard1" in out and "connections from chat-testing" in out
        assert "applied by ansible:kill-leaked.yml (token:" in out
        assert live_default.env()["CHATOPS_API_TOKEN"] not in out              # no_log kept it out

        # Every leaked connection is closed, and none of them is left on the shard: what is left
        # from chat-testing is at most its clue's pool, reconnected since.
        assert all(_closed(s) for s in socks)
        left = _from(admin, testing)
        cluster = next(c for c in spec.clusters.values() if "chat-testing" in c.hosts)
        assert len(left) <= cluster.services.clue.cache_max_conns, left

        plan = next(p for p in api_get(live_default.base, "/plans?limit=20")["plans"]
                    if p["action"] == "kill_clients" and p["steps"][0]["params"]["shard"] == "shard1")
        assert plan["state"] == "applied"
        step = plan["result"]["steps"][0]
        assert step["ok"] and step["changed"]["killed"] >= LEAK and step["changed"]["left"] == 0
        for who in (plan["created_by"], plan["applied_by"]):
            assert who.startswith(f"{ACTOR} (token:") and who.endswith(")"), who
        assert plan["verification"]["state"] in ("nothing_to_watch", "resolved"), plan["verification"]
        audit = api_get(live_default.base, "/audit?limit=50")["audit"]
        kills = [a for a in audit if a["action"] == "remediation.kill_clients"
                 and a["actor"].startswith(ACTOR)]
        assert kills and kills[0]["result"] == "ok", audit[:5]
        assert kills[0]["actor"] == plan["applied_by"]
    finally:
        admin.close()
        for s in socks:
            s.close()
