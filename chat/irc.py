"""Sans-I/O IRC for the chat edge: bytes in, parsed messages and events out, bytes to send back.

Nothing here touches a socket, a clock, a logger or asyncio, so every behaviour is tested by
feeding bytes and reading bytes (python-websockets' habit). Three layers, each usable alone:

- `parse` / `encode`: one line <-> `Message`, with IRCv3 message tags (escaped values), e.g.

      @badge-info=;color=#0D4200;display-name=ronni :ronni!ronni@ronni.tmi.twitch.tv PRIVMSG #ronni :Kappa

- `Framer`: a byte stream -> lines -> `Message` or `LineError`, with hard size limits
  (RFC 1459/2812's 512 bytes per line, IRCv3's 8191 bytes of tags) and bounded buffering,
  so a hostile client can neither grow memory nor kill its connection with one bad line.
- `ServerConnection`: the server side of one client connection: CAP negotiation, PASS/NICK/USER
  registration, PING/PONG, the error numerics. Business decisions (is this token valid, may this
  user join) are left to the edge, which sees them as events and answers through
  `accept_registration` / `reject_registration` / `encode`. The standard queries (NAMES, WHO,
  WHOIS, TOPIC, MODE, LUSERS, ISON, USERHOST) come out as events too, so they are answered in
  order with the JOINs and PARTs around them: the edge hands each to `answer`, which replies from
  the connection's own state, or asks for the cluster's members (`Found`, chat.members) first.
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

__all__ = [
    "MAX_LINE", "MAX_TAGS", "ParseError", "Message", "parse", "encode", "escape_tag_value",
    "unescape_tag_value", "LineError", "Framer", "SUPPORTED_CAPS", "ISUPPORT", "RegistrationRequest",
    "Join", "Part", "Privmsg", "Quit", "Pong", "Names", "Who", "Whois", "Topic", "ChannelMode", "UserMode",
    "Lusers", "Ison", "Userhost", "QUERIES", "Query", "Found", "Event", "ServerConnection", "MAX_TARGETS",
]

MAX_LINE = 512   # bytes of one line without its tag section, CRLF included: 510 bytes of content
MAX_TAGS = 8191  # bytes of the tag section, from '@' through the space that ends it

# ---------------------------------------------------------------------------------------------
# Lines
# ---------------------------------------------------------------------------------------------


class ParseError(ValueError):
    """A line that is not IRC. `reason` says why in a few words."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Message:
    command: str                      # upper-cased word, or a 3-digit numeric
    params: tuple[str, ...] = ()      # the trailing parameter is simply the last element
    # hash=False keeps a Message hashable despite the dict; equality still compares tags.
    tags: dict[str, str] = field(default_factory=dict, hash=False)
    source: str | None = None         # the prefix without ':'

    def to_bytes(self) -> bytes:
        return encode(self.command, *self.params, tags=self.tags, source=self.source)


_ALNUM = string.ascii_letters + string.digits
# IRCv3 allows ALPHA / DIGIT / '-' in a key name; '_' is accepted too because Twitch has sent
# such keys (`user_type`), and refusing a whole line over it would help nobody.
_KEY_NAME_CHARS = _ALNUM + "-_"
_VENDOR_CHARS = _ALNUM + "-._"       # a vendor is a host name
_NICK_CHARS = string.ascii_lowercase + string.digits + "_"
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)

_ESCAPES = str.maketrans({";": "\\:", " ": "\\s", "\\": "\\\\", "\r": "\\r", "\n": "\\n"})
_UNESCAPES = {":": ";", "s": " ", "\\": "\\", "r": "\r", "n": "\n"}


def escape_tag_value(v: str) -> str:
    """IRCv3 escaping: the result holds no ';', space, CR or LF."""
    # Most values (ids, numbers, colours, badges) need none: five scans in C are cheaper than
    # translate's per-character table lookups, which was a tenth of an edge's delivery work.
    if ";" in v or " " in v or "\\" in v or "\r" in v or "\n" in v:
        return v.translate(_ESCAPES)
    return v


def unescape_tag_value(v: str) -> str:
    """Inverse of `escape_tag_value`, lenient as IRCv3 asks: an unknown escape `\\x` gives `x`,
    and a lone backslash at the end is dropped."""
    if "\\" not in v:
        return v
    out: list[str] = []
    i, n = 0, len(v)
    while True:
        j = v.find("\\", i)
        if j < 0:
            out.append(v[i:])
            break
        out.append(v[i:j])
        if j + 1 == n:
            break
        c = v[j + 1]
        out.append(_UNESCAPES.get(c, c))
        i = j + 2
    return "".join(out)


def _valid_tag_key(key: str) -> bool:
    # Grammar: ['+'] [vendor '/'] key_name. `s.strip(chars)` is empty iff every char of s is in
    # chars, which beats a regex on the per-tag hot path.
    name = key[1:] if key[:1] == "+" else key
    vendor, slash, name = name.rpartition("/")
    if not name or name.strip(_KEY_NAME_CHARS):
        return False
    return not slash or (bool(vendor) and not vendor.strip(_VENDOR_CHARS))


# Valid keys seen so far: Twitch sends the same few dozen on every line, and a set lookup is
# several times cheaper than validating. Capped, so clients inventing keys cannot grow it.
_seen_keys: set[str] = set()


def _check_tag_key(key: str) -> bool:
    if key in _seen_keys:
        return True
    if not _valid_tag_key(key):
        return False
    if len(_seen_keys) < 1024:
        _seen_keys.add(key)
    return True


