"""tpp-leak: the testing cluster leaks idle connections into the shard that holds the hot room's
keys until that shard is at maxclients ("2012 6421->chat-testing.internal.twitch.tv").

The connections go through the testing host's own HAProxy listener for the shard, so Redis sees
them from the testing host's address, exactly as lsof did. A loopback machine cannot hold 10,000
of them comfortably, so the fault first lowers the shard's `maxclients` (CONFIG SET, live only) to
what it holds now plus the leak, less a few: the leak then fills it and the last connections are
refused, as clue's were in 2014. Undo closes the leak and puts `maxclients` back.
"""

from __future__ import annotations

import socket
import threading
import time

import redis

from controlplane.scenarios.base import Env, Expect, Fault, ScenarioError, shard_of_room, testing_host

LEAK = 1500           # idle connections (leaked_idle_clients is 500 by default)
REFUSED = 20          # this many past maxclients, so the shard is seen refusing
GROW_S = 12.0         # the leak grows over this long, as a leak does, rather than in one burst: a shard
                      # filled between two CLIENT LIST scrapes refuses the one that would name the host


class Leak(Fault):
    name = "tpp-leak"
    title = "the testing cluster leaks idle connections into the hot room's shard"
    talk = "Feb 17, 10:10pm: CLIENT LIST | grep idle | wc -l -> 2311; lsof: 2012 from chat-testing"
    fixes = ("kill_clients",)

    def __init__(self, n: int | None = None) -> None:
        super().__init__()
        self.n = n
        self.socks: list[socket.socket] = []
        self.admin: redis.Redis | None = None
        self.old_maxclients: int | None = None
        self.shard: str | None = None
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def _where(self, env: Env) -> tuple[str, str, str]:
        if self.shard is None:
            self.shard = shard_of_room(env, env.room)
        host, cluster = testing_host(env)
        return self.shard, host, cluster

    def expects(self, env: Env) -> list[Expect]:
        shard, host, _ = self._where(env)
        return [Expect("leaked_clients", f"{host}->{shard}"), Expect("leaked_clients", f"{shard}:maxclients"),
                Expect("ingestion_timeouts", "*", False), Expect("delivery_gap", "*", False),
                Expect("proxy_saturation", "*", False)]

    def cause_terms(self, env: Env) -> list[tuple[str, ...]]:
        _, host, cluster = self._where(env)
        return [(host,), (cluster,)]

    def inject(self, env: Env) -> None:
        shard, host, cluster = self._where(env)
        n = self.n or env.opt("leak", LEAK)
        spec = next(s for s in env.cf.redis.shards if s.name == shard)
        # Our own connection, straight to the shard, opened before it is full: the undo must get in.
        self.admin = redis.Redis(host=env.cf.address(spec.host), port=spec.port, socket_timeout=5)
        try:
            self.old_maxclients = int(self.admin.config_get("maxclients")["maxclients"])
            connected = int(self.admin.info("clients")["connected_clients"])
        except redis.RedisError as exc:
            raise ScenarioError(f"{shard} does not answer: {exc}") from None
        limit = max(connected + n - REFUSED, 16)
        self.admin.config_set("maxclients", limit)
        self.title = (f"{n:,} idle connections from {host} ({cluster} cluster) into {shard}, "
                      f"maxclients {self.old_maxclients} -> {limit}")
        address = env.cf.address(host)
        port = env.cf.listener_port([s.name for s in env.cf.redis.shards].index(shard))
        self.mark_began()
        self.stop.clear()
        grow = env.opt("leak_grow_s", GROW_S)

        def leak() -> None:
            refused = 0
            for i in range(n):
                if self.stop.is_set():
                    return
                due = self.began + grow * i / n
                if due > time.time():
                    self.stop.wait(due - time.time())
                try:
                    s = socket.create_connection((address, port), timeout=5)
                    self.socks.append(s)
                    s.sendall(b"PING\r\n")
                    if not s.recv(64).startswith(b"+PONG"):
                        refused += 1
                except OSError:
                    refused += 1
            env.say(f"{self.name}: {n - refused} idle connections from {host} to {shard} through "
                    f"{address}:{port} in {grow:g}s, {refused} refused at maxclients {limit}")
        self.thread = threading.Thread(target=leak, name="gameday-leak", daemon=True)
        self.thread.start()

    def undo(self, env: Env) -> list[str]:
        done = []
        self.stop.set()
        if self.thread is not None:
            self.thread.join(10)
            self.thread = None
        if self.socks:
            for s in self.socks:
                s.close()
            done.append(f"closed {len(self.socks)} leaked connections")
            self.socks = []
        if self.admin is not None:
            if self.old_maxclients is not None:
                try:
                    self.admin.config_set("maxclients", self.old_maxclients)
                    done.append(f"{self.shard}: maxclients back to {self.old_maxclients}")
                except redis.RedisError as exc:
                    done.append(f"{self.shard}: could NOT put maxclients back to {self.old_maxclients}: {exc} "
                                f"(redis-cli CONFIG SET maxclients {self.old_maxclients})")
            self.admin.close()
            self.admin = None
        if done:
            self.undone = time.time()
        return done
