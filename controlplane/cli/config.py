"""`chatops config`: the cluster file."""

from __future__ import annotations

import click

from cluster import checks
from controlplane.cli.common import load


@click.group()
def config() -> None:
    """Cluster-file commands."""


@config.command("check")
@click.argument("file", required=False)
def config_check(file: str | None) -> None:
    """Validate a cluster file (the shipped default when FILE is omitted)."""
    loaded = load(file)
    cf = loaded.spec
    click.echo(f"{loaded.path}: OK ({len(cf.hosts)} hosts, {len(cf.clusters)} clusters, "
               f"{len(cf.redis.shards)} shards, profile {cf.profile})")
    for path, message in checks.warnings(cf):
        click.echo(f"warning: {path}: {message}", err=True)
