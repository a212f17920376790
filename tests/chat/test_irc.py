"""The sans-I/O IRC protocol, tested on bytes alone: no sockets, no mocks.

The Twitch lines below are hand-written in the format Twitch documents
(dev.twitch.tv/docs/irc: tags, commands and capabilities pages), with made-up users, ids and
timestamps; they are not captures of live traffic.
"""

from __future__ import annotations

import random

import pytest

from chat import irc
from chat.irc import (
    MAX_LINE,
    MAX_TAGS,
    Framer,
    Join,
    LineError,
    Message,
    ParseError,
    Part,
    Pong,
    Privmsg,
    Quit,
    RegistrationRequest,
    ServerConnection,
    encode,
    escape_tag_value,
    parse,
    unescape_tag_value,
)

# -- hand-written in Twitch's documented format ------------------------------------------------

TWITCH_PRIVMSG = (
    "@badge-info=subscriber/8;badges=subscriber/6,premium/1;client-nonce=4e7b0a6bd2b1a1d0c47b7cbd1f7ad1d7;"
    "color=#1E90FF;display-name=Lurk_Larry;emotes=25:0-4,12-16/1902:6-10;first-msg=0;flags=;"
    "id=5c1b2d96-0f0c-4a4e-9b07-4f0e1a1e7d21;mod=0;returning-chatter=0;room-id=71092938;subscriber=1;"
    "tmi-sent-ts=1642696567751;turbo=0;user-id=41234567;user-type= "
    ":lurk_larry!lurk_larry@lurk_larry.tmi.twitch.tv PRIVMSG #xqcow :Kappa Keepo Kappa"
)
TWITCH_USERNOTICE = (
    "@badge-info=subscriber/6;badges=subscriber/6;color=#8A2BE2;display-name=Pixel_Pat;emotes=;"
    "id=0f7a3c1e-33b4-4ad9-9d5a-6d2c3b4a5e6f;login=pixel_pat;mod=0;msg-id=resub;msg-param-cumulative-months=6;"
    "msg-param-sub-plan=Prime;msg-param-sub-plan-name=Channel\\sSubscription\\s(dallas\\:\\sthe\\sbest);"
    "room-id=12345678;subscriber=1;system-msg=pixel_pat\\ssubscribed\\swith\\sPrime.\\sThey've\\s"
    "subscribed\\sfor\\s6\\smonths!;tmi-sent-ts=1642697334571;user-id=87654321;user-type= "
    ":tmi.twitch.tv USERNOTICE #dallas :Great stream -- keep it up!"
)
TWITCH_CLEARCHAT = ("@ban-duration=350;room-id=12345678;target-user-id=87654321;tmi-sent-ts=1642719320727 "
                    ":tmi.twitch.tv CLEARCHAT #dallas :ronni")
TWITCH_ROOMSTATE = "@emote-only=0;followers-only=-1;r9k=0;room-id=12345678;slow=0;subs-only=0 :tmi.twitch.tv ROOMSTATE #dallas"
TWITCH_NOTICE = "@msg-id=slow_off :tmi.twitch.tv NOTICE #dallas :This room is no longer in slow mode."
TWITCH_REPLY = ("@client-nonce=9a1f0c7e;reply-parent-msg-id=b34ccfc7-4977-403a-8a94-33c6bac34fb8 "
                "PRIVMSG #dallas :@ronni that was a great play")
TWITCH_SERVER_LINES = [
    ":tmi.twitch.tv 001 ronni :Welcome, GLHF!",
    ":tmi.twitch.tv CAP * ACK :twitch.tv/tags twitch.tv/commands",
    ":ronni!ronni@ronni.tmi.twitch.tv JOIN #dallas",
    ":ronni.tmi.twitch.tv 353 ronni = #dallas :ronni",
    ":ronni.tmi.twitch.tv 366 ronni #dallas :End of /NAMES list",
    "PING :tmi.twitch.tv",
    TWITCH_PRIVMSG, TWITCH_USERNOTICE, TWITCH_CLEARCHAT, TWITCH_ROOMSTATE, TWITCH_NOTICE,
]

# -- parse ---------------------------------------------------------------------------------------


def test_parse_twitch_privmsg():
    m = parse(TWITCH_PRIVMSG.encode())
    assert m.command == "PRIVMSG"
    assert m.params == ("#xqcow", "Kappa Keepo Kappa")
    assert m.source == "lurk_larry!lurk_larry@lurk_larry.tmi.twitch.tv"
    assert m.tags["badge-info"] == "subscriber/8"
    assert m.tags["emotes"] == "25:0-4,12-16/1902:6-10"
    assert m.tags["flags"] == "" and m.tags["user-type"] == ""
    assert m.tags["display-name"] == "Lurk_Larry"
    assert list(m.tags)[:3] == ["badge-info", "badges", "client-nonce"]   # order kept
    assert len(m.tags) == 17


