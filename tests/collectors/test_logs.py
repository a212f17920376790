"""collectors.logs on recorded lines: the talk's, this project's services', HAProxy's syslog and
Redis's own, plus a hostile variant; the Follower on real files; `chatops inspect logs --json`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from chat.logs import format_line
from collectors import logs
from collectors.logs import Aggregator, Follower, Tail, collect, parse_line, read_file_lines, target_for

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "logs"
REPO = Path(__file__).resolve().parents[2]


def fixture_lines(name: str) -> list[str]:
    return (FIX / name).read_bytes().decode("utf-8", errors="replace").split("\n")


# -- the talk -------------------------------------------------------------------------------------

# talk_lines.log holds every log line quoted in the talk (seeds/000_...txt), in order. On the
# slides the edge's timeout lines wrap after "request for:" and "privmsg" sits alone on the next
# line, and clue's lines wrap after "fd N:" with "ECONNREFUSED" below: the fixture joins each
# wrapped pair with one space (the line as the service wrote it), trailing spaces stripped.
TIMEOUT = ("clue", "timeout", "Timed out (after 5s) while writing request for: privmsg")
EXPECTED_TALK = (
    [("tmi_edge", *TIMEOUT), ("tmi_edge", "clue", "message_sent", "Message successfully sent to #degentp")]
    + [("tmi_edge", *TIMEOUT)] * 6
    + [("tmi_edge", "clue", "message_sent", "Message successfully sent to #paragusrants")]
    + [("chat_edge", *TIMEOUT)] * 5 + [("tmi_edge", *TIMEOUT)]
    + [("chat_clue", None, "connection_refused", f"WARNING:tornado.general:Connect error on fd {fd}: ECONNREFUSED")
       for fd in (10, 15, 9, 18)]
    + [("exchange", "exchange", "io_timeout", "i/o timeout"), ("exchange", "exchange", "success", "Exchange success")]
    + [("exchange", "exchange", "io_timeout", "i/o timeout")] * 7
    + [("exchange", "exchange", "success", "Exchange success")]
)


def test_every_talk_line_parses_to_its_event():
    lines = [l for l in fixture_lines("talk_lines.log") if l]
    assert len(lines) == len(EXPECTED_TALK) == 29
    for line, (service, remote, kind, message) in zip(lines, EXPECTED_TALK):
        ev = parse_line(line)
        assert ev is not None, line
        assert (ev.service, ev.remote, ev.kind, ev.message, ev.fields) == (service, remote, kind, message, {})
        assert ev.month == 2 and ev.day in (18, 19) and ev.host is None and ev.shape == "talk"


def test_talk_line_time_and_year():
    ev = parse_line("Feb 18 06:54:04 tmi_edge: [clue] Timed out (after 5s) while writing request for: privmsg")
    assert (ev.month, ev.day, ev.clock) == (2, 18, "06:54:04")
    now = time.mktime((2014, 3, 1, 12, 0, 0, 0, 0, -1))
    assert time.localtime(ev.timestamp(now))[:6] == (2014, 2, 18, 6, 54, 4)
    # A December line read on Jan 2 is last year's, not eleven months in the future.
    dec = parse_line("Dec 31 23:59:59 exchange: [exchange] i/o timeout")
    jan = time.mktime((2015, 1, 2, 0, 0, 0, 0, 0, -1))
    assert time.localtime(dec.timestamp(jan))[:3] == (2014, 12, 31)
    # ...while a line from tomorrow (clock skew) stays in this year.
    tomorrow = parse_line("Jan 02 12:00:01 exchange: [exchange] i/o timeout")
    assert time.localtime(tomorrow.timestamp(jan))[0] == 2015


def test_the_wrapped_slide_form_alone_is_not_an_event():
    # The slide's second line on its own is counted as unparsed, never silently dropped.
    agg = Aggregator()
    agg.add_lines(["Feb 18 06:54:04 tmi_edge: [clue] Timed out (after 5s) while writing request for:", "privmsg"])
    s = agg.result()
    assert (s.parsed, s.unparsed, s.unparsed_samples) == (1, 1, ["privmsg"])
    assert s.groups[0].kind == "timeout"


# -- this project's lines -------------------------------------------------------------------------

def test_real_chatops_lines_parse():
    lines = [l for l in fixture_lines("chatops_lines.log") if l]
    events = [parse_line(l) for l in lines]
    assert all(events), [l for l, e in zip(lines, events) if e is None]
    by = Counter((e.service, e.remote, e.kind) for e in events)
    assert by[("tmi_edge", "clue", "message_sent")] == 2
    assert by[("exchange", "exchange", "success")] == 2
    assert by[("chat_clue", "redis", "timeout")] == 3
    listening = events[0]
    assert (listening.service, listening.remote, listening.message) == ("tmi_edge", None, "listening")
    assert listening.fields == {"irc": "127.210.150.1:16667", "ws": "127.210.150.1:18080",
                                "http": "127.210.150.1:17080"}
    sent = events[2]
    assert (sent.message, sent.fields) == ("Message successfully sent to #lobby", {"messages": "26"})
    clue = next(e for e in events if e.kind == "timeout")
    assert clue.fields["level"] == "warning" and clue.level == "warning"
    assert clue.message == "Timed out (after 100ms) on shard0 (127.210.150.1:2000) waiting for: pipeline"


def test_format_line_round_trip_with_quoted_fields():
    nasty = {"error": 'refused "x" a=b', "path": "C:\\tmp\\x", "multi": "a\nb\rc", "empty": "", "plain": "42"}
    line = format_line("exchange", "exchange", "delivery failed: [edge] said no", nasty, when=0)
    ev = parse_line(line)
    assert ev.service == "exchange" and ev.remote == "exchange"
    assert ev.message == "delivery failed: [edge] said no"
    assert ev.fields == nasty
    # format_line does not quote the event, so an event ending in `key=value` words reads as
    # fields: the first `key=` from which the rest is all fields starts them.
    ev = parse_line(format_line("exchange", "exchange", "said a=b", {"k": "v w"}, when=0))
    assert (ev.message, ev.fields) == ("said", {"a": "b", "k": "v w"})
    assert parse_line(format_line("edge", None, "x", {"k": "v"}, when=0)).remote is None


# -- syslog, haproxy, redis -----------------------------------------------------------------------

def test_haproxy_syslog_and_bare_lines():
    lines = [l for l in fixture_lines("syslog.log") if l]
    events = [parse_line(l) for l in lines]
    assert all(events), [l for l, e in zip(lines, events) if e is None]
    sys_ev = [e for e in events if e.shape == "syslog"]
    bare = [e for e in events if e.shape == "haproxy"]
    assert sys_ev and bare and len(sys_ev) + len(bare) == len(lines)
    down = next(e for e in sys_ev if "is DOWN" in e.message)
    assert (down.host, down.service, down.pid, down.kind, down.level) == ("chat1", "haproxy", 8328,
                                                                         "connection_refused", "alert")
    assert down.message.startswith("Server be_edge_main/chat1 is DOWN, reason: Layer4")
    warn = next(e for e in bare if e.level == "warning")
    assert warn.pid == 8328 and warn.month is None and warn.timestamp() is None
    # RFC 3164 without PRI, the day space-padded.
    ev = parse_line("Nov  7 13:23:30 chat1 haproxy[1518]: Server be_edge_ws_main/chat2 is DOWN")
    assert (ev.day, ev.host, ev.service, ev.pid, ev.level) == (7, "chat1", "haproxy", 1518, None)
    ev = parse_line("<129>Nov 27 13:23:30 chat1 haproxy[1518]: Server be_edge_ws_main/chat2 is DOWN, x")
    assert (ev.host, ev.pid, ev.level, ev.message) == ("chat1", 1518, "alert", "Server be_edge_ws_main/chat2 is DOWN, x")


def test_redis_log_lines():
    lines = [l for l in fixture_lines("redis.log") if l]
    events = [parse_line(l) for l in lines]
    assert all(events)
    assert {e.service for e in events} == {"redis"}
    assert events[0].year == 2026 and events[-1].message == "Ready to accept connections"


# -- hostile input --------------------------------------------------------------------------------

def test_evil_lines_never_crash_and_are_counted():
    raw = (FIX / "logs_evil.log").read_bytes()
    for piece in raw.split(b"\n"):
        parse_line(piece.decode("utf-8", errors="replace"))       # never raises
    agg = Aggregator(samples=50)
    for batch in read_file_lines(FIX / "logs_evil.log", chunk=4096):
        agg.add_lines(batch)
    s = agg.result()
    assert s.lines == raw.count(b"\n") + 1
    assert s.parsed + s.unparsed + s.empty == s.lines
    assert s.empty == 3 and s.unparsed >= 12 and s.cut == 1
    assert "privmsg" in s.unparsed_samples and "Feb 18 06:54" in s.unparsed_samples
    assert any("\ufffd" in sample for sample in s.unparsed_samples)     # bad byte in the time
    bad_utf8 = parse_line(raw.split(b"\n")[2].decode("utf-8", errors="replace"))
    assert bad_utf8.kind == "message_sent" and "\ufffd" in bad_utf8.message
    no_bracket = parse_line("Feb 18 06:54:04 tmi_edge: clue] Timed out (after 5s)")
    assert (no_bracket.remote, no_bracket.kind) == (None, "timeout")
    brackets = parse_line("Feb 18 06:54:04 tmi_edge: [clue] got [weird] reply [x] a=[b] c=]")
    assert (brackets.remote, brackets.message, brackets.fields) == ("clue", "got [weird] reply [x]",
                                                                     {"a": "[b]", "c": "]"})
    unterminated = parse_line('Feb 18 06:54:04 tmi_edge: [clue] oops x="abc def')
    assert unterminated.fields == {"x": "\"abc def"} and unterminated.message == "oops"


def test_fast_path_agrees_with_parse_line():
    lines = []
    for name in ("talk_lines.log", "chatops_lines.log", "syslog.log", "redis.log", "logs_evil.log"):
        lines += fixture_lines(name)
    lines += ['Feb 18 06:54:04 a=b: c=d', 'Feb 18 06:54:04 x=y: z=w', 'Feb 18 06:54:04 s: [a x=y] z=w',
              'Feb 18 06:54:04 s: Timed out a=b', 'Feb 18 06:54:04 s: ok a=b Timed out']
    agg = Aggregator(window_s=86400, examples=1)
    agg.add_lines(lines)
    fast: Counter = Counter()
    for g in agg.result().groups:
        fast[(g.service, g.remote, g.kind)] += g.count
    slow: Counter = Counter()
    for l in lines:
        ev = parse_line(l)
        if ev is not None:
            slow[(ev.service, ev.remote, ev.kind)] += 1
    assert fast == slow


# -- Follower -------------------------------------------------------------------------------------

def test_follower_incremental_partial_and_restart(tmp_path):
    log, state = tmp_path / "edge.log", tmp_path / "edge.state"
    f = Follower(log, state)
    assert f.read_lines() == []                       # no file yet
    with open(log, "ab") as w:
        w.write(b"one\ntwo\nthr")
    assert f.read_lines() == ["one", "two"]
    assert f.read_lines() == []
    with open(log, "ab") as w:
        w.write(b"ee\nfour\n")
    assert f.read_lines() == ["three", "four"]
    f.close()
    saved = json.loads(state.read_text())
    assert saved["offset"] == log.stat().st_size and saved["inode"] == log.stat().st_ino
    with open(log, "ab") as w:
        w.write(b"five\n")
    g = Follower(log, state)                          # a restart resumes from the saved offset
    assert g.read_lines() == ["five"]
    g.close()


def test_follower_bounded_reads_and_invalid_utf8(tmp_path):
    log = tmp_path / "x.log"
    log.write_bytes(b"".join(b"line %d \xff\n" % i for i in range(1000)))
    f = Follower(log, max_bytes=1000)
    got, calls = [], 0
    while True:
        batch = f.read_lines()
        if not batch:
            break
        calls += 1
        got += batch
    assert calls > 10 and got == [f"line {i} \ufffd" for i in range(1000)]
    log.write_bytes(b"y" * 5000 + b"\n")
    f2 = Follower(log, max_bytes=1000)
    pieces = f2.read_lines() + f2.read_lines() + f2.read_lines() + f2.read_lines() + f2.read_lines() + f2.read_lines()
    assert "".join(pieces) == "y" * 5000 and f2.oversized >= 4
    f.close(), f2.close()


def test_follower_truncation(tmp_path):
    log = tmp_path / "x.log"
    log.write_bytes(b"aaaa\nbbbb\ncccc\n")
    f = Follower(log, tmp_path / "state")
    assert f.read_lines() == ["aaaa", "bbbb", "cccc"]
    log.write_bytes(b"dd\n")                          # truncated and rewritten, smaller
    assert f.read_lines() == ["dd"] and f.truncations == 1
    with open(log, "r+b") as w:                        # rewritten from 0, same size or larger
        w.truncate(0)
        w.write(b"XXXXXXXX\nyy\n")
    assert f.read_lines() == ["XXXXXXXX", "yy"] and f.truncations == 2
    f.close()
    # A restart on a replaced file (head fingerprint differs) starts over as well.
    log.write_bytes(b"new file with more bytes than before\n")
    g = Follower(log, tmp_path / "state")
    assert g.read_lines() == ["new file with more bytes than before"]
    g.close()


def test_follower_rotation_loses_no_line(tmp_path):
    log = tmp_path / "edge.log"
    f = Follower(log, tmp_path / "state", max_bytes=4096)
    seen: list[str] = []
    w = open(log, "ab")
    n = 0
    for rotation in range(5):
        for _ in range(300):
            w.write(b"line %06d\n" % n)
            n += 1
            if n % 97 == 0:
                w.flush()
                seen += f.read_lines()
        w.write(b"unterminated %d" % rotation)       # the old file's last line has no newline
        w.flush()
        seen += f.read_lines()
        w.close()
        os.rename(log, tmp_path / f"edge.log.{rotation}")
        w = open(log, "ab")                             # the writer reopens its log
        for _ in range(5):
            w.write(b"line %06d\n" % n)
            n += 1
        w.flush()
    w.close()
    for _ in range(20):
        seen += f.read_lines()
    expected = sorted([f"line {i:06d}" for i in range(n)] + [f"unterminated {r}" for r in range(5)])
    assert sorted(seen) == expected                    # every line exactly once
    assert len(seen) == len(set(seen))
    assert f.rotations == 5
    f.close()


# -- collect and the CLI --------------------------------------------------------------------------

def _fake_run_dir(root: Path) -> None:
    (root / "logs").mkdir(parents=True)
    shutil.copy(FIX / "talk_lines.log", root / "logs" / "edge-chat1.log")
    shutil.copy(FIX / "syslog.log", root / "logs" / "haproxy-chat1.log")
    shutil.copy(FIX / "logs_evil.log", root / "logs" / "clue-chat1.log")
    now = time.time()
    with open(root / "logs" / "exchange-chat1.log", "w") as w:
        w.write(format_line("exchange", "exchange", "i/o timeout", {"edge": "chat1"}, when=now - 30) + "\n")
        w.write(format_line("exchange", "exchange", "Exchange success", {"edge": "chat1", "messages": 3},
                            when=now - 3600) + "\n")


def test_collect_observation(tmp_path):
    _fake_run_dir(tmp_path)
    obs = collect(target_for(tmp_path))
    assert (obs.source, obs.target, obs.up) == ("logs", str(tmp_path), True)
    s = obs.data
    assert s.files["edge-chat1.log"] == {"lines": 29, "parsed": 29, "unparsed": 0}
    assert s.unparsed > 0 and s.unparsed_samples
    only = collect(target_for(tmp_path, services=["exchange"], since_s=300)).data
    assert [(t["service"], t["kind"], t["count"]) for t in only.totals()] == [("exchange", "io_timeout", 1)]
    assert only.skipped_before_since == 1
    by_stem = collect(target_for(tmp_path, services=["exchange-chat1"])).data
    assert by_stem.files.keys() == {"exchange-chat1.log"}
    missing = collect(target_for(tmp_path / "nope"))
    assert not missing.up and "no logs directory" in missing.error
    json.dumps(obs.as_dict())


def test_collect_is_a_tail_read_once(tmp_path):
    """One pipeline: the one-shot collect and a Tail kept across appends count the same lines,
    the Tail only what is new at each read, and each file on its own."""
    _fake_run_dir(tmp_path)
    once = collect(target_for(tmp_path, window_s=86400)).data
    tail = Tail(target_for(tmp_path, window_s=86400))
    reads = {r.name: r for r in tail.read()}
    assert all(r.first and r.error is None for r in reads.values())
    # clue-chat1.log (logs_evil.log) ends without a newline: a live tail waits for it, collect
    # (a final read of files nobody writes any more) counts it.
    tail_files = {n: {"lines": r.lines, "parsed": r.parsed, "unparsed": r.unparsed} for n, r in reads.items()}
    assert tail_files["clue-chat1.log"]["lines"] == once.files["clue-chat1.log"]["lines"] - 1
    tail_files["clue-chat1.log"] = once.files["clue-chat1.log"]
    assert tail_files == once.files
    final = Tail(target_for(tmp_path, window_s=86400))
    by_kind: Counter = Counter()
    for r in final.read(final=True):
        for g in r.summary.groups:
            by_kind[(g.service, g.remote, g.kind)] += g.count
    final.close()
    assert by_kind == Counter({(t["service"], t["remote"], t["kind"]): t["count"] for t in once.totals()})
    with open(tmp_path / "logs" / "edge-chat1.log", "a") as w:
        w.write(format_line("tmi_edge", "clue", "Timed out (after 5s)", None, when=time.time()) + "\n")
    again = {r.name: r for r in tail.read()}
    assert not again["edge-chat1.log"].first and again["edge-chat1.log"].lines == 1
    assert [(g.service, g.kind, g.count) for g in again["edge-chat1.log"].summary.groups] == [
        ("tmi_edge", "timeout", 1)]
    assert again["exchange-chat1.log"].lines == 0
    tail.close()


def test_tail_first_read_and_a_giant_line(tmp_path):
    """A Tail meeting a big file reads only its last bytes; a line far longer than anything a log
    should hold is counted once, cut, not held whole nor split into many lines."""
    logs_dir = tmp_path / "logs"
    logs_dir.mkdir()
    line = format_line("exchange", "exchange", "i/o timeout", None, when=time.time()) + "\n"
    (logs_dir / "exchange-chat1.log").write_text(line * 20_000)
    tail = Tail(target_for(tmp_path, first_read=10_000, max_bytes=1 << 20))
    [first] = tail.read()
    assert first.first and 0 < first.lines <= 10_000 // len(line) + 1
    with open(logs_dir / "exchange-chat1.log", "a") as w:
        w.write("Feb 18 06:54:04 s: " + "y" * (3 << 20) + "\n" + line)
    lines = cut = 0
    for _ in range(5):
        for r in tail.read():
            lines += r.lines
            cut += r.summary.cut
    assert (lines, cut) == (2, 1)
    tail.close()
    once = collect(target_for(tmp_path)).data
    assert once.lines == 20_002 and once.cut == 1


def test_inspect_logs_json(tmp_path):
    _fake_run_dir(tmp_path)
    out = subprocess.run([sys.executable, "-m", "controlplane.cli", "inspect", "logs", "--run-dir",
                          str(tmp_path), "--json"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    rows = {(r["service"], r["remote"], r["kind"]): r for r in doc["groups"]}
    assert rows[("tmi_edge", "clue", "timeout")]["count"] == 8 + 3   # talk_lines.log, and 3 in logs_evil.log
    assert rows[("chat_clue", None, "connection_refused")]["example"].endswith("ECONNREFUSED")
    assert doc["unparsed"] > 0 and doc["unparsed_samples"]
    out = subprocess.run([sys.executable, "-m", "controlplane.cli", "inspect", "logs", "--run-dir",
                          str(tmp_path), "--service", "exchange", "--since", "5m"],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "io_timeout" in out.stdout and "success" not in out.stdout
    bad = subprocess.run([sys.executable, "-m", "controlplane.cli", "inspect", "logs", "--run-dir",
                          str(tmp_path), "--since", "soon"], capture_output=True, text=True, cwd=REPO,
                         timeout=60)
    assert bad.returncode != 0 and "duration" in bad.stderr


def _mixed_log(path: Path, n: int = 3000, seed: int = 7) -> bytes:
    """Talk-shaped lines over several minutes (fields, quoted values, events that look like
    fields), the syslog/redis/evil fixtures' lines, garbage, invalid UTF-8, CRLF and empty lines."""
    import random
    rnd = random.Random(seed)
    start = time.mktime((2014, 2, 18, 6, 58, 30, 0, 0, -1))
    extra = []
    for name in ("syslog.log", "redis.log", "talk_lines.log", "chatops_lines.log"):
        extra += [l for l in (FIX / name).read_bytes().split(b"\n") if l]
    extra += [b"privmsg", b"", b"   ", b"\xff\xfe garbage \x80", b"Feb 18 06:59:01 tmi_edge: [cl\xffue] Timed out",
              b"Feb 18 06:59:01 s: ok success", b"Feb 18 06:59:01 s: ok success=1", b"Feb 18 06:59:01 a=b: c=d",
              b"Feb 18 06:59:01 s: [a x=y] z=w", b"Feb 18 06:59:01 s: crlf Timed out\r", b"Feb 30 06:59:01 s: x=1",
              b"Feb 18 06:59:01 s: " + b"x" * (logs.MAX_LINE + 10)]
    events = [("tmi_edge", "clue", "Timed out (after 5s) while writing request for: privmsg", None),
              ("tmi_edge", "clue", "Message successfully sent to #room{}", {"messages": 3}),
              ("exchange", "exchange", "i/o timeout", {"edge": "chat{}", "level": "warning"}),
              ("chat_clue", None, "WARNING:tornado.general:Connect error on fd {}: ECONNREFUSED", None),
              ("chat_edge", "client", "Slow consumer disconnected", {"nick": 'v "{}"', "peer": "1.2.3.4:{}"}),
              ("exchange", "exchange", "said a=b", {"k": "v w {}"})]
    out = []
    for i in range(n):
        if rnd.random() < 0.2:
            out.append(rnd.choice(extra))
            continue
        service, remote, event, fields = rnd.choice(events)
        r = rnd.randint(0, 9)
        fields = {k: v.format(r) if isinstance(v, str) else v for k, v in (fields or {}).items()} or None
        out.append(format_line(service, remote, event.format(r), fields, start + i * 0.7).encode())
    # The last line has no "\n" and shares its text up to the "=" with a line that has fields.
    out.append(b"Feb 18 06:59:01 s: ok success=1")
    data = b"\n".join(out) + b"\nFeb 18 06:59:01 s: ok success"
    path.write_bytes(data)
    return data


