"""A keepalive HTTP/1.1 client to one upstream service, batching calls per event-loop turn.

Every hop between chat services (edge -> clue, clue -> exchange, exchange -> edge) is one of
these. Calls made during one loop turn travel in one POST; while every pooled connection is busy,
new calls wait and leave together in the next batch. Under light load that is one message per
request; under heavy load the request rate stays bounded by the pool, not by the message rate.

The pool's keepalive switch is the talk's second bug: with it off, every request opens a new TCP
connection (counted in `connections_opened`), which is what ran the exchange into i/o timeouts.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Callable

import aiohttp


class UpstreamError(Exception):
    """The upstream could not be reached or answered badly."""


class UpstreamTimeout(UpstreamError):
    def __init__(self, name: str, after: float):
        super().__init__(f"{name}: timed out after {after:g}s")
        self.after = after


def make_session(*, pool_size: int, keepalive: bool, local_address: str | None,
                 on_connect: Callable[[], None] | None = None) -> aiohttp.ClientSession:
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
                                 json_serialize=json.dumps, auto_decompress=False)


class Upstream:
    def __init__(self, session: aiohttp.ClientSession, url: str, *, name: str, timeout: float,
                 concurrency: int, max_batch: int = 512,
                 observe: Callable[[float, int], None] | None = None):
        self.session = session
        self.url = url
        self.name = name
        self.timeout = timeout
        self.max_batch = max_batch
        self._slots = asyncio.Semaphore(concurrency)
        self._pending: list[tuple[Any, asyncio.Future]] = []
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task] = set()
        self._observe = observe           # (seconds, batch size) per request, for metrics
        self.requests = 0
        self.timeouts = 0
        self.errors = 0

    def call(self, item: Any) -> asyncio.Future:
        """Queue one item; the future resolves to the upstream's result for it."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending.append((item, fut))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._pending:
            return
        task = asyncio.ensure_future(self._drain())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self) -> None:
        async with self._slots:
            # Take the batch only once a connection is free: calls queued meanwhile join it.
            batch, self._pending = self._pending[:self.max_batch], self._pending[self.max_batch:]
            if self._pending and not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)
            if batch:
                await self._send(batch)

    async def _send(self, batch: list[tuple[Any, asyncio.Future]]) -> None:
        self.requests += 1
        started = time.perf_counter()
        try:
            async with self.session.post(self.url, json={"items": [i for i, _ in batch]},
                                         timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                if resp.status != 200:
                    raise UpstreamError(f"{self.name}: HTTP {resp.status}: {(await resp.text())[:200]}")
                results = (await resp.json())["results"]
            if len(results) != len(batch):
                raise UpstreamError(f"{self.name}: {len(results)} results for {len(batch)} items")
        except asyncio.TimeoutError:
            self.timeouts += 1
            self._fail(batch, UpstreamTimeout(self.name, self.timeout))
            return
        except (aiohttp.ClientError, OSError, ValueError, KeyError, TypeError) as exc:
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
