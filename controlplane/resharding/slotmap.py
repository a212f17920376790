"""The live slot map: where it is kept, how it is published, and the shards' guards.

The control plane is the only writer. It keeps the map durably in a file (the run directory's
`slotmap.json` locally; `<cluster file>.slotmap.json` beside the cluster file in profile `remote`,
where the run directory is not shared by the hosts) and publishes every change to every shard
(`chatops:slotmap` and `chatops:slotmap:epoch`), where each clue finds it within a second
(`ShardedCache.follow_map`). Each publication has a higher epoch than any copy seen anywhere, so a
shard that missed one publication still hands out an older epoch and is never preferred.

The map must agree with the cluster file's shard list: the names in index order. A map that
knows fewer shards than the file grows (a shard was added and owns nothing yet); any other
disagreement is an error an operator must look at, never silently "fixed".
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from chat import slotguard
from chat.sharding import SlotMap
from collectors.base import source_address
from collectors.redis import UnknownShard, admin_auth, find_shard
from collectors.resp import Conn, RedisError

TIMEOUT_S = 5.0


class SlotMapError(Exception):
    """The map cannot be read, agreed with the cluster file, or published."""


def path_for(cf, cluster_path: Path | str | None, run) -> Path:
    if cf.profile == "remote" and cluster_path is not None:
        p = Path(cluster_path)
        return p.with_name(p.name + ".slotmap.json")
    return Path(run.root) / "slotmap.json"


def shard_names(cf) -> tuple[str, ...]:
    return tuple(s.name for s in cf.redis.shards)


def _agree(smap: SlotMap, names: tuple[str, ...], where: str) -> SlotMap:
    if smap.names == names:
        return smap
    if names[:smap.n_shards] == smap.names:
        return smap.grown(names)
    raise SlotMapError(f"the slot map in {where} names shards {list(smap.names)}, but the cluster file has "
                       f"{list(names)}; shards can only be appended (or the last one removed once it owns "
                       "nothing)")


def read_file(path: Path) -> SlotMap | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SlotMapError(f"cannot read {path}: {exc}") from None
    try:
        return SlotMap.from_json(text)
    except ValueError as exc:
        raise SlotMapError(f"{path} is not a slot map: {exc}") from None


def write_file(path: Path, smap: SlotMap) -> None:
    """One rename, so a reader never sees half a map."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(smap.to_json() + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- connections to the shards themselves (not through a chat host's listener) --

def connect(cf, shard: str, timeout: float = TIMEOUT_S) -> Conn:
    try:
        s = find_shard(cf, shard)
    except UnknownShard as exc:
        raise SlotMapError(str(exc)) from None
    return Conn(cf.address(s.host), s.port, timeout, source_address(cf), admin_auth(cf))


@contextmanager
def connections(cf, timeout: float = TIMEOUT_S) -> Iterator[dict[str, Conn | Exception]]:
    """A connection to every shard, by name; an unreachable shard maps to its error."""
    out: dict[str, Conn | Exception] = {}
    try:
        for name in shard_names(cf):
            try:
                out[name] = connect(cf, name, timeout)
            except (OSError, RedisError) as exc:      # RedisError: AUTH refused
                out[name] = exc
        yield out
    finally:
        for c in out.values():
            if isinstance(c, Conn):
                c.close()


def _text(value) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def shard_copies(conns: dict[str, Conn | Exception]) -> dict[str, SlotMap | str]:
    """Each shard's published copy (or why there is none to read)."""
    out: dict[str, SlotMap | str] = {}
    for name, conn in conns.items():
        if isinstance(conn, Exception):
            out[name] = f"unreachable: {conn}"
            continue
        try:
            text = _text(conn.call("GET", slotguard.MAP))
        except (OSError, RedisError) as exc:
            out[name] = f"unreachable: {exc}"
            continue
        if text is None:
            out[name] = "no published map"
            continue
        try:
            out[name] = SlotMap.from_json(text)
        except ValueError as exc:
            out[name] = f"unreadable: {exc}"
    return out


def load(cf, cluster_path, run, conns: dict[str, Conn | Exception] | None = None) -> SlotMap:
    """The current map: the newest of the file and the shards' copies (the file can lag when a
    publication was cut short after the shards had it), else the cluster file's even split."""
    names = shard_names(cf)
    path = path_for(cf, cluster_path, run)
    candidates: list[tuple[SlotMap, str]] = []
    stored = read_file(path)
    if stored is not None:
        candidates.append((stored, str(path)))
    if conns is not None:
        for name, copy in shard_copies(conns).items():
            if isinstance(copy, SlotMap):
                candidates.append((copy, f"{name}'s published copy"))
    if not candidates:
        return SlotMap.even(len(names), names)
    smap, where = max(candidates, key=lambda c: c[0].epoch)
    return _agree(smap, names, where)


