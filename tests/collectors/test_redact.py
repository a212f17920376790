"""collectors/redact.py: what the control plane keeps of Redis's own data, on a recorded Redis 7.0
slow log and CLIENT LIST carrying a chat token (tests/fixtures/redis/capture_secrets.py), and on
hostile variants Redis would not have redacted itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chat import keys
from chat.sharding import key_slot
from collectors import clients, redact
from collectors import redis as rc
from collectors.base import Observation
from collectors.resp import parse_resp

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "redis"
TOKEN = "5f0c4d1e9a8b7c6d5e4f3a2b1c0d9e"          # the token in the recordings
OLD_KEY = f"{{{TOKEN}}}.auth"


def recorded_slowlog() -> list[dict]:
    return rc.parse_slowlog(parse_resp((FIX / "slowlog_secrets.resp").read_bytes()))


def test_the_recording_holds_the_token_before_redaction():
    # The premise: the raw slow log and CLIENT LIST do show it (key names, ECHO, client names).
    assert TOKEN in json.dumps(recorded_slowlog())
    assert TOKEN.encode() in (FIX / "client_list_secrets.txt").read_bytes()


def test_recorded_slowlog_redacted():
    shown = redact.redis_data({"slowlog": recorded_slowlog()})["slowlog"]
    text = json.dumps(shown)
    assert TOKEN not in text and "args" not in text
    commands = [e["command"] for e in shown]
    digest_key = keys.token(TOKEN)
    assert f"GET {digest_key}" in commands                          # the digest is no secret
    assert "HSET {lobby}.bans <5 bytes> 0" in commands              # a login as a field: a value
    assert "SET {ronni}.color <300 bytes>" in commands              # Redis kept 128 of 300 bytes
    assert "SET <redacted {*}.auth> <5 bytes>" in commands
    assert "GET chatops:owned" in commands
    assert any(c.startswith("EVALSHA <40 bytes> 0 1 0 0 1 <redacted {*}.auth> 1 2 GET <redacted {*}.auth>")
               for c in commands)
    assert "ECHO <30 bytes>" in commands
    assert "AUTH <redacted>" in commands and "AUTH <redacted> <redacted>" in commands
    assert "HELLO 3 AUTH <redacted> <redacted>" in commands
    assert "CONFIG SET <redacted> <redacted>" in commands
    assert any(c.startswith("MIGRATE") and "AUTH2 <redacted> <redacted> KEYS <redacted {*}.auth>" in c
               for c in commands)
    assert {e["name"] for e in shown} == {"", redact.HIDDEN}        # `tok-<token>` as a client name


def test_recorded_client_list_redacted():
    agg = clients.aggregate_clients(clients.parse_client_list((FIX / "client_list_secrets.txt").read_bytes()),
                                    {}, lambda host: None, top_n=10)
    assert TOKEN in json.dumps(agg)
    shown = redact.clients_data(agg)
    assert TOKEN not in json.dumps(shown)
    assert sorted(c["name"] for c in shown["most_idle"]) == ["", redact.HIDDEN]
    assert sorted(c["cmd"] for c in shown["most_idle"]) == ["client|list", "get"]
    assert dict(shown["by_host"][0]["top_commands"]) == {"client|list": 1, "get": 1}


HOSTILE = [
    # (argv as a server that does not redact would log it, what is shown)
    (["AUTH", TOKEN], "AUTH <redacted>"),
    (["auth", "default", TOKEN], "auth <redacted> <redacted>"),
    (["HELLO", "3", "AUTH", "default", TOKEN, "SETNAME", "x"],
     "HELLO 3 AUTH <redacted> <redacted> SETNAME <1 bytes>"),
    (["MIGRATE", "127.0.0.1", "6380", "", "0", "100", "COPY", "AUTH", TOKEN, "KEYS", OLD_KEY],
     'MIGRATE <9 bytes> 6380 "" 0 100 COPY AUTH <redacted> <redacted> <redacted {*}.auth>'),
    (["MIGRATE", "h", "1", "", "0", "5", "AUTH2", "u", TOKEN, "KEYS", OLD_KEY],
     'MIGRATE <1 bytes> 1 "" 0 5 AUTH2 <redacted> <redacted> KEYS <redacted {*}.auth>'),
    (["ACL", "SETUSER", "clue", "on", f">{TOKEN}"], "ACL SETUSER <redacted> <redacted> <redacted>"),
    (["CONFIG", "SET", "requirepass", TOKEN], "CONFIG SET <redacted> <redacted>"),
    (["SET", OLD_KEY, "ronni"], "SET <redacted {*}.auth> <5 bytes>"),
    (["SET", "{ronni}.color", TOKEN, "EX", "60"], "SET {ronni}.color <30 bytes> EX 60"),
    (["SET", f"session:{TOKEN}", "1"], "SET <38 bytes> 1"),                # an unknown key: its size
    (["GET", TOKEN], "GET <30 bytes>"),
    (["GET", "12345678901234"], "GET <14 bytes>"),                  # long numbers are data too
    (["SET", "k", "v" * 128 + "... (9872 more bytes)"], "SET <1 bytes> <10000 bytes>"),
    (["MGET", *(["{a}.user"] * 31), "... (68 more arguments)"],
     "MGET " + "{a}.user " * 31 + "... (68 more arguments)"),
    ([f"{TOKEN}\r\nGET"], redact.HIDDEN),                           # not a command name
    ([b"GET", b"\xff\xfe" + TOKEN.encode()], "GET <32 bytes>"),
    ([], ""),
]


@pytest.mark.parametrize("argv, shown", HOSTILE)
def test_hostile_commands(argv, shown):
    assert redact.command(argv, limit=1000) == shown
    assert TOKEN not in redact.command(argv)


def test_long_commands_are_cut():
    assert len(redact.command(["MGET", *(["{a}.user"] * 40)])) == 200


@pytest.mark.parametrize("name, shown", [
    ("", ""), ("clue-busy", "clue-busy"), ("chatops-admin", "chatops-admin"), ("slowpoke", "slowpoke"),
    (TOKEN, redact.HIDDEN), (f"tok-{TOKEN}", redact.HIDDEN),
    ("abcdefghijklmnopqrstuvwxyzabcd", redact.HIDDEN),
    ("pw:hunter2hunter2", redact.HIDDEN), ("a" * 60, redact.HIDDEN), ("na\u00efve", redact.HIDDEN),
])
def test_client_names(name, shown):
    assert redact.client_name(name) == shown


def test_client_list_cmd_field():
    assert redact.command_name("client|list") == "client|list" and redact.command_name("NULL") == "NULL"
    assert redact.command_name(f"{TOKEN} x") == redact.HIDDEN


def test_hot_keys_keep_slot_and_kind_of_the_real_name():
    entries = [{"key": OLD_KEY, "freq": 200}, {"key": keys.token(TOKEN), "freq": 100},
               {"key": keys.bans("lobby"), "freq": 50}, {"key": f"session:{TOKEN}", "freq": 9},
               {"key": b"\xff" + TOKEN.encode(), "freq": 8}, {"key": None, "freq": 1}]
    shown = redact.redis_data({"hotkeys": {"skipped": None, "sampled": 6, "keys": entries}})["hotkeys"]
    assert TOKEN not in json.dumps(shown) and shown["sampled"] == 6
    old, digest, bans, other, binary, bad = shown["keys"]
    assert old == {"key": "<redacted {*}.auth>", "freq": 200, "slot": key_slot(OLD_KEY), "prefix": "{*}.auth"}
    assert digest == {"key": keys.token(TOKEN), "freq": 100, "slot": key_slot(keys.token(TOKEN)),
                      "prefix": "{*}.token_sha#"}
    assert bans["key"] == "{lobby}.bans" and bans["prefix"] == "{*}.bans"
    assert other["key"] == redact.HIDDEN and other["prefix"] is None
    assert binary["key"] == redact.HIDDEN and binary["slot"] == key_slot(b"\xff" + TOKEN.encode())
    assert bad == {"key": redact.HIDDEN, "freq": 1, "slot": None, "prefix": None}


def test_every_chat_key_shape_is_public_and_no_token_is():
    shapes = [keys.token(TOKEN), keys.user("ronni"), keys.color("ronni"), keys.room("lobby"),
              keys.mods("lobby"), keys.bans("lobby"), keys.ratelimits("lobby"),
              keys.user_counters("lobby", 59876543), keys.room_counter("lobby", 1795786974),
              "chatops:owned", "chatops:slotmap:epoch", "chatops:touched:16383"]
    for key in shapes:
        assert keys.public(key) and redact.key(key) == key, key
    assert TOKEN not in keys.token(TOKEN)
    for key in (OLD_KEY, TOKEN, f"{{{TOKEN}}}.user", "{lobby}.bans\n", "{Lobby}.bans", "chatops:x:" + TOKEN):
        assert not keys.public(key), key


def test_observation_redacts_only_redis_and_clients():
    data = {"slowlog": recorded_slowlog(), "hotkeys": {"keys": [{"key": OLD_KEY, "freq": 5}]}}
    obs = redact.observation(Observation("redis", "shard0", 0.0, True, 0.1, data))
    assert TOKEN not in json.dumps(obs.as_dict()) and obs.target == "shard0"
    assert TOKEN in json.dumps(data)                                # the input is not changed
    down = Observation("redis", "shard0", 0.0, False, 0.1, None, "ConnectionRefusedError")
    assert redact.observation(down) is down
    other = Observation("service", "clue-chat1", 0.0, True, 0.1, {"x": OLD_KEY})
    assert redact.observation(other) is other
