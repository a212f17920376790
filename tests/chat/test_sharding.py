"""The slot map: Redis Cluster's key hashing and slot ranges, checked against known values and,
once, against a real redis-server's own CLUSTER KEYSLOT."""

import json
import random
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import redis

from chat.sharding import SLOTS, SlotMap, crc16, hash_tag, key_prefix, key_slot
from tests.conftest import require


def test_crc16_is_xmodem():
    assert crc16(b"123456789") == 0x31C3
    assert crc16(b"") == 0


@pytest.mark.parametrize("key, slot", [
    ("foo", 12182), ("bar", 5061), ("hello", 866), ("", 0),
    (b"foo", 12182),
    ("{user1000}.following", 3443), ("{user1000}.followers", 3443),
])
def test_key_slot_known_values(key, slot):
    assert key_slot(key) == slot


def test_hash_tag_rules():
    # The first '{' and the next '}' delimit the tag, which must be non-empty.
    assert key_slot("{user1000}.following") == key_slot("{user1000}.followers") == key_slot("user1000")
    assert key_slot("foo{}{bar}") == crc16(b"foo{}{bar}") % SLOTS      # empty tag: whole key
    assert key_slot("foo{{bar}}zap") == key_slot("{bar")              # tag is "{bar"
    assert key_slot("foo{bar}{zap}") == key_slot("bar")               # only the first tag counts
    assert key_slot("foo{bar") == crc16(b"foo{bar") % SLOTS           # unclosed: whole key
    assert key_slot("}{x}") == key_slot("x")
    assert hash_tag(b"{ronni}.color") == (1, 6)
    assert hash_tag(b"foo{}{bar}") is None
    # The talk's fix: a room's keys share a tag, so they share a slot (and a pipeline).
    assert key_slot("{degentp}.bans") == key_slot("{degentp}.ratelimits") == key_slot("{degentp}.mods")


def test_key_slot_encodes_like_redis_py():
    assert key_slot("ünïcode") == crc16("ünïcode".encode()) % SLOTS
    assert key_slot(12345) == key_slot("12345")


def test_key_slot_matches_a_real_redis_server():
    """CLUSTER KEYSLOT is the authority; ask a real cluster-enabled redis-server."""
    server = require("redis-server")
    with tempfile.TemporaryDirectory(prefix="co-ks-", dir="/tmp") as tmp:
        sock = str(Path(tmp) / "r.sock")
        proc = subprocess.Popen(
            [server, "--port", "0", "--unixsocket", sock, "--cluster-enabled", "yes",
             "--cluster-config-file", str(Path(tmp) / "nodes.conf"), "--dir", tmp, "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            r = redis.Redis(unix_socket_path=sock, socket_timeout=5)
            deadline = time.monotonic() + 10
            while True:
                try:
                    r.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            rng = random.Random(7)
            alphabet = "ab{}.:_-0123456789ü"
            keys = ["foo{}{bar}", "foo{{bar}}zap", "{}", "{", "}", "{a}{b}", "a{b"]
            keys += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(300)]
            for key in keys:
                assert key_slot(key) == r.execute_command("CLUSTER KEYSLOT", key), key
            r.close()
        finally:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("key, prefix", [
    ("{degentp}.bans", "{*}.bans"),
    ("{ronni}.color", "{*}.color"),
    ("{lobby}.rl.r.1718000000", "{*}.rl.r.#"),
    ("12345color", "#color"),                    # the talk's pre-fix "{}color".format(userid)
    ("room:42:msg:7", "room:#:msg:#"),
    ("foo{}{bar}", "foo{}{bar}"),                # no hash tag: left as is
    ("x" * 60, "x" * 40),
    (b"{ronni}.color", "{*}.color"),
    ("evil\nkey", "evil?key"),
])
def test_key_prefix(key, prefix):
    assert key_prefix(key) == prefix


def test_even_split_matches_redis_cli():
    # redis-cli --cluster create with 3 masters: 0-5460, 5461-10922, 10923-16383.
    assert SlotMap.even(3).ranges() == [(0, 5460, 0), (5461, 10922, 1), (10923, 16383, 2)]
    assert SlotMap.even(1).ranges() == [(0, 16383, 0)]
    assert SlotMap.even(2).ranges() == [(0, 8191, 0), (8192, 16383, 1)]
    for n in (4, 5, 7, 10, 256):
        ranges = SlotMap.even(n).ranges()
        assert [r[2] for r in ranges] == list(range(n))
        sizes = [end - start + 1 for start, end, _ in ranges]
        assert sum(sizes) == SLOTS and max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError):
        SlotMap.even(0)


