"""How many messages per second the whole chat path accepts and delivers, and how fast.

The full path: client -> HAProxy frontend -> edge -> clue -> Redis (through the host's shard
listener) -> exchange -> edge -> client, on the default topology's shape (clusters main with two
chat hosts, event and testing with one each, four shards on two Redis hosts), started with
`chatops up --detach` on a private loopback subnet and always stopped at the end.

1. Search: chat.loadgen runs a few seconds at a rate, doubling while every message is accepted and
   delivered (completeness 1.0, no NOTICE, no lost message, accepted >= 95% of offered), then
   bisecting between the last rate that held and the first that did not.
2. Half load: one longer run at half the sustained rate, for p99 end-to-end latency.
3. Baseline, in the same run: one plain redis-py client sending clue's per-message Redis commands
   (recorded from Clue._privmsg itself, so they stay exactly what clue sends) as its two
   pipelines, one after the other, through the same HAProxy listeners.

Each step also records the CPU every process kind used (edge, clue, exchange, haproxy, redis and
the load generator itself) and the services' own latency histograms, which say where the time goes.
Progress goes to stderr; the last stdout line is one JSON object.

    python -m bench.ingest [--json] [--step-seconds 4] [--half-seconds 10] [--baseline-seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import types
import urllib.request
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chat import loadgen, slotguard  # noqa: E402
from chat.sharding import SlotMap  # noqa: E402
from cluster import clusterfile, loopback, redis_acl, spec  # noqa: E402
from cluster.rundir import RunDir  # noqa: E402
from cluster.state import read_state  # noqa: E402
from controlplane.cli.common import use_local_secrets  # noqa: E402

TARGET_RATE = 2000          # msgs/s accepted with 100% delivery (not asserted)
TARGET_P99_MS = 50          # at half that load
TIMED = ("chat_edge_clue_request_seconds", "chat_clue_decision_seconds", "chat_exchange_request_seconds")
COUNTED = ("chat_edge_clue_timeouts", "chat_exchange_io_timeouts", "chat_clue_redis_errors",
           "chat_exchange_batch_messages")


def say(text: str) -> None:
    print(f"ingest: {text}", file=sys.stderr, flush=True)


# -- the cluster --

def default_shape(subnet: str) -> dict:
    """The shipped default cluster, on our own subnet."""
    doc = clusterfile.default_on_subnet(subnet)
    doc["haproxy"]["check_interval"] = "500ms"
    return doc


def chatops(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "controlplane.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


class Processes:
    """CPU seconds per process kind (edge, clue, exchange, haproxy, redis, loadgen)."""

    def __init__(self, run: Path):
        state = read_state(RunDir(run)) or {}
        self.procs: list[tuple[str, psutil.Process]] = []
        for p in state.get("processes", []):
            try:
                proc = psutil.Process(p["pid"])
                kind = p["name"].split("-")[0]
                self.procs.append((kind, proc))
                if kind == "haproxy":   # the master forks the worker that does the work
                    self.procs += [(kind, c) for c in proc.children(recursive=True)]
            except psutil.Error:
                continue

    def snapshot(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for kind, proc in self.procs:
            try:
                t = proc.cpu_times()
                out[kind] = out.get(kind, 0.0) + t.user + t.system
            except psutil.Error:
                pass
        r = resource.getrusage(resource.RUSAGE_SELF)
        out["loadgen"] = r.ru_utime + r.ru_stime
        return out

    @staticmethod
    def percent(before: dict[str, float], after: dict[str, float], wall: float) -> dict[str, float]:
        return {k: round(100 * (after.get(k, 0) - before.get(k, 0)) / wall, 1) for k in sorted(after)}


# -- the services' own metrics --

def scrape(cf: spec.ClusterFile) -> dict[str, dict]:
    """Sum over every chat host: each timed histogram's sum, count and buckets, and a few counters."""
    from prometheus_client.parser import text_string_to_metric_families
    out: dict[str, dict] = {}
    for host, cluster in cf.chat_hosts():
        sv = cf.clusters[cluster].services
        addr = cf.address(host)
        for port in (sv.edge.http_port, sv.clue.port, sv.exchange.port):
            try:
                with urllib.request.urlopen(f"http://{addr}:{port}/metrics", timeout=3) as resp:
                    text = resp.read().decode()
            except OSError:
                continue
            for fam in text_string_to_metric_families(text):
                if fam.name not in TIMED + COUNTED:
                    continue
                agg = out.setdefault(fam.name, {"sum": 0.0, "count": 0.0, "buckets": {}, "total": 0.0})
                for s in fam.samples:
                    if s.name.endswith("_sum"):
                        agg["sum"] += s.value
                    elif s.name.endswith("_count"):
                        agg["count"] += s.value
                    elif s.name.endswith("_bucket"):
                        le = s.labels["le"]
                        agg["buckets"][le] = agg["buckets"].get(le, 0.0) + s.value
                    elif s.name.endswith("_total"):
                        agg["total"] += s.value
    return out


