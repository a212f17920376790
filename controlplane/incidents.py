"""Incidents: related findings grouped into one, with a timeline and a root-cause chain.

The detection engine (controlplane/detectors/engine.py) calls `update(db, cf, open_findings,
resolved, now)` after each run. Everything that decides is pure and works on plain finding dicts
(the rows of `Database.findings()`), so tests call it without a database. Nothing here knows a
finding kind: what a kind means -- its layer, subject, label, cause, dependencies -- is declared
by its detector module (controlplane/detectors/base.py) and asked through `detectors.for_kind`.

- `layer(f)` places a finding on the request path, upstream (what users see) to downstream (what
  everything depends on), the order the talk's team followed by hand; the kinds of today:

      0 delivery_gap            users in a room do not see the same messages (canary)
      1 ingestion_timeouts edge `[clue] Timed out` in an edge's log
        unresponsive_service edge   an edge that does not answer (hung, crashed, crash-looping)
      2 ingestion_timeouts clue `ECONNREFUSED` / Redis errors in clue's log
        connection_churn        a service (the exchange) opening a connection per request
        unresponsive_service clue, exchange   the same for clue or the exchange
      3 proxy_saturation        the chat host's HAProxy (`redis-<shard>` listener) near its limits
                                (and any kind that declares no layer)
      4 leaked_clients <shard>:maxclients, hot_shard      the shard itself
      5 leaked_clients <host>-><shard>, hot_key           what loads the shard: a host, a key

- `linked(a, b)` (a upstream of b) when b can explain a: they name the same shard or the same host,
  or a dependency connects them: b `serves` a's layer within one cluster (clue's errors -> the
  edges of its cluster; the exchange -> the edges of its cluster), or a names no shard and
  `reaches` every shard (clue, or a proxy, talks to every shard through its host's HAProxy). Two
  findings that name different shards never link; neither do findings of different clusters
  through a dependency -- but a shard is shared by every cluster, which is exactly how the
  testing cluster took down main in 2014.
- A guess is a last resort: a finding that something downstream explains by name (the same
  shard or host) or by a declared dependency, where that explanation claims nothing of the shards
  itself (it declares no `reaches`: a silent service, a missing keepalive), takes no BROAD link,
  neither in its chain nor to join another group. So a hung clue stays the root cause of its
  edge's timeouts even while some unrelated shard runs hot; clue's Redis errors, which may come
  from any shard, still look for one.
- Which unresponsive service is the cause, when several on one request path stop answering (edge
  -> clue -> the exchange -> every edge of the cluster): the one furthest along the path from the
  users, because a silent dependency can stall its callers and never the reverse. By layer, clue
  or the exchange (SERVICE) is the cause of a silent edge (EDGE) on the same host or, for the
  delivery gaps it leaves, in the same cluster; an unresponsive service names no shard and
  reaches for none, so it ends its chain unless something named on its own host lies deeper
  (the HAProxy in front of its shards: a clue that crashes because its proxy is down). Clue and
  the exchange share a layer and do not explain each other: of the two, the chain keeps the more
  severe (the one not answering at all over one that answers between crashes), then the one
  that stopped answering first; the other is kept in `others`.
- `related(a, b)`: linked either way, or sharing a shard or host, and open at overlapping times
  (or within GAP_S of each other). Related findings share an incident.
- `build_chain(findings)`: the longest upstream-to-downstream path of linked findings (ties: the
  one reaching deepest, with the strongest links -- a named shard or host beats a dependency
  guess -- then the most severe, then the earliest). Its last link is the root cause; the root
  cause's remediation is the incident's suggested remediation. Findings off the chain are kept
  as `others`.

`update` then only writes: new findings join an open (or acknowledged) incident they relate to,
else open a new one; each joining and each resolving finding is a timeline entry; the hypothesis
is stored (and put on the timeline) when its chain changes; an incident whose findings are all
resolved resolves itself (audited, actor `detection`). An incident resolved by hand keeps its
findings even if they are still open: new findings open a new incident.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

from controlplane import detectors
from controlplane.detectors.base import (
    PROXY,
    SHARD,
    Detector,
    about,
    evidence_figures,
    example_lines,
)

log = logging.getLogger(__name__)

GAP_S = 300.0            # findings this close in time count as "at the same time"
ACTOR = "detection"
SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}


# -- what a finding is about: asked of its detector ---------------------------------------------

def _detector(f: dict) -> Detector:
    return detectors.for_kind(f.get("kind"))


def layer(f: dict) -> int:
    """Where the finding sits on the request path: 0 (users) .. 5 (what loads a shard)."""
    return _detector(f).layer(f)


def label(f: dict) -> str:
    """A short name for one link of the chain, as the talk's team would say it."""
    return _detector(f).label(f)


