"""clue: message ingestion. For every PRIVMSG an edge forwards, clue decides, from Redis state
reached through the host's own shard listeners, whether it may be sent: who the user is, whether
they are banned or timed out, whether they are over their rate limit or the room is over its,
and what colour and badges they wear. Accepted messages go to the exchange; rejected ones return
the Twitch NOTICE msg-id the edge shows the user. Mods and the broadcaster run `.ban`, `.timeout`
and `.unban` here too, which the exchange turns into CLEARCHAT for everyone in the room, and the
room modes, `.delete` and `.clear`, whose rules are chat.roommodes' (Twitch's lines: chat.twitch).

When Redis cannot be reached the message is refused (`msg_unavailable`): a ban must never be
skipped because the ban list could not be read.

    python -m chat.clue --config FILE --host chat1
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
import zlib
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from chat import keys, logs, roommodes, service, twitch
from chat.cache import CacheUnavailable, ShardedCache
from chat.nicks import NickClaims
from chat.upstream import Pool, Upstream, UpstreamError, UpstreamFull
from cluster.durations import seconds
from cluster.spec import ClueService

TOP_SLOTS = 32                 # per-slot series exported; 16,384 would swamp Prometheus
TIMEOUT_DEFAULT = 600          # seconds, as Twitch's /timeout without a duration
MAX_TIMEOUT = 14 * 24 * 3600   # Twitch's cap: two weeks
ERROR_LOG_EVERY = 1.0          # seconds between "could not decide" lines; the rest are counted
ROOM_FIELDS = ("id", "broadcaster", *roommodes.FIELDS)    # read from `{room}.room` with every message


def user_id(login: str) -> str:
    """Stable numeric ids without a counter key: ids only need to be unique enough to tag."""
    return str(zlib.crc32(login.encode()) & 0x7FFFFFFF)


# -- pure decisions --

@dataclass(frozen=True)
class ModCommand:
    action: str          # ban | timeout | unban
    target: str
    duration: int = 0    # seconds, timeout only
    reason: str = ""


@dataclass(frozen=True)
class ModRefusal:
    """A moderation command clue will not run: the NOTICE msg-id and text the sender gets."""
    msg_id: str          # usage_<command> | invalid_user | bad_timeout_duration
    text: str


# ASCII only, by construction: str.isdigit() and re's \d accept '²' or '١٠', which int() then
# refuses (a 500 for the whole batch) or reads as a number nobody typed.
_LOGIN = re.compile(r"[a-z0-9_]{1,25}", re.ASCII)        # chat.users.LOGIN_RE, whole-string
_SECONDS = re.compile(r"[0-9]+", re.ASCII)
_USAGE = {"ban": "Usage: .ban <username> [reason]",
          "timeout": f"Usage: .timeout <username> [seconds, 1-{MAX_TIMEOUT}] [reason]",
          "unban": "Usage: .unban <username>"}


def _looks_like_duration(arg: str) -> bool:
    """Whether a `.timeout` argument after the user is meant as a duration rather than the first
    word of a reason: it starts with a sign or with any digit, ASCII or not."""
    return arg[0] in "+-" or arg[0].isnumeric()   # a classifier only: parse_duration() decides


def parse_duration(arg: str) -> int | None:
    """Whole ASCII seconds in 1..MAX_TIMEOUT, or None. The length is bounded before int(), which
    raises past 4,300 digits."""
    if not _SECONDS.fullmatch(arg):
        return None
    digits = arg.lstrip("0")
    if not digits or len(digits) > len(str(MAX_TIMEOUT)):
        return None
    value = int(digits)
    return value if 1 <= value <= MAX_TIMEOUT else None


def parse_mod_command(text: str) -> ModCommand | ModRefusal | None:
    """`.ban x`, `/timeout x 60 spam`, `.unban x` -> ModCommand; a malformed one -> ModRefusal
    (never an exception, whatever the input); anything else -> None (an ordinary message)."""
    if not text or text[0] not in "./":
        return None
    word, _, rest = text[1:].partition(" ")
    word = word.lower()
    if word in ("untimeout",):
        word = "unban"
    if word not in ("ban", "timeout", "unban"):
        return None
    args = rest.split()
    if not args:
        return ModRefusal(f"usage_{word}", _USAGE[word])
    target = args[0].removeprefix("@")
    # ASCII before lower(): the Kelvin sign lowers to a plain 'k'.
    if not target.isascii() or not _LOGIN.fullmatch(target.lower()):
        return ModRefusal("invalid_user", "Invalid username: give a login of 1-25 characters a-z, 0-9 or _.")
    target = target.lower()
    if word == "timeout":
        duration, reason_at = TIMEOUT_DEFAULT, 1
        if len(args) > 1 and _looks_like_duration(args[1]):
            duration, reason_at = parse_duration(args[1]), 2
            if duration is None:
                return ModRefusal("bad_timeout_duration", f"Invalid timeout duration: give whole seconds "
                                  f"from 1 to {MAX_TIMEOUT} (two weeks), e.g. .timeout {target} 600")
        return ModCommand("timeout", target, duration, " ".join(args[reason_at:]))
    return ModCommand(word, target, 0, " ".join(args[1:]))


@dataclass(frozen=True, slots=True)
class _Publish:
    """An accepted message on its way to the exchange, and what its sender is told once it is there."""
    future: asyncio.Future
    result: dict


@dataclass(frozen=True)
class Role:
    broadcaster: bool
    mod: bool
    bot: bool

    @property
    def privileged(self) -> bool:
        return self.broadcaster or self.mod


def user_limit(role: Role, settings: ClueService, override: str | None) -> int:
    if role.bot:
        return settings.bot_rate
    if role.privileged:
        return settings.privileged_rate
    return _count(override, settings.user_rate)


def _count(value: str | None, default: int) -> int:
    """A per-room override read from Redis: ASCII digits (bounded), else the default."""
    if value and len(value) <= 12 and _SECONDS.fullmatch(value):
        return int(value)
    return default


def badges(role: Role) -> str:
    return "broadcaster/1" if role.broadcaster else "moderator/1" if role.mod else ""


def notice(msg_id: str, text: str) -> dict:
    return {"ok": False, "notice": {"msg_id": msg_id, "text": text}}


def ban_notice(expiry: int, now: float) -> dict:
    if expiry == 0:
        return notice("msg_banned", "You are permanently banned from talking in this channel.")
    return notice("msg_timedout", f"You are timed out for {max(1, int(expiry - now))} more seconds.")


# -- the service --

class Clue:
    def __init__(self, ctx: service.Context, cache: ShardedCache, exchange: Upstream):
        self.ctx = ctx
        self.settings = ctx.services.clue
        self.window = int(seconds(self.settings.rate_window))
        self.server_name = ctx.services.edge.server_name
        self.cache = cache
        self.exchange = exchange
        self._error_logged, self._errors_suppressed = float("-inf"), 0
        r = ctx.registry
        self.m_messages = Counter("chat_clue_messages", "PRIVMSGs decided, by result (accepted or the NOTICE msg-id)",
                                  ["result"], registry=r)
        self.m_accepted = self.m_messages.labels("accepted")
        self.m_auth = Counter("chat_clue_auth", "Token lookups, by result", ["result"], registry=r)
        self.m_decision = Histogram("chat_clue_decision_seconds", "Time to decide one PRIVMSG, Redis included",
                                    registry=r, buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1))
        self.m_exchange_errors = Counter("chat_clue_exchange_errors", "Accepted messages the exchange did not take",
                                         ["kind"], registry=r)
        r.register(_CacheCollector(cache))
        pool = Gauge("chat_clue_cache_pool_size", "Connections allowed per shard listener (CACHE_MAX_CONNS)",
                     registry=r)
        pool.set(self.settings.cache_max_conns)

    # auth: token -> user
    async def auth(self, item: dict) -> dict:
        token = str(item.get("token", ""))
        if not token or len(token) > 200:
            self.m_auth.labels("invalid").inc()
            return {"ok": False, "error": "invalid token"}
        key = keys.token(token)      # the digest's key: the token itself never reaches Redis
        try:
            login = await self.cache.client_for(key).get(key)
            if login is None:
                self.m_auth.labels("invalid").inc()
                return {"ok": False, "error": "invalid token"}
            login = login.decode() if isinstance(login, bytes) else login
            pipe = self.cache.pipeline_for(keys.user(login))
            pipe.hmget(keys.user(login), "id", "display_name")
            pipe.get(keys.color(login))
            (uid, display), color = await pipe.execute()
        except CacheUnavailable:
            self.m_auth.labels("unavailable").inc()
            return {"ok": False, "error": "unavailable"}
        self.m_auth.labels("ok").inc()
        return {"ok": True, "login": login, "user_id": _s(uid) or user_id(login),
                "display_name": _s(display) or login, "color": _s(color)}

    async def privmsg_batch(self, items: list[dict]) -> list[dict]:
        """Decide a batch of PRIVMSGs with one pipeline per shard, whatever the batch size.

        Each message is one op on its room's shard (the guard's PRIVMSG op: ban, mod, room,
        limits and both counters) and two commands on its user's; grouping them by shard makes a
        burst of N messages a handful of round trips instead of 2N, which keeps a burst inside the
        talk's ten-connection, 100 ms cache budget. An ordinary message is then decided without a
        task of its own: only commands and room modes that need Redis again await one."""
        started = time.perf_counter()
        now = time.time()
        second = int(now)
        window = second // self.window
        user_ttl = self.window + 1
        pipes: dict[int, object] = {}
        sizes: dict[int, int] = {}
        plans: list[tuple[int, int, int, int] | None] = []
        shard_of, pipeline_for = self.cache.shard_of, self.cache.pipeline_for

        for item in items:
            login, room, text = item.get("login"), item.get("room"), item.get("text")
            if not (isinstance(login, str) and login and isinstance(room, str) and room
                    and isinstance(text, str)):
                plans.append(None)
                continue
            bans, user = keys.bans(room), keys.user(login)
            rshard = shard_of(bans)
            rp = pipes.get(rshard)
            if rp is None:
                rp = pipes[rshard] = pipeline_for(bans)
                sizes[rshard] = 0
            # The modes sit in the room's own hash: read with its id and broadcaster, for free.
            rp.privmsg_check(bans, keys.mods(room), keys.room(room), keys.ratelimits(room),
                             keys.user_counters(room, window), keys.room_counter(room, second), login,
                             user_ttl, 2, ROOM_FIELDS)
            rstart = sizes[rshard]
            sizes[rshard] += 1
            ushard = shard_of(user)
            up = pipes.get(ushard)
            if up is None:
                up = pipes[ushard] = pipeline_for(user)
                sizes[ushard] = 0
            up.hmget(user, "id", "display_name", "bot")
            up.get(keys.color(login))
            ustart = sizes[ushard]
            sizes[ushard] += 2
            plans.append((rshard, rstart, ushard, ustart))

        shards = list(pipes)
        replies = await asyncio.gather(*(pipes[sh].execute() for sh in shards), return_exceptions=True)
        by_shard = dict(zip(shards, replies))
        for shard, reply in by_shard.items():
            if isinstance(reply, BaseException) and not isinstance(reply, CacheUnavailable):
                logs.event(self.ctx.log, "redis", f"pipeline failed on shard {shard}: {reply!r}", 40)

        results: list[dict | None] = []
        waits: list[tuple[int, object]] = []      # (index, awaitable) of what still needs I/O
        for k, (item, plan) in enumerate(zip(items, plans)):
            try:
                result = self._decide(item, plan, by_shard, now)
            except Exception as exc:  # noqa: BLE001 -- the item fails closed, the batch goes on
                self._report_error(item, exc)
                result = notice("msg_rejected", "Your message was not sent: clue could not check it.")
            if isinstance(result, dict):
                results.append(result)
            else:
                results.append(None)
                waits.append((k, result))
        if waits:
            done = await asyncio.gather(*(self._finish(items[k], w) for k, w in waits))
            for (k, _), result in zip(waits, done):
                results[k] = result
        per_item = (time.perf_counter() - started)
        observe, accepted = self.m_decision.observe, 0
        for result in results:
            observe(per_item)
            if result["ok"]:
                accepted += 1
            else:
                self.m_messages.labels(result["notice"]["msg_id"]).inc()
        if accepted:
            self.m_accepted.inc(accepted)
        return results

    async def _finish(self, item: dict, pending) -> dict:
        """Await what `_decide` left pending (an exchange publish, or a command's own Redis and
        exchange calls); any failure is this item's own refusal, never the batch's."""
        try:
            if isinstance(pending, _Publish):
                await pending.future
                return pending.result
            return await pending
        except (CacheUnavailable, UpstreamError):  # Redis or the exchange: never send unchecked
            return notice("msg_unavailable", "Your message was not sent: chat is temporarily unavailable.")
        except Exception as exc:  # noqa: BLE001 -- the item fails closed, the batch goes on
            self._report_error(item, exc)
            return notice("msg_rejected", "Your message was not sent: clue could not check it.")

    def _report_error(self, item: dict, exc: BaseException) -> None:
        """Log an undecidable message at most once per ERROR_LOG_EVERY; the rest are counted."""
        now = time.monotonic()
        if now - self._error_logged < ERROR_LOG_EVERY:
            self._errors_suppressed += 1
            return
        fields = {"room": str(item.get("room"))[:64], "login": str(item.get("login"))[:64],
                  "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        if self._errors_suppressed:
            fields["suppressed"] = self._errors_suppressed
        self._error_logged, self._errors_suppressed = now, 0
        logs.event(self.ctx.log, None, "could not decide a message", 40, **fields)

    def _decide(self, item: dict, plan, by_shard: dict, now: float):
        """A refusal, or what is left to await: the accepted message's publish (_Publish), or a
        coroutine for commands and room modes that need Redis again."""
        if plan is None:
            return notice("msg_rejected", "Your message was not sent: it was malformed.")
        rshard, rstart, ushard, ustart = plan
        room_reply, user_reply = by_shard[rshard], by_shard[ushard]
        if isinstance(room_reply, BaseException) or isinstance(user_reply, BaseException):
            return notice("msg_unavailable", "Your message was not sent: chat is temporarily unavailable.")
        checked = room_reply[rstart]
        if isinstance(checked, Exception):      # the op failed on its own (a key of the wrong type)
            raise checked
        ban, is_mod, used, room_used, room_rate, user_rate, room_id, broadcaster, *modes = checked
        (uid, display, bot), color = user_reply[ustart:ustart + 2]
        login, room, text = item["login"], item["room"], item["text"]

        if ban is not None:
            expiry = int(_s(ban) or 0)
            if expiry == 0 or expiry > now:
                return ban_notice(expiry, now)
        role = Role(broadcaster=_s(broadcaster) == login, mod=bool(is_mod), bot=_s(bot) == "1")
        if item.get("auth") == "open":
            # A nick logged in without a token (auth: open) is nobody's mod, whatever the sets say.
            role = Role(broadcaster=False, mod=False, bot=False)
        room_id = _s(room_id) or user_id(room)
        uid = _s(uid) or user_id(login)

        # The user's own limit comes first, for moderation commands too: they write to Redis.
        if used > user_limit(role, self.settings, _s(user_rate)):
            return notice("msg_ratelimit", "Your message was not sent because you are sending messages too quickly.")
        text = twitch.me_action(text)
        if text is None:
            return notice("usage_me", "Usage: \"/me <message>\" - Express an action in the third-person.")
        room_command = roommodes.parse_room_command(text)
        command = parse_mod_command(text) if room_command is None else room_command
        if isinstance(command, (ModRefusal, roommodes.Refusal)):
            return notice(command.msg_id, command.text)
        modes = roommodes.Modes.from_redis(modes)
        if room_command is not None:
            return self._room_command(room_command, role, room, room_id, modes, item, now)
        if command is not None:
            return self._moderate(command, role, room, room_id, now)
        if room_used > _count(_s(room_rate), self.settings.room_rate):
            return notice("msg_ratelimit", "Your message was not sent because this room is too busy right now.")
        accept = self._accept(item, role, login, room, room_id, uid, text, _s(display), _s(color), now)
        if role.privileged or not modes.any_on:
            return accept()
        return self._enforced(modes, item, role, uid, text, now, accept)

    async def _enforced(self, modes, item: dict, role: Role, uid: str, text: str, now: float, accept) -> dict:
        """A message in a room with modes on: the modes' verdict first (it may read Redis)."""
        refusal = await roommodes.enforce(self.cache, modes, item["room"], item["login"], uid, text,
                                          role.privileged, now)
        if refusal is not None:
            return notice(refusal.msg_id, refusal.text)
        pending = accept()
        await pending.future
        return pending.result

    def _accept(self, item: dict, role: Role, login: str, room: str, room_id: str, uid: str, text: str,
                display: str, color: str, now: float):
        """The accepted message's publish, started when called: the PRIVMSG the exchange fans out,
        and the answer the sender gets once the exchange took it."""
        def publish() -> _Publish:
            msg_id = str(uuid.uuid4())
            ts = str(int(now * 1000))
            badge = badges(role)
            mod = "1" if role.mod else "0"
            tags = {
                "badge-info": "", "badges": badge, "color": color, "display-name": display or login,
                "emotes": twitch.emotes_tag(text), "first-msg": "0", "flags": "", "id": msg_id, "mod": mod,
                "room-id": room_id, "subscriber": "0", "tmi-sent-ts": ts, "turbo": "0",
                "user-id": uid, "user-type": "mod" if role.mod else "",
            }
            client_tags = item.get("tags")
            nonce = client_tags.get("client-nonce") if isinstance(client_tags, dict) else None
            if nonce:
                tags["client-nonce"] = str(nonce)[:64]
            future = self._publish({
                "room": room, "command": "PRIVMSG", "tags": tags,
                "source": f"{login}!{login}@{login}.{self.server_name}", "params": [f"#{room}", text],
                "origin": {"edge": item.get("edge"), "conn": item.get("conn")},
            })
            userstate = twitch.user_tags(badges=badge, color=color, display_name=tags["display-name"],
                                         mod=role.mod)
            return _Publish(future, {"ok": True, "id": msg_id, "tmi_sent_ts": ts, "userstate": userstate})
        return publish

    async def _room_command(self, cmd: roommodes.RoomCommand, role: Role, room: str, room_id: str,
                            modes: roommodes.Modes, item: dict, now: float) -> dict:
        """A mode change, `.delete` or `.clear`, published to the room through the exchange."""
        if not role.privileged:
            return notice("no_permission", "You don't have permission to perform that action.")
        ts, source = int(now * 1000), self.server_name
        if isinstance(cmd, roommodes.ModeChange):
            changed, said = roommodes.change_notice(modes, cmd)
            if not changed:
                return notice(said.msg_id, said.text)
            await self.cache.client_for(keys.room(room)).hset(keys.room(room), cmd.field, cmd.value)
            tag = {roommodes.TAGS[cmd.field]: str(cmd.value)}
            state = twitch.roomstate(room, room_id, tag, source=source)
            await self._publish(twitch.as_published(room, state))
            await self._publish(twitch.as_published(room, twitch.room_notice(room, said.msg_id, said.text,
                                                                             source=source)))
            return {"ok": True}
        if isinstance(cmd, roommodes.Clear):
            clear = twitch.clearchat_room(room, room_id, ts, source=source)
            await self._publish(twitch.as_published(room, clear))
            return {"ok": True}
        # Delete: the sender's edge found the message in its recent index, or it is unknown.
        found = item.get("delete")
        if not isinstance(found, dict) or found.get("id") != cmd.msg_id:
            return notice(roommodes.DELETE_UNKNOWN.msg_id, roommodes.DELETE_UNKNOWN.text)
        login, text = str(found.get("login", "")), str(found.get("text", ""))
        refusal = roommodes.delete_refusal(str(found.get("badges", "")), own=login == item["login"],
                                           by_broadcaster=role.broadcaster)
        if refusal:
            return notice(refusal.msg_id, refusal.text)
        deleted = twitch.clearmsg(room, login=login, room_id=room_id, target_msg_id=cmd.msg_id, ts_ms=ts,
                                  text=text, source=source)
        await self._publish(twitch.as_published(room, deleted))
        return notice("delete_message_success", f"The message from {login} is now deleted.")

    async def roomstate(self, item: dict) -> dict:
        """What a client joining `room` is told: ROOMSTATE's modes and its own USERSTATE there."""
        login, room = item.get("login"), item.get("room")
        if not all(isinstance(v, str) and v for v in (login, room)):
            return {"ok": False, "error": "login and room are required"}
        try:
            pipe = self.cache.pipeline_for(keys.room(room))
            pipe.hmget(keys.room(room), "id", "broadcaster", *roommodes.FIELDS)
            pipe.sismember(keys.mods(room), login)
            (room_id, broadcaster, *modes), is_mod = await pipe.execute()
            display, color = login, ""
            if not item.get("anonymous"):
                upipe = self.cache.pipeline_for(keys.user(login))
                upipe.hget(keys.user(login), "display_name")
                upipe.get(keys.color(login))
                display, color = await upipe.execute()
        except CacheUnavailable:
            return {"ok": False, "error": "unavailable"}
        role = Role(broadcaster=_s(broadcaster) == login, mod=bool(is_mod), bot=False)
        return {"ok": True, "room_id": _s(room_id) or user_id(room),
                "modes": roommodes.Modes.from_redis(modes).tags(),
                "userstate": twitch.user_tags(badges=badges(role), color=_s(color),
                                              display_name=_s(display) or login, mod=role.mod)}

    async def _moderate(self, cmd: ModCommand, role: Role, room: str, room_id: str, now: float) -> dict:
        if not role.privileged:
            return notice("no_permission", "You don't have permission to perform that action.")
        bans = keys.bans(room)
        client = self.cache.client_for(bans)
        if cmd.action == "unban":
            removed = await client.hdel(bans, cmd.target)
            if not removed:
                return notice("bad_unban_no_ban", f"{cmd.target} is not banned from this channel.")
            return notice("unban_success", f"{cmd.target} is no longer banned from this channel.")
        expiry = 0 if cmd.action == "ban" else int(now) + cmd.duration
        await client.hset(bans, cmd.target, expiry)
        tags = {"room-id": room_id, "target-user-id": user_id(cmd.target), "tmi-sent-ts": str(int(now * 1000))}
        if cmd.action == "timeout":
            tags = {"ban-duration": str(cmd.duration), **tags}
        await self._publish({"room": room, "command": "CLEARCHAT", "tags": tags, "source": self.server_name,
                             "params": [f"#{room}", cmd.target], "origin": None})
        if cmd.action == "ban":
            return notice("ban_success", f"{cmd.target} is now banned from this channel.")
        return notice("timeout_success", f"{cmd.target} has been timed out for {cmd.duration} seconds.")

    def _publish(self, message: dict) -> asyncio.Future:
        """Hand `message` to the exchange; the future fails as the exchange call did, and the
        failure is counted and logged here, once, whoever awaits it."""
        future = self.exchange.call(message)
        future.add_done_callback(self._published)
        return future

    def _published(self, future: asyncio.Future) -> None:
        exc = None if future.cancelled() else future.exception()
        if isinstance(exc, UpstreamFull):
            self.m_exchange_errors.labels("queue_full").inc()
            if exc.report:
                logs.event(self.ctx.log, "exchange", f"publish failed: {exc}", 30, refused=exc.report)
        elif isinstance(exc, UpstreamError):
            kind = "timeout" if "timed out" in str(exc) else "error"
            self.m_exchange_errors.labels(kind).inc()
            logs.event(self.ctx.log, "exchange", f"publish failed: {exc}", 30)

    def app(self) -> web.Application:
        app = service.metrics_app(self.ctx)

        def batch(handler):
            """A route taking {"items": [...]} and answering {"results": [...]}, one per item."""
            async def route(request: web.Request) -> web.Response:
                try:
                    items = (await request.json())["items"]
                    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                        raise ValueError("items must be a list of objects")
                except (ValueError, KeyError, TypeError) as exc:
                    return web.json_response({"error": f"bad request: {exc}"}, status=400)
                return web.json_response({"results": await handler(items)})
            return route

        async def auth_batch(items: list[dict]) -> list[dict]:
            return list(await asyncio.gather(*(self.auth(i) for i in items)))

        app.router.add_post("/v1/auth", batch(auth_batch))
        app.router.add_post("/v1/privmsg", batch(self.privmsg_batch))
        if self.ctx.cf.clusters[self.ctx.cluster].auth == "open":
            app.router.add_post("/v1/nicks", batch(NickClaims(self.cache).batch))

        async def roomstate_batch(items: list[dict]) -> list[dict]:
            return list(await asyncio.gather(*(self.roomstate(i) for i in items)))
        app.router.add_post("/v1/roomstate", batch(roomstate_batch))

        async def key_stats(_request):
            return web.json_response(self.cache.stats())
        app.router.add_get("/v1/stats/keys", key_stats)

        async def slot_stats(_request):
            smap = self.cache.slot_map
            return web.json_response({"epoch": smap.epoch, "slots": self.cache.slot_ops()})
        app.router.add_get("/v1/stats/slots", slot_stats)
        return app


