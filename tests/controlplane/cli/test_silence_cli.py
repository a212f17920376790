"""`chatops silence add|list|expire` against a live control plane (real cluster, no traffic): the
silence goes through the API, is listed, expires, and is audited; bad matchers and durations fail
before anything is sent, with exit code 2; without the token the command says which variable to set."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import api_json, api_token, chatops, live_controlplane, wait_for

TOKEN = "silence-cli-token-0123456789"


@pytest.fixture(scope="module")
def live():
    with api_token(TOKEN), live_controlplane(traffic=False) as (c, base):
        wait_for(lambda: api_json(base, "GET", "/silences", token=TOKEN, timeout=10)[0] == 200, 30, 0.2,
                 "the control plane's API")
        yield c, base


def silence(c, *args: str, token: str | None = TOKEN):
    env = {k: v for k, v in os.environ.items() if k != "CHATOPS_API_TOKEN"}
    if token is not None:
        env["CHATOPS_API_TOKEN"] = token
    return chatops("silence", *args, "--config", str(c.config), "--run-dir", str(c.run), timeout=60, env=env)


def test_add_list_expire(live):
    c, base = live
    r = silence(c, "add", "--match", "cluster=testing", "--match", "shard=~shard[01]", "--for", "2h",
                "--comment", "load test on testing")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("silence ") and "cluster=testing, shard=~shard[01]" in r.stdout
    sid = int(r.stdout.split()[1])
    listed = silence(c, "list")
    assert listed.returncode == 0, listed.stderr
    line = next(ln for ln in listed.stdout.splitlines() if ln.split()[0] == str(sid))
    assert "active" in line and "# load test on testing" in line and "(by token:" in line
    as_json = json.loads(silence(c, "list", "--json", "--state", "active").stdout)
    assert [s["id"] for s in as_json] == [sid] and as_json[0]["matchers"][0] == {
        "name": "cluster", "op": "=", "value": "testing"}
    gone = silence(c, "expire", str(sid))
    assert gone.returncode == 0 and gone.stdout.startswith(f"silence {sid} expired"), gone.stderr
    again = silence(c, "expire", str(sid))
    assert again.returncode == 3 and "already expired" in again.stderr        # 409, as `chatops apply`
    missing = silence(c, "expire", "9999")
    assert missing.returncode == 2 and "404" in missing.stderr and "unknown silence 9999" in missing.stderr
    audit = api_json(base, "GET", "/audit?limit=20", token=TOKEN)[1]["audit"]
    assert [a["action"] for a in audit if a["target"] == f"silence/{sid}"] == ["silence.expire", "silence.add"]


@pytest.mark.parametrize("args,says", [
    (("--match", "cluster", "--for", "2h"), "--match: matcher 'cluster' has no operator"),
    (("--match", "shard=~(", "--for", "2h"), "bad regular expression"),
    (("--match", "cluster=testing", "--for", "two hours"), "--for 'two hours' is not a duration"),
    (("--match", "cluster=testing", "--for", "400d"), "at most 365d"),
    (("--for", "2h"), "Missing option '--match'"),
])
def test_bad_input_fails_with_exit_2_and_a_clear_message(live, args, says):
    c, base = live
    r = silence(c, "add", *args)
    assert r.returncode == 2 and says in r.stderr, (r.returncode, r.stderr)


def test_without_the_token_it_says_which_variable(live):
    c, base = live
    r = silence(c, "add", "--match", "cluster=testing", "--for", "2h", token=None)
    assert r.returncode == 2 and "CHATOPS_API_TOKEN is not set" in r.stderr
    assert silence(c, "list", token=None).returncode == 0          # reading needs no token