@pytest.mark.parametrize("window_s", [60, 30, 3600])
def test_batched_aggregation_equals_line_by_line(tmp_path, window_s):
    """add_lines over read_file_lines batches (the fast path, as collect() runs it) gives exactly
    the per-(window, service, remote, kind) counts of parsing every line on its own."""
    files = [FIX / n for n in ("talk_lines.log", "chatops_lines.log", "syslog.log", "redis.log", "logs_evil.log")]
    mixed = tmp_path / "mixed.log"
    _mixed_log(mixed)
    files.append(mixed)
    for path in files:
        raw = path.read_bytes()
        pieces = raw.split(b"\n")
        if pieces and pieces[-1] == b"":
            pieces.pop()
        texts = [p.decode("utf-8", errors="replace") for p in pieces]
        ref = Aggregator(window_s=window_s, examples=2)
        for line in texts:
            ref.summary.lines += 1
            ref._add_slow(line)
        want = ref.result()
        by_parse: Counter = Counter()
        for line in texts:
            ev = parse_line(line)
            if ev is not None:
                by_parse[(ev.service, ev.remote, ev.kind)] += 1
        for chunk in (1 << 22, 4096, 1):
            agg = Aggregator(window_s=window_s, examples=2)
            for batch in read_file_lines(path, chunk=chunk):
                agg.add_lines(batch)
            got = agg.result()
            assert ([(g.window, g.service, g.remote, g.kind, g.count) for g in got.groups]
                    == [(g.window, g.service, g.remote, g.kind, g.count) for g in want.groups]), (path.name, chunk)
            assert (got.lines, got.parsed, got.unparsed, got.empty) == \
                (want.lines, want.parsed, want.unparsed, want.empty) == \
                (len(texts), sum(by_parse.values()), want.unparsed, want.empty), (path.name, chunk)
            assert got.parsed + got.unparsed + got.empty == got.lines
            fast: Counter = Counter()
            for g in got.groups:
                fast[(g.service, g.remote, g.kind)] += g.count
                assert 1 <= len(g.examples) <= 2
            assert fast == by_parse, (path.name, chunk)


def test_line_without_newline_and_its_fielded_twin():
    lines = ["Feb 18 06:59:01 s: ok success", "Feb 18 06:59:01 s: ok success=1"]
    for batch in (lines, lines[::-1], [lines[1] + "\n", lines[0]]):
        agg = Aggregator()
        agg.add_lines(batch)
        assert sorted((g.kind, g.count) for g in agg.result().groups) == [("other", 1), ("success", 1)]