def metric_delta(before: dict, after: dict) -> dict[str, dict]:
    """Per timed histogram: requests, mean and p99 (bucket upper bound) over the interval."""
    out: dict[str, dict] = {}
    for name in TIMED + ("chat_exchange_batch_messages",):
        a, b = after.get(name), before.get(name, {"sum": 0, "count": 0, "buckets": {}})
        if not a:
            continue
        n = a["count"] - b["count"]
        entry: dict = {"requests": int(n)}
        if n > 0:
            scale = 1 if name == "chat_exchange_batch_messages" else 1000
            entry["mean"] = round((a["sum"] - b["sum"]) / n * scale, 2)
            cum = sorted(((float("inf") if le == "+Inf" else float(le), v - b["buckets"].get(le, 0))
                          for le, v in a["buckets"].items()))
            for le, c in cum:
                if c >= 0.99 * n:
                    entry["p99_le"] = None if math.isinf(le) else round(le * scale, 2)
                    break
            entry["unit"] = "messages" if scale == 1 else "ms"
        out[name] = entry
    for name in ("chat_edge_clue_timeouts", "chat_exchange_io_timeouts", "chat_clue_redis_errors"):
        if name in after:
            out[name] = int(after[name]["total"] - before.get(name, {"total": 0})["total"])
    return out


# -- loadgen steps --

def senders_for(rate: float) -> int:
    # <= 100 msgs/s per sender: 3,000 per 30 s window, well under the bots' 7,500.
    return max(4, math.ceil(rate / 100))


def run_loadgen(cf, options: loadgen.Options) -> dict:
    async def go():
        return await loadgen.run(cf, options)
    try:
        import uvloop
        return uvloop.run(go())
    except ImportError:  # pragma: no cover
        return asyncio.run(go())


def verdict(rep: dict) -> tuple[bool, str]:
    offered = rep["offered"] or 1
    if rep["errors"]:
        return False, f"errors {rep['errors']}"
    if rep["rejected"]:
        return False, f"rejected {rep['rejected']}"
    lost = rep["lost"]["delivered_without_echo"] + rep["lost"]["unanswered"]
    if lost:
        return False, f"lost {rep['lost']}"
    if rep["completeness"] is None or rep["completeness"] < 1.0:
        return False, f"completeness {rep['completeness']}"
    if rep["sent"] < 0.95 * offered:
        # Everything sent was taken, but the generator's own pacer fell behind: the machine's CPU
        # (shared by the generator and the cluster) ran out before the cluster said no.
        return False, (f"accepted {rep['accepted']} < 95% of {offered} offered: the generator fell behind "
                       f"(sent {rep['sent']}), the machine's CPU is the limit")
    if rep["accepted"] < 0.95 * offered:
        return False, f"accepted {rep['accepted']} < 95% of {offered} offered"
    return True, "ok"


