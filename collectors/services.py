"""The chat services' own metrics: each edge, clue and exchange serves Prometheus text at /metrics.

A pure parser beside a thin fetcher, as the other collectors do it:

- `parse_metrics(text) -> ParsedMetrics`: the exposition as flat samples (name, labels, value)
  with prometheus_client's parser. A line it cannot read (truncated, garbage, a NUL) costs only
  that line: the text is then parsed line by line and the bad lines are kept in `unparsed`.
  Samples look like this (recorded in tests/fixtures/services/):

      # TYPE chat_exchange_connections_opened_total counter
      chat_exchange_connections_opened_total 1.0
      chat_exchange_request_seconds_count{edge="chat1"} 63.0
      chat_exchange_keepalive 1.0

- `total(samples, name, **labels)`: the sum of a metric's samples whose labels match (None when
  the metric is absent, so "not exported" never reads as 0).
- `fetch(host, port, path, timeout, source_address, token)`: one HTTP GET with a timeout and a size
  cap, on a connection kept from the last call to that service; `token`, the internal token
  (`secrets.internal_token_env`), for the guarded `/v1/...` routes.
- `collect(target)` -> Observation(source="service", target="<service>-<host>", data=ServiceData);
  `target_for(cf, host, service)` names the service's address, port and upstreams. Clue's
  `/v1/stats/keys` (JSON counters by shard, prefix and slot) is a section of its own, so is the
  TIME_WAIT count of the connections this service opens to its upstreams (local profile only: the
  sockets are on this machine). /metrics is open; /v1/stats/keys takes the internal token, which
  `target_for` reads from its variable (or, given the run dir, the local profile's secrets.env);
  without it the keys section reports why. A failing section is reported
  in `section_errors` and the rest still arrives; an unreachable /metrics makes the source down.
"""

from __future__ import annotations

import http.client
import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from cluster import secrets
from collectors import keepalive
from collectors.base import Observation, source_address

SERVICES = ("edge", "clue", "exchange")
MAX_BODY = 4 * 1024 * 1024          # the services' expositions are a few KiB; more is hostile
MAX_UNPARSED = 20


class FetchError(OSError):
    """The service answered, but not with a usable reply (status, size)."""


@dataclass(frozen=True)
class Sample:
    name: str                        # the sample's full name: `..._total`, `..._count`, `..._bucket`
    labels: dict[str, str]
    value: float


@dataclass(frozen=True)
class ParsedMetrics:
    samples: list[Sample] = field(default_factory=list)
    unparsed: list[str] = field(default_factory=list)     # lines the parser refused (first 20)
    unparsed_count: int = 0


@dataclass(frozen=True)
class ServiceData:
    service: str                     # edge | clue | exchange
    host: str
    url: str
    samples: list[Sample] = field(default_factory=list)
    unparsed: list[str] = field(default_factory=list)
    unparsed_count: int = 0
    keys: dict[str, Any] | None = None          # clue only: GET /v1/stats/keys
    # TIME_WAIT sockets towards each upstream "address:port" this service connects to (local
    # profile only): a connection closed after every request leaves one behind each time.
    time_wait: dict[str, int] | None = None


# -- pure parsing ---------------------------------------------------------------------------------

def _samples(text: str) -> list[Sample]:
    out = []
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            v = float(s.value)
            if math.isnan(v):
                continue
            out.append(Sample(s.name, dict(s.labels), v))
    return out


# The plain form every chat service writes (prometheus_client's exposition): `name value` or
# `name{k="v",...} value`, no escapes, no timestamp, a number of at most 30 digits (the same
# float whether read as int or float). A text made only of these lines and HELP/TYPE comments is
# read by `_samples_plain` at ~20x prometheus_client's speed (its parser walks each sample
# character by character); any other text goes through prometheus_client, the definition, and
# tests check that both read the same samples.
_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_PAIR = r'[a-zA-Z_][a-zA-Z0-9_]*="[^"\\\n]*"'          # label="value", nothing escaped
_PLAIN_SAMPLE = re.compile(
    rf"({_NAME})(?:\{{({_PAIR}(?:,{_PAIR})*)?\}})? "
    r"(-?[0-9]{1,30}(?:\.[0-9]{0,30})?(?:[eE][+-]?[0-9]{1,3})?|[+-]Inf|NaN)")
_PLAIN_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)"')
_PLAIN_COMMENT = re.compile(rf"# (HELP|TYPE) ({_NAME})(?: (.*))?")
# the sample names a family of each type owns, as prometheus_client reads them
_OWNED = {"counter": ("",), "gauge": ("",), "summary": ("_count", "_sum", ""),
          "histogram": ("_count", "_sum", "_bucket")}
_TYPES = frozenset(_OWNED) | {"untyped"}       # the text format's; any other is left to the parser


