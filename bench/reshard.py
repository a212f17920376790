"""How fast slots move between shards under live chat traffic, losing nothing, against the way
`redis-cli --cluster reshard` moves keys.

On the shipped default cluster (four shards, moved onto a private loopback subnet, `maxmemory`
raised to 2gb so a million keys fit: its volatile-lfu would evict the counters and refuse the rest),
started with `chatops up --detach` and always stopped at the end (unless --keep):

1. Seed: `--keys` (1,000,000) keys of the chat's own shapes, all in slots shard0 owns, written
   straight to shard0's redis-server, pipelined (5,000 commands a round trip): per 20 users, 20
   `{login}.user` hashes, 12 `{login}.color` strings, 20 `{<sha256 of a token>}.token_sha256` strings
   (the digest its own hash tag), and per room a `{room}.bans` hash, a `{room}.mods` set, now and then a
   `{room}.ratelimits` hash, two `{room}.rl.u.<window>` hashes and eight `{room}.rl.r.<second>`
   counters, the last two with a TTL (EX 3600). `seed_s` is how long the writes took.
2. Load, from 3 s before the move until 3 s after it: `python -m chat.loadgen` (measured: its
   report gives completeness, NOTICEs, disconnects, lost messages) at `--rate` (100) msgs/s over
   every room, `--clients` (100) receivers, from its own loopback address -- ten times the message
   rate `make run`'s traffic sends, about 10,000 deliveries a second; and a writer process
   doing `--writes` (200) HINCRBYs/s through chat1's shard listeners with the chat's own client
   (`ShardedCache`, following the published map), half of them into moving slots, each success
   counted. The room `degentp` hashes to slot 3898, which moves with either `--slots` choice, so
   every message to it touches a moving slot. client_errors = the load generator's NOTICEs (any
   msg-id: msg_unavailable is what a clue answers when a shard does not reply within its
   `cache_timeout`, 100 ms) + its connection errors and disconnects + messages lost + senders
   that could not join.
3. The move: every other slot of shard0 (`--slots alternate`; or `upper`, the upper half) moves
   to shard1 with `controlplane.resharding.migrate.move_slots`, timed: keys_per_s = keys moved /
   seconds (the whole call: guards, scan, every group, publishing the map). The target is the
   existing shard1 (it keeps its own quarter of the slots and receives half of shard0's), not a
   new shard: a fifth redis-server started here would have no listener in the chat hosts' HAProxy.
4. Baseline, in the same run, under the same load generator: what `redis-cli --cluster reshard`
   does -- SCAN the source, then `MIGRATE host port "" 0 5000 KEYS k1..k10`, ten keys a batch, one
   batch at a time -- for the same keys that moved (the seeded keys of the moved slots, written
   the same way), between two plain redis-servers started here on the subnet, so it cannot
   disturb the cluster. The client is a raw socket with hiredis, so Python adds little per batch.
   One difference is in the baseline's favour: its source holds only the keys that move, while
   `move_slots` must SCAN all of shard0 (twice as many keys) to find them, since a standalone
   Redis has no per-slot index of its keys (Redis Cluster's CLUSTER GETKEYSINSLOT).
5. Verify, straight on the shards: every seeded key is on the shard the new map names, with its
   value (GET / HGETALL / SMEMBERS) and its TTL (a key with a TTL still has one, a key without has
   none), and on no other shard; every counter the writer incremented holds at least its count of
   successful increments. lost_keys counts seeded keys missing, wrong or without their TTL, plus
   writer counters short of their count.

Where the time goes: the phases from `move_slots`' progress callback (scan, groups, publish),
the source's own time in the migration script (its SLOWLOG, threshold lowered for the run) and
per command (INFO commandstats), and this process's CPU time.

Progress goes to stderr; the last stdout line is one JSON object (targets: keys_per_s >= 50,000,
lost_keys = 0, completeness = 1.0).

The load shares the machine's two cores with everything else, and the move is bounded by the
CPU the source and target redis-servers get: at `--rate 300 --clients 200` (60,000 deliveries a
second) both cores are ~99% busy and the same move runs at about half the speed. Quote that run
next to the default one.

    python -m bench.reshard [--json] [--keys 1000000] [--slots alternate|upper] [--rate 100]
        [--clients 100] [--writes 200] [--group-keys 2000] [--group-slots 256] [--no-baseline]
        [--keep]
"""

