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

from collectors.redis import admin_auth
from controlplane.scenarios.base import Env, Expect, Fault, ScenarioError, shard_of_room, testing_host

LEAK = 1500           # idle connections (leaked_idle_clients is 500 by default)
REFUSED = 20          # this many past maxclients, so the shard is seen refusing
BURST_S = 2.0         # each step of the leak opens its connections over this long


def schedule(cf, n: int) -> list[float]:
    """When (seconds after the start) each of the n connections opens. A leak grows, it does not
    arrive in one burst, and here it must not: at maxclients the shard refuses the control plane's
    CLIENT LIST too, so a shard filled between two of them is never seen holding the testing host's
    connections. So the leak first grows a little past `leaked_idle_clients`, sits there for two
    CLIENT LIST intervals plus the detectors' hold (the talk's leak sat for hours), then fills the
    shard."""
    from cluster.durations import seconds
    cp = cf.controlplane
    first = min(n, int(cp.thresholds.leaked_idle_clients * 1.2))
    pause = 2 * seconds(cp.scrape.client_list_interval) + seconds(cp.thresholds.hold)
    times = [BURST_S * i / first for i in range(first)]
    rest = n - first
    return times + [BURST_S + pause + BURST_S * i / max(rest, 1) for i in range(rest)]


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
        # The shard at maxclients is what the leak leads to, not what must be seen: a leak found and
        # killed before it fills the shard is the outcome the game day is after.
        return [Expect("leaked_clients", f"{host}->{shard}"), Expect("leaked_clients", f"{shard}:maxclients", False),
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
        auth = admin_auth(env.cf)
        self.admin = redis.Redis(host=env.cf.address(spec.host), port=spec.port, socket_timeout=5,
                                 username=auth.user, password=auth.password)
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
        at = schedule(env.cf, n)

        def leak() -> None:
            refused = 0
            for i in range(n):
                if self.stop.is_set():
                    return
                due = self.began + at[i]
                if due > time.time():
                    self.stop.wait(due - time.time())
                    if self.stop.is_set():
                        return
                    gone = self.killed() if due - (self.began + at[i - 1] if i else due) > 1.0 else 0
                    if gone and gone >= len(self.socks) // 2:
                        # The control plane killed the leak before it filled the shard: the testing
                        # cluster is "shut off", as at 11:12pm, and leaks no more.
                        env.say(f"{self.name}: the leaked connections were killed after {time.time() - self.began:.0f}s;"
                                f" the leak stops growing")
                        return
                try:
                    s = socket.create_connection((address, port), timeout=5)
                    self.socks.append(s)
                    s.sendall(b"PING\r\n")
                    if not s.recv(64).startswith(b"+PONG"):
                        refused += 1
                except OSError:
                    refused += 1
            env.say(f"{self.name}: {n - refused} idle connections from {host} to {shard} through "
                    f"{address}:{port} in {at[-1]:.0f}s, {refused} refused at maxclients {limit}")
        self.thread = threading.Thread(target=leak, name="gameday-leak", daemon=True)
        self.thread.start()

    def killed(self) -> int:
        """How many of the leaked connections the server has closed."""
        n = 0
        for s in list(self.socks):
            try:
                s.setblocking(False)
                if s.recv(1, socket.MSG_PEEK) == b"":
                    n += 1
            except BlockingIOError:
                pass
            except OSError:
                n += 1
        return n

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
