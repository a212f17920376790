"""Moving slots, with their keys, from one shard to another under live traffic, losing nothing.

Redis Cluster moves a slot by marking it IMPORTING on the target and MIGRATING on the source,
moving its keys with MIGRATE, and redirecting clients with ASK meanwhile; it finds a slot's keys
with CLUSTER GETKEYSINSLOT. Our shards are standalone, so the same protocol runs through the slot
guard (`chat.slotguard`) and the keys are found by one SCAN:

1. Every shard gets its ownership bitmap from the current map (if it has none yet), so from here
   on a shard refuses a slot it does not own, whatever map a client routes by.
2. The target marks the slots IMPORTING (it serves them only to redirected batches); the source
   marks them TRACKED, so every key a batch touches there from now on is recorded per slot.
3. One SCAN of the source finds the keys that existed before tracking began; together with the
   recorded ones that is every key the slots can hold.
4. Group by group (a few thousand keys), one script on the source copies the group's keys to the
   target (MIGRATE ... COPY REPLACE KEYS, keeping TTLs), deletes them, and hands the slots over:
   from then on the source answers "moved to <target>". No client sees a slot half moved, since
   the script is atomic. The target then owns the slots outright.
5. The new map is published; clues that had followed the redirects now route there directly.

Every step is idempotent and its state lives in the shards, so a migration cut short (the control
plane killed, the target down) is resumed by running it again: slots the target owns are done, a
slot the source handed over but the target has not yet taken is finished, the rest move. A
failed group changes nothing: the source keeps its keys (COPY first) and its ownership.
"""

from __future__ import annotations

import binascii
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import hiredis

from chat import slotguard
from chat.sharding import SlotMap, describe_slots
from collectors.redis import admin_auth, find_shard
from collectors.resp import Conn, RedisError, encode_command
from controlplane.resharding import slotmap as slotmaps

SCAN_COUNT = 20000         # keys per SCAN call: ~20 ms of the source's time at most
GROUP_KEYS = 2000          # keys in the first group; later groups are sized by SCRIPT_MS
SCRIPT_MS = 30.0           # how long one group may hold the source: far inside clue's 100 ms cache_timeout
MIN_GROUP_KEYS = 100
GROUP_SLOTS = 256
MIGRATE_TIMEOUT_MS = 5000


class MigrationError(Exception):
    """The migration stopped; what moved stays moved, what did not is still on the source."""


@dataclass
class Progress:
    slots_total: int = 0
    slots_done: int = 0
    keys_total: int = 0             # found by the scan (plus keys recorded since); an estimate
    keys_moved: int = 0
    phase: str = "starting"         # starting | scanning | moving | publishing | done | failed
    started_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    detail: str = ""

    @property
    def keys_per_s(self) -> float:
        took = self.updated_at - self.started_at
        return self.keys_moved / took if took > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        rate = self.keys_per_s
        if self.phase != "moving" or rate <= 0:
            return None
        return max(0.0, (self.keys_total - self.keys_moved) / rate)

    def as_dict(self) -> dict:
        return {"phase": self.phase, "slots_total": self.slots_total, "slots_done": self.slots_done,
                "keys_total": self.keys_total, "keys_moved": self.keys_moved,
                "keys_per_s": round(self.keys_per_s, 1),
                "eta_s": None if self.eta_s is None else round(self.eta_s, 1),
                "started_at": self.started_at, "updated_at": self.updated_at, "detail": self.detail}


@dataclass
class Result:
    slot_map: SlotMap               # as published at the end
    moved_slots: list[int]
    keys_moved: int
    seconds: float
    resumed_slots: int              # slots found half-moved by an earlier run, and finished
    publish_failed: dict[str, str]


