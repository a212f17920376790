"""Rendering each chat host's HAProxy config from the cluster file, and checking it with `haproxy -c`.

Rendering is pure (cluster file in, text out). The cluster file's validation already refuses
values that could break a config line; the template environment refuses them a second time,
so a future field that skips validation still cannot inject a line. Paths (the run directory is
anywhere the user likes, spaces included) are the one kind of value that is quoted instead:
`{{ path | hquote }}`.
"""

from __future__ import annotations

import difflib
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import jinja2

from cluster import binaries
from cluster.rundir import RunDir
from cluster.spec import ClusterFile, describe_unsafe


class RenderError(Exception):
    pass


class _Quoted(str):
    """A value already quoted into exactly one HAProxy config word."""


# Characters a path may hold and still be one plain HAProxy config word, written as it is (so the
# configs of ordinary run directories stay byte for byte what they were).
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./:+@%=-")


def haproxy_quote(value) -> _Quoted:
    """One HAProxy config word holding the path `value` verbatim, whatever its spaces, quotes,
    '#' or backslashes: as it is when every character is plain, else single-quoted (no escapes
    there), a `'` written as `'\\''` (close, escaped quote, reopen: HAProxy joins adjacent parts
    into one word, as a shell does). Refused: control characters, which no config line can carry,
    and '$', which HAProxy expands as an environment variable in addresses even inside quotes."""
    value = str(value)
    bad = next((c for c in value if ord(c) < 0x20 or ord(c) == 0x7f or c == "$"), None)
    if bad is not None or not value:
        raise RenderError(f"refusing to render {value!r} into an HAProxy config: "
                          + (f"contains {bad!r}, which HAProxy cannot take in a path" if bad else "empty"))
    if all(c in _PLAIN for c in value):
        return _Quoted(value)
    return _Quoted("'" + value.replace("'", "'\\''") + "'")


def _finalize(value):
    """Every {{ }} in the template is one config token: refuse anything that is not."""
    if isinstance(value, _Quoted):
        return value
    if isinstance(value, str):
        unsafe = describe_unsafe(value)
        if unsafe or not value:
            raise RenderError(f"refusing to render {value!r} into an HAProxy config: {unsafe or 'empty'}")
    return value


_env = jinja2.Environment(
    loader=jinja2.PackageLoader("controlplane.haproxy", "."),
    undefined=jinja2.StrictUndefined,
    finalize=_finalize,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    autoescape=False,  # the output is an HAProxy config, not HTML
)
_env.filters["hquote"] = haproxy_quote


# Client addresses each public frontend tracks for its per-source limit (about 50 bytes each, taken
# as addresses arrive). A full table tracks no new address, so beyond it the limit does not apply.
SOURCE_TABLE_SIZE = "100k"


def check_limits(cf: ClusterFile, cluster: str) -> None:
    """The per-proxy connection limits must fit the global maxconn, leaving clue its connections to
    every shard: otherwise a flood on the public frontends could starve chat of Redis."""
    hp = cf.haproxy
    problems = []
    if hp.edge_maxconn_per_source > hp.edge_maxconn:
        problems.append(f"haproxy.edge_maxconn_per_source ({hp.edge_maxconn_per_source}) is over "
                        f"haproxy.edge_maxconn ({hp.edge_maxconn}), so it would never apply")
    for key in ("listener_maxconn", "stats_maxconn"):
        value = getattr(hp, key)
        if value is not None and value > hp.maxconn:
            problems.append(f"haproxy.{key} ({value}) is over haproxy.maxconn ({hp.maxconn})")
    clue = cf.clusters[cluster].services.clue.cache_max_conns
    needed = 2 * hp.edge_maxconn + hp.stats_maxconn + len(cf.redis.shards) * clue
    if needed > hp.maxconn:
        problems.append(
            f"haproxy.maxconn ({hp.maxconn}) must hold both public frontends (2 x edge_maxconn "
            f"{hp.edge_maxconn}), the stats frontend (stats_maxconn {hp.stats_maxconn}) and clue's "
            f"connections to every shard ({len(cf.redis.shards)} shards x cache_max_conns {clue} of "
            f"cluster {cluster}): {needed} in all; raise maxconn or lower edge_maxconn")
    if problems:
        raise RenderError("; ".join(problems))


def render(cf: ClusterFile, host: str, run: RunDir) -> str:
    cluster = cf.cluster_of(host)
    if cluster is None:
        raise RenderError(f"{host!r} is not a chat host of any cluster; only chat hosts run HAProxy")
    check_limits(cf, cluster)
    c = cf.clusters[cluster]
    listeners = []
    for i, shard in enumerate(cf.redis.shards):
        listeners.append({
            "shard": shard.name, "port": cf.listener_port(i),
            "address": cf.address(shard.host), "server_port": shard.port,
            "replica_address": cf.address(shard.replica.host) if shard.replica else None,
            "replica_port": shard.replica.port if shard.replica else None,
        })
    edges = [{"host": h, "address": cf.address(h), "irc_port": c.services.edge.irc_port,
              "ws_port": c.services.edge.ws_port} for h in c.hosts]
    return _env.get_template("haproxy.cfg.j2").render(
        host=host, cluster=cluster, address=cf.address(host), hp=cf.haproxy,
        admin_socket=str(run.haproxy_socket(host)), listeners=listeners, edges=edges,
        frontend=c.frontend, source_table_size=SOURCE_TABLE_SIZE,
        listener_maxconn=cf.haproxy.listener_maxconn or cf.haproxy.maxconn)


def render_all(cf: ClusterFile, run: RunDir) -> dict[str, str]:
    return {host: render(cf, host, run) for host, _ in cf.chat_hosts()}


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    output: str


def check(text: str) -> CheckResult:
    """Run `haproxy -c` on config text; nothing is bound or started."""
    exe = binaries.require("haproxy")
    fd, tmp = tempfile.mkstemp(prefix="chatops-check-", suffix=".cfg")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        proc = subprocess.run([exe, "-c", "-f", tmp], capture_output=True, text=True, timeout=30)
    finally:
        os.unlink(tmp)
    out = (proc.stdout + proc.stderr).replace(tmp, "<rendered config>")
    # Keep warnings and alerts; the success banner adds nothing.
    out = "\n".join(ln for ln in out.splitlines() if ln.strip() and ln.strip() != "Configuration file is valid")
    return CheckResult(ok=proc.returncode == 0, output=out)


def diff(old: str, new: str, name: str) -> str:
    return "".join(difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True),
        fromfile=f"{name} (running)", tofile=f"{name} (rendered)"))


def write_atomic(path: Path, text: str) -> None:
    """Replace a config in one rename, so a reload never reads a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
