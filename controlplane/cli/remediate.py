"""`chatops plan`, `fix`, `apply`, `plans` and `audit`: remediation from a terminal.

They talk to the running control plane's API rather than acting themselves: the control plane
holds the admin connections (the only way into a shard at maxclients), the subject locks and the
audit, so a plan made here can be reviewed on the dashboard and applied from either, and every
way in runs the same code. The token comes from the variable the cluster file names
(`controlplane.auth_token_env`), as for any API client.

An apply blocks until it is done. For a plan that moves slots (reshard, add_shard, remove_shard:
its JSON has `progress`), `chatops apply` polls `GET /api/v1/slots/progress`
meanwhile and shows the migration on stderr: one redrawn bar on a terminal, else a line at most
every 2 s and at each phase change.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import click

from controlplane.cli.common import config_option, fail, load, run_dir_option
from controlplane.cli.common import run_dir as _run_dir

VERIFY_WAIT_S = 90.0
CALL_TIMEOUT_S = 120.0
APPLY_TIMEOUT_S = 600.0          # the apply answers when it is done: moving slots takes a while


class Api:
    def __init__(self, cf):
        listen = cf.controlplane.listen
        self.base = f"http://{listen.address}:{listen.port}/api/v1"
        self.token_env = cf.controlplane.auth_token_env
        self.token = os.environ.get(self.token_env)

    def call(self, method: str, path: str, body: Any = None, timeout: float = CALL_TIMEOUT_S) -> Any:
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
            with urllib.request.urlopen(req, timeout=timeout) as resp:
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

    def peek(self, path: str, timeout: float = 2.0) -> Any:
        """A GET that never fails the command: None when there is no good answer (for a display)."""
        req = urllib.request.Request(self.base + path, headers={"Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.load(resp)
        except (OSError, ValueError):          # URLError and HTTPError are OSErrors
            return None


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


def _short(params: dict, limit: int = 80) -> dict:
    """Parameters as a person reads them: a slot list chosen by the planner can run to thousands
    of characters, and the diff below already shows it as ranges (--json has it whole)."""
    return {k: (f"{v[:limit - 20]}... ({len(v):,} characters)" if isinstance(v, str) and len(v) > limit else v)
            for k, v in params.items()}


def print_plan(plan: dict) -> None:
    click.echo(f"plan {plan['id']}  {plan['action']} on {plan['subject']}  [{plan['state']}]"
               + (f"  incident {plan['incident_id']}" if plan.get("incident_id") else ""))
    for step in plan["steps"]:
        click.echo(f"\n  {step['action']} {json.dumps(_short(step['params']), sort_keys=True)}")
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
    """Plan ACTION (kill_clients, set_redis_config, set_keepalive, server_state, restart_service,
    proxy_reload, reshard, add_shard, remove_shard, relocate_shard): show what would change."""
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
    watch = MigrationProgress(api) if "progress" in plan and not as_json else None
    if watch:
        watch.start()
    try:
        plan = api.call("POST", f"/plans/{plan_id}/apply", timeout=APPLY_TIMEOUT_S)
    except KeyboardInterrupt:
        plan = None
    finally:
        if watch:
            watch.stop()                 # ends the bar's line before anything else is printed
    if plan is None:
        fail(f"interrupted: the control plane finishes the apply all the same; `chatops plans` shows how "
             f"plan {plan_id} ends", 130)
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


# -- a migration's progress, while the apply moving it runs ---------------------------------------

POLL_S = 0.5
LINE_EVERY_S = 2.0               # stderr not a terminal: a line at most every 2 s, and at each phase change
BAR = 20


def _eta(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min"


def progress_line(p: dict) -> str:
    """`moving  12/64 slots  183,204/500,000 keys  61,402 keys/s  ETA 5 s  shard0 -> shard1`."""
    parts = [str(p.get("phase", "?"))]
    if p.get("slots_total"):
        parts.append(f"{p.get('slots_done', 0)}/{p['slots_total']} slots")
    if p.get("keys_total") or p.get("keys_moved"):
        parts.append(f"{p.get('keys_moved', 0):,}/{p.get('keys_total', 0):,} keys")
    if p.get("keys_per_s"):
        parts.append(f"{p['keys_per_s']:,.0f} keys/s")
    if p.get("phase") == "moving" and isinstance(p.get("eta_s"), (int, float)):
        parts.append(f"ETA {_eta(p['eta_s'])}")
    if p.get("from") and p.get("to"):
        parts.append(f"{p['from']} -> {p['to']}")
    if p.get("detail"):
        parts.append(str(p["detail"]))
    return "  ".join(parts)


def progress_fraction(p: dict) -> float:
    if p.get("phase") == "done":
        return 1.0
    if p.get("keys_total"):
        return min(1.0, p.get("keys_moved", 0) / p["keys_total"])
    if p.get("slots_total"):
        return min(1.0, p.get("slots_done", 0) / p["slots_total"])
    return 0.0


class MigrationProgress:
    """Polls the migration's progress in a thread while the apply call blocks, and draws it on
    stderr. Only progress written after it started is shown: the file keeps the last migration's."""

    def __init__(self, api: Api, stream=None):
        self.api = api
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="migration-progress", daemon=True)
        self._since: float | None = None
        self._drawn = False
        self._last_phase: str | None = None
        self._last_line_at = 0.0
        self._last_line = ""

    def start(self) -> None:
        before = self.api.peek("/slots/progress") or {}
        self._since = before.get("written_at") if isinstance(before.get("written_at"), (int, float)) else None
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._poll()                     # the last state: done, or where it failed
        if self._drawn and self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            self._poll()

    def _poll(self) -> None:
        p = self.api.peek("/slots/progress")
        if not isinstance(p, dict) or p.get("phase") in (None, "idle"):
            return
        at = p.get("written_at")
        if self._since is not None and (not isinstance(at, (int, float)) or at <= self._since):
            return
        self.show(p)

    def _width(self) -> int:
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns     # stderr's: stdout may be a file
        except (OSError, ValueError, AttributeError):
            columns = 0
        return columns if columns > 0 else shutil.get_terminal_size((100, 20)).columns   # 0: size unknown

    def show(self, p: dict) -> None:
        line = progress_line(p)
        if self.tty:
            done = round(progress_fraction(p) * BAR)
            line = f"[{'#' * done}{'.' * (BAR - done)}] {progress_fraction(p) * 100:3.0f}%  {line}"
            self.stream.write("\r" + line[:self._width() - 1] + "\x1b[K")
        else:
            now = time.monotonic()
            recent = now - self._last_line_at < LINE_EVERY_S
            if line == self._last_line or (p.get("phase") == self._last_phase and recent):
                return
            self._last_line_at, self._last_line = now, line
            self.stream.write(line + "\n")
        self._last_phase = p.get("phase")
        self._drawn = True
        self.stream.flush()


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
