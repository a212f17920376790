"""Silences: matchers over a finding's labels, as Alertmanager's, checked before a notification
is written.

A matcher is `name=value`, `name!=value`, `name=~regex` or `name!~regex`; a regex must match the
whole value (Alertmanager anchors them too). A silence mutes a finding when all its matchers
match the finding's labels; an incident's notification is muted when every finding it would
report is. A label the finding does not have matches as the empty string, again as in
Alertmanager, so `shard!=shard2` matches a finding about no shard.

Labels of a finding: `kind`, `subject`, `severity`, everything it is `about` (cluster, host,
shard, service, key, room, edge), and, for a finding received from an Alertmanager, that
alert's own labels (`alertname`, `instance`, ...). Pure functions; the database keeps the
silences (`Database.add_silence`), the API and `chatops silence` validate through `parse`.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

OPS = ("=~", "!~", "!=", "=")           # longest first, so "=~" is not read as "=" + "~..."
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_VALUE_LEN = 200
MAX_MATCHERS = 16


class BadMatcher(ValueError):
    pass


def parse_one(text: str) -> dict[str, str]:
    """`cluster=testing` -> {"name": "cluster", "op": "=", "value": "testing"}."""
    if not isinstance(text, str):
        raise BadMatcher(f"a matcher is a string such as cluster=testing, not {text!r}")
    at = min(((text.find(op), op) for op in OPS if op in text), default=None,
             key=lambda x: (x[0], -len(x[1])))
    if at is None:
        raise BadMatcher(f"matcher {text[:80]!r} has no operator; write name=value, name!=value, "
                         "name=~regex or name!~regex")
    i, op = at
    return check({"name": text[:i].strip(), "op": op, "value": text[i + len(op):].strip().strip('"')})


def check(m: Any) -> dict[str, str]:
    """A matcher given as a mapping (the API's form), validated; returns a clean copy."""
    if not isinstance(m, dict) or set(m) - {"name", "op", "value"} or not {"name", "value"} <= set(m):
        raise BadMatcher(f"a matcher is {{\"name\", \"op\", \"value\"}}, not {str(m)[:80]}")
    name, op, value = m["name"], m.get("op", "="), m["value"]
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise BadMatcher(f"matcher name {str(name)[:80]!r} must be a label name ([A-Za-z_][A-Za-z0-9_]*)")
    if op not in OPS:
        raise BadMatcher(f"matcher operator {str(op)[:8]!r} is not one of {', '.join(OPS)}")
    if not isinstance(value, str) or len(value) > MAX_VALUE_LEN or not value.isprintable():
        raise BadMatcher(f"matcher value for {name} must be printable text of at most {MAX_VALUE_LEN} characters")
    if op in ("=~", "!~"):
        try:
            re.compile(value)
        except re.error as exc:
            raise BadMatcher(f"matcher {name}{op}{value!r}: bad regular expression: {exc}") from None
    return {"name": name, "op": op, "value": value}


def parse(items: Iterable[Any]) -> list[dict[str, str]]:
    """Strings (`--match cluster=testing`) or mappings, validated; at least one, at most 16."""
    out = [parse_one(x) if isinstance(x, str) else check(x) for x in items]
    if not out:
        raise BadMatcher("a silence needs at least one matcher, such as cluster=testing")
    if len(out) > MAX_MATCHERS:
        raise BadMatcher(f"a silence takes at most {MAX_MATCHERS} matchers")
    return out


def show(matchers: Iterable[dict]) -> str:
    return ", ".join(f"{m['name']}{m['op']}{m['value']}" for m in matchers)


def labels(f: dict) -> dict[str, str]:
    """A finding's labels (a finding row of `Database.findings()`)."""
    out: dict[str, str] = {}
    ext = (f.get("evidence") or {}).get("labels")
    if isinstance(ext, dict):
        out.update({str(k): str(v) for k, v in ext.items()})
    about = f.get("about") or {}
    if isinstance(about, dict):
        out.update({str(k): str(v) for k, v in about.items() if v not in (None, "")})
    for k in ("kind", "subject", "severity"):
        if f.get(k):
            out[k] = str(f[k])
    return out


def _matches(m: dict, got: dict[str, str]) -> bool:
    value = got.get(m["name"], "")
    op = m["op"]
    if op == "=":
        return value == m["value"]
    if op == "!=":
        return value != m["value"]
    hit = re.fullmatch(m["value"], value) is not None
    return hit if op == "=~" else not hit


def silencing(f: dict, active: Iterable[dict]) -> dict | None:
    """The first of the `active` silences (rows of `Database.silences(active_at=...)`) that
    mutes finding `f`, or None."""
    got = labels(f)
    return next((s for s in active if all(_matches(m, got) for m in s["matchers"])), None)
