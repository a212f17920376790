"""collectors/redis.py: pure parsers on recorded Redis 7.0 replies and their evil twins, then live
shards (real redis-server processes on a private loopback subnet) through collect() and
`chatops inspect redis`. CLIENT LIST is tests/collectors/test_clients.py, RESP test_resp.py."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from cluster import clusterfile
from collectors import clients
from collectors import redis as rc
from collectors.resp import ProtocolError, RedisError, parse_resp
from tests.conftest import chatops, small_cluster, write_cluster

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "redis"


def fixture(name: str) -> bytes:
    return (FIX / name).read_bytes()


# -- INFO --

def test_parse_info_all_sections_typed():
    info = rc.parse_info(fixture("info.txt"))
    for section in ("server", "clients", "memory", "stats", "replication", "cpu", "commandstats",
                    "errorstats", "keyspace"):
        assert section in info, section
    assert info["server"]["redis_version"] == "7.0.15"
    assert isinstance(info["clients"]["connected_clients"], int)
    assert isinstance(info["cpu"]["used_cpu_user"], float)
    get = info["commandstats"]["cmdstat_get"]
    assert set(get) >= {"calls", "usec", "usec_per_call", "rejected_calls", "failed_calls"}
    assert isinstance(get["calls"], int) and isinstance(get["usec_per_call"], float)
    assert info["commandstats"]["cmdstat_hget"]["failed_calls"] == 1
    assert info["errorstats"]["errorstat_WRONGTYPE"] == {"count": 1}
    assert info["keyspace"]["db0"] == {"keys": 121, "expires": 0, "avg_ttl": 0}
    assert info["replication"]["role"] == "master"


def test_parse_info_evil():
    info = rc.parse_info(fixture("info_evil.txt"))
    assert info["clients"]["connected_clients"] == 12
    assert info["clients"]["a_field_from_redis_9"] == "some text"          # unknown fields kept
    assert info["stats"]["weird_value"] == "x:y"                            # first ":" splits
    assert info["future"]["thing"] == {"a": 1, "b": "two"}                  # unknown section kept
    assert "garbage line without colon" not in str(info)
    assert info["commandstats"]["cmdstat_get"]["calls"] == 10
    assert info["commandstats"]["cmdstat_set"] == {"calls": 3, "usec": ""}  # truncated line
    assert info["keyspace"]["db0"]["keys"] == 5
    assert rc.parse_info("") == {} and rc.parse_info(b"\xff\xfe garbage\r\n") == {}


def test_rates():
    prev = rc.parse_info(fixture("info.txt"))
    cur = json.loads(json.dumps(prev))
    cur["stats"]["total_commands_processed"] += 500
    cur["stats"]["keyspace_hits"] += 90
    cur["stats"]["keyspace_misses"] += 10
    cur["stats"]["rejected_connections"] += 4
    cur["cpu"]["used_cpu_user"] += 0.3
    cur["cpu"]["used_cpu_sys"] += 0.2
    cur["commandstats"]["cmdstat_get"]["calls"] += 200
    r = rc.rates(prev, cur, 2.0)
    assert r["ops_per_s"] == 250
    assert r["cpu_percent"] == pytest.approx(25.0)
    assert r["hit_ratio"] == pytest.approx(0.9)
    assert r["rejected_connections_per_s"] == 2
    assert r["calls_per_s"]["get"] == 100 and next(iter(r["calls_per_s"])) == "get"
    # A counter that went backwards (restart) is no rate, not a negative one.
    cur["stats"]["total_commands_processed"] = 1
    assert rc.rates(prev, cur, 2.0)["ops_per_s"] is None
    assert rc.rates({}, {}, 1.0)["hit_ratio"] is None


# -- CONFIG, SLOWLOG, LATENCY (decoded by collectors.resp) --

def test_config_slowlog_latency_fixtures():
    assert rc.parse_config(parse_resp(fixture("config.resp"))) == {
        "maxclients": 10000, "timeout": 0, "maxmemory-policy": "allkeys-lfu"}
    [slow] = rc.parse_slowlog(parse_resp(fixture("slowlog.resp")))
    assert slow["command"] == "DEBUG SLEEP 0.012" and slow["usec"] > 10_000 and slow["name"] == "slowpoke"
    [lat] = rc.parse_latency(parse_resp(fixture("latency.resp")))
    assert lat["event"] == "command" and lat["max_ms"] >= 12


def test_resp_evil():
    # Truncated, garbage and error replies give clear errors; malformed entries are skipped.
    with pytest.raises(ProtocolError):
        parse_resp(fixture("slowlog.resp")[:-7])
    with pytest.raises(ProtocolError):
        parse_resp(b"HTTP/1.1 400 Bad Request\r\n")
    with pytest.raises(ProtocolError):
        parse_resp(b"")
    with pytest.raises(ProtocolError):
        parse_resp(b"$5\r\nabcdefg\r\n")
    err = parse_resp(b"-ERR unknown command 'LATENCY'\r\n")
    with pytest.raises(RedisError, match="unknown command"):
        rc.parse_latency(err)
    assert rc.parse_slowlog(parse_resp(fixture("slowlog_evil.resp"))) == [
        {"id": 7, "at": 1795786974, "usec": 20000, "command": "GET k", "args": ["GET", "k"], "client": "",
         "name": ""}]
    assert rc.parse_latency(parse_resp(b"*0\r\n")) == []
    assert rc.parse_config(parse_resp(b"*3\r\n$7\r\ntimeout\r\n$1\r\n0\r\n$10\r\nmaxclients\r\n")) == {"timeout": 0}


# -- live (the `shards` fixture is in conftest.py) --

def test_collect_sections_live(shards):
    cfg, cf, _ = shards
    with rc.connect(rc.target_for(cf, "shard0")) as c:
        c.pipeline([("SET", f"k{i}", "v") for i in range(50)])
        # LFU counters grow with probability 1/((counter - 5) * lfu-log-factor + 1) per hit: 40
        # hits left k7 tied with k3 now and then; 1,000 put it clearly on top.
        c.pipeline([("GET", "k7")] * 1000 + [("GET", "k3")] * 10)
        c.call("DEBUG", "SLEEP", "0.02")
    obs = rc.collect(rc.target_for(cf, "shard0"))
    assert obs.up and obs.source == "redis" and obs.section_errors == {}
    d = obs.data
    assert d["info"]["server"]["redis_version"].startswith("7.")
    assert d["config"] == {"maxclients": 5000, "timeout": 0, "maxmemory-policy": "allkeys-lfu"}
    assert any(e["command"].startswith("DEBUG SLEEP") for e in d["slowlog"])
    assert isinstance(d["latency"], list)
    assert d["hotkeys"]["skipped"] is None and d["hotkeys"]["sampled"] == 50
    assert d["hotkeys"]["keys"][0]["key"] == "k7"
    other = rc.collect(rc.target_for(cf, "shard1"))
    assert other.up and "not an LFU policy" in other.data["hotkeys"]["skipped"]

    out = chatops("inspect", "redis", "shard0", "--config", str(cfg), "--interval", "0.3")
    assert out.returncode == 0, out.stderr
    for word in ("role master", "ops/s", "CPU", "memory", "hit ratio", "maxclients 5000", "allkeys-lfu",
                 "DEBUG SLEEP", "hot keys", "k7"):
        assert word in out.stdout, (word, out.stdout)
    js = json.loads(chatops("inspect", "redis", "shard1", "--config", str(cfg), "--json",
                            "--interval", "0.2").stdout)
    assert js["up"] and js["rates"]["ops_per_s"] is not None


def test_stopped_shard_is_down_while_the_other_works(shards):
    cfg, cf, procs = shards
    os.kill(procs[0].pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        down = rc.collect(rc.target_for(cf, "shard0"))
        assert time.monotonic() - t0 < 5
        assert not down.up and down.error and "Timeout" in down.error
        assert down.as_dict()["up"] is False
        assert not clients.collect(clients.target_for(cf, "shard0")).up
        ok = rc.collect(rc.target_for(cf, "shard1"))
        assert ok.up and ok.data["info"]["clients"]["connected_clients"] >= 1
        res = chatops("inspect", "clients", "shard0", "--config", str(cfg))
        assert res.returncode == 1 and "down" in res.stderr and "Timeout" in res.stderr
    finally:
        os.kill(procs[0].pid, signal.SIGCONT)
    assert rc.collect(rc.target_for(cf, "shard0")).up


def test_scrapes_keep_one_connection_and_replace_it_when_the_shard_restarts(shards, run_dir):
    from tests.collectors.conftest import ADMIN_USER, start_redis, stop
    _, cf, procs = shards
    target, list_target = rc.target_for(cf, "shard1"), clients.target_for(cf, "shard1")

    def received() -> int:
        with rc.connect(target) as c:        # a connection of its own: counted too, hence - 1
            return rc.fetch_info(c, "stats")["stats"]["total_connections_received"] - 1

    assert rc.collect(target).up and clients.collect(list_target).up
    before = received()
    for _ in range(3):
        assert rc.collect(target).up and clients.collect(list_target).up
    # Each source's connection from the first scrape served the next three: nothing new, and
    # so no TIME_WAIT left behind per scrape on the port the churn detectors watch.
    assert received() == before + 1          # the count's own connection
    # The shard restarts: the kept connections are closed under the collectors, which notice
    # and open new ones rather than report the shard down.
    stop(procs[1])
    procs[1] = start_redis(target.address, 6379, run_dir, "--maxmemory-policy", "noeviction", *ADMIN_USER)
    obs = rc.collect(target)
    assert obs.up and obs.section_errors == {}, obs
    assert clients.collect(list_target).up


def test_unknown_and_unreachable_shard(subnet, run_dir):
    cfg = write_cluster(run_dir / "cluster.yaml", small_cluster(subnet))
    res = chatops("inspect", "clients", "nope", "--config", str(cfg))
    assert res.returncode == 2 and "shard0, shard1" in res.stderr
    res = chatops("inspect", "redis", "shard1", "--config", str(cfg))  # nothing listens there
    assert res.returncode == 1 and "refused" in res.stderr.lower()
    obs = rc.collect(rc.target_for(clusterfile.load(cfg).spec, "shard1"))
    assert not obs.up and "ConnectionRefused" in obs.error
