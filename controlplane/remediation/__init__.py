"""Actions that change the cluster, one module each, on one contract (base.py): plan() without
side effects, apply() of a reviewed plan, verification against the findings it should clear.
plans.py is the engine every way in goes through (API, CLI, dashboard, automatic policy)."""

from controlplane.remediation import (
    add_shard,
    kill_clients,
    proxy_reload,
    relocate_shard,
    remove_shard,
    reshard,
    restart_service,
    server_state,
    set_keepalive,
    set_redis_config,
)

# By name, as a plan or a finding's suggested remediation names them.
ACTIONS = {m.NAME: m for m in (kill_clients, set_redis_config, set_keepalive, server_state, restart_service,
                               proxy_reload, reshard, add_shard, remove_shard, relocate_shard)}
