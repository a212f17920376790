"""What the control plane may keep of what Redis says: key names, command arguments and client
names with anything that could be a secret taken out.

Redis data reaches the dashboard and API through the hot-key sampler (key names), the slow log
(every argument of a slow command: keys, values, passwords) and CLIENT LIST (client names, last
command). Before the fix of issue 16, chat tokens were key names (`{<token>}.auth`), so any of
them could show a token to anyone who can read the unauthenticated pages. Tokens are digests
now (chat/keys.py), and this is the second line: what is not known to be harmless is not shown.

- A key is shown when it has one of the chat's own shapes (`chat.keys.PUBLIC`: a login, room or
  token digest as the hash tag, or a `chatops:` guard key). Any other key becomes
  `<redacted {*}.auth>` (its kind, when the kind is one of ours or the old token key) or
  `<redacted>`; hot-key entries keep their slot and kind as separate fields, computed from the
  real name, so the hot-key detector still groups by slot.
- A command keeps its name, its keys of known shapes, Redis words (`EX`, `NX`, `COUNT`...),
  short numbers and Redis's own truncation marker; any other argument (a value, a field, an
  unknown key) becomes `<N bytes>`. Whatever follows `AUTH` or `AUTH2` (AUTH, HELLO, MIGRATE),
  every argument of `AUTH`, and those of `ACL` and `CONFIG` after the sub-command, become
  `<redacted>`, length not given.
- A client name is shown when it is a short name of ordinary characters with no token-like run
  in it; the last command is shown when it looks like a command name.

Pure: applied to the redis and clients Observations where they enter the control plane
(controlplane/sources), so the store, the API and the pages never hold the raw values.
`chatops inspect` prints the collectors' raw output: whoever runs it can already talk to the shard.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

from chat import keys as chat_keys
from chat.sharding import key_prefix, key_slot
from collectors.base import Observation

HIDDEN = "<redacted>"

# Kinds a redacted key may still be labelled with: ours, and the token key of before issue 16.
_KNOWN_PREFIXES = frozenset({"{*}.user", "{*}.color", "{*}.room", "{*}.mods", "{*}.bans", "{*}.ratelimits",
                             "{*}.rl.u.#", "{*}.rl.r.#", "{*}.token_sha#", "{*}.auth"})

# Words Redis commands take as arguments (sub-commands, options, the guard's inner commands): not
# data, so shown. Compared upper-cased and whole.
_WORDS = frozenset("""
GET SET GETEX GETDEL MGET MSET SETNX SETEX PSETEX APPEND STRLEN INCR INCRBY DECR DECRBY DEL UNLINK EXISTS
TYPE TTL PTTL EXPIRE PEXPIRE EXPIREAT PERSIST RENAME COPY DUMP RESTORE TOUCH RANDOMKEY SCAN DBSIZE KEYS
HGET HSET HSETNX HMGET HMSET HDEL HEXISTS HINCRBY HLEN HKEYS HVALS HGETALL HSCAN
SADD SREM SISMEMBER SMEMBERS SCARD SSCAN ZADD ZREM ZSCORE ZRANGE ZCARD LPUSH RPUSH LPOP RPOP LRANGE LLEN
SETBIT GETBIT BITCOUNT EVAL EVALSHA EVAL_RO EVALSHA_RO FCALL SCRIPT LOAD
MULTI EXEC DISCARD WATCH UNWATCH PING ECHO INFO CONFIG CLIENT LIST SETNAME GETNAME KILL PAUSE UNPAUSE
SLOWLOG LATENCY LATEST RESET OBJECT FREQ ENCODING IDLETIME DEBUG SLEEP MIGRATE REPLACE REPLICAOF SLAVEOF
NO ONE SYNC PSYNC FLUSHALL FLUSHDB SELECT HELLO AUTH AUTH2 ACL SETUSER MEMORY USAGE STATS DOCTOR
NX XX GT LT EX PX EXAT PXAT KEEPTTL COUNT MATCH WITHSCORES LIMIT ASYNC WRITE ALL ID ADDR LADDR
""".split())
_NUMBER = re.compile(r"-?[0-9]{1,12}(?:\.[0-9]{1,6})?", re.ASCII)
_COMMAND = re.compile(r"[A-Za-z][A-Za-z0-9_|.-]{0,39}", re.ASCII)
_MORE_ARGS = re.compile(r"\.\.\. \([0-9]{1,10} more arguments\)", re.ASCII)
_MORE_BYTES = re.compile(rb"(.*)\.\.\. \(([0-9]{1,10}) more bytes\)", re.DOTALL)
# Arguments after these are credentials wherever they appear (AUTH, HELLO ... AUTH, MIGRATE ...
# AUTH / AUTH2); two are hidden after either, which hides at most one harmless word more.
_CREDENTIAL_MARKERS = frozenset({"AUTH", "AUTH2"})
# Commands whose arguments after the first N may be credentials (passwords, masterauth): hidden.
_SECRET_AFTER = {"AUTH": 0, "ACL": 1, "CONFIG": 1}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,47}", re.ASCII)
# A run that could be a token, a password or a digest: 12+ characters of a token alphabet with a
# digit in it, or 24+ without one.
_TOKENISH = re.compile(r"[A-Za-z0-9+/=]{12,}", re.ASCII)


def _text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return "" if value is None else str(value)


def _raw(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return _text(value).encode("utf-8", "surrogatepass")


def _looks_secret(text: str) -> bool:
    return any(len(m) >= 24 or any(c.isdigit() for c in m) for m in _TOKENISH.findall(text))


def key_kind(name: str | bytes) -> str | None:
    """The key's kind (`{*}.bans`) when it is one of ours or the old token key, else None: a
    kind that is the code's own text, never the key's data."""
    prefix = key_prefix(name)
    return prefix if prefix in _KNOWN_PREFIXES else None


def key(name: str | bytes) -> str:
    """A key name as the control plane may show it."""
    if chat_keys.public(name):
        return _text(name)
    kind = key_kind(name)
    return f"<redacted {kind}>" if kind else HIDDEN


def hot_key(entry: dict[str, Any]) -> dict[str, Any]:
    """A hot-key sample `{"key", "freq"}` -> the shown key plus its slot and kind (from the real
    name), which is what the hot-key detector groups by."""
    raw = entry.get("key")
    if not isinstance(raw, (str, bytes)):
        return {"key": HIDDEN, "freq": entry.get("freq"), "slot": None, "prefix": None}
    shown = key(raw)
    return {"key": shown, "freq": entry.get("freq"), "slot": key_slot(raw),
            "prefix": key_prefix(raw) if shown == _text(raw) else key_kind(raw)}


def _argument(arg: Any) -> str:
    raw = _raw(arg)
    text = _text(arg)
    if chat_keys.public(raw):
        return text
    if text.upper() in _WORDS or _NUMBER.fullmatch(text) or _MORE_ARGS.fullmatch(text):
        return text
    if text == "":
        return '""'
    kind = key_kind(raw)
    if kind:
        return f"<redacted {kind}>"
    m = _MORE_BYTES.fullmatch(raw)     # Redis keeps 128 bytes of a long argument and says how many more
    size = len(m.group(1)) + int(m.group(2)) if m else len(raw)
    return f"<{size} bytes>"


def command(argv: Sequence[Any], limit: int = 200) -> str:
    """A command's arguments (as the slow log holds them) -> one line with nothing secret in it."""
    if not argv:
        return ""
    name = _text(argv[0])
    if not _COMMAND.fullmatch(name):
        return HIDDEN
    out = [name]
    keep = _SECRET_AFTER.get(name.upper())
    hide = 0
    for i, arg in enumerate(argv[1:]):
        if keep is not None and i >= keep:
            hide = len(argv)
        if hide > 0:
            out.append(HIDDEN)
            hide -= 1
            continue
        out.append(_argument(arg))
        if _text(arg).upper() in _CREDENTIAL_MARKERS:
            hide = 2
    return " ".join(out)[:limit]


