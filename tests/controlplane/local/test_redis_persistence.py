"""Every redis-server `chatops up` starts (and every redis.conf Ansible lays down) persists with an
append-only file of its own and evicts only keys with a TTL (issue 16); the live proof is
tests/chat/test_tokens_and_durability.py."""

from __future__ import annotations

from pathlib import Path

import yaml

from cluster import clusterfile
from cluster.rundir import RunDir
from controlplane.local import redis_config
from tests.conftest import small_cluster


def test_every_server_persists_to_its_own_append_only_file(tmp_path):
    doc = small_cluster("127.0.9", replica=True)
    cf = clusterfile.parse(yaml.safe_dump(doc))
    configs = redis_config.render_all(cf, RunDir(Path(tmp_path)))
    assert len(configs) == 3
    dirs = set()
    for c in configs:
        settings = dict(c.settings)
        assert settings["appendonly"] == "yes" and settings["appendfsync"] == "everysec", c.name
        assert settings["save"] == "" and settings["maxmemory-policy"] == "volatile-lfu", c.name
        assert settings["appenddirname"] == f"appendonly-{c.address}-{c.port}"
        dirs.add((settings["dir"], settings["appenddirname"]))
        assert "appendonly yes" in c.text()
    assert len(dirs) == 3
