"""The Redis ACL users every shard runs with, and the credentials each client authenticates with.

Four users (docs/security.md, "Redis ACL users"):

- `default` (no password): PING and `INFO replication` only. Those are what must work before
  anyone authenticates: HAProxy's health check (PING, then `info replication` for role:master),
  the supervisor's readiness PING, and idle clients that PING once. Anything else gets NOPERM.
- `clue`: the chat's keys (`{tag}.kind`, chat/keys.py) and the slot guard's reserved keys
  (`chatops:*`, read-only but for `chatops:touched:*`, which the guard records keys in); plain data
  commands and the guard's scripts. No admin or dangerous command.
- `chatops`: the control plane. Reads anything; writes only its own `chatops:*` keys, except
  for the commands that move keys between shards (MIGRATE here, RESTORE on the target, DEL/UNLINK
  of what moved), which may touch any key. Its admin commands are listed one by one.
- `replication`: what a replica sends its primary (PSYNC, REPLCONF, PING).

The ACL file holds SHA-256 hashes (`#<hex>`), never a password. Passwords come from the
variables the cluster file's `secrets:` names (cluster/secrets.py).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from cluster import secrets
from cluster.rundir import RunDir
from cluster.spec import ClusterFile

CLUE, CHATOPS, REPLICATION = "clue", "chatops", "replication"

# secrets.<field> holding each user's password.
PASSWORD_FIELDS = {
    CLUE: "redis_clue_password_env",
    CHATOPS: "redis_controlplane_password_env",
    REPLICATION: "redis_replication_password_env",
}

DEFAULT_RULES = "on nopass resetkeys resetchannels -@all +ping +info|replication"

# Rules after the password. `-@dangerous` drops FLUSHALL, KEYS, CONFIG, DEBUG, MIGRATE, SORT...
_RULES = {
    CLUE: ("resetkeys resetchannels ~{* %R~chatops:* %RW~chatops:touched:* "
           "-@all +@read +@write +@transaction -@dangerous +ping +eval +evalsha "
           "+client|setname +client|getname +client|id +client|info"),
    CHATOPS: ("resetkeys resetchannels %R~* ~chatops:* "
              "-@all +@read -keys +ping +info +dbsize +scan +randomkey +object|freq +memory|usage "
              "+config|get +config|set +slowlog|get +slowlog|reset +latency|latest "
              "+client|list +client|kill +client|setname +client|getname +client|id +client|info "
              "+client|pause +client|unpause +replicaof "
              "+script|load +eval +evalsha +set +setbit +hset +hdel +sadd +srem +del +unlink +select|0 "
              # Moving keys between shards touches chat keys; nothing else may write them.
              "(~* +migrate +restore +restore-asking +del +unlink)"),
    REPLICATION: "resetkeys resetchannels -@all +psync +replconf +ping",
}

ACL_FILE = "users.acl"
AUTH_CONF = "auth.conf"


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str = field(repr=False)


def password(cf: ClusterFile, user: str, run: RunDir | None = None) -> str:
    """User `user`'s password: its variable, else (profile local) the run dir's secrets.env --
    the one given, else CHATOPS_RUN_DIR's or .run's, as every chatops command finds its run dir."""
    return secrets.value(cf, PASSWORD_FIELDS[user], run if run is not None else RunDir.resolve())


def credentials(cf: ClusterFile, user: str, run: RunDir | None = None) -> Credentials:
    return Credentials(user, password(cf, user, run))


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def users(cf: ClusterFile) -> list[tuple[str, str | None, str]]:
    """(user, the variable holding its password or None, its rules), in ACL-file order: what the
    ACL file says, for Ansible to render with the controller's variables."""
    out: list[tuple[str, str | None, str]] = [("default", None, DEFAULT_RULES)]
    out += [(u, secrets.variable(cf, PASSWORD_FIELDS[u]), _RULES[u]) for u in (CLUE, CHATOPS, REPLICATION)]
    return out


def acl_text(cf: ClusterFile, run: RunDir | None = None) -> str:
    # No comment line: redis-server refuses an ACL file line that does not start with `user`.
    lines = []
    for user, variable, rules in users(cf):
        if variable is None:
            lines.append(f"user {user} {rules}")
        else:
            lines.append(f"user {user} on #{_hash(password(cf, user, run))} {rules}")
    return "\n".join(lines) + "\n"


def auth_conf_text(cf: ClusterFile, run: RunDir | None = None) -> str:
    """redis.conf lines a server follows a primary with, should it be (or become) a replica."""
    return (f"masteruser {REPLICATION}\n"
            f"masterauth {password(cf, REPLICATION, run)}\n")


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, mode 600 from the first byte, replacing it atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)