def _s(value) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


class _CacheCollector:
    """Exposes the cache's own counters at scrape time, rather than a metric call per Redis op."""

    def __init__(self, cache: ShardedCache):
        self.cache = cache

    def collect(self):
        stats = self.cache.stats(TOP_SLOTS)
        by_shard = CounterMetricFamily("chat_clue_redis_ops", "Redis commands sent, by shard", labels=["shard"])
        for shard, n in stats["ops_by_shard"].items():
            by_shard.add_metric([str(shard)], n)
        yield by_shard
        by_prefix = CounterMetricFamily("chat_clue_redis_ops_by_prefix",
                                        "Redis commands sent, by key pattern ({*} stands for the hash tag)",
                                        labels=["prefix"])
        for prefix, n in stats["ops_by_prefix"].items():
            by_prefix.add_metric([prefix], n)
        yield by_prefix
        errors = CounterMetricFamily("chat_clue_redis_errors", "Redis calls that failed, by shard", labels=["shard"])
        for shard, n in stats["errors_by_shard"].items():
            errors.add_metric([str(shard)], n)
        yield errors
        yield GaugeMetricFamily("chat_clue_slot_map_epoch", "Epoch of the slot map this clue routes by",
                                value=stats["slot_map_epoch"])
        yield CounterMetricFamily("chat_clue_slot_redirects", "Batches a shard refused because the slot had "
                                  "moved, resent to the new owner", value=stats["redirects"])
        slots = CounterMetricFamily("chat_clue_redis_slot_ops",
                                    f"Redis commands sent, by slot: the {TOP_SLOTS} busiest slots only",
                                    labels=["slot", "shard"])
        for slot, n in stats["top_slots"]:
            slots.add_metric([str(slot), stats["top_slot_shards"][str(slot)]], n)
        yield slots


