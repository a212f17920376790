"""Fake traffic, the talk's lesson: "generate fake traffic to force us to handle more load than we
need". Opens many IRC clients against a running cluster, exactly as viewers and bots would reach
it (TCP and WebSocket, through each cluster's HAProxy frontend), makes a few of them talk at an
evenly paced total rate, and measures what came back:

- sent, accepted (the sender's own echo came back: `echo-message`), rejected (a NOTICE, by msg-id:
  msg_ratelimit, msg_unavailable, msg_banned...);
- delivered: receivers that got a PRIVMSG whose `id` is one of the accepted messages, and the
  delivery completeness, delivered / (accepted x receivers in that message's room);
- duplicates: a receiver that got the same message `id` twice (a retry that delivered again).
  The second copy is not counted as delivered, so completeness never passes 1. Each receiver
  remembers its last DEDUP_WINDOW ids (25 s at 10 messages/s in its room), which bounds the
  memory and is far longer than any retry's timeout;
- end-to-end latency, receive time minus the message's `tmi-sent-ts` (stamped by clue once it
  decided), as p50/p99/max; plus send -> echo (`ack_ms`) and send -> receive (`client_to_client_ms`),
  which also cover the edge -> clue -> Redis leg;
- connection failures and disconnects, by kind, with a few examples;
- the edge each connection landed on (the edge names itself in the 002 welcome line: "Your host
  is tmi.chatops.local (edge chat1)"), and every connection lost and re-established: when, on
  which edge, behind which frontend, after how long (`reconnections` in the report).

Lost connections. Unbounded runs (--duration 0) always reconnect a lost client; a timed run does
so with --reconnect (as a rolling restart needs), else it goes on without the client. The first
attempt comes after RECONNECT_FIRST (1 s, with jitter), doubling up to RECONNECT_MAX. How a lost
receiver counts toward completeness:

- without --reconnect (timed runs): it stays in its room's expected receivers, so every message
  accepted after the loss counts as missed: the run measures the damage;
- with reconnection: from the loss until its JOIN completes again it is not an expected receiver
  (it cannot receive, and IRC has no replay), so completeness measures delivery to the clients
  that were connected. The messages it missed meanwhile are not hidden: the report counts them in
  `excluded_while_disconnected` (receiver x message pairs) and gives `completeness_with_gaps`,
  delivered / (expected + excluded), the figure that counts them as missed. The loss itself is in
  `reconnections`.

RECONNECT (an edge drained or stopping, chat/drain.py) is honoured by every client, whatever
--reconnect says, make-before-break: a new connection through the same frontend, registered and
joined, then the old one closed MOVE_OVERLAP later; a message seen on both counts once. Such a move
is no loss: the report counts it in `reconnects`, one entry per move in `reconnect_events`. If the
edge closes the old connection first, the receiver is not expected until the new one is in (as
when reconnecting); if no new connection comes up, the loss counts as one.

Messages are told apart by a per-run `client-nonce` prefix, so other traffic in the same rooms
(another load generator, real users) is ignored. A message that receivers got but whose echo never
came, or one that got neither an echo nor a NOTICE, is counted as lost, separately.

    python -m chat.loadgen [--config FILE] [--clients 200] [--senders 10] [--rate 50]
        [--duration 30] [--rooms a,b] [--hot-room ROOM] [--tpp [--ramp 30]] [--ws-fraction 0.25]
        [--source-address 127.0.3.1] [--reconnect] [--series] [--json] [--quiet] [--report-every 10]

Per second (--series, always with --tpp): the report's `series` has one point a second of what
settled in it: sent, accepted, rejected, delivered, expected, completeness, duplicates, p99, and
`echoed_from`/`echoed_to`, the wall-clock span of the echoes of the messages it judged (a message
is judged SETTLE_AFTER after its echo), so a fault at a known time can be matched to the
messages sent around it (the chaos test does).

Progress: one line a second on stderr, rewritten in place on a terminal, else a plain line every
--report-every seconds; --quiet drops it. With --duration 0 (background traffic, as the
supervisor runs it) the generator instead logs a summary line in the talk's shape every
--report-every seconds (`Feb 18 06:54:04 loadgen: [edge] traffic sent=... completeness=...`) and
runs until SIGINT/SIGTERM, after which, as after a timed run, every socket is closed and the
report printed: a summary on stderr, and with --json one JSON object as the last stdout line.

Exit status: 0 when the run took place (whatever it measured), 1 when it could not (no sender
could join, the users could not be created), 2 for a usage error (bad option, a non-loopback
address, too many clients for the descriptor limit, or for one frontend's per-source connection
limit, `haproxy.edge_maxconn_per_source`: every client connects from the same address).

Senders are bot users it creates (`loadgen_<n>`, Twitch's 7,500 messages per 30 s) through the
same shard listeners `chatops users add` uses; the tokens it made are deleted at the end.
Receivers are anonymous (`justinfan<digits>`), as most viewers are.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import itertools
import json
import logging
import math
import os
import random
import re
import resource
import secrets
import signal
import sys
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from chat import irc, logs
from cluster import clusterfile, durations, spec

__all__ = ["Options", "LoadgenError", "plan", "run", "main", "parse_args", "TPP_COMMANDS", "Histogram"]

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
# The Twitch Plays Pokémon command mix: mostly directions and A, a little B and start, and the
# occasional vote on how the game is played.
TPP_COMMANDS = ("up", "down", "left", "right", "a", "b", "start", "anarchy", "democracy")
TPP_WEIGHTS = (16, 16, 16, 16, 14, 10, 4, 3, 3)
CHAT_WORDS = ("Kappa", "PogChamp", "LUL", "gg", "wow", "nice", "lol", "BibleThump", "Kreygasm", "hype")

CONNECT_TIMEOUT = 5.0
CONNECT_ATTEMPTS = 3            # a refused or dropped connection during set-up is retried...
CONNECT_BACKOFF = 0.5           # ...after 0.5 s, then 1 s
SETUP_TIMEOUT = 15.0            # connecting, registering and joining, for everyone (plus per-client slack)
CONNECT_CONCURRENCY = 200       # connections being opened at once
DRAIN_MAX = 3.0                 # after sending stops, wait at most this long for the last deliveries...
DRAIN_QUIET = 0.5               # ...and stop as soon as nothing has arrived for this long
SETTLE_AFTER = 1.0              # a message counts towards "completeness so far" this long after its echo
FORGET_AFTER = 60.0             # unbounded runs forget settled ids after this long
DEDUP_WINDOW = 256              # ids each receiver remembers to spot one delivered twice
MAX_TICK = 0.005                # the sender pacer's tick at high rates (evenly paced, not bursty)
MAX_CATCH_UP = 0.1              # a late tick sends at most this many seconds' worth of messages
FD_RESERVE = 64
RECONNECT_FIRST = 1.0           # a lost client reconnects after 0.5-1 s (jitter), doubling...
RECONNECT_MAX = 30.0            # ...up to 30 s between attempts
MAX_EVENTS = 2000               # reconnection events kept in the report (the counts are always whole)
MOVE_OVERLAP = 0.5              # after RECONNECT, the old connection stays this long past the new one's 366
TEXT_MAX = 400
# --tpp grows the room the way TPP grew, 5k to 50k viewers: the rate starts at a tenth and
# reaches the full --rate after --ramp seconds.
TPP_RAMP_FROM = 0.1
TPP_RAMP_S = 30.0
EDGE_IN_WELCOME = re.compile(r"\(edge ([A-Za-z0-9_.-]{1,64})\)")


_early_stop = False             # a signal that came before the run's own handlers were installed


class LoadgenError(Exception):
    """A problem the operator must fix (bad option, non-loopback address); exit status 2."""


# ---------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------

@dataclass
class Options:
    clients: int = 200                  # receivers (anonymous)
    senders: int = 10                   # bot users that talk
    rate: float = 50.0                  # messages per second, all senders together
    duration: float = 30.0              # seconds of sending; 0 = until SIGINT/SIGTERM (or stop_event)
    rooms: tuple[str, ...] = ()         # default: every room of every cluster
    hot_room: str | None = None         # everyone in this one room
    tpp: bool = False                   # senders send the Twitch Plays Pokémon command mix, ramping up
    ramp: float = 0.0                   # with tpp: seconds from TPP_RAMP_FROM x rate to the full rate
                                        # (the command line's --tpp ramps over TPP_RAMP_S by default)
    ws_fraction: float = 0.25           # share of clients (receivers and senders) on WebSocket
    source_address: str | None = None   # bind every client socket to this loopback address
    reconnect: bool = False             # a timed run reconnects lost clients too (unbounded runs always do)
    series: bool = False                # one report point a second (always with tpp)
    json: bool = False
    quiet: bool = False
    report_every: float = 10.0
    sender_prefix: str = "loadgen"      # senders are <prefix>_<n>
    setup_timeout: float | None = None  # default: SETUP_TIMEOUT + 1 s per 500 clients
    stop_event: asyncio.Event | None = field(default=None, repr=False)  # set it to stop an API run
    handle_signals: bool = True         # SIGINT/SIGTERM stop the run (main thread only)
    seed: int | None = None

    def check(self) -> None:
        if self.clients < 0 or self.senders < 0:
            raise LoadgenError("--clients and --senders must not be negative")
        if not (self.rate > 0) or math.isinf(self.rate):
            raise LoadgenError(f"--rate must be a positive number of messages per second, not {self.rate!r}")
        if self.duration < 0 or math.isinf(self.duration):
            raise LoadgenError("--duration must be 0 (until stopped) or a positive number of seconds")
        if not 0 <= self.ws_fraction <= 1:
            raise LoadgenError(f"--ws-fraction must be between 0 and 1, not {self.ws_fraction!r}")
        if not self.report_every > 0:
            raise LoadgenError("--report-every must be positive")
        if self.ramp < 0 or math.isinf(self.ramp):
            raise LoadgenError("--ramp must be 0 (no ramp) or a positive number of seconds")
        for room in (*self.rooms, *((self.hot_room,) if self.hot_room else ())):
            if not spec.ROOM_RE.match(room):
                raise LoadgenError(f"room {room!r} must be 1-25 characters of [a-z0-9_], without '#'")
        longest = f"{self.sender_prefix}_{max(self.senders - 1, 0)}"
        if not spec.ROOM_RE.match(longest):
            raise LoadgenError(f"sender logins like {longest!r} must be 1-25 characters of [a-z0-9_]")
        if self.source_address is not None:
            check_loopback(self.source_address, "--source-address")


def check_loopback(address: str, what: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise LoadgenError(f"{what}: {address!r} is not an IP address") from None
    if ip not in LOOPBACK:
        raise LoadgenError(f"{what}: refusing {address}: the load generator only talks to loopback "
                           f"addresses (127.0.0.0/8), so it can never flood a real network")
    return address


def parse_args(argv: list[str] | None = None) -> tuple[Options, str | None]:
    ap = argparse.ArgumentParser(
        prog="chatops loadgen" if argv is not None else "python -m chat.loadgen",
        description="Open many IRC clients against the cluster, make some of them talk, and measure "
                    "acceptance, delivery completeness and end-to-end latency.")
    ap.add_argument("--config", metavar="FILE", default=os.environ.get("CHATOPS_CONFIG"),
                    help="cluster file (default: $CHATOPS_CONFIG, else the shipped one)")
    ap.add_argument("--clients", type=int, default=200, metavar="N", help="receivers, anonymous (default 200)")
    ap.add_argument("--senders", type=int, default=10, metavar="S", help="bot users that talk (default 10)")
    ap.add_argument("--rate", type=float, default=50.0, metavar="R",
                    help="messages per second, all senders together, evenly paced (default 50)")
    ap.add_argument("--duration", type=float, default=30.0, metavar="SECONDS",
                    help="seconds of sending; 0 runs until SIGINT/SIGTERM (default 30)")
    ap.add_argument("--rooms", metavar="A,B,C", help="rooms to spread clients over (default: every room "
                                                     "of every cluster in the cluster file)")
    ap.add_argument("--hot-room", metavar="ROOM", help="put every client and sender in this one room")
    ap.add_argument("--tpp", action="store_true",
                    help="Twitch Plays Pokémon: senders send its command mix (up, down, a, b, start, ...), the "
                         "rate ramps from a tenth to --rate over --ramp seconds, and the report has a "
                         "per-second series (completeness, p99) for the game day report")
    ap.add_argument("--ramp", type=float, default=TPP_RAMP_S, metavar="SECONDS",
                    help=f"with --tpp: seconds to reach the full rate (default {TPP_RAMP_S:g}; 0: no ramp)")
    ap.add_argument("--ws-fraction", type=float, default=0.25, metavar="F",
                    help="share of clients connecting over WebSocket (default 0.25)")
    ap.add_argument("--source-address", metavar="ADDR",
                    help="bind every client socket to this loopback address, e.g. 127.0.3.1")
    ap.add_argument("--reconnect", action="store_true",
                    help="reconnect lost clients in a timed run too, as unbounded runs always do; the "
                         "report lists every connection lost and re-established")
    ap.add_argument("--series", action="store_true",
                    help="a per-second series in the report (completeness, duplicates, p99), as --tpp has")
    ap.add_argument("--sender-prefix", default="loadgen", metavar="NAME",
                    help="senders are NAME_0, NAME_1, ... (default loadgen)")
    ap.add_argument("--json", action="store_true", help="print the report as one JSON object, last on stdout")
    ap.add_argument("--quiet", action="store_true", help="no progress line")
    ap.add_argument("--report-every", type=float, default=10.0, metavar="SECONDS",
                    help="progress interval when stderr is not a terminal (default 10)")
    ap.add_argument("--seed", type=int, help="seed the message mix")
    args = ap.parse_args(argv)
    rooms = tuple(r.strip().lstrip("#").lower() for r in (args.rooms or "").split(",") if r.strip())
    opts = Options(clients=args.clients, senders=args.senders, rate=args.rate, duration=args.duration,
                   rooms=rooms, hot_room=args.hot_room.lstrip("#").lower() if args.hot_room else None,
                   tpp=args.tpp, ramp=args.ramp, ws_fraction=args.ws_fraction, source_address=args.source_address,
                   reconnect=args.reconnect, series=args.series, json=args.json, quiet=args.quiet,
                   report_every=args.report_every,
                   sender_prefix=args.sender_prefix, seed=args.seed)
    return opts, args.config


# ---------------------------------------------------------------------------------------------
# The plan: who connects where (pure, so it is tested without a cluster)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClientPlan:
    index: int
    sender: bool
    room: str
    cluster: str
    host: str
    address: str
    port: int           # the cluster frontend's irc_port or ws_port on that host
    transport: str      # "tcp" | "ws"
    nick: str


def _is_ws(i: int, fraction: float) -> bool:
    """Spread WebSocket clients evenly: client i is WS when floor((i+1)f) > floor(if)."""
    return math.floor((i + 1) * fraction + 1e-9) > math.floor(i * fraction + 1e-9)


def rooms_of(cf: spec.ClusterFile, options: Options) -> list[str]:
    if options.hot_room:
        return [options.hot_room]
    if options.rooms:
        return list(dict.fromkeys(options.rooms))
    rooms = [r for c in cf.clusters.values() for r in c.rooms]
    if not rooms:
        raise LoadgenError("the cluster file places no rooms on any cluster; pass --rooms or --hot-room")
    return rooms


def plan(cf: spec.ClusterFile, options: Options, nick_base: int = 0) -> list[ClientPlan]:
    """Receivers then senders, each spread round-robin over the rooms and, within a room, over the
    chat hosts of the room's cluster; WebSocket clients spread evenly by ws_fraction."""
    rooms = rooms_of(cf, options)
    out: list[ClientPlan] = []
    per_room = Counter()
    for sender, count in ((False, options.clients), (True, options.senders)):
        for i in range(count):
            room = rooms[i % len(rooms)]
            cluster = cf.cluster_of_room(room)
            c = cf.clusters[cluster]
            host = c.hosts[per_room[room] % len(c.hosts)]
            per_room[room] += 1
            address = check_loopback(cf.address(host), f"chat host {host}")
            ws = _is_ws(i, options.ws_fraction)
            nick = f"{options.sender_prefix}_{i}" if sender else f"justinfan{nick_base + i}"
            out.append(ClientPlan(len(out), sender, room, cluster, host, address,
                                  c.frontend.ws_port if ws else c.frontend.irc_port, "ws" if ws else "tcp", nick))
    return out


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------

