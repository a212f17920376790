"""The sharded Redis client the chat services use: the talk's `redis_cluster.get_instance(key)`.

Each shard is reached through the chat host's own HAProxy listener (the talk's
`CACHE_SERVER=localhost CACHE_PORT=2000`, here `<host address>:<listener_base_port + i>`), over
one bounded connection pool per shard. A key picks its shard through the slot map
(`chat.sharding`); clients and pipelines refuse keys that live on another shard, so the talk's
problem pattern #2 (a pipeline spanning shards) fails loudly in development instead of quietly
writing to the wrong shard in production.

Every batch runs on its shard through the slot guard (`chat.slotguard`): one Lua script that
checks the shard still owns each slot the batch touches and then runs the commands. A shard that
no longer owns a slot refuses the whole batch and names the new owner; the client remembers the
redirect, resends there, and fetches the newer map the control plane published (it checks for one
every half second anyway). So a client with a stale map is refused, never served by the old owner.

Every command is counted per shard, per slot and per key prefix in plain in-process counters
(`stats()`); the service turns them into metrics at scrape time. A shard that cannot be reached
is logged in the talk's style, at most once a second per shard, and raised as `CacheUnavailable`
so the caller can fail closed.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import heapq
import itertools
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import hiredis
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from chat import logs, slotguard
from chat.sharding import SLOTS, SlotMap, key_prefix, key_slot
from cluster import durations, redis_acl, spec
from cluster.redis_acl import Credentials
from cluster.rundir import RunDir

__all__ = ["CacheUnavailable", "CrossShardError", "RoutedPipeline", "ShardEndpoint", "ShardedCache"]

LOG_EVERY = 1.0          # seconds between error lines for one shard; the rest are counted
MAX_REDIRECTS = 4        # a batch follows at most this many refusals before failing closed
FOLLOW_EVERY = 0.5       # seconds between checks for a newer published slot map
MAX_PREFIXES = 1000      # distinct prefixes counted before the rest go to OTHER_PREFIX
OTHER_PREFIX = "(other)"
NO_KEY = "(none)"

# What "the shard is unreachable" looks like from redis-py: refused, reset or closed connections,
# timeouts, an exhausted pool (a ConnectionError too), and raw socket errors.
_UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


class CacheUnavailable(Exception):
    """A shard could not answer in time; callers fail closed (refuse the message, not crash)."""

    def __init__(self, shard: str, detail: str):
        super().__init__(f"{shard}: {detail}")
        self.shard = shard
        self.detail = detail


class CrossShardError(ValueError):
    """A key was sent to a client or pipeline of a shard that does not own the key's slot."""

    def __init__(self, message: str, key: Any, anchor: Any = None):
        super().__init__(message)
        self.key = key
        self.anchor = anchor


@dataclass(frozen=True)
class ShardEndpoint:
    """Where this host reaches shard `index`: its local HAProxy listener, not the shard itself."""
    index: int
    name: str
    address: str
    port: int

    @property
    def where(self) -> str:
        return f"{self.address}:{self.port}"


# -- which arguments of a command are keys --
# redis-py passes a subcommand inside the name ("CLIENT LIST", "OBJECT ENCODING"), so the first
# argument after the name is the key for every command not listed here.
_NO_KEYS, _ALL, _TWO, _ALL_BUT_LAST, _PAIRS, _NUMKEYS, _PRIVMSG_OP = range(7)
_KINDS: dict[str, int] = {
    **dict.fromkeys("PING ECHO INFO TIME DBSIZE CLIENT CONFIG COMMAND SCRIPT FUNCTION FLUSHDB "
                    "FLUSHALL SELECT HELLO AUTH SLOWLOG LATENCY DEBUG SCAN RANDOMKEY KEYS MULTI "
                    "EXEC DISCARD UNWATCH WAIT LASTSAVE SAVE BGSAVE BGREWRITEAOF ROLE PUBLISH "
                    "SPUBLISH SUBSCRIBE UNSUBSCRIBE PSUBSCRIBE PUNSUBSCRIBE PUBSUB MONITOR QUIT "
                    "SWAPDB READONLY READWRITE ACL MODULE SHUTDOWN CLUSTER RESET".split(), _NO_KEYS),
    **dict.fromkeys("MGET DEL UNLINK EXISTS TOUCH WATCH SINTER SUNION SDIFF SINTERSTORE "
                    "SUNIONSTORE SDIFFSTORE PFCOUNT PFMERGE".split(), _ALL),
    **dict.fromkeys("RENAME RENAMENX RPOPLPUSH BRPOPLPUSH SMOVE LMOVE BLMOVE COPY".split(), _TWO),
    **dict.fromkeys("BLPOP BRPOP".split(), _ALL_BUT_LAST),
    **dict.fromkeys("MSET MSETNX".split(), _PAIRS),
    **dict.fromkeys("EVAL EVALSHA EVAL_RO EVALSHA_RO FCALL FCALL_RO".split(), _NUMKEYS),
    slotguard.PRIVMSG_OP.upper(): _PRIVMSG_OP,
}
_RESOLVED: dict[Any, int] = {}    # command name as redis-py sends it -> kind, filled on first use


