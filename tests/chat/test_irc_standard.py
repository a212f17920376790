"""Standard IRC where a standard client expects it: bytes into `irc.ServerConnection`, bytes out,
for NAMES, WHO, WHOIS, TOPIC, MODE, PART, LUSERS, ISON, USERHOST, multi-target PRIVMSG, ISUPPORT
and CAP 302; and the pure helpers of `chat.members` that merge the edges' answers."""

from __future__ import annotations

import pytest

from chat import irc, members
from chat.irc import (
    MAX_LINE,
    ChannelMode,
    Found,
    Ison,
    Lusers,
    Names,
    Part,
    Privmsg,
    ServerConnection,
    Topic,
    Userhost,
    Who,
    Whois,
    parse,
)

SERVER = "tmi.chatops"


def lines(conn: ServerConnection) -> list[bytes]:
    out = conn.lines_to_send()
    for line in out:
        assert line.endswith(b"\r\n") and line.count(b"\n") == 1 and len(line) <= MAX_LINE, line
        parse(line)
    return out


def registered(nick: str = "ronni", rooms=(), **kw) -> ServerConnection:
    conn = ServerConnection(SERVER, **kw)
    [req] = conn.receive_data(f"PASS oauth:abc\r\nNICK {nick}\r\n".encode())
    conn.accept_registration(req.nick)
    conn.lines_to_send()
    conn.joined.update(rooms)
    return conn


def ask(conn: ServerConnection, data: bytes, found: Found | None = None) -> list[bytes]:
    """Feed a line, answer its queries as the edge does (with `found` when one needs the cluster)."""
    for ev in conn.receive_data(data):
        assert isinstance(ev, irc.QUERIES), ev
        if not conn.answer(ev):
            assert found is not None, f"{ev} needs the cluster's members"
            assert conn.answer(ev, found)
    return lines(conn)


# -- NAMES --------------------------------------------------------------------------------------

def test_names_of_a_joined_room_lists_the_cluster_members():
    conn = registered(rooms={"lobby"})
    assert conn.receive_data(b"NAMES #Lobby\r\n") == [Names("#lobby")]
    assert conn.answer(Names("#lobby")) is False and lines(conn) == []
    conn.answer(Names("#lobby"), Found(members=("ronni", "bob"), member_count=2))
    assert lines(conn) == [b":tmi.chatops 353 ronni = #lobby :ronni bob\r\n",
                           b":tmi.chatops 366 ronni #lobby :End of /NAMES list\r\n"]


def test_names_splits_353_to_fit_512_bytes():
    conn = registered(rooms={"big"})
    nicks = tuple(f"user{i:021d}" for i in range(1000))            # 25 characters each
    out = ask(conn, b"NAMES #big\r\n", Found(members=nicks, member_count=1000))
    msgs = [parse(x) for x in out]
    assert [m.command for m in msgs[:-1]] == ["353"] * (len(msgs) - 1) and msgs[-1].command == "366"
    assert len(msgs) > 50
    listed = [n for m in msgs[:-1] for n in m.params[-1].split(" ")]
    assert listed == list(nicks)
    # Each 353 is as full as it can be: one more name would not fit.
    assert all(len(x) + 26 > MAX_LINE for x in out[:-2])


def test_names_past_the_cap_says_how_many_were_left_out():
    conn = registered(rooms={"big"})
    out = ask(conn, b"NAMES #big\r\n", Found(members=("a", "b"), member_count=5000))
    assert out == [b":tmi.chatops 353 ronni = #big :a b\r\n",
                   b":tmi.chatops NOTICE ronni :#big has 5000 members; NAMES lists 2\r\n",
                   b":tmi.chatops 366 ronni #big :End of /NAMES list\r\n"]


def test_user_mode_pipelined_right_after_nick_is_the_clients_own():
    conn = ServerConnection(SERVER)
    [req, mode] = conn.receive_data(b"NICK ronni\r\nUSER r 0 * :R\r\nMODE ronni +i\r\n")
    assert lines(conn) == [] and mode == irc.UserMode("ronni", ("+i",))
    conn.accept_registration(req.nick)
    assert conn.answer(mode)
    assert [parse(x).command for x in lines(conn)][-1] == "501"


