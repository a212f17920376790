"""The chat cluster end to end, through HAProxy, with real clients: the `irc` package over TCP and
the `websockets` library over WebSocket, against real edges, clue, exchange, Redis and HAProxy."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import websockets

from tests.chat.ircclient import IrcClient, tags
from tests.conftest import chatops, cluster_up, free_subnet, write_cluster

TAGS = ("twitch.tv/tags", "twitch.tv/commands")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two chat hosts in `main` (so two edges), one in `testing`; two shards."""
    subnet = free_subnet()
    doc = {
        "hosts": {"chat1": {"address": f"{subnet}.1"}, "chat2": {"address": f"{subnet}.2"},
                  "chat-testing": {"address": f"{subnet}.9"},
                  "redis1": {"address": f"{subnet}.21"}, "redis2": {"address": f"{subnet}.22"}},
        "clusters": {
            "main": {"hosts": ["chat1", "chat2"], "rooms": ["lobby", "flood", "slow"],
                     "services": {"edge": {"max_output_buffer": 65536}}},
            "testing": {"hosts": ["chat-testing"], "rooms": ["testroom"]},
        },
        "redis": {"shards": [{"name": "shard0", "host": "redis1", "port": 6379},
                             {"name": "shard1", "host": "redis2", "port": 6379}]},
        "haproxy": {"check_interval": "500ms"},
        "controlplane": {"listen": {"address": f"{subnet}.100"}},
    }
    config = write_cluster(tmp_path_factory.mktemp("edge") / "cluster.yaml", doc)
    run = Path(tempfile.mkdtemp(prefix="co-", dir="/tmp"))
    with cluster_up(config, run) as c:
        c.subnet = subnet
        yield c


