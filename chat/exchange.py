"""The exchange: fans every accepted message out to each edge of the cluster that has
subscribers in the message's room.

Edges tell every exchange of their cluster which rooms they hold (on the first subscriber of a
room, at once; and their whole set every few seconds). A starting exchange also asks every edge
of its cluster for its rooms before it takes a message: without that, a restarted exchange
delivered each message only to the edges that had refreshed since, for up to the refresh
interval (the chaos test saw completeness fall to 0.68 after an exchange was killed). Each
edge gets its own sender: messages for it queue up and leave in batches over a connection pool
whose keepalive switch, size and timeout come from the cluster file; the switch and the size can
also change while it runs, through the admin route (`chat.service`). Unlike the talk's exchange,
this one is instrumented: deliveries, i/o timeouts and new connections are counted, and it logs
the talk's lines, `[exchange] i/o timeout` and (sampled) `Exchange success`.

    python -m chat.exchange --config FILE --host chat1
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from chat import logs, membership, service
from chat.upstream import Pool, Upstream, UpstreamFull, UpstreamTimeout
from cluster.durations import seconds

SUBSCRIPTION_TTL = 15.0       # an edge that stops refreshing is forgotten after this
SUCCESS_LOG_EVERY = 5.0       # "Exchange success" at most once per this many seconds per edge
RELEARN_TIMEOUT = 1.0         # per edge, at start-up: an edge that is down tells us on its next refresh


class EdgeLink:
    """One edge as the exchange sees it: the rooms it holds and the pipe to it."""

    def __init__(self, name: str, url: str, upstream: Upstream, delivered_ok):
        self.name = name
        self.url = url
        self.rooms: set[str] = set()
        self.seen = time.monotonic()
        self.upstream = upstream
        self.last_success_log = 0.0
        self.successes_since_log = 0
        self.delivered_ok = delivered_ok      # its `ok` deliveries counter: one per message, no lookup


class Exchange:
    def __init__(self, ctx: service.Context):
        self.ctx = ctx
        settings = ctx.services.exchange
        self.settings = settings
        self.timeout = seconds(settings.timeout)
        self.edges: dict[str, EdgeLink] = {}
        r = ctx.registry
        self.m_received = Counter("chat_exchange_messages", "Messages received from clue", registry=r)
        self.m_membership = Counter("chat_exchange_membership_batches", "Batches of JOIN/PART/QUIT received "
                                    "from edges (chat.membership), counted apart from messages", registry=r)
        self.m_deliveries = Counter("chat_exchange_deliveries", "Messages handed to edges, by result",
                                    ["edge", "result"], registry=r)
        self.m_requests = Histogram("chat_exchange_request_seconds", "Duration of one delivery request to an edge",
                                    ["edge"], registry=r, buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5))
        self.m_batch = Histogram("chat_exchange_batch_messages", "Messages per delivery request",
                                 registry=r, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
        self.m_timeouts = Counter("chat_exchange_io_timeouts", "Delivery requests that timed out (the talk's i/o timeout)",
                                  ["edge"], registry=r)
        self.m_connections = Counter("chat_exchange_connections_opened",
                                     "TCP connections opened to edges; close to the request rate means no keepalive",
                                     registry=r)
        self.m_keepalive = Gauge("chat_exchange_keepalive", "1 when delivery connections are kept alive", registry=r)
        self.m_pool = Gauge("chat_exchange_pool_size", "Connections allowed per edge", registry=r)
        self.m_edges = Gauge("chat_exchange_edges", "Edges with live subscriptions", registry=r)
        r.register(_Queued(self))
        # One pool for every edge's sender: one switch turns keepalive on for all of them.
        self.pool = Pool(pool_size=settings.pool_size, keepalive=settings.keepalive,
                         local_address=ctx.address, token=ctx.internal_token,
                         on_connect=self.m_connections.inc, on_change=self._settings_changed)
        ctx.upstreams["edges"] = self.pool

    def _settings_changed(self, pool: Pool) -> None:
        self.m_keepalive.set(1 if pool.keepalive else 0)
        self.m_pool.set(pool.pool_size)

    def _link(self, name: str, url: str) -> EdgeLink:
        link = self.edges.get(name)
        if link is None or link.url != url:
            up = Upstream(self.pool, url, name=f"edge {name}", timeout=self.timeout,
                          max_pending=self.settings.max_pending,
                          observe=lambda secs, n, e=name: (self.m_requests.labels(e).observe(secs),
                                                           self.m_batch.observe(n)))
            link = self.edges[name] = EdgeLink(name, url, up, self.m_deliveries.labels(name, "ok"))
        return link

    def subscribe(self, body: dict) -> dict:
        name, url, rooms = body["edge"], body["url"], body["rooms"]
        if not isinstance(rooms, list) or not isinstance(name, str) or not isinstance(url, str):
            raise ValueError("edge, url and rooms are required")
        link = self._link(name, url)
        if body.get("full", True):
            link.rooms = {str(r) for r in rooms}
        else:
            link.rooms |= {str(r) for r in rooms}
        link.seen = time.monotonic()
        self.m_edges.set(len(self.edges))
        return {"ok": True, "rooms": len(link.rooms)}

    async def relearn(self) -> int:
        """Ask every edge of the cluster for the rooms it holds (GET /v1/subscriptions on its
        HTTP port), as its own refresh would tell us; returns how many edges answered."""
        port = self.ctx.services.edge.http_port
        learned = 0

        async def one(host: str, address: str) -> None:
            nonlocal learned
            url = f"http://{address}:{port}/v1/subscriptions"
            try:
                with self.pool.lease() as session:
                    async with session.get(url, timeout=aiohttp.ClientTimeout(total=RELEARN_TIMEOUT)) as resp:
                        if resp.status != 200:
                            raise ValueError(f"HTTP {resp.status}")
                        self.subscribe({**await resp.json(), "full": True})
                learned += 1
            except aiohttp.ClientConnectorError:
                # Nothing listens yet: a cluster's first start runs the exchange before its edges,
                # and an edge that comes up later subscribes by itself.
                logs.event(self.ctx.log, "edge", "not up yet; it will subscribe when it starts", edge=host)
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError, KeyError, TypeError) as exc:
                logs.event(self.ctx.log, "edge", f"could not ask for its rooms: {exc!r}", 30, edge=host)
        await asyncio.gather(*(one(h, a) for h, a in self.ctx.peers()))
        return learned

    def publish(self, message: dict) -> dict:
        if message.get("command") == membership.COMMAND:
            self.m_membership.inc()
        else:
            self.m_received.inc()
        room = message["room"]
        now = time.monotonic()
        targets = 0
        for link in list(self.edges.values()):
            if now - link.seen > SUBSCRIPTION_TTL:
                del self.edges[link.name]
                logs.event(self.ctx.log, "exchange", "forgot edge: no refresh", edge=link.name)
                continue
            if room in link.rooms:
                targets += 1
                fut = link.upstream.call(message)
                fut.add_done_callback(lambda f, link=link: self._delivered(link, f))
        self.m_edges.set(len(self.edges))
        return {"ok": True, "edges": targets}

    def _delivered(self, link: EdgeLink, fut: asyncio.Future) -> None:
        exc = fut.exception()
        if exc is None:
            link.delivered_ok.inc()
            link.successes_since_log += 1
            now = time.monotonic()
            if now - link.last_success_log >= SUCCESS_LOG_EVERY:
                logs.event(self.ctx.log, "exchange", "Exchange success", edge=link.name,
                           messages=link.successes_since_log)
                link.last_success_log, link.successes_since_log = now, 0
        elif isinstance(exc, UpstreamFull):
            self.m_deliveries.labels(link.name, "queue_full").inc()
            if exc.report:
                logs.event(self.ctx.log, "exchange", "delivery refused: queue full", 30, edge=link.name,
                           limit=self.settings.max_pending, refused=exc.report)
        elif isinstance(exc, UpstreamTimeout):
            self.m_deliveries.labels(link.name, "timeout").inc()
            self.m_timeouts.labels(link.name).inc()
            logs.event(self.ctx.log, "exchange", "i/o timeout", 30, edge=link.name)
        else:
            self.m_deliveries.labels(link.name, "error").inc()
            logs.event(self.ctx.log, "exchange", "delivery failed", 30, edge=link.name, error=exc)

    def app(self) -> web.Application:
        app = service.metrics_app(self.ctx)

        async def publish(request: web.Request) -> web.Response:
            try:
                items = (await request.json())["items"]
                results = [self.publish(m) for m in items]
            except (ValueError, KeyError, TypeError) as exc:
                return web.json_response({"error": f"bad request: {exc!r}"}, status=400)
            return web.json_response({"results": results})

        async def subscriptions(request: web.Request) -> web.Response:
            try:
                return web.json_response(self.subscribe(await request.json()))
            except (ValueError, KeyError, TypeError) as exc:
                return web.json_response({"error": f"bad request: {exc!r}"}, status=400)

        async def show(_request):
            return web.json_response({n: {"url": e.url, "rooms": sorted(e.rooms)} for n, e in self.edges.items()})

        app.router.add_post("/v1/publish", publish)
        app.router.add_post("/v1/subscriptions", subscriptions)
        app.router.add_get("/v1/subscriptions", show)
        return app

    async def close(self) -> None:
        for link in self.edges.values():
            await link.upstream.close()
        await self.pool.close()


class _Queued:
    """Messages waiting for a connection to each edge, read at scrape time."""

    def __init__(self, ex: Exchange):
        self.ex = ex

    def collect(self):
        fam = GaugeMetricFamily("chat_exchange_queued", "Messages waiting for a connection to an edge",
                                labels=["edge"])
        for name, link in sorted(self.ex.edges.items()):
            fam.add_metric([name], link.upstream.pending)
        yield fam


async def main(ctx: service.Context, stop: asyncio.Event) -> None:
    ex = Exchange(ctx)
    port = ctx.services.exchange.port
    learned = await ex.relearn()      # before the first message, so none goes only to some edges
    runner = await service.serve_http(ex.app(), ctx.address, port)
    logs.event(ctx.log, None, "listening", address=f"{ctx.address}:{port}",
               keepalive=ctx.services.exchange.keepalive, edges_asked=len(ctx.peers()), edges_answered=learned)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await ex.close()


if __name__ == "__main__":
    _ctx = service.parse_args("exchange")
    service.run(lambda stop: main(_ctx, stop))
