"""`chatops plan`, `fix`, `apply`, `plans` and `audit`: remediation from a terminal.

They talk to the running control plane's API rather than acting themselves: the control plane
holds the admin connections (the only way into a shard at maxclients), the subject locks and the
audit, so a plan made here can be reviewed on the dashboard and applied from either, and every
way in runs the same code. The token comes from the variable the cluster file names
(`controlplane.auth_token_env`), as for any API client.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import click

from controlplane.cli.common import config_option, fail, load, run_dir_option
from controlplane.cli.common import run_dir as _run_dir

VERIFY_WAIT_S = 90.0


class Api:
    def __init__(self, cf):
        listen = cf.controlplane.listen
        self.base = f"http://{listen.address}:{listen.port}/api/v1"
        self.token_env = cf.controlplane.auth_token_env
        self.token = os.environ.get(self.token_env)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if method != "GET":
            if not self.token:
                fail(f"{self.token_env} is not set: changing the cluster needs the control plane's API token "
                     f"(export {self.token_env}=...)", 2)
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as exc:
            try:
                message = json.load(exc)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = exc.reason
            fail(f"{method} {path}: {exc.code}: {message}", 3 if exc.code == 409 else 2 if exc.code < 500 else 1)
        except (urllib.error.URLError, OSError) as exc:
            fail(f"cannot reach the control plane at {self.base} ({getattr(exc, 'reason', exc)}); "
                 "is it running (`chatops status`)?")


def _api(config: str | None, run_dir: str | None) -> Api:
    return Api(load(config, _run_dir(run_dir)).spec)


def _params(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"--set takes key=value, not {pair!r}", 2)
        out[key] = value
    return out


def print_plan(plan: dict) -> None:
    click.echo(f"plan {plan['id']}  {plan['action']} on {plan['subject']}  [{plan['state']}]"
               + (f"  incident {plan['incident_id']}" if plan.get("incident_id") else ""))
    for step in plan["steps"]:
        click.echo(f"\n  {step['action']} {json.dumps(step['params'], sort_keys=True)}")
        click.echo(f"  {step['summary']}")
        for line in step["diff"]:
            click.echo(f"    {line}")
        for pre in step["preconditions"]:
            click.echo(f"    requires: {pre}")
    if not plan.get("changes", True):
        click.echo("\n  nothing to change: the cluster is already as this plan asks")
    if plan.get("result"):
        click.echo(f"\n  result: {'ok' if plan['result'].get('ok') else 'FAILED'}: {plan['result'].get('detail')}")
    v = plan.get("verification")
    if v:
        click.echo(f"  verification: {v.get('state')}" + (f" after {v['after_s']} s" if "after_s" in v else "")
                   + (f": {v['detail']}" if v.get("detail") else ""))


def _emit(plan: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(plan, indent=1, sort_keys=True))
    else:
        print_plan(plan)


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


@click.command("plan")
@click.argument("action")
@click.option("--set", "pairs", multiple=True, metavar="KEY=VALUE", help="A parameter of the action (repeatable).")
@config_option
@run_dir_option
@json_option
def plan_cmd(action: str, pairs: tuple[str, ...], config: str | None, run_dir: str | None, as_json: bool) -> None:
    """Plan ACTION (kill_clients, set_redis_config, server_state, proxy_reload): show what would change."""
    plan = _api(config, run_dir).call("POST", "/plans", {"action": action, "params": _params(pairs)})
    _emit(plan, as_json)
    if not as_json:
        click.echo(f"\napply it with: chatops apply {plan['id']}")


@click.command("fix")
@click.argument("incident", type=int)
@config_option
@run_dir_option
@json_option
def fix_cmd(incident: int, config: str | None, run_dir: str | None, as_json: bool) -> None:
    """Plan INCIDENT's suggested remediation."""
    plan = _api(config, run_dir).call("POST", f"/incidents/{incident}/plan")
    _emit(plan, as_json)
    if not as_json:
        click.echo(f"\napply it with: chatops apply {plan['id']}")


@click.command("apply")
@click.argument("plan_id")
@click.option("--yes", "-y", is_flag=True, help="Apply without asking.")
@click.option("--no-wait", is_flag=True, help="Do not wait for the verification.")
@config_option
@run_dir_option
@json_option
def apply_cmd(plan_id: str, yes: bool, no_wait: bool, config: str | None, run_dir: str | None, as_json: bool) -> None:
    """Apply a reviewed plan, then watch the findings it should clear."""
    api = _api(config, run_dir)
    plan = api.call("GET", f"/plans/{plan_id}")
    if not yes:
        if not sys.stdin.isatty():
            fail("refusing to apply without confirmation; pass --yes", 2)
        print_plan(plan)
        click.confirm(f"\nApply plan {plan_id}?", abort=True)
    plan = api.call("POST", f"/plans/{plan_id}/apply")
    if not as_json:
        print_plan(plan)
    if plan["state"] == "applied" and not no_wait:
        deadline = time.monotonic() + VERIFY_WAIT_S
        while time.monotonic() < deadline:
            v = plan.get("verification") or {}
            if v.get("state") not in (None, "watching"):
                break
            if not as_json:
                click.echo("  verifying: waiting for the findings to resolve...", err=True)
            time.sleep(2.0)
            plan = api.call("GET", f"/plans/{plan_id}")
        if not as_json:
            v = plan.get("verification") or {}
            click.echo(f"  verification: {v.get('state', 'pending')}"
                       + (f" after {v['after_s']} s" if "after_s" in v else "")
                       + (f": {v['detail']}" if v.get("detail") else ""))
    if as_json:
        click.echo(json.dumps(plan, indent=1, sort_keys=True))
    if plan["state"] != "applied":
        sys.exit(1)


@click.command("plans")
@click.option("--limit", default=20, show_default=True)
@config_option
@run_dir_option
@json_option
def plans_cmd(limit: int, config: str | None, run_dir: str | None, as_json: bool) -> None:
    """The newest plans: id, action, subject, state, verification."""
    plans = _api(config, run_dir).call("GET", f"/plans?limit={limit}")["plans"]
    if as_json:
        click.echo(json.dumps(plans, indent=1, sort_keys=True))
        return
    for p in plans:
        v = (p.get("verification") or {}).get("state", "-")
        click.echo(f"{p['id']}  {p['time']}  {p['action']:<17} {p['subject']:<20} {p['state']:<9} {v:<15} "
                   f"{p['created_by']}")


@click.command("audit")
@click.option("--limit", default=20, show_default=True)
@config_option
@run_dir_option
@json_option
def audit_cmd(limit: int, config: str | None, run_dir: str | None, as_json: bool) -> None:
    """Who changed what, when, with what result: the control plane's audit trail."""
    records = _api(config, run_dir).call("GET", f"/audit?limit={limit}")["audit"]
    if as_json:
        click.echo(json.dumps(records, indent=1, sort_keys=True))
        return
    for r in records:
        click.echo(f"{r['time']}  {r['actor']:<24} {r['action']:<28} {r['target']:<20} {r['result']}")