def scan_slots(conn: Conn, slots: set[int] | None = None, count: int = SCAN_COUNT) -> dict[int, list[bytes]]:
    """Every key on the shard, by slot (only `slots`, when given); the guard's own keys excluded.

    A million keys take one SCAN walk, so this reads the replies on a socket of its own with a
    bare hiredis reader: collectors.resp's framer guards against hostile lengths at about three
    times the cost per key, and these are our own shards, whose SCAN replies hold at most `count`
    keys. The slot is computed inline (CRC16 of the hash tag): a function call per key was a
    third of the scan's time."""
    host, port = conn.address.rsplit(":", 1)
    source = conn.sock.getsockname()[0]
    out: dict[int, list[bytes]] = {}
    prefix = slotguard.PREFIX.encode()
    crc = binascii.crc_hqx
    with socket.create_connection((host, int(port)), timeout=conn.sock.gettimeout(),
                                  source_address=(source, 0)) as sock:
        reader = hiredis.Reader()
        # Logged in as the connection it stands in for; its reply is read before the first SCAN's.
        auth = [encode_command("AUTH", conn.auth.user, conn.auth.password)] if conn.auth is not None else []
        sock.sendall(b"".join([*auth, encode_command("SCAN", b"0", "COUNT", count)]))
        if auth:
            reply = _reply(reader, sock, "AUTH")
            if reply != b"OK":
                raise RedisError(f"AUTH answered {str(reply)[:200]}")
        while True:
            reply = _reply(reader, sock, "SCAN")
            if isinstance(reply, Exception) or not isinstance(reply, list) or len(reply) != 2:
                raise RedisError(f"SCAN answered {str(reply)[:200]}")
            cursor, batch = reply
            if cursor != b"0":
                # The next call goes out before this batch is sorted: Redis walks on meanwhile.
                sock.sendall(encode_command("SCAN", cursor, "COUNT", count))
            for key in batch:
                a = key.find(b"{")
                if a >= 0:
                    b = key.find(b"}", a + 1)
                    slot = crc(key[a + 1:b] if b > a + 1 else key, 0) & 16383
                else:
                    if key.startswith(prefix):
                        continue
                    slot = crc(key, 0) & 16383
                if slots is None or slot in slots:
                    bucket = out.get(slot)
                    if bucket is None:
                        out[slot] = [key]
                    else:
                        bucket.append(key)
            if cursor == b"0":
                return out


def _reply(reader, sock: socket.socket, what: str):
    """The next whole reply on `sock`, reading as much as it takes."""
    reply = reader.gets()
    while reply is False:
        data = sock.recv(1 << 20)
        if not data:
            raise RedisError(f"the shard closed the connection during {what}")
        reader.feed(data)
        reply = reader.gets()
    return reply


def _hash_fields(conn: Conn, key: str) -> dict[int, int]:
    raw = conn.call("HGETALL", key) or []
    return {int(raw[i]): int(raw[i + 1]) for i in range(0, len(raw), 2)}


@dataclass
class SlotState:
    todo: list[int]                 # the source still owns these
    half: list[int]                 # the source handed them over; the target has not taken them yet
    done: list[int]                 # the target owns them


def slot_state(source: Conn, target: Conn, src: int, dst: int, slots: Iterable[int],
               names: tuple[str, ...]) -> SlotState:
    src_owned = set(slotmaps.owned(source) or [])
    dst_owned = set(slotmaps.owned(target) or [])
    moved = _hash_fields(source, slotguard.MOVED)
    importing = _hash_fields(target, slotguard.IMPORTING)
    state = SlotState([], [], [])
    stray = []
    for s in slots:
        if s in dst_owned and s not in src_owned:
            state.done.append(s)
        elif s in src_owned:
            state.todo.append(s)
        elif moved.get(s) == dst and importing.get(s) == src:
            state.half.append(s)
        else:
            stray.append(s)
    if stray:
        raise MigrationError(f"slots {describe_slots(stray)} are owned by neither {names[src]} nor {names[dst]}: "
                             "the map changed since this migration was planned; plan again")
    return state


def _next_group(slots: list[int], start: int, keys: dict[int, list[bytes]], group_keys: int,
                group_slots: int) -> list[int]:
    """Slots from `start` on, until they hold `group_keys` keys or `group_slots` slots."""
    group: list[int] = []
    n = 0
    for s in slots[start:]:
        group.append(s)
        n += len(keys.get(s, ()))
        if n >= group_keys or len(group) >= group_slots:
            break
    return group


def next_size(size: int, keys: int, took_ms: float, cap: int) -> int:
    """The next group's key count: the rate the last group ran at, for SCRIPT_MS of the source's
    time, moving at most half-way from `size` at once (one slow round trip must not halve it)."""
    if keys <= 0 or took_ms <= 0:
        return size
    aim = keys * SCRIPT_MS / took_ms
    size = int(size + max(-size / 2, min(size / 2, aim - size)))
    return max(MIN_GROUP_KEYS, min(cap, size))


def _check(replies: list, what: str) -> list:
    bad = [r for r in replies if isinstance(r, RedisError)]
    if bad:
        raise MigrationError(f"{what}: {bad[0]}")
    return replies


