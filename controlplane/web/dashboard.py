"""The on-call dashboard: server-rendered pages over controlplane/readmodel.py.

Every number shown comes from the read model (controlplane/readmodel.py), the same one the JSON API
returns; this module only chooses what to show, formats it with units, decides what is drawn in
red (a source down, errors happening now, a queue, a figure near its limit from the cluster
file's thresholds) and draws the charts as inline SVG (no JavaScript, no CDN).

Remediation: an incident's Fix section and the plan pages go through the same engine as the API
and the CLI (controlplane/remediation/plans.py): "Plan the fix" and "Apply" are POSTs behind a
login and CSRF (auth.require_auth); a refusal is shown on the page with its status, never a 500.

Live refresh: static/dashboard.js fetches the same URL with `?fragment=1` every scrape interval
and swaps the `<main>` content; the fragment answer carries `X-Last-Scrape` and `X-Rendered-At`
headers for the "last scrape N s ago" clock in the header.

Slots: /slots shows the live slot map as `chatops slots` and `GET /api/v1/slots` do (resharding.slotmap.view)
and a migration panel that static/slots.js updates every second from `GET /api/v1/slots/progress`;
a plan that moves slots shows the same panel on its page. Applying such a plan from the dashboard
does not hold the browser for the whole migration: the apply runs on in the control plane and the
answer, after at most APPLY_WAIT_S (time enough for a refusal), is the plan page with its progress.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from pathlib import Path
from typing import Any, Iterable

from flask import (
    Blueprint,
    abort,
    current_app,
    redirect,
    render_template,
    request,
    url_for,
)
from markupsafe import Markup, escape

from chat.sharding import SLOTS
from cluster.durations import seconds
from controlplane import incidents as lifecycle
from controlplane.remediation import plans as remediation
from controlplane.remediation.base import Busy, RemediationError
from controlplane.resharding import slotmap as slotmaps
from controlplane.resharding.slotmap import SlotMapError
from controlplane.sources import figures
from controlplane.web import api, auth, markdown, readmodel

bp = Blueprint("dashboard", __name__)
log = logging.getLogger(__name__)

SPARK_WINDOW_S = 600          # sparklines in tables: the last 10 minutes
MAX_CHART_POINTS = 320        # longer series are reduced to one point (the max) per bucket
ERROR_LOG_KINDS = frozenset({"timeout", "connection_refused", "io_timeout", "slow_consumer"})


# -- context --------------------------------------------------------------------------------------

def _ctx():
    app = current_app
    return app.config["CLUSTER"], app.extensions["chatops.store"], app.extensions["chatops.scraper"]


def _interval_s() -> float:
    cf = current_app.config["CLUSTER"]
    return seconds(cf.controlplane.scrape.interval)


def _last_scrape(jobs: list[dict[str, Any]]) -> float | None:
    last = [j["last_run"] for j in jobs if j["last_run"]]
    return max(last) if last else None


@bp.app_context_processor
def _header_context() -> dict[str, Any]:
    """What base.html's header needs on every page (the login page included)."""
    def header() -> dict[str, Any]:
        scraper = current_app.extensions.get("chatops.scraper")
        jobs = scraper.jobs() if scraper is not None else []
        cf = current_app.config.get("CLUSTER")
        db = current_app.extensions.get("chatops.db")
        active = (db.incidents(state="open") + db.incidents(state="acknowledged")) if db is not None else []
        return {"last_scrape": _last_scrape(jobs), "now": time.time(), "interval_s": _interval_s() if cf else 5.0,
                "failing_jobs": sum(1 for j in jobs if j["last_error"]),
                "open_incidents": sum(1 for i in active if i["state"] == "open"),
                "critical_incidents": sum(1 for i in active if i["state"] == "open" and i["severity"] == "critical")}
    return {"dashboard_header": header}


def _page(template: str, status: int = 200, refresh: bool = True, **kw):
    """Render a dashboard page, or only its <main> content when the refresh script asks."""
    fragment = request.args.get("fragment") == "1"
    _, _, scraper = _ctx()
    jobs = scraper.jobs()
    now = time.time()
    body = render_template(template, fragment=fragment, refresh=refresh, now=now, **kw)
    resp = current_app.make_response((body, status))
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Vary"] = "X-Requested-With"
    last = _last_scrape(jobs)
    resp.headers["X-Rendered-At"] = f"{now:.3f}"
    resp.headers["X-Last-Scrape"] = f"{last:.3f}" if last else ""
    resp.headers["X-Failing-Jobs"] = str(sum(1 for j in jobs if j["last_error"]))
    return resp


