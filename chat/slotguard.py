"""The slot guard: how a standalone Redis shard refuses keys it no longer owns.

Redis Cluster nodes know which slots they own and answer MOVED or ASK for the others. Our shards
are plain redis-servers, so each keeps the same knowledge in a few reserved keys, and every batch
clue sends runs through one Lua script (`GUARD`) that checks it before running the commands:

- `chatops:owned`      a 16384-bit bitmap, bit s set when this shard owns slot s. Absent: the
                       shard is not guarded yet (no slot has ever moved) and accepts every key.
- `chatops:importing`  hash slot -> source index: slots this shard is receiving. It serves them
                       only to a batch that says it was redirected here (Redis Cluster's ASKING).
- `chatops:moved`      hash slot -> new owner index: where a slot that left this shard went, so
                       the refusal names the new owner (Redis Cluster's `MOVED <slot> <node>`).
- `chatops:tracked`    bitmap of slots about to move: the guard records every key a batch touches
                       in such a slot in `chatops:touched:<slot>`, so keys created after the
                       migration's scan still move with their slot.
- `chatops:slotmap`, `chatops:slotmap:epoch`  the published map, so a clue that starts while the
                       control plane is down still routes by the last map it can read.

The script checks every slot of the batch before running anything, so a refused batch changes
nothing; the refusal names every slot it refused and where each went, and clue resends there. `MIGRATE_SLOTS` runs on the source shard and moves
a group of slots in one step: it copies their keys to the target (MIGRATE ... COPY REPLACE KEYS,
keeping TTLs), deletes them here, and hands the slots over, all inside one script, so no client
ever sees a slot half here and half there.

Pure: the scripts, the key names, and the encoding of a batch as the guard's arguments.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from typing import Any

from chat.sharding import SLOTS

PREFIX = "chatops:"
OWNED = "chatops:owned"
IMPORTING = "chatops:importing"
MOVED = "chatops:moved"
TRACKED = "chatops:tracked"
TOUCHED = "chatops:touched:"
MAP = "chatops:slotmap"
EPOCH = "chatops:slotmap:epoch"

REFUSED = "CHATOPS-MOVED"       # not MOVED: redis-py would parse that as a Redis Cluster redirect

# The per-message work of a PRIVMSG on its room's shard, as one op of a batch instead of eight
# commands: clue packed, sent and parsed each of them (and their replies) one by one, which was
# most of its Redis cost per message. `v[a]..v[a+5]` are the keys (bans, mods, room, rate limits,
# the user counters, the room counter), then the login, the two counters' TTLs, and the room hash's
# fields to read, up to v[last]. Replies, flat: ban, is_mod, user count, room count, room_rate,
# user_rate, then the room fields (nil for a missing one). The order of the reads and writes is
# the eight commands' order, so a refusal counts the message against the limits just as before.
PRIVMSG_OP = "chatops.privmsg"
PRIVMSG_KEYS = 6
# Redis commands the op runs per key, in key order: what clue counts as sent, so its per-prefix
# and per-slot figures (hot keys, the reshard planner's load) mean what they meant before.
PRIVMSG_COMMANDS = (1, 1, 1, 1, 2, 2)
PRIVMSG_LUA = """
local function privmsg(v, a, last)
  local bans, mods, room, limits, ucount, rcount = v[a], v[a + 1], v[a + 2], v[a + 3], v[a + 4], v[a + 5]
  local login = v[a + 6]
  local out = {redis.call('HGET', bans, login), redis.call('SISMEMBER', mods, login)}
  local fields = redis.call('HMGET', room, unpack(v, a + 9, last))
  local rates = redis.call('HMGET', limits, 'room_rate', 'user_rate')
  out[3] = redis.call('HINCRBY', ucount, login, 1)
  redis.call('EXPIRE', ucount, v[a + 7], 'NX')
  out[4] = redis.call('INCR', rcount)
  redis.call('EXPIRE', rcount, v[a + 8], 'NX')
  out[5], out[6] = rates[1], rates[2]
  for j = 1, last - a - 8 do out[6 + j] = fields[j] end
  return out
