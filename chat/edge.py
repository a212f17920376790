"""The edge: where IRC clients connect, over TCP and over WebSocket, behind the cluster's HAProxy
frontend. It speaks the subset of IRC that Twitch's chat speaks (the protocol itself is the
sans-I/O `chat.irc`), asks clue about every PRIVMSG over a keepalive pool, tells the exchanges of
its cluster which rooms it holds, and writes the messages the exchange delivers to every local
subscriber.

Fan-out encodes each message once (one line with tags, one without) and coalesces writes: a
client's lines from one loop turn leave in one write. A client whose unsent output passes
`max_output_buffer` is disconnected with a logged reason, so one slow reader never holds memory
or slows the others.

    python -m chat.edge --config FILE --host chat1
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import socket
import time
from typing import Iterable

import aiohttp
import websockets
from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from websockets.asyncio.server import ServerConnection as WsConnection
from websockets.asyncio.server import serve as ws_serve

from chat import drain, irc, logs, members, membership, service, twitch
from chat.limits import TokenBucket, per_second
from chat.nicks import NickClient
from chat.upstream import Pool, Upstream, UpstreamError, UpstreamFull, UpstreamTimeout
from cluster.durations import seconds

PING_INTERVAL = 60.0            # the edge PINGs every client this often...
PING_TIMEOUT = 2 * PING_INTERVAL  # ...and drops one silent for this long
SUBSCRIPTION_REFRESH = 5.0      # full room list to every exchange (a starting one also asks: see app())
SENT_LOG_EVERY = 5.0            # "Message successfully sent to #room" at most this often per room
OTHER_ROOMS = ""                # sent_log's one entry for rooms this edge holds no member of
KERNEL_SNDBUF = 128 * 1024      # per client socket; Linux doubles it for bookkeeping
CLOSE_REASON_BYTES = 123        # a WebSocket close payload is <= 125 bytes, 2 of them the code
CLOSE_FLUSH_TIMEOUT = 1.0       # a closing WebSocket client's last lines (an ERROR) get this long
TAG_CAPS = frozenset({"twitch.tv/tags", "message-tags", "server-time"})
COMMANDS_CAP = "twitch.tv/commands"
JOIN_STATE_WAIT = 1.0           # seconds a JOIN waits for clue's USERSTATE/ROOMSTATE values
# Delivered only to clients that asked for twitch.tv/commands, as Twitch does.
COMMANDS_ONLY = frozenset({"CLEARCHAT", "CLEARMSG", "ROOMSTATE"})
DELIVERED = frozenset({"PRIVMSG", "NOTICE"}) | COMMANDS_ONLY
_ids = itertools.count(1)



@functools.lru_cache(maxsize=16)
def _utc_second(second: int) -> str:
    """`2026-12-05T23:02:16` for a Unix second: every message of a second shares it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))

class RoomTurn:
    """The messages for one room during one loop turn, as (plain, tagged) encodings, and the
    members that must not get some of them (by index)."""

    __slots__ = ("lines", "skip")

    def __init__(self) -> None:
        self.lines: list[tuple[bytes, bytes]] = []
        self.skip: dict[Client, set[int]] = {}


class Client:
    """One connected user, whatever the transport."""

    transport_name = "?"

    def __init__(self, edge: "Edge", peer: str):
        self.edge = edge
        self.id = next(_ids)
        self.peer = peer
        self.proto = irc.ServerConnection(edge.server_name, max_rooms=edge.max_rooms)
        self.login: str | None = None
        self.user_id = ""
        self.anonymous = False
        self.open_login = False           # logged in without a token (auth: open)
        self.rooms: set[str] = self.proto.joined   # one set: the protocol answers 442 from it
        self.out: list[bytes] = []       # lines of this loop turn, written together by Edge.flush
        self.closed = False
        self.last_heard = time.monotonic()
        self.is_tagged = False            # kept current in data(), the only place caps change
        self.busy = False                 # an async step (auth, join) is running...
        self.backlog: list = []           # ...and these events wait behind it, in order,
        self.backlog_bytes = 0            # ...holding about this many bytes of client input
        self.joins = TokenBucket(edge.join_limit)
        self.privmsgs = TokenBucket(edge.privmsg_limit)
        self.registration_timer: asyncio.TimerHandle | None = None

    def data(self, data: bytes) -> None:
        self.last_heard = time.monotonic()
        events = self.proto.receive_data(data)
        self.is_tagged = not TAG_CAPS.isdisjoint(self.proto.caps)
        self.flush_protocol()
        if events:
            self.edge.handle(self, events)
        if self.proto.state == "closed" and not self.closed:
            self.close("client quit")

    def flush_protocol(self) -> None:
        for line in self.proto.lines_to_send():
            self.deliver(line)

    def deliver(self, line: bytes) -> None:
        if self.closed:
            return
        if not self.out:
            self.edge.mark_dirty(self)
        self.out.append(line)

    def buffered(self) -> int:
        return 0

    def write_out(self) -> None:
        """Write this turn's own lines (protocol replies, notices) in one go."""
        out = self.out
        if out and not self.closed:
            self.write(out[0] if len(out) == 1 else b"".join(out), out)
        self.out = []

    def write(self, blob: bytes, lines: list[bytes]) -> None:
        """Send `blob` (the CRLF-terminated `lines`, joined) to the client."""
        raise NotImplementedError

    def close(self, reason: str) -> None:
        raise NotImplementedError


