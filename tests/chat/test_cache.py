"""The sharded cache client against real redis-server shards behind each chat host's real HAProxy
(started by `chatops up`), checked from the shards' own side: where keys landed, which address
the connections came from, and what a stopped shard looks like to the caller and in the log."""

import asyncio
import io
import os
import re
import signal
import socket
import time

import pytest
import redis
import yaml

from chat import logs, slotguard
from chat.cache import (
    CacheUnavailable,
    CrossShardError,
    ShardedCache,
    ShardEndpoint,
    command_keys,
)
from chat.sharding import SlotMap, key_slot
from cluster import clusterfile
from tests.conftest import cluster_up, redis_auth, small_cluster, wait_for, write_cluster

TALK = re.compile(r"^[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d clue: \[redis\] (?P<event>.*)$")
NAME = "cache-test"     # CLIENT SETNAME, to tell our connections from the running clue's


@pytest.fixture
def cluster(tmp_path, subnet, run_dir):
    config = write_cluster(tmp_path / "cluster.yaml", small_cluster(subnet))
    with cluster_up(config, run_dir) as running:
        yield clusterfile.load(config).spec, running


def direct(cf, index: int) -> redis.Redis:
    """A client of shard `index` itself, bypassing the cache and HAProxy."""
    shard = cf.redis.shards[index]
    return redis.Redis(host=cf.address(shard.host), port=shard.port, socket_timeout=5, decode_responses=True,
                       **redis_auth())


def keys_on(cache: ShardedCache, shard: int, n: int, pattern: str = "{{u{}}}.color") -> list[str]:
    found = [pattern.format(i) for i in range(10_000) if cache.shard_of(pattern.format(i)) == shard]
    return found[:n]


async def until_reachable(cache: ShardedCache, timeout: float = 15.0) -> None:
    """HAProxy forwards once its health check has seen each shard."""
    deadline = time.monotonic() + timeout
    for index in range(len(cache.endpoints)):
        while True:
            try:
                await cache.client_for_shard(index).ping()
                break
            except CacheUnavailable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)


def test_keys_land_on_the_shard_the_slot_map_says(cluster):
    cf, _ = cluster
    # Not the even split: move ronni's slot to the other shard, so the map (not luck) decides.
    even = SlotMap.even(2)
    ronni_slot = key_slot("{ronni}.color")
    moved_to = 1 - even.shard_of_slot(ronni_slot)
    slot_map = even.moved([ronni_slot], moved_to)

    async def go():
        async with ShardedCache.for_host(cf, "chat1", slot_map=slot_map, client_name=NAME) as cache:
            await until_reachable(cache)
            keys = ["{ronni}.color"] + [f"{{user{i}}}.color" for i in range(40)]
            for key in keys:
                assert await cache.client_for(key).set(key, f"v-{key}")
            return {key: slot_map.shard_of(key) for key in keys}

    placed = asyncio.run(go())
    assert placed["{ronni}.color"] == moved_to
    assert set(placed.values()) == {0, 1}
    shards = [direct(cf, 0), direct(cf, 1)]
    for key, shard in placed.items():
        assert shards[shard].get(key) == f"v-{key}", key
        assert shards[1 - shard].get(key) is None, key
    for r in shards:
        r.close()


def test_connections_go_through_the_chat_hosts_listener(cluster):
    cf, _ = cluster
    chat1 = cf.address("chat1")

    async def go():
        # A longer timeout here: this test is about where connections come from, not speed.
        async with ShardedCache.for_host(cf, "chat1", client_name=NAME, max_conns=3, timeout="2s") as cache:
            assert [(e.address, e.port) for e in cache.endpoints] == [(chat1, 2000), (chat1, 2001)]
            await until_reachable(cache)
            infos = [await cache.client_for_shard(i).client_info() for i in (0, 1)]
            # A burst far larger than the pool waits for pooled connections instead of opening more.
            keys = keys_on(cache, 0, 100)
            await asyncio.gather(*(cache.client_for(k).set(k, "x") for k in keys))
            seen = direct(cf, 0).client_list()
            return infos, [c for c in seen if c["name"] == NAME]

    infos, ours = asyncio.run(go())
    for index, info in enumerate(infos):
        shard = cf.redis.shards[index]
        assert info["laddr"] == f"{cf.address(shard.host)}:{shard.port}"   # the right shard answered
        assert info["addr"].startswith(f"{chat1}:")                        # from the chat host itself
        assert info["name"] == NAME
    assert 1 <= len(ours) <= 3
    assert all(c["addr"].startswith(f"{chat1}:") for c in ours)


