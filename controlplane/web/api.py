"""The JSON API, `/api/v1/...`, described by controlplane/web/openapi.json (served as is at
/api/v1/openapi.json; tests/controlplane/web/test_api.py checks every route against it on a live
cluster). docs/api.md is the reader's guide.

Every figure comes from the read model (controlplane/readmodel.py), so the API and the dashboard
never disagree; the slot map and a migration's progress are read where they are kept (the shards,
the run directory: controlplane/resharding/) by `slotmap.view` and `progress_view` below, which the
dashboard and `chatops slots` use too. Read endpoints are open (the control plane listens on loopback); anything that
changes state needs auth (controlplane/web/auth.py) and writes an audit record.

Errors are `{"error": {"status", "message"}}` (controlplane/web/app.py). Query parameters are checked
strictly: an unknown or repeated parameter, a bad duration or limit is a 400 whose message names
the parameter and what it accepts; an unknown shard, host or job is a 404 listing the valid names.
Bad input never reaches the views, so it cannot become a 500.
"""

from __future__ import annotations

import math
import re
import time
from importlib import resources
from pathlib import Path
from typing import Any

from flask import Blueprint, abort, current_app, jsonify, request

from cluster import durations
from controlplane import incidents as incidents_lifecycle
from controlplane.alerting import receiver as am_receiver
from controlplane.alerting import silences as silence_rules
from controlplane.remediation import plans as remediation_plans
from controlplane.remediation.base import RemediationError
from controlplane.resharding import progress as slot_progress
from controlplane.resharding import slotmap as slotmaps
from controlplane.web import auth, readmodel

bp = Blueprint("api", __name__, url_prefix="/api/v1")
OPENAPI = resources.files("controlplane.web") / "openapi.json"   # package data

MAX_VALUE_LEN = 64                       # no accepted parameter value is longer
MAX_SINCE_S = 7 * 86400                  # a week; the store keeps far less (scrape.history)
LIMIT_MAX = 1000
AUDIT_LIMIT_DEFAULT = 100
_SERVICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

ACCEPTS = {
    "since": "a positive duration such as 500ms, 90s, 5m, 1h, 1d or a whole number of seconds (at most 7d)",
    "limit": f"an integer from 1 to {LIMIT_MAX}",
    "service": "a service (edge, clue, exchange, haproxy, redis, supervisor, loadgen) or a log "
               "file stem such as edge-chat1: letters, digits, '.', '_' and '-', at most 64",
    "state": "open, acknowledged, resolved or all (findings: open, resolved or all)",
}
STATES = ("open", "acknowledged", "resolved", "all")
FINDING_STATES = ("open", "resolved", "all")
MAX_INCIDENT_ID = 2**63 - 1              # SQLite's INTEGER; a larger id cannot exist
MAX_NOTE_LEN = 500


# -- parameters -----------------------------------------------------------------------------------

def _show(value: str) -> str:
    """A sent value, quoted and cut short, for an error message."""
    return repr(value if len(value) <= 40 else value[:40] + "...")


def _bad(name: str, value: str, why: str = "") -> None:
    abort(400, description=f"bad query parameter {name}={_show(value)}{': ' + why if why else ''}; "
                           f"{name} accepts {ACCEPTS[name]}")


def _since(value: str) -> float:
    """A duration back from now, as the epoch time it reaches."""
    try:
        span = durations.parse(value, bare_seconds=True)
    except durations.DurationError:
        _bad("since", value)
    if not 0 < span <= MAX_SINCE_S:
        _bad("since", value, "out of range")
    return time.time() - span


def _limit(value: str) -> int:
    if not value.isascii() or not value.isdigit() or len(value) > 7:
        _bad("limit", value)
    n = int(value)
    if not 1 <= n <= LIMIT_MAX:
        _bad("limit", value, "out of range")
    return n


def _service(value: str) -> str:
    if not _SERVICE.fullmatch(value):
        _bad("service", value)
    return value


def _state(value: str) -> str:
    if value not in STATES:
        _bad("state", value)
    return value


_PARSERS = {"since": _since, "limit": _limit, "service": _service, "state": _state}