def move_slots(cf, cluster_path, run, source: str, target: str, slots: Iterable[int], *,
               on_progress: Callable[[Progress], None] | None = None, group_keys: int = GROUP_KEYS,
               group_slots: int = GROUP_SLOTS, stop_after_groups: int | None = None) -> Result:
    """Move `slots` from shard `source` to shard `target` (names), then publish the new map.

    Groups start at `group_keys` keys and are then sized so that each holds the source for about
    SCRIPT_MS (never more than 4 x group_keys). `stop_after_groups` stops (raising
    MigrationError) after that many groups, as a crash would: for tests of resuming only."""
    started = time.time()
    progress = Progress()
    report = on_progress or (lambda p: None)

    def note(phase: str, detail: str = "") -> None:
        progress.phase, progress.detail, progress.updated_at = phase, detail, time.time()
        report(progress)

    wanted = sorted(set(slots))
    if source == target:
        raise MigrationError(f"source and target are both {source}")
    with slotmaps.connections(cf) as conns:
        for name in (source, target):
            if isinstance(conns.get(name), Exception):
                raise MigrationError(f"{name} is unreachable: {conns[name]}")
        smap = slotmaps.load(cf, cluster_path, run, conns)
        names = smap.names
        src, dst = names.index(source), names.index(target)
        src_conn, dst_conn = conns[source], conns[target]
        slotmaps.ensure_guards(smap, conns)
        state = slot_state(src_conn, dst_conn, src, dst, wanted, names)
        # Slots an earlier attempt began (the target already imports them) may have stale copies
        # there: those groups clear them first.
        retried = set(_hash_fields(dst_conn, slotguard.IMPORTING)) & set(state.todo)
        progress.slots_total = len(wanted)
        progress.slots_done = len(state.done)
        note("starting", f"{len(state.todo)} slots to move, {len(state.half)} to finish, {len(state.done)} done")
        if state.half:
            _take(dst_conn, state.half)
        finished = list(state.done) + list(state.half)
        progress.slots_done = len(finished)
        failure: MigrationError | None = None
        keys_moved = 0
        try:
            if state.todo:
                keys_moved = _move(src_conn, dst_conn, cf, target, src, dst, state.todo, retried, progress, note,
                                   group_keys, group_slots, stop_after_groups, finished)
        except (MigrationError, OSError, RedisError) as exc:
            failure = exc if isinstance(exc, MigrationError) else MigrationError(f"{type(exc).__name__}: {exc}")
        # Publish what is true now, finished or not, so clues stop being redirected for it;
        # after a failure on fresh connections (one may have timed out in the middle of a reply).
        note("publishing")
        if failure is None:
            published = slotmaps.publish(cf, cluster_path, run, smap.moved(finished, dst), conns)
        else:
            with slotmaps.connections(cf) as fresh:
                published = slotmaps.publish(cf, cluster_path, run, smap.moved(finished, dst), fresh)
        if failure is not None:
            note("failed", f"{failure}; {len(finished)} of {len(wanted)} slots moved. Apply the same plan "
                           "again to finish it")
            raise failure
        note("done", f"moved {len(wanted)} slots, {keys_moved} keys")
        return Result(published.slot_map, wanted, keys_moved, time.time() - started, len(state.half),
                      published.failed)


def _take_commands(slots: list[int]) -> list[tuple]:
    """The target takes slots the source has handed over: it owns them, no longer imports them."""
    cmds: list[tuple] = []
    for s in slots:
        cmds += [("SETBIT", slotguard.OWNED, s, 1), ("HDEL", slotguard.IMPORTING, s), ("HDEL", slotguard.MOVED, s)]
    return cmds


def _take(dst_conn: Conn, slots: list[int]) -> None:
    _check(dst_conn.pipeline(_take_commands(slots)), "the target could not take its slots")


