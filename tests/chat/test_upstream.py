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
        pool = Pool(pool_size=2, keepalive=True, local_address=None, token=None)
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
