"""Every Redis key the chat services use, in one place.

Keys follow the talk's patterns: per-user keys carry the login as their hash tag
(`{ronni}.color`), per-room keys the room name (`{degentp}.bans`). The hash tag decides the slot,
so all of one room's keys live on one shard and clue's per-message pipeline for a room is a
single round trip; and a hot room shows up as a hot `{*}.<kind>` prefix on one shard.

No key name holds a secret. A chat token is stored as its SHA-256 digest
(`{<digest>}.token_sha256` -> login): key names are shown by the control plane's hot-key sampler
and slow log, and travel in every command, so the token itself must never be one. `PUBLIC` is the
set of shapes the control plane may show as they are; anything else is redacted
(collectors/redact.py). A new kind of key goes here and into `PUBLIC` together.
"""

from __future__ import annotations

import hashlib
import re

from chat.slotguard import PREFIX as _GUARD_PREFIX


def token_digest(tok: str) -> str:
    """The SHA-256 of a chat token, in hex: what Redis holds in the token's place. Tokens are 120
    random bits, so a plain digest cannot be reversed by guessing; no salt is needed."""
    return hashlib.sha256(tok.encode("utf-8", "surrogatepass")).hexdigest()


def token(tok: str) -> str:          # -> login; named by the token's digest, never the token
    # The digest is the hash tag: tokens spread over every slot, as the tokens themselves did.
    return f"{{{token_digest(tok)}}}.token_sha256"


def user(login: str) -> str:         # hash: id, login, display_name, bot
    return f"{{{login}}}.user"


def color(login: str) -> str:        # string: #RRGGBB
    return f"{{{login}}}.color"


def room(name: str) -> str:          # hash: id, broadcaster, and the modes (chat.roommodes.FIELDS)
    return f"{{{name}}}.room"


def mods(name: str) -> str:          # set of logins
    return f"{{{name}}}.mods"


def bans(name: str) -> str:          # hash: login -> expiry (epoch seconds; 0 = permanent)
    return f"{{{name}}}.bans"


def ratelimits(name: str) -> str:    # hash of per-room overrides: room_rate, user_rate
    return f"{{{name}}}.ratelimits"




def subs(name: str) -> str:          # set of logins subscribed to the room (chatops users add --sub)
    return f"{{{name}}}.subs"


def follows(name: str) -> str:       # hash: login -> when they followed the room (epoch seconds)
    return f"{{{name}}}.follows"


def slow(name: str, user_id: str) -> str:  # set while the user must wait in slow mode; TTL = the wait
    # In the room's hash tag, so the check joins the room's pipeline on its shard; numbered by the
    # user's numeric id, so the key's kind stays one counting prefix ({*}.slow.#).
    return f"{{{name}}}.slow.{user_id}"


def r9k(name: str, digest: int) -> str:   # a text sent recently in unique-chat mode; TTL
    return f"{{{name}}}.r9k.{digest}"


def user_counters(name: str, window: int) -> str:  # hash: login -> messages in this fixed window
    # One hash per room and window rather than a key per user, so the key's kind stays one
    # counting prefix ({*}.rl.u.#) however many users talk.
    return f"{{{name}}}.rl.u.{window}"


def room_counter(name: str, second: int) -> str:  # messages in the room during one second
    return f"{{{name}}}.rl.r.{second}"


def nick_claim(nick: str) -> str:   # string: the connection holding an open-mode nick (TTL)
    # Only clusters with `auth: open` write it: the nick is free again when the connection quits,
    # or when its edge stops refreshing (a crashed edge), so collisions hold across every edge.
    return f"{{{nick}}}.nick_claim"


# Every shape above, with a login or room (chat.users.LOGIN_RE) or a digest as the hash tag, and
# the slot guard's reserved keys. Whole-string, ASCII.
_TAG = r"\{[a-z0-9_]{1,25}\}"
PUBLIC = re.compile(
    rf"{_TAG}\.(?:user|color|room|mods|bans|ratelimits|nick_claim|subs|follows|rl\.u\.[0-9]{{1,12}}"
    r"|rl\.r\.[0-9]{1,12}|slow\.[0-9]{1,12}|r9k\.[0-9]{1,20})"
    r"|\{[0-9a-f]{64}\}\.token_sha256"
    rf"|{re.escape(_GUARD_PREFIX)}[a-z]{{1,20}}(?::[a-z]{{1,20}})?(?::[0-9]{{1,5}})?", re.ASCII)

# Durable: moderation state and identities, which must never be evicted and carry no TTL (the
# shards run a volatile-* policy, which evicts only keys with one). Everything else clue writes
# (the rate-limit counters, slow-mode and unique-chat marks) carries a TTL.
DURABLE_KINDS = ("token_sha256", "user", "color", "room", "mods", "bans", "ratelimits", "subs",
                 "follows")


def public(key: str | bytes) -> bool:
    """Whether `key` has one of the chat's own shapes, none of which holds a secret."""
    if isinstance(key, bytes):
        try:
            key = key.decode("ascii")
        except UnicodeDecodeError:
            return False
    return PUBLIC.fullmatch(key) is not None
