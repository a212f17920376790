"""Who is in a room, and who is online, across every edge of a cluster: what NAMES, WHO, WHOIS,
ISON, USERHOST and LUSERS answer (chat.irc's queries).

HAProxy spreads a room's members over the cluster's edges, so one edge alone knows only its own
share. Each edge serves its share at `GET /v1/members` on its internal HTTP port (internal token,
as `/v1/deliver`), and the edge answering a query asks every other edge of its cluster (the
cluster file lists them) at once, waiting at most LOOKUP_TIMEOUT: an edge that does not answer in
time is left out of the answer, and logged, but never holds the client longer than that.

    GET /v1/members?room=lobby      -> {"edge": "chat2", "members": ["ronni", ...], "count": 2, ...}
    GET /v1/members?nicks=ronni,bob -> {"edge": "chat2", "online": ["bob"], ...}

Every answer also carries the edge's counts for LUSERS (`users`, `unregistered`, `rooms`).
A room's member list is capped at NAMES_CAP logins (Twitch lists only mods past 1,000 members;
this server knows no roles without Redis, so it lists the first 1,000 it has, this edge's first).
A connection may start LOOKUP_RATE lookups (a burst, then a steady rate); past it a query gets
`263 <command> :Please wait a while and try again.` and costs the other edges nothing.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from chat import irc, logs
from chat.limits import TokenBucket
from chat.upstream import make_session

if TYPE_CHECKING:
    from chat.edge import Edge

PATH = "/v1/members"
NAMES_CAP = 1000            # logins one NAMES/WHO lists
LOOKUP_TIMEOUT = 0.5        # per query, all edges asked at once
LOOKUP_POOL = 4             # connections to each other edge
FAILURE_LOG_EVERY = 5.0     # per edge: a down edge and a busy room must not flood the log
# Lookups one connection may start: a client joining many rooms sends a WHO for each, which the
# burst absorbs; a loop of NAMES is held to two a second.
LOOKUP_RATE = (20, 2.0)


def query_params(query: irc.Query) -> dict[str, str]:
    """What to ask the other edges for `query` (an empty dict: the counts only, for LUSERS)."""
    if isinstance(query, irc.Names):
        return {"room": query.channel[1:]}
    if isinstance(query, irc.Who):
        return {"room": query.mask[1:]} if query.mask[:1] == "#" else {"nicks": query.mask}
    if isinstance(query, irc.Whois):
        return {"nicks": query.nick}
    if isinstance(query, (irc.Ison, irc.Userhost)):
        return {"nicks": ",".join(query.nicks)}
    return {}


def edge_view(host: str, params: dict[str, str], *, room_members: Iterable[str], logins: Iterable[str],
              unregistered: int, rooms: int, cap: int = NAMES_CAP) -> dict[str, Any]:
    """One edge's answer to `params`: `room_members` are the logins in the asked room here,
    `logins` those of every registered connection here."""
    logins = list(logins)
    view: dict[str, Any] = {"edge": host, "users": len(logins), "unregistered": unregistered, "rooms": rooms}
    if params.get("room"):
        members = sorted(set(room_members))
        view["members"], view["count"] = members[:cap], len(members)
    if params.get("nicks"):
        online = set(logins)
        view["online"] = [n for n in params["nicks"].split(",")[:irc.MAX_LINE] if n in online]
    return view


def _strings(value: Any, limit: int) -> list[str]:
    if not isinstance(value, list):
        return []
    return [v for v in value[:limit] if isinstance(v, str)]


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def merge(local: dict[str, Any], others: Sequence[dict[str, Any]], cap: int = NAMES_CAP) -> irc.Found:
    """This edge's view and the other edges' (as they came over the wire) as one answer."""
    members: list[str] = []
    seen: set[str] = set()
    total = 0
    online: set[str] = set()
    users = 0
    for view in (local, *others):
        for login in _strings(view.get("members"), cap):
            if login not in seen:
                seen.add(login)
                if len(members) < cap:
                    members.append(login)
        total += _count(view.get("count"))
        online.update(_strings(view.get("online"), irc.MAX_LINE))
        users += _count(view.get("users"))
    # A login on two edges counts once when every edge listed all of its members.
    complete = all(_count(v.get("count")) <= len(_strings(v.get("members"), cap)) for v in (local, *others))
    return irc.Found(members=tuple(members), member_count=len(seen) if complete else total,
                     online=frozenset(online), users=users, local_users=_count(local.get("users")),
                     unregistered=_count(local.get("unregistered")), rooms=_count(local.get("rooms")),
                     servers=1 + len(others))


class Directory:
    """The edge's side: its own view, the route that serves it, and the lookup that asks the others."""

    def __init__(self, edge: "Edge"):
        self.edge = edge
        ctx = edge.ctx
        port = ctx.services.edge.http_port
        self.peers = {host: f"http://{address}:{port}{PATH}"
                      for host, address in ctx.peers() if host != ctx.host}
        self._session: aiohttp.ClientSession | None = None
        self._logged: dict[str, float] = {}
        # Per connection, gone with it.
        self._buckets: weakref.WeakKeyDictionary[Any, TokenBucket] = weakref.WeakKeyDictionary()

    def admit(self, client: Any, query: irc.Query) -> bool:
        """May this connection start a lookup now? If not, it is told to try again later (263)."""
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = self._buckets[client] = TokenBucket(LOOKUP_RATE)
        if bucket.take():
            return True
        self.edge.m_limited.labels("lookup_rate").inc()
        client.deliver(client.proto.numeric("263", type(query).__name__.upper(),
                                            "Please wait a while and try again."))
        return False

    def local(self, params: dict[str, str]) -> dict[str, Any]:
        edge = self.edge
        room = params.get("room", "")
        registered = [c for c in edge.clients if c.proto.state == "registered" and c.login]
        return edge_view(edge.ctx.host, params,
                         room_members=(c.login for c in edge.rooms.get(room, ()) if c.login),
                         logins=(c.login for c in registered),
                         unregistered=len(edge.clients) - len(registered), rooms=len(edge.rooms))

    async def lookup(self, query: irc.Query) -> irc.Found:
        params = query_params(query)
        local = self.local(params)
        if not self.peers:
            return merge(local, [])
        answers = await asyncio.gather(*(self._ask(h, u, params) for h, u in self.peers.items()))
        return merge(local, [a for a in answers if a is not None])

    async def _ask(self, host: str, url: str, params: dict[str, str]) -> dict[str, Any] | None:
        if self._session is None:
            ctx = self.edge.ctx
            self._session = make_session(pool_size=LOOKUP_POOL, keepalive=True, local_address=ctx.address,
                                         token=ctx.internal_token)
        try:
            async with self._session.get(url, params=params,
                                         timeout=aiohttp.ClientTimeout(total=LOOKUP_TIMEOUT)) as resp:
                if resp.status != 200:
                    raise ValueError(f"HTTP {resp.status}")
                body = await resp.json()
                if not isinstance(body, dict):
                    raise ValueError("not a JSON object")
                return body
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError) as exc:
            now = time.monotonic()
            if now - self._logged.get(host, 0.0) >= FAILURE_LOG_EVERY:
                self._logged[host] = now
                logs.event(self.edge.log, "edge", f"members lookup left this edge out: {exc!r}", 30,
                           edge=host)
            return None

    async def serve(self, request: web.Request) -> web.Response:
        params = {k: request.query[k] for k in ("room", "nicks") if request.query.get(k)}
        return web.json_response(self.local(params))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