def _samples_plain(text: str) -> list[Sample] | None:
    """The samples prometheus_client's parser gives for `text` (NaN ones dropped), or None when a
    line is not of the plain form. It follows that parser's families: a counter family's
    samples are named `<family>_total` whatever the line says, and a sample outside the current
    family is one of its own."""
    out: list[Sample] = []
    family, typ, owned, start = "", "untyped", (), 0

    def close() -> None:
        if typ == "counter" and not family.endswith("_total"):
            for i in range(start, len(out)):
                s = out[i]
                out[i] = Sample(s.name + "_total", s.labels, s.value)

    for line in text.split("\n"):
        line = line.strip()
        if not line:
            continue
        if line[0] == "#":
            m = _PLAIN_COMMENT.fullmatch(line)
            if m is None:
                if "HELP" in line or "TYPE" in line:
                    return None          # a HELP or TYPE written some other way
                continue                 # any other comment is ignored
            kind, name, rest = m.groups()
            if kind == "HELP":
                if name != family:
                    close()
                    family, typ, owned, start = name, "untyped", (name,), len(out)
                continue
            if rest not in _TYPES:
                return None
            if name != family:
                close()
                family, start = name, len(out)
            typ, owned = rest, tuple(name + sfx for sfx in _OWNED.get(rest, ("",)))
            continue
        m = _PLAIN_SAMPLE.fullmatch(line)
        if m is None:
            return None
        name, labels_text, value_text = m.groups()
        labels = dict(_PLAIN_LABEL.findall(labels_text)) if labels_text else {}
        if labels_text and (len(labels) != labels_text.count('="') or any(k[:2] == "__" for k in labels)):
            return None                  # a label given twice, or a reserved name (__name__...)
        if name not in owned:
            close()
            family, typ, owned, start = "", "untyped", (), len(out)
        # as prometheus_client does: an integer first (so "-0" is 0.0), else a float
        v = float(int(value_text)) if value_text.lstrip("-").isdigit() else float(value_text)
        if v == v:                       # NaN: no value
            out.append(Sample(name, labels, v))
    close()
    return out


def parse_metrics(text: str) -> ParsedMetrics:
    """Prometheus text exposition -> samples. Never raises on bad input: a refused text is parsed
    again line by line, keeping every line that parses alone and reporting the others."""
    text = text.replace("\x00", "\ufffd")
    plain = _samples_plain(text)
    if plain is not None:
        return ParsedMetrics(plain)
    try:
        return ParsedMetrics(_samples(text if text.endswith("\n") else text + "\n"))
    except (ValueError, TypeError, IndexError, OverflowError):
        pass
    samples: list[Sample] = []
    bad: list[str] = []
    count = 0
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            samples.extend(_samples(stripped + "\n"))
        except (ValueError, TypeError, IndexError, OverflowError):
            count += 1
            if len(bad) < MAX_UNPARSED:
                bad.append(line[:200])
    return ParsedMetrics(samples, bad, count)


def _labels_match(have: dict[str, str], want: dict[str, str]) -> bool:
    return all(have.get(k) == v for k, v in want.items())


def _items(samples) -> list[tuple[str, dict, float]]:
    """Samples as (name, labels, value), from Sample objects or their JSON dicts (a recorded window)."""
    out = []
    for s in samples or []:
        if isinstance(s, Sample):
            out.append((s.name, s.labels, s.value))
        elif isinstance(s, dict) and isinstance(s.get("name"), str):
            v = s.get("value")
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out.append((s["name"], s.get("labels") or {}, float(v)))
    return out


class Indexed(dict):
    """Samples grouped by name, name -> [(labels, value)]: what `total` and `by_label` read when
    one exposition is asked for many metrics (the service figures ask ~20)."""


def index(samples) -> Indexed:
    out = Indexed()
    for n, lb, v in _items(samples):
        out.setdefault(n, []).append((lb, v))
    return out


def _named(samples, name: str) -> list[tuple[dict, float]]:
    if isinstance(samples, Indexed):
        return samples.get(name, [])
    return [(lb, v) for n, lb, v in _items(samples) if n == name]


def total(samples, name: str, **labels: str) -> float | None:
    """Sum of `name`'s samples whose labels include `labels`; None when no sample matches.
    `samples`: a list of samples or their `index`."""
    found = [v for lb, v in _named(samples, name) if _labels_match(lb, labels)]
    return float(sum(found)) if found else None


def by_label(samples, name: str, label: str, **labels: str) -> dict[str, float]:
    """`name`'s samples summed per value of `label` (e.g. redis errors per shard)."""
    out: dict[str, float] = {}
    for lb, v in _named(samples, name):
        if label in lb and _labels_match(lb, labels):
            out[lb[label]] = out.get(lb[label], 0.0) + v
    return out


