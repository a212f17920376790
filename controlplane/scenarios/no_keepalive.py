"""tpp-no-keepalive: the exchanges open a new HTTP connection per request to the edges, the talk's
second bug ("Feb 19 14:11:06 exchange: [exchange] i/o timeout", "We aren't using HTTP
keepalives"). Switched at run time through each exchange's admin endpoint (the one the
control plane's own set_keepalive action uses), on every chat host of the hot room's cluster; the
cluster file is not touched. Undo puts each exchange's pools back as they were."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from collectors.services import service_port
from controlplane.scenarios.base import Env, Expect, Fault, ScenarioError


class NoKeepalive(Fault):
    name = "tpp-no-keepalive"
    title = "the exchanges run with HTTP keepalive off"
    talk = "Feb 19, 14:11: [exchange] i/o timeout: we aren't using HTTP keepalives"
    fixes = ("set_keepalive",)

    def __init__(self) -> None:
        super().__init__()
        self.was: dict[str, dict] = {}       # host -> upstream name -> settings before

    def hosts(self, env: Env) -> list[str]:
        return list(env.cf.clusters[env.cf.cluster_of_room(env.room)].hosts)

    def expects(self, env: Env) -> list[Expect]:
        return [*(Expect("connection_churn", f"exchange-{h}") for h in self.hosts(env)),
                Expect("connection_churn", "*", False), Expect("delivery_gap", "*", False),
                Expect("ingestion_timeouts", "*", False)]

    def cause_terms(self, env: Env) -> list[tuple[str, ...]]:
        return [("keepalive",), ("exchange",)]

    def _call(self, env: Env, host: str, method: str, body: dict | None = None) -> dict:
        url = f"http://{env.cf.address(host)}:{service_port(env.cf, host, 'exchange')}/v1/admin/upstream"
        req = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {env.api.need_token()}",
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as exc:
            raise ScenarioError(f"exchange-{host}: {method} /v1/admin/upstream: {exc.code} "
                                f"{exc.read()[:200]!r}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ScenarioError(f"exchange-{host} admin endpoint: {getattr(exc, 'reason', exc)}") from None

    def inject(self, env: Env) -> None:
        for host in self.hosts(env):
            self.was[host] = self._call(env, host, "GET")["upstreams"]
            self._call(env, host, "PUT", {"keepalive": False})
        self.mark_began()
        self.title = f"keepalive off on {', '.join(f'exchange-{h}' for h in self.was)}"
        env.say(f"{self.name}: {self.title}")

    def undo(self, env: Env) -> list[str]:
        done = []
        for host, ups in list(self.was.items()):
            keepalive = all(u.get("keepalive", True) for u in ups.values())
            try:
                self._call(env, host, "PUT", {"keepalive": keepalive})
                done.append(f"exchange-{host}: keepalive back to {str(keepalive).lower()}")
                del self.was[host]
            except ScenarioError as exc:
                done.append(f"exchange-{host}: could NOT put keepalive back: {exc}")
        if done:
            self.undone = time.time()
        return done
