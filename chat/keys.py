"""Every Redis key the chat services use, in one place.

Keys follow the talk's patterns: per-user keys carry the login as their hash tag
(`{ronni}.color`), per-room keys the room name (`{degentp}.bans`). The hash tag decides the slot,
so all of one room's keys live on one shard and clue's per-message pipeline for a room is a
single round trip; and a hot room shows up as a hot `{*}.<kind>` prefix on one shard.
"""

from __future__ import annotations


def token(tok: str) -> str:          # -> login
    return f"{{{tok}}}.auth"


def user(login: str) -> str:         # hash: id, login, display_name, bot
    return f"{{{login}}}.user"


def color(login: str) -> str:        # string: #RRGGBB
    return f"{{{login}}}.color"


def room(name: str) -> str:          # hash: id, broadcaster
    return f"{{{name}}}.room"


def mods(name: str) -> str:          # set of logins
    return f"{{{name}}}.mods"


def bans(name: str) -> str:          # hash: login -> expiry (epoch seconds; 0 = permanent)
    return f"{{{name}}}.bans"


def ratelimits(name: str) -> str:    # hash of per-room overrides: room_rate, user_rate
    return f"{{{name}}}.ratelimits"


def user_counters(name: str, window: int) -> str:  # hash: login -> messages in this fixed window
    # One hash per room and window rather than a key per user, so the key's kind stays one
    # counting prefix ({*}.rl.u.#) however many users talk.
    return f"{{{name}}}.rl.u.{window}"


def room_counter(name: str, second: int) -> str:  # messages in the room during one second
    return f"{{{name}}}.rl.r.{second}"
