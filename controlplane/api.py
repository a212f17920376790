"""The JSON API, `/api/v1/...`, described by controlplane/openapi.json (served at
/api/v1/openapi.json). Read endpoints are open on loopback; anything that changes state needs
auth (controlplane/auth.py). Errors are `{"error": {"status", "message"}}`; a bad query
parameter is a 400 that names it."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, current_app, jsonify

from controlplane import views

bp = Blueprint("api", __name__, url_prefix="/api/v1")
OPENAPI = Path(__file__).with_name("openapi.json")


def _ctx():
    app = current_app
    return app.config["CLUSTER"], app.extensions["chatops.store"], app.extensions["chatops.scraper"]


@bp.get("/jobs")
def jobs():
    _, _, scraper = _ctx()
    return jsonify(jobs=scraper.jobs())


@bp.get("/overview")
def overview():
    cf, store, scraper = _ctx()
    return jsonify(views.overview(cf, store, scraper.jobs()))


@bp.get("/openapi.json")
def openapi():
    return current_app.response_class(OPENAPI.read_text(), mimetype="application/json") if OPENAPI.exists() \
        else (jsonify(error={"status": 404, "message": "openapi.json is missing"}), 404)
