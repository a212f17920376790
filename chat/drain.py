"""An edge going away: Twitch's `RECONNECT`, then its clients closed gradually.

When an edge is drained (`server_state drain`, through `POST /v1/admin/drain`) or stopped with
SIGTERM (a rolling restart, systemd), it stops accepting (its listeners close, so HAProxy's checks
mark it down and new clients go to the other edges), sends `:<server> RECONNECT` to every client,
TCP and WebSocket, that asked for twitch.tv/commands (as Twitch does; a standard IRC client gets
`ERROR :Closing Link` when closed instead), and closes the ones still there spread over
`services.edge.drain_period`.

A client honouring RECONNECT opens a new connection through the same frontend, joins its rooms
there and only then leaves (make-before-break, as the load generator does), so it misses nothing:
until it leaves, this edge keeps delivering to it. The first half of the period is left to those
clients; the ones still there then are closed evenly over the second half, the first at once, so
the clients that ignore RECONNECT do not all land on the other edges at the same instant. One
leaving by itself meanwhile counts toward the pace: the edge closes only as many as are still due.

SIGINT stops at once (RECONNECT, then every client closed): `chatops down` stops every edge of
the cluster, so there is nowhere to move to and waiting would only slow it down. A second SIGTERM
during a drain does the same.
"""

from __future__ import annotations

import asyncio
import math
import signal
import time
from typing import Awaitable, Callable

from aiohttp import web

from chat import irc, logs, service

DRAIN_PATH = "/v1/admin/drain"
TWITCH_COMMANDS = "twitch.tv/commands"
DRAIN_REASON = "Server going away, reconnect"
TICK = 0.05                 # how often the closing pace is looked at


def reconnect_line(server_name: str) -> bytes:
    return irc.encode("RECONNECT", source=server_name)


def closed_by(m: int, period: float, elapsed: float) -> int:
    """Of the `m` clients still there when the first half of `period` ended, how many should be
    gone `elapsed` seconds into the drain: the first half is left to clients reconnecting elsewhere
    by themselves; then the first of the `m` at once and the others evenly over the second half
    (the last at `period` - half/m). A period of 0 closes all at once."""
    if m <= 0:
        return 0
    if period <= 0 or elapsed >= period:
        return m
    half = period / 2
    if elapsed < half:
        return 0
    return min(m, math.floor(m * (elapsed - half) / half + 1e-9) + 1)


def to_close(m: int, remaining: int, period: float, elapsed: float) -> int:
    """How many of the `remaining` (of those `m`) to close now: what is due minus those already
    gone, whether closed by the edge or gone by themselves."""
    gone = m - remaining
    return max(0, min(remaining, closed_by(m, period, elapsed) - gone))


class Listeners:
    """The edge's public listeners (IRC over TCP, WebSocket), which a drain closes and `ready`
    opens again. Closing stops accepting only; connected clients stay."""

    def __init__(self, opens: list[Callable[[], Awaitable[object]]]):
        self.opens = opens
        self.servers: list[object] = []

    async def open(self) -> None:
        if not self.servers:
            self.servers = [await o() for o in self.opens]

    def close(self) -> None:
        for s in self.servers:
            try:
                # websockets' Server closes its connections too unless told not to.
                s.close(close_connections=False)
            except TypeError:
                s.close()
        self.servers = []

    @property
    def listening(self) -> bool:
        return bool(self.servers)


