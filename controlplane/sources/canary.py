"""The canary: the control plane's own chat client in its own room of every cluster, on every edge.

The talk's worst symptom was "users don't see the same messages", which no log showed: every
edge and clue said all was well. So the control plane watches delivery from the outside, as a
user would. By default it watches one room per cluster that is its own,
`#chatops_canary_<cluster>` (cluster.spec.canary_room(); rooms allow no '-'), which
`ClusterFile.cluster_of_room` places on that cluster, so every edge of the cluster serves it
and the exchanges fan it out like any room, while no viewer of a real room (#degentp...) ever
sees "chatops-canary 9 ...". `controlplane.canary.rooms` may name real rooms instead. For each
watched room it keeps one IRC connection per edge of the room's cluster, straight to the edge's
own IRC port (not through HAProxy, which would hide which edge is which), logged in as the bot
user `chatops_canary` that it creates in Redis (chat/users.py; the token is never logged). Every
`interval` (1 s) it sends `PRIVMSG #room :chatops-canary <seq> <epoch>` through **each** edge
it is in the room on, with `echo-message` so the sending edge must deliver it back too, through
the exchange like any other message. A message sent through edge X crosses edge X, X's host's
clue and exchange, and is then delivered by every edge Y: the path X->Y gets one message per
interval.

Bookkeeping (`DeliveryBook`, pure: no sockets, no clock) records per message which edges
delivered it and when. Once a message is `delivery_late_after` (2 s) old it is judged, per edge:

- on time: delivered within `delivery_late_after`;
- missing: not delivered in time (late or never), or the canary was not in the room on that edge
  when it was sent (the edge could not be reached: "edge unreachable");
- not counted: the message was refused with a NOTICE (rate limit, `msg_unavailable`: an
  ingestion problem, for the ingestion detectors, not a delivery gap). A message that no edge
  delivered is missing on every path from the edge it was sent through (that host took it and
  nobody saw it); in an edge's own figures it counts against the sending edge only, so a stopped
  edge that swallows the canary's own messages does not make the healthy edges look bad. Such a
  message is judged only after the cluster's clue timeout + 1 s, since the edge refuses it with
  `msg_unavailable` when clue times out -- unless a later message through the same edge was
  delivered (clue is answering that edge), so a path losing every other message is judged at
  `delivery_late_after`. A refusal that comes later still takes the message out of the counts.

Every interval, per room, it writes one Observation (source `canary`, target the room) with:

- per path `<x>-><y>` (sending edge x, delivering edge y), over the last `window` (10) judged
  messages sent through x: `path:<x>-><y>:judged`, `:missed` (missed, late or unreachable) and
  `:missed_share`, and `:awaiting` (sent through x, past `delivery_late_after`, delivered by
  nobody, still waiting for a possible refusal). detectors/delivery_gaps.py fails a path at `miss_share` (0.3) × `window`
  missed -- 3 of the last 10 -- and names what the failing paths share (the receiving edge, the
  sending host's clue/exchange, or one path). Paths from an edge the canary is not in the room on
  are left out: nothing new crosses them;
- per edge `<h>`: `edge:<h>:delivered_ratio` (on time / judged over its last `window` judged
  messages from every sender), `edge:<h>:missing`, `edge:<h>:judged`, `edge:<h>:latency_s` (p50)
  and `edge:<h>:latency_max_s` (recent deliveries, late ones included), `edge:<h>:connected` (0/1);
- per room `sent`, `pending`, `refused`, `lost`, `edges`, `edges_connected`.

The detail holds the per-path counts (with the missed sequence numbers) and the last messages ×
edges, which the detector quotes as evidence.

Why these defaults: one message per edge per second costs a two-edge cluster 2 messages and 4
deliveries a second; a window of 10 means a path losing one message in two fails after about 6
messages (its third miss), judged 2 s later, so it is found in ~10 s; 3 misses in 10 is more than
one stray late message (or a 2 s stall of the control plane, which makes at most 2 late per
path) and fewer than a failing path makes.

Runs only where the scrape schedule runs (one control plane per run dir holds its lock), on a
daemon thread with its own asyncio loop. Failures are logged and retried with backoff; nothing
here can take the control plane down. `stop()` closes every connection and deletes the token.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable

from chat import irc
from collectors.base import Observation
from controlplane.sources import names

log = logging.getLogger(__name__)

LOGIN = "chatops_canary"
PREFIX = "chatops-canary"
KEEP_MESSAGES = 30          # messages remembered per room (bookkeeping and detail)
DETAIL_MESSAGES = 20        # of which the newest this many go into the observation's detail
LATENCY_MESSAGES = 5        # latency figures over at least this many recent judged messages
CONNECT_TIMEOUT = 3.0       # TCP connect, and again for login + JOIN
BACKOFF_MIN, BACKOFF_MAX = 0.5, 10.0
FIRST_ATTEMPT_WAIT = 10.0   # before the first message, wait this long for every edge's first try
SCHEDULER_WAIT = 30.0       # the scrape schedule must start within this, else no canary


# ---------------------------------------------------------------------------------------------
# Bookkeeping (pure)
# ---------------------------------------------------------------------------------------------


@dataclass
class Sent:
    seq: int
    at: float                          # wall-clock send time
    via: str                           # the edge it was sent through ("": nowhere, no edge joined)
    joined: frozenset[str]             # edges whose canary connection was in the room at send time
    refused: str | None = None         # the NOTICE's msg-id, when the edge refused it
    delivered: dict[str, float] = field(default_factory=dict)   # edge -> latency (s), first delivery


@dataclass
class EdgeState:
    connected: bool = False
    since: float | None = None         # when it last changed
    error: str | None = None           # why it is not connected


def _percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p * (len(s) - 1)))))
    return s[k]


def path_name(via: str, edge: str) -> str:
    """The series part of the path from sending edge `via` to delivering edge `edge`."""
    return names.labelled("path", f"{via}->{edge}")


MISSED = ("late", "missing", "not_connected")


class DeliveryBook:
    """Which edge delivered which canary message, and when: no sockets, no clock (callers pass
    times), so every rule is tested on plain calls."""

    def __init__(self, room: str, edges: Iterable[str], late_after: float, window: int = 10,
                 keep: int | None = None, lost_after: float | None = None):
        self.room = room
        self.edges = list(edges)
        self.late_after = late_after
        # A message no edge delivered may still be refused: the edge's NOTICE comes only when clue
        # answers or times out (services.clue.client.timeout). It waits this long to be judged,
        # unless a later message through the same edge got through (clue is answering that edge).
        self.lost_after = max(late_after, lost_after or 0.0)
        self.window = max(1, int(window))
        # Every edge sends each interval: keep enough for a full window on every path, with room
        # for the messages still pending.
        if keep is None:
            keep = max(KEEP_MESSAGES, (self.window + 4) * max(1, len(self.edges)))
        self.messages: deque[Sent] = deque(maxlen=max(keep, self.window, LATENCY_MESSAGES))
        self.state = {e: EdgeState() for e in self.edges}
        self.sent_total = 0

    # -- events --

    def sent(self, seq: int, at: float, via: str, joined: Iterable[str]) -> Sent:
        m = Sent(seq, at, via, frozenset(joined))
        self.messages.append(m)
        self.sent_total += 1
        return m

    def _find(self, seq: int) -> Sent | None:
        for m in reversed(self.messages):
            if m.seq == seq:
                return m
        return None

    def delivered(self, edge: str, seq: int, at: float, epoch: float | None = None) -> bool:
        """An edge delivered message `seq` at `at`; only its first delivery counts. False for a
        message we do not know (an old one, another control plane's: `epoch`, the send time the
        text carries, must match ours) or an unknown edge."""
        m = self._find(seq)
        if m is None or edge not in self.state or edge in m.delivered:
            return False
        if epoch is not None and abs(epoch - m.at) > 0.002:
            return False
        m.delivered[edge] = max(0.0, at - m.at)
        return True

    def refused(self, seq: int, reason: str) -> None:
        m = self._find(seq)
        if m is not None and m.refused is None:
            m.refused = reason or "refused"

    def connection(self, edge: str, connected: bool, at: float, error: str | None = None) -> None:
        st = self.state.get(edge)
        if st is None:
            return
        if st.connected != connected:
            st.since = at
        st.connected, st.error = connected, (None if connected else error)

    # -- judging --

    def verdict(self, m: Sent, edge: str, now: float) -> str:
        """on_time | late | missing | not_connected | pending (not judged yet) | refused |
        not_counted (nobody got it and it was not sent through this edge: for the edge's own
        figures only; on a path it is missing, see path_verdict)."""
        if m.refused:
            return "refused"
        lat = m.delivered.get(edge)
        if lat is not None and lat <= self.late_after:
            return "on_time"
        if now - m.at < self._judge_after(m):
            return "pending"
        if lat is not None:
            return "late"
        if edge not in m.joined:
            return "not_connected"
        if not m.delivered and edge != m.via:
            return "not_counted"
        return "missing"

    def path_verdict(self, m: Sent, edge: str, now: float) -> str:
        """The verdict on the path from m.via to `edge`: a message nobody delivered is missing on
        every path from its sending edge, which is what blames that edge's clue or exchange."""
        v = self.verdict(m, edge, now)
        return "missing" if v == "not_counted" else v

    def _judge_after(self, m: Sent) -> float:
        """A message is judged, on every edge at once, `late_after` after it was sent; one no edge
        delivered only after `lost_after` (a refusal may still come), unless the canary was in
        the room nowhere, or a later message sent through the same edge was delivered: clue
        answered that one, so this one is not waiting for clue's timeout. That keeps a path
        that drops every other message judged at `late_after`, not at clue's timeout."""
        if m.delivered or not m.joined:
            return self.late_after
        for later in reversed(self.messages):
            if later is m:
                break
            if later.via == m.via and later.delivered:
                return self.late_after
        return self.lost_after

    def judge(self, now: float) -> tuple[dict[str, float | None], dict[str, Any]]:
        """(figures, detail) for an Observation at `now`."""
        figures: dict[str, float | None] = {}
        judged = [m for m in self.messages if m.refused or now - m.at >= self._judge_after(m)]
        counted = [m for m in judged if not m.refused]
        for e in self.edges:
            verdicts = [(m, self.verdict(m, e, now)) for m in counted]
            verdicts = [(m, v) for m, v in verdicts if v != "not_counted"]
            window = verdicts[-self.window:]
            ok = sum(1 for _, v in window if v == "on_time")
            lats = [m.delivered[e] for m, _ in verdicts[-max(self.window, LATENCY_MESSAGES):]
                    if e in m.delivered]
            part = names.labelled("edge", e)
            figures[names.series(part, "judged")] = float(len(window))
            figures[names.series(part, "delivered_ratio")] = ok / len(window) if window else None
            figures[names.series(part, "missing")] = float(len(window) - ok)
            figures[names.series(part, "latency_s")] = _percentile(lats, 0.5)
            figures[names.series(part, "latency_max_s")] = max(lats) if lats else None
            figures[names.series(part, "connected")] = 1.0 if self.state[e].connected else 0.0
        paths: dict[str, dict[str, Any]] = {}
        for via in self.edges:
            own = [m for m in counted if m.via == via][-self.window:]
            # Past late_after, delivered by nobody, still waiting for a refusal: likely lost. The
            # detector uses them to name the fault early (a stopped edge swallows what is sent
            # through it, which is judged only at lost_after), never to fire on them alone.
            awaiting = sum(1 for m in self.messages if m.via == via and not m.refused and not m.delivered
                           and self.late_after <= now - m.at < self._judge_after(m))
            # Nothing is sent through an edge the canary is not in the room on: its old, good
            # messages would otherwise stand for a path nobody can judge now.
            if not own or not self.state[via].connected:
                continue
            for e in self.edges:
                missed = [m.seq for m in own if self.path_verdict(m, e, now) in MISSED]
                part = path_name(via, e)
                figures[names.series(part, "judged")] = float(len(own))
                figures[names.series(part, "missed")] = float(len(missed))
                figures[names.series(part, "missed_share")] = len(missed) / len(own)
                figures[names.series(part, "awaiting")] = float(awaiting)
                paths[f"{via}->{e}"] = {"judged": len(own), "missed": len(missed), "missed_seqs": missed,
                                        "awaiting": awaiting}
        figures["sent"] = float(self.sent_total)
        figures["pending"] = float(len(self.messages) - len(judged))
        figures["refused"] = float(sum(1 for m in judged if m.refused))
        figures["lost"] = float(sum(1 for m in counted if not m.delivered))
        figures["edges"] = float(len(self.edges))
        figures["edges_connected"] = float(sum(1 for s in self.state.values() if s.connected))
        detail = {
            "room": self.room,
            "late_after_s": self.late_after,
            "window": self.window,
            "edges": {e: {"connected": s.connected, "since": s.since, "error": s.error}
                      for e, s in self.state.items()},
            "paths": paths,
            "messages": [{"seq": m.seq, "sent_at": round(m.at, 3), "via": m.via, "refused": m.refused,
                          "edges": {e: {"state": self.verdict(m, e, now),
                                        "latency_s": (round(m.delivered[e], 4) if e in m.delivered else None)}
                                    for e in self.edges}}
                         for m in list(self.messages)[-DETAIL_MESSAGES:]],
        }
        return figures, detail


