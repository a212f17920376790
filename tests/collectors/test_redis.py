"""collectors/redis.py: pure parsers on recorded Redis 7.0 replies and their evil twins, then live
shards (real redis-server processes on a private loopback subnet) through the collectors and
`chatops inspect redis|clients`."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from cluster import clusterfile
from collectors import redis as rc
from tests.conftest import chatops, require, small_cluster, write_cluster

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


# -- RESP, CONFIG, SLOWLOG, LATENCY --

def test_config_slowlog_latency_fixtures():
    assert rc.parse_config(rc.parse_resp(fixture("config.resp"))) == {
        "maxclients": 10000, "timeout": 0, "maxmemory-policy": "allkeys-lfu"}
    [slow] = rc.parse_slowlog(rc.parse_resp(fixture("slowlog.resp")))
    assert slow["command"] == "DEBUG SLEEP 0.012" and slow["usec"] > 10_000 and slow["name"] == "slowpoke"
    [lat] = rc.parse_latency(rc.parse_resp(fixture("latency.resp")))
    assert lat["event"] == "command" and lat["max_ms"] >= 12


def test_resp_evil():
    # Truncated, garbage and error replies give clear errors; malformed entries are skipped.
    with pytest.raises(rc.ProtocolError):
        rc.parse_resp(fixture("slowlog.resp")[:-7])
    with pytest.raises(rc.ProtocolError):
        rc.parse_resp(b"HTTP/1.1 400 Bad Request\r\n")
    with pytest.raises(rc.ProtocolError):
        rc.parse_resp(b"")
    with pytest.raises(rc.ProtocolError):
        rc.parse_resp(b"$5\r\nabcdefg\r\n")
    err = rc.parse_resp(b"-ERR unknown command 'LATENCY'\r\n")
    with pytest.raises(rc.RedisError, match="unknown command"):
        rc.parse_latency(err)
    assert rc.parse_slowlog(rc.parse_resp(fixture("slowlog_evil.resp"))) == [
        {"id": 7, "at": 1795786974, "usec": 20000, "command": "GET k", "client": "", "name": ""}]
    assert rc.parse_latency(rc.parse_resp(b"*0\r\n")) == []
    assert rc.parse_config(rc.parse_resp(b"*3\r\n$7\r\ntimeout\r\n$1\r\n0\r\n$10\r\nmaxclients\r\n")) == {"timeout": 0}


# -- CLIENT LIST --

def test_client_list_fixture():
    cl = rc.parse_client_list(fixture("client_list.txt"))
    assert not cl.slow_path and cl.lines == len(cl) == 8 and cl.skipped == 0
    hosts = {"127.213.134.1": "chat1", "127.213.134.9": "chat-testing"}
    clusters = {"chat1": "main", "chat-testing": "testing"}
    agg = rc.aggregate_clients(cl, hosts, clusters.get, top_n=3)
    by = {h["host"]: h for h in agg["by_host"]}
    assert [h["host"] for h in agg["by_host"]] == ["chat-testing", "chat1", "127.0.0.1"]  # count desc
    assert by["chat-testing"]["count"] == 4 and by["chat-testing"]["cluster"] == "testing"
    assert by["chat1"]["count"] == 3 and by["127.0.0.1"]["cluster"] is None
    assert dict(by["chat1"]["top_commands"]) == {"client|setname": 2, "get": 1}
    assert len(agg["most_idle"]) == 3
    c = cl.clients()[0]
    assert c["name"] == "clue" and c["laddr"] == "127.213.134.21:6379" and c["omem"] == 0


def test_client_list_evil():
    cl = rc.parse_client_list(fixture("client_list_evil.txt"))
    assert cl.slow_path
    clients = cl.clients()
    names = [c["name"] for c in clients]
    assert "a=b" in names and "x=y=z" in names                   # '=' inside values: first '=' splits
    assert cl.skipped == 3                                        # truncated, garbage, bad idle
    future = next(c for c in clients if c["name"] == "newer")
    assert future["idle"] == 700 and future["cmd"] == "get"       # unknown fields from a newer server
    agg = rc.aggregate_clients(cl, {"127.213.134.9": "chat-testing"}, lambda h: "testing", top_n=1)
    assert agg["skipped_lines"] == 3
    assert agg["most_idle"][0]["idle"] == 700 and agg["most_idle"][0]["host"] == "chat-testing"
    by = {h["host"]: h for h in agg["by_host"]}
    assert by["chat-testing"]["idle_over"] == 2 and by["chat-testing"]["idle_over_long"] == 1
    empty = rc.parse_client_list(b"")
    assert len(empty) == 0 and not empty.slow_path
    assert rc.aggregate_clients(empty, {}, lambda h: None)["by_host"] == []
    junk = rc.parse_client_list(b"\x00\xff not a client list\n" * 3)
    assert len(junk) == 0 and junk.skipped == 3


def test_fast_and_slow_paths_agree():
    raw = fixture("client_list.txt")
    fast = rc.parse_client_list(raw)
    slow = rc.parse_client_list(raw + b"truncated id=99 addr=1\n")
    assert not fast.slow_path and slow.slow_path and slow.skipped == 1
    assert fast.clients() == slow.clients()
    agg = lambda cl: rc.aggregate_clients(cl, {}, lambda h: None)["by_host"]
    assert agg(fast) == agg(slow)



def _generated_client_list(n: int = 10_000, seed: int = 7) -> bytes:
    """n Redis 7.0-shaped lines: bursts of equal idle plus random ones, '=' in names, many cmds."""
    import random
    rnd = random.Random(seed)
    ips = ["127.213.134.1", "127.213.134.2", "127.213.134.9", "10.0.0.5"]
    cmds = ["NULL", "get", "client|setname", "subscribe", "hget", "ping"]
    names = ["", "clue", "a=b", "x=y=z", "w-1", "="]
    out = []
    for i in range(n):
        shape = i % 4
        if shape == 0:                                  # a burst: idle and age shared by many
            age, idle = 3 + i // 2500, 3
        elif shape == 1:                                # spread over hours, some long idle
            idle = rnd.randrange(0, 5000)
            age = idle + rnd.randrange(0, 100_000)
        elif shape == 2:                                # right at the thresholds
            idle = rnd.choice([59, 60, 61, 599, 600, 601])
            age = idle + rnd.randrange(0, 3)
        else:
            age, idle = rnd.randrange(0, 10), 0
        out.append(
            f"id={i + 3} addr={rnd.choice(ips)}:{10000 + i} laddr=127.213.134.21:6379 fd={i + 8} "
            f"name={rnd.choice(names)} age={age} idle={idle} flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 "
            f"qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=1024 rbp=0 obl=0 oll=0 omem={rnd.choice([0, 0, 4096])} "
            f"tot-mem=1800 events=r cmd={rnd.choice(cmds)} user=default redir=-1 resp=2\n")
    return "".join(out).encode()


def test_fast_and_slow_paths_agree_on_10000_generated_clients():
    raw = _generated_client_list()
    fast = rc.parse_client_list(raw)
    slow = rc.parse_client_list(raw + b"truncated id=99 addr=1\n")
    assert not fast.slow_path and slow.slow_path and slow.skipped == 1
    assert len(fast) == len(slow) == fast.lines == 10_000
    assert fast.clients() == slow.clients()
    hosts = {"127.213.134.1": "chat1", "127.213.134.2": "chat2", "127.213.134.9": "chat-testing"}
    clusters = {"chat1": "main", "chat2": "main", "chat-testing": "testing"}
    for kw in ({}, {"top_n": 0}, {"top_n": 1}, {"top_n": 500, "top_commands": 2},
               {"idle_after": 60, "long_idle": 600, "top_n": 3000}, {"idle_after": 0.5, "long_idle": 3}):
        a = rc.aggregate_clients(fast, hosts, clusters.get, **kw)
        b = rc.aggregate_clients(slow, hosts, clusters.get, **kw)
        for key in ("total", "by_host", "most_idle"):
            assert a[key] == b[key], (kw, key)
    agg = rc.aggregate_clients(fast, hosts, clusters.get, top_n=5)
    assert sum(h["count"] for h in agg["by_host"]) == 10_000
    assert [c["idle"] for c in agg["most_idle"]] == sorted(fast.idles, reverse=True)[:5]
    assert {c["name"] for c in fast.clients()} >= {"a=b", "x=y=z", "="}

# -- live --

def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _start_redis(addr: str, port: int, workdir: Path, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [require("redis-server"), "--bind", addr, "--port", str(port), "--protected-mode", "no", "--save", "",
         "--appendonly", "no", "--dir", str(workdir), "--maxclients", "5000", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            with rc.Conn(addr, port) as c:
                if c.call("PING") == "PONG":
                    return proc
        except (OSError, rc.RedisError):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"redis-server on {addr}:{port} did not start")
            time.sleep(0.05)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def shards(subnet, run_dir):
    """Two standalone shards (redis1, redis2 of `small_cluster`), LFU on shard0, always stopped."""
    cfg = write_cluster(run_dir / "cluster.yaml", small_cluster(subnet))
    procs = []
    try:
        procs.append(_start_redis(f"{subnet}.21", 6379, run_dir, "--maxmemory-policy", "allkeys-lfu",
                                  "--enable-debug-command", "yes"))
        procs.append(_start_redis(f"{subnet}.22", 6379, run_dir, "--maxmemory-policy", "noeviction"))
        yield cfg, clusterfile.load(cfg).spec, procs
    finally:
        for p in procs:
            _stop(p)


def test_collect_sections_live(shards):
    cfg, cf, _ = shards
    with rc.connect(cf, "shard0") as c:
        c.pipeline([("SET", f"k{i}", "v") for i in range(50)])
        # LFU counters grow with probability 1/((counter - 5) * lfu-log-factor + 1) per hit: 40
        # hits left k7 tied with k3 now and then; 1,000 put it clearly on top.
        c.pipeline([("GET", "k7")] * 1000 + [("GET", "k3")] * 10)
        c.call("DEBUG", "SLEEP", "0.02")
    obs = rc.collect(cf, "shard0")
    assert obs.up and obs.source == "redis" and obs.section_errors == {}
    d = obs.data
    assert d["info"]["server"]["redis_version"].startswith("7.")
    assert d["config"] == {"maxclients": 5000, "timeout": 0, "maxmemory-policy": "allkeys-lfu"}
    assert any(e["command"].startswith("DEBUG SLEEP") for e in d["slowlog"])
    assert isinstance(d["latency"], list)
    assert d["hotkeys"]["skipped"] is None and d["hotkeys"]["sampled"] == 50
    assert d["hotkeys"]["keys"][0]["key"] == "k7"
    other = rc.collect(cf, "shard1")
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
        down = rc.collect(cf, "shard0")
        assert time.monotonic() - t0 < 5
        assert not down.up and down.error and "Timeout" in down.error
        assert down.as_dict()["up"] is False
        assert not rc.collect_clients(cf, "shard0").up
        ok = rc.collect(cf, "shard1")
        assert ok.up and ok.data["info"]["clients"]["connected_clients"] >= 1
        res = chatops("inspect", "clients", "shard0", "--config", str(cfg))
        assert res.returncode == 1 and "down" in res.stderr and "Timeout" in res.stderr
    finally:
        os.kill(procs[0].pid, signal.SIGCONT)
    assert rc.collect(cf, "shard0").up


def test_unknown_and_unreachable_shard(subnet, run_dir):
    cfg = write_cluster(run_dir / "cluster.yaml", small_cluster(subnet))
    res = chatops("inspect", "clients", "nope", "--config", str(cfg))
    assert res.returncode == 2 and "shard0, shard1" in res.stderr
    res = chatops("inspect", "redis", "shard1", "--config", str(cfg))  # nothing listens there
    assert res.returncode == 1 and "refused" in res.stderr.lower()
    obs = rc.collect(clusterfile.load(cfg).spec, "shard1")
    assert not obs.up and "ConnectionRefused" in obs.error


def test_3000_idle_clients_by_host(shards, subnet):
    """3,000 idle clients from chat-testing and chat1 are counted per host name, as `lsof | uniq -c` was."""
    cfg, cf, _ = shards
    _raise_nofile()
    socks: list[socket.socket] = []
    try:
        for i in range(3000):
            s = socket.socket()
            s.bind((f"{subnet}.9" if i % 3 else f"{subnet}.1", 0))   # 2,000 chat-testing, 1,000 chat1
            s.connect((f"{subnet}.21", 6379))
            socks.append(s)
        with rc.connect(cf, "shard0") as c:
            deadline = time.monotonic() + 20
            while rc.fetch_info(c, "clients")["clients"]["connected_clients"] < 3001:
                assert time.monotonic() < deadline, "redis did not accept every client"
                time.sleep(0.05)
        res = chatops("inspect", "clients", "shard0", "--by", "host", "--json", "--config", str(cfg))
        assert res.returncode == 0, res.stderr
        js = json.loads(res.stdout)
        assert js["source"] == "clients" and js["up"]
        by = {h["host"]: h for h in js["data"]["by_host"]}
        assert by["chat-testing"]["count"] == 2000 and by["chat-testing"]["cluster"] == "testing"
        assert by["chat1"]["count"] == 1000 and by["chat1"]["cluster"] == "main"
        assert js["data"]["by_host"][0]["host"] == "chat-testing"
        assert dict(by["chat-testing"]["top_commands"]) == {"NULL": 2000}
        assert len(js["data"]["most_idle"]) == 20 and not js["data"]["slow_path"]
        assert js["data"]["redis_usec"] is not None and js["data"]["redis_usec"] > 0
        table = chatops("inspect", "clients", "shard0", "--config", str(cfg)).stdout
        lines = table.splitlines()
        assert lines[0].split()[:5] == ["COUNT", "HOST", "CLUSTER", "IDLE>60s", "IDLE>600s"]
        assert lines[1].split()[:3] == ["2000", "chat-testing", "testing"]
        assert lines[2].split()[:3] == ["1000", "chat1", "main"]
    finally:
        for s in socks:
            s.close()


def test_real_cluster_clients_by_host(subnet, run_dir):
    """`chatops up`: each chat host's HAProxy reaches the shard from the host's own address, so the
    shard's clients group under chat1 and chat-testing, with their clusters."""
    from tests.conftest import cluster_up, wait_for

    cfg = write_cluster(run_dir.parent / f"{run_dir.name}.yaml", small_cluster(subnet))
    socks: list[socket.socket] = []
    try:
        with cluster_up(cfg, run_dir / "run"):
            cf = clusterfile.load(cfg).spec
            # As the chat services do: through each chat host's local listener (the talk's
            # CACHE_PORT=2000); HAProxy then connects to the shard from the host's own address.
            for host in ("chat1", "chat-testing", "chat-testing"):
                s = socket.create_connection((cf.address(host), cf.listener_port(0)), timeout=5)
                s.sendall(rc.encode_command("PING"))
                assert s.recv(100) == b"+PONG\r\n"
                socks.append(s)
            seen = {}

            def hosts_seen():
                obs = rc.collect_clients(cf, "shard0")
                assert obs.up, obs.error
                by = {h["host"]: h for h in obs.data["by_host"]}
                seen.update(by)
                return by if {"chat1", "chat-testing"} <= set(by) else None
            by = wait_for(hosts_seen, 10, 0.2, "both chat hosts to hold connections to shard0")
            assert by["chat1"]["cluster"] == "main" and by["chat-testing"]["cluster"] == "testing"
            obs = rc.collect(cf, "shard0")
            assert obs.up and obs.section_errors == {}
            assert obs.data["config"]["maxmemory-policy"] == "allkeys-lfu"
            assert obs.data["hotkeys"]["skipped"] is None
            assert isinstance(obs.data["slowlog"], list) and isinstance(obs.data["latency"], list)
            res = chatops("inspect", "clients", "shard0", "--config", str(cfg), "--run-dir", str(run_dir / "run"))
            assert res.returncode == 0 and "chat-testing" in res.stdout, res.stderr
    finally:
        for s in socks:
            s.close()
        cfg.unlink(missing_ok=True)
