"""collectors/clients.py: CLIENT LIST parsed and counted per source host, on the recorded reply and
its evil twin and on 10,000 generated clients (the fast and the per-line path agree), then live:
3,000 idle clients through `chatops inspect clients`, and a real `chatops up` cluster."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from cluster import clusterfile
from collectors import clients
from collectors import redis as rc
from collectors.resp import encode_command
from tests.collectors.conftest import raise_nofile
from tests.conftest import chatops, small_cluster, write_cluster

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "redis"


def fixture(name: str) -> bytes:
    return (FIX / name).read_bytes()


# -- the parser and the aggregation on recordings --

def test_client_list_fixture():
    cl = clients.parse_client_list(fixture("client_list.txt"))
    assert not cl.slow_path and cl.lines == len(cl) == 8 and cl.skipped == 0
    hosts = {"127.213.134.1": "chat1", "127.213.134.9": "chat-testing"}
    clusters = {"chat1": "main", "chat-testing": "testing"}
    agg = clients.aggregate_clients(cl, hosts, clusters.get, top_n=3)
    by = {h["host"]: h for h in agg["by_host"]}
    assert [h["host"] for h in agg["by_host"]] == ["chat-testing", "chat1", "127.0.0.1"]  # count desc
    assert by["chat-testing"]["count"] == 4 and by["chat-testing"]["cluster"] == "testing"
    assert by["chat1"]["count"] == 3 and by["127.0.0.1"]["cluster"] is None
    assert dict(by["chat1"]["top_commands"]) == {"client|setname": 2, "get": 1}
    # Two seconds old and idle since they connected: the setname-only pool connections and the
    # leak's; clue-busy (idle 0) and redis-cli (idle 0) have been working.
    assert by["chat-testing"]["unused"] == 4 and by["chat1"]["unused"] == 2 and by["127.0.0.1"]["unused"] == 0
    assert len(agg["most_idle"]) == 3
    c = cl.clients()[0]
    assert c["name"] == "clue" and c["laddr"] == "127.213.134.21:6379" and c["omem"] == 0


def test_client_list_evil():
    cl = clients.parse_client_list(fixture("client_list_evil.txt"))
    assert cl.slow_path
    rows = cl.clients()
    names = [c["name"] for c in rows]
    assert "a=b" in names and "x=y=z" in names                   # '=' inside values: first '=' splits
    assert cl.skipped == 3                                        # truncated, garbage, bad idle
    future = next(c for c in rows if c["name"] == "newer")
    assert future["idle"] == 700 and future["cmd"] == "get"       # unknown fields from a newer server
    agg = clients.aggregate_clients(cl, {"127.213.134.9": "chat-testing"}, lambda h: "testing", top_n=1)
    assert agg["skipped_lines"] == 3
    assert agg["most_idle"][0]["idle"] == 700 and agg["most_idle"][0]["host"] == "chat-testing"
    by = {h["host"]: h for h in agg["by_host"]}
    assert by["chat-testing"]["idle_over"] == 2 and by["chat-testing"]["idle_over_long"] == 1
    empty = clients.parse_client_list(b"")
    assert len(empty) == 0 and not empty.slow_path
    assert clients.aggregate_clients(empty, {}, lambda h: None)["by_host"] == []
    junk = clients.parse_client_list(b"\x00\xff not a client list\n" * 3)
    assert len(junk) == 0 and junk.skipped == 3


def test_fast_and_slow_paths_agree():
    raw = fixture("client_list.txt")
    fast = clients.parse_client_list(raw)
    slow = clients.parse_client_list(raw + b"truncated id=99 addr=1\n")
    assert not fast.slow_path and slow.slow_path and slow.skipped == 1
    assert fast.clients() == slow.clients()
    agg = lambda cl: clients.aggregate_clients(cl, {}, lambda h: None)["by_host"]
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
    fast = clients.parse_client_list(raw)
    slow = clients.parse_client_list(raw + b"truncated id=99 addr=1\n")
    assert not fast.slow_path and slow.slow_path and slow.skipped == 1
    assert len(fast) == len(slow) == fast.lines == 10_000
    assert fast.clients() == slow.clients()
    hosts = {"127.213.134.1": "chat1", "127.213.134.2": "chat2", "127.213.134.9": "chat-testing"}
    clusters = {"chat1": "main", "chat2": "main", "chat-testing": "testing"}
    for kw in ({}, {"top_n": 0}, {"top_n": 1}, {"top_n": 500, "top_commands": 2},
               {"idle_after": 60, "long_idle": 600, "top_n": 3000}, {"idle_after": 0.5, "long_idle": 3}):
        a = clients.aggregate_clients(fast, hosts, clusters.get, **kw)
        b = clients.aggregate_clients(slow, hosts, clusters.get, **kw)
        for key in ("total", "by_host", "most_idle"):
            assert a[key] == b[key], (kw, key)
    agg = clients.aggregate_clients(fast, hosts, clusters.get, top_n=5)
    assert sum(h["count"] for h in agg["by_host"]) == 10_000
    assert [c["idle"] for c in agg["most_idle"]] == sorted(fast.idles, reverse=True)[:5]
    assert {c["name"] for c in fast.clients()} >= {"a=b", "x=y=z", "="}


def test_3000_idle_clients_by_host(shards, subnet):
    """3,000 idle clients from chat-testing and chat1 are counted per host name, as `lsof | uniq -c` was."""
    cfg, cf, _ = shards
    raise_nofile()
    socks: list[socket.socket] = []
    try:
        for i in range(3000):
            s = socket.socket()
            s.bind((f"{subnet}.9" if i % 3 else f"{subnet}.1", 0))   # 2,000 chat-testing, 1,000 chat1
            s.connect((f"{subnet}.21", 6379))
            socks.append(s)
        with rc.connect(rc.target_for(cf, "shard0")) as c:
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
        assert js["data"]["scanner"] == "compiled"
        # The same live reply through the compiled scanner and both Python paths.
        with rc.connect(rc.target_for(cf, "shard0")) as c:
            raw = clients.fetch_client_list(c)
        hosts = cf.host_by_address()
        agg = [clients.aggregate_clients(clients.parse_client_list(raw, per_line=per_line), hosts, {}.get)
               for per_line in (False, True)]
        agg.append(clients.summarize(raw, hosts, {}.get, compiled=True))
        for a in agg:
            a.pop("slow_path")
        assert agg[0] == agg[1] == agg[2] and agg[2]["total"] >= 3001
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
                s.sendall(encode_command("PING"))
                assert s.recv(100) == b"+PONG\r\n"
                socks.append(s)
            seen = {}

            def hosts_seen():
                obs = clients.collect(clients.target_for(cf, "shard0"))
                assert obs.up, obs.error
                by = {h["host"]: h for h in obs.data["by_host"]}
                seen.update(by)
                return by if {"chat1", "chat-testing"} <= set(by) else None
            by = wait_for(hosts_seen, 10, 0.2, "both chat hosts to hold connections to shard0")
            assert by["chat1"]["cluster"] == "main" and by["chat-testing"]["cluster"] == "testing"
            obs = rc.collect(rc.target_for(cf, "shard0"))
            assert obs.up and obs.section_errors == {}
            assert obs.data["config"]["maxmemory-policy"] == "volatile-lfu"   # the default (issue 16)
            assert obs.data["hotkeys"]["skipped"] is None
            assert isinstance(obs.data["slowlog"], list) and isinstance(obs.data["latency"], list)
            res = chatops("inspect", "clients", "shard0", "--config", str(cfg), "--run-dir", str(run_dir / "run"))
            assert res.returncode == 0 and "chat-testing" in res.stdout, res.stderr
    finally:
        for s in socks:
            s.close()
        cfg.unlink(missing_ok=True)