class Drainer:
    """One edge's draining: started by the admin route or SIGTERM, ended by `ready` (admin) or by
    the last client gone (SIGTERM then lets the edge exit)."""

    def __init__(self, edge, listeners: Listeners, period: float, period_text: str):
        self.edge = edge
        self.listeners = listeners
        self.period = period
        self.period_text = period_text
        self.task: asyncio.Task | None = None
        self.stopping = False          # SIGTERM: the edge exits once drained
        self.stop_task: asyncio.Task | None = None
        self.started_at: float | None = None
        self.reason = ""
        self.counts = {"clients": 0, "closed": 0, "left": 0}

    @property
    def draining(self) -> bool:
        return self.task is not None and not self.task.done()

    def view(self) -> dict:
        return {"host": self.edge.ctx.host, "draining": self.draining, "stopping": self.stopping,
                "listening": self.listeners.listening, "clients": len(self.edge.clients),
                "drain_period": self.period_text, "reason": self.reason or None,
                "started_s_ago": (None if self.started_at is None
                                  else round(time.monotonic() - self.started_at, 3)),
                **{f"drain_{k}": v for k, v in self.counts.items()}}

    def start(self, reason: str) -> bool:
        """Stop accepting and drain; False when a drain is already running (it goes on)."""
        self.listeners.close()
        if self.draining:
            return False
        self.reason = reason
        self.task = asyncio.ensure_future(self._run(reason))
        return True

    async def ready(self) -> bool:
        """End an admin drain: stop closing and accept again. False while stopping (SIGTERM)."""
        if self.stopping:
            return False
        if self.task is not None and not self.task.done():
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.reason = ""
        await self.listeners.open()
        return True

    async def finished(self) -> None:
        if self.task is not None:
            try:
                await asyncio.shield(self.task)
            except asyncio.CancelledError:
                pass

    async def _run(self, reason: str) -> None:
        edge, log = self.edge, self.edge.log
        t0 = self.started_at = time.monotonic()
        clients = sorted(edge.clients, key=lambda c: c.id)      # oldest first
        n = len(clients)
        self.counts = {"clients": n, "closed": 0, "left": 0}
        logs.event(log, "client", "Draining: sent RECONNECT", clients=n, period=self.period_text,
                   reason=reason)
        send_reconnect(edge, clients)
        stragglers: int | None = None       # still there when the first half ended
        try:
            while True:
                remaining = [c for c in clients if not c.closed and c in edge.clients]
                elapsed = time.monotonic() - t0
                if stragglers is None and elapsed >= self.period / 2:
                    stragglers = len(remaining)
                k = 0 if stragglers is None else to_close(stragglers, len(remaining), self.period, elapsed)
                for c in remaining[:k]:
                    close_one(edge, c, DRAIN_REASON)
                self.counts["closed"] += k
                if len(remaining) == k:
                    break
                await asyncio.sleep(TICK)
        finally:
            still = sum(1 for c in clients if not c.closed and c in edge.clients)
            self.counts["left"] = n - self.counts["closed"] - still
            logs.event(log, "client", "Drain done" if not still else "Drain ended", clients=n,
                       still_connected=still, closed_by_edge=self.counts["closed"],
                       left_by_themselves=self.counts["left"],
                       seconds=f"{time.monotonic() - t0:.1f}", reason=reason)


def send_reconnect(edge, clients) -> None:
    """RECONNECT to the clients that asked for twitch.tv/commands, as Twitch sends it; a standard
    IRC client knows no such command, and gets ERROR when it is closed instead (close_one)."""
    line = reconnect_line(edge.server_name)
    for c in clients:
        if not c.closed and TWITCH_COMMANDS in c.proto.caps:
            c.deliver(line)


def close_one(edge, client, reason: str) -> None:
    if TWITCH_COMMANDS in client.proto.caps:
        client.close(reason)
    else:
        edge.close_link(client, reason)       # ERROR :Closing Link: <nick> (<reason>), as ircds do


async def close_all(edge, reason: str = DRAIN_REASON, flush_within: float = 1.0) -> None:
    """Stopping at once: RECONNECT, then every client closed (its lines go out before the close);
    WebSocket closes get `flush_within` seconds to finish before the edge exits."""
    clients = list(edge.clients)
    if not clients:
        return
    send_reconnect(edge, clients)
    for c in clients:
        close_one(edge, c, reason)
    logs.event(edge.log, "client", "Stopping: sent RECONNECT and closed every client", clients=len(clients))
    closing = [c.closing for c in clients if getattr(c, "closing", None) is not None]
    if closing:
        await asyncio.wait(closing, timeout=flush_within)


def install_sigterm(drainer: Drainer, stop: asyncio.Event) -> None:
    """SIGTERM drains, then sets `stop`; a second SIGTERM (and SIGINT, as service.run set it)
    stops at once."""
    loop = asyncio.get_running_loop()

    async def drain_then_stop() -> None:
        drainer.start("SIGTERM")
        await drainer.finished()
        stop.set()

    def on_term() -> None:
        if drainer.stopping:
            stop.set()
            return
        drainer.stopping = True
        # Held: a task nobody holds may be collected before it is done.
        drainer.stop_task = asyncio.ensure_future(drain_then_stop())
    loop.add_signal_handler(signal.SIGTERM, on_term)


def add_admin_routes(app: web.Application, ctx: service.Context, drainer: Drainer) -> None:
    """`GET|POST|DELETE /v1/admin/drain`, guarded like /v1/admin/upstream (the control plane's
    API token): POST drains, DELETE (`server_state ready`) ends it and accepts again."""
    async def show(request: web.Request) -> web.Response:
        refused = service.admin_refused(ctx, request)
        return refused if refused is not None else web.json_response(drainer.view())

    async def drain(request: web.Request) -> web.Response:
        refused = service.admin_refused(ctx, request)
        if refused is not None:
            return refused
        started = drainer.start("admin")
        return web.json_response({**drainer.view(), "started": started})

    async def ready(request: web.Request) -> web.Response:
        refused = service.admin_refused(ctx, request)
        if refused is not None:
            return refused
        was = drainer.draining or not drainer.listeners.listening
        if not await drainer.ready():
            return web.json_response({**drainer.view(), "error": "the edge is stopping (SIGTERM)"},
                                     status=409)
        if was:
            logs.event(ctx.log, "client", "Drain ended: accepting clients again", reason="admin")
        return web.json_response({**drainer.view(), "ended": was})

    app.router.add_get(DRAIN_PATH, show)
    app.router.add_post(DRAIN_PATH, drain)
    app.router.add_delete(DRAIN_PATH, ready)
