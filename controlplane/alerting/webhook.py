"""A generic webhook: the notification (message.build's dict) as a JSON POST.

Headers: `Content-Type: application/json`, `X-Chatops-Dedup-Key` (one per incident state: a
receiver that keeps the keys it has seen gets each notification once, even across our retries),
`X-Chatops-Event`, and, when the cluster file names a `secret_env`,
`X-Chatops-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>`. docs/alerting.md has the
receiver's side of the signature.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import urllib.error
import urllib.request
from typing import Any, ClassVar

from controlplane.alerting.destination import NETWORK_ERRORS, Destination, Result, classify

SIGNATURE_HEADER = "X-Chatops-Signature"
DEDUP_HEADER = "X-Chatops-Dedup-Key"
EVENT_HEADER = "X-Chatops-Event"
USER_AGENT = "chatops-alerting/1"


def body(payload: dict) -> bytes:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def signature(secret: str, raw: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, not a place to post the notification (and its signature) to."""

    def redirect_request(self, *args, **kwargs):
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def post(url: str, raw: bytes, headers: dict[str, str], timeout: float) -> tuple[int, str, dict]:
    """One POST: (status, body text, headers); an HTTP error status is an answer, not raised."""
    req = urllib.request.Request(url, data=raw, method="POST", headers=headers)
    try:
        with _opener.open(req, timeout=timeout) as r:
            return r.status, r.read(65536).decode(errors="replace"), dict(r.headers.items())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read(65536).decode(errors="replace"), dict(e.headers.items())


class Webhook(Destination):
    type = "webhook"
    schema: ClassVar[dict[str, Any]] = {"url_env": "the receiver's URL: a secret when it carries a token",
              "secret_env": "the HMAC-SHA256 key of X-Chatops-Signature (optional)"}

    def headers(self, payload: dict, raw: bytes) -> dict[str, str]:
        h = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
             DEDUP_HEADER: str(payload.get("dedup_key") or ""), EVENT_HEADER: str(payload.get("event") or "")}
        if self.secret:
            h[SIGNATURE_HEADER] = signature(self.secret, raw)
        return h

    def send(self, payload: dict) -> Result:
        raw = body(payload)
        try:
            status, text, headers = post(self.url, raw, self.headers(payload, raw), self.timeout)
        except NETWORK_ERRORS as exc:
            return self.failed(exc)
        return classify(status, text, headers, self)