@dataclass
class Published:
    slot_map: SlotMap
    path: Path
    failed: dict[str, str]          # shard -> why it did not take the publication

    @property
    def ok(self) -> bool:
        return not self.failed


def publish(cf, cluster_path, run, smap: SlotMap, conns: dict[str, Conn | Exception]) -> Published:
    """Give `smap` the next epoch, keep it in the file, then write it to every shard."""
    names = shard_names(cf)
    # A map may leave out the file's last shards when they own nothing: remove_shard publishes
    # the map without a drained shard before the file drops it.
    if names[:smap.n_shards] != smap.names:
        raise SlotMapError(f"refusing to publish a map for {list(smap.names)}: the cluster file has {list(names)}")
    path = path_for(cf, cluster_path, run)
    seen = [smap.epoch]
    stored = read_file(path)
    if stored is not None:
        seen.append(stored.epoch)
    seen += [c.epoch for c in shard_copies(conns).values() if isinstance(c, SlotMap)]
    smap = smap.with_epoch(max(seen) + 1)
    write_file(path, smap)
    text = smap.to_json()
    failed: dict[str, str] = {}
    for name, conn in conns.items():
        if isinstance(conn, Exception):
            failed[name] = str(conn)
            continue
        try:
            # The map before its epoch: a clue that sees the new epoch always finds its map.
            replies = conn.pipeline([("SET", slotguard.MAP, text), ("SET", slotguard.EPOCH, smap.epoch)])
            bad = [r for r in replies if isinstance(r, RedisError)]
            if bad:
                failed[name] = str(bad[0])
        except (OSError, RedisError) as exc:
            failed[name] = str(exc)
    return Published(smap, path, failed)


def ensure_guards(smap: SlotMap, conns: dict[str, Conn | Exception]) -> list[str]:
    """Give every reachable shard its ownership bitmap from `smap`, where it has none yet (an
    existing one may be mid-migration and is the truth). Returns the shards newly guarded."""
    guarded = []
    for index, name in enumerate(smap.names):
        conn = conns.get(name)
        if conn is None or isinstance(conn, Exception):
            raise SlotMapError(f"{name} is unreachable ({conn}); every shard must be guarded before a slot moves")
        if conn.call("SET", slotguard.OWNED, slotguard.bitmap(smap.slots_of(index)), "NX") is not None:
            guarded.append(name)
    return guarded


def owned(conn: Conn) -> list[int] | None:
    """The slots a shard's guard says it owns, or None when it is not guarded."""
    value = conn.call("GET", slotguard.OWNED)
    if isinstance(value, str):
        value = value.encode("latin-1")
    return slotguard.owned_slots(value)


def describe(smap: SlotMap) -> dict:
    """The map as the CLI and the API show it: epoch, and each shard's ranges and slot count."""
    counts = smap.counts()
    ranges: dict[str, list[list[int]]] = {n: [] for n in smap.names}
    for start, end, shard in smap.ranges():
        ranges[smap.names[shard]].append([start, end])
    return {"epoch": smap.epoch, "shards": [
        {"name": n, "index": i, "slots": counts[i], "ranges": ranges[n]} for i, n in enumerate(smap.names)]}


UNPUBLISHED = "the cluster file's even split"      # the source of a map never published


def view(cf, cluster_path, run, timeout: float = TIMEOUT_S) -> dict:
    """The current slot map as the API, the dashboard and `chatops slots` show it, read from the
    shards and the kept file themselves (it needs no running control plane): `slotmap.describe()`,
    plus `source` (where the current map came from), `file` (the kept copy's path and epoch, null
    when there is none yet) and `copies` (each shard's published copy: its epoch, or why there is
    none to read). Raises SlotMapError when the map cannot be read or disagrees with the cluster file."""
    with connections(cf, timeout) as conns:
        smap = load(cf, cluster_path, run, conns)
        copies = shard_copies(conns)
    path = path_for(cf, cluster_path, run)
    stored = read_file(path)
    if stored is not None and stored.epoch == smap.epoch:
        source = str(path)
    else:
        source = next((f"{name}'s published copy" for name, c in copies.items()
                       if not isinstance(c, str) and c.epoch == smap.epoch), UNPUBLISHED)
    return {**describe(smap), "source": source,
            "file": {"path": str(path), "epoch": None if stored is None else stored.epoch},
            "copies": {name: c if isinstance(c, str) else c.epoch for name, c in copies.items()}}
