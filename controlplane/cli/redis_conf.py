"""`chatops redis render`: each Redis server's redis.conf, from the settings `chatops up` starts it with."""

from __future__ import annotations

import json

import click

from cluster import binaries, redis_acl, secrets
from cluster.rundir import RunDirError
from controlplane.cli.common import config_option, fail, load, run_dir_option
from controlplane.cli.common import run_dir as _run_dir
from controlplane.local import redis_config


@click.group("redis")
def redis() -> None:
    """Redis servers' configs."""


@redis.command("render")
@config_option
@run_dir_option
@click.option("--host", "hosts", multiple=True, help="Only the servers on this Redis host (repeatable).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object, server name -> {shard, host, address, port, role, config, acl_file, auth_conf, "
                   "acl_users, replication_password_env} (for Ansible).")
def redis_render(config: str | None, run_dir: str | None, hosts: tuple[str, ...], as_json: bool) -> None:
    """Render each shard's (and replica's) redis.conf from the cluster file; --run-dir sets its `dir`."""
    run = _run_dir(run_dir)
    cf = load(config, run).spec
    try:
        servers = redis_config.render_all(cf, run)
    except (RunDirError, binaries.MissingBinary) as exc:
        fail(str(exc))
    known = sorted({s.host for s in servers})
    for h in hosts:
        if h not in known:
            fail(f"not a Redis host: {h} (Redis hosts: {', '.join(known)})", 2)
    chosen = [s for s in servers if not hosts or s.host in hosts]
    if as_json:
        # The ACL users with the *variable* holding each password, never a value: Ansible's
        # template hashes the controller's variable into the ACL file (roles/redis).
        users = [{"user": u, "password_env": var, "rules": rules} for u, var, rules in redis_acl.users(cf)]
        click.echo(json.dumps({s.name: {"shard": s.shard, "host": s.host, "address": s.address, "port": s.port,
                                        "role": s.role, "config": s.text(), "acl_file": s.acl_file,
                                        "auth_conf": s.auth_conf, "acl_users": users,
                                        "replication_password_env": secrets.variable(
                                            cf, redis_acl.PASSWORD_FIELDS[redis_acl.REPLICATION])}
                               for s in chosen}))
        return
    for s in chosen:
        click.echo(f"# --- {s.name}.conf")
        click.echo(s.text())
