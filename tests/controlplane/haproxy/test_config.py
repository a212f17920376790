"""HAProxy configs rendered from the cluster file, checked by the real `haproxy -c`."""

import re

import pytest
import yaml

from cluster import binaries, clusterfile, spec
from cluster.rundir import RunDir, RunDirError
from controlplane.haproxy import config as haproxy_config
from tests.conftest import chatops, require, small_cluster


@pytest.fixture
def default_cf():
    return clusterfile.load().spec


def test_every_chat_host_gets_a_valid_config(default_cf, run_dir):
    require("haproxy")
    configs = haproxy_config.render_all(default_cf, RunDir(run_dir))
    assert set(configs) == {"chat1", "chat2", "chat-event1", "chat-testing"}
    for host, text in configs.items():
        result = haproxy_config.check(text)
        assert result.ok, f"{host}: {result.output}"


def test_config_shape(default_cf, run_dir):
    run = RunDir(run_dir)
    text = haproxy_config.render(default_cf, "chat-testing", run)
    # One tcp listener per shard on the host's own address at base + index, health-checked by PING.
    for i, shard in enumerate(default_cf.redis.shards):
        block = text.split(f"listen redis-{shard.name}\n", 1)[1].split("\n\n", 1)[0]
        assert f"bind 127.0.1.9:{2000 + i}\n" in block
        assert "tcp-check send PING\\r\\n" in block and "tcp-check expect string +PONG" in block
        addr = default_cf.address(shard.host)
        assert re.search(rf"server {shard.name} {re.escape(addr)}:{shard.port} check", block)
    assert "mode tcp" in text
    assert "source 127.0.1.9\n" in text
    # The testing cluster's frontend fronts only the testing cluster's edges.
    assert "frontend fe_edge_testing" in text and "server chat-testing 127.0.1.9:16667 check" in text
    assert "chat1" not in text.split("frontend fe_edge_testing", 1)[1].split("frontend stats")[0]
    # Master-worker with bounded old workers, an admin socket that hands listeners over on reload,
    # the stats page and the Prometheus exporter.
    assert "master-worker" in text
    assert "hard-stop-after 60s" in text and "mworker-max-reloads 25" in text
    assert f"stats socket {run.haproxy_socket('chat-testing')} mode 600 level admin expose-fd listeners" in text
    assert "stats uri /stats" in text
    assert "http-request use-service prometheus-exporter if { path /metrics }" in text
    assert "bind 127.0.1.9:8404" in text


def test_replica_is_a_backup_that_must_be_master(subnet, run_dir):
    cf = clusterfile.parse(yaml.safe_dump(small_cluster(subnet, replica=True)))
    text = haproxy_config.render(cf, "chat1", RunDir(run_dir))
    assert f"server shard0-replica {subnet}.22:6380 check backup" in text
    assert "tcp-check expect string role:master" in text


def test_chatops_proxy_render_check_on_default():
    require("haproxy")
    result = chatops("proxy", "render", "--check")
    assert result.returncode == 0, result.stderr
    for host in ("chat1", "chat2", "chat-event1", "chat-testing"):
        assert f"{host}: haproxy -c OK" in result.stdout


def test_chatops_proxy_render_prints_and_writes(tmp_path):
    result = chatops("proxy", "render", "--host", "chat2")
    assert result.returncode == 0 and "bind 127.0.1.2:2000" in result.stdout
    result = chatops("proxy", "render", "--output", str(tmp_path))
    assert result.returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat-event1.cfg", "chat-testing.cfg", "chat1.cfg", "chat2.cfg"]
    result = chatops("proxy", "render", "--host", "redis1")
    assert result.returncode == 2 and "not a chat host" in result.stderr


def test_haproxy_c_failure_is_reported():
    require("haproxy")
    result = haproxy_config.check("global\n    no-such-keyword 1\n")
    assert not result.ok
    assert "no-such-keyword" in result.output


@pytest.mark.parametrize("evil", [
    "shard0\n    server evil 127.0.0.1:22",
    "shard0 # comment",
    "shard0\rlisten x",
    "shard 0",
])
def test_template_refuses_injection_even_past_validation(default_cf, run_dir, evil):
    # model_construct skips validation: this is the template's own second line of defence.
    shards = list(default_cf.redis.shards)
    shards[0] = spec.Shard.model_construct(name=evil, host="redis1", port=6379, replica=None)
    redis = default_cf.redis.model_copy(update={"shards": shards})
    cf = default_cf.model_copy(update={"redis": redis})
    with pytest.raises(haproxy_config.RenderError):
        haproxy_config.render(cf, "chat1", RunDir(run_dir))


