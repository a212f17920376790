"""The compiled CLIENT LIST scanner (collectors/clientscan.c) gives `clients.summarize` the same
aggregate as the pure-Python parser and aggregation (parse_client_list + aggregate_clients, the
fallback): on the replies recorded from Redis 7.0.15 (tests/fixtures/redis/, see its README), on
3,000 generated clients, on hostile variants, and on lines mutated at random."""

from __future__ import annotations

import random

import pytest

from collectors import clients, clientscan
from tests.collectors.test_clients import _generated_client_list, fixture

HOSTS = {"127.213.134.1": "chat1", "127.213.134.2": "chat2", "127.213.134.9": "chat-testing", "::1": "local6"}
CLUSTERS = {"chat1": "main", "chat2": "main", "chat-testing": "testing"}
SETTINGS = ({}, {"top_n": 0}, {"top_n": 1}, {"top_n": 500, "top_commands": 2},
            {"idle_after": 60, "long_idle": 600, "top_n": 3000}, {"idle_after": 0.5, "long_idle": 3},
            {"idle_after": float("nan")}, {"idle_after": -1e300, "long_idle": 1e300})
LINE = (b"id=7 addr=127.213.134.9:40071 laddr=127.213.134.21:6379 fd=9 name=w age=%s idle=%s flags=N db=0 "
        b"sub=0 psub=0 ssub=0 multi=-1 qbuf=0 qbuf-free=4 argv-mem=0 multi-mem=0 rbs=1024 rbp=0 obl=0 "
        b"oll=0 omem=0 tot-mem=1800 events=r cmd=get user=default redir=-1 resp=2")


def both(raw: bytes, regex_too: bool = True, **kw) -> dict:
    """The compiled aggregate of raw, checked equal to the Python per-line path's (the definition)
    and, unless regex_too is False, to the Python default (its one-regex path when the reply fits).
    slow_path says only which parser the Python side took, so it is left out."""
    c = clients.summarize(raw, HOSTS, CLUSTERS.get, compiled=True, **kw)
    c.pop("slow_path")
    ref = clients.aggregate_clients(clients.parse_client_list(raw, per_line=True), HOSTS, CLUSTERS.get, **kw)
    ref.pop("slow_path")
    assert c == ref, kw
    if regex_too:
        py = clients.summarize(raw, HOSTS, CLUSTERS.get, compiled=False, **kw)
        py.pop("slow_path")
        assert c == py, kw
    return c


def test_the_library_is_built():
    assert clientscan.AVAILABLE, clientscan.LOAD_ERROR


@pytest.mark.parametrize("name", ["client_list.txt", "client_list_evil.txt", "client_list_secrets.txt"])
def test_recorded_replies(name):
    for kw in SETTINGS:
        both(fixture(name), **kw)


def test_recorded_reply_figures():
    agg = both(fixture("client_list.txt"), top_n=3)
    by = {h["host"]: h for h in agg["by_host"]}
    assert agg["total"] == agg["lines"] == 8 and agg["skipped_lines"] == 0
    assert by["chat-testing"]["count"] == 4 and by["chat1"]["unused"] == 2
    assert dict(by["chat1"]["top_commands"]) == {"client|setname": 2, "get": 1}
    assert [c["name"] for c in agg["most_idle"]][:1] and agg["most_idle"][0]["laddr"] == "127.213.134.21:6379"


def test_3000_generated_clients():
    # 3,000 rather than test_clients' 10,000: three paths and eight settings, and the suite's time counts.
    raw = _generated_client_list(3000)
    for kw in SETTINGS:
        agg = both(raw, **kw)
        assert agg["total"] == 3000