def test_shard_of():
    m = SlotMap.even(3)
    assert m.shard_of("foo") == 2                    # slot 12182
    assert m.shard_of("{user1000}.followers") == 0   # slot 3443
    assert m.shard_of_slot(5460) == 0 and m.shard_of_slot(5461) == 1
    assert m.n_shards == 3


def test_moved_returns_a_new_map():
    m = SlotMap.even(2)
    slot = key_slot("{ronni}.color")
    target = 1 - m.shard_of_slot(slot)
    moved = m.moved([slot], target)
    assert moved.shard_of("{ronni}.color") == target
    assert m.shard_of("{ronni}.color") != target      # the original is untouched
    assert moved != m and len(moved.ranges()) > len(m.ranges())
    assert moved.moved([slot], 1 - target) == m
    with pytest.raises(ValueError, match="outside"):
        m.moved([1], 2)
    with pytest.raises(ValueError, match="outside"):
        m.moved([SLOTS], 0)


def test_json_round_trip():
    m = SlotMap.even(3).moved(range(100, 200), 2)
    text = m.to_json()
    assert json.loads(text)["ranges"][:3] == [[0, 99, 0], [100, 199, 2], [200, 5460, 0]]
    assert SlotMap.from_json(text) == m
    assert SlotMap.from_json(json.loads(text)) == m
    assert hash(SlotMap.from_json(text)) == hash(m)


@pytest.mark.parametrize("doc, message", [
    ("not json", "not valid JSON"),
    ([], "JSON object"),
    ({"shards": 2, "ranges": [[0, 16383, 0]], "extra": 1}, "unknown keys: extra"),
    ({"shards": 0, "ranges": []}, "positive integer"),
    ({"shards": 2, "ranges": [[0, 8191, 0]]}, "slots 8192-16383 are not covered"),
    ({"shards": 2, "ranges": [[0, 8191, 0], [8000, 16383, 1]]}, "slots 8000-8191 are already covered"),
    ({"shards": 2, "ranges": [[0, 16383, 2]]}, "shard 2 is outside 0..1"),
    ({"shards": 2, "ranges": [[0, 16384, 0]]}, "start <= end"),
    ({"shards": 2, "ranges": [[10, 5, 0]]}, "start <= end"),
    ({"shards": 2, "ranges": [[0, 16383, "0"]]}, "integers"),
    ({"shards": 2, "ranges": [[0, 16383, True]]}, "integers"),
    ({"slots": 1024, "shards": 1, "ranges": [[0, 1023, 0]]}, "1024"),
])
def test_from_json_rejects_bad_maps(doc, message):
    text = doc if isinstance(doc, str) else json.dumps(doc)
    with pytest.raises(ValueError, match=message):
        SlotMap.from_json(text)


def test_constructor_validates():
    with pytest.raises(ValueError, match="exactly 16384"):
        SlotMap([0] * 10, 1)
    with pytest.raises(ValueError, match="outside 0..1"):
        SlotMap([0] * (SLOTS - 1) + [5], 2)
    with pytest.raises(ValueError, match="shard indexes"):
        SlotMap([-1] * SLOTS, 1)