def test_names_of_a_room_not_joined_or_invalid_or_nothing_is_an_empty_list():
    conn = registered()
    assert ask(conn, b"NAMES #elsewhere\r\n") == [
        b":tmi.chatops 366 ronni #elsewhere :End of /NAMES list\r\n"]
    assert ask(conn, b"NAMES\r\n") == [b":tmi.chatops 366 ronni * :End of /NAMES list\r\n"]
    assert ask(conn, b"NAMES nochannel\r\n") == [b":tmi.chatops 366 ronni nochannel :End of /NAMES list\r\n"]
    assert ask(conn, b"NAMES #" + b"x" * 80 + b"\r\n")[0].startswith(b":tmi.chatops 366 ronni #xxx")


def test_names_takes_one_target():
    conn = registered(rooms={"a", "b"})
    assert conn.receive_data(b"NAMES #a,#b\r\n") == []
    assert lines(conn) == [b":tmi.chatops 407 ronni #a,#b :Too many targets: NAMES takes one\r\n"]
    assert conn.receive_data(b"NAMES #a,,\r\n") == [Names("#a")]


# -- WHO, WHOIS ---------------------------------------------------------------------------------

def test_who_room_lists_each_member():
    conn = registered(rooms={"lobby"})
    out = ask(conn, b"WHO #lobby\r\n", Found(members=("ronni", "bob")))
    assert out == [
        b":tmi.chatops 352 ronni #lobby ronni ronni.tmi.chatops tmi.chatops ronni H :0 ronni\r\n",
        b":tmi.chatops 352 ronni #lobby bob bob.tmi.chatops tmi.chatops bob H :0 bob\r\n",
        b":tmi.chatops 315 ronni #lobby :End of /WHO list\r\n"]


def test_who_nick_and_who_masks():
    conn = registered()
    assert conn.receive_data(b"WHO Bob\r\n") == [Who("bob")]
    conn.answer(Who("bob"), Found(online=frozenset({"bob"})))
    assert lines(conn) == [b":tmi.chatops 352 ronni * bob bob.tmi.chatops tmi.chatops bob H :0 bob\r\n",
                           b":tmi.chatops 315 ronni bob :End of /WHO list\r\n"]
    assert ask(conn, b"WHO nobody\r\n", Found()) == [b":tmi.chatops 315 ronni nobody :End of /WHO list\r\n"]
    # Masks search nobody here, and a room not joined lists nobody: just the end.
    for line, end in [(b"WHO *\r\n", b"*"), (b"WHO 0 o\r\n", b"0"), (b"WHO\r\n", b"*"),
                      (b"WHO *.tmi.chatops\r\n", b"*.tmi.chatops"), (b"WHO #other\r\n", b"#other"),
                      (b"WHO :#a b\r\n", b"#a_b")]:
        assert ask(conn, line) == [b":tmi.chatops 315 ronni " + end + b" :End of /WHO list\r\n"]
    assert conn.receive_data(b"WHO #a,#b\r\n") == [] and parse(lines(conn)[0]).command == "407"


def test_whois():
    conn = registered()
    assert conn.receive_data(b"WHOIS Bob\r\nWHOIS tmi.chatops bob\r\n") == [Whois("bob"), Whois("bob")]
    conn.answer(Whois("bob"), Found(online=frozenset({"bob"})))
    assert lines(conn) == [b":tmi.chatops 311 ronni bob bob bob.tmi.chatops * :bob\r\n",
                           b":tmi.chatops 312 ronni bob tmi.chatops :chatops\r\n",
                           b":tmi.chatops 318 ronni bob :End of /WHOIS list\r\n"]
    conn.answer(Whois("gone"), Found())
    assert lines(conn) == [b":tmi.chatops 401 ronni gone :No such nick/channel\r\n",
                           b":tmi.chatops 318 ronni gone :End of /WHOIS list\r\n"]
    assert ask(conn, b"WHOIS bad!nick\r\n") == [b":tmi.chatops 401 ronni bad!nick :No such nick/channel\r\n",
                                               b":tmi.chatops 318 ronni bad!nick :End of /WHOIS list\r\n"]
    assert ask(conn, b"WHOIS\r\n") == [b":tmi.chatops 431 ronni :No nickname given\r\n"]
    assert parse(ask(conn, b"WHOIS a,b\r\n")[0]).command == "407"


