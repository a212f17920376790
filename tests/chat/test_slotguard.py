"""The slot guard: its pure encoding and parsing, and its Lua scripts on a real redis-server."""

import subprocess
import time
from contextlib import contextmanager

import pytest
import redis

from chat import slotguard
from chat.sharding import SLOTS, key_slot
from tests.conftest import require

# -- pure --

def test_a_batch_is_encoded_slot_by_slot_then_command_by_command():
    argv = slotguard.guard_args({7: ["a", "b"], 9: []}, [9], [("SET", "a", 1), ("PING",)])
    assert argv == [2, 7, 0, 2, "a", "b", 9, 1, 0, 2, 3, "SET", "a", 1, 1, "PING"]


def test_a_refusal_names_every_slot_and_its_owner():
    assert slotguard.refusal("CHATOPS-MOVED 12 3") == [(12, 3)]
    assert slotguard.refusal("CHATOPS-MOVED 12 3 400 -1") == [(12, 3), (400, -1)]
    # Anything else is not a refusal: redis-py's own MOVED, a truncated or hostile message.
    for text in ("MOVED 12 127.0.0.1:7000", "CHATOPS-MOVED", "CHATOPS-MOVED x y", "ERR nope", ""):
        assert slotguard.refusal(text) is None, text
    assert slotguard.refusal(f"CHATOPS-MOVED {SLOTS} 1") is None          # no such slot


def test_the_ownership_bitmap_round_trips_in_setbit_order():
    slots = [0, 1, 7, 8, 5000, SLOTS - 1]
    value = slotguard.bitmap(slots)
    assert len(value) == SLOTS // 8 and value[0] == 0b11000001 and value[1] == 0b10000000
    assert slotguard.owned_slots(value) == slots
    assert slotguard.owned_slots(None) is None


# -- on a real redis-server --

# A bare redis-server has no ACL file: its `default` user takes any password.
BARE = ("default", "no-password-needed")

