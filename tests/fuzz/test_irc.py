"""Properties of the sans-I/O IRC layer (chat/irc.py), the first code hostile clients reach:
`parse` fails only with ParseError, `encode` then `parse` gives the message back, the Framer finds
the same lines however the stream is cut and refuses oversized ones, and a ServerConnection fed
any bytes never raises and only ever sends well-formed lines."""

from __future__ import annotations

import string

from hypothesis import assume, given
from hypothesis import strategies as st

from chat.irc import (
    MAX_LINE,
    MAX_TAGS,
    Framer,
    LineError,
    Message,
    ParseError,
    ServerConnection,
    encode,
    escape_tag_value,
    parse,
)
from tests.fuzz.cases import counted

# Characters the parser treats specially, mixed with ordinary ones, so generated lines hit the
# grammar's corners far more often than uniformly random text would.
IRCISH = st.lists(st.sampled_from(list("@:;= \\/+-_#!.,\r\n\0\x01\taZ09é€") + ["PRIVMSG", "JOIN", "001"]),
                  max_size=60).map("".join)

_NO_BREAK = st.characters(blacklist_characters="\r\n\0", blacklist_categories=("Cs",))
_key_name = st.text(string.ascii_letters + string.digits + "-_", min_size=1, max_size=12)
_vendor = st.text(string.ascii_letters + string.digits + "-._", min_size=1, max_size=12)
tag_keys = st.builds(lambda plus, vendor, name: ("+" if plus else "") + (f"{vendor}/" if vendor else "") + name,
                     st.booleans(), st.none() | _vendor, _key_name)
tag_values = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=30)
commands = st.text(string.ascii_letters, min_size=1, max_size=10) | st.text(string.digits, min_size=3, max_size=3)
middles = st.text(_NO_BREAK, min_size=1, max_size=20).filter(lambda p: " " not in p and p[0] != ":")
lasts = st.text(_NO_BREAK, max_size=40)
sources = st.text(_NO_BREAK, min_size=1, max_size=30).filter(lambda s: " " not in s)


@st.composite
def messages(draw) -> Message:
    params = tuple(draw(st.lists(middles, max_size=4)))
    if draw(st.booleans()):
        params += (draw(lasts),)
    return Message(draw(commands).upper(), params, draw(st.dictionaries(tag_keys, tag_values, max_size=4)),
                   draw(st.none() | sources))


@given(st.binary(max_size=300) | IRCISH)
@counted
def test_parse_raises_only_parse_error(line):
    try:
        msg = parse(line)
    except ParseError as exc:
        assert exc.reason
        return
    assert msg.command and msg.command == msg.command.upper()
    assert all(isinstance(p, str) for p in msg.params)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in msg.tags.items())


@given(IRCISH | st.binary(max_size=120))
@counted
def test_what_parses_encodes_back_to_itself(line):
    try:
        msg = parse(line)
    except ParseError:
        return
    assert parse(msg.to_bytes()) == msg


@given(messages(), st.booleans())
@counted
def test_encode_then_parse_gives_the_message_back(msg, trailing):
    line = encode(msg.command, *msg.params, tags=msg.tags, source=msg.source, trailing=trailing)
    assert line.endswith(b"\r\n") and line.count(b"\n") == 1
    assert parse(line) == msg


# Whole lines: one newline each, at the end.
lines = st.one_of(messages().map(Message.to_bytes),
                  IRCISH.map(lambda s: s.replace("\n", "").encode() + b"\n"),
                  st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"") + b"\r\n"))


@given(st.lists(lines, max_size=12), st.lists(st.integers(0, 5000), max_size=8))
@counted
def test_framer_finds_the_same_lines_however_the_stream_is_cut(stream, cuts):
    data = b"".join(stream)
    whole = Framer().feed(data)
    framer, out, prev = Framer(), [], 0
    for cut in sorted({c % (len(data) + 1) for c in cuts}) + [len(data)]:
        out += framer.feed(data[prev:cut])
        prev = cut
        assert framer.buffered <= MAX_TAGS + MAX_LINE
    assert out == whole
    # Framing a stream is framing each of its lines alone.
    assert whole == [item for line in stream for item in Framer().feed(line)]


@given(st.integers(MAX_LINE - 1, 3 * (MAX_TAGS + MAX_LINE)), st.sampled_from([b"\r\n", b"\n"]),
       st.integers(1, 4096), messages())
@counted
def test_oversized_lines_are_refused_and_the_next_line_still_parses(size, ending, chunk, after):
    body = b"PRIVMSG #r :" + b"x" * size
    assume(len(body) + 2 > MAX_LINE)
    data = body + ending + after.to_bytes()
    framer, out = Framer(), []
    for i in range(0, len(data), chunk):
        out += framer.feed(data[i:i + chunk])
        assert framer.buffered <= MAX_TAGS + MAX_LINE
    assert len(out) == 2, out
    assert isinstance(out[0], LineError) and out[0].kind == "too_long" and out[0].command == "PRIVMSG"
    assert out[1] == after


@given(st.lists(st.binary(max_size=200) | lines | IRCISH.map(str.encode),
                max_size=10))
@counted
def test_a_server_connection_survives_any_bytes(chunks):
    conn = ServerConnection("edge.test")
    for chunk in chunks:
        conn.receive_data(chunk)
        if conn.state == "registering":
            conn.accept_registration(conn.nick or "someone")
    for line in conn.lines_to_send():
        assert line.endswith(b"\r\n") and line.count(b"\n") == 1
        parse(line)


_tallied_lookalikes = st.sampled_from(["id", "client-nonce", "tmi-sent-ts", "room-id", "target-msg-id",
                                       "user-id", "xid", "id-x", "+client-nonce"])


@given(st.lists(st.tuples(_tallied_lookalikes | tag_keys, tag_values), min_size=1, max_size=8),
       sources, st.lists(middles, min_size=1, max_size=2), lasts)
@counted
def test_the_loadgens_delivery_reader_agrees_with_parse(pairs, source, middle, last):
    """chat.loadgen.parse_line reads only the tallied tags of a PRIVMSG: whatever the other tags,
    lookalike keys, repeats and escapes, those it reads are what irc.parse reads, and so is the source."""
    from chat import loadgen
    section = ";".join(f"{k}={escape_tag_value(v)}" for k, v in pairs)
    line = f"@{section} :{source} PRIVMSG {' '.join(middle)} :{last}"
    want = parse(line)
    got = loadgen.parse_line(line)
    assert got.command == want.command == "PRIVMSG"
    assert got.source == want.source
    assert got.tags == {k: want.tags[k] for k in loadgen.TALLIED_TAGS if k in want.tags}
