"""What every chat service process shares: its command line, its place in the cluster file, the
event loop, talk-shaped logging, a private Prometheus registry and the internal HTTP app that
serves /healthz, /metrics and the admin route beside the service's own routes.

Every other route of that app (the services' `/v1/...` calls to each other, and anything unknown)
takes `Authorization: Bearer <internal token>`, the value of the variable the cluster file's
`secrets.internal_token_env` names, checked once for all routes by `internal_auth`. Without it a
request gets 401 before its handler runs. A service that has no internal token refuses to start:
an unconfigured service is never open. /healthz and /metrics stay open: they are read-only and
secret-free, and Prometheus and the supervisor's readiness probe read them.

The admin route, `/v1/admin/upstream`, shows (GET) and changes (PUT) the keepalive switch and pool
size of the service's upstream pools while it runs: the exchange's pool to the edges, the edge's
to clue, clue's to the exchange. The control plane's `set_keepalive` action calls it. It takes
`Authorization: Bearer <token>`, the control plane's API token, read at start from the variable
the cluster file's `controlplane.auth_token_env` names; with that variable unset it refuses
everyone (403), so an unconfigured service is never open.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hmac
import json
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from chat import logs
from chat.upstream import Pool
from cluster import clusterfile, secrets, spec
from cluster.rundir import RunDir

# `_created` series double every counter's series count for a figure Prometheus can infer.
disable_created_metrics()

try:  # uvloop roughly doubles socket throughput; plain asyncio still works without it
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None


@dataclass
class Context:
    cf: spec.ClusterFile
    host: str
    cluster: str
    address: str
    log: logging.Logger
    registry: CollectorRegistry
    # Never in a repr: a Context may end up in a log line or a traceback.
    admin_token: str = field(default="", repr=False)   # "" when unset: the admin route refuses all
    internal_token: str = field(default="", repr=False)  # what every internal call carries
    upstreams: dict[str, Pool] = field(default_factory=dict)   # what the admin route switches

    @property
    def token_env(self) -> str:
        return self.cf.controlplane.auth_token_env

    @property
    def services(self) -> spec.Services:
        return self.cf.clusters[self.cluster].services

    def peers(self) -> list[tuple[str, str]]:
        """(host, address) of every chat host of this host's cluster."""
        return [(h, self.cf.address(h)) for h in self.cf.clusters[self.cluster].hosts]


def parse_args(service: str, argv: list[str] | None = None) -> Context:
    ap = argparse.ArgumentParser(prog=f"python -m chat.{service}")
    ap.add_argument("--config", help="cluster file (default: the shipped one)")
    ap.add_argument("--host", required=True, help="the chat host this process runs as")
    ap.add_argument("--run-dir", help="profile local: where `chatops up` keeps secrets.env, read when the "
                                      "internal token's variable is unset (default: CHATOPS_RUN_DIR or .run)")
    args = ap.parse_args(argv)
    try:
        cf = clusterfile.load(args.config).spec
    except clusterfile.ClusterFileError as exc:
        sys.exit(str(exc))
    cluster = cf.cluster_of(args.host)
    if cluster is None:
        sys.exit(f"{args.host!r} is not a chat host in the cluster file")
    try:
        internal = secrets.value(cf, "internal_token_env",
                                 RunDir.resolve(args.run_dir) if cf.profile == "local" else None)
    except secrets.SecretError as exc:
        sys.exit(f"chat.{service} on {args.host}: refusing to start without the internal token: {exc}")
    log = logs.setup(service, sys.stdout)
    # Read once: the token is a secret handed over at start, as the control plane reads it.
    token = os.environ.get(cf.controlplane.auth_token_env, "").strip()
    if not token:
        logs.event(log, "admin", "admin route refused: token variable not set", logging.WARNING,
                   variable=cf.controlplane.auth_token_env)
    registry = CollectorRegistry()
    # process_start_time_seconds: how a Prometheus sees a service that keeps restarting
    # (dashboards/rules.py's ChatopsServiceCrashLooping), as the control plane sees state.json's restarts.
    ProcessCollector(registry=registry)
    return Context(cf=cf, host=args.host, cluster=cluster, address=cf.address(args.host),
                   log=log, registry=registry, admin_token=token, internal_token=internal)


# -- internal authentication --

OPEN_PATHS = frozenset({"/healthz", "/metrics"})   # read-only, nothing secret: probes and Prometheus
ADMIN_PATH = "/v1/admin/upstream"                  # its own check, with the control plane's API token
ADMIN_PATHS = frozenset({ADMIN_PATH, "/v1/admin/drain"})   # the drain route: chat/drain.py, the edge's


def bearer_matches(request: web.Request, token: str) -> bool:
    """Whether the request carries `Authorization: Bearer <token>`, compared in constant time."""
    scheme, _, sent = request.headers.get("Authorization", "").partition(" ")
    # Compared as bytes: compare_digest refuses non-ASCII str, and a header may carry anything.
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(
        sent.strip().encode("utf-8", "surrogatepass"), token.encode("utf-8", "surrogatepass"))