# -- TOPIC, MODE --------------------------------------------------------------------------------

def test_topic_reads_331_in_a_joined_room_and_setting_is_482():
    conn = registered(rooms={"lobby"})
    assert conn.receive_data(b"TOPIC #lobby\r\nTOPIC #lobby :new topic\r\n") == [
        Topic("#lobby"), Topic("#lobby", "new topic")]
    assert ask(conn, b"TOPIC #Lobby\r\nTOPIC #lobby :x\r\n") == [
        b":tmi.chatops 331 ronni #lobby :No topic is set\r\n",
        b":tmi.chatops 482 ronni #lobby :You're not channel operator\r\n"]
    # (Syntax errors are answered as the line arrives, queries when the edge reaches them.)
    assert ask(conn, b"TOPIC #other\r\nTOPIC #other :x\r\n") == [
        b":tmi.chatops 442 ronni #other :You're not on that channel\r\n",
        b":tmi.chatops 442 ronni #other :You're not on that channel\r\n"]
    assert ask(conn, b"TOPIC bad\r\nTOPIC\r\n") == [
        b":tmi.chatops 403 ronni bad :No such channel\r\n",
        b":tmi.chatops 461 ronni TOPIC :Not enough parameters\r\n"]


def test_channel_mode_query_change_and_lists():
    conn = registered(rooms={"lobby"})
    assert conn.receive_data(b"MODE #lobby +o bob\r\n") == [ChannelMode("#lobby", ("+o", "bob"))]
    assert ask(conn, b"MODE #lobby\r\nMODE #lobby +o bob\r\nMODE #lobby +Z\r\nMODE #lobby b\r\n"
                     b"MODE #lobby +b\r\nMODE #lobby e\r\nMODE #lobby I\r\nMODE #lobby -b\r\n") == [
        b":tmi.chatops 324 ronni #lobby :+t\r\n",
        b":tmi.chatops 482 ronni #lobby :You're not channel operator\r\n",
        b":tmi.chatops 472 ronni Z :is unknown mode char to me\r\n",
        b":tmi.chatops 368 ronni #lobby :End of channel ban list\r\n",
        b":tmi.chatops 368 ronni #lobby :End of channel ban list\r\n",
        b":tmi.chatops 349 ronni #lobby :End of channel exception list\r\n",
        b":tmi.chatops 347 ronni #lobby :End of channel invite list\r\n",
        b":tmi.chatops 482 ronni #lobby :You're not channel operator\r\n"]
    # Any valid room's modes can be read; changing one you are not in is 442; bad names 403.
    assert ask(conn, b"MODE #other\r\nMODE #other +m\r\n") == [
        b":tmi.chatops 324 ronni #other :+t\r\n",
        b":tmi.chatops 442 ronni #other :You're not on that channel\r\n"]
    assert ask(conn, b"MODE #bad,name\r\nMODE\r\n") == [
        b":tmi.chatops 403 ronni #bad,name :No such channel\r\n",
        b":tmi.chatops 461 ronni MODE :Not enough parameters\r\n"]


def test_user_mode():
    conn = registered()
    assert ask(conn, b"MODE Ronni\r\nMODE ronni +i\r\nMODE ronni +\r\n"
                     b"MODE bob\r\nMODE bob -i\r\n") == [b":tmi.chatops 221 ronni :+\r\n",
                           b":tmi.chatops 501 ronni :Unknown MODE flag\r\n",
                           b":tmi.chatops 221 ronni :+\r\n",
                           b":tmi.chatops 502 ronni :Can't change mode for other users\r\n",
                           b":tmi.chatops 502 ronni :Can't change mode for other users\r\n"]


# -- PART ---------------------------------------------------------------------------------------

def test_part_carries_its_reason():
    conn = registered(rooms={"a"})
    assert conn.receive_data(b"PART #A :gone for lunch\r\nPART #a,#b\r\nPART #a :\r\n") == [
        Part(("#a",), "gone for lunch"), Part(("#a", "#b")), Part(("#a",))]
    assert conn.receive_data(b"PART nochan :x\r\nPART\r\n") == []
    assert lines(conn) == [b":tmi.chatops 403 ronni nochan :No such channel\r\n",
                           b":tmi.chatops 461 ronni PART :Not enough parameters\r\n"]