def parse_canary(text: str) -> tuple[int, float] | None:
    """`chatops-canary <seq> <epoch>` -> (seq, epoch); None for any other text."""
    parts = text.split(" ")
    if len(parts) != 3 or parts[0] != PREFIX:
        return None
    try:
        seq, epoch = int(parts[1]), float(parts[2])
    except ValueError:
        return None
    return (seq, epoch) if seq >= 0 else None


def canary_text(seq: int, at: float) -> str:
    return f"{PREFIX} {seq} {at:.3f}"


def watched_rooms(cf) -> list[str]:
    """The configured rooms, else the canary's own room in every cluster."""
    from cluster.spec import canary_room
    rooms = cf.controlplane.canary.rooms
    if rooms is None:
        rooms = [canary_room(c) for c in cf.clusters]
    return list(dict.fromkeys(r.lstrip("#") for r in rooms))


# ---------------------------------------------------------------------------------------------
# The I/O: one IRC connection per (room, edge)
# ---------------------------------------------------------------------------------------------


class Link:
    """The canary's connection to one edge, in one room. Reconnects with backoff for ever."""

    def __init__(self, canary: "Canary", room: str, edge: str, address: str, port: int):
        self.canary, self.room, self.edge, self.address, self.port = canary, room, edge, address, port
        self.book = canary.books[room]
        self.writer: asyncio.StreamWriter | None = None
        self.joined = False
        self.attempted = asyncio.Event()       # the first attempt is over, whatever its outcome
        self.outstanding: deque[int] = deque(maxlen=64)   # sent here, no echo or NOTICE yet
        self.framer = irc.Framer()

    def send(self, line: bytes) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(line)

    def privmsg(self, seq: int, text: str) -> None:
        self.outstanding.append(seq)
        self.send(irc.encode("PRIVMSG", f"#{self.room}", text, trailing=True))

    async def run(self, stop: asyncio.Event) -> None:
        backoff = BACKOFF_MIN
        failing_since_logged = False
        while not stop.is_set():
            error = None
            try:
                await self._session(stop)
                error = "closed by the edge"
            except asyncio.CancelledError:
                raise
            except (OSError, asyncio.TimeoutError, ConnectionError, LoginRefused, JoinRefused) as exc:
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                if isinstance(exc, LoginRefused):
                    self.canary.token_refused()
            except Exception as exc:   # never let one link's bug end it
                log.exception("canary link %s@%s failed", self.room, self.edge)
                error = f"{type(exc).__name__}: {exc}"
            finally:
                was_joined = self.joined
                self.joined = False
                if self.writer is not None:
                    self.writer.close()
                    self.writer = None
                self.attempted.set()
            if stop.is_set():
                break
            self.book.connection(self.edge, False, time.time(),
                                 error if self.canary._token is None else f"edge unreachable: {error}")
            if was_joined or not failing_since_logged:
                log.warning("canary: #%s on edge %s (%s:%d): %s; retrying", self.room, self.edge,
                            self.address, self.port, error)
                failing_since_logged = True
            if was_joined:
                backoff = BACKOFF_MIN
            try:
                await asyncio.wait_for(stop.wait(), backoff)
            except asyncio.TimeoutError:
                pass
            backoff = min(BACKOFF_MAX, backoff * 2)

    async def _session(self, stop: asyncio.Event) -> None:
        token = await self.canary.token()
        if token is None:
            raise ConnectionError("the canary user could not be created yet")
        src = self.canary.source_address
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.address, self.port, local_addr=(src, 0) if src else None),
            CONNECT_TIMEOUT)
        self.writer = writer
        self.framer = irc.Framer()
        self.outstanding.clear()
        writer.write(irc.encode("CAP", "REQ", "twitch.tv/tags twitch.tv/commands echo-message", trailing=True)
                     + irc.encode("PASS", f"oauth:{token}") + irc.encode("NICK", LOGIN)
                     + irc.encode("JOIN", f"#{self.room}"))
        deadline = asyncio.get_running_loop().time() + CONNECT_TIMEOUT
        while not stop.is_set():
            if not self.joined:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    raise asyncio.TimeoutError("no JOIN confirmation")
                data = await asyncio.wait_for(reader.read(65536), left)
            else:
                data = await reader.read(65536)
            if not data:
                return
            for item in self.framer.feed(data):
                if isinstance(item, irc.Message):
                    self._handle(item)
            await writer.drain()

    def _handle(self, m: irc.Message) -> None:
        cmd = m.command
        if cmd == "PRIVMSG" and len(m.params) >= 2:
            nick = (m.source or "").partition("!")[0]
            parsed = parse_canary(m.params[-1]) if nick == LOGIN else None
            if parsed is not None:
                seq = parsed[0]
                self.canary.delivered(self.room, self.edge, seq, parsed[1])
                if seq in self.outstanding:
                    self.outstanding.remove(seq)
        elif cmd == "366" and not self.joined:
            self.joined = True
            self.book.connection(self.edge, True, time.time())
            self.attempted.set()
            log.info("canary: in #%s on edge %s (%s:%d)", self.room, self.edge, self.address, self.port)
        elif cmd == "NOTICE":
            msg_id = m.tags.get("msg-id")
            if m.params[:1] == ("*",) and not self.joined:
                raise LoginRefused(m.params[-1] if m.params else "login refused")
            if msg_id and self.outstanding:
                self.book.refused(self.outstanding.popleft(), msg_id)
        elif cmd == "PING":
            self.send(irc.encode("PONG", m.params[-1] if m.params else "tmi", trailing=True))
        elif cmd == "464":
            raise LoginRefused("464 login authentication failed")
        elif cmd in ("403", "405", "471", "473", "474", "475"):
            raise JoinRefused(f"{cmd} {' '.join(m.params[1:])}")


