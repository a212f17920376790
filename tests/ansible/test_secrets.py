"""roles/chatops_secrets, which profile remote uses to hand the cluster's secrets to every chatops
unit: a real ansible-playbook run on this machine (local connection) with the chatops inventory,
writing into a temporary directory instead of /etc. The values come from the environment only,
land in a mode 0600 file, and never reach the output, not even under --diff -v."""

from __future__ import annotations

import grp
import os
import pwd
import secrets
import subprocess

import yaml

from tests.ansible.conftest import ANSIBLE, INVENTORY, REPO, ansible_bin, ansible_env, recap
from tests.conftest import free_subnet, small_cluster, write_cluster

NAMES = ["CHATOPS_INTERNAL_TOKEN", "CHATOPS_REDIS_CLUE_PASSWORD", "CHATOPS_REDIS_CONTROLPLANE_PASSWORD",
         "CHATOPS_REDIS_REPLICATION_PASSWORD", "CHATOPS_API_TOKEN"]


def _play(tmp_path, values: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    play = tmp_path / "secrets.yml"
    play.write_text(yaml.safe_dump([{
        "name": "The cluster's secrets",
        "hosts": "controlplane",
        "gather_facts": False,
        "vars": {"chatops_secrets_file": str(tmp_path / "etc" / "secrets.env"),
                 "chatops_secrets_owner": pwd.getpwuid(os.getuid()).pw_name,
                 "chatops_secrets_group": grp.getgrgid(os.getgid()).gr_name},
        "roles": ["chatops_secrets"],
        "handlers": [{"name": "Restart", "listen": "chatops secrets changed",
                      "ansible.builtin.debug": {"msg": "the units would restart"}}],
    }], sort_keys=False))
    config = write_cluster(tmp_path / "cluster.yaml", small_cluster(free_subnet()))
    env = ansible_env(config, tmp_path / "run")
    for name in NAMES:
        env.pop(name, None)
    env.update(values)
    env["ANSIBLE_ROLES_PATH"] = str(ANSIBLE / "roles")
    return subprocess.run([ansible_bin("ansible-playbook"), "-i", str(INVENTORY), str(play), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120, env=env)


def test_the_secrets_file_is_written_0600_from_the_environment_and_no_value_is_printed(tmp_path):
    (tmp_path / "etc").mkdir()
    values = {name: secrets.token_urlsafe(24) for name in NAMES}
    first = _play(tmp_path, values, "--diff", "-v")
    out = first.stdout + first.stderr
    assert first.returncode == 0, out
    assert "the units would restart" in out                                  # a change restarts the units
    path = tmp_path / "etc" / "secrets.env"
    assert path.stat().st_mode & 0o777 == 0o600
    lines = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines == [f"{name}={values[name]}" for name in NAMES]            # the inventory named all five
    assert not any(v in out for v in values.values()), "a secret reached the output"
    again = _play(tmp_path, values, "--diff")
    assert again.returncode == 0 and recap(again.stdout)["controlplane"]["changed"] == 0, again.stdout


def test_an_unset_or_unsafe_secret_fails_the_play_naming_only_the_variable(tmp_path):
    (tmp_path / "etc").mkdir()
    values = {name: secrets.token_urlsafe(24) for name in NAMES}
    unset = dict(values)
    del unset["CHATOPS_REDIS_CLUE_PASSWORD"]
    proc = _play(tmp_path, unset)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "CHATOPS_REDIS_CLUE_PASSWORD must be set" in out, out
    assert not any(v in out for v in unset.values())
    assert not (tmp_path / "etc" / "secrets.env").exists()
    # A newline would let a value add a variable of its own to the file.
    unsafe = dict(values, CHATOPS_INTERNAL_TOKEN="a" * 20 + "\nLD_PRELOAD=/tmp/x.so")
    proc = _play(tmp_path, unsafe)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "CHATOPS_INTERNAL_TOKEN must be set" in out, out
    assert "LD_PRELOAD" not in out and not (tmp_path / "etc" / "secrets.env").exists()


def test_every_chatops_unit_reads_the_secrets_file_and_carries_no_secret():
    for unit in ("chat/templates/chatops-chat.service.j2",
                 "controlplane/templates/chatops-controlplane.service.j2"):
        text = (ANSIBLE / "roles" / unit).read_text()
        assert "EnvironmentFile={{ chatops_secrets_file }}" in text, unit
        assert "lookup(" not in text and "TOKEN" not in text.replace("# ", ""), unit
    for role in ("chat", "controlplane"):
        tasks = yaml.safe_load((ANSIBLE / "roles" / role / "tasks" / "main.yml").read_text())
        remote = next(t for t in tasks if t.get("when") == "chatops_profile == 'remote'")
        imported = [t.get("ansible.builtin.import_role") for t in remote["block"]]
        assert {"name": "chatops_secrets"} in imported, role
