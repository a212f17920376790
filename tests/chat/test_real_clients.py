"""Two standard IRC clients, as Debian ships them, on a live cluster through HAProxy: ii (driven
through its FIFOs, read through its `out` files) and WeeChat (weechat-headless, driven through its
FIFO plugin, read through its logger). Both log in as a user would on a cluster with `auth: open`:
a nick, no token. Each joins a room, says something, and reads what the other said."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import cluster_up, free_subnet, require, small_cluster, wait_for, write_cluster


@pytest.fixture(scope="module")
def open_cluster():
    subnet = free_subnet()
    doc = small_cluster(subnet)
    doc["clusters"]["main"]["auth"] = "open"
    run = Path(tempfile.mkdtemp(prefix="co-", dir="/tmp"))
    config = write_cluster(run.parent / f"{run.name}.yaml", doc)
    try:
        with cluster_up(config, run) as c:
            c.frontend = f"{subnet}.1"
            yield c
    finally:
        config.unlink(missing_ok=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _write_fifo(path: Path, line: str) -> None:
    # O_NONBLOCK: fails at once (ENXIO) rather than hanging if nobody reads the FIFO any more.
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def test_ii_and_weechat_talk_through_haproxy(open_cluster, tmp_path):
    ii_bin, weechat_bin = require("ii"), require("weechat-headless")
    host, room = open_cluster.frontend, "#lobby"
    ii_dir, wee_dir = tmp_path / "ii", tmp_path / "weechat"
    fifo = wee_dir / "weechat_fifo"
    env = {**os.environ, "HOME": str(tmp_path)}
    ii = subprocess.Popen([ii_bin, "-s", host, "-p", "6667", "-n", "iiuser", "-i", str(ii_dir)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    commands = ";".join([
        f"/set fifo.file.path {fifo}", "/set fifo.file.enabled on",
        "/set logger.file.flush_delay 0", f"/set logger.file.path {wee_dir / 'logs'}",
        # Plain IRC: the frontend has no TLS. No SASL either: WeeChat tries it only with a
        # sasl_username, and `auth: open` needs no account.
        f"/server add chatops {host}/6667 -notls -nicks=weeuser -username=weeuser",
        f"/set irc.server.chatops.autojoin {room}", "/connect chatops",
    ])
    wee = subprocess.Popen([weechat_bin, "--dir", str(wee_dir), "-P", "irc,fifo,logger", "-r", commands],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        server_in, server_out = ii_dir / host / "in", ii_dir / host / "out"
        wait_for(lambda: server_in.exists() and "Welcome" in _read(server_out), 10,
                 what=f"ii to log in ({_read(server_out)[-300:]!r})")
        _write_fifo(server_in, f"/j {room}")
        room_in, room_out = ii_dir / host / room / "in", ii_dir / host / room / "out"
        wee_log = wee_dir / "logs" / f"irc.chatops.{room}.weechatlog"
        wait_for(lambda: room_in.exists(), 10, what="ii to join")
        wait_for(lambda: fifo.exists() and wee_log.exists(), 10,
                 what=f"weechat to join (server log: {_read(wee_dir / 'logs' / 'irc.server.chatops.weechatlog')[-300:]!r})")
        _write_fifo(room_in, "hello from ii")
        wait_for(lambda: "hello from ii" in _read(wee_log), 10,
                 what=f"weechat to receive ii's message ({_read(wee_log)[-300:]!r})")
        _write_fifo(fifo, f"irc.chatops.{room} *hello from weechat")
        wait_for(lambda: "<weeuser> hello from weechat" in _read(room_out), 10,
                 what=f"ii to receive weechat's message ({_read(room_out)[-300:]!r})")
        assert "iiuser" in _read(wee_log) and "hello from ii" in _read(wee_log)
    finally:
        for proc in (ii, wee):
            _stop(proc)