class Histogram:
    """Latencies in ms in log-spaced buckets (2% wide): bounded memory however long the run,
    percentiles within 2%. Values at or below `floor` share the first bucket."""

    STEP = math.log(1.02)

    def __init__(self, floor: float = 0.01):
        self.floor = floor
        self.counts: Counter[int] = Counter()
        self.n = 0
        self.max = 0.0

    def add(self, ms: float) -> None:
        self.n += 1
        if ms > self.max:
            self.max = ms
        self.counts[0 if ms <= self.floor else int(math.log(ms / self.floor) / self.STEP) + 1] += 1

    def percentile(self, p: float) -> float | None:
        if not self.n:
            return None
        rank = max(1, math.ceil(self.n * p / 100))
        seen = 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            if seen >= rank:
                upper = self.floor * math.exp(self.STEP * b)
                return min(upper, self.max)
        return self.max

    def summary(self) -> dict[str, float | None]:
        r = lambda v: None if v is None else round(v, 2)  # noqa: E731
        return {"p50": r(self.percentile(50)), "p99": r(self.percentile(99)),
                "max": r(self.max) if self.n else None, "n": self.n}


class Tally:
    """Every counter of one run, and the matching of deliveries to accepted messages."""

    def __init__(self, receivers_per_room: dict[str, int] | None = None):
        self.receivers = receivers_per_room or {}
        self.joined = dict(self.receivers)    # receivers per room once set up: the baseline
        self.sent = 0
        self.accepted = 0
        self.rejected: Counter[str] = Counter()
        self.delivered = 0
        self.expected = 0
        self.deliveries_seen = 0          # every matched delivery line, for the drain
        self.late = 0                     # deliveries for ids settled already (still counted)
        self.unanswered = 0               # sent, but neither an echo nor a NOTICE came back
        self.skipped = 0                  # due, but not sent: the generator itself fell behind
        self.lost_delivered = 0           # delivered, but the sender never saw its echo
        self.excluded = 0                 # (receiver, message) pairs left out: the receiver was reconnecting
        self.duplicates = 0               # a receiver got a message id it had got already
        self.echo_span: list[float] | None = None   # monotonic echo times settled since the last point
        self.latency = Histogram()        # receive - tmi-sent-ts, at receivers
        self.ack = Histogram()            # send -> echo, at senders
        self.c2c = Histogram()            # send -> receive, at receivers
        self.errors: Counter[str] = Counter()
        self.examples: list[str] = []
        self._pending_settle: deque[tuple[float, str, int]] = deque()   # (t echo, id, receivers then)
        self._deliv: dict[str, int] = {}                                 # id -> receivers so far
        self._deliv_first: OrderedDict[str, float] = OrderedDict()       # id -> first seen
        self._settled: OrderedDict[str, float] = OrderedDict()           # id -> settle time

    def error(self, kind: str, detail: str, n: int = 1) -> None:
        self.errors[kind] += n
        if len(self.examples) < 8 and not any(e.startswith(kind + ":") for e in self.examples):
            self.examples.append(f"{kind}: {detail}")

    def echo(self, msg_id: str, room: str, now: float) -> None:
        self.accepted += 1
        # The room's receivers when the message was accepted: a receiver lost (or back) later
        # changes what later messages can reach, not this one. Receivers away reconnecting are
        # not expected, and counted as excluded.
        here = self.receivers.get(room, 0)
        self.excluded += max(0, self.joined.get(room, 0) - here)
        self._pending_settle.append((now, msg_id, here))

    def delivery(self, msg_id: str, now: float) -> None:
        self.deliveries_seen += 1
        if msg_id in self._settled:
            self.delivered += 1
            self.late += 1
            return
        n = self._deliv.get(msg_id)
        if n is None:
            self._deliv_first[msg_id] = now
            self._deliv[msg_id] = 1
        else:
            self._deliv[msg_id] = n + 1

    def settle(self, now: float, after: float = SETTLE_AFTER, forget: float | None = None) -> None:
        """Fold messages echoed more than `after` seconds ago into delivered/expected; with
        `forget`, drop what is older than that, so an unbounded run keeps bounded state."""
        q = self._pending_settle
        while q and q[0][0] <= now - after:
            echoed, msg_id, receivers = q.popleft()
            span = self.echo_span
            self.echo_span = [echoed, echoed] if span is None else [min(span[0], echoed),
                                                                    max(span[1], echoed)]
            self.expected += receivers
            self.delivered += self._deliv.pop(msg_id, 0)
            self._deliv_first.pop(msg_id, None)
            self._settled[msg_id] = now
        if forget is not None:
            while self._settled and next(iter(self._settled.values())) <= now - forget:
                self._settled.popitem(last=False)
            while self._deliv_first and next(iter(self._deliv_first.values())) <= now - forget:
                msg_id, _ = self._deliv_first.popitem(last=False)
                self._deliv.pop(msg_id, None)
                self.lost_delivered += 1

    def finish(self) -> None:
        self.settle(float("inf"), after=0.0)
        self.lost_delivered += len(self._deliv)
        self._deliv.clear()
        self._deliv_first.clear()

    @property
    def completeness(self) -> float | None:
        return self.delivered / self.expected if self.expected else None

    @property
    def completeness_with_gaps(self) -> float | None:
        """Completeness counting every message a reconnecting receiver missed as missed."""
        total = self.expected + self.excluded
        return self.delivered / total if total else None


