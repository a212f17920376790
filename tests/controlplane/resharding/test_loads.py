"""Per-slot load: clue's /v1/stats/slots read from a real running cluster under loadgen traffic,
and LFU samples from a real redis-server; the parsers and the rate arithmetic on their own."""

from __future__ import annotations

import socket
import subprocess

import pytest
import yaml

from chat import keys
from chat.sharding import SlotMap, key_slot
from cluster import clusterfile
from collectors.redis import parse_info
from collectors.resp import Conn
from controlplane.resharding import planner
from controlplane.resharding.loads import (
    NoLoadData,
    lfu_samples,
    parse_slot_stats,
    rates_between,
    slot_rates,
    workload_between,
)
from tests.conftest import free_subnet, loadgen_report, require, start_loadgen, wait_for

ROOM = "lobby"                      # small_cluster's main room, served by chat1


# ---------------------------------------------------------------------------------------------
# pure parts
# ---------------------------------------------------------------------------------------------

def test_parse_slot_stats_takes_the_reply_and_refuses_garbage():
    reply = '{"epoch": 3, "slots": [[2178, 1204], [9513, 151]]}'
    assert parse_slot_stats(reply) == (3, {2178: 1204, 9513: 151})
    assert parse_slot_stats('{"epoch": 0, "slots": []}') == (0, {})
    for bad, message in [("nope", "is not JSON"), ("[]", "must be an object with a 'slots' list"),
                         ('{"slots": [[1, -2]]}', r"\[1, -2\] is not a \[slot, ops\] pair"),
                         ('{"slots": [[16384, 2]]}', "slot 16384 is outside 0..16383"),
                         ('{"slots": [[1, 2, 3]]}', "is not a \\[slot, ops\\] pair"),
                         ('{"slots": [[true, 2]]}', "is not a \\[slot, ops\\] pair"),
                         ('{"epoch": "x", "slots": []}', "epoch 'x' is not a whole number")]:
        with pytest.raises(ValueError, match=message):
            parse_slot_stats(bad)


def test_rates_between_two_reads_and_a_restart_counts_from_zero():
    rates, restarted = rates_between({1: 100, 2: 50}, {1: 300, 2: 50, 3: 10}, 2.0)
    assert rates == {1: 100.0, 3: 5.0} and not restarted
    # Slot 1 went down: the clue restarted, so every counter in the second read is new.
    rates, restarted = rates_between({1: 100, 2: 50}, {1: 40, 2: 60}, 2.0)
    assert rates == {1: 20.0, 2: 30.0} and restarted
    # A slot that disappeared is a restart too.
    assert rates_between({1: 100, 2: 50}, {1: 120}, 1.0) == ({1: 120.0}, True)
    with pytest.raises(ValueError, match="seconds must be > 0"):
        rates_between({}, {}, 0.0)


# ---------------------------------------------------------------------------------------------
# clue's counters on a real cluster
# ---------------------------------------------------------------------------------------------

