"""controlplane/remediation/server_state.py: names that could smuggle a second runtime command are
refused before anything is sent, then weight and state changes on a real `chatops up` cluster's
HAProxy, read back through the collector."""

from __future__ import annotations

import pytest

from collectors import haproxy
from collectors.haproxy_runtime import RuntimeAPIError, command
from controlplane.remediation import server_state
from tests.conftest import (
    wait_for,
)


@pytest.mark.parametrize("backend,server", [
    ("redis-shard0", "shard0 weight 0; shutdown sessions server x/y"),
    ("redis-shard0", "shard0\nshutdown frontend stats"),
    ("redis-shard0/shard0", "x"), ("redis-shard0", ""), ("be;x", "s"), ("b", "s s"),
])
def test_runtime_names_are_validated_before_anything_is_sent(tmp_path, backend, server):
    with pytest.raises(ValueError, match="refusing"):
        server_state.set_server_weight(tmp_path / "absent.sock", backend, server, 1)
    with pytest.raises(ValueError, match="refusing"):
        server_state.set_server_state(tmp_path / "absent.sock", backend, server, "drain")


def test_bad_weight_and_state_are_refused(tmp_path):
    with pytest.raises(ValueError):
        server_state.set_server_weight(tmp_path / "x.sock", "b", "s", 257)
    with pytest.raises(ValueError):
        server_state.set_server_weight(tmp_path / "x.sock", "b", "s", "1 ; show")
    with pytest.raises(ValueError):
        server_state.set_server_state(tmp_path / "x.sock", "b", "s", "up")


@pytest.fixture(scope="module")
def live(live_small_cluster):
    return live_small_cluster


def test_set_server_weight_and_state_live(live):
    _rc, _cf, run = live
    sock = run.haproxy_socket("chat1")
    try:
        server_state.set_server_weight(sock, "redis-shard0", "shard0", 7)
        assert haproxy.fetch_stat(sock).get("redis-shard0", "shard0").weight == 7
        state = haproxy.fetch_servers_state(sock)
        row = next(s for s in state.servers if s["srv_name"] == "shard0")
        assert row["srv_uweight"] == 7
        server_state.set_server_state(sock, "redis-shard0", "shard0", "drain")
        assert haproxy.fetch_stat(sock).get("redis-shard0", "shard0").status == "DRAIN"
        server_state.set_server_state(sock, "redis-shard0", "shard0", "maint")
        assert haproxy.fetch_stat(sock).get("redis-shard0", "shard0").status == "MAINT"
        server_state.set_server_state(sock, "redis-shard0", "shard0", "ready")
        wait_for(lambda: haproxy.fetch_stat(sock).get("redis-shard0", "shard0").status == "UP",
                 what="shard0 back UP")
        with pytest.raises(RuntimeAPIError, match="No such server"):
            server_state.set_server_weight(sock, "redis-shard0", "nosuch", 1)
        with pytest.raises(ValueError, match="refusing"):
            server_state.set_server_weight(sock, "redis-shard0", "shard0 weight 0;set server redis-shard1/shard1", 3)
        t = haproxy.fetch_stat(sock)
        assert t.get("redis-shard0", "shard0").weight == 7 and t.get("redis-shard1", "shard1").weight == 1
    finally:
        command(sock, "set server redis-shard0/shard0 weight 1")
        command(sock, "set server redis-shard0/shard0 state ready")