def _not_found(exc: readmodel.NotFound, link: str, link_arg: str = "name"):
    return _page("404.html", status=404, refresh=False, exc=exc, link=link,   # nothing there to refresh
                 link_arg=link_arg)


def _thresholds():
    return current_app.config["CLUSTER"].controlplane.thresholds


# -- pages ----------------------------------------------------------------------------------------

@bp.get("/")
def overview():
    cf, store, scraper = _ctx()
    o = readmodel.overview(cf, store, scraper.jobs())
    _decorate_shards(store, o["shards"])
    db = current_app.extensions["chatops.db"]
    active = [i for i in readmodel.incidents(db, "all", OVERVIEW_INCIDENTS) if i["state"] != "resolved"]
    return _page("overview.html", o=o, proxies=readmodel.proxies(cf, store), incidents=active, title="Overview")


# -- incidents and runbooks -----------------------------------------------------------------------

OVERVIEW_INCIDENTS = 50


def _runbooks_dir() -> Path:
    return Path(current_app.config["RUNBOOKS_DIR"])


def render_runbook(text: str) -> Markup:
    """A runbook's Markdown as safe HTML; links to other runbooks (`name.md`) go to their page."""
    def link(url: str) -> str:
        stem = url[:-3] if url.endswith(".md") else None
        if stem and "/" not in stem.lstrip("./") and readmodel.valid_runbook_name(stem.lstrip("./")):
            return url_for("dashboard.runbook", name=stem.lstrip("./"))
        return url
    return Markup(markdown.render(text, link))


@bp.get("/incidents")
def incidents():
    db = current_app.extensions["chatops.db"]
    return _page("incidents.html", incidents=readmodel.incidents(db, "all", 200), title="Incidents")


@bp.get("/incidents/<int:incident_id>")
def incident(incident_id: int):
    return _incident_page(incident_id)


def _incident_page(incident_id: int, status: int = 200, notice: dict[str, Any] | None = None):
    """The incident page; `notice` (a refused plan or apply, answered from a POST) is shown above
    its Fix section, and such a page does not refresh itself: its URL is the POST's."""
    cf, store, _ = _ctx()
    db = current_app.extensions["chatops.db"]
    directory = _runbooks_dir()
    try:
        if incident_id > 2**63 - 1:
            raise KeyError(incident_id)
        i = readmodel.incident(db, incident_id, readmodel.runbook_names(directory))
    except (readmodel.NotFound, KeyError):
        recent = [str(r["id"]) for r in db.incidents(limit=20)]
        return _not_found(readmodel.NotFound("incident", str(incident_id), recent), "dashboard.incident_by_name")
    charts = readmodel.incident_charts(cf, store, i["findings"]["items"], i["opened"], i["resolved_at"])
    books = []
    for rb in i["runbooks"]:
        if rb["exists"]:
            doc = readmodel.runbook(directory, rb["name"])
            books.append({**rb, "title": doc["title"], "html": render_runbook(doc["markdown"])})
        else:
            books.append({**rb, "title": rb["name"], "html": None})
    return _page("incident.html", status=status, refresh=notice is None, i=i, charts=charts, books=books,
                 fix=_fix(db, incident_id), notice=notice, title=f"Incident {incident_id}")


def _fix(db, incident_id: int) -> dict[str, Any]:
    """The incident page's Fix section: its newest plan, the ones before it, and why its
    suggested remediation cannot be planned (`reason`, None when it can)."""
    made = readmodel.incident_plans(db, incident_id)
    try:
        remediation.fix_steps(db, incident_id)
        reason = None
    except RemediationError as exc:
        reason = str(exc)
    except KeyError:
        reason = f"unknown incident {incident_id}"
    return {"plan": made[0] if made else None, "earlier": made[1:], "reason": reason}