def test_render_refuses_a_run_dir_haproxy_cannot_take(default_cf, tmp_path):
    # A space is quoted (test_run_dir_paths.py); a '$' HAProxy would expand even inside quotes.
    with pytest.raises(RunDirError):
        haproxy_config.render(default_cf, "chat1", RunDir(tmp_path / "my $run"))


def test_a_missing_binary_names_the_install_command():
    with pytest.raises(binaries.MissingBinary, match=r"apt-get install -y no-such-tool-xyz"):
        binaries.require("no-such-tool-xyz")
    assert "apt-get install -y redis-tools" in str(binaries.MissingBinary("redis-cli"))


def _block(text: str, header: str) -> str:
    return text.split(header + "\n", 1)[1].split("\n\n", 1)[0]


def test_each_proxy_has_its_own_maxconn_and_the_public_frontends_a_per_source_limit(default_cf, run_dir):
    text = haproxy_config.render(default_cf, "chat1", RunDir(run_dir))
    assert "    maxconn 4000\n" in text.split("defaults", 1)[0]          # the process
    for header in ("frontend fe_edge_main", "frontend fe_edge_ws_main"):
        block = _block(text, header)
        assert "maxconn 1000" in block
        assert "stick-table type ip size 100k expire 60s store conn_cur" in block
        assert "tcp-request connection track-sc0 src" in block
        assert "tcp-request connection reject if { sc0_conn_cur gt 500 }" in block
    # The shard listeners: the whole process's maxconn and no per-source limit, so a leak from one
    # host still reaches Redis, where the control plane detects it.
    for shard in default_cf.redis.shards:
        block = _block(text, f"listen redis-{shard.name}")
        assert "maxconn 4000" in block and "stick-table" not in block and "sc0" not in block
    assert "maxconn 100" in _block(text, "frontend stats")


def test_limits_come_from_the_cluster_file_and_haproxy_accepts_them(subnet, run_dir):
    require("haproxy")
    doc = small_cluster(subnet)
    doc["haproxy"].update({"maxconn": 3000, "edge_maxconn": 700, "edge_maxconn_per_source": 3,
                           "listener_maxconn": 2500, "stats_maxconn": 20})
    cf = clusterfile.parse(yaml.safe_dump(doc))
    text = haproxy_config.render(cf, "chat1", RunDir(run_dir))
    assert _block(text, "frontend fe_edge_main").count("maxconn 700") == 1
    assert "reject if { sc0_conn_cur gt 3 }" in _block(text, "frontend fe_edge_ws_main")
    assert "maxconn 2500" in _block(text, "listen redis-shard1")
    assert "maxconn 20" in _block(text, "frontend stats")
    result = haproxy_config.check(text)
    assert result.ok, result.output


@pytest.mark.parametrize("haproxy, problem", [
    ({"edge_maxconn": 100, "edge_maxconn_per_source": 101}, "edge_maxconn_per_source (101) is over haproxy.edge_maxconn (100)"),
    ({"maxconn": 1000, "listener_maxconn": 1001}, "haproxy.listener_maxconn (1001) is over haproxy.maxconn (1000)"),
    ({"maxconn": 1000, "stats_maxconn": 1001}, "haproxy.stats_maxconn (1001) is over haproxy.maxconn (1000)"),
    # Two public frontends of 500 and the stats frontend leave clue no room for its 2 x 10 connections.
    ({"maxconn": 1000, "edge_maxconn": 500, "edge_maxconn_per_source": 10, "stats_maxconn": 1},
     "haproxy.maxconn (1000) must hold both public frontends (2 x edge_maxconn 500), the stats frontend "
     "(stats_maxconn 1) and clue's connections to every shard (2 shards x cache_max_conns 10 of cluster main): 1021"),
])
def test_render_refuses_limits_that_do_not_fit(subnet, run_dir, haproxy, problem):
    doc = small_cluster(subnet)
    doc["haproxy"].update(haproxy)
    cf = clusterfile.parse(yaml.safe_dump(doc))
    with pytest.raises(haproxy_config.RenderError) as err:
        haproxy_config.render(cf, "chat1", RunDir(run_dir))
    assert problem in str(err.value)
