"""Each cross-check rule on its own, on a cluster file that breaks only that rule; the broken
examples in tests/fixtures/broken_clusters/ go through the whole loader in test_clusterfile.py."""

import copy

import pytest

from cluster import checks
from cluster.spec import ClusterFile
from tests.conftest import small_cluster

BASE = small_cluster("127.0.9")


def spec(**edits) -> ClusterFile:
    doc = copy.deepcopy(BASE)
    for path, value in edits.items():
        node = doc
        *parents, last = path.split("__")
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return ClusterFile.model_validate(doc)


def test_the_base_breaks_no_rule():
    cf = spec()
    assert {rule.__name__: list(rule(cf)) for rule in checks.RULES} == {r.__name__: [] for r in checks.RULES}


def chat_host() -> str:
    return next(iter(BASE["clusters"].values()))["hosts"][0]


def shard_host() -> str:
    return BASE["redis"]["shards"][0]["host"]


@pytest.mark.parametrize("rule, edits, path", [
    (checks.loopback_only, lambda: {f"hosts__{chat_host()}": {"address": "10.1.2.3"}}, "address"),
    (checks.unique_addresses, lambda: {f"hosts__{shard_host()}": {"address": BASE["hosts"][chat_host()]["address"]}},
     "address"),
    (checks.local_connections,
     lambda: {f"hosts__{chat_host()}": {**BASE["hosts"][chat_host()], "ansible_connection": "ssh"}},
     "ansible_connection"),
    (checks.known_hosts, lambda: {"redis__shards__0__host": "nowhere"}, "redis.shards.0.host"),
    (checks.shards_off_chat_hosts, lambda: {"redis__shards__0__host": chat_host()}, "redis.shards.0.host"),
    (checks.unique_shard_names, lambda: {"redis__shards__1__name": BASE["redis"]["shards"][0]["name"]},
     "redis.shards.1.name"),
    (checks.listener_range, lambda: {"haproxy": {"listener_base_port": 65535}}, "haproxy.listener_base_port"),
])
def test_each_rule_names_the_key(rule, edits, path):
    problems = list(rule(spec(**edits())))
    assert problems and all(path in p for p, _ in problems), problems


def test_unique_ports_names_both_keys():
    doc = copy.deepcopy(BASE)
    cname = next(iter(doc["clusters"]))
    doc["clusters"][cname]["services"] = {"clue": {"port": doc["haproxy"].get("stats_port", 8404)}}
    problems = list(checks.unique_ports(ClusterFile.model_validate(doc)))
    assert any("duplicate port" in m and "services.clue.port" in (p + m) for p, m in problems), problems


def test_one_cluster_per_host_and_rooms_placed_once():
    doc = copy.deepcopy(BASE)
    doc["clusters"]["other"] = {"hosts": [chat_host()], "rooms": ["lobby"]}
    first = next(iter(doc["clusters"]))
    doc["clusters"][first]["rooms"] = ["lobby"]
    cf = ClusterFile.model_validate(doc)
    assert [p for p, _ in checks.one_cluster_per_host(cf)] == ["clusters.other.hosts.0"]
    assert [p for p, _ in checks.rooms_placed_once(cf)] == ["clusters.other.rooms.0"]


def test_unique_alert_names():
    doc = copy.deepcopy(BASE)
    dest = {"name": "oncall", "type": "slack", "url_env": "SLACK_URL"}
    doc["alerts"] = [dest, dict(dest)]
    assert [p for p, _ in checks.unique_alert_names(ClusterFile.model_validate(doc))] == ["alerts.1.name"]


def test_a_typo_is_one_problem_not_three():
    doc = copy.deepcopy(BASE)
    doc["redis"]["shards"][0]["host"] = "nowhere"
    problems = checks.run(ClusterFile.model_validate(doc))
    assert [p for p, _ in problems] == ["redis.shards.0.host"], problems


# -- warnings --

def test_an_allkeys_policy_is_a_warning_not_an_error():
    """allkeys-* can evict bans, mods and tokens (issue 16): the file still loads, with a warning
    naming the key that sets it; the default (volatile-lfu) and noeviction warn of nothing."""
    assert spec().redis.maxmemory_policy == "volatile-lfu" and checks.warnings(spec()) == []
    assert checks.warnings(ClusterFile.model_validate(
        {**BASE, "redis": {**BASE["redis"], "maxmemory_policy": "noeviction"}})) == []
    cf = ClusterFile.model_validate({**BASE, "redis": {**BASE["redis"], "maxmemory_policy": "allkeys-lfu"}})
    assert checks.run(cf) == []
    [(path, message)] = checks.warnings(cf)
    assert path == "redis.maxmemory_policy"
    assert "allkeys-lfu may evict any key" in message and "bans" in message and "volatile-lfu" in message
    shards = copy.deepcopy(BASE["redis"]["shards"])
    shards[1]["maxmemory_policy"] = "allkeys-random"
    cf = ClusterFile.model_validate({**BASE, "redis": {"shards": shards}})
    assert [p for p, _ in checks.warnings(cf)] == ["redis.shards.1.maxmemory_policy"]


def test_the_shipped_default_warns_of_nothing():
    from cluster import clusterfile
    assert checks.warnings(clusterfile.load().spec) == []


def test_config_check_prints_the_warning(tmp_path):
    from tests.conftest import chatops, write_cluster
    doc = copy.deepcopy(BASE)
    doc["redis"]["maxmemory_policy"] = "allkeys-lru"
    result = chatops("config", "check", str(write_cluster(tmp_path / "c.yaml", doc)))
    assert result.returncode == 0, result.stderr
    assert "warning: redis.maxmemory_policy: allkeys-lru may evict any key" in result.stderr
