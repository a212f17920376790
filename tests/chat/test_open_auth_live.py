"""`auth: open` on a live cluster of two edges, with real clients (jaraco's `irc` package): logins
without a token, 433 across edges through the nick claims in Redis, the nick free again after
QUIT, and JOIN/PART/QUIT membership delivered across edges to members with
`twitch.tv/membership`. And `chatops config check` / `chatops up` refusing `auth: open` on
profile remote."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pytest

from cluster import checks
from cluster.spec import ClusterFile
from tests.chat.ircclient import IrcClient
from tests.conftest import chatops, cluster_up, free_subnet, small_cluster, write_cluster

MEMBERSHIP = "twitch.tv/membership"
EDGE_PORT = 16667          # services.edge.irc_port: one edge directly, to pick the edge


@pytest.fixture(scope="module")
def open_cluster():
    """main: two edges (chat1, chat2), auth open; the small cluster's testing cluster beside it."""
    subnet = free_subnet()
    doc = small_cluster(subnet)
    doc["hosts"]["chat2"] = {"address": f"{subnet}.2"}
    doc["clusters"]["main"] = {"hosts": ["chat1", "chat2"], "rooms": ["lobby", "lounge"], "auth": "open"}
    run = Path(tempfile.mkdtemp(prefix="co-", dir="/tmp"))
    config = write_cluster(run.parent / f"{run.name}.yaml", doc)
    try:
        with cluster_up(config, run) as c:
            c.subnet = subnet
            yield c
    finally:
        config.unlink(missing_ok=True)




def _from(nick: str, target: str | None = None):
    return lambda ev: ev.source.nick == nick and (target is None or ev.target == target)


def test_open_login_433_across_edges_and_membership(open_cluster):
    c = open_cluster
    edge1, edge2, front = (f"{c.subnet}.1", EDGE_PORT), (f"{c.subnet}.2", EDGE_PORT), (f"{c.subnet}.1", 6667)
    clients: list[IrcClient] = []

    def connect(where, nick, **kw) -> IrcClient:
        client = IrcClient(*where, nick, **kw)
        clients.append(client)
        return client

    try:
        # Two users register without a token, each on its own edge, and talk.
        alice = connect(edge1, "alice", caps=(MEMBERSHIP,))                      # a standard client
        tw = connect(edge1, "twitchy", caps=(MEMBERSHIP, "twitch.tv/commands", "twitch.tv/tags"))
        bob = connect(edge2, "bob")                                               # no membership
        assert "edge chat2" in bob.wait("yourhost").arguments[0]
        for client in (alice, tw):
            client.join("#lobby")
            client.join("#lounge")
        bob.join("#lobby")
        bob.join("#lounge")
        # bob's JOINs cross from chat2 through the exchange; alice and twitchy have the cap.
        for client in (alice, tw):
            client.wait("join", _from("bob", "#lobby"))
            client.wait("join", _from("bob", "#lounge"))
        alice.conn.privmsg("#lobby", "hello bob")
        bob.wait("pubmsg", lambda ev: ev.arguments == ["hello bob"] and ev.source.nick == "alice")
        bob.conn.privmsg("#lobby", "hi alice")
        got = tw.wait("pubmsg", lambda ev: ev.arguments == ["hi alice"])
        tags = {t["key"]: t["value"] or "" for t in got.tags}
        assert tags["badges"] == "" and tags["mod"] == "0" and tags["display-name"] == "bob"

        # A used nick gets 433, through the frontend and on the other edge; another nick then works.
        for i, where in enumerate((front, edge2)):
            taker = connect(where, "alice", welcome=False)
            taker.wait("nicknameinuse", lambda ev: ev.arguments[0] == "alice")
            taker.conn.nick(f"alice{i + 2}")     # not the same: a released claim goes asynchronously
            taker.wait("welcome")
            taker.close()
            clients.remove(taker)
        # A nick created with `chatops users add` is only for its token, which still logs in.
        added = chatops("users", "add", "marie", "--mod", "lobby", "--config", str(c.config),
                        "--run-dir", str(c.run))
        assert added.returncode == 0, added.stderr
        impostor = connect(front, "marie", welcome=False)
        assert "registered" in impostor.wait("nicknameinuse").arguments[1]
        token = added.stdout.strip().splitlines()[-1]
        marie = connect(front, "marie", password=token if token.startswith("oauth:") else f"oauth:{token}",
                        caps=("twitch.tv/tags", "twitch.tv/commands"))
        marie.join("#lobby")
        for client in (alice, tw):
            client.wait("join", _from("marie", "#lobby"))

        # PART and QUIT reach the others with the cap: a standard client hears one QUIT for the
        # two rooms it shares, a Twitch client a PART per room (as Twitch sends them).
        bob.conn.part("#lounge", "brb")
        for client in (alice, tw):
            client.wait("part", _from("bob", "#lounge"))
        bob.join("#lounge")
        for client in (alice, tw):
            client.wait("join", _from("bob", "#lounge"))
        bob.conn.quit("see you")
        quit_ = alice.wait("quit", _from("bob"))
        assert quit_.arguments == ["see you"]
        tw.wait("part", _from("bob", "#lobby"))
        tw.wait("part", _from("bob", "#lounge"))
        alice.pump(1.0)
        assert not alice.seen("quit", "bob") and not alice.seen("part", "bob")
        assert not tw.seen("quit", "bob")
        # The nick is free again once its connection is gone (the release is asynchronous).
        deadline = time.monotonic() + 5
        while True:
            again = connect(edge1, "bob", welcome=False)
            try:
                again.wait("welcome", timeout=3)
                break
            except AssertionError:
                assert time.monotonic() < deadline, "bob stayed taken after its QUIT"
                again.close()
                time.sleep(0.2)
        # Same-edge membership, and none for a client without the cap (again, as bob has none).
        again.join("#lobby")
        alice.wait("join", _from("bob", "#lobby"))
        carol = connect(edge1, "carol", caps=("twitch.tv/tags",))
        carol.join("#lobby")
        alice.wait("join", _from("carol", "#lobby"))
        again.pump(1.0)
        assert not again.seen("join", "carol")

        # An open nick moderates nobody; a mod (by token) bans it like anyone.
        def notice_id(client: IrcClient) -> str:
            got = client.wait("pubnotice")
            return {t["key"]: t["value"] for t in got.tags}["msg-id"]
        carol.conn.privmsg("#lobby", ".ban alice")
        assert notice_id(carol) == "no_permission"
        marie.conn.privmsg("#lobby", ".ban carol")
        assert notice_id(marie) == "ban_success"
        carol.conn.privmsg("#lobby", "still here?")
        assert notice_id(carol) == "msg_banned"
    finally:
        for client in clients:
            client.close()