def _valid_command(cmd: str) -> bool:
    return cmd.isascii() and (cmd.isalpha() or (len(cmd) == 3 and cmd.isdigit()))


def _has_forbidden(s: str) -> bool:
    return "\r" in s or "\n" in s or "\0" in s


def _parse_tags(section: str) -> dict[str, str]:
    if not section:
        raise ParseError("empty tag section")
    tags: dict[str, str] = {}
    for item in section.split(";"):
        if not item:          # 'a=1;;b' and a trailing ';' carry no tag; tolerate them
            continue
        key, _, value = item.partition("=")
        if key not in _seen_keys and not _check_tag_key(key):
            raise ParseError(f"bad tag key {key[:32]!r}")
        # A repeated key: the last one wins, as IRCv3 says.
        tags[key] = unescape_tag_value(value) if "\\" in value else value
    return tags


def parse(line: bytes | str) -> Message:
    """Parse one line (its CRLF or LF, if still there, is ignored). Lengths are not checked here:
    that is the Framer's job. Raises ParseError on anything that is not a well-formed line."""
    if not isinstance(line, str):
        try:
            line = bytes(line).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ParseError(f"invalid UTF-8 at byte {exc.start}") from None
    if line.endswith("\n"):
        line = line[:-2] if line.endswith("\r\n") else line[:-1]
    if not line:
        raise ParseError("empty line")
    if _has_forbidden(line):
        raise ParseError("NUL, CR or LF inside the line")

    tags: dict[str, str] = {}
    rest = line
    if line[0] == "@":
        section, sep, rest = line[1:].partition(" ")
        if not sep:
            raise ParseError("no command after the tags")
        tags = _parse_tags(section)
        rest = rest.lstrip(" ")

    source = None
    if rest[:1] == ":":
        prefix, _, rest = rest.partition(" ")
        source = prefix[1:]
        if not source:
            raise ParseError("empty source")
        rest = rest.lstrip(" ")

    # Only a parameter can start with ':', so the first ' :' is where the trailing one begins.
    head, sep, trailing = rest.partition(" :")
    words = [w for w in head.split(" ") if w]
    if not words:
        raise ParseError("no command")
    command = words[0]
    if not _valid_command(command):
        raise ParseError(f"bad command {command[:32]!r}")
    if sep:
        words.append(trailing)
    return Message(command.upper(), tuple(words[1:]), tags, source)


def encode(command: str, *params: str, tags: Mapping[str, str] | None = None,
           source: str | None = None, trailing: bool = False) -> bytes:
    """One CRLF-terminated line. The last param takes the ':' form when it must (empty, has a
    space, starts with ':') or when `trailing` is true: Twitch always writes message text that way
    and naive clients split on ' :', so pass trailing=True for PRIVMSG/NOTICE text.

    Raises ValueError rather than emit something a client would read differently: CR, LF or NUL
    in a param, the source or a tag key; NUL in a tag value; a bad tag key or command; a middle
    param that is empty, has a space or starts with ':'. CR and LF in tag values are escaped
    (`\\r`, `\\n`), so they cannot end the line either."""
    parts: list[str] = []
    if tags:
        items = []
        for key, value in tags.items():
            if not _check_tag_key(key):
                raise ValueError(f"invalid tag key {key!r}")
            if not isinstance(value, str):
                raise TypeError(f"tag {key!r}: value must be str, not {type(value).__name__}")
            if "\0" in value:
                raise ValueError(f"tag {key!r}: NUL in value")
            # 'key=' for an empty value, as Twitch writes it ('badge-info=;'); IRCv3 reads it
            # the same as a bare 'key'.
            items.append(f"{key}={escape_tag_value(value)}")
        parts.append("@" + ";".join(items))
    if source is not None:
        if not source or " " in source or _has_forbidden(source):
            raise ValueError(f"invalid source {source!r}")
        parts.append(":" + source)
    if not _valid_command(command):
        raise ValueError(f"invalid command {command!r}")
    parts.append(command.upper())
    if params:
        *middle, last = params
        for p in middle:
            if not p or " " in p or p[0] == ":" or _has_forbidden(p):
                raise ValueError(f"invalid middle parameter {p!r}")
        parts.extend(middle)
        if _has_forbidden(last):
            raise ValueError(f"CR, LF or NUL in parameter {last!r}")
        parts.append(":" + last if trailing or not last or " " in last or last[0] == ":" else last)
    return (" ".join(parts) + "\r\n").encode("utf-8")


# ---------------------------------------------------------------------------------------------
# Framing
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LineError:
    kind: str      # "too_long" | "bad_utf8" | "malformed"
    command: str   # best-effort command word of the offending line ('' if unknown), upper-cased
    detail: str


def _command_word(line: bytes) -> str:
    """The command of a line we could not parse, for error replies and counters; '' if none."""
    text = line.decode("utf-8", "replace")
    if text[:1] == "@":
        text = text.partition(" ")[2]
    text = text.lstrip(" ")
    if text[:1] == ":":
        text = text.partition(" ")[2]
    word = text.lstrip(" ").partition(" ")[0]
    return word.upper() if _valid_command(word) else ""