def cause(f: dict) -> str:
    """The root cause, said as a cause rather than a symptom."""
    return _detector(f).cause(f)


def _shard(f: dict) -> str | None:
    return _detector(f).shard(f)


def _host(f: dict) -> str | None:
    return _detector(f).host(f)


def _cluster(f: dict) -> str | None:
    return about(f).get("cluster")


NAMED, SPECIFIC, BROAD = 3, 2, 1     # how strongly one finding can explain another


def _strength(a: dict, b: dict) -> int:
    """How `b` can explain `a`: NAMED (the same shard, or the same chat host down to the proxy
    layer), SPECIFIC (b serves a's layer within one cluster: edge -> clue, exchange -> edges),
    BROAD (a names no shard but reaches every one, and b is on a shard or below), or 0."""
    sa, sb = _shard(a), _shard(b)
    if sa and sb:
        if _detector(a).busy(a) and _detector(b).idle(b):
            return 0                       # a leak of idle connections cannot make a shard hot
        return NAMED if sa == sb else 0    # different shards never explain each other
    ha, hb = _host(a), _host(b)
    la, lb = layer(a), layer(b)
    if la >= lb:
        return 0
    if ha and hb and ha == hb and lb <= PROXY:
        return NAMED                       # the same chat host: edge, clue and its HAProxy
    serves = _detector(b).serves(b)
    if serves and serves.layer == la:
        ca, cb = _cluster(a), _cluster(b)
        return SPECIFIC if not ca or not cb or ca == cb else 0
    if lb >= SHARD and not sa and _detector(a).reaches(a):
        return BROAD
    return 0


def _named_cause(f: dict, fs: list[dict]) -> bool:
    """Something in `fs` explains `f` by more than a guess (NAMED or SPECIFIC) and claims nothing
    of the shards itself (no `reaches`): an explanation complete without one."""
    return any(layer(g) > layer(f) and _strength(f, g) >= SPECIFIC and not _detector(g).reaches(g)
               for g in fs)


def _guess(a: dict, b: dict, fs: list[dict]) -> bool:
    """`b` explains `a` only by a guess that `fs` makes unnecessary."""
    return _strength(a, b) == BROAD and _named_cause(a, fs)


def linked(a: dict, b: dict) -> bool:
    """`b` (further downstream) can explain `a`."""
    return layer(a) < layer(b) and _strength(a, b) > 0


def _span(f: dict, now: float | None) -> tuple[float, float]:
    start = float(f.get("first_seen") or 0.0)
    if f.get("state") == "resolved":
        end = float(f.get("resolved_at") or f.get("last_seen") or start)
    else:
        end = float(now if now is not None else (f.get("last_seen") or start))
    return start, max(start, end)


def overlaps(a: dict, b: dict, now: float | None = None, gap_s: float = GAP_S) -> bool:
    a0, a1 = _span(a, now)
    b0, b1 = _span(b, now)
    return a0 <= b1 + gap_s and b0 <= a1 + gap_s


def relation(a: dict, b: dict, now: float | None = None) -> int:
    """How strongly two findings belong together (NAMED, SPECIFIC, BROAD or 0): one can explain
    the other, or they name the same shard or host; and they are open at about the same time."""
    if not overlaps(a, b, now):
        return 0
    s = max(_strength(a, b), _strength(b, a))
    if s:
        return s
    sa, sb = _shard(a), _shard(b)
    if sa and sb:
        return NAMED if sa == sb else 0
    ha, hb = _host(a), _host(b)
    return NAMED if ha and hb and ha == hb else 0


def related(a: dict, b: dict, now: float | None = None) -> bool:
    return relation(a, b, now) > 0


def _explained(fs: list[dict]) -> bool:
    """The group already reaches the shard layer: it needs no broad guess."""
    return any(layer(f) >= SHARD for f in fs)


