"""The control plane's own admin connection to each shard, held open for the life of the process.

A shard at `maxclients` refuses every new connection, the control plane's included -- the talk's
case, where the leak that needs killing is what keeps everybody out. So the connection that
kills clients is opened before it is needed and kept: a keeper thread PINGs each shard every few
seconds (a `timeout` set on the shard would otherwise close an idle admin connection too) and
reconnects when one is lost. It connects to the shard directly, not through a chat host's
HAProxy listener, from the control plane's own address, so CLIENT LIST names it `controlplane`.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from typing import Any, Iterator

from collectors import redis as rc
from collectors.base import source_address
from collectors.resp import Conn, ProtocolError, RedisError
from controlplane.remediation.base import Unavailable

log = logging.getLogger(__name__)

KEEP_EVERY_S = 3.0
TIMEOUT_S = 5.0


# What the control plane may CONFIG SET (set_redis_config's keys, as Redis names them). An ACL
# cannot limit CONFIG SET's parameters, and `requirepass` or `masterauth` there would change who
# may log in (docs/security.md, Redis ACL users): refused here, before anything is sent.
CONFIG_SET_ALLOWED = frozenset({"timeout", "maxclients", "maxmemory-policy"})


def _check_config_set(args: tuple) -> None:
    if len(args) >= 2 and str(args[0]).upper() == "CONFIG" and str(args[1]).upper() == "SET":
        names = [str(a).lower() for a in args[2::2]]
        refused = [n for n in names if n not in CONFIG_SET_ALLOWED]
        if refused or not names:
            raise Unavailable(f"CONFIG SET {', '.join(refused) or '(nothing)'}: the control plane only sets "
                              f"{', '.join(sorted(CONFIG_SET_ALLOWED))}")


class AdminPool:
    def __init__(self, cf):
        self.cf = cf
        self._conns: dict[str, Conn | None] = {s.name: None for s in cf.redis.shards}
        self._locks = {s.name: threading.Lock() for s in cf.redis.shards}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def reconfigure(self, cf) -> None:
        """Follow a changed cluster file: connections for new shards, none for removed ones."""
        self.cf = cf
        names = {s.name for s in cf.redis.shards}
        for name in names - set(self._conns):
            self._locks[name] = threading.Lock()
            self._conns[name] = None
        for name in set(self._conns) - names:
            with self._locks[name]:
                conn = self._conns.pop(name)
                if conn is not None:
                    conn.close()
            del self._locks[name]

    def _open(self, shard: str) -> Conn:
        s = rc.find_shard(self.cf, shard)
        conn = Conn(self.cf.address(s.host), s.port, TIMEOUT_S, source_address(self.cf), rc.admin_auth(self.cf))
        try:
            conn.call("CLIENT", "SETNAME", "chatops-admin")
        except (OSError, RedisError):
            conn.close()
            raise
        return conn

    @contextmanager
    def connection(self, shard: str) -> Iterator[Conn]:
        """The shard's admin connection, for one caller at a time; opened now if it was lost (which
        fails when the shard is at maxclients: then nothing else could have connected either)."""
        if shard not in self._locks:
            raise Unavailable(f"unknown shard {shard}")
        with self._locks[shard]:
            conn = self._conns[shard]
            if conn is None:
                try:
                    conn = self._conns[shard] = self._open(shard)
                except (OSError, RedisError) as exc:
                    raise Unavailable(f"cannot open an admin connection to {shard}: {exc}") from None
            try:
                yield conn
            except (OSError, ProtocolError):
                # An error reply leaves the connection in step; a socket or framing error does not.
                conn.close()
                self._conns[shard] = None
                raise

    def call(self, shard: str, *args: Any) -> Any:
        _check_config_set(args)
        with self.connection(shard) as conn:
            return conn.call(*args)

    def keep(self) -> None:
        """One round: PING every shard, reconnecting the ones lost."""
        for shard in list(self._conns):
            try:
                self.call(shard, "PING")
            except (OSError, RedisError, Unavailable) as exc:
                log.debug("admin connection to %s: %s", shard, exc)

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                self.keep()
                self._stop.wait(KEEP_EVERY_S)
        self._thread = threading.Thread(target=loop, name="admin-connections", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        for shard, lock in self._locks.items():
            with lock:
                if self._conns[shard] is not None:
                    self._conns[shard].close()
                    self._conns[shard] = None
