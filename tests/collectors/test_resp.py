"""collectors/resp.py: hiredis behind the framing checks, on the recorded Redis replies, on hostile
bytes, and over a real loopback socket whose other end misbehaves on purpose. The reader it
replaced (a pure-Python RESP2 reader, kept below as `reference`) is the definition the new one
must meet on every recorded reply."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from collectors import resp
from collectors.resp import Conn, Framer, ProtocolError, RedisError, encode_command, parse_resp

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "redis"
RESP_FIXTURES = sorted(p.name for p in FIX.glob("*.resp"))


# -- the reader this module replaced, over bytes only -----------------------------------------

class _Reference:
    def __init__(self, data: bytes):
        self.buf, self.pos = data, 0

    def line(self) -> bytes:
        end = self.buf.find(b"\r\n", self.pos)
        if end < 0:
            if len(self.buf) - self.pos > 64 * 1024:
                raise ProtocolError("reply line longer than 64 KiB")
            raise ProtocolError("truncated reply")
        out, self.pos = self.buf[self.pos:end], end + 2
        return out

    def exact(self, n: int) -> bytes:
        if len(self.buf) - self.pos < n + 2:
            raise ProtocolError("truncated reply")
        out = self.buf[self.pos:self.pos + n]
        if self.buf[self.pos + n:self.pos + n + 2] != b"\r\n":
            raise ProtocolError("bulk string not terminated by CRLF")
        self.pos += n + 2
        return out

    def reply(self) -> Any:
        head = self.line()
        if not head:
            raise ProtocolError("empty reply line")
        kind, rest = head[:1], head[1:]
        if kind == b"+":
            return rest.decode("utf-8", "replace")
        if kind == b"-":
            return RedisError(rest.decode("utf-8", "replace"))
        if kind in (b":", b"$", b"*"):
            try:
                n = int(rest)
            except ValueError:
                raise ProtocolError("bad length") from None
            if kind == b":":
                return n
            if n < 0:
                return None
            if kind == b"$":
                if n > 64 * 1024 * 1024:
                    raise ProtocolError("bulk too large")
                return self.exact(n)
            if n > 10_000_000:
                raise ProtocolError("array too large")
            return [self.reply() for _ in range(n)]
        raise ProtocolError("not RESP")


def reference(data: bytes) -> Any:
    return _Reference(data).reply()


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, RedisError) or isinstance(b, RedisError):
        return type(a) is type(b) and str(a) == str(b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _outcome(fn, data: bytes) -> Any:
    try:
        return fn(data)
    except ProtocolError:
        return ProtocolError


# -- recorded replies ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", RESP_FIXTURES)
def test_every_recorded_reply_decodes_as_the_old_reader_did(name):
    data = (FIX / name).read_bytes()
    assert _same(parse_resp(data), reference(data)), name


def test_bulk_replies_of_the_recordings_decode_as_before():
    # INFO and CLIENT LIST arrive as bulk strings; the recordings hold their payloads.
    for name in ("info.txt", "client_list.txt", "client_list_evil.txt", "info_evil.txt"):
        payload = (FIX / name).read_bytes()
        data = b"$%d\r\n%s\r\n" % (len(payload), payload)
        assert parse_resp(data) == reference(data) == payload


# Replies both readers must agree on: the value, or both refuse with ProtocolError.
AGREED = [
    b"+PONG\r\n", b"+\r\n", b"-ERR unknown command 'LATENCY'\r\n", b"-ERR bad \xff\xfe utf-8\r\n",
    b":0\r\n", b":-12\r\n", b"$-1\r\n", b"*-1\r\n", b"*0\r\n", b"$0\r\n\r\n",
    b"*3\r\n+OK\r\n*2\r\n+a\r\n-ERR x\r\n$3\r\n\x00\xff\n\r\n",
    b"*2\r\n*1\r\n*1\r\n+deep\r\n:7\r\n",
    b"$5\r\nabcdefg\r\n", b"$5\r\nabcde\n\n", b"$5\r\nabc", b"", b"\r\n", b"HTTP/1.1 400 Bad Request\r\n",
    b":abc\r\n", b"$abc\r\n", b"*abc\r\n", b"*2\r\n:1\r\n", b"*1\r\n",
    b"$99999999999\r\n", b"*4000000000\r\n", b"*10000001\r\n", b"$67108865\r\n",
    b"+" + b"x" * 70_000, b"x" * 100, b",1.5\r\n", b"_\r\n", b"%1\r\n+a\r\n+b\r\n", b"#t\r\n",
]


@pytest.mark.parametrize("data", AGREED, ids=lambda d: repr(d[:24]))
def test_hostile_replies_as_the_old_reader(data):
    new, old = _outcome(parse_resp, data), _outcome(reference, data)
    assert new is ProtocolError if old is ProtocolError else _same(new, old), (new, old)


# Where the new reader is stricter than the old one, on purpose: RESP2 lengths are digits (the
# old reader took whatever int() takes), -1 is the only negative length, a simple string holds no
# CR or LF (hiredis refuses them too), and a recording holds one reply and nothing after it.
STRICTER = [b"$ 3\r\nabc\r\n", b"$+3\r\nabc\r\n", b":1_000\r\n", b"$-5\r\n", b"*-2\r\n",
            b"+OK\nX\r\n", b"+OK\r\ntrailing", b":1\r\n:2\r\n"]


@pytest.mark.parametrize("data", STRICTER, ids=lambda d: repr(d[:24]))
def test_stricter_than_the_old_reader(data):
    assert _outcome(reference, data) is not ProtocolError
    with pytest.raises(ProtocolError):
        parse_resp(data)


def test_simple_strings_are_text_bulk_strings_bytes():
    assert parse_resp(b"*4\r\n+OK\r\n$2\r\nOK\r\n*1\r\n+in\r\n:1\r\n") == ["OK", b"OK", ["in"], 1]
    err = parse_resp(b"*1\r\n-WRONGTYPE no\r\n")[0]
    assert isinstance(err, RedisError) and str(err) == "WRONGTYPE no"


def test_framer_over_any_chunking_finds_the_same_replies():
    data = b"".join((FIX / n).read_bytes() for n in RESP_FIXTURES) + b"+OK\r\n$3\r\na\r\n\r\n*1\r\n+x\r\n"
    whole = Framer()
    whole.feed(data)
    assert not whole.partial and len(whole.done) == len(RESP_FIXTURES) + 3
    for step in (1, 2, 3, 7, 64):
        f = Framer()
        for i in range(0, len(data), step):
            f.feed(data, i, min(i + step, len(data)))
        assert list(f.done) == list(whole.done) and not f.partial, step
    assert list(whole.done)[-3:] == [[()], None, [(0,)]]


def test_limits_refuse_before_anything_is_buffered():
    f = Framer()
    with pytest.raises(ProtocolError, match="implausible"):
        f.feed(b"*2\r\n$1\r\nx\r\n*2000000000\r\n")
    with pytest.raises(ProtocolError, match="exceeds"):
        Framer().feed(b"*1\r\n$%d\r\n" % (resp.MAX_BULK + 1))
    with pytest.raises(ProtocolError, match="64 KiB"):
        Framer().feed(b"+" + b"y" * (resp.MAX_LINE + 1))
    with pytest.raises(ProtocolError, match="CRLF"):
        Framer().feed(b"$3\r\nabcXY")


# -- over a socket --------------------------------------------------------------------------------

class _Server:
    """A loopback TCP peer that answers every connection with the given bytes, in pieces."""

    def __init__(self, reply: bytes, piece: int = 1 << 16, close: bool = True):
        self.reply, self.piece, self.close = reply, piece, close
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.recv(65536)
            for i in range(0, len(self.reply), self.piece):
                try:
                    conn.sendall(self.reply[i:i + self.piece])
                except OSError:
                    return
            if not self.close:
                time.sleep(2)

    def __enter__(self) -> "_Server":
        return self

    def __exit__(self, *exc) -> None:
        self.thread.join(5)
        self.sock.close()


def test_a_big_bulk_in_small_pieces():
    payload = bytes(range(256)) * 12_000 + b"\r\n$9\r\n"           # 3 MB, with RESP inside it
    with _Server(b"$%d\r\n%s\r\n+OK\r\n" % (len(payload), payload), piece=4093) as srv:
        with Conn("127.0.0.1", srv.port, timeout=5) as c:
            c.sock.sendall(encode_command("PING"))
            assert c._reply() == payload
            assert c._reply() == "OK"


@pytest.mark.parametrize("reply,match", [
    (b"*4000000000\r\n", "implausible"),
    (b"$99999999999\r\n", "exceeds"),
    (b"+" + b"z" * 200_000, "64 KiB"),
    (b"$10\r\nabc", "middle of a reply"),
    (b"", "closed the connection"),
    (b"SSH-2.0-OpenSSH_9.2\r\n", "not a RESP reply"),
])
def test_hostile_server(reply, match):
    with _Server(reply) as srv:
        with Conn("127.0.0.1", srv.port, timeout=5) as c:
            t0 = time.monotonic()
            with pytest.raises(ProtocolError, match=match):
                c.call("PING")
            assert time.monotonic() - t0 < 3
            with pytest.raises(ProtocolError, match="unusable"):
                c.call("PING")


def test_a_silent_server_times_out():
    with _Server(b"", close=False) as srv:
        with Conn("127.0.0.1", srv.port, timeout=0.3) as c:
            with pytest.raises(TimeoutError):
                c.call("PING")


def test_error_replies_raise_from_call_and_stay_in_place_in_a_pipeline():
    with _Server(b"-ERR no\r\n+OK\r\n:3\r\n") as srv:
        with Conn("127.0.0.1", srv.port, timeout=5) as c:
            got = c.pipeline([("X",), ("SET", "a", "b"), ("INCR", "c")])
            assert isinstance(got[0], RedisError) and got[1:] == ["OK", 3]
    with _Server(b"-ERR no\r\n") as srv:
        with Conn("127.0.0.1", srv.port, timeout=5) as c:
            with pytest.raises(RedisError, match="no"):
                c.call("X")