def internal_auth(ctx: Context):
    """The middleware that guards every route but the open ones and the admin route: deny by
    default, so a route added later (or a path nobody serves) is never open by omission."""
    @web.middleware
    async def middleware(request: web.Request, handler):
        # The route the router matched, not the raw path: no spelling of a path (%-escapes, double
        # slashes) can reach a guarded handler as an open one. None for a path nobody serves.
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else None
        if route in OPEN_PATHS or route in ADMIN_PATHS or bearer_matches(request, ctx.internal_token):
            return await handler(request)
        return web.json_response(
            {"error": "missing or wrong internal token (Authorization: Bearer <token>; "
                      f"the value of {ctx.cf.secrets.internal_token_env})"},
            status=401, headers={"WWW-Authenticate": "Bearer"})
    return middleware


def metrics_app(ctx: Context) -> web.Application:
    app = web.Application(client_max_size=8 * 1024 * 1024, middlewares=[internal_auth(ctx)])

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(ctx.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "host": ctx.host, "cluster": ctx.cluster})

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    add_admin_routes(app, ctx)
    return app


# -- admin --

POOL_SIZE_MAX = 1024              # as the cluster file's pool_size


class BadField(ValueError):
    def __init__(self, name: str, problem: str):
        super().__init__(f"{name}: {problem}")
        self.field = name


def parse_upstream_change(raw: bytes) -> dict[str, Any]:
    """The PUT body -> {"keepalive": bool, "pool_size": int} (either or both), or BadField."""
    try:
        body = json.loads(raw)
    except ValueError as exc:     # JSONDecodeError, and UnicodeDecodeError on bad bytes
        raise BadField("body", f"not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise BadField("body", "must be a JSON object")
    for key in body:
        if key not in ("keepalive", "pool_size"):
            raise BadField(str(key)[:64], "unknown field; expected keepalive and/or pool_size")
    if not body:
        raise BadField("body", "give keepalive and/or pool_size")
    if "keepalive" in body and not isinstance(body["keepalive"], bool):
        raise BadField("keepalive", "must be true or false")
    if "pool_size" in body:
        size = body["pool_size"]
        # bool is an int to Python, but `true` is no pool size.
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= POOL_SIZE_MAX:
            raise BadField("pool_size", f"must be an integer from 1 to {POOL_SIZE_MAX}")
    return body


def _refused(ctx: Context, request: web.Request) -> web.Response | None:
    if not ctx.admin_token:
        return web.json_response({"error": f"{ctx.token_env} is not set on this service: the admin "
                                           f"route is refused until it is (controlplane.auth_token_env)"},
                                 status=403)
    if not bearer_matches(request, ctx.admin_token):
        return web.json_response({"error": "missing or wrong API token (Authorization: Bearer <token>)"},
                                 status=401, headers={"WWW-Authenticate": "Bearer"})
    return None


admin_refused = _refused     # for admin routes added outside this module (chat/drain.py)


def _settings_line(settings: dict[str, Any]) -> str:
    return f"keepalive={settings['keepalive']} pool_size={settings['pool_size']}"


def add_admin_routes(app: web.Application, ctx: Context) -> None:
    def view() -> dict[str, Any]:
        return {"host": ctx.host, "cluster": ctx.cluster,
                "upstreams": {name: pool.settings() for name, pool in ctx.upstreams.items()}}

    async def show(request: web.Request) -> web.Response:
        refused = _refused(ctx, request)
        return refused if refused is not None else web.json_response(view())

    async def change(request: web.Request) -> web.Response:
        refused = _refused(ctx, request)
        if refused is not None:
            return refused
        try:
            wanted = parse_upstream_change(await request.read())
        except BadField as exc:
            return web.json_response({"error": str(exc), "field": exc.field}, status=400)
        if not ctx.upstreams:
            return web.json_response({"error": "this service has no upstream pool"}, status=404)
        was = {}
        for name, pool in ctx.upstreams.items():
            before = pool.settings()
            if pool.reconfigure(**wanted):
                was[name] = before
                logs.event(ctx.log, "admin", f"upstream {_settings_line(pool.settings())}",
                           was=_settings_line(before), upstream=name)
        return web.json_response({**view(), "changed": sorted(was), "was": was})

    app.router.add_get("/v1/admin/upstream", show)
    app.router.add_put("/v1/admin/upstream", change)


async def serve_http(app: web.Application, address: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, address, port, backlog=1024, reuse_address=True).start()
    return runner


def run(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run `main(stop)` until SIGTERM/SIGINT sets `stop`; main must clean up before returning."""
    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    # The modules and settings loaded so far live as long as the process: out of the collector's
    # sight, a full collection walks only what serving builds, and pauses a few ms, not tens.
    gc.collect()
    gc.freeze()
    if uvloop is not None:
        uvloop.run(runner())
    else:
        asyncio.run(runner())
