"""The slot map: key -> slot -> shard, as Redis Cluster does it.

A key's slot is CRC16(key) mod 16384, hashing only the hash tag when the key has one, so that
`{ronni}.color` and `{ronni}.ratelimits` land together and can share a pipeline: the talk's fix
for both of its "Distributing Redis" problem patterns. Slots are owned by shards through a
`SlotMap`; resharding moves slots, never individual keys' hashes.

Pure and standard-library only: clue calls `key_slot` and `SlotMap.shard_of` on every command,
and the control plane uses the same functions to explain where a hot key lives.
"""

from __future__ import annotations

import binascii
import json
import re
from array import array
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

SLOTS = 16384

__all__ = ["SLOTS", "SlotMap", "crc16", "describe_slots", "hash_tag", "key_prefix", "key_slot", "parse_slots"]


def crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM: poly 0x1021, init 0), the checksum Redis Cluster hashes keys with."""
    # binascii.crc_hqx is exactly XMODEM when started from 0, and runs in C: this is on the
    # per-message path, where a Python byte loop would cost microseconds per key.
    return binascii.crc_hqx(data, 0)


def _as_bytes(key: str | bytes | int | float) -> bytes:
    # Encode the way redis-py sends keys, so our slot is the slot of the bytes Redis receives.
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, (bytearray, memoryview)):
        return bytes(key)
    if isinstance(key, float):
        return repr(key).encode()
    return str(key).encode()


def hash_tag(key: bytes) -> tuple[int, int] | None:
    """(start, end) of the hash tag's content in `key`, or None when the key has no hash tag.

    Redis Cluster's rule: the first '{', then the first '}' after it; the tag counts only if
    non-empty. So `foo{}{bar}` has no tag, and `foo{{bar}}zap` has the tag `{bar`.
    """
    s = key.find(b"{")
    if s < 0:
        return None
    e = key.find(b"}", s + 1)
    if e < 0 or e == s + 1:
        return None
    return s + 1, e


def key_slot(key: str | bytes) -> int:
    """The Redis Cluster slot (0..16383) of `key`."""
    data = _as_bytes(key)
    tag = hash_tag(data)
    if tag is not None:
        data = data[tag[0]:tag[1]]
    return binascii.crc_hqx(data, 0) & (SLOTS - 1)


_DIGITS = re.compile(r"\d+")
PREFIX_MAX = 40


def key_prefix(key: str | bytes) -> str:
    """A low-cardinality "kind" of key, for counting operations by kind.

    The hash tag's content becomes '*' (`{degentp}.bans` -> `{*}.bans`), runs of digits become
    '#' (`12345color` -> `#color`, the talk's pre-fix key style), and the result keeps at most
    40 characters. Everything that remains is the code's fixed text, so counts per prefix say
    which *kind* of key is busy.

    The control plane relies on this to tell a hot key kind from a hot shard: when one shard's
    load is one prefix spread over many slots, the kind is hot (fix the code or the key
    design); when it is one slot, a single key is hot (moving slots will not help); when it is
    many prefixes, the shard simply owns too many slots (reshard).
    """
    text = key if isinstance(key, str) else _as_bytes(key).decode("utf-8", "replace")
    s = text.find("{")
    if s >= 0:
        e = text.find("}", s + 1)
        if e > s + 1:
            text = f"{text[:s + 1]}*{text[e:]}"
    text = _DIGITS.sub("#", text)
    if not text.isprintable():
        # The prefix becomes a log field and a metric label: keep it one line of text.
        text = "".join(c if c.isprintable() else "?" for c in text)
    return text[:PREFIX_MAX]


def _runs(owners: Sequence[int]) -> list[tuple[int, int, int]]:
    out: list[tuple[int, int, int]] = []
    start = 0
    for slot in range(1, len(owners) + 1):
        if slot == len(owners) or owners[slot] != owners[start]:
            out.append((start, slot - 1, owners[start]))
            start = slot
    return out


def _describe_slots(slots: Iterable[int], limit: int = 5) -> str:
    """[1, 2, 3, 7] -> '1-3, 7' (at most `limit` runs, then a count), for error messages."""
    runs: list[list[int]] = []
    for s in sorted(slots):
        if runs and s == runs[-1][1] + 1:
            runs[-1][1] = s
        else:
            runs.append([s, s])
    text = ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in runs[:limit])
    return text + (f" and {len(runs) - limit} more ranges" if len(runs) > limit else "")


def _strict_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class SlotMap:
    """An immutable map from each of the 16384 slots to a shard index (0..n_shards-1).

    The owner table is precomputed so `shard_of_slot` is one array index; `shard_of(key)` adds
    the CRC. Changes (`moved`, `grown`) return a new map, so a map handed to a running client
    never changes under it.

    `epoch` versions the map as the control plane publishes it: every published change has a
    higher epoch, and a client keeps whichever map it has seen with the highest one. Epoch 0 is
    the map derived from the cluster file alone, never published. `names` are the shards' names
    in index order, so a client can label a shard it learned of from the map alone.
    """

    __slots__ = ("_owners", "_n_shards", "epoch", "names")

    def __init__(self, owners: Iterable[int], n_shards: int, *, epoch: int = 0,
                 names: Sequence[str] | None = None):
        if not _strict_int(n_shards) or n_shards < 1:
            raise ValueError(f"n_shards must be a positive integer, not {n_shards!r}")
        if not _strict_int(epoch) or epoch < 0:
            raise ValueError(f"epoch must be a whole number >= 0, not {epoch!r}")
        names = tuple(names) if names is not None else tuple(f"shard{i}" for i in range(n_shards))
        if len(names) != n_shards or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"names must be {n_shards} non-empty strings, not {names!r}")
        table = array("H")
        try:
            table.extend(owners)
        except (TypeError, OverflowError) as exc:
            raise ValueError(f"slot owners must be shard indexes: {exc}") from None
        if len(table) != SLOTS:
            raise ValueError(f"a slot map covers exactly {SLOTS} slots, not {len(table)}")
        bad = [slot for slot, shard in enumerate(table) if shard >= n_shards]
        if bad:
            raise ValueError(f"slots {_describe_slots(bad)} point at a shard index outside "
                             f"0..{n_shards - 1}")
        self._owners = table
        self._n_shards = n_shards
        self.epoch = epoch
        self.names = names

    @classmethod
    def even(cls, n_shards: int, names: Sequence[str] | None = None) -> SlotMap:
        """Contiguous, near-equal ranges, split exactly as `redis-cli --cluster create` does.

        For 3 shards: 0-5460, 5461-10922, 10923-16383.
        """
        if not _strict_int(n_shards) or not 1 <= n_shards <= SLOTS:
            raise ValueError(f"n_shards must be between 1 and {SLOTS}, not {n_shards!r}")
        owners = array("H", [0]) * SLOTS
        per_shard = SLOTS / n_shards
        cursor, first = 0.0, 0
        for shard in range(n_shards):
            # redis-cli uses lround(); int(x + 0.5) is the same for the positive values here.
            last = int(cursor + per_shard - 1 + 0.5)
            if last > SLOTS - 1 or shard == n_shards - 1:
                last = SLOTS - 1
            last = max(last, first)
            for slot in range(first, last + 1):
                owners[slot] = shard
            first = last + 1
            cursor += per_shard
        return cls(owners, n_shards, names=names)

    @property
    def n_shards(self) -> int:
        return self._n_shards

    def shard_of_slot(self, slot: int) -> int:
        return self._owners[slot]

    def shard_of(self, key: str | bytes) -> int:
        return self._owners[key_slot(key)]

    def ranges(self) -> list[tuple[int, int, int]]:
        """(start, end inclusive, shard) for each contiguous run of slots, in slot order."""
        return _runs(self._owners)

    def slots_of(self, shard: int) -> list[int]:
        return [slot for slot, owner in enumerate(self._owners) if owner == shard]

    def counts(self) -> list[int]:
        """How many slots each shard owns, by index."""
        out = [0] * self._n_shards
        for owner in self._owners:
            out[owner] += 1
        return out

    def moved(self, slots: Iterable[int], to_shard: int) -> SlotMap:
        """A new map with `slots` owned by `to_shard` (same epoch: publishing bumps it); this map
        is left as it was."""
        if not _strict_int(to_shard) or not 0 <= to_shard < self._n_shards:
            raise ValueError(f"shard index {to_shard!r} is outside 0..{self._n_shards - 1}")
        owners = array("H", self._owners)
        for slot in slots:
            if not _strict_int(slot) or not 0 <= slot < SLOTS:
                raise ValueError(f"slot {slot!r} is outside 0..{SLOTS - 1}")
            owners[slot] = to_shard
        return SlotMap(owners, self._n_shards, epoch=self.epoch, names=self.names)

    def grown(self, names: Sequence[str]) -> SlotMap:
        """The same ownership over a longer shard list (a shard was added, owning nothing yet).
        Only appending is allowed: indexes are listener ports, so existing ones never shift."""
        names = tuple(names)
        if names[:self._n_shards] != self.names:
            raise ValueError(f"shards can only be appended: {list(self.names)} is not a prefix of "
                             f"{list(names)}")
        return SlotMap(self._owners, len(names), epoch=self.epoch, names=names)

    def shrunk(self) -> SlotMap:
        """Without the last shard, which must own no slot any more (drain it first)."""
        last = self._n_shards - 1
        if last == 0:
            raise ValueError("the only shard cannot be removed")
        owned = self.counts()[last]
        if owned:
            raise ValueError(f"{self.names[last]} still owns {owned} slots; move them away first")
        return SlotMap(self._owners, last, epoch=self.epoch, names=self.names[:last])

    def with_epoch(self, epoch: int) -> SlotMap:
        return SlotMap(self._owners, self._n_shards, epoch=epoch, names=self.names)

    # -- persistence: ranges, not 16384 numbers, so the file stays readable and diffable --

    def to_json(self) -> str:
        """`{"slots": 16384, "epoch": e, "shards": n, "names": [...], "ranges": [[start, end, shard],
        ...]}` as text."""
        return json.dumps({"slots": SLOTS, "epoch": self.epoch, "shards": self._n_shards,
                           "names": list(self.names), "ranges": [list(r) for r in self.ranges()]},
                          separators=(",", ":"))

    @classmethod
    def from_json(cls, data: str | bytes | Mapping[str, Any]) -> SlotMap:
        """Parse `to_json` output (text or the already-decoded mapping), checking that every
        slot is covered exactly once and every shard index is in range; ValueError otherwise."""
        if isinstance(data, (str, bytes)):
            try:
                data = json.loads(data)
            except ValueError as exc:
                raise ValueError(f"slot map is not valid JSON: {exc}") from None
        if not isinstance(data, Mapping):
            raise ValueError("slot map must be a JSON object with 'shards' and 'ranges'")
        unknown = set(data) - {"slots", "epoch", "shards", "names", "ranges"}
        if unknown:
            raise ValueError(f"slot map has unknown keys: {', '.join(sorted(map(str, unknown)))}")
        if data.get("slots", SLOTS) != SLOTS:
            raise ValueError(f"slot map is for {data['slots']!r} slots; Redis Cluster has {SLOTS}")
        n_shards = data.get("shards")
        if not _strict_int(n_shards) or n_shards < 1:
            raise ValueError(f"slot map 'shards' must be a positive integer, not {n_shards!r}")
        ranges = data.get("ranges")
        if not isinstance(ranges, list):
            raise ValueError("slot map 'ranges' must be a list of [start, end, shard]")
        owners = [-1] * SLOTS
        for i, r in enumerate(ranges):
            if not (isinstance(r, list) and len(r) == 3 and all(_strict_int(v) for v in r)):
                raise ValueError(f"ranges[{i}] must be [start, end, shard] integers, not {r!r}")
            start, end, shard = r
            if not 0 <= start <= end < SLOTS:
                raise ValueError(f"ranges[{i}] {r!r}: need 0 <= start <= end <= {SLOTS - 1}")
            if not 0 <= shard < n_shards:
                raise ValueError(f"ranges[{i}] {r!r}: shard {shard} is outside 0..{n_shards - 1}")
            twice = [s for s in range(start, end + 1) if owners[s] != -1]
            if twice:
                raise ValueError(f"ranges[{i}] {r!r}: slots {_describe_slots(twice)} are already "
                                 "covered by an earlier range")
            owners[start:end + 1] = [shard] * (end - start + 1)
        missing = [s for s, owner in enumerate(owners) if owner == -1]
        if missing:
            raise ValueError(f"slots {_describe_slots(missing)} are not covered by any range")
        epoch = data.get("epoch", 0)
        if not _strict_int(epoch) or epoch < 0:
            raise ValueError(f"slot map 'epoch' must be a whole number >= 0, not {epoch!r}")
        names = data.get("names")
        if names is not None and not (isinstance(names, list) and len(names) == n_shards
                                      and all(isinstance(n, str) and n and n.isprintable() for n in names)):
            raise ValueError(f"slot map 'names' must be {n_shards} shard names")
        return cls(owners, n_shards, epoch=epoch, names=names)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SlotMap):
            return NotImplemented
        # Ownership only: the same map published at two epochs routes every key the same way.
        return self._n_shards == other._n_shards and self._owners == other._owners

    def __hash__(self) -> int:
        return hash((self._n_shards, self._owners.tobytes()))

    def __repr__(self) -> str:
        shown = ", ".join(f"{a}-{b}:{s}" for a, b, s in self.ranges()[:4])
        more = "" if len(self.ranges()) <= 4 else ", ..."
        return f"SlotMap(epoch={self.epoch}, shards={self._n_shards}, {shown}{more})"


def parse_slots(text: str) -> list[int]:
    """'0-99, 300,5000-5001' -> the slots, sorted, each once; ValueError naming the bad part."""
    out: set[int] = set()
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"{part[:20]!r} is not a slot or a range like 100-199")
        a, b = int(lo), int(hi) if sep else int(lo)
        if not 0 <= a <= b < SLOTS:
            raise ValueError(f"{part!r}: slots run 0..{SLOTS - 1}, low to high")
        out.update(range(a, b + 1))
    if not out:
        raise ValueError("no slots given")
    return sorted(out)


def describe_slots(slots: Iterable[int], limit: int = 5) -> str:
    """[1, 2, 3, 7] -> '1-3, 7'; more than `limit` runs end with a count of the rest."""
    return _describe_slots(slots, limit)
