"""Loading the cluster file: the one YAML document every part of chatops reads.

Three stages, each reporting all of its problems at once as `key.path: message`: strict YAML
(no duplicate keys), the structure (`cluster.spec`), then the relations between parts
(`cluster.checks`).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from cluster import checks
from cluster.spec import ClusterFile

# Package data, so an installed wheel finds it as a checkout does.
DEFAULT_CLUSTER_FILE = Path(str(resources.files("cluster") / "default-cluster.yaml"))


class ProblemsError(Exception):
    """`problems` holds one (key path, message) per fault, each on its own line of the message."""
    headline = ""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: {self.headline}{len(problems)} problem(s)"]
        lines += [f"  {path or '<top>'}: {msg}" for path, msg in problems]
        super().__init__("\n".join(lines))


class ClusterFileError(ProblemsError):
    """The cluster file cannot be used."""


@dataclass(frozen=True)
class LoadedCluster:
    """A validated cluster file and where it came from."""
    spec: ClusterFile
    path: Path


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys instead of silently keeping the last."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *anchor` is flattened by construct_mapping; explicit keys may override it
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, (str, int, float, bool)) and key is not None:
            raise yaml.constructor.ConstructorError(
                None, None, "mapping keys must be plain scalars, not lists or mappings", key_node.start_mark)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {seen[key].start_mark.line + 1})",
                key_node.start_mark)
        seen[key] = key_node
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _loc(loc: tuple) -> str:
    # repr() any part that is not plain printable text, so a hostile key cannot split the error line.
    return ".".join(str(p) if str(p).isprintable() else repr(p) for p in loc)


def _pydantic_problems(err: ValidationError) -> list[tuple[str, str]]:
    out = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        # Dict keys that fail validation are reported by pydantic with a trailing '[key]' marker.
        loc = tuple(p for p in loc if p != "[key]")
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (not in the cluster-file reference, docs/cluster-file.md)"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        out.append((_loc(loc), msg))
    return out


def parse(text: str, source: str = "<cluster file>") -> ClusterFile:
    """Validate cluster-file text; raises ClusterFileError listing every problem found."""
    try:
        raw = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ClusterFileError(source, [(where, f"not valid YAML: {problem}")]) from None
    if not isinstance(raw, dict):
        raise ClusterFileError(source, [("", "the cluster file must be a YAML mapping")])
    try:
        cf = ClusterFile.model_validate(raw)
    except ValidationError as exc:
        raise ClusterFileError(source, _pydantic_problems(exc)) from None
    problems = checks.run(cf)
    if problems:
        raise ClusterFileError(source, problems)
    return cf


def default_on_subnet(prefix: str) -> dict:
    """The shipped default cluster file as a document, moved onto `127.A.B.x` (prefix "127.A.B"):
    127.0.1.n becomes prefix.n and 127.0.2.n becomes prefix.(20+n), so a second copy of the default
    topology runs beside `make run`'s (tests and benchmarks use this)."""
    doc = yaml.safe_load(DEFAULT_CLUSTER_FILE.read_text(encoding="utf-8"))
    for host in doc["hosts"].values():
        _, _, third, last = host["address"].split(".")
        host["address"] = f"{prefix}.{int(last) + 20 * (int(third) - 1)}"
    doc["controlplane"]["listen"]["address"] = f"{prefix}.100"
    return doc


def load(path: str | Path | None = None) -> LoadedCluster:
    """Load and validate a cluster file; the shipped default when `path` is None."""
    p = Path(path) if path else DEFAULT_CLUSTER_FILE
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ClusterFileError(str(p), [("", f"cannot read: {exc.strerror or exc}")]) from None
    except UnicodeDecodeError as exc:
        raise ClusterFileError(str(p), [("", f"not UTF-8 text: {exc.reason} at byte {exc.start}")]) from None
    return LoadedCluster(spec=parse(text, str(p)), path=p.resolve())
