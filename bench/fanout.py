"""How fast one edge fans a room's messages out to its subscribers, against plain asyncio.

Writes a one-chat-host cluster file on a private loopback subnet, starts ONE edge
(`python -m chat.edge`), and in the same run, alternating to spread the machine's noise evenly:

  - edge: a separate subscriber process opens --subscribers TCP connections straight to the edge's
    irc_port (anonymous `justinfan` logins, `CAP REQ :twitch.tv/tags`, one JOIN), and this process
    POSTs batches of ~300-byte PRIVMSGs to the edge's /v1/deliver as fast as the edge answers;
  - reference: a minimal uvloop broadcaster in its own process accepts the same subscribers from
    the same subscriber process and writes the same bytes (the edge's own encoding, same length)
    to every socket as fast as the sockets take them (backpressure via pause_writing), the same
    --batch messages per loop turn. Variants:
      per_client   each client's lines of the turn collected, joined and written once (the edge's
                   scheme, without its per-line bookkeeping) -- the baseline of `ratio`;
      shared       the turn's lines joined once and that buffer written to every client;
      per_message  transport.write(line) for every message and client (no coalescing).

deliveries/s = lines received by all subscribers / (last receive - first receive), counted by the
subscriber process. Latency is receive time minus the line's tmi-sent-ts (set when the message is
published), over every line of the first --sample subscribers. The last stdout line is one JSON
object (medians over the rounds, plus every run); progress goes to stderr.

    /tmp/probe-venv/bin/python -m bench.fanout --json [--subscribers 2000] [--duration 10]
        [--rounds 3] [--batch 10] [--posters 2] [--variants per_client,shared,per_message]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import secrets
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chat import irc  # noqa: E402
from cluster import loopback  # noqa: E402

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None

ROOM = "lobby"
SOURCE_LOGIN = "bench"
SERVER_NAME = "tmi.chatops.local"
VARIANTS = ("per_client", "shared", "per_message")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[fanout {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_loop(coro):
    if uvloop is not None:
        return uvloop.run(coro)
    return asyncio.run(coro)


# ---------------------------------------------------------------------------------------------
# The message, and the exact line the edge writes for it
# ---------------------------------------------------------------------------------------------

def make_message(seq: int, ts_ms: int, text: str) -> dict:
    """One exchange delivery, shaped like a Twitch PRIVMSG with its usual tags."""
    return {
        "room": ROOM,
        "command": "PRIVMSG",
        "tags": {
            "badges": "", "color": "#1E90FF", "display-name": "Bench", "emotes": "",
            "id": str(uuid.UUID(int=seq)), "mod": "0", "room-id": "1001", "subscriber": "0",
            "tmi-sent-ts": str(ts_ms), "user-id": "2002", "user-type": "",
        },
        "source": f"{SOURCE_LOGIN}!{SOURCE_LOGIN}@{SOURCE_LOGIN}.{SERVER_NAME}",
        "params": [f"#{ROOM}", text],
        "origin": None,
    }


def edge_line(message: dict) -> bytes:
    """The tagged line chat.edge.Edge.deliver writes for `message` (it adds the server-time tag)."""
    tags = dict(message["tags"])
    ts = tags["tmi-sent-ts"]
    tags["time"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(ts) / 1000)) + f".{int(ts) % 1000:03d}Z"
    return irc.encode(message["command"], *message["params"], tags=tags, source=message["source"], trailing=True)


def text_for(line_bytes: int) -> str:
    """Message text that makes the edge's tagged line exactly `line_bytes` long (CRLF included)."""
    probe = "fanout "
    base = len(edge_line(make_message(1, int(time.time() * 1000), probe)))
    if base > line_bytes:
        raise SystemExit(f"--line-bytes {line_bytes} is shorter than the tags alone ({base} bytes)")
    filler = ("Kappa PogChamp fanout bench " * 20)
    return (probe + filler)[:len(probe) + line_bytes - base]


# ---------------------------------------------------------------------------------------------
# Subscriber process
# ---------------------------------------------------------------------------------------------

_RBUF = bytearray(256 * 1024)        # one read buffer for every connection: reads are sequential
_RVIEW = memoryview(_RBUF)
_TS_RE = re.compile(rb"tmi-sent-ts=(\d+)")


