"""The game day as a benchmark: the `tpp` scenario with `--fix auto` on the shipped default cluster
(moved onto a private loopback subnet, `chatops up --detach --traffic` as `make run` starts it,
with `remediation.auto: [kill_clients, set_keepalive]`), three rounds, medians.

Per round (controlplane/scenarios/runner.py): the hot room ramps in #twitchplayspokemon on the
event cluster, the testing cluster leaks into the room's shard until maxclients, the event
cluster's exchanges lose their keepalive; the control plane must find each, name each cause in an
incident, and fix the two that have a fix with its own plans. Figures, from the API and the load
generator's per-second series:

- `detect_s` per fault: fault start -> first finding that names it;
- `root_cause_s` per fault: fault start -> an incident hypothesis naming the leak's host and
  cluster, the hot shard or room, the exchange's missing keepalive;
- `fixed_s`: scenario start -> every finding of the leak and the keepalive resolved, each by a
  plan the control plane applied itself (`fixed_by_own_plans`);
- `completeness_after`: the load generator's delivery completeness over the 30 s after fixed_s;
- `false_findings`: findings opened during the run that match no injected fault;
- the baseline, as in bench.detect: a default Prometheus (15 s scrapes on a grid started with the
  run) + Alertmanager (30 s group_wait) with the same `hold`, for the same injection times.

Targets: every detect_s <= 15, root_cause_s <= 30, fixed_s <= 60, completeness_after = 1.0,
false_findings = 0. Progress on stderr; the last stdout line is one JSON object.

    python -m bench.gameday [--json] [--rounds 3] [--report FILE] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.detect import Cluster, prometheus_default_s, wait
from cluster import clusterfile, durations, loopback
from cluster.rundir import RunDir
from controlplane.scenarios import tpp
from controlplane.scenarios.api import Api
from controlplane.scenarios.base import Env
from controlplane.scenarios.runner import TARGETS, Runner, analyse

FAULTS = ("tpp-hot-room", "tpp-leak", "tpp-no-keepalive")


def say(text: str) -> None:
    print(f"gameday: {text}", file=sys.stderr, flush=True)


def _median(values):
    vals = [v for v in values if v is not None]
    if len(vals) < len(values) or not vals:
        return None
    return round(statistics.median(vals), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="(the last stdout line is always the JSON object)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--report", type=Path, help="write the last round's HTML report here")
    ap.add_argument("--keep", action="store_true", help="leave the cluster running; stop it with chatops down")
    args = ap.parse_args()
    os.environ.setdefault("CHATOPS_API_TOKEN", secrets.token_hex(16))

    work = Path(tempfile.mkdtemp(prefix="gameday-", dir="/tmp"))
    subnet = loopback.free_prefix()
    c = Cluster(work, subnet)
    c.doc["remediation"] = {"auto": ["kill_clients", "set_keepalive"], "auto_cooldown": "30s"}
    c.cfg.write_text(yaml.safe_dump(c.doc, sort_keys=False))
    c.cf = clusterfile.load(c.cfg).spec
    hold = durations.seconds(c.cf.controlplane.thresholds.hold)
    say(f"starting the default cluster on {subnet}.0/24 with traffic and remediation.auto (run dir {c.run})")
    t_grid0 = time.time()
    c.up()
    rounds, prom = [], {k: [] for k in FAULTS}
    try:
        wait(lambda: next((j for j in c.get("/api/v1/jobs")["jobs"] if j["id"] == "detect:all" and j["runs"] >= 3),
                          None), 60, "the detection job to run")
        for i in range(args.rounds):
            # Let the last round's findings (the hot room's end with its traffic) resolve first.
            wait(lambda: not [f for f in c.findings() if f["state"] == "open"], 120, "every finding to resolve",
                 every=1.0)
            cf = clusterfile.load(c.cfg).spec       # the fixes rewrite the file (keepalive: true)
            env = Env(cf=cf, config_path=c.cfg, run=RunDir(c.run), api=Api(cf), say=say)
            say(f"round {i + 1}/{args.rounds}")
            record = Runner(tpp.tpp(), env, fix="auto").execute()
            result = analyse(record)
            if record.get("error"):
                say(f"  round failed: {record['error']}")
            for f in result["faults"]:
                say(f"  {f['name']}: detect {f['detect_s']}s, root cause {f['root_cause_s']}s, fixed {f['fixed_s']}s"
                    f"{' (by its own plans)' if f['fixed_by_own_plans'] else ''}")
                if f["began"]:
                    prom[f["name"]].append(prometheus_default_s(f["began"], t_grid0, hold))
            say(f"  fixed_s {result['fixed_s']}, completeness_after {result['completeness_after']}, "
                f"false findings {result['false_findings']} {result['false_finding_titles']}")
            rounds.append(result)
            if args.report:
                from controlplane.scenarios.report import render
                args.report.write_text(render(record))
                args.report.with_name(args.report.name + ".json").write_text(json.dumps(record, default=str))
    finally:
        if args.keep:
            say(f"cluster left running: chatops down --run-dir {c.run}")
        else:
            c.down()
            shutil.rmtree(work, ignore_errors=True)

    def per_fault(key):
        return {name: _median([next((f[key] for f in r["faults"] if f["name"] == name), None) for r in rounds])
                for name in FAULTS}
    detect, root = per_fault("detect_s"), per_fault("root_cause_s")
    fixed = _median([r["fixed_s"] for r in rounds])
    after = _median([r["completeness_after"] for r in rounds])
    false = _median([r["false_findings"] for r in rounds])
    own = all(f["fixed_by_own_plans"] for r in rounds for f in r["faults"] if f["fixable"])
    prom_med = {k: _median(v) if v else None for k, v in prom.items()}
    result = {
        "bench": "gameday", "scenario": "tpp", "fix": "auto", "rounds": len(rounds),
        "detect_s": detect, "root_cause_s": root, "fixed_s": fixed, "fixed_by_own_plans": own,
        "completeness_after": after, "false_findings": false,
        "false_finding_titles": sorted({t for r in rounds for t in r["false_finding_titles"]}),
        "baseline": "default Prometheus (15 s scrape) + Alertmanager (30 s group_wait), same hold, as bench.detect",
        "prometheus_default_s": prom_med,
        "speedup_vs_prometheus": {k: round(prom_med[k] / detect[k], 1) if prom_med.get(k) and detect.get(k) else None
                                  for k in FAULTS},
        "per_round": [{"detect_s": {f["name"]: f["detect_s"] for f in r["faults"]},
                       "root_cause_s": {f["name"]: f["root_cause_s"] for f in r["faults"]},
                       "fixed_s": r["fixed_s"], "completeness_after": r["completeness_after"],
                       "false_findings": r["false_findings"]} for r in rounds],
        "targets": TARGETS,
    }
    result["met"] = (all(v is not None and v <= TARGETS["detect_s"] for v in detect.values())
                     and all(v is not None and v <= TARGETS["root_cause_s"] for v in root.values())
                     and fixed is not None and fixed <= TARGETS["fixed_s"] and own
                     and after is not None and after >= TARGETS["completeness_after"]
                     and false == TARGETS["false_findings"])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
