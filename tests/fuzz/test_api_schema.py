"""schemathesis against the live control plane's OpenAPI document (controlplane/web/openapi.json,
served at /api/v1/openapi.json): a few cases per operation, valid and invalid, sent over real HTTP
to one small live cluster, with and without the API token. No case may get a 5xx, and every
answer must have a status code, content type, headers and body the document describes.

What the token may do is bounded: authenticated cases reach every operation but applying a plan
(the one that moves slots and restarts processes; it is fuzzed without the token only), so the
worst they do to the test cluster is a scrape run early, a silence, a plan nobody applies, an
incident acknowledged. They always carry the right token: wrong ones would trip the throttle
(controlplane/web/auth.py) and turn later cases into 429s, which this test would then be about."""

from __future__ import annotations

import os
import secrets

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import REPO, api_token, live_controlplane, wait_for
from tests.fuzz.cases import count

TOKEN = "fuzz-" + secrets.token_urlsafe(24)
SCHEMA = schemathesis.openapi.from_path(REPO / "controlplane" / "web" / "openapi.json")
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
# Cases per operation, generation mode and caller: about 500 requests in all by default. Apart from
# CHATOPS_FUZZ_EXAMPLES, since each case here is an HTTP request rather than a function call.
PER_OPERATION = max(1, int(os.environ.get("CHATOPS_FUZZ_API_EXAMPLES", "3")))
NOT_WITH_THE_TOKEN = {("POST", "/plans/{plan_id}/apply")}


@pytest.fixture(scope="module")
def live():
    with api_token(TOKEN), live_controlplane(traffic=False) as (_cluster, base):
        session = requests.Session()

        def scraped():
            r = session.get(f"{base}/api/v1/jobs", timeout=5)
            return r.ok and all(j["runs"] >= 1 for j in r.json()["jobs"])
        wait_for(scraped, timeout=30, interval=0.2, what="every scrape job to run once")
        yield base + "/api/v1", session


def _operations():
    for result in SCHEMA.get_all_operations():
        yield result.ok()


def _fuzz(op, mode: GenerationMode, base: str, session: requests.Session, headers: dict, name: str,
          status: int | None) -> None:
    # No shrinking: a failing case is reported as found, so a failure costs no extra minutes.
    @settings(max_examples=PER_OPERATION, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(op.as_strategy(generation_mode=mode))
    def one(case):
        count(name)
        response = case.call_and_validate(base_url=base, session=session, headers=headers, checks=CHECKS, timeout=15)
        assert status is None or response.status_code == status, (status, response.status_code)
    one()


# In this order: the authenticated cases first, since the unauthenticated ones may send wrong tokens
# (schemathesis fills a documented security scheme) and trip the per-address throttle, after which
# the token-protected operations answer 429 (documented) to everyone on 127.0.0.1.
CALLERS = {
    "authenticated": {"Authorization": f"Bearer {TOKEN}"},
    "unauthenticated": {},
    # A Host the control plane does not answer to (controlplane/web/app.py): 400 from every route.
    "foreign_host": {"Host": "attacker.example"},
    # The right token after too many wrong ones from this address: 429 from every protected route.
    "throttled": {"Authorization": f"Bearer {TOKEN}"},
}


def _trip_the_throttle(base: str, session: requests.Session) -> None:
    for _ in range(30):
        r = session.post(f"{base}/jobs/nosuchjob/run", headers={"Authorization": "Bearer wrong"}, timeout=5)
        if r.status_code == 429:
            return
    raise AssertionError(f"no 429 after 30 wrong tokens: {r.status_code} {r.text[:200]}")


def _expected(caller: str, op) -> int | None:
    if caller == "foreign_host":
        return 400
    if caller == "throttled" and op.definition.raw.get("security"):
        return 429
    return None


@pytest.mark.parametrize("caller", list(CALLERS))
def test_the_api_answers_as_its_openapi_document_says(live, caller):
    base, session = live
    name = f"test_api_schema::{caller}"
    if caller == "throttled":
        _trip_the_throttle(base, session)
    failures = []
    for op in _operations():
        if caller in ("authenticated", "throttled") and (op.method.upper(), op.path) in NOT_WITH_THE_TOKEN:
            continue
        # Throttled, only valid requests: an invalid path is a 404 from routing, before any token check.
        modes = [GenerationMode.POSITIVE] if caller == "throttled" else [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
        for mode in modes:
            try:
                _fuzz(op, mode, base, session, CALLERS[caller], name, _expected(caller, op))
            except Unsatisfiable:
                pass    # no invalid request exists for an operation without parameters or body
            except Exception as exc:   # every operation gets its turn; all failures are reported together
                failures.append(f"{op.method.upper()} {op.path} ({mode.value}): {exc}"[:3000])
    assert not failures, "\n\n".join(failures)
