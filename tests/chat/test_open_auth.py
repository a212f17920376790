"""`auth: open` without a cluster: the protocol's answer to a nick in use (bytes in, bytes out),
and the cluster-file rule refusing open mode on profile remote."""

from __future__ import annotations

from chat import irc
from cluster import checks
from cluster.spec import ClusterFile
from tests.conftest import small_cluster


def test_refused_nick_gets_433_and_the_next_nick_registers():
    conn = irc.ServerConnection("tmi.chatops.local")
    events = conn.receive_data(b"NICK alice\r\nUSER a 0 * :A\r\nJOIN #lobby\r\n")
    assert [type(e) for e in events] == [irc.RegistrationRequest, irc.Join]
    conn.refuse_nick("alice")
    assert conn.state == "new" and conn.nick is None
    assert conn.lines_to_send() == [b":tmi.chatops.local 433 * alice :Nickname is already in use\r\n"]
    # Not registered again until a new NICK; then USER is still known.
    assert conn.receive_data(b"JOIN #lobby\r\n") == []
    assert conn.lines_to_send() == [b":tmi.chatops.local 451 * :You have not registered\r\n"]
    (request,) = conn.receive_data(b"NICK alice_\r\n")
    assert request == irc.RegistrationRequest("alice_", None, "a")
    conn.accept_registration("alice_")
    assert conn.lines_to_send()[0] == b":tmi.chatops.local 001 alice_ :Welcome to the chatops network, alice_\r\n"


def test_open_auth_is_refused_on_profile_remote_only():
    doc = small_cluster("127.0.9")
    doc["clusters"]["main"]["auth"] = "open"
    assert checks.run(ClusterFile.model_validate(doc)) == []
    assert ClusterFile.model_validate(small_cluster("127.0.9")).clusters["main"].auth == "token"
    doc["profile"] = "remote"
    (problem,) = checks.run(ClusterFile.model_validate(doc))
    assert problem[0] == "clusters.main.auth" and "profile remote" in problem[1]