def _finite(n: Any) -> bool:
    """A JSON number float() takes and that is not inf or NaN: int(inf) raises OverflowError, and
    so does float() of an integer of more than 308 digits."""
    if isinstance(n, bool) or not isinstance(n, (int, float)):
        return False
    try:
        return math.isfinite(n)
    except OverflowError:
        return False


def _slot_key(key: str) -> bool:
    # ASCII digits only: '²'.isdigit() is true and int('²') raises, losing the whole section.
    return key.isdigit() and key.isascii() and len(key) <= 5 and int(key) < 16384


def parse_keys(text: str) -> dict[str, Any]:
    """Clue's /v1/stats/keys JSON; keeps only the known, well-typed parts.

        {"ops_by_shard": {"shard0": 45, "shard1": 591}, "errors_by_shard": {"shard0": 0, ...},
         "ops_by_prefix": {"{*}.rl.u.#": 126, ...}, "top_slots": [[10294, 504], [6376, 43], ...],
         "top_slot_shards": {"10294": "shard1", "6376": "shard0", ...}}
    """
    try:
        doc = json.loads(text)
    except RecursionError:     # "[[[[..." deeper than the stack: not ValueError, which collect expects
        raise ValueError("stats/keys is nested too deeply") from None
    if not isinstance(doc, dict):
        raise ValueError("stats/keys is not a JSON object")
    out: dict[str, Any] = {}
    for key in ("ops_by_shard", "errors_by_shard", "ops_by_prefix"):
        v = doc.get(key)
        if isinstance(v, dict):
            out[key] = {str(k): float(n) for k, n in v.items() if _finite(n)}
    slots = doc.get("top_slots")
    if isinstance(slots, list):
        out["top_slots"] = [[int(p[0]), float(p[1])] for p in slots
                            if isinstance(p, list) and len(p) == 2 and _finite(p[0]) and _finite(p[1])]
    owners = doc.get("top_slot_shards")
    if isinstance(owners, dict):
        # Which shard each top slot lives on by the clue's live slot map (slots move).
        out["top_slot_shards"] = {str(int(k)): v for k, v in owners.items()
                                  if _slot_key(k) and isinstance(v, str) and 0 < len(v) <= 64 and v.isprintable()}
    return out


# -- fetching -------------------------------------------------------------------------------------

# Connections kept between scrapes, one per (host, port, source address): collectors/keepalive.py.
_IDLE = keepalive.Idle(lambda conn: conn.sock, http.client.HTTPConnection.close)
# A kept connection the service closed while it sat idle fails like this, before any reply.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


def fetch(host: str, port: int, path: str, timeout: float, source_address: str | None = None,
          token: str | None = None) -> str:
    """GET http://host:port/path; the body as text (invalid UTF-8 replaced). No proxy: these are
    the chat hosts' own addresses. `token`: the internal token, sent as a bearer token. The
    connection is kept for the next call to the same service, and a kept one that turns out
    closed is replaced once: the GET is safe to repeat."""
    key = (host, port, source_address)
    headers = {"Accept": "text/plain"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn = _IDLE.take(key)
    reused = conn is not None
    keep = False
    try:
        while True:
            if conn is None:
                src = (source_address, 0) if source_address else None
                conn = http.client.HTTPConnection(host, port, timeout=timeout, source_address=src)
            else:
                conn.sock.settimeout(timeout)
            try:
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                break
            except _STALE:
                conn.close()
                conn = None
                if not reused:
                    raise
                reused = False
        body = resp.read(MAX_BODY + 1)
        keep = resp.isclosed() and not resp.will_close     # the reply was read whole
        if resp.status != 200:
            raise FetchError(f"GET {path}: HTTP {resp.status}")
        if len(body) > MAX_BODY:
            raise FetchError(f"GET {path}: reply larger than {MAX_BODY} bytes")
        return body.decode("utf-8", errors="replace")
    except (http.client.HTTPException, ValueError) as exc:    # a garbled status line, a bad length
        keep = False
        raise FetchError(f"GET {path}: {type(exc).__name__}: {exc}") from exc
    finally:
        if conn is not None:
            if keep:
                _IDLE.give(key, conn)
            else:
                conn.close()


def service_port(cf, host: str, service: str) -> int:
    svc = cf.clusters[cf.cluster_of(host)].services
    if service == "edge":
        return svc.edge.http_port
    if service == "clue":
        return svc.clue.port
    if service == "exchange":
        return svc.exchange.port
    raise ValueError(f"unknown service {service!r} (one of {', '.join(SERVICES)})")


def upstreams(cf, host: str, service: str) -> list[tuple[str, int]]:
    """(address, port) of what `service` on `host` connects to: the exchange to its cluster's edges,
    the edge to clue and its cluster's exchanges, clue to the exchange and its host's shard listeners."""
    cluster = cf.cluster_of(host)
    c = cf.clusters[cluster]
    addr = cf.address(host)
    if service == "exchange":
        return [(cf.address(h), c.services.edge.http_port) for h in c.hosts]
    if service == "edge":
        return [(addr, c.services.clue.port)] + [(cf.address(h), c.services.exchange.port) for h in c.hosts]
    if service == "clue":
        return [(addr, c.services.exchange.port)] + [(addr, cf.listener_port(i))
                                                     for i in range(len(cf.redis.shards))]
    return []


@dataclass(frozen=True)
class Target:
    service: str                     # edge | clue | exchange
    host: str                        # the chat host it runs on
    address: str
    port: int                        # its HTTP port (/metrics)
    source: str | None = None        # local address our connections come from
    # (address, port) it connects to; TIME_WAIT towards each is counted when set (local profile)
    upstreams: tuple[tuple[str, int], ...] | None = None
    timeout: float = 2.0
    proc_root: str = "/proc"
    # The internal token for /v1/stats/keys, or why there is none; never in a repr.
    token: str | None = field(default=None, repr=False)
    no_token: str | None = None
    # How old a shared snapshot of the host's sockets may be (collectors.process.tcp_sockets): 0
    # reads afresh; the control plane's sources, which all run on one tick, share one read.
    sockets_max_age: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.service}-{self.host}"