def client_name(name: Any) -> str:
    """A client's name (CLIENT SETNAME: whatever the client chose) as the control plane may show it."""
    text = _text(name)
    if text == "" or (_NAME.fullmatch(text) and not _looks_secret(text)):
        return text
    return HIDDEN


def command_name(name: Any) -> str:
    """CLIENT LIST's `cmd=`: a command name (`get`, `client|list`), else hidden."""
    text = _text(name)
    return text if text == "NULL" or _COMMAND.fullmatch(text) else HIDDEN


def redis_data(data: dict[str, Any]) -> dict[str, Any]:
    """A redis Observation's data with its slow log and hot keys redacted (a new dict)."""
    out = dict(data)
    slow = data.get("slowlog")
    if isinstance(slow, list):
        out["slowlog"] = [_slow_entry(e) for e in slow if isinstance(e, dict)]
    hot = data.get("hotkeys")
    if isinstance(hot, dict):
        out["hotkeys"] = {**hot, "keys": [hot_key(k) for k in hot.get("keys") or [] if isinstance(k, dict)]}
    return out


def _slow_entry(e: dict[str, Any]) -> dict[str, Any]:
    args = e.get("args")
    shown = command(args) if isinstance(args, list) else HIDDEN
    return {k: v for k, v in e.items() if k != "args"} | {"command": shown,
                                                          "name": client_name(e.get("name"))}


def clients_data(data: dict[str, Any]) -> dict[str, Any]:
    """A clients Observation's data with client names and commands redacted (a new dict)."""
    out = dict(data)
    if isinstance(data.get("by_host"), list):
        out["by_host"] = [_host(h) for h in data["by_host"] if isinstance(h, dict)]
    if isinstance(data.get("most_idle"), list):
        out["most_idle"] = [c | {"name": client_name(c.get("name")), "cmd": command_name(c.get("cmd"))}
                            for c in data["most_idle"] if isinstance(c, dict)]
    return out


def _host(h: dict[str, Any]) -> dict[str, Any]:
    top = h.get("top_commands")
    if not isinstance(top, list):
        return h
    return h | {"top_commands": [[command_name(c[0]), c[1]] for c in top
                                 if isinstance(c, (list, tuple)) and len(c) == 2]}


def observation(obs: Observation) -> Observation:
    """`obs` with its data redacted, for the sources that carry Redis's own data (redis, clients);
    any other Observation is returned as it is."""
    if not isinstance(obs.data, dict):
        return obs
    if obs.source == "redis":
        return dataclasses.replace(obs, data=redis_data(obs.data))
    if obs.source == "clients":
        return dataclasses.replace(obs, data=clients_data(obs.data))
    return obs
