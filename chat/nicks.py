"""Open-mode nicks (`clusters.<name>.auth: open`): a nick claimed cluster-wide, so `433` holds
across every edge of the cluster, not only the one a client happens to land on.

A claim is one Redis key per nick, `{nick}.nick_claim` -> the holding connection
(`<edge>/<pid>/<conn>`), written with `SET NX EX`: the first connection to claim a nick holds it;
its edge refreshes the claim while the client stays and deletes it when the client leaves; a
crashed edge's claims expire after CLAIM_TTL. A nick that belongs to a user created with
`chatops users add` (its `{nick}.user` exists, on the same shard as the claim) is never claimed:
that user logs in with their token, as in token mode.

Clue owns the Redis side (`NickClaims`, route `POST /v1/nicks`); the edge asks through
`NickClient`. Every batch a shard runs goes through the slot guard's script, which cannot nest
another script, so a compare-and-delete is a GET then a DEL: the claim cannot change owner in
between, since only its owner deletes it and it is refreshed long before it expires.
"""

from __future__ import annotations

import asyncio
import os
import time

from chat import keys, logs
from chat.cache import CacheUnavailable, ShardedCache
from chat.upstream import Upstream, UpstreamError

CLAIM_TTL = 60           # seconds a claim outlives its edge's last refresh
REFRESH_EVERY = 20.0     # the edge refreshes its claims this often: two refreshes may fail in a row
RELEASE_TIMEOUT = 1.0    # an edge stopping waits this long for its last releases; the TTL does the rest


def _s(value) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class NickClaims:
    """Clue's side: claim, refresh and release nicks in Redis."""

    def __init__(self, cache: ShardedCache):
        self.cache = cache

    async def batch(self, items: list[dict]) -> list[dict]:
        return list(await asyncio.gather(*(self.one(i) for i in items)))

    async def one(self, item: dict) -> dict:
        op, nick, owner = item.get("op"), item.get("nick"), item.get("owner")
        if op not in ("claim", "refresh", "release") or not all(
                isinstance(v, str) and 0 < len(v) <= 64 for v in (nick, owner)):
            return {"ok": False, "error": "bad request"}
        try:
            return await getattr(self, op)(nick, owner)
        except CacheUnavailable:
            return {"ok": False, "error": "unavailable"}

    async def claim(self, nick: str, owner: str) -> dict:
        key = keys.nick_claim(nick)
        pipe = self.cache.pipeline_for(key)
        pipe.exists(keys.user(nick))
        pipe.set(key, owner, nx=True, ex=CLAIM_TTL)
        registered, claimed = await pipe.execute()
        if registered:
            if claimed:
                await self.cache.client_for(key).delete(key)
            return {"ok": False, "error": "registered"}
        return {"ok": True} if claimed else {"ok": False, "error": "in_use"}

    async def refresh(self, nick: str, owner: str) -> dict:
        # Re-claims a claim that expired meanwhile (Redis unreachable for a while); if another
        # connection took it then, its TTL is extended, which is harmless, and the edge is told.
        key = keys.nick_claim(nick)
        pipe = self.cache.pipeline_for(key)
        pipe.set(key, owner, nx=True, ex=CLAIM_TTL)
        pipe.get(key)
        pipe.expire(key, CLAIM_TTL)
        _, holder, _ = await pipe.execute()
        return {"ok": True} if _s(holder) == owner else {"ok": False, "error": "lost"}

    async def release(self, nick: str, owner: str) -> dict:
        key = keys.nick_claim(nick)
        client = self.cache.client_for(key)
        if _s(await client.get(key)) == owner:
            await client.delete(key)
        return {"ok": True}


class NickClient:
    """The edge's side: one claim per open-mode connection, refreshed until it leaves."""

    def __init__(self, upstream: Upstream, edge_name: str, log):
        self.upstream = upstream
        self.prefix = f"{edge_name}/{os.getpid()}/"
        self.log = log
        self.held: dict[str, str] = {}      # owner -> nick, for every claim this edge holds
        self.releasing: set[asyncio.Future] = set()
        self.refreshed = time.monotonic()

    def owner(self, conn_id: int) -> str:
        return f"{self.prefix}{conn_id}"

    async def claim(self, nick: str, conn_id: int) -> str:
        """'ok', 'in_use', 'registered' or 'unavailable'."""
        owner = self.owner(conn_id)
        try:
            result = await self.upstream.call({"op": "claim", "nick": nick, "owner": owner})
        except UpstreamError as exc:
            logs.event(self.log, "clue", f"nick claim failed: {exc}", 30)
            return "unavailable"
        if result.get("ok"):
            self.held[owner] = nick
            return "ok"
        return str(result.get("error", "unavailable"))

    def release(self, conn_id: int) -> None:
        nick = self.held.pop(self.owner(conn_id), None)
        if nick is None:
            return
        fut = self.upstream.call({"op": "release", "nick": nick, "owner": self.owner(conn_id)})
        self.releasing.add(fut)
        fut.add_done_callback(self._released)

    def _released(self, fut: asyncio.Future) -> None:
        self.releasing.discard(fut)
        if not fut.cancelled() and fut.exception() is not None:
            logs.event(self.log, "clue", f"nick release failed (it expires by itself): {fut.exception()}", 30)

    async def refresh(self) -> None:
        held = list(self.held.items())
        results = await asyncio.gather(*(self.upstream.call({"op": "refresh", "nick": n, "owner": o})
                                         for o, n in held), return_exceptions=True)
        failed = lost = 0
        for (owner, nick), result in zip(held, results):
            if isinstance(result, BaseException) or result.get("error") == "unavailable":
                failed += 1
            elif not result.get("ok") and owner in self.held:
                lost += 1
        if failed:
            logs.event(self.log, "clue", "nick claims not refreshed; they expire if this goes on", 30,
                       failed=failed, ttl=CLAIM_TTL)
        if lost:
            logs.event(self.log, "clue", "nick claims held by another connection after an outage", 30,
                       lost=lost)

    async def refresh_if_due(self) -> None:
        """Called on the edge's subscription refresh (every few seconds): refreshes every claim
        once REFRESH_EVERY has passed since the last time."""
        now = time.monotonic()
        if self.held and now - self.refreshed >= REFRESH_EVERY:
            self.refreshed = now
            await self.refresh()

    async def close(self) -> None:
        """Wait a little for the releases of the clients the stopping edge just closed."""
        if self.releasing:
            await asyncio.wait(set(self.releasing), timeout=RELEASE_TIMEOUT)
        await self.upstream.close()