def internal_token(cf, run=None) -> tuple[str | None, str | None]:
    """(the internal token, None), or (None, why not) when its variable is unset."""
    try:
        return secrets.value(cf, "internal_token_env", run), None
    except secrets.SecretError as exc:
        return None, str(exc)


def target_for(cf, host: str, service: str, timeout: float = 2.0, proc_root: str = "/proc",
               run=None, sockets_max_age: float = 0.0) -> Target:
    """`service` on chat host `host`; raises KeyError (unknown host) or ValueError (unknown service).
    `run`: the run dir, whose secrets.env (profile local) has the internal token when the
    environment does not."""
    port = service_port(cf, host, service)
    ups = tuple(upstreams(cf, host, service)) if cf.profile == "local" else None
    token, no_token = internal_token(cf, run) if service == "clue" else (None, None)
    return Target(service, host, cf.address(host), port, source_address(cf), ups, timeout, proc_root,
                  token, no_token, sockets_max_age)


def collect(target: Target, previous: Observation | None = None) -> Observation:
    """Scrape one chat service's /metrics (and clue's key stats, and TIME_WAIT towards its upstreams).
    `previous` is not needed: rates between two scrapes are the control plane's figures."""
    at, started = time.time(), time.perf_counter()
    address, port, src, timeout = target.address, target.port, target.source, target.timeout
    url = f"http://{address}:{port}/metrics"
    try:
        parsed = parse_metrics(fetch(address, port, "/metrics", timeout, src))
    except OSError as exc:          # refused, timed out, reset, FetchError
        return Observation("service", target.name, at, False, time.perf_counter() - started, None,
                           f"{type(exc).__name__}: {exc}")
    errors: dict[str, str] = {}
    keys = None
    if target.service == "clue":
        left = max(0.1, timeout - (time.perf_counter() - started))
        try:
            if target.no_token:
                raise FetchError(f"GET /v1/stats/keys needs the internal token: {target.no_token}")
            keys = parse_keys(fetch(address, port, "/v1/stats/keys", left, src, target.token))
        except (OSError, ValueError) as exc:
            errors["keys"] = f"{type(exc).__name__}: {exc}"
    time_wait = None
    if target.upstreams is not None:
        from collectors import process
        ups = target.upstreams
        try:
            entries = process.tcp_sockets(target.proc_root, max_age=target.sockets_max_age, endpoints=ups)
            time_wait = {f"{a}:{p}": process.time_wait_count(entries, p, a) for a, p in ups}
        except OSError as exc:
            errors["time_wait"] = f"{type(exc).__name__}: {exc}"
    if parsed.unparsed_count:
        errors["metrics"] = f"{parsed.unparsed_count} line(s) not understood, e.g. {parsed.unparsed[0]!r}"
    data = ServiceData(target.service, target.host, url, parsed.samples, parsed.unparsed,
                       parsed.unparsed_count, keys, time_wait)
    return Observation("service", target.name, at, True, time.perf_counter() - started, data, None, errors)


if __name__ == "__main__":      # python -m collectors.services --config FILE HOST SERVICE
    import argparse

    from cluster.clusterfile import load
    from cluster.rundir import RunDir
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--run-dir", help="profile local: its secrets.env has the internal token")
    ap.add_argument("host")
    ap.add_argument("service", choices=SERVICES)
    a = ap.parse_args()
    obs = collect(target_for(load(a.config).spec, a.host, a.service, run=RunDir.resolve(a.run_dir)))
    print(json.dumps(obs.as_dict(), indent=1, default=str))
