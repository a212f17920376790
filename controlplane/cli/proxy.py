"""`chatops proxy`: render, check and reload every chat host's HAProxy config."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from cluster import binaries
from cluster.rundir import RunDirError
from controlplane import audit
from controlplane.cli.common import config_option, fail, load, run_dir_option
from controlplane.cli.common import run_dir as _run_dir
from controlplane.haproxy import config as haproxy_config
from controlplane.remediation import proxy_reload


@click.group()
def proxy() -> None:
    """HAProxy configs: render, check, reload."""


@proxy.command("render")
@config_option
@run_dir_option
@click.option("--host", "hosts", multiple=True, help="Only this chat host (repeatable).")
@click.option("--check", is_flag=True, help="Run `haproxy -c` on every rendered config.")
@click.option("--output", type=click.Path(file_okay=False), help="Write <host>.cfg files here instead of printing.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object, host -> config text exactly as `chatops up` writes it (for Ansible).")
def proxy_render(config: str | None, run_dir: str | None, hosts: tuple[str, ...], check: bool,
                 output: str | None, as_json: bool) -> None:
    """Render each chat host's HAProxy config from the cluster file."""
    run = _run_dir(run_dir)
    cf = load(config, run).spec
    chat_hosts = [h for h, _ in cf.chat_hosts()]
    for h in hosts:
        if h not in chat_hosts:
            fail(f"not a chat host: {h} (chat hosts: {', '.join(chat_hosts)})", 2)
    if as_json:
        try:
            click.echo(json.dumps({h: haproxy_config.render(cf, h, run) for h in hosts or chat_hosts}))
        except (RunDirError, haproxy_config.RenderError) as exc:
            fail(str(exc))
        return
    failed = []
    try:
        for host in hosts or chat_hosts:
            text = haproxy_config.render(cf, host, run)
            if output:
                haproxy_config.write_atomic(Path(output) / f"{host}.cfg", text)
            elif not check:
                click.echo(text)
            if check:
                result = haproxy_config.check(text)
                click.echo(f"{host}: haproxy -c {'OK' if result.ok else 'FAILED'}")
                for line in result.output.splitlines():
                    click.echo(f"    {line}")
                if not result.ok:
                    failed.append(host)
    except (RunDirError, binaries.MissingBinary, haproxy_config.RenderError) as exc:
        fail(str(exc))
    if failed:
        fail(f"invalid config for: {', '.join(failed)}")


@proxy.command("reload")
@config_option
@run_dir_option
@click.option("--host", "hosts", multiple=True, help="Only this chat host (repeatable; default: all).")
@click.option("--yes", "-y", is_flag=True, help="Apply without asking.")
@click.option("--dry-run", is_flag=True, help="Show the plan and stop.")
def proxy_reload_cmd(config: str | None, run_dir: str | None, hosts: tuple[str, ...], yes: bool,
                     dry_run: bool) -> None:
    """Render, validate and diff the configs, then reload through the master socket."""
    run = _run_dir(run_dir)
    cf = load(config, run).spec
    try:
        p = proxy_reload.plan_reload(cf, run, list(hosts) or None)
    except (proxy_reload.PlanError, RunDirError, binaries.MissingBinary, haproxy_config.RenderError) as exc:
        fail(str(exc), 2)
    click.echo(p.describe())
    if not p.ok:
        fail("not reloading: a rendered config is invalid")
    if dry_run:
        return
    if not yes:
        if not sys.stdin.isatty():
            fail("refusing to reload without confirmation; pass --yes", 2)
        click.confirm(f"Reload HAProxy on {', '.join(h.host for h in p.hosts)}?", abort=True)
    results = proxy_reload.apply_reload(p, run, audit.actor())
    for r in results:
        click.echo(f"{r.host}: {'OK' if r.ok else 'FAILED'}: {r.detail}")
    if not all(r.ok for r in results) or len(results) < len(p.hosts):
        fail("reload failed; see above (the audit log has the record)")