class Bench:
    def __init__(self, cf, run: Path, args):
        self.cf = cf
        self.run = run
        self.args = args
        self.procs = Processes(run)
        self.n = 0
        self.steps: list[dict] = []

    def step(self, rate: float, seconds: float, record: bool = True) -> dict:
        self.n += 1
        rooms = loadgen.rooms_of(self.cf, loadgen.Options())
        opts = loadgen.Options(clients=self.args.receivers_per_room * len(rooms), senders=senders_for(rate),
                               rate=rate, duration=seconds, quiet=True, handle_signals=False,
                               sender_prefix=f"ingest{self.n}", ws_fraction=self.args.ws_fraction)
        m0, c0, t0 = scrape(self.cf), self.procs.snapshot(), time.monotonic()
        rep = run_loadgen(self.cf, opts)
        wall = time.monotonic() - t0
        c1, m1 = self.procs.snapshot(), scrape(self.cf)
        ok, why = verdict(rep)
        row = {"rate": rate, "seconds": seconds, "senders": opts.senders, "receivers": rep["clients"],
               "sent": rep["sent"], "accepted": rep["accepted"], "accepted_per_s": rep["accepted_per_s"],
               "rejected": rep["rejected"], "lost": rep["lost"], "completeness": rep["completeness"],
               "latency_ms": rep["latency_ms"], "ack_ms": rep["ack_ms"], "errors": rep["errors"],
               "ok": ok, "why": why, "cpu_percent": Processes.percent(c0, c1, wall),
               "services": metric_delta(m0, m1)}
        say(f"step {self.n}: {rate:.0f} msgs/s x {seconds:g}s -> accepted {rep['accepted_per_s']}/s, "
            f"completeness {rep['completeness']}, p99 {rep['latency_ms']['p99']} ms: "
            f"{'held' if ok else 'FAILED: ' + why}")
        if record:
            self.steps.append(row)
        time.sleep(1.0)   # let queues empty and the per-second room counters roll over
        return row

    def search(self) -> tuple[dict | None, dict | None]:
        a = self.args
        best = fail = None
        rate = a.start_rate
        while rate <= a.max_rate:
            row = self.step(rate, a.step_seconds)
            if row["ok"]:
                best = row
                rate *= 2
            else:
                fail = row
                break
        if best is None:        # even the first rate failed: go down
            rate = a.start_rate / 2
            while rate >= 25:
                row = self.step(rate, a.step_seconds)
                if row["ok"]:
                    best = row
                    break
                fail = row
                rate /= 2
            if best is None:
                return None, fail
        lo, hi = best["rate"], (fail["rate"] if fail else None)
        for _ in range(a.bisect if hi else 0):
            mid = round((lo + hi) / 2 / 25) * 25
            if mid <= lo or mid >= hi:
                break
            row = self.step(mid, a.step_seconds)
            if row["ok"]:
                lo, best = mid, row
            else:
                hi, fail = mid, row
        return best, fail


# -- the baseline: clue's Redis commands from one plain redis-py client --

class _Recorder:
    """Stands in for ShardedCache/RoutedPipeline to learn which Redis commands clue sends for one
    message, whatever its code looks like today."""

    REPLIES = {"hget": None, "sismember": 0, "get": None, "incr": 1, "hincrby": 1, "expire": True,
               "incrby": 1, "hset": 1, "set": True, "exists": 0, "ttl": -1}

    def __init__(self, slot_map: SlotMap):
        self.slot_map = slot_map
        self.pipelines: list[tuple[str, list[tuple[str, tuple, dict]]]] = []

    def shard_of(self, key) -> int:
        return self.slot_map.shard_of(key)

    def pipeline_for(self, key, transaction: bool = False):
        rec = self
        calls: list[tuple[str, tuple, dict]] = []
        self.pipelines.append((key, calls))

        class Pipe:
            def __getattr__(self, name):
                def queue(*args, **kwargs):
                    calls.append((name, args, kwargs))
                    return self
                return queue

            async def execute(self, raise_on_error=True):
                out = []
                for name, args, _ in calls:
                    if name == "privmsg_check":      # ban, mod, counts, limits, then the room fields
                        out.append([None, 0, 1, 1, None, None] + [None] * len(args[-1]))
                    elif name == "hmget":
                        fields = args[1:] if len(args) > 2 else (args[1] if isinstance(args[1], (list, tuple)) else [args[1]])
                        out.append([None] * len(fields))
                    else:
                        out.append(rec.REPLIES.get(name))
                return out
        return Pipe()

    def client_for(self, key):
        raise RuntimeError("Clue._privmsg used a plain client call; the baseline only mirrors pipelines")

    def stats(self):
        return {"ops_by_shard": {}, "errors_by_shard": {}, "ops_by_prefix": {}, "top_slots": []}


