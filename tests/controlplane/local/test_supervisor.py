"""The local supervisor, driven through the real `chatops` command against real redis-server and
haproxy processes on a private loopback subnet."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import redis

from tests.conftest import (
    REPO,
    chatops,
    cluster_up,
    descendants,
    leftovers,
    read_state,
    redis_auth,
    require,
    small_cluster,
    wait_for,
    write_cluster,
)


@pytest.fixture
def config(tmp_path, subnet):
    return write_cluster(tmp_path / "cluster.yaml", small_cluster(subnet, replica=True))


def client_info(address: str, port: int) -> dict:
    r = redis.Redis(**redis_auth(), host=address, port=port, socket_timeout=2)
    try:
        return r.client_info()
    finally:
        r.close()


def test_each_listener_reaches_its_shard_from_its_own_host(config, run_dir, subnet):
    with cluster_up(config, run_dir) as c:
        # The table and hints are printed just after the state file says ready.
        out = wait_for(lambda: "Ctrl-C stops everything" in c.output() and c.output(), what="the hints")
        assert "redis-cli -h" in out
        shards = {0: f"{subnet}.21:6379", 1: f"{subnet}.22:6379"}
        for host_addr in (f"{subnet}.1", f"{subnet}.9"):
            for index, shard_addr in shards.items():
                # HAProxy's health check must see the shard up before it forwards.
                info = wait_for(lambda: _try_client_info(host_addr, 2000 + index), what="listener")
                assert info["laddr"] == shard_addr          # the right shard answered
                assert info["addr"].startswith(host_addr + ":")  # and saw the chat host as itself
        # The stats page (CSV) and the Prometheus exporter answer on each chat host's address.
        with urllib.request.urlopen(f"http://{subnet}.9:8404/stats;csv", timeout=5) as resp:
            csv_text = resp.read().decode()
        assert csv_text.startswith("# pxname,svname,")
        assert "redis-shard0,shard0," in csv_text and "fe_edge_testing,FRONTEND," in csv_text
        def exporter_sees_shard1_up():
            with urllib.request.urlopen(f"http://{subnet}.9:8404/metrics", timeout=5) as resp:
                return 'haproxy_backend_active_servers{proxy="redis-shard1"} 1' in resp.read().decode()
        wait_for(exporter_sees_shard1_up, what="the Prometheus exporter to report shard1's server")
        # The replica follows its primary.
        r = redis.Redis(**redis_auth(), host=f"{subnet}.22", port=6380, socket_timeout=2)
        assert wait_for(lambda: r.info("replication")["master_link_status"] == "up", what="replication")
        r.close()


def _try_client_info(address, port):
    try:
        return client_info(address, port)
    except redis.RedisError:
        return None


def test_status_table(config, run_dir, subnet):
    with cluster_up(config, run_dir) as c:
        result = chatops("status", "--run-dir", str(run_dir))
        assert result.returncode == 0, result.stdout + result.stderr
        lines = result.stdout.splitlines()
        assert lines[1].split() == ["HOST", "ADDRESS", "PORT", "PROCESS", "PID", "STATUS", "UPTIME", "RESTARTS"]
        rows = {ln.split()[3]: ln.split() for ln in lines[2:]}
        assert set(rows) == {"redis-shard0", "redis-shard0-replica", "redis-shard1",
                             "haproxy-chat1", "haproxy-chat-testing"} | {
                                 f"{svc}-{h}" for svc in ("exchange", "clue", "edge") for h in ("chat1", "chat-testing")}
        assert rows["redis-shard0"][:3] == ["redis1", f"{subnet}.21", "6379"]
        assert rows["haproxy-chat-testing"][:2] == ["chat-testing", f"{subnet}.9"]
        assert all(r[5] == "up" for r in rows.values())
        assert int(rows["redis-shard1"][4]) == c.pid_of("redis-shard1")

        js = chatops("status", "--run-dir", str(run_dir), "--json")
        assert json.loads(js.stdout)["running"] is True


def test_dead_process_is_restarted_and_logged(config, run_dir, subnet):
    with cluster_up(config, run_dir) as c:
        old = c.pid_of("redis-shard1")
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: c.pid_of("redis-shard1") != old and
                 next(p for p in c.state["processes"] if p["name"] == "redis-shard1")["status"] == "up",
                 what="restart")
        out = c.output()
        assert "[redis-shard1] killed by SIGKILL" in out and "restarting in" in out
        assert "[redis-shard1] restarted" in out
        assert redis.Redis(**redis_auth(), host=f"{subnet}.22", port=6379).ping()
        # An HAProxy master that dies comes back too, with its config re-rendered.
        old = c.pid_of("haproxy-chat1")
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: c.pid_of("haproxy-chat1") != old and
                 next(p for p in c.state["processes"] if p["name"] == "haproxy-chat1")["status"] == "up",
                 what="haproxy restart")
        assert wait_for(lambda: _try_client_info(f"{subnet}.1", 2000), what="listener after restart")


def test_repeated_crashes_back_off(config, run_dir):
    with cluster_up(config, run_dir) as c:
        times = []
        for _ in range(3):
            old = c.pid_of("redis-shard0")
            os.kill(old, signal.SIGKILL)
            wait_for(lambda: c.pid_of("redis-shard0") != old, what="restart")
            times.append(time.monotonic())
        out = c.output()
        # Quick successive deaths wait 0.5s, then 1s, then 2s.
        assert "restarting in 0.5s" in out and "restarting in 1.0s" in out and "restarting in 2.0s" in out
        assert times[2] - times[1] >= 1.5


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stop_signal_leaves_no_process_behind(config, run_dir, sig):
    with cluster_up(config, run_dir) as c:
        pids = {p["pid"] for p in c.state["processes"]}
        all_below = pids | {d for p in pids for d in descendants(p)}
        assert len(all_below) > len(pids)  # haproxy workers are there too
        c.proc.send_signal(sig)
        assert c.proc.wait(timeout=20) == 0
        assert "stopping" in c.output()
        assert not leftovers(run_dir, config)
        assert not any(_alive(p) for p in all_below)
        assert read_state(run_dir) is None


def test_killed_supervisor_takes_its_children_down(config, run_dir):
    with cluster_up(config, run_dir) as c:
        pids = {p["pid"] for p in c.state["processes"]}
        c.proc.kill()  # SIGKILL: no chance to clean up; PR_SET_PDEATHSIG must do it
        c.proc.wait()
        wait_for(lambda: not leftovers(run_dir, config), timeout=15, what="children to exit")
        assert not any(_alive(p) for p in pids)


def test_detach_status_down(config, run_dir):
    require("redis-server")
    require("haproxy")
    try:
        result = chatops("up", "--detach", "--config", str(config), "--run-dir", str(run_dir))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "chatops down" in result.stdout
        assert chatops("status", "--run-dir", str(run_dir)).returncode == 0
        again = chatops("up", "--detach", "--config", str(config), "--run-dir", str(run_dir))
        assert again.returncode == 1 and "already running" in again.stderr
        fg = chatops("up", "--config", str(config), "--run-dir", str(run_dir))
        assert fg.returncode == 1 and "already running" in fg.stderr
        result = chatops("down", "--run-dir", str(run_dir))
        assert result.returncode == 0 and "stopped" in result.stdout
        assert not leftovers(run_dir, config)
        status = chatops("status", "--run-dir", str(run_dir))
        assert status.returncode == 3 and "no cluster is running" in status.stdout
        assert "no cluster is running" in chatops("down", "--run-dir", str(run_dir)).stdout
    finally:
        chatops("down", "--run-dir", str(run_dir))


def test_start_failure_is_explained_and_cleans_up(config, run_dir, subnet):
    require("redis-server")
    blocker = socket.socket()
    blocker.bind((f"{subnet}.22", 6379))  # shard1's port, taken before the cluster starts
    blocker.listen()
    try:
        proc = subprocess.run([sys.executable, "-m", "controlplane.cli", "up", "--config", str(config),
                               "--run-dir", str(run_dir), "--start-timeout", "5"],
                              capture_output=True, text=True, timeout=60, cwd=REPO)
    finally:
        blocker.close()
    assert proc.returncode == 1
    assert "start failed: redis-shard1" in proc.stdout
    assert "Address already in use" in proc.stdout  # the tail of redis's own log says why
    assert not leftovers(run_dir, config)


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except OSError:
        return False


def test_up_with_traffic_runs_a_supervised_load_generator(config, run_dir, subnet):
    require("redis-server")
    require("haproxy")
    try:
        result = chatops("up", "--detach", "--traffic", "--config", str(config), "--run-dir", str(run_dir))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "loadgen" in result.stdout

        def edge_counts_messages():
            text = urllib.request.urlopen(f"http://{subnet}.1:17080/metrics", timeout=5).read().decode()
            line = next(ln for ln in text.splitlines() if ln.startswith("chat_edge_deliveries_total"))
            return float(line.split()[-1]) > 0
        wait_for(edge_counts_messages, timeout=30, what="traffic to reach the edge")
        status = chatops("status", "--run-dir", str(run_dir))
        row = next(ln for ln in status.stdout.splitlines() if " loadgen " in ln)
        assert row.split()[:2] == ["viewers", "127.0.3.1"] and " up " in row
        assert row.split()[7] == "0"  # it joined a serving cluster: no failed first start
    finally:
        chatops("down", "--run-dir", str(run_dir))
    assert not leftovers(run_dir, config)