def test_hostile_lines():
    good = LINE % (b"700", b"650")
    cases = {
        "truncated": good[:60],
        "no addr": good.replace(b"addr=127.213.134.9:40071 ", b""),
        "no age": good.replace(b" age=700", b""),
        "no idle": good.replace(b" idle=650", b""),
        "no port": good.replace(b":40071", b""),
        "empty ip": good.replace(b"127.213.134.9:40071", b":40071"),
        "port not digits": good.replace(b":40071", b":4oo71"),
        "19-digit idle": LINE % (b"700", b"9" * 19),
        "4,400-digit age": LINE % (b"9" * 4400, b"1"),
        "negative idle": LINE % (b"700", b"-5"),
        "superscript two": LINE % (b"700", "\u00b2".encode()),
        "arabic digits": LINE % (b"700", "\u0661\u0662".encode()),
        "empty age at the end": good + b" age=",        # a key twice: see below
        "tab before a field": good.replace(b" flags=N", b"\tflags=N"),     # idle is "650\tflags=N"
    }
    for what, line in cases.items():
        agg = both(good + b"\n" + line + b"\n", regex_too=what != "empty age at the end", top_n=5)
        assert (agg["total"], agg["skipped_lines"]) == (1, 1), what
    usable = {
        "18-digit idle": LINE % (b"9" * 18, b"9" * 18),
        "leading zeros": LINE % (b"0007", b"0003"),
        "IPv6": good.replace(b"127.213.134.9:40071", b"[::1]:5000"),
        # Redis 7 names take any of '!'..'~' (CLIENT SETNAME refuses spaces and newlines only), so a
        # name may look like another field: it is still the name, split on its first '='.
        "name like addr": good.replace(b"name=w", b"name=addr=10.9.9.9:1"),
        "name like idle": good.replace(b"name=w", b"name=idle=99999"),
        "CRLF": good + b"\r",
        "non-ASCII name": good.replace(b"name=w", "name=caf\u00e9\xff".encode("utf-8", "surrogateescape")),
        "non-ASCII cmd": good.replace(b"cmd=get", b"cmd=g\xc3\xa9t\xff"),
        "non-ASCII ip": good.replace(b"127.213.134.9", "h\u00f4te".encode()),
        "NUL inside": good.replace(b"flags=N", b"flags=\x00N"),
        "no cmd": good.replace(b" cmd=get", b""),
        "unknown fields": good + b" lib-name=redis-py lib-ver=5.0.1 io-thread=0",
    }
    for what, line in usable.items():
        agg = both(good + b"\n" + line + b"\n", top_n=5)
        assert (agg["total"], agg["skipped_lines"]) == (2, 0), what
    ipv6 = both(usable["IPv6"] + b"\n")
    assert ipv6["by_host"][0]["host"] == "local6" and ipv6["by_host"][0]["addresses"] == ["::1"]
    named = both(usable["name like addr"] + b"\n", top_n=1)
    assert named["by_host"][0]["host"] == "chat-testing"
    assert named["most_idle"][0]["name"] == "addr=10.9.9.9:1"
    # Redis never repeats a key; the per-line definition keeps the last value, which the one-regex
    # Python path does not check, so only the definition is compared here.
    twice = both(good + b" idle=999999\n", regex_too=False, top_n=1)
    assert twice["most_idle"][0]["idle"] == 999999 and twice["by_host"][0]["max_idle_s"] == 999999
    assert both(b"")["total"] == 0 and both(b"\r\n\n\r\r\n")["lines"] == 0


def test_mutated_lines():
    """Recorded lines cut, spliced and sprinkled with the characters that matter to the split."""
    rnd = random.Random(18)
    seeds = [line for n in ("client_list.txt", "client_list_evil.txt")
             for line in fixture(n).split(b"\n") if line]
    noise = [b" ", b"=", b":", b"[", b"]", b"\r", b"\n", b"addr=", b"age=", b"idle=", b"cmd=", b"9" * 19,
             b"\xc3\xa9", b"\xff", b"\x00", b"0", b"127.0.0.1:1"]
    out = []
    for _ in range(3000):
        line = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randint(0, 3)):
            at = rnd.randint(0, len(line))
            if rnd.random() < 0.6:
                line[at:at] = rnd.choice(noise)
            else:
                del line[at:at + rnd.randint(1, 8)]
        out.append(bytes(line))
    raw = b"\n".join(out)
    for kw in ({}, {"top_n": 50, "idle_after": 3, "long_idle": 100}):
        both(raw, **kw)


def test_10_mb_of_garbage():
    rnd = random.Random(5)
    garbage = rnd.randbytes(10 * 1024 * 1024)
    agg = both(garbage, top_n=5)
    assert agg["total"] == 0 and agg["skipped_lines"] == agg["lines"] > 10_000
    # Garbage made of the very tokens: many distinct IPs and commands, more rows than the first
    # buffers hold, so the scanner asks for more and rescans.
    lines = [b"addr=%d.%d:%d age=%d idle=%d cmd=c%d" % (i, i % 7, i, i % 50, i % 40, i % 300)
             for i in range(20_000)]
    agg = both(b"\n".join(lines), top_n=20, idle_after=10, long_idle=30)
    assert agg["total"] == 20_000 and len(agg["by_host"]) == 20_000
