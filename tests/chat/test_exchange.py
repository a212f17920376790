"""The exchange's keepalive switch, the talk's second bug: with keepalive off every delivery
request opens a new TCP connection to the edge; with it on, connections are reused."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest

from tests.conftest import chatops, cluster_up, run_secrets, small_cluster, wait_for, write_cluster


def _metric(url: str, name: str) -> float:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return sum(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith(name + " ") or ln.startswith(name + "{"))


def _talk(address: str, token: str, room: str, n: int) -> None:
    """Send n messages, each after the previous one's echo, so each travels in its own request."""
    with socket.create_connection((address, 6667), timeout=10) as s:
        s.sendall(f"CAP REQ :echo-message\r\nPASS {token}\r\nNICK pacer\r\nJOIN #{room}\r\n".encode())
        buf = b""

        def until(marker: bytes) -> None:
            nonlocal buf
            while marker not in buf:
                chunk = s.recv(65536)
                assert chunk, f"the edge closed the connection; it said: {buf[-500:]!r}"
                buf += chunk
        until(b" 366 ")
        for i in range(n):
            s.sendall(f"PRIVMSG #{room} :tick {i}\r\n".encode())
            until(f":tick {i}\r\n".encode())


@pytest.mark.parametrize("keepalive", [True, False])
def test_keepalive_switch(tmp_path, subnet, run_dir, keepalive):
    doc = small_cluster(subnet)
    doc["clusters"]["main"]["services"] = {"exchange": {"keepalive": keepalive}}
    config = write_cluster(tmp_path / "cluster.yaml", doc)
    with cluster_up(config, run_dir):
        added = chatops("users", "add", "pacer", "--bot", "--config", str(config), "--run-dir", str(run_dir))
        assert added.returncode == 0, added.stderr
        token = added.stdout.strip()
        url = f"http://{subnet}.1:19100/metrics"
        wait_for(lambda: _metric(url, "chat_exchange_edges") >= 1, what="the edge to subscribe")
        _talk(f"{subnet}.1", token, "lobby", 40)
        opened = _metric(url, "chat_exchange_connections_opened_total")
        requests = _metric(url, "chat_exchange_request_seconds_count")
        assert requests >= 40
        assert _metric(url, "chat_exchange_keepalive") == (1 if keepalive else 0)
        if keepalive:
            assert opened <= 2        # the pool, reused
        else:
            assert opened >= requests  # a new connection per request, as in 2014


def test_a_restarted_exchange_knows_every_edges_rooms_before_its_first_message(tmp_path, subnet, run_dir):
    """SIGKILLed, the exchange is restarted by the supervisor and asks the edges for their rooms
    before it listens: its very first answer already names #lobby at the edge. Before, it learned
    them only from the edges' next refresh (up to 5 s), delivering meanwhile to no edge at all."""
    import json
    import os
    import signal
    import time

    config = write_cluster(tmp_path / "cluster.yaml", small_cluster(subnet))
    with cluster_up(config, run_dir) as c:
        with socket.create_connection((f"{subnet}.1", 6667), timeout=10) as s:
            s.sendall(b"NICK justinfan4242\r\nJOIN #lobby\r\n")
            buf = b""
            while b" 366 " not in buf:
                chunk = s.recv(4096)
                assert chunk, buf
                buf += chunk
            token = run_secrets(run_dir)["CHATOPS_INTERNAL_TOKEN"]
            asked = urllib.request.Request(f"http://{subnet}.1:19100/v1/subscriptions",
                                           headers={"Authorization": f"Bearer {token}"})
            old = c.pid_of("exchange-chat1")
            os.kill(old, signal.SIGKILL)
            deadline = time.monotonic() + 20
            while True:
                assert time.monotonic() < deadline, "the exchange did not come back"
                try:
                    first = json.loads(urllib.request.urlopen(asked, timeout=1).read())
                    break
                except urllib.error.HTTPError:
                    raise
                except OSError:
                    time.sleep(0.01)
            assert c.pid_of("exchange-chat1") != old
            assert first.get("chat1", {}).get("rooms") == ["lobby"], first