class _SubStats:
    def __init__(self) -> None:
        self.lines = 0
        self.bytes = 0
        self.first = 0.0
        self.last = 0.0
        self.lost = 0
        self.latencies: list[float] = []
        self.line_len = 0
        self.stopping = False


class Subscriber(asyncio.BufferedProtocol):
    def __init__(self, st: _SubStats, hello: bytes, sampled: bool):
        self.st = st
        self.hello = hello
        self.sampled = sampled
        self.joined = False
        self.pre = b""
        self.tail = b""
        self.transport = None
        self.joined_fut = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.hello)

    def get_buffer(self, sizehint: int):
        return _RVIEW

    def buffer_updated(self, nbytes: int) -> None:
        st = self.st
        if self.joined and not self.sampled:   # the hot path: count newlines, nothing else
            st.lines += _RBUF.count(b"\n", 0, nbytes)
            st.bytes += nbytes
            st.last = time.monotonic()
            return
        self._slow(bytes(_RVIEW[:nbytes]))

    def _slow(self, data: bytes) -> None:
        if not self.joined:
            self.pre += data
            i = self.pre.find(b" 366 ")
            nl = self.pre.find(b"\n", i) if i >= 0 else -1
            if nl < 0:
                if len(self.pre) > 64 * 1024:
                    self.pre = self.pre[-4096:]
                return
            data, self.pre = self.pre[nl + 1:], b""
            self.joined = True
            if not self.joined_fut.done():
                self.joined_fut.set_result(None)
            if not data:
                return
        st = self.st
        now = time.monotonic()
        st.bytes += len(data)
        if not self.sampled:
            st.lines += data.count(b"\n")
            st.last = now
            return
        now_ms = time.time() * 1000.0
        buf = self.tail + data
        start = 0
        n = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            m = _TS_RE.search(buf, start, nl)
            if m:
                st.latencies.append(now_ms - int(m.group(1)))
            if not st.line_len:
                st.line_len = nl + 1 - start
            n += 1
            start = nl + 1
        self.tail = buf[start:]
        st.lines += n
        st.last = now

    def eof_received(self):
        return False

    def connection_lost(self, exc) -> None:
        if not self.st.stopping:
            self.st.lost += 1
        if not self.joined_fut.done():
            self.joined_fut.set_exception(ConnectionError(f"closed before JOIN completed: {exc!r}"))


async def subscribers_worker(args) -> None:
    raise_nofile()
    loop = asyncio.get_running_loop()
    st = _SubStats()
    host, port = args.target.rsplit(":", 1)
    sem = asyncio.Semaphore(args.connect_concurrency)
    transports = []
    t0 = time.monotonic()

    async def one(i: int) -> None:
        nick = f"justinfan{args.nick_base}{i:05d}"
        hello = f"CAP REQ :twitch.tv/tags\r\nNICK {nick}\r\nJOIN #{ROOM}\r\n".encode()
        async with sem:
            for attempt in range(5):
                try:
                    tr, proto = await loop.create_connection(
                        lambda: Subscriber(st, hello, i < args.sample), host, int(port),
                        local_addr=(args.source, 0) if args.source else None)
                    break
                except OSError:
                    if attempt == 4:
                        raise
                    await asyncio.sleep(0.2 * (attempt + 1))
            transports.append(tr)
            await asyncio.wait_for(proto.joined_fut, 60)

    try:
        await asyncio.gather(*(one(i) for i in range(args.n)))
    except Exception as exc:
        print("FAILED " + json.dumps({"error": repr(exc), "connected": len(transports)}), flush=True)
        for tr in transports:
            tr.abort()
        return
    print("READY " + json.dumps({"joined": args.n, "connect_s": round(time.monotonic() - t0, 3)}), flush=True)
    st.lines, st.bytes, st.first = 0, 0, 0.0
    # First receive: the first line counted after READY. Track it cheaply by polling the counter.
    stop_line = loop.run_in_executor(None, sys.stdin.readline)
    while not stop_line.done():
        if not st.first and st.lines:
            st.first = time.monotonic()
            break
        await asyncio.sleep(0.0005)
    first_lines = st.lines          # lines that arrived before st.first was stamped (<= 0.5 ms worth)
    await stop_line
    # Drain: wait until nothing has arrived for args.quiet seconds.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        before = st.bytes
        await asyncio.sleep(args.quiet)
        if st.bytes == before:
            break
    st.stopping = True
    lat = sorted(st.latencies)

    def pct(p: float):
        return round(lat[min(len(lat) - 1, int(p / 100 * len(lat)))], 2) if lat else None

    elapsed = (st.last - st.first) if st.first and st.last > st.first else 0.0
    counted = st.lines - first_lines
    print("DONE " + json.dumps({
        "received": st.lines, "elapsed_s": round(elapsed, 4),
        "deliveries_per_s": round(counted / elapsed) if elapsed else 0,
        "lost_subscribers": st.lost, "line_bytes": st.line_len, "latency_samples": len(lat),
        "p50_ms": pct(50), "p99_ms": pct(99), "max_ms": round(lat[-1], 2) if lat else None,
    }), flush=True)
    for tr in transports:
        tr.abort()
    await asyncio.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# Reference broadcaster process