class Framer:
    """Splits a byte stream into lines. Accepts CRLF or bare LF endings (and ignores empty lines).
    Never buffers more than MAX_TAGS + MAX_LINE bytes of an unfinished line: once a line exceeds the
    limit, it emits one LineError('too_long') for it and discards the rest of that line up to its
    newline (so the connection survives and the next line parses normally).

    Limits: the tag section (from '@' through its closing space) may take max_tags bytes, and the
    rest max_line bytes counting the line ending as 2 (CRLF) even when it is a bare LF. Decoding is
    per complete line, so a UTF-8 character split across two feeds is fine."""

    def __init__(self, max_line: int = MAX_LINE, max_tags: int = MAX_TAGS,
                 parse_line: Callable[[str], Message] | None = None):
        """`parse_line`: how a complete, decoded line becomes a Message (default `parse`); it
        raises ParseError on a malformed line. A client that reads only a few tags of its busiest
        line can skip parsing the rest (chat.loadgen)."""
        self.max_line = max_line
        self.max_tags = max_tags
        self._parse = parse if parse_line is None else parse_line
        self._bound = max_tags + max_line  # no acceptable line is longer, ending included
        self._buf = bytearray()
        self._discarding = False           # inside a too-long line, waiting for its newline

    @property
    def buffered(self) -> int:
        """Bytes of the unfinished line held right now (always <= max_tags + max_line)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Message | LineError]:
        if not isinstance(data, bytes):
            data = bytes(data)
        out: list[Message | LineError] = []
        start, n = 0, len(data)
        if self._discarding:
            nl = data.find(b"\n")
            if nl < 0:
                return out
            self._discarding = False
            start = nl + 1
        buf = self._buf
        while start < n:
            nl = data.find(b"\n", start)
            if nl < 0:
                break
            total = len(buf) + nl - start
            if total > self._bound:
                # Certainly too long: copy only enough of it to name its command.
                head = bytes(buf) + data[start:start + self._bound]
                out.append(self._too_long(head))
            else:
                line = bytes(buf) + data[start:nl] if buf else data[start:nl]
                self._line(line, out)
            buf.clear()
            start = nl + 1
        if start < n:
            if len(buf) + n - start > self._bound:
                out.append(self._too_long(bytes(buf) + data[start:start + self._bound]))
                buf.clear()
                self._discarding = True
            else:
                buf += data[start:]
                if self._over(buf, pending=True):
                    out.append(self._too_long(bytes(buf)))
                    buf.clear()
                    self._discarding = True
        return out

    def _over(self, line: bytes | bytearray, pending: bool = False) -> bool:
        """Does this line (or this much of an unfinished one) break a limit? An unfinished line
        may still end in a CR that is not content, hence one byte of slack."""
        rest_start = 0
        if line[:1] == b"@":
            sp = line.find(b" ", 0, self.max_tags)
            if sp < 0:
                # No space within max_tags bytes: the tag section cannot end in time. A shorter
                # complete line without one is malformed, not too long; parse() says so.
                return len(line) >= self.max_tags
            rest_start = sp + 1
        return len(line) - rest_start > self.max_line - 2 + pending

    def _too_long(self, head: bytes) -> LineError:
        return LineError("too_long", _command_word(head),
                         f"line longer than {self.max_line} bytes (plus {self.max_tags} of tags)")

    def _line(self, line: bytes, out: list[Message | LineError]) -> None:
        if line[-1:] == b"\r":
            line = line[:-1]
        if not line:
            return
        if self._over(line):
            out.append(self._too_long(line))
            return
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            out.append(LineError("bad_utf8", _command_word(line), f"invalid UTF-8 at byte {exc.start}"))
            return
        try:
            out.append(self._parse(text))
        except ParseError as exc:
            out.append(LineError("malformed", _command_word(line), exc.reason))


# ---------------------------------------------------------------------------------------------
# Server side of one connection
# ---------------------------------------------------------------------------------------------

# A cap with a value is written "name=value"; the value shows only to `CAP LS 302` clients.
SUPPORTED_CAPS = ("twitch.tv/tags", "twitch.tv/commands", "twitch.tv/membership", "message-tags",
                  "server-time", "echo-message", "cap-notify")
NICKLEN = 25
CHANNELLEN = 50
# Targets of one PRIVMSG; each is a separate decision by clue and takes its own token of the
# connection's privmsg_rate, so the cap only keeps one line from fanning out widely.
MAX_TARGETS = 4
USERHOST_MAX = 5                 # nicks one USERHOST answers, as RFC 2812 says
# The only mode a room truthfully has: nobody sets its topic over IRC. Not +n: as on Twitch, a
# PRIVMSG to a room the sender has not joined is accepted. `b`, `e` and `I` are list modes only
# in that their queries are answered (empty; bans live in clue, managed with .ban / .unban).
CHANNEL_MODES = "+t"
_LIST_MODES = {"b": ("368", "End of channel ban list"), "e": ("349", "End of channel exception list"),
               "I": ("347", "End of channel invite list")}
_KNOWN_CHANNEL_MODES = frozenset("OovaimnqpsrtklbeI")
ISUPPORT = ("CHANTYPES=#", "NETWORK=chatops", "CASEMAPPING=ascii", f"CHANNELLEN={CHANNELLEN}",
            f"NICKLEN={NICKLEN}")
_ISUPPORT_PER_LINE = 13          # tokens per 005, as ircds send them (RFC 2812's 15 params)


def isupport(max_rooms: int) -> tuple[str, ...]:
    """The 005 tokens: ISUPPORT plus the ones that follow the edge's settings and limits."""
    return (*ISUPPORT, f"CHANLIMIT=#:{max_rooms}", f"MAXTARGETS={MAX_TARGETS}",
            f"TARGMAX=PRIVMSG:{MAX_TARGETS},JOIN:,PART:,NAMES:1,WHO:1,WHOIS:1,ISON:,USERHOST:{USERHOST_MAX}",
            f"LINELEN={MAX_LINE}", "CHANMODES=beI,,,t")