def params(*allowed: str, **parsers) -> dict[str, Any]:
    """The query parameters of this request, parsed; 400 for any that is unknown here, repeated,
    too long or malformed. `parsers` replace the common parser of a name for this route."""
    got: dict[str, Any] = {}
    for name in request.args:
        values = request.args.getlist(name)
        if name not in allowed:
            accepted = ", ".join(allowed) if allowed else "none"
            abort(400, description=f"unknown query parameter {_show(name)} for {request.path}; "
                                   f"accepted: {accepted}")
        if len(values) > 1:
            abort(400, description=f"query parameter {name} is given {len(values)} times; give it once")
        value = values[0]
        if len(value) > MAX_VALUE_LEN:
            _bad(name, value, f"longer than {MAX_VALUE_LEN} characters")
        got[name] = parsers.get(name, _PARSERS.get(name))(value)
    return got


# -- helpers --------------------------------------------------------------------------------------

def _ctx():
    app = current_app
    return app.config["CLUSTER"], app.extensions["chatops.store"], app.extensions["chatops.scraper"]


def _finite(value: Any) -> Any:
    """NaN and infinities are not JSON: they become null (unknown), like any missing figure."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _json(body: dict[str, Any], status: int = 200):
    resp = jsonify(_finite(body))
    resp.status_code = status
    return resp


def _found(fn, *args, **kwargs):
    """Call a view, turning its NotFound into a 404 that lists the valid names."""
    try:
        return fn(*args, **kwargs)
    except readmodel.NotFound as exc:
        abort(404, description=exc.message)


# -- read endpoints -------------------------------------------------------------------------------

@bp.get("/overview")
def overview():
    params()
    cf, store, scraper = _ctx()
    return _json(readmodel.overview(cf, store, scraper.jobs()))


@bp.get("/clusters")
def clusters():
    params()
    cf, store, _ = _ctx()
    return _json({"clusters": readmodel.clusters(cf, store)})


@bp.get("/hosts")
def hosts():
    params()
    cf, store, _ = _ctx()
    return _json({"hosts": readmodel.hosts(cf, store)})


@bp.get("/hosts/<name>")
def host(name: str):
    p = params("since")
    cf, store, _ = _ctx()
    return _json(_found(readmodel.host, cf, store, name, p.get("since")))


@bp.get("/shards")
def shards():
    params()
    cf, store, _ = _ctx()
    return _json({"shards": readmodel.shards(cf, store)})


@bp.get("/shards/<name>")
def shard(name: str):
    p = params("since")
    cf, store, _ = _ctx()
    return _json(_found(readmodel.shard, cf, store, name, p.get("since")))


@bp.get("/shards/<name>/clients")
def shard_clients(name: str):
    params()
    cf, store, _ = _ctx()
    return _json(_found(readmodel.clients, cf, store, name))


@bp.get("/proxies")
def proxies():
    params()
    cf, store, _ = _ctx()
    return _json({"proxies": readmodel.proxies(cf, store)})


@bp.get("/proxies/<host>")
def proxy(host: str):
    p = params("since")
    cf, store, _ = _ctx()
    return _json(_found(readmodel.proxy, cf, store, host, p.get("since")))


@bp.get("/logs")
def logs():
    p = params("service", "since")
    _, store, _ = _ctx()
    return _json(readmodel.log_events(store, p.get("service"), p.get("since")))


@bp.get("/jobs")
def jobs():
    params()
    _, _, scraper = _ctx()
    return _json({"jobs": scraper.jobs()})


@bp.get("/audit")
def audit():
    p = params("limit", "since")
    db = current_app.extensions["chatops.db"]
    return _json({"audit": db.audit(limit=p.get("limit", AUDIT_LIMIT_DEFAULT), since=p.get("since"))})


@bp.get("/findings")
def findings():
    p = params("state", "limit")
    state = p.get("state", "all")
    if state not in FINDING_STATES:
        abort(400, description=f"bad query parameter state={_show(state)}: findings are open or resolved; "
                               f"state accepts {', '.join(FINDING_STATES)}")
    db = current_app.extensions["chatops.db"]
    return _json({"findings": readmodel.findings(db, state, p.get("limit", AUDIT_LIMIT_DEFAULT))})


@bp.get("/incidents")
def incidents():
    p = params("state", "limit")
    db = current_app.extensions["chatops.db"]
    return _json({"incidents": readmodel.incidents(db, p.get("state", "all"),
                                               p.get("limit", readmodel.INCIDENT_LIST_DEFAULT))})


def runbooks_dir() -> Path:
    return Path(current_app.config["RUNBOOKS_DIR"])


def _incident_id(incident_id: int) -> int:
    if incident_id > MAX_INCIDENT_ID:
        abort(404, description=f"unknown incident {incident_id}")
    return incident_id


@bp.get("/incidents/<int:incident_id>")
def incident(incident_id: int):
    params()
    db = current_app.extensions["chatops.db"]
    return _json(_found(readmodel.incident, db, _incident_id(incident_id), readmodel.runbook_names(runbooks_dir())))


@bp.get("/runbooks")
def runbooks():
    params()
    return _json({"runbooks": readmodel.runbooks(runbooks_dir())})


@bp.get("/runbooks/<name>")
def runbook(name: str):
    params()
    if not readmodel.valid_runbook_name(name):
        abort(400, description=f"bad runbook name {_show(name)}: a runbook name has only "
                               f"{readmodel.RUNBOOK_NAME_CHARS}, at most 64 characters")
    return _json(_found(readmodel.runbook, runbooks_dir(), name))


# -- the slot map and the migration moving it -------------------------------------------------------

SLOT_ACTIONS = frozenset({"reshard", "add_shard", "remove_shard"})   # they move slots
SLOTS_TIMEOUT_S = 1.0       # per shard: a read of the map must not hang on a shard that does not answer


def progress_view(run) -> dict[str, Any]:
    """The running (or last) migration's progress, or `{"phase": "idle"}` when none ever ran here."""
    return slot_progress.read(run) or {"phase": "idle"}


