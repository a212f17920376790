"""Standard IRC against a live cluster with two edges: a plain RFC client (jaraco's `irc` package,
no Twitch capabilities) on each edge sees the other in NAMES and WHO, reads TOPIC and MODE, PARTs
with a reason, gets 442/403, LUSERS and ISON counting both edges, and a PRIVMSG to two rooms
reaches both; an edge that does not answer is left out, not waited for."""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path

import pytest

from chat import members
from tests.chat.ircclient import IrcClient
from tests.conftest import chatops, cluster_up, free_subnet, wait_for, write_cluster

EDGE_PORT = 16667     # services.edge.irc_port: straight to each edge, so the two clients surely differ


@pytest.fixture(scope="module")
def two_edges(tmp_path_factory):
    subnet = free_subnet()
    doc = {
        "hosts": {"chat1": {"address": f"{subnet}.1"}, "chat2": {"address": f"{subnet}.2"},
                  "redis1": {"address": f"{subnet}.21"}},
        "clusters": {"main": {"hosts": ["chat1", "chat2"], "rooms": ["lobby"]}},
        "redis": {"shards": [{"name": "shard0", "host": "redis1", "port": 6379}]},
        "haproxy": {"check_interval": "500ms"},
        "controlplane": {"listen": {"address": f"{subnet}.100"}},
    }
    config = write_cluster(tmp_path_factory.mktemp("std") / "cluster.yaml", doc)
    run = Path(tempfile.mkdtemp(prefix="co-", dir="/tmp"))
    with cluster_up(config, run) as c:
        c.subnet = subnet
        yield c


class Client(IrcClient):
    """An RFC client: NICK/USER (and PASS), no CAP at all."""

    def __init__(self, address: str, nick: str, password: str | None = None):
        super().__init__(address, EDGE_PORT, nick, password=password, tick=0.02)

    def until(self, end: str, *kinds: str) -> list:
        """Events of `kinds` received up to the `end` one (that one last)."""
        last = self.wait(end)
        got = [e for e in self.events if e.type in kinds]
        for e in got:
            self.events.remove(e)
        return got + [last]


def test_standard_irc_across_two_edges(two_edges):
    c = two_edges
    result = chatops("users", "add", "alice", "--config", str(c.config), "--run-dir", str(c.run))
    assert result.returncode == 0, result.stderr
    alice = Client(f"{c.subnet}.1", "alice", result.stdout.strip())
    reader = Client(f"{c.subnet}.2", "justinfan4242")
    try:
        # Each on its own edge: 002 names it.
        assert "(edge chat1)" in alice.wait("yourhost").arguments[0]
        assert "(edge chat2)" in reader.wait("yourhost").arguments[0]
        isupport = [a for e in alice.events if e.type == "featurelist" for a in e.arguments]
        assert "CHANLIMIT=#:100" in isupport and "LINELEN=512" in isupport and "MAXTARGETS=4" in isupport
        for who, rooms in ((alice, ("#lobby",)), (reader, ("#lobby", "#second"))):
            for room in rooms:
                who.conn.join(room)
                who.wait("endofnames", lambda ev, room=room: ev.arguments[0] == room)

        # NAMES and WHO: both members, though each edge holds one of them.
        alice.conn.names(["#lobby"])
        names = alice.until("endofnames", "namreply")
        assert {n for e in names[:-1] for n in e.arguments[2].split()} == {"alice", "justinfan4242"}
        reader.conn.who("#lobby")
        who = reader.until("endofwho", "whoreply")
        assert sorted(e.arguments[4] for e in who[:-1]) == ["alice", "justinfan4242"]
        reader.conn.who("alice")
        assert [e.arguments[:2] for e in reader.until("endofwho", "whoreply")[:-1]] == [["*", "alice"]]

        # TOPIC, MODE, and the numerics for rooms not joined and names that are no room.
        alice.conn.topic("#lobby")
        assert alice.wait("notopic").arguments[0] == "#lobby"
        alice.conn.topic("#second")
        assert alice.wait("notonchannel").arguments[0] == "#second"
        alice.conn.mode("#lobby", "")
        assert alice.wait("channelmodeis").arguments == ["#lobby", "+t"]
        alice.conn.mode("#lobby", "+m")
        assert alice.wait("chanoprivsneeded").arguments[0] == "#lobby"
        alice.send("PART nochannel")
        assert alice.wait("nosuchchannel").arguments[0] == "nochannel"
        alice.send("MODE alice +i")                      # what many clients send at connect
        alice.wait("umodeunknownflag")

        # LUSERS and ISON count both edges.
        alice.conn.lusers()
        assert alice.wait("luserclient").arguments[0] == "There are 2 users and 0 invisible on 2 servers"
        assert alice.wait("n_global").arguments[:2] == ["2", "2"]
        alice.conn.ison(["justinfan4242", "nobody", "alice"])
        assert sorted(alice.wait("ison").arguments[0].split()) == ["alice", "justinfan4242"]

        # One PRIVMSG, two rooms, each decided and delivered on its own.
        alice.conn.privmsg_many(["#lobby", "#second"], "hello both")
        got = {reader.wait("pubmsg", lambda ev: ev.arguments == ["hello both"]).target for _ in range(2)}
        assert got == {"#lobby", "#second"}
        alice.send("PRIVMSG #a,#b,#c,#d,#e :too many")
        assert alice.wait("toomanytargets").arguments[0] == "#a,#b,#c,#d,#e"

        # PART with a reason comes back with it; a second PART is 442; NAMES follows.
        reader.send("PART #lobby :see you")     # the irc package's part() sends the reason without ':'
        part = reader.wait("part")
        assert part.target == "#lobby" and part.arguments == ["see you"]
        reader.conn.part(["#lobby"])
        assert reader.wait("notonchannel").arguments[0] == "#lobby"
        alice.conn.names(["#lobby"])
        names = alice.until("endofnames", "namreply")
        assert [e.arguments[2] for e in names[:-1]] == ["alice"]

        # An edge that does not answer is left out after LOOKUP_TIMEOUT, and logged.
        frozen = c.pid_of("edge-chat2")
        os.kill(frozen, signal.SIGSTOP)
        try:
            started = time.monotonic()
            alice.conn.lusers()
            assert alice.wait("luserclient").arguments[0] == "There are 1 users and 0 invisible on 1 servers"
            assert time.monotonic() - started < members.LOOKUP_TIMEOUT + 1.0
        finally:
            os.kill(frozen, signal.SIGCONT)
        log = c.run / "logs" / "edge-chat1.log"
        wait_for(lambda: "members lookup left this edge out" in log.read_text(), 5,
                 what="the lookup's log line")

        # A loop of lookups is held to LOOKUP_RATE: the rest are told to try again.
        for _ in range(members.LOOKUP_RATE[0] + 5):
            alice.send("LUSERS")
        assert alice.wait("tryagain").arguments == ["LUSERS", "Please wait a while and try again."]
    finally:
        alice.conn.disconnect()
        reader.conn.disconnect()