class LoginRefused(Exception):
    pass


class JoinRefused(Exception):
    pass


class Canary:
    def __init__(self, cf, store, app=None):
        from cluster.durations import seconds
        from collectors.redis import source_address
        self.cf, self.store, self.app = cf, store, app
        self.interval = seconds(cf.controlplane.canary.interval)
        self.late_after = seconds(cf.controlplane.thresholds.delivery_late_after)
        self.source_address = source_address(cf)
        self.rooms = watched_rooms(cf)
        self.cluster_of = {r: cf.cluster_of_room(r) for r in self.rooms}
        window = cf.controlplane.canary.window
        self.books = {}
        for r in self.rooms:
            cluster = cf.clusters[self.cluster_of[r]]
            clue_timeout = seconds(cluster.services.clue.client.timeout)
            self.books[r] = DeliveryBook(r, cluster.hosts, self.late_after, window, lost_after=clue_timeout + 1.0)
        self.links: dict[str, list[Link]] = {}
        self.seq = {r: 0 for r in self.rooms}
        self._token: str | None = None
        self._token_host: str | None = None
        self._token_lock: asyncio.Lock | None = None
        self._token_retry_at = 0.0
        self._token_error_logged = False
        self._lock = threading.Lock()          # the books are touched by the loop thread only, but
        self.thread: threading.Thread | None = None   # judge() may be called from tests
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stopped = threading.Event()

    # -- the user --

    async def token(self) -> str | None:
        """The canary's token, creating the bot user on first use (and after a refused login)."""
        if self._token is not None:
            return self._token
        assert self._token_lock is not None
        async with self._token_lock:
            if self._token is not None:
                return self._token
            if time.monotonic() < self._token_retry_at:
                return None
            from chat.cache import ShardedCache
            from chat.users import add_user
            errors = []
            for host, _cluster in self.cf.chat_hosts():
                cache = ShardedCache.for_host(self.cf, host, timeout=2.0, max_conns=2)
                try:
                    self._token = await asyncio.wait_for(add_user(cache, LOGIN, bot=True), 5.0)
                    self._token_host = host
                    self._token_error_logged = False
                    log.info("canary: bot user %s ready (created through %s's shard listeners)", LOGIN, host)
                    return self._token
                except Exception as exc:       # CacheUnavailable, timeouts, OSError: try the next host
                    errors.append(f"{host}: {type(exc).__name__}: {exc}")
                finally:
                    try:
                        await cache.close()
                    except Exception:
                        pass
            self._token_retry_at = time.monotonic() + 2.0
            if not self._token_error_logged:
                log.warning("canary: cannot create the bot user %s yet: %s", LOGIN, "; ".join(errors))
                self._token_error_logged = True
            return None

    def token_refused(self) -> None:
        """An edge refused the token (Redis lost it): make a new one on the next connection."""
        if self._token is not None:
            log.warning("canary: an edge refused the canary's login; creating a new token")
        self._token = None

    async def _delete_token(self) -> None:
        if self._token is None or self._token_host is None:
            return
        from chat import keys
        from chat.cache import ShardedCache
        cache = ShardedCache.for_host(self.cf, self._token_host, timeout=1.0, max_conns=1)
        try:
            k = keys.token(self._token)
            await asyncio.wait_for(cache.client_for(k).delete(k), 2.0)
        except Exception:      # best effort: a leftover token is harmless and replaced next start
            pass
        finally:
            try:
                await cache.close()
            except Exception:
                pass
        self._token = None

    # -- events from links --

    def delivered(self, room: str, edge: str, seq: int, epoch: float) -> None:
        with self._lock:
            self.books[room].delivered(edge, seq, time.time(), epoch)

    # -- the loop --

    async def main(self) -> None:
        self._stop = asyncio.Event()
        self._token_lock = asyncio.Lock()
        tasks = []
        for room in self.rooms:
            cluster = self.cf.clusters[self.cluster_of[room]]
            port = cluster.services.edge.irc_port
            links = self.links[room] = [Link(self, room, h, self.cf.address(h), port) for h in cluster.hosts]
            tasks += [asyncio.ensure_future(link.run(self._stop)) for link in links]
        try:
            all_links = [lk for links in self.links.values() for lk in links]
            try:
                await asyncio.wait_for(asyncio.gather(*(lk.attempted.wait() for lk in all_links)),
                                       FIRST_ATTEMPT_WAIT)
            except asyncio.TimeoutError:
                pass
            loop = asyncio.get_running_loop()
            next_tick = loop.time()
            while not self._stop.is_set():
                try:
                    self.tick()
                except Exception:
                    log.exception("canary tick failed")
                next_tick += self.interval
                delay = next_tick - loop.time()
                if delay < 0:                  # fell behind (a stalled machine): do not burst
                    next_tick, delay = loop.time(), 0
                try:
                    await asyncio.wait_for(self._stop.wait(), delay)
                except asyncio.TimeoutError:
                    pass
        finally:
            self._stop.set()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for links in self.links.values():
                for lk in links:
                    if lk.writer is not None:
                        lk.writer.close()
            try:
                await asyncio.wait_for(self._delete_token(), 3.0)
            except Exception:
                pass

    def tick(self, now: float | None = None) -> None:
        """Record what each room's book says, then send the next message into each room."""
        now = time.time() if now is None else now
        for room in self.rooms:
            book = self.books[room]
            with self._lock:
                figures, detail = book.judge(now)
            detail["cluster"] = self.cluster_of[room]
            down = [e for e, s in book.state.items() if not s.connected]
            links = self.links.get(room, [])
            error = None
            if self._token is None:
                error = "the canary bot user could not be created"
            elif down:
                error = "; ".join(f"{e}: {book.state[e].error or 'not connected'}" for e in down)
            obs = Observation("canary", room, now, len(down) < len(book.edges), 0.0,
                              {"cluster": self.cluster_of[room], "edges": book.edges,
                               "sent": book.sent_total, "interval_s": self.interval}, error)
            self.store.put(obs, figures, detail)
            ready = [lk for lk in links if lk.joined]
            if not ready:
                if self._token is not None and links and all(lk.attempted.is_set() for lk in links):
                    # Every edge of the room is unreachable: still a message every interval, sent
                    # nowhere, which each edge then misses ("not_connected"): a gap on every edge.
                    self.seq[room] += 1
                    with self._lock:
                        book.sent(self.seq[room], time.time(), "", [])
                continue
            # One message through every edge each interval, so every path (sending edge ->
            # delivering edge) gets one message per interval and a fault on one path shows
            # within a window of intervals, not a window times the number of edges.
            joined = [lk.edge for lk in ready]
            for link in ready:
                self.seq[room] += 1
                seq, at = self.seq[room], time.time()
                with self._lock:
                    book.sent(seq, at, link.edge, joined)
                link.privmsg(seq, canary_text(seq, at))

    # -- the thread --

    def start(self, wait_for=None) -> None:
        """Run on a daemon thread. `wait_for()` (optional) is polled first; the canary starts
        only once it is true (the scrape schedule has started), and gives up after SCHEDULER_WAIT."""
        def run() -> None:
            deadline = time.monotonic() + SCHEDULER_WAIT
            while wait_for is not None and not wait_for():
                if self._stopped.wait(0.2) or time.monotonic() > deadline:
                    log.info("canary not started: the scrape schedule is not running here")
                    return
            if self._stopped.is_set():
                return
            loop = asyncio.new_event_loop()
            self.loop = loop
            try:
                loop.run_until_complete(self.main())
            except Exception:
                log.exception("canary stopped by an error")
            finally:
                try:
                    loop.run_until_complete(loop.shutdown_asyncgens())
                finally:
                    loop.close()
        self.thread = threading.Thread(target=run, name="chatops-canary", daemon=True)
        self.thread.start()
        log.info("canary: watching %s every %gs", ", ".join(f"#{r}" for r in self.rooms) or "no room",
                 self.interval)

    def stop(self, timeout: float = 5.0) -> None:
        """Close every connection, delete the token, end the thread. Idempotent."""
        self._stopped.set()
        loop, stop = self.loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:               # the loop closed meanwhile
                pass
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout)


def init_app(app) -> Canary | None:
    """Start the canary where the scrape schedule runs (not in tests with SCHEDULER False)."""
    cf = app.config["CLUSTER"]
    if not cf.controlplane.canary.enabled or not app.config.get("SCHEDULER", True):
        return None
    canary = Canary(cf, app.extensions["chatops.store"], app)
    app.extensions["chatops.canary"] = canary
    if not canary.rooms:
        return canary
    from controlplane import scheduler
    canary.start(wait_for=scheduler.running_here(app))
    atexit.register(canary.stop)
    return canary