@bp.get("/incidents/<name>")
def incident_by_name(name: str):
    """Only so that a 404 page can link incidents by id (the list of valid ones)."""
    if name.isdigit():
        return redirect(url_for("dashboard.incident", incident_id=int(name)))
    db = current_app.extensions["chatops.db"]
    recent = [str(r["id"]) for r in db.incidents(limit=20)]
    return _not_found(readmodel.NotFound("incident", name, recent), "dashboard.incident_by_name")


def _incident_action(incident_id: int, to: str):
    """The Acknowledge / Resolve buttons: the API's transition, audited with this session."""
    note = (request.form.get("note") or "").strip()[:500] or None
    if note and any(ord(c) < 0x20 for c in note):
        abort(400, description="note must be one line of text")
    db = current_app.extensions["chatops.db"]
    try:
        lifecycle.transition(db, incident_id, to, auth.current_actor(), note)
    except lifecycle.UnknownIncident as exc:
        abort(404, description=str(exc))
    except lifecycle.TransitionRefused as exc:
        abort(409, description=str(exc))
    return redirect(url_for("dashboard.incident", incident_id=incident_id), code=303)


@bp.post("/incidents/<int:incident_id>/acknowledge")
@auth.require_auth
def acknowledge_incident(incident_id: int):
    return _incident_action(incident_id, "acknowledged")


@bp.post("/incidents/<int:incident_id>/resolve")
@auth.require_auth
def resolve_incident(incident_id: int):
    return _incident_action(incident_id, "resolved")


# -- silences ---------------------------------------------------------------------------------------
# The same checks as POST /api/v1/silences (api.silence_request) and the database's audit; adding
# and expiring are POSTs behind a login and CSRF, a refusal is shown on the page with its status.

SILENCE_LIST = 200


@bp.get("/silences")
def silences():
    return _silences_page()


def _silences_page(status: int = 200, notice: dict[str, Any] | None = None, form=None):
    db = current_app.extensions["chatops.db"]
    return _page("silences.html", status=status, refresh=notice is None and form is None,
                 silences=readmodel.silences(db, "all", SILENCE_LIST), notice=notice,
                 form=form or {"matchers": "", "for": "2h", "comment": ""}, title="Silences")


@bp.post("/silences")
@auth.require_auth
def add_silence():
    """The Add form: one matcher per line, a duration, a comment."""
    form = {k: (request.form.get(k) or "")[:4000] for k in ("matchers", "for", "comment")}
    body = {"matchers": [ln.strip() for ln in form["matchers"].splitlines() if ln.strip()],
            "for": form["for"].strip(), "comment": form["comment"]}
    try:
        matchers, ends_at, comment = api.silence_request(body, time.time())
    except ValueError as exc:
        return _silences_page(400, {"status": 400, "message": str(exc), "bad": True}, form)
    db = current_app.extensions["chatops.db"]
    db.add_silence(matchers, ends_at, auth.current_actor(), comment)
    return redirect(url_for("dashboard.silences"), code=303)


@bp.post("/silences/<int:silence_id>/expire")
@auth.require_auth
def expire_silence(silence_id: int):
    db = current_app.extensions["chatops.db"]
    try:
        if silence_id > 2**63 - 1:
            raise KeyError(silence_id)
        db.expire_silence(silence_id, auth.current_actor())
    except KeyError:
        return _silences_page(404, {"status": 404, "message": f"unknown silence {silence_id}", "bad": True})
    except ValueError as exc:
        return _silences_page(409, {"status": 409, "message": str(exc), "bad": True})
    return redirect(url_for("dashboard.silences"), code=303)


# -- remediation plans: plan, review, apply, verify ------------------------------------------------
# The same engine as the API and the CLI (controlplane/remediation/plans.py). A refusal (nothing
# chatops can apply, a stale plan, a busy subject, a shard out of reach) is shown on the page the
# button was on, with its status code and the engine's message; never a 500.

PLAN_ID = re.compile(r"[0-9a-f]{8}")
PLAN_LIST = 200


def _stored_plan(plan_id: str) -> dict[str, Any]:
    if not PLAN_ID.fullmatch(plan_id):
        abort(404, description="unknown plan: a plan id is 8 hex digits")
    try:
        return current_app.extensions["chatops.db"].plan(plan_id)
    except KeyError:
        abort(404, description=f"unknown plan {plan_id}")


