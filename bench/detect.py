"""How fast the control plane turns a fault into a finding, against a default Prometheus +
Alertmanager pipeline with the same thresholds.

On the shipped default cluster (moved onto a private loopback subnet, with its default scrape
intervals and thresholds, and the load generator `make run` starts), started with
`chatops up --detach --traffic` and always stopped at the end:

1. Quiet: `--quiet-seconds` (120) of normal traffic; every finding opened is a false positive.
2. Faults, one after another, each undone (and its finding left to resolve) before the next:
   (a) hot shard: `redis-benchmark` with random keys against shard2 alone;
   (b) leaked clients: 2,000 idle connections through chat-testing's HAProxy listener for shard2;
   (c) missing keepalive: the main cluster's exchanges restarted with `keepalive: false`.
   `detect_s` is the time from the fault to the finding's `first_seen` (the engine's clock),
   read back through `/api/v1/findings`. The fault starts when redis-benchmark starts (a), when
   the first leaked connection opens (b), and when both restarted exchanges are up (c).
3. Baseline, computed in the same run for each fault's injection time: a default Prometheus
   scrapes every 15 s on a grid that started with this run, so it first sees the fault at the
   next grid point; the alert rule's `for` is the same `thresholds.hold`; Alertmanager's default
   `group_wait` adds 30 s: `prometheus_default_s = (next scrape - injection) + hold + 30`. This is
   generous to Prometheus: a rate() needs a second scrape, and rules are evaluated every minute by
   default, neither of which is counted.

Progress goes to stderr; the last stdout line is one JSON object with `detect_s` and
`prometheus_default_s` per fault and `false_positives` (targets: every detect_s <= 15, 0 false
positives).

    python -m bench.detect [--json] [--quiet-seconds 120] [--fault-timeout 60] [--keep]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from bench import redis_benchmark  # noqa: E402
from cluster import clusterfile, durations, loopback, redis_acl  # noqa: E402
from cluster.rundir import RunDir  # noqa: E402
from cluster.state import read_state  # noqa: E402
from controlplane.cli.common import use_local_secrets  # noqa: E402

PROM_SCRAPE_S = 15.0          # Prometheus' default scrape_interval
PROM_GROUP_WAIT_S = 30.0      # Alertmanager's default group_wait
TARGET_DETECT_S = 15.0
SHARD = "shard2"
LEAKS = 2000


def say(text: str) -> None:
    print(f"detect: {text}", file=sys.stderr, flush=True)


def chatops(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "controlplane.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


class Cluster:
    def __init__(self, work: Path, subnet: str):
        self.work, self.run, self.cfg = work, work / "run", work / "cluster.yaml"
        self.doc = clusterfile.default_on_subnet(subnet)
        self.cfg.write_text(yaml.safe_dump(self.doc, sort_keys=False))
        self.cf = clusterfile.load(self.cfg).spec
        listen = self.cf.controlplane.listen
        self.base = f"http://{listen.address}:{listen.port}"

    def up(self) -> None:
        out = chatops("up", "--detach", "--traffic", "--config", str(self.cfg), "--run-dir", str(self.run))
        if out.returncode != 0:
            chatops("down", "--run-dir", str(self.run))
            sys.exit(f"detect: chatops up failed:\n{out.stdout}{out.stderr}")
        use_local_secrets(self.cf, RunDir(self.run))   # the Redis ACL passwords, for our own clients

    def admin_redis(self, host: str, port: int, **kw):
        """A redis-py client of a shard, logged in as the control plane's ACL user."""
        import redis
        auth = redis_acl.credentials(self.cf, redis_acl.CHATOPS)
        return redis.Redis(host=host, port=port, username=auth.user, password=auth.password, **kw)

    def down(self) -> None:
        out = chatops("down", "--run-dir", str(self.run))
        say(out.stdout.strip() or out.stderr.strip())

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.base + path, timeout=10) as r:
            return json.load(r)

    def findings(self) -> list[dict]:
        return self.get("/api/v1/findings?state=all&limit=1000")["findings"]

    def state(self) -> dict:
        return read_state(RunDir(self.run)) or {}

    def pid(self, name: str) -> int:
        return next(p["pid"] for p in self.state()["processes"] if p["name"] == name)

    def shard_address(self, name: str) -> tuple[str, int]:
        s = next(s for s in self.cf.redis.shards if s.name == name)
        return self.cf.address(s.host), s.port


def wait(predicate, timeout: float, what: str, every: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"{what}: not within {timeout:.0f}s")


def wait_finding(c: Cluster, kind: str, match, since: float, timeout: float) -> dict:
    def found():
        return next((f for f in c.findings() if f["kind"] == kind and match(f) and f["first_seen"] >= since), None)
    return wait(found, timeout, f"a {kind} finding")


def wait_resolved(c: Cluster, finding: dict, timeout: float) -> None:
    def closed():
        return all(f["state"] == "resolved" for f in c.findings() if f["id"] == finding["id"])
    try:
        wait(closed, timeout, f"{finding['kind']} {finding['subject']} to resolve", every=0.5)
    except TimeoutError as exc:
        say(f"  (note: {exc})")


def prometheus_default_s(t_inject: float, t_grid0: float, hold: float) -> float:
    k = math.ceil((t_inject - t_grid0) / PROM_SCRAPE_S)
    next_scrape = t_grid0 + k * PROM_SCRAPE_S
    return round(next_scrape - t_inject + hold + PROM_GROUP_WAIT_S, 1)


# -- the faults -----------------------------------------------------------------------------------