def _dead_port(address: str) -> int:
    """A port on `address` that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def _with_clue_ports(cf_path, tmp_path, **ports):
    """The running cluster's file with some clusters' clue port changed: a clue nobody answers at."""
    doc = yaml.safe_load(cf_path.read_text())
    for cluster, port in ports.items():
        doc["clusters"][cluster].setdefault("services", {}).setdefault("clue", {})["port"] = port
    path = tmp_path / "dead-clue.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return clusterfile.load(path).spec


def test_slot_rates_under_traffic_and_a_clue_that_does_not_answer(live_small_cluster, tmp_path):
    rc, cf, run = live_small_cluster      # run: its secrets.env has the internal token clue asks for
    subnet = cf.address("chat1").rsplit(".", 1)[0]
    room_slot = key_slot(keys.bans(ROOM))
    assert {key_slot(k) for k in (keys.ratelimits(ROOM), keys.room(ROOM), keys.mods(ROOM))} == {room_slot}
    load = start_loadgen(rc, f"{subnet}.77", clients=10, duration=12, room=ROOM)
    try:
        # Wait until messages flow through clue, then measure a whole window of them.
        wait_for(lambda: slot_rates(cf, window_s=0.5, run=run).rates.get(room_slot, 0) > 0, 20, 0.2,
                 f"clue to count ops on {ROOM}'s slot {room_slot}")
        got = slot_rates(cf, window_s=2.0, run=run)
    finally:
        report = loadgen_report(load)
    assert sorted(got.answered) == ["chat-testing", "chat1"] and got.failed == {} and got.restarted == []
    assert set(got.epochs) == {"chat1", "chat-testing"}
    assert all(isinstance(e, int) for e in got.epochs.values())
    assert 1.9 <= got.window_s <= 3.0
    # Two senders at 10 messages/s each: 20 messages/s, 8 commands each on the room's slot.
    assert 20 <= got.rates[room_slot] <= 400, got.rates[room_slot]
    # The senders' own keys ({login}.user, {login}.color) count on their slots: 2 commands a message.
    for login in ("loadgen_0", "loadgen_1"):
        assert got.rates.get(key_slot(keys.user(login)), 0) > 0
    assert report["sent"] > 0
    # The room's slot dominates, so the planner refuses to split it and says why.
    p = planner.plan(got.rates, SlotMap.even(len(cf.redis.shards)))
    assert not p.achievable and f"Slot {room_slot} alone carries" in p.reason
    assert planner.HOT_KEY_RUNBOOK in p.reason

    # chat-testing's clue at a port nobody listens on: reported, and the other clue still counts.
    dead = _dead_port(cf.address("chat-testing"))
    half = slot_rates(_with_clue_ports(rc.config, tmp_path, testing=dead), window_s=0.3, timeout=1.0,
                      run=run)
    assert half.answered == ["chat1"] and list(half.failed) == ["chat-testing"]
    assert "ConnectionRefusedError" in half.failed["chat-testing"]
    # None answers: a clear error naming each clue.
    both = _with_clue_ports(rc.config, tmp_path, main=_dead_port(cf.address("chat1")), testing=dead)
    with pytest.raises(NoLoadData, match=r"no clue answered /v1/stats/slots twice.*chat1: Connection"
                                         r"RefusedError.*chat-testing: ConnectionRefusedError"):
        slot_rates(both, window_s=0.1, timeout=1.0, run=run)


# ---------------------------------------------------------------------------------------------
# LFU samples on a real redis-server
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def lfu_redis():
    """A real redis-server under allkeys-lfu on a loopback address of our own."""
    binary = require("redis-server")
    address = f"{free_subnet()}.21"
    proc = subprocess.Popen([binary, "--bind", address, "--port", "6379", "--protected-mode", "no",
                             "--save", "", "--appendonly", "no", "--maxmemory-policy", "allkeys-lfu",
                             "--maxmemory", "64mb"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def connect():
        try:
            return Conn(address, 6379, timeout=2.0)
        except OSError:
            assert proc.poll() is None, f"redis-server exited with {proc.returncode}"
            return None
    conn = wait_for(connect, 10, 0.05, "redis-server to listen")
    try:
        yield conn
    finally:
        conn.close()
        proc.terminate()
        proc.wait(10)


def test_lfu_samples_weigh_the_hot_keys_slot_and_skip_control_keys(lfu_redis):
    conn = lfu_redis
    cold = [keys.color(f"user{i}") for i in range(10)]
    hot = keys.color("hotuser")
    for k in (*cold, hot):
        assert conn.call("SET", k, "#1E90FF") == "OK"
    conn.call("SET", "chatops:slotmap", "{}")
    assert key_slot("chatops:slotmap") not in {key_slot(k) for k in (*cold, hot)}
    for _ in range(20):
        conn.pipeline([("GET", hot)] * 100)          # 2,000 reads: its LFU counter climbs
    sample = lfu_samples(conn, n=200)
    assert sample.policy == "allkeys-lfu" and sample.note is None
    # 200 random picks among 12 keys miss a given one with probability (11/12)^200, about 3e-8.
    assert sample.sampled == 11
    assert set(sample.freq) == {key_slot(k) for k in (*cold, hot)}
    hot_freq = sample.freq[key_slot(hot)]
    assert hot_freq > max(f for s, f in sample.freq.items() if s != key_slot(hot))
    assert sample.hits[key_slot(hot)] > 10 * max(h for s, h in sample.hits.items() if s != key_slot(hot))


def test_lfu_samples_explain_a_policy_without_counters_and_an_empty_shard(lfu_redis):
    conn = lfu_redis
    assert lfu_samples(conn).note == "the shard has no keys"
    conn.call("SET", "chatops:lock", "1")
    assert lfu_samples(conn, n=5).note == "no chat keys among 5 random picks (only chatops: keys)"
    conn.call("SET", keys.color("someone"), "#000000")
    assert conn.call("CONFIG", "SET", "maxmemory-policy", "noeviction") == "OK"
    sample = lfu_samples(conn)
    assert sample.freq == {} and sample.hits == {} and sample.sampled == 0 and sample.policy == "noeviction"
    assert sample.note == ("maxmemory-policy is noeviction; LFU counters need an *-lfu policy "
                           "(allkeys-lfu or volatile-lfu)")
    with pytest.raises(ValueError, match="n must be a whole number >= 1"):
        lfu_samples(conn, n=0)


def test_workload_leaves_out_the_control_planes_own_commands(lfu_redis):
    """A shard's ops/s between two real INFO replies: the chat's 300 GETs count, the collector's
    burst of 1,000 OBJECT FREQ (which INFO's instantaneous_ops_per_sec reads as thousands of ops/s)
    and the INFO reads themselves do not."""
    conn = lfu_redis
    conn.call("SET", "k", "v")
    before = parse_info(conn.call("INFO", "stats", "commandstats"))
    conn.pipeline([("OBJECT", "FREQ", "k")] * 1000)
    conn.pipeline([("GET", "k")] * 300)
    after = parse_info(conn.call("INFO", "stats", "commandstats"))
    assert workload_between(before, after, 1.0) == pytest.approx(300, abs=2)
    assert workload_between(before, after, 2.0) == pytest.approx(150, abs=1)
    # Counters that went backwards (CONFIG RESETSTAT, a restart): no figure, rather than a wrong one.
    assert workload_between(after, before, 1.0) is None


def test_lfu_fills_in_only_the_load_clue_does_not_see():
    from controlplane.resharding.loads import LfuSample, combine
    owners = {1: 0, 2: 0, 3: 0, 9: 1}.get
    clue = {1: 100.0, 9: 50.0}
    samples = {0: LfuSample({1: 5, 2: 5, 3: 5}, {1: 999.0, 2: 30.0, 3: 10.0}, 3, "allkeys-lfu"),
               1: LfuSample({9: 5}, {9: 10.0}, 1, "allkeys-lfu")}
    loads, estimated = combine(clue, owners, {0: 500.0, 1: 40.0}, samples)
    # Shard 0 does 500 ops/s, clue explains 100: the other 400 go to slots 2 and 3 by their hits
    # (3:1); slot 1 keeps clue's measurement however hot its sample looks. Shard 1 has nothing
    # unexplained (clue counts more than the shard's own figure): nothing is added there.
    assert loads == {1: 100.0, 9: 50.0, 2: 300.0, 3: 100.0}
    assert estimated == {0: 400.0}
    assert combine({}, owners, {0: 0.0}, samples) == ({}, {})
    # A remainder under UNSEEN_FLOOR ops/s (or a tenth of the shard's) is the control plane's own
    # scraping: not spread as load.
    assert combine({1: 100.0}, owners, {0: 150.0}, samples) == ({1: 100.0}, {})