def test_parse_twitch_usernotice_unescapes_tag_values():
    m = parse(TWITCH_USERNOTICE)
    assert m.command == "USERNOTICE" and m.params == ("#dallas", "Great stream -- keep it up!")
    assert m.tags["system-msg"] == "pixel_pat subscribed with Prime. They've subscribed for 6 months!"
    assert m.tags["msg-param-sub-plan-name"] == "Channel Subscription (dallas; the best)"
    assert m.tags["emotes"] == ""


def test_parse_client_reply_tags_and_server_lines():
    m = parse(TWITCH_REPLY)
    assert m.source is None
    assert m.tags == {"client-nonce": "9a1f0c7e", "reply-parent-msg-id": "b34ccfc7-4977-403a-8a94-33c6bac34fb8"}
    assert m.params == ("#dallas", "@ronni that was a great play")
    assert parse(":tmi.twitch.tv 001 ronni :Welcome, GLHF!") == Message("001", ("ronni", "Welcome, GLHF!"),
                                                                          {}, "tmi.twitch.tv")
    assert parse("PING :tmi.twitch.tv") == Message("PING", ("tmi.twitch.tv",))
    assert parse(":ronni!ronni@ronni.tmi.twitch.tv JOIN #dallas").params == ("#dallas",)
    assert parse(TWITCH_CLEARCHAT).tags["ban-duration"] == "350"


@pytest.mark.parametrize("line", TWITCH_SERVER_LINES + [TWITCH_REPLY])
def test_twitch_lines_round_trip(line):
    m = parse(line)
    assert parse(m.to_bytes()) == m
    # Twitch always writes the last param of these lines in the ':' form; trailing=True does too.
    # Message.to_bytes() only uses it where needed ('PING tmi.twitch.tv'), which means the same.
    last_is_trailing = line.endswith(" :" + m.params[-1])
    again = encode(m.command, *m.params, tags=m.tags, source=m.source, trailing=last_is_trailing)
    assert again == line.encode() + b"\r\n"


@pytest.mark.parametrize("line, expected", [
    ("privmsg #a :hi", Message("PRIVMSG", ("#a", "hi"))),                       # command upper-cased
    ("PRIVMSG #a hi", Message("PRIVMSG", ("#a", "hi"))),                        # no trailing
    ("PRIVMSG #a :", Message("PRIVMSG", ("#a", ""))),                           # empty trailing
    ("PRIVMSG #a ::-) ok", Message("PRIVMSG", ("#a", ":-) ok"))),               # trailing starts with ':'
    ("PRIVMSG   #a    :two  spaces ", Message("PRIVMSG", ("#a", "two  spaces "))),
    ("JOIN #chatrooms:1:2 x", Message("JOIN", ("#chatrooms:1:2", "x"))),        # ':' inside a middle param
    ("USER a 0 * :Real Name", Message("USER", ("a", "0", "*", "Real Name"))),
    ("QUIT", Message("QUIT")),
    ("@a;b=;c=1=2 CMD", Message("CMD", (), {"a": "", "b": "", "c": "1=2"})),   # no value, empty value, '='
    ("@a=1;a=2 CMD", Message("CMD", (), {"a": "2"})),                          # repeated key: last wins
    ("@a=1; CMD", Message("CMD", (), {"a": "1"})),                             # trailing ';' tolerated
    ("@user_type=mod CMD", Message("CMD", (), {"user_type": "mod"})),          # '_': old Twitch keys had it
    ("@+example.com/draft-x=y;+client-nonce=z CMD", Message("CMD", (), {"+example.com/draft-x": "y",
                                                                         "+client-nonce": "z"})),
    ("@a=1   :src   CMD  p", Message("CMD", ("p",), {"a": "1"}, "src")),
    ("PRIVMSG #a :tab\tand\u00a0nbsp stay", Message("PRIVMSG", ("#a", "tab\tand\u00a0nbsp stay"))),
    ("PRIVMSG #a :héllo 💜", Message("PRIVMSG", ("#a", "héllo 💜"))),
    ("PING x\r\n", Message("PING", ("x",))),                                  # a line ending is ignored
])
def test_parse_edge_cases(line, expected):
    assert parse(line) == expected
    assert parse(line.encode()) == expected