from __future__ import annotations

import argparse
import binascii
import itertools
import json
import math
import multiprocessing as mp
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import hiredis
import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chat import keys as K
from chat import slotguard
from chat.sharding import SLOTS, key_slot
from cluster import binaries, clusterfile, loopback, redis_acl
from cluster.rundir import RunDir
from controlplane.cli.common import use_local_secrets
from controlplane.resharding import migrate
from controlplane.resharding import slotmap as slotmaps

TARGET_KEYS_PER_S = 50_000
TTL_S = 3600
PIPE = 5000                 # commands per round trip when seeding and verifying
BASELINE_BATCH = 10         # redis-cli --cluster reshard's default --cluster-pipeline
MIGRATE_TIMEOUT_MS = 5000
SOURCE, TARGET = "shard0", "shard1"
LOADGEN_ADDR, BASE_SRC_ADDR, BASE_DST_ADDR = 30, 60, 61   # last octets on the private subnet
SLOWLOG_US = 1000


def say(text: str) -> None:
    print(f"reshard: {text}", file=sys.stderr, flush=True)


def chatops(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "controlplane.cli", *args], check=False, capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout)


# -- a raw, pipelined RESP client: the seeding and the baseline should cost Python little --

def enc(*args) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class Raw:
    def __init__(self, host: str, port: int, timeout: float = 60.0, auth=None):
        self.sock = socket.create_connection((host, port), timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = hiredis.Reader()
        if auth is not None:      # a cluster's shard: its ACL user (cluster/redis_acl.py)
            self.call("AUTH", auth.user, auth.password)

    def send(self, payload: bytes, n: int) -> list:
        """Send `payload` (n commands) and read the n replies; error replies come back in place
        as hiredis.ReplyError."""
        self.sock.sendall(payload)
        out: list = []
        while True:
            r = self.reader.gets()
            while r is not False:
                out.append(r)
                if len(out) == n:
                    return out
                r = self.reader.gets()
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("the server closed the connection")
            self.reader.feed(data)

    def call(self, *args):
        r = self.send(enc(*args), 1)[0]
        if isinstance(r, hiredis.ReplyError):
            raise RuntimeError(f"{args[0]}: {r}")  # noqa: TRY004 -- an error reply, not a type
        return r

    def close(self) -> None:
        self.sock.close()


def info(r: Raw, section: str) -> dict[str, str]:
    text = r.call("INFO", section).decode()
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))


def commandstats(r: Raw) -> dict[str, tuple[int, int]]:
    out = {}
    for name, v in info(r, "commandstats").items():
        f = dict(kv.split("=", 1) for kv in v.split(","))
        out[name.removeprefix("cmdstat_")] = (int(f["calls"]), int(f["usec"]))
    return out


# -- the data: the chat's key shapes, in slots the source owns --

# An item: (key, slot, kind, value, ttl). kind: "s" string, "h" hash (value: tuple of field/value
# pairs), "z" set (value: tuple of members). Everything bytes, as a reply brings it back.

def _tags(prefix: str, owned: bytearray):
    i = 0
    while True:
        i += 1
        tag = f"{prefix}{i}".encode()
        slot = binascii.crc_hqx(tag, 0) & (SLOTS - 1)
        if owned[slot]:
            yield tag.decode(), slot


def _tokens(owned: bytearray, rng: random.Random):
    """Random tokens whose key (named by the token's digest) lands in an owned slot."""
    while True:
        tok = f"{rng.getrandbits(120):030x}"
        slot = key_slot(K.token(tok))
        if owned[slot]:
            yield tok, slot


