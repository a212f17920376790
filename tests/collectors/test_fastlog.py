"""The compiled log scanner (collectors/fastlog.c) counts every line exactly as the pure-Python
parser does: on the recorded fixtures, on the mixed log of test_logs, and on thousands of talk-shape
lines mutated at random (brackets, `=`, colons, CR, tabs, non-ASCII, invalid UTF-8, cut lines)."""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import pytest

from collectors import fastlog, logs
from collectors.logs import Aggregator, parse_line
from tests.collectors.test_logs import FIX, _mixed_log

FIXTURES = ("talk_lines.log", "chatops_lines.log", "syslog.log", "redis.log", "logs_evil.log")
SEED_LINES = [l for n in FIXTURES for l in (FIX / n).read_bytes().split(b"\n") if l]
NOISE = [b"[", b"]", b"=", b" ", b":", b"\r", b"\t", b"-", b'"', b"\\", b"0", b"99", b"\xc3\xa9",
         b"\xff", b"Timed out", b"success", b"ECONNREFUSED", b"i/o timeout", b"Slow Consumer", b"x=y "]


def test_the_library_is_built():
    assert fastlog.AVAILABLE, fastlog.LOAD_ERROR


def _mutated_log(path: Path, n: int = 6000, seed: int = 11) -> None:
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        line = bytearray(rnd.choice(SEED_LINES))
        for _ in range(rnd.randint(0, 3)):
            at = rnd.randint(0, len(line))
            op = rnd.random()
            if op < 0.5:
                line[at:at] = rnd.choice(NOISE)
            elif op < 0.8:
                del line[at:at + rnd.randint(1, 4)]
            else:
                line = line[:at]
        out.append(bytes(line))
    out.append(b"Feb 18 06:59:01 s: " + "é".encode() * (3 * logs.MAX_LINE))    # longer than add_file holds
    out.append(b"Feb 18 06:59:01 s: " + b"y" * (5 * logs.MAX_LINE))
    path.write_bytes(b"\n".join(out) + b"\n" + b"Feb 18 06:59:02 last: [x] no newline Timed out")


def _reference(path: Path, **kw) -> logs.LogSummary:
    """Every line through parse_line on its own: the definition the scanner must meet."""
    pieces = path.read_bytes().split(b"\n")
    if pieces and pieces[-1] == b"":
        pieces.pop()
    agg = Aggregator(fast=False, **kw)
    for piece in pieces:
        agg.summary.lines += 1
        agg._add_slow(logs.decode(piece))
    return agg.result()


def _counts(summary: logs.LogSummary) -> list[tuple]:
    return [(g.window, g.service, g.remote, g.kind, g.count) for g in summary.groups]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("fastlog")
    mixed, mutated = root / "mixed.log", root / "mutated.log"
    _mixed_log(mixed)
    _mutated_log(mutated)
    return [FIX / n for n in FIXTURES] + [mixed, mutated]


@pytest.mark.parametrize("window_s", [60, 7, 3600])
@pytest.mark.parametrize("chunk", [1 << 22, 4096, 7])
def test_scanner_counts_like_the_parser(corpus, window_s, chunk):
    for path in corpus:
        want = _reference(path, window_s=window_s, examples=2)
        agg = Aggregator(window_s=window_s, examples=2)
        agg.add_file(path, chunk=chunk)
        got = agg.result()
        assert _counts(got) == _counts(want), path.name
        assert (got.lines, got.parsed, got.unparsed, got.empty, got.cut) == \
            (want.lines, want.parsed, want.unparsed, want.empty, want.cut), path.name
        for g in got.groups:
            assert 1 <= len(g.examples) <= 2
            for example in g.examples:
                ev = parse_line(example)
                assert (ev.service, ev.remote, ev.kind) == (g.service, g.remote, g.kind), example


def test_full_scanner_buffers_resume_where_they_stopped(corpus):
    """With room for 2 groups and 2 slow lines per call, the scanner stops early again and again;
    add_bytes must carry on from where it stopped without losing or doubling a line."""
    for path in corpus:
        want = _reference(path, window_s=60, examples=3)
        agg = Aggregator(window_s=60, examples=3)
        agg._scanner = fastlog.Scanner(max_groups=2, max_slow=2)
        agg.add_file(path)
        got = agg.result()
        assert _counts(got) == _counts(want), path.name
        assert (got.lines, got.unparsed, got.empty) == (want.lines, want.unparsed, want.empty)


def test_since_cuts_at_the_line_not_the_window(corpus):
    mixed = corpus[-2]
    now = time.mktime((2014, 2, 18, 9, 0, 0, 0, 0, -1))
    inside = now - (3600 + 49 * 60 + 43)        # 07:10:17, within the mixed log's half hour
    for since in (inside, now - 60, now - 10 * 3600):
        want = _reference(mixed, window_s=300, since_epoch=since, now=now)
        agg = Aggregator(window_s=300, since_epoch=since, now=now)
        agg.add_file(mixed)
        got = agg.result()
        assert _counts(got) == _counts(want)
        assert got.skipped_before_since == want.skipped_before_since
        if since == inside:
            assert 0 < want.skipped_before_since < want.parsed


def test_scan_reports_groups_and_slow_lines():
    data = (b"Feb 18 06:54:04 tmi_edge: [clue] Timed out (after 5s) while writing request for: privmsg\n"
            b"Feb 18 06:54:09 tmi_edge: [clue] Timed out (after 5s) while writing request for: privmsg\n"
            b"Feb 18 06:54:10 chat_clue: WARNING:tornado.general:Connect error on fd 10: ECONNREFUSED\n"
            b"<30>Feb 18 06:54:11 chat1 haproxy[12]: [WARNING] Server be/redis1 is DOWN\n"
            b"Feb 18 06:54:12 tmi_edge: [clue] half a line")
    scan = fastlog.Scanner().scan(data, examples=1, window_s=60)
    assert scan.lines == 4 and scan.end == data.rindex(b"\n") + 1
    assert [(g.service, g.remote, g.kind, g.count, g.start, g.clock) for g in scan.groups] == [
        ("tmi_edge", "clue", "timeout", 2, 6 * 3600 + 54 * 60, "06:54:04"),
        ("chat_clue", None, "connection_refused", 1, 6 * 3600 + 54 * 60, "06:54:10")]
    assert scan.groups[0].examples == [data.split(b"\n")[0].decode()]
    assert scan.slow == [data.split(b"\n")[3]]
    with pytest.raises(ValueError):
        fastlog.Scanner().scan(data, 5, 2)


def test_inspect_counts_agree_by_kind(corpus):
    """The same totals per (service, remote, kind) as parse_line over each line, with no windows."""
    for path in corpus:
        by_parse: Counter = Counter()
        for piece in path.read_bytes().split(b"\n"):
            ev = parse_line(logs.decode(piece))
            if ev is not None:
                by_parse[(ev.service, ev.remote, ev.kind)] += 1
        agg = Aggregator(window_s=86400)
        agg.add_file(path)
        got: Counter = Counter()
        for g in agg.result().groups:
            got[(g.service, g.remote, g.kind)] += g.count
        assert got == by_parse, path.name
