"""`chatops proxy reload`: plan (render, haproxy -c, diff), then a hitless reload through the
master socket, audited. The acceptance test: 10 reloads in a row under a Redis client loop through
a shard listener cause 0 client errors."""

import os
import signal
import threading
import time

import pytest
import redis
import yaml
from redis.backoff import NoBackoff
from redis.retry import Retry

from cluster import clusterfile
from cluster.rundir import RunDir
from collectors import haproxy_runtime
from controlplane import audit
from controlplane.haproxy import config as haproxy_config
from controlplane.local.processes import haproxy_ready
from controlplane.remediation import proxy_reload
from tests.conftest import chatops, cluster_up, redis_auth, small_cluster, wait_for, write_cluster


@pytest.fixture
def config(tmp_path, subnet):
    return write_cluster(tmp_path / "cluster.yaml", small_cluster(subnet))


class ClientLoop(threading.Thread):
    """SET/GET through a shard listener until stopped, counting every failure."""

    def __init__(self, address: str, port: int, reconnect_each_time: bool):
        super().__init__(daemon=True)
        self.address, self.port, self.reconnect = address, port, reconnect_each_time
        self.ops = 0
        self.errors: list[str] = []
        self.stop = threading.Event()

    def client(self):
        # No retries: a dropped or refused connection must show up as an error.
        return redis.Redis(**redis_auth(user="clue"), host=self.address, port=self.port, socket_timeout=3,
                           socket_connect_timeout=3, retry=Retry(NoBackoff(), 0))

    def run(self):
        r = self.client()
        i = 0
        while not self.stop.is_set():
            try:
                if self.reconnect:
                    r.close()
                    r = self.client()
                key = f"{{reload-test}}:{self.reconnect}:{i % 50}"
                r.set(key, i)
                if int(r.get(key)) != i:
                    self.errors.append(f"wrong value for {key}")
                self.ops += 1
            except Exception as exc:  # every failure counts, whatever its type
                self.errors.append(repr(exc))
            i += 1
        r.close()


def _wait_listener(address, port):
    def ok():
        try:
            return redis.Redis(**redis_auth(), host=address, port=port, socket_timeout=1).ping()
        except redis.RedisError:
            return False
    wait_for(ok, what="the shard listener to pass its health check")


def test_ten_reloads_under_load_cause_zero_client_errors(config, run_dir, subnet):
    address = f"{subnet}.1"
    with cluster_up(config, run_dir):
        _wait_listener(address, 2000)
        loops = [ClientLoop(address, 2000, reconnect_each_time=False),
                 ClientLoop(address, 2000, reconnect_each_time=True)]
        for loop in loops:
            loop.start()
        wait_for(lambda: all(loop.ops > 20 for loop in loops), what="the client loops to run")
        before = [loop.ops for loop in loops]
        for n in range(10):
            result = chatops("proxy", "reload", "--config", str(config), "--run-dir", str(run_dir),
                             "--host", "chat1", "--yes")
            assert result.returncode == 0, result.stdout + result.stderr
            assert "chat1: OK: reloaded" in result.stdout
            time.sleep(0.2)
        time.sleep(0.5)
        for loop in loops:
            loop.stop.set()
            loop.join(timeout=10)
        for loop, start in zip(loops, before):
            assert loop.ops - start > 50, "the client loop did not keep running through the reloads"
            assert loop.errors == [], loop.errors[:5]

        records = [r for r in audit.read(RunDir(run_dir)) if r["action"] == "proxy.reload"]
        assert len(records) == 10 and all(r["result"] == "ok" and r["target"] == "chat1" for r in records)
        assert len({r["new_worker"] for r in records}) == 10
        table = haproxy_runtime.parse_show_proc(
            haproxy_runtime.command(RunDir(run_dir).haproxy_master_socket("chat1"), "show proc"))
        assert table.master.reloads == 10 and table.master.failed_reloads == 0


