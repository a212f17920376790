"""The JSON API on a live cluster (real Redis, HAProxy, chat services, traffic and the control
plane under waitress), checked against controlplane/web/openapi.json by a validator: every documented
path answers 200 with a body the document describes, the document and the app's routes name the
same endpoints, bad parameters get a JSON 400 (never a 500), unknown names a 404 listing the
valid ones, and the one action (run a scrape job) needs the token and is audited."""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.conftest import (
    REPO,
    free_subnet,
    live_controlplane,
    small_cluster,
    wait_for,
    write_cluster,
)

DOC_PATH = REPO / "controlplane" / "web" / "openapi.json"
DOC = json.loads(DOC_PATH.read_text())
PREFIX = "/api/v1"
TOKEN = "test-" + secrets.token_urlsafe(24)
DOC_URI = "urn:chatops:openapi"
REGISTRY = Registry().with_resource(DOC_URI, Resource.from_contents(DOC, default_specification=DRAFT202012))
GET_PATHS = sorted(p for p, ops in DOC["paths"].items() if "get" in ops)


# -- helpers --------------------------------------------------------------------------------------

def _pointer(*parts: str) -> str:
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def validator(pointer: str) -> Draft202012Validator:
    """A Draft 2020-12 validator for the schema at `pointer` in the document; its `$ref`s
    resolve against the whole document."""
    return Draft202012Validator({"$ref": f"{DOC_URI}#{pointer}"}, registry=REGISTRY)


def schema_errors(v: Draft202012Validator, body) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message[:300]}"
            for e in sorted(v.iter_errors(body), key=lambda e: list(map(str, e.absolute_path)))][:10]


def response_validator(path: str, method: str = "get", status: str = "200") -> Draft202012Validator:
    return validator(_pointer("paths", path, method, "responses", status, "content", "application/json", "schema"))


ERROR = validator("/components/schemas/Error")


class Reply:
    def __init__(self, status: int, headers: dict[str, str], raw: bytes):
        self.status, self.headers, self.raw = status, headers, raw

    @property
    def json(self):
        return json.loads(self.raw)

    def __repr__(self):
        return f"<{self.status} {self.raw[:300]!r}>"


def call(base: str, target: str, method: str = "GET", headers: dict[str, str] | None = None,
         body: bytes | None = None) -> Reply:
    """One HTTP request with the target sent as given (already percent-encoded)."""
    u = urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=15)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        r = conn.getresponse()
        return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


def get_json(base: str, target: str):
    r = call(base, target)
    assert r.status == 200, r
    return r.json


def assert_json_error(r: Reply, status: int) -> str:
    """The reply is a JSON error of the documented shape with this status; returns its message."""
    assert r.status == status, r
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    body = r.json
    assert not schema_errors(ERROR, body), schema_errors(ERROR, body)
    assert body["error"]["status"] == status
    assert body["error"]["message"].strip()
    return body["error"]["message"]


# -- the live cluster -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def live():
    """A small cluster with traffic and its control plane, shared by the module; the control plane
    inherits our API token from the environment. Waits until every job has run twice, so rates
    exist."""
    old = os.environ.get("CHATOPS_API_TOKEN")
    os.environ["CHATOPS_API_TOKEN"] = TOKEN
    try:
        with live_controlplane(traffic=True) as (cluster, base):
            def all_ran_twice():
                jobs = get_json(base, f"{PREFIX}/jobs")["jobs"]
                return jobs and all(j["runs"] >= 2 for j in jobs)
            wait_for(all_ran_twice, timeout=30, interval=0.2, what="every scrape job to run twice")
            seed_incident(cluster.run)
            seed_plan(base)
            yield base
    finally:
        if old is None:
            os.environ.pop("CHATOPS_API_TOKEN", None)
        else:
            os.environ["CHATOPS_API_TOKEN"] = old


def seed_incident(run: Path) -> None:
    """One incident in the live control plane's database, so /incidents/{incident_id} has a value:
    a finding written as the engine writes one, grouped by the same code it calls."""
    from controlplane import incidents
    from controlplane.database import Database
    with Database(run / "controlplane.sqlite3") as db:
        db.upsert_finding("hot_shard", "shard0", severity="warning", evidence={"cpu_percent": 91.0},
                          runbook="hot_shard", title="shard0 is hot (seeded by test_api)",
                          about={"shard": "shard0", "host": "redis1"})
        incidents.update(db, None, db.findings(open_only=True), [], time.time())


