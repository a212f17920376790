"""Live Redis for the collector tests: real redis-server processes on a private loopback subnet."""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cluster import clusterfile
from collectors.resp import Conn, RedisError
from tests.conftest import require, small_cluster, write_cluster


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def start_redis(addr: str, port: int, workdir: Path, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [require("redis-server"), "--bind", addr, "--port", str(port), "--protected-mode", "no", "--save", "",
         "--appendonly", "no", "--dir", str(workdir), "--maxclients", "5000", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            with Conn(addr, port) as c:
                if c.call("PING") == "PONG":
                    return proc
        except (OSError, RedisError):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"redis-server on {addr}:{port} did not start")
            time.sleep(0.05)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# The collectors log in as the control plane's ACL user. These bare shards are the collectors'
# test bench, not the cluster's (whose users tests/cluster/test_redis_acl.py checks): their
# `chatops` user may do anything, and only its hash is on the command line.
ADMIN_PASSWORD = "collectors-test-admin-password"
ADMIN_USER = ["--user", "chatops", "on", "#" + hashlib.sha256(ADMIN_PASSWORD.encode()).hexdigest(),
              "~*", "&*", "+@all"]


@pytest.fixture
def shards(subnet, run_dir, monkeypatch):
    """Two standalone shards (redis1, redis2 of `small_cluster`), LFU on shard0, always stopped."""
    cfg = write_cluster(run_dir / "cluster.yaml", small_cluster(subnet))
    monkeypatch.setenv("CHATOPS_REDIS_CONTROLPLANE_PASSWORD", ADMIN_PASSWORD)   # chatops inspect's too
    procs = []
    try:
        procs.append(start_redis(f"{subnet}.21", 6379, run_dir, "--maxmemory-policy", "allkeys-lfu",
                                  "--enable-debug-command", "yes", *ADMIN_USER))
        procs.append(start_redis(f"{subnet}.22", 6379, run_dir, "--maxmemory-policy", "noeviction",
                                  *ADMIN_USER))
        yield cfg, clusterfile.load(cfg).spec, procs
    finally:
        for p in procs:
            stop(p)