def fault_hot_shard(c: Cluster, timeout: float) -> tuple[float, dict]:
    host, port = c.shard_address(SHARD)
    argv = redis_benchmark.argv(c.cf, RunDir(c.run), host, port, "SET", "-n", "100000000", "-c", "50", "-P", "16",
                                "-r", "100000", "-q")
    t0 = time.time()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        f = wait_finding(c, "hot_shard", lambda f: f["subject"] == SHARD, t0, timeout)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:   # redis-benchmark, mid-pipeline, can ignore SIGINT
            proc.kill()
            proc.wait()
    return t0, f


def open_leak(c: Cluster, n: int = LEAKS) -> list[socket.socket]:
    """n connections through chat-testing's listener for SHARD, one PING each, then idle."""
    testing = c.cf.address("chat-testing")
    port = c.cf.listener_port([s.name for s in c.cf.redis.shards].index(SHARD))
    socks = []
    try:
        for _ in range(n):
            s = socket.create_connection((testing, port), timeout=5)
            s.sendall(b"PING\r\n")
            socks.append(s)
        for s in socks:
            s.recv(16)
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


def fault_leaked_clients(c: Cluster, timeout: float) -> tuple[float, dict]:
    socks = []
    t0 = time.time()
    try:
        socks = open_leak(c)
        say(f"  {len(socks)} idle connections open in {time.time() - t0:.1f}s")
        f = wait_finding(c, "leaked_clients", lambda f: f["subject"] == f"chat-testing->{SHARD}", t0, timeout)
    finally:
        for s in socks:
            s.close()
    return t0, f


def _restart_exchanges(c: Cluster, keepalive: bool) -> float:
    c.doc["clusters"]["main"].setdefault("services", {}).setdefault("exchange", {})["keepalive"] = keepalive
    c.cfg.write_text(yaml.safe_dump(c.doc, sort_keys=False))
    names = [f"exchange-{h}" for h in c.cf.clusters["main"].hosts]
    old = {n: c.pid(n) for n in names}
    for pid in old.values():
        os.kill(pid, signal.SIGTERM)

    def restarted():
        procs = {p["name"]: p for p in c.state()["processes"]}
        return all(procs[n]["pid"] != old[n] and procs[n]["status"] == "up" for n in names)
    wait(restarted, 30, "the exchanges to restart")
    return time.time()


def fault_missing_keepalive(c: Cluster, timeout: float) -> tuple[float, dict]:
    t0 = _restart_exchanges(c, keepalive=False)
    try:
        f = wait_finding(c, "connection_churn", lambda f: f["subject"].startswith("exchange-"), t0, timeout)
    finally:
        _restart_exchanges(c, keepalive=True)
    return t0, f


FAULTS = [("hot_shard", fault_hot_shard), ("leaked_clients", fault_leaked_clients),
          ("connection_churn", fault_missing_keepalive)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="(the last stdout line is always the JSON object)")
    ap.add_argument("--quiet-seconds", type=float, default=120.0)
    ap.add_argument("--fault-timeout", type=float, default=60.0)
    ap.add_argument("--keep", action="store_true", help="leave the cluster running; stop it with chatops down")
    args = ap.parse_args()

    subnet = loopback.free_prefix()
    c = Cluster(Path(tempfile.mkdtemp(prefix="detect-", dir="/tmp")), subnet)
    hold = durations.seconds(c.cf.controlplane.thresholds.hold)
    say(f"starting the default cluster on {subnet}.0/24 with traffic (run dir {c.run})")
    t_grid0 = time.time()
    c.up()
    result: dict = {"bench": "detect", "hold_s": hold,
                    "scrape_interval_s": durations.seconds(c.cf.controlplane.scrape.interval),
                    "client_list_interval_s": durations.seconds(c.cf.controlplane.scrape.client_list_interval)}
    try:
        wait(lambda: next((j for j in c.get("/api/v1/jobs")["jobs"] if j["id"] == "detect:all" and j["runs"] >= 3), None),
             60, "the detection job to run")
        say(f"quiet run: {args.quiet_seconds:.0f}s of normal traffic")
        t_quiet = time.time()
        time.sleep(args.quiet_seconds)
        fps = [f for f in c.findings() if f["first_seen"] >= t_quiet - 5]
        result["false_positives"] = len(fps)
        result["false_positive_findings"] = [f"{f['kind']} {f['subject']}: {f['title']}" for f in fps]
        say(f"  {len(fps)} findings opened" + "".join(f"\n    {x}" for x in result["false_positive_findings"]))
        result["detect_s"], result["prometheus_default_s"], result["titles"] = {}, {}, {}
        for name, inject in FAULTS:
            say(f"fault {name}")
            try:
                t0, f = inject(c, args.fault_timeout)
            except TimeoutError as exc:
                say(f"  not detected: {exc}")
                result["detect_s"][name] = None
                result["prometheus_default_s"][name] = prometheus_default_s(time.time(), t_grid0, hold)
                continue
            result["detect_s"][name] = round(f["first_seen"] - t0, 1)
            result["prometheus_default_s"][name] = prometheus_default_s(t0, t_grid0, hold)
            result["titles"][name] = f["title"]
            say(f"  {f['kind']} {f['subject']} after {result['detect_s'][name]}s: {f['title']}")
            wait_resolved(c, f, 90)
        ds = [v for v in result["detect_s"].values()]
        result["target_detect_s"] = TARGET_DETECT_S
        result["all_within_target"] = all(v is not None and v <= TARGET_DETECT_S for v in ds)
        ratios = [result["prometheus_default_s"][k] / v for k, v in result["detect_s"].items() if v]
        result["median_speedup_vs_prometheus"] = round(sorted(ratios)[len(ratios) // 2], 1) if ratios else None
    finally:
        if args.keep:
            say(f"cluster left running: chatops down --run-dir {c.run}")
        else:
            c.down()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
