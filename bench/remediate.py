"""How fast the control plane fixes the talk's leak by itself, and how fast its kill is against a
plain sequential script doing the same.

On the shipped default cluster (moved onto a private loopback subnet, its default thresholds,
scrape intervals and the load generator `make run` starts) with `remediation.auto: [kill_clients]`,
started with `chatops up --detach --traffic` and always stopped at the end:

1. The leak: 2,000 idle connections through chat-testing's HAProxy listener for shard2. The
   control plane finds it (idle over `idle_client_after`, 60 s by default), plans and applies
   `kill_clients` as actor `auto`, and watches the finding resolve. From the API:
   `applied_s` = plan applied - finding first seen; `resolved_s` = finding resolved - applied;
   `killed` (from the plan's result) and `left` (idle connections from chat-testing on shard2
   afterwards, from CLIENT LIST). `kill_s` is how long the kill step itself took.
2. The baseline, in the same run: 2,000 more idle connections the same way (the policy is now in
   its cooldown, so it only plans), killed by a sequential redis-py script, `CLIENT LIST` then one
   `CLIENT KILL ID` per client: `baseline_kill_s`.

Targets: resolved_s <= 15, left = 0. Progress goes to stderr; the last stdout line is one JSON
object.

    python -m bench.remediate [--json] [--timeout 150] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.detect import SHARD, Cluster, open_leak, wait
from cluster import clusterfile, loopback

LEAKS = 2000
TARGET_RESOLVED_S = 15.0


def say(text: str) -> None:
    print(f"remediate: {text}", file=sys.stderr, flush=True)


def from_testing(c: Cluster, idle_over: float | None = None) -> list[int]:
    host, port = c.shard_address(SHARD)
    r = c.admin_redis(host, port, socket_timeout=10)
    try:
        testing = c.cf.address("chat-testing")
        return [int(cl["id"]) for cl in r.client_list() if cl["addr"].rsplit(":", 1)[0] == testing
                and (idle_over is None or int(cl["idle"]) > idle_over)]
    finally:
        r.close()


def baseline_kill(c: Cluster) -> tuple[float, int]:
    """The script an engineer would write: list, then kill one id at a time."""
    host, port = c.shard_address(SHARD)
    r = c.admin_redis(host, port, socket_timeout=10)
    try:
        started = time.perf_counter()
        testing = c.cf.address("chat-testing")
        ids = [cl["id"] for cl in r.client_list() if cl["addr"].rsplit(":", 1)[0] == testing]
        killed = sum(1 for cid in ids if r.client_kill_filter(_id=cid))
        return time.perf_counter() - started, killed
    finally:
        r.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print the result as one JSON line (always the last line)")
    ap.add_argument("--timeout", type=float, default=150.0, help="seconds to wait for the finding and its fix")
    ap.add_argument("--keep", action="store_true", help="leave the run directory for inspection")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-remediate-"))
    c = Cluster(work, loopback.free_prefix())
    c.doc["remediation"] = {"auto": ["kill_clients"]}
    c.cfg.write_text(yaml.safe_dump(c.doc, sort_keys=False))
    c.cf = clusterfile.load(c.cfg).spec
    idle_after = c.cf.controlplane.thresholds.idle_client_after
    socks: list[socket.socket] = []
    try:
        say(f"starting the default cluster on {c.cf.address('chat1').rsplit('.', 1)[0]}.x with "
            f"remediation.auto: [kill_clients]")
        c.up()
        time.sleep(5)
        t0 = time.time()
        socks = open_leak(c, LEAKS)
        say(f"{len(socks)} idle connections from chat-testing to {SHARD}; the finding needs them idle over "
            f"{idle_after}")

        def fixed():
            done = [p for p in c.get("/api/v1/plans?limit=50")["plans"]
                    if p["created_by"] == "auto" and p["state"] in ("applied", "failed") and p["created"] >= t0]
            return min(done, key=lambda p: p["created"]) if done else None
        plan = wait(fixed, args.timeout, "the automatic fix", every=0.5)
        finding_id = plan["finding_ids"][0]
        say(f"plan {plan['id']} {plan['state']}: {plan['result']['detail']}")

        def resolved():
            return next((f for f in c.findings() if f["id"] == finding_id and f["state"] == "resolved"), None)
        finding = wait(resolved, args.timeout, "the finding to resolve", every=0.25)
        kill = plan["result"]["steps"][0]
        left = len(from_testing(c, idle_over=2))
        applied_s = round(plan["applied_at"] - finding["first_seen"], 2)
        resolved_s = round(finding["resolved_at"] - plan["applied_at"], 2)
        say(f"found -> applied {applied_s}s, applied -> resolved {resolved_s}s, killed "
            f"{kill['changed'].get('killed')} in {kill['duration_s']}s, {left} idle left")
        for s in socks:
            s.close()

        socks = open_leak(c, LEAKS)
        baseline_s, baseline_killed = baseline_kill(c)
        say(f"baseline: sequential redis-py killed {baseline_killed} in {baseline_s:.2f}s")
        result = {
            "bench": "remediate", "leaked": LEAKS, "shard": SHARD, "idle_client_after": idle_after,
            "applied_s": applied_s, "resolved_s": resolved_s, "killed": kill["changed"].get("killed"),
            "left": left, "kill_s": kill["duration_s"], "plan_state": plan["state"],
            "baseline": "sequential redis-py: CLIENT LIST, then CLIENT KILL ID one client at a time",
            "baseline_kill_s": round(baseline_s, 3), "baseline_killed": baseline_killed,
            "kill_speedup": round(baseline_s / kill["duration_s"], 2) if kill["duration_s"] else None,
            "target_resolved_s": TARGET_RESOLVED_S,
            "met": resolved_s <= TARGET_RESOLVED_S and left == 0,
        }
    finally:
        for s in socks:
            s.close()
        c.down()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
