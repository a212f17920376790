"""Shared test helpers: real binaries (failing with the install command when missing), a private
loopback subnet per test so clusters never collide with `make run` or each other, and a real
`chatops up` supervisor process that is always torn down."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from cluster import binaries, loopback, state
from cluster.rundir import RunDir

REPO = Path(__file__).resolve().parent.parent


def require(name: str) -> str:
    """Fail (never skip) when a binary the test drives for real is missing."""
    try:
        return binaries.require(name)
    except binaries.MissingBinary as exc:
        pytest.fail(str(exc), pytrace=False)


def free_subnet() -> str:
    """A random 127.A.B prefix of our own: every simulated host of a test lives in it."""
    return loopback.free_prefix()


@pytest.fixture
def subnet() -> str:
    return free_subnet()


@pytest.fixture
def run_dir():
    """A short run directory: Unix socket paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="co-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def small_cluster(subnet: str, *, replica: bool = False, **overrides) -> dict:
    """Two clusters (one chat host each) and two shards on two Redis hosts, inside `subnet`."""
    shards = [{"name": "shard0", "host": "redis1", "port": 6379},
              {"name": "shard1", "host": "redis2", "port": 6379}]
    if replica:
        shards[0]["replica"] = {"host": "redis2", "port": 6380}
    doc = {
        "version": 1,
        "hosts": {"chat1": {"address": f"{subnet}.1"}, "chat-testing": {"address": f"{subnet}.9"},
                  "redis1": {"address": f"{subnet}.21"}, "redis2": {"address": f"{subnet}.22"}},
        "clusters": {"main": {"hosts": ["chat1"], "rooms": ["lobby"]},
                     "testing": {"hosts": ["chat-testing"], "rooms": ["testroom"]}},
        "redis": {"shards": shards},
        "haproxy": {"check_interval": "500ms", "hard_stop_after": "30s"},
        "controlplane": {"listen": {"address": f"{subnet}.100", "port": 5000}},
    }
    for key, value in overrides.items():
        doc[key] = value
    return doc


def write_cluster(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def chatops(*args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "controlplane.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, **kw)


def descendants(pid: int) -> set[int]:
    """Every live process below `pid`, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def processes_mentioning(text: str) -> set[int]:
    """Live, non-zombie processes whose command line contains `text` (a run dir or address)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmd and state != "Z":
            found.add(int(entry))
    return found


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def read_state(run: Path) -> dict | None:
    """The supervisor's state.json through the one reader the product uses (cluster.state)."""
    return state.read_state(RunDir(Path(run)))


class RunningCluster:
    def __init__(self, proc: subprocess.Popen, run: Path, config: Path, log: Path):
        self.proc, self.run, self.config, self.log = proc, run, config, log

    @property
    def state(self) -> dict:
        return read_state(self.run)

    def pid_of(self, name: str) -> int:
        return next(p["pid"] for p in self.state["processes"] if p["name"] == name)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def cluster_up(config: Path, run: Path, timeout: float = 30.0, *, controlplane: bool = False,
               traffic: bool = False):
    """Run `chatops up` in the foreground as a child, as an operator would; always stop it.
    The control plane and the load generator run only when asked for."""
    require("redis-server")
    require("haproxy")
    log = run.parent / f"{run.name}-up.log"
    flags = (["--controlplane"] if controlplane else ["--no-controlplane"]) + (["--traffic"] if traffic else [])
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "controlplane.cli", "up", "--config", str(config), "--run-dir", str(run),
             *flags],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
            # Without another cluster's secrets (secrets_in_env of an enclosing one): each cluster
            # generates its own into its run dir, so run_secrets(run) is always what it runs with.
            env={k: v for k, v in os.environ.items() if k not in secret_variables()})
    rc = RunningCluster(proc, run, config, log)
    try:
        def ready():
            if proc.poll() is not None:
                raise AssertionError(f"chatops up exited with {proc.returncode}:\n{rc.output()}")
            state = read_state(run)
            return state and state.get("ready")
        wait_for(ready, timeout, what="the cluster to come up")
        with secrets_in_env(run):
            yield rc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pid in leftovers(run, config):
            os.kill(pid, signal.SIGKILL)
        log.unlink(missing_ok=True)