@pytest.mark.parametrize("line", [
    "", "\r\n", " ", "@", "@ PRIVMSG #a", "@a=b", "@a=b ", ":src", ":src ", ": PRIVMSG #a", "@a=1 :src",
    "12 x", "1234 x", "PRIV1 x", "PRIVMSG\x00 #a", "PRIVMSG #a :nul\x00byte", "PRIVMSG #a :cr\rinside",
    "PRIVMSG #a :lf\ninside", "@=v CMD", "@k%=v CMD", "@k!=v CMD", "@+ CMD", "@/a CMD", "@vendor/ CMD",
    "@a b=1 CMD", "ПРИВЕТ #a", "@a=1;bad key=2 CMD",
])
def test_parse_rejects_malformed(line):
    with pytest.raises(ParseError) as info:
        parse(line)
    assert isinstance(info.value, ValueError) and info.value.reason


def test_parse_rejects_invalid_utf8_bytes():
    with pytest.raises(ParseError, match="UTF-8"):
        parse(b"PRIVMSG #a :\xff\xfe")


# -- tag escaping --------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, escaped", [
    ("", ""), ("plain", "plain"), ("a;b", "a\\:b"), ("a b", "a\\sb"), ("back\\slash", "back\\\\slash"),
    ("cr\rlf\n", "cr\\rlf\\n"), ("\\s", "\\\\s"), (";; ", "\\:\\:\\s"), ("ünï💜", "ünï💜"),
])
def test_escape_known_values(raw, escaped):
    assert escape_tag_value(raw) == escaped
    assert unescape_tag_value(escaped) == raw


@pytest.mark.parametrize("escaped, raw", [
    ("a\\b", "ab"),          # unknown escape: the backslash goes
    ("\\x\\y", "xy"),
    ("end\\", "end"),        # trailing lone backslash dropped
    ("\\", ""),
    ("\\\\\\", "\\"),        # an escaped backslash, then a lone one
    ("a\\:\\s\\r\\n", "a; \r\n"),
])
def test_unescape_is_lenient(escaped, raw):
    assert unescape_tag_value(escaped) == raw


def test_escape_round_trips_random_values():
    # A seeded property test (hypothesis is not a dependency of this project).
    rng = random.Random(1507246572675)
    alphabet = ";: \\\r\nsnr=@é💜ab\t"
    for _ in range(2000):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12)))
        escaped = escape_tag_value(value)
        assert not any(c in escaped for c in "; \r\n")
        assert unescape_tag_value(escaped) == value
        line = encode("TAGMSG", tags={"+x": value, "k": value})
        assert line.count(b"\r\n") == 1
        assert parse(line).tags == {"+x": value, "k": value}


# -- encode --------------------------------------------------------------------------------------

@pytest.mark.parametrize("params, wire", [
    (("#a", "hi"), b"PRIVMSG #a hi\r\n"),
    (("#a", "hi there"), b"PRIVMSG #a :hi there\r\n"),
    (("#a", ""), b"PRIVMSG #a :\r\n"),
    (("#a", ":)"), b"PRIVMSG #a ::)\r\n"),
    (("#a", "a:b"), b"PRIVMSG #a a:b\r\n"),
    ((), b"PRIVMSG\r\n"),
])
def test_encode_uses_trailing_only_when_needed(params, wire):
    assert encode("PRIVMSG", *params) == wire
    assert parse(wire).params == params


def test_encode_trailing_forced_tags_source_and_case():
    assert encode("privmsg", "#a", "hi", trailing=True) == b"PRIVMSG #a :hi\r\n"
    line = encode("PRIVMSG", "#a", "hi", tags={"z": "1", "a": "x y;z", "e": ""}, source="n!n@n.tmi")
    assert line == b"@z=1;a=x\\sy\\:z;e= :n!n@n.tmi PRIVMSG #a hi\r\n"   # tags in the given order
    assert encode("PING", "x", tags={}) == b"PING x\r\n"
    m = Message("NOTICE", ("#a", "Slow down"), {"msg-id": "msg_ratelimit"}, "tmi.chatops")
    assert m.to_bytes() == encode("NOTICE", "#a", "Slow down", tags={"msg-id": "msg_ratelimit"},
                                  source="tmi.chatops")


@pytest.mark.parametrize("kwargs", [
    dict(params=("#a", "hi\r\nPRIVMSG #b :injected")),
    dict(params=("#a", "hi\nQUIT")),
    dict(params=("#a", "hi\rQUIT")),
    dict(params=("#a", "nul\x00")),
    dict(params=("#a\r\nQUIT", "x")),
    dict(params=("a b", "x")),               # middle param with a space
    dict(params=(":a", "x")),                # middle param starting with ':'
    dict(params=("", "x")),                  # empty middle param
    dict(tags={"a\r\nQUIT": "x"}),
    dict(tags={"a b": "x"}),
    dict(tags={"": "x"}),
    dict(tags={"k": "nul\x00"}),
    dict(source="evil\r\nQUIT"),
    dict(source="a b"),
    dict(source=""),
    dict(command="PRIV MSG"),
    dict(command="PRIVMSG\r\nQUIT"),
    dict(command=""),
    dict(command="1234"),
])
def test_encode_refuses_injection(kwargs):
    command = kwargs.pop("command", "PRIVMSG")
    params = kwargs.pop("params", ("#a", "hi"))
    with pytest.raises(ValueError):
        encode(command, *params, **kwargs)


