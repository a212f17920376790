"""Twitch's state messages, built as `irc.Message`s: GLOBALUSERSTATE, USERSTATE, ROOMSTATE, CLEARMSG,
a room-wide CLEARCHAT, and the NOTICEs that announce a mode change. Pure functions: clue and the
edge fill in the values, these decide the shape, so every line is tested on bytes
(tests/chat/test_twitch_state.py) and both services speak the same dialect.

Tags follow Twitch's documentation (dev.twitch.tv/docs/irc/tags): an empty value is written
`key=` (`badge-info=;`), as Twitch writes it. A client without a tags capability simply gets the
line without its tags (`irc.encode` with no tags), again as Twitch does; a client without
`twitch.tv/commands` gets none of these commands at all (the edge's job).

Also here, because the edge and clue both need them: the `/me` rewrite into a CTCP ACTION, the
`.delete <id>` argument the edge looks up, the edge's bounded index of recent messages that
makes `.delete` possible without a Redis write per message, and the small emote list.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

from chat import irc

ACTION_START = "\x01ACTION "
RECENT_PER_ROOM = 500     # messages per room the edge can find for `.delete`; older ids are unknown

# The cluster has no emote service. Emote-only mode needs to know what an emote is, so this is the
# smallest faithful model: a few of Twitch's global emotes, by name, with their Twitch ids.
EMOTES: Mapping[str, str] = {
    ":)": "1", ":(": "2", ":D": "3", "<3": "9", "Kappa": "25", "MrDestructoid": "28", "DansGame": "33",
    "SwiftRage": "34", "Kreygasm": "41", "BibleThump": "86", "PogChamp": "88", "ResidentSleeper": "245",
    "4Head": "354", "FailFish": "360", "HeyGuys": "30259", "NotLikeThis": "58765", "SeemsGood": "64138",
    "VoHiYo": "81274", "Jebaited": "114836", "TriHard": "120232", "CoolStoryBob": "123171", "LUL": "425618",
}


def _msg(command: str, room: str, *rest: str, tags: Mapping[str, str] | None, source: str) -> irc.Message:
    return irc.Message(command, (f"#{room}", *rest), dict(tags or {}), source)


# -- the user's own state --

def user_tags(*, badges: str, color: str, display_name: str, mod: bool,
              subscriber: bool = False) -> dict[str, str]:
    """The tags USERSTATE and GLOBALUSERSTATE share, in Twitch's order."""
    return {"badge-info": "", "badges": badges, "color": color, "display-name": display_name,
            "emote-sets": "0", "mod": "1" if mod else "0", "subscriber": "1" if subscriber else "0",
            "turbo": "0", "user-type": "mod" if mod else ""}


def globaluserstate(*, user_id: str, color: str, display_name: str, source: str) -> irc.Message:
    """After a logged-in (not anonymous) login. No room, so no mod or subscriber tag."""
    tags = {"badge-info": "", "badges": "", "color": color, "display-name": display_name,
            "emote-sets": "0", "turbo": "0", "user-id": user_id, "user-type": ""}
    return irc.Message("GLOBALUSERSTATE", (), tags, source)


def userstate(room: str, tags: Mapping[str, str], *, source: str, msg_id: str | None = None) -> irc.Message:
    """On JOIN, and after each PRIVMSG of the user's that was accepted; then `id` names the message
    (Twitch added it so a client can match its own message without echo)."""
    tags = dict(tags)
    if msg_id:
        tags["id"] = msg_id
    return _msg("USERSTATE", room, tags=tags, source=source)


# -- the room's state --

def roomstate(room: str, room_id: str, modes: Mapping[str, str], *, source: str) -> irc.Message:
    """`modes` holds every mode tag on JOIN, only the changed one after a change; room-id is always
    there. Tags in Twitch's (alphabetical) order."""
    tags = dict(sorted({**modes, "room-id": room_id}.items()))
    return _msg("ROOMSTATE", room, tags=tags, source=source)