@functools.lru_cache(maxsize=1 << 16, typed=True)
def _key_info(key: Any) -> tuple[int, str]:
    """(slot, prefix) of a key, remembered: the same room and user keys come back with every
    message, and their CRC and prefix were a tenth of clue's CPU per message. typed: 1 and 1.0
    are different keys ("1", "1.0")."""
    return key_slot(key), key_prefix(key)


def key_info(key: Any) -> tuple[int, str]:
    try:
        return _key_info(key)
    except TypeError:           # unhashable (bytearray, memoryview): computed each time
        return key_slot(key), key_prefix(key)


def command_keys(args: Sequence[Any]) -> Sequence[Any]:
    """The key arguments of a redis-py command tuple `(name, *args)`."""
    if len(args) < 2:
        return ()
    name = args[0]
    kind = _RESOLVED.get(name)
    if kind is None:
        kind = _KINDS.get(str(name).split(" ", 1)[0].upper(), -1)
        if len(_RESOLVED) < 1024:   # command names come from redis-py's code: a small, fixed set
            _RESOLVED[name] = kind
    if kind == -1:
        return args[1:2]
    if kind == _NO_KEYS:
        return ()
    if kind == _ALL:
        return args[1:]
    if kind == _TWO:
        return args[1:3]
    if kind == _ALL_BUT_LAST:
        return args[1:-1]
    if kind == _PAIRS:
        return args[1::2]
    if kind == _PRIVMSG_OP:
        return args[1:1 + slotguard.PRIVMSG_KEYS]
    try:  # _NUMKEYS: name script numkeys key... arg...
        return args[3:3 + int(args[2])]
    except (IndexError, ValueError, TypeError):
        return ()


def _format_seconds(value: float) -> str:
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:g}s"


