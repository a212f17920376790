"""Bounds on the chat path, against a real cluster (`chatops up`: HAProxy, edge, clue, exchange,
Redis) whose cluster file sets them small: rooms per connection, JOIN and PRIVMSG rates checked by
the edge before any clue work, the input held while a JOIN is pending, the registration timeout,
the edge's queue to a stalled clue, and HAProxy's per-source connection limit.

Each test connects from its own loopback source address, so the per-source limit (4 here) never
counts one test's connections against another's."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
import websockets

from tests.conftest import chatops, cluster_up, free_subnet, small_cluster, wait_for, write_cluster

MAX_ROOMS = 3
JOINS = 6                 # per minute: the test never waits for a refill
PRIVMSGS = 10             # per minute
PENDING_BYTES = 8703      # the smallest allowed: one full line with tags
CLUE_QUEUE = 5
PER_SOURCE = 4


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    subnet = free_subnet()
    doc = small_cluster(subnet)
    doc["clusters"]["main"]["services"] = {
        "edge": {"max_rooms_per_connection": MAX_ROOMS, "join_rate": {"count": JOINS, "per": "60s"},
                 "privmsg_rate": {"count": PRIVMSGS, "per": "60s"}, "max_pending_bytes": PENDING_BYTES,
                 "registration_timeout": "1s"},
        # One connection to clue, and a timeout longer than any test: a stalled request stays in flight.
        "clue": {"client": {"pool_size": 1, "max_pending": CLUE_QUEUE, "timeout": "20s"}},
        "exchange": {"timeout": "5s"},
    }
    doc["haproxy"]["edge_maxconn_per_source"] = PER_SOURCE
    config = write_cluster(tmp_path_factory.mktemp("bounds") / "cluster.yaml", doc)
    run = Path(tempfile.mkdtemp(prefix="co-", dir="/tmp"))
    with cluster_up(config, run) as c:
        c.subnet = subnet
        c.address = f"{subnet}.1"
        yield c


class Conn:
    """A raw IRC connection through the cluster's frontend, from `source`."""

    def __init__(self, c, source: str, port: int = 6667):
        self.sock = socket.create_connection((c.address, port), timeout=5, source_address=(f"{c.subnet}.{source}", 0))
        self.buf = b""
        self.lines: list[str] = []

    def send(self, text: str | bytes) -> None:
        self.sock.sendall(text.encode() if isinstance(text, str) else text)

    def _read(self, deadline: float) -> bool:
        """Read once; False at end of stream."""
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            return True
        except ConnectionResetError:
            return False
        if not chunk:
            return False
        self.buf += chunk
        *done, self.buf = self.buf.split(b"\r\n")
        self.lines.extend(d.decode(errors="replace") for d in done)
        return True

    def until(self, pattern: str, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for ln in self.lines[seen:]:
                if re.search(pattern, ln):
                    return ln
            seen = len(self.lines)
            if time.monotonic() >= deadline or not self._read(deadline):
                raise AssertionError(f"no line matching {pattern!r}; got {self.lines[-10:]}")

    def closed_within(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._read(deadline):
                return True
        return False

    def matching(self, pattern: str) -> list[str]:
        return [ln for ln in self.lines if re.search(pattern, ln)]

    def count(self, pattern: str, n: int, timeout: float = 5.0) -> list[str]:
        """Read until `n` lines match `pattern`; those lines."""
        deadline = time.monotonic() + timeout
        while len(found := self.matching(pattern)) < n:
            if time.monotonic() >= deadline or not self._read(deadline):
                raise AssertionError(f"{len(found)} lines matching {pattern!r}, not {n}; got {self.lines[-10:]}")
        return found

    def close(self) -> None:
        self.sock.close()


@contextmanager
def connected(c, source: str, nick: str, password: str | None = None):
    conn = Conn(c, source)
    try:
        conn.send(f"CAP REQ :twitch.tv/tags twitch.tv/commands\r\n{f'PASS {password}' + chr(13) + chr(10) if password else ''}"
                  f"NICK {nick}\r\n")
        conn.until(r" 376 ")
        yield conn
    finally:
        conn.close()


def metric(c, port: int, name: str, labels: str = "") -> float:
    text = urllib.request.urlopen(f"http://{c.address}:{port}/metrics", timeout=5).read().decode()
    series = f"{name}{{{labels}}}" if labels else name
    return sum(float(ln.split()[-1]) for ln in text.splitlines() if ln.split(" ")[0] == series)


def add_user(c, name: str) -> str:
    result = chatops("users", "add", name, "--config", str(c.config), "--run-dir", str(c.run))
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@contextmanager
def stopped(c, name: str):
    """Process `name` of the cluster frozen (SIGSTOP) for the block: a peer that accepts
    connections and never answers."""
    pid = c.pid_of(name)
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_a_connection_is_refused_rooms_past_max_rooms_per_connection(live):
    with connected(live, "51", "justinfan5101") as conn:
        for room in ("lobby", "rooms_a", "rooms_b"):
            conn.send(f"JOIN #{room}\r\n")
            conn.until(rf" 366 justinfan5101 #{room} ")
        conn.send("JOIN #rooms_c,#rooms_d\r\n")
        assert conn.until(r" 405 justinfan5101 #rooms_c ").endswith(":You have joined too many channels")
        conn.until(r" 405 justinfan5101 #rooms_d ")
        # Refused, not dropped: a PART frees a place.
        conn.send("PART #rooms_a\r\nJOIN #rooms_c\r\nPING :still-here\r\n")
        conn.until(r" 366 justinfan5101 #rooms_c ")
        conn.until(r"PONG .*still-here")
        assert not conn.matching(r"JOIN #rooms_d")


def test_a_join_flood_is_refused_with_a_notice_before_any_work(live):
    before = metric(live, 17080, "chat_edge_limited_total", 'limit="join_rate"')
    with connected(live, "52", "justinfan5202") as conn:
        for i in range(JOINS):
            conn.send(f"JOIN #flood_{i}\r\nPART #flood_{i}\r\n")
            conn.until(rf" 366 justinfan5202 #flood_{i} ")
        conn.send("JOIN #flood_x,#flood_y\r\nPING :after\r\n")
        conn.until(r"PONG .*after")
        refused = conn.matching(r"NOTICE #flood_[xy] ")
        assert len(refused) == 2 and all("msg-id=join_ratelimit" in ln for ln in refused), conn.lines[-5:]
        assert "joining rooms too quickly" in refused[0]
        assert not conn.matching(r" 366 justinfan5202 #flood_[xy] ")
    assert metric(live, 17080, "chat_edge_limited_total", 'limit="join_rate"') == before + 2


def test_a_privmsg_flood_is_refused_by_the_edge_and_never_reaches_clue(live):
    token = add_user(live, "flooder")
    with connected(live, "53", "flooder", token) as conn:
        conn.send("CAP REQ :echo-message\r\nJOIN #lobby\r\n")
        conn.until(r" 366 flooder #lobby ")
        at_edge = metric(live, 17080, "chat_edge_messages_received_total")
        at_clue = metric(live, 19000, "chat_clue_messages_total", 'result="accepted"')
        for i in range(PRIVMSGS + 5):
            # One line a write: a burst in one loop turn would also meet the small clue queue here.
            conn.send(f"PRIVMSG #lobby :flood {i}\r\n")
            time.sleep(0.02)
        conn.until(rf"PRIVMSG #lobby :flood {PRIVMSGS - 1}$")          # the last one allowed, echoed
        notices = conn.count("NOTICE #lobby", 5)
        assert len(notices) == 5 and all(ln.startswith("@msg-id=msg_ratelimit ") for ln in notices), notices
        assert notices[0].endswith(":Your message was not sent because you are sending messages too quickly.")
        assert not conn.matching(rf"PRIVMSG #lobby :flood {PRIVMSGS}$")
    # Exactly the allowed ten went to clue: the edge refused the rest before asking.
    assert metric(live, 17080, "chat_edge_messages_received_total") == at_edge + PRIVMSGS
    assert metric(live, 19000, "chat_clue_messages_total", 'result="accepted"') == at_clue + PRIVMSGS
    assert metric(live, 17080, "chat_edge_limited_total", 'limit="privmsg_rate"') >= 5


def test_messages_to_rooms_nobody_holds_here_share_one_sent_log_entry(live):
    """The edge's "Message successfully sent" log kept one entry per room name a sender gave, joined
    or not, so naming ever new rooms grew it without limit; rooms the edge holds no member of now
    share one entry, logged as one line."""
    token = add_user(live, "wanderer")
    rooms = [f"nowhere{i}" for i in range(8)]
    log = live.run / "logs" / "edge-chat1.log"
    with connected(live, "57", "wanderer", token) as conn:
        for room in rooms:
            conn.send(f"PRIVMSG #{room} :anyone here?\r\n")
            time.sleep(0.02)
        # Nobody is in these rooms, so nothing is echoed: the edge's log is where clue's answers show.
        text = wait_for(lambda: (t := log.read_text(errors="replace")) and
                        "Message successfully sent to rooms with no member on this edge" in t and t,
                        10, what="the edge's sent log line")
        assert not conn.matching("NOTICE")
    assert not [r for r in rooms if f"Message successfully sent to #{r}" in text]


def test_input_held_behind_a_pending_join_is_bounded(live):
    with connected(live, "54", "justinfan5404") as conn:
        # A JOIN of a new room waits for the exchange to hear of it; frozen, it does not answer.
        with stopped(live, "exchange-chat1"):
            conn.send("JOIN #pending_room\r\n")
            time.sleep(0.3)
            line = "PRIVMSG #pending_room :" + "x" * 480 + "\r\n"
            for _ in range(PENDING_BYTES // len(line) + 2):
                conn.send(line)
            error = conn.until(r"^ERROR ")
            assert error == (f"ERROR :Closing Link: justinfan5404 (sent over {PENDING_BYTES} bytes while "
                             "login or JOIN was pending)")
            assert conn.closed_within(3)
    assert metric(live, 17080, "chat_edge_limited_total", 'limit="pending_bytes"') >= 1


def test_an_unregistered_connection_is_closed_after_the_registration_timeout(live):
    idle, negotiating = Conn(live, "55"), Conn(live, "55")
    try:
        negotiating.send("CAP LS\r\nNICK justinfan5505\r\n")      # never sends CAP END
        started = time.monotonic()
        for conn in (idle, negotiating):
            assert conn.until(r"^ERROR ", timeout=5) == "ERROR :Closing Link: * (registration timeout)"
            assert conn.closed_within(3)
        assert time.monotonic() - started < 4
    finally:
        idle.close()
        negotiating.close()

    async def over_websocket() -> tuple[list[str], int | None, str]:
        async with websockets.connect(f"ws://{live.address}:8080/", subprotocols=["text.ircv3.net"],
                                      local_addr=(f"{live.subnet}.55", 0)) as ws:
            frames = []
            try:
                async with asyncio.timeout(5):
                    async for frame in ws:
                        frames.append(frame)
            except websockets.ConnectionClosed:
                pass
            return frames, ws.close_code, ws.close_reason
    frames, code, reason = asyncio.run(over_websocket())
    assert frames == ["ERROR :Closing Link: * (registration timeout)"] and (code, reason) == (1000, "registration timeout")
    # A registered connection outlives the timeout.
    with connected(live, "55", "justinfan5506") as conn:
        time.sleep(1.5)
        conn.send("PING :alive\r\n")
        conn.until(r"PONG .*alive")
    assert metric(live, 17080, "chat_edge_limited_total", 'limit="registration_timeout"') >= 2


def test_a_stalled_clue_fails_messages_fast_once_the_edge_queue_is_full(live):
    token = add_user(live, "staller")
    with connected(live, "56", "staller", token) as conn:
        conn.send("JOIN #lobby\r\n")
        conn.until(r" 366 staller #lobby ")
        full_before = metric(live, 17080, "chat_edge_clue_queue_full_total")
        with stopped(live, "clue-chat1"):
            conn.send("PRIVMSG #lobby :in flight\r\n")         # holds the one connection to clue
            time.sleep(0.3)
            started = time.monotonic()
            conn.send("".join(f"PRIVMSG #lobby :queued {i}\r\n" for i in range(CLUE_QUEUE + 4)))
            conn.count("msg_unavailable", 4)
            took = time.monotonic() - started
            queued = metric(live, 17080, "chat_edge_clue_queued")
            full = metric(live, 17080, "chat_edge_clue_queue_full_total") - full_before
        # Failed at once (the clue timeout is 20 s), and the queue never passed its bound.
        assert took < 2, took
        assert queued == CLUE_QUEUE and full == 4
        notices = conn.matching("msg_unavailable")
        assert len(notices) == 4 and notices[0].endswith(":Your message was not sent: chat is temporarily unavailable.")
    wait_for(lambda: metric(live, 17080, "chat_edge_clue_queued") == 0, 25, what="the queue to drain")


def refused(c, source: str) -> bool:
    """True when HAProxy closes a new connection from `source` before it can register."""
    try:
        conn = Conn(c, source)
    except ConnectionResetError:        # closed as soon as accepted, before connect() returned
        return True
    try:
        conn.send("NICK justinfan6099\r\n")
        return conn.closed_within(3) and not conn.matching(" 001 ")
    except (ConnectionResetError, BrokenPipeError):
        return True
    finally:
        conn.close()


def test_haproxy_refuses_a_source_past_its_connection_limit_and_not_another(live):
    held = [Conn(live, "60") for _ in range(PER_SOURCE)]
    try:
        for i, conn in enumerate(held):
            conn.send(f"NICK justinfan60{i}\r\n")
            conn.until(r" 376 ")
        assert refused(live, "60")
        with connected(live, "61", "justinfan6100") as other:
            other.send("PING :other-source\r\n")
            other.until(r"PONG .*other-source")

        async def ws_over_limit() -> bool:
            socks = []
            try:
                for _ in range(PER_SOURCE):
                    socks.append(await websockets.connect(f"ws://{live.address}:8080/",
                                                          local_addr=(f"{live.subnet}.62", 0), open_timeout=5))
                try:
                    await websockets.connect(f"ws://{live.address}:8080/", local_addr=(f"{live.subnet}.62", 0),
                                             open_timeout=5)
                except Exception:           # reset or closed before the handshake: refused
                    return True
                return False
            finally:
                for ws in socks:
                    await ws.close()
        assert asyncio.run(ws_over_limit())
    finally:
        for conn in held:
            conn.close()