def _notice(exc: RemediationError, plan_id: str | None = None) -> dict[str, Any]:
    """What the page says about a refusal: `bad` (red) when something is wrong (a stale plan, a
    shard out of reach, bad parameters), not for a busy subject or nothing to apply."""
    return {"status": exc.status, "message": str(exc), "plan_id": plan_id,
            "bad": not isinstance(exc, (Busy, remediation.NoFix)),
            "replan": exc.status == 409 and not isinstance(exc, remediation.NoFix)}


def _back_to_plan() -> bool:
    return request.form.get("back") == "plan"


def _after_plan(plan: dict[str, Any]):
    if plan.get("incident_id") is not None and not _back_to_plan():
        return redirect(url_for("dashboard.incident", incident_id=plan["incident_id"]), code=303)
    return redirect(url_for("dashboard.plan", plan_id=plan["id"]), code=303)


def _refused(plan: dict[str, Any], exc: RemediationError):
    notice = _notice(exc, plan["id"])
    if plan.get("incident_id") is not None and not _back_to_plan():
        return _incident_page(plan["incident_id"], status=exc.status, notice=notice)
    return _plan_page(plan["id"], status=exc.status, notice=notice)


@bp.get("/plans")
def plans():
    db = current_app.extensions["chatops.db"]
    return _page("plans.html", plans=readmodel.plans(db, PLAN_LIST), title="Plans")


@bp.get("/plans/<plan_id>")
def plan(plan_id: str):
    return _plan_page(plan_id)


def _plan_page(plan_id: str, status: int = 200, notice: dict[str, Any] | None = None):
    db = current_app.extensions["chatops.db"]
    try:
        p = readmodel.plan_detail(db, plan_id)
    except readmodel.NotFound as exc:
        return _not_found(exc, "dashboard.plan", "plan_id")
    moves = api.moves_slots(p)
    progress = api.plan_progress(current_app.extensions["chatops.run"], p) if moves else None
    return _page("plan.html", status=status, refresh=notice is None, p=p, notice=notice, moves_slots=moves,
                 progress=progress, title=f"Plan {plan_id}")


@bp.post("/incidents/<int:incident_id>/plan")
@auth.require_auth
def incident_plan(incident_id: int):
    """The "Plan the fix" button: the incident's suggested remediation as a stored plan, to review and apply."""
    ctx = remediation.context(current_app)
    try:
        steps, watched = remediation.fix_steps(ctx.db, incident_id)
        remediation.make_plan(ctx, steps, auth.current_actor(), incident_id=incident_id, finding_ids=watched)
    except KeyError:
        abort(404, description=f"unknown incident {incident_id}")
    except RemediationError as exc:
        return _incident_page(incident_id, status=exc.status, notice=_notice(exc))
    return redirect(url_for("dashboard.incident", incident_id=incident_id), code=303)


@bp.post("/plans/<plan_id>/again")
@auth.require_auth
def plan_again(plan_id: str):
    """A fresh plan of the same steps (after a stale or failed one): the incident's current
    suggestion for an incident's plan, the same actions and parameters otherwise."""
    old = _stored_plan(plan_id)
    ctx = remediation.context(current_app)
    try:
        if old.get("incident_id") is not None:
            steps, watched = remediation.fix_steps(ctx.db, old["incident_id"])
        else:
            steps, watched = [(s["action"], s["params"]) for s in old["steps"]], old.get("finding_ids") or []
        new = remediation.make_plan(ctx, steps, auth.current_actor(), incident_id=old.get("incident_id"),
                                    finding_ids=watched)
    except KeyError:
        abort(404, description=f"unknown incident {old.get('incident_id')}")
    except RemediationError as exc:
        return _refused(old, exc)
    return _after_plan(new)


APPLY_WAIT_S = 2.0      # a plan moving slots: wait this long for a refusal, then show its progress


def _apply_and_verify(ctx, plan_id: str, actor: str) -> dict[str, Any]:
    done = remediation.apply_plan(ctx, plan_id, actor)
    if done["state"] == "applied" and done["verification"] is None:
        remediation.verify_in_background(ctx, plan_id)
    return done