# ---------------------------------------------------------------------------------------------

class _RefServer:
    def __init__(self) -> None:
        self.clients: list[RefClient] = []
        self.paused = 0
        self.resumed = asyncio.Event()


class RefClient(asyncio.Protocol):
    def __init__(self, srv: _RefServer):
        self.srv = srv
        self.transport = None
        self.pre = b""
        self.joined = False
        self.closed = False
        self.is_paused = False
        self.out: list[bytes] = []

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=256 * 1024)   # the edge's limit

    def data_received(self, data: bytes) -> None:
        if self.joined:
            return
        self.pre += data
        if b"JOIN" in self.pre:
            self.joined = True
            self.pre = b""
            self.transport.write(f":ref.bench 366 justinfan #{ROOM} :End of /NAMES list\r\n".encode())
            self.srv.clients.append(self)

    def pause_writing(self) -> None:
        self.is_paused = True
        self.srv.paused += 1

    def resume_writing(self) -> None:
        if self.is_paused:
            self.is_paused = False
            self.srv.paused -= 1
            if not self.srv.paused:
                self.srv.resumed.set()

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.resume_writing()
        if self.joined:
            try:
                self.srv.clients.remove(self)
            except ValueError:
                pass


async def _ref_broadcast(srv: _RefServer, variant: str, duration: float, batch: int, limit: int,
                         text: str) -> dict:
    clients = [c for c in srv.clients if not c.closed]
    seq, sent, stalls, turns = 1, 0, 0, 0
    end = time.monotonic() + duration
    while time.monotonic() < end and (not limit or sent < limit):
        if srv.paused:
            stalls += 1
            srv.resumed.clear()
            try:
                await asyncio.wait_for(srv.resumed.wait(), 5)
            except asyncio.TimeoutError:
                pass
            continue
        ts = int(time.time() * 1000)
        lines = [edge_line(make_message(seq + k, ts, text)) for k in range(batch)]
        seq += batch
        if variant == "per_message":
            for line in lines:
                for c in clients:
                    if not c.closed:
                        c.transport.write(line)
        elif variant == "per_client":
            for line in lines:
                for c in clients:
                    c.out.append(line)
            for c in clients:
                if not c.closed:
                    c.transport.write(b"".join(c.out))
                c.out.clear()
        elif variant == "shared":
            data = b"".join(lines)
            for c in clients:
                if not c.closed:
                    c.transport.write(data)
        else:
            raise ValueError(variant)
        sent += batch
        turns += 1
        await asyncio.sleep(0)   # one loop turn: let the sockets drain
    return {"sent": sent, "turns": turns, "stalls": stalls, "clients": len(clients)}


async def reference_server(args) -> None:
    raise_nofile()
    loop = asyncio.get_running_loop()
    srv = _RefServer()
    host, port = args.listen.rsplit(":", 1)
    server = await loop.create_server(lambda: RefClient(srv), host, int(port), backlog=4096, reuse_address=True)
    print("LISTENING", flush=True)
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line or line.strip() == "quit":
                break
            _, variant, duration, batch, limit, line_bytes = line.split()
            res = await _ref_broadcast(srv, variant, float(duration), int(batch), int(limit),
                                       text_for(int(line_bytes)))
            print("DONE " + json.dumps(res), flush=True)
    finally:
        server.close()
        for c in list(srv.clients):
            c.transport.abort()


