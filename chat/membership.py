"""Membership (`twitch.tv/membership`): who joins, parts and quits the rooms you are in, across
every edge of the cluster.

Each edge records its own clients' JOINs, PARTs and QUITs per room, and once per BATCH_DELAY sends
each room's events as one message through the exchange (`/v1/publish`, command MEMBERSHIP), which
fans it out to the edges holding the room like any chat message. So a login storm costs the
exchange one message per room and batch, not one per client. The edge delivers its own batch to
its local members at once, and ignores the copy the exchange brings back.

Only members that requested `twitch.tv/membership` get these lines, never about themselves:

    :alice!alice@alice.tmi.chatops.local JOIN #lobby
    :alice!alice@alice.tmi.chatops.local PART #lobby :gone fishing
    :alice!alice@alice.tmi.chatops.local QUIT :Leaving

A client leaving the server shows as one `QUIT :<reason>` to each member sharing a room with it,
as RFC 2812 has it and as standard IRC clients expect (they drop the nick from every buffer);
a Twitch client (one that requested `twitch.tv/commands`) gets a `PART` per shared room instead,
as Twitch sends it. Anonymous (`justinfan`) logins are not announced, as on Twitch.

Twitch sends no membership for rooms over 1,000 users. The edge cannot count a room across the
cluster cheaply, so the cap is per edge: an edge holding more than MAX_ROOM_MEMBERS members of a
room neither announces their moves nor delivers others' to them.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING, Iterable

from chat import irc, logs
from chat.upstream import Upstream, UpstreamError
from cluster.durations import seconds

if TYPE_CHECKING:
    from chat.edge import Client, Edge

CAP = "twitch.tv/membership"
TWITCH_CAP = "twitch.tv/commands"    # who gets Twitch's PART per room rather than one QUIT
COMMAND = "MEMBERSHIP"               # the exchange's kind for a batch; never sent to a client as is
BATCH_DELAY = 0.5                    # seconds an event may wait for others of its room
MAX_ROOM_MEMBERS = 1000              # per edge: Twitch's 1,000, counted on each edge
QUIT_MEMORY = 10.0                   # seconds a QUIT is remembered, so a member hears it once


class Membership:
    def __init__(self, edge: Edge):
        self.edge = edge
        self.host = edge.ctx.host
        self.prefix = f"{self.host}/{os.getpid()}/"
        ex = edge.ctx.services.exchange
        self.publisher = Upstream(edge.pool, f"http://{edge.ctx.address}:{ex.port}/v1/publish",
                                  name="exchange", timeout=seconds(ex.timeout), max_pending=ex.max_pending)
        self.pending: dict[str, list[dict]] = {}
        self.timer: asyncio.TimerHandle | None = None
        self.quits_told: dict[str, tuple[float, set[int]]] = {}   # subject -> (until, client ids told)
        self.last_error_log = float("-inf")

    # -- the edge's hooks --

    def joined(self, client: Client, room: str) -> None:
        self._record(client, room, "JOIN", "")

    def parted(self, client: Client, room: str, reason: str = "") -> None:
        self._record(client, room, "PART", reason)

    def quit(self, client: Client, rooms: Iterable[str], reason: str) -> None:
        for room in rooms:
            self._record(client, room, "QUIT", reason)

    def _record(self, client: Client, room: str, op: str, reason: str) -> None:
        if client.anonymous or not client.login:
            return
        members = self.edge.rooms.get(room)
        if members is not None and len(members) > MAX_ROOM_MEMBERS:
            return
        self.pending.setdefault(room, []).append(
            {"op": op, "nick": client.login, "id": f"{self.prefix}{client.id}", "reason": reason[:200]})
        if self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(BATCH_DELAY, self.flush)

    def flush(self) -> None:
        self.timer = None
        pending, self.pending = self.pending, {}
        for room, events in pending.items():
            message = {"room": room, "command": COMMAND, "params": [], "source": "",
                       "origin": {"edge": self.host}, "events": events}
            self.deliver(message, local=True)
            self.publisher.call(message).add_done_callback(self._published)

    def _published(self, fut: asyncio.Future) -> None:
        if fut.cancelled() or fut.exception() is None:
            return
        now = time.monotonic()
        if now - self.last_error_log >= 1.0:    # membership is best effort: one line a second
            self.last_error_log = now
            logs.event(self.edge.log, "exchange", f"membership publish failed: {fut.exception()}", 30)

    # -- batches from the exchange (and this edge's own) --

    def deliver(self, message: dict, local: bool = False) -> bool:
        if not local and (message.get("origin") or {}).get("edge") == self.host:
            return True                     # delivered when it was flushed
        room, events = message["room"], message["events"]
        members = self.edge.rooms.get(room)
        if not members or len(members) > MAX_ROOM_MEMBERS:
            return True
        channel = f"#{room}"
        server = self.edge.server_name
        now = time.monotonic()
        self._forget_quits(now)
        for ev in events:
            nick, op, subject = str(ev["nick"]), ev["op"], str(ev["id"])
            source = f"{nick}!{nick}@{nick}.{server}"
            reason = str(ev.get("reason") or "")
            if op == "QUIT":
                twitch_line = irc.encode("PART", channel, source=source)
                line = irc.encode("QUIT", reason, source=source, trailing=True)
                told = self.quits_told.setdefault(subject, (now + QUIT_MEMORY, set()))[1]
            elif op == "PART" and reason:
                line = twitch_line = irc.encode("PART", channel, reason, source=source, trailing=True)
            elif op in ("JOIN", "PART"):
                line = twitch_line = irc.encode(op, channel, source=source)
            else:
                continue
            for client in members:
                if client.closed or CAP not in client.proto.caps or f"{self.prefix}{client.id}" == subject:
                    continue
                if TWITCH_CAP in client.proto.caps:
                    client.deliver(twitch_line)
                elif op != "QUIT":
                    client.deliver(line)
                elif client.id not in told:
                    told.add(client.id)
                    client.deliver(line)
        return True

    def _forget_quits(self, now: float) -> None:
        while self.quits_told:
            subject, (until, _) = next(iter(self.quits_told.items()))
            if until > now:
                break
            del self.quits_told[subject]

    async def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.pending.clear()
        try:
            await self.publisher.close()
        except UpstreamError:
            pass
