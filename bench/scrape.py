"""What the control plane costs, and how long one of its scrape cycles takes, against a naive script.

Starts the shipped default cluster (`chatops up --detach --traffic` on a private loopback subnet,
with the control plane at the file's default intervals: scrape 2 s, CLIENT LIST 5 s, canary 1 s,
every source and the detection engine) and always stops it at the end. Then, in the same run:

1. Control plane, `--seconds` (60): the control plane process's CPU (psutil user+system delta
   over the window / wall, percent of one core) and its RSS at the end. Cycles come from the
   product's own job health (`GET /api/v1/jobs`, polled every second: each job's `last_run`
   start and `last_duration_s`). The jobs on the 2 s tick are every source but CLIENT LIST and
   the canary (their own intervals), plus `detect:all`, the detection engine. The scheduler
   deliberately staggers their starts over min(1 s, interval) so they do not all hit the
   cluster at once, so first start to last end is ~1 s by design and says nothing about cost:
   it is reported as `cycle_span_ms_p50`. `cycle_ms` is the sum of the durations of one tick's
   runs, counted only for ticks where every one of those jobs was seen: the wall time one
   interval's work takes done back to back, comparable to the baseline's sequential pass
   (runs overlap little: each takes a few ms and starts ~40 ms after the previous one).
   `job_ms_p50`/`job_ms_p99` give each job kind's run time. The polling itself is one small
   HTTP request a second, counted in the control plane's CPU.
2. Baseline, `--seconds` more, the control plane stopped (SIGSTOP, so it neither scrapes nor
   counts; SIGCONT after): one plain sequential script doing the same reads every 2 s: redis-py
   `info()` on each shard (plus `client_list()` every 5 s, like the default), `show stat` (the
   CSV stats) on each chat host's HAProxy admin socket, `/metrics` of every chat service and
   clue's `/v1/stats/keys` with the internal token. No parsing beyond what redis-py does, no
   store, no detection, no logs, no canary: the floor of reading the same figures. Its cycle is
   one pass; its CPU is this process's own over the window.

Progress goes to stderr; the last stdout line is one JSON object. Ratios are control plane over
baseline (lower is better). Run it alone: the other processes on the machine add noise to the
wall-clock figures (the CPU figures are per process, so much less so).

    python -m bench.scrape [--json] [--seconds 60] [--keep]
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import redis as redis_py
import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cluster import clusterfile, loopback, redis_acl  # noqa: E402
from cluster.rundir import RunDir  # noqa: E402
from cluster.state import read_state  # noqa: E402
from collectors import services  # noqa: E402
from controlplane.cli.common import use_local_secrets  # noqa: E402

TARGET_CYCLE_P99_MS = 100
TARGET_CPU_PCT = 5.0
OWN_INTERVAL = ("clients", "canary")     # job kinds not on the 2 s tick


def say(text: str) -> None:
    print(f"scrape: {text}", file=sys.stderr, flush=True)


def chatops(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "controlplane.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, math.ceil(q * len(s)) - 1)], 1)


def cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def get_json(address: str, port: int, path: str) -> dict:
    conn = http.client.HTTPConnection(address, port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return json.loads(resp.read())
    finally:
        conn.close()


def cycles(runs: dict[tuple[str, float], tuple[float, str]],
           interval: float) -> tuple[list[float], list[float]]:
    """Per tick of the 2 s jobs, seen whole: (ms of work: the sum of its runs' durations, ms of span:
    its last run's end - its first run's start). (job id, start) -> (duration, kind)."""
    tick_runs = [(start, dur, jid) for (jid, start), (dur, kind) in runs.items() if kind not in OWN_INTERVAL]
    if not tick_runs:
        return [], []
    jobs = {jid for _, _, jid in tick_runs}
    # The scheduler staggers the starts over <= 1 s of each interval: a tick begins after the
    # widest gap in the starts' phases on the interval's circle.
    phases = sorted(start % interval for start, _, _ in tick_runs)
    gaps = [((phases[(i + 1) % len(phases)] - p) % interval, phases[(i + 1) % len(phases)])
            for i, p in enumerate(phases)]
    t_ref = max(gaps)[1] - min(0.05, max(gaps)[0] / 2)
    ticks: dict[int, list[tuple[float, float, str]]] = {}
    for start, dur, jid in tick_runs:
        ticks.setdefault(int((start - t_ref) // interval), []).append((start, dur, jid))
    work, span = [], []
    for rs in ticks.values():
        if {jid for _, _, jid in rs} != jobs:        # a tick cut by the window's edges or a missed poll
            continue
        work.append(1000 * sum(dur for _, dur, _ in rs))
        span.append(1000 * (max(start + dur for start, dur, _ in rs) - min(start for start, _, _ in rs)))
    return work, span


def controlplane_window(cf, proc: psutil.Process, seconds: float) -> dict:
    listen, interval = cf.controlplane.listen, 2.0
    runs: dict[tuple[str, float], tuple[float, str]] = {}
    wall0, cpu0 = time.monotonic(), cpu_s(proc)
    t_end = wall0 + seconds
    while time.monotonic() < t_end:
        try:
            for j in get_json(listen.address, listen.port, "/api/v1/jobs")["jobs"]:
                interval = j["interval_s"] if j["kind"] == "service" else interval
                if not j["running"] and j["last_run"] and j["last_duration_s"] is not None:
                    runs[(j["id"], j["last_run"])] = (j["last_duration_s"], j["kind"])
        except (OSError, ValueError, KeyError) as exc:
            say(f"jobs poll failed: {type(exc).__name__}: {exc}")
        time.sleep(max(0.0, min(1.0, t_end - time.monotonic())))
    wall, cpu = time.monotonic() - wall0, cpu_s(proc) - cpu0
    ms, span = cycles(runs, interval)
    by_kind: dict[str, list[float]] = {}
    for (_, _), (dur, kind) in runs.items():
        by_kind.setdefault(kind, []).append(1000 * dur)
    return {"cycle_ms_p50": pct(ms, 0.5), "cycle_ms_p99": pct(ms, 0.99), "cycles": len(ms),
            "cycle_span_ms_p50": pct(span, 0.5),
            "job_ms_p50": {k: pct(v, 0.5) for k, v in sorted(by_kind.items())},
            "job_ms_p99": {k: pct(v, 0.99) for k, v in sorted(by_kind.items())},
            "controlplane_cpu_pct": round(100 * cpu / wall, 2),
            "rss_mb": round(proc.memory_info().rss / 2**20, 1),
            "job_runs": len(runs), "seconds": round(wall, 1)}


def show_stat(path: Path) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(path))
        s.sendall(b"show stat\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def baseline_window(cf, run: RunDir, seconds: float) -> dict:
    password = redis_acl.password(cf, redis_acl.CHATOPS, run)
    shards = [redis_py.Redis(cf.address(s.host), s.port, username=redis_acl.CHATOPS, password=password,
                             socket_timeout=5) for s in cf.redis.shards]
    stat_socks = [run.haproxy_socket(h) for h, _ in cf.chat_hosts()]
    token, _ = services.internal_token(cf, run)
    svc = [(cf.address(h), services.service_port(cf, h, s), s)
           for h, _ in cf.chat_hosts() for s in services.SERVICES]
    ms, errors, n = [], 0, 0
    wall0, cpu0 = time.monotonic(), time.process_time()
    t_end, next_clients = wall0 + seconds, wall0
    while time.monotonic() < t_end:
        tick = time.monotonic()
        try:
            for r in shards:
                r.info()
            if tick >= next_clients:
                next_clients += 5.0
                for r in shards:
                    r.client_list()
            for path in stat_socks:
                show_stat(path)
            for address, port, service in svc:
                services.fetch(address, port, "/metrics", 5)
                if service == "clue":
                    services.fetch(address, port, "/v1/stats/keys", 5, token=token)
        except (OSError, redis_py.RedisError) as exc:
            errors += 1
            say(f"baseline read failed: {type(exc).__name__}: {exc}")
        ms.append((time.monotonic() - tick) * 1000)
        n += 1
        time.sleep(max(0.0, tick + 2.0 - time.monotonic()))
    wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
    for r in shards:
        r.close()
    return {"baseline_cycle_ms_p50": pct(ms, 0.5), "baseline_cycle_ms_p99": pct(ms, 0.99),
            "baseline_cpu_pct": round(100 * cpu / wall, 2), "baseline_cycles": n, "baseline_errors": errors}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="(the last stdout line is always the JSON object)")
    ap.add_argument("--seconds", type=float, default=60.0, help="each window: control plane, then baseline")
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds of scraping before measuring")
    ap.add_argument("--keep", action="store_true",
                    help="leave the cluster (and its logs) running; stop it with chatops down")
    args = ap.parse_args()

    subnet = loopback.free_prefix()
    work = Path(tempfile.mkdtemp(prefix="scrape-", dir="/tmp"))
    run_path, cfg = work / "run", work / "cluster.yaml"
    cfg.write_text(yaml.safe_dump(clusterfile.default_on_subnet(subnet), sort_keys=False))
    cf = clusterfile.load(cfg).spec
    say(f"starting the default cluster with --traffic on {subnet}.0/24 (run dir {run_path})")
    up = chatops("up", "--detach", "--traffic", "--config", str(cfg), "--run-dir", str(run_path))
    if up.returncode != 0:
        chatops("down", "--run-dir", str(run_path))
        sys.exit(f"scrape: chatops up failed:\n{up.stdout}{up.stderr}")
    run = RunDir(run_path)
    use_local_secrets(cf, run)
    result: dict = {"bench": "scrape"}
    cp = None
    try:
        state = read_state(run) or {}
        pid = next(p["pid"] for p in state.get("processes", []) if p.get("name") == "controlplane")
        cp = psutil.Process(pid)
        say(f"warming up {args.warmup:g}s, then {args.seconds:g}s of the control plane (pid {pid})")
        time.sleep(args.warmup)
        result.update(controlplane_window(cf, cp, args.seconds))
        say(f"control plane: {json.dumps(result)}")
        say(f"baseline: the control plane stopped, one sequential script for {args.seconds:g}s")
        os.kill(pid, signal.SIGSTOP)
        try:
            base = baseline_window(cf, run, args.seconds)
        finally:
            os.kill(pid, signal.SIGCONT)
        result.update(base)

        def ratio(a, b):
            return round(a / b, 2) if a is not None and b else None
        result.update({
            "ratio_cycle_p50": ratio(result["cycle_ms_p50"], base["baseline_cycle_ms_p50"]),
            "ratio_cycle_p99": ratio(result["cycle_ms_p99"], base["baseline_cycle_ms_p99"]),
            "ratio_cpu": ratio(result["controlplane_cpu_pct"], base["baseline_cpu_pct"]),
            "shards": len(cf.redis.shards), "chat_hosts": len(cf.chat_hosts()),
            "targets": {"cycle_ms_p99": TARGET_CYCLE_P99_MS, "controlplane_cpu_pct": TARGET_CPU_PCT},
            "met": {"cycle_ms_p99": (result["cycle_ms_p99"] or 1e9) <= TARGET_CYCLE_P99_MS,
                    "controlplane_cpu_pct": result["controlplane_cpu_pct"] <= TARGET_CPU_PCT},
            "cpus": psutil.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2),
        })
    finally:
        if args.keep:
            say(f"cluster left running: chatops down --run-dir {run_path}")
        else:
            down = chatops("down", "--run-dir", str(run_path))
            say(down.stdout.strip() or down.stderr.strip())
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
