"""Validation gaps of issue 16: regexes that let a trailing newline or a non-ASCII digit through,
env-var name fields, and cluster files too deep (or too big) to load."""

from __future__ import annotations

import copy
import re

import pytest
import yaml

from cluster import clusterfile, durations, spec
from cluster.clusterfile import DEFAULT_CLUSTER_FILE, ClusterFileError
from tests.conftest import chatops

BASE = yaml.safe_load(DEFAULT_CLUSTER_FILE.read_text(encoding="utf-8"))
ARABIC_TEN = "\u0661\u0660"      # "١٠": Unicode digits, matched by a plain `\d`
FULLWIDTH_TEN = "\uff11\uff10"   # "１０"


def problems(mutate) -> list[tuple[str, str]]:
    doc = copy.deepcopy(BASE)
    mutate(doc)
    with pytest.raises(ClusterFileError) as err:
        clusterfile.parse(yaml.safe_dump(doc, allow_unicode=True))
    return err.value.problems


def setdeep(doc: dict, path: str, value) -> None:
    *parents, last = path.split(".")
    for p in parents:
        doc = doc.setdefault(p, {})
    doc[last] = value


# -- ASCII digits only, whole string only ------------------------------------------------------

@pytest.mark.parametrize("value", [f"{ARABIC_TEN}s", f"{FULLWIDTH_TEN}s", "10s\n", "10s\r", "\n10s",
                                   "1\u0660s"])
def test_duration_is_ascii_digits_and_the_whole_string(value):
    with pytest.raises(durations.DurationError):
        durations.parse(value)
    with pytest.raises(durations.DurationError):
        durations.parse(value.replace("s", ""), bare_seconds=True)
    got = problems(lambda d: setdeep(d, "haproxy.timeouts.client", value))
    assert [p for p, _ in got] == ["haproxy.timeouts.client"]


@pytest.mark.parametrize("value", [f"{ARABIC_TEN}mb", f"{FULLWIDTH_TEN}", "256mb\n", "256\n"])
def test_maxmemory_is_ascii_digits_and_the_whole_string(value):
    got = problems(lambda d: setdeep(d, "redis.maxmemory", value))
    assert [p for p, _ in got] == ["redis.maxmemory"]
    assert "maxmemory" in got[0][1] and "[0-9]" in got[0][1]


@pytest.mark.parametrize("value", ["lobby\n", "lobby\r", f"room{ARABIC_TEN}", "lobbyé"])
def test_room_is_ascii_and_the_whole_string(value):
    got = problems(lambda d: d["clusters"]["main"].__setitem__("rooms", [value]))
    assert [p for p, _ in got] == ["clusters.main.rooms.0"]


@pytest.mark.parametrize("value", ["tmi.local\n", f"tmi{ARABIC_TEN}.local", "tmí.local"])
def test_server_name_is_ascii_and_the_whole_string(value):
    got = problems(lambda d: setdeep(d["clusters"]["main"], "services.edge.server_name", value))
    assert [p for p, _ in got] == ["clusters.main.services.edge.server_name"]


@pytest.mark.parametrize("value", ["chat1\n", f"chat{ARABIC_TEN}", "chät1"])
def test_name_is_ascii_and_the_whole_string(value):
    got = problems(lambda d: d["clusters"]["main"].__setitem__("hosts", [value]))
    assert [p for p, _ in got] == ["clusters.main.hosts.0"]


def test_every_validating_regex_is_ascii_and_anchored_by_fullmatch():
    """The class of bug, not just its instances: every compiled pattern in cluster.spec and
    cluster.durations is ASCII-only, has no `\\d` and no `$` (which matches before a final newline)."""
    patterns = [v for mod in (spec, durations) for v in vars(mod).values() if isinstance(v, re.Pattern)]
    assert len(patterns) >= 5
    for p in patterns:
        assert p.flags & re.ASCII, p.pattern
        assert "\\d" not in p.pattern and "$" not in p.pattern, p.pattern
    # Field(pattern=...) goes to pydantic-core's regex engine, whose `\d` is Unicode: not used.
    source = (DEFAULT_CLUSTER_FILE.parent / "spec.py").read_text()
    assert "pattern=" not in source