def test_encode_escapes_cr_lf_in_tag_values_so_they_cannot_end_the_line():
    line = encode("PRIVMSG", "#a", "hi", tags={"display-name": "x\r\nPRIVMSG #b :injected"})
    assert line.count(b"\r\n") == 1 and line.endswith(b"\r\n")
    assert parse(line).tags["display-name"] == "x\r\nPRIVMSG #b :injected"
    with pytest.raises(TypeError):
        encode("PRIVMSG", "#a", "hi", tags={"tmi-sent-ts": 1642696567751})


# -- Framer --------------------------------------------------------------------------------------

def commands(items):
    return [i.command if isinstance(i, Message) else f"!{i.kind}" for i in items]


def test_framer_crlf_lf_and_empty_lines():
    f = Framer()
    out = f.feed(b"PING :a\r\nPING :b\n\r\n\n\nPING :c\r\n")
    assert [m.params for m in out] == [("a",), ("b",), ("c",)]
    assert f.buffered == 0


def test_framer_lines_split_across_feeds():
    data = (TWITCH_PRIVMSG + "\r\n" + TWITCH_USERNOTICE + "\n").encode()
    whole = Framer().feed(data)
    f = Framer()
    bytewise = [m for i in range(len(data)) for m in f.feed(data[i:i + 1])]
    assert bytewise == whole == [parse(TWITCH_PRIVMSG), parse(TWITCH_USERNOTICE)]
    f = Framer()
    assert f.feed(b"PRIVMSG #a :hel") == [] and f.buffered == 15
    assert f.feed(b"lo\r") == []
    assert f.feed(b"\nPING") == [Message("PRIVMSG", ("#a", "hello"))]
    assert f.feed(b" x\n") == [Message("PING", ("x",))]


def test_framer_utf8_character_split_across_feeds_is_fine():
    data = "PRIVMSG #a :💜 héllo\r\n".encode()
    cut = data.index(b"\xf0") + 2          # in the middle of the 4-byte emoji
    f = Framer()
    assert f.feed(data[:cut]) == []
    assert f.feed(data[cut:]) == [Message("PRIVMSG", ("#a", "💜 héllo"))]


def _line_of(rest_len: int, tags_len: int = 0) -> bytes:
    """A PRIVMSG whose tag section (with '@' and its space) is tags_len bytes and whose rest,
    without line ending, is rest_len bytes."""
    head = b"PRIVMSG #a :"
    rest = head + b"x" * (rest_len - len(head))
    if not tags_len:
        return rest
    return b"@k=" + b"v" * (tags_len - 4) + b" " + rest


@pytest.mark.parametrize("ending", [b"\r\n", b"\n"])
def test_line_limit_is_512_with_crlf(ending):
    ok = _line_of(MAX_LINE - 2)                  # 510 + CRLF = 512 bytes
    over = _line_of(MAX_LINE - 1)                # 511 + CRLF = 513 bytes
    assert len(ok + b"\r\n") == 512
    for chunk in (1, 7, 4096):
        f = Framer()
        data = ok + ending + over + ending + b"PING :after\r\n"
        out = [m for i in range(0, len(data), chunk) for m in f.feed(data[i:i + chunk])]
        assert commands(out) == ["PRIVMSG", "!too_long", "PING"], chunk
        assert out[1] == LineError("too_long", "PRIVMSG", out[1].detail)


def test_tag_limit_is_8191_including_at_and_space():
    ok = _line_of(MAX_LINE - 2, tags_len=MAX_TAGS)   # both parts at their maximum
    assert ok.index(b" ") + 1 == MAX_TAGS
    over_tags = _line_of(10 + len(b"PRIVMSG #a :"), tags_len=MAX_TAGS + 1)
    over_rest = _line_of(MAX_LINE - 1, tags_len=MAX_TAGS)
    for chunk in (1, 4096, 100_000):
        f = Framer()
        data = ok + b"\r\n" + over_tags + b"\r\n" + over_rest + b"\r\n" + b"PING :after\r\n"
        out = [m for i in range(0, len(data), chunk) for m in f.feed(data[i:i + chunk])]
        assert commands(out) == ["PRIVMSG", "!too_long", "!too_long", "PING"], chunk
        assert len(out[0].tags["k"]) == MAX_TAGS - 4
        assert out[2].command == "PRIVMSG"


