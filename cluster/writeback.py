"""Writing the cluster file back: the one way chatops changes the operator's file.

The cluster file belongs to the operator. It is their comments, their key order, their quoting
and their layout, and it is the single source of truth every part of chatops reads, so a
remediation that must outlive a restart (`set_redis_config` keeping `redis.timeout: 60`) changes
it here and nowhere else, in two steps:

- `plan_edit(path, {"redis.timeout": 60})` computes the new text and its unified diff without
  touching the file, refusing a key the spec does not have and a result the loader would refuse,
  so a plan is never shown that could not be applied. The diff is what the plan shows; the edit
  carries the sha256 of the bytes it was computed from.
- `apply_edit(edit)` refuses if the file changed since the plan (`StaleFile`), validates the new
  text exactly as `cluster.clusterfile` loads it (structure and every cross-check), and only then
  replaces the old file atomically: a reader sees the old file or the new one, never half of one,
  and an invalid file is never written.

Only the changed lines differ: ruamel.yaml round-trips the document, and lines it would merely
re-lay out (aligned `chat1:        {...}` mappings, for one) are kept byte for byte from the
original. The result is checked to read back, with PyYAML as chatops reads it, as exactly the old
document plus the requested changes; where keeping the original lines cannot pass that check (a
file mixing indentation styles), ruamel.yaml's whole rendering is used, and the diff shows it.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import io
import itertools
import os
import tempfile
import types
import typing
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError as RuamelYAMLError
from ruamel.yaml.scalarstring import DoubleQuotedScalarString, SingleQuotedScalarString

from cluster import clusterfile
from cluster.spec import ClusterFile


class _Remove:
    """The value that removes a key, or a list's item: `plan_edit(path, {"redis.shards.4": REMOVE})`."""

    def __repr__(self) -> str:
        return "REMOVE"

    def __deepcopy__(self, memo) -> _Remove:
        return self


REMOVE = _Remove()


class WritebackError(clusterfile.ProblemsError):
    """The cluster file was not changed."""
    headline = "not changed, "


class StaleFile(WritebackError):
    """The file changed after the edit was planned; plan again against what is there now."""


@dataclasses.dataclass(frozen=True)
class Edit:
    """A planned change to a cluster file: what it says now, what it will say, and the diff."""
    path: Path
    changes: dict[str, Any]
    old_text: str
    new_text: str
    diff: str        # unified diff, empty when nothing changes
    sha256: str      # of the file's bytes when planned; apply refuses if they differ

    @property
    def changed(self) -> bool:
        return self.new_text != self.old_text


# -- key paths, checked against the spec ------------------------------------------------------

