"""The package installs anywhere: build the wheel from (a copy of) the working tree, install it
with its dependencies into a fresh venv outside the repo, and run the installed `chatops` from a
directory outside the repo with PYTHONPATH unset, so nothing can come from the checkout. The
installed CLI reads its shipped default cluster file, and the installed control plane, pointed at
a live cluster, serves the dashboard, its CSS, the OpenAPI document and a runbook page -- all
package data that a wheel once left out (every one of them then answered 500)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, cluster_up, require, small_cluster, wait_for, write_cluster

pytestmark = pytest.mark.timeout(300)

VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]

# Files the running code reads at run time: each must be in the wheel.
MUST_SHIP = [
    "controlplane/web/static/dashboard.css",
    "controlplane/web/openapi.json",
    "controlplane/web/templates/base.html",
    "controlplane/haproxy/haproxy.cfg.j2",
    "cluster/default-cluster.yaml",
    "runbooks/leaked_clients.md",
    "collectors/fastlog.c",          # so an installed copy can build its log scanner (fastlog.BUILD_HINT)
    "collectors/clientscan.c",       # and its CLIENT LIST scanner (clientscan.BUILD_HINT)
]
# Whole directories of package data: every file in the tree must be in the wheel too.
MUST_SHIP_ALL = [
    ("controlplane/web/static", "*"),
    ("controlplane/web/templates", "*.html"),
    ("runbooks", "*.md"),
]
# What a build leaves behind, or what is not the source: not copied into the build tree.
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", ".run", "build", "dist", "*.egg-info", "__pycache__",
                                    ".pytest_cache", ".ruff_cache", "*.pyc")


@dataclass
class Installed:
    wheel: Path
    names: list[str]      # the wheel's file list
    source: Path          # the copy of the tree the wheel was built from
    venv: Path
    outside: Path         # a cwd outside the repo
    env: dict[str, str]   # no PYTHONPATH, the venv's bin first on PATH

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([str(a) for a in args], check=False, capture_output=True, text=True,
                              timeout=timeout, cwd=self.outside, env=self.env)


def _outside_repo(path: Path) -> Path:
    path = path.resolve()
    assert not path.is_relative_to(REPO.resolve()), f"{path} is inside the repo"
    return path


def _clean_env(venv: Path) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH", "VIRTUAL_ENV",
                "CHATOPS_CONFIG", "CHATOPS_RUN_DIR", "PYTEST_CURRENT_TEST"):
        env.pop(var, None)
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "/usr/bin:/bin")])
    return env


def _check(out: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    if out.returncode != 0:
        pytest.fail(f"{what} failed (exit {out.returncode}):\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}",
                    pytrace=False)
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    top = _outside_repo(tmp_path_factory.mktemp("wheel"))
    # Build from a copy: setuptools writes build/ and *.egg-info next to pyproject.toml, and the
    # source tree must stay as it is (other work goes on in it).
    source = top / "src"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE, symlinks=True)
    outside = top / "cwd"
    outside.mkdir()
    env = _clean_env(top / "venv")
    dist = top / "dist"
    _check(subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
                           "-q", "-w", str(dist), str(source)],
                          check=False, capture_output=True, text=True, timeout=180, cwd=outside, env=env),
           "pip wheel")
    wheels = sorted(dist.glob("chatops-*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as z:
        names = z.namelist()
    # A fresh venv from the base interpreter (not the repo's .venv, which has the checkout installed
    # in editable mode), and the wheel with its dependencies from the index (through pip's cache).
    venv = top / "venv"
    _check(subprocess.run([sys.executable, "-m", "venv", str(venv)], check=False, capture_output=True,
                          text=True, timeout=120, cwd=outside, env=env), "python -m venv")
    _check(subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                           "--disable-pip-version-check", str(wheels[0])],
                          check=False, capture_output=True, text=True, timeout=300, cwd=outside, env=env),
           "pip install of the wheel")
    yield Installed(wheels[0], names, source, venv, outside, env)
    shutil.rmtree(top, ignore_errors=True)      # a venv is ~100 MB; pytest would keep three runs' worth


def test_the_wheel_ships_the_package_data(installed):
    names = set(installed.names)
    missing = [n for n in MUST_SHIP if n not in names]
    for directory, pattern in MUST_SHIP_ALL:
        missing += [f"{directory}/{p.name}" for p in sorted((installed.source / directory).glob(pattern))
                    if p.is_file() and f"{directory}/{p.name}" not in names]
    missing = list(dict.fromkeys(missing))
    assert not missing, (f"{installed.wheel.name} leaves out {missing}: add them to "
                         f"[tool.setuptools.package-data] in pyproject.toml")
    assert installed.wheel.name == f"chatops-{VERSION}-py3-none-any.whl"


def test_the_installed_package_imports_from_the_venv_only(installed):
    out = _check(installed.run(installed.bin / "python", "-c",
                               "import sys, controlplane, cluster, runbooks, controlplane.web.app\n"
                               "print(controlplane.__file__)\n"
                               "for m in (cluster, runbooks, controlplane.web.app): print(m.__file__)\n"
                               "print(runbooks.directory())\n"
                               "print('\\n'.join(p for p in sys.path if p))"),
                 "importing the installed package")
    site = (installed.venv / "lib").resolve()
    lines = out.stdout.splitlines()
    first, modules, rb_dir, path = lines[0], lines[1:4], lines[4], lines[5:]
    assert Path(first).resolve().is_relative_to(site), first
    for f in [*modules, rb_dir]:
        assert Path(f).resolve().is_relative_to(site), f
    assert not [p for p in path if Path(p).resolve().is_relative_to(REPO.resolve())], path
    # No .pth / editable finder pointing back at the checkout.
    for pth in installed.venv.glob("lib/python*/site-packages/*.pth"):
        assert str(REPO) not in pth.read_text(errors="replace"), pth


def test_the_installed_cli(installed):
    chatops = installed.bin / "chatops"
    assert chatops.exists(), "the wheel installs no `chatops` console script"
    out = installed.run(chatops, "--version")
    assert out.returncode == 0, out.stderr
    assert VERSION in out.stdout, out.stdout
    out = installed.run(chatops, "config", "check")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK" in out.stdout, out.stdout
    # The shipped default cluster file, read from the installed package.
    shipped = out.stdout.split(":", 1)[0]
    assert Path(shipped).resolve().is_relative_to(installed.venv.resolve()), out.stdout


@dataclass
class Reply:
    status: int
    content_type: str
    body: str


def fetch(url: str) -> Reply:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return Reply(r.status, r.headers.get("Content-Type", ""), r.read().decode("utf-8", "replace"))
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, exc.headers.get("Content-Type", ""), exc.read().decode("utf-8", "replace"))


def _stop(proc: subprocess.Popen) -> None:
    """Stop the control plane we started (its own session): SIGINT, then SIGKILL its group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def test_the_installed_control_plane_serves_a_live_cluster(installed, subnet, run_dir):
    require("haproxy")
    require("redis-server")
    config = write_cluster(run_dir.parent / f"{run_dir.name}.yaml", small_cluster(subnet))
    address, port = f"{subnet}.100", 5000
    assert address.startswith("127.")
    base = f"http://{address}:{port}"
    log = installed.outside / f"controlplane-{run_dir.name}.log"
    try:
        # The cluster from the checkout's chatops; the control plane from the installed one.
        with cluster_up(config, run_dir):
            with open(log, "wb") as out:
                proc = subprocess.Popen(
                    [str(installed.bin / "chatops"), "controlplane", "--config", str(config),
                     "--run-dir", str(run_dir), "--listen", f"{address}:{port}"],
                    stdout=out, stderr=subprocess.STDOUT, cwd=installed.outside, env=installed.env,
                    start_new_session=True)
            try:
                def up():
                    if proc.poll() is not None:
                        raise AssertionError(f"the installed control plane exited with {proc.returncode}:\n"
                                             f"{log.read_text(errors='replace')[-4000:]}")
                    try:
                        return fetch(f"{base}/healthz").status == 200
                    except OSError:
                        return False
                wait_for(up, 30, 0.1, what="the installed control plane to answer /healthz")
                _check_pages(installed, base, log)
            finally:
                _stop(proc)
    finally:
        config.unlink(missing_ok=True)
        log.unlink(missing_ok=True)


