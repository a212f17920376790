"""`chatops controlplane`: serve the dashboard, the API and /metrics with waitress.

Waitress, not Flask's development server: it is a production WSGI server in pure Python (no
compiler, no C dependency), one process with a thread pool. One process is the point: the store
is in memory and the scheduler must run once per deployment (controlplane/scheduler.py), so a
pre-forking server with N workers would scrape N times into N diverging stores.
"""

from __future__ import annotations

import gc
import logging
import sys

import click

from controlplane.cli.common import config_option, fail, run_dir_option

THREADS = 8


@click.command("controlplane")
@config_option
@run_dir_option
@click.option("--listen", metavar="ADDRESS:PORT", help="Override controlplane.listen from the cluster file "
                                                       "(a loopback address).")
def controlplane_cmd(config: str | None, run_dir: str | None, listen: str | None) -> None:
    """Serve the control plane: scheduled scraping, the dashboard, the JSON API and /metrics."""
    from waitress import serve

    from cluster import clusterfile
    from controlplane.scheduler import SchedulerLocked
    from controlplane.web.app import create_app, trusted_hosts

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s controlplane: [%(name)s] %(message)s", datefmt="%b %d %H:%M:%S")
    # APScheduler logs every run of every job at INFO: thousands of lines an hour that say nothing
    # the job health does not. Its warnings (missed runs) still come through.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    try:
        app = create_app({"CLUSTER_FILE": config, "RUN_DIR": run_dir})
    except SchedulerLocked as exc:
        fail(str(exc))
    except clusterfile.ClusterFileError as exc:
        fail(str(exc), 2)
    cf = app.config["CLUSTER"]
    host, port = cf.controlplane.listen.address, cf.controlplane.listen.port
    if listen:
        host, _, p = listen.rpartition(":")
        if not host or not p.isdigit() or not 0 < int(p) < 65536:
            fail(f"--listen: expected ADDRESS:PORT, got {listen!r}", 2)
        if not host.startswith("127."):
            fail(f"--listen: {host} is not a loopback address (127.0.0.0/8)", 2)
        port = int(p)
        app.config["TRUSTED_HOSTS"] = trusted_hosts(cf, (host, port))   # answer to the address it serves
    url = f"http://{host}:{port}"
    # Everything loaded so far (modules, the app, the cluster file) lives as long as the process:
    # out of the collector's sight, so a full collection walks only what scraping builds since.
    # Full collections of it all took ~50 ms every few seconds, inside whichever job ran then.
    gc.collect()
    gc.freeze()
    click.echo(f"chatops control plane: dashboard {url}/  API {url}/api/v1/  metrics {url}/metrics", err=True)
    try:
        serve(app, host=host, port=port, threads=THREADS, ident="chatops", _quiet=True)
    except OSError as exc:
        app.extensions["chatops.scraper"].stop()
        fail(f"cannot listen on {host}:{port}: {exc}")
