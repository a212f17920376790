"""A real client library (jaraco's `irc` package, with `twitch.tv/tags twitch.tv/commands`) through
HAProxy: when its edge drains (SIGTERM, as a rolling restart stops it) it gets Twitch's RECONNECT,
follows it to the other edge as a careful client does (make-before-break: a new connection, joined,
before the old one is closed) and misses no message another client sent during the move."""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.chat.ircclient import tags
from tests.chat.test_edge import Client, add_user
from tests.conftest import cluster_up, free_subnet, write_cluster

ROOM = "#lobby"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two edges in one cluster, `main`, with a short drain period."""
    subnet = free_subnet()
    doc = {
        "hosts": {"chat1": {"address": f"{subnet}.1"}, "chat2": {"address": f"{subnet}.2"},
                  "redis1": {"address": f"{subnet}.21"}, "redis2": {"address": f"{subnet}.22"}},
        "clusters": {"main": {"hosts": ["chat1", "chat2"], "rooms": ["lobby"],
                              "services": {"edge": {"drain_period": "4s"}}}},
        "redis": {"shards": [{"name": "shard0", "host": "redis1", "port": 6379},
                             {"name": "shard1", "host": "redis2", "port": 6379}]},
        "haproxy": {"check_interval": "500ms"},
        "controlplane": {"listen": {"address": f"{subnet}.100"}},
    }
    config = write_cluster(tmp_path_factory.mktemp("reconnect") / "cluster.yaml", doc)
    run = Path(tempfile.mkdtemp(prefix="co-", dir="/tmp"))
    with cluster_up(config, run) as c:
        c.subnet = subnet
        yield c


def _edge(client: Client) -> str:
    return client.wait("yourhost").arguments[0].rsplit("edge ", 1)[1].rstrip(")")


def _texts(client: Client) -> dict[str, str]:
    return {tags(e)["id"]: e.arguments[0] for e in client.of_type("pubmsg")}


def test_irc_client_follows_reconnect_to_the_other_edge_and_misses_nothing(cluster):
    c = cluster
    front = f"{c.subnet}.1"
    alice_token = add_user(c, "alice", "--broadcaster", "lobby")      # 100 messages per 30 s
    carol_token = add_user(c, "carol")
    alice = Client(front, 6667, "alice", alice_token)
    alice_edge = _edge(alice)
    alice.join(ROOM)
    carol = Client(front, 6667, "carol", carol_token)
    old_edge = _edge(carol)
    assert old_edge != alice_edge, "leastconn puts the second client on the other edge"
    carol.join(ROOM)
    # A standard IRC client (no twitch.tv/commands) on the same edge: no RECONNECT, which it would
    # not know, but ERROR when the edge closes it.
    plain = []
    while len(plain) < 4 and not any(e == old_edge for _, e in plain):
        p = Client(front, 6667, f"justinfan{4242 + len(plain)}", caps=())
        plain.append((p, _edge(p)))
    irc_client = next(p for p, e in plain if e == old_edge)

    sent: list[str] = []

    def talk() -> None:
        for i in range(40):
            sent.append(f"during the move {i}")
            alice.conn.privmsg(ROOM, sent[-1])
            alice.pump(0.075)
    talker = threading.Thread(target=talk)
    new = None
    try:
        talker.start()
        time.sleep(0.5)
        os.kill(c.pid_of(f"edge-{old_edge}"), signal.SIGTERM)
        got = carol.wait("reconnect", timeout=5)
        assert got.source == "tmi.chatops.local", got
        # Make-before-break: the old connection keeps receiving until the new one is in the room.
        new = Client(front, 6667, "carol", carol_token)
        assert _edge(new) == alice_edge != old_edge
        new.join(ROOM)
        carol.pump(0.3)
        carol.close()
        talker.join(10)
        new.pump(1.5)
        closing = irc_client.wait("error", timeout=6)
        assert closing.target == "Closing Link: justinfan%d (Server going away, reconnect)" % (
            4242 + [p for p, _ in plain].index(irc_client)), closing
        assert not irc_client.of_type("reconnect")
        seen = {**_texts(carol), **_texts(new)}
        assert not [e for e in alice.of_type("pubnotice") + alice.of_type("privnotice")], alice.events
        assert sorted(seen.values()) == sorted(sent), set(sent) - set(seen.values())
        # The move happened while alice talked: some messages came on each connection.
        assert _texts(carol) and _texts(new), (len(_texts(carol)), len(_texts(new)))
        print(f"\ncarol moved {old_edge} -> {alice_edge}: {len(_texts(carol))} messages on the old "
              "connection, "
              f"{len(_texts(new))} on the new one ({len(set(_texts(carol)) & set(_texts(new)))} on both), "
              f"{len(sent)} sent")
    finally:
        talker.join(10)
        alice.close()
        for p, _ in plain:
            p.close()
        if new is not None:
            new.close()
