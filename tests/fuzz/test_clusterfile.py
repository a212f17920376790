"""The cluster file loader on hostile input: any text, and the shipped file with any value put
anywhere, either loads or raises ClusterFileError with a message naming where; never another
exception. Valid files drawn from a strategy load, and dumping what loaded loads back equal."""

from __future__ import annotations

import copy

import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from cluster import clusterfile
from cluster.clusterfile import ClusterFileError
from cluster.spec import ClusterFile
from tests.fuzz.cases import counted
from tests.fuzz.mutate import mutated_line

DEFAULT = clusterfile.DEFAULT_CLUSTER_FILE.read_bytes()
DOC = yaml.safe_load(DEFAULT)
YAML_NOISE = [b"\n", b": ", b"- ", b"{", b"}", b"[", b"]", b"&a ", b"*a", b"<<: *a\n", b"!!python/object ",
              b"!!binary ", b"'", b'"', b"#", b"? ", b"|\n", b"\t", b"%YAML 1.1\n", b"---\n", b"...\n",
              b"\x00", b"\xff", b"9" * 4400, b"1e999", b".nan", b"~", b"yes", b"2001-12-14"]


def load(text: str) -> ClusterFile | None:
    try:
        return clusterfile.parse(text)
    except ClusterFileError as exc:
        assert exc.problems and all(isinstance(p, str) and m for p, m in exc.problems)
        # One problem per line: a hostile key cannot break the message into extra lines.
        assert len(str(exc).splitlines()) == len(exc.problems) + 1
        return None


@given(mutated_line([DEFAULT], YAML_NOISE) | st.binary(max_size=300))
# PyYAML's ReaderError (here for a NUL) has a two-line str(): the one-line-per-problem message
# got a stray line (fixed in cluster/clusterfile.py parse).
@example(b"\x00")
# An integer of more than 4,300 digits raised ValueError out of PyYAML (fixed: _construct_int).
@example(b"version: " + b"9" * 4400)
@counted
def test_any_text_loads_or_says_why(data):
    load(data.decode("utf-8", "replace"))


values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    | st.sampled_from(["1s", "0s", "-1s", "127.0.0.1", "shard0", "chat1", "main", "256mb", "", "\n", "a: b"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8) | st.integers(), inner,
                                                                max_size=3),
    max_leaves=8)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


PATHS = [p for p in _paths(DOC) if p]


@given(st.lists(st.tuples(st.sampled_from(PATHS), values, st.booleans()), min_size=1, max_size=3))
@counted
def test_any_value_anywhere_loads_or_says_why(changes):
    doc = copy.deepcopy(DOC)
    for path, value, delete in changes:
        parent = doc
        try:
            for step in path[:-1]:
                parent = parent[step]
            if delete and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue     # an earlier change replaced the branch this path runs through
    load(yaml.safe_dump(doc, allow_unicode=True))


# default_on_subnet reads and parses the shipped file: once, then only the prefix is swapped.
BASE_PREFIX = "127.250.250"
BASE = clusterfile.default_on_subnet(BASE_PREFIX)
DURATIONS = st.sampled_from(["1s", "2s", "500ms", "1m", "10s"])


@st.composite
def valid_docs(draw) -> dict:
    doc, prefix = copy.deepcopy(BASE), f"127.{draw(st.integers(1, 254))}.{draw(st.integers(0, 254))}"
    for host in [*doc["hosts"].values(), doc["controlplane"]["listen"]]:
        host["address"] = host["address"].replace(BASE_PREFIX, prefix)
    doc["controlplane"]["listen"]["port"] = draw(st.integers(1024, 65535))
    doc["controlplane"]["scrape"]["interval"] = draw(DURATIONS)
    doc["haproxy"]["maxconn"] = draw(st.integers(100, 9000))
    doc["haproxy"]["check_interval"] = draw(DURATIONS)
    doc["redis"]["maxclients"] = draw(st.integers(16, 100_000))
    doc["redis"]["maxmemory_policy"] = draw(st.sampled_from(["allkeys-lfu", "allkeys-lru", "noeviction"]))
    rooms = draw(st.lists(st.text("abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=19),
                          min_size=1, max_size=4, unique=True))
    doc["clusters"]["main"]["rooms"] = rooms
    doc["clusters"]["event"]["rooms"] = [r + "_event" for r in rooms[:1]]
    return doc


@given(valid_docs())
@counted
def test_valid_files_load_and_round_trip(doc):
    cf = clusterfile.parse(yaml.safe_dump(doc))
    assert cf.controlplane.listen.port == doc["controlplane"]["listen"]["port"]
    assert clusterfile.parse(yaml.safe_dump(cf.model_dump(mode="json"))) == cf
