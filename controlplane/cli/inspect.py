"""`chatops inspect`: what each source says right now -- the 2014 team's top, redis-cli, lsof and
log greps, done properly. Each source's commands live in its own inspect_<source>.py."""

from __future__ import annotations

import click

from controlplane.cli import inspect_haproxy, inspect_logs, inspect_redis


@click.group()
def inspect() -> None:
    """What each source says right now: the 2014 team's top, redis-cli, lsof and log greps, done properly."""


for _module in (inspect_haproxy, inspect_redis, inspect_logs):
    for _command in _module.COMMANDS:
        inspect.add_command(_command)
