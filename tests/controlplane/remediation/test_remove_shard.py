"""remove_shard from a terminal, as an operator runs it: `chatops plan remove_shard`, then `chatops
apply`. The shard's slots are drained onto the others with their keys, it leaves the cluster file,
the supervisor stops its redis-server, the published map no longer names it and no chat host's
HAProxy listens for it any more. Only the last shard can go; any other is refused with the reason.
Real cluster, control plane and supervisor."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from chat.cache import ShardedCache
from cluster import clusterfile
from cluster.rundir import RunDir
from controlplane.resharding import slotmap as slotmaps
from tests.conftest import REPO, live_controlplane, wait_for

TOKEN = "remove-shard-test-token"
SHARDS = {"shards": [{"name": "shard0", "host": "redis1", "port": 6379},
                     {"name": "shard1", "host": "redis2", "port": 6379},
                     {"name": "shard2", "host": "redis2", "port": 6380}]}


def chatops(c, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "controlplane.cli", *args, "--config", str(c.config),
                           "--run-dir", str(c.run)], capture_output=True, text=True, timeout=300, cwd=REPO)


def test_remove_shard_drains_it_then_takes_it_out_of_the_cluster(monkeypatch):
    monkeypatch.setenv("CHATOPS_API_TOKEN", TOKEN)
    with live_controlplane(traffic=False, redis=SHARDS) as (c, _base):
        cf = clusterfile.load(c.config).spec

        async def seed():
            cache = ShardedCache.for_host(cf, "chat1", timeout=2.0)
            for i in range(3000):
                await cache.client_for(f"{{k{i}}}.color").set(f"{{k{i}}}.color", i, ex=3600)
            on2 = sum(1 for i in range(3000) if cache.shard_of(f"{{k{i}}}.color") == 2)
            await cache.close()
            return on2
        assert asyncio.run(seed()) > 500

        refused = chatops(c, "plan", "remove_shard", "--set", "name=shard1")
        assert refused.returncode == 2 and "only the last shard (shard2) can be removed" in refused.stderr, refused

        planned = chatops(c, "plan", "remove_shard", "--set", "name=shard2")
        assert planned.returncode == 0, planned.stderr
        assert "from shard2 to shard0" in planned.stdout and "from shard2 to shard1" in planned.stdout
        # The cluster file's diff, as the plan shows it.
        assert any(ln.strip().startswith("-") and "name: shard2" in ln for ln in planned.stdout.splitlines()), \
            planned.stdout
        plan_id = planned.stdout.split()[1]
        applied = chatops(c, "apply", plan_id, "--yes")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert "result: ok" in applied.stdout, applied.stdout

        after = clusterfile.load(c.config).spec
        assert [s.name for s in after.redis.shards] == ["shard0", "shard1"]
        wait_for(lambda: "redis-shard2" not in {p["name"] for p in c.state["processes"]}, 20, 0.2,
                 "the supervisor to stop shard2")
        with slotmaps.connections(after) as conns:
            smap = slotmaps.load(after, c.config, RunDir(c.run), conns)
        assert smap.names == ("shard0", "shard1") and sum(smap.counts()) == 16384
        for host, _ in after.chat_hosts():
            config = (c.run / "haproxy" / f"{host}.cfg").read_text()
            assert "redis-shard2" not in config and "listen redis-shard1" in config

        async def check():
            cache = ShardedCache.for_host(after, "chat1", timeout=2.0)
            await cache.refresh_map()
            values = [await cache.client_for(f"{{k{i}}}.color").get(f"{{k{i}}}.color") for i in range(3000)]
            await cache.close()
            return values
        assert asyncio.run(check()) == [str(i) for i in range(3000)]


def test_a_drained_shards_slots_spread_by_load_and_idle_ones_by_count():
    from chat.sharding import SlotMap
    from controlplane.remediation.remove_shard import spread
    smap = SlotMap.even(3)
    leaving = smap.slots_of(2)
    # shard0 is busy, shard1 idle; two of the leaving slots carry load, the rest none.
    loads = {0: 500.0, leaving[0]: 80.0, leaving[1]: 40.0}
    out = spread(leaving, loads, smap, 2)
    assert leaving[0] in out[1] and leaving[1] in out[1]          # the load goes to the idle shard
    assert abs(len(out[0]) - len(out[1])) <= 2                    # the idle slots split evenly
    assert sorted(out[0] + out[1]) == leaving