def _components(findings: list[dict], now: float | None, incident_of: dict[Any, int]) -> list[tuple[int | None, list[dict]]]:
    """Related findings as (incident id or None, findings): first by NAMED and SPECIFIC
    relations, transitively; then each group that stops above the shards and has only BROAD
    links down (clue errors that name no shard), from a finding nothing in the group explains by
    name, joins the one group it best explains -- the
    longest, strongest, most severe chain -- rather than every group on any shard. Findings of
    two different incidents (`incident_of`: finding id -> incident id) never merge."""
    items = sorted(findings, key=lambda f: (f.get("first_seen") or 0, f.get("id") or 0))
    parent = list(range(len(items)))
    owner: dict[int, int | None] = {i: incident_of.get(f.get("id")) for i, f in enumerate(items)}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        ri, rj = root(i), root(j)
        if ri == rj or (owner[ri] is not None and owner[rj] is not None):
            return
        parent[rj] = ri
        owner[ri] = owner[ri] if owner[ri] is not None else owner[rj]

    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            if relation(items[i], items[j], now) >= SPECIFIC:
                union(i, j)

    def groups() -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for i in range(len(items)):
            out.setdefault(root(i), []).append(i)
        return out

    for r, members in list(groups().items()):
        fs = [items[i] for i in members]
        if _explained(fs):
            continue
        best, best_key = None, None
        for r2, others in groups().items():
            if r2 == root(r) or (owner[root(r)] is not None and owner[r2] is not None):
                continue
            gs = [items[i] for i in others]
            if not any(_strength(f, g) == BROAD and overlaps(f, g, now) and not _named_cause(f, fs)
                       for f in fs for g in gs):
                continue
            both = fs + gs
            key = (_path_key(_best_path(both)), max(SEVERITY_RANK.get(g.get("severity"), 0) for g in gs),
                   -min(g.get("first_seen") or 0 for g in gs))
            if best_key is None or key > best_key:
                best, best_key = others[0], key
        if best is not None:
            union(members[0], best)
    return [(owner[r], [items[i] for i in members]) for r, members in groups().items()]


def group(findings: list[dict], now: float | None = None) -> list[list[dict]]:
    """Related findings as groups (each oldest first)."""
    return [fs for _, fs in _components(findings, now, {})]


# -- the chain ------------------------------------------------------------------------------------

def _path_key(path: list[dict]) -> tuple:
    strength = sum(_strength(a, b) for a, b in zip(path, path[1:]))
    sev = sum(SEVERITY_RANK.get(f.get("severity"), 0) for f in path)
    return (len(path), layer(path[-1]), strength, sev, -(path[0].get("first_seen") or 0),
            -(path[-1].get("first_seen") or 0))


def _best_path(findings: list[dict]) -> list[dict]:
    items = sorted(findings, key=lambda f: (layer(f), f.get("first_seen") or 0, f.get("id") or 0))
    best: list[dict] = []

    def walk(path: list[dict]) -> None:
        nonlocal best
        if not best or _path_key(path) > _path_key(best):
            best = list(path)
        last = path[-1]
        for g in items:
            if layer(g) > layer(last) and linked(last, g) and not _guess(last, g, items):
                path.append(g)
                walk(path)
                path.pop()
    for f in items:
        walk([f])
    return best


def link(f: dict, role: str, because: str | None) -> dict[str, Any]:
    return {"finding_id": f.get("id"), "kind": f.get("kind"), "subject": f.get("subject"),
            "title": f.get("title") or "", "severity": f.get("severity"), "state": f.get("state"),
            "layer": layer(f), "label": label(f), "role": role, "because": because,
            "figures": evidence_figures(f), "lines": example_lines(f),
            "runbook": f.get("runbook") or f.get("kind")}


def _because(a: dict, b: dict) -> str:
    """Why `b` explains `a`, in words."""
    sa, sb, ha, hb = _shard(a), _shard(b), _host(a), _host(b)
    if sa and sa == sb:
        return f"both on {sa}"
    if ha and ha == hb:
        return f"both on {ha}"
    serves = _detector(b).serves(b)
    if serves:
        return serves.because
    return _detector(a).reaches(a) or ""


def build_chain(findings: list[dict]) -> dict[str, Any]:
    """The root-cause hypothesis over one incident's findings (plain dicts, open or resolved):
    {"chain": [link, ...] upstream to downstream, "root": link | None, "summary", "cause",
    "remediation", "others": [finding ids off the chain]}."""
    if not findings:
        return {"chain": [], "root": None, "summary": "", "cause": "", "remediation": None, "others": []}
    path = _best_path(findings)
    links = []
    for i, f in enumerate(path):
        role = "root cause" if i == len(path) - 1 else ("symptom" if i == 0 else "cause")
        links.append(link(f, role, _because(path[i - 1], f) if i else None))
    root = path[-1]
    summary = " → ".join(x["label"] for x in links) + f" → root cause: {cause(root)}"
    on_chain = {id(f) for f in path}
    others = [f.get("id") for f in sorted(findings, key=lambda f: (layer(f), f.get("first_seen") or 0))
              if id(f) not in on_chain]
    return {"chain": links, "root": links[-1], "summary": summary, "cause": cause(root),
            "remediation": root.get("remediation"), "others": others}


def severity(findings: Iterable[dict]) -> str:
    """The worst severity among the open findings (all of them when none is open)."""
    fs = list(findings)
    pool = [f for f in fs if f.get("state") == "open"] or fs
    return max((f.get("severity") or "info" for f in pool), key=lambda s: SEVERITY_RANK.get(s, 0),
               default="info")


