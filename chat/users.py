"""Users, tokens and room roles, as clue reads them from Redis (key names: chat.keys).

A token is what a client sends as `PASS oauth:<token>`; it maps to a login. Redis holds only the
token's SHA-256 (`keys.token`): the token itself is printed once, to whoever created the user.
Roles are per room: a room's broadcaster and its mods get the higher rate limit and may `.ban`,
`.timeout` and `.unban`; bots get Twitch's known-bot limit. Subscribing and following are the
smallest model of Twitch's own (no payments, no follow button): a room's set of subscribers and
hash of followers (login -> when they followed), which subscribers-only and followers-only modes
read (chat.roommodes).
"""

from __future__ import annotations

import re
import secrets
import time

from chat import keys
from chat.cache import ShardedCache
from chat.clue import user_id

LOGIN_RE = re.compile(r"^[a-z0-9_]{1,25}$")
COLOR_RE = re.compile(r"^#[0-9A-Fa-f]{6}$")


def check_login(login: str) -> str:
    if not LOGIN_RE.match(login):
        raise ValueError(f"{login!r} is not a valid login: 1-25 characters of [a-z0-9_]")
    return login


async def add_user(cache: ShardedCache, login: str, *, mod_rooms: tuple[str, ...] = (),
                   broadcaster_rooms: tuple[str, ...] = (), bot: bool = False,
                   color: str = "", display_name: str = "", sub_rooms: tuple[str, ...] = (),
                   follow_rooms: tuple[str, ...] = (), followed_at: float | None = None) -> str:
    """Create or update a user and return a new token for them."""
    check_login(login)
    for room in (*mod_rooms, *broadcaster_rooms, *sub_rooms, *follow_rooms):
        check_login(room)
    if color and not COLOR_RE.match(color):
        raise ValueError(f"{color!r} is not a colour like #1E90FF")
    token = secrets.token_hex(15)
    await cache.client_for(keys.token(token)).set(keys.token(token), login)
    pipe = cache.pipeline_for(keys.user(login))
    pipe.hset(keys.user(login), mapping={"id": user_id(login), "login": login,
                                         "display_name": display_name or login, "bot": "1" if bot else "0"})
    if color:
        pipe.set(keys.color(login), color)
    await pipe.execute()
    for room in mod_rooms:
        await cache.client_for(keys.mods(room)).sadd(keys.mods(room), login)
    for room in broadcaster_rooms:
        await cache.client_for(keys.room(room)).hset(keys.room(room), mapping={"id": user_id(room),
                                                                               "broadcaster": login})
    for room in sub_rooms:
        await cache.client_for(keys.subs(room)).sadd(keys.subs(room), login)
    since = int(time.time() if followed_at is None else followed_at)
    for room in follow_rooms:
        # A follow keeps its first date, as on Twitch: adding the user again is no new follow.
        await cache.client_for(keys.follows(room)).hsetnx(keys.follows(room), login, since)
    return token