def _apply_running_on(ctx, plan_id: str, actor: str) -> bool:
    """Apply in a thread of its own; True when it is still running after APPLY_WAIT_S. A refusal
    (busy, stale, unreachable) comes within that time and is raised here as apply_plan raises it;
    anything later ends in the plan's stored state and audit, as every apply does."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            _apply_and_verify(ctx, plan_id, actor)
        except (RemediationError, KeyError, OSError) as exc:
            raised.append(exc)
            log.warning("applying plan %s: %s", plan_id, exc)

    worker = threading.Thread(target=run, name=f"apply-{plan_id}", daemon=True)
    worker.start()
    worker.join(APPLY_WAIT_S)
    if raised:
        raise raised[0]
    return worker.is_alive()


@bp.post("/plans/<plan_id>/apply")
@auth.require_auth
def apply_plan(plan_id: str):
    """Apply a reviewed plan, then watch its findings in the background; back to the page the
    button was on (303), where the verification shows as it moves. A plan that moves slots and is
    still moving them after APPLY_WAIT_S goes to its own page, where the migration's progress shows."""
    p = _stored_plan(plan_id)
    ctx = remediation.context(current_app)
    try:
        if api.moves_slots(p):
            if _apply_running_on(ctx, plan_id, auth.current_actor()):
                return redirect(url_for("dashboard.plan", plan_id=plan_id), code=303)
        else:
            _apply_and_verify(ctx, plan_id, auth.current_actor())
    except KeyError:
        abort(404, description=f"unknown plan {plan_id}")
    except RemediationError as exc:
        return _refused(p, exc)
    return _after_plan(p)


@bp.get("/runbooks")
def runbooks():
    return _page("runbooks.html", runbooks=readmodel.runbooks(_runbooks_dir()), refresh=False, title="Runbooks")


@bp.get("/runbooks/<name>")
def runbook(name: str):
    directory = _runbooks_dir()
    try:
        doc = readmodel.runbook(directory, name)
    except readmodel.NotFound as exc:
        return _not_found(exc, "dashboard.runbook")
    return _page("runbook.html", doc=doc, html=render_runbook(doc["markdown"]), refresh=False,
                 title=f"Runbook {doc['title']}")


@bp.get("/shards")
def shards():
    cf, store, _ = _ctx()
    rows = readmodel.shards(cf, store)
    _decorate_shards(store, rows)
    return _page("shards.html", shards=rows, title="Shards")


@bp.get("/slots")
def slots():
    """The live slot map (from the shards and the kept file, as `chatops slots` reads it) and the
    migration panel."""
    return _slots_page()


def _slots_page(status: int = 200, notice: str | None = None, form=None):
    app = current_app
    run = app.extensions["chatops.run"]
    try:
        view, error = slotmaps.view(app.config["CLUSTER"], app.config["CLUSTER_FILE"], run, api.SLOTS_TIMEOUT_S), None
    except SlotMapError as exc:
        view, error = None, str(exc)
    return _page("slots.html", status=status, view=view, error=error, progress=api.progress_view(run),
                 title="Slots", notice=notice, form=form or {}, actions=SHARD_ACTIONS)


SHARD_ACTIONS = ("reshard", "add_shard", "remove_shard", "relocate_shard")


@bp.post("/slots/plan")
@auth.require_auth
def slots_plan():
    """The Slots page's form: plan reshard, add_shard, remove_shard or relocate_shard from
    `key=value` parameters, one per line (as `chatops plan ... --set key=value`), then review
    the plan on its own page."""
    action = request.form.get("action", "")
    if action not in SHARD_ACTIONS:
        abort(400, description=f"action must be one of {', '.join(SHARD_ACTIONS)}")
    params: dict[str, str] = {}
    for line in request.form.get("params", "").splitlines():
        if not line.strip():
            continue
        key, sep, value = line.strip().partition("=")
        if not sep or not key.strip():
            return _slots_page(status=400, notice=f"each parameter is key=value on its own line, not {line[:60]!r}",
                               form=request.form)
        params[key.strip()] = value.strip()
    ctx = remediation.context(current_app)
    try:
        p = remediation.make_plan(ctx, [(action, params)], auth.current_actor())
    except RemediationError as exc:
        return _slots_page(status=exc.status, notice=str(exc), form=request.form)
    return redirect(url_for("dashboard.plan", plan_id=p["id"]), code=303)