def moves_slots(plan: dict[str, Any]) -> bool:
    """Whether a plan has a step that moves slots (and so has a migration's progress to show)."""
    return any(s.get("action") in SLOT_ACTIONS for s in plan.get("steps") or ())


def plan_progress(run, plan: dict[str, Any]) -> dict[str, Any] | None:
    """The progress file when it was written for this plan's apply (not before the plan was made)."""
    p = slot_progress.read(run)
    if not p or not isinstance(p.get("written_at"), (int, float)) or p["written_at"] < plan["created"]:
        return None
    return p


@bp.get("/slots")
def slots():
    params()
    app = current_app
    try:
        view = slotmaps.view(app.config["CLUSTER"], app.config["CLUSTER_FILE"], app.extensions["chatops.run"],
                             SLOTS_TIMEOUT_S)
    except slotmaps.SlotMapError as exc:
        abort(503, description=f"the slot map cannot be read: {exc}")
    return _json(view)


@bp.get("/slots/progress")
def slots_progress():
    params()
    return _json(progress_view(current_app.extensions["chatops.run"]))


@bp.get("/openapi.json")
def openapi():
    params()
    if not OPENAPI.is_file():
        abort(500, description="controlplane/web/openapi.json is missing from the installation")
    return current_app.response_class(OPENAPI.read_bytes(), mimetype="application/json")


# -- actions --------------------------------------------------------------------------------------

def _job(scraper, job_id: str) -> dict[str, Any]:
    return next(j for j in scraper.jobs() if j["id"] == job_id)


@bp.post("/jobs/<job_id>/run")
@auth.require_auth
def run_job(job_id: str):
    """Scrape one source right now, outside its schedule; audited as `scrape.run`."""
    params()
    _, _, scraper = _ctx()
    if job_id not in scraper.sources:
        abort(404, description=f"unknown job {_show(job_id)}; valid: {', '.join(scraper.sources) or '(none)'}")
    if not scraper.run_once(job_id):
        abort(409, description=f"job {job_id} is running right now; try again after it finishes")
    db = current_app.extensions["chatops.db"]
    job = _job(scraper, job_id)
    result = "failed" if job["last_error"] else "ok"
    detail = {"error": job["last_error"]} if job["last_error"] else {}
    db.add_audit(auth.current_actor(), "scrape.run", job_id, result, **detail)
    return _json({"result": result, "job": job})