def test_pipelines_stay_on_one_shard_and_everything_is_counted(cluster):
    cf, _ = cluster

    async def go():
        async with ShardedCache.for_host(cf, "chat1", client_name=NAME) as cache:
            await until_reachable(cache)
            before = cache.stats()
            # The talk's fix for pattern #2: one hash-tagged key, one shard, one pipeline.
            key = "{degentp}.ratelimits"
            pipe = cache.pipeline_for(key)
            pipe.hset(key, "global_rate", 20)
            pipe.hset(key, "local_rate", 5)
            pipe.hgetall(key)
            assert await pipe.execute() == [1, 1, {"global_rate": "20", "local_rate": "5"}]
            # Same tag, transaction, and a multi-key command on one slot.
            tx = cache.pipeline_for("{degentp}.bans", transaction=True)
            tx.hset("{degentp}.bans", "spammer", 0).sadd("{degentp}.mods", "ronni")
            tx.exists("{degentp}.bans", "{degentp}.mods").expire("{degentp}.mods", 60, nx=True)
            assert await tx.execute() == [1, 1, 2, True]

            # The talk's problem pattern #2: keys on two shards in one pipeline.
            here, there = keys_on(cache, 0, 1)[0], keys_on(cache, 1, 1)[0]
            bad = cache.pipeline_for(here)
            bad.get(here)
            with pytest.raises(CrossShardError) as err:
                bad.get(there)
            assert repr(here) in str(err.value) and repr(there) in str(err.value)
            assert "shard0" in str(err.value) and "shard1" in str(err.value)
            await bad.reset()
            # A client picked for one key refuses another shard's key too (pattern #1 gone wrong).
            with pytest.raises(CrossShardError):
                await cache.client_for(here).get(there)
            with pytest.raises(CrossShardError):
                await cache.client_for(here).mget(here, there)

            for _ in range(5):
                await cache.client_for("{ronni}.color").set("{ronni}.color", "#1E90FF")
            assert await cache.client_for("{ronni}.color").get("{ronni}.color") == "#1E90FF"
            # An untagged key is counted under its masked prefix, and refused by the shard: ACL user
            # clue may only touch the chat's tagged keys (cluster/redis_acl.py).
            with pytest.raises(redis.exceptions.ResponseError, match="can't access"):
                await cache.client_for("12345color").incr("12345color")
            return before, cache.stats(), (here, there), dict(cache.slot_ops())

    before, after, (here, there), slot_ops = asyncio.run(go())
    # What the planner weighs is what the shard ran: {ronni}'s six one-command batches each cost
    # the shard the guard's EVALSHA and two GETs as well.
    assert slot_ops[key_slot("{ronni}")] == 6 + 6 * slotguard.OVERHEAD
    assert before["ops_by_prefix"] == {} and before["top_slots"] == []
    shard_of = SlotMap.even(2).shard_of
    # A command counts once, under its first key: the tx is hset bans, sadd mods,
    # exists(bans, mods) -> bans, expire mods. Refused commands were never sent, nor counted.
    expected_prefix = {"{*}.ratelimits": 3, "{*}.bans": 2, "{*}.mods": 2, "{*}.color": 6, "#color": 1}
    assert after["ops_by_prefix"] == expected_prefix
    slot = key_slot("{degentp}")
    assert dict(after["top_slots"])[slot] == 7
    assert after["top_slots"][0] == (slot, 7)
    assert dict(after["top_slots"])[key_slot("{ronni}")] == 6
    degentp_shard, ronni_shard = f"shard{shard_of('{degentp}')}", f"shard{shard_of('{ronni}')}"
    sent = {"shard0": 0, "shard1": 0}
    sent[degentp_shard] += 7
    sent[ronni_shard] += 6
    sent[f"shard{shard_of('12345color')}"] += 1
    for name in sent:
        assert after["ops_by_shard"][name] - before["ops_by_shard"][name] == sent[name]
    assert after["errors_by_shard"] == {"shard0": 0, "shard1": 0}
    r = direct(cf, int(degentp_shard[-1]))
    assert r.hgetall("{degentp}.ratelimits") == {"global_rate": "20", "local_rate": "5"}
    r.close()