# ---------------------------------------------------------------------------------------------
# Clients
# ---------------------------------------------------------------------------------------------

class SetupFailed(Exception):
    def __init__(self, kind: str, detail: str, retry: bool = False):
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.retry = retry


# The tags a delivered PRIVMSG is tallied by. Every other tag of the line is left unparsed.
TALLIED_TAGS = ("client-nonce", "id", "tmi-sent-ts")


def parse_line(text: str) -> irc.Message:
    """irc.parse, except for a tagged PRIVMSG: then only TALLIED_TAGS are read from its tag
    section and the text is left unsplit (params is empty). Deliveries are nearly every line the
    generator reads, and parsing their 17 tags was a third of its CPU, which the chat it loads
    shares on one machine. Any other line, or a PRIVMSG whose head does not look like one,
    is parsed in full."""
    if text[:1] != "@":
        return irc.parse(text)
    sp = text.find(" ")
    src_end = text.find(" ", sp + 1)
    if sp < 2 or text[sp + 1:sp + 2] != ":" or src_end < 0 or not text.startswith("PRIVMSG ", src_end + 1):
        return irc.parse(text)
    section = text[1:sp]
    tags = {}
    for key in TALLIED_TAGS:
        i = section.rfind(";" + key + "=")       # a repeated key: the last wins, as in irc.parse
        if i >= 0:
            start = i + len(key) + 2
        elif section.startswith(key + "="):
            start = len(key) + 1
        else:
            continue
        end = section.find(";", start)
        value = section[start:] if end < 0 else section[start:end]
        tags[key] = irc.unescape_tag_value(value) if "\\" in value else value
    return irc.Message("PRIVMSG", (), tags, text[sp + 2:src_end])


