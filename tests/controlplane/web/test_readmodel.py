"""The read model the API and the dashboard share, over a store filled from recorded real output
(tests/fixtures: INFO, CLIENT LIST and show stat captured from real servers, see its README):
what each view says for a source that answered, one that failed, and one never scraped."""

from __future__ import annotations

import pytest

from cluster.spec import ClusterFile
from collectors import clients, haproxy, redis
from collectors.base import Observation
from controlplane.sources import figures, names
from controlplane.store import Store
from controlplane.web import readmodel
from tests.conftest import REPO, small_cluster

FIX = REPO / "tests" / "fixtures"
T0 = 1_800_000_000.0
NOW = T0 + 12


def _obs(source: str, target: str, at: float, data=None, error: str | None = None) -> Observation:
    return Observation(source, target, at, error is None, 0.01, data, error)


@pytest.fixture(scope="module")
def cf() -> ClusterFile:
    return ClusterFile.model_validate(small_cluster("127.0.9"))


@pytest.fixture(scope="module")
def store(cf) -> Store:
    s = Store.for_cluster(cf)
    info = redis.parse_info((FIX / "redis" / "info.txt").read_bytes())
    later = {k: dict(v) for k, v in info.items()}
    later["stats"]["total_commands_processed"] += 5000     # 500 ops/s over the 10 s between scrapes
    later["cpu"]["used_cpu_user"] += 2.5                     # 25 % of a core
    config = {"maxclients": "10000", "timeout": "0", "maxmemory-policy": "allkeys-lfu"}
    prev = None
    for at, i in ((T0, info), (T0 + 10, later)):
        o = _obs("redis", "shard0", at, {"info": i, "config": config, "slowlog": [], "latency": []})
        s.put(o, figures.redis_figures(o, prev), {"calls_per_s": figures.redis_calls_per_s(o, prev)})
        prev = o
    down = _obs("redis", "shard1", T0 + 10, error="ConnectionRefusedError: [Errno 111] Connection refused")
    s.put(down, figures.redis_figures(down, None))

    cl = clients.parse_client_list((FIX / "redis" / "client_list.txt").read_bytes())
    agg = clients.aggregate_clients(cl, {"127.213.134.1": "chat1"}, lambda h: "main" if h == "chat1" else None)
    o = _obs("clients", "shard0", T0 + 10, agg)
    s.put(o, figures.clients_figures(o))

    first = haproxy.parse_stat_csv((FIX / "haproxy" / "show_stat.csv").read_text())
    second = haproxy.parse_stat_csv((FIX / "haproxy" / "show_stat.csv").read_text())
    server = next(r for r in second.rows if r.kind == "server")
    object.__setattr__(server, "econ", (server.econ or 0) + 30)     # 3 connection errors a second
    prev = None
    for at, stat in ((T0, first), (T0 + 10, second)):
        o = _obs("haproxy", "chat1", at, haproxy.HAProxyData(stat=stat))
        s.put(o, figures.haproxy_figures(o, prev))
        prev = o

    group = {"file": "edge-chat1", "service": "edge", "host": "chat1", "remote": "clue", "kind": "timeout",
             "total": 40, "per_s": 2.0, "examples": ["Feb 18 06:54:04 tmi_edge: [clue] Timed out"]}
    quiet = {**group, "file": "clue-chat1", "service": "clue", "remote": None, "kind": "success",
             "total": 3, "per_s": 0.1, "examples": []}
    o = _obs("logs", "local", T0 + 10, {"files": 2})
    s.put(o, {names.series(names.log_group("edge-chat1", "clue", "timeout"), "per_s"): 2.0},
          {"groups": [quiet, group], "unparsed_total": 1, "unparsed_samples": ["garbage"]})
    return s


