"""relocate_shard through the remediation engine.

Refusals on a cluster file alone (nothing runs, nothing is written). Then, on a real `chatops up`
cluster (two shards, a chat host per cluster, HAProxy on each, the supervisor following the file):
shard0, seeded with a few thousand keys, moves from redis1:6379 to redis2:6390 while a writer keeps
writing through chat1's listener and a loadgen chats in the lobby. Afterwards every seeded key and
every acknowledged write is on the new process, a write through chat1's listener lands there, the
old processes are gone, the cluster file and every chat host's HAProxy (config on disk and runtime)
say redis2:6390, and the audit has the record.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cluster import clusterfile
from cluster.rundir import RunDir
from collectors import haproxy as haproxy_stats
from collectors.haproxy_runtime import command
from controlplane.database import Database
from controlplane.remediation import plans, relocate_shard
from controlplane.remediation.base import BadParams, Busy, Context
from tests.conftest import (
    cluster_up,
    redis_auth,
    require,
    small_cluster,
    start_loadgen,
    stop_loadgen,
    wait_for,
    write_cluster,
)

SEEDED = 3000


def _ctx(tmp_path, doc: dict) -> Context:
    config = write_cluster(tmp_path / "cluster.yaml", doc)
    return Context(cf=clusterfile.load(config).spec, cluster_path=config, run=RunDir(tmp_path / "run"),
                   db=Database(tmp_path / "db.sqlite3"))


@pytest.mark.parametrize("doc_patch,params,match", [
    (None, {"name": "shard9", "host": "redis2", "port": 6390}, "bad parameter name: 'shard9' is not one of"),
    (None, {"name": "shard0", "host": "chat1", "port": 6390}, "bad parameter host"),
    (None, {"name": "shard0", "host": "redis1", "port": 6379}, "shard0 is already on redis1:6379"),
    (None, {"name": "shard0", "host": "redis2", "port": 6379}, "(?s)bad parameter port: .*duplicate port 6379"),
    (None, {"name": "shard0", "host": "redis2", "port": 6390, "via_port": 6390}, "bad parameter via_port: must differ"),
    (None, {"name": "shard0", "host": "redis2", "port": 6390, "via_port": 6379},
     "(?s)bad parameter via_port: .*duplicate port 6379"),
    ("replica", {"name": "shard0", "host": "redis2", "port": 6390},
     "shard0 already has a replica, on redis2:6380.*remove redis.shards.0.replica.*via_port=6380"),
    ("replica", {"name": "shard0", "host": "redis2", "port": 6380},
     "replica already runs at redis2:6380.*cannot become the primary in place"),
    ("remote", {"name": "shard0", "host": "redis2", "port": 6390}, "profile remote: .*Ansible"),
])
def test_refusals_name_the_problem_and_change_nothing(tmp_path, subnet, doc_patch, params, match):
    doc = small_cluster(subnet, replica=doc_patch == "replica")
    if doc_patch == "remote":
        doc["profile"] = "remote"
    ctx = _ctx(tmp_path, doc)
    before = ctx.cluster_path.read_text()
    with pytest.raises(BadParams, match=match):
        plans.make_plan(ctx, [("relocate_shard", params)], "tester")
    assert ctx.cluster_path.read_text() == before
    ctx.db.close()


class Writer(threading.Thread):
    """SET w:<n> through chat1's listener for shard0, one after another, all through the move: every
    acknowledged write must be on the new process afterwards. No client-side retries (as clue's
    pools): every error a client would see is counted, not hidden."""

    def __init__(self, address: str, port: int):
        super().__init__(daemon=True)
        self.address, self.port = address, port
        self.stop = threading.Event()
        self.acked: list[int] = []
        self.errors: list[str] = []

    def run(self) -> None:
        r = redis.Redis(**redis_auth(user="clue"), host=self.address, port=self.port, socket_timeout=3,
                        retry=Retry(NoBackoff(), 0))
        n = 0
        while not self.stop.is_set():
            try:
                r.set(f"{{w:{n}}}", n)
                self.acked.append(n)
            except redis.RedisError as exc:
                self.errors.append(f"{time.monotonic():.3f} {exc!r}")
                time.sleep(0.01)
            n += 1
            time.sleep(0.002)
        r.close()


def test_relocate_shard0_live_to_redis2_6390(run_dir, subnet, tmp_path):
    require("redis-server")
    require("haproxy")
    config = write_cluster(run_dir.parent / f"{run_dir.name}.yaml", small_cluster(subnet))
    try:
        with cluster_up(config, run_dir) as c:
            cf = clusterfile.load(config).spec
            run = RunDir(run_dir)
            db = Database(tmp_path / "db.sqlite3")
            ctx = Context(cf=cf, cluster_path=config, run=run, db=db)
            old_address, new_address = cf.address("redis1"), cf.address("redis2")
            old_pid = c.pid_of("redis-shard0")

            old = redis.Redis(**redis_auth(user="clue"), host=old_address, port=6379)
            pipe = old.pipeline(transaction=False)
            for i in range(SEEDED):
                pipe.set(f"{{seed:{i}}}", f"v{i}", ex=3600 if i % 2 else None)
            pipe.execute()
            assert old.dbsize() >= SEEDED

            plan = plans.make_plan(ctx, [("relocate_shard", {"name": "shard0", "host": "redis2", "port": 6390})],
                                   "tester")
            step = plan["steps"][0]
            via = step["params"]["via_port"]
            assert step["params"]["from"] == "redis1:6379" and via not in (None, 6379, 6390), step["params"]
            assert plan["subject"] == "shard:shard0" and step["changes"]
            text = "\n".join(step["diff"])
            assert "set server redis-shard0/shard0" in text and "CLIENT PAUSE" in text and "haproxy -c" in text, text
            assert f"server shard0 {new_address}:6390" in text, text              # the HAProxy config diff
            assert "redis2" in text and "6390" in text
            # Planning changed nothing.
            assert clusterfile.load(config).spec.redis.shards[0].host == "redis1"
            with pytest.raises(redis.ConnectionError):
                redis.Redis(**redis_auth(), host=new_address, port=6390, socket_connect_timeout=0.5).ping()

            loadgen = start_loadgen(c, f"{subnet}.77", clients=20, duration=90, room="lobby")
            time.sleep(3)
            writer = Writer(cf.address("chat1"), cf.listener_port(0))
            writer.start()
            time.sleep(1)
            started = time.monotonic()
            try:
                done = plans.apply_plan(ctx, plan["id"], "tester")
            finally:
                took = time.monotonic() - started
                time.sleep(1)
                writer.stop.set()
                writer.join(10)
            assert done["state"] == "applied", done["result"]
            result = done["result"]["steps"][0]

            new = redis.Redis(**redis_auth(), host=new_address, port=6390, decode_responses=True)
            assert new.info("replication")["role"] == "master"
            # Every seeded key, with its value and TTL kind.
            values = new.mget([f"{{seed:{i}}}" for i in range(SEEDED)])
            assert values == [f"v{i}" for i in range(SEEDED)]
            ttls = new.pipeline(transaction=False)
            for i in range(SEEDED):
                ttls.ttl(f"{{seed:{i}}}")
            got = ttls.execute()
            assert all((t > 0) if i % 2 else (t == -1) for i, t in enumerate(got))
            # Every acknowledged write of the writer is on the new process.
            assert len(writer.acked) > 100
            present = new.mget([f"{{w:{n}}}" for n in writer.acked])
            missing = [n for n, v in zip(writer.acked, present) if v != str(n)]
            assert missing == [], missing[:20]
            # A write through chat1's listener now lands on the new process.
            via_chat1 = redis.Redis(**redis_auth(user="clue"), host=cf.address("chat1"), port=cf.listener_port(0),
                                    decode_responses=True)
            via_chat1.set("{after}.the-move", "here")
            assert new.get("{after}.the-move") == "here"
            # The old process and the via process are gone: the supervisor stopped them.
            wait_for(lambda: all(p["name"] != "redis-shard0-replica" for p in c.state["processes"]), 20,
                     what="the via replica to leave state.json")
            procs = {p["name"]: p for p in c.state["processes"]}
            assert (procs["redis-shard0"]["address"], procs["redis-shard0"]["port"]) == (new_address, 6390)
            assert procs["redis-shard0"]["pid"] != old_pid
            for address, port in ((old_address, 6379), (new_address, via)):
                with pytest.raises(redis.ConnectionError):
                    redis.Redis(**redis_auth(), host=address, port=port, socket_connect_timeout=0.5).ping()
            # The cluster file says redis2:6390, with no replica.
            shard0 = clusterfile.load(config).spec.redis.shards[0]
            assert (shard0.host, shard0.port, shard0.replica) == ("redis2", 6390, None)
            # Every chat host's HAProxy: the config on disk and the runtime.
            for host, _ in cf.chat_hosts():
                cfg = run.haproxy_config(host).read_text()
                assert f"server shard0 {new_address}:6390 check" in cfg and f"{old_address}:6379" not in cfg
                state = haproxy_stats.parse_servers_state(command(run.haproxy_socket(host),
                                                                  "show servers state redis-shard0"))
                row = next(r for r in state.servers if r["srv_name"] == "shard0")
                assert (row["srv_addr"], row["srv_port"]) == (new_address, 6390)
            # The audit has it; a second apply changes nothing.
            [record] = db.audit_for_plan(plan["id"])
            assert (record["actor"], record["action"], record["result"]) == \
                ("tester", "remediation.relocate_shard", "ok")
            assert plans.apply_plan(ctx, plan["id"], "tester")["applied_at"] == done["applied_at"]

            report = stop_loadgen(loadgen, timeout=120)
            figures = {
                "apply_s": round(took, 1), "pauses_ms": result["changed"]["pauses_ms"],
                "keys": result["changed"]["keys"], "sampled_present": result["changed"]["sampled_present"],
                "sampled": result["changed"]["sampled"],
                "writer": {"acked": len(writer.acked), "errors": len(writer.errors),
                           "first_errors": writer.errors[:5]},
                "loadgen": {k: report.get(k) for k in ("sent", "accepted", "rejected", "delivered", "expected",
                                                       "completeness", "lost", "errors")},
            }
            print("\nrelocate_shard figures: " + json.dumps(figures))
            print(result["detail"])
            assert report["accepted"] > 0 and report["completeness"] is not None
            db.close()
    finally:
        config.unlink(missing_ok=True)


def test_an_existing_replica_carries_the_data_and_a_switch_already_made_is_finished(run_dir, subnet, tmp_path):
    """shard0 already has a replica on redis2:6380: with via_port=6380 the move uses it (the file
    is as after step 1 of a move). Its first switch is made here by hand, as an apply killed right
    after it would leave it; applying the plan finishes that switch instead of repeating it."""
    require("redis-server")
    require("haproxy")
    config = write_cluster(run_dir.parent / f"{run_dir.name}.yaml", small_cluster(subnet, replica=True))
    try:
        with cluster_up(config, run_dir) as c:
            cf = clusterfile.load(config).spec
            db = Database(tmp_path / "db.sqlite3")
            ctx = Context(cf=cf, cluster_path=config, run=RunDir(run_dir), db=db)
            primary = redis.Redis(**redis_auth(user="clue"), host=cf.address("redis1"), port=6379)
            pipe = primary.pipeline(transaction=False)
            for i in range(SEEDED):
                pipe.set(f"{{seed:{i}}}", f"v{i}")
            pipe.execute()
            params = {"name": "shard0", "host": "redis2", "port": 6390, "via_port": 6380}
            plan = plans.make_plan(ctx, [("relocate_shard", params)], "tester")
            step = plan["steps"][0]
            assert "1. cluster file: a replica of shard0 on redis2:6380" in step["diff"][1]
            assert step["diff"][1].endswith("(done)") and not step["diff"][2].endswith(("(done)", "repeated)")), step["diff"][:3]

            src = relocate_shard.Place("redis1", cf.address("redis1"), 6379)
            via = relocate_shard.Place("redis2", cf.address("redis2"), 6380)
            progress = relocate_shard.Progress()
            wait_for(lambda: redis.Redis(**redis_auth(), host=via.address, port=6380).info("replication")["master_link_status"]
                     == "up", 30, 0.2, "the replica to sync")
            relocate_shard._hop(ctx, cf, "shard0", src, via, progress)
            assert redis.Redis(**redis_auth(), host=via.address, port=6380).info("replication")["role"] == "master"
            replanned = plans.draft_step(ctx, "relocate_shard", step["params"])
            assert replanned["fingerprint"] == step["fingerprint"]
            assert replanned["diff"][3].endswith("(made by an earlier apply; finished, not repeated)"), replanned["diff"]

            # While a slot migration holds the slot map, the apply is refused (409) and touches nothing.
            with plans._locked(ctx, ["slotmap"]):
                with pytest.raises(Busy, match="another apply holds slotmap"):
                    plans.apply_plan(ctx, plan["id"], "tester")
            assert ctx.db.plan(plan["id"])["state"] == "planned"
            assert clusterfile.load(config).spec.redis.shards[0].host == "redis1"

            done = plans.apply_plan(ctx, plan["id"], "tester")
            assert done["state"] == "applied", done["result"]
            detail = done["result"]["steps"][0]["detail"]
            assert "the switch to redis2:6380 was already made" in detail and "from redis1:6379 to" not in detail
            new = redis.Redis(**redis_auth(), host=cf.address("redis2"), port=6390, decode_responses=True)
            assert new.mget([f"{{seed:{i}}}" for i in range(SEEDED)]) == [f"v{i}" for i in range(SEEDED)]
            shard0 = clusterfile.load(config).spec.redis.shards[0]
            assert (shard0.host, shard0.port, shard0.replica) == ("redis2", 6390, None)
            wait_for(lambda: {p["name"] for p in c.state["processes"]} >= {"redis-shard0"} and
                     "redis-shard0-replica" not in {p["name"] for p in c.state["processes"]}, 20,
                     what="the replica to be stopped")
            for port in (6379, 6380):
                address = cf.address("redis1" if port == 6379 else "redis2")
                with pytest.raises(redis.ConnectionError):
                    redis.Redis(**redis_auth(), host=address, port=port, socket_connect_timeout=0.5).ping()
            db.close()
    finally:
        config.unlink(missing_ok=True)