@dataclass(frozen=True, slots=True)
class RegistrationRequest:
    nick: str                                  # lower-cased, valid
    password: str | None = field(repr=False)   # the whole PASS argument ('oauth:...'); kept out of logs
    user: str | None                           # USER's first argument, if it came in time


@dataclass(frozen=True, slots=True)
class Join:
    channels: tuple[str, ...]   # lower-cased, each starting with '#', no duplicates


@dataclass(frozen=True, slots=True)
class Part:
    channels: tuple[str, ...]
    reason: str = ""            # echoed in the PART to the client (and, for H4, to the others)


@dataclass(frozen=True, slots=True)
class Privmsg:
    target: str                                # lower-cased
    text: str
    tags: dict[str, str] = field(hash=False)   # every tag the client sent, unescaped


@dataclass(frozen=True, slots=True)
class Quit:
    reason: str


@dataclass(frozen=True, slots=True)
class Pong:
    token: str   # a client's reply to our PING


# Queries: each goes back to `ServerConnection.answer` when the edge reaches it.


@dataclass(frozen=True, slots=True)
class Names:
    channel: str


@dataclass(frozen=True, slots=True)
class Who:
    mask: str                   # a channel (lower-cased, valid) or a nick (lower-cased, valid)


@dataclass(frozen=True, slots=True)
class Whois:
    nick: str


@dataclass(frozen=True, slots=True)
class Topic:
    channel: str
    text: str | None = None     # None reads the topic; a string tries to set it


@dataclass(frozen=True, slots=True)
class ChannelMode:
    channel: str
    args: tuple[str, ...] = ()  # () asks for the modes; else a change or a list query


@dataclass(frozen=True, slots=True)
class UserMode:
    nick: str
    args: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Lusers:
    pass


@dataclass(frozen=True, slots=True)
class Ison:
    nicks: tuple[str, ...]      # lower-cased, valid, no duplicates


@dataclass(frozen=True, slots=True)
class Userhost:
    nicks: tuple[str, ...]


Query: TypeAlias = Names | Who | Whois | Topic | ChannelMode | UserMode | Lusers | Ison | Userhost
QUERIES = (Names, Who, Whois, Topic, ChannelMode, UserMode, Lusers, Ison, Userhost)


@dataclass(frozen=True, slots=True)
class Found:
    """What the edges of the cluster said, for the query that asked (chat.members fills it)."""
    members: tuple[str, ...] = ()            # the room's logins, this edge's first, capped
    member_count: int = 0                    # all of them, past the cap too
    online: frozenset[str] = frozenset()     # of the nicks asked about, those connected
    users: int = 0                           # registered connections, every edge that answered
    local_users: int = 0                     # ... on this edge
    unregistered: int = 0                    # connections not logged in yet, this edge
    rooms: int = 0                           # rooms with a member on this edge
    servers: int = 1                         # edges that answered, this one included


Event: TypeAlias = RegistrationRequest | Join | Part | Privmsg | Quit | Pong | Query
State: TypeAlias = Literal["new", "registering", "registered", "closed"]

_PRE_REGISTRATION = frozenset({"CAP", "PASS", "NICK", "USER", "PING", "PONG", "QUIT"})


def _ascii_lower(s: str) -> str:
    # CASEMAPPING=ascii: only A-Z fold, whatever str.lower() would do to other scripts.
    return s.lower() if s.isascii() else s.translate(_ASCII_LOWER)


def _valid_nick(nick: str) -> bool:
    return 0 < len(nick) <= NICKLEN and not nick.strip(_NICK_CHARS)


def _valid_channel(name: str) -> bool:
    return (name[:1] == "#" and 1 < len(name) <= CHANNELLEN
            and " " not in name and "," not in name and "\x07" not in name)


def _echo(s: str) -> str:
    """Client text made safe to send back as a middle parameter (a bad nick, a bad channel)."""
    return s.replace(" ", "_").lstrip(":")[:64] or "*"


def _split_words(words: Sequence[str], room: int) -> list[list[str]]:
    """Words grouped so that each group, joined by spaces, takes at most `room` bytes."""
    groups: list[list[str]] = [[]]
    used = 0
    for word in words:
        size = len(word.encode("utf-8"))
        if groups[-1] and used + 1 + size > room:
            groups.append([])
            used = 0
        used += size + (1 if len(groups[-1]) else 0)
        groups[-1].append(word)
    return groups