def test_a_stopped_shard_fails_fast_and_is_logged(cluster):
    cf, running = cluster
    buf = io.StringIO()
    log = logs.setup("clue", buf)
    pid = running.pid_of("redis-shard1")

    async def go():
        async with ShardedCache.for_host(cf, "chat1", logger=log, client_name=NAME) as cache:
            assert cache.timeout == 0.1 and cache.max_conns == 10      # the talk's defaults
            await until_reachable(cache)
            up, down = keys_on(cache, 0, 1)[0], keys_on(cache, 1, 1)[0]
            await cache.client_for(down).set(down, "before")
            os.kill(pid, signal.SIGSTOP)    # unreachable but alive: the supervisor leaves it be
            try:
                failures, elapsed = [], []
                for _ in range(8):
                    started = time.monotonic()
                    with pytest.raises(CacheUnavailable) as err:
                        await cache.client_for(down).get(down)
                    elapsed.append(time.monotonic() - started)
                    failures.append(err.value)
                    assert await cache.client_for(up).set(up, "still fine")     # the other shard works
                # HAProxy's health check (every 500ms, fall 2) takes the shard out; from then on
                # HAProxy closes new connections at once instead of letting them hang.
                def marked_down():
                    try:
                        with socket.create_connection((cf.address("chat1"), 8404), timeout=2) as s:
                            s.sendall(b"GET /stats;csv HTTP/1.0\r\n\r\n")
                            text = b"".join(iter(lambda: s.recv(65536), b"")).decode()
                    except OSError:
                        return False
                    return any(ln.startswith("redis-shard1,shard1,") and ",DOWN," in ln for ln in text.splitlines())
                await asyncio.to_thread(wait_for, marked_down, 15, 0.2, "HAProxy to mark shard1 DOWN")
                with pytest.raises(CacheUnavailable) as closed:
                    await cache.client_for(down).get(down)
                failures.append(closed.value)
            finally:
                os.kill(pid, signal.SIGCONT)
            # Back once HAProxy sees it up again (rise 2).
            deadline = time.monotonic() + 15
            while True:
                try:
                    value = await cache.client_for(down).get(down)
                    break
                except CacheUnavailable:
                    assert time.monotonic() < deadline, "shard1 never came back"
                    await asyncio.sleep(0.2)
            return failures, elapsed, value, cache.stats()

    failures, elapsed, value, stats = asyncio.run(go())
    assert value == "before"
    assert all(f.shard == "shard1" for f in failures)
    assert failures[0].detail == "Timed out (after 100ms)"
    # Bounded by the cache's 100ms timeout, not HAProxy's (1h server timeout): generous bound
    # for a busy machine, far below anything HAProxy would impose.
    assert max(elapsed) < 2.0, elapsed
    # Through HAProxy a down shard is a connection HAProxy closes, not ECONNREFUSED.
    assert failures[-1].detail.startswith("Connection error")
    assert stats["errors_by_shard"]["shard1"] >= 9 and stats["errors_by_shard"]["shard0"] == 0

    events = [m["event"] for m in map(TALK.match, buf.getvalue().splitlines()) if m]
    listener = f"shard1 ({cf.address('chat1')}:2001)"
    assert events[0] == f"Timed out (after 100ms) on {listener} waiting for: get level=warning"
    # Eight failures in well under a second: one line, the rest counted on the next line.
    assert len(events) < len(failures)
    assert any(f"Connection error on {listener}: " in e for e in events)
    assert re.search(r"suppressed=\d+", " ".join(events[1:]))


def test_a_busy_pool_waits_then_fails_closed(cluster):
    cf, _ = cluster
    buf = io.StringIO()
    log = logs.setup("clue", buf)

    async def go():
        async with ShardedCache.for_host(cf, "chat1", max_conns=1, logger=log, client_name=NAME) as cache:
            await until_reachable(cache)
            key = "{ronni}.color"
            holder = cache.pipeline_for(key)
            await holder.watch(key)            # WATCH pins the shard's only connection
            started = time.monotonic()
            with pytest.raises(CacheUnavailable) as err:
                await cache.client_for(key).get(key)
            waited = time.monotonic() - started
            await holder.reset()               # gives the connection back
            assert await cache.client_for(key).set(key, "#00FF00")
            return err.value, waited

    err, waited = asyncio.run(go())
    assert err.detail == "No connection available (all 1 busy for 100ms)"
    assert waited >= 0.09
    assert "No connection available (all 1 busy for 100ms) on shard" in buf.getvalue()