def _note() -> str | None:
    """The optional JSON body {"note": "..."} of an incident action."""
    if not request.get_data(cache=True):
        return None
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or set(body) - {"note"}:
        abort(400, description='the body must be empty or a JSON object {"note": "<text>"}')
    note = body.get("note")
    if note is None:
        return None
    if not isinstance(note, str) or len(note) > MAX_NOTE_LEN or any(ord(c) < 0x20 and c not in "\t" for c in note):
        abort(400, description=f"note must be one line of text, at most {MAX_NOTE_LEN} characters")
    return note.strip() or None


def change_incident(incident_id: int, to: str, note: str | None = None) -> dict[str, Any]:
    """Move an incident to `to` for the current actor, or 404/409."""
    db = current_app.extensions["chatops.db"]
    try:
        return incidents_lifecycle.transition(db, _incident_id(incident_id), to, auth.current_actor(), note)
    except incidents_lifecycle.UnknownIncident as exc:
        abort(404, description=str(exc))
    except incidents_lifecycle.TransitionRefused as exc:
        abort(409, description=str(exc))


@bp.post("/incidents/<int:incident_id>/acknowledge")
@auth.require_auth
def acknowledge_incident(incident_id: int):
    """Acknowledge an open incident; audited as incident.acknowledged."""
    params()
    change_incident(incident_id, "acknowledged", _note())
    db = current_app.extensions["chatops.db"]
    return _json(readmodel.incident(db, incident_id, readmodel.runbook_names(runbooks_dir())))


@bp.post("/incidents/<int:incident_id>/resolve")
@auth.require_auth
def resolve_incident(incident_id: int):
    """Resolve an open or acknowledged incident by hand; audited as incident.resolved."""
    params()
    change_incident(incident_id, "resolved", _note())
    db = current_app.extensions["chatops.db"]
    return _json(readmodel.incident(db, incident_id, readmodel.runbook_names(runbooks_dir())))


# -- remediation: plan, apply ----------------------------------------------------------------------

MAX_STEPS = 10


def _remediation_error(exc: RemediationError):
    abort(exc.status, description=str(exc))


def _body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        abort(400, description='the body must be a JSON object {"action": "<name>", "params": {...}} '
                               'or {"steps": [{"action": ..., "params": ...}, ...]}')
    return body


def _steps(body: dict[str, Any]) -> list[tuple[str, Any]]:
    extra = set(body) - {"action", "params", "steps"}
    if extra:
        abort(400, description=f"bad field {sorted(extra)[0][:40]!r}: the body takes action and params, or steps")
    if "steps" in body and ("action" in body or "params" in body):
        abort(400, description="bad field steps: give action and params, or steps, not both")
    if "steps" in body:
        steps = body["steps"]
        if not isinstance(steps, list) or not 1 <= len(steps) <= MAX_STEPS or not all(
                isinstance(s, dict) and set(s) <= {"action", "params"} for s in steps):
            abort(400, description=f"bad field steps: a list of 1 to {MAX_STEPS} objects with action and params")
        return [(s.get("action"), s.get("params", {})) for s in steps]
    if not isinstance(body.get("action"), str):
        abort(400, description="bad field action: the name of an action, e.g. kill_clients")
    return [(body["action"], body.get("params", {}))]


@bp.post("/plans")
@auth.require_auth
def create_plan():
    """Plan an action (no side effects): 201 with the plan, its diff and its id."""
    params()
    steps = _steps(_body())
    try:
        plan = remediation_plans.make_plan(remediation_plans.context(current_app), steps, auth.current_actor())
    except RemediationError as exc:
        _remediation_error(exc)
    return _json(plan, 201)


@bp.get("/plans")
def list_plans():
    p = params("limit")
    db = current_app.extensions["chatops.db"]
    return _json({"plans": db.plans(limit=p.get("limit", AUDIT_LIMIT_DEFAULT))})


_PLAN_ID = re.compile(r"[0-9a-f]{8}")


def _plan_id(plan_id: str) -> str:
    if not _PLAN_ID.fullmatch(plan_id):
        abort(404, description=f"unknown plan {_show(plan_id)}: a plan id is 8 hex digits")
    return plan_id


@bp.get("/plans/<plan_id>")
def get_plan(plan_id: str):
    params()
    db = current_app.extensions["chatops.db"]
    plan = _found_plan(db, _plan_id(plan_id))
    body = {**plan, "audit": db.audit_for_plan(plan_id)}
    if moves_slots(plan):
        body["progress"] = plan_progress(current_app.extensions["chatops.run"], plan)
    return _json(body)


