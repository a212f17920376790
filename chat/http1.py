"""A small HTTP/1.1 client for the chat's hot internal hops: one JSON POST, its status and body.

Every batch between chat services (edge -> clue, clue -> exchange, exchange -> edge) is one POST,
and aiohttp's client spent about 100 us of CPU on each (tracing, cookie jar, URL objects,
payload classes) where this one spends a fraction: the request is one formatted header block and
the body, the response a status line, a few headers and a Content-Length (or chunked) body. The
servers stay aiohttp's. Everything else (subscriptions, lookups, admin calls) keeps aiohttp.

Connections follow the Pool's switch, which is the talk's second bug: with keepalive they are
pooled per (host, port) and reused; without it every request opens one (`on_connect` counts it),
sends `Connection: close`, and closes it after the response, as aiohttp's `force_close` did.

Pure: `request_head` and `parse_head`. Thin I/O: `RawClient`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Callable

MAX_HEAD = 64 * 1024             # a response's status line and headers
MAX_BODY = 64 * 1024 * 1024      # a response's body: results for at most max_batch items
IDLE_CLOSE = 30.0                # seconds: aiohttp's servers close idle connections after 75


class HttpError(Exception):
    """The peer's answer was not HTTP/1.1 this client can read, or the connection broke."""


def request_head(method: str, host: str, port: int, path: str, length: int, *, token: str | None,
                 keepalive: bool, content_type: str = "application/json") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Type: {content_type}",
             f"Content-Length: {length}"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    if not keepalive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """A response's status and headers (names lower-cased; a repeated one keeps the last), from
    the bytes up to and including the blank line. Raises HttpError on anything else."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError as exc:       # latin-1 decodes every byte: kept for clarity
        raise HttpError(f"undecodable response head: {exc}") from None
    lines = text.split("\r\n")
    status_line = lines[0]
    version, _, rest = status_line.partition(" ")
    code = rest[:3]
    if version not in ("HTTP/1.1", "HTTP/1.0") or len(code) != 3 or not code.isdigit() or not code.isascii():
        raise HttpError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(f"malformed header line: {line[:80]!r}")
        headers[name.lower()] = value.strip()
    return int(code), headers


def body_length(headers: dict[str, str]) -> int | None:
    """Content-Length as a bounded int; None when the body is chunked. Raises HttpError."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return None
    raw = headers.get("content-length")
    if raw is None:
        raise HttpError("response without Content-Length or chunked encoding")
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 12 or int(raw) > MAX_BODY:
        raise HttpError(f"bad or too large Content-Length: {raw[:20]!r}")
    return int(raw)


class _Conn:
    __slots__ = ("reader", "writer", "used")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer, self.used = reader, writer, time.monotonic()

    def usable(self, now: float) -> bool:
        # A peer that closed (a restarted exchange, an idle timeout) shows here once the loop has
        # seen its FIN or RST, so a stale connection is dropped rather than failing a batch.
        return (now - self.used < IDLE_CLOSE and not self.writer.is_closing()
                and not self.reader.at_eof() and self.reader.exception() is None)

    def close(self) -> None:
        self.writer.close()


class RawClient:
    """POSTs to any number of (host, port), with at most `limit` idle connections kept per peer.

    The caller bounds requests in flight (Upstream's slots), as aiohttp's `limit_per_host` did."""

    def __init__(self, *, keepalive: bool, local_address: str | None, token: str | None,
                 on_connect: Callable[[], None] | None = None, limit: int = 2):
        self.keepalive = keepalive
        self.local_address = local_address
        self.token = token
        self.on_connect = on_connect
        self.limit = limit
        self._idle: dict[tuple[str, int], deque[_Conn]] = {}
        self._busy: set[_Conn] = set()
        self.closed = False

    async def post(self, host: str, port: int, path: str, body: bytes) -> tuple[int, bytes]:
        """(status, body). Raises HttpError or OSError when the exchange of bytes failed; the
        caller's own timeout (asyncio.timeout) bounds it, and a cancelled request's connection
        is closed, never reused."""
        if self.closed:
            raise HttpError("client closed")
        conn = await self._connection(host, port)
        self._busy.add(conn)
        reusable = False
        try:
            conn.writer.write(request_head("POST", host, port, path, len(body), token=self.token,
                                           keepalive=self.keepalive) + body)
            status, headers, data = await self._response(conn.reader)
            reusable = self.keepalive and headers.get("connection", "").lower() != "close"
            return status, data
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, EOFError) as exc:
            raise HttpError(f"connection to {host}:{port} broke mid-response: {exc!r}") from None
        finally:
            self._busy.discard(conn)
            if reusable and not self.closed:
                conn.used = time.monotonic()
                idle = self._idle.setdefault((host, port), deque())
                if len(idle) < self.limit:
                    idle.append(conn)
                else:
                    conn.close()
            else:
                conn.close()

    async def _connection(self, host: str, port: int) -> _Conn:
        idle = self._idle.get((host, port))
        now = time.monotonic()
        while idle:
            conn = idle.pop()               # the most recently used: the likeliest to be alive
            if conn.usable(now):
                return conn
            conn.close()
        reader, writer = await asyncio.open_connection(
            host, port, limit=MAX_HEAD,
            local_addr=(self.local_address, 0) if self.local_address else None)
        if self.on_connect is not None:
            self.on_connect()
        return _Conn(reader, writer)

    @staticmethod
    async def _response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise HttpError(f"response head longer than {MAX_HEAD} bytes") from None
        status, headers = parse_head(head)
        length = body_length(headers)
        if length is not None:
            return status, headers, await reader.readexactly(length) if length else b""
        chunks, total = [], 0
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size_text = size_line[:-2].split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise HttpError(f"bad chunk size {size_text[:20]!r}") from None
            if size < 0 or total + size > MAX_BODY:
                raise HttpError("chunked body too large")
            if size == 0:
                await reader.readuntil(b"\r\n")      # no trailers from aiohttp: the final CRLF
                return status, headers, b"".join(chunks)
            chunks.append(await reader.readexactly(size))
            total += size
            if await reader.readexactly(2) != b"\r\n":
                raise HttpError("chunk without its CRLF")

    async def close(self) -> None:
        self.closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        for conn in list(self._busy):
            conn.close()
