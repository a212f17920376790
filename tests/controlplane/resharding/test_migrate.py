"""Slot migration on a real running cluster (`chatops up`: redis-servers, HAProxy, clue): keys move
with their values and TTLs while a client keeps writing through the chat host's listeners; a
client with a stale map is refused by the old owner and lands on the new one; a migration cut
short is finished by running it again."""

import asyncio
import threading

import pytest
import redis

from chat import slotguard
from chat.cache import ShardedCache
from chat.sharding import SlotMap, key_slot
from cluster import clusterfile
from controlplane.resharding import migrate
from controlplane.resharding import slotmap as slotmaps
from tests.conftest import cluster_up, redis_auth, small_cluster, wait_for, write_cluster


@pytest.fixture
def cluster(tmp_path, subnet, run_dir):
    config = write_cluster(tmp_path / "cluster.yaml", small_cluster(subnet))
    with cluster_up(config, run_dir) as running:
        yield clusterfile.load(config).spec, config, running


def direct(cf, index: int) -> redis.Redis:
    shard = cf.redis.shards[index]
    return redis.Redis(host=cf.address(shard.host), port=shard.port, socket_timeout=5, **redis_auth())


def half_of_shard0() -> list[int]:
    return SlotMap.even(2).slots_of(0)[::2]


async def seed(cache: ShardedCache, n: int) -> dict[str, tuple[str, bool]]:
    """`n` keys of the chat's shapes on shard 0: strings with and without TTLs, and hashes."""
    expected: dict[str, tuple[str, bool]] = {}
    for i in range(n):
        key = f"{{u{i}}}.color"
        if cache.shard_of(key) != 0:
            continue
        pipe = cache.pipeline_for(key)
        ttl = i % 3 == 0
        pipe.set(key, f"#{i:06x}", ex=3600 if ttl else None)
        pipe.hset(f"{{u{i}}}.user", mapping={"id": i, "login": f"u{i}"})
        await pipe.execute()
        expected[key] = (f"#{i:06x}", ttl)
    return expected


async def writer(cache: ShardedCache, stop: asyncio.Event, counts: dict[str, int], errors: list):
    """Keep incrementing counters in moving slots, remembering what each should end at."""
    i = 0
    while not stop.is_set():
        key = f"{{c{i % 400}}}.count"
        try:
            await cache.client_for(key).incr(key)
            counts[key] = counts.get(key, 0) + 1
        except Exception as exc:  # noqa: BLE001 -- every error is a failure of the test
            errors.append(repr(exc))
        i += 1
        if i % 50 == 0:
            await asyncio.sleep(0)


def test_slots_move_under_writes_and_nothing_is_lost(cluster, run_dir):
    cf, config, _ = cluster
    run = type("Run", (), {"root": run_dir})()
    slots = half_of_shard0()

    async def main():
        cache = ShardedCache.for_host(cf, "chat1", timeout=2.0)
        follow = asyncio.ensure_future(cache.follow_map())
        expected = await seed(cache, 6000)
        stop, counts, errors = asyncio.Event(), {}, []
        task = asyncio.ensure_future(writer(cache, stop, counts, errors))
        await asyncio.sleep(0.3)
        result = await asyncio.to_thread(migrate.move_slots, cf, config, run, "shard0", "shard1", slots,
                                         group_keys=300)
        await asyncio.sleep(0.3)
        stop.set()
        await task
        # Every key, read through the listeners by a client that follows the map.
        for key, (value, ttl) in expected.items():
            assert await cache.client_for(key).get(key) == value, key
            t = await cache.client_for(key).ttl(key)
            assert (t > 3000) if ttl else (t == -1), (key, t)
        for key, n in counts.items():
            assert int(await cache.client_for(key).get(key)) == n, key
        follow.cancel()
        await cache.close()
        return result, expected, counts, errors

    result, expected, counts, errors = asyncio.run(main())
    assert errors == []
    assert result.moved_slots == slots and result.keys_moved > 1000
    assert result.slot_map.epoch >= 1 and result.publish_failed == {}
    moving = set(slots)
    s0, s1 = direct(cf, 0), direct(cf, 1)
    # The keys of moved slots are on shard1 only, the rest still on shard0 only.
    for key in list(expected) + list(counts):
        on0, on1 = s0.exists(key), s1.exists(key)
        if key_slot(key) in moving:
            assert (on0, on1) == (0, 1), key
        else:
            assert (on0, on1) == (1, 0) or key_slot(key) not in SlotMap.even(2).slots_of(0), key
    # The published map is on both shards and in the run directory, and says the same.
    stored = slotmaps.read_file(run_dir / "slotmap.json")
    assert stored.epoch == result.slot_map.epoch
    assert all(stored.shard_of_slot(s) == 1 for s in slots)
    assert int(s0.get(slotguard.EPOCH)) == int(s1.get(slotguard.EPOCH)) == stored.epoch


