"""A keepalive HTTP/1.1 client to one upstream service, batching calls per event-loop turn.
The batches go out through chat.http1; the Pool's aiohttp session serves everything else.

Every hop between chat services (edge -> clue, clue -> exchange, exchange -> edge) is one of
these. Calls made during one loop turn travel in one POST; while every pooled connection is busy,
new calls wait and leave together in the next batch. Under light load that is one message per
request; under heavy load the request rate stays bounded by the pool, not by the message rate.
At most `max_pending` calls wait: past that a call fails at once with UpstreamFull, so a stalled
upstream costs its callers a fast error, never memory without limit.

The pool's keepalive switch is the talk's second bug: with it off, every request opens a new TCP
connection (counted in `connections_opened`), which is what ran the exchange into i/o timeouts.
A `Pool` can change that switch and its size while it runs (the control plane's `set_keepalive`,
through the service's admin route): new requests go out on a fresh session at once, and the old
session is closed only when the last request on it has finished, so no call fails for the change.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
import weakref
from collections import deque
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import aiohttp

from chat.http1 import HttpError, RawClient


class UpstreamError(Exception):
    """The upstream could not be reached or answered badly."""


class UpstreamTimeout(UpstreamError):
    def __init__(self, name: str, after: float):
        super().__init__(f"{name}: timed out after {after:g}s")
        self.after = after


class UpstreamFull(UpstreamError):
    """Refused at once: `max_pending` calls already wait for a connection to this upstream.

    `report` is how many calls were refused since the last report, on one refusal per
    FULL_REPORT_EVERY and 0 on the others, so a caller logs a stalled peer once a second rather than
    once per refused message."""

    def __init__(self, name: str, limit: int, report: int):
        super().__init__(f"{name}: queue full ({limit} calls already waiting)")
        self.report = report


FULL_REPORT_EVERY = 1.0


def make_session(*, pool_size: int, keepalive: bool, local_address: str | None,
                 on_connect: Callable[[], None] | None = None,
                 token: str | None = None) -> aiohttp.ClientSession:
    """`token`: the internal token every request carries (chat/service.py's internal_auth)."""
    trace = aiohttp.TraceConfig()
    if on_connect is not None:
        async def _created(session, ctx, params):  # noqa: ARG001 (aiohttp's signature)
            on_connect()
        trace.on_connection_create_end.append(_created)
    connector = aiohttp.TCPConnector(
        limit=0, limit_per_host=pool_size, force_close=not keepalive,
        # Leave from this chat host's own address, so peers and HAProxy see the host as itself.
        local_addr=(local_address, 0) if local_address else None,
        **({"keepalive_timeout": 60} if keepalive else {}))
    return aiohttp.ClientSession(connector=connector, trace_configs=[trace],
                                 json_serialize=json.dumps, auto_decompress=False,
                                 headers={"Authorization": f"Bearer {token}"} if token else None)


class Slots:
    """A semaphore whose size can change while it is held, so an Upstream's requests in flight
    follow a pool size set at runtime. Shrinking never interrupts a request: it holds new ones
    back until enough have finished."""

    def __init__(self, size: int):
        self.size = size
        self.busy = 0
        self._waiters: deque[asyncio.Future] = deque()

    async def __aenter__(self) -> None:
        # Waiters first, in order: a newcomer must not overtake a call already waiting.
        if self.busy < self.size and not self._waiters:
            self.busy += 1
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut              # _wake counts the slot as ours before resolving this
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release()    # handed a slot and cancelled in the same turn: pass it on
            elif fut in self._waiters:
                self._waiters.remove(fut)
            raise

    async def __aexit__(self, *_exc) -> None:
        self._release()

    def resize(self, size: int) -> None:
        self.size = size
        self._wake()

    def _release(self) -> None:
        self.busy -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.busy < self.size:
            fut = self._waiters.popleft()
            if not fut.done():
                self.busy += 1
                fut.set_result(None)


class Pool:
    """The HTTP session behind one service's Upstreams, with its keepalive switch and size, which
    `reconfigure` changes at runtime without failing a request.

    Every request holds a lease on the session it started on. A change builds a new session and
    swaps it in for every lease taken afterwards (no await between, so no request can see a half
    change); the old session is closed when its last lease ends, or at once if it had none."""

    def __init__(self, *, pool_size: int, keepalive: bool, local_address: str | None,
                 token: str | None, on_connect: Callable[[], None] | None = None,
                 on_change: Callable[[Pool], None] | None = None):
        """`token`: the internal token; required (None only for an upstream that takes none), so
        no pool between chat services can be built without thinking of it."""
        self.pool_size = pool_size
        self._token = token
        self.keepalive = keepalive
        self._local_address = local_address
        self._on_connect = on_connect
        self._on_change = on_change          # gauges follow the settings through this
        # Each session's companion for the Upstreams' batches (chat.http1), built and retired
        # with it, so a settings change swaps both at once.
        self._raw: dict[aiohttp.ClientSession, RawClient] = {}
        self.session = self._new_session()
        self._leases: dict[aiohttp.ClientSession, int] = {}
        self._closing: set[asyncio.Task] = set()
        # Weak: an exchange drops an edge's Upstream (and its Slots) when the edge goes away.
        self._slots: weakref.WeakSet[Slots] = weakref.WeakSet()
        if on_change is not None:
            on_change(self)

    def _new_session(self) -> aiohttp.ClientSession:
        session = make_session(pool_size=self.pool_size, keepalive=self.keepalive,
                               local_address=self._local_address, on_connect=self._on_connect, token=self._token)
        self._raw[session] = RawClient(keepalive=self.keepalive, local_address=self._local_address,
                                       token=self._token, on_connect=self._on_connect, limit=self.pool_size)
        return session

    def raw(self, session: aiohttp.ClientSession) -> RawClient:
        """The batch client that goes with `session` (leased through it)."""
        return self._raw[session]

    def settings(self) -> dict[str, Any]:
        return {"keepalive": self.keepalive, "pool_size": self.pool_size}

    def slots(self) -> Slots:
        """A limit of requests in flight that stays equal to this pool's size."""
        slots = Slots(self.pool_size)
        self._slots.add(slots)
        return slots

    @contextmanager
    def lease(self) -> Iterator[aiohttp.ClientSession]:
        """The session to send one request on; hold it until the response has been read."""
        session = self.session
        self._leases[session] = self._leases.get(session, 0) + 1
        try:
            yield session
        finally:
            left = self._leases.pop(session) - 1
            if left:
                self._leases[session] = left
            elif session is not self.session:
                self._retire(session)

    def reconfigure(self, *, keepalive: bool | None = None, pool_size: int | None = None) -> bool:
        """Apply the settings given; True when something changed (and a new session serves)."""
        keepalive = self.keepalive if keepalive is None else keepalive
        pool_size = self.pool_size if pool_size is None else pool_size
        if (keepalive, pool_size) == (self.keepalive, self.pool_size):
            return False
        old = self.session
        self.keepalive, self.pool_size = keepalive, pool_size
        self.session = self._new_session()
        for slots in list(self._slots):
            slots.resize(pool_size)
        if old not in self._leases:
            self._retire(old)
        if self._on_change is not None:
            self._on_change(self)
        return True

    def _retire(self, session: aiohttp.ClientSession) -> None:
        raw = self._raw.pop(session, None)
        if raw is not None:
            self._spawn(raw.close())
        self._spawn(session.close())

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        # Shutting down: sessions still leased are closed too; their callers were cancelled.
        for session in {self.session, *self._leases}:
            raw = self._raw.pop(session, None)
            if raw is not None:
                await raw.close()
            await session.close()
        if self._closing:
            await asyncio.gather(*self._closing)


class Upstream:
    def __init__(self, pool: Pool, url: str, *, name: str, timeout: float, max_pending: int,
                 concurrency: int | None = None, max_batch: int = 512,
                 observe: Callable[[float, int], None] | None = None):
        """`concurrency`: requests in flight at most; None follows the pool's size as it changes.
        `max_pending`: calls waiting for a connection at most; past it `call` fails at once."""
        self.pool = pool
        self.url = url
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"{name}: an upstream URL is http://host:port/path, not {url!r}")
        self._host, self._port = parts.hostname, parts.port
        self._path = parts.path or "/"
        self.name = name
        self.timeout = timeout
        self.max_batch = max_batch
        self.max_pending = max_pending
        self._slots = pool.slots() if concurrency is None else Slots(concurrency)
        self._pending: list[tuple[Any, asyncio.Future]] = []
        self._flush_scheduled = False
        self._waiting = False             # a drain task waits for a connection: it will take the queue
        self._tasks: set[asyncio.Task] = set()
        self._observe = observe           # (seconds, batch size) per request, for metrics
        self.requests = 0
        self.timeouts = 0
        self.errors = 0
        self.refused = 0                  # calls failed at once with UpstreamFull
        self._refused_reported = 0
        self._full_reported_at = float("-inf")

    @property
    def pending(self) -> int:
        """Calls waiting for a connection (not those in a request already sent)."""
        return len(self._pending)

    def call(self, item: Any) -> asyncio.Future:
        """Queue one item; the future resolves to the upstream's result for it. With `max_pending`
        calls already waiting it fails at once with UpstreamFull: a stalled upstream costs its
        callers a fast error, never memory without limit."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if len(self._pending) >= self.max_pending:
            self.refused += 1
            report, now = 0, time.monotonic()
            if now - self._full_reported_at >= FULL_REPORT_EVERY:
                report, self._refused_reported = self.refused - self._refused_reported, self.refused
                self._full_reported_at = now
            fut.set_exception(UpstreamFull(self.name, self.max_pending, report))
            return fut
        self._pending.append((item, fut))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._flush_scheduled = False
        # One task waiting for a connection is enough: it takes the whole queue when one frees.
        # (A task per loop turn behind a stalled upstream was itself a queue without limit.)
        if not self._pending or self._waiting:
            return
        task = asyncio.ensure_future(self._drain())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self) -> None:
        self._waiting = True
        try:
            await self._slots.__aenter__()
        finally:
            self._waiting = False
        try:
            # Take the batch only once a connection is free: calls queued meanwhile join it.
            batch, self._pending = self._pending[:self.max_batch], self._pending[self.max_batch:]
            if self._pending and not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)
            if batch:
                await self._send(batch)
        finally:
            await self._slots.__aexit__()

    async def _send(self, batch: list[tuple[Any, asyncio.Future]]) -> None:
        self.requests += 1
        started = time.perf_counter()
        try:
            body = json.dumps({"items": [i for i, _ in batch]}).encode()
            with self.pool.lease() as session:
                async with asyncio.timeout(self.timeout):
                    status, answer = await self.pool.raw(session).post(self._host, self._port, self._path, body)
            if status != 200:
                raise UpstreamError(f"{self.name}: HTTP {status}: {answer[:200].decode('utf-8', 'replace')}")
            results = json.loads(answer)["results"]
            if len(results) != len(batch):
                raise UpstreamError(f"{self.name}: {len(results)} results for {len(batch)} items")
        except asyncio.TimeoutError:
            self.timeouts += 1
            self._fail(batch, UpstreamTimeout(self.name, self.timeout))
            return
        except (UpstreamError, HttpError, OSError, ValueError, KeyError, TypeError) as exc:
            # UpstreamError too: an answer that is not 200, or the wrong number of results, fails
            # its batch's callers like any other error instead of leaving them waiting forever.
            self.errors += 1
            err = exc if isinstance(exc, UpstreamError) else UpstreamError(f"{self.name}: {exc!r}")
            self._fail(batch, err)
            return
        finally:
            if self._observe:
                self._observe(time.perf_counter() - started, len(batch))
        for (_, fut), result in zip(batch, results):
            if not fut.done():
                fut.set_result(result)

    @staticmethod
    def _fail(batch, exc: Exception) -> None:
        for _, fut in batch:
            if not fut.done():
                fut.set_exception(exc)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self._fail(self._pending, UpstreamError(f"{self.name}: closed"))
        self._pending = []
