"""The `chatops` command: one group, each subcommand from the module named for it."""

from __future__ import annotations

from importlib import metadata

import click

from controlplane.cli import (
    chat,
    config,
    inspect,
    local,
    proxy,
    redis_conf,
    remediate,
    scenario,
    serve,
    silence,
    slots,
)


def _version() -> str:
    try:
        return metadata.version("chatops")
    except metadata.PackageNotFoundError:     # run from a tree that was never installed
        return "unknown (not installed)"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), "--version", "-V", prog_name="chatops", message="%(prog)s %(version)s")
def main() -> None:
    """chatops: observe, explain and fix a chat cluster."""


main.add_command(local.up)
main.add_command(local.down)
main.add_command(local.status)
main.add_command(serve.controlplane_cmd)
main.add_command(config.config)
main.add_command(proxy.proxy)
main.add_command(redis_conf.redis)
main.add_command(inspect.inspect)
main.add_command(slots.slots)
main.add_command(chat.loadgen)
main.add_command(chat.rooms)
main.add_command(chat.users)
main.add_command(remediate.plan_cmd)
main.add_command(remediate.fix_cmd)
main.add_command(remediate.apply_cmd)
main.add_command(remediate.plans_cmd)
main.add_command(remediate.audit_cmd)
main.add_command(silence.silence)
main.add_command(scenario.scenario)