@contextmanager
def secrets_in_env(run: Path):
    """The secrets `chatops up` generated, in this process's environment while the cluster runs,
    as `up` hands them to what it starts: in-process clients of the cluster (ShardedCache.for_host,
    the collectors, the control plane's actions) then log in as they would there. An enclosing
    cluster's values come back afterwards."""
    mine = run_secrets(run)
    before = {k: os.environ.get(k) for k in mine}
    os.environ.update(mine)
    try:
        yield
    finally:
        for k, old in before.items():
            if old is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = old


def secret_variables() -> set[str]:
    """The default names of the secrets: variables, which every test cluster file keeps."""
    from cluster import secrets
    from cluster.spec import Secrets
    return {getattr(Secrets(), s.field) for s in secrets.SECRETS}


@contextmanager
def crash_loop(c: RunningCluster, name: str):
    """SIGKILL process `name` now, and every process the supervisor restarts in its place until the
    block ends, as a crash loop would: the supervisor restarts within 0-0.5 s, faster than one
    scrape, so a single kill may never be seen. Yields (wall, monotonic) time of the first kill."""
    stop = threading.Event()
    first = c.pid_of(name)
    killed = {first}

    def keep_it_down():
        while not stop.is_set():
            try:
                pid = c.pid_of(name)
            except (TypeError, StopIteration, KeyError):     # state.json mid-rewrite
                pid = None
            if pid is not None and pid not in killed:
                killed.add(pid)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.02)

    started = (time.time(), time.monotonic())
    os.kill(first, signal.SIGKILL)
    killer = threading.Thread(target=keep_it_down, daemon=True)
    killer.start()
    try:
        yield started
    finally:
        stop.set()
        killer.join(5)


def leftovers(run: Path, config: Path) -> set[int]:
    """Processes still running from this cluster: HAProxy names the run dir in its command line,
    the chat services the cluster file, and redis-server retitles itself `redis-server <address>:<port>`."""
    doc = yaml.safe_load(config.read_text())
    found = processes_mentioning(str(run)) | processes_mentioning(str(config))
    for host in doc["hosts"].values():
        found |= processes_mentioning(f"{host['address']}:")
    return found


@contextmanager
def live_controlplane(traffic: bool = True, patch=None, **overrides):
    """A small cluster (2 chat hosts, 2 shards) with its control plane and, by default, traffic,
    started as `chatops up` runs them; yields (RunningCluster, base URL). Scrapes every second
    (CLIENT LIST every 2 s). `patch(doc)` may change the cluster file's dict before it is written
    (thresholds, services...). For module-scoped fixtures: it makes its own subnet and run dir,
    and removes them afterwards."""
    subnet = free_subnet()
    run = Path(tempfile.mkdtemp(prefix="co-", dir="/tmp"))
    doc = small_cluster(subnet, **overrides)
    doc.setdefault("controlplane", {}).setdefault("scrape", {}).update(
        {"interval": "1s", "client_list_interval": "2s"})
    if patch is not None:
        patch(doc)
    config = write_cluster(run.parent / f"{run.name}.yaml", doc)
    listen = doc["controlplane"]["listen"]
    base = f"http://{listen['address']}:{listen['port']}"
    try:
        with cluster_up(config, run, timeout=60, controlplane=True, traffic=traffic) as c:
            yield c, base
    finally:
        shutil.rmtree(run, ignore_errors=True)
        config.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def live_small_cluster():
    """small_cluster() running on a free subnet for one test module: (RunningCluster, its spec, RunDir)."""
    from cluster import clusterfile
    run = Path(tempfile.mkdtemp(prefix="co-", dir="/tmp"))
    config = write_cluster(run.parent / f"{run.name}.yaml", small_cluster(free_subnet()))
    try:
        with cluster_up(config, run) as rc:
            yield rc, clusterfile.load(config).spec, RunDir(run)
    finally:
        shutil.rmtree(run, ignore_errors=True)
        config.unlink(missing_ok=True)


def open_idle(address: str, port: int, n: int) -> list:
    """n connections to a shard listener that each PING once and then sit idle: the testing
    cluster's leak of 2014. The caller closes them."""
    import socket
    socks = []
    try:
        for _ in range(n):
            s = socket.create_connection((address, port), timeout=5)
            s.sendall(b"PING\r\n")
            socks.append(s)
        replies = {s.recv(16) for s in socks}
    except BaseException:
        for s in socks:
            s.close()
        raise
    assert replies == {b"+PONG\r\n"}, replies
    return socks


