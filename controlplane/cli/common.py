"""What every `chatops` subcommand shares: the --config and --run-dir options, loading the
cluster file the way an operator expects, and failing with a clear message and exit code.
Each subcommand module imports these; controlplane/cli/__init__.py imports the subcommands."""

from __future__ import annotations

import os
import sys

import click

from cluster import clusterfile, secrets
from cluster.rundir import RunDir
from cluster.state import running_config


def fail(message: str, code: int = 1) -> None:
    click.echo(f"chatops: {message}", err=True)
    sys.exit(code)


def run_dir(path: str | None) -> RunDir:
    return RunDir.resolve(path)


def load(path: str | None, run: RunDir | None = None) -> clusterfile.LoadedCluster:
    """The given cluster file; else the one the running cluster was started from; else the default."""
    if not path and run is not None:
        path = running_config(run)
    try:
        loaded = clusterfile.load(path)
    except clusterfile.ClusterFileError as exc:
        fail(str(exc), 2)
    if run is not None and loaded.spec.profile == "local":
        use_local_secrets(loaded.spec, run)
    return loaded


def use_local_secrets(cf, run: RunDir) -> None:
    """The secrets `chatops up` generated for this run dir, for every unset variable, so that a
    command talking to the cluster (a Redis ACL user's password...) finds what the processes that
    `up` started were handed; a variable already set wins, as it does for `up`."""
    stored = secrets.read_file(run)
    for s in secrets.SECRETS:
        name = secrets.variable(cf, s.field)
        if not os.environ.get(name) and stored.get(name):
            os.environ[name] = stored[name]


config_option = click.option("--config", "config", metavar="FILE", envvar="CHATOPS_CONFIG",
                             help="Cluster file (default: the running cluster's, else the shipped local cluster).")
run_dir_option = click.option("--run-dir", metavar="DIR",
                              help="Runtime files: pids, sockets, logs, configs [env CHATOPS_RUN_DIR; default .run].")
