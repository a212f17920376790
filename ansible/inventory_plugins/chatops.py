"""Ansible inventory from the chatops cluster file: the hosts, groups and ports that `chatops up`
and the control plane read, never a second copy of them.

Which cluster file (the same rule as `chatops`' own commands, whose --config reads the same variable): CHATOPS_CONFIG; else the file
the cluster running from CHATOPS_RUN_DIR (default .run) was started with; else the shipped
default. It is loaded and validated by `cluster.clusterfile.load`, so an invalid file fails the
inventory with the loader's own `key.path: message` lines.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin

DOCUMENTATION = r"""
name: chatops
short_description: chatops hosts, clusters and shards from the cluster file
description:
  - Reads the chatops cluster file with chatops' own loader (C(cluster.clusterfile.load)).
  - "Groups: C(chat), C(redis), C(controlplane), C(cluster_<name>) per chat cluster and
    C(shard_<name>) per Redis shard (the host serving it); '-' in a name becomes '_'."
  - "Host variables: C(chatops_address), C(chatops_roles), C(chatops_cluster), C(chatops_services),
    C(chatops_frontend), C(chatops_haproxy) (chat hosts), C(chatops_shards) (Redis hosts),
    C(chatops_controlplane) (the control plane)."
  - "Group C(all): C(chatops_secrets_env), the names of the variables holding the cluster's secrets
    (the cluster file's C(secrets) variables and C(controlplane.auth_token_env)); never their values."
  - In profile C(local) every host uses the local connection and the Python running Ansible;
    in profile C(remote) hosts use ssh with C(ansible_host) set to the host's address.
options:
  plugin:
    description: The name of this plugin.
    required: true
    choices: [chatops]
  cluster_file:
    description: The cluster file; unset means the running cluster's file, else the shipped default.
    type: path
    env:
      - name: CHATOPS_CONFIG
  run_dir:
    description: The run directory of the local cluster (pids, sockets, rendered configs).
    type: path
    env:
      - name: CHATOPS_RUN_DIR
"""

EXAMPLES = r"""
# ansible/inventory/chatops.yml
plugin: chatops
"""


def _group(prefix: str, name: str) -> str:
    return f"{prefix}_{name.replace('-', '_')}"


class InventoryModule(BaseInventoryPlugin):
    NAME = "chatops"

    def verify_file(self, path):
        return super().verify_file(path) and os.path.basename(path) in ("chatops.yml", "chatops.yaml")

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        try:
            from cluster import clusterfile
            from cluster.rundir import RunDir
            from cluster.state import running_config
        except ImportError as exc:
            raise AnsibleParserError(
                f"the chatops inventory needs the chatops package in the Python running Ansible "
                f"({sys.executable}): {exc}. Install it (pip install -e .) or run .venv/bin/ansible-*")
        run = RunDir.resolve(self.get_option("run_dir"))
        config = self.get_option("cluster_file") or running_config(run)
        try:
            loaded = clusterfile.load(config)
        except clusterfile.ClusterFileError as exc:
            raise AnsibleParserError(str(exc))
        self._populate(loaded.spec, loaded.path, run.root)

    def _populate(self, cf, config_path: Path, run_root: Path) -> None:
        inv = self.inventory
        for group in ("chat", "redis", "controlplane"):
            inv.add_group(group)
        inv.set_variable("all", "chatops_profile", cf.profile)
        inv.set_variable("all", "chatops_cluster_file", str(config_path))
        inv.set_variable("all", "chatops_run_dir", str(run_root))
        inv.set_variable("all", "chatops_api_url", cf.public_url())
        inv.set_variable("all", "chatops_bin", str(Path(sys.executable).parent / "chatops"))
        # Names only: the values stay in the controller's environment (roles/chatops_secrets).
        from cluster.secrets import SECRETS, variable
        inv.set_variable("all", "chatops_secrets_env",
                         [variable(cf, s.field) for s in SECRETS] + [cf.controlplane.auth_token_env])
        # The one the read-only playbooks (check.yml) log in to Redis with.
        inv.set_variable("all", "chatops_redis_controlplane_password_env", cf.secrets.redis_controlplane_password_env)

        roles: dict[str, list[str]] = {}

        def host(name: str, address: str, explicit_connection: str | None = None) -> None:
            if name in roles:
                return
            roles[name] = []
            inv.add_host(name)
            inv.set_variable(name, "chatops_address", address)
            if cf.profile == "local":
                inv.set_variable(name, "ansible_connection", "local")
                inv.set_variable(name, "ansible_python_interpreter", sys.executable)
            else:
                inv.set_variable(name, "ansible_connection", explicit_connection or "ssh")
                inv.set_variable(name, "ansible_host", address)

        for name, h in cf.hosts.items():
            explicit = h.ansible_connection if "ansible_connection" in h.model_fields_set else None
            host(name, h.address, explicit)

        for cname, c in cf.clusters.items():
            group = _group("cluster", cname)
            inv.add_group(group)
            inv.add_child("chat", group)
            sv = c.services
            for h in c.hosts:
                inv.add_host(h, group=group)
                roles[h].append("chat")
                inv.set_variable(h, "chatops_cluster", cname)
                inv.set_variable(h, "chatops_services", {
                    "edge": {"irc_port": sv.edge.irc_port, "ws_port": sv.edge.ws_port,
                             "http_port": sv.edge.http_port, "drain_period": sv.edge.drain_period},
                    "clue": {"port": sv.clue.port},
                    "exchange": {"port": sv.exchange.port},
                })
                inv.set_variable(h, "chatops_frontend", {"irc_port": c.frontend.irc_port,
                                                         "ws_port": c.frontend.ws_port})
                inv.set_variable(h, "chatops_haproxy", {
                    "stats_port": cf.haproxy.stats_port,
                    "listeners": [{"shard": s.name, "port": cf.listener_port(i)}
                                  for i, s in enumerate(cf.redis.shards)],
                })
        shards: dict[str, list[dict]] = {}
        for i, s in enumerate(cf.redis.shards):
            group = _group("shard", s.name)
            inv.add_group(group)
            inv.add_host(s.host, group=group)
            inv.add_host(s.host, group="redis")
            shards.setdefault(s.host, []).append(
                {"name": s.name, "port": s.port, "role": "primary", "listener_port": cf.listener_port(i)})
            if s.replica:
                inv.add_host(s.replica.host, group="redis")
                shards.setdefault(s.replica.host, []).append(
                    {"name": s.name, "port": s.replica.port, "role": "replica",
                     "listener_port": cf.listener_port(i),
                     "primary": {"host": s.host, "address": cf.address(s.host), "port": s.port}})
        for h, served in shards.items():
            roles[h].append("redis")
            inv.set_variable(h, "chatops_shards", served)

        listen = cf.controlplane.listen
        cp = cf.host_by_address()[listen.address]       # "controlplane" unless a host has its address
        host(cp, listen.address)
        inv.add_host(cp, group="controlplane")
        roles[cp].append("controlplane")
        inv.set_variable(cp, "chatops_controlplane", {"address": listen.address, "port": listen.port})

        for name, r in roles.items():
            inv.set_variable(name, "chatops_roles", r)
