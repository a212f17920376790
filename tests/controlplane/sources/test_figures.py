"""Observations -> figures, on recorded real INFO / show stat / CLIENT LIST output
(tests/fixtures, captured as tests/fixtures/README.md says) and their hostile twins; and the
series names both sides of the store build with controlplane.sources.names."""

from __future__ import annotations

import pytest

from collectors import clients, haproxy, redis
from collectors.base import Observation
from controlplane.sources import figures, names
from tests.conftest import REPO

FIX = REPO / "tests" / "fixtures"


def obs(source: str, target: str, at: float, up: bool = True, data=None) -> Observation:
    return Observation(source, target, at, up, 0.01, data, None if up else "ConnectionRefusedError: x")


def _info_obs(at: float, info: dict) -> Observation:
    return obs("redis", "shard0", at, data={"info": info, "config": {"maxclients": "10000"}})


def test_redis_figures_from_recorded_info():
    info = redis.parse_info((FIX / "redis" / "info.txt").read_bytes())
    first = figures.redis_figures(_info_obs(100.0, info), None)
    assert first["up"] == 1.0 and first["ops_per_s"] is None and first["cpu_percent"] is None
    assert first["connected_clients"] == info["clients"]["connected_clients"]
    assert first["maxclients"] == 10000.0
    assert first["used_memory_bytes"] == info["memory"]["used_memory"]
    # Ten seconds later: 5,000 more commands and 2.5 s more CPU -> 500 ops/s and 25 % of a core.
    later = {k: dict(v) for k, v in info.items()}
    later["stats"]["total_commands_processed"] += 5000
    later["cpu"]["used_cpu_user"] += 2.0
    later["cpu"]["used_cpu_sys"] += 0.5
    later["stats"]["keyspace_hits"] += 90
    later["stats"]["keyspace_misses"] += 10
    f = figures.redis_figures(_info_obs(110.0, later), _info_obs(100.0, info))
    assert f["ops_per_s"] == pytest.approx(500.0)
    assert f["cpu_percent"] == pytest.approx(25.0)
    assert f["hit_ratio"] == pytest.approx(0.9)
    # A restart resets the counters: no negative rate, just unknown.
    reset = {k: dict(v) for k, v in info.items()}
    reset["stats"]["total_commands_processed"] = 3
    assert figures.redis_figures(_info_obs(120.0, reset), _info_obs(110.0, later))["ops_per_s"] is None
    down = figures.redis_figures(obs("redis", "shard0", 130.0, up=False), _info_obs(120.0, reset))
    assert down["up"] == 0.0 and down["ops_per_s"] is None and down["connected_clients"] is None


def test_redis_figures_on_hostile_info():
    info = redis.parse_info((FIX / "redis" / "info_evil.txt").read_bytes())
    f = figures.redis_figures(_info_obs(100.0, info), _info_obs(90.0, info))
    assert f["up"] == 1.0
    assert all(v is None or isinstance(v, float) for v in f.values())


def test_haproxy_figures_from_recorded_show_stat():
    stat = haproxy.parse_stat_csv((FIX / "haproxy" / "show_stat.csv").read_text())
    o = obs("haproxy", "chat1", 100.0, data=haproxy.HAProxyData(stat=stat))
    f = figures.haproxy_figures(o, None)
    servers = [r for r in stat.rows if r.kind == "server"]
    assert servers and f[names.series(names.proxy_row(servers[0].proxy, servers[0].name), "up")] == (1.0 if servers[0].status.startswith("UP") else 0.0)
    assert f[names.series(names.proxy_row(servers[0].proxy, servers[0].name), "econ_per_s")] is None      # first sample
    evil = haproxy.parse_stat_csv((FIX / "haproxy" / "show_stat_evil.csv").read_text())
    f2 = figures.haproxy_figures(obs("haproxy", "chat1", 110.0, data=haproxy.HAProxyData(stat=evil)), o)
    assert f2["up"] == 1.0
    assert all(v is None or isinstance(v, float) for v in f2.values())
    assert figures.haproxy_figures(obs("haproxy", "chat1", 120.0, up=False), o) == {
        "up": 0.0, "scrape_duration_seconds": 0.01}


def test_clients_figures_per_host():
    cl = clients.parse_client_list((FIX / "redis" / "client_list.txt").read_bytes())
    agg = clients.aggregate_clients(cl, {}, lambda h: None)
    f = figures.clients_figures(obs("clients", "shard0", 1.0, data=agg))
    assert f["total"] == float(len(cl))
    hosts = [h["host"] for h in agg["by_host"]]
    assert sum(f[names.series(names.labelled("host", h), "count")] for h in hosts) == f["total"]
    assert figures.clients_figures(obs("clients", "shard0", 2.0, up=False)) == {
        "up": 0.0, "total": None, "idle": None, "idle_long": None}


def test_haproxy_rates_between_two_recorded_samples():
    stat = haproxy.parse_stat_csv((FIX / "haproxy" / "show_stat.csv").read_text())
    server = next(r for r in stat.rows if r.kind == "server")
    later = haproxy.parse_stat_csv((FIX / "haproxy" / "show_stat.csv").read_text())
    bumped = next(r for r in later.rows if (r.proxy, r.name) == (server.proxy, server.name))
    object.__setattr__(bumped, "econ", (server.econ or 0) + 20)
    f = figures.haproxy_figures(obs("haproxy", "chat1", 110.0, data=haproxy.HAProxyData(stat=later)),
                                obs("haproxy", "chat1", 100.0, data=haproxy.HAProxyData(stat=stat)))
    assert f[names.series(names.proxy_row(server.proxy, server.name), "econ_per_s")] == pytest.approx(2.0)


def test_names_have_one_shape_on_both_sides():
    row = names.proxy_row("redis-shard2", "shard2")
    assert names.series(row, "scur") == "redis-shard2/shard2:scur"
    assert names.part_of("redis-shard2/shard2:scur") == row and names.figure_of("redis-shard2/shard2:scur") == "scur"
    host = names.labelled("host", "chat-testing")
    assert names.series(host, "idle") == "host:chat-testing:idle"
    group = names.log_group("edge-chat1", None, "timeout")
    assert names.series(group, "per_s") == "edge-chat1|-|timeout:per_s"
    assert names.split_log_group("edge-chat1|clue|timeout:per_s") == ("edge-chat1", "clue", "timeout", "per_s")
    assert names.split_log_group("redis-shard2/shard2:scur") is None
    assert names.split_log_group("a|b|c|d:per_s") is None


def test_parts_are_read_back_from_series_names():
    got = ["total", "host:chat1:count", "host:chat1:idle", "host:chat-testing:idle",
           "host:::1:idle", "shard:shard0:ops_per_s", "host:", "hostile:x:idle"]
    assert names.parts(got, "host") == ["chat1", "chat-testing", "::1"]
    assert names.parts(got, "host", "count") == ["chat1"]
    assert names.parts(got, "edge") == []