def add_user(c, name: str, *args: str) -> str:
    result = chatops("users", "add", name, "--config", str(c.config), "--run-dir", str(c.run), *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


class Client(IrcClient):
    def __init__(self, address: str, port: int, nick: str, password: str | None = None, caps=TAGS):
        super().__init__(address, port, nick, password=password, caps=caps)


def test_two_clients_on_different_edges_see_each_other_with_tags(cluster):
    c = cluster
    alice_token = add_user(c, "alice", "--broadcaster", "lobby", "--color", "#0D4200")
    bob_token = add_user(c, "bob")
    alice = Client(f"{c.subnet}.1", 6667, "alice", alice_token)
    bob = Client(f"{c.subnet}.1", 6667, "bob", bob_token)
    try:
        hosts = {alice.wait("yourhost").arguments[0], bob.wait("yourhost").arguments[0]}
        assert hosts == {"Your host is tmi.chatops.local (edge chat1)", "Your host is tmi.chatops.local (edge chat2)"}
        alice.join("#lobby")
        bob.join("#lobby")
        alice.conn.privmsg("#lobby", "hello from alice")
        got = bob.wait("pubmsg", lambda ev: ev.arguments == ["hello from alice"])
        t = tags(got)
        assert got.source.nick == "alice" and got.target == "#lobby"
        assert t["display-name"] == "alice" and t["color"] == "#0D4200" and t["badges"] == "broadcaster/1"
        assert t["mod"] == "0" and t["room-id"] and t["user-id"] and t["id"]
        assert abs(int(t["tmi-sent-ts"]) / 1000 - time.time()) < 30
        bob.conn.privmsg("#lobby", "hi alice")
        got = alice.wait("pubmsg", lambda ev: ev.arguments == ["hi alice"])
        assert tags(got)["display-name"] == "bob" and tags(got)["badges"] == ""
        # Without echo-message, a sender does not get its own line back.
        alice.pump(0.3)
        assert not [e for e in alice.of_type("pubmsg") if e.arguments == ["hello from alice"]]
    finally:
        alice.close()
        bob.close()


def test_ban_timeout_unban(cluster):
    c = cluster
    mod = Client(f"{c.subnet}.2", 6667, "modmarie", add_user(c, "modmarie", "--mod", "lobby"))
    troll = Client(f"{c.subnet}.1", 6667, "troll", add_user(c, "troll"))
    try:
        mod.join("#lobby")
        troll.join("#lobby")
        mod.conn.privmsg("#lobby", ".ban troll spamming")
        assert tags(mod.wait("pubnotice", lambda ev: "banned" in ev.arguments[0]))["msg-id"] == "ban_success"
        clear = troll.wait("clearchat")
        assert clear.arguments == ["troll"] and tags(clear)["target-user-id"]
        troll.conn.privmsg("#lobby", "can I talk?")
        refused = troll.wait("pubnotice")
        assert tags(refused)["msg-id"] == "msg_banned"
        mod.pump(0.3)
        assert not [e for e in mod.of_type("pubmsg") if e.arguments == ["can I talk?"]]

        mod.conn.privmsg("#lobby", ".timeout troll 120")
        assert tags(mod.wait("pubnotice", lambda ev: "timed out" in ev.arguments[0]))["msg-id"] == "timeout_success"
        assert tags(troll.wait("clearchat"))["ban-duration"] == "120"
        troll.conn.privmsg("#lobby", "now?")
        assert tags(troll.wait("pubnotice"))["msg-id"] == "msg_timedout"

        mod.conn.privmsg("#lobby", ".unban troll")
        assert tags(mod.wait("pubnotice", lambda ev: "no longer" in ev.arguments[0]))["msg-id"] == "unban_success"
        troll.conn.privmsg("#lobby", "thanks")
        mod.wait("pubmsg", lambda ev: ev.arguments == ["thanks"])

        troll.conn.privmsg("#lobby", ".ban modmarie")
        assert tags(troll.wait("pubnotice"))["msg-id"] == "no_permission"
    finally:
        mod.close()
        troll.close()


def test_rate_limit(cluster):
    c = cluster
    chatty = Client(f"{c.subnet}.1", 6667, "chatty", add_user(c, "chatty"))
    reader = Client(f"{c.subnet}.2", 6667, "justinfan4242", None)
    try:
        chatty.join("#lobby")
        reader.join("#lobby")
        for i in range(25):
            chatty.conn.privmsg("#lobby", f"message {i}")
        notice = chatty.wait("pubnotice", lambda ev: tags(ev).get("msg-id") == "msg_ratelimit")
        assert "too quickly" in notice.arguments[0]
        reader.pump(1.0)
        received = [e for e in reader.of_type("pubmsg") if e.arguments[0].startswith("message ")]
        assert 1 <= len(received) <= 20
    finally:
        chatty.close()
        reader.close()


def test_anonymous_users_read_only_and_rooms_live_on_their_cluster(cluster):
    c = cluster
    anon = Client(f"{c.subnet}.1", 6667, "justinfan7", None)
    try:
        anon.join("#lobby")
        anon.conn.privmsg("#lobby", "hello?")
        assert tags(anon.wait("pubnotice"))["msg-id"] == "msg_anonymous"
        anon.conn.join("#testroom")
        refused = anon.wait("nosuchchannel")
        assert "served by cluster testing" in refused.arguments[1] and f"{c.subnet}.9:6667" in refused.arguments[1]
        anon.conn.privmsg("somebody", "psst")
        anon.wait("nosuchnick")
    finally:
        anon.close()
    # The testing cluster's own frontend serves it.
    tester = Client(f"{c.subnet}.9", 6667, "justinfan8", None)
    try:
        tester.join("#testroom")
    finally:
        tester.close()


def test_bad_password_is_refused(cluster):
    with socket.create_connection((f"{cluster.subnet}.1", 6667), timeout=5) as s:
        s.sendall(b"PASS oauth:not-a-real-token\r\nNICK mallory\r\n")
        data = _read_until(s, b" 464 ")
        assert b"Login authentication failed" in data


def _read_until(s: socket.socket, marker: bytes, timeout: float = 5.0) -> bytes:
    s.settimeout(timeout)
    data = b""
    while marker not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_oversized_line_gets_417_and_the_connection_survives(cluster):
    c = cluster
    user = Client(f"{c.subnet}.1", 6667, "longwinded", add_user(c, "longwinded"))
    reader = Client(f"{c.subnet}.1", 6667, "justinfan55", None)
    try:
        user.join("#lobby")
        reader.join("#lobby")
        user.conn.socket.send(b"PRIVMSG #lobby :" + b"x" * 600 + b"\r\n")
        user.wait("417")
        user.conn.privmsg("#lobby", "still here")
        reader.wait("pubmsg", lambda ev: ev.arguments == ["still here"])
    finally:
        user.close()
        reader.close()


def test_garbage_and_invalid_utf8_do_not_crash_the_edge(cluster):
    c = cluster
    before = {p["name"]: p["pid"] for p in c.state["processes"]}
    rng = random.Random(7)
    payloads = [bytes(rng.getrandbits(8) for _ in range(4096)), b"\xff\xfe\xfd\r\n" * 50,
                b"\x00" * 1000 + b"\r\n", b"PRIVMSG #lobby :\xc3\x28\r\n", b"@" + b"a=" * 10000 + b"\r\n",
                b"NICK justinfan1\r\nJOIN #lobby\r\nPRIVMSG #lobby :\xed\xa0\x80\r\n", b"A" * 100_000]
    for host in (1, 2):
        for payload in payloads:
            with socket.create_connection((f"{c.subnet}.{host}", 6667), timeout=5) as s:
                s.sendall(payload)
                s.settimeout(0.3)
                try:
                    s.recv(65536)
                except OSError:
                    pass
    anon = Client(f"{c.subnet}.1", 6667, "justinfan77", None)
    anon.join("#lobby")
    anon.close()
    after = {p["name"]: p["pid"] for p in c.state["processes"]}
    assert after == before  # nothing crashed and was restarted
    text = urllib.request.urlopen(f"http://{c.subnet}.1:17080/metrics", timeout=5).read().decode()
    assert 'chat_edge_protocol_errors_total{kind="bad_utf8"}' in text


def test_websocket_client(cluster):
    c = cluster
    token = add_user(c, "wsuser")
    reader = Client(f"{c.subnet}.2", 6667, "justinfan91", None)
    reader.join("#lobby")

    async def session() -> list[str]:
        lines: list[str] = []
        async with websockets.connect(f"ws://{c.subnet}.1:8080/", subprotocols=["text.ircv3.net"]) as ws:
            assert ws.subprotocol == "text.ircv3.net"
            # Several CRLF-separated lines in one frame are accepted.
            await ws.send(f"CAP REQ :twitch.tv/tags twitch.tv/commands echo-message\r\nPASS {token}\r\nNICK wsuser\r\n")
            await ws.send("JOIN #lobby")
            while not any(" 366 " in ln for ln in lines):
                lines.append(await asyncio.wait_for(ws.recv(), 10))
            await ws.send("@client-nonce=abc123 PRIVMSG #lobby :over websocket")
            while not any("PRIVMSG #lobby :over websocket" in ln for ln in lines):
                lines.append(await asyncio.wait_for(ws.recv(), 10))
            await ws.send("PRIVMSG #lobby :" + "y" * 600)
            while not any(" 417 " in ln for ln in lines):
                lines.append(await asyncio.wait_for(ws.recv(), 10))
        return lines

    try:
        lines = asyncio.run(session())
        assert all("\r" not in ln and "\n" not in ln for ln in lines)  # one line per frame
        echo = next(ln for ln in lines if "PRIVMSG #lobby :over websocket" in ln)
        assert "client-nonce=abc123" in echo and ";id=" in echo
        got = reader.wait("pubmsg", lambda ev: ev.arguments == ["over websocket"])
        assert tags(got)["display-name"] == "wsuser"
    finally:
        reader.close()


def test_slow_consumer_is_dropped_and_others_keep_full_delivery(cluster):
    c = cluster
    token = add_user(c, "floodbot", "--bot")
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect((f"{c.subnet}.1", 16667))  # straight to edge chat1, so we know which edge drops it
    slow.sendall(b"CAP REQ :twitch.tv/tags\r\nNICK justinfan31337\r\nJOIN #flood\r\n")
    _read_until(slow, b" 366 ")
    readers = [Client(f"{c.subnet}.{h}", 6667, f"justinfan{3000 + h}", None) for h in (1, 2)]
    sender = Client(f"{c.subnet}.2", 6667, "floodbot", token, caps=())
    try:
        for r in readers:
            r.join("#flood")
        sender.join("#flood")
        n = 1500
        text = "z" * 350
        for i in range(n):
            sender.conn.privmsg("#flood", f"{i} {text}")
            if i % 100 == 0:
                for r in readers:
                    r.pump(0.01)
        for r in readers:
            deadline = time.monotonic() + 20
            while len([e for e in r.of_type("pubmsg")]) < n and time.monotonic() < deadline:
                r.pump(0.1)
            got = [int(e.arguments[0].split()[0]) for e in r.of_type("pubmsg")]
            assert sorted(got) == list(range(n)), f"reader got {len(got)} of {n}"
        log = (c.run / "logs" / "edge-chat1.log").read_text()
        assert "[client] Slow consumer disconnected" in log and "nick=justinfan31337" in log
        metrics = urllib.request.urlopen(f"http://{c.subnet}.1:17080/metrics", timeout=5).read().decode()
        assert "chat_edge_slow_consumer_disconnects_total 1.0" in metrics
    finally:
        slow.close()
        sender.close()
        for r in readers:
            r.close()


def test_redis_unreachable_fails_closed(cluster):
    """With the shard holding a room's keys stopped, messages there are refused, never sent
    unchecked, and clue says why in the talk's words."""
    from chat.sharding import SlotMap
    c = cluster
    shard = SlotMap.even(2).shard_of("{slow}.bans")
    talker = Client(f"{c.subnet}.1", 6667, "talker", add_user(c, "talker"))
    talker.join("#slow")
    pid = c.pid_of(f"redis-shard{shard}")
    os.kill(pid, signal.SIGSTOP)
    try:
        talker.conn.privmsg("#slow", "is anyone there")
        refused = talker.wait("pubnotice", timeout=15)
        assert tags(refused)["msg-id"] == "msg_unavailable"
        clue_log = "".join((c.run / "logs" / f"clue-{h}.log").read_text() for h in ("chat1", "chat2"))
        assert "chat_clue: [redis]" in clue_log
    finally:
        os.kill(pid, signal.SIGCONT)
        talker.close()


def test_users_add_refuses_bad_input(cluster):
    c = cluster
    result = chatops("users", "add", "Bad Name!", "--config", str(c.config), "--run-dir", str(c.run))
    assert result.returncode == 2 and "not a valid login" in result.stderr
    result = chatops("users", "add", "okname", "--color", "red", "--config", str(c.config), "--run-dir", str(c.run))
    assert result.returncode == 2 and "not a colour" in result.stderr


def _exported_names(url: str) -> set[str]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name + "_total" if kind == "counter" and not name.endswith("_total") else name)
    return names