def _unwrap(tp: Any) -> Any:
    """The type under Annotated[...] and `X | None`."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _is_mapping(tp: Any) -> bool:
    return _is_model(tp) or typing.get_origin(tp) is dict


def _resolve(dotted: str) -> list[tuple[str | int, Any]]:
    """Each segment of a key path as a mapping key or list index, with the spec's type below it.

    Refusing keys the spec does not know here, before any YAML is produced, gives the caller the
    path it got wrong instead of a validation error about a key it did not mean to create.
    """
    shown = dotted if dotted.isprintable() else repr(dotted)
    if not dotted or not all(seg and seg.isprintable() for seg in dotted.split(".")):
        raise WritebackError(shown, [(shown, "not a key path: printable segments joined by '.'")])
    out: list[tuple[str | int, Any]] = []
    tp: Any = ClusterFile
    for n, seg in enumerate(dotted.split(".")):
        where = ".".join(dotted.split(".")[:n + 1])
        tp = _unwrap(tp)
        if _is_model(tp):
            field = tp.model_fields.get(seg)
            if field is None:
                unknown = "unknown key (not in the cluster-file reference, docs/cluster-file.md)"
                raise WritebackError(shown, [(where, unknown)])
            out.append((seg, field.annotation))
            tp = field.annotation
        elif typing.get_origin(tp) is dict:
            out.append((seg, typing.get_args(tp)[1]))
            tp = typing.get_args(tp)[1]
        elif typing.get_origin(tp) is list:
            if not seg.isdigit():
                raise WritebackError(shown, [(where, f"{seg!r} is not a list index (0, 1, ...)")])
            out.append((int(seg), typing.get_args(tp)[0]))
            tp = typing.get_args(tp)[0]
        else:
            parent = ".".join(dotted.split(".")[:n])
            raise WritebackError(shown, [(where, f"{parent} is a single value; it has no keys")])
    return out


def _check_value(dotted: str, value: Any) -> None:
    # Only what YAML and the spec can hold; anything else would be pickled into a tag by a
    # representer or refused deep inside the emitter with no key path.
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise WritebackError(dotted, [(dotted, f"mapping key {k!r} is not a string")])
            _check_value(f"{dotted}.{k}", v)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_value(f"{dotted}.{i}", v)
    elif value is not None and value is not REMOVE and not isinstance(value, (str, bool, int, float)):
        raise WritebackError(dotted, [(dotted, f"{type(value).__name__} cannot be written to YAML")])


def _set(doc: Any, dotted: str, steps: list[tuple[str | int, Any]],
         value: Callable[[Any], Any], new_map: type, new_key: Callable[[str], Any] = str) -> None:
    """Set one value in a loaded document to `value(old value or None)`, creating missing mappings
    (their keys made by `new_key`)."""
    node = doc
    for n, (seg, below) in enumerate(steps):
        where = ".".join(str(s) for s, _ in steps[:n + 1])
        last = n == len(steps) - 1
        if isinstance(seg, int):
            if not isinstance(node, list):
                raise WritebackError(dotted, [(where, "the file has no list here")])
            if seg > len(node) or (seg == len(node) and not last):
                # Appending takes the whole item at the index one past the end; there is no
                # partial list item to create.
                raise WritebackError(dotted, [(where, f"index out of range (the list has {len(node)})")])
            if seg == len(node):
                item = value(None)
                if item is REMOVE:
                    raise WritebackError(dotted, [(where, f"index out of range (the list has {len(node)})")])
                if node and isinstance(item, CommentedMap) and isinstance(node[-1], CommentedMap) \
                        and node[-1].fa.flow_style():
                    item.fa.set_flow_style()      # `- {name: shard4, ...}` like its siblings
                node.append(item)
                return
        else:
            if not isinstance(node, dict):
                raise WritebackError(dotted, [(where, "the file has no mapping here")])
            if seg not in node and not last:
                if _is_mapping(_unwrap(below)):
                    node[new_key(seg)] = new_map()
                else:
                    raise WritebackError(dotted, [(where, "missing, and only a mapping can be created")])
        if last:
            if isinstance(seg, int) or seg in node:
                item = value(node[seg])
                if item is REMOVE:
                    del node[seg]
                else:
                    node[seg] = item
            elif value(None) is not REMOVE:
                node[new_key(seg)] = value(None)
            return
        node = node[seg]
    raise AssertionError("unreachable: a key path has at least one segment")


# -- rendering ----------------------------------------------------------------------------------

def _yaml() -> YAML:
    y = YAML()  # round-trip mode: comments, order, flow/block style and anchors are kept
    y.preserve_quotes = True
    y.width = 1 << 16  # never fold a long line the operator wrote on one
    return y


def _guess_indent(doc: Any) -> tuple[int, int, int]:
    """(mapping, sequence, offset) as ruamel.yaml counts them, from the file's own nesting.

    ruamel.yaml re-indents the whole document to one setting, and a created mapping must sit at
    the file's indentation to mean what it should; its own `load_yaml_guess_indent` misread the
    shipped default (6, 4), so this measures the loaded nodes' columns instead.
    """
    maps: Counter[int] = Counter()
    seqs: Counter[tuple[int, int]] = Counter()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, child in node.items():
                if getattr(child, "fa", None) is not None and not child.fa.flow_style() and len(child):
                    key_col = node.lc.key(key)[1]
                    if isinstance(child, dict):
                        maps[child.lc.col - key_col] += 1
                    elif isinstance(child, list):
                        seqs[(child.lc.item(0)[1] - key_col, child.lc.col - key_col)] += 1
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(doc)
    mapping = maps.most_common(1)[0][0] if maps else 2
    sequence, offset = seqs.most_common(1)[0][0] if seqs else (mapping + 2, mapping)
    if mapping < 1 or offset < 0 or sequence < offset + 2:
        return 2, 4, 2  # the shipped file's style; a strange measurement is not worth trusting
    return mapping, sequence, offset


def _dump(y: YAML, doc: Any) -> str:
    buf = io.StringIO()
    y.dump(doc, buf)
    return buf.getvalue()


def _as_written(value: Any, old: Any = None) -> Any:
    if value is REMOVE:
        return value
    if isinstance(value, dict):
        return CommentedMap((_as_written(k), _as_written(v)) for k, v in value.items())
    if isinstance(value, list):
        return CommentedSeq(_as_written(v) for v in value)
    if isinstance(value, str):
        if isinstance(old, (DoubleQuotedScalarString, SingleQuotedScalarString)):
            return type(old)(value)  # the operator quoted this value; keep quoting it
        # ruamel.yaml writes YAML 1.2, where plain `no`, `on` or `0o10` are strings; chatops
        # reads YAML 1.1 (PyYAML), where they are not. Quote whatever 1.1 would not read as text.
        tag = yaml.resolver.Resolver().resolve(yaml.ScalarNode, value, (True, False))
        if tag != yaml.resolver.BaseResolver.DEFAULT_SCALAR_TAG:
            return DoubleQuotedScalarString(value)
    return value


def _keep_untouched_lines(original: list[str], base: list[str], theirs: list[str],
                          by_char: bool = False) -> list[str]:
    """Three-way merge: the lines ruamel.yaml changed (base -> theirs), applied to the original.

    `base` is ruamel.yaml's rendering of the unchanged document and differs from the original
    wherever it re-lays out a line without changing its meaning (it drops the spaces that align
    `chat1:        {address: ...}`). Regions it only re-laid out keep the operator's bytes. A
    single re-laid-out line that an edit touches is merged the same way character by character,
    so `chat1:        {address: 127.0.1.7}` keeps its alignment; anything larger takes
    ruamel.yaml's text.
    """
    blocks: list[tuple[int, int, int, int]] = []
    for tag, a1, a2, b1, b2 in difflib.SequenceMatcher(None, original, base, autojunk=False).get_opcodes():
        if tag == "replace" and a2 - a1 == b2 - b1:
            blocks += [(a1 + k, a1 + k + 1, b1 + k, b1 + k + 1) for k in range(a2 - a1)]
        else:
            blocks.append((a1, a2, b1, b2))
    ops = difflib.SequenceMatcher(None, base, theirs, autojunk=False).get_opcodes()
    hunks = [(i1, i2) for tag, i1, i2, _, _ in ops if tag != "equal"]

    # Regions: runs of blocks no edit straddles, so each region maps to one slice of `theirs`.
    regions: list[list[int]] = []
    for a1, a2, b1, b2 in blocks:
        if regions and any(i1 < b1 < i2 for i1, i2 in hunks):
            regions[-1][1], regions[-1][3] = a2, b2
        else:
            regions.append([a1, a2, b1, b2])

    def before_insert(p: int) -> int:
        for tag, i1, i2, j1, j2 in ops:
            if tag == "equal" and i1 <= p <= i2:
                return j1 + p - i1
            if p == i1:
                return j1
            if p == i2:
                return j2
        return len(theirs)

    def after_insert(p: int) -> int:
        return before_insert(p) + sum(j2 - j1 for tag, i1, i2, j1, j2 in ops if tag == "insert" and i1 == p)

    def relaid(r: list[int]) -> bool:
        return original[r[0]:r[1]] != base[r[2]:r[3]]

    # Lines inserted between two regions go with the one whose bytes need not change for it.
    cuts = [0]
    for left, right in itertools.pairwise(regions):
        p = left[3]
        cuts.append(before_insert(p) if relaid(left) and not relaid(right) else after_insert(p))
    cuts.append(len(theirs))
    out: list[str] = []
    for r, t1, t2 in zip(regions, cuts, cuts[1:]):
        if theirs[t1:t2] == base[r[2]:r[3]]:
            out += original[r[0]:r[1]]
        elif not by_char and relaid(r) and r[1] - r[0] == r[3] - r[2] == t2 - t1 == 1:
            out.append("".join(_keep_untouched_lines(
                list(original[r[0]]), list(base[r[2]]), list(theirs[t1]), by_char=True)))
        else:
            out += theirs[t1:t2]
    return out


def _same(a: Any, b: Any) -> bool:
    # `==` alone would pass True for 1 and 1.0 for 1; the spec is strict about types, so this is.
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _problems(exc: clusterfile.ClusterFileError) -> list[tuple[str, str]]:
    return [(p, f"the edited file would be refused: {m}") for p, m in exc.problems]


# -- the API ----------------------------------------------------------------------------------------

def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise WritebackError(str(path), [("", f"cannot read: {exc.strerror or exc}")]) from None


def plan_edit(path: str | Path, changes: dict[str, Any]) -> Edit:
    """The edit that sets each dotted key path in `changes` (`"redis.shards.1.port"`; an integer
    segment indexes a list) to its value; missing mappings on the way are created. Nothing is
    written. Raises WritebackError for a key the spec does not know, an index past a list's end,
    or a result `cluster.clusterfile` would refuse."""
    path = Path(path)
    source = str(path)
    raw = _read(path)
    try:
        old_text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WritebackError(source, [("", f"not UTF-8 text: {exc.reason} at byte {exc.start}")]) from None
    resolved = {}
    for dotted, value in changes.items():
        if not isinstance(dotted, str):
            raise WritebackError(source, [(repr(dotted), "a key path is a string")])
        resolved[dotted] = _resolve(dotted)
        _check_value(dotted, value)

    # ruamel.yaml writes "\n"; a file written with "\r\n" keeps them on every line.
    crlf = "\r\n" in old_text
    text = old_text.replace("\r\n", "\n") if crlf else old_text
    y = _yaml()
    try:
        doc = y.load(text)
        expected = yaml.safe_load(text)
    except (RuamelYAMLError, yaml.YAMLError) as exc:
        raise WritebackError(source, [("", f"not valid YAML, fix it by hand first: {exc}")]) from None
    except RecursionError:
        raise WritebackError(source, [("", "nested too deeply to read, fix it by hand first")]) from None
    if not isinstance(doc, CommentedMap) or not isinstance(expected, dict):
        raise WritebackError(source, [("", "the cluster file must be a YAML mapping")])
    mapping, sequence, offset = _guess_indent(doc)
    y.indent(mapping=mapping, sequence=sequence, offset=offset)

    base = _dump(y, doc)
    for dotted, value in changes.items():
        _set(doc, dotted, resolved[dotted], lambda old, v=value: _as_written(v, old), CommentedMap,
             _as_written)
        _set(expected, dotted, resolved[dotted], lambda old, v=value: copy.deepcopy(v), dict)
    theirs = _dump(y, doc)

    lines = _keep_untouched_lines(text.splitlines(True), base.splitlines(True), theirs.splitlines(True))
    new = "".join(lines) if base != theirs else text
    # The merge is line-based and YAML is not; whatever it produced must read back as exactly the
    # intended document, or ruamel.yaml's whole rendering is used (the diff shows the difference).
    for candidate in (new, theirs):
        try:
            if _same(yaml.safe_load(candidate), expected):
                new = candidate
                break
        except yaml.YAMLError:
            pass
    else:
        raise WritebackError(source, [("", "cannot render this change so that it reads back as written; "
                                           + "edit the file by hand")])
    if new == text:
        new_text = old_text
    else:
        new_text = new.replace("\n", "\r\n") if crlf else new

    if new_text != old_text:
        try:
            clusterfile.parse(new_text, source=source)
        except clusterfile.ClusterFileError as exc:
            raise WritebackError(source, _problems(exc)) from None
    diff = "".join(difflib.unified_diff(
        old_text.splitlines(True), new_text.splitlines(True), fromfile=source, tofile=source))
    return Edit(path=path, changes=dict(changes), old_text=old_text, new_text=new_text, diff=diff,
                sha256=hashlib.sha256(raw).hexdigest())


def apply_edit(edit: Edit) -> None:
    """Write a planned edit. Re-reads the file and refuses (StaleFile) if it is no longer the
    text the edit was planned on; validates the new text as `cluster.clusterfile.parse` does;
    then replaces the file atomically, keeping its mode. Applying an edit whose new text is
    already the file's content does nothing."""
    source = str(edit.path)
    # Through a symlink to the file it names, so a linked cluster file stays linked.
    target = Path(os.path.realpath(edit.path))
    new_bytes = edit.new_text.encode("utf-8")
    current = _read(target)
    if current == new_bytes:
        return
    if hashlib.sha256(current).hexdigest() != edit.sha256:
        raise StaleFile(source, [("", "the file changed since this edit was planned; plan it again")])
    try:
        clusterfile.parse(edit.new_text, source=source)
    except clusterfile.ClusterFileError as exc:
        raise WritebackError(source, _problems(exc)) from None

    mode = os.stat(target).st_mode & 0o7777
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".writeback")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(new_bytes)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        # Checked again just before the swap: validation took time, and an operator's editor may
        # have saved meanwhile. Their save wins; this edit is refused.
        if hashlib.sha256(_read(target)).hexdigest() != edit.sha256:
            raise StaleFile(source, [("", "the file changed while this edit was applied; plan it again")])
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    # The rename is durable only once the directory entry is on disk.
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def current(edit: Edit) -> dict[str, Any]:
    """What the file says now at each key the edit changes (None where it is absent): the part
    of the file a plan depends on, so an edit elsewhere in the file does not make it stale."""
    doc = yaml.safe_load(edit.old_text) or {}
    out: dict[str, Any] = {}
    for dotted in edit.changes:
        node: Any = doc
        for part in dotted.split("."):
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif isinstance(node, dict) and part in node:
                node = node[part]
            else:
                node = None
                break
        out[dotted] = node
    return out
