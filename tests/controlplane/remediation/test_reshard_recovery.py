"""A reshard whose control plane is killed in the middle of moving keys is finished by applying the
same plan again, and loses nothing. Real cluster and control plane (`chatops up --controlplane`,
which restarts the killed control plane); the kill is SIGKILL while the progress file says keys are
moving; the plan is applied through the API both times, as an operator would."""

from __future__ import annotations

import os
import signal
import threading

import redis

from chat.sharding import SlotMap, describe_slots, key_slot
from cluster import clusterfile
from cluster.rundir import RunDir
from controlplane.resharding import progress
from tests.conftest import api_json, live_controlplane, redis_auth, wait_for

TOKEN = "reshard-recovery-token"
KEYS = 300_000


def api(base: str, method: str, path: str, body=None, timeout: float = 300) -> tuple[int, dict]:
    return api_json(base, method, path, body, token=TOKEN, timeout=timeout)


def test_a_reshard_cut_short_by_a_killed_control_plane_is_finished_by_the_same_plan(monkeypatch):
    monkeypatch.setenv("CHATOPS_API_TOKEN", TOKEN)
    with live_controlplane(traffic=False) as (c, base):
        cf = clusterfile.load(c.config).spec
        # Seeded as clue, the one user that may write the chat's keys; read back as the control plane.
        s0, s1 = (redis.Redis(**redis_auth(user="clue"), host=cf.address(s.host), port=s.port, socket_timeout=30)
                  for s in cf.redis.shards)
        even = SlotMap.even(2)
        keys = []
        pipe = s0.pipeline(transaction=False)
        i = 0
        while len(keys) < KEYS:
            key = f"{{u{i}}}.color"
            i += 1
            if even.shard_of(key) != 0:
                continue
            keys.append(key)
            pipe.set(key, i, ex=3600 if i % 2 else None)
            if len(pipe) >= 5000:
                pipe.execute()
        pipe.execute()
        moving = even.slots_of(0)[1::2]

        status, plan = api(base, "POST", "/plans", {"action": "reshard", "params": {
            "shard": "shard0", "to_shard": "shard1", "slots": describe_slots(moving, limit=len(moving))}})
        assert status == 201, plan
        first: dict = {}

        def apply_first():
            try:
                first["status"], first["body"] = api(base, "POST", f"/plans/{plan['id']}/apply", timeout=120)
            except OSError as exc:           # the control plane died under the request, as intended
                first["error"] = exc
        applying = threading.Thread(target=apply_first, daemon=True)
        applying.start()

        def moving_keys():
            p = progress.read(RunDir(c.run))
            return p and p.get("phase") == "moving" and p.get("keys_moved", 0) > 0 and p
        try:
            seen = wait_for(moving_keys, 60, 0.005, "the migration to be moving keys")
        except AssertionError:
            raise AssertionError((progress.read(RunDir(c.run)), first.get("status"),
                                  str(first.get("body"))[:500])) from None
        pid = c.pid_of("controlplane")
        os.kill(pid, signal.SIGKILL)
        applying.join(60)
        assert "error" in first, f"the first apply answered before the kill: {first.get('status')}"
        # Cut short: some keys moved, not all.
        assert seen["keys_moved"] < seen["keys_total"]

        wait_for(lambda: c.pid_of("controlplane") not in (None, pid), 30, 0.2, "the supervisor to restart it")
        def answers():
            try:
                return api(base, "GET", "/plans", timeout=5)[0] == 200
            except OSError:
                return False
        wait_for(answers, 60, 0.5, "the restarted control plane")
        status, body = api(base, "GET", f"/plans/{plan['id']}")
        assert body["state"] == "applying", body          # the dead apply left it so
        status, done = api(base, "POST", f"/plans/{plan['id']}/apply")
        assert status == 200 and done["state"] == "applied", done
        # The second apply moved only what the first had not.
        again = done["result"]["steps"][0]["changed"]["keys"]
        assert 0 < again < len(keys) / 2, done["result"]["detail"]

        # Every key is on the shard the map says, once, with its TTL.
        final = SlotMap.from_json(s0.get("chatops:slotmap"))
        assert set(moving) <= set(final.slots_of(1))
        lost = []
        p0, p1 = s0.pipeline(transaction=False), s1.pipeline(transaction=False)
        for key in keys:
            p0.exists(key)
            p1.ttl(key)
        on0, ttl1 = p0.execute(), p1.execute()
        moved_set = set(moving)
        for key, a, t in zip(keys, on0, ttl1):
            there = key_slot(key) in moved_set
            if there and (a or t == -2):
                lost.append(key)
            if not there and (not a or t != -2):
                lost.append(key)
        assert lost == [], lost[:10]
        ttls = [t for key, t in zip(keys, ttl1) if key_slot(key) in moved_set]
        assert sum(1 for t in ttls if t > 0) > len(ttls) / 3            # the TTLs came along
        status, audit = api(base, "GET", "/audit")
        assert any(a["action"] == "remediation.resume" for a in audit["audit"]), audit
