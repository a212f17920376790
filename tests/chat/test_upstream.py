"""The edge's and the exchange's batching HTTP client against a real aiohttp server on a loopback
address that answers badly: every caller of a failed batch gets an UpstreamError at once, never
a future that waits forever (an HTTP 500 from clue used to leave the edge's users unanswered)."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from chat.upstream import Pool, Upstream, UpstreamError
from tests.conftest import free_subnet


async def _serve(handler) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/v1/privmsg", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    address = f"{free_subnet()}.1"
    site = web.TCPSite(runner, address, 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://{address}:{port}/v1/privmsg"


@pytest.mark.parametrize("answer", [
    lambda request: web.Response(status=500, text="Server got itself in trouble"),
    lambda request: web.json_response({"results": [{"ok": True}]}),          # one result for three items
])
def test_a_bad_answer_fails_every_caller_of_its_batch_at_once(answer):
    async def go():
        async def handler(request):
            await request.read()
            return answer(request)
        runner, url = await _serve(handler)
        pool = Pool(pool_size=2, keepalive=True, local_address=None)
        up = Upstream(pool, url, name="clue", timeout=5.0)
        try:
            futures = [up.call({"n": i}) for i in range(3)]
            results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 3.0)
        finally:
            await up.close()
            await pool.close()
            await runner.cleanup()
        return results, up.errors

    results, errors = asyncio.run(go())
    assert all(isinstance(r, UpstreamError) for r in results), results
    assert "clue" in str(results[0]) and errors == 1


def test_a_batch_whose_connection_dies_is_failed_not_sent_again():
    """At most once: an upstream killed after it read a batch (clue or the exchange SIGKILLed mid-
    request) fails that batch's callers; nothing sends it again, not even on a reused keepalive
    connection, where aiohttp retries idempotent methods by itself. A resent publish would reach
    every edge twice (the chaos test counts duplicates per receiver)."""
    async def go():
        seen = []

        async def handler(request):
            body = await request.json()
            seen.append(body["items"])
            if len(seen) == 1:
                return web.json_response({"results": [{"ok": True}]})
            request.transport.abort()              # read, then gone without an answer
            await asyncio.sleep(1)
            return web.Response()                  # never reaches the client
        runner, url = await _serve(handler)
        pool = Pool(pool_size=1, keepalive=True, local_address=None)
        up = Upstream(pool, url, name="exchange", timeout=5.0)
        try:
            first = await asyncio.wait_for(up.call({"n": 1}), 3.0)
            second = await asyncio.wait_for(asyncio.gather(up.call({"n": 2}), return_exceptions=True), 3.0)
        finally:
            await up.close()
            await pool.close()
            await runner.cleanup()
        return first, second[0], seen

    first, second, seen = asyncio.run(go())
    assert first == {"ok": True}
    assert isinstance(second, UpstreamError), second
    assert seen == [[{"n": 1}], [{"n": 2}]]              # the second batch reached the server once