def make_items(n: int, owned: bytearray, seed: int = 7) -> list[tuple]:
    rng = random.Random(seed)
    logins, tokens, rooms = _tags("bu", owned), _tokens(owned, rng), _tags("br", owned)
    items: list[tuple] = []
    now = int(time.time())
    while len(items) < n:
        room, rslot = next(rooms)
        members = []
        for _ in range(20):
            login, uslot = next(logins)
            members.append(login)
            b = login.encode()
            items.append((K.user(login).encode(), uslot, "h",
                          ((b"id", str(rng.randrange(10**8)).encode()), (b"login", b),
                           (b"display_name", login.capitalize().encode()),
                           (b"bot", b"1" if rng.random() < 0.02 else b"0")), False))
            if rng.random() < 0.6:
                items.append((K.color(login).encode(), uslot, "s", b"#%06X" % rng.randrange(1 << 24), False))
            tok, tslot = next(tokens)
            items.append((K.token(tok).encode(), tslot, "s", b, False))
        picked = [m.encode() for m in rng.sample(members, 5)]
        items.append((K.bans(room).encode(), rslot, "h",
                      tuple((m, str(rng.choice((0, now + rng.randrange(600, 86400)))).encode())
                            for m in picked[:3]), False))
        items.append((K.mods(room).encode(), rslot, "z", tuple(picked[2:]), False))
        if rng.random() < 0.25:
            limits = ((b"room_rate", b"100"), (b"user_rate", b"20"))
            items.append((K.ratelimits(room).encode(), rslot, "h", limits, False))
        for w in range(2):
            items.append((K.user_counters(room, now // 30 - w).encode(), rslot, "h",
                          tuple((m, str(rng.randint(1, 20)).encode()) for m in picked), True))
        for s in range(8):
            count = str(rng.randint(1, 50)).encode()
            items.append((K.room_counter(room, now - s).encode(), rslot, "s", count, True))
    del items[n:]
    return items


def write_cmds(item: tuple) -> list[bytes]:
    key, _, kind, value, ttl = item
    if kind == "s":
        return [enc(b"SET", key, value, b"EX", TTL_S) if ttl else enc(b"SET", key, value)]
    if kind == "h":
        cmd = [enc(b"HSET", key, *[x for fv in value for x in fv])]
        return cmd + [enc(b"EXPIRE", key, TTL_S)] if ttl else cmd
    cmd = [enc(b"SADD", key, *value)]
    return cmd + [enc(b"EXPIRE", key, TTL_S)] if ttl else cmd


def seed(r: Raw, items: list[tuple]) -> None:
    for i in range(0, len(items), PIPE):
        cmds = [c for it in items[i:i + PIPE] for c in write_cmds(it)]
        replies = r.send(b"".join(cmds), len(cmds))
        bad = [x for x in replies if isinstance(x, hiredis.ReplyError)]
        if bad:
            raise RuntimeError(f"seeding failed: {bad[0]}")


def check_items(r: Raw, items: list[tuple]) -> dict[str, int]:
    """Each item's value and TTL on this shard: counts of missing, wrong and TTL-lost keys."""
    out = {"missing": 0, "wrong_value": 0, "ttl_lost": 0, "ttl_added": 0}
    read = {"s": b"GET", "h": b"HGETALL", "z": b"SMEMBERS"}
    for i in range(0, len(items), PIPE // 2):
        chunk = items[i:i + PIPE // 2]
        payload = b"".join(enc(read[it[2]], it[0]) + enc(b"PTTL", it[0]) for it in chunk)
        replies = r.send(payload, 2 * len(chunk))
        for j, (key, _, kind, value, ttl) in enumerate(chunk):
            got, pttl = replies[2 * j], replies[2 * j + 1]
            if pttl == -2:
                out["missing"] += 1
                continue
            if kind == "s":
                ok = got == value
            elif kind == "h":
                ok = isinstance(got, list) and dict(zip(got[::2], got[1::2])) == dict(value)
            else:
                ok = isinstance(got, list) and set(got) == set(value)
            if not ok:
                out["wrong_value"] += 1
            elif ttl and not (isinstance(pttl, int) and pttl > 0):
                out["ttl_lost"] += 1
            elif not ttl and pttl != -1:
                out["ttl_added"] += 1
    return out


def count_present(r: Raw, keys: list[bytes]) -> int:
    n = 0
    for i in range(0, len(keys), PIPE):
        n += r.call(b"EXISTS", *keys[i:i + PIPE])
    return n


# -- the load: the measured load generator, and a counting writer through the chat's client --

class Loadgen:
    def __init__(self, cfg: Path, work: Path, source: str, rate: float, clients: int, tag: str):
        self.err_path = work / f"loadgen-{tag}.err"
        self.out_path = work / f"loadgen-{tag}.out"
        self.rate = rate
        senders = max(4, math.ceil(rate / 100))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chat.loadgen", "--config", str(cfg), "--clients", str(clients),
             "--senders", str(senders), "--rate", f"{rate:g}", "--duration", "3600",
             "--source-address", source, "--sender-prefix", f"reshard{tag}", "--report-every", "1", "--json"],
            stdout=self.out_path.open("w"), stderr=self.err_path.open("w"), cwd=ROOT)
        self.senders = senders

    def wait_sending(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        pat = re.compile(r"accepted (\d+)")
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the load generator exited early:\n{self.err_path.read_text()[-2000:]}")
            if any(int(m) > 0 for m in pat.findall(self.err_path.read_text())):
                return
            time.sleep(0.25)
        raise TimeoutError(f"the load generator did not start sending within {timeout:.0f}s")

    def stop(self) -> dict:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError("the load generator did not stop within 60 s of SIGINT")
        lines = self.out_path.read_text().strip().splitlines()
        if not lines:
            raise RuntimeError(f"the load generator printed no report:\n{self.err_path.read_text()[-2000:]}")
        return json.loads(lines[-1])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def writer_main(cfg: str, keys: list[str], rate: float, stop, results) -> None:
    """A separate process: HINCRBY key n 1 round-robin over `keys` at `rate`/s, sequentially,
    through chat1's shard listeners with the chat's own client following the published map."""
    import asyncio

    from chat.cache import ShardedCache

    cf = clusterfile.load(cfg).spec

    async def go():
        cache = ShardedCache.for_host(cf, "chat1", timeout=2.0, max_conns=4)
        follow = asyncio.ensure_future(cache.follow_map())
        counts = dict.fromkeys(keys, 0)
        errors, examples = 0, []
        t0 = time.monotonic()
        i = 0
        while not stop.is_set():
            key = keys[i % len(keys)]
            try:
                await cache.client_for(key).hincrby(key, "n", 1)
                counts[key] += 1
            except Exception as exc:  # noqa: BLE001 -- every error is reported, none is fatal
                errors += 1
                if len(examples) < 5:
                    examples.append(f"{type(exc).__name__}: {exc}")
            i += 1
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        follow.cancel()
        redirects, loads = cache.redirects, cache.map_loads
        await cache.close()
        return {"counts": counts, "errors": errors, "examples": examples, "redirects": redirects,
                "map_loads": loads, "seconds": round(time.monotonic() - t0, 2)}

    results.put(asyncio.run(go()))


# -- the baseline: redis-cli --cluster reshard's way, ten keys a MIGRATE, one at a time --

def start_redis(address: str, port: int, work: Path) -> subprocess.Popen:
    d = work / f"redis-{address}"
    d.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([binaries.require("redis-server"), "--bind", address, "--port", str(port),
                             "--protected-mode", "no", "--save", "", "--appendonly", "no", "--dir", str(d),
                             "--logfile", str(d / "redis.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            r = Raw(address, port, 1)
            r.call("PING")
            r.close()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server on {address}:{port} exited: see {d / 'redis.log'}")
            time.sleep(0.05)
    proc.kill()
    raise TimeoutError(f"redis-server on {address}:{port} did not answer PING")


def baseline(prefix: str, port: int, items: list[tuple], work: Path) -> dict:
    src_addr, dst_addr = f"{prefix}.{BASE_SRC_ADDR}", f"{prefix}.{BASE_DST_ADDR}"
    procs = [start_redis(src_addr, port, work), start_redis(dst_addr, port, work)]
    src = dst = None
    try:
        src, dst = Raw(src_addr, port), Raw(dst_addr, port)
        t = time.perf_counter()
        seed(src, items)
        seed_s = time.perf_counter() - t
        n = src.call("DBSIZE")
        say(f"baseline: {n} keys seeded on {src_addr}:{port} in {seed_s:.1f}s; moving them to "
            f"{dst_addr}:{port}, {BASELINE_BATCH} keys a MIGRATE, one at a time")
        t0 = time.perf_counter()
        found: list[bytes] = []
        cursor = b"0"
        while True:
            cursor, batch = src.call("SCAN", cursor, "COUNT", 1000)
            found += batch
            if cursor == b"0":
                break
        t_scan = time.perf_counter()
        bad = 0
        for i in range(0, len(found), BASELINE_BATCH):
            r = src.send(enc(b"MIGRATE", dst_addr, port, b"", 0, MIGRATE_TIMEOUT_MS, b"KEYS",
                             *found[i:i + BASELINE_BATCH]), 1)[0]
            if isinstance(r, hiredis.ReplyError):
                bad += 1
        took = time.perf_counter() - t0
        left, arrived = src.call("DBSIZE"), dst.call("DBSIZE")
        return {"keys": len(found), "seconds": round(took, 2), "scan_s": round(t_scan - t0, 3),
                "keys_per_s": round(len(found) / took) if took else None, "seed_s": round(seed_s, 2),
                "batches": math.ceil(len(found) / BASELINE_BATCH), "failed_batches": bad,
                "left_on_source": left, "on_target": arrived,
                "how": f"SCAN COUNT 1000, then MIGRATE ... KEYS in batches of {BASELINE_BATCH}, sequential, "
                       "raw socket + hiredis, between two plain redis-servers on the subnet"}
    finally:
        for c in (src, dst):
            if c is not None:
                c.close()
        for p in procs:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


# -- the run --

def loadgen_summary(rep: dict) -> dict:
    return {k: rep.get(k) for k in ("rate", "duration_s", "clients", "senders", "sent", "accepted",
                                     "accepted_per_s", "rejected", "completeness", "lost", "errors",
                                     "error_examples", "latency_ms", "ack_ms")}


def loadgen_errors(rep: dict) -> int:
    return (sum(rep["errors"].values()) + sum(rep["rejected"].values()) + rep["lost"]["unanswered"]
            + rep["lost"]["delivered_without_echo"] + (rep["senders_planned"] - rep["senders"]))


def is_migration(argv: list[bytes]) -> bool:
    """A SLOWLOG entry's arguments: the migration script, by its SHA or (the first time, after
    NOSCRIPT) by its text, which the slowlog keeps the first 128 bytes of."""
    if len(argv) < 2:
        return False
    cmd, arg = argv[0].upper(), argv[1]
    return ((cmd == b"EVALSHA" and arg == slotguard.MIGRATE_SLOTS_SHA.encode())
            or (cmd == b"EVAL" and slotguard.MIGRATE_SLOTS.encode().startswith(arg[:100])))


def percentile(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(len(s) * p / 100) - 1))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="(the last stdout line is always the JSON object)")
    ap.add_argument("--keys", type=int, default=1_000_000, help="keys seeded on shard0 (default 1,000,000)")
    ap.add_argument("--slots", choices=("alternate", "upper"), default="alternate",
                    help="which half of shard0's slots moves: every other slot, or the upper half")
    ap.add_argument("--rate", type=float, default=100.0, help="load generator msgs/s during the move")
    ap.add_argument("--clients", type=int, default=100, help="load generator receivers")
    ap.add_argument("--writes", type=float, default=200.0, help="counted writer HINCRBYs/s during the move")
    ap.add_argument("--group-keys", type=int, default=migrate.GROUP_KEYS)
    ap.add_argument("--group-slots", type=int, default=migrate.GROUP_SLOTS)
    ap.add_argument("--no-baseline", action="store_true", help="skip the baseline (for trying group sizes)")
    ap.add_argument("--keep", action="store_true",
                    help="leave the cluster running; stop it with chatops down")
    args = ap.parse_args()

    prefix = loopback.free_prefix()
    work = Path(tempfile.mkdtemp(prefix="reshard-", dir="/tmp"))
    run_path, cfg = work / "run", work / "cluster.yaml"
    doc = clusterfile.default_on_subnet(prefix)
    doc["redis"]["maxmemory"] = "2gb"
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    cf = clusterfile.load(cfg).spec
    run = types.SimpleNamespace(root=run_path)
    shard = {s.name: (cf.address(s.host), s.port) for s in cf.redis.shards}
    result: dict = {"bench": "reshard"}
    loadgens: list[Loadgen] = []
    writer = None
    raws: list[Raw] = []
    up = False
    try:
        say(f"starting the default cluster on {prefix}.0/24, maxmemory 2gb (work dir {work})")
        t = time.monotonic()
        up = True           # a failed start may have left processes: down stops whatever is there
        out = chatops("up", "--detach", "--config", str(cfg), "--run-dir", str(run_path))
        if out.returncode != 0:
            raise SystemExit(f"reshard: chatops up failed:\n{out.stdout}{out.stderr}")
        use_local_secrets(cf, RunDir(run_path))     # the Redis ACL passwords `up` generated, for our own clients
        say(f"cluster up in {time.monotonic() - t:.1f}s")
        time.sleep(2)

        with slotmaps.connections(cf) as conns:
            smap = slotmaps.load(cf, cfg, run, conns)
        src_i, dst_i = smap.names.index(SOURCE), smap.names.index(TARGET)
        owned_slots = smap.slots_of(src_i)
        moving = owned_slots[::2] if args.slots == "alternate" else owned_slots[len(owned_slots) // 2:]
        moving_set = set(moving)
        owned = bytearray(SLOTS)
        for s in owned_slots:
            owned[s] = 1

        say(f"generating {args.keys:,} keys of the chat's shapes in {SOURCE}'s slots")
        t = time.perf_counter()
        items = make_items(args.keys, owned)
        gen_s = time.perf_counter() - t
        # The control plane's user reads and administers; only clue's may write the chat's keys.
        admin = redis_acl.credentials(cf, redis_acl.CHATOPS)
        src, dst = Raw(*shard[SOURCE], auth=admin), Raw(*shard[TARGET], auth=admin)
        seeder = Raw(*shard[SOURCE], auth=redis_acl.credentials(cf, redis_acl.CLUE))
        raws += [src, dst, seeder]
        t = time.perf_counter()
        seed(seeder, items)
        seed_s = time.perf_counter() - t
        kinds = {}
        for it in items:
            kinds[it[2]] = kinds.get(it[2], 0) + 1
        ttl_n = sum(1 for it in items if it[4])
        moved_items = [it for it in items if it[1] in moving_set]
        say(f"seeded {len(items):,} keys on {SOURCE} in {seed_s:.1f}s ({len(items) / seed_s:,.0f} keys/s; "
            f"generating them took {gen_s:.1f}s); {len(moved_items):,} are in the {len(moving)} slots that "
            f"move; {SOURCE} DBSIZE {src.call('DBSIZE'):,}")

        # The writer's keys: half in moving slots, half in slots that stay.
        wkeys, i = [], 0
        want = {True: 50, False: 50}
        while any(want.values()):
            i += 1
            k = K.user_counters(f"bw{i}", 0)
            s = key_slot(k)
            if owned[s] and want[s in moving_set]:
                want[s in moving_set] -= 1
                wkeys.append(k)

        say(f"load: chat.loadgen at {args.rate:g} msgs/s, {args.clients} receivers; writer at "
            f"{args.writes:g} HINCRBY/s through chat1's listeners")
        lg = Loadgen(cfg, work, f"{prefix}.{LOADGEN_ADDR}", args.rate, args.clients, "move")
        loadgens.append(lg)
        ctx = mp.get_context("spawn")
        stop, results = ctx.Event(), ctx.Queue()
        writer = ctx.Process(target=writer_main, args=(str(cfg), wkeys, args.writes, stop, results),
                             daemon=True)
        writer.start()
        lg.wait_sending()
        time.sleep(3)

        # Where the time goes: the source's slowlog for the migration scripts, commandstats.
        old_slowlog = [src.call("CONFIG", "GET", k)[1]
                       for k in ("slowlog-log-slower-than", "slowlog-max-len")]
        src.call("CONFIG", "SET", "slowlog-log-slower-than", SLOWLOG_US)
        src.call("CONFIG", "SET", "slowlog-max-len", 100_000)
        src.call("SLOWLOG", "RESET")
        cs0 = {SOURCE: commandstats(src), TARGET: commandstats(dst)}
        marks: list[tuple[float, float, str, int]] = []

        def on_progress(p: migrate.Progress) -> None:
            marks.append((time.perf_counter(), time.process_time(), p.phase, p.keys_moved))

        say(f"moving {len(moving)} slots ({args.slots}) {SOURCE} -> {TARGET}, group_keys {args.group_keys}, "
            f"group_slots {args.group_slots}")
        psutil.cpu_percent(None)
        cpu0, t0 = time.process_time(), time.perf_counter()
        res = migrate.move_slots(cf, cfg, run, SOURCE, TARGET, moving, on_progress=on_progress,
                                 group_keys=args.group_keys, group_slots=args.group_slots)
        took, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        busy = psutil.cpu_percent(None)
        cs1 = {SOURCE: commandstats(src), TARGET: commandstats(dst)}
        slow = src.call("SLOWLOG", "GET", 100_000)
        src.call("CONFIG", "SET", "slowlog-log-slower-than", old_slowlog[0])
        src.call("CONFIG", "SET", "slowlog-max-len", old_slowlog[1])
        keys_per_s = res.keys_moved / took
        say(f"moved {res.keys_moved:,} keys in {took:.2f}s: {keys_per_s:,.0f} keys/s (map epoch "
            f"{res.slot_map.epoch}, publish failed on {res.publish_failed or 'none'})")

        time.sleep(3)   # traffic after the publication too: clues switch to the new map
        stop.set()
        wres = results.get(timeout=30)
        writer.join(10)
        rep = lg.stop()
        say(f"load during the move: sent {rep['sent']}, accepted {rep['accepted']}, completeness "
            f"{rep['completeness']}, rejected {rep['rejected']}, errors {rep['errors']}, lost {rep['lost']}; "
            f"writer {sum(wres['counts'].values())} writes, {wres['errors']} errors, "
            f"{wres['redirects']} redirects")

        # -- where the time went --
        scan_at, scan_cpu = next(((t, c) for t, c, ph, _ in marks if ph == "scanning"), (t0, cpu0))
        moving_marks = [(t, k) for t, _, ph, k in marks if ph == "moving"]
        first_move, move_cpu = next(((t, c) for t, c, ph, _ in marks if ph == "moving"), (scan_at, scan_cpu))
        pub_at, pub_cpu = next(((t, c) for t, c, ph, _ in marks if ph == "publishing"),
                               (t0 + took, cpu0 + cpu))
        groups = [b[0] - a[0] for a, b in itertools.pairwise(moving_marks)]
        group_keys_moved = [b[1] - a[1] for a, b in itertools.pairwise(moving_marks)]
        scripts = [e[2] / 1000 for e in slow if is_migration(e[3])]
        delta = {}
        for name in (SOURCE, TARGET):
            d = {}
            for cmd, (calls, usec) in cs1[name].items():
                c0, u0 = cs0[name].get(cmd, (0, 0))
                if usec - u0 > 1000:
                    d[cmd] = {"calls": calls - c0, "ms": round((usec - u0) / 1000, 1)}
            delta[name] = dict(sorted(d.items(), key=lambda kv: -kv[1]["ms"]))
        moving_s = pub_at - first_move
        profile = {
            "setup_s": round(scan_at - t0, 3), "scan_s": round(first_move - scan_at, 3),
            "groups_s": round(moving_s, 3), "publish_s": round(t0 + took - pub_at, 3),
            "scan_cpu_s": round(move_cpu - scan_cpu, 3), "groups_cpu_s": round(pub_cpu - move_cpu, 3),
            "groups_keys_per_s": round(res.keys_moved / moving_s) if moving_s > 0 else None,
            "groups": len(groups), "group_s_p50": round(percentile(groups, 50) or 0, 4),
            "group_s_max": round(max(groups, default=0), 4),
            "keys_per_group_p50": percentile(group_keys_moved, 50),
            "script_ms_total": round(sum(scripts), 1), "script_ms_p50": percentile(scripts, 50),
            "script_ms_max": max(scripts, default=None), "scripts_logged": len(scripts),
            "outside_script_s": round(moving_s - sum(scripts) / 1000, 3),
            "bench_process_cpu_s": round(cpu, 2), "machine_cpu_busy_percent": busy,
            "server_ms_by_command": delta,
        }
        say(f"profile: setup {profile['setup_s']}s, scan {profile['scan_s']}s, {len(groups)} groups "
            f"{profile['groups_s']}s (scripts {profile['script_ms_total'] / 1000:.2f}s, longest "
            f"{profile['script_ms_max']} ms), publish {profile['publish_s']}s; this process's CPU "
            f"{cpu:.2f}s (scan {profile['scan_cpu_s']}s, groups {profile['groups_cpu_s']}s); the machine was "
            f"{busy:.0f}% busy")

        # -- verification, straight on the shards --
        say("verifying every seeded key on the shard the new map names")
        newmap = res.slot_map
        by_owner: dict[int, list[tuple]] = {}
        for it in items:
            by_owner.setdefault(newmap.shard_of_slot(it[1]), []).append(it)
        checks = {"missing": 0, "wrong_value": 0, "ttl_lost": 0, "ttl_added": 0}
        stray = 0
        names = newmap.names
        for owner, its in by_owner.items():
            if names[owner] not in (SOURCE, TARGET):
                raws.append(Raw(*shard[names[owner]], auth=admin))
            r = src if names[owner] == SOURCE else dst if names[owner] == TARGET else raws[-1]
            for k, v in check_items(r, its).items():
                checks[k] += v
            other = dst if r is src else src
            stray += count_present(other, [it[0] for it in its])
        wrong_owner = sum(len(v) for o, v in by_owner.items() if o not in (src_i, dst_i))
        counters_short = counters_over = 0
        for k, n in wres["counts"].items():
            owner = newmap.shard_of(k)
            r = src if owner == src_i else dst
            got = int(r.call("HGET", k, "n") or 0)
            counters_short += max(0, n - got)
            counters_over += max(0, got - n - wres["errors"])
            stray += (dst if r is src else src).call("EXISTS", k)
        evicted = {name: int(info(c, "stats").get("evicted_keys", 0))
                   for name, c in ((SOURCE, src), (TARGET, dst))}
        lost_keys = checks["missing"] + checks["wrong_value"] + checks["ttl_lost"] + counters_short
        say(f"verified: {checks}, {stray} stray copies on the other shard, writer counters short by "
            f"{counters_short}, evicted {evicted}")

        base = None
        if not args.no_baseline:
            lg2 = Loadgen(cfg, work, f"{prefix}.{LOADGEN_ADDR}", args.rate, args.clients, "base")
            loadgens.append(lg2)
            lg2.wait_sending()
            try:
                base = baseline(prefix, 6379, moved_items, work)
            finally:
                rep2 = lg2.stop()
            base["loadgen_completeness"] = rep2["completeness"]
            say(f"baseline: {base['keys']:,} keys in {base['seconds']}s: {base['keys_per_s']:,} keys/s "
                f"({base['left_on_source']} left on the source, {base['on_target']} on the target)")

        base_rate = base["keys_per_s"] if base else None
        completeness = rep["completeness"]
        client_errors = loadgen_errors(rep)
        result.update({
            "keys": res.keys_moved, "seconds": round(took, 2), "keys_per_s": round(keys_per_s),
            "baseline_keys_per_s": base_rate,
            "ratio": round(keys_per_s / base_rate, 2) if base_rate else None,
            "lost_keys": lost_keys, "client_errors": client_errors, "completeness": completeness,
            "seed_s": round(seed_s, 2),
            "seeded": len(items), "seed_keys_per_s": round(len(items) / seed_s),
            "seeded_kinds": {"string": kinds.get("s", 0), "hash": kinds.get("h", 0), "set": kinds.get("z", 0),
                             "with_ttl": ttl_n},
            "seeded_in_moved_slots": len(moved_items),
            "slots_moved": len(res.moved_slots), "slots_choice": args.slots, "from": SOURCE, "to": TARGET,
            "group_keys": args.group_keys, "group_slots": args.group_slots,
            "publish_failed": res.publish_failed, "epoch": res.slot_map.epoch,
            "profile": profile,
            "verify": {**checks, "stray_copies": stray, "wrong_owner": wrong_owner,
                       "writer_counters_short": counters_short, "writer_counters_over": counters_over,
                       "evicted_keys": evicted},
            "writer": {"writes": sum(wres["counts"].values()), "errors": wres["errors"],
                       "examples": wres["examples"], "redirects": wres["redirects"],
                       "map_loads": wres["map_loads"], "keys": len(wkeys), "rate": args.writes},
            "loadgen": loadgen_summary(rep),
            "baseline": base,
            "targets": {"keys_per_s": TARGET_KEYS_PER_S, "lost_keys": 0, "completeness": 1.0},
            "met": {"keys_per_s": keys_per_s >= TARGET_KEYS_PER_S, "lost_keys": lost_keys == 0,
                    "completeness": completeness == 1.0},
            "subnet": prefix, "cpus": os.cpu_count(),
        })
    finally:
        for c in raws:
            c.close()
        if writer is not None and writer.is_alive():
            writer.terminate()
            writer.join(5)
        for lg in loadgens:
            lg.kill()
        if up:
            if args.keep:
                say(f"cluster left running: chatops down --run-dir {run_path}")
            else:
                down = chatops("down", "--run-dir", str(run_path))
                say(down.stdout.strip() or down.stderr.strip())
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
