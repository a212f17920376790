"""Membership lines on the wire: one real edge alone, raw sockets as clients, and a batch of another
edge's JOIN/PART/QUIT delivered to it as the exchange does (`POST /v1/deliver`). Checks the exact
bytes each kind of client gets. The path through the exchange and across edges is
tests/chat/test_open_auth_live.py's."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, free_subnet, small_cluster, write_cluster

IRC_PORT, HTTP_PORT = 16667, 17080     # the edge's own ports (EdgeService defaults)
TOKEN = "membership-test-internal-token"
SRC = ":bob!bob@bob.tmi.chatops.local"


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    """chat1's edge alone: nothing here needs clue, the exchange or Redis."""
    subnet = free_subnet()
    tmp = tmp_path_factory.mktemp("membership")
    config = write_cluster(tmp / "cluster.yaml", small_cluster(subnet))
    log = (tmp / "edge.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "chat.edge", "--config", str(config), "--host", "chat1"],
                            cwd=REPO, env={**os.environ, "CHATOPS_INTERNAL_TOKEN": TOKEN},
                            stdout=log, stderr=subprocess.STDOUT)
    address = f"{subnet}.1"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, Path(log.name).read_text()
            try:
                socket.create_connection((address, IRC_PORT), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, Path(log.name).read_text()
                time.sleep(0.05)
        yield address
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


class Raw:
    """A client on a plain socket, so the test sees the bytes exactly as the edge wrote them."""

    def __init__(self, address: str, nick: str, caps: str = ""):
        self.nick = nick
        self.sock = socket.create_connection((address, IRC_PORT), timeout=5)
        self.buf = b""
        self.send((f"CAP REQ :{caps}\r\n" if caps else "") + f"NICK {nick}\r\n")
        self.until(b" 376 ")                       # end of MOTD: registered

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode())

    def until(self, needle: bytes) -> bytes:
        """Everything received up to and including the line holding `needle`."""
        deadline = time.monotonic() + 5
        while needle not in self.buf:
            assert time.monotonic() < deadline, self.buf
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            self.buf += self.sock.recv(65536)
        end = self.buf.index(b"\r\n", self.buf.index(needle) + len(needle)) + 2
        out, self.buf = self.buf[:end], self.buf[end:]
        return out

    def rest(self, wait: float = 0.5) -> bytes:
        """Whatever arrives within `wait` seconds."""
        self.sock.settimeout(wait)
        try:
            while chunk := self.sock.recv(65536):
                self.buf += chunk
        except TimeoutError:
            pass
        out, self.buf = self.buf, b""
        return out

    def join(self, *rooms: str) -> None:
        for room in rooms:
            self.send(f"JOIN #{room}\r\n")
            self.until(f" 366 {self.nick} #{room} ".encode())

    def close(self) -> None:
        self.sock.close()


def deliver(address: str, room: str, events: list[dict]) -> None:
    body = {"items": [{"room": room, "command": "MEMBERSHIP", "params": [], "source": "",
                       "origin": {"edge": "chat9"}, "events": events}]}
    req = urllib.request.Request(f"http://{address}:{HTTP_PORT}/v1/deliver", json.dumps(body).encode(),
                                 {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert json.load(resp) == {"results": [True]}


def test_membership_lines_by_kind_of_client(edge):
    irc_client = Raw(edge, "justinfan1", "twitch.tv/membership")
    twitch = Raw(edge, "justinfan2", "twitch.tv/membership twitch.tv/commands")
    plain = Raw(edge, "justinfan3")
    clients = (irc_client, twitch, plain)
    try:
        for c in clients:
            c.join("lobby", "lounge")
        bob = {"nick": "bob", "id": "chat9/1/7"}
        deliver(edge, "lobby", [{**bob, "op": "JOIN", "reason": ""},
                                {**bob, "op": "PART", "reason": "brb"},
                                {**bob, "op": "JOIN", "reason": ""}])
        expected = (f"{SRC} JOIN #lobby\r\n{SRC} PART #lobby :brb\r\n{SRC} JOIN #lobby\r\n").encode()
        assert irc_client.until(b":brb\r\n" + SRC.encode() + b" JOIN") == expected
        assert twitch.until(b":brb\r\n" + SRC.encode() + b" JOIN") == expected
        # One QUIT per room from the other edge: a standard client hears it once, a Twitch one
        # gets Twitch's PART per room, a client without the capability nothing at all.
        deliver(edge, "lobby", [{**bob, "op": "QUIT", "reason": "see you"}])
        deliver(edge, "lounge", [{**bob, "op": "QUIT", "reason": "see you"}])
        assert irc_client.rest() == f"{SRC} QUIT :see you\r\n".encode()
        assert twitch.rest() == f"{SRC} PART #lobby\r\n{SRC} PART #lounge\r\n".encode()
        assert plain.rest() == b""
    finally:
        for c in clients:
            c.close()