def _errno_name(exc: BaseException) -> str | None:
    """The errno name (ECONNREFUSED, ECONNRESET, ...) behind a redis-py error, if there is one.

    redis-py wraps the socket's OSError in its own ConnectionError; the original stays on the
    exception chain."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 6:
        if isinstance(current, OSError) and current.errno:
            return errno.errorcode.get(current.errno, f"errno {current.errno}")
        current = current.__cause__ or current.__context__
        seen += 1
    return None


class ShardedCache:
    """One bounded connection pool per shard, keys routed by slot, every command counted.

    Pools are `BlockingConnectionPool`s: when all `max_conns` connections of a shard are busy, a
    burst waits up to `timeout` for one to come back rather than opening more connections. An
    unbounded pool under a burst is exactly how the talk's clients piled thousands of connections
    onto one Redis; a bounded wait turns that into a visible, fail-closed timeout instead.

    Every step (waiting for a pooled connection, connecting, each read and write) is bounded by
    `timeout`, and redis-py's own retries are off (Retry(NoBackoff(), 0)): a call on an
    unreachable shard fails at the first step that blocks, so after about one timeout (a few at
    worst: pool wait, then connect, then read), and whether to retry is the caller's call.
    """

    def __init__(self, endpoints: Sequence[ShardEndpoint], slot_map: SlotMap | None = None, *,
                 max_conns: int = 10, timeout: float | str = 0.1, logger: logging.Logger | None = None,
                 client_name: str | None = None, decode_responses: bool = True, read_map: bool = True,
                 auth: Credentials | None = None):
        if not endpoints:
            raise ValueError("a sharded cache needs at least one shard")
        if [e.index for e in endpoints] != list(range(len(endpoints))):
            raise ValueError("shard endpoints must be given in index order 0..n-1")
        slot_map = slot_map or SlotMap.even(len(endpoints))
        self._check_map(slot_map, len(endpoints))
        if isinstance(timeout, str):
            timeout = durations.seconds(timeout)
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        if max_conns < 1:
            raise ValueError(f"max_conns must be at least 1, not {max_conns!r}")
        self.endpoints = tuple(endpoints)
        self.max_conns = max_conns
        self.timeout = float(timeout)
        self.timeout_text = _format_seconds(self.timeout)
        self._map = slot_map
        self._log = logger or logging.getLogger("chatops.cache")
        self._closed = False
        self._auth = auth
        self._pools = [self._pool(e, client_name, decode_responses) for e in endpoints]
        self._client_name = client_name
        self._decode = decode_responses
        self._clients = [_ShardClient(self, e.index, pool) for e, pool in zip(endpoints, self._pools)]
        # Unrouted clients on the same pools, for the guard script and the published map's keys.
        self._raw = [aioredis.Redis(connection_pool=pool) for pool in self._pools]
        self._redirects: dict[int, int] = {}    # slot -> owner learned from a refusal, until the next map
        self._refreshing: asyncio.Task | None = None
        # Read the shards' published map before the first command (False: keep the map given,
        # as a test of a stale client does; refusals still redirect it).
        self._map_checked = not read_map
        # Counters: plain lists and one Counter, since this runs once per Redis command.
        n = len(endpoints)
        self._ops_by_shard = [0] * n
        self._errors_by_shard = [0] * n
        self._ops_by_slot = [0] * SLOTS
        self._guarded_by_slot = [0] * SLOTS     # guarded batches, under their first slot
        self._ops_by_prefix: Counter[str] = Counter()
        self._last_logged = [float("-inf")] * n
        self._suppressed = [0] * n
        self.redirects = 0                      # batches resent after a refusal, for the metrics
        self.map_loads = 0

    def _pool(self, e: ShardEndpoint, client_name: str | None, decode: bool) -> aioredis.BlockingConnectionPool:
        return aioredis.BlockingConnectionPool(
            host=e.address, port=e.port, max_connections=self.max_conns,
            timeout=self.timeout,                       # wait for a free pooled connection
            socket_connect_timeout=self.timeout, socket_timeout=self.timeout,
            retry=Retry(NoBackoff(), 0),                # no silent retries: the caller decides
            # RESP2: the guard script's replies have RESP2 shapes (Lua converts them so), and
            # the commands' response callbacks must be the ones for those shapes.
            protocol=2,
            # AUTH once per new connection (the pool keeps them), as ACL user `clue`.
            username=self._auth.user if self._auth else None,
            password=self._auth.password if self._auth else None,
            client_name=client_name, decode_responses=decode)

    @classmethod
    def for_host(cls, cf: spec.ClusterFile, host: str, *, slot_map: SlotMap | None = None,
                 max_conns: int | None = None, timeout: float | str | None = None,
                 logger: logging.Logger | None = None, client_name: str | None = None,
                 decode_responses: bool = True, read_map: bool = True,
                 run: RunDir | None = None) -> ShardedCache:
        """The cache as chat host `host` sees it: shard i at `<host address>:<listener port i>`,
        pool size and timeout from its cluster's clue settings unless given, logged in as ACL user
        `clue` (its password from its variable, else the local run dir's secrets: cluster.redis_acl)."""
        if host not in cf.hosts:
            raise ValueError(f"unknown host {host!r} (not under hosts: in the cluster file)")
        cluster = cf.cluster_of(host)
        if cluster is None:
            raise ValueError(f"{host!r} is not a chat host of any cluster, so it runs no HAProxy "
                             "listeners to reach the shards through")
        clue = cf.clusters[cluster].services.clue
        address = cf.address(host)
        endpoints = [ShardEndpoint(i, shard.name, address, cf.listener_port(i))
                     for i, shard in enumerate(cf.redis.shards)]
        return cls(endpoints, slot_map,
                   max_conns=clue.cache_max_conns if max_conns is None else max_conns,
                   timeout=clue.cache_timeout if timeout is None else timeout,
                   logger=logger, client_name=client_name, decode_responses=decode_responses, read_map=read_map,
                   auth=redis_acl.credentials(cf, redis_acl.CLUE, run))

    @staticmethod
    def _check_map(slot_map: SlotMap, n_shards: int) -> None:
        if slot_map.n_shards != n_shards:
            raise ValueError(f"the slot map is for {slot_map.n_shards} shards, "
                             f"but the cluster file has {n_shards}")

    # -- routing --

    @property
    def slot_map(self) -> SlotMap:
        return self._map

    def use_slot_map(self, slot_map: SlotMap) -> None:
        """Route by a new map: shards it adds get a pool (on this host's next listener ports),
        shards it drops lose theirs, and redirects learned under the old map are forgotten."""
        n = slot_map.n_shards
        while len(self.endpoints) < n:
            i = len(self.endpoints)
            first = self.endpoints[0]
            # Listener ports are consecutive from the first: shard i is listener_base_port + i.
            e = ShardEndpoint(i, slot_map.names[i], first.address, first.port + i)
            pool = self._pool(e, self._client_name, self._decode)
            self.endpoints += (e,)
            self._pools.append(pool)
            self._clients.append(_ShardClient(self, i, pool))
            self._raw.append(aioredis.Redis(connection_pool=pool))
            for counters, start in ((self._ops_by_shard, 0), (self._errors_by_shard, 0),
                                    (self._last_logged, float("-inf")), (self._suppressed, 0)):
                counters.append(start)
        if len(self.endpoints) > n:
            dropped = self._pools[n:]
            self.endpoints = self.endpoints[:n]
            for seq in (self._pools, self._clients, self._raw, self._ops_by_shard, self._errors_by_shard,
                        self._last_logged, self._suppressed):
                del seq[n:]
            for pool in dropped:
                asyncio.ensure_future(pool.disconnect())
        self._map = slot_map
        self._redirects = {}

    def _owner(self, slot: int) -> int:
        if self._redirects:
            owner = self._redirects.get(slot)
            if owner is not None:
                return owner
        return self._map.shard_of_slot(slot)

    def shard_of(self, key: str | bytes) -> int:
        return self._owner(key_info(key)[0])

    def shard_of_slot(self, slot: int) -> int:
        return self._owner(slot)

    def client_for(self, key: str | bytes) -> aioredis.Redis:
        """The client of the shard owning `key` (the talk's get_instance(key))."""
        return self._clients[self.shard_of(key)]

    def client_for_shard(self, index: int) -> aioredis.Redis:
        """The client of shard `index`, for keyless commands (PING, INFO, CLIENT INFO)."""
        return self._clients[index]

    def pipeline_for(self, key: str | bytes, transaction: bool = False) -> RoutedPipeline:
        """A pipeline on `key`'s shard that refuses any key living on another shard."""
        shard = self.shard_of(key)
        return RoutedPipeline(self, shard, key, self._pools[shard],
                              self._clients[shard].response_callbacks, transaction)

    # -- the published map --

    async def refresh_map(self) -> bool:
        """Adopt the newest map any shard holds, if it is newer than ours; True when it was.

        Every shard holds a copy (the control plane writes it to all), so the map can be read
        while the control plane is down, and while some shards are."""
        self._map_checked = True
        n = len(self._raw)
        epochs = await asyncio.gather(*(self._raw[i].get(slotguard.EPOCH) for i in range(n)),
                                      return_exceptions=True)
        best, where = self._map.epoch, -1
        for i, value in enumerate(epochs):
            if isinstance(value, BaseException) or value is None:
                continue
            epoch = int(value) if str(value if isinstance(value, str) else value.decode()).isdigit() else -1
            if epoch > best:
                best, where = epoch, i
        if where < 0:
            return False
        try:
            text = await self._raw[where].get(slotguard.MAP)
            smap = SlotMap.from_json(text)
        except (*_UNAVAILABLE, ValueError) as exc:
            self._report(where, f"Cannot read the slot map on {self.endpoints[where].name}: {exc}")
            return False
        if smap.epoch <= self._map.epoch:
            return False
        self.use_slot_map(smap)
        self.map_loads += 1
        logs.event(self._log, "slotmap", f"routing by slot map epoch {smap.epoch}", shards=smap.n_shards)
        return True

    async def follow_map(self, every: float = FOLLOW_EVERY) -> None:
        """Check for a newer map every `every` seconds until cancelled (a service's task)."""
        while not self._closed:
            try:
                await self.refresh_map()
            except Exception as exc:  # noqa: BLE001 -- a bad poll must not end the loop
                self._log.warning("slot map check failed: %r", exc)
            await asyncio.sleep(every)

    async def _refresh_soon(self) -> None:
        """One refresh at a time, shared by every batch that was refused meanwhile."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self.refresh_map())
        try:
            await asyncio.shield(self._refreshing)
        except Exception:  # noqa: BLE001 -- the redirect itself still routes the retry
            pass

    # -- guarded execution --

    async def _execute(self, shard: int, commands: list[tuple[tuple, dict]], raise_on_error: bool,
                       slots: dict[int, list[Any]] | None = None) -> list[Any]:
        """Run `commands` (a pipeline's stack: (args, options) each) through the slot guard,
        starting on `shard`; a refused part is re-routed by the redirect and resent. `slots`:
        the commands' keys by slot, as `_route` collected them while they were queued."""
        if not self._map_checked:
            # A short-lived client (a CLI command, the loadgen's setup) that never follows the
            # map still starts from the published one, not the cluster file's even split.
            try:
                await self.refresh_map()
            except Exception:  # noqa: BLE001 -- unreadable now: the guard's redirects still route
                pass
            keys = command_keys(commands[0][0]) if commands else ()
            if keys:
                shard = self.shard_of(keys[0])
        results: list[Any] = [None] * len(commands)
        groups = {shard: list(range(len(commands)))}
        for attempt in range(MAX_REDIRECTS + 1):
            if len(groups) == 1:
                (sh, idxs), = groups.items()
                whole = len(idxs) == len(commands)
                outcomes = [await self._send_guarded(sh, commands if whole else [commands[i] for i in idxs],
                                                     slots if whole else None)]
            else:
                outcomes = await asyncio.gather(*(self._send_guarded(sh, [commands[i] for i in idxs])
                                                  for sh, idxs in groups.items()))
            again: list[int] = []
            for (sh, idxs), out in zip(groups.items(), outcomes):
                if out is None:
                    again += idxs
                    continue
                for i, r in zip(idxs, out):
                    results[i] = r
            if not again:
                break
            self.redirects += 1
            groups = {}
            for i in sorted(again):
                keys = command_keys(commands[i][0])
                target = self._owner(key_slot(keys[0])) if keys else shard
                groups.setdefault(target, []).append(i)
        else:
            name = self.endpoints[shard].name if shard < len(self.endpoints) else f"shard {shard}"
            raise CacheUnavailable(name, f"slots still moving after {MAX_REDIRECTS} redirects")
        if raise_on_error:
            for r in results:
                if isinstance(r, redis.exceptions.ResponseError):
                    raise r
        return results

    async def _send_guarded(self, shard: int, commands: list[tuple[tuple, dict]],
                            slots: dict[int, list[Any]] | None = None) -> list[Any] | None:
        """One guarded batch on `shard`: its replies, or None when the shard refused it (the
        redirect is recorded, so the caller re-routes)."""
        if shard >= len(self._raw):
            await self._refresh_soon()      # a shard we learned of from a refusal: get the map naming it
            return None if shard < len(self._raw) else self._no_shard(shard)
        if slots is None:                   # a re-routed part of a batch: its keys by slot again
            slots = {}
            for args, _ in commands:
                for key in command_keys(args):
                    slots.setdefault(key_slot(key), []).append(key)
        if slots:
            self._guarded_by_slot[next(iter(slots))] += 1
        redirects = self._redirects
        asking = [s for s in slots if s in redirects] if redirects else ()
        argv = slotguard.guard_args(slots, asking, [args for args, _ in commands])
        pool = self._raw[shard].connection_pool
        try:
            try:
                replies = await _call_packed(pool, hiredis.pack_command(("EVALSHA", slotguard.GUARD_SHA, 0, *argv)))
            except redis.exceptions.NoScriptError:
                replies = await _call_packed(pool, hiredis.pack_command(("EVAL", slotguard.GUARD, 0, *argv)))
        except redis.exceptions.ResponseError as exc:
            refused = slotguard.refusal(str(exc))
            if refused is None:
                raise
            unknown = False
            for slot, owner in refused:
                if owner < 0 or owner == shard:
                    unknown = True      # the old owner does not know where it went: the map does
                else:
                    self._redirects[slot] = owner
                    unknown |= owner >= len(self._raw)
            if unknown:
                await self._refresh_soon()
                if any(self._owner(slot) == shard for slot, _ in refused):
                    await asyncio.sleep(0.01)
            return None
        except _UNAVAILABLE as exc:
            raise self._unavailable(shard, exc, commands[0][0][0] if len(commands) == 1 else "pipeline") from exc
        callbacks = self._clients[shard].response_callbacks
        out = []
        for (args, options), reply in zip(commands, replies):
            if not isinstance(reply, redis.exceptions.ResponseError):
                callback = callbacks.get(args[0])
                if callback is not None:
                    options = {k: v for k, v in options.items() if k != "keys"}
                    reply = callback(reply, **options)
            out.append(reply)
        return out

    def _no_shard(self, shard: int) -> list[Any]:
        raise CacheUnavailable(f"shard {shard}", "redirected to a shard no published slot map names yet")

    # -- accounting, called for every command --

    def _route(self, shard: int, args: Sequence[Any], anchor: Any,
               slots: dict[int, list[Any]] | None = None) -> tuple[int, str] | None:
        """Check that every key of the command lives on `shard`; returns (slot, prefix) of the
        first key for counting, or None for a keyless command. Each key is added to `slots` by
        slot, when given: the guard needs them, and the CRCs are computed here already."""
        if self._closed:
            raise CacheUnavailable(self.endpoints[shard].name, "cache client is closed")
        keys = command_keys(args)
        if not keys:
            return None
        owner = self._owner
        first = None
        for key in keys:
            info = key_info(key)
            slot = info[0]
            if owner(slot) != shard:
                raise self._cross_shard(shard, key, slot, anchor)
            if first is None:
                first = info
            if slots is not None:
                slots.setdefault(slot, []).append(key)
        return first

    def _cross_shard(self, shard: int, key: Any, slot: int, anchor: Any) -> CrossShardError:
        owner = self.endpoints[self._owner(slot)].name
        here = self.endpoints[shard].name
        if anchor is None:
            what = f"the client of {here}"
        else:
            what = f"a pipeline on {here} (chosen by key {anchor!r}, slot {key_slot(anchor)})"
        return CrossShardError(
            f"key {key!r} (slot {slot}) lives on {owner}, not on {here}: it cannot go to {what}. "
            "Keys used together need the same hash tag, e.g. '{room}.bans' and '{room}.ratelimits'.",
            key, anchor)

    def _count(self, shard: int, routed: tuple[int, str] | None, n: int = 1) -> None:
        """`n` commands on `shard`, the first key of each at `routed` (slot, prefix)."""
        self._ops_by_shard[shard] += n
        if routed is None:
            return
        slot, prefix = routed
        self._ops_by_slot[slot] += n
        counts = self._ops_by_prefix
        # Bounded: keys with unmasked IDs (no hash tag, no digits) must not grow this forever.
        if prefix in counts or len(counts) < MAX_PREFIXES:
            counts[prefix] += n
        else:
            counts[OTHER_PREFIX] += n

    # -- failures --

    def _unavailable(self, shard: int, exc: BaseException, command: Any) -> CacheUnavailable:
        """Count, log (rate-limited) and describe a failure to reach `shard`."""
        self._errors_by_shard[shard] += 1
        ep = self.endpoints[shard]
        if isinstance(command, bytes):
            command = command.decode("ascii", "replace")
        command = str(command).lower()
        text = str(exc)
        name = _errno_name(exc)
        if isinstance(exc, (redis.exceptions.TimeoutError, TimeoutError)):
            detail = f"Timed out (after {self.timeout_text})"
            line = f"{detail} on {ep.name} ({ep.where}) waiting for: {command}"
        elif "No connection available" in text:
            detail = f"No connection available (all {self.max_conns} busy for {self.timeout_text})"
            line = f"{detail} on {ep.name} ({ep.where}) for: {command}"
        else:
            if name is None:
                # Through HAProxy a down shard usually looks like this: HAProxy accepts, then
                # closes because it has no server to forward to.
                name = "closed by peer" if "closed" in text.lower() else text
            kind = "Connect error" if "connecting to" in text or name == "ECONNREFUSED" else "Connection error"
            detail = f"{kind}: {name}"
            line = f"{kind} on {ep.name} ({ep.where}): {name}"
        self._report(shard, line)
        return CacheUnavailable(ep.name, detail)

    def _report(self, shard: int, line: str) -> None:
        now = time.monotonic()
        if now - self._last_logged[shard] < LOG_EVERY:
            self._suppressed[shard] += 1
            return
        fields: dict[str, Any] = {}
        if self._suppressed[shard]:
            fields["suppressed"] = self._suppressed[shard]
        self._last_logged[shard] = now
        self._suppressed[shard] = 0
        logs.event(self._log, "redis", line, logging.WARNING, **fields)

    # -- stats --

    def top_slots(self, n: int = 20) -> list[tuple[int, int]]:
        """The `n` busiest slots as (slot, ops), busiest first."""
        ops = self._ops_by_slot
        # Only the slots with ops, picked out in C (a few hundred of 16,384): each /metrics and
        # stats scrape asks, and walking every slot in Python was most of clue's /metrics time.
        # nlargest is stable, so equal counts keep slot order, lowest first.
        busy = itertools.compress(range(len(ops)), ops)
        return [(slot, ops[slot]) for slot in heapq.nlargest(n, busy, key=ops.__getitem__)]

    def slot_ops(self) -> list[tuple[int, int]]:
        """(slot, ops) for every slot with at least one command since start, in slot order: the
        per-slot load the reshard planner weighs, all of it rather than the top few. Ops are what
        the shard ran: the commands, plus the guard's own (slotguard.OVERHEAD) for each batch,
        counted under the batch's first slot (a batch is nearly always one room's or one user's
        keys: one hash tag, one slot)."""
        extra = slotguard.OVERHEAD
        return [(slot, count + extra * guarded)
                for slot, (count, guarded) in enumerate(zip(self._ops_by_slot, self._guarded_by_slot))
                if count or guarded]

    def stats(self, top: int = 20) -> dict[str, Any]:
        """Counters since start: ops and errors by shard name, ops by key prefix, busiest slots."""
        names = [e.name for e in self.endpoints]
        top_slots = self.top_slots(top)
        return {
            "ops_by_shard": dict(zip(names, self._ops_by_shard)),
            "errors_by_shard": dict(zip(names, self._errors_by_shard)),
            "ops_by_prefix": dict(self._ops_by_prefix.most_common()),
            "top_slots": top_slots,
            "top_slot_shards": {str(slot): names[self._owner(slot)] for slot, _ in top_slots},
            "slot_map_epoch": self._map.epoch,
            "redirects": self.redirects,
        }

    # -- lifecycle --

    async def close(self) -> None:
        """Close every pool's connections; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        if self._refreshing is not None and not self._refreshing.done():
            self._refreshing.cancel()
        for pool in self._pools:
            await pool.disconnect()

    async def __aenter__(self) -> ShardedCache:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()


async def _call_packed(pool: aioredis.ConnectionPool, packed: bytes) -> Any:
    """One command already packed, on a connection of `pool`: the guard's batch. hiredis packs
    its arguments in C; redis-py's own path encoded them one by one in Python (40 per message)
    and wrapped each call in its retry and observability layers, which this pool disables or
    does not use (no retries, no callbacks for EVALSHA)."""
    conn = await pool.get_connection()
    try:
        await conn.send_packed_command(packed)
        return await conn.read_response()
    except redis.exceptions.ResponseError:
        raise                       # a whole reply was read: the connection is clean
    except BaseException:
        await conn.disconnect()     # cancelled or failed mid-reply: never reuse it
        raise
    finally:
        await pool.release(conn)


class _ShardClient(aioredis.Redis):
    """A redis.asyncio.Redis bound to one shard: checks and counts every command's keys and
    turns connection failures into CacheUnavailable."""

    def __init__(self, cache: ShardedCache, shard: int, pool: aioredis.BlockingConnectionPool):
        super().__init__(connection_pool=pool)
        self._cache = cache
        self._shard = shard

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        cache = self._cache
        slots: dict[int, list[Any]] = {}
        routed = cache._route(self._shard, args, None, slots)
        cache._count(self._shard, routed)
        if routed is None:   # keyless (PING, INFO, CLIENT ...): nothing for the guard to check
            try:
                return await super().execute_command(*args, **options)
            except _UNAVAILABLE as exc:
                raise cache._unavailable(self._shard, exc, args[0]) from exc
        reply, = await cache._execute(self._shard, [(args, options)], True, slots)
        return reply

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> RoutedPipeline:
        return RoutedPipeline(self._cache, self._shard, None, self.connection_pool,
                              self.response_callbacks, transaction)


class RoutedPipeline(Pipeline):
    """A redis.asyncio pipeline pinned to one shard.

    Each command's keys are checked as it is queued (CrossShardError names the offending key and
    the key that chose the shard); commands are counted when `execute()` sends them.
    """

    def __init__(self, cache: ShardedCache, shard: int, anchor: Any, pool: aioredis.ConnectionPool,
                 response_callbacks: Any, transaction: bool):
        super().__init__(pool, response_callbacks, transaction, None)
        self._cache = cache
        self._shard = shard
        self._anchor = anchor
        self._queued: list[tuple[int, str] | None] = []
        self._queued_op: list[tuple[tuple[int, str], int]] = []     # (slot, prefix), commands
        self._slots: dict[int, list[Any]] = {}      # the queued commands' keys, by slot, for the guard

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        immediate = (self.watching or args[0] == "WATCH") and not self.explicit_transaction
        routed = self._cache._route(self._shard, args, self._anchor, None if immediate else self._slots)
        if self._anchor is None and routed is not None:
            self._anchor = command_keys(args)[0]    # the first key names the pipeline in errors
        if immediate:
            # WATCH, and commands after it until MULTI, run immediately.
            self._cache._count(self._shard, routed)
            return self._immediate(args, kwargs)
        self._queued.append(routed)
        return self.pipeline_execute_command(*args, **kwargs)

    def privmsg_check(self, bans: str, mods: str, room: str, limits: str, user_counters: str,
                      room_counter: str, login: str, user_ttl: int, room_ttl: int,
                      room_fields: Sequence[str]) -> RoutedPipeline:
        """Queue the guard's PRIVMSG op (chat.slotguard.PRIVMSG_LUA): the eight commands clue ran
        per message on the room's shard, in one. Counted as those eight commands."""
        args = (slotguard.PRIVMSG_OP, bans, mods, room, limits, user_counters, room_counter, login,
                user_ttl, room_ttl, *room_fields)
        cache, shard = self._cache, self._shard
        cache._route(shard, args, self._anchor, self._slots)
        if self._anchor is None:
            self._anchor = bans
        self._queued_op += zip(map(key_info, args[1:]), slotguard.PRIVMSG_COMMANDS)
        return self.pipeline_execute_command(*args)

    async def _immediate(self, args: tuple, kwargs: dict) -> Any:
        try:
            return await self.immediate_execute_command(*args, **kwargs)
        except _UNAVAILABLE as exc:
            raise self._cache._unavailable(self._shard, exc, args[0]) from exc

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        cache, shard = self._cache, self._shard
        if (self._queued or self._queued_op) and cache._closed:
            raise CacheUnavailable(cache.endpoints[shard].name, "cache client is closed")
        for routed in self._queued:
            cache._count(shard, routed)
        for routed, n in self._queued_op:
            cache._count(shard, routed, n)
        self._queued = []
        self._queued_op = []
        slots, self._slots = self._slots, {}
        if self.watching or not self.command_stack:
            # After WATCH the transaction is redis-py's own (unguarded: the chat never uses it).
            try:
                return await super().execute(raise_on_error)
            except _UNAVAILABLE as exc:
                raise cache._unavailable(shard, exc, "pipeline") from exc
        # One guard script runs the whole stack atomically, so a MULTI/EXEC pipeline keeps its
        # promise too.
        stack, self.command_stack = self.command_stack, []
        return await cache._execute(shard, stack, raise_on_error, slots)

    async def reset(self) -> None:
        self._queued = []
        self._queued_op = []
        self._slots = {}
        await super().reset()
