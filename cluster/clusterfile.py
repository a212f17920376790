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

# PyYAML composes nested nodes recursively: a file 3,000 levels deep ended in a RecursionError
# traceback. The deepest key of the reference is 5 levels down; these bounds are far above any
# real file and far below what the loader (or pydantic) could not handle.
MAX_DEPTH = 64
MAX_BYTES = 1024 * 1024


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
    """SafeLoader that refuses duplicate mapping keys instead of silently keeping the last, and
    collections nested deeper than MAX_DEPTH (counted as they are composed, before recursion
    could run out of stack)."""

    def compose_node(self, parent, index):
        depth = getattr(self, "_depth", 0)
        if depth >= MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"collections nested deeper than {MAX_DEPTH} levels",
                self.peek_event().start_mark)
        self._depth = depth + 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth = depth


def _construct_int(loader: _StrictLoader, node: yaml.ScalarNode) -> int:
    # int() refuses more than 4,300 digits with a ValueError, which is no YAMLError.
    try:
        return loader.construct_yaml_int(node)
    except ValueError:
        raise yaml.constructor.ConstructorError(
            None, None, f"integer of {len(node.value)} characters is too long", node.start_mark) from None


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
_StrictLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


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
    size = len(text.encode("utf-8", "replace"))
    if size > MAX_BYTES:
        raise ClusterFileError(source, [("", f"{size} bytes, larger than the {MAX_BYTES} bytes "
                                             "a cluster file may be")])
    try:
        raw = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        # A ReaderError (a NUL, a control character) has no `problem`, and its str() spans lines:
        # folded, so each problem stays on one line of the message.
        problem = " ".join((getattr(exc, "problem", None) or str(exc)).split())
        raise ClusterFileError(source, [(where, f"not valid YAML: {problem}")]) from None
    except RecursionError:
        # Not expected below MAX_DEPTH; kept so no shape of file can end in a traceback.
        raise ClusterFileError(source, [("", f"not usable: nested too deeply to read "
                                              f"(at most {MAX_DEPTH} levels)")]) from None
    if not isinstance(raw, dict):
        raise ClusterFileError(source, [("", "the cluster file must be a YAML mapping")])
    try:
        cf = ClusterFile.model_validate(raw)
    except ValidationError as exc:
        raise ClusterFileError(source, _pydantic_problems(exc)) from None
    except RecursionError:
        raise ClusterFileError(source, [("", "not usable: nested too deeply to validate")]) from None
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
        # Read at most one byte past the limit: a huge file (or /dev/zero) is refused, not read.
        with p.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)
        if len(raw) > MAX_BYTES:
            raise ClusterFileError(str(p), [("", f"larger than the {MAX_BYTES} bytes a cluster file may be")])
        text = raw.decode("utf-8")
    except OSError as exc:
        raise ClusterFileError(str(p), [("", f"cannot read: {exc.strerror or exc}")]) from None
    except UnicodeDecodeError as exc:
        raise ClusterFileError(str(p), [("", f"not UTF-8 text: {exc.reason} at byte {exc.start}")]) from None
    return LoadedCluster(spec=parse(text, str(p)), path=p.resolve())
