"""`chatops inspect logs`: the talk's log greps, done properly -- counts per service, remote service
and kind over the run dir's logs, one example line each, and how many lines did not parse."""

from __future__ import annotations

import json
import sys

import click

from controlplane.cli.common import run_dir as run_dir_of
from controlplane.cli.common import run_dir_option


@click.command("logs")
@click.option("--service", "services", multiple=True, metavar="S",
              help="Only these logs: edge, clue, exchange, haproxy, redis, supervisor, loadgen, "
                   "or a file stem like edge-chat1 (repeatable).")
@click.option("--since", metavar="DURATION",
              help="Only lines newer than this: 30s, 5m, 2h, 1d, or a whole number of seconds.")
@run_dir_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of a table.")
def logs_cmd(services: tuple[str, ...], since: str | None, run_dir: str | None, as_json: bool) -> None:
    """Counts per service/remote/kind in the run dir's logs, with one example line each."""
    from cluster.durations import DurationError, parse
    from collectors import fastlog, logs

    try:
        since_s = None if since is None else parse(since, bare_seconds=True)
    except DurationError as exc:
        click.echo(f"chatops: --since: {exc}", err=True)
        sys.exit(2)
    run = run_dir_of(run_dir)
    obs = logs.collect(logs.target_for(run, services=services or None, since_s=since_s))
    if not obs.up:
        click.echo(f"chatops: logs: {obs.error}", err=True)
        sys.exit(1)
    s = obs.data
    totals = s.totals()
    if not fastlog.AVAILABLE:
        click.echo(f"chatops: logs: parsing in Python only, about 4x slower: {fastlog.LOAD_ERROR}", err=True)
    if as_json:
        click.echo(json.dumps({"run_dir": obs.target, "lines": s.lines, "parsed": s.parsed,
                               "unparsed": s.unparsed, "empty": s.empty, "cut": s.cut,
                               "skipped_before_since": s.skipped_before_since,
                               "unparsed_samples": s.unparsed_samples, "files": s.files,
                               "groups": totals,
                               "scanner": "compiled" if fastlog.AVAILABLE else "python"}, indent=2))
        return
    if not totals:
        click.echo("no log lines" + (f" newer than {since}" if since else ""))
    else:
        w_svc = max(len("SERVICE"), *(len(r["service"]) for r in totals))
        w_rem = max(len("REMOTE"), *(len(r["remote"] or "-") for r in totals))
        click.echo(f"{'SERVICE':<{w_svc}}  {'REMOTE':<{w_rem}}  {'KIND':<18}  {'COUNT':>8}  EXAMPLE")
        for r in totals:
            example = (r["example"] or "")[:160]
            click.echo(f"{r['service']:<{w_svc}}  {r['remote'] or '-':<{w_rem}}  {r['kind']:<18}  "
                       f"{r['count']:>8}  {example}")
    click.echo(f"\n{s.lines} lines, {s.parsed} parsed, {s.unparsed} unparsed, {s.empty} empty"
               + (f", {s.skipped_before_since} older than {since}" if since else ""))
    for sample in s.unparsed_samples:
        click.echo(f"  unparsed: {sample[:160]!r}")


COMMANDS = [logs_cmd]
