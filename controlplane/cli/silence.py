"""`chatops silence add|list|expire`: silences from a terminal, through the running control plane's
API (`/api/v1/silences`) as `chatops plan` does, so the audit names the caller the same way and the
dashboard shows the same list. Adding and expiring need the API token from the variable the
cluster file names (`controlplane.auth_token_env`). Matchers are checked here first
(controlplane/alerting/silences.py), so a typo fails before anything is sent.

    chatops silence add --match cluster=testing --for 2h --comment "load test"
    chatops silence list [--state active] [--json]
    chatops silence expire 3
"""

from __future__ import annotations

import json
import time
from datetime import datetime

import click

from cluster import durations
from controlplane.alerting import silences as rules
from controlplane.cli.common import config_option, fail, run_dir_option
from controlplane.cli.remediate import _api

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def _when(t: float | None) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if t else "-"


def _left(s: dict) -> str:
    if s["state"] == "expired":
        return "ended " + _when(s["ends_at"])
    span = max(0, int(s["ends_at"] - time.time()))
    h, rest = divmod(span, 3600)
    return f"{h}h{rest // 60:02d}m left" if h else f"{rest // 60}m{rest % 60:02d}s left"


def show(s: dict) -> str:
    line = f"{s['id']:>4}  {s['state']:<8} {_left(s):<24} {s['text']}"
    if s.get("comment"):
        line += f"  # {s['comment']}"
    return line + f"  (by {s['created_by']})"


@click.group("silence")
def silence() -> None:
    """Mute notifications of findings whose labels match (docs/alerting.md, Silences)."""


@silence.command("add")
@click.option("--match", "-m", "matchers", multiple=True, required=True, metavar="MATCHER",
              help="name=value, name!=value, name=~regex or name!~regex over a finding's labels "
                   "(kind, subject, severity, cluster, host, shard, service, an alert's own); repeatable, all must match.")
@click.option("--for", "duration", required=True, metavar="DURATION", help="How long: 30m, 2h, 1d (at most 365d).")
@click.option("--comment", default="", help="Why, for whoever reads the list.")
@config_option
@run_dir_option
@json_option
def add_cmd(matchers: tuple[str, ...], duration: str, comment: str, config: str | None, run_dir: str | None,
            as_json: bool) -> None:
    try:
        rules.parse(matchers)
    except rules.BadMatcher as exc:
        fail(f"--match: {exc}", 2)
    try:
        durations.parse(duration)
    except durations.DurationError:
        fail(f"--for {duration!r} is not a duration such as {durations.EXAMPLES}", 2)
    s = _api(config, run_dir).call("POST", "/silences", {"matchers": list(matchers), "for": duration,
                                                         "comment": comment})
    if as_json:
        click.echo(json.dumps(s, indent=1, sort_keys=True))
    else:
        click.echo(f"silence {s['id']} until {_when(s['ends_at'])}: {s['text']}")
        click.echo(f"expire it with: chatops silence expire {s['id']}")


@silence.command("list")
@click.option("--state", type=click.Choice(["active", "pending", "expired", "all"]), default="all",
              show_default=True)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@config_option
@run_dir_option
@json_option
def list_cmd(state: str, limit: int, config: str | None, run_dir: str | None, as_json: bool) -> None:
    found = _api(config, run_dir).call("GET", f"/silences?state={state}&limit={limit}")["silences"]
    if as_json:
        click.echo(json.dumps(found, indent=1, sort_keys=True))
        return
    if not found:
        click.echo("no silences" + ("" if state == "all" else f" {state}"))
    for s in found:
        click.echo(show(s))


@silence.command("expire")
@click.argument("silence_id", type=int)
@config_option
@run_dir_option
@json_option
def expire_cmd(silence_id: int, config: str | None, run_dir: str | None, as_json: bool) -> None:
    s = _api(config, run_dir).call("DELETE", f"/silences/{silence_id}")
    if as_json:
        click.echo(json.dumps(s, indent=1, sort_keys=True))
    else:
        click.echo(f"silence {s['id']} expired: {s['text']}")