def seed_plan(base: str) -> None:
    """One remediation plan, so /plans/{plan_id} has a value: planning changes nothing."""
    body = json.dumps({"action": "set_redis_config", "params": {"shard": "shard0", "timeout": 0}}).encode()
    r = call(base, f"{PREFIX}/plans", "POST", {"Authorization": f"Bearer {TOKEN}",
                                               "Content-Type": "application/json"}, body)
    assert r.status == 201, r


def real_values(base: str, path: str) -> list[str]:
    """Every real value for the path's parameter, read from the live API itself."""
    if "{" not in path:
        return [path]
    if path.startswith("/shards/"):
        names = [s["name"] for s in get_json(base, f"{PREFIX}/shards")["shards"]]
    elif path.startswith("/hosts/"):
        names = [h["name"] for h in get_json(base, f"{PREFIX}/hosts")["hosts"]]
    elif path.startswith("/proxies/"):
        names = [p["host"] for p in get_json(base, f"{PREFIX}/proxies")["proxies"]]
    elif path.startswith("/jobs/"):
        names = [j["id"] for j in get_json(base, f"{PREFIX}/jobs")["jobs"]]
    elif path.startswith("/incidents/"):
        names = [str(i["id"]) for i in get_json(base, f"{PREFIX}/incidents")["incidents"]]
    elif path.startswith("/plans/"):
        names = [p["id"] for p in get_json(base, f"{PREFIX}/plans")["plans"]]
    elif path.startswith("/runbooks/"):
        names = [r["name"] for r in get_json(base, f"{PREFIX}/runbooks")["runbooks"]]
    else:
        raise AssertionError(f"no real values known for the parameter of {path}: teach real_values")
    assert names, f"the live cluster has nothing to fill {path} with"
    return [re.sub(r"\{[^}]+\}", quote(n, safe=":"), path) for n in names]


# -- the document ---------------------------------------------------------------------------------

def test_document_is_valid_openapi_31():
    validate_openapi(DOC)
    assert DOC["openapi"].startswith("3.1")
    for name, schema in DOC["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema)


def test_document_describes_every_route_of_the_app(tmp_path):
    """The routes under /api/v1 and the document's paths are the same set, methods included."""
    from controlplane.web.app import create_app
    config = write_cluster(tmp_path / "cluster.yaml", small_cluster(free_subnet()))
    app = create_app({"CLUSTER_FILE": str(config), "RUN_DIR": str(tmp_path / "run"), "SCHEDULER": False})
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith(PREFIX + "/"):
            path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule[len(PREFIX):])
            routes |= {(path, m.lower()) for m in rule.methods - {"HEAD", "OPTIONS"}}
    documented = {(path, m) for path, ops in DOC["paths"].items() for m in ops
                  if m in ("get", "post", "put", "patch", "delete")}
    assert routes == documented, (f"only in the app: {sorted(routes - documented)}; "
                                  f"only in the document: {sorted(documented - routes)}")
    # and every operation that changes state says it needs the bearer token
    for path, m in documented:
        if m != "get":
            assert DOC["paths"][path][m].get("security") == [{"bearerToken": []}], path


def test_the_schemas_catch_drift(live):
    """A body with an extra key, a missing key or a wrong type does not validate: the document is
    strict enough to notice when the code changes shape."""
    v = response_validator("/shards")
    body = get_json(live, f"{PREFIX}/shards")
    assert not schema_errors(v, body)
    extra = json.loads(json.dumps(body))
    extra["shards"][0]["surprise"] = 1
    missing = json.loads(json.dumps(body))
    del missing["shards"][0]["ops_per_s"]
    wrong = json.loads(json.dumps(body))
    wrong["shards"][0]["clients"]["by_host"] = "chat1"
    for bad in (extra, missing, wrong):
        assert schema_errors(v, bad)


def test_served_document_is_the_repo_file(live):
    r = call(live, f"{PREFIX}/openapi.json")
    assert r.status == 200 and r.headers["content-type"].startswith("application/json")
    assert r.raw == DOC_PATH.read_bytes()


# -- every documented endpoint, live --------------------------------------------------------------

@pytest.mark.parametrize("path", GET_PATHS)
def test_every_documented_get_matches_the_document(live, path):
    v = response_validator(path)
    for target in real_values(live, path):
        r = call(live, PREFIX + target)
        assert r.status == 200, (target, r)
        assert r.headers["content-type"].startswith("application/json")
        errors = schema_errors(v, r.json)
        assert not errors, f"{target} does not match the document:\n" + "\n".join(errors)


VALID = {"since": "30s", "limit": "5", "service": "edge", "state": "open"}


