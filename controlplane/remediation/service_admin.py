"""One call to a chat service's admin route (`/v1/admin/upstream`, `/v1/admin/drain`) on its
internal HTTP port, with the control plane's API token, as those routes take it. A service that
cannot be asked is `Unavailable`, with what it answered, so the plan or outcome can say why."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

from controlplane.remediation.base import Unavailable

TIMEOUT_S = 5.0


def call(cf, host: str, port: int, path: str, method: str, name: str, body: dict | None = None) -> dict:
    """`name` is the service as messages call it (`edge-chat2`)."""
    env = cf.controlplane.auth_token_env
    token = os.environ.get(env)
    if not token:
        raise Unavailable(f"{env} is not set: the services' admin routes need the control plane's token")
    req = urllib.request.Request(f"http://{cf.address(host)}:{port}{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as exc:
        raise Unavailable(f"{name}: {method} {path}: {exc.code} {exc.read()[:200]!r}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise Unavailable(f"{name} {path}: {getattr(exc, 'reason', exc)}") from None
