"""The receiver for the world's alerts: Alertmanager's webhook payload (version 4), parsed and
turned into findings of kind `alertmanager` (controlplane/detectors/alertmanager.py says how they
sit in incidents). Pure functions: `parse(body)` validates, `findings(payload, cf)` maps; the API
(`POST /api/v1/alerts/alertmanager`) hands the result to `Engine.ingest`.

The payload, as Alertmanager 0.25 sends it (tests/fixtures/alertmanager/webhook_firing.json):

    {"version": "4", "groupKey": "...", "truncatedAlerts": 0, "status": "firing|resolved",
     "receiver": "...", "groupLabels": {...}, "commonLabels": {...}, "commonAnnotations": {...},
     "externalURL": "...", "alerts": [{"status": "firing|resolved", "labels": {...},
     "annotations": {...}, "startsAt": RFC 3339, "endsAt": RFC 3339, "generatorURL": "...",
     "fingerprint": "..."}]}

Validation is strict and all-or-nothing: any field of the wrong type, a version other than "4",
more than MAX_ALERTS alerts, a label value over MAX_VALUE_BYTES... raises `BadPayload` naming the
field (`alerts[3].labels.instance`), before anything is written. Fields a newer Alertmanager may
add are ignored.

One alert, one finding:
- subject: the alert's identity, as Alertmanager's: its alertname and every other label, in
  Prometheus' notation (`RedisDown{instance="redis://10.0.0.5:6379",job="redis"}`), so one alert
  is one finding across every notification of it; over MAX_SUBJECT characters it keeps the
  identifying labels (IDENTIFYING) and a digest of the whole set;
- severity: labels.severity when it is critical, warning or info, else warning;
- title: annotations.summary, else `<alertname> on <where>`;
- evidence: alertname, instance, the severity label, startsAt, generatorURL, fingerprint, then
  the labels (under "labels", which silences match on) and annotations; the description as its
  example line;
- about: shard, host, cluster and service from labels that name one of the cluster file's, and
  from `instance` (`host:port`, `redis://host:port`, `[v6]:port`) matched against the cluster
  file's addresses: a shard's (or its replica's) address and port name the shard and its Redis
  host; a chat host's HAProxy listener port names that host and the shard behind the listener;
  any other port of a known address names the host. HAProxy's exporter's `proxy`/`backend`
  label `redis-<shard>` names the shard. So a redis_exporter alert on shard2's address joins
  chatops' own finding on shard2.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

from controlplane.detectors.base import Finding

KIND = "alertmanager"
VERSION = "4"
MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_ALERTS = 1000
MAX_LABELS = 64                 # per alert, and per groupLabels/commonLabels
MAX_ANNOTATIONS = 32
MAX_NAME_LEN = 128
MAX_VALUE_BYTES = 1024          # a label value
MAX_ANNOTATION_BYTES = 8192     # an annotation value
MAX_TEXT = 2048                 # receiver, groupKey, URLs, fingerprint
MAX_SUBJECT = 300
MAX_TITLE = 200
STATUSES = ("firing", "resolved")
SEVERITIES = ("critical", "warning", "info")
IDENTIFYING = ("cluster", "shard", "host", "service", "instance", "job")
_TS = re.compile(r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})")


class BadPayload(ValueError):
    """The payload is not Alertmanager's webhook version 4: `field` names where, `why` says what."""

    def __init__(self, where: str, why: str):
        self.field, self.why = where, why
        super().__init__(f"bad field {where}: {why}" if where else why)


@dataclass(frozen=True)
class Alert:
    status: str
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: float | None          # epoch seconds; None for Go's zero time
    ends_at: float | None
    generator_url: str
    fingerprint: str


@dataclass(frozen=True)
class Payload:
    status: str
    receiver: str
    group_key: str
    truncated: int
    external_url: str
    group_labels: dict[str, str] = field(default_factory=dict)
    common_labels: dict[str, str] = field(default_factory=dict)
    alerts: tuple[Alert, ...] = ()


# -- parsing --------------------------------------------------------------------------------------

def _reject_constant(name: str):
    raise BadPayload("", f"the body is not strict JSON: {name} is not a JSON number")