def _found_plan(db, plan_id: str) -> dict[str, Any]:
    try:
        return db.plan(plan_id)
    except KeyError:
        abort(404, description=f"unknown plan {plan_id}")


@bp.post("/plans/<plan_id>/apply")
@auth.require_auth
def apply_plan(plan_id: str):
    """Apply a plan: 409 when stale or when its subject is being changed by another apply."""
    params()
    db = current_app.extensions["chatops.db"]
    _found_plan(db, _plan_id(plan_id))
    ctx = remediation_plans.context(current_app)
    try:
        plan = remediation_plans.apply_plan(ctx, plan_id, auth.current_actor())
    except RemediationError as exc:
        _remediation_error(exc)
    if plan["state"] == "applied" and plan["verification"] is None:
        remediation_plans.verify_in_background(ctx, plan_id)
    return _json(db.plan(plan_id))


@bp.post("/incidents/<int:incident_id>/plan")
@auth.require_auth
def plan_incident(incident_id: int):
    """Plan the incident's suggested remediation: 201 with the plan, 409 when it has none chatops applies."""
    params()
    ctx = remediation_plans.context(current_app)
    try:
        steps, watched = remediation_plans.fix_steps(ctx.db, _incident_id(incident_id))
    except KeyError:
        abort(404, description=f"unknown incident {incident_id}")
    except RemediationError as exc:
        _remediation_error(exc)
    try:
        plan = remediation_plans.make_plan(ctx, steps, auth.current_actor(), incident_id=incident_id,
                                           finding_ids=watched)
    except RemediationError as exc:
        _remediation_error(exc)
    return _json(plan, 201)


# -- the receiver for Alertmanager's alerts ----------------------------------------------------------

@bp.post("/alerts/alertmanager")
@auth.require_auth
def alertmanager_webhook():
    """Alertmanager's webhook (payload version 4): each firing alert opens or refreshes a finding of
    kind `alertmanager`, each resolved one resolves it; incidents correlate as for chatops' own.
    Validated whole before anything is written; one audit record per request, with counts."""
    params()
    length = request.content_length
    if length is not None and length > am_receiver.MAX_BODY_BYTES:
        abort(413, description=f"the body is larger than {am_receiver.MAX_BODY_BYTES // (1024 * 1024)} MiB; "
                               "lower max_alerts in the webhook_config")
    raw = request.stream.read(am_receiver.MAX_BODY_BYTES + 1)
    engine = current_app.extensions["chatops.engine"]
    try:
        payload = am_receiver.parse(raw)
        batch = am_receiver.findings(payload, engine.cf)
    except am_receiver.BadPayload as exc:
        abort(400, description=f"not an Alertmanager webhook payload (version 4): {exc}")
    result = engine.ingest(batch.firing, batch.resolved)
    db = current_app.extensions["chatops.db"]
    open_now = {(r["kind"], r["subject"]): r for r in db.findings(open_only=True)}
    touched = [open_now.get((f.kind, f.subject)) for f in batch.firing] + result.resolved
    incident_ids = sorted({r["incident_id"] for r in touched if r and r.get("incident_id") is not None})
    counts = {"alerts": len(payload.alerts), "firing": len(batch.firing), "resolved_alerts": len(batch.resolved),
              "opened": len(result.opened), "updated": len(result.updated), "resolved": len(result.resolved),
              "unknown": result.unknown}
    db.add_audit(auth.current_actor(), "alerts.receive", f"alertmanager/{(payload.receiver or '-')[:64]}", "ok",
                 **counts, truncated=payload.truncated, incidents=incident_ids[:50])
    return _json({"status": payload.status, **counts, "truncated": payload.truncated, "incidents": incident_ids})


# -- silences and the outbox ----------------------------------------------------------------------

SILENCE_STATES = ("active", "pending", "expired", "all")
MAX_SILENCE_S = 365 * 86400              # a silence longer than a year is a mistake
MAX_COMMENT_LEN = 500
MAX_SILENCE_ID = MAX_INCIDENT_ID