class ServerConnection:
    """The server side of one client connection, as a state machine over bytes.

    Feed what the socket read to `receive_data`, which answers protocol matters itself (CAP, PING,
    error numerics) and returns the events the edge must decide on; send what `lines_to_send`
    returns. States: "new" -> "registering" (a RegistrationRequest was returned; awaiting
    `accept_registration` or `reject_registration`) -> "registered" -> "closed".

    Events come back in the order their lines arrived, never held back: Twitch clients pipeline
    `CAP REQ, PASS, NICK, JOIN` in one write, so one call may return
    `[RegistrationRequest, Join]`. Handle them in order, finish the registration verdict before
    the events after it, and stop once `state == "closed"` (a rejection, or a QUIT later in the
    same batch). Commands arriving while "registering" are treated as from a registered client.

    Registration is requested at the first command that needs it, or at the end of the batch,
    once a valid NICK is known and no `CAP LS` negotiation is open; so PASS/NICK/USER sent together
    land in the one request, in any order. USER is optional (Twitch's clients never send it).
    """

    def __init__(self, server_name: str, *, caps: Iterable[str] = SUPPORTED_CAPS, max_rooms: int = 100):
        self.server_name = server_name
        self.supported_caps: tuple[str, ...] = tuple(caps)
        self._cap_names = {c.partition("=")[0] for c in self.supported_caps}
        self._cap_version = 0                 # 302 once the client sent `CAP LS 302`
        self.isupport = isupport(max_rooms)
        self.state: State = "new"
        self.nick: str | None = None          # set once registered; replies say '*' before
        self.caps: frozenset[str] = frozenset()
        # Rooms this client is in, names without '#'. The edge keeps it (it is the edge's
        # Client.rooms); `answer` reads it for 442 and the like.
        self.joined: set[str] = set()
        self.user: str | None = None
        self.errors: Counter[str] = Counter()  # too_long, bad_utf8, malformed, unknown_command
        self._framer = Framer()
        self._out: list[bytes] = []
        self._password: str | None = None
        self._requested_nick: str | None = None
        self._cap_negotiating = False

    # -- the edge's side --

    def receive_data(self, data: bytes) -> list[Event]:
        if self.state == "closed":
            return []
        events: list[Event] = []
        for item in self._framer.feed(data):
            if self.state == "closed":
                break
            if isinstance(item, LineError):
                self._line_error(item)
                continue
            if item.command not in _PRE_REGISTRATION:
                self._maybe_register(events)
            handler = _HANDLERS.get(item.command)
            if handler is None:
                self._unknown(item)
            elif self.state == "new" and item.command not in _PRE_REGISTRATION:
                self._reply("451", "You have not registered")
            else:
                handler(self, item, events)
        self._maybe_register(events)
        return events

    def lines_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def accept_registration(self, nick: str, *, welcome: Sequence[str] = (),
                            motd: Sequence[str] = ()) -> None:
        """Queue 001-005 and the MOTD (one 372 per item of `motd`; 422 when it is empty: note
        that tmi.js counts a client as connected on 372). `welcome` overrides, in order, the texts
        of 001, 002 and 003. A no-op if the client already left."""
        if self.state == "closed":
            return
        if self.state != "registering":
            raise RuntimeError(f"accept_registration in state {self.state!r}")
        if len(welcome) > 3:
            raise ValueError("welcome holds the texts of 001, 002 and 003 only")
        nick = _ascii_lower(nick)
        if not _valid_nick(nick):
            raise ValueError(f"invalid nick {nick!r}")
        self.nick, self.state = nick, "registered"
        server = self.server_name
        texts = [f"Welcome to the chatops network, {nick}", f"Your host is {server}",
                 "This server is rather new"]
        texts[:len(welcome)] = welcome
        for code, text in zip(("001", "002", "003"), texts):
            self._reply(code, text)
        self._reply("004", server, "chatops", "-", "-")
        for i in range(0, len(self.isupport), _ISUPPORT_PER_LINE):
            self._reply("005", *self.isupport[i:i + _ISUPPORT_PER_LINE], "are supported by this server")
        if motd:
            self._reply("375", f"- {server} Message of the day - ")
            for text in motd:
                self._reply("372", f"- {text}")
            self._reply("376", "End of /MOTD command")
        else:
            self._reply("422", "MOTD File is missing")

    def reject_registration(self, reason: str = "Login authentication failed") -> None:
        """Queue Twitch's NOTICE and 464, and close. A no-op if the client already left."""
        if self.state == "closed":
            return
        if self.state != "registering":
            raise RuntimeError(f"reject_registration in state {self.state!r}")
        self._out.append(encode("NOTICE", "*", reason, source=self.server_name, trailing=True))
        self._reply("464", "Password incorrect")
        self.state = "closed"

    def refuse_nick(self, nick: str, text: str = "Nickname is already in use") -> None:
        """Answer the registration with 433 and wait for another NICK, as ircds let a client pick
        another nick (`auth: open`). A no-op if the client already left."""
        if self.state == "closed":
            return
        if self.state != "registering":
            raise RuntimeError(f"refuse_nick in state {self.state!r}")
        self._reply("433", nick, text)
        self.state, self._requested_nick = "new", None

    def numeric(self, code: str, *params: str) -> bytes:
        """`:<server> <code> <nick or *> <params...>`, not queued. The last param always takes the
        ':' form, as Twitch writes numerics (`353 ronni = #dallas :ronni`)."""
        if not (len(code) == 3 and code.isdigit()):
            raise ValueError(f"invalid numeric {code!r}")
        return encode(code, self.nick or "*", *params, source=self.server_name, trailing=bool(params))

    def ping(self, token: str) -> None:
        self._out.append(encode("PING", token, trailing=True))

    def close(self) -> None:
        self.state = "closed"

    # -- internals --

    def _reply(self, code: str, *params: str) -> None:
        self._out.append(self.numeric(code, *params))

    def _maybe_register(self, events: list[Event]) -> None:
        if self.state == "new" and self._requested_nick and not self._cap_negotiating:
            self.state = "registering"
            events.append(RegistrationRequest(self._requested_nick, self._password, self.user))
            self._password = None  # the event carries it; don't keep a token for the connection's life

    def _line_error(self, err: LineError) -> None:
        self.errors[err.kind] += 1
        if err.kind == "too_long":
            self._reply("417", "Input line was too long")
        elif err.kind == "bad_utf8":
            self._out.append(encode("NOTICE", self.nick or "*", "Invalid UTF-8 in your message; it was dropped",
                                    source=self.server_name))

    def _unknown(self, msg: Message) -> None:
        self.errors["unknown_command"] += 1
        if self.state == "new":
            self._reply("451", "You have not registered")
        else:
            self._reply("421", msg.command, "Unknown command")

    def _cap(self, msg: Message, events: list[Event]) -> None:
        if not msg.params:
            self._reply("461", "CAP", "Not enough parameters")
            return
        sub = msg.params[0].upper()
        if sub == "LS":
            # IRCv3 clients that send LS always finish with END, so registration waits for it.
            # A bare REQ does not hold registration: Twitch's clients (tmi.js and the like) send
            # CAP REQ, PASS, NICK and never CAP END, and Twitch registers them all the same.
            if self.state == "new":
                self._cap_negotiating = True
            version = msg.params[1] if len(msg.params) > 1 else ""
            if version.isdigit() and int(version) >= 302:
                self._cap_version = 302
                # Implicit for 302 clients (IRCv3 cap-notify), and it cannot be turned off.
                if "cap-notify" in self._cap_names:
                    self.caps = self.caps | {"cap-notify"}
            self._cap_reply("LS", self.supported_caps if self._cap_version >= 302
                            else self._cap_names_in_order())
        elif sub == "LIST":
            self._cap_reply("LIST", [c for c in self._cap_names_in_order() if c in self.caps])
        elif sub == "REQ":
            if len(msg.params) < 2:
                self._reply("461", "CAP", "Not enough parameters")
                return
            wanted = [c for c in msg.params[1].split(" ") if c]
            sticky = "-cap-notify" in wanted and self._cap_version >= 302
            # All or nothing, as the spec says: one unknown capability NAKs the whole request.
            if wanted and not sticky and all(c.removeprefix("-") in self._cap_names for c in wanted):
                caps = set(self.caps)
                for c in wanted:
                    if c[0] == "-":
                        caps.discard(c[1:])
                    else:
                        caps.add(c)
                self.caps = frozenset(caps)
                self._cap_reply("ACK", wanted)
            else:
                self._cap_reply("NAK", wanted)
        elif sub == "END":
            self._cap_negotiating = False
        else:
            self._reply("410", _echo(msg.params[0]), "Invalid CAP command")

    def _cap_names_in_order(self) -> list[str]:
        return [c.partition("=")[0] for c in self.supported_caps]

    def _cap_reply(self, sub: str, caps: Sequence[str]) -> None:
        """One CAP line, or for LS and LIST as many as the caps need, each but the last marked
        with '*' (IRCv3 CAP 302's continuation). ACK and NAK echo a request, which fit its line."""
        nick = self.nick or "*"
        head = len(f":{self.server_name} CAP {nick} {sub} * :\r\n".encode())
        groups = _split_words(caps, MAX_LINE - head) if sub in ("LS", "LIST") else [list(caps)]
        for i, group in enumerate(groups):
            more = ("*",) if i < len(groups) - 1 else ()
            self._out.append(encode("CAP", nick, sub, *more, " ".join(group), source=self.server_name,
                                    trailing=True))

    def _pass(self, msg: Message, events: list[Event]) -> None:
        if self.state != "new":
            self._reply("462", "You may not reregister")
        elif not msg.params or not msg.params[0]:
            self._reply("461", "PASS", "Not enough parameters")
        else:
            self._password = msg.params[0]

    def _nick(self, msg: Message, events: list[Event]) -> None:
        if not msg.params or not msg.params[0]:
            self._reply("431", "No nickname given")
            return
        nick = _ascii_lower(msg.params[0])
        if not _valid_nick(nick):
            self._reply("432", _echo(msg.params[0]), "Erroneous nickname")
        elif self.state == "new":
            self._requested_nick = nick
        # Later NICKs are ignored: Twitch has no nick changes.

    def _user(self, msg: Message, events: list[Event]) -> None:
        if self.state == "registered":
            self._reply("462", "You may not reregister")
        elif len(msg.params) < 4:
            self._reply("461", "USER", "Not enough parameters")
        elif self.state == "new":
            self.user = msg.params[0]
        # While "registering" a late USER is harmless and ignored: the request is already out.

    def _ping(self, msg: Message, events: list[Event]) -> None:
        if not msg.params or not msg.params[0]:
            self._reply("409", "No origin specified")
        else:
            self._out.append(encode("PONG", self.server_name, msg.params[0], source=self.server_name,
                                    trailing=True))

    def _pong(self, msg: Message, events: list[Event]) -> None:
        events.append(Pong(msg.params[-1] if msg.params else ""))

    def _quit(self, msg: Message, events: list[Event]) -> None:
        events.append(Quit(msg.params[0] if msg.params else ""))
        self.state = "closed"

    def _channels(self, raw: str) -> tuple[str, ...]:
        keep: list[str] = []
        for item in raw.split(","):
            if not item:
                continue
            name = _ascii_lower(item)
            if not _valid_channel(name):
                self._reply("403", _echo(item), "No such channel")
            elif name not in keep:
                keep.append(name)
        return tuple(keep)

    def _join(self, msg: Message, events: list[Event]) -> None:
        if not msg.params or not msg.params[0]:
            self._reply("461", "JOIN", "Not enough parameters")
        elif channels := self._channels(msg.params[0]):
            events.append(Join(channels))

    def _part(self, msg: Message, events: list[Event]) -> None:
        if not msg.params or not msg.params[0]:
            self._reply("461", "PART", "Not enough parameters")
        elif channels := self._channels(msg.params[0]):
            events.append(Part(channels, msg.params[1] if len(msg.params) > 1 else ""))

    def _privmsg(self, msg: Message, events: list[Event]) -> None:
        if not msg.params or not msg.params[0]:
            self._reply("411", "No recipient given (PRIVMSG)")
        elif len(msg.params) < 2 or not msg.params[1]:
            self._reply("412", "No text to send")
        else:
            targets: list[str] = []
            for item in msg.params[0].split(","):
                target = _ascii_lower(item)
                if item and target not in targets:
                    targets.append(target)
            if not targets:
                self._reply("411", "No recipient given (PRIVMSG)")
                return
            if len(targets) > MAX_TARGETS:
                self._reply("407", _echo(msg.params[0]),
                            f"Too many recipients (at most {MAX_TARGETS}); no message was sent")
                return
            for target in targets:
                if target[:1] == "#" and not _valid_channel(target):
                    self._reply("403", _echo(target), "No such channel")
                else:
                    events.append(Privmsg(target, msg.params[1], dict(msg.tags)))

    # -- the standard queries: parsed here, answered by `answer` when the edge reaches them --

    def _one_target(self, command: str, raw: str) -> str | None:
        """The single target a NAMES/WHO/WHOIS takes (TARGMAX 1), or None after a 407."""
        items = [t for t in raw.split(",") if t]
        if len(items) > 1:
            self._reply("407", _echo(raw), f"Too many targets: {command} takes one")
            return None
        return items[0] if items else ""

    def _names(self, msg: Message, events: list[Event]) -> None:
        target = self._one_target("NAMES", msg.params[0]) if msg.params else ""
        if target is None:
            return
        channel = _ascii_lower(target)
        if _valid_channel(channel):
            events.append(Names(channel))
        else:
            # Modern IRC: NAMES of nothing, or of no such channel, is an empty list, not an error.
            self._reply("366", _echo(target) if target else "*", "End of /NAMES list")

    def _who(self, msg: Message, events: list[Event]) -> None:
        target = self._one_target("WHO", msg.params[0]) if msg.params else ""
        if target is None:
            return
        mask = _ascii_lower(target)
        if _valid_channel(mask) or (_valid_nick(mask) and mask != "0"):   # `WHO 0`: RFC 2812's everyone
            events.append(Who(mask))
        else:
            # Masks (`*`, `0`, `*.host`) search everyone; this server searches no one.
            self._reply("315", _echo(target) if target else "*", "End of /WHO list")

    def _whois(self, msg: Message, events: list[Event]) -> None:
        if not msg.params or not msg.params[-1]:
            self._reply("431", "No nickname given")
            return
        # `WHOIS nick` or `WHOIS server nick` (or `WHOIS nick nick`, which asks the user's own server)
        target = self._one_target("WHOIS", msg.params[-1])
        if target is None:
            return
        nick = _ascii_lower(target)
        if _valid_nick(nick):
            events.append(Whois(nick))
        else:
            self._reply("401", _echo(target), "No such nick/channel")
            self._reply("318", _echo(target), "End of /WHOIS list")

    def _channel_param(self, command: str, msg: Message) -> str | None:
        if not msg.params or not msg.params[0]:
            self._reply("461", command, "Not enough parameters")
            return None
        channel = _ascii_lower(msg.params[0])
        if not _valid_channel(channel):
            self._reply("403", _echo(msg.params[0]), "No such channel")
            return None
        return channel

    def _topic(self, msg: Message, events: list[Event]) -> None:
        if (channel := self._channel_param("TOPIC", msg)) is not None:
            events.append(Topic(channel, msg.params[1] if len(msg.params) > 1 else None))

    def _mode(self, msg: Message, events: list[Event]) -> None:
        if not msg.params or not msg.params[0]:
            self._reply("461", "MODE", "Not enough parameters")
        elif msg.params[0][:1] == "#":
            if (channel := self._channel_param("MODE", msg)) is not None:
                events.append(ChannelMode(channel, tuple(msg.params[1:])))
        else:
            # An event, not a reply now: `NICK a, USER.., MODE a +i` in one write must see 001 first.
            events.append(UserMode(_ascii_lower(msg.params[0]), tuple(msg.params[1:])))

    def _lusers(self, msg: Message, events: list[Event]) -> None:
        events.append(Lusers())

    def _nick_list(self, words: Iterable[str]) -> tuple[str, ...]:
        out: list[str] = []
        for word in words:
            nick = _ascii_lower(word)
            if _valid_nick(nick) and nick not in out:
                out.append(nick)
        return tuple(out)

    def _ison(self, msg: Message, events: list[Event]) -> None:
        if not msg.params:
            self._reply("461", "ISON", "Not enough parameters")
            return
        # `ISON a b c` and `ISON :a b c` both occur; the 510-byte line bounds how many.
        events.append(Ison(self._nick_list(w for p in msg.params for w in p.split(" ") if w)))

    def _userhost(self, msg: Message, events: list[Event]) -> None:
        if not msg.params:
            self._reply("461", "USERHOST", "Not enough parameters")
            return
        words = [w for p in msg.params for w in p.split(" ") if w]
        events.append(Userhost(self._nick_list(words[:USERHOST_MAX])))

    # -- answering queries --

    def host_of(self, nick: str) -> str:
        """The host part of a user's source, as the edge writes it (`nick!nick@nick.<server>`)."""
        return f"{nick}.{self.server_name}"

    def answer(self, query: Query, found: Found | None = None) -> bool:
        """Queue the replies to `query` as things stand now (the rooms in `joined`). Returns False
        and queues nothing when the answer needs the cluster's members and `found` is None: look
        them up (chat.members) and call again with them."""
        if self.state == "closed":
            return True
        if isinstance(query, Topic):
            if query.channel[1:] not in self.joined:
                self._reply("442", query.channel, "You're not on that channel")
            elif query.text is not None:
                self._reply("482", query.channel, "You're not channel operator")
            else:
                # Rooms have no title here; a room with one would answer 332 (and 333).
                self._reply("331", query.channel, "No topic is set")
            return True
        if isinstance(query, ChannelMode):
            return self._answer_mode(query)
        if isinstance(query, UserMode):
            if query.nick != self.nick:
                self._reply("502", "Can't change mode for other users")
            elif query.args and query.args[0].strip("+-"):
                # `MODE nick +i` at connect: there are no user modes; 501 is RFC 2812's answer,
                # which clients print and go on.
                self._reply("501", "Unknown MODE flag")
            else:
                self._reply("221", "+")
            return True
        in_room = isinstance(query, Who) and query.mask[:1] == "#"
        # A room not joined lists no one (RFC 2812 lists the visible ones; here that is none:
        # who is in a room is for those in it, and an outsider's NAMES costs no cluster lookup).
        if isinstance(query, Names) and query.channel[1:] not in self.joined:
            self._reply("366", query.channel, "End of /NAMES list")
            return True
        if in_room and query.mask[1:] not in self.joined:
            self._reply("315", query.mask, "End of /WHO list")
            return True
        if isinstance(query, (Ison, Userhost)) and not query.nicks:
            self._reply("303" if isinstance(query, Ison) else "302", "")
            return True
        if found is None:
            return False
        if isinstance(query, Names):
            self._names_reply(query.channel, found.members, found.member_count)
        elif isinstance(query, Who):
            nicks = found.members if in_room else [query.mask] if query.mask in found.online else []
            for nick in nicks:
                self._reply("352", query.mask if in_room else "*", nick, self.host_of(nick), self.server_name,
                            nick, "H", f"0 {nick}")
            self._reply("315", query.mask, "End of /WHO list")
        elif isinstance(query, Whois):
            if query.nick in found.online:
                self._reply("311", query.nick, query.nick, self.host_of(query.nick), "*", query.nick)
                self._reply("312", query.nick, self.server_name, "chatops")
            else:
                self._reply("401", query.nick, "No such nick/channel")
            self._reply("318", query.nick, "End of /WHOIS list")
        elif isinstance(query, Ison):
            self._one_line("303", [n for n in query.nicks if n in found.online])
        elif isinstance(query, Userhost):
            self._one_line("302", [f"{n}=+{n}@{self.host_of(n)}" for n in query.nicks if n in found.online])
        elif isinstance(query, Lusers):
            self._reply("251", f"There are {found.users} users and 0 invisible on {found.servers} servers")
            self._reply("252", "0", "operator(s) online")
            self._reply("253", str(found.unregistered), "unknown connection(s)")
            self._reply("254", str(found.rooms), "channels formed")
            self._reply("255", f"I have {found.local_users} clients and 1 servers")
            self._reply("265", str(found.local_users), str(found.local_users),
                        f"Current local users {found.local_users}, max {found.local_users}")
            self._reply("266", str(found.users), str(found.users),
                        f"Current global users {found.users}, max {found.users}")
        return True

    def _answer_mode(self, query: ChannelMode) -> bool:
        channel, args = query.channel, query.args
        if not args:
            self._reply("324", channel, CHANNEL_MODES)
            return True
        letters = args[0].replace("+", "").replace("-", "")
        if len(args) == 1 and args[0][:1] != "-" and len(letters) == 1 and letters in _LIST_MODES:
            code, text = _LIST_MODES[letters]
            self._reply(code, channel, text)
            return True
        unknown = next((c for c in letters if c not in _KNOWN_CHANNEL_MODES), None)
        if unknown is not None:
            self._reply("472", _echo(unknown), "is unknown mode char to me")
        elif channel[1:] not in self.joined:
            self._reply("442", channel, "You're not on that channel")
        else:
            self._reply("482", channel, "You're not channel operator")
        return True

    def _one_line(self, code: str, words: Sequence[str]) -> None:
        """A reply clients expect as one line (303, 302): the words that fit it. Only an ISON of
        a whole line's worth of short nicks, all online, can overflow; the rest read as offline."""
        head = len(f":{self.server_name} {code} {self.nick or '*'} :\r\n".encode())
        self._reply(code, " ".join(_split_words(words, MAX_LINE - head)[0]))

    def _names_reply(self, channel: str, members: Sequence[str], count: int) -> None:
        nick = self.nick or "*"
        head = len(f":{self.server_name} 353 {nick} = {channel} :\r\n".encode())
        for group in _split_words(members, MAX_LINE - head):
            if group:
                self._reply("353", "=", channel, " ".join(group))
        if count > len(members):
            # No numeric says "and more"; a NOTICE keeps the list itself standard.
            self._out.append(encode("NOTICE", nick, f"{channel} has {count} members; NAMES lists "
                                    f"{len(members)}", source=self.server_name, trailing=True))
        self._reply("366", channel, "End of /NAMES list")


_HANDLERS = {
    "CAP": ServerConnection._cap, "PASS": ServerConnection._pass, "NICK": ServerConnection._nick,
    "USER": ServerConnection._user, "PING": ServerConnection._ping, "PONG": ServerConnection._pong,
    "QUIT": ServerConnection._quit, "JOIN": ServerConnection._join, "PART": ServerConnection._part,
    "PRIVMSG": ServerConnection._privmsg, "NAMES": ServerConnection._names, "WHO": ServerConnection._who,
    "WHOIS": ServerConnection._whois, "TOPIC": ServerConnection._topic, "MODE": ServerConnection._mode,
    "LUSERS": ServerConnection._lusers, "ISON": ServerConnection._ison,
    "USERHOST": ServerConnection._userhost,
}