def loads(body: bytes | str) -> Any:
    """The body as JSON, or BadPayload."""
    if isinstance(body, bytes):
        if len(body) > MAX_BODY_BYTES:
            raise BadPayload("", f"the body is larger than {MAX_BODY_BYTES // (1024 * 1024)} MiB")
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadPayload("", f"the body is not UTF-8 (byte {exc.start})") from None
    if not body.strip():
        raise BadPayload("", "the body is empty; Alertmanager's webhook sends a JSON object")
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except RecursionError:
        raise BadPayload("", "the body is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise BadPayload("", f"the body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


def _text(value: Any, where: str, limit: int = MAX_TEXT, required: bool = False) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise BadPayload(where, f"must be a string, not {_kind(value)}")
    if len(value.encode("utf-8", "surrogatepass")) > limit:
        raise BadPayload(where, f"is longer than {limit} bytes")
    if "\x00" in value or any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise BadPayload(where, "contains a NUL or an unpaired surrogate")
    return value


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _labels(value: Any, where: str, max_count: int, max_bytes: int, what: str = "label") -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadPayload(where, f"must be an object of {what}s, not {_kind(value)}")
    if len(value) > max_count:
        raise BadPayload(where, f"has {len(value)} {what}s; at most {max_count} are accepted")
    out = {}
    for name, v in value.items():
        if not name or len(name) > MAX_NAME_LEN or not name.isprintable():
            raise BadPayload(f"{where}.{_short(name)}", f"a {what} name must be printable, 1 to {MAX_NAME_LEN} "
                                                          "characters")
        out[name] = _text(v, f"{where}.{name}", max_bytes, required=True)
    return out


def _short(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "...")


def timestamp(value: Any, where: str, required: bool = False) -> float | None:
    """RFC 3339 as Go writes it (up to nanoseconds, Z or an offset) -> epoch seconds; Go's zero
    time (0001-01-01T00:00:00Z, an alert with no end yet) -> None."""
    if value is None and not required:
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise BadPayload(where, f"must be an RFC 3339 time such as 2024-05-01T12:00:00Z, not {_kind(value)}")
    m = _TS.fullmatch(value)
    if not m:
        raise BadPayload(where, f"{_short(value)} is not an RFC 3339 time such as 2024-05-01T12:00:00Z")
    y, mo, d, h, mi, s, frac, zone = m.groups()
    if y == "0001" and mo == "01" and d == "01":
        return None
    try:
        tz = timezone.utc if zone in ("Z", "z") else timezone(
            (1 if zone[0] == "+" else -1) * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
        t = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), tzinfo=tz)
    except ValueError as exc:
        raise BadPayload(where, f"{_short(value)} is not a valid time: {exc}") from None
    return t.timestamp() + (int(frac.ljust(9, "0")) / 1e9 if frac else 0.0)


def _alert(a: Any, where: str) -> Alert:
    if not isinstance(a, dict):
        raise BadPayload(where, f"must be an object, not {_kind(a)}")
    status = a.get("status")
    if status not in STATUSES:
        raise BadPayload(f"{where}.status", f"must be firing or resolved, not {_short(str(status))}")
    if "labels" not in a:
        raise BadPayload(f"{where}.labels", "is missing; every alert has labels, alertname among them")
    labels = _labels(a["labels"], f"{where}.labels", MAX_LABELS, MAX_VALUE_BYTES)
    if not labels.get("alertname", "").strip():
        raise BadPayload(f"{where}.labels.alertname", "is missing or empty")
    annotations = _labels(a.get("annotations"), f"{where}.annotations", MAX_ANNOTATIONS, MAX_ANNOTATION_BYTES,
                          "annotation")
    starts = timestamp(a.get("startsAt"), f"{where}.startsAt", required=True)
    ends = timestamp(a.get("endsAt"), f"{where}.endsAt")
    url = _text(a.get("generatorURL"), f"{where}.generatorURL")
    fingerprint = _text(a.get("fingerprint"), f"{where}.fingerprint", 64)
    return Alert(status, labels, annotations, starts, ends, url, fingerprint)