def test_a_client_with_a_stale_map_is_refused_and_lands_on_the_new_owner(cluster, run_dir):
    cf, config, _ = cluster
    run = type("Run", (), {"root": run_dir})()
    slots = half_of_shard0()
    migrate.move_slots(cf, config, run, "shard0", "shard1", slots)
    key = next(k for k in (f"{{stale{i}}}.bans" for i in range(10_000)) if key_slot(k) in set(slots))
    s0, s1 = direct(cf, 0), direct(cf, 1)

    # The old owner itself refuses a batch on the moved slot, and names the new owner.
    argv = slotguard.guard_args({key_slot(key): [key]}, (), [("HSET", key, "bob", "0")])
    with pytest.raises(redis.ResponseError, match=rf"CHATOPS-MOVED {key_slot(key)} 1"):
        s0.execute_command("EVAL", slotguard.GUARD, 0, *argv)

    async def main():
        stale = ShardedCache.for_host(cf, "chat1", timeout=2.0, slot_map=SlotMap.even(2), read_map=False)
        assert stale.shard_of(key) == 0          # routes by the old map, and never refreshes it itself
        await stale.client_for(key).hset(key, "bob", 0)
        got = await stale.client_for(key).hget(key, "bob")
        redirected = stale.redirects
        await stale.close()
        return got, redirected

    got, redirected = asyncio.run(main())
    assert got == "0" and redirected >= 1
    assert s1.hget(key, "bob") == b"0" and s0.exists(key) == 0


def test_a_migration_cut_short_is_finished_by_running_it_again(cluster, run_dir):
    cf, config, _ = cluster
    run = type("Run", (), {"root": run_dir})()
    slots = half_of_shard0()

    async def fill():
        cache = ShardedCache.for_host(cf, "chat1", timeout=2.0)
        expected = await seed(cache, 3000)
        await cache.close()
        return expected

    expected = asyncio.run(fill())
    with pytest.raises(migrate.MigrationError, match="stopped after 2 groups"):
        migrate.move_slots(cf, config, run, "shard0", "shard1", slots, group_keys=200, stop_after_groups=2)
    s0, s1 = direct(cf, 0), direct(cf, 1)
    owned0 = set(slotguard.owned_slots(s0.get(slotguard.OWNED)))
    assert 0 < len(set(slots) - owned0) < len(slots)          # some moved, some not

    # Now the control plane dies between the two steps of a group: the source hands a slot over
    # (the script ran), the target never takes it.
    left = sorted(set(slots) & owned0)       # not moved yet
    half = left[0]
    keys = migrate.scan_slots(s0_conn := slotmaps.connect(cf, "shard0"), {half}).get(half, [])
    shard1 = cf.redis.shards[1]
    s0_conn.call("EVAL", slotguard.MIGRATE_SLOTS, 0,
                 *slotguard.migrate_args(cf.address(shard1.host), shard1.port, 5000, 1, [half], keys,
                                         *redis_auth().values()))
    s0_conn.close()
    assert half not in set(slotguard.owned_slots(s0.get(slotguard.OWNED)))
    assert half not in set(slotguard.owned_slots(s1.get(slotguard.OWNED)))

    done = threading.Event()
    result = migrate.move_slots(cf, config, run, "shard0", "shard1", slots,
                                on_progress=lambda p: done.set() if p.phase == "done" else None)
    assert result.resumed_slots == 1
    assert done.is_set() and result.moved_slots == slots
    for key, (value, _) in expected.items():
        where = s1 if key_slot(key) in set(slots) else s0
        assert where.get(key) == value.encode(), key
    assert set(slots).isdisjoint(slotguard.owned_slots(s0.get(slotguard.OWNED)))
    assert set(slots) <= set(slotguard.owned_slots(s1.get(slotguard.OWNED)))


