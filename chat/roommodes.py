"""Room modes (slow, followers-only, subscribers-only, emote-only, unique chat) and the room-wide
moderation commands (`.delete`, `.clear`): what mods type, what the room's state becomes, and
whether a message may go out under the modes in force. Clue calls these; the rules themselves are
pure functions, tested without Redis (tests/chat/test_twitch_state.py).

State lives on the room's shard, under its hash tag (chat.keys): the room's own hash `{room}.room`
holds the modes beside its id and broadcaster, `{room}.subs` and `{room}.follows` who subscribes
and who follows (and since when); slow mode and unique chat leave short-lived marks
(`{room}.slow.<user id>`, `{room}.r9k.<digest>`) that SET NX both checks and writes. Clue reads
the modes in the HMGET of the room's hash it already sends for every message, so a room with
every mode off costs no extra Redis command;
only a mode in force sends one more round trip to the same shard, and only for users it applies
to: mods and the broadcaster are exempt from every mode, as on Twitch.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from chat import keys, twitch

FIELDS = ("slow", "followers", "subs_only", "emote_only", "r9k")    # fields of `{room}.room`, HMGET order
TAGS = {"emote_only": "emote-only", "followers": "followers-only", "r9k": "r9k", "slow": "slow",
        "subs_only": "subs-only"}
SLOW_DEFAULT = 30           # seconds, Twitch's `/slow` without a number
SLOW_MAX = 120              # seconds; Twitch's chat settings allow 3-120, /slow refuses more
FOLLOWERS_MAX = 129600      # minutes: three months, Twitch's longest followers-only duration
R9K_WINDOW = 3600           # seconds a text stays "not unique" in unique-chat mode


@dataclass(frozen=True)
class Modes:
    slow: int = 0           # seconds between a user's messages; 0 = off
    followers: int = -1     # minutes a user must have followed; -1 = off, 0 = any follower
    subs_only: bool = False
    emote_only: bool = False
    r9k: bool = False

    @classmethod
    def from_redis(cls, values) -> Modes:
        """From HMGET `{room}.room` FIELDS. Values only clue writes; anything unreadable is off."""
        if not any(values):
            return ALL_OFF          # most rooms, for every message: no parsing
        slow, followers, subs_only, emote_only, r9k = (_text(v) for v in values)
        return cls(slow=_bounded(slow, 0, SLOW_MAX, 0), followers=_bounded(followers, -1, FOLLOWERS_MAX, -1),
                   subs_only=subs_only == "1", emote_only=emote_only == "1", r9k=r9k == "1")

    def value(self, field: str) -> int:
        return int(getattr(self, field))

    def tags(self) -> dict[str, str]:
        """Every mode as ROOMSTATE's tags (room-id aside), as sent on JOIN."""
        return {TAGS[f]: str(self.value(f)) for f in FIELDS}

    @property
    def any_on(self) -> bool:
        return self != ALL_OFF


ALL_OFF = Modes()


@dataclass(frozen=True)
class Refusal:
    """A command or message refused, with Twitch's NOTICE msg-id and text for the sender."""
    msg_id: str
    text: str


@dataclass(frozen=True)
class ModeChange:
    field: str              # one of FIELDS
    value: int              # the new value, as Modes holds it


@dataclass(frozen=True)
class Delete:
    msg_id: str


@dataclass(frozen=True)
class Clear:
    pass


RoomCommand = ModeChange | Delete | Clear

_OFF = {"slow": 0, "followers": -1, "subs_only": 0, "emote_only": 0, "r9k": 0}
_SWITCHES = {   # command -> (field, value); slow and followers take an argument, below
    "slowoff": ("slow", 0), "followersoff": ("followers", -1),
    "emoteonly": ("emote_only", 1), "emoteonlyoff": ("emote_only", 0),
    "subscribers": ("subs_only", 1), "subscribersoff": ("subs_only", 0),
    "r9kbeta": ("r9k", 1), "r9kbetaoff": ("r9k", 0), "uniquechat": ("r9k", 1), "uniquechatoff": ("r9k", 0),
}
_DURATION = re.compile(r"([0-9]{1,7}) ?(m|mins?|minutes?|h|hrs?|hours?|d|days?|w|weeks?|mo|months?)?",
                       re.ASCII | re.IGNORECASE)
_UNIT_MINUTES = {"m": 1, "h": 60, "d": 1440, "w": 10080, "mo": 43200}