def parse(body: bytes | str | dict) -> Payload:
    """Alertmanager's webhook body (bytes, text or the decoded object), validated whole."""
    doc = body if isinstance(body, dict) else loads(body)
    if not isinstance(doc, dict):
        raise BadPayload("", f"the body must be a JSON object (Alertmanager's webhook payload), not {_kind(doc)}")
    if doc.get("version") != VERSION:
        got = doc.get("version")
        raise BadPayload("version", f"must be \"{VERSION}\" (Alertmanager's webhook payload version 4), "
                                    f"not {_short(str(got)) if got is not None else 'missing'}")
    status = doc.get("status")
    if status not in STATUSES:
        raise BadPayload("status", f"must be firing or resolved, not {_short(str(status))}")
    receiver = _text(doc.get("receiver"), "receiver")
    group_key = _text(doc.get("groupKey"), "groupKey")
    truncated = doc.get("truncatedAlerts", 0)
    if isinstance(truncated, bool) or not isinstance(truncated, int) or truncated < 0:
        raise BadPayload("truncatedAlerts", "must be a whole number >= 0")
    external = _text(doc.get("externalURL"), "externalURL")
    group_labels = _labels(doc.get("groupLabels"), "groupLabels", MAX_LABELS, MAX_VALUE_BYTES)
    common_labels = _labels(doc.get("commonLabels"), "commonLabels", MAX_LABELS, MAX_VALUE_BYTES)
    _labels(doc.get("commonAnnotations"), "commonAnnotations", MAX_ANNOTATIONS, MAX_ANNOTATION_BYTES, "annotation")
    alerts = doc.get("alerts")
    if not isinstance(alerts, list):
        raise BadPayload("alerts", f"must be a list of alerts, not {_kind(alerts) if 'alerts' in doc else 'missing'}")
    if not 1 <= len(alerts) <= MAX_ALERTS:
        raise BadPayload("alerts", f"has {len(alerts)} alerts; a payload carries 1 to {MAX_ALERTS} "
                                   "(set max_alerts in the webhook_config)")
    parsed = tuple(_alert(a, f"alerts[{i}]") for i, a in enumerate(alerts))
    return Payload(status, receiver, group_key, truncated, external, group_labels, common_labels, parsed)


# -- alerts as findings ---------------------------------------------------------------------------

def _quote(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def subject(labels: dict[str, str]) -> str:
    """The alert's identity: alertname{every other label}, sorted; a digest when too long."""
    name = labels.get("alertname", "")
    rest = sorted((k, v) for k, v in labels.items() if k != "alertname")
    full = name + "{" + ",".join(f"{k}={_quote(v)}" for k, v in rest) + "}"
    if len(full) <= MAX_SUBJECT:
        return full
    digest = hashlib.sha256(json.dumps(sorted(labels.items())).encode("utf-8", "surrogatepass")).hexdigest()[:16]
    ident = ",".join(f"{k}={_quote(labels[k][:60])}" for k in IDENTIFYING if k in labels)
    head = f"{name[:80]}{{{ident}}}"
    return f"{head[:MAX_SUBJECT - 17]}#{digest}"


def split_instance(instance: str) -> tuple[str, int | None] | None:
    """`host:port`, `redis://host:port`, `[v6]:port`, `host` -> (host, port or None)."""
    text = instance.strip()
    if not text:
        return None
    if "://" not in text:
        text = "//" + text
    try:
        u = urlsplit(text)
        port = u.port
    except ValueError:
        return None
    host = u.hostname
    return (host, port) if host else None


def about(labels: dict[str, str], cf) -> dict[str, str]:
    """What an alert is about, in the cluster file's names (see the module's docstring)."""
    out: dict[str, str] = {}
    if cf is None:
        return out
    shards = {s.name: s for s in cf.redis.shards}
    if labels.get("shard") in shards:
        out["shard"] = labels["shard"]
    if labels.get("host") in cf.hosts:
        out["host"] = labels["host"]
    if labels.get("cluster") in cf.clusters:
        out["cluster"] = labels["cluster"]
    service = labels.get("service", "")
    if service and len(service) <= 64 and service.isprintable():
        out["service"] = service
    for key in ("proxy", "backend"):
        v = labels.get(key, "")
        if "shard" not in out and v.startswith("redis-") and v[len("redis-"):] in shards:
            out["shard"] = v[len("redis-"):]
    where = split_instance(labels.get("instance", ""))
    if where is not None:
        out.update({k: v for k, v in _by_address(cf, *where).items() if k not in out})
    if "cluster" not in out and out.get("host"):
        cluster = cf.cluster_of(out["host"])
        if cluster:
            out["cluster"] = cluster
    return out


def _by_address(cf, addr: str, port: int | None) -> dict[str, str]:
    by_address = {h.address: name for name, h in cf.hosts.items()}
    host = addr if addr in cf.hosts else by_address.get(addr)
    if host is None:
        return {}
    if port is not None:
        for s in cf.redis.shards:
            if (s.host, s.port) == (host, port) or (s.replica and (s.replica.host, s.replica.port) == (host, port)):
                return {"shard": s.name, "host": host}
        if cf.cluster_of(host) is not None:
            for i, s in enumerate(cf.redis.shards):
                if cf.listener_port(i) == port:
                    return {"shard": s.name, "host": host}
    return {"host": host}


def severity(labels: dict[str, str]) -> str:
    s = labels.get("severity", "").strip().lower()
    return s if s in SEVERITIES else "warning"


def _one_line(text: str, limit: int = MAX_TITLE) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit - 1] + "…"