@pytest.mark.parametrize("path", [p for p in GET_PATHS if any(
    "$ref" in q and q["$ref"].rsplit("/", 1)[1] in VALID for q in DOC["paths"][p]["get"].get("parameters", []))])
def test_documented_query_parameters_are_accepted(live, path):
    names = [q["$ref"].rsplit("/", 1)[1] for q in DOC["paths"][path]["get"]["parameters"] if "$ref" in q]
    query = "&".join(f"{n}={VALID[n]}" for n in names if n in VALID)
    v = response_validator(path)
    for target in real_values(live, path):
        r = call(live, f"{PREFIX}{target}?{query}")
        assert r.status == 200, (target, query, r)
        assert not schema_errors(v, r.json), schema_errors(v, r.json)


def test_since_cuts_the_series(live):
    def enough_history():   # a scrape a second: 4 points span 3 s, more than `since` keeps
        points = get_json(live, f"{PREFIX}/shards/shard0")["series"]["ops_per_s"]
        return points if len(points) >= 4 else None
    full = wait_for(enough_history, timeout=15, interval=0.5, what="4 points of shard0's history")
    recent = get_json(live, f"{PREFIX}/shards/shard0?since=1500ms")["series"]["ops_per_s"]
    assert 0 < len(recent) < len(full)
    assert all(t >= time.time() - 10 for t, _ in recent)


def test_under_traffic_shards_are_up_busy_and_see_both_chat_hosts(live):
    def busy():
        shards = get_json(live, f"{PREFIX}/shards")["shards"]
        return shards if all(s["up"] is True and (s["ops_per_s"] or 0) > 0 for s in shards) else None
    shards = wait_for(busy, timeout=20, interval=0.5, what="every shard up with ops/s > 0")
    assert sorted(s["name"] for s in shards) == ["shard0", "shard1"]
    for s in shards:
        def both_hosts(name=s["name"]):
            body = get_json(live, f"{PREFIX}/shards/{name}/clients")
            return {"chat1", "chat-testing"} <= {h["host"] for h in body["by_host"]}
        wait_for(both_hosts, timeout=15, interval=0.5, what=f"clients of {s['name']} from chat1 and chat-testing")
    jobs = get_json(live, f"{PREFIX}/jobs")["jobs"]
    assert not [j for j in jobs if j["last_error"]], jobs


def test_logs_filter_by_service(live):
    everything = get_json(live, f"{PREFIX}/logs")["groups"]
    assert everything, "traffic writes log lines"
    edge = get_json(live, f"{PREFIX}/logs?service=edge")["groups"]
    assert edge and all(g["service"] == "edge" for g in edge)
    assert get_json(live, f"{PREFIX}/logs?service=no-such-service")["groups"] == []


# -- bad input ------------------------------------------------------------------------------------

LONG = "9" * 5000
BAD_PARAMETERS = [
    ("/shards/shard0?since=abc", "since"),
    ("/shards/shard0?since=-5m", "since"),
    ("/shards/shard0?since=0", "since"),
    ("/shards/shard0?since=0s", "since"),
    ("/shards/shard0?since=5x", "since"),
    ("/shards/shard0?since=1e3", "since"),
    ("/shards/shard0?since=", "since"),
    ("/shards/shard0?since=8d", "since"),
    ("/shards/shard0?since=nan", "since"),
    ("/shards/shard0?since=inf", "since"),
    ("/shards/shard0?since=5m&since=1h", "since"),
    (f"/shards/shard0?since={LONG}", "since"),
    ("/hosts/chat1?since=%205m", "since"),
    ("/proxies/chat1?since=1h%0A", "since"),
    ("/logs?since=ten", "since"),
    ("/audit?limit=0", "limit"),
    ("/audit?limit=-1", "limit"),
    ("/audit?limit=x", "limit"),
    ("/audit?limit=1.5", "limit"),
    ("/audit?limit=100000", "limit"),
    ("/audit?limit=1001", "limit"),
    ("/audit?limit=", "limit"),
    ("/audit?limit=%D9%A1%D9%A2", "limit"),          # Arabic-Indic digits: str.isdigit() says yes
    ("/audit?limit=%00", "limit"),
    (f"/audit?limit={LONG}", "limit"),
    ("/logs?service=edge%0Ainjected", "service"),
    ("/logs?service=edge%0D%0AX-Evil:%201", "service"),
    ("/logs?service=", "service"),
    ("/logs?service=../../etc/passwd", "service"),
    ("/logs?service=%3Cscript%3E", "service"),
    ("/logs?service=" + "a" * 5000, "service"),
    ("/shards?foo=1", "foo"),
    ("/shards?since=5m", "since"),                   # /shards takes no parameter
    ("/overview?limit=5", "limit"),
    ("/jobs?x", "x"),
    ("/openapi.json?v=2", "v"),
    ("/shards/shard0/clients?since=5m", "since"),
    ("/hosts/chat1?" + "k" * 3000 + "=1", "unknown"),
]