def _silence_state(value: str) -> str:
    if value not in SILENCE_STATES:
        abort(400, description=f"bad query parameter state={_show(value)}; for silences state accepts "
                               f"{', '.join(SILENCE_STATES)}")
    return value


@bp.get("/silences")
def list_silences():
    p = params("state", "limit", state=_silence_state)
    db = current_app.extensions["chatops.db"]
    return _json({"silences": readmodel.silences(db, p.get("state", "all"), p.get("limit", AUDIT_LIMIT_DEFAULT))})


def silence_request(body: Any, now: float) -> tuple[list[dict], float, str]:
    """A silence's body {"matchers", "for" | "ends_at", "comment"} checked: (matchers, ends_at,
    comment), or ValueError naming the field."""
    if not isinstance(body, dict):
        raise ValueError('the body must be a JSON object {"matchers": ["cluster=testing"], "for": "2h", '
                         '"comment": "..."}')
    extra = set(body) - {"matchers", "for", "ends_at", "comment"}
    if extra:
        raise ValueError(f"bad field {sorted(extra)[0][:40]!r}: a silence takes matchers, for or ends_at, "
                         "and comment")
    items = body.get("matchers")
    if not isinstance(items, list):
        raise ValueError('bad field matchers: a list such as ["cluster=testing"] or '
                         '[{"name": "cluster", "op": "=", "value": "testing"}]')
    try:
        matchers = silence_rules.parse(items)
    except silence_rules.BadMatcher as exc:
        raise ValueError(f"bad field matchers: {exc}") from None
    if ("for" in body) == ("ends_at" in body):
        raise ValueError('bad field for: give how long ("for": "2h") or until when ("ends_at": epoch seconds), '
                         "one of them")
    if "for" in body:
        try:
            span = durations.parse(body["for"])
        except durations.DurationError:
            raise ValueError(f"bad field for: a duration such as {durations.EXAMPLES}") from None
        if not 0 < span <= MAX_SILENCE_S:
            raise ValueError("bad field for: more than nothing and at most 365d")
        ends_at = now + span
    else:
        ends_at = body["ends_at"]
        if isinstance(ends_at, bool) or not isinstance(ends_at, (int, float)) or not math.isfinite(ends_at):
            raise ValueError("bad field ends_at: epoch seconds, a number")
        if not now < ends_at <= now + MAX_SILENCE_S:
            raise ValueError("bad field ends_at: in the future, and at most 365 days from now")
    comment = body.get("comment", "")
    if comment is None:
        comment = ""
    if not isinstance(comment, str) or len(comment) > MAX_COMMENT_LEN or any(
            ord(c) < 0x20 and c != "\t" for c in comment):
        raise ValueError(f"bad field comment: one line of text, at most {MAX_COMMENT_LEN} characters")
    return matchers, float(ends_at), comment.strip()


@bp.post("/silences")
@auth.require_auth
def add_silence():
    """Mute notifications of findings every matcher matches, until it ends; audited as silence.add."""
    params()
    body = request.get_json(silent=True)
    try:
        matchers, ends_at, comment = silence_request(body, time.time())
    except ValueError as exc:
        abort(400, description=str(exc))
    db = current_app.extensions["chatops.db"]
    row = db.add_silence(matchers, ends_at, auth.current_actor(), comment)
    return _json(readmodel.silence(row), 201)


@bp.delete("/silences/<int:silence_id>")
@auth.require_auth
def expire_silence(silence_id: int):
    """End a silence now; audited as silence.expire. 409 when it has already ended."""
    params()
    db = current_app.extensions["chatops.db"]
    if silence_id > MAX_SILENCE_ID:
        abort(404, description=f"unknown silence {silence_id}")
    try:
        row = db.expire_silence(silence_id, auth.current_actor())
    except KeyError:
        abort(404, description=f"unknown silence {silence_id}")
    except ValueError as exc:
        abort(409, description=str(exc))
    return _json(readmodel.silence(row))


@bp.get("/alerts")
def list_alerts():
    """The outbox: each notification, where it goes and how its delivery went, oldest first."""
    p = params("limit")
    db = current_app.extensions["chatops.db"]
    return _json({"alerts": readmodel.notifications(db, limit=p.get("limit", AUDIT_LIMIT_DEFAULT))})
