"""The control plane's Flask app: `create_app(config=None)`.

Config keys (all optional):
- CLUSTER_FILE  the cluster file (default: the running cluster's, else the shipped one)
- RUN_DIR       the run directory (default: $CHATOPS_RUN_DIR or .run)
- SCHEDULER     start the scrape schedule (default True; tests that drive scrapes by hand set False)
- SECRET_KEY    session signing key (default: random per process, see controlplane/web/auth.py)
- TRUSTED_HOSTS the Host names answered (default: `trusted_hosts(cluster)`; see `_web_hygiene`)
- LOGIN_*, API_TOKEN_FAILURES  the throttle on wrong tokens (controlplane/web/auth.py)

Each subsystem is wired by its own `init_app(app)` and reached through `app.extensions`:
`chatops.run` (RunDir), `chatops.store` (Store), `chatops.db` (Database), `chatops.scraper`
(Scraper), `chatops.engine` (the detection Engine); the loaded cluster file is
`app.config["CLUSTER"]`.
"""

from __future__ import annotations

import atexit
import ipaddress
import time
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, jsonify, request
from werkzeug.exceptions import BadRequest, HTTPException, SecurityError

import runbooks
from cluster import clusterfile
from cluster.rundir import RunDir
from controlplane.store import Store


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.from_mapping(CLUSTER_FILE=None, RUN_DIR=None, SCHEDULER=True, JSON_SORT_KEYS=False,
                            RUNBOOKS_DIR=str(runbooks.directory()))
    if config:
        app.config.update(config)
    run = RunDir.resolve(app.config["RUN_DIR"])
    loaded = _load_cluster(app.config["CLUSTER_FILE"], run)
    app.config["CLUSTER"] = loaded.spec
    app.config["CLUSTER_FILE"] = str(loaded.path)
    app.extensions["chatops.run"] = run
    app.extensions["chatops.store"] = Store.for_cluster(loaded.spec)
    app.extensions["chatops.started"] = time.time()

    from controlplane import alerting, database, metrics, scheduler
    from controlplane.remediation import plans
    from controlplane.sources import canary
    from controlplane.web import api, auth, dashboard
    app.extensions["chatops.db"] = database.Database.for_run(run)
    _web_hygiene(app)             # first: a foreign Host is refused before any other hook looks at it
    auth.init_app(app)
    metrics.init_app(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(dashboard.bp)
    _json_errors(app)

    @app.get("/healthz")
    def healthz():
        return {"ok": True}

    canary.init_app(app)          # it waits for the schedule, so a locked-out app runs no canary
    scraper = scheduler.init_app(app)
    atexit.register(scraper.stop)
    plans.init_app(app)           # after the schedule's lock: one process holds the admin connections
    alerting.init_app(app)        # delivers only where the schedule runs
    return app


def _load_cluster(path: str | None, run: RunDir) -> clusterfile.LoadedCluster:
    """The given cluster file; else the one the running cluster was started from; else the default."""
    if not path:
        from cluster.state import running_config
        path = running_config(run)
    return clusterfile.load(path)


# The dashboard loads only its own static files: no inline script or style (slots.html draws its
# share bars in SVG for that reason), no eval, nothing from another origin, never framed.
CSP = "; ".join([
    "default-src 'self'", "script-src 'self'", "style-src 'self'", "img-src 'self'", "connect-src 'self'",
    "font-src 'self'", "object-src 'none'", "base-uri 'none'", "form-action 'self'", "frame-ancestors 'none'",
])
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
HOST_REFUSED = ("this control plane does not answer to that Host header: it answers to the hosts of "
                "controlplane.listen and controlplane.public_url in the cluster file (and localhost / "
                "127.0.0.1 when it listens on loopback); use one of those in the URL")


def trusted_hosts(cluster, listen: tuple[str, int] | None = None) -> list[str]:
    """The Host names the app answers to: the listen address (or the `listen` override of
    `chatops controlplane --listen`), public_url's host, and localhost/127.0.0.1 when listening on
    loopback. Werkzeug compares names only, never ports: a request that reached the socket came
    to the listen port, and public_url's port is the proxy's."""
    cp = cluster.controlplane
    address = listen[0] if listen else cp.listen.address
    hosts = [address]
    if cp.public_url and urlsplit(cp.public_url).hostname:
        hosts.append(urlsplit(cp.public_url).hostname)
    try:
        loopback = ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        loopback = address == "localhost"
    if loopback:
        hosts += ["localhost", "127.0.0.1"]
    return list(dict.fromkeys(h.lower() for h in hosts))


def _web_hygiene(app: Flask) -> None:
    """Flask's own TRUSTED_HOSTS check (it fails the request's routing with SecurityError), made to
    act before every other hook; and the security headers on every response, errors included."""
    if app.config.get("TRUSTED_HOSTS") is None:
        app.config["TRUSTED_HOSTS"] = trusted_hosts(app.config["CLUSTER"])

    @app.before_request
    def refuse_foreign_host():
        if isinstance(request.routing_exception, SecurityError):
            raise BadRequest(HOST_REFUSED)

    @app.after_request
    def security_headers(resp):
        for k, v in SECURITY_HEADERS.items():
            resp.headers.setdefault(k, v)
        return resp


def _json_errors(app: Flask) -> None:
    """API paths answer errors as JSON `{"error": {"status", "message"}}`; pages keep HTML."""

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if request.path.startswith("/api/"):
            resp = jsonify(error={"status": exc.code, "message": exc.description})
            resp.status_code = exc.code or 500
            for k, v in (exc.get_response().headers.items() if exc.code in (401, 405) else []):
                if k in ("WWW-Authenticate", "Allow"):
                    resp.headers[k] = v
            return resp
        return exc

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        app.logger.exception("unhandled error on %s", request.path)
        if request.path.startswith("/api/"):
            return jsonify(error={"status": 500, "message": f"internal error: {type(exc).__name__}"}), 500
        return "internal error; see the control plane's log", 500
