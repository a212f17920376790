"""What the Ansible tests share: `ansible-playbook` and friends from the venv (make test installs
them with the test extras), and ONE live default cluster for the whole session (the shipped
topology on a free loopback subnet, with its control plane), because starting it costs seconds
the suite does not have. The cluster is started by `deploy.yml` itself, a first run from nothing,
so test_deploy.py checks that a second run changes nothing. Tests that change the cluster run in
file order and leave it as they found it, or say what they changed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from cluster import clusterfile
from tests.conftest import REPO, free_subnet, leftovers, read_state, wait_for

ANSIBLE = REPO / "ansible"
INVENTORY = ANSIBLE / "inventory"
TOKEN = "ansible-live-token-3c9e1f"


def ansible_bin(name: str) -> str:
    """`ansible-playbook`, `ansible-inventory`, `ansible-lint` beside this Python: fail, never skip."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        found = shutil.which(name)
        if found:
            return found
        pytest.fail(f"{name} is not installed. Install it with: {sys.executable} -m pip install "
                    f"'ansible-core>=2.16' 'ansible-lint>=24'   (or run `make test`, which installs it)",
                    pytrace=False)
    return str(path)


def ansible_env(config: Path | None = None, run: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment a playbook runs with: which cluster file and run dir (the inventory reads
    the cluster file; nothing else describes the cluster), the API token, and ansible.cfg."""
    env = dict(os.environ)
    env["ANSIBLE_CONFIG"] = str(ANSIBLE / "ansible.cfg")
    env["ANSIBLE_NOCOLOR"] = "1"
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    if config is not None:
        env["CHATOPS_CONFIG"] = str(config)
    if run is not None:
        env["CHATOPS_RUN_DIR"] = str(run)
    env["CHATOPS_API_TOKEN"] = TOKEN
    env.update(extra)
    return env


def playbook(name: str, *args: str, config: Path | None = None, run: Path | None = None,
             timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`ansible-playbook -i ansible/inventory ansible/playbooks/<name> args...`, from the repo root."""
    return subprocess.run(
        [ansible_bin("ansible-playbook"), "-i", str(INVENTORY), str(ANSIBLE / "playbooks" / name), *args],
        capture_output=True, text=True, cwd=REPO, timeout=timeout,
        env=env if env is not None else ansible_env(config, run))


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP's counters per host: {"chat1": {"ok": 3, "changed": 0, ...}}."""
    out: dict[str, dict[str, int]] = {}
    lines = output.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("PLAY RECAP")), None)
    for line in lines[start + 1:] if start is not None else []:
        if ":" not in line:
            continue
        host, _, rest = line.partition(":")
        counts = {}
        for item in rest.split():
            if "=" in item:
                k, _, v = item.partition("=")
                counts[k] = int(v)
        if counts:
            out[host.strip()] = counts
    return out


@dataclass
class LiveDefault:
    config: Path
    run: Path
    base: str
    first_deploy: subprocess.CompletedProcess     # the deploy.yml run that started it

    @property
    def spec(self):
        return clusterfile.load(self.config).spec

    @property
    def state(self) -> dict:
        return read_state(self.run)

    def env(self, **extra: str) -> dict[str, str]:
        return ansible_env(self.config, self.run, **extra)

    def play(self, name: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return playbook(name, *args, timeout=timeout, env=self.env())


@pytest.fixture(scope="session")
def live_default():
    """The shipped default cluster (4 chat hosts in 3 clusters, 4 shards on 2 Redis hosts) with its
    control plane, on a free subnet, started by `deploy.yml` (profile local: `chatops up
    --detach`), scraping every second; stopped with `chatops down` after the session."""
    run = Path(tempfile.mkdtemp(prefix="co-ans-", dir="/tmp"))
    doc = clusterfile.default_on_subnet(free_subnet())
    doc["controlplane"]["scrape"] = {"interval": "1s", "client_list_interval": "2s"}
    doc["alerts"] = []
    config = run.parent / f"{run.name}.yaml"
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    listen = doc["controlplane"]["listen"]
    base = f"http://{listen['address']}:{listen['port']}"
    try:
        first = playbook("deploy.yml", env=ansible_env(config, run), timeout=300)
        assert first.returncode == 0, f"the first deploy.yml failed:\n{first.stdout[-4000:]}{first.stderr[-2000:]}"

        def answering() -> bool:
            try:
                return bool((read_state(run) or {}).get("ready")) and api_get(base, "/jobs") is not None
            except OSError:
                return False
        wait_for(answering, 60, 0.5, "the deployed cluster and its control plane to answer")
        yield LiveDefault(config, run, base, first)
    finally:
        subprocess.run([sys.executable, "-m", "controlplane.cli", "down", "--run-dir", str(run)],
                       capture_output=True, cwd=REPO, timeout=90)
        for pid in leftovers(run, config):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        shutil.rmtree(run, ignore_errors=True)
        config.unlink(missing_ok=True)


def api_get(base: str, path: str) -> dict:
    import urllib.request
    with urllib.request.urlopen(base + "/api/v1" + path, timeout=30) as r:
        return json.load(r)
