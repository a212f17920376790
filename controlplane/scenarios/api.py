"""The control plane's API as the game day reads it: plain GETs (and the few token calls the
faults need), raising ScenarioError instead of exiting, so a failed call still runs the undo."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any


class ScenarioError(Exception):
    """A scenario cannot go on (the control plane does not answer, a token is missing...)."""


class Api:
    def __init__(self, cf, timeout: float = 10.0):
        listen = cf.controlplane.listen
        self.base = f"http://{listen.address}:{listen.port}"
        self.token_env = cf.controlplane.auth_token_env
        self.token = os.environ.get(self.token_env)
        self.timeout = timeout

    def call(self, method: str, path: str, body: Any = None, token: bool = False) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Accept": "application/json", "X-Chatops-Actor": "gameday"}
                                     if token else {"Accept": "application/json"})
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {self.need_token()}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as exc:
            raise ScenarioError(f"{method} {path}: {exc.code} {exc.read()[:300]!r}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ScenarioError(f"the control plane at {self.base} does not answer {path}: "
                                f"{getattr(exc, 'reason', exc)}") from None

    def get(self, path: str) -> Any:
        return self.call("GET", path)

    def need_token(self) -> str:
        if not self.token:
            raise ScenarioError(f"{self.token_env} is not set: the scenario needs the control plane's token "
                                f"(the one `chatops up` was started with) to switch the exchanges' keepalive "
                                f"and to let the control plane apply its fixes")
        return self.token

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.base + "/healthz", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def findings(self) -> list[dict]:
        return self.get("/api/v1/findings?state=all&limit=1000")["findings"]

    def incidents(self) -> list[dict]:
        return self.get("/api/v1/incidents?state=all&limit=200")["incidents"]

    def plans(self) -> list[dict]:
        return self.get("/api/v1/plans?limit=200")["plans"]

    def audit(self, since: str = "1h") -> list[dict]:
        return self.get(f"/api/v1/audit?limit=500&since={since}")["audit"]

    def incident(self, incident_id: int) -> dict:
        return self.get(f"/api/v1/incidents/{int(incident_id)}")
