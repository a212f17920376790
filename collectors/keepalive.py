"""Connections a collector keeps open from one scrape to the next.

A scrape every 2 s that opens and closes its connection each time is the talk's own bug, made by
the observer: each close leaves a TIME_WAIT socket on the very ports the TIME_WAIT and keepalive
detectors watch (one per service and shard per scrape, ~1,200 on the default cluster), and every
socket dump of the tick then had to read them. It also paid a connect (and for Redis an AUTH)
per scrape. So the Redis and service collectors take an idle connection from here and give it
back when the scrape went well; one that failed is closed, never given back.

`Idle` holds at most one idle connection per key (a target's address, port, source address and
credentials): a source's runs never overlap (the scheduler's max_instances=1), so one is enough;
a manual scrape running beside the scheduled one opens a second and closes it afterwards.
Before a connection is handed out, `readable_or_gone` checks it without blocking: an idle
connection the server has closed (restart, its idle timeout) has its end-of-file waiting, and
one with unread bytes is out of step. Either is closed and the caller connects afresh. A server
that closes it in the instant between that check and the request still fails that one request:
the collectors retry once on a fresh connection when a reused one fails before any reply.
"""

from __future__ import annotations

import select
import threading
import time
from typing import Any, Callable, Hashable

MAX_IDLE_S = 30.0       # well under the servers' idle timeouts (aiohttp: 75 s; Redis: none here)


def readable_or_gone(sock) -> bool:
    """True when an idle socket has something to read (end of file, a reset, stray bytes) or is
    closed: it cannot carry a new request cleanly. poll, not select: the fd may be above 1024."""
    try:
        fd = sock.fileno()
    except (OSError, AttributeError):
        return True
    if fd < 0:
        return True
    p = select.poll()
    p.register(fd, select.POLLIN | select.POLLPRI)
    try:
        return bool(p.poll(0))
    except OSError:
        return True


class Idle:
    """key -> one idle connection, with the time it was given back."""

    def __init__(self, sock_of: Callable[[Any], Any], close: Callable[[Any], None],
                 max_idle_s: float = MAX_IDLE_S):
        self._sock_of, self._close, self.max_idle_s = sock_of, close, max_idle_s
        self._lock = threading.Lock()
        self._idle: dict[Hashable, tuple[Any, float]] = {}

    def take(self, key: Hashable) -> Any | None:
        """The idle connection for `key` if it is still usable, else None (and it is closed).
        Connections idle past max_idle_s under any key are closed too: a key no scrape asks for
        any more (a shard removed, a password changed) must not hold one open for ever."""
        now = time.monotonic()
        with self._lock:
            got = self._idle.pop(key, None)
            stale = [k for k, (_, since) in self._idle.items() if now - since > self.max_idle_s]
            old = [self._idle.pop(k)[0] for k in stale]
        for conn in old:
            self._close(conn)
        if got is None:
            return None
        conn, since = got
        if now - since > self.max_idle_s or readable_or_gone(self._sock_of(conn)):
            self._close(conn)
            return None
        return conn

    def give(self, key: Hashable, conn: Any) -> None:
        """Keep `conn` for the next scrape of `key`; a second one for the same key is closed."""
        with self._lock:
            old = self._idle.get(key)
            if old is None:
                self._idle[key] = (conn, time.monotonic())
                return
        self._close(conn)