def test_a_shard_that_answered(cf, store):
    row = next(r for r in readmodel.shards(cf, store, NOW) if r["name"] == "shard0")
    assert row["up"] is True and row["age_s"] == pytest.approx(2.0)
    assert row["ops_per_s"] == pytest.approx(500.0) and row["cpu_percent"] == pytest.approx(25.0)
    assert row["maxclients"] == 10000 and row["timeout"] == "0" and row["maxmemory_policy"] == "allkeys-lfu"
    assert row["listener_port"] == cf.haproxy.listener_base_port
    chat1 = next(h for h in row["clients"]["by_host"] if h["host"] == "chat1")
    assert chat1["cluster"] == "main" and chat1["count"] >= 1 and chat1["addresses"] == ["127.213.134.1"]
    assert row["clients"]["total"] == sum(h["count"] for h in row["clients"]["by_host"])


def test_a_shard_that_failed_shows_its_error_and_no_stale_figure(cf, store):
    row = next(r for r in readmodel.shards(cf, store, NOW) if r["name"] == "shard1")
    assert row["up"] is False and "Connection refused" in row["error"]
    assert row["ops_per_s"] is None and row["connected_clients"] is None
    assert row["clients"]["up"] is None and row["clients"]["by_host"] == []     # never scraped


def test_one_shard_has_its_series_and_per_host_series(cf, store):
    s = readmodel.shard(cf, store, "shard0", now=NOW)
    assert [v for _, v in s["series"]["ops_per_s"]] == [None, 500.0]
    assert set(s["clients"]["series_by_host"]["chat1"]) == {"host:chat1:count", "host:chat1:idle"}
    assert s["clients"]["series_by_host"]["chat1"]["host:chat1:count"][-1][1] >= 1
    since = readmodel.shard(cf, store, "shard0", since=T0 + 5, now=NOW)
    assert len(since["series"]["ops_per_s"]) == 1


def test_unknown_names_list_the_valid_ones(cf, store):
    with pytest.raises(readmodel.NotFound, match="unknown shard 'shard9'; valid: shard0, shard1"):
        readmodel.shard(cf, store, "shard9")
    with pytest.raises(readmodel.NotFound, match="unknown chat host 'redis1'; valid: chat1, chat-testing"):
        readmodel.proxy(cf, store, "redis1")
    with pytest.raises(readmodel.NotFound, match="valid: chat1, chat-testing, redis1, redis2"):
        readmodel.host(cf, store, "nowhere")


def test_proxies_rows_with_rates_and_series(cf, store):
    p = readmodel.proxy(cf, store, "chat1", now=NOW)
    server = next(r for r in p["rows"] if r["kind"] == "server")
    assert server["econ_per_s"] == pytest.approx(3.0)
    assert set(server["series"]) == set(readmodel.PROXY_ROW_SERIES)
    assert len(server["series"]["scur"]) == 2
    never = next(x for x in readmodel.proxies(cf, store, NOW) if x["host"] == "chat-testing")
    assert never["up"] is None and never["rows"] == []


def test_log_events_busiest_first_and_filtered(cf, store):
    ev = readmodel.log_events(store, now=NOW)
    assert [g["file"] for g in ev["groups"]] == ["edge-chat1", "clue-chat1"]
    assert ev["groups"][0]["series"] == [[T0 + 10, 2.0]] and ev["unparsed_total"] == 1
    assert [g["file"] for g in readmodel.log_events(store, service="clue", now=NOW)["groups"]] == ["clue-chat1"]
    assert readmodel.log_events(store, service="edge-chat1", now=NOW)["groups"][0]["kind"] == "timeout"


def test_hosts_roll_up_their_shards_problems(cf, store):
    by_name = {h["name"]: h for h in readmodel.hosts(cf, store, NOW)}
    assert by_name["redis2"]["up"] is False and "shard1: ConnectionRefusedError" in by_name["redis2"]["problems"][0]
    assert by_name["redis1"]["problems"] == [] and by_name["redis1"]["shards"] == ["shard0"]
    assert by_name["chat1"]["roles"] == ["chat"] and by_name["chat1"]["cluster"] == "main"
    clusters = {c["name"]: c for c in readmodel.clusters(cf, store, NOW)}
    assert clusters["main"]["hosts"] == ["chat1"] and clusters["main"]["rooms"] == ["lobby"]
