"""`chatops loadgen`, `rooms` and `users`: using the chat as its users do."""

from __future__ import annotations

import sys
import time

import click

from cluster.state import read_state
from controlplane.cli.common import config_option, fail, load, run_dir_option
from controlplane.cli.common import run_dir as _run_dir


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def loadgen(args: tuple[str, ...]) -> None:
    """Fake traffic against the running cluster (`chatops loadgen --help` for the options)."""
    from chat import loadgen as lg

    argv = list(args)
    if "--config" not in argv and not any(a.startswith("--config=") for a in argv):
        state = read_state(_run_dir(None))
        if state and state.get("config"):
            argv = ["--config", state["config"], *argv]
    sys.exit(lg.main(argv))


@click.command()
@config_option
@run_dir_option
def rooms(config: str | None, run_dir: str | None) -> None:
    """Where each room is served: its cluster and that cluster's frontends."""
    cf = load(config, _run_dir(run_dir)).spec
    rows = []
    for cname, cluster in cf.clusters.items():
        irc_addrs = ", ".join(f"{cf.address(h)}:{cluster.frontend.irc_port}" for h in cluster.hosts)
        ws_addrs = ", ".join(f"ws://{cf.address(h)}:{cluster.frontend.ws_port}/" for h in cluster.hosts)
        for room in cluster.rooms:
            rows.append((room, cname, irc_addrs, ws_addrs))
    first = next(iter(cf.clusters))
    widths = [max(len(r[i]) for r in rows + [("ROOM", "CLUSTER", "IRC (TCP)", "WEBSOCKET")]) for i in range(4)]
    for row in [("ROOM", "CLUSTER", "IRC (TCP)", "WEBSOCKET")] + rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    click.echo(f"\nRooms not listed in the cluster file live on the first cluster, {first}.")


@click.group()
def users() -> None:
    """Chat users and their tokens (the cluster must be running)."""


@users.command("add")
@click.argument("name")
@config_option
@run_dir_option
@click.option("--mod", "mod_rooms", multiple=True, metavar="ROOM", help="Make the user a mod of ROOM (repeatable).")
@click.option("--broadcaster", "broadcaster_rooms", multiple=True, metavar="ROOM",
              help="Make the user ROOM's broadcaster (repeatable).")
@click.option("--bot", is_flag=True, help="A known bot: Twitch's 7,500 messages per 30 s limit.")
@click.option("--color", default="", help="Chat colour, like #1E90FF.")
@click.option("--sub", "sub_rooms", multiple=True, metavar="ROOM",
              help="Subscribe the user to ROOM, for subscribers-only mode (repeatable).")
@click.option("--follows", "follow_rooms", multiple=True, metavar="ROOM",
              help="The user follows ROOM from now on, for followers-only mode (repeatable).")
def users_add(name: str, config: str | None, run_dir: str | None, mod_rooms: tuple[str, ...],
              broadcaster_rooms: tuple[str, ...], bot: bool, color: str, sub_rooms: tuple[str, ...],
              follow_rooms: tuple[str, ...]) -> None:
    """Create (or update) user NAME and print a new token for `PASS oauth:<token>`."""
    import asyncio

    from chat.cache import CacheUnavailable, ShardedCache
    from chat.users import add_user

    run = _run_dir(run_dir)
    cf = load(config, run).spec
    mod_rooms = tuple(r.lstrip("#") for r in mod_rooms)
    broadcaster_rooms = tuple(r.lstrip("#") for r in broadcaster_rooms)
    sub_rooms = tuple(r.lstrip("#") for r in sub_rooms)
    follow_rooms = tuple(r.lstrip("#") for r in follow_rooms)
    host = cf.chat_hosts()[0][0]

    async def go() -> str:
        cache = ShardedCache.for_host(cf, host, timeout=2.0, run=run)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    return await add_user(cache, name.lower(), mod_rooms=mod_rooms,
                                          broadcaster_rooms=broadcaster_rooms, bot=bot, color=color,
                                          sub_rooms=sub_rooms, follow_rooms=follow_rooms)
                except CacheUnavailable:
                    # A cluster that has just started may not have passed its first health checks.
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.5)
        finally:
            await cache.close()

    try:
        token = asyncio.run(go())
    except ValueError as exc:
        fail(str(exc), 2)
    except CacheUnavailable as exc:
        fail(f"cannot reach Redis through {host}'s shard listeners ({exc}); is the cluster up (`chatops status`)?")
    roles = ", ".join([f"mod of #{r}" for r in mod_rooms] + [f"broadcaster of #{r}" for r in broadcaster_rooms]
                      + [f"subscriber of #{r}" for r in sub_rooms] + [f"follows #{r}" for r in follow_rooms]
                      + (["bot"] if bot else []))
    click.echo(f"user {name.lower()}{f' ({roles})' if roles else ''}; connect with:", err=True)
    click.echo(f"oauth:{token}")
