"""What the per-host HAProxy listener costs in front of a Redis shard, and what a reload costs.

Starts a one-shard cluster on a private loopback subnet with `chatops up --detach`, then in the
same run, alternating to spread the machine's noise evenly:
  - redis-benchmark straight at the shard (the baseline) and through the chat host's listener;
  - `proxy reload` of the chat host, timed from the command to a new worker answering.
The last line printed is one JSON object with medians and the listener/direct ratio.

    .venv/bin/python bench/shard_listener.py [--rounds 5] [--requests 50000] [--clients 50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.redis_benchmark import argv as redis_benchmark_argv  # noqa: E402
from cluster import clusterfile, loopback  # noqa: E402
from cluster.rundir import RunDir  # noqa: E402
from controlplane.remediation import proxy_reload  # noqa: E402


def chatops(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "controlplane.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def redis_benchmark(cf, run: RunDir, host: str, port: int, requests: int, clients: int) -> dict[str, float]:
    """{"SET": ops/s, "GET": ops/s}: one redis-benchmark run per command (custom commands run alone)."""
    rates = {}
    for op in ("SET", "GET"):
        out = subprocess.run(
            redis_benchmark_argv(cf, run, host, port, op, "-n", str(requests), "-c", str(clients),
                                 "-r", "100000", "--csv"),
            capture_output=True, text=True, timeout=300, check=True).stdout
        # The header line, then one row: "<the command>","<requests per second>",...
        cells = [c.strip('"') for c in out.splitlines()[1].split(",")]
        rates[op] = float(cells[1])
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=50_000)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--reloads", type=int, default=10)
    args = ap.parse_args()

    subnet = loopback.free_prefix()
    work = Path(tempfile.mkdtemp(prefix="bench-", dir="/tmp"))
    run = work / "run"
    doc = {
        "hosts": {"chat1": {"address": f"{subnet}.1"}, "redis1": {"address": f"{subnet}.21"}},
        "clusters": {"main": {"hosts": ["chat1"]}},
        "redis": {"shards": [{"name": "shard0", "host": "redis1", "port": 6379}]},
        "haproxy": {"check_interval": "500ms"},
        "controlplane": {"listen": {"address": f"{subnet}.100"}},
    }
    cfg = work / "cluster.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    up = chatops("up", "--detach", "--config", str(cfg), "--run-dir", str(run))
    if up.returncode != 0:
        sys.exit(f"chatops up failed:\n{up.stdout}{up.stderr}")
    try:
        time.sleep(1.5)  # let the listener's health check pass
        rd = RunDir(run)
        cf = clusterfile.load(cfg).spec
        direct: dict[str, list[float]] = {"SET": [], "GET": []}
        listener: dict[str, list[float]] = {"SET": [], "GET": []}
        for r in range(args.rounds):
            for name, target, port in (("direct", f"{subnet}.21", 6379), ("listener", f"{subnet}.1", 2000)):
                rates = redis_benchmark(cf, rd, target, port, args.requests, args.clients)
                bucket = direct if name == "direct" else listener
                for op in bucket:
                    bucket[op].append(rates[op])
                print(f"round {r + 1}/{args.rounds} {name}: SET {rates['SET']:.0f}/s GET {rates['GET']:.0f}/s",
                      file=sys.stderr)

        reload_ms = []
        for i in range(args.reloads):
            plan = proxy_reload.plan_reload(cf, rd, ["chat1"])
            t0 = time.perf_counter()
            [res] = proxy_reload.apply_reload(plan, rd, "bench")
            reload_ms.append((time.perf_counter() - t0) * 1000)
            if not res.ok:
                sys.exit(f"reload {i} failed: {res.detail}")
        print(f"reloads: {', '.join(f'{m:.0f}' for m in reload_ms)} ms", file=sys.stderr)
    finally:
        chatops("down", "--run-dir", str(run))

    med = {k: {op: statistics.median(v[op]) for op in v} for k, v in (("direct", direct), ("listener", listener))}
    print(json.dumps({
        "bench": "shard_listener",
        "rounds": args.rounds, "requests": args.requests, "clients": args.clients,
        "baseline_direct_ops_per_s": {op: round(v) for op, v in med["direct"].items()},
        "listener_ops_per_s": {op: round(v) for op, v in med["listener"].items()},
        "ratio_listener_to_direct": {op: round(med["listener"][op] / med["direct"][op], 3) for op in ("SET", "GET")},
        "reload_ms_median": round(statistics.median(reload_ms), 1),
        "reload_ms_max": round(max(reload_ms), 1),
        "reloads": len(reload_ms),
    }))


if __name__ == "__main__":
    main()