def clearchat_room(room: str, room_id: str, ts_ms: int, *, source: str) -> irc.Message:
    """`.clear`: the whole room's chat, so no user parameter."""
    return _msg("CLEARCHAT", room, tags={"room-id": room_id, "tmi-sent-ts": str(ts_ms)}, source=source)


def clearmsg(room: str, *, login: str, room_id: str, target_msg_id: str, ts_ms: int, text: str,
             source: str) -> irc.Message:
    tags = {"login": login, "room-id": room_id, "target-msg-id": target_msg_id, "tmi-sent-ts": str(ts_ms)}
    return _msg("CLEARMSG", room, text, tags=tags, source=source)


def room_notice(room: str, msg_id: str, text: str, *, source: str) -> irc.Message:
    return _msg("NOTICE", room, text, tags={"msg-id": msg_id}, source=source)


def as_published(room: str, message: irc.Message) -> dict:
    """A message in the shape clue publishes to the exchange and the edge delivers."""
    return {"room": room, "command": message.command, "tags": dict(message.tags), "source": message.source,
            "params": list(message.params), "origin": None}


# -- text the user typed --

def me_action(text: str) -> str | None:
    """`/me x` and `.me x` as Twitch sends them on: `\\x01ACTION x\\x01`. Returns `text` unchanged
    when it is not a /me, and None for a /me with nothing to say (usage_me)."""
    if text[:3].lower() not in ("/me", ".me") or (len(text) > 3 and text[3] != " "):
        return text
    body = text[4:].strip()
    return f"{ACTION_START}{body}\x01" if body else None


def action_body(text: str) -> str:
    """The words of a message, without a CTCP ACTION's wrapping."""
    if text.startswith(ACTION_START):
        return text[len(ACTION_START):].removesuffix("\x01")
    return text


def emotes_tag(text: str) -> str:
    """PRIVMSG's `emotes` tag for the emotes of EMOTES in `text`: `25:0-4,12-16/1902:6-10`, each
    emote's id and the code-point ranges of its uses, counted after a CTCP ACTION's prefix, as
    Twitch counts them. Emotes are whole words, split on spaces."""
    body = action_body(text)
    found: dict[str, list[str]] = {}
    at = 0
    for word in body.split(" "):
        emote = EMOTES.get(word)
        if emote is not None:
            found.setdefault(emote, []).append(f"{at}-{at + len(word) - 1}")
        at += len(word) + 1
    return "/".join(f"{emote}:{','.join(spans)}" for emote, spans in found.items())


def delete_target(text: str) -> str | None:
    """The message id of a `.delete <id>` / `/delete <id>`, '' for one without an id, else None."""
    if text[:1] not in (".", "/"):
        return None             # every message passes here at the edge: most stop at this line
    word, _, rest = text.partition(" ")
    if word.lower() not in (".delete", "/delete"):
        return None
    return rest.strip().split(" ")[0]


class RecentMessages:
    """The last RECENT_PER_ROOM messages of each room an edge holds: id -> (login, text, badges).

    `.delete` needs the deleted message's author and text (CLEARMSG carries both) and whether the
    author is a mod. Keeping them here, from the deliveries the edge gets anyway, costs a dict
    insert per delivered message and no Redis command; the price is that a message sent before
    this edge held the room is unknown to it (bad_delete_message_error)."""

    def __init__(self, per_room: int = RECENT_PER_ROOM):
        self.per_room = per_room
        self.rooms: dict[str, OrderedDict[str, tuple[str, str, str]]] = {}

    def add(self, room: str, msg_id: str, login: str, text: str, badges: str) -> None:
        recent = self.rooms.get(room)
        if recent is None:
            recent = self.rooms[room] = OrderedDict()
        recent[msg_id] = (login, text, badges)
        if len(recent) > self.per_room:
            recent.popitem(last=False)

    def get(self, room: str, msg_id: str) -> tuple[str, str, str] | None:
        recent = self.rooms.get(room)
        return recent.get(msg_id) if recent else None

    def drop(self, room: str) -> None:
        self.rooms.pop(room, None)