def _remote_doc(subnet: str) -> dict:
    doc = small_cluster(subnet, profile="remote")
    doc["clusters"]["testing"]["auth"] = "open"
    return doc


def test_open_auth_refused_on_profile_remote(tmp_path, run_dir):
    doc = _remote_doc(free_subnet())
    problems = checks.run(ClusterFile.model_validate(doc))
    assert [p for p, _ in problems] == ["clusters.testing.auth"]
    config = write_cluster(tmp_path / "remote.yaml", doc)
    for args in (("config", "check", str(config)), ("up", "--config", str(config), "--run-dir", str(run_dir))):
        result = chatops(*args)
        assert result.returncode != 0, result.stdout
        assert "clusters.testing.auth" in result.stderr and "profile remote" in result.stderr, result.stderr
    doc["clusters"]["testing"]["auth"] = "token"
    assert chatops("config", "check", str(write_cluster(tmp_path / "ok.yaml", doc))).returncode == 0


def test_open_logins_get_standard_irc_answers_across_edges(open_cluster):
    """What docs/chat.md promises a standard client under `auth: open`: NAMES and WHO list both
    edges' members, TOPIC reads 331, PART carries its reason to the parting client and to members
    with the cap, and QUIT reaches them once with its reason."""
    c = open_cluster
    dana = IrcClient(f"{c.subnet}.1", EDGE_PORT, "dana", caps=(MEMBERSHIP,))
    erin = IrcClient(f"{c.subnet}.2", EDGE_PORT, "erin")
    try:
        dana.join("#lounge")
        erin.join("#lounge")
        dana.wait("join", _from("erin", "#lounge"))

        dana.conn.names(["#lounge"])
        dana.wait("endofnames", lambda ev: ev.arguments[0] == "#lounge")
        names = {n for e in dana.events if e.type == "namreply" for n in e.arguments[2].split()}
        assert {"dana", "erin"} <= names, names

        dana.conn.who("#lounge")
        who = {dana.wait("whoreply").arguments[4] for _ in range(2)}
        dana.wait("endofwho")
        assert who == {"dana", "erin"}, who

        erin.conn.send_raw("TOPIC #lounge")
        assert erin.wait("notopic").arguments[0] == "#lounge"

        erin.conn.send_raw("PART #lounge :off to lunch")
        assert erin.wait("part", _from("erin", "#lounge")).arguments == ["off to lunch"]
        assert dana.wait("part", _from("erin", "#lounge")).arguments == ["off to lunch"]
        erin.join("#lounge")
        dana.wait("join", _from("erin", "#lounge"))
        erin.conn.quit("good night")
        assert dana.wait("quit", _from("erin")).arguments == ["good night"]
    finally:
        dana.close()
        erin.close()