def test_refused_connection_is_reported_with_its_errno(subnet):
    """No cluster needed: a listener address where nothing listens refuses for real."""
    probe = socket.socket()
    probe.bind((f"{subnet}.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    buf = io.StringIO()
    log = logs.setup("clue", buf)

    async def go():
        cache = ShardedCache([ShardEndpoint(0, "shard0", f"{subnet}.1", port)], logger=log)
        try:
            with pytest.raises(CacheUnavailable) as err:
                await cache.client_for("{ronni}.color").get("{ronni}.color")
            return err.value, cache.stats()
        finally:
            await cache.close()
            await cache.close()          # idempotent

    err, stats = asyncio.run(go())
    assert (err.shard, err.detail) == ("shard0", "Connect error: ECONNREFUSED")
    assert stats["errors_by_shard"] == {"shard0": 1}
    line = buf.getvalue().strip()
    assert TALK.match(line)["event"] == f"Connect error on shard0 ({subnet}.1:{port}): ECONNREFUSED level=warning"


def test_a_closed_cache_fails_closed(subnet):
    async def go():
        cache = ShardedCache([ShardEndpoint(0, "shard0", f"{subnet}.1", 2000)])
        await cache.close()
        with pytest.raises(CacheUnavailable, match="closed"):
            await cache.client_for("k").get("k")
        pipe = cache.pipeline_for("k")
        with pytest.raises(CacheUnavailable, match="closed"):
            pipe.get("k")

    asyncio.run(go())


def test_for_host_reads_the_cluster_file(subnet, monkeypatch):
    monkeypatch.setenv("CHATOPS_REDIS_CLUE_PASSWORD", "a-password-for-clue-0123")
    doc = small_cluster(subnet)
    doc["clusters"]["testing"]["services"] = {"clue": {"cache_max_conns": 3, "cache_timeout": "250ms"}}
    doc["haproxy"]["listener_base_port"] = 3000
    cf = clusterfile.parse(yaml.safe_dump(doc))

    async def go():
        main = ShardedCache.for_host(cf, "chat1")
        testing = ShardedCache.for_host(cf, "chat-testing")
        override = ShardedCache.for_host(cf, "chat-testing", max_conns=7, timeout=0.5)
        try:
            return [(c.max_conns, c.timeout, [(e.name, e.address, e.port) for e in c.endpoints])
                    for c in (main, testing, override)]
        finally:
            for c in (main, testing, override):
                await c.close()

    main, testing, override = asyncio.run(go())
    assert main == (10, 0.1, [("shard0", f"{subnet}.1", 3000), ("shard1", f"{subnet}.1", 3001)])
    assert testing == (3, 0.25, [("shard0", f"{subnet}.9", 3000), ("shard1", f"{subnet}.9", 3001)])
    assert override[:2] == (7, 0.5)
    with pytest.raises(ValueError, match="not a chat host"):
        ShardedCache.for_host(cf, "redis1")
    with pytest.raises(ValueError, match="unknown host"):
        ShardedCache.for_host(cf, "nope")
    with pytest.raises(ValueError, match="3 shards"):
        ShardedCache.for_host(cf, "chat1", slot_map=SlotMap.even(3))


@pytest.mark.parametrize("args, keys", [
    (("GET", "a"), ("a",)),
    (("SET", "a", "1", "EX", 5), ("a",)),
    (("MGET", "a", "b"), ("a", "b")),
    (("DEL", "a", "b"), ("a", "b")),
    (("MSET", "a", "1", "b", "2"), ("a", "b")),
    (("EVAL", "return 1", 2, "a", "b", "x"), ("a", "b")),
    (("BLPOP", "a", "b", 0), ("a", "b")),
    (("CLIENT LIST",), ()),
    (("CLIENT KILL", "ID", "5"), ()),
    (("OBJECT ENCODING", "a"), ("a",)),
    (("PING",), ()),
])
def test_command_keys(args, keys):
    assert tuple(command_keys(args)) == keys