def record_clue_commands(cf, login: str, room: str) -> list[tuple[str, list[tuple[str, tuple, dict]]]]:
    from prometheus_client import CollectorRegistry

    from chat.clue import Clue
    cluster = cf.cluster_of_room(room)
    host = cf.clusters[cluster].hosts[0]
    ctx = types.SimpleNamespace(cf=cf, host=host, cluster=cluster, address=cf.address(host),
                                services=cf.clusters[cluster].services, registry=CollectorRegistry(),
                                log=logging.getLogger("chatops.bench"))

    class Exchange:
        def call(self, message):
            fut = asyncio.get_running_loop().create_future()
            fut.set_result({"ok": True})
            return fut

    rec = _Recorder(SlotMap.even(len(cf.redis.shards)))
    clue = Clue(ctx, rec, Exchange())
    item = {"login": login, "room": room, "text": "baseline message Kappa", "edge": host, "conn": 1,
            "tags": {"client-nonce": "baseline"}}

    async def decide() -> dict:
        if hasattr(clue, "privmsg_batch"):      # clue batches per shard: a batch of one is one message
            return (await clue.privmsg_batch([item]))[0]
        return await clue._privmsg(item)
    result = asyncio.run(decide())
    if not result.get("ok"):
        raise RuntimeError(f"recording Clue._privmsg did not accept the message: {result}")
    return rec.pipelines


def redis_baseline(cf, seconds: float) -> dict:
    import redis
    host = cf.clusters["main"].hosts[0] if "main" in cf.clusters else cf.chat_hosts()[0][0]
    address = cf.address(host)
    slots = SlotMap.even(len(cf.redis.shards))
    auth = redis_acl.credentials(cf, redis_acl.CLUE)
    clients = [redis.Redis(host=address, port=cf.listener_port(i), socket_timeout=2,
                           username=auth.user, password=auth.password)
               for i in range(len(cf.redis.shards))]
    rooms = loadgen.rooms_of(cf, loadgen.Options())
    logins = [f"ingestbase_{i}" for i in range(10)]
    recordings = [record_clue_commands(cf, login, room) for login in logins for room in rooms]
    plans = [[(clients[slots.shard_of(key)], calls) for key, calls in rec] for rec in recordings]
    # Clue's PRIVMSG op runs inside its slot guard; a plain client sends the same Lua on its own,
    # by EVALSHA once one EVAL per plan (before the clock starts) has cached it on every shard.
    def queue(pipe, name, args, kwargs, first=False):
        if name == "privmsg_check":
            *keys_and_args, fields = args
            if first:
                pipe.eval(slotguard.PRIVMSG_SCRIPT, slotguard.PRIVMSG_KEYS, *keys_and_args, *fields)
            else:
                pipe.evalsha(slotguard.PRIVMSG_SCRIPT_SHA, slotguard.PRIVMSG_KEYS, *keys_and_args, *fields)
        else:
            getattr(pipe, name)(*args, **kwargs)
    for plan in plans:
        for client, calls in plan:
            pipe = client.pipeline(transaction=False)
            for name, args, kwargs in calls:
                queue(pipe, name, args, kwargs, first=True)
            pipe.execute()
    n = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    try:
        while time.perf_counter() < deadline:
            for plan in plans:
                for client, calls in plan:
                    pipe = client.pipeline(transaction=False)
                    for name, args, kwargs in calls:
                        queue(pipe, name, args, kwargs)
                    pipe.execute()
                n += 1
        wall = time.perf_counter() - t0
    finally:
        for c in clients:
            c.close()
    commands = [[name for name, _, _ in calls] for _, calls in recordings[0]]
    return {"msgs_per_s": round(n / wall, 1), "messages": n, "seconds": round(wall, 2),
            "pipelines_per_msg": len(recordings[0]), "commands": commands, "through": f"{host} ({address}) listeners"}