def _check_pages(installed: Installed, base: str, log: Path) -> None:
    def why(reply: Reply) -> str:
        return f"{reply.status} {reply.content_type}: {reply.body[:1500]}\n--- control plane log:\n" \
               f"{log.read_text(errors='replace')[-3000:]}"

    page = fetch(f"{base}/")
    assert page.status == 200 and page.content_type.startswith("text/html"), why(page)
    assert "<html" in page.body.lower(), why(page)

    css_links = re.findall(r'<link[^>]+href="([^"]+\.css[^"]*)"', page.body)
    assert css_links, f"no stylesheet linked from /:\n{page.body[:1500]}"
    assert any("dashboard.css" in href for href in css_links), css_links
    for href in css_links:
        css = fetch(base + href if href.startswith("/") else f"{base}/{href}")
        assert css.status == 200 and css.content_type.startswith("text/css"), (href, why(css))
        assert "{" in css.body, href

    api = fetch(f"{base}/api/v1/openapi.json")
    assert api.status == 200, why(api)
    doc = json.loads(api.body)
    assert "openapi" in doc and doc.get("paths"), list(doc)

    name = "leaked_clients"
    source = (installed.source / "runbooks" / f"{name}.md").read_text()
    title = next(line[2:].strip() for line in source.splitlines() if line.startswith("# "))
    book = fetch(f"{base}/runbooks/{name}")
    assert book.status == 200 and book.content_type.startswith("text/html"), why(book)
    assert re.search(rf"<h1[^>]*>\s*{re.escape(title)}\s*</h1>", book.body), why(book)
