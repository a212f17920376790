"""The on-call dashboard: server-rendered pages over controlplane/views.py."""

from __future__ import annotations

from flask import Blueprint, current_app, render_template

from controlplane import views

bp = Blueprint("dashboard", __name__)


@bp.get("/")
def overview():
    app = current_app
    cf, store, scraper = app.config["CLUSTER"], app.extensions["chatops.store"], app.extensions["chatops.scraper"]
    return render_template("overview.html", o=views.overview(cf, store, scraper.jobs()))
