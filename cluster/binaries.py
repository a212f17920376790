"""Finding the external programs chatops drives, with the install command when one is missing."""

from __future__ import annotations

import shutil

# Debian package that provides each program.
PACKAGES = {
    "haproxy": "haproxy",
    "redis-server": "redis-server",
    "redis-cli": "redis-tools",
    # Only the tests drive these (the shipped rules, a real Prometheus and Alertmanager).
    "prometheus": "prometheus",
    "promtool": "prometheus",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "amtool": "prometheus-alertmanager",
    # Standard IRC clients, for tests/chat/test_real_clients.py.
    "ii": "ii",
    "weechat-headless": "weechat-headless",
}
TEST_ONLY = {"prometheus", "promtool", "prometheus-alertmanager", "amtool", "ii", "weechat-headless"}


class MissingBinary(Exception):
    def __init__(self, name: str):
        pkg = PACKAGES.get(name, name)
        super().__init__(
            f"{name} is not installed (or not on PATH). Install it with: "
            f"sudo apt-get install -y {pkg}   (or run `make {'test' if name in TEST_ONLY else 'run'}`, "
            "which installs it)")
        self.name = name


def require(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if not path:
        raise MissingBinary(name)
    return path
