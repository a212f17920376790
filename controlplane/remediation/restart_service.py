"""restart_service {name}: restart one supervised process (`edge-chat2`, `redis-shard1`...) and wait
until it is healthy again.

Locally the supervisor owns every process: the action sends the process SIGTERM, the supervisor
sees it exit and starts it again (at once for a process that ran long, with its usual backoff for
one that keeps dying), and the action waits for state.json to show a new pid that is up. The plan's
fingerprint is the pid it saw, so a process that restarted on its own since is a stale plan.
"""

from __future__ import annotations

import os
import signal
import time

from cluster.state import read_state
from controlplane.remediation.base import BadParams, Context, Draft, Outcome, Param, Unavailable

NAME = "restart_service"
VERIFY = ("delivery_gap", "ingestion_timeouts")
HEALTHY_WITHIN_S = 30.0

PARAMS = {
    "name": Param(str, help="a process name as `chatops status` shows it, e.g. edge-chat2"),
    # or, as a finding names it: the service and its host
    "service": Param(str, choices=("edge", "clue", "exchange")),
    "host": Param(str, help="the chat host of `service`"),
}


def _name(params: dict) -> str:
    if params.get("name"):
        return params["name"]
    if params.get("service") and params.get("host"):
        return f"{params['service']}-{params['host']}"
    raise BadParams("name", "give name (e.g. edge-chat2), or service and host")


def subject(cf, params: dict) -> str:
    return f"process:{_name(params)}"


def _process(ctx: Context, name: str) -> dict:
    if ctx.cf.profile != "local":
        raise Unavailable("restart_service in profile remote goes through the host's service manager "
                          "(the Ansible rolling-restart playbook), not the local supervisor")
    state = read_state(ctx.run)
    if not state:
        raise Unavailable(f"no supervisor state in {ctx.run.root}: is the cluster running (`chatops status`)?")
    procs = {p["name"]: p for p in state.get("processes", [])}
    if name not in procs:
        raise BadParams("name", f"{name[:40]!r} is not a supervised process; processes: {', '.join(procs)}")
    if name.startswith("controlplane"):
        raise BadParams("name", "the control plane cannot restart itself from its own request")
    return procs[name]


def plan(ctx: Context, params: dict) -> Draft:
    p = _process(ctx, _name(params))
    up = f"up {time.time() - p['started_at']:.0f} s" if p.get("started_at") else p.get("status")
    return Draft(summary=f"restart {p['name']} on {p['host']} and wait until it answers",
                 diff=[f"- {p['name']} pid {p['pid']} ({p['status']}, {up}, {p['restarts']} restarts)",
                       f"+ {p['name']} a new process, healthy within {HEALTHY_WITHIN_S:g} s"],
                 preconditions=["the local supervisor runs it (`chatops status`)"],
                 state={"pid": p["pid"]}, details={"process": p})


def apply(ctx: Context, params: dict, draft: Draft) -> Outcome:
    old = draft.state["pid"]
    try:
        os.kill(old, signal.SIGTERM)
    except ProcessLookupError:
        pass                        # already gone: the supervisor is starting it again
    deadline = time.monotonic() + HEALTHY_WITHIN_S
    while time.monotonic() < deadline:
        p = {x["name"]: x for x in (read_state(ctx.run) or {}).get("processes", [])}.get(_name(params))
        if p and p["pid"] and p["pid"] != old and p["status"] == "up":
            return Outcome(True, f"{_name(params)} restarted: pid {old} -> {p['pid']}", {"pid": p["pid"]})
        time.sleep(0.2)
    return Outcome(False, f"{_name(params)} was not up again within {HEALTHY_WITHIN_S:g} s", {})
