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
  `accept_registration` / `reject_registration` / `encode`.
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

__all__ = [
    "MAX_LINE", "MAX_TAGS", "ParseError", "Message", "parse", "encode", "escape_tag_value",
    "unescape_tag_value", "LineError", "Framer", "SUPPORTED_CAPS", "ISUPPORT", "RegistrationRequest",
    "Join", "Part", "Privmsg", "Quit", "Pong", "Event", "ServerConnection",
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
    return v.translate(_ESCAPES)


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

    def __init__(self, max_line: int = MAX_LINE, max_tags: int = MAX_TAGS):
        self.max_line = max_line
        self.max_tags = max_tags
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
            out.append(parse(text))
        except ParseError as exc:
            out.append(LineError("malformed", _command_word(line), exc.reason))


# ---------------------------------------------------------------------------------------------
# Server side of one connection
# ---------------------------------------------------------------------------------------------

SUPPORTED_CAPS = ("twitch.tv/tags", "twitch.tv/commands", "twitch.tv/membership", "message-tags",
                  "server-time", "echo-message")
NICKLEN = 25
CHANNELLEN = 50
ISUPPORT = ("CHANTYPES=#", "NETWORK=chatops", "CASEMAPPING=ascii", f"CHANNELLEN={CHANNELLEN}",
            f"NICKLEN={NICKLEN}")


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


Event: TypeAlias = RegistrationRequest | Join | Part | Privmsg | Quit | Pong
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

    def __init__(self, server_name: str, *, caps: Iterable[str] = SUPPORTED_CAPS):
        self.server_name = server_name
        self.supported_caps: tuple[str, ...] = tuple(caps)
        self.state: State = "new"
        self.nick: str | None = None          # set once registered; replies say '*' before
        self.caps: frozenset[str] = frozenset()
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
        self._reply("005", *ISUPPORT, "are supported by this server")
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
            self._cap_reply("LS", " ".join(self.supported_caps))
        elif sub == "LIST":
            self._cap_reply("LIST", " ".join(c for c in self.supported_caps if c in self.caps))
        elif sub == "REQ":
            if len(msg.params) < 2:
                self._reply("461", "CAP", "Not enough parameters")
                return
            wanted = [c for c in msg.params[1].split(" ") if c]
            # All or nothing, as the spec says: one unknown capability NAKs the whole request.
            if wanted and all(c.removeprefix("-") in self.supported_caps for c in wanted):
                caps = set(self.caps)
                for c in wanted:
                    if c[0] == "-":
                        caps.discard(c[1:])
                    else:
                        caps.add(c)
                self.caps = frozenset(caps)
                self._cap_reply("ACK", " ".join(wanted))
            else:
                self._cap_reply("NAK", " ".join(wanted))
        elif sub == "END":
            self._cap_negotiating = False
        else:
            self._reply("410", _echo(msg.params[0]), "Invalid CAP command")

    def _cap_reply(self, sub: str, text: str) -> None:
        self._out.append(encode("CAP", self.nick or "*", sub, text, source=self.server_name, trailing=True))

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
            events.append(Part(channels))

    def _privmsg(self, msg: Message, events: list[Event]) -> None:
        if not msg.params or not msg.params[0]:
            self._reply("411", "No recipient given (PRIVMSG)")
        elif len(msg.params) < 2 or not msg.params[1]:
            self._reply("412", "No text to send")
        else:
            events.append(Privmsg(_ascii_lower(msg.params[0]), msg.params[1], dict(msg.tags)))


_HANDLERS = {
    "CAP": ServerConnection._cap, "PASS": ServerConnection._pass, "NICK": ServerConnection._nick,
    "USER": ServerConnection._user, "PING": ServerConnection._ping, "PONG": ServerConnection._pong,
    "QUIT": ServerConnection._quit, "JOIN": ServerConnection._join, "PART": ServerConnection._part,
    "PRIVMSG": ServerConnection._privmsg,
}
