"""The automatic policy: fixes the control plane applies by itself (`remediation.auto`).

When a finding opens whose suggested remediation is an action listed in `remediation.auto`, the
policy plans it and -- unless something says a person should decide -- applies it as actor
`auto`, through the same engine as everyone else (so it is locked, audited and verified alike).
A person decides instead, and the plan waits for them, when:

- the finding's incident is acknowledged: somebody is working on it;
- the action applied automatically on the same subject within `remediation.auto_cooldown`: a
  leak that comes back at once is a bug to find, not a thing to kill in a loop;
- the action would kill connections from a protected host (`remediation.protect`).

Every decision, including "only planned", leaves an audit record naming why.
"""

from __future__ import annotations

import logging
import threading
import time

from cluster.durations import seconds
from controlplane.remediation import ACTIONS, plans
from controlplane.remediation.base import Context, RemediationError

log = logging.getLogger(__name__)
ACTOR = "auto"


def decide(ctx: Context, finding: dict, now: float | None = None) -> tuple[bool, str, list]:
    """(apply it, why, steps) for one opened finding; steps is empty when no plan is due."""
    rem = finding.get("remediation") or {}
    action = rem.get("action")
    policy = ctx.cf.remediation
    if action not in policy.auto or action not in ACTIONS:
        return False, f"{action or 'no action'} is not in remediation.auto", []
    module = ACTIONS[action]
    params = {k: v for k, v in (rem.get("params") or {}).items() if k in module.PARAMS}
    steps = [(action, params)]
    if action == "kill_clients" and params.get("host") in ctx.cf.protected_hosts():
        return False, f"{params['host']} is protected (remediation.protect)", steps
    incident_id = finding.get("incident_id")
    if incident_id is not None:
        try:
            if ctx.db.incident(incident_id)["state"] == "acknowledged":
                return False, f"incident {incident_id} is acknowledged by a person", steps
        except KeyError:
            pass
    try:
        subject = module.subject(ctx.cf, params)
    except KeyError:
        return False, "the finding's parameters name no subject", []
    last = ctx.db.last_applied(subject, actor=ACTOR)
    cooldown = seconds(policy.auto_cooldown)
    now = time.time() if now is None else now
    if last and now - (last["applied_at"] or 0) < cooldown:
        return False, (f"{subject} was fixed automatically {now - last['applied_at']:.0f} s ago "
                       f"(plan {last['id']}; remediation.auto_cooldown {policy.auto_cooldown})"), steps
    return True, "in remediation.auto", steps


_ONE_AT_A_TIME = threading.Lock()    # decide-then-apply is atomic, or two runs race past the cooldown


def handle(ctx: Context, finding: dict) -> dict | None:
    """Plan, and apply when the policy allows, for one opened finding; returns the plan."""
    with _ONE_AT_A_TIME:
        return _handle(ctx, finding)


def _handle(ctx: Context, finding: dict) -> dict | None:
    go, why, steps = decide(ctx, finding)
    if not steps:
        return None
    try:
        plan = plans.make_plan(ctx, steps, ACTOR, incident_id=finding.get("incident_id"),
                               finding_ids=[finding["id"]])
    except RemediationError as exc:
        ctx.db.add_audit(ACTOR, "remediation.policy", f"finding {finding['id']}", "refused",
                         detail=f"cannot plan {steps[0][0]}: {exc}")
        return None
    if not go:
        ctx.db.add_audit(ACTOR, "remediation.policy", plan["subject"], "planned only", plan_id=plan["id"],
                         detail=why)
        return plan
    try:
        plan = plans.apply_plan(ctx, plan["id"], ACTOR)
    except RemediationError as exc:
        ctx.db.add_audit(ACTOR, "remediation.policy", plan["subject"], "failed", plan_id=plan["id"],
                         detail=str(exc))
        return ctx.db.plan(plan["id"])
    if plan["state"] == "applied":
        plans.verify_in_background(ctx, plan["id"])
    return plan


def listener(ctx: Context):
    """For Engine.listeners: handle every finding a detection run opened, off the detection
    thread (a kill takes a second; detection keeps its schedule)."""
    def on_run(result) -> None:
        if not ctx.cf.remediation.auto or not result.opened:
            return
        opened = []
        for row in result.opened:
            try:
                opened.append(ctx.db.finding(row["id"]))     # now with its incident
            except KeyError:
                continue

        def run() -> None:
            for finding in opened:
                try:
                    handle(ctx, finding)
                except (RemediationError, OSError) as exc:
                    log.warning("automatic remediation of finding %s failed: %s", finding["id"], exc)
        threading.Thread(target=run, name="auto-remediation", daemon=True).start()
    return on_run
