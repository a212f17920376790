"""The edge's and the exchange's batching HTTP client against a real aiohttp server on a loopback
address that answers badly: every caller of a failed batch gets an UpstreamError at once, never
a future that waits forever (an HTTP 500 from clue used to leave the edge's users unanswered); and
against one that never answers: its queue stays within max_pending, and calls past it fail at once."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web

from chat.upstream import Pool, Upstream, UpstreamError, UpstreamFull
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
        up = Upstream(pool, url, name="clue", timeout=5.0, max_pending=100)
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


def test_a_stalled_upstream_fails_calls_at_once_past_max_pending():
    """200,000 calls used to pile up behind a stalled peer; now the queue stops at max_pending and
    every further call fails at once, while the calls already queued still wait their turn."""
    bound = 50

    async def go():
        stalled = asyncio.Event()

        async def handler(request):
            await request.read()
            await stalled.wait()           # a peer that accepted the request and never answers
            return web.json_response({"results": []})
        runner, url = await _serve(handler)
        pool = Pool(pool_size=1, keepalive=True, local_address=None, token=None)
        up = Upstream(pool, url, name="edge chat9", timeout=30.0, max_pending=bound)
        try:
            first = up.call({"n": 0})
            while up.requests == 0:        # the first call is in flight, holding the one connection
                await asyncio.sleep(0.01)
            queued = [up.call({"n": i}) for i in range(1, bound + 1)]
            pending_peak = up.pending
            started = time.monotonic()
            over = [up.call({"n": i}) for i in range(5000)]
            refused = await asyncio.wait_for(asyncio.gather(*over, return_exceptions=True), 1.0)
            took = time.monotonic() - started
            await asyncio.sleep(0.1)       # more loop turns: nothing else starts queueing
            after = (up.pending, len(up._tasks), sum(f.done() for f in queued), first.done())
        finally:
            stalled.set()
            await up.close()
            await pool.close()
            await runner.cleanup()
        return pending_peak, refused, took, after, up.refused

    pending_peak, refused, took, after, count = asyncio.run(go())
    assert pending_peak == bound
    assert all(isinstance(r, UpstreamFull) for r in refused) and count == 5000
    assert "edge chat9: queue full (50 calls already waiting)" == str(refused[0])
    # One refusal in a second carries the count to log; the others stay quiet.
    assert [r.report for r in refused if r.report] == [1]
    assert took < 0.5
    pending, tasks, queued_done, first_done = after
    assert pending == bound and queued_done == 0 and not first_done
    assert tasks <= 2                      # one request in flight, one task waiting for the connection


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
        pool = Pool(pool_size=1, keepalive=True, local_address=None, token=None)
        up = Upstream(pool, url, name="exchange", timeout=5.0, max_pending=100)
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
