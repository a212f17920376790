"""The in-memory store and the figures it keeps: ring buffers with gaps, the series bound, and
figures computed from recorded real INFO / show stat output (tests/fixtures)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster import clusterfile, spec
from collectors import clients, haproxy, redis
from collectors.base import Observation
from controlplane import store
from controlplane.sources import figures
from controlplane.store import Store

FIX = Path(__file__).resolve().parent.parent / "fixtures"


def obs(source: str, target: str, at: float, up: bool = True, data=None) -> Observation:
    return Observation(source, target, at, up, 0.01, data, None if up else "ConnectionRefusedError: x")


def test_ring_buffer_keeps_the_last_points_with_gaps():
    s = Store(points=4)
    for i in range(6):
        f = {"a": float(i)}
        if i in (2, 4, 5):
            f["b"] = 10.0 + i
        s.put(obs("redis", "shard0", 100 + i), f)
    assert s.series("redis", "shard0", "a") == [(102, 2.0), (103, 3.0), (104, 4.0), (105, 5.0)]
    # b appeared at 102, vanished at 103 (a gap, not a repeat of the last value), came back.
    assert s.series("redis", "shard0", "b") == [(102, 12.0), (103, None), (104, 14.0), (105, 15.0)]
    assert s.series("redis", "shard0", "b", since=104) == [(104, 14.0), (105, 15.0)]
    assert s.series("redis", "shard0", "nope") == [] and s.series("redis", "other", "a") == []
    assert s.latest("redis", "shard0").figures == {"a": 5.0, "b": 15.0}
    assert s.latest("redis", "shard0").previous.at == 104
    assert set(s.latest_of("redis")) == {"shard0"}
    assert s.size() == {"series": 2, "points": 8, "points_per_series": 4, "dropped_series": 0}


def test_series_per_target_are_bounded(monkeypatch):
    monkeypatch.setattr(store, "MAX_SERIES_PER_TARGET", 10)
    s = Store(points=3)
    # A leak from many unknown addresses: every scrape brings new per-host figures.
    for i in range(5):
        s.put(obs("clients", "shard0", i), {f"host:127.9.{i}.{j}:count": 1.0 for j in range(4)})
    assert len(s.names("clients", "shard0")) == 10
    assert s.dropped_series == 10
    with pytest.raises(ValueError):
        Store(points=1)


def test_points_follow_the_cluster_file():
    """Each source keeps `history` at its own interval: CLIENT LIST's slower one needs fewer."""
    doc = clusterfile.load(None).spec.model_dump()
    doc["controlplane"]["scrape"] = {"interval": "5s", "client_list_interval": "30s", "history": "1h"}
    s = Store.for_cluster(spec.ClusterFile.model_validate(doc))
    assert (s.points, s.points_by_source) == (721, {"clients": 121})
    doc["controlplane"]["scrape"] = {"interval": "10s", "client_list_interval": "2s", "history": "10m"}
    s = Store.for_cluster(spec.ClusterFile.model_validate(doc))
    assert (s.points, s.points_by_source) == (61, {"clients": 301})
    for i in range(400):
        s.put(obs("clients", "shard0", float(i)), {"total": float(i)})
        s.put(obs("redis", "shard0", float(i)), {"ops_per_s": float(i)})
    assert len(s.series("clients", "shard0", "total")) == 301
    assert s.series("redis", "shard0", "ops_per_s")[0] == (339.0, 339.0)


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
    assert servers and f[f"{servers[0].proxy}/{servers[0].name}:up"] == (1.0 if servers[0].status.startswith("UP") else 0.0)
    assert f[f"{servers[0].proxy}/{servers[0].name}:econ_per_s"] is None      # first sample
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
    assert sum(f[f"host:{h}:count"] for h in hosts) == f["total"]
    assert figures.clients_figures(obs("clients", "shard0", 2.0, up=False)) == {
        "up": 0.0, "total": None, "idle": None, "idle_long": None}