def drop_at_maxclients(admin, address: str, slack: int = 3) -> int:
    """The talk's shard at maxclients, made exact: `address`'s connections (a chat host's clue,
    through its HAProxy listener) are killed after maxclients is lowered to what stays connected
    without them, less `slack` so a few other clients leaving meanwhile free no slot; reconnecting,
    that clue is refused. Lowering maxclients closes nobody. Returns how many were killed (clue
    holds up to services.clue.cache_max_conns to a shard, more while JOINs ask for room states)."""
    from collectors import redis as rc
    from controlplane.remediation.kill_clients import parse_clients

    mine = [cl["id"] for cl in parse_clients(admin.call("CLIENT", "LIST")) if cl["ip"] == address]
    assert mine, f"{address} holds no connection to the shard"
    connected = rc.parse_info(admin.call("INFO", "clients"))["clients"]["connected_clients"]
    assert admin.call("CONFIG", "SET", "maxclients", str(connected - len(mine) - slack)) == "OK"
    for cid in mine:
        admin.call("CLIENT", "KILL", "ID", str(cid))
    return len(mine)


def start_loadgen(c: RunningCluster, source: str, *, clients: int, duration: float, room: str = "lobby"):
    """`chatops loadgen --json` against a running cluster, from its own loopback address, with
    two senders at 10 messages/s into `room`: the traffic a change must not disturb. Read its
    report with `loadgen_report(proc)`."""
    return subprocess.Popen(
        [sys.executable, "-m", "controlplane.cli", "loadgen", "--config", str(c.config), "--clients", str(clients),
         "--senders", "2", "--rate", "10", "--duration", f"{duration:g}", "--rooms", room,
         "--source-address", source, "--json", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        # The run dir, for its generated secrets: the loadgen creates its senders as Redis user clue.
        env={**os.environ, "CHATOPS_RUN_DIR": str(c.run)})


def stop_loadgen(proc: subprocess.Popen, timeout: float = 60) -> dict:
    """End a loadgen started with a generous `duration` once the change it watches is done (it
    stops sending on SIGTERM, then collects and reports as after a timed run): a test waits for
    its own work, not for a guess of how long that takes."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return loadgen_report(proc, timeout)


def loadgen_report(proc: subprocess.Popen, timeout: float = 60) -> dict:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert out.strip(), f"loadgen printed no report:\n{err[-2000:]}"
    return json.loads(out.strip().splitlines()[-1])


@contextmanager
def env_var(name: str, value: str):
    """An environment variable set inside the block (module-scoped fixtures cannot use
    monkeypatch), and put back as it was afterwards."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield value
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def api_token(token: str):
    """CHATOPS_API_TOKEN set for a control plane started inside the block."""
    return env_var("CHATOPS_API_TOKEN", token)


def api_json(base: str, method: str, path: str, body=None, *, token: str, timeout: float = 300) -> tuple[int, dict]:
    """One request to the control plane's /api/v1`path` with the bearer token: (status, JSON body)."""
    import http.client
    from urllib.parse import urlsplit
    u = urlsplit(base)
    headers = {"Authorization": f"Bearer {token}"}
    data = None
    if body is not None:
        data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request(method, "/api/v1" + path, body=data, headers=headers)
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"{}")
    finally:
        conn.close()


def run_secrets(run: Path) -> dict[str, str]:
    """The internal secrets `chatops up` generated for a cluster in `run` (cluster/secrets.py),
    by variable name: what a test needs to talk to clue, the exchange or Redis directly."""
    from cluster import secrets
    return secrets.read_file(RunDir(run))


def redis_auth(run: Path | None = None, user: str = "chatops") -> dict[str, str]:
    """redis.Redis(**redis_auth()): log in as the Redis ACL user `user` (chatops, clue or
    replication), with the password `chatops up` generated for the cluster in `run`; without `run`,
    the running cluster's (cluster_up puts them in the environment)."""
    from cluster import redis_acl, secrets
    from cluster.spec import Secrets
    name = getattr(Secrets(), redis_acl.PASSWORD_FIELDS[user])
    found = secrets.read_file(RunDir(run)).get(name) if run is not None else os.environ.get(name)
    assert found, f"no {name}: is a cluster up (cluster_up)?"
    return {"username": user, "password": found}


def redis_creds(run: Path | None = None, user: str = "chatops"):
    """The same as a cluster.redis_acl.Credentials, for collectors.resp.Conn(..., auth=) and
    ShardedCache(auth=)."""
    from cluster.redis_acl import Credentials
    a = redis_auth(run, user)
    return Credentials(a["username"], a["password"])