# -- LUSERS, ISON, USERHOST ---------------------------------------------------------------------

def test_lusers():
    conn = registered()
    out = ask(conn, b"LUSERS\r\n", Found(users=7, local_users=3, unregistered=1, rooms=2, servers=2))
    assert out == [
        b":tmi.chatops 251 ronni :There are 7 users and 0 invisible on 2 servers\r\n",
        b":tmi.chatops 252 ronni 0 :operator(s) online\r\n",
        b":tmi.chatops 253 ronni 1 :unknown connection(s)\r\n",
        b":tmi.chatops 254 ronni 2 :channels formed\r\n",
        b":tmi.chatops 255 ronni :I have 3 clients and 1 servers\r\n",
        b":tmi.chatops 265 ronni 3 3 :Current local users 3, max 3\r\n",
        b":tmi.chatops 266 ronni 7 7 :Current global users 7, max 7\r\n"]
    assert conn.receive_data(b"LUSERS * tmi.chatops\r\n") == [Lusers()]


def test_ison_and_userhost():
    conn = registered()
    assert conn.receive_data(b"ISON Bob alice bob bad!nick\r\nISON :bob carol\r\n") == [
        Ison(("bob", "alice")), Ison(("bob", "carol"))]
    online = Found(online=frozenset({"bob"}))
    assert ask(conn, b"ISON bob alice\r\n", online) == [b":tmi.chatops 303 ronni :bob\r\n"]
    assert ask(conn, b"ISON alice\r\n", Found()) == [b":tmi.chatops 303 ronni :\r\n"]
    assert ask(conn, b"ISON bad!\r\n") == [b":tmi.chatops 303 ronni :\r\n"]          # nothing to ask
    assert ask(conn, b"ISON\r\nUSERHOST\r\n") == [b":tmi.chatops 461 ronni ISON :Not enough parameters\r\n",
                                                b":tmi.chatops 461 ronni USERHOST :Not enough parameters\r\n"]
    # USERHOST answers at most five nicks, as RFC 2812 says.
    assert conn.receive_data(b"USERHOST a b c d e f\r\n") == [Userhost(("a", "b", "c", "d", "e"))]
    assert ask(conn, b"USERHOST bob alice\r\n", online) == [
        b":tmi.chatops 302 ronni :bob=+bob@bob.tmi.chatops\r\n"]


def test_absurd_arguments_stay_within_one_line_each():
    conn = registered(rooms={"lobby"})
    out = ask(conn, b"ISON " + b" ".join(b"n%d" % i for i in range(200))[:490] + b"\r\n",
              Found(online=frozenset(f"n{i}" for i in range(200))))
    # One 303, as full as fits; the nicks past it read as offline.
    assert len(out) == 1 and len(out[0]) > MAX_LINE - 6 and parse(out[0]).params[-1].startswith("n0 n1 n2 ")
    assert ask(conn, b"WHO " + b"*" * 490 + b"\r\n")[0].count(b"*") <= 65
    assert ask(conn, b"NAMES " + b"," * 400 + b"\r\n") == [
        b":tmi.chatops 366 ronni * :End of /NAMES list\r\n"]
    assert ask(conn, b"MODE #lobby " + b"+" * 400 + b"\r\n") == [
        b":tmi.chatops 482 ronni #lobby :You're not channel operator\r\n"]


def test_queries_before_registration_get_451_and_after_close_nothing():
    conn = ServerConnection(SERVER)
    assert conn.receive_data(b"NAMES #a\r\nLUSERS\r\nISON a\r\n") == []
    assert [parse(x).command for x in lines(conn)] == ["451", "451", "451"]
    conn = registered(rooms={"a"})
    conn.close()
    assert conn.answer(Topic("#a")) is True and lines(conn) == []


# -- PRIVMSG to several targets -----------------------------------------------------------------

def test_privmsg_to_several_targets_is_one_event_each():
    conn = registered()
    assert conn.receive_data(b"PRIVMSG #A,#b,#a,,bob :hi all\r\n") == [
        Privmsg("#a", "hi all", {}), Privmsg("#b", "hi all", {}), Privmsg("bob", "hi all", {})]
    assert lines(conn) == []