@pytest.mark.parametrize("chunk", [1, 4096, 100_000])
@pytest.mark.parametrize("tagged", [False, True])
def test_100kb_line_without_newline_is_bounded_and_reported_once(chunk, tagged):
    f = Framer()
    data = (b"@" + b"a" * 100_000) if tagged else (b"PRIVMSG #a :" + b"x" * 100_000)
    out = []
    for i in range(0, len(data), chunk):
        out += f.feed(data[i:i + chunk])
        assert f.buffered <= MAX_TAGS + MAX_LINE
    assert commands(out) == ["!too_long"]
    assert out[0].command == ("" if tagged else "PRIVMSG")
    assert f.buffered == 0                           # the rest of that line is being thrown away
    assert f.feed(b"still the same line\r\nPING :alive\r\n") == [Message("PING", ("alive",))]


def test_100kb_line_in_one_feed_with_newline():
    f = Framer()
    out = f.feed(b"PING :a\r\nPRIVMSG #a :" + b"x" * 100_000 + b"\r\nPING :b\r\n")
    assert commands(out) == ["PING", "!too_long", "PING"]
    assert f.buffered == 0
    # The start of the line already buffered, the rest and its newline arriving at once.
    assert f.feed(b"PRIVMSG #a :") == [] and f.buffered == 12
    out = f.feed(b"x" * 100_000 + b"\nPING :c\n")
    assert out[0] == LineError("too_long", "PRIVMSG", out[0].detail) and commands(out) == ["!too_long", "PING"]


def test_framer_custom_limits():
    f = Framer(max_line=20, max_tags=10)
    assert commands(f.feed(b"PING :" + b"x" * 12 + b"\r\n")) == ["PING"]              # 18 + 2
    assert commands(f.feed(b"PING :" + b"x" * 13 + b"\r\n")) == ["!too_long"]
    assert commands(f.feed(b"@a=123456 PING :x\r\n")) == ["PING"]                     # 10 bytes of tags
    assert commands(f.feed(b"@a=1234567 PING :x\r\n")) == ["!too_long"]
    assert commands(f.feed(b"@a=12 PING\r\n")) == ["PING"]


@pytest.mark.parametrize("bad", [
    b"\xff\xfe", b"\xc0\xaf",              # invalid start bytes / an overlong '/'
    b"\xed\xa0\x80",                        # an encoded surrogate
    b"\xe2\x82",                            # a sequence cut short
    b"caf\xe9",                             # Latin-1, not UTF-8
])
def test_invalid_utf8_is_a_line_error_and_the_stream_goes_on(bad):
    f = Framer()
    out = f.feed(b"PRIVMSG #a :" + bad + b"\r\nPING :ok\r\n")
    assert out[0] == LineError("bad_utf8", "PRIVMSG", out[0].detail)
    assert out[1] == Message("PING", ("ok",))


def test_nul_and_bare_cr_are_malformed():
    out = Framer().feed(b"PRIVMSG #a :nul\x00here\r\nPRIVMSG #a :cr\rhere\r\nPING :ok\n")
    assert commands(out) == ["!malformed", "!malformed", "PING"]
    assert out[0].command == "PRIVMSG" and "NUL" in out[0].detail


def test_garbage_binary_never_raises():
    rng = random.Random(8191)
    f = Framer()
    for _ in range(300):
        blob = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 3000)))
        for item in f.feed(blob):
            assert isinstance(item, (Message, LineError))
            if isinstance(item, LineError):
                assert item.kind in ("too_long", "bad_utf8", "malformed")
        assert f.buffered <= MAX_TAGS + MAX_LINE
    f.feed(b"\n")
    assert f.feed(b"PING :ok\r\n") == [Message("PING", ("ok",))]


# -- ServerConnection ----------------------------------------------------------------------------

SERVER = "tmi.chatops"


def lines(conn: ServerConnection) -> list[bytes]:
    out = conn.lines_to_send()
    for line in out:       # whatever we send is one well-formed line that fits the limit
        assert line.endswith(b"\r\n") and line.count(b"\n") == 1 and len(line) <= MAX_LINE
        parse(line)
    return out


def replies(conn: ServerConnection) -> list[str]:
    return [parse(line).command for line in lines(conn)]


def registered(nick: str = "ronni") -> ServerConnection:
    conn = ServerConnection(SERVER)
    [req] = conn.receive_data(f"PASS oauth:abc\r\nNICK {nick}\r\n".encode())
    conn.accept_registration(req.nick)
    conn.lines_to_send()
    return conn