def parse_room_command(text: str) -> RoomCommand | Refusal | None:
    """`.slow 5`, `/emoteonly`, `.delete <id>`, `.clear`... -> a command; a malformed one -> a
    Refusal; anything else -> None. Whether the sender may run it is clue's question."""
    if not text or text[0] not in "./":
        return None
    word, _, rest = text[1:].partition(" ")
    word, rest = word.lower(), rest.strip()
    if word in _SWITCHES:
        field, value = _SWITCHES[word]
        return ModeChange(field, value)
    if word == "slow":
        if not rest:
            return ModeChange("slow", SLOW_DEFAULT)
        seconds = rest.split(" ")[0]
        if not (seconds.isascii() and seconds.isdigit()) or len(seconds) > 7 or int(seconds) < 1:
            return Refusal("usage_slow_on", f"Usage: \"/slow [duration]\" - Enables slow mode. Duration, "
                                            f"in seconds (1-{SLOW_MAX}), is how long a user must wait "
                                            f"between messages; {SLOW_DEFAULT} if omitted.")
        if int(seconds) > SLOW_MAX:
            return Refusal("bad_slow_duration", f"You cannot set slow delay to more than {SLOW_MAX} seconds.")
        return ModeChange("slow", int(seconds))
    if word == "followers":
        minutes = parse_followers_duration(rest)
        if minutes is None:
            return Refusal("usage_followers_on", "Usage: \"/followers [duration]\" - Enables followers-only "
                                                 "mode; duration like 30m, 1h, 7d (at most 3 months), "
                                                 "0 if omitted.")
        return ModeChange("followers", minutes)
    if word == "delete":
        target = twitch.delete_target(text)
        if not target:
            return Refusal("usage_delete", "Usage: \"/delete <msg id>\" - Deletes the specified message.")
        return Delete(target)
    if word == "clear":
        return Clear()
    return None


def parse_followers_duration(arg: str) -> int | None:
    """Minutes, from '' (0), '10' (minutes), '30m', '1h', '2 days', '1mo'; None if unreadable or
    over three months."""
    if not arg:
        return 0
    m = _DURATION.fullmatch(arg.strip())
    if not m:
        return None
    unit = (m.group(2) or "m").lower()
    key = "mo" if unit.startswith("mo") else unit[0]
    minutes = int(m.group(1)) * _UNIT_MINUTES[key]
    return minutes if minutes <= FOLLOWERS_MAX else None


def minutes_text(minutes: int) -> str:
    """Twitch's wording of a followers-only duration: '10 minutes', '1 hour', '7 days'."""
    for size, name in ((43200, "month"), (10080, "week"), (1440, "day"), (60, "hour")):
        if minutes >= size and minutes % size == 0:
            n = minutes // size
            return f"{n} {name}{'s' if n != 1 else ''}"
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def change_notice(modes: Modes, change: ModeChange) -> tuple[bool, Refusal]:
    """(whether the room's state changes, the NOTICE saying so): `slow_on`, `emote_only_off`... for
    everyone in the room, or `already_*` for the mod alone when nothing changes."""
    f, v = change.field, change.value
    changed = modes.value(f) != v
    on = v != _OFF[f]
    if f == "slow":
        if on:
            return changed, Refusal("slow_on" if changed else "already_slow_on",
                                    f"This room is now in slow mode. You may send messages every {v} seconds."
                                    if changed else f"This room is already in {v}-second slow mode.")
        return changed, Refusal("slow_off" if changed else "already_slow_off",
                                "This room is no longer in slow mode." if changed
                                else "This room is not in slow mode.")
    if f == "followers":
        if on:
            if not changed:
                return False, Refusal("already_followers_on",
                                      f"This room is already in {minutes_text(v)} followers-only mode.")
            if v == 0:
                return True, Refusal("followers_on_zero", "This room is now in followers-only mode.")
            return True, Refusal("followers_on",
                                 f"This room is now in {minutes_text(v)} followers-only mode.")
        return changed, Refusal("followers_off" if changed else "already_followers_off",
                                "This room is no longer in followers-only mode." if changed
                                else "This room is not in followers-only mode.")
    name, words = {"subs_only": ("subs", "subscribers-only"), "emote_only": ("emote_only", "emote-only"),
                   "r9k": ("r9k", "unique-chat")}[f]
    state = "on" if on else "off"
    if changed:
        return True, Refusal(f"{name}_{state}", f"This room is now in {words} mode." if on
                             else f"This room is no longer in {words} mode.")
    return False, Refusal(f"already_{name}_{state}", f"This room is already in {words} mode." if on
                          else f"This room is not in {words} mode.")


def delete_refusal(badges: str, *, own: bool = False, by_broadcaster: bool = False) -> Refusal | None:
    """Twitch refuses deleting the broadcaster's messages and, to a mod, another mod's; anyone who
    may delete may delete their own."""
    if own:
        return None
    roles = {b.partition("/")[0] for b in badges.split(",")}
    if "broadcaster" in roles:
        return Refusal("bad_delete_message_broadcaster", "You cannot delete the broadcaster's messages.")
    if "moderator" in roles and not by_broadcaster:
        return Refusal("bad_delete_message_mod", "You cannot delete messages from another moderator.")
    return None


DELETE_UNKNOWN = Refusal("bad_delete_message_error", "The message you attempted to delete could not be "
                                                     "found: it is unknown or too old.")


# -- enforcement --