# ---------------------------------------------------------------------------------------------
# Orchestration
# ---------------------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except OSError:
        return 0.0


async def read_tagged(proc, tags: tuple[str, ...], timeout: float, what: str) -> tuple[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"{what}: no {'/'.join(tags)} within {timeout:g}s")
        raw = await asyncio.wait_for(proc.stdout.readline(), left)
        if not raw:
            raise RuntimeError(f"{what}: exited (rc={proc.returncode}) before {'/'.join(tags)}")
        text = raw.decode("utf-8", "replace").strip()
        tag, _, rest = text.partition(" ")
        if tag in tags:
            return tag, (json.loads(rest) if rest else {})


async def stop_proc(proc, name: str) -> None:
    if proc is None or proc.returncode is not None:
        return
    try:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 5)
    except ProcessLookupError:
        pass
    except asyncio.TimeoutError:
        log(f"{name} did not stop on SIGTERM; killing it")
        proc.kill()
        await proc.wait()


async def wait_healthz(url: str, proc, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    loop = asyncio.get_running_loop()
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"edge exited with rc={proc.returncode} before /healthz answered")
        try:
            def get():
                with urllib.request.urlopen(url, timeout=1) as r:
                    return r.status
            if await loop.run_in_executor(None, get) == 200:
                return
        except OSError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:g}s")


async def publish(url: str, args, text: str, source: str, token: str) -> dict:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=args.posters, local_addr=(source, 0))
    published, posts, refused = 0, 0, 0
    seq = [1]
    end = time.monotonic() + args.duration

    async def poster(session) -> None:
        nonlocal published, posts, refused
        while time.monotonic() < end and (not args.messages or published < args.messages):
            ts = int(time.time() * 1000)
            items = [make_message(seq[0] + k, ts, text) for k in range(args.batch)]
            seq[0] += args.batch
            body = json.dumps({"items": items}).encode()
            async with session.post(url, data=body, headers={"Content-Type": "application/json",
                                                             "Authorization": f"Bearer {token}"}) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"/v1/deliver answered HTTP {resp.status}: {(await resp.text())[:200]}")
                results = (await resp.json())["results"]
            refused += results.count(False)
            published += len(items)
            posts += 1

    t0 = time.monotonic()
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(poster(session) for _ in range(args.posters)))
    return {"sent": published, "posts": posts, "refused": refused, "publish_s": round(time.monotonic() - t0, 3)}


async def one_run(args, run_no: int, rnd: int, kind: str, variant: str | None, target: str,
                  server_pid: int, ref_proc, deliver_url: str, text: str, subnet: str, token: str) -> dict:
    name = "edge" if kind == "edge" else f"reference/{variant}"
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.fanout", "--subscribers-worker", "--target", target,
        "--subscribers", str(args.subscribers), "--sample", str(args.sample),
        "--nick-base", str(run_no), "--source", f"{subnet}.50",
        cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    try:
        tag, ready = await read_tagged(worker, ("READY", "FAILED"), 180, "subscriber process")
        if tag == "FAILED":
            raise RuntimeError(f"subscribers could not join {name}: {ready}")
        await asyncio.sleep(0.3)   # let the JOIN replies' stragglers settle
        c0s, c0w, w0 = cpu_seconds(server_pid), cpu_seconds(worker.pid), time.monotonic()
        if kind == "edge":
            pub = await publish(deliver_url, args, text, f"{subnet}.60", token)
        else:
            ref_proc.stdin.write(f"run {variant} {args.duration} {args.batch} {args.messages or 0} "
                                 f"{args.line_bytes}\n".encode())
            await ref_proc.stdin.drain()
            _, pub = await read_tagged(ref_proc, ("DONE",), args.duration + 120, "reference broadcaster")
        c1s, c1w, w1 = cpu_seconds(server_pid), cpu_seconds(worker.pid), time.monotonic()
        worker.stdin.write(b"stop\n")
        await worker.stdin.drain()
        _, done = await read_tagged(worker, ("DONE",), 60, "subscriber process")
        c2s = cpu_seconds(server_pid)
        await asyncio.wait_for(worker.wait(), 30)
    finally:
        await stop_proc(worker, "subscriber process")
    wall = w1 - w0
    expected = pub["sent"] * args.subscribers
    res = {
        "round": rnd, "kind": kind, "variant": variant,
        "deliveries_per_s": done["deliveries_per_s"], "received": done["received"], "expected": expected,
        "elapsed_s": done["elapsed_s"], "messages": pub["sent"],
        "p50_ms": done["p50_ms"], "p99_ms": done["p99_ms"], "max_ms": done["max_ms"],
        "latency_samples": done["latency_samples"], "line_bytes": done["line_bytes"],
        "lost_subscribers": done["lost_subscribers"],
        "server_cpu_pct": round(100 * (c1s - c0s) / wall, 1) if wall else None,
        "server_cpu_us_per_delivery": round(1e6 * (c2s - c0s) / done["received"], 3) if done["received"] else None,
        "subscriber_cpu_pct": round(100 * (c1w - c0w) / wall, 1) if wall else None,
        "connect_s": ready["connect_s"],
    }
    res.update({k: v for k, v in pub.items() if k in ("posts", "refused", "stalls", "turns")})
    log(f"round {rnd} {name}: {res['deliveries_per_s']:,}/s ({res['received']:,} of {expected:,} lines "
        f"in {res['elapsed_s']}s) p99 {res['p99_ms']} ms, server cpu {res['server_cpu_pct']}% "
        f"({res['server_cpu_us_per_delivery']} us/delivery), subscribers cpu {res['subscriber_cpu_pct']}%, "
        f"lost {res['lost_subscribers']}")
    return res