def test_ircv3_registration_flow():
    conn = ServerConnection(SERVER)
    assert conn.state == "new"
    assert conn.receive_data(b"CAP LS 302\r\n") == []
    assert lines(conn) == [b":tmi.chatops CAP * LS :twitch.tv/tags twitch.tv/commands twitch.tv/membership "
                           b"message-tags server-time echo-message cap-notify\r\n"]
    assert conn.receive_data(b"CAP REQ :twitch.tv/tags twitch.tv/commands\r\n") == []
    assert lines(conn) == [b":tmi.chatops CAP * ACK :twitch.tv/tags twitch.tv/commands\r\n"]
    # Negotiation is open: NICK/PASS/USER do not register yet.
    assert conn.receive_data(b"PASS oauth:abc123\r\nNICK Ronni\r\nUSER ronni 0 * :Ronni\r\n") == []
    assert conn.state == "new" and lines(conn) == []
    events = conn.receive_data(b"CAP END\r\n")
    assert events == [RegistrationRequest("ronni", "oauth:abc123", "ronni")]
    assert conn.state == "registering" and conn.nick is None
    # cap-notify comes with CAP LS 302 (IRCv3).
    assert conn.caps == frozenset({"twitch.tv/tags", "twitch.tv/commands", "cap-notify"})
    conn.accept_registration("ronni", motd=["Welcome to chatops.", "Be kind."])
    assert conn.state == "registered" and conn.nick == "ronni"
    out = [parse(line) for line in lines(conn)]
    assert [m.command for m in out] == ["001", "002", "003", "004", "005", "375", "372", "372", "376"]
    assert all(m.source == SERVER and m.params[0] == "ronni" for m in out)
    assert out[6].params[-1] == "- Welcome to chatops."
    isupport = out[4].params[1:-1]
    assert {"CHANTYPES=#", "NETWORK=chatops", "CASEMAPPING=ascii"} <= set(isupport)
    assert conn.receive_data(b"CAP LIST\r\n") == []
    assert lines(conn) == [b":tmi.chatops CAP ronni LIST :twitch.tv/tags twitch.tv/commands cap-notify\r\n"]


def test_twitch_client_pipelines_cap_req_pass_nick_join_without_cap_end():
    # What tmi.js-style clients send on connect: no CAP LS, no CAP END, no USER, JOIN right away.
    conn = ServerConnection(SERVER)
    events = conn.receive_data(b"CAP REQ :twitch.tv/tags twitch.tv/commands twitch.tv/membership\r\n"
                               b"PASS oauth:abc\r\nNICK ronni\r\nJOIN #Dallas\r\n")
    assert events == [RegistrationRequest("ronni", "oauth:abc", None), Join(("#dallas",))]
    assert replies(conn) == ["CAP"]          # ACK, and no 451 for the early JOIN
    conn.accept_registration("ronni")
    assert replies(conn) == ["001", "002", "003", "004", "005", "422"]


def test_justinfan_anonymous_has_no_password():
    conn = ServerConnection(SERVER)
    assert conn.receive_data(b"NICK justinfan12345\r\n") == [RegistrationRequest("justinfan12345", None, None)]
    assert "oauth" not in repr(RegistrationRequest("a", "oauth:secret", None))


def test_pass_nick_user_in_any_order_within_one_write():
    conn = ServerConnection(SERVER)
    events = conn.receive_data(b"NICK ronni\r\nUSER r 0 * :R\r\nPASS oauth:x\r\n")
    assert events == [RegistrationRequest("ronni", "oauth:x", "r")]
    # Split over writes, a USER after the request is simply too late, and harmless.
    conn = ServerConnection(SERVER)
    assert conn.receive_data(b"NICK ronni\r\n") == [RegistrationRequest("ronni", None, None)]
    assert conn.receive_data(b"USER r 0 * :R\r\n") == [] and lines(conn) == []


def test_accept_overrides_welcome_texts():
    conn = ServerConnection(SERVER)
    conn.receive_data(b"NICK ronni\r\n")
    conn.accept_registration("Ronni", welcome=["Welcome, GLHF!", "Your host is tmi.chatops"])
    out = [parse(line) for line in lines(conn)]
    assert out[0] == Message("001", ("ronni", "Welcome, GLHF!"), {}, SERVER)
    assert out[2].params[1] == "This server is rather new"


def test_reject_registration_closes():
    conn = ServerConnection(SERVER)
    conn.receive_data(b"PASS oauth:wrong\r\nNICK ronni\r\nJOIN #dallas\r\n")
    conn.reject_registration()
    assert lines(conn) == [b":tmi.chatops NOTICE * :Login authentication failed\r\n",
                           b":tmi.chatops 464 * :Password incorrect\r\n"]
    assert conn.state == "closed"
    assert conn.receive_data(b"PRIVMSG #dallas :hi\r\n") == [] and lines(conn) == []


