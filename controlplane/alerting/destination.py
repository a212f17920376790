"""What every destination type shares: the delivery result, the HTTP status -> outcome rule,
Retry-After, and scrubbing secrets out of error text.

A destination (one module per type: slack.py, webhook.py, alertmanager.py, as Redash's
destinations and Alertmanager's notify/) is built from its cluster-file entry and the values of
the environment variables it names, and has one method that matters: `send(payload) -> Result`,
one attempt with a timeout. It never retries (the notifier does, from the outbox) and never
catches everything: only the errors a network or a receiver can cause become a Result; anything
else is a bug and propagates.
"""

from __future__ import annotations

import email.utils
import http.client
import math
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit

TIMEOUT_S = 10.0               # one request, connect to last byte
RETRY_AFTER_CAP_S = 300.0      # a Retry-After longer than this is read as this
MAX_ERROR = 500                # characters of an error kept in the outbox

DELIVERED, RETRY, REJECTED = "delivered", "retry", "rejected"
# Errors the network or a receiver causes: the attempt failed, a later one may not.
NETWORK_ERRORS: tuple[type[BaseException], ...] = (OSError, http.client.HTTPException, socket.timeout)


@dataclass(frozen=True)
class Result:
    outcome: str                       # delivered | retry | rejected
    status: int | None = None          # the HTTP status, when there was one
    error: str | None = None           # scrubbed; None when delivered
    retry_after: float | None = None   # seconds the receiver asked us to wait (429)

    @property
    def delivered(self) -> bool:
        return self.outcome == DELIVERED


class BadDestination(ValueError):
    """A destination that cannot be used as configured (an unset variable, a URL that is not
    http(s)); the message names the variable, never its value."""


class Destination:
    """Base of the destination types. `schema` is the type's configuration contract: which
    cluster-file keys it needs, and which of them name a secret in the environment."""
    type: ClassVar[str] = ""
    schema: ClassVar[dict[str, Any]] = {}

    def __init__(self, spec, url: str, secret: str | None = None, timeout: float = TIMEOUT_S):
        self.spec, self.name = spec, spec.name
        self.url, self.secret, self.timeout = url, secret, float(timeout)

    @classmethod
    def from_env(cls, spec, env: Mapping[str, str], timeout: float = TIMEOUT_S) -> Destination:
        """Build from the environment; BadDestination (naming the variable) when it cannot be."""
        url = env.get(spec.url_env) or ""
        if not url:
            raise BadDestination(f"{spec.url_env} is not set")
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise BadDestination(f"{spec.url_env} is not an http(s) URL")
        secret = None
        if spec.secret_env:
            if not cls.schema.get("secret_env"):
                raise BadDestination(f"secret_env is not used by a {cls.type} destination")
            secret = env.get(spec.secret_env) or ""
            if not secret:
                raise BadDestination(f"{spec.secret_env} is not set")
        return cls(spec, url, secret, timeout)

    def secrets(self) -> list[str]:
        """Every string that must never leave this process in a log, an error or a response."""
        out = [self.url]
        u = urlsplit(self.url)
        out += [p for p in (u.path, u.query, u.netloc + u.path) if len(p.strip("/")) >= 8]
        if self.secret:
            out.append(self.secret)
        return out

    def scrub(self, text: str) -> str:
        return scrub(text, self.secrets())

    def send(self, payload: dict) -> Result:
        raise NotImplementedError

    def failed(self, exc: BaseException) -> Result:
        """A network error as a retryable result, its text scrubbed."""
        return Result(RETRY, None, self.scrub(f"{type(exc).__name__}: {exc}"))


def scrub(text: str, secrets: list[str]) -> str:
    """`text` with every secret (longest first) replaced by `<redacted>`, cut to MAX_ERROR."""
    out = str(text)
    for s in sorted({s for s in secrets if s}, key=len, reverse=True):
        out = out.replace(s, "<redacted>")
    return out[:MAX_ERROR]


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: a number of seconds or an HTTP-date; None when
    absent or unreadable; capped at RETRY_AFTER_CAP_S."""
    if not value:
        return None
    value = value.strip()
    try:
        secs = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        secs = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(secs):
        return None
    return min(max(secs, 0.0), RETRY_AFTER_CAP_S)


def classify(status: int, body: str, headers: Mapping[str, str] | None, scrub_with: Destination) -> Result:
    """An HTTP answer as a Result: 2xx delivered; 429 retry after Retry-After; 408, 5xx retry;
    any other status rejected (the receiver refuses this payload: retrying cannot help), with
    the receiver's body as the error."""
    if 200 <= status < 300:
        return Result(DELIVERED, status)
    text = scrub_with.scrub(f"HTTP {status}: {(body or '').strip()[:300]}")
    if status == 429:
        h = {k.lower(): v for k, v in (headers or {}).items()}
        return Result(RETRY, status, text, retry_after(h.get("retry-after")))
    if status == 408 or status >= 500:
        return Result(RETRY, status, text)
    return Result(REJECTED, status, text)
