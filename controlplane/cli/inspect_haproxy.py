"""`chatops inspect haproxy HOST`: one chat host's HAProxy, read like its stats page."""

from __future__ import annotations

import json
import sys

import click

from collectors import haproxy
from controlplane.cli.common import config_option, fail, load, run_dir_option
from controlplane.cli.common import run_dir as run_dir_of

_COLS = ["PROXY", "SERVER", "STATUS", "SCUR", "SMAX", "SLIM", "QCUR", "QMAX", "RATE", "RATE_MAX",
         "EREQ", "ECON", "ERESP", "WRETR", "WREDIS", "WEIGHT", "CHECK"]


def _v(value) -> str:
    return "-" if value is None else str(value)


def render_table(data: haproxy.HAProxyData) -> list[str]:
    lines: list[str] = []
    rows = []
    if data.stat is not None:
        for r in data.stat.rows:
            check = r.check_status or ""
            if check and r.check_duration is not None:
                check = f"{check} {r.check_duration}ms"
            rows.append([r.proxy, r.name, _v(r.status), _v(r.scur), _v(r.smax), _v(r.slim), _v(r.qcur),
                         _v(r.qmax), _v(r.rate), _v(r.rate_max), _v(r.ereq), _v(r.econ), _v(r.eresp),
                         _v(r.wretr), _v(r.wredis), _v(r.weight), check or "-"])
    widths = [max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(_COLS)]
    lines.append("  ".join(c.ljust(w) for c, w in zip(_COLS, widths)).rstrip())
    for row in rows:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    if data.stat is not None and data.stat.unparsed:
        lines.append(f"({len(data.stat.unparsed)} unparsed stat rows)")
    if data.info:
        i = data.info
        lines.append("")
        lines.append(f"worker pid {_v(i.get('Pid'))}, version {_v(i.get('Version'))}, uptime {_v(i.get('Uptime'))}, "
                     f"conns {_v(i.get('CurrConns'))}/{_v(i.get('Maxconn'))}, idle {_v(i.get('Idle_pct'))}%")
    p = data.proc
    if p is not None:
        old = ", ".join(str(pid) for pid in p.old_workers) or "none"
        exits = ", ".join(f"{pid}:{code}" for pid, code in sorted(p.worker_exits.items()))
        lines.append(f"master pid {_v(p.master_pid)}: workers {', '.join(map(str, p.workers)) or 'none'}; "
                     f"reloads {p.reloads} (failed {p.failed_reloads}); old workers {old}"
                     + (f"; exited workers (pid:code) {exits}" if exits else ""))
    return lines


@click.command("haproxy")
@click.argument("host")
@config_option
@run_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the Observation as JSON.")
def haproxy_cmd(host: str, config: str | None, run_dir: str | None, as_json: bool) -> None:
    """HOST's HAProxy: every proxy and server with sessions, queue, rates, errors and checks."""
    from cluster.rundir import RunDirError

    run = run_dir_of(run_dir)
    cf = load(config, run).spec
    chat_hosts = [h for h, _ in cf.chat_hosts()]
    if host not in chat_hosts:
        fail(f"not a chat host: {host} (chat hosts: {', '.join(chat_hosts)})", 2)
    try:
        target = haproxy.target_for(run, host)
    except RunDirError as exc:
        fail(str(exc))
    obs = haproxy.collect(target)
    if as_json:
        click.echo(json.dumps(obs.as_dict(), indent=1, default=str))
        if not obs.up:
            sys.exit(1)
        return
    if not obs.up:
        fail(f"{host}: HAProxy unreachable: {obs.error}")
    click.echo(f"{host} ({cf.address(host)}): HAProxy scraped in {obs.duration_s * 1000:.1f} ms")
    for line in render_table(obs.data):
        click.echo(line)
    for section, err in obs.section_errors.items():
        click.echo(f"section {section} failed: {err}", err=True)


COMMANDS = [haproxy_cmd]
