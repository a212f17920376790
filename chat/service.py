"""What every chat service process shares: its command line, its place in the cluster file, the
event loop, talk-shaped logging, a private Prometheus registry and the internal HTTP app that
serves /healthz and /metrics beside the service's own routes."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from dataclasses import dataclass
from typing import Awaitable, Callable

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from chat import logs
from cluster import clusterfile, spec

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
    args = ap.parse_args(argv)
    try:
        cf = clusterfile.load(args.config).spec
    except clusterfile.ClusterFileError as exc:
        sys.exit(str(exc))
    cluster = cf.cluster_of(args.host)
    if cluster is None:
        sys.exit(f"{args.host!r} is not a chat host in the cluster file")
    return Context(cf=cf, host=args.host, cluster=cluster, address=cf.address(args.host),
                   log=logs.setup(service, sys.stdout), registry=CollectorRegistry())


def metrics_app(ctx: Context) -> web.Application:
    app = web.Application(client_max_size=8 * 1024 * 1024)

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(ctx.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "host": ctx.host, "cluster": ctx.cluster})

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app


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

    if uvloop is not None:
        uvloop.run(runner())
    else:
        asyncio.run(runner())