def test_changed_config_is_diffed_then_applied(config, run_dir, subnet):
    run = RunDir(run_dir)
    with cluster_up(config, run_dir) as c:
        doc = yaml.safe_load(config.read_text())
        doc["haproxy"]["maxconn"] = 3000
        write_cluster(config, doc)

        dry = chatops("proxy", "reload", "--config", str(config), "--run-dir", str(run_dir), "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "-    maxconn 4000" in dry.stdout and "+    maxconn 3000" in dry.stdout
        assert "chat1: config changed" in dry.stdout and "chat-testing: config changed" in dry.stdout
        assert "maxconn 4000" in RunDir(run_dir).haproxy_config("chat1").read_text()  # nothing applied

        refused = chatops("proxy", "reload", "--config", str(config), "--run-dir", str(run_dir))
        assert refused.returncode == 2 and "--yes" in refused.stderr

        applied = chatops("proxy", "reload", "--config", str(config), "--run-dir", str(run_dir), "--yes")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        info = haproxy_runtime.command(RunDir(run_dir).haproxy_socket("chat-testing"), "show info")
        assert "Maxconn: 3000" in info
        again = chatops("proxy", "reload", "--config", str(config), "--run-dir", str(run_dir), "--dry-run")
        assert "no config change" in again.stdout

        # A master that dies later comes back with the reloaded config, not the start-up one.
        old = c.pid_of("haproxy-chat-testing")
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: c.pid_of("haproxy-chat-testing") != old and haproxy_ready(run, "chat-testing"),
                 what="haproxy restart")
        info = haproxy_runtime.command(run.haproxy_socket("chat-testing"), "show info")
        assert "Maxconn: 3000" in info


def test_stale_plan_and_invalid_config_are_refused(config, run_dir):
    run = RunDir(run_dir)
    with cluster_up(config, run_dir):
        cf = clusterfile.load(config).spec
        p = proxy_reload.plan_reload(cf, run, ["chat1"])
        path = run.haproxy_config("chat1")
        path.write_text(path.read_text() + "\n# edited by hand\n")
        [result] = proxy_reload.apply_reload(p, run, "tester")
        assert not result.ok and "changed since the plan" in result.detail

        running = path.read_text()
        bad = "global\n    no-such-keyword\n"
        bad_plan = proxy_reload.ReloadPlan([proxy_reload.HostPlan("chat1", running, bad, haproxy_config.check(bad))])
        assert not bad_plan.ok
        [result] = proxy_reload.apply_reload(bad_plan, run, "tester")
        assert not result.ok and "rejected" in result.detail
        assert path.read_text() == running  # the bad config never reached the running host

        failed = [r for r in audit.read(run) if r["result"] == "failed"]
        assert len(failed) == 2 and all(r["actor"] == "tester" for r in failed)


def test_apply_is_idempotent(config, run_dir):
    run = RunDir(run_dir)
    with cluster_up(config, run_dir):
        doc = yaml.safe_load(config.read_text())
        doc["haproxy"]["maxconn"] = 2500
        write_cluster(config, doc)
        p = proxy_reload.plan_reload(clusterfile.load(config).spec, run, ["chat1"])
        assert p.hosts[0].changed
        first = proxy_reload.apply_reload(p, run, "tester")
        second = proxy_reload.apply_reload(p, run, "tester")
        assert [r.ok for r in first + second] == [True, True], [r.detail for r in first + second]
        assert run.haproxy_config("chat1").read_text() == p.hosts[0].rendered
        info = haproxy_runtime.command(run.haproxy_socket("chat1"), "show info")
        assert "Maxconn: 2500" in info


def test_unknown_host_and_no_cluster(config, run_dir):
    result = chatops("proxy", "reload", "--config", str(config), "--run-dir", str(run_dir), "--host", "redis1", "--yes")
    assert result.returncode == 2 and "not a chat host: redis1" in result.stderr
    result = chatops("proxy", "reload", "--config", str(config), "--run-dir", str(run_dir), "--yes")
    assert result.returncode == 1 and "master is not reachable" in result.stdout