def test_metrics_catalogue_matches_the_services(cluster):
    import re
    from pathlib import Path
    c = cluster
    doc = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    documented = set(re.findall(r"^\| `((?:chat|process)_[a-z_]+)` \|", doc, re.M))
    exported = set()
    for port in (17080, 19000, 19100):
        exported |= _exported_names(f"http://{c.subnet}.1:{port}/metrics")
    assert exported - documented == set(), "exported but not in docs/metrics.md"
    assert documented - exported == set(), "in docs/metrics.md but not exported"


def test_websocket_client_is_banned_and_rate_limited_like_tcp(cluster):
    c = cluster
    mod = Client(f"{c.subnet}.1", 6667, "wsmod", add_user(c, "wsmod", "--mod", "lobby"))
    banned_token, chatty_token = add_user(c, "wsbanned"), add_user(c, "wschatty")
    mod.join("#lobby")
    mod.conn.privmsg("#lobby", ".ban wsbanned")
    mod.wait("pubnotice", lambda ev: tags(ev).get("msg-id") == "ban_success")

    async def session(nick: str, token: str, messages: int) -> list[str]:
        lines: list[str] = []
        async with websockets.connect(f"ws://{c.subnet}.2:8080/", subprotocols=["text.ircv3.net"]) as ws:
            await ws.send(f"CAP REQ :twitch.tv/tags twitch.tv/commands\r\nPASS {token}\r\nNICK {nick}\r\nJOIN #lobby")
            while not any(" 366 " in ln for ln in lines):
                lines.append(await asyncio.wait_for(ws.recv(), 10))
            for i in range(messages):
                await ws.send(f"PRIVMSG #lobby :ws {i}")
            while not any("NOTICE #lobby" in ln for ln in lines):
                lines.append(await asyncio.wait_for(ws.recv(), 10))
        return lines

    try:
        banned = asyncio.run(session("wsbanned", banned_token, 1))
        assert any(ln.startswith("@msg-id=msg_banned ") for ln in banned)
        chatty = asyncio.run(session("wschatty", chatty_token, 25))
        assert any(ln.startswith("@msg-id=msg_ratelimit ") for ln in chatty)
    finally:
        mod.close()