class Client:
    """One fake user. The transport subclasses only move bytes; every line goes through here."""

    def __init__(self, gen: "Generator", p: ClientPlan, token: str | None):
        self.gen = gen
        self.plan = p
        self.token = token
        self.framer = irc.Framer(parse_line=parse_line)
        self.joined: asyncio.Future = _new_future()
        self.outstanding: OrderedDict[str, float] = OrderedDict()   # nonce -> send time (monotonic)
        self.notices = 0            # NOTICEs not yet matched to an unanswered message
        self.closing = False
        self.up = False
        self.ready = False          # set up completely: a later loss is a disconnect
        self.edge: str | None = None    # the edge behind the frontend, as its 002 line names it
        self.since: float | None = None  # wall time the session was set up (366)
        self.lost_reason = ""
        self.moving = False         # RECONNECT received: a new connection is being set up in its place
        self.gone_while_moving = False   # ...and the server closed this one before the new one was in

    # -- bytes in --

    def feed(self, data: bytes) -> None:
        for item in self.framer.feed(data):
            if isinstance(item, irc.LineError):
                self.gen.tally.error("bad_line", f"{self.plan.nick}: {item.kind}: {item.detail}")
                continue
            self.handle(item)

    def handle(self, m: irc.Message) -> None:
        cmd = m.command
        if cmd == "PRIVMSG":
            self.gen.privmsg(self, m)
        elif cmd == "NOTICE":
            msg_id = m.tags.get("msg-id")
            if not self.joined.done() and (msg_id is None or m.params[:1] == ("*",)):
                # `NOTICE * :Login authentication failed` comes before 464.
                self._fail("registration_failed", m.params[-1] if m.params else "NOTICE")
            elif msg_id == "join_ratelimit" and not self.joined.done():
                self._fail("join_failed", f"{msg_id}: {m.params[-1] if m.params else ''}")
            elif msg_id:
                self.gen.notice(self, msg_id)
        elif cmd == "002":
            found = EDGE_IN_WELCOME.search(m.params[-1] if m.params else "")
            if found:
                self.edge = found.group(1)
        elif cmd == "366":
            if not self.joined.done():
                self.joined.set_result(True)
        elif cmd == "PING":
            self.send_line(irc.encode("PONG", m.params[-1] if m.params else self.plan.host, trailing=True))
        elif cmd == "RECONNECT":
            self.gen.reconnect_asked(self)
        elif cmd in ("464", "433", "432", "451"):
            self._fail("registration_failed", f"{cmd} {m.params[-1] if m.params else ''}")
        elif cmd in ("403", "405", "471", "473", "474", "475"):
            self._fail("join_failed", f"{cmd} {' '.join(m.params[1:])}")

    def _fail(self, kind: str, detail: str) -> None:
        if not self.joined.done():
            self.joined.set_exception(SetupFailed(kind, f"{self.plan.nick} via {self.plan.address}:{self.plan.port}: {detail}"))

    def hello(self) -> bytes:
        lines = [irc.encode("CAP", "REQ", "twitch.tv/tags twitch.tv/commands echo-message", trailing=True)]
        if self.token:
            lines.append(irc.encode("PASS", f"oauth:{self.token}"))
        lines.append(irc.encode("NICK", self.plan.nick))
        lines.append(irc.encode("JOIN", f"#{self.plan.room}"))
        return b"".join(lines)

    def lost(self, reason: str) -> None:
        """The connection ended; an error unless we were closing it."""
        self.up = False
        self.lost_reason = reason
        if not self.joined.done():
            self.joined.set_exception(SetupFailed("connection_closed", f"{self.plan.nick} via "
                                                  f"{self.plan.address}:{self.plan.port}: closed during set-up: {reason}",
                                                  retry=True))
        elif self.ready and not self.closing and self.moving:
            self.gen.lost_while_moving(self)      # not an error: the move RECONNECT asked for goes on
        elif self.ready and not self.closing:
            self.gen.tally.error("disconnected", f"{self.plan.nick} ({self.plan.transport} to "
                                                 f"{self.plan.host}): {reason}")
            self.gen.disconnected(self)

    # -- transport --

    async def open(self) -> None:
        raise NotImplementedError

    def send_line(self, line: bytes) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class TcpClient(Client, asyncio.Protocol):
    transport: asyncio.Transport | None = None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        src = self.gen.options.source_address
        self.joined = _new_future()
        self.framer = irc.Framer(parse_line=parse_line)
        await loop.create_connection(lambda: self, self.plan.address, self.plan.port,
                                     local_addr=(src, 0) if src else None)

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.up = True
        transport.write(self.hello())

    def data_received(self, data: bytes) -> None:
        self.feed(data)

    def connection_lost(self, exc) -> None:
        self.lost("closed by the server" if exc is None else f"{type(exc).__name__}: {exc}")

    def send_line(self, line: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(line)

    async def close(self) -> None:
        self.closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class WsClient(Client):
    ws = None
    reader: asyncio.Task | None = None
    writer: asyncio.Task | None = None

    async def open(self) -> None:
        from websockets.asyncio.client import connect
        src = self.gen.options.source_address
        self.joined = _new_future()
        self.framer = irc.Framer(parse_line=parse_line)
        self.queue: list[str] = []
        self.wake = asyncio.Event()
        kwargs: dict[str, Any] = {"local_addr": (src, 0)} if src else {}
        self.ws = await connect(f"ws://{self.plan.address}:{self.plan.port}/", subprotocols=["text.ircv3.net"],
                                compression=None, open_timeout=CONNECT_TIMEOUT, max_size=irc.MAX_TAGS + irc.MAX_LINE * 4,
                                close_timeout=1, **kwargs)
        self.up = True
        self.reader = asyncio.ensure_future(self._read())
        self.writer = asyncio.ensure_future(self._write())
        for line in self.hello().split(b"\r\n"):
            if line:
                self.send_line(line)

    async def _read(self) -> None:
        import websockets
        reason = "closed by the server"
        try:
            async for frame in self.ws:
                data = frame.encode() if isinstance(frame, str) else frame
                self.feed(data if data.endswith(b"\n") else data + b"\r\n")
        except websockets.ConnectionClosed as exc:
            reason = f"closed: {exc}"
        except Exception as exc:  # a bug costs this client only
            reason = f"{type(exc).__name__}: {exc}"
        self.lost(reason)

    async def _write(self) -> None:
        import websockets
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                batch, self.queue = self.queue, []
                for text in batch:
                    await self.ws.send(text)
        except (websockets.ConnectionClosed, asyncio.CancelledError):
            pass

    def send_line(self, line: bytes) -> None:
        if self.up:
            self.queue.append(line.rstrip(b"\r\n").decode())
            self.wake.set()

    async def close(self) -> None:
        self.closing = True
        if self.writer is not None:
            self.writer.cancel()
        if self.ws is not None:
            try:
                await asyncio.wait_for(self.ws.close(), 1.5)
            except Exception:  # closing must never stop the others from closing
                pass
        if self.reader is not None:
            self.reader.cancel()


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------

class Generator:
    def __init__(self, cf: spec.ClusterFile, options: Options):
        self.cf = cf
        self.options = options
        self.rng = random.Random(options.seed)
        self.run_id = "lg" + secrets.token_hex(4)
        self.nonce_prefix = self.run_id + "."
        self.tally = Tally()
        self.plans = plan(cf, options, nick_base=self.rng.randint(10_000_000, 89_999_999))
        self.rooms = rooms_of(cf, options)
        self.clients: list[Client] = []
        self.senders: list[Client] = []
        self.receivers: list[Client] = []
        self.tokens: dict[str, tuple[str, str]] = {}     # login -> (token, chat host used)
        self.seq = 0
        self.started = time.monotonic()
        self.send_started: float | None = None
        self.send_stopped: float | None = None
        self.last_activity = time.monotonic()
        self.log = logging.getLogger("chatops.loadgen")
        self.stop = options.stop_event or asyncio.Event()
        self.sending = False
        self.tasks: set[asyncio.Task] = set()        # reconnections
        self.events: list[dict[str, Any]] = []       # connections lost, and when each came back
        self.lost_count = 0
        self.back_count = 0
        self.by_edge: dict[str, Counter[str]] = {}    # edge -> {"lost": n, "reestablished": n}
        self.by_frontend: dict[str, Counter[str]] = {}
        self.lost_nicks: set[str] = set()
        self.gaps = Histogram()                        # ms from a loss to the JOIN done again
        self.edges_at_start: Counter[str] = Counter()
        self.jitter = random.Random()
        self.slots = asyncio.Semaphore(CONNECT_CONCURRENCY)
        # --tpp: one point a second, so a report can draw completeness and p99 over time.
        self.series: list[dict[str, Any]] | None = [] if options.tpp or options.series else None
        self.window_latency = Histogram()
        self._last_point = (0, 0, 0, 0, 0, 0)
        self.recent_ids: dict[str, tuple[set, deque]] = {}   # receiver nick -> its last DEDUP_WINDOW ids
        self.overlap_until: dict[str, float] = {}  # nick -> while it has two connections (a RECONNECT move)
        self.reconnect_count = 0                   # moves RECONNECT asked for, done
        self.reconnect_events: list[dict[str, Any]] = []

    # -- events from clients --

    def privmsg(self, client: Client, m: irc.Message) -> None:
        tags = m.tags
        nonce = tags.get("client-nonce")
        if not nonce or not nonce.startswith(self.nonce_prefix):
            return       # somebody else's traffic
        msg_id = tags.get("id")
        if not msg_id:
            return
        now = time.monotonic()
        self.last_activity = now
        if client.plan.sender:
            sent_at = client.outstanding.pop(nonce, None)
            if sent_at is not None:
                self.tally.ack.add((now - sent_at) * 1000)
                self.tally.echo(msg_id, client.plan.room, now)
            return       # another sender's message: senders are not counted as receivers
        if self.seen_before(client.plan.nick, msg_id):
            if time.monotonic() < self.overlap_until.get(client.plan.nick, 0.0):
                return   # the same message on both connections of a RECONNECT move: counted once
            self.tally.duplicates += 1
            self.tally.error("duplicate", f"{client.plan.nick} got message {msg_id} twice")
            return
        wall_ms = time.time() * 1000
        self.tally.delivery(msg_id, now)
        ts = tags.get("tmi-sent-ts", "")
        if ts.isdigit():
            self.tally.latency.add(max(0.0, wall_ms - int(ts)))
            if self.series is not None:
                self.window_latency.add(max(0.0, wall_ms - int(ts)))
        sent_us = nonce.rpartition("-")[2]
        if sent_us.isdigit():
            self.tally.c2c.add(max(0.0, wall_ms - int(sent_us) / 1000))

    def seen_before(self, nick: str, msg_id: str) -> bool:
        """Whether this receiver got `msg_id` already; remembers it if not. Keyed by nick, so a
        receiver that reconnected is still the same receiver."""
        ids, order = self.recent_ids.get(nick) or self.recent_ids.setdefault(nick, (set(), deque()))
        if msg_id in ids:
            return True
        ids.add(msg_id)
        order.append(msg_id)
        if len(order) > DEDUP_WINDOW:
            ids.discard(order.popleft())
        return False

    def notice(self, client: Client, msg_id: str) -> None:
        if not client.plan.sender:
            return
        self.last_activity = time.monotonic()
        self.tally.rejected[msg_id] += 1
        # A NOTICE carries no nonce, and it overtakes echoes still on their way through the
        # exchange, so it is matched to no message in particular: `prune` settles the count.
        client.notices += 1

    def prune(self, client: Client, older_than: float) -> None:
        """Messages without an echo for too long were either refused (one NOTICE each) or lost."""
        out = client.outstanding
        while out and next(iter(out.values())) <= older_than:
            out.popitem(last=False)
            if client.notices:
                client.notices -= 1
            else:
                self.tally.unanswered += 1

    @property
    def reconnecting(self) -> bool:
        return not self.options.duration or self.options.reconnect

    def disconnected(self, client: Client) -> None:
        if client.plan.sender and client in self.senders:
            self.senders.remove(client)
        if self.stop.is_set():
            return
        p = client.plan
        now = time.time()
        edge = client.edge or "unknown"
        self.lost_count += 1
        self.lost_nicks.add(p.nick)
        self.by_edge.setdefault(edge, Counter())["lost"] += 1
        self.by_frontend.setdefault(p.host, Counter())["lost"] += 1
        event = {"nick": p.nick, "sender": p.sender, "room": p.room, "transport": p.transport,
                 "frontend": p.host, "edge": client.edge, "since": _round(client.since),
                 "lost_at": round(now, 3), "reason": client.lost_reason, "back_at": None, "back_edge": None,
                 "attempts": 0}
        if len(self.events) < MAX_EVENTS:
            self.events.append(event)
        if not self.reconnecting:
            return      # a timed run counts the loss against completeness and goes on without it
        # The client comes back once an edge takes it (an edge restart, a rolling deploy), and
        # until then its room expects one receiver fewer (see the module docstring).
        if client in self.receivers:
            self.receivers.remove(client)
            self.tally.receivers[client.plan.room] = self.tally.receivers.get(client.plan.room, 1) - 1
        if client.plan.sender:
            self.prune(client, float("inf"))
        if client in self.clients:
            self.clients.remove(client)
        self._spawn(self.reconnect(client.plan, event, now))

    async def reconnect(self, p: ClientPlan, event: dict[str, Any] | None = None, lost_at: float = 0.0) -> None:
        delay = RECONNECT_FIRST
        event = event if event is not None else {}
        while not self.stop.is_set():
            try:
                await asyncio.wait_for(self.stop.wait(), delay * self.jitter.uniform(0.5, 1.0))
                return
            except asyncio.TimeoutError:
                pass
            event["attempts"] = event.get("attempts", 0) + 1
            client = await self.connect_one(p, self.slots, time.monotonic() + SETUP_TIMEOUT)
            if client is not None:
                if self.stop.is_set():
                    await client.close()
                    return
                self.clients.append(client)
                if p.sender:
                    self.senders.append(client)
                else:
                    self.receivers.append(client)
                    self.tally.receivers[p.room] = self.tally.receivers.get(p.room, 0) + 1
                back = client.since or time.time()
                event["back_at"], event["back_edge"] = round(back, 3), client.edge
                self.back_count += 1
                self.by_edge.setdefault(event.get("edge") or "unknown", Counter())["reestablished"] += 1
                self.by_frontend.setdefault(p.host, Counter())["reestablished"] += 1
                if lost_at:
                    self.gaps.add((back - lost_at) * 1000)
                if not self.options.quiet or not self.options.duration:
                    logs.event(self.log, "edge", "reconnected", nick=p.nick, host=p.host, transport=p.transport,
                               edge=client.edge or "unknown", was=event.get("edge") or "unknown")
                return
            delay = min(delay * 2, RECONNECT_MAX)

    # -- RECONNECT: the edge is going away --

    def reconnect_asked(self, client: Client) -> None:
        """Twitch's RECONNECT, honoured as tmi.js does, but make-before-break: a new connection
        through the same frontend, registered and in the same room, before the old one is closed."""
        if client.moving or client.closing or not client.ready or self.stop.is_set():
            return
        client.moving = True
        self.overlap_until[client.plan.nick] = float("inf")
        self._spawn(self.move(client, time.time()))

    def lost_while_moving(self, client: Client) -> None:
        """The edge closed the old connection before the new one was in its room: until it is, the
        receiver is not expected (as one reconnecting), and a sender does not send."""
        client.gone_while_moving = True
        if client in self.receivers:
            self.tally.receivers[client.plan.room] = self.tally.receivers.get(client.plan.room, 1) - 1
        if client in self.senders:
            self.senders.remove(client)

    async def move(self, old: Client, asked_at: float) -> None:
        p = old.plan
        new = None
        try:
            new = await self.connect_one(p, self.slots, time.monotonic() + SETUP_TIMEOUT)
        finally:
            if new is None or self.stop.is_set():
                self.overlap_until.pop(p.nick, None)
        if new is None or self.stop.is_set():
            if new is not None:
                await new.close()
            old.moving = False
            if old.gone_while_moving and not self.stop.is_set():
                # No new connection: the loss is a loss after all.
                if p.sender and old not in self.senders:
                    self.senders.append(old)
                if old in self.receivers:
                    self.tally.receivers[p.room] = self.tally.receivers.get(p.room, 0) + 1
                self.tally.error("disconnected", f"{p.nick} ({p.transport} to {p.host}): {old.lost_reason} "
                                                 "(RECONNECT asked; no new connection came up)")
                self.disconnected(old)
            return
        # Echoes of what the old connection sent may come back on either.
        new.outstanding = old.outstanding
        new.notices, old.notices = old.notices, 0
        for group in (self.clients, self.receivers, self.senders):
            if old in group:
                group[group.index(old)] = new
        if p.sender and new not in self.senders:
            self.senders.append(new)
        if old.gone_while_moving and new in self.receivers:
            self.tally.receivers[p.room] = self.tally.receivers.get(p.room, 0) + 1
        # What was already on its way to the old edge still arrives there: the old connection
        # stays a moment past the new 366, and copies seen on both count once.
        await asyncio.sleep(MOVE_OVERLAP)
        await old.close()
        new.notices += old.notices
        self.overlap_until[p.nick] = time.monotonic() + MOVE_OVERLAP
        self.reconnect_count += 1
        if len(self.reconnect_events) < MAX_EVENTS:
            self.reconnect_events.append({
                "nick": p.nick, "sender": p.sender, "room": p.room, "transport": p.transport,
                "frontend": p.host,
                "edge": old.edge, "asked_at": round(asked_at, 3), "back_at": _round(new.since),
                "back_edge": new.edge, "closed_by_edge_first": old.gone_while_moving})

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- set-up --

    async def create_senders(self) -> None:
        """Bot users through ShardedCache.for_host on a chat host of each sender's room's cluster."""
        from chat.cache import CacheUnavailable, ShardedCache
        from chat.users import add_user

        wanted = [p for p in self.plans if p.sender]
        if not wanted:
            return
        by_host: dict[str, list[ClientPlan]] = {}
        for p in wanted:
            by_host.setdefault(p.host, []).append(p)
        for host, plans in by_host.items():
            cache = ShardedCache.for_host(self.cf, host, timeout=2.0, max_conns=4)
            try:
                tokens = await asyncio.gather(*(add_user(cache, p.nick, bot=True) for p in plans))
            except (CacheUnavailable, OSError) as exc:
                self.tally.error("users", f"cannot create the sender users through {host}'s shard listeners "
                                          f"({self.cf.address(host)}:{self.cf.listener_port(0)}...): {exc}",
                                 n=len(plans))
                continue
            finally:
                await cache.close()
            for p, tok in zip(plans, tokens):
                self.tokens[p.nick] = (tok, host)

    async def delete_tokens(self) -> None:
        from chat import keys
        from chat.cache import ShardedCache
        by_host: dict[str, list[str]] = {}
        for tok, host in self.tokens.values():
            by_host.setdefault(host, []).append(tok)
        for host, toks in by_host.items():
            cache = ShardedCache.for_host(self.cf, host, timeout=1.0, max_conns=2)
            try:
                for tok in toks:
                    await cache.client_for(keys.token(tok)).delete(keys.token(tok))
            except Exception:  # best effort: a leftover token is harmless
                pass
            finally:
                await cache.close()
        self.tokens.clear()

    async def connect_one(self, p: ClientPlan, slots: asyncio.Semaphore, deadline: float) -> Client | None:
        token = None
        if p.sender:
            if p.nick not in self.tokens:
                return None
            token = self.tokens[p.nick][0]
        cls = WsClient if p.transport == "ws" else TcpClient
        client = cls(self, p, token)
        where = f"{p.transport} {p.address}:{p.port} ({p.host}, cluster {p.cluster})"
        for attempt in range(CONNECT_ATTEMPTS):
            last = attempt == CONNECT_ATTEMPTS - 1
            try:
                async with slots:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise SetupFailed("setup_timeout", f"{p.nick}: no time left to connect to {where}")
                    await asyncio.wait_for(client.open(), min(CONNECT_TIMEOUT, remaining))
                await asyncio.wait_for(asyncio.shield(client.joined), max(0.1, deadline - time.monotonic()))
                client.ready = True
                client.since = time.time()
                return client
            except SetupFailed as exc:
                await client.close()
                if exc.retry and not last and time.monotonic() < deadline:
                    await asyncio.sleep(CONNECT_BACKOFF * (attempt + 1))
                    client.closing = False
                    continue
                self.tally.error(exc.kind, exc.detail)
                return None
            except asyncio.TimeoutError:
                await client.close()
                kind = "join_timeout" if client.up else "connect_timeout"
                self.tally.error(kind, f"{p.nick}: no {'366 (end of JOIN)' if client.up else 'connection'} "
                                       f"from {where} in time")
                return None
            except OSError as exc:
                await client.close()
                if not last and time.monotonic() < deadline:
                    await asyncio.sleep(CONNECT_BACKOFF * (attempt + 1))
                    client.closing = False
                    continue
                name = _errno_name(exc)
                self.tally.error("connect", f"cannot connect to {where}: {name}")
                return None
            except Exception as exc:  # websockets handshake errors and the like
                await client.close()
                if not last and time.monotonic() < deadline:
                    await asyncio.sleep(CONNECT_BACKOFF * (attempt + 1))
                    client.closing = False
                    continue
                self.tally.error("connect", f"cannot connect to {where}: {type(exc).__name__}: {exc}")
                return None
        return None

    async def setup(self) -> None:
        await self.create_senders()
        if self.stop.is_set():
            return
        slots = self.slots = asyncio.Semaphore(CONNECT_CONCURRENCY)
        timeout = self.options.setup_timeout or SETUP_TIMEOUT + len(self.plans) / 500
        deadline = time.monotonic() + timeout
        tasks = [asyncio.ensure_future(self.connect_one(p, slots, deadline)) for p in self.plans]
        stopper = asyncio.ensure_future(self.stop.wait())
        try:
            pending = set(tasks)
            while pending and not self.stop.is_set():
                done, pending = await asyncio.wait(pending | {stopper}, return_when=asyncio.FIRST_COMPLETED)
                pending.discard(stopper)
        finally:
            stopper.cancel()
            for t in tasks:
                if not t.done():
                    t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for t in tasks:
            if not t.cancelled() and t.exception() is None and t.result() is not None:
                c = t.result()
                self.clients.append(c)
                (self.senders if c.plan.sender else self.receivers).append(c)
        per_room = Counter(c.plan.room for c in self.receivers)
        self.tally.receivers = dict(per_room)
        self.tally.joined = dict(per_room)
        self.edges_at_start = Counter(c.edge or "unknown" for c in self.clients)

    # -- sending --

    def _text(self, seq: int) -> str:
        if self.options.tpp:
            return self.rng.choices(TPP_COMMANDS, TPP_WEIGHTS)[0]
        words = " ".join(self.rng.choice(CHAT_WORDS) for _ in range(3))
        return f"loadgen message {seq} {words}"[:TEXT_MAX]

    def send_one(self, client: Client) -> None:
        self.seq += 1
        nonce = f"{self.nonce_prefix}{self.seq}-{time.time_ns() // 1000}"
        client.outstanding[nonce] = time.monotonic()
        client.send_line(f"@client-nonce={nonce} PRIVMSG #{client.plan.room} :{self._text(self.seq)}\r\n".encode())
        self.tally.sent += 1

    def rate_at(self, t: float) -> float:
        """The offered rate t seconds into sending: --tpp ramps it, else it is --rate."""
        opts = self.options
        if not opts.tpp or not opts.ramp or t >= opts.ramp:
            return opts.rate
        return opts.rate * (TPP_RAMP_FROM + (1 - TPP_RAMP_FROM) * max(0.0, t) / opts.ramp)

    def offered_by(self, t: float) -> float:
        """Messages due in the first t seconds of sending (the integral of rate_at)."""
        opts = self.options
        r, ramp = opts.rate, opts.ramp if opts.tpp else 0.0
        if not ramp:
            return t * r
        t1 = min(t, ramp)
        during = r * (TPP_RAMP_FROM * t1 + (1 - TPP_RAMP_FROM) * t1 * t1 / (2 * ramp))
        return during + r * max(0.0, t - ramp)

    async def pace(self) -> None:
        """Send at the total rate, evenly: every tick sends what is due, round-robin over senders."""
        rate = self.options.rate
        tick = min(max(1.0 / rate, MAX_TICK), 0.1)
        start = self.send_started = time.monotonic()
        end = start + self.options.duration if self.options.duration else float("inf")
        rr = itertools.count()
        due_total = 0
        self.sending = True
        try:
            while not self.stop.is_set():
                now = time.monotonic()
                if now >= end or (not self.senders and not self.reconnecting):
                    break
                if not self.senders:        # every sender reconnecting: wait for them
                    due_total = int(self.offered_by(now - start)) + 1
                    try:
                        await asyncio.wait_for(self.stop.wait(), 0.2)
                    except asyncio.TimeoutError:
                        pass
                    continue
                due = int(self.offered_by(now - start)) + 1 - due_total   # the first message leaves at once
                if due > 0:
                    # Fell behind (a slow loop): send at most MAX_CATCH_UP seconds' worth now; the
                    # rest is skipped, so `sent` below `offered` shows the generator itself was the limit.
                    due_total += due
                    now_due = min(due, max(1, int(rate * MAX_CATCH_UP)))
                    self.tally.skipped += due - now_due
                    for _ in range(now_due):
                        senders = self.senders
                        if not senders:
                            break
                        self.send_one(senders[next(rr) % len(senders)])
                next_at = start + due_total / rate if not self.options.tpp else now + 1.0 / self.rate_at(now - start)
                delay = max(0.0, min(next_at - time.monotonic(), tick))
                try:
                    await asyncio.wait_for(self.stop.wait(), delay) if delay > 0 else await asyncio.sleep(0)
                except asyncio.TimeoutError:
                    pass
        finally:
            self.sending = False
            self.send_stopped = time.monotonic()
            self.offered_seconds = min(self.send_stopped, end) - start
            self.offered_total = self.offered_by(self.offered_seconds)

    async def drain(self) -> None:
        """Wait for the last echoes and deliveries: until nothing has come for DRAIN_QUIET, or
        every message is answered and quiet, at most DRAIN_MAX."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < DRAIN_MAX and not self._second_stop:
            await asyncio.sleep(0.05)
            quiet = time.monotonic() - self.last_activity
            unanswered = sum(max(0, len(s.outstanding) - s.notices) for s in self.senders)
            if quiet >= DRAIN_QUIET and (unanswered == 0 or quiet >= DRAIN_QUIET * 2):
                break

    # -- reporting --

    def progress_fields(self) -> dict[str, Any]:
        t = self.tally
        now = time.monotonic()
        elapsed = now - (self.send_started or now)
        comp = t.completeness
        lat = t.latency
        return {"elapsed_s": round(elapsed, 1),
                "sent_per_s": round(t.sent / elapsed, 1) if elapsed > 0 else 0.0,
                "sent": t.sent, "accepted": t.accepted, "rejected": sum(t.rejected.values()),
                "completeness": "-" if comp is None else f"{comp:.4f}",
                "p50_ms": _fmt(lat.percentile(50)), "p99_ms": _fmt(lat.percentile(99)),
                "conns": f"{sum(1 for c in self.clients if c.up)}/{len(self.plans)}",
                "errors": sum(t.errors.values())}

    def progress_line(self) -> str:
        f = self.progress_fields()
        comp = f["completeness"]
        comp = comp if comp == "-" else f"{float(comp) * 100:.2f}%"
        return (f"[{f['elapsed_s']:6.1f}s] sent {f['sent_per_s']:.0f}/s  accepted {f['accepted']}  "
                f"rejected {f['rejected']}  completeness {comp}  p50 {f['p50_ms']}ms p99 {f['p99_ms']}ms  "
                f"conns {f['conns']}  errors {f['errors']}")

    async def reporter(self) -> None:
        opts = self.options
        tty = sys.stderr.isatty()
        last_plain = time.monotonic()
        try:
            while True:
                await asyncio.sleep(1.0)
                now = time.monotonic()
                self.tally.settle(now, forget=FORGET_AFTER if not opts.duration else None)
                if self.series is not None:
                    self.add_point(now)
                if not opts.duration:
                    for c in self.clients:
                        if c.plan.sender:
                            self.prune(c, now - FORGET_AFTER)
                if opts.duration == 0:
                    if now - last_plain >= opts.report_every:
                        last_plain = now
                        logs.event(self.log, "edge", "traffic", **self.progress_fields())
                elif opts.quiet:
                    continue
                elif tty:
                    sys.stderr.write("\r" + self.progress_line() + "\x1b[K")
                    sys.stderr.flush()
                elif now - last_plain >= opts.report_every:
                    last_plain = now
                    print(self.progress_line(), file=sys.stderr, flush=True)
        except asyncio.CancelledError:
            if tty and not opts.quiet and opts.duration:
                sys.stderr.write("\r" + self.progress_line() + "\x1b[K\n")
                sys.stderr.flush()
            raise

    def add_point(self, now: float) -> None:
        """One point of the per-second series: what settled in the last second (messages echoed
        about SETTLE_AFTER earlier, their echoes' span), and the p99 of the deliveries received in it."""
        t = self.tally
        totals = (t.sent, t.accepted, sum(t.rejected.values()), t.delivered, t.expected, t.duplicates)
        d = [a - b for a, b in zip(totals, self._last_point)]
        self._last_point = totals
        p99 = self.window_latency.percentile(99)
        self.window_latency = Histogram()
        span, t.echo_span = t.echo_span, None
        offset = time.time() - now

        def wall(mono: float) -> float:
            return round(mono + offset, 3)
        self.series.append({"t": round(time.time(), 3),
                            "rate": round(self.rate_at(now - (self.send_started or now)), 1),
                            "sent": d[0], "accepted": d[1], "rejected": d[2], "delivered": d[3], "expected": d[4],
                            "completeness": round(d[3] / d[4], 6) if d[4] else None,
                            "duplicates": d[5], "echoed_from": wall(span[0]) if span else None,
                            "echoed_to": wall(span[1]) if span else None, "p99_ms": _round(p99)})

    def report(self) -> dict[str, Any]:
        t = self.tally
        t.finish()
        for c in self.clients:
            if c.plan.sender:
                self.prune(c, float("inf"))
        unanswered = t.unanswered
        duration = (self.send_stopped - self.send_started) if self.send_started and self.send_stopped else 0.0
        offered = getattr(self, "offered_total", 0.0)
        comp = t.completeness
        gaps = t.completeness_with_gaps
        return {
            "clients": len(self.receivers), "senders": len([c for c in self.clients if c.plan.sender]),
            "clients_planned": self.options.clients, "senders_planned": self.options.senders,
            "rooms": self.rooms, "receivers_per_room": dict(t.receivers),
            "duration_s": round(duration, 2), "rate": self.options.rate, "offered": int(offered),
            "sent": t.sent, "accepted": t.accepted, "rejected": dict(t.rejected),
            "sent_per_s": round(t.sent / duration, 1) if duration else 0.0,
            "accepted_per_s": round(t.accepted / duration, 1) if duration else 0.0,
            "delivered": t.delivered, "expected": t.expected,
            "completeness": None if comp is None else round(comp, 6), "duplicates": t.duplicates,
            "excluded_while_disconnected": t.excluded,
            "completeness_with_gaps": None if gaps is None else round(gaps, 6),
            "latency_ms": _lat(t.latency), "ack_ms": _lat(t.ack), "client_to_client_ms": _lat(t.c2c),
            "lost": {"delivered_without_echo": t.lost_delivered, "unanswered": unanswered},
            "late_deliveries": t.late, "skipped": t.skipped,
            "transports": dict(Counter(c.plan.transport for c in self.clients)),
            "errors": dict(t.errors), "error_examples": list(t.examples),
            "hot_room": self.options.hot_room, "tpp": self.options.tpp,
            "ramp_s": self.options.ramp if self.options.tpp else None, "series": self.series,
            "source_address": self.options.source_address,
            "edges": {"at_start": dict(self.edges_at_start),
                      "at_end": dict(Counter(c.edge or "unknown" for c in self.clients))},
            "reconnections": self.reconnections(),
            # Moves RECONNECT asked for (an edge drained or stopping), make-before-break: not losses.
            "reconnects": self.reconnect_count, "reconnect_events": list(self.reconnect_events),
        }

    def reconnections(self) -> dict[str, Any]:
        """Every connection lost after set-up, and whether (and where, after how long) it came back."""
        g = self.gaps
        return {
            "enabled": self.reconnecting,
            "lost": self.lost_count, "reestablished": self.back_count,
            "still_lost": self.lost_count - self.back_count,
            "clients_lost": len(self.lost_nicks),
            "clients_kept": sum(1 for c in self.clients if c.plan.nick not in self.lost_nicks),
            "by_edge": {k: {"lost": v["lost"], "reestablished": v["reestablished"]} for k, v in sorted(self.by_edge.items())},
            "by_frontend": {k: {"lost": v["lost"], "reestablished": v["reestablished"]}
                            for k, v in sorted(self.by_frontend.items())},
            "gap_ms": {"p50": _round(g.percentile(50)), "p99": _round(g.percentile(99)),
                       "max": _round(g.max) if g.n else None},
            "events": list(self.events), "events_dropped": max(0, self.lost_count - len(self.events)),
        }

    # -- the whole run --

    async def run(self) -> dict[str, Any]:
        opts = self.options
        self._second_stop = False
        loop = asyncio.get_running_loop()
        installed = []
        if opts.handle_signals and _main_thread():
            def on_signal() -> None:
                if self.stop.is_set():
                    self._second_stop = True
                self.stop.set()
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.add_signal_handler(sig, on_signal)
                    installed.append(sig)
                except (NotImplementedError, RuntimeError, ValueError):
                    pass
        if installed and _early_stop:
            self.stop.set()
        reporter = None
        try:
            self._warn_limits()
            await self.setup()
            if self.senders and not self.stop.is_set():
                if opts.duration == 0:
                    logs.event(self.log, "edge", "sending", rate=opts.rate, senders=len(self.senders),
                               receivers=len(self.receivers), rooms=",".join(self.rooms))
                reporter = asyncio.ensure_future(self.reporter())
                await self.pace()
                await self.drain()
        finally:
            if reporter is not None:
                reporter.cancel()
                await asyncio.gather(reporter, return_exceptions=True)
            self.stop.set()
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)
            await asyncio.sleep(0)
            try:
                await asyncio.wait_for(self.delete_tokens(), 5)
            except (asyncio.TimeoutError, Exception):
                pass
            for sig in installed:
                loop.remove_signal_handler(sig)
        return self.report()

    def _warn_limits(self) -> None:
        opts = self.options
        if not opts.senders:
            return
        rooms = self.rooms
        for room in rooms:
            clue = self.cf.clusters[self.cf.cluster_of_room(room)].services.clue
            per_sender = opts.rate / opts.senders
            window = durations.seconds(clue.rate_window)
            if per_sender * window > clue.bot_rate:
                _warn(f"each sender would send {per_sender:.0f} msgs/s, over the bot limit of {clue.bot_rate} per "
                      f"{clue.rate_window}: expect msg_ratelimit (add --senders)")
                break
        per_sender = opts.rate / opts.senders
        for room in rooms:
            edge = self.cf.clusters[self.cf.cluster_of_room(room)].services.edge
            burst, per_s = edge.privmsg_rate.count, edge.privmsg_rate.count / durations.seconds(edge.privmsg_rate.per)
            if per_sender > per_s:
                _warn(f"each sender would send {per_sender:.0f} msgs/s, over the edge's per-connection limit of "
                      f"{burst} per {edge.privmsg_rate.per} (services.edge.privmsg_rate): expect msg_ratelimit "
                      "(add --senders)")
                break
        senders_in = Counter(p.room for p in self.plans if p.sender)
        for room, n in senders_in.items():
            clue = self.cf.clusters[self.cf.cluster_of_room(room)].services.clue
            room_rate = opts.rate * n / opts.senders
            if room_rate > clue.room_rate:
                _warn(f"#{room} would get {room_rate:.0f} msgs/s, over its room limit of {clue.room_rate}/s: "
                      "expect msg_ratelimit")


def check_frontends(cf: spec.ClusterFile, plans: list[ClientPlan]) -> None:
    """Every connection comes from one address, so HAProxy's per-source limit on a public frontend
    would refuse a plan over it: refuse it first, naming the setting, rather than measure refusals."""
    limit = cf.haproxy.edge_maxconn_per_source
    per_frontend = Counter((p.host, p.address, p.port, p.transport) for p in plans)
    for (host, address, port, transport), n in sorted(per_frontend.items()):
        if n > limit:
            raise LoadgenError(
                f"this run would open {n} connections from one address to {host}'s "
                f"{'WebSocket' if transport == 'ws' else 'IRC'} frontend ({address}:{port}), over "
                f"haproxy.edge_maxconn_per_source ({limit}), so HAProxy would refuse the rest: use fewer "
                f"--clients, more rooms, or raise edge_maxconn_per_source in the cluster file")


def _new_future() -> asyncio.Future:
    """A future whose exception is always retrieved, so an abandoned set-up logs nothing."""
    fut = asyncio.get_running_loop().create_future()
    fut.add_done_callback(lambda f: f.cancelled() or f.exception())
    return fut


def _lat(h: Histogram) -> dict[str, float | None]:
    s = h.summary()
    return {"p50": s["p50"], "p99": s["p99"], "max": s["max"]}


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _warn(text: str) -> None:
    print(f"loadgen: warning: {text}", file=sys.stderr, flush=True)


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def _errno_name(exc: OSError) -> str:
    import errno as _errno
    if exc.errno:
        return f"{_errno.errorcode.get(exc.errno, exc.errno)} ({exc.strerror or exc})"
    return f"{type(exc).__name__}: {exc}"


def _fd_check(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if needed + FD_RESERVE > soft and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if needed + FD_RESERVE > soft:
        raise LoadgenError(f"{needed} connections need {needed + FD_RESERVE} file descriptors, but the limit is "
                           f"{soft} (hard {hard}); use fewer --clients or raise `ulimit -n`")


async def run(cf, options: Options) -> dict[str, Any]:
    """Run the load and return the report (see the module docstring). `cf` is a ClusterFile (or
    a LoadedCluster). Raises LoadgenError for bad options or a non-loopback address."""
    cf = getattr(cf, "spec", cf)
    options.check()
    gen = Generator(cf, options)      # plans, and refuses non-loopback targets, before any socket
    check_frontends(cf, gen.plans)
    _fd_check(len(gen.plans))
    return await gen.run()


def format_report(r: dict[str, Any]) -> str:
    comp = r["completeness"]
    lat, ack, c2c = r["latency_ms"], r["ack_ms"], r["client_to_client_ms"]
    rejected = ", ".join(f"{k} {v}" for k, v in sorted(r["rejected"].items())) or "none"
    rc = r.get("reconnections") or {}
    lines = [
        f"loadgen: {r['clients']} receivers + {r['senders']} senders ({', '.join(f'{k} {v}' for k, v in sorted(r['transports'].items())) or 'no connections'}) "
        f"in {len(r['rooms'])} room(s): {', '.join('#' + x for x in r['rooms'])}",
        f"  sent {r['sent']} in {r['duration_s']}s ({r['sent_per_s']}/s of {r['rate']:g}/s offered), "
        f"accepted {r['accepted']} ({r['accepted_per_s']}/s), rejected: {rejected}",
        f"  delivered {r['delivered']} of {r['expected']} expected: completeness "
        f"{'-' if comp is None else f'{comp * 100:.3f}%'}, duplicates {r.get('duplicates', 0)}",
        f"  latency (receive - tmi-sent-ts): p50 {_fmt(lat['p50'])} ms, p99 {_fmt(lat['p99'])} ms, max {_fmt(lat['max'])} ms",
        f"  send -> echo: p50 {_fmt(ack['p50'])} ms, p99 {_fmt(ack['p99'])} ms; send -> receive: p50 "
        f"{_fmt(c2c['p50'])} ms, p99 {_fmt(c2c['p99'])} ms",
        f"  lost: {r['lost']['delivered_without_echo']} delivered without an echo, {r['lost']['unanswered']} never answered",
    ]
    if rc.get("lost"):
        per_edge = ", ".join(f"{e} {v['lost']}/{v['reestablished']}" for e, v in rc["by_edge"].items())
        lines.append(f"  connections lost {rc['lost']}, re-established {rc['reestablished']} (by edge, lost/back: "
                     f"{per_edge}); {rc['clients_kept']} clients kept their session")
        if r["excluded_while_disconnected"]:
            cg = r["completeness_with_gaps"]
            lines.append(f"  {r['excluded_while_disconnected']} deliveries excluded while receivers reconnected; "
                         f"counted as missed, completeness {'-' if cg is None else f'{cg * 100:.3f}%'}")
    if r.get("reconnects"):
        moved = Counter(f"{e['edge']} -> {e['back_edge']}" for e in r.get("reconnect_events") or [])
        lines.append(f"  RECONNECT followed {r['reconnects']} times, make-before-break ("
                     + ", ".join(f"{k} x{v}" for k, v in sorted(moved.items())) + ")")
    if r["skipped"]:
        lines.append(f"  the generator fell behind and skipped {r['skipped']} messages (its machine's CPU is the limit)")
    if r["errors"]:
        lines.append("  errors: " + ", ".join(f"{k} {v}" for k, v in sorted(r["errors"].items())))
        lines += [f"    {e}" for e in r["error_examples"]]
    else:
        lines.append("  errors: none")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """The command line (`python -m chat.loadgen`, `chatops loadgen`); returns the exit status."""
    try:
        options, config = parse_args(argv)
    except SystemExit as exc:      # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    try:
        cf = clusterfile.load(config).spec
    except clusterfile.ClusterFileError as exc:
        print(f"loadgen: {exc}", file=sys.stderr)
        return 2
    # Called in-process (the chatops CLI, a test), leave logging and signals as they were found.
    root = logging.getLogger("chatops")
    saved_logging = (list(root.handlers), root.level, root.propagate)
    saved_signals = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def early(_signum, _frame) -> None:   # until run() installs its own handlers on the loop
        global _early_stop
        _early_stop = True
    try:
        logs.setup("loadgen", sys.stderr)
        if _main_thread():
            for sig in saved_signals:
                signal.signal(sig, early)
        try:
            import uvloop
            runner = uvloop.run
        except ImportError:  # pragma: no cover
            runner = asyncio.run
        try:
            report = runner(run(cf, options))
        except LoadgenError as exc:
            print(f"loadgen: {exc}", file=sys.stderr)
            return 2
    finally:
        if _main_thread():
            for sig, handler in saved_signals.items():
                signal.signal(sig, handler)
        root.handlers[:], root.level, root.propagate = saved_logging[0], saved_logging[1], saved_logging[2]
    print(format_report(report), file=sys.stderr, flush=True)
    if options.json:
        print(json.dumps(report), flush=True)
    if report["senders"] == 0 and options.senders > 0:
        print("loadgen: no sender could join, so nothing was sent; see the errors above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