class TcpClient(asyncio.Protocol, Client):
    transport_name = "tcp"

    def __init__(self, edge: "Edge"):
        Client.__init__(self, edge, "?")
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        # A fixed kernel send buffer per client: with autotuning a stalled reader could park
        # megabytes in the kernel before the edge ever sees its own buffer grow.
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, KERNEL_SNDBUF)
        self.edge.connected(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.data(data)
        except Exception as exc:  # a bug must cost one connection, never the edge
            self.edge.log.exception("handler failed", extra={"remote": "client", "fields": {"peer": self.peer}})
            self.close(f"internal error: {exc!r}")

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.edge.disconnected(self, "connection lost" if exc is None else f"connection lost: {exc}")

    def buffered(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport else 0

    def write(self, blob: bytes, lines: list[bytes]) -> None:
        if self.transport is None or self.closed:
            return
        self.transport.write(blob)
        # Judge the client by what the kernel would not take, not by one busy turn's burst.
        if self.transport.get_write_buffer_size() > self.edge.max_output:
            self.edge.slow_consumer(self)

    def close(self, reason: str) -> None:
        if self.transport and not self.transport.is_closing():
            self.write_out()
            self.transport.close()
        self.closed = True
        self.edge.disconnected(self, reason)

    def abort(self) -> None:
        if self.transport:
            self.transport.abort()


def close_reason(reason: str) -> str:
    """`reason` as a WebSocket close reason: at most CLOSE_REASON_BYTES of UTF-8, cut by bytes at a
    character boundary (a cut by characters let 100 multibyte ones overflow the frame)."""
    return reason.encode("utf-8", "replace")[:CLOSE_REASON_BYTES].decode("utf-8", "ignore")


class WsClient(Client):
    """IRC over WebSocket: one line per text frame out; several CRLF-separated lines per frame in."""

    transport_name = "ws"

    def __init__(self, edge: "Edge", ws: WsConnection):
        peer = ws.remote_address
        super().__init__(edge, f"{peer[0]}:{peer[1]}" if peer else "?")
        self.ws = ws
        self.sending: list[str] = []
        self.wake = asyncio.Event()
        self.writer: asyncio.Task | None = None
        self.closing: asyncio.Future | None = None

    def buffered(self) -> int:
        return sum(len(s) for s in self.sending) + (self.ws.transport.get_write_buffer_size() if self.ws.transport else 0)

    def write(self, blob: bytes, lines: list[bytes]) -> None:
        if self.closed:
            return
        for line in lines:
            self.sending.append(line.rstrip(b"\r\n").decode("utf-8", "replace"))
        if self.buffered() > self.edge.max_output:
            self.edge.slow_consumer(self)
            return
        self.wake.set()

    async def write_loop(self) -> None:
        try:
            while not self.closed:
                await self.wake.wait()
                self.wake.clear()
                batch, self.sending = self.sending, []
                for text in batch:
                    await self.ws.send(text)
        except websockets.ConnectionClosed:
            pass

    def close(self, reason: str) -> None:
        if not self.closed:
            # Lines of this turn (an ERROR saying why) still go out, before the close frame.
            last = self.sending + [ln.rstrip(b"\r\n").decode("utf-8", "replace") for ln in self.out]
            self.sending, self.out = [], []
            self.closed = True
            self.edge.disconnected(self, reason)
            self.closing = asyncio.ensure_future(self._close(last, reason))

    async def _close(self, last: list[str], reason: str) -> None:
        self.wake.set()                   # the writer ends after the batch it is sending
        try:
            if last:
                # Bounded: a client that stopped reading must not keep its connection open.
                async with asyncio.timeout(CLOSE_FLUSH_TIMEOUT):
                    if self.writer is not None:
                        await asyncio.wait({self.writer})
                    for text in last:
                        await self.ws.send(text)
        except (websockets.ConnectionClosed, TimeoutError):
            pass
        await self.ws.close(1000, close_reason(reason))

    def abort(self) -> None:
        if self.ws.transport:
            self.ws.transport.abort()


class Edge:
    def __init__(self, ctx: service.Context):
        self.ctx = ctx
        self.log = ctx.log
        cfg = ctx.services.edge
        self.server_name = cfg.server_name
        self.motd = [cfg.motd]
        # 002 names the edge, so a client (and a test) can tell which edge HAProxy picked.
        self.welcome = ("Welcome, GLHF!", f"Your host is {cfg.server_name} (edge {ctx.host})",
                        "This server is rather new")
        self.max_output = cfg.max_output_buffer
        self.max_rooms = cfg.max_rooms_per_connection
        self.join_limit = per_second(cfg.join_rate)
        self.privmsg_limit = per_second(cfg.privmsg_rate)
        self.max_pending_bytes = cfg.max_pending_bytes
        self.registration_timeout = seconds(cfg.registration_timeout)
        self.http_url = f"http://{ctx.address}:{cfg.http_port}/v1/deliver"
        self.clients: set[Client] = set()
        self.rooms: dict[str, set[Client]] = {}
        self.recent = twitch.RecentMessages()     # for `.delete`: see chat.twitch
        self.anonymous_nicks: set[str] = set()
        self.dirty: list[Client] = []
        self.turns: dict[str, RoomTurn] = {}      # room -> messages delivered this loop turn
        self.by_id: dict[int, Client] = {}
        self.flush_scheduled = False
        self.tasks: set[asyncio.Task] = set()
        self.sent_log: dict[str, tuple[float, int]] = {}
        self.closed_errors: dict[str, int] = {}
        r = ctx.registry
        self.m_conns = Gauge("chat_edge_connections", "Open client connections", ["transport"], registry=r)
        self.m_conns_total = Counter("chat_edge_connections_accepted", "Client connections accepted",
                                     ["transport"], registry=r)
        self.m_received = Counter("chat_edge_messages_received", "PRIVMSGs received from clients", registry=r)
        self.m_sent = Counter("chat_edge_messages_accepted", "PRIVMSGs clue accepted", registry=r)
        self.m_rejected = Counter("chat_edge_messages_rejected", "PRIVMSGs refused, by NOTICE msg-id",
                                  ["reason"], registry=r)
        self.m_delivered = Counter("chat_edge_deliveries", "Message lines written to clients", registry=r)
        self.m_clue = Histogram("chat_edge_clue_request_seconds", "Duration of one request to clue", registry=r,
                                buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5))
        self.m_clue_timeouts = Counter("chat_edge_clue_timeouts", "Requests to clue that timed out", registry=r)
        self.m_slow = Counter("chat_edge_slow_consumer_disconnects", "Clients dropped for not reading", registry=r)
        self.m_rooms = Gauge("chat_edge_rooms", "Rooms with at least one local subscriber", registry=r)
        self.m_limited = Counter("chat_edge_limited", "Commands refused or connections closed by a "
                                 "per-connection bound", ["limit"], registry=r)
        self.m_clue_full = Counter("chat_edge_clue_queue_full", "Calls to clue refused at once: "
                                   "max_pending calls were already waiting", registry=r)
        r.register(_ProtocolErrors(self))
        clue_cfg = ctx.services.clue
        self.clue_timeout_text = clue_cfg.client.timeout
        self.m_clue_conns = Counter("chat_edge_clue_connections_opened",
                                    "TCP connections opened to clue and the exchanges (reconnects included)", registry=r)
        pool_gauge = Gauge("chat_edge_clue_pool_size", "Keepalive connections allowed to clue", registry=r)
        self.pool = Pool(pool_size=clue_cfg.client.pool_size, keepalive=True, local_address=ctx.address,
                         token=ctx.internal_token,
                         on_connect=self.m_clue_conns.inc, on_change=lambda p: pool_gauge.set(p.pool_size))
        ctx.upstreams["clue"] = self.pool
        self.clue = Upstream(self.pool, f"http://{ctx.address}:{clue_cfg.port}/v1/privmsg", name="clue",
                             timeout=seconds(clue_cfg.client.timeout), max_pending=clue_cfg.client.max_pending,
                             observe=lambda s, n: self.m_clue.observe(s))
        # Logins are rare: two in flight, whatever the pool size.
        self.clue_auth = Upstream(self.pool, f"http://{ctx.address}:{clue_cfg.port}/v1/auth", name="clue",
                                  timeout=seconds(clue_cfg.client.timeout), concurrency=2,
                                  max_pending=clue_cfg.client.max_pending)
        # A JOIN's USERSTATE and ROOMSTATE (chat.twitch): rare too, like logins.
        self.clue_state = Upstream(self.pool, f"http://{ctx.address}:{clue_cfg.port}/v1/roomstate",
                                   name="clue", timeout=seconds(clue_cfg.client.timeout), concurrency=2,
                                   max_pending=clue_cfg.client.max_pending)
        Gauge("chat_edge_clue_queued", "Calls waiting for a connection to clue (messages, logins, JOINs)",
              registry=r).set_function(lambda: self.clue.pending + self.clue_auth.pending
                                       + self.clue_state.pending)
        ex = ctx.services.exchange
        self.exchanges = [f"http://{addr}:{ex.port}/v1/subscriptions" for _, addr in ctx.peers()]
        self.membership = membership.Membership(self)
        self.nicks: NickClient | None = None      # auth: open only
        if ctx.cf.clusters[ctx.cluster].auth == "open":
            self.nicks = NickClient(Upstream(self.pool, f"http://{ctx.address}:{clue_cfg.port}/v1/nicks",
                                             name="clue", timeout=seconds(clue_cfg.client.timeout),
                                             concurrency=2, max_pending=clue_cfg.client.max_pending),
                                    ctx.host, self.log)
        self.directory = members.Directory(self)

    # -- connections --

    def connected(self, client: Client) -> None:
        self.clients.add(client)
        self.by_id[client.id] = client
        self.m_conns.labels(client.transport_name).inc()
        self.m_conns_total.labels(client.transport_name).inc()
        client.registration_timer = asyncio.get_running_loop().call_later(
            self.registration_timeout, self._registration_expired, client)

    def _registration_expired(self, client: Client) -> None:
        client.registration_timer = None
        if client.closed or client.proto.state == "registered":
            return
        self.m_limited.labels("registration_timeout").inc()
        logs.event(self.log, "client", "Registration timeout", peer=client.peer)
        self.close_link(client, "registration timeout")

    def close_link(self, client: Client, reason: str) -> None:
        """Close a connection for breaking a bound, telling it why as ircds do."""
        client.deliver(irc.encode("ERROR", f"Closing Link: {client.login or '*'} ({reason})", trailing=True))
        client.close(reason)

    def disconnected(self, client: Client, reason: str) -> None:
        if client not in self.clients:
            return
        self.clients.discard(client)
        self.by_id.pop(client.id, None)
        if client.registration_timer is not None:
            client.registration_timer.cancel()
            client.registration_timer = None
        client.backlog, client.backlog_bytes = [], 0
        self.m_conns.labels(client.transport_name).dec()
        for kind, n in client.proto.errors.items():
            self.closed_errors[kind] = self.closed_errors.get(kind, 0) + n
        self.membership.quit(client, client.rooms, _quit_reason(reason))
        for room in list(client.rooms):
            self._leave(client, room)
        if self.nicks is not None:
            self.nicks.release(client.id)
        if client.anonymous and client.login:
            self.anonymous_nicks.discard(client.login)

    def slow_consumer(self, client: Client) -> None:
        self.m_slow.inc()
        logs.event(self.log, "client", "Slow consumer disconnected", 30, nick=client.login or "*",
                   peer=client.peer, buffered=client.buffered(), limit=self.max_output)
        client.out = []
        client.closed = True
        # Not here: this runs inside a fan-out loop over the room's members, which leaving the
        # room would change under it.
        asyncio.get_running_loop().call_soon(self._drop, client)

    def _drop(self, client: Client) -> None:
        self.disconnected(client, "slow consumer")
        client.abort()

    def mark_dirty(self, client: Client) -> None:
        self.dirty.append(client)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Once per loop turn: each client's own lines, then each room's messages of the turn,
        in one write per client (each write is a syscall here and a wakeup at the reader).

        A room's messages are joined once per encoding and the same bytes go to every member;
        only a member that must miss one of them (its own message without echo-message, a
        CLEARCHAT without twitch.tv/commands) gets a join of its own."""
        self.flush_scheduled = False
        first: dict[Client, tuple[bytes, list[bytes]]] = {}     # a client's first piece of the turn
        more: dict[Client, list[tuple[bytes, list[bytes]]]] = {}

        def add(client: Client, blob: bytes, lines: list[bytes]) -> None:
            if client in first:
                more.setdefault(client, []).append((blob, lines))
            else:
                first[client] = (blob, lines)

        dirty, self.dirty = self.dirty, []
        for client in dirty:
            out, client.out = client.out, []
            if out and not client.closed:
                add(client, out[0] if len(out) == 1 else b"".join(out), out)
        turns, self.turns = self.turns, {}
        delivered = 0
        for room, turn in turns.items():
            members = self.rooms.get(room)
            if not members:
                continue
            pairs, skip = turn.lines, turn.skip
            joined: list[bytes | None] = [None, None]      # indexed by is_tagged: plain, tagged
            lines: list[list[bytes] | None] = [None, None]
            for client in members:
                if client.closed:
                    continue
                t = client.is_tagged
                skipped = skip.get(client) if skip else None
                if skipped:
                    own = [p[t] for i, p in enumerate(pairs) if i not in skipped]
                    if own:
                        add(client, b"".join(own), own)
                        delivered += len(own)
                    continue
                blob = joined[t]
                if blob is None:
                    lines[t] = [p[t] for p in pairs]
                    blob = joined[t] = b"".join(lines[t])
                add(client, blob, lines[t])
                delivered += len(pairs)
        for client, (blob, lines_) in first.items():
            extra = more.get(client)
            if extra:
                blob = b"".join([blob, *(b for b, _ in extra)])
                lines_ = [*lines_, *(line for _, ls in extra for line in ls)]
            client.write(blob, lines_)
        if delivered:
            self.m_delivered.inc(delivered)

    # -- events from clients --

    def handle(self, client: Client, events: Iterable) -> None:
        if client.busy:
            self._hold(client, list(events))
            return
        events = list(events)
        for i, ev in enumerate(events):
            if client.closed:
                return
            if isinstance(ev, irc.Privmsg):
                self.privmsg(client, ev)
            elif isinstance(ev, (irc.RegistrationRequest, irc.Join)):
                if isinstance(ev, irc.Join):
                    channels = self._admit_joins(client, ev.channels)
                    if not channels:
                        continue
                    ev = irc.Join(channels)
                client.busy = True
                self._hold(client, events[i + 1:], first=True)
                if not client.closed:
                    self._spawn(self._async_step(client, ev))
                return
            elif isinstance(ev, irc.QUERIES):
                if not client.proto.answer(ev) and self.directory.admit(client, ev):
                    # Needs the other edges' members: in order, like a JOIN, at most LOOKUP_TIMEOUT.
                    client.busy = True
                    self._hold(client, events[i + 1:], first=True)
                    if not client.closed:
                        self._spawn(self._async_step(client, ev))
                    return
                client.flush_protocol()
            elif isinstance(ev, irc.Part):
                for room in ev.channels:
                    if room[1:] in client.rooms:
                        self._leave(client, room[1:])
                        self.membership.parted(client, room[1:], ev.reason)
                        reason = (ev.reason,) if ev.reason else ()
                        client.deliver(irc.encode("PART", room, *reason, source=self._source(client),
                                                  trailing=bool(reason)))
                    else:
                        client.deliver(client.proto.numeric("442", room, "You're not on that channel"))
            elif isinstance(ev, irc.Quit):
                client.close(f"quit: {ev.reason}")
                return

    async def _async_step(self, client: Client, ev) -> None:
        try:
            if isinstance(ev, irc.RegistrationRequest):
                await self.register(client, ev)
            elif isinstance(ev, irc.QUERIES):
                client.proto.answer(ev, await self.directory.lookup(ev))
            else:
                await self.join(client, ev.channels)
        except Exception as exc:
            self.log.exception("client step failed", extra={"remote": "client", "fields": {"peer": client.peer}})
            client.close(f"internal error: {exc!r}")
            return
        finally:
            client.busy = False
        client.flush_protocol()
        backlog, client.backlog, client.backlog_bytes = client.backlog, [], 0
        if backlog and not client.closed:
            self.handle(client, backlog)

    def _hold(self, client: Client, events: list, first: bool = False) -> None:
        """Queue events behind the login or JOIN in progress; past max_pending_bytes of them the
        connection is closed (one client used to park 17 MB here)."""
        if not events:
            return
        client.backlog_bytes += sum(_held_bytes(ev) for ev in events)
        client.backlog = events + client.backlog if first else client.backlog + events
        if client.backlog_bytes > self.max_pending_bytes:
            self.m_limited.labels("pending_bytes").inc()
            logs.event(self.log, "client", "Too much input while login or JOIN pending", 30,
                       nick=client.login or "*", peer=client.peer, limit=self.max_pending_bytes)
            client.backlog, client.backlog_bytes = [], 0
            self.close_link(client, f"sent over {self.max_pending_bytes} bytes while login or JOIN was pending")

    def _admit_joins(self, client: Client, channels: Iterable[str]) -> tuple[str, ...]:
        """The channels of a JOIN this connection may join now; each other one is answered here,
        before any work: another cluster's room (403), over max_rooms_per_connection (405), or
        over join_rate (a NOTICE; Twitch counts every channel of a JOIN line)."""
        admitted: list[str] = []
        held = len(client.rooms)
        for channel in channels:
            room = channel[1:]
            home = self.ctx.cf.cluster_of_room(room)
            if home != self.ctx.cluster:
                fe = self.ctx.cf.clusters[home].frontend
                where = ", ".join(f"{self.ctx.cf.address(h)}:{fe.irc_port}" for h in self.ctx.cf.clusters[home].hosts)
                client.deliver(client.proto.numeric("403", channel, f"No such channel here: #{room} is served by "
                                                                    f"cluster {home} ({where})"))
                continue
            if room in client.rooms:
                continue
            if held >= self.max_rooms:
                self.m_limited.labels("rooms").inc()
                client.deliver(client.proto.numeric("405", channel, "You have joined too many channels"))
                continue
            if not client.joins.take():
                self.m_limited.labels("join_rate").inc()
                self._notice(client, room, "join_ratelimit",
                             f"You were not joined to #{room}: you are joining rooms too quickly.")
                continue
            held += 1
            admitted.append(channel)
        return tuple(admitted)

    async def register(self, client: Client, ev: irc.RegistrationRequest) -> None:
        password = ev.password or ""
        if password.startswith("oauth:"):
            password = password[len("oauth:"):]
        if not password:
            if self.nicks is not None and not ev.nick.startswith("justinfan"):
                await self._claim_nick(client, ev.nick)
            elif not ev.nick.startswith("justinfan"):
                client.proto.reject_registration("Login authentication failed")
            elif ev.nick in self.anonymous_nicks:
                client.deliver(client.proto.numeric("433", ev.nick, "Nickname is already in use"))
                client.proto.reject_registration("Nickname is already in use")
            else:
                client.anonymous, client.login = True, ev.nick
                self.anonymous_nicks.add(ev.nick)
                client.proto.accept_registration(ev.nick, welcome=self.welcome, motd=self.motd)
        else:
            try:
                result = await self.clue_auth.call({"token": password})
            except UpstreamError as exc:
                logs.event(self.log, "clue", f"auth failed: {exc}", 30)
                result = {"ok": False}
            if result.get("ok"):
                client.login, client.user_id = result["login"], result["user_id"]
                client.proto.accept_registration(result["login"], welcome=self.welcome, motd=self.motd)
                if COMMANDS_CAP in client.proto.caps:
                    client.flush_protocol()
                    self._send(client, twitch.globaluserstate(
                        user_id=result["user_id"], color=result.get("color", ""),
                        display_name=result.get("display_name") or result["login"], source=self.server_name))
            elif self.nicks is not None and result.get("error") == "invalid token":
                await self._claim_nick(client, ev.nick)   # open mode: a PASS that is no token is ignored
            else:
                client.proto.reject_registration("Login authentication failed")
        if client.proto.state == "registered" and client.registration_timer is not None:
            client.registration_timer.cancel()
            client.registration_timer = None
        client.flush_protocol()
        if client.proto.state == "closed":
            client.close("registration refused")

    async def _claim_nick(self, client: Client, nick: str) -> None:
        """auth: open: log in as `nick` if no connection of the cluster holds it (chat.nicks)."""
        verdict = await self.nicks.claim(nick, client.id)
        if client.closed:
            self.nicks.release(client.id)
        elif verdict == "ok":
            client.login, client.user_id, client.open_login = nick, "", True
            client.proto.accept_registration(nick, welcome=self.welcome, motd=self.motd)
        elif verdict in ("in_use", "registered"):
            client.proto.refuse_nick(nick, "Nickname is already in use" if verdict == "in_use" else
                                     "Nickname is registered: log in with its token (PASS oauth:<token>)")
            # What the client sent after NICK waited for a login that did not happen.
            for _ in client.backlog:
                client.deliver(client.proto.numeric("451", "You have not registered"))
            client.backlog, client.backlog_bytes = [], 0
        else:
            client.proto.reject_registration("Login unavailable: chat is temporarily unavailable")

    async def join(self, client: Client, channels: Iterable[str]) -> None:
        """Join channels _admit_joins let through."""
        channels = [c for c in channels if c[1:] not in client.rooms]
        states: dict[str, dict] = {}
        if channels and COMMANDS_CAP in client.proto.caps:
            # Before the JOIN lines, so 366 still ends the JOIN as clients (and tests) expect.
            states = await self._room_states(client, [c[1:] for c in channels])
            if client.closed:
                return
        for channel in channels:
            room = channel[1:]
            if room in client.rooms:
                continue
            members = self.rooms.get(room)
            if members is None:
                members = self.rooms[room] = set()
                self.m_rooms.set(len(self.rooms))
                await self._announce([room], full=False)
                if client.closed:
                    # Gone while the exchanges were told: joining now would hold it (and the
                    # room) forever, since its disconnect has already run.
                    if not members and self.rooms.get(room) is members:
                        self._drop_room(room)
                    return
            members.add(client)
            client.rooms.add(room)
            nick = client.login
            client.deliver(irc.encode("JOIN", channel, source=self._source(client)))
            client.deliver(client.proto.numeric("353", "=", channel, nick))
            client.deliver(client.proto.numeric("366", channel, "End of /NAMES list"))
            if (state := states.get(room)) is not None:
                self._send(client, twitch.userstate(room, state["userstate"], source=self.server_name))
                self._send(client, twitch.roomstate(room, state["room_id"], state["modes"],
                                                    source=self.server_name))
            self.membership.joined(client, room)

    async def _room_states(self, client: Client, rooms: list[str]) -> dict[str, dict]:
        """Clue's USERSTATE and ROOMSTATE values for each room, by room. A room clue does not answer
        for within JOIN_STATE_WAIT is joined all the same, without them: a slow clue must not
        hold JOINs, which never needed it before."""
        futures = {r: self.clue_state.call({"login": client.login, "room": r, "anonymous": client.anonymous})
                   for r in rooms}
        done, late = await asyncio.wait(futures.values(), timeout=JOIN_STATE_WAIT)
        for fut in late:
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())   # retrieved: no warning
        states, missing = {}, []
        for room, fut in futures.items():
            if fut in done and fut.exception() is None and fut.result().get("ok"):
                states[room] = fut.result()
            else:
                missing.append(room)
        if missing:
            outcome = "late" if late else next((repr(f.exception() or f.result()) for f in done
                                                if f.exception() or not f.result().get("ok")), "")
            logs.event(self.log, "clue", "no room state for JOIN", 30, rooms=len(missing),
                       outcome=outcome[:200])
        return states

    def _send(self, client: Client, message: irc.Message) -> None:
        """One line to one client, with its tags only if the client asked for tags."""
        tags = message.tags if client.is_tagged else None
        client.deliver(irc.encode(message.command, *message.params, tags=tags, source=message.source,
                                  trailing=len(message.params) > 1))

    def _leave(self, client: Client, room: str) -> None:
        client.rooms.discard(room)
        members = self.rooms.get(room)
        if members is not None:
            members.discard(client)
            if not members:
                self._drop_room(room)

    def _drop_room(self, room: str) -> None:
        del self.rooms[room]
        self.recent.drop(room)
        self.sent_log.pop(room, None)
        self.m_rooms.set(len(self.rooms))

    def privmsg(self, client: Client, ev: irc.Privmsg) -> None:
        if not ev.target.startswith("#"):
            client.deliver(client.proto.numeric("401", ev.target, "No such nick/channel"))
            return
        room = ev.target[1:]
        if client.anonymous:
            self._notice(client, room, "msg_anonymous", "You must log in to send messages.")
            return
        if not client.privmsgs.take():
            # Before clue: a flood from one connection costs clue and Redis nothing.
            self.m_limited.labels("privmsg_rate").inc()
            self._notice(client, room, "msg_ratelimit",
                         "Your message was not sent because you are sending messages too quickly.")
            return
        self.m_received.inc()
        nonce = ev.tags.get("+client-nonce") or ev.tags.get("client-nonce")
        item = {"login": client.login, "room": room, "text": ev.text, "edge": self.ctx.host,
                "conn": client.id, "tags": {"client-nonce": nonce} if nonce else {}}
        if client.open_login:
            item["auth"] = "open"        # clue gives a nick without a token no badges
        target = twitch.delete_target(ev.text)
        if target and (found := self.recent.get(room, target)):
            # Only this edge knows the message (its recent index); clue decides whether it goes.
            item["delete"] = {"id": target, "login": found[0], "text": found[1], "badges": found[2]}
        fut = self.clue.call(item)
        fut.add_done_callback(lambda f: self._verdict(client, room, f))

    def _verdict(self, client: Client, room: str, fut: asyncio.Future) -> None:
        exc = fut.exception()
        if isinstance(exc, UpstreamFull):
            self.m_clue_full.inc()
            if exc.report:
                logs.event(self.log, "clue", f"request refused: {exc}", 30, refused=exc.report)
            result = {"ok": False, "notice": {"msg_id": "msg_unavailable", "text": "Your message was not sent: chat is temporarily unavailable."}}
        elif isinstance(exc, UpstreamTimeout):
            self.m_clue_timeouts.inc()
            logs.event(self.log, "clue", f"Timed out (after {self.clue_timeout_text}) while writing request for: privmsg", 30)
            result = {"ok": False, "notice": {"msg_id": "msg_unavailable", "text": "Your message was not sent: chat is temporarily unavailable."}}
        elif exc is not None:
            logs.event(self.log, "clue", f"request failed: {exc}", 30)
            result = {"ok": False, "notice": {"msg_id": "msg_unavailable", "text": "Your message was not sent: chat is temporarily unavailable."}}
        else:
            result = fut.result()
        if result.get("ok"):
            self.m_sent.inc()
            self._log_sent(room)
            if result.get("userstate") and COMMANDS_CAP in client.proto.caps and not client.closed:
                self._send(client, twitch.userstate(room, result["userstate"], source=self.server_name,
                                                    msg_id=result.get("id")))
                client.flush_protocol()
            return
        n = result.get("notice") or {}
        self.m_rejected.labels(n.get("msg_id", "unknown")).inc()
        if not client.closed:
            self._notice(client, room, n.get("msg_id", "msg_rejected"), n.get("text", "Your message was not sent."))

    def _log_sent(self, room: str) -> None:
        # Keyed by the rooms this edge holds (dropped with the room), all others sharing one
        # entry: a sender may name any room, and one entry per name grew without limit.
        key = room if room in self.rooms else OTHER_ROOMS
        now = time.monotonic()
        last, count = self.sent_log.get(key, (0.0, 0))
        count += 1
        if now - last >= SENT_LOG_EVERY:
            where = f"#{room}" if key else "rooms with no member on this edge"
            logs.event(self.log, "clue", f"Message successfully sent to {where}", messages=count)
            self.sent_log[key] = (now, 0)
        else:
            self.sent_log[key] = (last, count)

    def _notice(self, client: Client, room: str, msg_id: str, text: str) -> None:
        tags = {"msg-id": msg_id} if client.is_tagged else None
        client.deliver(irc.encode("NOTICE", f"#{room}", text, tags=tags, source=self.server_name, trailing=True))
        client.flush_protocol()

    def _source(self, client: Client) -> str:
        return f"{client.login}!{client.login}@{client.login}.{self.server_name}"

    # -- deliveries from the exchange --

    def deliver(self, message: dict) -> bool:
        room = message["room"]
        members = self.rooms.get(room)
        if not members:
            return True
        command = message["command"]
        if command == membership.COMMAND:
            return self.membership.deliver(message)
        if command not in DELIVERED:
            return False
        tags = dict(message.get("tags") or {})
        ts = tags.get("tmi-sent-ts")
        if ts and ts.isascii() and ts.isdigit() and len(ts) <= 13:     # up to the year 2286
            ms = int(ts)
            tags["time"] = f"{_utc_second(ms // 1000)}.{ms % 1000:03d}Z"
        params, source = message["params"], message["source"]
        if command == "PRIVMSG" and tags.get("id") and len(params) == 2:
            self.recent.add(room, tags["id"], source.partition("!")[0], params[1], tags.get("badges", ""))
        # Encoded once per message, whatever the number of subscribers.
        # Text takes the ':' form (Twitch writes it so); a lone channel does not (`ROOMSTATE #room`).
        text = len(params) > 1
        pair = (irc.encode(command, *params, source=source, trailing=text),
                irc.encode(command, *params, tags=tags, source=source, trailing=text))
        turn = self.turns.get(room)
        if turn is None:
            turn = self.turns[room] = RoomTurn()
        index = len(turn.lines)
        turn.lines.append(pair)
        origin = message.get("origin") or {}
        if origin.get("edge") == self.ctx.host:
            sender = self.by_id.get(origin.get("conn"))
            if sender is not None and "echo-message" not in sender.proto.caps:
                turn.skip.setdefault(sender, set()).add(index)
        if command in COMMANDS_ONLY:
            for client in members:
                if COMMANDS_CAP not in client.proto.caps:
                    turn.skip.setdefault(client, set()).add(index)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)
        return True

    # -- subscriptions at the exchanges --

    async def _announce(self, rooms: list[str], full: bool) -> None:
        body = {"edge": self.ctx.host, "url": self.http_url, "rooms": rooms, "full": full}
        timeout = seconds(self.ctx.services.exchange.timeout)

        async def one(url: str) -> None:
            try:
                with self.pool.lease() as session:
                    async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                        if resp.status != 200:
                            raise UpstreamError(f"HTTP {resp.status}")
            # An unreachable exchange must not stop a JOIN; the next refresh tells it again.
            except (aiohttp.ClientError, OSError, TimeoutError, UpstreamError) as exc:
                logs.event(self.log, "exchange", f"subscription update failed: {exc!r}", 30, url=url)
        await asyncio.gather(*(one(u) for u in self.exchanges))

    async def refresh_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._announce(sorted(self.rooms), full=True)
            self.ping_idle()
            if self.nicks is not None:
                self._spawn(self.nicks.refresh_if_due())
            try:
                await asyncio.wait_for(stop.wait(), SUBSCRIPTION_REFRESH)
            except asyncio.TimeoutError:
                pass

    def ping_idle(self) -> None:
        now = time.monotonic()
        for client in list(self.clients):
            idle = now - client.last_heard
            if idle > PING_TIMEOUT:
                logs.event(self.log, "client", "Ping timeout", nick=client.login or "*", peer=client.peer)
                client.close("ping timeout")
            elif idle > PING_INTERVAL:
                client.proto.ping(self.server_name)
                client.flush_protocol()

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def app(self) -> web.Application:
        app = service.metrics_app(self.ctx)

        async def deliver(request: web.Request) -> web.Response:
            try:
                items = (await request.json())["items"]
                results = [self.deliver(m) for m in items]
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                return web.json_response({"error": f"bad request: {exc!r}"}, status=400)
            return web.json_response({"results": results})

        async def subscriptions(_request: web.Request) -> web.Response:
            # What the refresh tells every exchange, for an exchange that has just started.
            return web.json_response({"edge": self.ctx.host, "url": self.http_url, "rooms": sorted(self.rooms)})

        app.router.add_post("/v1/deliver", deliver)
        app.router.add_get("/v1/subscriptions", subscriptions)
        app.router.add_get(members.PATH, self.directory.serve)
        return app

    async def websocket(self, ws: WsConnection) -> None:
        client = WsClient(self, ws)
        self.connected(client)
        client.writer = asyncio.ensure_future(client.write_loop())
        try:
            async for frame in ws:
                data = frame.encode() if isinstance(frame, str) else frame
                if not data.endswith(b"\n"):
                    data += b"\r\n"
                client.data(data)
                if client.closed:
                    break
        except websockets.ConnectionClosed:
            pass
        except Exception:
            self.log.exception("websocket handler failed", extra={"remote": "client", "fields": {"peer": client.peer}})
        finally:
            client.closed = True
            self.disconnected(client, "websocket closed")
            client.wake.set()
            client.writer.cancel()
            if client.closing is not None:
                # Returning closes the connection with no reason; the client's own close (a QUIT's
                # reason) goes first.
                try:
                    await client.closing
                except Exception:
                    pass

    async def close(self) -> None:
        await drain.close_all(self)
        if self.nicks is not None:
            await self.nicks.close()
        await self.membership.close()
        for task in list(self.tasks):
            task.cancel()
        await self.clue.close()
        await self.clue_auth.close()
        await self.clue_state.close()
        await self.pool.close()
        await self.directory.close()


def _quit_reason(reason: str) -> str:
    """What other members see as a leaving client's QUIT reason: its own words after a QUIT, else
    the edge's short reason (ping timeout, connection lost...), never an internal error's text."""
    if reason.startswith("quit: "):
        return reason[len("quit: "):]
    return "Connection closed" if reason.startswith("internal error") else reason


def _held_bytes(ev) -> int:
    """About the input bytes one queued event stands for (its line, tags included)."""
    if isinstance(ev, irc.Privmsg):
        return (len(ev.target) + len(ev.text.encode()) + 12
                + sum(len(k) + len(v.encode()) + 2 for k, v in ev.tags.items()))
    if isinstance(ev, (irc.Join, irc.Part)):
        return 8 + sum(len(c) + 1 for c in ev.channels)
    if isinstance(ev, irc.Quit):
        return 8 + len(ev.reason.encode())
    if isinstance(ev, irc.Pong):
        return 8 + len(ev.token.encode())
    return 64


class _ProtocolErrors:
    """Protocol errors (too long, bad UTF-8, unknown command...) from open and closed connections."""

    def __init__(self, edge: Edge):
        self.edge = edge

    def collect(self):
        totals = dict(self.edge.closed_errors)
        for client in self.edge.clients:
            for kind, n in client.proto.errors.items():
                totals[kind] = totals.get(kind, 0) + n
        fam = CounterMetricFamily("chat_edge_protocol_errors", "Bad client input, by kind", labels=["kind"])
        for kind, n in sorted(totals.items()):
            fam.add_metric([kind], n)
        yield fam


async def main(ctx: service.Context, stop: asyncio.Event) -> None:
    edge = Edge(ctx)
    cfg = ctx.services.edge
    loop = asyncio.get_running_loop()
    listeners = drain.Listeners([
        lambda: loop.create_server(lambda: TcpClient(edge), ctx.address, cfg.irc_port, backlog=2048,
                                   reuse_address=True),
        lambda: ws_serve(edge.websocket, ctx.address, cfg.ws_port, subprotocols=["text.ircv3.net"],
                         max_size=irc.MAX_TAGS + irc.MAX_LINE * 4, compression=None,
                         select_subprotocol=_select_subprotocol)])
    await listeners.open()
    drainer = drain.Drainer(edge, listeners, seconds(cfg.drain_period), cfg.drain_period)
    drain.install_sigterm(drainer, stop)
    app = edge.app()
    drain.add_admin_routes(app, ctx, drainer)
    runner = await service.serve_http(app, ctx.address, cfg.http_port)
    refresher = asyncio.ensure_future(edge.refresh_loop(stop))
    logs.event(ctx.log, None, "listening", irc=f"{ctx.address}:{cfg.irc_port}", ws=f"{ctx.address}:{cfg.ws_port}",
               http=f"{ctx.address}:{cfg.http_port}")
    try:
        await stop.wait()
    finally:
        listeners.close()
        await edge.close()
        refresher.cancel()
        await runner.cleanup()


def _select_subprotocol(_conn, offered):
    """Offer text.ircv3.net to clients that ask for it; accept clients that ask for nothing."""
    return "text.ircv3.net" if "text.ircv3.net" in offered else None


if __name__ == "__main__":
    _ctx = service.parse_args("tmi_edge")
    service.run(lambda stop: main(_ctx, stop))
