"""Run-directory paths in a rendered HAProxy config are quoted: a run dir with a space, a quote,
a '#' or a backslash renders, passes the real `haproxy -c`, and HAProxy binds the exact path. What
HAProxy cannot take in a socket address ('$', which it expands even inside quotes; ',') is refused
with a clear error instead of a config that binds somewhere else."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from cluster import clusterfile
from cluster.rundir import RunDir, RunDirError
from controlplane.haproxy import config as haproxy_config
from tests.conftest import free_subnet, require, small_cluster

NASTY = ["co run", "co 'quoted' run", 'co "dq" run', "co #not-a-comment", "co \\ back", "co é run"]


@pytest.fixture(params=NASTY)
def odd_run_dir(request):
    parent = Path(tempfile.mkdtemp(prefix="co-", dir="/tmp"))
    path = parent / request.param
    path.mkdir()
    yield path
    shutil.rmtree(parent, ignore_errors=True)


def test_quote_round_trips_through_haproxy_word_splitting():
    q = haproxy_config.haproxy_quote
    assert q("/tmp/co-1/haproxy/chat1.sock") == "/tmp/co-1/haproxy/chat1.sock"   # plain: as it was
    assert q("/tmp/co run/haproxy/chat1.sock") == "'/tmp/co run/haproxy/chat1.sock'"
    assert q("/tmp/it's") == "'/tmp/it'\\''s'"
    for bad in ("/tmp/a\nb", "/tmp/a\rb", "/tmp/a\x00b", "/tmp/$HOME"):
        with pytest.raises(haproxy_config.RenderError):
            q(bad)


@pytest.mark.parametrize("name", ["co $HOME x", "co,comma", "co\nnl"])
def test_a_run_dir_haproxy_cannot_take_is_refused_clearly(tmp_path, name):
    cf = clusterfile.load().spec
    with pytest.raises(RunDirError, match="choose a --run-dir"):
        haproxy_config.render(cf, "chat1", RunDir(tmp_path / name))


def test_config_renders_and_passes_haproxy_check_with_an_odd_run_dir(odd_run_dir):
    require("haproxy")
    cf = clusterfile.parse(__import__("yaml").safe_dump(small_cluster(free_subnet())))
    run = RunDir(odd_run_dir).ensure()
    text = haproxy_config.render(cf, "chat1", run)
    result = haproxy_config.check(text)
    assert result.ok, result.output
    assert "stats socket '" in text


def test_haproxy_binds_the_exact_socket_path_of_a_run_dir_with_a_space(odd_run_dir):
    """Not only `-c`: a real HAProxy started on the rendered config creates its admin socket at
    the run dir's path, spaces and quotes included, and answers on it."""
    exe = require("haproxy")
    subnet = free_subnet()
    cf = clusterfile.parse(__import__("yaml").safe_dump(small_cluster(subnet)))
    run = RunDir(odd_run_dir).ensure()
    cfg = run.haproxy_config("chat1")
    haproxy_config.write_atomic(cfg, haproxy_config.render(cf, "chat1", run))
    sock = run.haproxy_socket("chat1")
    proc = subprocess.Popen([exe, "-W", "-f", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert sock.exists(), proc.stdout.read().decode() if proc.poll() is not None else "no socket"
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(sock))
            s.sendall(b"show info\n")
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        assert b"Name: HAProxy" in reply
    finally:
        proc.terminate()
        proc.wait(timeout=10)