@bp.get("/shards/<name>")
def shard(name: str):
    cf, store, _ = _ctx()
    try:
        s = readmodel.shard(cf, store, name)
        c = readmodel.clients(cf, store, name)
    except readmodel.NotFound as exc:
        return _not_found(exc, "dashboard.shard")
    _decorate_shards(store, [s])
    return _page("shard.html", s=s, c=c, title=f"Shard {name}")


@bp.get("/proxies")
def proxies():
    cf, store, _ = _ctx()
    since = time.time() - SPARK_WINDOW_S
    return _page("proxies.html", proxies=[readmodel.proxy(cf, store, h, since) for h, _ in cf.chat_hosts()],
                 title="Proxies")


@bp.get("/services")
def services():
    cf, store, _ = _ctx()
    ev = readmodel.log_events(store, since=time.time() - SPARK_WINDOW_S)
    by_service: dict[str, list[dict[str, Any]]] = {}
    for g in ev["groups"]:
        by_service.setdefault(g["service"], []).append(g)
    return _page("services.html", ev=ev, by_service=sorted(by_service.items()), hosts=set(cf.hosts),
                 title="Services")


@bp.get("/hosts")
def hosts():
    cf, store, _ = _ctx()
    return _page("hosts.html", hosts=readmodel.hosts(cf, store), title="Hosts")


@bp.get("/hosts/<name>")
def host(name: str):
    cf, store, _ = _ctx()
    try:
        h = readmodel.host(cf, store, name, since=time.time() - SPARK_WINDOW_S)
    except readmodel.NotFound as exc:
        return _not_found(exc, "dashboard.host")
    _decorate_shards(store, h["shard_rows"])
    return _page("host.html", h=h, title=f"Host {name}")


@bp.get("/jobs")
def jobs():
    _, _, scraper = _ctx()
    return _page("jobs.html", jobs=scraper.jobs(), title="Scrape jobs")


# -- what is wrong (red) --------------------------------------------------------------------------

def _decorate_shards(store, rows: list[dict[str, Any]]) -> None:
    """Add sparkline series (last 10 min, from readmodel.series) and the `bad` set of figures that are
    near or past a limit, per the cluster file's thresholds."""
    since = time.time() - SPARK_WINDOW_S
    t = _thresholds()
    for r in rows:
        r["spark"] = readmodel.series(store, "redis", r["name"],
                                  ("ops_per_s", "cpu_percent", "connected_clients", "used_memory_bytes",
                                   "hit_ratio"), since)
        r["spark"].update(readmodel.series(store, "clients", r["name"], ("idle",), since))
        bad = set()
        if r["up"] is not False:
            if (r["cpu_percent"] or 0) >= t.hot_shard_cpu_percent:
                bad.add("cpu_percent")
            if r["maxclients"] and (r["connected_clients"] or 0) >= r["maxclients"] * t.maxclients_warn_ratio:
                bad.add("connected_clients")
            if r["maxmemory_bytes"] and (r["used_memory_bytes"] or 0) >= r["maxmemory_bytes"] * 0.9:
                bad.add("used_memory_bytes")
            if (r["rejected_connections_per_s"] or 0) > 0:
                bad.add("rejected_connections_per_s")
            if (r["clients"]["idle"] or 0) >= t.leaked_idle_clients:
                bad.add("idle")
        r["bad"] = bad


def proxy_row_bad(row: dict[str, Any]) -> set[str]:
    """The cells of one HAProxy row that show something wrong."""
    bad = set()
    if figures.serving(row.get("status")) == 0.0:     # the same meaning as the figures and /metrics
        bad.add("status")
    if (row.get("qcur") or 0) > 0:
        bad.add("qcur")
    if row.get("slim") and (row.get("scur") or 0) >= row["slim"] * _thresholds().proxy_session_warn_ratio:
        bad.add("scur")
    for c in ("ereq", "econ", "eresp"):
        if (row.get(f"{c}_per_s") or 0) > 0:
            bad.add(c)
    cs = row.get("check_status") or ""
    if cs and not (cs.startswith("L") and cs.endswith("OK")) and cs not in ("INI", "UNK"):
        bad.add("check_status")
    return bad


# -- formatting -----------------------------------------------------------------------------------