# -- env-var names ------------------------------------------------------------------------------

ENV_FIELDS = {
    "controlplane.auth_token_env": lambda d, v: setdeep(d, "controlplane.auth_token_env", v),
    "alerts.0.url_env": lambda d, v: d.__setitem__(
        "alerts", [{"name": "ops", "type": "webhook", "url_env": v}]),
    "alerts.0.secret_env": lambda d, v: d.__setitem__(
        "alerts", [{"name": "ops", "type": "webhook", "url_env": "HOOK_URL", "secret_env": v}]),
}


@pytest.mark.parametrize("field", sorted(ENV_FIELDS))
@pytest.mark.parametrize("value", ["CHATOPS_API_TOKEN\n", "CHATOPS_API_TOKEN\r\n", "\nCHATOPS_API_TOKEN",
                                   "chatops_api_token", "TOKEN-1", "1TOKEN", "", "TOKÉN",
                                   f"TOKEN{ARABIC_TEN}", "CHATOPS API TOKEN"])
def test_env_var_names_are_refused_unless_exact(field, value):
    got = problems(lambda d: ENV_FIELDS[field](d, value))
    assert [p for p, _ in got] == [field]
    leaf = field.rsplit(".", 1)[1]
    # The message itself names the field and the rule, so it reads on its own.
    assert leaf in got[0][1] and "[A-Z_][A-Z0-9_]*" in got[0][1], got


@pytest.mark.parametrize("value", ["CHATOPS_API_TOKEN", "_X", "A1_B2"])
def test_good_env_var_names_load(value):
    doc = copy.deepcopy(BASE)
    setdeep(doc, "controlplane.auth_token_env", value)
    assert clusterfile.parse(yaml.safe_dump(doc)).controlplane.auth_token_env == value


# -- deep and big files -------------------------------------------------------------------------

DEEP = {
    "flow sequences": "hosts: " + "[" * 3000 + "]" * 3000 + "\n",
    "flow mappings": "hosts: " + "{a: " * 3000 + "b" + "}" * 3000 + "\n",
    # One space of indent per level, so 1,000 levels stay under MAX_BYTES.
    "block mappings": "".join(" " * i + "k:\n" for i in range(1000)),
    "block sequences": "".join(" " * i + "-\n" for i in range(1000)),
}


@pytest.mark.parametrize("kind", sorted(DEEP))
def test_a_deeply_nested_file_gives_one_clear_error(kind):
    with pytest.raises(ClusterFileError) as err:
        clusterfile.parse(DEEP[kind], "deep.yaml")
    [(where, msg)] = err.value.problems
    assert where.startswith("line ") and "nested deeper than" in msg, err.value


def test_a_file_nested_as_deep_as_allowed_still_reaches_validation():
    depth = clusterfile.MAX_DEPTH - 1    # the top-level mapping is one level
    text = "hosts: " + "[" * depth + "]" * depth + "\n"
    with pytest.raises(ClusterFileError) as err:
        clusterfile.parse(text)
    assert not any("nested deeper" in m for _, m in err.value.problems)


def test_an_oversized_file_is_refused_before_parsing(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("# " + "x" * clusterfile.MAX_BYTES + "\n" + DEFAULT_CLUSTER_FILE.read_text())
    with pytest.raises(ClusterFileError) as err:
        clusterfile.load(path)
    [(_, msg)] = err.value.problems
    assert "larger than" in msg


def test_config_check_on_a_deep_file_exits_2_without_a_traceback(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text(DEEP["flow sequences"])
    result = chatops("config", "check", str(path))
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr + result.stdout
    assert "nested deeper than" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 2     # the headline and the one problem
