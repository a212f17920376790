"""`/metrics`: everything the control plane collected, in Prometheus text form."""

from __future__ import annotations

from flask import Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ScrapeHealthCollector:
    """The control plane's own health: per source up, scrape duration and errors."""

    def __init__(self, app):
        self.app = app

    def collect(self):
        scraper = self.app.extensions["chatops.scraper"]
        up = GaugeMetricFamily("chatops_source_up", "1 when the source answered its last scrape.", labels=["source", "target"])
        for j in scraper.jobs():
            if j["last_run"] is not None:
                up.add_metric([j["kind"], j["target"]], 0.0 if j["last_error"] else 1.0)
        yield up


def init_app(app) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ScrapeHealthCollector(app))
    app.extensions["chatops.registry"] = registry

    @app.get("/metrics")
    def metrics():
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE)
    return registry
