"""The cluster file: the shipped default is valid, and every broken example is refused with the
key path and the problem, by the library and by `chatops config check`."""

import re
import typing
from pathlib import Path

import pytest
import yaml

from cluster import clusterfile, spec
from tests.conftest import chatops, small_cluster

BROKEN = sorted((Path(__file__).parent.parent / "fixtures" / "broken_clusters").glob("*.yaml"))


def expectation(path: Path) -> tuple[str, str]:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must start with '# expect: <path>: <message>'"
    key, _, message = first[len("# expect: "):].partition(": ")
    return key, message


def test_default_cluster_file_is_valid_and_reproduces_the_talk():
    cf = clusterfile.load().spec
    assert set(cf.clusters) == {"main", "event", "testing"}
    assert cf.clusters["main"].hosts == ["chat1", "chat2"]
    assert len(cf.clusters["event"].hosts) == 1
    assert cf.clusters["testing"].hosts == ["chat-testing"]
    assert len(cf.redis.shards) == 4
    assert {s.host for s in cf.redis.shards} == {"redis1", "redis2"}
    assert cf.haproxy.listener_base_port == 2000
    assert all(h.address.startswith("127.") for h in cf.hosts.values())
    assert cf.cluster_of("chat-testing") == "testing"
    assert cf.host_by_address()["127.0.1.9"] == "chat-testing"


def test_config_check_cli_accepts_the_default():
    result = chatops("config", "check")
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout and "4 shards" in result.stdout


def test_there_are_broken_examples():
    assert len(BROKEN) >= 15


@pytest.mark.parametrize("path", BROKEN, ids=lambda p: p.stem)
def test_broken_example_is_refused_naming_key_and_problem(path):
    key, message = expectation(path)
    with pytest.raises(clusterfile.ClusterFileError) as err:
        clusterfile.load(path)
    problems = err.value.problems
    assert any((k or "<top>") == key and message in m for k, m in problems), problems

    result = chatops("config", "check", str(path))
    assert result.returncode == 2
    assert f"{key}: " in result.stderr and message in result.stderr, result.stderr


def test_every_problem_of_a_stage_is_reported_at_once():
    text = """
hosts:
  chat1: {address: 127.0.1.1}
  redis1: {address: 127.0.2.1}
clusters:
  main: {hosts: [chat1, chat9]}
redis:
  shards:
    - {name: shard0, host: redis1, port: 6379}
    - {name: shard0, host: nowhere, port: 6380}
"""
    with pytest.raises(clusterfile.ClusterFileError) as err:
        clusterfile.parse(text)
    paths = sorted(k for k, _ in err.value.problems)
    assert paths == ["clusters.main.hosts.1", "redis.shards.1.host", "redis.shards.1.name"]


def test_yaml_anchors_and_merge_keys_are_allowed():
    cf = clusterfile.parse("""
hosts:
  chat1: {address: 127.0.1.1}
  redis1: {address: 127.0.2.1}
clusters:
  main: {hosts: [chat1]}
redis:
  shards:
    - &shard {name: shard0, host: redis1, port: 6379}
    - {<<: *shard, name: shard1, port: 6380}
""")
    assert [(s.name, s.host, s.port) for s in cf.redis.shards] == [("shard0", "redis1", 6379), ("shard1", "redis1", 6380)]


def test_a_hostile_key_cannot_split_the_error_line():
    with pytest.raises(clusterfile.ClusterFileError) as err:
        clusterfile.parse('hosts: {"evil\\nkey": {address: 127.0.0.1}}\nclusters: {}\nredis: {shards: []}\n')
    assert len(str(err.value).splitlines()) == 1 + len(err.value.problems)  # one line per problem
    assert "'evil\\nkey'" in str(err.value)


def test_missing_and_unreadable_files_get_a_clear_error(tmp_path):
    result = chatops("config", "check", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2 and "cannot read" in result.stderr
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"hosts: {caf\xe9: {address: 127.0.0.1}}\n")
    result = chatops("config", "check", str(bad))
    assert result.returncode == 2 and "not UTF-8" in result.stderr


def test_remote_profile_allows_real_addresses(subnet):
    doc = small_cluster(subnet)
    doc["profile"] = "remote"
    doc["hosts"]["redis1"] = {"address": "10.20.0.21", "ansible_connection": "ssh"}
    cf = clusterfile.parse(yaml.safe_dump(doc))
    assert cf.address("redis1") == "10.20.0.21"


def _field_paths(model, prefix=""):
    """Every key the cluster file accepts, as dotted paths, read off the pydantic models."""
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        yield path
        todo = [field.annotation]
        while todo:
            t = todo.pop()
            if isinstance(t, type) and issubclass(t, spec._Model):
                yield from _field_paths(t, path + ".")
            else:
                todo.extend(typing.get_args(t))


def test_docs_describe_every_key():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "cluster-file.md").read_text()
    missing = [p for p in _field_paths(spec.ClusterFile)
               if not re.search(rf"`(?:[\w.<>\[\]]+\.)?{re.escape(p.rsplit('.', 1)[-1])}(?:\.[\w.]+)?`", doc)]
    assert missing == [], f"docs/cluster-file.md does not mention: {missing}"


def test_rooms_command_says_where_each_room_is_served():
    result = chatops("rooms")
    assert result.returncode == 0, result.stderr
    row = next(ln for ln in result.stdout.splitlines() if ln.startswith("twitchplayspokemon"))
    assert row.split()[1] == "event" and "127.0.1.5:6667" in row and "ws://127.0.1.5:8080/" in row
    cf = clusterfile.load().spec
    assert cf.cluster_of_room("twitchplayspokemon") == "event"
    assert cf.cluster_of_room("somewhere_new") == "main"


def test_default_on_subnet_moves_every_address_and_stays_valid():
    doc = clusterfile.default_on_subnet("127.99.3")
    cf = clusterfile.parse(yaml.safe_dump(doc))
    assert cf.address("chat1") == "127.99.3.1" and cf.address("chat-testing") == "127.99.3.9"
    assert cf.address("redis2") == "127.99.3.22" and cf.controlplane.listen.address == "127.99.3.100"
    assert [s.name for s in cf.redis.shards] == [s.name for s in clusterfile.load().spec.redis.shards]
