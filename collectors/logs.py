"""Log collector: the talk's log lines, plain syslog, and the few other shapes a run dir holds.

Shapes understood by `parse_line` (a pure function over one line of text):

- talk:    `Feb 18 06:54:04 tmi_edge: [clue] Timed out (after 5s) while writing request for: privmsg`
           `MMM DD HH:MM:SS <service>: [<remote>] <event> key=value key="quoted value"`
           (what chat/logs.py format_line writes; `[-]` means no remote; the `[remote]` part is
           optional, e.g. the talk's `chat_clue: WARNING:tornado.general:Connect error ...`).
- syslog:  RFC 3164, `<PRI>MMM DD HH:MM:SS host tag[pid]: message` (`<PRI>` and `[pid]` optional),
           as HAProxy writes it to its log target. The message may itself start with `[remote]`.
- haproxy: HAProxy's bare stderr lines `[WARNING]  (1518) : message` (no time, no host).
- redis:   Redis's own log, `pid:role DD Mon YYYY HH:MM:SS.mmm <level-char> message`.

Year: syslog and talk lines carry no year. `LogEvent.timestamp(now)` picks the year of `now`
(default: the current local time), unless that would put the line more than one day in the future
-- a December line read in January -- in which case it takes the year before. Lines that carry a
year (Redis) keep theirs.

`kind` is derived from the event text: timeout, success, connection_refused, io_timeout,
message_sent, slow_consumer, other.

`Follower` reads one file incrementally (offset/inode/head fingerprint persisted in a JSON state
file), across rotation and truncation. `Aggregator` counts lines per window and (service, remote,
kind) with a few example lines per group; lines it cannot parse are counted with samples. `Tail`
follows every file of a run dir's logs/ and feeds the new lines to an Aggregator: the control
plane keeps one between scrapes; `collect(target)` is a Tail read once from the start, wrapped in
an Observation. One pipeline, so `chatops inspect logs` and the control plane count alike.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import repeat
from operator import itemgetter
from pathlib import Path
from typing import Any, Generator, Iterable, Iterator

from collectors import fastlog
from collectors.base import Observation, observe

MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}
MONTH_NAMES = {v: k for k, v in MONTHS.items()}
KINDS = ("timeout", "success", "connection_refused", "io_timeout", "message_sent", "slow_consumer",
         "other")
MAX_LINE = 64 * 1024          # longer lines are cut (and counted) before parsing
_HOLD = 4 * MAX_LINE + 4      # bytes of one line add_file keeps: MAX_LINE + 1 characters at least
_FIELD_TRIES = 16             # at most this many candidate starts for the key=value tail
_REDIS_LEVELS = {".": "debug", "-": "verbose", "*": "notice", "#": "warning"}
_FIRST = itemgetter(0)
_EQ = repeat("=")
_NL = repeat("\n")
_SLOW = object()     # Aggregator cache: lines with this key must be parsed one by one
_NEXT_KEY = re.compile(r" [A-Za-z0-9_.\-]+=")
_KEY = re.compile(r"[A-Za-z0-9_.\-]+")
_DIGITS = frozenset("0123456789")
_SEVERITIES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")


@dataclass(slots=True)
class LogEvent:
    month: int | None            # 1-12; None for lines without a time (HAProxy's bare lines)
    day: int | None
    clock: str | None            # "HH:MM:SS"
    service: str                 # tmi_edge, chat_clue, exchange, haproxy, redis...
    remote: str | None           # the [remote] service; None for `[-]` or no bracket
    kind: str                    # one of KINDS
    message: str                 # the event text without the key=value fields
    fields: dict[str, str] = field(default_factory=dict)
    host: str | None = None      # syslog's host field
    pid: int | None = None
    level: str | None = None     # haproxy's [WARNING], redis's level char, a level= field
    year: int | None = None      # only when the line carries one (Redis)
    shape: str = "talk"          # talk | syslog | haproxy | redis
    raw: str = ""

    def timestamp(self, now: float | None = None) -> float | None:
        """Epoch seconds (local time); see the module doc for how the missing year is chosen."""
        if self.month is None or self.clock is None:
            return None
        h, m, s = (int(x) for x in self.clock.split(":"))
        ref = datetime.fromtimestamp(time.time() if now is None else now)
        if self.year is not None:
            return _mk(self.year, self.month, self.day, h, m, s) or None
        for year in (ref.year, ref.year - 1, ref.year - 2, ref.year - 3, ref.year - 4):
            dt = _mk(year, self.month, self.day, h, m, s)
            if dt is not None and dt <= (ref + timedelta(days=1)).timestamp():
                return dt
        return None


def _mk(year: int, month: int, day: int, h: int, m: int, s: int) -> float | None:
    try:
        return datetime(year, month, day, h, m, s).timestamp()
    except ValueError:  # Feb 29 in a non-leap year, day 31 in a 30-day month...
        return None


# -- pure parsing ---------------------------------------------------------------------------------

def classify(message: str) -> str:
    """The event kind from its text; the cheap, common cases first."""
    if "Timed out" in message:
        return "timeout"
    if "success" in message:
        return "message_sent" if "successfully sent" in message else "success"
    if "i/o timeout" in message:
        return "io_timeout"
    if "ECONNREFUSED" in message or "onnection refused" in message:
        return "connection_refused"
    low = message.lower()
    if "slow consumer" in low or "slow_consumer" in low:
        return "slow_consumer"
    if "timed out" in low or "timeout" in low:
        return "io_timeout" if "i/o timeout" in low else "timeout"
    if "econnrefused" in low or "connection refused" in low:
        return "connection_refused"
    if "successfully sent" in low:
        return "message_sent"
    if "success" in low:
        return "success"
    return "other"


def parse_fields(text: str) -> dict[str, str]:
    """`key=value key="quoted \\"value\\"" ...` -> dict; `text` starts with a key. Lenient, never
    fails: an unquoted value runs up to the next ` key=` token (format_line never writes spaces in
    unquoted values, so its lines split exactly); a quoted value that is not closed (or is followed
    by something other than a space) is taken as unquoted text instead."""
    out: dict[str, str] = {}
    i, n = 0, len(text)
    while i < n:
        eq = text.find("=", i)
        if eq < 0:
            break
        key = text[i:eq]
        j = eq + 1
        if j < n and text[j] == '"':
            close = text.find('"', j + 1)
            if close > 0 and "\\" not in text[j + 1:close] and (close + 1 == n or text[close + 1] == " "):
                out[key] = text[j + 1:close]
                i = close + 2
                continue
            value, end = _quoted(text, j)
            if value is not None:
                out[key] = value
                i = end + 1
                continue
        m = _NEXT_KEY.search(text, j)
        end = m.start() if m else n
        out[key] = text[j:end]
        i = end + 1
    return out


def _quoted(text: str, j: int) -> tuple[str | None, int]:
    """The escaped quoted value at text[j] == '"' -> (value, index after it) or (None, j)."""
    buf = []
    k, n = j + 1, len(text)
    while k < n:
        c = text[k]
        if c == "\\" and k + 1 < n:
            nxt = text[k + 1]
            buf.append({"n": "\n", "r": "\r", "t": "\t"}.get(nxt, nxt))
            k += 2
        elif c == '"':
            if k + 1 == n or text[k + 1] == " ":
                return "".join(buf), k + 1
            return None, j
        else:
            buf.append(c)
            k += 1
    return None, j


def split_fields(rest: str) -> tuple[str, dict[str, str]]:
    """The event text and its trailing key=value fields: fields start at the first token of the
    form `key=` (key: letters, digits, `_.-`); everything from there on is fields."""
    eq = rest.find("=")
    if eq < 0:
        return rest, {}
    tries = 0
    while eq >= 0 and tries < _FIELD_TRIES:
        ks = rest.rfind(" ", 0, eq) + 1
        if ks < eq and _KEY.fullmatch(rest, ks, eq) is not None:
            return rest[:ks].rstrip(" "), parse_fields(rest[ks:])
        tries += 1
        eq = rest.find("=", eq + 1)
    return rest, {}


def _time(line: str, start: int) -> tuple[int, int, str] | None:
    """`MMM DD HH:MM:SS` (day may be space-padded) at line[start:start+15]."""
    month = MONTHS.get(line[start:start + 3])
    if month is None or line[start + 3] != " " or line[start + 6] != " ":
        return None
    d = line[start + 4:start + 6]
    clock = line[start + 7:start + 15]
    if (len(clock) != 8 or clock[2] != ":" or clock[5] != ":"
            or not (clock[:2] + clock[3:5] + clock[6:]).isdigit() or not clock.isascii()):
        return None
    d = d.lstrip(" ")
    if not d.isdigit() or not d.isascii():
        return None
    day = int(d)
    if not 1 <= day <= 31:
        return None
    return month, day, clock


def _remote(rest: str) -> tuple[str | None, str, bool]:
    """`[remote] event` -> (remote, event, had_bracket); `[-]` is no remote."""
    if rest[:1] == "[":
        close = rest.find("]")
        if close > 0:
            name = rest[1:close]
            if name and " " not in name and "[" not in name:
                after = rest[close + 1:]
                if not after or after[0] == " ":
                    return (None if name == "-" else name), after[1:], True
    return None, rest, False


def _body(line: str, body: str, month: int | None, day: int | None, clock: str | None,
          shape_hint: str | None = None) -> LogEvent | None:
    """Everything after the time: `service: ...` (talk) or `host tag[pid]: ...` (syslog)."""
    first, sep, after = body.partition(" ")
    if first.endswith(":") and len(first) > 1:
        service, host, pid, shape, rest = first[:-1], None, None, "talk", after
        if not sep:
            rest = ""
    else:
        tag, sep2, rest = after.partition(" ")
        if not sep or not first or not tag.endswith(":") or len(tag) < 2:
            # RFC 3164 allows "host tag: msg" only; anything else is not ours.
            return None
        host, tag = first, tag[:-1]
        pid = None
        br = tag.find("[")
        if br > 0 and tag.endswith("]"):
            p = tag[br + 1:-1]
            tag = tag[:br]
            pid = _number(p, 10)
        service, shape = tag, "syslog"
        if not sep2:
            rest = ""
    if shape_hint:
        shape = shape_hint
    if " " in service or not service:
        return None
    remote, event, _ = _remote(rest)
    message, fields = split_fields(event)
    level = fields.get("level")
    return LogEvent(month, day, clock, service, remote, classify(message), message, fields,
                    host, pid, level, None, shape, line)


def parse_line(line: str) -> LogEvent | None:
    """One log line -> LogEvent, or None when it is none of the known shapes (pure)."""
    if len(line) > MAX_LINE:
        line = line[:MAX_LINE]
    line = line.rstrip("\r\n")
    if len(line) < 5:
        return None
    c = line[0]
    # Cheapest and commonest first: talk shape / syslog without PRI, time at column 0.
    if c in "ADFJMNOS" and len(line) > 16 and line[15] == " ":
        t = _time(line, 0)
        if t is not None:
            return _body(line, line[16:], *t)
    if c == "<":
        close = line.find(">", 1, 6)
        if close > 1 and line[1:close].isdigit() and line[1:close].isascii():
            start = close + 1
            if len(line) > start + 16 and line[start + 15] == " ":
                t = _time(line, start)
                if t is not None:
                    ev = _body(line, line[start + 16:], *t)
                    if ev is not None and ev.level is None:
                        ev.level = _SEVERITIES[int(line[1:close]) & 7]
                    return ev
        return None
    if c == "[":
        return _haproxy_bare(line)
    if c in _DIGITS:
        return _redis(line)
    return None


def _number(text: str, digits: int) -> int | None:
    """1 to `digits` ASCII digits as an int, else None. isdigit() alone is not enough: it is true
    for '²', which int() refuses, and int() refuses more than 4,300 digits."""
    return int(text) if 0 < len(text) <= digits and text.isdigit() and text.isascii() else None


def _haproxy_bare(line: str) -> LogEvent | None:
    # [WARNING]  (1518) : Server be_edge_ws_main/chat2 is DOWN, ...
    close = line.find("]")
    if close < 2:
        return None
    level = line[1:close]
    if not level.isalpha() or not level.isupper():
        return None
    rest = line[close + 1:].lstrip(" ")
    pid = None
    if rest.startswith("("):
        pc = rest.find(")")
        pid = _number(rest[1:pc] if pc > 0 else "", 10)
        if pid is None:
            return None
        rest = rest[pc + 1:].lstrip(" ")
    if rest.startswith(":"):
        rest = rest[1:].lstrip(" ")
    elif pid is None:
        return None
    return LogEvent(None, None, None, "haproxy", None, classify(rest), rest, {}, None, pid,
                    level.lower(), None, "haproxy", line)


def _redis(line: str) -> LogEvent | None:
    # 8312:M 27 Nov 2026 13:41:26.421 * Ready to accept connections
    head, sep, rest = line.partition(":")
    pid = _number(head, 10)
    if not sep or pid is None or len(rest) < 2:
        return None
    role, _, rest = rest.partition(" ")
    parts = rest.split(" ", 5)
    if len(parts) < 6:
        return None
    d, mon, year, clock, lvl, message = parts
    month, day, year_ = MONTHS.get(mon), _number(d, 2), _number(year, 4)
    if (month is None or day is None or year_ is None or len(clock) < 8
            or clock[2] != ":" or clock[5] != ":" or _number(clock[:2] + clock[3:5] + clock[6:8], 6) is None):
        return None
    return LogEvent(month, day, clock[:8], "redis", None, classify(message), message, {}, None,
                    pid, _REDIS_LEVELS.get(lvl, lvl), year_, "redis", line)


# -- reading files --------------------------------------------------------------------------------

def decode(data: bytes) -> str:
    """Bytes from a log file -> text; invalid UTF-8 becomes U+FFFD, never an exception."""
    return data.decode("utf-8", errors="replace")


def _fingerprint(fd: int, n: int = 64) -> str:
    return os.pread(fd, n, 0).hex()


class Follower:
    """Follows one log file from a saved offset; hands out complete lines only.

    State (offset, inode, device, first bytes of the file) is saved as JSON in `state_path` after
    each read, so a new Follower on the same state resumes where the last one stopped.
    Rotation (rename + new file): the old file stays open and is read to its end -- a trailing
    partial line in it is then complete, since nobody writes there any more -- before switching to
    the new file from offset 0. Truncation (size below the offset, or the first bytes changed):
    start again from 0 and count it. Restart after a rotation that happened while nobody was
    following starts the new file at 0; what was left unread in the old one is not found (its
    name is unknown). With `tail_bytes`, a file met without saved state is read from the first
    whole line in its last `tail_bytes`.

    Each read takes at most `max_bytes` of the file (None: up to its end), `chunk` bytes at a
    time. A line longer than the limit counts in `oversized` and is cut: without `max_line`, into
    pieces of `max_bytes`, each handed out as a line; with `max_line`, its first `max_line` bytes
    are handed out once and the rest of it, up to its newline, is skipped -- the Aggregator parses
    no more than MAX_LINE characters of a line anyway, and one line then never holds megabytes.
    An unterminated last line waits for its newline, unless the read is `final` (a file nobody
    writes any more, read once) or the file was rotated away.
    """

    def __init__(self, path: str | os.PathLike, state_path: str | os.PathLike | None = None,
                 max_bytes: int | None = 1 << 20, tail_bytes: int | None = None,
                 max_line: int | None = None, chunk: int = 1 << 22):
        self.path = Path(path)
        self.tail_bytes = tail_bytes     # no saved state: start at the first line in the last N bytes
        self.state_path = Path(state_path) if state_path else None
        self.max_bytes = max_bytes
        self.max_line = max_line
        self.chunk = chunk
        self.offset = 0
        self.inode: int | None = None
        self.dev: int | None = None
        self.head = ""
        self.rotations = 0
        self.truncations = 0
        self.oversized = 0
        self._skipping = False           # inside a line cut at max_line: drop bytes up to its newline
        self._fd: int | None = None
        self._saved: dict[str, Any] | None = None
        if self.state_path and self.state_path.exists():
            try:
                self._saved = json.loads(self.state_path.read_text())
            except (OSError, ValueError):
                self._saved = None

    # state

    def state(self) -> dict[str, Any]:
        return {"path": str(self.path), "offset": self.offset, "inode": self.inode, "dev": self.dev,
                "head": self.head}

    def save(self) -> None:
        if not self.state_path:
            return
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        tmp.write_text(json.dumps(self.state()))
        os.replace(tmp, self.state_path)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "Follower":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # reading

    def _open(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        st = os.fstat(fd)
        self._fd, self.inode, self.dev, self.offset, self.head = fd, st.st_ino, st.st_dev, 0, ""
        self._skipping = False
        saved, self._saved = self._saved, None
        if not saved and self.tail_bytes is not None and st.st_size > self.tail_bytes:
            start = st.st_size - self.tail_bytes
            nl = os.pread(fd, self.tail_bytes, start - 1).find(b"\n")
            self.offset = start + nl if nl >= 0 else st.st_size
        if saved and saved.get("inode") == st.st_ino and saved.get("dev") == st.st_dev:
            head = str(saved.get("head") or "")
            if _fingerprint(fd, len(head) // 2) == head and int(saved.get("offset", 0)) <= st.st_size:
                self.offset, self.head = int(saved.get("offset", 0)), head
            else:
                self.truncations += 1
        return True

    def _check_truncation(self, size: int) -> None:
        assert self._fd is not None
        if size < self.offset or (self.head and _fingerprint(self._fd, len(self.head) // 2) != self.head):
            self.offset, self.head, self._skipping = 0, "", False
            self.truncations += 1

    def _rotated(self) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False   # renamed away, nothing new yet: keep the old fd, check again later
        return (st.st_ino, st.st_dev) != (self.inode, self.dev)

    def read_spans(self, final: bool = False) -> Iterator[tuple[bytes, int, int]]:
        """Complete lines appended since the last read, as (data, start, end): data[start:end] is
        whole lines, each ended by "\\n" (a cut line is given one). Read it to its end: the state
        is saved then."""
        budget = self.max_bytes
        while budget is None or budget > 0:
            if self._fd is None and not self._open():
                break
            fd = self._fd
            size = os.fstat(fd).st_size
            self._check_truncation(size)
            if len(self.head) < 128 and size > len(self.head) // 2:
                self.head = _fingerprint(fd)
            # Decide about rotation *before* reading to the end: once the name points at a new
            # file, the old one gets no more writes, so what we read now is all it will ever hold.
            rotated = self._rotated()
            if rotated:
                size = os.fstat(fd).st_size
            budget = yield from self._read_to(fd, size, budget, ended=rotated or final)
            if not rotated or self.offset < size:
                break
            self.close()
            self.rotations += 1
            self.inode = None
        self.save()

    def _read_to(self, fd: int, size: int, budget: int | None,
                 ended: bool) -> Generator[tuple[bytes, int, int], None, int | None]:
        """Spans of whole lines from self.offset up to `size`, within `budget` bytes read;
        self.offset moves past each span before it is handed out. Returns the budget left."""
        limit = self.max_line if self.max_line is not None else (self.max_bytes or self.chunk)
        pos = self.offset                      # next byte to read
        held: list[bytes] = []                 # the unfinished line after the last "\n" read
        held_n = 0
        while pos < size and (budget is None or budget > 0):
            want = min(size - pos, self.chunk if budget is None else min(self.chunk, budget))
            data = os.pread(fd, want, pos)
            if not data:                       # the file shrank under us: the next read sees it
                break
            pos += len(data)
            if budget is not None:
                budget -= len(data)
            start = 0
            if self._skipping:
                nl = data.find(b"\n")
                if nl < 0:
                    self.offset = pos
                    continue
                self._skipping, start = False, nl + 1
                self.offset = pos - len(data) + start
            last = data.rfind(b"\n", start)
            if last < 0:
                held.append(data[start:] if start else data)
                held_n += len(data) - start
            else:
                if held:                       # the held line ends in this chunk
                    nl = data.find(b"\n", start)
                    line = b"".join(held) + data[start:nl + 1]
                    held, held_n, start = [], 0, nl + 1
                    self.offset = pos - len(data) + start
                    yield line, 0, len(line)
                if last >= start:
                    self.offset = pos - len(data) + last + 1
                    yield data, start, last + 1
                if last + 1 < len(data):
                    held, held_n = [data[last + 1:]], len(data) - last - 1
            while held_n >= limit:
                line = b"".join(held)
                self.oversized += 1
                if self.max_line is not None:
                    held, held_n, self._skipping = [], 0, True
                    self.offset = pos
                else:
                    held, held_n = [line[limit:]], len(line) - limit
                    self.offset = pos - held_n
                yield line[:limit] + b"\n", 0, limit + 1
        if held and ended and pos >= size:
            line = b"".join(held) + b"\n"      # the last line of a file nobody writes any more
            self.offset = pos
            yield line, 0, len(line)
        return budget

    def read_lines(self) -> list[str]:
        """Complete lines appended since the last call (without their newline), at most
        `max_bytes` of them; decoded with errors='replace'."""
        out: list[bytes] = []
        for data, start, end in self.read_spans():
            out.extend(data[start:end - 1].split(b"\n"))
        return [decode(b) for b in out]


def read_file_lines(path: str | os.PathLike, chunk: int = 1 << 22) -> Iterator[list[str]]:
    """A whole file as batches of lines, each with its newline (the last one may lack it); bytes
    that are not UTF-8 become U+FFFD. Lines end at "\\n" only (a "\\r" stays in the line)."""
    with open(path, encoding="utf-8", errors="replace", newline="\n") as f:
        while True:
            batch = f.readlines(chunk)
            if not batch:
                break
            yield _FileLines(batch)


class _FileLines(list):
    """A read_file_lines batch: every line but the last ends with its only "\\n"."""


# -- aggregation ----------------------------------------------------------------------------------

@dataclass
class LogGroup:
    window: str | None       # "Feb 18 06:54:00": start of the window (None: lines without a time)
    service: str
    remote: str | None
    kind: str
    count: int
    examples: list[str]


@dataclass
class LogSummary:
    lines: int = 0
    parsed: int = 0
    unparsed: int = 0
    empty: int = 0
    cut: int = 0                       # lines longer than MAX_LINE, parsed from their start
    skipped_before_since: int = 0
    unparsed_samples: list[str] = field(default_factory=list)
    groups: list[LogGroup] = field(default_factory=list)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)

    def totals(self) -> list[dict[str, Any]]:
        """Counts per (service, remote, kind) over all windows, with the first example line."""
        acc: dict[tuple, dict[str, Any]] = {}
        for g in self.groups:
            key = (g.service, g.remote, g.kind)
            row = acc.get(key)
            if row is None:
                acc[key] = {"service": g.service, "remote": g.remote, "kind": g.kind,
                            "count": g.count, "example": g.examples[0] if g.examples else None}
            else:
                row["count"] += g.count
        return sorted(acc.values(), key=lambda r: (r["service"], r["remote"] or "", -r["count"]))


class Aggregator:
    """Counts per window per (service, remote, kind), keeping up to `examples` lines per group.

    Windows are `window_s` long, aligned on the day (a line's time carries no year). Unparsable
    lines are counted with the first `samples` kept; empty lines are counted apart. `cut` counts
    lines longer than MAX_LINE (parsed from their first MAX_LINE characters); for lines that
    share their text up to the first "=", only the representative's length is checked.
    Files and raw bytes (add_file, add_bytes) go through the compiled scanner when it is built;
    lists of text lines through add_lines, which batches the work in C-level calls.
    """

    CACHE_MAX = 50_000

    def __init__(self, window_s: int = 60, examples: int = 3, samples: int = 5,
                 since_epoch: float | None = None, now: float | None = None, fast: bool = True):
        if not 1 <= window_s <= 86400:
            raise ValueError("window_s must be between 1 and 86400")
        self.window_s = window_s
        self.examples = examples
        self.samples = samples
        self.since = since_epoch
        self.now = now
        self.fast = fast and fastlog.AVAILABLE     # False: add_bytes parses in Python only
        self.summary = LogSummary()
        self._cache: dict[str, tuple | None] = {}
        self._counts: dict[tuple, list] = {}
        self._windows: dict[str, Any] = {}
        self._fast_windows: dict[tuple, Any] = {}
        self._scanner: fastlog.Scanner | None = None

    def _window(self, month: int | None, day: int | None, clock: str | None,
                year: int | None = None) -> Any:
        """Window key for a time; False when before `since`."""
        if month is None:
            return None
        h, m, s = int(clock[0:2]), int(clock[3:5]), int(clock[6:8])
        if self.since is not None:
            ev = LogEvent(month, day, clock, "", None, "other", "", {}, year=year)
            ts = ev.timestamp(self.now)
            if ts is not None and ts < self.since:
                return False
        sec = h * 3600 + m * 60 + s
        start = sec - sec % self.window_s
        return (month, day, start)

    def _bump(self, key: tuple, line: str) -> None:
        g = self._counts.get(key)
        if g is None:
            self._counts[key] = [1, [line[:2000]]]
        else:
            g[0] += 1
            if len(g[1]) < self.examples:
                g[1].append(line[:2000])

    def _unparsed(self, line: str) -> None:
        s = self.summary
        s.unparsed += 1
        if len(s.unparsed_samples) < self.samples:
            s.unparsed_samples.append(line[:500])

    def add_lines(self, lines: Iterable[str]) -> None:
        """Count a batch of lines (with or without their trailing newline).

        Fast path, all in C but for one step per *distinct* key: each line's key is its text up to
        the first `=` (the whole line when it has none); Counter counts the keys and a dict keeps
        the last line per key. A key resolves to (window, service, remote, kind) once -- by parsing
        its line -- when that is provably the same for every line with the key: the line has no
        `=`, or the first `=` starts the key=value fields (which never change service, remote or
        kind). Other keys are rare; their lines go through parse_line one by one."""
        if not isinstance(lines, list):
            lines = list(lines)
        s = self.summary
        keys = list(map(_FIRST, map(str.partition, lines, _EQ)))
        counted = Counter(keys)
        last = dict(zip(keys, lines))
        cache, windows, counts, nex = self._cache, self._windows, self._counts, self.examples
        slow = None
        # A line without "\n" and without "=" has the same key as the lines that continue it
        # with "=..." (`x` vs `x=1`), and they may differ in kind: such keys go the slow way.
        if lines.__class__ is _FileLines:
            nonl = 0 if lines[-1:] == [] or lines[-1][-1:] == "\n" else 1
        else:
            nonl = len(lines) - sum(map(str.endswith, lines, _NL))
        if nonl:
            cand = lines[-1:] if nonl == 1 and lines[-1][-1:] != "\n" else lines
            bare = Counter(l for l in cand if l[-1:] != "\n" and "=" not in l)
            slow = {k for k, c in bare.items() if counted[k] != c} or None
        for k, c in counted.items():
            if slow is not None and k in slow:
                continue
            line = last[k]
            if len(k) <= 16 or k[15] != " " or len(k) >= MAX_LINE:
                if slow is None:
                    slow = set()
                slow.add(k)
                continue
            ts = k[:15]
            win = windows.get(ts, 0)
            if win == 0:
                t = _time(k, 0)
                win = windows[ts] = None if t is None else self._window(*t)
                if len(windows) > self.CACHE_MAX:
                    windows.clear()
            if win is None:
                if slow is None:
                    slow = set()
                slow.add(k)
                continue
            if win is False:
                s.skipped_before_since += c
                continue
            whole = k is line or len(k) == len(line)
            # A body never holds "=", a prefix of one always ends with it: no collisions.
            head = k[16:] if whole else k[16:] + "="
            gk = cache.get(head, 0) if whole or len(line) <= MAX_LINE else _SLOW
            if gk == 0:
                ev = parse_line(line)
                if ev is None:
                    gk = None if whole else _SLOW
                elif whole:
                    gk = (ev.service, ev.remote, ev.kind)
                elif (ev.fields and ev.month is not None and "=" not in ev.message
                      and "=" not in ev.service and "=" not in (ev.remote or "") and "=" not in (ev.host or "")):
                    gk = (ev.service, ev.remote, ev.kind)
                else:
                    gk = _SLOW
                if len(cache) >= self.CACHE_MAX:
                    cache.clear()
                cache[head] = gk
            if gk is _SLOW:
                if slow is None:
                    slow = set()
                slow.add(k)
                continue
            if whole and len(line) > MAX_LINE:
                s.cut += c
            if gk is None:
                s.unparsed += c
                if len(s.unparsed_samples) < self.samples:
                    s.unparsed_samples.append(line.rstrip("\r\n")[:500])
                continue
            s.parsed += c
            key = (win, gk)
            g = counts.get(key)
            if g is None:
                counts[key] = [c, [line.rstrip("\r\n")[:2000]]]
            else:
                g[0] += c
                if len(g[1]) < nex:
                    g[1].append(line.rstrip("\r\n")[:2000])
        s.lines += len(keys)
        if slow:
            for k, line in zip(keys, lines):
                if k in slow:
                    self._add_slow(line.rstrip("\n"))

    def _add_slow(self, line: str) -> None:
        s = self.summary
        if not line or line.isspace():
            s.empty += 1
            return
        if len(line) > MAX_LINE:
            s.cut += 1
        ev = parse_line(line)
        if ev is None:
            self._unparsed(line)
            return
        win = self._window(ev.month, ev.day, ev.clock, ev.year)
        if win is False:
            s.skipped_before_since += 1
            return
        s.parsed += 1
        self._bump((win, (ev.service, ev.remote, ev.kind)), line)

    def add(self, line: str) -> None:
        self.add_lines((line,))

    def add_bytes(self, data: bytes, start: int = 0, end: int | None = None) -> None:
        """Count the lines of data[start:end] as read from a log file; a last line without "\\n"
        counts too.

        Talk-shape lines go through the compiled scanner (collectors/fastlog.c) when it is built,
        which hands every other line back to `_add_slow`; without it, this is add_lines."""
        end = len(data) if end is None else end
        if not self.fast:
            text = decode(data[start:end])
            self.add_lines(_FileLines(io.StringIO(text, newline="\n").readlines()))
            return
        if self._scanner is None:
            self._scanner = fastlog.Scanner()
        s, counts, nex, windows = self.summary, self._counts, self.examples, self._fast_windows
        # With `since`, lines are cut at their own second, so the scanner groups per second.
        per_second = self.since is not None
        while start < end:
            scan = self._scanner.scan(data, start, end, nex, 1 if per_second else self.window_s)
            for g in scan.groups:
                if per_second:
                    wk = (g.month, g.day, g.clock)
                    win = windows.get(wk, 0)
                    if win == 0:
                        win = windows[wk] = self._window(g.month, g.day, g.clock)
                        if len(windows) > self.CACHE_MAX:
                            windows.clear()
                    if win is False:
                        s.skipped_before_since += g.count
                        continue
                else:
                    win = (g.month, g.day, g.start)
                s.parsed += g.count
                key = (win, (g.service, g.remote, g.kind))
                entry = counts.get(key)
                if entry is None:
                    counts[key] = [g.count, [e[:2000] for e in g.examples]]
                else:
                    entry[0] += g.count
                    if len(entry[1]) < nex:
                        entry[1].extend(e[:2000] for e in g.examples[:nex - len(entry[1])])
            for raw in scan.slow:
                self._add_slow(decode(raw))
            s.lines += scan.lines
            if scan.end == start:                 # no newline left: the last, unterminated line
                s.lines += 1
                self._add_slow(decode(data[start:end]))
                break
            start = scan.end

    def add_file(self, path: str | os.PathLike, chunk: int = 1 << 22) -> None:
        """Count a whole file, read once to its end as a Tail reads it (a Follower, `chunk` bytes at
        a time, cut at line ends). A line is held in memory only up to _HOLD bytes, enough for
        MAX_LINE + 1 characters of any UTF-8; past that it is parsed from its start and counted as
        cut, like any line longer than MAX_LINE."""
        with Follower(path, max_bytes=None, max_line=_HOLD, chunk=chunk) as f:
            if not f._open():
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
            for data, start, end in f.read_spans(final=True):
                self.add_bytes(data, start, end)

    def result(self) -> LogSummary:
        s = self.summary
        groups = []
        for (win, (service, remote, kind)), (count, examples) in self._counts.items():
            label = None if win is None else \
                f"{MONTH_NAMES[win[0]]} {win[1]:02d} {win[2] // 3600:02d}:{win[2] % 3600 // 60:02d}:{win[2] % 60:02d}"
            groups.append(LogGroup(label, service, remote, kind, count, list(examples)))
        groups.sort(key=lambda g: (g.window or "", g.service, g.remote or "", g.kind))
        s.groups = groups
        return s


# -- the collector --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    root: Path                           # the run directory; its logs/*.log are read
    services: frozenset[str] | None = None   # only these files: a service (edge) or a stem (edge-chat1)
    since_s: float | None = None         # only lines newer than this many seconds before `now`
    now: float | None = None             # the reference time for since_s; None: when collect runs
    window_s: int = 60                   # the Aggregator's windows
    examples: int = 3                    # example lines kept per group
    first_read: int | None = None        # a Tail meeting a file reads only its last N bytes
    max_bytes: int | None = None         # a Tail reads at most this much of a file per read

    def wants(self, path: Path) -> bool:
        return not self.services or path.stem.split("-", 1)[0] in self.services or path.stem in self.services


def target_for(run_dir: Any, services: Iterable[str] | None = None, since_s: float | None = None, *,
               now: float | None = None, window_s: int = 60, examples: int = 3,
               first_read: int | None = None, max_bytes: int | None = None) -> Target:
    """The logs of a run dir (a RunDir or a path)."""
    from cluster.rundir import RunDir
    root = Path(run_dir.root if isinstance(run_dir, RunDir) else run_dir)
    return Target(root, frozenset(services) if services else None, since_s, now, window_s, examples,
                  first_read, max_bytes)


@dataclass
class FileRead:
    """What one Tail.read found in one file."""
    name: str                            # "edge-chat1.log"
    first: bool                          # the Tail's first read of this file
    lines: int = 0
    parsed: int = 0
    unparsed: int = 0
    summary: LogSummary | None = None    # this file's own counts, when the read had no shared Aggregator
    error: str | None = None


class Tail:
    """Follows every `*.log` in the run dir's logs/ (one Follower per file, remembering offsets
    across rotation and truncation) and feeds the new whole lines of each through the same
    Aggregator path as a one-shot read: `add_bytes`, the compiled scanner when it is built.

    `read()` counts what was appended since the last read: into one shared Aggregator when given
    one (collect() does that, reading every file once from its start), else into a fresh one per
    file whose summary comes back in its FileRead (the control plane keeps a Tail between scrapes
    and adds those up per file). A file met for the first time is read from its start, or only
    from its last `target.first_read` bytes."""

    def __init__(self, target: Target):
        self.target = target
        self.followers: dict[str, Follower] = {}
        self._scanner: fastlog.Scanner | None = None    # one set of C buffers for every file

    @property
    def logs_dir(self) -> Path:
        return self.target.root / "logs"

    def read(self, into: Aggregator | None = None, final: bool = False) -> list[FileRead]:
        """Raises FileNotFoundError when there is no logs directory; a file that cannot be read
        costs only its own FileRead (`error`)."""
        t = self.target
        if not self.logs_dir.is_dir():
            raise FileNotFoundError(f"no logs directory at {self.logs_dir}")
        out = []
        for path in sorted(self.logs_dir.glob("*.log")):
            if not t.wants(path):
                continue
            follower = self.followers.get(path.name)
            read = FileRead(path.name, first=follower is None)
            if follower is None:
                follower = self.followers[path.name] = Follower(
                    path, max_bytes=t.max_bytes, tail_bytes=t.first_read, max_line=_HOLD)
            agg = into if into is not None else self._aggregator()
            s = agg.summary
            before = (s.lines, s.parsed, s.unparsed)
            try:
                for data, start, end in follower.read_spans(final):
                    agg.add_bytes(data, start, end)
            except OSError as exc:
                read.error = f"{type(exc).__name__}: {exc}"
            read.lines, read.parsed = s.lines - before[0], s.parsed - before[1]
            read.unparsed = s.unparsed - before[2]
            if into is None and read.error is None:
                read.summary = agg.result()
            out.append(read)
        return out

    def _aggregator(self) -> Aggregator:
        t = self.target
        ref = time.time() if t.now is None else t.now
        agg = Aggregator(window_s=t.window_s, examples=t.examples,
                         since_epoch=None if t.since_s is None else ref - t.since_s, now=ref)
        if agg.fast:
            if self._scanner is None:
                self._scanner = fastlog.Scanner()
            agg._scanner = self._scanner
        return agg

    def close(self) -> None:
        for f in self.followers.values():
            f.close()
        self.followers.clear()

    def __enter__(self) -> "Tail":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def collect(target: Target, previous: Observation | None = None) -> Observation:
    """The run dir's logs/*.log, aggregated: a Tail read once, every file from its start to its
    end (an unterminated last line counts). `target.services` filters by file (edge, clue,
    exchange, haproxy, redis, supervisor, loadgen; a full stem like edge-chat1 works too);
    `target.since_s` keeps lines newer than that many seconds before `target.now` (lines without
    a time are always kept). `previous` is not needed: a Tail kept between calls is the
    incremental form."""

    def fetch() -> LogSummary:
        ref = time.time() if target.now is None else target.now
        agg = Aggregator(window_s=target.window_s, examples=target.examples,
                         since_epoch=None if target.since_s is None else ref - target.since_s, now=ref)
        with Tail(target) as tail:
            reads = tail.read(into=agg, final=True)
        for r in reads:
            agg.summary.files[r.name] = ({"error": r.error} if r.error else
                                         {"lines": r.lines, "parsed": r.parsed, "unparsed": r.unparsed})
        return agg.result()

    return observe("logs", str(target.root), fetch)
