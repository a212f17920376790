"""The talk's 2:56 pm fix, live: a shard made hot by chat traffic, loadgen in every room, then
`add_shard` and the hot-shard incident's own reshard plan, through the control plane's API.

Real redis-servers, HAProxy on every chat host, edges, clues, exchanges, the control plane and the
supervisor (which starts the new shard when the cluster file names it). Checked afterwards:
every key that existed, and every ban and timeout set during the moves, is readable with its value
and TTL; the loadgen lost nothing and saw no `msg_unavailable`; nothing reaching the shards through
every chat host's listeners failed during the reloads; the hot-shard finding resolved.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request

import pytest
import redis

from chat import keys
from chat.cache import ShardedCache
from chat.sharding import SlotMap, key_slot
from cluster import clusterfile
from controlplane.database import Database
from controlplane.remediation.base import BadParams
from tests.conftest import (
    api_json,
    live_controlplane,
    redis_auth,
    run_secrets,
    start_loadgen,
    stop_loadgen,
    wait_for,
)

TOKEN = "add-shard-test-token"
SEEDED = 3000


def _patch(doc: dict) -> None:
    doc["controlplane"]["thresholds"] = {"hold": "2s", "hot_shard_min_ops_per_s": 300,
                                         "hot_shard_ops_factor": 2.0, "hot_shard_cpu_percent": 100}
    # A reload hands new connections to a new HAProxy worker; the old one keeps the IRC sessions
    # it has until hard_stop_after, then closes them (clients reconnect). Longer than this test,
    # so every disconnection the loadgen counts would be one the move caused.
    doc["haproxy"]["hard_stop_after"] = "5m"


def api(base: str, method: str, path: str, body=None, timeout: float = 300) -> dict:
    status, reply = api_json(base, method, path, body, token=TOKEN, timeout=timeout)
    assert status in (200, 201), (method, path, status, str(reply)[:2000])
    return reply


def tokens_on_shard0(n: int) -> list[str]:
    """Auth tokens in `n` distinct slots of shard0: load that a reshard can spread."""
    even = SlotMap.even(2)
    out, seen = [], set()
    i = 0
    while len(out) < n:
        tok = f"hot{i}"
        slot = key_slot(keys.token(tok))
        if even.shard_of_slot(slot) == 0 and slot not in seen:
            out.append(tok)
            seen.add(slot)
        i += 1
    return out


class Hammer(threading.Thread):
    """Token lookups through clue on chat1, about 2,000 a second in small batches: shard0 runs
    hot, and clue counts every slot of it, which is what the planner weighs. Small batches leave
    clue's ten pooled connections to shard0 free for the chat's own messages: the test is about
    the move, not about starving clue."""

    def __init__(self, address: str, port: int, internal_token: str):
        super().__init__(daemon=True)
        self.url = f"http://{address}:{port}/v1/auth"
        self.headers = {"Content-Type": "application/json", "Authorization": f"Bearer {internal_token}"}
        self.stop = threading.Event()
        self.tokens = tokens_on_shard0(1500)

    def run(self) -> None:
        batches = [json.dumps({"items": [{"token": t} for t in self.tokens[i:i + 20]]}).encode()
                   for i in range(0, len(self.tokens), 20)]
        n = 0
        while not self.stop.is_set():
            req = urllib.request.Request(self.url, data=batches[n % len(batches)], headers=self.headers)
            n += 1
            try:
                urllib.request.urlopen(req, timeout=10).read()
            except OSError:
                time.sleep(0.1)
            time.sleep(0.008)


class ListenerWatch(threading.Thread):
    """PING every shard through every chat host's listener, over fresh and kept connections, all
    along: any failure is a client error caused by a reload."""

    def __init__(self, cf):
        super().__init__(daemon=True)
        self.targets = [(cf.address(h), cf.listener_port(i)) for h, _ in cf.chat_hosts()
                        for i in range(len(cf.redis.shards))]
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.pings = 0

    def run(self) -> None:
        kept = {t: redis.Redis(**redis_auth(), host=t[0], port=t[1], socket_timeout=2) for t in self.targets}
        while not self.stop.is_set():
            for t in self.targets:
                try:
                    assert kept[t].ping()
                    fresh = redis.Redis(**redis_auth(), host=t[0], port=t[1], socket_timeout=2)
                    assert fresh.ping()
                    fresh.close()
                    self.pings += 2
                except (redis.RedisError, OSError, AssertionError) as exc:
                    self.errors.append(f"{t}: {exc!r}")
            time.sleep(0.02)


async def seed(cache: ShardedCache) -> dict[str, tuple[str, bool]]:
    out = {}
    for i in range(SEEDED):
        login = f"seed{i}"
        pipe = cache.pipeline_for(keys.color(login))
        pipe.set(keys.color(login), f"#{i:06x}", ex=3600 if i % 2 else None)
        pipe.set(keys.user(login) + ":x", "y")  # noqa -- same hash tag, a second key in the slot
        await pipe.execute()
        out[keys.color(login)] = (f"#{i:06x}", bool(i % 2))
    return out


async def moderate(cache: ShardedCache, stop: threading.Event, set_bans: dict) -> None:
    """Bans and timeouts, as clue writes them, all through the moves."""
    i = 0
    while not stop.is_set():
        room = f"modroom{i % 50}"
        expiry = 0 if i % 2 else int(time.time()) + 3600
        await cache.client_for(keys.bans(room)).hset(keys.bans(room), f"troll{i}", expiry)
        set_bans[(room, f"troll{i}")] = expiry
        i += 1
        await asyncio.sleep(0.01)


def test_add_shard_then_reshard_cools_the_hot_shard_and_loses_nothing(monkeypatch):
    monkeypatch.setenv("CHATOPS_API_TOKEN", TOKEN)
    with live_controlplane(traffic=False, patch=_patch) as (c, base):
        cf = clusterfile.load(c.config).spec
        db = Database(c.run / "controlplane.sqlite3")
        loadgen = start_loadgen(c, f"{cf.address('chat1').rsplit('.', 1)[0]}.77", clients=40, duration=150,
                                room="lobby,testroom")
        watch = ListenerWatch(cf)
        watch.start()
        hammer = Hammer(cf.address("chat1"), cf.clusters["main"].services.clue.port,
                        run_secrets(c.run)["CHATOPS_INTERNAL_TOKEN"])
        hammer.start()
        stop_mod = threading.Event()
        set_bans: dict = {}
        loop = asyncio.new_event_loop()
        cache = ShardedCache.for_host(cf, "chat1", timeout=2.0)
        try:
            expected = loop.run_until_complete(seed(cache))
            follow = loop.create_task(cache.follow_map())
            mod = loop.create_task(moderate(cache, stop_mod, set_bans))
            runner = threading.Thread(target=loop.run_until_complete, args=(asyncio.gather(follow, mod,
                                                                                          return_exceptions=True),),
                                      daemon=True)
            runner.start()

            hot = wait_for(lambda: next((f for f in db.findings(open_only=True)
                                         if f["kind"] == "hot_shard" and f["subject"] == "shard0"), None),
                           60, 0.5, "shard0 to be found hot")
            assert hot["remediation"]["action"] == "reshard"
            # The incident's plan is a real reshard: slots chosen by the load clue measured, with
            # the keys and bytes to move and the load expected afterwards (not applied: the
            # operator adds a shard first, which makes this plan stale).
            incident = wait_for(lambda: next((i for i in db.incidents() if i["state"] == "open" and any(
                f["id"] == hot["id"] for f in db.incident_findings(i["id"]))), None), 20, 0.5, "the incident")
            proposal = api(base, "POST", f"/incidents/{incident['id']}/plan")
            assert [(s["action"], s["params"]["shard"], s["params"]["to_shard"]) for s in proposal["steps"]] == \
                [("reshard", "shard0", "shard1")], proposal
            shown = "\n".join(proposal["steps"][0]["diff"])
            assert "# planner (load, clue's per-slot counters on" in shown and "expected load per shard" in shown, shown
            assert " keys, about " in shown and "from shard0 to shard1" in shown, shown

            # 1. add_shard: planned with the slots it will take, then applied.
            plan = api(base, "POST", "/plans", {"action": "add_shard",
                                                "params": {"name": "shard2", "host": "redis2", "port": 6380}})
            step = plan["steps"][0]
            assert step["params"]["moves"] and step["params"]["moves"] != "none", step
            text = "\n".join(step["diff"])
            assert "listener redis-shard2 on port 2002" in text and "move " in text, text
            done = api(base, "POST", f"/plans/{plan['id']}/apply")
            assert done["state"] == "applied", done
            assert "shard2" in [s.name for s in clusterfile.load(c.config).spec.redis.shards]

            # 2. the incident's own fix, a load-aware reshard off the hot shard, while it is still hot.
            # add_shard fills the new shard to the mean from the busiest shards, which can leave
            # shard0 above its peers; the fix then moves the rest. Planned again if one fix was made
            # on counters that still held the load from before the move (an operator's second click).
            fixes = []
            deadline = time.monotonic() + 120
            while db.finding(hot["id"])["state"] != "resolved" and time.monotonic() < deadline:
                if len(fixes) < 3 and db.incident(incident["id"])["state"] == "open" and \
                        db.finding(hot["id"])["state"] == "open":
                    fix = api(base, "POST", f"/incidents/{incident['id']}/plan")
                    assert all(s["action"] == "reshard" for s in fix["steps"]), fix
                    assert api(base, "POST", f"/plans/{fix['id']}/apply")["state"] == "applied"
                    fixes.append([(s["params"], s["diff"][:12]) for s in fix["steps"]])
                time.sleep(20 if fixes else 1)
            final = db.finding(hot["id"])
            assert final["state"] == "resolved", (final["title"], final["evidence"], fixes)
            # Cooled by spreading the load, not by moving the hot spot: no other shard ran hot.
            moved_heat = [(f["subject"], f["title"]) for f in db.findings() if f["kind"] == "hot_shard"
                          and f["subject"] != "shard0"]
            assert moved_heat == [], (moved_heat, fixes)
        finally:
            stop_mod.set()
            hammer.stop.set()
            watch.stop.set()
            hammer.join(15)
            watch.join(15)
        report = stop_loadgen(loadgen, timeout=120)
        loop.call_soon_threadsafe(follow.cancel)
        runner.join(10)
        assert not runner.is_alive()

        async def check():
            cache2 = ShardedCache.for_host(clusterfile.load(c.config).spec, "chat1", timeout=2.0)
            await cache2.refresh_map()
            assert cache2.slot_map.n_shards == 3 and cache2.slot_map.counts()[2] > 0
            lost = []
            for key, (value, ttl) in expected.items():
                got = await cache2.client_for(key).get(key)
                t = await cache2.client_for(key).ttl(key)
                if got != value or (t <= 0 if ttl else t != -1):
                    lost.append((key, got, t))
            bans = []
            for (room, who), expiry in set_bans.items():
                got = await cache2.client_for(keys.bans(room)).hget(keys.bans(room), who)
                if got != str(expiry):
                    bans.append((room, who, expiry, got))
            await cache2.close()
            return lost, bans

        lost, bans = loop.run_until_complete(check())
        loop.run_until_complete(cache.close())
        assert lost == [] and len(expected) == SEEDED
        assert bans == [] and len(set_bans) > 50
        assert watch.errors == [] and watch.pings > 100
        assert report["completeness"] == 1.0, report
        warnings = [ln for name in ("clue-chat1", "clue-chat-testing", "edge-chat1", "edge-chat-testing")
                    for ln in (c.run / "logs" / f"{name}.log").read_text(errors="replace").splitlines()
                    if "[redis]" in ln or "[exchange]" in ln or "Traceback" in ln or "rror" in ln]
        assert report["rejected"].get("msg_unavailable", 0) == 0, (report, warnings[-30:])
        assert not report["errors"], (report, warnings[-30:])
        # Every step is in the audit, by the API's actor.
        actions = [a["action"] for a in db.audit(limit=50)]
        assert "remediation.add_shard" in actions


def test_an_add_shard_cut_short_after_writing_the_file_is_finished_by_the_same_plan(tmp_path, subnet, run_dir):
    """The state an apply leaves when it dies right after writing the cluster file (the shard did
    not come up, a reload failed, the control plane was killed): applying the plan again finishes
    it instead of calling it stale."""
    from cluster import writeback
    from cluster.rundir import RunDir
    from controlplane.remediation import plans
    from controlplane.remediation.base import Context
    from tests.conftest import cluster_up, small_cluster, write_cluster

    config = write_cluster(tmp_path / "cluster.yaml", small_cluster(subnet))
    with cluster_up(config, run_dir):
        cf = clusterfile.load(config).spec
        ctx = Context(cf=cf, cluster_path=config, run=RunDir(run_dir), db=Database(run_dir / "cp.sqlite3"))
        plan = plans.make_plan(ctx, [("add_shard", {"name": "shard2", "host": "redis2", "port": 6380})], "tester")
        writeback.apply_edit(writeback.plan_edit(config, {"redis.shards.2": {"name": "shard2", "host": "redis2",
                                                                             "port": 6380}}))
        done = plans.apply_plan(ctx, plan["id"], "tester")
        assert done["state"] == "applied", done["result"]
        assert "answers on" in done["result"]["detail"] and "moved" in done["result"]["detail"]
        # A second add_shard of the same name elsewhere is refused with where it is.
        again = clusterfile.load(config).spec
        ctx.cf = again
        with pytest.raises(BadParams, match="shard2 is already a shard"):
            plans.make_plan(ctx, [("add_shard", {"name": "shard2", "host": "redis1", "port": 6390})], "tester")
        # Balanced already (by slot count here: no traffic): the reshard plan changes nothing and says why.
        balanced = plans.make_plan(ctx, [("reshard", {"shard": "shard2"})], "tester")
        assert balanced["changes"] is False and "nothing to move" in balanced["steps"][0]["summary"]
        assert any("planner (slot count" in line for line in balanced["steps"][0]["diff"]), balanced
        assert plans.apply_plan(ctx, balanced["id"], "tester")["state"] == "applied"
        with pytest.raises(BadParams, match="already a shard, on redis2:6380"):
            plans.make_plan(ctx, [("add_shard", {"name": "shard2", "host": "redis1", "port": 6390,
                                                 "move": False})], "tester")