def test_groups_are_sized_for_a_short_hold_on_the_source():
    aim = migrate.SCRIPT_MS
    # 2,000 keys took twice the aim: half as many next time.
    assert migrate.next_size(2000, 2000, 2 * aim, 8000) == 1000
    assert migrate.next_size(2000, 2000, aim / 10, 8000) == 3000     # fast: grows, by half at most
    assert migrate.next_size(7000, 7000, aim / 10, 8000) == 8000     # never past the cap
    assert migrate.next_size(150, 150, 20 * aim, 8000) == migrate.MIN_GROUP_KEYS
    assert migrate.next_size(2000, 0, 3.0, 8000) == 2000             # an empty group says nothing


def test_a_migration_whose_target_stops_answering_loses_nothing_and_is_finished_later(cluster, run_dir):
    """The target down in the middle (SIGSTOP: it neither answers nor refuses): the migration
    fails once its MIGRATE or a read times out, every key is still readable through the
    listeners, and running it again after the target is back finishes it."""
    import os
    import signal
    cf, config, c = cluster
    run = type("Run", (), {"root": run_dir})()
    slots = half_of_shard0()

    async def fill():
        cache = ShardedCache.for_host(cf, "chat1", timeout=2.0)
        expected = await seed(cache, 6000)
        await cache.close()
        return expected
    expected = asyncio.run(fill())

    target = c.pid_of("redis-shard1")
    stopped = threading.Event()

    def stop_target(p):
        if p.phase == "moving" and p.keys_moved > 0 and not stopped.is_set():
            os.kill(target, signal.SIGSTOP)
            stopped.set()
    try:
        with pytest.raises(migrate.MigrationError):
            migrate.move_slots(cf, config, run, "shard0", "shard1", slots, group_keys=100, on_progress=stop_target)
        assert stopped.is_set()
    finally:
        os.kill(target, signal.SIGCONT)

    # HAProxy marked the stopped shard down; it takes a few health checks to bring it back.
    listener = redis.Redis(host=cf.address("chat1"), port=cf.listener_port(1), socket_timeout=1, **redis_auth())

    def answers():
        try:
            return listener.ping()
        except redis.RedisError:
            return False
    wait_for(answers, 20, 0.2, "shard1 to answer through chat1's listener again")

    async def read_all():
        cache = ShardedCache.for_host(cf, "chat1", timeout=2.0)
        got = {key: await cache.client_for(key).get(key) for key in expected}
        await cache.close()
        return got
    assert asyncio.run(read_all()) == {k: v for k, (v, _) in expected.items()}

    result = migrate.move_slots(cf, config, run, "shard0", "shard1", slots)
    in_moving = 2 * sum(1 for k in expected if key_slot(k) in set(slots))    # each user's color and hash
    assert 0 < result.keys_moved < in_moving              # only what the first run had not moved
    assert asyncio.run(read_all()) == {k: v for k, (v, _) in expected.items()}
    s0 = direct(cf, 0)
    assert set(slots).isdisjoint(slotguard.owned_slots(s0.get(slotguard.OWNED)))
    assert all(s0.exists(k) == 0 for k in expected if key_slot(k) in set(slots))