def test_verdict_after_the_client_left_is_a_no_op_and_bad_states_raise():
    conn = ServerConnection(SERVER)
    assert conn.receive_data(b"NICK ronni\r\n") != []
    assert conn.receive_data(b"QUIT :bye\r\n") == [Quit("bye")]
    conn.accept_registration("ronni")
    conn.reject_registration()
    assert lines(conn) == []
    with pytest.raises(RuntimeError):
        ServerConnection(SERVER).accept_registration("ronni")
    with pytest.raises(RuntimeError):
        registered().reject_registration()


def test_commands_before_registration_get_451():
    conn = ServerConnection(SERVER)
    assert conn.receive_data(b"JOIN #a\r\nPRIVMSG #a :hi\r\nWHO #a\r\nFOO #a\r\n") == []
    assert replies(conn) == ["451", "451", "451", "451"]
    assert conn.errors["unknown_command"] == 1
    # During an open CAP LS negotiation a NICK is known but the client is still not registered.
    conn.receive_data(b"CAP LS\r\nNICK ronni\r\nJOIN #a\r\n")
    assert replies(conn) == ["CAP", "451"] and conn.state == "new"


def test_unknown_command_after_registration_gets_421():
    conn = registered()
    assert conn.receive_data(b"KNOCK #dallas\r\nsetname :Ronni\r\n") == []
    assert lines(conn) == [b":tmi.chatops 421 ronni KNOCK :Unknown command\r\n",
                           b":tmi.chatops 421 ronni SETNAME :Unknown command\r\n"]
    assert conn.errors["unknown_command"] == 2


@pytest.mark.parametrize("line, code", [
    (b"JOIN\r\n", "461"), (b"JOIN :\r\n", "461"), (b"PART\r\n", "461"),
    (b"PRIVMSG\r\n", "411"), (b"PRIVMSG #a\r\n", "412"), (b"PRIVMSG #a :\r\n", "412"),
    (b"CAP\r\n", "461"), (b"CAP REQ\r\n", "461"), (b"CAP FOO\r\n", "410"),
    (b"PING\r\n", "409"), (b"PASS x\r\n", "462"), (b"USER a 0 * :b\r\n", "462"),
])
def test_error_numerics_after_registration(line, code):
    conn = registered()
    assert conn.receive_data(line) == []
    [reply] = [parse(x) for x in lines(conn)]
    assert reply.command == code and reply.source == SERVER and reply.params[0] == "ronni"


@pytest.mark.parametrize("line, code", [
    (b"NICK\r\n", "431"), (b"NICK :\r\n", "431"), (b"NICK bad-nick!\r\n", "432"),
    (b"NICK " + b"a" * 26 + b"\r\n", "432"), (b"NICK :two words\r\n", "432"), (b"NICK n\xc3\xa9\r\n", "432"),
    (b"PASS\r\n", "461"), (b"USER a\r\n", "461"),
])
def test_error_numerics_before_registration(line, code):
    conn = ServerConnection(SERVER)
    assert conn.receive_data(line) == []
    [reply] = [parse(x) for x in lines(conn)]
    assert reply.command == code and reply.params[0] == "*"
    assert conn.state == "new"


def test_nick_is_lower_cased_and_validated():
    conn = ServerConnection(SERVER)
    assert conn.receive_data(b"NICK :two words\r\nNICK Lurk_Larry99\r\n") == [
        RegistrationRequest("lurk_larry99", None, None)]
    assert lines(conn) == [b":tmi.chatops 432 * two_words :Erroneous nickname\r\n"]


def test_cap_req_is_all_or_nothing():
    conn = ServerConnection(SERVER)
    conn.receive_data(b"CAP REQ :twitch.tv/tags sasl\r\n")
    assert lines(conn) == [b":tmi.chatops CAP * NAK :twitch.tv/tags sasl\r\n"]
    assert conn.caps == frozenset()
    conn.receive_data(b"CAP REQ :twitch.tv/tags echo-message\r\nCAP REQ :-echo-message\r\n")
    assert replies(conn) == ["CAP", "CAP"]
    assert conn.caps == frozenset({"twitch.tv/tags"})
    limited = ServerConnection(SERVER, caps=["twitch.tv/tags"])
    limited.receive_data(b"CAP LS\r\nCAP REQ :echo-message\r\n")
    assert [parse(x).params for x in lines(limited)] == [("*", "LS", "twitch.tv/tags"),
                                                         ("*", "NAK", "echo-message")]


def test_too_long_gets_417_and_the_connection_goes_on():
    conn = registered()
    events = conn.receive_data(b"PRIVMSG #dallas :" + b"x" * 600 + b"\r\nPRIVMSG #dallas :ok\r\n")
    assert events == [Privmsg("#dallas", "ok", {})]
    assert lines(conn) == [b":tmi.chatops 417 ronni :Input line was too long\r\n"]
    assert conn.errors["too_long"] == 1 and conn.state == "registered"


