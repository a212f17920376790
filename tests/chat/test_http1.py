"""chat.http1: the hot hops' HTTP/1.1 client. Its pure head parser on responses recorded from
aiohttp 3.14.5 (the servers it talks to) and hostile ones; the client against a real aiohttp
server (keep-alive reuse, `Connection: close`, a restarted peer, chunked bodies) and against a raw
socket server answering garbage."""

from __future__ import annotations

import asyncio
import socket

import pytest
from aiohttp import web

from chat import http1

# Recorded 2026-12-05 from aiohttp 3.14.5's web server (web.json_response; a 401 as chat.service's
# internal_auth writes it; a StreamResponse with chunked encoding), read off a raw socket.
RECORDED_200 = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: 27\r\n"
                b"Date: Sat, 05 Dec 2026 23:02:16 GMT\r\nServer: Python/3.11 aiohttp/3.14.5\r\n\r\n")
RECORDED_401 = (b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer\r\nContent-Type: application/json; "
                b"charset=utf-8\r\nContent-Length: 44\r\nDate: Sat, 05 Dec 2026 23:02:16 GMT\r\n"
                b"Server: Python/3.11 aiohttp/3.14.5\r\n\r\n")
RECORDED_CHUNKED = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/octet-stream\r\n"
                    b"Date: Sat, 05 Dec 2026 23:02:16 GMT\r\nServer: Python/3.11 aiohttp/3.14.5\r\n\r\n")


def test_recorded_heads_parse():
    status, headers = http1.parse_head(RECORDED_200)
    assert status == 200 and http1.body_length(headers) == 27
    status, headers = http1.parse_head(RECORDED_401)
    assert status == 401 and headers["www-authenticate"] == "Bearer" and http1.body_length(headers) == 44
    status, headers = http1.parse_head(RECORDED_CHUNKED)
    assert status == 200 and http1.body_length(headers) is None


@pytest.mark.parametrize("head", [
    b"HTTP/2 200 OK\r\n\r\n", b"ICY 200 OK\r\n\r\n", b"HTTP/1.1 2x0 OK\r\n\r\n", b"HTTP/1.1 \xd9\xa1\xd9\xa2\xd9\xa3\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", b"HTTP/1.1 200 OK\r\n : empty name\r\n\r\n", b"",
    b"\x00\xff garbage\r\n\r\n",
])
def test_hostile_heads_are_refused(head):
    with pytest.raises(http1.HttpError):
        http1.parse_head(head)


@pytest.mark.parametrize("length", ["-1", "1e3", "²", "9" * 13, str(http1.MAX_BODY + 1), " "])
def test_bad_or_huge_content_lengths_are_refused(length):
    with pytest.raises(http1.HttpError):
        http1.body_length({"content-length": length})
    with pytest.raises(http1.HttpError):
        http1.body_length({})             # neither a length nor chunked


def test_the_request_head_is_one_block_with_the_token_and_the_keepalive_choice():
    head = http1.request_head("POST", "127.0.0.1", 17080, "/v1/deliver", 12, token="t0k", keepalive=False)
    assert head == (b"POST /v1/deliver HTTP/1.1\r\nHost: 127.0.0.1:17080\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 12\r\nAuthorization: Bearer t0k\r\nConnection: close\r\n\r\n")


# -- against real servers --

async def _serve(address: str, port: int) -> web.AppRunner:
    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"got": (await request.json()), "auth": request.headers.get("Authorization")})

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for part in (b'{"results": ', b"[1, 2", b", 3]}"):
            await resp.write(part)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/echo", echo)
    app.router.add_post("/chunked", chunked)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, address, port).start()
    return runner


def test_keepalive_reuses_one_connection_and_close_opens_one_per_request(subnet):
    address, port = f"{subnet}.1", 18791

    async def go():
        runner = await _serve(address, port)
        try:
            opened = {"keep": 0, "close": 0}
            keep = http1.RawClient(keepalive=True, local_address=f"{subnet}.2", token="secret",
                                   on_connect=lambda: opened.__setitem__("keep", opened["keep"] + 1))
            close = http1.RawClient(keepalive=False, local_address=f"{subnet}.2", token=None,
                                    on_connect=lambda: opened.__setitem__("close", opened["close"] + 1))
            for i in range(5):
                status, body = await keep.post(address, port, "/echo", b'{"n": %d}' % i)
                assert status == 200 and b'"got": {"n": %d}' % i in body and b"Bearer secret" in body
                status, _ = await close.post(address, port, "/echo", b"{}")
                assert status == 200
            status, body = await keep.post(address, port, "/chunked", b"{}")
            assert (status, body) == (200, b'{"results": [1, 2, 3]}')
            status, body = await keep.post(address, port, "/nowhere", b"{}")
            assert status == 404
            assert opened == {"keep": 1, "close": 5}

            # The peer restarts: the pooled connection is dead, and is dropped, not used.
            await runner.cleanup()
            runner = await _serve(address, port)
            await asyncio.sleep(0.1)
            status, _ = await keep.post(address, port, "/echo", b"{}")
            assert status == 200 and opened["keep"] == 2
            await keep.close()
            await close.close()
        finally:
            await runner.cleanup()
    asyncio.run(go())


def test_garbage_and_truncated_answers_are_errors_not_hangs(subnet):
    address, port = f"{subnet}.1", 18792
    answers = [b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
               b"HTTP/1.1 200 OK\r\n" + b"X-Long: " + b"a" * (http1.MAX_HEAD + 10) + b"\r\n\r\n",
               b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"]

    async def go():
        served = asyncio.Queue()

        async def handle(reader, writer):
            await reader.read(1024)
            writer.write(await served.get())
            await writer.drain()
            writer.close()
        server = await asyncio.start_server(handle, address, port)
        client = http1.RawClient(keepalive=True, local_address=None, token=None)
        try:
            for answer in answers:
                await served.put(answer)
                with pytest.raises((http1.HttpError, OSError)):
                    async with asyncio.timeout(5):
                        await client.post(address, port, "/x", b"{}")
        finally:
            await client.close()
            server.close()
            await server.wait_closed()
    asyncio.run(go())


def test_a_refused_connection_is_an_oserror(subnet):
    async def go():
        client = http1.RawClient(keepalive=True, local_address=None, token=None)
        with pytest.raises(OSError):
            await client.post(f"{subnet}.1", 18793, "/x", b"{}")
    # Nothing listens there: make sure of it.
    with socket.socket() as s:
        assert s.connect_ex((f"{subnet}.1", 18793)) != 0
    asyncio.run(go())