end
"""
# The op on its own, KEYS then ARGV: what a plain client (bench.ingest's baseline) sends with
# EVALSHA to do the same per-message work without the guard.
PRIVMSG_SCRIPT = PRIVMSG_LUA + """
local v = {}
for j = 1, #KEYS do v[j] = KEYS[j] end
for j = 1, #ARGV do v[#KEYS + j] = ARGV[j] end
return privmsg(v, 1, #v)
"""

# ARGV: nslots, then per slot (slot, asking 0/1, nkeys, keys...), then ncmds, then per command
# (argc, args...). Keys are passed as arguments, not KEYS: these are standalone shards, and the
# reserved keys are read by name. A command named PRIVMSG_OP runs that op here, in Lua.
GUARD = PRIVMSG_LUA + """
local owned = redis.call('GET', 'chatops:owned')
local tracked = redis.call('GET', 'chatops:tracked')
local function has(bits, slot)
  local byte = bits and string.byte(bits, math.floor(slot / 8) + 1)
  return byte ~= nil and bit.band(byte, 2 ^ (7 - slot % 8)) ~= 0
end
local i = 2
local track, refused = {}, {}
for _ = 1, tonumber(ARGV[1]) do
  local slot, asking, nkeys = tonumber(ARGV[i]), ARGV[i + 1], tonumber(ARGV[i + 2])
  local first = i + 3
  i = first + nkeys
  if owned and not has(owned, slot)
      and not (asking == '1' and redis.call('HEXISTS', 'chatops:importing', slot) == 1) then
    refused[#refused + 1] = slot .. ' ' .. (redis.call('HGET', 'chatops:moved', slot) or '-1')
  end
  if nkeys > 0 and tracked and has(tracked, slot) then
    track[#track + 1] = {slot, first, nkeys}
  end
end
if #refused > 0 then
  return redis.error_reply('CHATOPS-MOVED ' .. table.concat(refused, ' '))
end
for _, t in ipairs(track) do
  redis.call('SADD', 'chatops:touched:' .. t[1], unpack(ARGV, t[2], t[2] + t[3] - 1))
end
local out = {}
local n = tonumber(ARGV[i])
i = i + 1
for c = 1, n do
  local argc = tonumber(ARGV[i])
  if ARGV[i + 1] == 'chatops.privmsg' then
    local ok, reply = pcall(privmsg, ARGV, i + 2, i + argc)
    -- redis.call raises a Redis error as a table with `err`; anything else is Lua's own message
    out[c] = ok and reply or redis.error_reply(type(reply) == 'table' and reply.err or tostring(reply))
  else
    out[c] = redis.pcall(unpack(ARGV, i + 1, i + argc))
  end
  i = i + 1 + argc
end
return out
"""

# ARGV: host, port, timeout_ms, target index, 'AUTH2', user, password (the target's ACL user),
# nslots, the slots, then every key found in them by the scan. The credentials follow the literal
# AUTH2 so that whoever prints this command (SLOWLOG shows a script's arguments; Redis redacts
# only a MIGRATE's own) can redact them the way Redis does: collectors/redact.py. Returns the number of keys moved. COPY first and delete after: a MIGRATE that fails
# half way (the target went down) leaves every key here and the slots still owned here, so
# nothing is lost and a retry starts over; REPLACE makes the retry overwrite a partial copy.
# The keys are handed to MIGRATE and UNLINK straight from ARGV, 5,000 at a time (Lua's stack):
# building tables of them, or asking EXISTS of each, took a third of the script's time. A key
# listed twice (scanned and recorded) is copied twice and counted once by UNLINK.
MIGRATE_SLOTS = """
local host, port, timeout, target = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local auth, user, pass = ARGV[5], ARGV[6], ARGV[7]
local last_slot = 8 + tonumber(ARGV[8])
local touched = {}
for i = 9, last_slot do
  for _, k in ipairs(redis.call('SMEMBERS', 'chatops:touched:' .. ARGV[i])) do touched[#touched + 1] = k end
end
local function each(list, from, to, fn)
  for s = from, to, 5000 do fn(unpack(list, s, math.min(s + 4999, to))) end
end
local function copy(...)
  redis.call('MIGRATE', host, port, '', 0, timeout, 'COPY', 'REPLACE', auth, user, pass, 'KEYS', ...)
end
local moved = 0
local function drop(...)
  moved = moved + redis.call('UNLINK', ...)
end
each(ARGV, last_slot + 1, #ARGV, copy)
each(touched, 1, #touched, copy)
each(ARGV, last_slot + 1, #ARGV, drop)
each(touched, 1, #touched, drop)
for i = 9, last_slot do
  local slot = ARGV[i]
  redis.call('SETBIT', 'chatops:owned', slot, 0)
  redis.call('SETBIT', 'chatops:tracked', slot, 0)
  redis.call('HSET', 'chatops:moved', slot, target)
  redis.call('DEL', 'chatops:touched:' .. slot)
end
return moved
"""


def migrate_args(host: str, port: int, timeout_ms: int, target: int, slots: Sequence[int],
                 keys: Iterable[Any], user: str, password: str) -> list[Any]:
    """MIGRATE_SLOTS's ARGV: moving `slots` (and `keys`, the keys a scan found in them) to `target`,
    authenticating there as `user`."""
    return [host, port, timeout_ms, target, "AUTH2", user, password, len(slots), *slots, *keys]


def sha1(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()


GUARD_SHA = sha1(GUARD)
PRIVMSG_SCRIPT_SHA = sha1(PRIVMSG_SCRIPT)
# Commands a shard runs for every guarded batch besides the batch's own: the EVALSHA and its two
# GETs (owned, tracked). A one-key batch costs the shard four commands, which the reshard planner
# must weigh as that slot's load, not as load clue does not see.
OVERHEAD = 3
MIGRATE_SLOTS_SHA = sha1(MIGRATE_SLOTS)


def guard_args(slots: dict[int, list[Any]], asking: Iterable[int],
               commands: Sequence[Sequence[Any]]) -> list[Any]:
    """The guard's ARGV for a batch: `slots` maps each slot the batch touches to its keys there,
    `asking` the slots this batch was redirected for, `commands` each command's arguments."""
    asked = set(asking)
    argv: list[Any] = [len(slots)]
    for slot, keys in slots.items():
        argv += [slot, 1 if slot in asked else 0, len(keys), *keys]
    argv.append(len(commands))
    for args in commands:
        argv.append(len(args))
        argv.extend(args)
    return argv


_REFUSAL = re.compile(r"CHATOPS-MOVED((?: \d+ -?\d+)+)")


def refusal(message: str) -> list[tuple[int, int]] | None:
    """[(slot, new owner index or -1 when unknown), ...] from a guard's refusal (every slot of the
    batch it refused, so one retry re-routes them all), else None."""
    m = _REFUSAL.search(str(message))
    if m is None:
        return None
    nums = [int(x) for x in m.group(1).split()]
    pairs = [(nums[i], nums[i + 1]) for i in range(0, len(nums), 2) if 0 <= nums[i] < SLOTS]
    return pairs or None


def bitmap(slots: Iterable[int]) -> bytes:
    """The `chatops:owned` value for a shard owning `slots` (bit order as SETBIT/GETBIT: the
    most significant bit of byte 0 is slot 0)."""
    out = bytearray(SLOTS // 8)
    for s in slots:
        out[s >> 3] |= 0x80 >> (s & 7)
    return bytes(out)


def owned_slots(value: bytes | None) -> list[int] | None:
    """The slots a `chatops:owned` value marks, or None when the shard is not guarded."""
    if value is None:
        return None
    return [s for s in range(min(SLOTS, len(value) * 8)) if value[s >> 3] & (0x80 >> (s & 7))]