async def orchestrate(args) -> dict:
    import yaml

    raise_nofile()
    subnet = loopback.free_prefix()
    work = Path(tempfile.mkdtemp(prefix="bench-fanout-", dir="/tmp"))
    doc = {
        "hosts": {"chat1": {"address": f"{subnet}.1"}, "redis1": {"address": f"{subnet}.21"}},
        "clusters": {"main": {"hosts": ["chat1"]}},
        "redis": {"shards": [{"name": "shard0", "host": "redis1", "port": 6379}]},
        "controlplane": {"listen": {"address": f"{subnet}.100"}},
    }
    cfg_path = work / "cluster.yaml"
    cfg_path.write_text(yaml.safe_dump(doc))
    from cluster import clusterfile
    spec = clusterfile.load(cfg_path).spec
    edge_cfg = spec.clusters["main"].services.edge
    # The edge's /v1/deliver takes the internal token, as the exchange sends it; the edge inherits it.
    token = os.environ.setdefault(spec.secrets.internal_token_env, secrets.token_urlsafe(32))
    edge_addr = f"{subnet}.1"
    ref_addr = f"{subnet}.2:{edge_cfg.irc_port}"
    text = text_for(args.line_bytes)
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in VARIANTS:
            raise SystemExit(f"unknown variant {v!r} (known: {', '.join(VARIANTS)})")
    if "per_client" not in variants:
        variants.insert(0, "per_client")
    log(f"work dir {work}, subnet {subnet}.0/24, {args.subscribers} subscribers, {args.rounds} rounds x "
        f"(edge + reference {', '.join(variants)}), {args.duration:g}s each, batch {args.batch}, "
        f"{args.posters} poster(s), {args.line_bytes}-byte lines")

    edge_log = open(work / "edge.log", "wb")
    edge = ref = None
    runs: list[dict] = []
    try:
        edge = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chat.edge", "--config", str(cfg_path), "--host", "chat1",
            cwd=ROOT, stdout=edge_log, stderr=asyncio.subprocess.STDOUT)
        ref = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.fanout", "--reference-server", "--listen", ref_addr,
            cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        await wait_healthz(f"http://{edge_addr}:{edge_cfg.http_port}/healthz", edge)
        await read_tagged(ref, ("LISTENING",), 30, "reference broadcaster")
        log(f"edge pid {edge.pid} on {edge_addr} (irc {edge_cfg.irc_port}, http {edge_cfg.http_port}); "
            f"reference pid {ref.pid} on {ref_addr}")
        deliver_url = f"http://{edge_addr}:{edge_cfg.http_port}/v1/deliver"
        run_no = 0
        for rnd in range(1, args.rounds + 1):
            order = [("edge", None)] + [("reference", v) for v in variants]
            if rnd % 2 == 0:
                order.reverse()
            for kind, variant in order:
                run_no += 1
                if kind == "edge":
                    target, pid = f"{edge_addr}:{edge_cfg.irc_port}", edge.pid
                else:
                    target, pid = ref_addr, ref.pid
                runs.append(await one_run(args, run_no, rnd, kind, variant, target, pid, ref,
                                          deliver_url, text, subnet, token))
                if edge.returncode is not None:
                    raise RuntimeError(f"edge exited with rc={edge.returncode}; see {work / 'edge.log'}")
    except BaseException:
        edge_log.flush()
        tail = (work / "edge.log").read_text(errors="replace").splitlines()[-20:]
        log("edge log tail:\n  " + "\n  ".join(tail))
        raise
    finally:
        if ref is not None and ref.returncode is None:
            try:
                ref.stdin.write(b"quit\n")
                await ref.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                pass
        await stop_proc(ref, "reference broadcaster")
        await stop_proc(edge, "edge")
        edge_log.close()

    def med(kind: str, variant: str | None, key: str):
        vals = [r[key] for r in runs if r["kind"] == kind and r["variant"] == variant and r[key] is not None]
        return round(statistics.median(vals), 3) if vals else None

    edge_rate = med("edge", None, "deliveries_per_s")
    ref_rates = {v: med("reference", v, "deliveries_per_s") for v in variants}
    ref_rate = ref_rates["per_client"]
    edge_us = med("edge", None, "server_cpu_us_per_delivery")
    ref_us = med("reference", "per_client", "server_cpu_us_per_delivery")
    return {
        "bench": "fanout",
        "edge_deliveries_per_s": round(edge_rate),
        "reference_deliveries_per_s": round(ref_rate),
        "ratio": round(edge_rate / ref_rate, 3) if ref_rate else None,
        "p99_ms": med("edge", None, "p99_ms"),
        "p50_ms": med("edge", None, "p50_ms"),
        "reference_p99_ms": med("reference", "per_client", "p99_ms"),
        "subscribers": args.subscribers,
        "rounds": args.rounds,
        "duration_s": args.duration,
        "batch": args.batch,
        "posters": args.posters,
        "line_bytes": args.line_bytes,
        "baseline": "reference per_client: plain uvloop server, each client's lines of one loop turn "
                    "joined and written once",
        "reference_variants_deliveries_per_s": {v: round(r) for v, r in ref_rates.items()},
        "ratio_to_variant": {v: round(edge_rate / r, 3) for v, r in ref_rates.items() if r},
        "edge_server_cpu_us_per_delivery": edge_us,
        "reference_server_cpu_us_per_delivery": ref_us,
        # Less sensitive to the neighbours' load than the rates: server CPU per line, reference / edge.
        "cpu_efficiency_ratio": round(ref_us / edge_us, 3) if edge_us and ref_us else None,
        "edge_lost_subscribers": sum(r["lost_subscribers"] for r in runs if r["kind"] == "edge"),
        "per_round": runs,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the result as one JSON line (always the last line)")
    ap.add_argument("--subscribers", "-n", dest="n", type=int, default=2000)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of publishing per run")
    ap.add_argument("--messages", type=int, default=0, help="stop a run after this many messages (0: by --duration)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=10, help="messages per POST / per reference loop turn")
    ap.add_argument("--posters", type=int, default=2, help="concurrent keepalive POSTers to /v1/deliver")
    ap.add_argument("--line-bytes", type=int, default=300, help="bytes of each delivered line, CRLF included")
    ap.add_argument("--sample", type=int, default=20, help="subscribers whose every line is timed")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help=f"reference variants to run (per_client always runs); of {','.join(VARIANTS)}")
    # internal roles
    ap.add_argument("--subscribers-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--reference-server", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--target", help=argparse.SUPPRESS)
    ap.add_argument("--listen", help=argparse.SUPPRESS)
    ap.add_argument("--source", help=argparse.SUPPRESS)
    ap.add_argument("--nick-base", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--connect-concurrency", type=int, default=200, help=argparse.SUPPRESS)
    ap.add_argument("--quiet", type=float, default=0.5, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.subscribers = args.n

    if args.subscribers_worker:
        run_loop(subscribers_worker(args))
        return
    if args.reference_server:
        run_loop(reference_server(args))
        return
    result = run_loop(orchestrate(args))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