# -- main --

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="(the last stdout line is always the JSON object)")
    ap.add_argument("--step-seconds", type=float, default=4.0)
    ap.add_argument("--half-seconds", type=float, default=10.0)
    ap.add_argument("--baseline-seconds", type=float, default=5.0)
    ap.add_argument("--start-rate", type=float, default=250.0)
    ap.add_argument("--max-rate", type=float, default=16000.0)
    ap.add_argument("--bisect", type=int, default=3, help="bisection steps after the first failure")
    ap.add_argument("--receivers-per-room", type=int, default=2)
    ap.add_argument("--ws-fraction", type=float, default=0.25)
    ap.add_argument("--keep", action="store_true",
                    help="leave the cluster (and its logs) running; stop it with chatops down")
    args = ap.parse_args()

    subnet = loopback.free_prefix()
    work = Path(tempfile.mkdtemp(prefix="ingest-", dir="/tmp"))
    run = work / "run"
    cfg = work / "cluster.yaml"
    cfg.write_text(yaml.safe_dump(default_shape(subnet), sort_keys=False))
    cf = clusterfile.load(cfg).spec
    say(f"starting the default-shaped cluster on {subnet}.0/24 (run dir {run})")
    t_up = time.monotonic()
    up = chatops("up", "--detach", "--config", str(cfg), "--run-dir", str(run))
    if up.returncode != 0:
        chatops("down", "--run-dir", str(run))
        sys.exit(f"ingest: chatops up failed:\n{up.stdout}{up.stderr}")
    use_local_secrets(cf, RunDir(run))   # the Redis ACL passwords `up` generated, for our own clients
    result: dict = {"bench": "ingest"}
    try:
        time.sleep(1.5)   # HAProxy's health checks (rise 2 x 500 ms) before the frontends route
        say(f"cluster up in {time.monotonic() - t_up:.1f}s; warming up")
        bench = Bench(cf, run, args)
        bench.step(100, 2, record=False)

        best, fail = bench.search()
        if best is None:
            raise SystemExit(f"ingest: not even {fail['rate']} msgs/s held: {fail['why']}")
        half_rate = max(10.0, best["rate"] / 2)
        say(f"sustained {best['accepted_per_s']} msgs/s; measuring latency at half load ({half_rate:.0f} msgs/s)")
        half = bench.step(half_rate, args.half_seconds, record=False)

        say(f"baseline: one redis-py client sending clue's per-message pipelines for {args.baseline_seconds:g}s")
        base = redis_baseline(cf, args.baseline_seconds)
        say(f"baseline: {base['msgs_per_s']} msgs/s ({base['commands']})")

        accepted = best["accepted_per_s"]
        result.update({
            "accepted_msgs_per_s": accepted,
            "p99_ms_at_half_load": half["latency_ms"]["p99"],
            "completeness": half["completeness"],
            "redis_baseline_msgs_per_s": base["msgs_per_s"],
            "ratio_to_baseline": round(accepted / base["msgs_per_s"], 3) if base["msgs_per_s"] else None,
            "sustained_rate": best["rate"],
            "completeness_at_sustained": best["completeness"],
            "p50_ms_at_half_load": half["latency_ms"]["p50"],
            "ack_p99_ms_at_half_load": half["ack_ms"]["p99"],
            # Where latency breaks down: the highest rate tried whose p99 stayed within the target.
            "highest_rate_with_p99_within_target": max(
                (st["rate"] for st in bench.steps + [half]
                 if st["ok"] and (st["latency_ms"]["p99"] or 1e9) <= TARGET_P99_MS), default=None),
            "half_load": half,
            "first_failure": None if fail is None else {k: fail[k] for k in (
                "rate", "why", "accepted_per_s", "rejected", "latency_ms", "cpu_percent", "services")},
            "cpu_percent_at_sustained": best["cpu_percent"],
            "services_at_sustained": best["services"],
            "targets": {"accepted_msgs_per_s": TARGET_RATE, "p99_ms_at_half_load": TARGET_P99_MS},
            "met": {"accepted_msgs_per_s": accepted >= TARGET_RATE,
                    "p99_ms_at_half_load": (half["latency_ms"]["p99"] or 1e9) <= TARGET_P99_MS},
            "steps": [{k: s[k] for k in ("rate", "accepted_per_s", "completeness", "rejected", "lost", "ok", "why",
                                         "latency_ms", "cpu_percent")} for s in bench.steps],
            "baseline": base,
            "topology": {"subnet": subnet, "chat_hosts": len(cf.chat_hosts()), "shards": len(cf.redis.shards),
                         "receivers_per_room": args.receivers_per_room, "step_seconds": args.step_seconds},
            "cpus": psutil.cpu_count(),
        })
    finally:
        if args.keep:
            say(f"cluster left running: chatops down --run-dir {run}")
        else:
            down = chatops("down", "--run-dir", str(run))
            say(down.stdout.strip() or down.stderr.strip())
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
