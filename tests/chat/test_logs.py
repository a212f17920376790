"""The talk's log-line shape, written by every service."""

import io
import logging
import re
import time

from chat import logs

TALK = re.compile(r"^[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d (?P<service>[\w-]+): \[(?P<remote>[^\]]+)\] (?P<event>.*)$")


def test_talk_line_round_trips_the_seed_example():
    when = time.mktime((2014, 2, 18, 6, 54, 4, 0, 0, -1))
    line = logs.format_line("tmi_edge", "clue", "Timed out (after 5s) while writing request for: privmsg", when=when)
    assert line == "Feb 18 06:54:04 tmi_edge: [clue] Timed out (after 5s) while writing request for: privmsg"


def test_fields_are_quoted_and_cannot_forge_lines():
    line = logs.format_line("supervisor", "redis-shard0", "restarted", {"pid": 12, "why": "a b=c", "evil": "x\nFeb 18 forged: [x] y"})
    assert "\n" not in line
    m = TALK.match(line)
    assert m and m["service"] == "supervisor" and m["remote"] == "redis-shard0"
    assert 'pid=12 why="a b=c" evil="x\\nFeb 18 forged: [x] y"' in line


def test_logger_setup_writes_talk_lines():
    buf = io.StringIO()
    log = logs.setup("supervisor", buf)
    logs.event(log, "haproxy-chat1", "exited with code 139", logging.WARNING, restart=2)
    log.info("plain message")
    lines = buf.getvalue().splitlines()
    assert TALK.match(lines[0])["event"] == "exited with code 139 level=warning restart=2"
    assert TALK.match(lines[1])["remote"] == "-"