def test_bad_utf8_gets_a_notice_and_malformed_is_silent():
    conn = registered()
    events = conn.receive_data(b"PRIVMSG #dallas :caf\xe9\r\n@=x PRIVMSG #dallas :a\r\n\x00\x01\x02\r\n"
                               b"PRIVMSG #dallas :fine\r\n")
    assert events == [Privmsg("#dallas", "fine", {})]
    assert lines(conn) == [b":tmi.chatops NOTICE ronni :Invalid UTF-8 in your message; it was dropped\r\n"]
    assert conn.errors == {"bad_utf8": 1, "malformed": 2}


def test_ping_pong_in_any_state():
    conn = ServerConnection(SERVER)
    conn.receive_data(b"PING :tmi.twitch.tv\r\n")
    assert lines(conn) == [b":tmi.chatops PONG tmi.chatops :tmi.twitch.tv\r\n"]
    conn = registered()
    assert conn.receive_data(b"PING x\r\nPONG :tok-1\r\nPONG tmi.chatops :tok-2\r\n") == [Pong("tok-1"), Pong("tok-2")]
    assert lines(conn) == [b":tmi.chatops PONG tmi.chatops :x\r\n"]
    conn.ping("tmi.chatops")
    assert lines(conn) == [b"PING :tmi.chatops\r\n"]


def test_quit_closes_and_ignores_the_rest():
    conn = registered()
    assert conn.receive_data(b"PRIVMSG #a :bye all\r\nQUIT :see you\r\nPRIVMSG #a :ghost\r\n") == [
        Privmsg("#a", "bye all", {}), Quit("see you")]
    assert conn.state == "closed"
    assert conn.receive_data(b"PING :x\r\n") == [] and lines(conn) == []
    assert registered().receive_data(b"QUIT\r\n") == [Quit("")]


def test_join_part_channel_lists():
    conn = registered()
    events = conn.receive_data(b"JOIN #Dallas,,#xqcow,bogus,#dallas,#\r\nJOIN 0\r\nPART #xqcow,#Dallas :bye\r\n")
    assert events == [Join(("#dallas", "#xqcow")), Part(("#xqcow", "#dallas"), "bye")]
    assert lines(conn) == [b":tmi.chatops 403 ronni bogus :No such channel\r\n",
                           b":tmi.chatops 403 ronni # :No such channel\r\n",
                           b":tmi.chatops 403 ronni 0 :No such channel\r\n"]
    conn.receive_data(b"JOIN :#a b,#" + b"c" * 60 + b"\r\n")
    assert [parse(x).params[1] for x in lines(conn)] == ["#a_b", "#" + "c" * 60]


def test_privmsg_keeps_client_tags_and_lowers_the_target():
    conn = registered()
    events = conn.receive_data(TWITCH_REPLY.replace("#dallas", "#Dallas").encode() + b"\r\n"
                               b"@+client-nonce=n\\s1 PRIVMSG #dallas :hi\r\n")
    assert events == [
        Privmsg("#dallas", "@ronni that was a great play",
                {"client-nonce": "9a1f0c7e", "reply-parent-msg-id": "b34ccfc7-4977-403a-8a94-33c6bac34fb8"}),
        Privmsg("#dallas", "hi", {"+client-nonce": "n 1"}),
    ]


def test_numeric_returns_bytes_without_queueing():
    conn = ServerConnection(SERVER)
    assert conn.numeric("433", "justinfan1", "Nickname is already in use") == \
        b":tmi.chatops 433 * justinfan1 :Nickname is already in use\r\n"
    assert conn.lines_to_send() == []
    conn = registered()
    assert conn.numeric("353", "=", "#dallas", "ronni") == b":tmi.chatops 353 ronni = #dallas :ronni\r\n"
    with pytest.raises(ValueError):
        conn.numeric("4333", "x")


def test_lines_to_send_drains_and_close_is_idempotent():
    conn = ServerConnection(SERVER)
    conn.ping("a")
    assert conn.lines_to_send() == [b"PING :a\r\n"]
    assert conn.lines_to_send() == []
    conn.close()
    conn.close()
    assert conn.state == "closed" and conn.receive_data(b"NICK x\r\n") == []


def test_feeding_a_session_byte_by_byte_gives_the_same_events():
    data = (b"CAP LS 302\r\nCAP REQ :twitch.tv/tags\r\nPASS oauth:abc\r\nNICK ronni\r\nCAP END\r\n")
    conn = ServerConnection(SERVER)
    events = [e for i in range(len(data)) for e in conn.receive_data(data[i:i + 1])]
    assert events == [RegistrationRequest("ronni", "oauth:abc", None)]
    assert irc.MAX_LINE == 512 and irc.MAX_TAGS == 8191
