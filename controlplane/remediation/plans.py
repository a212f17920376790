"""Plan, apply, verify: the one path every remediation takes, whoever asks for it.

The CLI (through the API), the API, the dashboard and the automatic policy all call `make_plan`
and `apply_plan` here, so each gets the same checks:

- A plan is one or more steps, each an action with its parameters, its diff and the fingerprint
  of the state it saw. It is stored (the `plans` table) before anyone sees its id, so the plan
  applied is the plan that was reviewed.
- `apply_plan` takes every step's subject lock (a file lock in the run directory, so two
  processes cannot race either) or answers Busy; claims the plan in the database so it applies
  at most once (applying an applied plan returns its result and changes nothing); re-plans each
  step and refuses the whole plan as stale when a fingerprint moved; then applies the steps in
  order, stopping at the first failure, and writes one audit record per step (actor, plan, diff,
  result, duration).
- `verify` watches the findings the plan was meant to clear and records when they resolved, or
  that they had not after N seconds.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import threading
import time
from contextlib import ExitStack, contextmanager
from typing import Any, Iterator

from controlplane.remediation import ACTIONS
from controlplane.remediation.base import (
    BadParams,
    Busy,
    Context,
    RemediationError,
    StalePlan,
    Unavailable,
    validate,
)

log = logging.getLogger(__name__)

VERIFY_TIMEOUT_S = 60.0
VERIFY_POLL_S = 1.0


def _action(name: str):
    module = ACTIONS.get(name)
    if module is None:
        raise BadParams("action", f"{str(name)[:40]!r} is not an action; actions: {', '.join(ACTIONS)}")
    return module


def _draft(ctx: Context, action: str, params: Any):
    module = _action(action)
    clean = validate(params, module.PARAMS, ctx.cf)
    return module, clean, module.plan(ctx, clean)


def draft_step(ctx: Context, action: str, params: Any) -> dict[str, Any]:
    """One step, planned: no side effects."""
    module, clean, draft = _draft(ctx, action, params)
    return {"action": action, "params": clean, "subject": module.subject(ctx.cf, clean),
            "summary": draft.summary, "diff": draft.diff, "preconditions": draft.preconditions,
            "state": draft.state, "fingerprint": draft.fingerprint, "changes": draft.changes}


def resolve_steps(ctx: Context, steps: list[tuple[str, Any]]) -> tuple[list[tuple[str, Any]], list[str]]:
    """Steps with what their actions choose at planning time written into their parameters (a
    reshard's slots, measured from the load now), so that re-planning at apply time re-checks
    the plan that was reviewed instead of choosing again. Returns the steps and notes for the
    reviewer (why these choices)."""
    out: list[tuple[str, Any]] = []
    notes: list[str] = []
    for action, params in steps:
        module = _action(action)
        resolve = getattr(module, "resolve", None)
        if resolve is None:
            out.append((action, params))
            continue
        chosen, why = resolve(ctx, validate(params, module.PARAMS, ctx.cf))
        out += [(action, p) for p in chosen]
        notes += why
    return out, notes


def make_plan(ctx: Context, steps: list[tuple[str, Any]], actor: str, incident_id: int | None = None,
              finding_ids: list[int] | None = None) -> dict[str, Any]:
    if not steps:
        raise BadParams("action", "a plan needs at least one step")
    steps, notes = resolve_steps(ctx, steps)
    drafted = [draft_step(ctx, action, params) for action, params in steps]
    if notes:
        drafted[0]["diff"] = [f"# {n}" for n in notes] + drafted[0]["diff"]
    plan_id = secrets.token_hex(4)
    body = {"steps": drafted, "summary": "; ".join(s["summary"] for s in drafted),
            "changes": any(s["changes"] for s in drafted), "finding_ids": finding_ids or []}
    subject = drafted[0]["subject"] if len({s["subject"] for s in drafted}) == 1 else \
        ",".join(sorted({s["subject"] for s in drafted}))
    return ctx.db.add_plan(plan_id, drafted[0]["action"] if len(drafted) == 1 else "plan", subject, actor, body,
                           incident_id=incident_id)


def _members(ctx: Context, subject: str) -> list[str]:
    """`shard:all` is every shard and `haproxy:all` every chat host: it takes each one's lock, so
    it never runs beside an apply on one of them."""
    kind, _, name = subject.partition(":")
    if name != "all" or ctx.cf is None:
        return [subject]
    if kind == "shard":
        return [subject] + [f"shard:{s.name}" for s in ctx.cf.redis.shards]
    if kind == "haproxy":
        return [subject] + [f"haproxy:{h}" for h, _ in ctx.cf.chat_hosts()]
    return [subject]


@contextmanager
def _locked(ctx: Context, subjects: list[str]) -> Iterator[None]:
    """Every subject's lock, in sorted order (no deadlock between two multi-step plans), or Busy."""
    root = ctx.run.root / "locks"
    root.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        for subject in sorted({m for s in subjects for m in _members(ctx, s)}):
            path = root / (subject.replace("/", "_").replace(":", "_") + ".lock")
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            stack.callback(os.close, fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Busy(f"another apply holds {subject}; try again when it finishes") from None
        yield


def apply_plan(ctx: Context, plan_id: str, actor: str) -> dict[str, Any]:
    """Apply a stored plan; returns the plan as stored afterwards. Raises KeyError for an unknown
    plan, Busy when its subjects are locked, StalePlan when the state moved since it was made."""
    plan = ctx.db.plan(plan_id)
    if plan["state"] == "applied":
        return plan                        # idempotent: the second apply changes nothing
    steps = plan["steps"]
    # Steps that write the cluster file also take its lock: two of them re-plan and write in turn.
    writes = ["cluster-file"] if any(getattr(_action(s["action"]), "WRITES_CLUSTER_FILE", False)
                                     for s in steps) else []
    # Subjects an action changes besides its own, whose other applies must wait (ALSO_LOCKS).
    also = [lock for s in steps for lock in getattr(_action(s["action"]), "ALSO_LOCKS", ())]
    with _locked(ctx, [s["subject"] for s in steps] + writes + also):
        claimed = ctx.db.claim_plan(plan_id, actor)
        if claimed is None:
            current = ctx.db.plan(plan_id)
            if current["state"] == "applied":
                return current
            # `applying`, yet we hold every lock its apply held: that apply died (the process was
            # killed) without finishing. Actions are idempotent, so this apply resumes it.
            claimed = ctx.db.claim_plan(plan_id, actor, resume=True)
            if claimed is None:
                raise Busy(f"plan {plan_id} is being applied right now")
            ctx.db.add_audit(actor, "remediation.resume", plan["subject"], "ok", plan_id=plan_id,
                             detail="an earlier apply of this plan stopped before it finished; resuming")
        ctx.replanning = True
        try:
            fresh = [_draft(ctx, s["action"], s["params"]) for s in steps]
        except (RemediationError, OSError) as exc:
            ctx.db.finish_plan(plan_id, "failed", {"ok": False, "detail": f"re-planning failed: {exc}"})
            if isinstance(exc, RemediationError):
                raise
            raise Unavailable(f"re-planning failed: {exc}") from None
        finally:
            ctx.replanning = False
        # A step already as asked is done, whatever else moved; one still to do must find the
        # state its plan was reviewed against.
        moved = [f"{s['action']} on {s['subject']}" for s, (_, _, d) in zip(steps, fresh)
                 if d.changes and d.fingerprint != s["fingerprint"]]
        if moved:
            result = {"ok": False, "stale": True,
                      "detail": f"the state changed since the plan was made ({', '.join(moved)}); plan again"}
            ctx.db.finish_plan(plan_id, "failed", result)
            ctx.db.add_audit(actor, "remediation.apply", plan["subject"], "stale", plan_id=plan_id,
                             detail=result["detail"])
            raise StalePlan(result["detail"])
        results = []
        ok = True
        for step, (module, clean, draft) in zip(steps, fresh):
            started = time.perf_counter()
            if not draft.changes:
                outcome_ok, detail, changed = True, "nothing to change: already as planned", {}
            else:
                try:
                    outcome = module.apply(ctx, clean, draft)
                    outcome_ok, detail, changed = outcome.ok, outcome.detail, outcome.changed
                except (RemediationError, OSError) as exc:
                    # Whatever the action managed before, the plan must end failed and audited,
                    # never stuck in `applying` where no later apply could retry it.
                    outcome_ok, detail, changed = False, f"{type(exc).__name__}: {exc}", {}
            took = round(time.perf_counter() - started, 3)
            if draft.changes and getattr(module, "WRITES_CLUSTER_FILE", False):
                _reload_cluster(ctx)
            results.append({"action": step["action"], "subject": step["subject"], "ok": outcome_ok,
                            "detail": detail, "changed": changed, "duration_s": took})
            ctx.db.add_audit(actor, f"remediation.{step['action']}", step["subject"], "ok" if outcome_ok else "failed",
                             plan_id=plan_id, diff=step["diff"], params=step["params"], detail=detail,
                             changed=changed, duration_s=took)
            if not outcome_ok:
                ok = False
                break
        result = {"ok": ok, "steps": results,
                  "detail": "; ".join(r["detail"] for r in results)}
        return ctx.db.finish_plan(plan_id, "applied" if ok else "failed", result)


def _reload_cluster(ctx: Context) -> None:
    """After an action rewrote the cluster file, the next step (and every later plan) must see
    the file as it is now: a shard just added is a valid parameter from here on."""
    from cluster import clusterfile
    try:
        ctx.cf = clusterfile.load(ctx.cluster_path).spec
    except clusterfile.ClusterFileError as exc:       # apply_edit validated it: this is not expected
        log.error("the cluster file no longer loads after an apply: %s", exc)
        return
    if ctx.on_cluster_change is not None:
        ctx.on_cluster_change(ctx.cf)


def _watched(ctx: Context, plan: dict) -> list[dict]:
    """The findings the plan was meant to clear: the ones it was made from, else the open findings
    of the kinds its actions verify against that name its subjects."""
    ids = plan.get("finding_ids") or []
    if ids:
        out = []
        for fid in ids:
            try:
                out.append(ctx.db.finding(fid))
            except KeyError:
                continue
        return out
    kinds = {k for s in plan["steps"] for k in getattr(_action(s["action"]), "VERIFY", ())}
    names = {s["subject"].split(":", 1)[-1] for s in plan["steps"]}
    return [f for f in ctx.db.findings(open_only=True)
            if f["kind"] in kinds and any(n in str(f["subject"]) for n in names)]


def verify(ctx: Context, plan_id: str, timeout_s: float = VERIFY_TIMEOUT_S, poll_s: float = VERIFY_POLL_S,
           stop: threading.Event | None = None) -> dict[str, Any]:
    """Watch the plan's findings until all are resolved or `timeout_s` passes; record the outcome."""
    plan = ctx.db.plan(plan_id)
    watched = _watched(ctx, plan)
    started = time.time()
    applied_at = plan.get("applied_at") or started
    if not watched:
        v = {"state": "nothing_to_watch", "detail": "no open finding names this plan's subject",
             "at": started}
        return ctx.db.set_plan_verification(plan_id, v)
    ctx.db.set_plan_verification(plan_id, {"state": "watching", "findings": [f["id"] for f in watched],
                                           "since": started, "timeout_s": timeout_s})
    while True:
        current = []
        for f in watched:
            try:
                current.append(ctx.db.finding(f["id"]))
            except KeyError:
                continue
        open_now = [f for f in current if f["state"] == "open"]
        now = time.time()
        if not open_now:
            resolved_at = max((f.get("resolved_at") or now) for f in current) if current else now
            v = {"state": "resolved", "findings": [f["id"] for f in watched], "resolved_at": resolved_at,
                 "after_s": round(max(0.0, resolved_at - applied_at), 2)}
            return ctx.db.set_plan_verification(plan_id, v)
        if now - started >= timeout_s or (stop is not None and stop.is_set()):
            v = {"state": "not_resolved", "findings": [f["id"] for f in watched],
                 "open": [f"{f['kind']} {f['subject']}" for f in open_now],
                 "detail": f"not resolved after {timeout_s:g} s", "at": now}
            return ctx.db.set_plan_verification(plan_id, v)
        time.sleep(poll_s)


def verify_in_background(ctx: Context, plan_id: str, timeout_s: float = VERIFY_TIMEOUT_S) -> threading.Thread:
    def run() -> None:
        try:
            verify(ctx, plan_id, timeout_s)
        except (RemediationError, KeyError, OSError) as exc:
            log.warning("verifying plan %s failed: %s", plan_id, exc)
    t = threading.Thread(target=run, name=f"verify-{plan_id}", daemon=True)
    t.start()
    return t


FIX_TIMEOUT_S = 300     # the idle timeout `fix` proposes for a shard found at `timeout 0`


class NoFix(RemediationError):
    status = 409


def fix_steps(db, incident_id: int) -> tuple[list[tuple[str, dict]], list[int]]:
    """The steps that carry out an incident's suggested remediation (its root cause's), and the
    findings they should clear. A leak on a shard whose `timeout` is 0 also gets that timeout set,
    so the next leak is closed by Redis itself."""
    from controlplane import incidents
    try:
        db.incident(incident_id)
    except KeyError:
        raise KeyError(incident_id) from None
    findings = db.incident_findings(incident_id)
    open_ones = [f for f in findings if f["state"] == "open"] or findings
    chain = incidents.build_chain(open_ones)
    rem = chain.get("remediation") or {}
    action = rem.get("action")
    if action not in ACTIONS:
        summary = rem.get("summary") or "no remediation suggested"
        raise NoFix(f"incident {incident_id}'s suggested remediation is not an action chatops applies "
                    f"({action or 'none'}): {summary}")
    params = {k: v for k, v in (rem.get("params") or {}).items() if k in ACTIONS[action].PARAMS}
    steps = [(action, params)]
    root = chain["root"] or {}
    root_finding = next((f for f in open_ones if f["id"] == root.get("finding_id")), None)
    evidence = (root_finding or {}).get("evidence") or {}
    if action == "kill_clients" and evidence.get("timeout_zero") and params.get("shard"):
        steps.append(("set_redis_config", {"shard": params["shard"], "timeout": FIX_TIMEOUT_S}))
    # The incident resolves when all of its findings do: that is what the fix is judged by.
    return steps, [f["id"] for f in open_ones if f["state"] == "open"]


# -- wiring into the app ---------------------------------------------------------------------------

def init_app(app) -> None:
    """The admin connections, kept open from the start (a shard at maxclients takes no new one)."""
    import atexit

    from controlplane.remediation.admin import AdminPool
    pool = AdminPool(app.config["CLUSTER"])
    app.extensions["chatops.admin"] = pool
    if app.config.get("SCHEDULER", True):
        pool.keep()
        pool.start()
    atexit.register(pool.close)
    from controlplane.remediation import policy
    app.extensions["chatops.engine"].listeners.append(policy.listener(context(app)))


def context(app) -> Context:
    from pathlib import Path
    return Context(cf=app.config["CLUSTER"], cluster_path=Path(app.config["CLUSTER_FILE"]),
                   run=app.extensions["chatops.run"], db=app.extensions["chatops.db"],
                   store=app.extensions["chatops.store"], admin=app.extensions["chatops.admin"],
                   on_cluster_change=lambda cf: cluster_changed(app, cf))


def cluster_changed(app, cf) -> None:
    """Every part of the running control plane that holds the cluster model takes the new one:
    the pages and the API, the admin connections, the detectors, and the scrape sources (a new
    shard is scraped from now on, a removed one no longer)."""
    from controlplane import sources
    app.config["CLUSTER"] = cf
    app.extensions["chatops.admin"].reconfigure(cf)
    engine = app.extensions.get("chatops.engine")
    if engine is not None:
        engine.cf = cf
    scraper = app.extensions.get("chatops.scraper")
    if scraper is not None:
        jobs = sources.build(cf, app.extensions["chatops.run"], app.extensions["chatops.store"])
        detect = [s for s in scraper.sources.values() if s.kind == "detect"]
        scraper.replace(jobs + detect)
