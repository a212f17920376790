"""The runtime-API client's `show proc` parser, on real captures (see tests/fixtures/README.md)
and a hostile variant."""

from pathlib import Path

import pytest

from collectors.haproxy_runtime import RuntimeAPIError, command, parse_show_proc

FIX = Path(__file__).parent.parent / "fixtures" / "haproxy"


def test_old_workers_after_reloads():
    t = parse_show_proc((FIX / "show_proc_old_workers.txt").read_text())
    assert t.master.pid == 3635 and t.master.type == "master"
    assert t.master.reloads == 2 and t.master.failed_reloads == 0
    assert [w.pid for w in t.workers] == [3667]
    assert [w.pid for w in t.old_workers] == [3637]
    assert t.old_workers[0].reloads == 2
    assert t.workers[0].version == "2.6.12-1+deb12u4"
    assert t.unparsed == []


def test_failed_reload_is_counted():
    t = parse_show_proc((FIX / "show_proc_failed_reload.txt").read_text())
    assert t.master.reloads == 1 and t.master.failed_reloads == 1
    assert [w.pid for w in t.workers] == [3713]
    assert t.old_workers == []


def test_hostile_show_proc_keeps_what_it_can_and_reports_the_rest():
    t = parse_show_proc((FIX / "show_proc_evil.txt").read_text())
    assert t.master.pid == 4100 and t.master.reloads == 7 and t.master.failed_reloads == 3
    assert t.master.relative_pid == "0"
    assert [w.pid for w in t.workers] == [4188]
    assert [w.pid for w in t.old_workers] == [4120]
    # the bad pid, the truncated row and the unknown section's row; the program row is ignored
    assert len(t.unparsed) == 3
    assert any("not-a-pid" in u for u in t.unparsed)
    assert any(u.startswith("4199") for u in t.unparsed)


@pytest.mark.parametrize("text", ["", "\n\n", "garbage\x00\xff", "#<PID>\n"])
def test_empty_or_garbage(text):
    t = parse_show_proc(text)
    assert t.master is None and t.workers == []


def test_command_refuses_newlines(tmp_path):
    with pytest.raises(RuntimeAPIError, match="newline"):
        command(tmp_path / "x.sock", "show info\nshutdown frontend fe")


def test_command_on_missing_socket_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeAPIError, match="No such file"):
        command(tmp_path / "absent.sock", "show info")