def emote_only_refusal(text: str) -> Refusal | None:
    """Emote-only: every word must be an emote of twitch.EMOTES."""
    words = twitch.action_body(text).split()
    if words and all(w in twitch.EMOTES for w in words):
        return None
    return Refusal("msg_emoteonly", "This room is in emote-only mode. You can use these emotes: "
                                    + " ".join(twitch.EMOTES))


def text_digest(text: str) -> int:
    """Unique chat compares texts case- and space-insensitively; 60 bits, decimal (a `{*}.r9k.#` key)."""
    norm = " ".join(twitch.action_body(text).casefold().split())
    return int.from_bytes(hashlib.blake2b(norm.encode(), digest_size=8).digest(), "big") >> 4


@dataclass(frozen=True)
class Lookups:
    """What a message needs from the room's shard under the modes in force: reads first, then the
    marks that SET NX both checks and writes (only once the reads let the message through, so a
    refused message never leaves a mark)."""
    subs: bool = False
    follows: bool = False
    slow: int = 0
    r9k: bool = False

    @property
    def reads(self) -> bool:
        return self.subs or self.follows

    @property
    def writes(self) -> bool:
        return bool(self.slow) or self.r9k


def lookups(modes: Modes, privileged: bool) -> Lookups | None:
    if privileged or not modes.any_on:
        return None
    found = Lookups(subs=modes.subs_only, follows=modes.followers >= 0, slow=modes.slow, r9k=modes.r9k)
    return found if found.reads or found.writes else None


def reads_refusal(modes: Modes, room: str, need: Lookups, is_sub, followed_at, now: float) -> Refusal | None:
    if need.subs and not is_sub:
        return Refusal("msg_subsonly",
                       f"This room is in subscribers only mode. To talk, subscribe to #{room}.")
    if need.follows:
        since = _bounded(_text(followed_at), 0, 2**40, -1)
        if since < 0:
            if modes.followers == 0:
                return Refusal("msg_followersonly_zero",
                               f"This room is in followers-only mode. Follow {room} to join the community!")
            return Refusal("msg_followersonly", f"This room is in {minutes_text(modes.followers)} "
                                                f"followers-only mode. Follow {room} to join the community!")
        followed_min = int(now - since) // 60
        if followed_min < modes.followers:
            return Refusal("msg_followersonly_followed",
                           f"This room is in {minutes_text(modes.followers)} followers-only mode. You have "
                           f"been following for {minutes_text(followed_min)}. Continue following to chat!")
    return None


def writes_refusal(need: Lookups, r9k_new, slow_new, slow_ttl) -> Refusal | None:
    if need.r9k and not r9k_new:
        return Refusal("msg_r9k", "This room is in unique-chat mode and the message you attempted to send "
                                  "is not unique.")
    if need.slow and not slow_new:
        wait = max(1, int(slow_ttl or 0)) if isinstance(slow_ttl, int) else need.slow
        return Refusal("msg_slowmode", "This room is in slow mode and you are sending messages too quickly. "
                                       f"You will be able to talk again in {wait} seconds.")
    return None


async def enforce(cache, modes: Modes, room: str, login: str, uid: str, text: str, privileged: bool,
                  now: float) -> Refusal | None:
    """The modes' verdict on one message: None lets it through. Raises CacheUnavailable (the
    caller refuses with msg_unavailable: a mode is never skipped because Redis was slow)."""
    if privileged or not modes.any_on:
        return None
    if modes.emote_only and (refusal := emote_only_refusal(text)):
        return refusal
    need = lookups(modes, privileged)
    if need is None:
        return None
    if need.reads:
        pipe = cache.pipeline_for(keys.room(room))
        if need.subs:
            pipe.sismember(keys.subs(room), login)
        if need.follows:
            pipe.hget(keys.follows(room), login)
        replies = list(await pipe.execute())
        is_sub = replies.pop(0) if need.subs else False
        followed_at = replies.pop(0) if need.follows else None
        if refusal := reads_refusal(modes, room, need, is_sub, followed_at, now):
            return refusal
    if need.writes:
        pipe = cache.pipeline_for(keys.room(room))
        if need.r9k:
            pipe.set(keys.r9k(room, text_digest(text)), 1, nx=True, ex=R9K_WINDOW)
        if need.slow:
            pipe.set(keys.slow(room, uid), 1, nx=True, ex=need.slow)
            pipe.ttl(keys.slow(room, uid))
        replies = list(await pipe.execute())
        r9k_new = replies.pop(0) if need.r9k else True
        slow_new, slow_ttl = (replies[0], replies[1]) if need.slow else (True, 0)
        return writes_refusal(need, r9k_new, slow_new, slow_ttl)
    return None


def _text(value) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


def _bounded(text: str, low: int, high: int, default: int) -> int:
    if text[:1] == "-":
        digits = text[1:]
        sign = -1
    else:
        digits, sign = text, 1
    if not digits or len(digits) > 12 or not (digits.isascii() and digits.isdigit()):
        return default
    value = sign * int(digits)
    return value if low <= value <= high else default