@contextmanager
def redis_server(address: str, port: int = 6379):
    """A bare redis-server on `address`, and a client of it; killed afterwards."""
    exe = require("redis-server")
    proc = subprocess.Popen([exe, "--bind", address, "--port", str(port), "--save", "", "--appendonly", "no",
                             "--protected-mode", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(host=address, port=port, socket_timeout=5)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, f"redis-server on {address}:{port} did not answer"
                time.sleep(0.05)
        yield client
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def r(subnet):
    with redis_server(f"{subnet}.31") as client:
        yield client


def guarded(r, commands, asking=()):
    slots: dict[int, list] = {}
    for c in commands:
        if len(c) > 1:
            slots.setdefault(key_slot(c[1]), []).append(c[1])
    return r.execute_command("EVAL", slotguard.GUARD, 0, *slotguard.guard_args(slots, asking, commands))


def test_an_unguarded_shard_runs_everything_and_returns_each_reply_in_place(r):
    replies = guarded(r, [("SET", "{a}.x", "1"), ("GET", "{a}.x"), ("GET", "{a}.missing"), ("HGET", "{a}.x", "f")])
    assert replies[:3] == [b"OK", b"1", None]
    assert isinstance(replies[3], redis.ResponseError) and "WRONGTYPE" in str(replies[3])


def test_a_guarded_shard_refuses_every_slot_it_does_not_own_and_runs_nothing(r):
    mine, gone, never = key_slot("{a}"), key_slot("{b}"), key_slot("{c}")
    r.set(slotguard.OWNED, slotguard.bitmap([mine]))
    r.hset(slotguard.MOVED, gone, 4)
    with pytest.raises(redis.ResponseError) as err:
        guarded(r, [("SET", "{a}.x", "1"), ("SET", "{b}.x", "1"), ("SET", "{c}.x", "1")])
    assert slotguard.refusal(str(err.value)) == [(gone, 4), (never, -1)]
    assert r.exists("{a}.x", "{b}.x", "{c}.x") == 0          # a refused batch changes nothing
    assert guarded(r, [("SET", "{a}.x", "1")]) == [b"OK"]


def test_an_importing_slot_is_served_only_to_a_redirected_batch(r):
    slot = key_slot("{b}")
    r.set(slotguard.OWNED, slotguard.bitmap([]))
    r.hset(slotguard.IMPORTING, slot, 0)
    with pytest.raises(redis.ResponseError, match="CHATOPS-MOVED"):
        guarded(r, [("SET", "{b}.x", "1")])
    assert guarded(r, [("SET", "{b}.x", "1")], asking=[slot]) == [b"OK"]


def test_a_tracked_slot_records_every_key_a_batch_touches(r):
    slot = key_slot("{a}")
    r.set(slotguard.OWNED, slotguard.bitmap([slot, key_slot("{z}")]))
    r.setbit(slotguard.TRACKED, slot, 1)
    guarded(r, [("SET", "{a}.x", "1"), ("DEL", "{a}.y"), ("SET", "{z}.q", "1")])
    assert r.smembers(f"{slotguard.TOUCHED}{slot}") == {b"{a}.x", b"{a}.y"}
    assert not r.exists(f"{slotguard.TOUCHED}{key_slot('{z}')}")        # not tracked


def test_migrate_slots_copies_keeps_ttls_deletes_and_hands_over(r, subnet):
    address, port = f"{subnet}.32", 6379
    with redis_server(address, port) as target:
        slot = key_slot("{a}")
        r.set(slotguard.OWNED, slotguard.bitmap([slot]))
        r.set("{a}.x", "1", ex=500)
        r.hset("{a}.h", "f", "v")
        r.sadd(f"{slotguard.TOUCHED}{slot}", "{a}.h", "{a}.gone")       # recorded; one deleted since
        moved = r.execute_command("EVAL", slotguard.MIGRATE_SLOTS, 0,
                                  *slotguard.migrate_args(address, port, 5000, 3, [slot], ["{a}.x"], *BARE))
        assert moved == 2
        assert r.exists("{a}.x", "{a}.h") == 0 and target.get("{a}.x") == b"1" and target.ttl("{a}.x") > 400
        assert target.hget("{a}.h", "f") == b"v"
        assert slotguard.owned_slots(r.get(slotguard.OWNED)) == [] and r.hget(slotguard.MOVED, slot) == b"3"
        assert not r.exists(f"{slotguard.TOUCHED}{slot}")
        # The target down: the script fails, the source keeps its keys and its slot.
        other = key_slot("{q}")
        r.setbit(slotguard.OWNED, other, 1)
        r.set("{q}.k", "v")
        target.shutdown(nosave=True)
        with pytest.raises(redis.ResponseError):
            r.execute_command("EVAL", slotguard.MIGRATE_SLOTS, 0,
                              *slotguard.migrate_args(address, port, 500, 3, [other], ["{q}.k"], *BARE))
        assert r.get("{q}.k") == b"v" and other in slotguard.owned_slots(r.get(slotguard.OWNED))


# -- the PRIVMSG op --

FIELDS = ("id", "broadcaster", "slow", "r9k")


def room_keys(room: str, login: str) -> list[str]:
    return [f"{{{room}}}.bans", f"{{{room}}}.mods", f"{{{room}}}.room", f"{{{room}}}.ratelimits",
            f"{{{room}}}.users:7", f"{{{room}}}.count:99"]


def eight_commands(r, room: str, login: str) -> list:
    """What clue sent per message before the op, flattened the way the op answers."""
    bans, mods, room_hash, limits, ucount, rcount = room_keys(room, login)
    p = r.pipeline(transaction=False)
    p.hget(bans, login)
    p.sismember(mods, login)
    p.hmget(room_hash, *FIELDS)
    p.hmget(limits, "room_rate", "user_rate")
    p.hincrby(ucount, login, 1)
    p.expire(ucount, 31, nx=True)
    p.incr(rcount)
    p.expire(rcount, 2, nx=True)
    ban, mod, fields, (room_rate, user_rate), used, _, room_used, _ = p.execute()
    return [ban, int(mod), used, room_used, room_rate, user_rate, *fields]


def seed(r, room: str, login: str) -> None:
    bans, mods, room_hash, limits, _, _ = room_keys(room, login)
    r.hset(bans, login, 0)
    r.sadd(mods, "somebody_else")
    r.hset(room_hash, mapping={"id": "42", "broadcaster": "bob", "r9k": "1"})
    r.hset(limits, "user_rate", "5")


def test_the_privmsg_op_answers_and_writes_what_its_eight_commands_did(r):
    """Twice (a fresh counter, then a counting one): the op's replies equal the eight commands'
    on a twin room, and so do the counters and their TTLs. Standalone (EVAL) and inside the guard."""
    seed(r, "cmds", "amy")
    seed(r, "guard", "amy")
    seed(r, "alone", "amy")
    for _ in range(2):
        want = eight_commands(r, "cmds", "amy")
        op = (slotguard.PRIVMSG_OP, *room_keys("guard", "amy"), "amy", 31, 2, *FIELDS)
        got_guard, = guarded(r, [op])
        got_alone = r.eval(slotguard.PRIVMSG_SCRIPT, slotguard.PRIVMSG_KEYS, *room_keys("alone", "amy"),
                           "amy", 31, 2, *FIELDS)
        assert got_guard == want and got_alone == want
    assert want == [b"0", 0, 2, 2, None, b"5", b"42", b"bob", None, b"1"]
    for room in ("cmds", "guard", "alone"):
        ucount, rcount = room_keys(room, "amy")[4:]
        assert 29 <= r.ttl(ucount) <= 31 and 1 <= r.ttl(rcount) <= 2, room


def test_a_failing_op_fails_its_own_message_only(r):
    """Hostile state: the bans key is a string. That message's op answers WRONGTYPE; the next
    command of the same batch still runs and answers."""
    r.set("{bad}.bans", "not a hash")
    op = (slotguard.PRIVMSG_OP, *room_keys("bad", "eve"), "eve", 31, 2, *FIELDS)
    bad, after = guarded(r, [op, ("SET", "{bad}.after", "1")])
    assert isinstance(bad, redis.ResponseError) and "WRONGTYPE" in str(bad)
    assert after == b"OK"