def where(labels: dict[str, str], ab: dict[str, str]) -> str:
    """The alert's place in words: shard0 (on redis1), chat1, or its instance."""
    if ab.get("shard") and ab.get("host"):
        return f"{ab['shard']} ({ab['host']})"
    return ab.get("shard") or ab.get("host") or labels.get("instance") or labels.get("job") or ""


def title(labels: dict[str, str], annotations: dict[str, str], ab: dict[str, str]) -> str:
    summary = annotations.get("summary", "").strip()
    if summary:
        return _one_line(summary)
    w = where(labels, ab)
    return _one_line(f"{labels['alertname']} on {w}" if w else labels["alertname"])


def finding(alert: Alert, cf, payload: Payload | None = None) -> Finding:
    labels, ann = alert.labels, alert.annotations
    ab = about(labels, cf)
    evidence: dict[str, Any] = {"alertname": labels["alertname"]}
    if labels.get("instance"):
        evidence["instance"] = labels["instance"]
    if labels.get("severity"):
        evidence["severity_label"] = labels["severity"]
    evidence.update({"starts_at": alert.starts_at, "generator_url": alert.generator_url,
                     "fingerprint": alert.fingerprint, "labels": dict(labels), "annotations": dict(ann)})
    if payload is not None:
        evidence["receiver"], evidence["external_url"] = payload.receiver, payload.external_url
    if ann.get("description", "").strip():
        evidence["lines"] = [_one_line(ann["description"], 300)]
    return Finding(KIND, subject(labels), severity(labels), title(labels, ann, ab), evidence,
                   remediation=None, firing=True, about=ab, runbook=runbook(ann))


_RUNBOOK = re.compile(r"/runbooks/([a-z0-9_]{1,64})(?:\.md)?/?$")


def runbook(annotations: dict[str, str]) -> str:
    """One of chatops' runbooks when the alert's runbook_url points at one, else the kind's."""
    m = _RUNBOOK.search(urlsplit(annotations.get("runbook_url", "")).path) if annotations.get(
        "runbook_url") else None
    return m.group(1) if m else KIND


@dataclass
class Batch:
    """What one payload asks: findings to open or refresh, (kind, subject)s to resolve."""
    firing: list[Finding]
    resolved: list[tuple[str, str]]


def findings(payload: Payload, cf) -> Batch:
    """Each alert as a finding; an alert named twice counts once, as its last mention says."""
    last: dict[str, tuple[Alert, str]] = {}
    for a in payload.alerts:
        s = subject(a.labels)
        last.pop(s, None)
        last[s] = (a, s)
    firing = [finding(a, cf, payload) for a, _ in last.values() if a.status == "firing"]
    resolved = [(KIND, s) for a, s in last.values() if a.status == "resolved"]
    return Batch(firing, resolved)