def test_privmsg_over_maxtargets_is_407_and_nothing_is_sent():
    conn = registered()
    assert conn.receive_data(b"PRIVMSG #a,#b,#c,#d,#e :spam\r\n") == []
    assert lines(conn) == [b":tmi.chatops 407 ronni #a,#b,#c,#d,#e :Too many recipients (at most 4); "
                           b"no message was sent\r\n"]
    assert len(conn.receive_data(b"PRIVMSG #a,#b,#c,#d :ok\r\n")) == irc.MAX_TARGETS == 4


def test_privmsg_bad_channel_among_targets_is_403_alone():
    conn = registered()
    assert conn.receive_data(b"PRIVMSG #ok,#" + b"x" * 60 + b" :hi\r\n") == [Privmsg("#ok", "hi", {})]
    assert [parse(x).command for x in lines(conn)] == ["403"]
    assert conn.receive_data(b"PRIVMSG ,,, :hi\r\n") == []
    assert [parse(x).command for x in lines(conn)] == ["411"]


# -- ISUPPORT -----------------------------------------------------------------------------------

def test_isupport_tells_the_limits():
    conn = ServerConnection(SERVER, max_rooms=42)
    conn.receive_data(b"NICK ronni\r\n")
    conn.accept_registration("ronni")
    tokens = [t for m in map(parse, lines(conn)) if m.command == "005" for t in m.params[1:-1]]
    assert len(tokens) == len(set(tokens))
    assert {"CHANTYPES=#", "NETWORK=chatops", "CASEMAPPING=ascii", "CHANNELLEN=50", "NICKLEN=25",
            "CHANLIMIT=#:42", "MAXTARGETS=4", "LINELEN=512", "CHANMODES=beI,,,t"} <= set(tokens)
    [targmax] = [t for t in tokens if t.startswith("TARGMAX=")]
    assert dict(kv.split(":") for kv in targmax[8:].split(",")) == {
        "PRIVMSG": "4", "JOIN": "", "PART": "", "NAMES": "1", "WHO": "1", "WHOIS": "1", "ISON": "",
        "USERHOST": "5"}


def test_isupport_splits_at_13_tokens_per_line():
    conn = ServerConnection(SERVER)
    conn.isupport = tuple(f"T{i}=x" for i in range(30))
    conn.receive_data(b"NICK ronni\r\n")
    conn.accept_registration("ronni")
    counts = [len(m.params) - 2 for m in map(parse, lines(conn)) if m.command == "005"]
    assert counts == [13, 13, 4]


# -- CAP 302 ------------------------------------------------------------------------------------

def test_cap_ls_302_shows_values_and_cap_notify():
    conn = ServerConnection(SERVER, caps=("twitch.tv/tags", "sasl=PLAIN,EXTERNAL", "cap-notify"))
    conn.receive_data(b"CAP LS\r\n")
    assert lines(conn) == [b":tmi.chatops CAP * LS :twitch.tv/tags sasl cap-notify\r\n"]
    assert conn.caps == frozenset()
    conn.receive_data(b"CAP LS 302\r\n")
    assert lines(conn) == [b":tmi.chatops CAP * LS :twitch.tv/tags sasl=PLAIN,EXTERNAL cap-notify\r\n"]
    assert conn.caps == frozenset({"cap-notify"})
    # Requested by name; a 302 client cannot turn cap-notify off.
    conn.receive_data(b"CAP REQ sasl\r\nCAP REQ :-cap-notify\r\nCAP LIST\r\n")
    assert lines(conn) == [b":tmi.chatops CAP * ACK :sasl\r\n", b":tmi.chatops CAP * NAK :-cap-notify\r\n",
                           b":tmi.chatops CAP * LIST :sasl cap-notify\r\n"]


def test_cap_notify_is_requestable_without_302():
    conn = ServerConnection(SERVER)
    conn.receive_data(b"CAP REQ cap-notify\r\nCAP REQ -cap-notify\r\n")
    assert lines(conn) == [b":tmi.chatops CAP * ACK :cap-notify\r\n",
                           b":tmi.chatops CAP * ACK :-cap-notify\r\n"]
    assert conn.caps == frozenset()


