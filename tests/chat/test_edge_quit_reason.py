"""A QUIT reason reaches a WebSocket client in its close frame, cut to the 123 bytes of valid UTF-8
a close reason may hold (RFC 6455 5.5.1: 125-byte control payload, 2 of them the code), at a
character boundary: a real edge process and the real `websockets` client library."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import websockets

from tests.conftest import REPO, free_subnet, small_cluster, write_cluster

WS_PORT = 18080   # the edge's own WebSocket port (EdgeService.ws_port's default)


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    """One real edge (chat1) alone: QUIT needs neither clue nor Redis."""
    subnet = free_subnet()
    tmp = tmp_path_factory.mktemp("quit")
    config = write_cluster(tmp / "cluster.yaml", small_cluster(subnet))
    log = (tmp / "edge.log").open("w")
    # A chat service refuses to start without the internal token; nothing here calls the edge's HTTP.
    env = {**os.environ, "CHATOPS_INTERNAL_TOKEN": "quit-reason-test-internal-token"}
    proc = subprocess.Popen([sys.executable, "-m", "chat.edge", "--config", str(config), "--host", "chat1"],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    address = f"{subnet}.1"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, Path(log.name).read_text()
            try:
                socket.create_connection((address, WS_PORT), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, Path(log.name).read_text()
                time.sleep(0.05)
        yield address, Path(log.name)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


async def quit_with(address: str, reason: str) -> tuple[int | None, str, list[str]]:
    async with websockets.connect(f"ws://{address}:{WS_PORT}/", subprotocols=["text.ircv3.net"]) as ws:
        await ws.send("NICK justinfan4242\r\n")
        await ws.send("USER justinfan4242 0 * :x\r\n")
        lines = []
        async with asyncio.timeout(10):
            while not any(" 376 " in ln for ln in lines):    # end of MOTD: registered
                lines.append(await ws.recv())
        await ws.send(f"QUIT :{reason}\r\n")
        try:
            async with asyncio.timeout(10):
                while True:
                    lines.append(await ws.recv())
        except websockets.ConnectionClosed:
            pass
        return ws.close_code, ws.close_reason, lines


@pytest.mark.parametrize("reason", [
    "é" * 200,                 # 2-byte characters: 100 of them are 200 bytes
    "x" + "€" * 100,           # 3 bytes each, cut not on a multiple of 3 from the start
    "😀" * 60,                 # 4 bytes each
    "bye " * 60,               # plain ASCII, longer than a close reason may be
    "short and sweet ✓",
])
def test_quit_reason_is_cut_by_bytes_at_a_character_boundary(edge, reason):
    address, log = edge
    code, got, _ = asyncio.run(quit_with(address, reason))
    expected_full = f"quit: {reason}"
    assert code == 1000, (code, got, log.read_text()[-2000:])
    raw = got.encode("utf-8")
    assert len(raw) <= 123
    assert expected_full.startswith(got)
    # As much of the reason as fits: the next character would not.
    if got != expected_full:
        assert len(raw) + len(expected_full[len(got)].encode("utf-8")) > 123
    assert "Traceback" not in log.read_text()