DASH = "—"


def fmt(v: Any, unit: str = "", digits: int | None = None) -> str:
    """A number with its unit; "—" for unknown. Units: ops/s, /s, %, ratio (shown as %),
    bytes (shown as MiB), s, and plain counts."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return DASH
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if unit == "bytes":
        return f"{v / 1048576:.1f} MiB"
    if unit == "ratio":
        return f"{v * 100:.1f} %"
    if unit == "%":
        return f"{v:.{1 if digits is None else digits}f} %"
    if unit in ("ops/s", "/s", "calls/s"):
        d = digits if digits is not None else (0 if abs(v) >= 100 else 1 if abs(v) >= 1 or v == 0 else 2)
        return f"{v:,.{d}f} {unit}"
    if unit == "s":
        return duration(v)
    if float(v).is_integer():
        return f"{int(v):,}" + (f" {unit}" if unit else "")
    return f"{v:,.{2 if digits is None else digits}f}" + (f" {unit}" if unit else "")


def duration(v: float | None) -> str:
    if v is None:
        return DASH
    v = float(v)
    if v == 0:
        return "0 s"
    if v < 1:
        return f"{v * 1000:.0f} ms" if v >= 0.001 else f"{v * 1e6:.0f} µs"
    if v < 120:
        return f"{v:.1f} s" if v < 10 else f"{v:.0f} s"
    if v < 7200:
        return f"{v / 60:.0f} min"
    if v < 172800:
        return f"{v / 3600:.1f} h"
    return f"{v / 86400:.1f} d"


def clock(ts: float | None) -> str:
    return DASH if not ts else time.strftime("%H:%M:%S", time.localtime(ts))


def ago(ts: float | None, now: float | None = None) -> str:
    if not ts:
        return "never"
    return f"{duration(max(0.0, (now or time.time()) - ts))} ago"


# -- charts ---------------------------------------------------------------------------------------

def _reduce(points: list, limit: int) -> list:
    """At most `limit` points: each bucket keeps its last time and its max value (None if all None)."""
    if len(points) <= limit:
        return points
    size = math.ceil(len(points) / limit)
    out = []
    for i in range(0, len(points), size):
        chunk = points[i:i + size]
        vals = [v for _, v in chunk if v is not None]
        out.append([chunk[-1][0], max(vals) if vals else None])
    return out


def _scale(unit: str) -> float:
    return {"bytes": 1 / 1048576, "ratio": 100.0}.get(unit, 1.0)


def _unit_label(unit: str) -> str:
    return {"bytes": "MiB", "ratio": "%"}.get(unit, unit)


def _short(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v / 1000:.1f}k"
    if abs(v) >= 10 or float(v).is_integer():
        return f"{v:.0f}"
    return f"{v:.1f}" if abs(v) >= 1 else f"{v:.2f}"


def chart(points: Iterable, unit: str = "", name: str = "", width: int = 120, height: int = 24,
          big: bool = False, bad: bool = False) -> Markup:
    """An inline SVG line chart of [[t, v], ...]: one <polyline> per run of known values (None is
    a gap), a dot for a lone point. `big` charts also label the range and the latest value.
    The <svg> has class "chart" and data-points (known values drawn) so tests can check it."""
    pts = _reduce([p for p in points], MAX_CHART_POINTS)
    k = _scale(unit)
    known = [(t, v * k) for t, v in pts if v is not None]
    label = _unit_label(unit)
    latest = pts[-1][1] * k if pts and pts[-1][1] is not None else None
    pad_t, pad_b = (12, 12) if big else (2, 2)
    pad_l, pad_r = (0, 0)
    cls = "chart big" if big else "chart spark"
    if bad:
        cls += " bad"
    title = f"{name}: latest {_short(latest) if latest is not None else DASH} {label}".strip()
    head = (f'<svg class="{cls}" data-series="{escape(name)}" data-points="{len(known)}" '
            f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
            f'aria-label="{escape(title)}" preserveAspectRatio="none"><title>{escape(title)}</title>')
    if not known:
        text = "no data yet" if not pts else "no data"
        return Markup(head + f'<text x="2" y="{height - 4 if not big else height / 2 + 4}" class="empty">'
                             f'{text}</text></svg>')
    t0, t1 = pts[0][0], pts[-1][0]
    vmin = min(0.0, min(v for _, v in known))
    vmax = max(v for _, v in known)
    if vmax == vmin:
        vmax = vmin + (1.0 if vmin == 0 else abs(vmin) * 0.1)
    span_t = (t1 - t0) or 1.0
    inner_w, inner_h = width - pad_l - pad_r, height - pad_t - pad_b

    def xy(t: float, v: float) -> str:
        x = pad_l + (t - t0) / span_t * inner_w
        y = pad_t + inner_h - (v - vmin) / (vmax - vmin) * inner_h
        return f"{x:.1f},{y:.1f}"

    parts, run = [], []
    for t, v in pts:
        if v is None:
            if run:
                parts.append(run)
            run = []
        else:
            run.append(xy(t, v * k))
    if run:
        parts.append(run)
    body = []
    for r in parts:
        if len(r) == 1:
            x, y = r[0].split(",")
            body.append(f'<circle cx="{x}" cy="{y}" r="1.5"/>')
        else:
            body.append(f'<polyline points="{" ".join(r)}"/>')
    if big:
        body.append(f'<line class="axis" x1="0" y1="{pad_t + inner_h}" x2="{width}" y2="{pad_t + inner_h}"/>')
        body.append(f'<text x="2" y="10" class="lbl">max {_short(vmax)} {escape(label)}</text>')
        body.append(f'<text x="2" y="{height - 1}" class="lbl">{duration(span_t)} ago</text>')
        body.append(f'<text x="{width - 2}" y="{height - 1}" class="lbl" text-anchor="end">now</text>')
    return Markup(head + "".join(body) + "</svg>")


@bp.app_template_global()
def spark(points, unit: str = "", name: str = "", bad: bool = False) -> Markup:
    return chart(points or [], unit, name, bad=bad)


@bp.app_template_global()
def big_chart(points, unit: str = "", name: str = "", bad: bool = False) -> Markup:
    return chart(points or [], unit, name, width=360, height=96, big=True, bad=bad)


RANGES_SHOWN = 5


def slot_ranges(ranges: list[list[int]], limit: int | None = RANGES_SHOWN) -> str:
    """[[0, 2], [8192, 16383]] -> '0-2, 8192-16383'; past `limit` runs, 'and N more ranges'."""
    if not ranges:
        return "none"
    shown = ranges if limit is None else ranges[:limit]
    text = ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in shown)
    return text + (f" and {len(ranges) - len(shown)} more ranges" if len(ranges) > len(shown) else "")


STALLED_S = 10.0         # a migration that has not written its progress for this long may have stopped


def migration_state(p: dict[str, Any] | None, now: float | None = None) -> dict[str, Any]:
    """What the migration panel shows (static/slots.js computes the same in the browser)."""
    p = p or {"phase": "waiting"}
    now = now or time.time()
    total, moved = p.get("keys_total") or 0, p.get("keys_moved") or 0
    slots_total, slots_done = p.get("slots_total") or 0, p.get("slots_done") or 0
    if p.get("phase") == "done":
        fraction = 1.0
    elif total:
        fraction = min(1.0, moved / total)
    elif slots_total:
        fraction = min(1.0, slots_done / slots_total)
    else:
        fraction = 0.0
    at = p.get("written_at")
    running = p.get("phase") in ("starting", "scanning", "moving", "publishing")
    return {"fraction": fraction, "age_s": now - at if isinstance(at, (int, float)) else None,
            "stalled": running and isinstance(at, (int, float)) and now - at > STALLED_S, "running": running}


bp.add_app_template_filter(slot_ranges, "slot_ranges")
bp.add_app_template_global(migration_state, "migration_state")
bp.add_app_template_global(SLOTS, "SLOTS_TOTAL")
bp.add_app_template_global(STALLED_S, "STALLED_S")
bp.add_app_template_filter(fmt, "fmt")
bp.add_app_template_filter(duration, "duration")
bp.add_app_template_filter(clock, "clock")
bp.add_app_template_global(ago, "ago")
bp.add_app_template_global(proxy_row_bad, "proxy_row_bad")
bp.add_app_template_global(lambda kind: kind in ERROR_LOG_KINDS, "is_error_kind")