def test_cap_ls_302_splits_long_lists_with_continuation_lines():
    caps = [f"vendor.example/cap-number-{i:03d}=value{i}" for i in range(40)]
    conn = ServerConnection(SERVER, caps=caps)
    conn.receive_data(b"CAP LS 302\r\n")
    out = [parse(x) for x in lines(conn)]
    assert len(out) > 1
    assert all(m.params[:3] == ("*", "LS", "*") for m in out[:-1]) and out[-1].params[:2] == ("*", "LS")
    assert out[-1].params[2] != "*"
    assert [c for m in out for c in m.params[-1].split(" ")] == caps
    conn.receive_data(("CAP REQ :" + " ".join(c.split("=")[0] for c in caps[:12]) + "\r\n").encode())
    conn.receive_data(b"CAP LIST\r\n")
    listed = [parse(x) for x in lines(conn)][1:]
    assert [c for m in listed for c in m.params[-1].split(" ")] == [c.split("=")[0] for c in caps[:12]]


def test_existing_clients_see_the_same_cap_ls_without_302():
    conn = ServerConnection(SERVER)
    conn.receive_data(b"CAP LS\r\n")
    assert lines(conn) == [b":tmi.chatops CAP * LS :twitch.tv/tags twitch.tv/commands twitch.tv/membership "
                           b"message-tags server-time echo-message cap-notify\r\n"]


# -- chat.members: the pure parts ----------------------------------------------------------------

def test_query_params():
    assert members.query_params(Names("#lobby")) == {"room": "lobby"}
    assert members.query_params(Who("#lobby")) == {"room": "lobby"}
    assert members.query_params(Who("bob")) == {"nicks": "bob"}
    assert members.query_params(Whois("bob")) == {"nicks": "bob"}
    assert members.query_params(Ison(("a", "b"))) == {"nicks": "a,b"}
    assert members.query_params(Userhost(("a",))) == {"nicks": "a"}
    assert members.query_params(Lusers()) == {}


def test_edge_view():
    view = members.edge_view("chat1", {"room": "lobby", "nicks": "bob,zed"}, room_members=["b", "a", "b"],
                             logins=["a", "b", "bob"], unregistered=2, rooms=5, cap=1)
    assert view == {"edge": "chat1", "users": 3, "unregistered": 2, "rooms": 5, "members": ["a"], "count": 2,
                    "online": ["bob"]}
    assert members.edge_view("chat1", {}, room_members=[], logins=[], unregistered=0, rooms=0) == {
        "edge": "chat1", "users": 0, "unregistered": 0, "rooms": 0}


def test_merge_puts_this_edge_first_dedupes_and_caps():
    local = {"edge": "chat1", "members": ["zed", "amy"], "count": 2, "users": 2, "unregistered": 1,
             "rooms": 3, "online": ["zed"]}
    other = {"edge": "chat2", "members": ["amy", "bob"], "count": 2, "users": 4, "online": ["bob"]}
    found = members.merge(local, [other])
    assert found == Found(members=("zed", "amy", "bob"), member_count=3, online=frozenset({"zed", "bob"}),
                          users=6, local_users=2, unregistered=1, rooms=3, servers=2)
    capped = members.merge(local, [other], cap=2)
    assert capped.members == ("zed", "amy")
    # An edge that listed only part of its room: the count is the edges' sum.
    big = {"members": ["c"], "count": 5000}
    assert members.merge(local, [big]).member_count == 5002


def test_merge_ignores_garbage_from_a_peer():
    local = {"members": ["a"], "count": 1, "users": 1}
    junk = {"members": "nope", "count": -3, "users": True, "online": [1, None, "x"]}
    found = members.merge(local, [junk, {}])
    assert found.members == ("a",) and found.users == 1
    assert found.online == frozenset({"x"}) and found.servers == 3


@pytest.mark.parametrize("names", [0, 1, 37, 1000])
def test_names_reply_round_trips_any_member_count(names):
    conn = registered(rooms={"r"})
    nicks = tuple(f"n{i}" for i in range(names))
    out = [parse(x) for x in ask(conn, b"NAMES #r\r\n", Found(members=nicks, member_count=names))]
    assert [n for m in out if m.command == "353" for n in m.params[-1].split(" ")] == list(nicks)
    assert out[-1].command == "366"