def title(hypothesis: dict) -> str:
    chain = hypothesis.get("chain") or []
    if not chain:
        return "incident"
    if len(chain) == 1:
        return chain[0]["label"]
    return f"{chain[0]['label']}, caused by {hypothesis['cause']}"


def _signature(h: dict) -> list:
    return [x["finding_id"] for x in h.get("chain", [])]


# -- the writes -----------------------------------------------------------------------------------

def _entry(now: float, event: str, f: dict) -> dict[str, Any]:
    return {"ts": now, "event": event, "finding_id": f.get("id"), "kind": f.get("kind"),
            "subject": f.get("subject"), "title": f.get("title") or label(f), "severity": f.get("severity")}


def update(db, cf, open_findings: list[dict], resolved: list[dict], now: float) -> list[dict]:
    """Group the open findings into incidents, record what changed on their timelines, refresh
    their root-cause hypotheses, and resolve incidents whose findings are all resolved. Returns
    the incidents changed by this call. Only `db` is written."""
    active = {i["id"]: i for i in db.incidents(state="open") + db.incidents(state="acknowledged")}
    members: dict[int, list[dict]] = {iid: db.incident_findings(iid) for iid in active}
    pending: dict[int, list[dict]] = {}          # incident id -> timeline entries to add
    touched: set[int] = set()

    # Findings resolved this run: on their incident's timeline.
    for f in resolved:
        iid = f.get("incident_id")
        if iid is not None and iid in active:
            pending.setdefault(iid, []).append(_entry(now, "finding_resolved", f))
            touched.add(iid)
            members[iid] = [f if m["id"] == f["id"] else m for m in members[iid]]

    # New findings join the incident they relate to, else open one per group of related findings.
    unassigned = [f for f in open_findings if f.get("incident_id") is None]
    incident_of = {m["id"]: iid for iid, ms in members.items() for m in ms}
    new_ids = {f["id"] for f in unassigned}
    everyone = [m for ms in members.values() for m in ms] + unassigned
    for iid, grp in _components(everyone, now, incident_of):
        joiners = [f for f in grp if f["id"] in new_ids]
        if not joiners:
            continue
        if iid is None:
            h = build_chain(joiners)
            inc = db.add_incident(title(h), root_cause=h, actor=ACTOR, severity=severity(joiners),
                                  at=min(f["first_seen"] for f in joiners))
            iid = inc["id"]
            active[iid], members[iid] = inc, []
            log.warning("incident %s opened: %s", iid, h["summary"])
        for f in joiners:
            f = db.upsert_finding(f["kind"], f["subject"], severity=f["severity"], evidence=f["evidence"],
                                  runbook=f["runbook"], remediation=f["remediation"], incident_id=iid,
                                  seen=f["last_seen"], title=f["title"], about=f["about"]) or f
            members[iid].append(f)
            pending.setdefault(iid, []).append(_entry(now, "finding_opened", f))
        touched.add(iid)

    # Refresh hypotheses; resolve incidents with nothing open.
    out = []
    for iid in sorted(touched):
        inc, fs = active[iid], members[iid]
        h = build_chain(fs)
        entries = pending.get(iid, [])
        first = not any(e.get("event") == "hypothesis" for e in inc.get("timeline") or [])
        if first or _signature(h) != _signature(inc.get("root_cause") or {}):
            entries.append({"ts": now, "event": "hypothesis", "summary": h["summary"],
                            "root_finding_id": h["root"]["finding_id"] if h["root"] else None})
        inc = db.update_incident(iid, title=title(h), root_cause=h, severity=severity(fs),
                                 timeline=entries, at=now)
        if fs and all(f.get("state") == "resolved" for f in fs):
            inc = db.set_incident_state(iid, "resolved", ACTOR, note="every finding resolved", at=now)
            log.info("incident %s resolved: every finding resolved", iid)
        out.append(inc)
    return out


# -- lifecycle: the transitions a person may make ------------------------------------------------

# to -> the states it may come from; `update` above makes the automatic ones
TRANSITIONS = {"acknowledged": ("open",), "resolved": ("open", "acknowledged")}


class UnknownIncident(LookupError):
    pass


class TransitionRefused(ValueError):
    pass


def transition(db, incident_id: int, to: str, actor: str, note: str | None = None) -> dict:
    """Move an incident to `to` for `actor` (audited by the database). The API, the dashboard's
    buttons and the CLI all come through here."""
    try:
        current = db.incident(incident_id)
    except KeyError:
        raise UnknownIncident(f"unknown incident {incident_id}") from None
    if current["state"] not in TRANSITIONS[to]:
        raise TransitionRefused(f"incident {incident_id} is {current['state']}; it cannot become {to} "
                                f"(only from {' or '.join(TRANSITIONS[to])})")
    return db.set_incident_state(incident_id, to, actor, note=note)
