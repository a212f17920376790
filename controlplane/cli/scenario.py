"""`chatops scenario list | run NAME`: game days on the running cluster (docs/gameday.md).

`run` injects the scenario's faults on its timeline, shows a live timeline of what the control
plane found, named and fixed, undoes everything at the end (Ctrl-C included, and says what it
undid), and with --report writes the self-contained HTML report. Exit status: 0 when every
target was met, 1 when one was missed or the run failed, 2 for a usage error."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from controlplane.cli.common import config_option, fail, load, run_dir_option
from controlplane.cli.common import run_dir as _run_dir


@click.group()
def scenario() -> None:
    """Game days: replay the 2014 incident (or one of its faults) on the running cluster."""


@scenario.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def list_cmd(as_json: bool) -> None:
    """Every scenario, its faults and what the control plane should find."""
    from controlplane import scenarios
    rows = []
    for name, make in scenarios.SCENARIOS.items():
        sc = make()
        rows.append({"name": name, "summary": sc.summary,
                     "faults": [{"name": f.name, "at_s": at, "talk": f.talk, "fixes": list(f.fixes)}
                                for at, f in sc.steps]})
    if as_json:
        click.echo(json.dumps({"scenarios": rows}))
        return
    for r in rows:
        click.echo(f"{r['name']:<18} {r['summary']}")
        for f in r["faults"]:
            fixes = ", ".join(f["fixes"]) or "no fix: load, not a bug"
            click.echo(f"{'':<18}   +{f['at_s']:>4.0f}s {f['name']:<17} {f['talk']}  [fix: {fixes}]")


def _live_table(record: dict):
    from rich.table import Table

    from controlplane.scenarios.runner import analyse
    r = analyse(record, now=time.time())
    t = Table(title=f"game day {record['scenario']} (--fix {record['fix']})", expand=True)
    t.add_column("t", justify="right", width=8)
    t.add_column("event")
    style = {"fault": "yellow", "finding": "red", "resolved": "green", "applied": "green", "named": "cyan",
             "root_cause": "cyan", "undo": "dim", "plan": "magenta"}
    for e in r["events"][-25:]:
        t.add_row(f"+{e['t']:.1f}s", e["text"], style=style.get(e["what"]))
    series = (record.get("loadgen") or {}).get("series") or []
    return t if not series else t


@scenario.command("run")
@click.argument("name")
@click.option("--fix", "fix", type=click.Choice(["auto", "manual", "none"]), default="none", show_default=True,
              help="auto: the control plane applies its own plans (remediation.auto, on for the run); manual: "
                   "wait for an on-call apply (dashboard or `chatops apply`); none: observe only.")
@click.option("--report", "report", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the HTML report here (and the run's record beside it, FILE.json).")
@click.option("--timeout", type=float, help="Give up after this many seconds (default 240; 900 with --fix manual).")
@click.option("--room", default="twitchplayspokemon", show_default=True, help="The hot room.")
@click.option("--set", "pairs", multiple=True, metavar="KEY=VALUE",
              help="A knob: rate, ramp, clients, senders (the hot room), leak (connections). Repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON line, last on stdout.")
@config_option
@run_dir_option
def run_cmd(name: str, fix: str, report: Path | None, timeout: float | None, room: str, pairs: tuple[str, ...],
            as_json: bool, config: str | None, run_dir: str | None) -> None:
    """Run scenario NAME against the running cluster, then undo everything it injected."""
    from controlplane import scenarios
    from controlplane.scenarios.api import Api
    from controlplane.scenarios.base import Env, ScenarioError
    from controlplane.scenarios.runner import Runner, analyse

    run = _run_dir(run_dir)
    loaded = load(config, run)
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in ("rate", "ramp", "clients", "senders", "leak"):
            fail(f"--set {pair!r}: expected KEY=VALUE with KEY one of rate, ramp, clients, senders, leak", 2)
        try:
            options[key] = float(value) if key in ("rate", "ramp") else int(value)
        except ValueError:
            fail(f"--set {pair!r}: {value!r} is not a number", 2)
    try:
        sc = scenarios.get(name)
    except ScenarioError as exc:
        fail(str(exc), 2)
    err = click.get_text_stream("stderr")
    env = Env(cf=loaded.spec, config_path=Path(loaded.path), run=run, api=Api(loaded.spec),
              say=lambda text: click.echo(f"gameday: {text}", err=True), room=room, options=options)
    if fix == "manual":
        env.say("waiting for an on-call fix: apply the plans on the dashboard's incident page or with "
                "`chatops fix INCIDENT` then `chatops apply PLAN_ID`")
    live = None
    if err.isatty():
        from rich.console import Console
        from rich.live import Live
        live = Live(console=Console(file=sys.stderr), refresh_per_second=2, transient=False)
        live.start()
        runner = Runner(sc, env, fix=fix, timeout=timeout, on_update=lambda rec: live.update(_live_table(rec)))
    else:
        last = [0]

        def plain(rec: dict) -> None:
            evs = analyse(rec, now=time.time())["events"]
            for e in evs[last[0]:]:
                click.echo(f"  +{e['t']:6.1f}s  {e['text']}", err=True)
            last[0] = len(evs)
        runner = Runner(sc, env, fix=fix, timeout=timeout, on_update=plain)
    try:
        record = runner.execute()
    finally:
        if live is not None:
            live.stop()
    result = analyse(record)
    if report is not None:
        from controlplane.scenarios.report import render
        report.write_text(render(record))
        report.with_name(report.name + ".json").write_text(json.dumps(record, default=str))
        env.say(f"report: {report} (record: {report.name}.json)")
    _summary(result, err)
    if record.get("error"):
        env.say(f"the run failed: {record['error']}")
    if as_json:
        click.echo(json.dumps({k: v for k, v in result.items() if k != "events"}, default=str))
    sys.exit(0 if result["verdict"]["met"] and not record.get("error") else 1)


def _summary(result: dict, err) -> None:
    for f in result["faults"]:
        fixed = f"fixed {f['fixed_s']}s" if f["fixable"] else "no fix exists"
        click.echo(f"  {f['name']:<17} detect {f['detect_s']}s  root cause {f['root_cause_s']}s  {fixed}", err=True)
    for key, row in result["verdict"].items():
        if isinstance(row, dict):
            mark = "not judged" if row["met"] is None else "met" if row["met"] else "MISSED"
            click.echo(f"  {key:<20} {row['value']!s:<10} target {row['op']} {row['target']}: {mark}", err=True)
