"""The inventory plugin: every host of the cluster file with its address, groups and ports, and
nothing but the cluster file behind it."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from cluster import clusterfile
from tests.ansible.conftest import INVENTORY, REPO, ansible_bin, ansible_env


def _plain(value):
    """ansible-inventory --list marks strings from a plugin as unsafe ({"__ansible_unsafe": ...})."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def inventory(*args: str, config=None, run=None, **env) -> subprocess.CompletedProcess:
    return subprocess.run([ansible_bin("ansible-inventory"), "-i", str(INVENTORY), *args], capture_output=True,
                          text=True, cwd=REPO, timeout=60, env=ansible_env(config, run, **env))


def listing(config=None, run=None) -> dict:
    proc = inventory("--list", config=config, run=run)
    assert proc.returncode == 0, proc.stderr
    return _plain(json.loads(proc.stdout))


def groups_of(inv: dict) -> dict[str, set[str]]:
    """host -> every group holding it, directly or through a child group."""
    def hosts(group: str) -> set[str]:
        g = inv.get(group, {})
        return set(g.get("hosts", [])).union(*(hosts(c) for c in g.get("children", [])))
    return {h: {g for g in inv if g not in ("_meta", "all") and h in hosts(g)}
            for h in inv["_meta"]["hostvars"]}


def test_list_has_every_host_of_the_default_with_address_and_groups(tmp_path):
    inv = listing(run=tmp_path)                   # nothing runs there: the shipped default
    cf = clusterfile.load().spec
    hv = inv["_meta"]["hostvars"]
    assert set(hv) == set(cf.hosts) | {"controlplane"}
    for name, host in cf.hosts.items():
        assert hv[name]["chatops_address"] == host.address
        assert hv[name]["ansible_connection"] == "local"
        assert hv[name]["ansible_python_interpreter"] == sys.executable
    assert hv["controlplane"]["chatops_address"] == cf.controlplane.listen.address
    groups = groups_of(inv)
    assert groups["chat1"] == {"chat", "cluster_main"}
    assert groups["chat2"] == {"chat", "cluster_main"}
    assert groups["chat-event1"] == {"chat", "cluster_event"}
    assert groups["chat-testing"] == {"chat", "cluster_testing"}
    assert groups["redis1"] == {"redis", "shard_shard0", "shard_shard1"}
    assert groups["redis2"] == {"redis", "shard_shard2", "shard_shard3"}
    assert groups["controlplane"] == {"controlplane"}
    # Ports come from cluster/, the same numbers the supervisor binds.
    assert hv["chat1"]["chatops_services"]["edge"] == {"irc_port": 16667, "ws_port": 18080,
                                                   "http_port": 17080, "drain_period": "10s"}
    assert hv["chat1"]["chatops_haproxy"]["listeners"][2] == {"shard": "shard2", "port": 2002}
    assert hv["chat1"]["chatops_haproxy"]["stats_port"] == 8404
    assert hv["chat-testing"]["chatops_cluster"] == "testing"
    assert [(s["name"], s["port"], s["role"]) for s in hv["redis2"]["chatops_shards"]] == \
        [("shard2", 6379, "primary"), ("shard3", 6380, "primary")]
    # Group vars of all, seen on every host.
    assert hv["chat1"]["chatops_profile"] == "local"
    assert hv["chat1"]["chatops_cluster_file"] == str(clusterfile.DEFAULT_CLUSTER_FILE.resolve())
    assert hv["chat1"]["chatops_run_dir"] == str(tmp_path)
    assert hv["chat1"]["chatops_api_url"] == "http://127.0.0.1:5000"
    assert hv["chat1"]["chatops_bin"].endswith("/chatops")


def test_a_changed_cluster_file_changes_the_inventory(tmp_path):
    doc = yaml.safe_load(clusterfile.DEFAULT_CLUSTER_FILE.read_text())
    doc["hosts"]["chat3"] = {"address": "127.0.1.3"}
    doc["hosts"]["redis3"] = {"address": "127.0.2.3"}
    doc["clusters"]["main"]["hosts"].append("chat3")
    doc["redis"]["shards"].append({"name": "shard4", "host": "redis3", "port": 6379,
                                   "replica": {"host": "redis1", "port": 6390}})
    doc["controlplane"]["listen"]["address"] = "127.0.1.3"      # the control plane on chat3
    config = tmp_path / "cluster.yaml"
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    inv = listing(config=config, run=tmp_path)
    hv = inv["_meta"]["hostvars"]
    groups = groups_of(inv)
    assert "controlplane" not in hv                       # chat3 has its address, so chat3 is it
    assert groups["chat3"] == {"chat", "cluster_main", "controlplane"}
    assert hv["chat3"]["chatops_roles"] == ["chat", "controlplane"]
    assert groups["redis3"] == {"redis", "shard_shard4"}
    assert hv["redis1"]["chatops_shards"][-1] == {
        "name": "shard4", "port": 6390, "role": "replica", "listener_port": 2004,
        "primary": {"host": "redis3", "address": "127.0.2.3", "port": 6379}}
    assert hv["chat1"]["chatops_haproxy"]["listeners"][-1] == {"shard": "shard4", "port": 2004}
    assert hv["chat1"]["chatops_cluster_file"] == str(config)


def test_the_running_clusters_file_is_used_when_none_is_named(tmp_path):
    doc = clusterfile.default_on_subnet("127.0.77")
    config = tmp_path / "running.yaml"
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    (tmp_path / "state.json").write_text(json.dumps({"config": str(config), "processes": []}))
    hv = listing(run=tmp_path)["_meta"]["hostvars"]
    assert hv["chat1"]["chatops_address"] == "127.0.77.1"
    assert hv["chat1"]["chatops_cluster_file"] == str(config)


def test_profile_remote_uses_ssh_and_the_address(tmp_path):
    doc = yaml.safe_load(clusterfile.DEFAULT_CLUSTER_FILE.read_text())
    doc["profile"] = "remote"
    for i, host in enumerate(doc["hosts"].values()):
        host["address"] = f"10.0.0.{i + 10}"
    doc["controlplane"]["listen"]["address"] = "10.0.0.5"
    config = tmp_path / "remote.yaml"
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    hv = listing(config=config, run=tmp_path)["_meta"]["hostvars"]
    for name, host in doc["hosts"].items():
        assert hv[name]["ansible_connection"] == "ssh"
        assert hv[name]["ansible_host"] == host["address"]
        assert "ansible_python_interpreter" not in hv[name]
    assert hv["controlplane"]["ansible_host"] == "10.0.0.5"
    assert hv["chat1"]["chatops_profile"] == "remote"


def test_an_invalid_cluster_file_fails_with_the_loaders_message(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("version: 1\nhosts: {chat1: {address: 300.0.0.1}}\n")
    proc = inventory("--list", config=config, run=tmp_path)
    assert proc.returncode != 0
    assert "hosts.chat1.address" in proc.stdout + proc.stderr


def test_graph_shows_the_talks_topology(tmp_path):
    proc = inventory("--graph", run=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for line in ("@chat:", "@cluster_main:", "@cluster_event:", "@cluster_testing:", "@redis:",
                 "@controlplane:", "@shard_shard0:", "@shard_shard3:"):
        assert line in out, out
    # chat-testing sits in its own cluster, beside main's chat1 and chat2.
    main = out.split("@cluster_main:")[1].split("@cluster_event:")[0]
    assert "chat1" in main and "chat2" in main and "chat-testing" not in main
    assert "chat-testing" in out.split("@cluster_testing:")[1].split("@redis:")[0]
