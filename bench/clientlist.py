"""What CLIENT LIST collection costs with 10,000 idle clients: the project's path vs redis-py.

Starts a redis-server on a private loopback address, opens 10,000 idle clients from three source
addresses (chat1, chat2, chat-testing of a cluster file written for the run), then times, in the
same run and interleaved to spread the machine's noise evenly:
  - the project's collection: CLIENT LIST read by hiredis behind collectors.resp's framing
    checks, byte-level field extraction and the per-host aggregation (collectors.clients.snapshot,
    INFO cost reads switched off);
  - the baseline: redis-py's `client_list()` plus a `collections.Counter` over source hosts.
The last line printed is one JSON object: medians, their ratio, and what Redis itself spent per
CLIENT LIST call (INFO commandstats usec_per_call); `scanner` says whether the project's parse ran
in collectors/clientscan.c or in Python, and the two `*_parse_aggregate_cpu_ms_median` figures time
both on one recorded reply in CPU time.

    python -m bench.clientlist [--clients 10000] [--rounds 20] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cluster import binaries, clusterfile, loopback  # noqa: E402
from collectors import clients  # noqa: E402
from collectors import redis as rc  # noqa: E402


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def wait_up(addr: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with rc.Conn(addr, port) as c:
                if c.call("PING") == "PONG":
                    return
        except (OSError, rc.RedisError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def open_clients(sources: list[str], addr: str, port: int, n: int) -> list[socket.socket]:
    socks = []
    for i in range(n):
        s = socket.socket()
        s.bind((sources[i % len(sources)], 0))
        s.connect((addr, port))
        socks.append(s)
    return socks


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--json", action="store_true", help="(the last line is always the JSON object)")
    args = ap.parse_args(argv)

    import redis as redispy

    hard = raise_nofile()
    if args.clients + 200 > hard:
        sys.exit(f"--clients {args.clients} needs more descriptors than the hard limit {hard}")
    sub = loopback.free_prefix()
    addr, port = f"{sub}.21", 6379
    work = Path(tempfile.mkdtemp(prefix="bench-cl-", dir="/tmp"))
    doc = {
        "hosts": {"chat1": {"address": f"{sub}.1"}, "chat2": {"address": f"{sub}.2"},
                  "chat-testing": {"address": f"{sub}.9"}, "redis1": {"address": addr}},
        "clusters": {"main": {"hosts": ["chat1", "chat2"]}, "testing": {"hosts": ["chat-testing"]}},
        "redis": {"shards": [{"name": "shard0", "host": "redis1", "port": port}]},
        "controlplane": {"listen": {"address": f"{sub}.100"}},
    }
    cfg = work / "cluster.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    cf = clusterfile.load(cfg).spec
    server = subprocess.Popen(
        [binaries.require("redis-server"), "--bind", addr, "--port", str(port), "--protected-mode", "no",
         "--save", "", "--appendonly", "no", "--maxclients", str(args.clients + 100), "--dir", str(work)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    socks: list[socket.socket] = []
    try:
        wait_up(addr, port)
        t0 = time.perf_counter()
        socks = open_clients([f"{sub}.1", f"{sub}.2", f"{sub}.9"], addr, port, args.clients)
        with rc.Conn(addr, port, timeout=10) as c:
            deadline = time.monotonic() + 30
            while rc.fetch_info(c, "clients")["clients"]["connected_clients"] < args.clients:
                if time.monotonic() > deadline:
                    sys.exit("redis did not accept every client in time")
                time.sleep(0.05)
        print(f"{args.clients} clients open in {time.perf_counter() - t0:.1f}s", file=sys.stderr)

        conn = rc.Conn(addr, port, timeout=10)
        rp = redispy.Redis(host=addr, port=port, socket_timeout=10)
        hosts = cf.host_by_address()
        # A bare redis-server, no ACL: the snapshot uses `conn`, so the control plane's password is
        # never sent, but target_for resolves it.
        os.environ.setdefault(cf.secrets.redis_controlplane_password_env, "unused-on-a-bare-server")
        target = clients.target_for(cf, "shard0", measure_cost=False)

        parts: dict[str, list[float]] = {"fetch_ms": [], "parse_ms": []}

        def project() -> dict:
            snap = clients.snapshot(conn, target)
            for k in parts:
                parts[k].append(snap[k])
            return snap

        def baseline() -> Counter:
            counts = Counter(c["addr"].rsplit(":", 1)[0] for c in rp.client_list())
            return Counter({hosts.get(ip, ip): n for ip, n in counts.items()})

        # One untimed call each: warm caches, and check both see the same clients.
        base = baseline()
        snap = project()
        mine = {h["host"]: h["count"] for h in snap["by_host"]}
        if mine != dict(base):
            sys.exit(f"project and baseline disagree: {mine} vs {dict(base)}")
        project_ms, redispy_ms = [], []
        for r in range(args.rounds):
            for name, fn, out in (("project", project, project_ms), ("redis-py", baseline, redispy_ms)):
                t = time.perf_counter()
                fn()
                out.append((time.perf_counter() - t) * 1000)
        print(f"project ms: {', '.join(f'{m:.1f}' for m in project_ms)}", file=sys.stderr)
        print(f"redis-py ms: {', '.join(f'{m:.1f}' for m in redispy_ms)}", file=sys.stderr)
        stat = rc.fetch_info(conn, "commandstats")["commandstats"].get("cmdstat_client|list", {})
        # The parse and count alone, in CPU time on one recorded reply: the compiled scanner against
        # the Python path it replaces (the fallback when collectors/_clientscan.so is not built).
        raw = clients.fetch_client_list(conn)
        cpu: dict[bool, list[float]] = {True: [], False: []}
        for r in range(args.rounds):
            for compiled in ((True, False) if clients.clientscan.AVAILABLE else (False,)):
                t = time.process_time()
                clients.summarize(raw, hosts, target.clusters.get, idle_after=target.idle_after,
                                  long_idle=target.long_idle, top_n=target.top_n, compiled=compiled)
                cpu[compiled].append((time.process_time() - t) * 1000)
        conn.close()
        rp.close()
    finally:
        for s in socks:
            s.close()
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(work, ignore_errors=True)

    p, b = statistics.median(project_ms), statistics.median(redispy_ms)
    print(json.dumps({
        "bench": "clientlist",
        "clients": args.clients,
        "rounds": args.rounds,
        "reply_bytes": snap["bytes"],
        "by_host": mine,
        "project_ms": round(p, 2),
        "redispy_ms": round(b, 2),
        "speedup": round(b / p, 2),
        "project_ms_min": round(min(project_ms), 2),
        "redispy_ms_min": round(min(redispy_ms), 2),
        "project_fetch_ms_median": round(statistics.median(parts["fetch_ms"]), 2),
        "project_parse_aggregate_ms_median": round(statistics.median(parts["parse_ms"]), 2),
        "redis_usec_per_call": stat.get("usec_per_call"),
        "scanner": snap["scanner"],
        "compiled_parse_aggregate_cpu_ms_median": (round(statistics.median(cpu[True]), 2) if cpu[True]
                                                   else None),
        "python_parse_aggregate_cpu_ms_median": round(statistics.median(cpu[False]), 2),
    }))


if __name__ == "__main__":
    main()