async def main(ctx: service.Context, stop: asyncio.Event) -> None:
    settings = ctx.services
    cache = ShardedCache.for_host(ctx.cf, ctx.host, logger=ctx.log)
    opened = Counter("chat_clue_exchange_connections_opened", "TCP connections opened to the exchange",
                     registry=ctx.registry)
    pool = Pool(pool_size=settings.exchange.pool_size, keepalive=True, local_address=ctx.address,
                token=ctx.internal_token, on_connect=opened.inc)
    ctx.upstreams["exchange"] = pool
    exchange = Upstream(pool, f"http://{ctx.address}:{settings.exchange.port}/v1/publish", name="exchange",
                        timeout=seconds(settings.exchange.timeout), max_pending=settings.exchange.max_pending)
    Gauge("chat_clue_exchange_queued", "Messages waiting for a connection to the exchange",
          registry=ctx.registry).set_function(lambda: exchange.pending)
    clue = Clue(ctx, cache, exchange)
    # The last map the shards hold, before the first message: the control plane may be down.
    try:
        await cache.refresh_map()
    except Exception as exc:  # noqa: BLE001 -- shards unreachable now: follow_map keeps trying
        logs.event(ctx.log, "slotmap", f"no published slot map readable yet: {exc!r}", 30)
    follow = asyncio.ensure_future(cache.follow_map())
    runner = await service.serve_http(clue.app(), ctx.address, settings.clue.port)
    logs.event(ctx.log, None, "listening", address=f"{ctx.address}:{settings.clue.port}",
               slot_map_epoch=cache.slot_map.epoch)
    try:
        await stop.wait()
    finally:
        follow.cancel()
        await runner.cleanup()
        await exchange.close()
        await pool.close()
        await cache.close()


if __name__ == "__main__":
    _ctx = service.parse_args("chat_clue")
    service.run(lambda stop: main(_ctx, stop))