def _move(src_conn, dst_conn, cf, target, src, dst, todo, retried, progress, note, group_keys, group_slots,
          stop_after_groups, finished) -> int:
    # 2. importing on the target first: a redirected batch must never find the target refusing.
    _check(dst_conn.pipeline([("HSET", slotguard.IMPORTING, s, src) for s in todo]), "marking slots importing")
    _check(src_conn.pipeline([("SETBIT", slotguard.TRACKED, s, 1) for s in todo]), "marking slots tracked")
    # 3. the keys that existed before tracking began
    note("scanning")
    keys = scan_slots(src_conn, set(todo))
    progress.keys_total = sum(len(v) for v in keys.values())
    note("moving")
    s = find_shard(cf, target)
    host, port = cf.address(s.host), s.port
    # Loaded once, so every group is an EVALSHA that can be sent before the previous one answers.
    sha = src_conn.call("SCRIPT", "LOAD", slotguard.MIGRATE_SLOTS)
    auth = admin_auth(cf)      # the target's MIGRATE connection logs in as the control plane too
    run = _Groups(src_conn, dst_conn, finished, progress, note, group_keys)
    start, n = 0, 0
    try:
        while start < len(todo):
            if stop_after_groups is not None and n >= stop_after_groups:
                run.drain()
                raise MigrationError(f"stopped after {n} groups, as asked")
            group = _next_group(todo, start, keys, run.size, group_slots)
            stale_slots = [x for x in group if x in retried]
            if stale_slots:
                run.drain()             # both connections in step before other use
                # A key recorded since tracking began may have a stale copy on the target from the
                # earlier attempt (deleted here since): clear those before copying again.
                touched = _check(src_conn.pipeline([("SMEMBERS", f"{slotguard.TOUCHED}{x}") for x in stale_slots]),
                                 "reading recorded keys")
                stale = [k for members in touched for k in members]
                if stale:
                    _check(dst_conn.pipeline([("DEL", *stale[i:i + 1000]) for i in range(0, len(stale), 1000)]),
                           "clearing stale copies on the target")
            group_keys_list = [k for x in group for k in keys.get(x, ())]
            run.send(group, len(group_keys_list), ("EVALSHA", sha, 0, *slotguard.migrate_args(
                host, port, MIGRATE_TIMEOUT_MS, dst, group, group_keys_list, auth.user, auth.password)))
            start += len(group)
            n += 1
        run.drain()
    finally:
        run.drain(quiet=True)
    return run.moved


class _Groups:
    """The groups in flight. The next group's script is sent before the last one's reply is read,
    so the source never waits on this process between groups (while one script runs, the next is
    built and queued), and each group's hand-over to the target is sent without waiting: its
    round trip overlaps the next script. A group that failed stops the run after the ones in
    flight have been read, so both connections stay in step for the publication after it."""

    def __init__(self, src_conn: Conn, dst_conn: Conn, finished: list[int], progress: Progress, note,
                 group_keys: int):
        self.src, self.dst, self.finished, self.progress, self.note = src_conn, dst_conn, finished, progress, note
        self.size, self.cap = group_keys, 4 * group_keys
        self.moved = 0
        self.flying: list[tuple[list[int], int, float]] = []     # scripts sent, replies not read
        self.taking: list[int] = []                             # handed over, target not confirmed
        self.last = time.perf_counter()
        self.failure: MigrationError | None = None

    def send(self, group: list[int], nkeys: int, command: tuple) -> None:
        self.src.send([command])
        self.flying.append((group, nkeys, time.perf_counter()))
        while len(self.flying) > 1:
            self._land()
        if self.failure is not None:
            self.drain()

    def _confirm(self) -> None:
        if self.taking:
            taking, self.taking = self.taking, []
            _check(self.dst.recv(3 * len(taking)), "the target could not take its slots")
            self.finished += taking
            self.progress.slots_done = len(self.finished)

    def _land(self) -> None:
        group, nkeys, sent = self.flying.pop(0)
        reply, = self.src.recv(1)
        now = time.perf_counter()
        took_ms = (now - max(sent, self.last)) * 1000      # from when the source could start it
        self.last = now
        if isinstance(reply, RedisError):
            self.failure = self.failure or MigrationError(
                f"moving slots {describe_slots(group)} failed, nothing of them moved: {reply}")
            return
        self._confirm()
        self.dst.send(_take_commands(group))
        self.taking = group
        self.moved += int(reply)
        self.size = next_size(self.size, nkeys, took_ms, self.cap)
        p = self.progress
        p.keys_moved, p.keys_total = self.moved, max(p.keys_total, self.moved)
        p.slots_done = len(self.finished)
        self.note("moving")

    def drain(self, quiet: bool = False) -> None:
        """Read every reply still due; raise the first failure (unless `quiet`, on the way out of
        an error already raised)."""
        try:
            while self.flying:
                self._land()
            self._confirm()
        except (OSError, RedisError, MigrationError):
            if not quiet:
                raise
        if self.failure is not None and not quiet:
            raise self.failure