@pytest.mark.parametrize("target,names", BAD_PARAMETERS, ids=[t[:60] for t, _ in BAD_PARAMETERS])
def test_bad_parameters_get_400_naming_them(live, target, names):
    message = assert_json_error(call(live, PREFIX + target), 400)
    assert names in message, message
    assert "\n" not in message and "\r" not in message


@pytest.mark.parametrize("target,valid", [
    ("/shards/shard9", "shard0, shard1"),
    ("/shards/shard9?since=5m", "shard0, shard1"),
    ("/shards/shard9/clients", "shard0, shard1"),
    ("/hosts/nohost", "chat1"),
    ("/proxies/redis1", "chat1, chat-testing"),     # a host, but no HAProxy on it
    ("/shards/" + "x" * 3000, "shard0"),
    ("/shards/%0A", "shard0"),
])
def test_unknown_names_get_404_listing_the_valid_ones(live, target, valid):
    message = assert_json_error(call(live, PREFIX + target), 404)
    assert valid in message, message


@pytest.mark.parametrize("target", ["/nope", "/shards/shard0/nope", "/v2", "/", "/jobs/redis:shard0"])
def test_unknown_routes_get_json_404(live, target):
    assert_json_error(call(live, PREFIX + target), 404)


@pytest.mark.parametrize("method,target", [
    ("POST", "/shards"), ("DELETE", "/shards/shard0"), ("PUT", "/overview"),
    ("GET", "/jobs/redis:shard0/run"), ("DELETE", "/jobs/redis:shard0/run")])
def test_wrong_method_gets_json_405(live, method, target):
    r = call(live, PREFIX + target, method, {"Authorization": f"Bearer {TOKEN}"})
    assert_json_error(r, 405)
    assert r.headers.get("allow")


# -- the action: run a scrape job -----------------------------------------------------------------

RUN = "/jobs/{job_id}/run"


def test_run_job_needs_the_token(live):
    target = f"{PREFIX}/jobs/redis:shard0/run"
    r = call(live, target, "POST")
    assert_json_error(r, 401)
    assert r.headers.get("www-authenticate", "").startswith("Bearer")
    r = call(live, target, "POST", {"Authorization": "Bearer not-the-token"})
    assert_json_error(r, 401)
    assert TOKEN not in r.raw.decode()


def test_run_job_runs_it_now_and_is_audited(live):
    job_id = "clients:shard1"   # every 2 s: a run right now is plainly ours
    before = next(j for j in get_json(live, f"{PREFIX}/jobs")["jobs"] if j["id"] == job_id)
    started = time.time()
    r = call(live, f"{PREFIX}/jobs/{job_id}/run", "POST", {"Authorization": f"Bearer {TOKEN}"})
    assert r.status == 200, r
    assert not schema_errors(response_validator(RUN, "post"), r.json), schema_errors(response_validator(RUN, "post"), r.json)
    assert r.json["result"] == "ok"
    job = r.json["job"]
    assert job["id"] == job_id and job["last_error"] is None
    assert job["runs"] > before["runs"] and job["last_run"] >= started - 0.5

    audit = get_json(live, f"{PREFIX}/audit?limit=10")
    assert not schema_errors(response_validator("/audit"), audit)
    mine = [a for a in audit["audit"] if a["action"] == "scrape.run" and a["target"] == job_id
            and a["ts"] >= started - 0.5]
    assert len(mine) == 1, audit
    assert mine[0]["result"] == "ok"
    assert mine[0]["actor"].startswith("token:")
    assert TOKEN not in json.dumps(audit)
    assert len(get_json(live, f"{PREFIX}/audit?limit=1")["audit"]) == 1


def test_run_job_bad_input(live):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    message = assert_json_error(call(live, f"{PREFIX}/jobs/redis:shard9/run", "POST", auth), 404)
    assert "redis:shard0" in message
    assert "x" in assert_json_error(call(live, f"{PREFIX}/jobs/redis:shard0/run?x=1", "POST", auth), 400)
    # anonymous clients learn they must authenticate before anything about the job
    assert_json_error(call(live, f"{PREFIX}/jobs/redis:shard9/run", "POST"), 401)
