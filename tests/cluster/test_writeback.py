"""Writing the cluster file back: an edit changes the lines it means to and no others, shows them
as a diff, refuses a file that changed since the plan and a result the loader would refuse, and
replaces the file atomically or not at all."""

import dataclasses
import shutil
from pathlib import Path

import pytest

from cluster import clusterfile, spec
from cluster.writeback import Edit, StaleFile, WritebackError, apply_edit, plan_edit


@pytest.fixture
def cluster_file(tmp_path: Path) -> Path:
    """The shipped default, which is commented and aligned by hand, as an operator's file."""
    path = tmp_path / "cluster.yaml"
    shutil.copyfile(clusterfile.DEFAULT_CLUSTER_FILE, path)
    return path


def changed_lines(diff: str) -> tuple[list[str], list[str]]:
    body = [line for line in diff.splitlines() if not line.startswith(("---", "+++", "@@"))]
    return ([line[1:] for line in body if line.startswith("-")],
            [line[1:] for line in body if line.startswith("+")])


def test_an_edit_changes_one_line_and_keeps_every_comment_and_the_key_order(cluster_file):
    before = cluster_file.read_text()
    edit = plan_edit(cluster_file, {"redis.timeout": 60})
    assert edit.changed and edit.old_text == before
    assert cluster_file.read_text() == before, "planning must not write"

    old, new = before.splitlines(keepends=True), edit.new_text.splitlines(keepends=True)
    assert len(new) == len(old)
    differing = [i for i, (a, b) in enumerate(zip(old, new)) if a != b]
    assert len(differing) == 1
    line = differing[0]
    assert old[line].startswith("  timeout: 0 ")
    # The value changes; the end-of-line comment stays, at its column.
    assert new[line] == "  timeout: 60                 # idle clients are never closed, as in 2014\n"
    assert new[line].index("#") == old[line].index("#")
    # Every comment line, every key line and their order are the original's bytes.
    def comments(lines):
        return [ln for ln in lines if ln.lstrip().startswith("#")]
    assert comments(new) == comments(old)
    assert [ln for i, ln in enumerate(new) if i != line] == [ln for i, ln in enumerate(old) if i != line]

    assert changed_lines(edit.diff) == ([old[line].rstrip("\n")], [new[line].rstrip("\n")])
    assert f"--- {cluster_file}" in edit.diff and f"+++ {cluster_file}" in edit.diff

    apply_edit(edit)
    assert cluster_file.read_text() == edit.new_text
    assert clusterfile.load(cluster_file).spec.redis.timeout == 60


def test_an_edit_that_changes_nothing_has_no_diff_and_applying_it_does_not_write(cluster_file):
    edit = plan_edit(cluster_file, {"redis.timeout": 0, "clusters.main.hosts.1": "chat2"})
    assert not edit.changed and edit.diff == "" and edit.new_text == edit.old_text
    inode = cluster_file.stat().st_ino
    apply_edit(edit)
    assert cluster_file.stat().st_ino == inode


def test_applying_twice_is_a_no_op_and_replanning_finds_nothing_to_do(cluster_file):
    edit = plan_edit(cluster_file, {"redis.timeout": 60})
    apply_edit(edit)
    stat = cluster_file.stat()
    apply_edit(edit)  # the file is no longer the planned-on text, but it is already the result
    assert (cluster_file.stat().st_ino, cluster_file.stat().st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    assert not plan_edit(cluster_file, {"redis.timeout": 60}).changed


def test_a_file_changed_since_the_plan_is_refused_and_left_as_the_operator_saved_it(cluster_file):
    edit = plan_edit(cluster_file, {"redis.timeout": 60})
    saved = cluster_file.read_text() + "# an operator's note, saved after the plan\n"
    cluster_file.write_text(saved)
    with pytest.raises(StaleFile, match="changed since"):
        apply_edit(edit)
    assert cluster_file.read_text() == saved


@pytest.mark.parametrize("key, value", [
    ("redis.timeout", "60\nhosts: {}"),           # a string where the spec wants an integer
    ("haproxy.check_interval", "2s\nhosts: {}"),  # a string field: refused as a duration
    ("clusters.main.rooms.0", "degentp\n  - x"),
    ("redis.timeout", -1),                        # the right type, out of range
    ("clusters.main.hosts.0", "nosuchhost"),      # a cross-check: the host must exist
])
def test_a_value_the_loader_would_refuse_is_refused_at_plan_time(cluster_file, key, value):
    before = cluster_file.read_bytes()
    with pytest.raises(WritebackError) as err:
        plan_edit(cluster_file, {key: value})
    assert err.value.problems and all(path.startswith(key.split(".")[0]) for path, _ in err.value.problems)
    assert cluster_file.read_bytes() == before


@pytest.mark.parametrize("inject, problem", [
    (lambda text: text.replace("timeout: 60", "timeout: 60\nhosts: {}"), "not valid YAML"),
    (lambda text: text + "hosts: {}\n", "duplicate key 'hosts'"),
])
def test_a_hostile_text_cannot_be_written_even_if_it_reaches_apply(cluster_file, inject, problem):
    """apply_edit validates again, so an Edit built or altered by hand cannot write what the
    loader would refuse; the file is untouched and no temporary file is left beside it."""
    edit = plan_edit(cluster_file, {"redis.timeout": 60})
    before = cluster_file.read_bytes()
    with pytest.raises(WritebackError, match=problem) as err:
        apply_edit(dataclasses.replace(edit, new_text=inject(edit.new_text)))
    assert not isinstance(err.value, StaleFile)
    assert cluster_file.read_bytes() == before
    assert sorted(p.name for p in cluster_file.parent.iterdir()) == [cluster_file.name]


@pytest.mark.parametrize("key, named", [
    ("redis.time\nout", "'redis.time\\nout'"),       # a newline in a key path
    ("redis.timout", "redis.timout"),                # misspelt
    ("redis.shards.0.timout", "redis.shards.0.timout"),  # not a shard key
    ("clusters.main.services.exchange.keep_alive", "clusters.main.services.exchange.keep_alive"),
    ("redis.timeout.seconds", "redis.timeout.seconds"),
    ("redis.shards.first.port", "redis.shards.first"),
    ("redis.shards.9.port", "redis.shards.9"),       # past the end of the list
    ("redis..timeout", "redis..timeout"),            # an empty segment
])
def test_a_key_path_the_spec_does_not_have_is_refused_with_the_path(cluster_file, key, named):
    with pytest.raises(WritebackError) as err:
        plan_edit(cluster_file, {key: 60})
    assert named in str(err.value)
    assert "\nout" not in str(err.value), "a hostile key must not split the error message"


def test_a_missing_mapping_is_created_in_block_style_and_nothing_else_moves(cluster_file):
    assert "services:" not in cluster_file.read_text()
    edit = plan_edit(cluster_file, {"clusters.main.services.exchange.keepalive": False})
    removed, added = changed_lines(edit.diff)
    assert removed == []
    assert added == ["    services:", "      exchange:", "        keepalive: false"]
    apply_edit(edit)
    loaded = clusterfile.load(cluster_file).spec
    assert loaded.clusters["main"].services.exchange.keepalive is False
    assert loaded.clusters["event"].services.exchange.keepalive is True


def test_a_list_item_is_addressed_by_index_and_keeps_its_flow_style(cluster_file):
    edit = plan_edit(cluster_file, {"redis.shards.1.port": 6390})
    assert changed_lines(edit.diff) == (["    - {name: shard1, host: redis1, port: 6380}"],
                                        ["    - {name: shard1, host: redis1, port: 6390}"])
    apply_edit(edit)
    assert clusterfile.load(cluster_file).spec.redis.shards[1].port == 6390


def test_an_aligned_line_keeps_its_alignment_when_its_value_changes(cluster_file):
    edit = plan_edit(cluster_file, {"hosts.chat1.address": "127.0.1.7"})
    assert changed_lines(edit.diff) == (["  chat1:        {address: 127.0.1.1}"],
                                        ["  chat1:        {address: 127.0.1.7}"])


def test_quoting_is_kept_and_added_where_yaml_1_1_would_misread_a_string(tmp_path, cluster_file):
    text = cluster_file.read_text().replace("check_interval: 2s", 'check_interval: "2s"')
    cluster_file.write_text(text)
    edit = plan_edit(cluster_file, {"haproxy.check_interval": "3s", "clusters.main.rooms.0": "no"})
    assert changed_lines(edit.diff)[1] == ['    rooms: ["no", paragusrants]', '  check_interval: "3s"']
    apply_edit(edit)
    assert clusterfile.load(cluster_file).spec.clusters["main"].rooms[0] == "no"


def test_the_file_mode_is_kept_and_the_write_goes_through_a_symlink(tmp_path, cluster_file):
    cluster_file.chmod(0o640)
    link = tmp_path / "link.yaml"
    link.symlink_to(cluster_file)
    apply_edit(plan_edit(link, {"redis.timeout": 60}))
    assert link.is_symlink()
    assert cluster_file.stat().st_mode & 0o777 == 0o640
    assert clusterfile.load(cluster_file).spec.redis.timeout == 60


def test_crlf_line_endings_are_kept(cluster_file):
    cluster_file.write_bytes(cluster_file.read_bytes().replace(b"\n", b"\r\n"))
    edit = plan_edit(cluster_file, {"redis.timeout": 60, "clusters.main.services.exchange.keepalive": False})
    apply_edit(edit)
    data = cluster_file.read_bytes()
    assert b"  timeout: 60 " in data and data.count(b"\n") == data.count(b"\r\n")


def test_a_file_with_its_own_indentation_gets_new_keys_at_that_indentation(tmp_path):
    path = tmp_path / "four.yaml"
    path.write_text(
        "hosts:\n"
        "    chat1: {address: 127.0.1.1}\n"
        "    redis1: {address: 127.0.2.1}\n"
        "clusters:\n"
        "    main:\n"
        "        hosts: [chat1]\n"
        "redis:\n"
        "    shards:\n"
        "    - {name: shard0, host: redis1, port: 6379}\n")
    edit = plan_edit(path, {"clusters.main.services.exchange.keepalive": False})
    assert changed_lines(edit.diff) == ([], ["        services:", "            exchange:",
                                             "                keepalive: false"])
    apply_edit(edit)
    assert clusterfile.load(path).spec.clusters["main"].services.exchange.keepalive is False


def test_edit_is_a_plain_record_of_the_plan(cluster_file):
    edit = plan_edit(cluster_file, {"redis.timeout": 60})
    assert isinstance(edit, Edit) and edit.path == cluster_file
    assert edit.changes == {"redis.timeout": 60}
    assert len(edit.sha256) == 64


def test_a_key_added_to_a_flow_mapping_stays_in_it_when_the_spec_has_the_key(cluster_file):
    """`redis.shards.<i>.maxclients` is a per-shard override only in a spec that has it; without
    one it is refused like any unknown key, so this holds either way."""
    if "maxclients" not in spec.Shard.model_fields:
        with pytest.raises(WritebackError, match="redis.shards.0.maxclients"):
            plan_edit(cluster_file, {"redis.shards.0.maxclients": 5000})
        return
    edit = plan_edit(cluster_file, {"redis.shards.0.maxclients": 5000})
    assert changed_lines(edit.diff) == (["    - {name: shard0, host: redis1, port: 6379}"],
                                        ["    - {name: shard0, host: redis1, port: 6379, maxclients: 5000}"])
    apply_edit(edit)
    assert clusterfile.load(cluster_file).spec.redis.shards[0].maxclients == 5000


def test_a_shard_is_appended_like_its_siblings_and_removing_it_restores_the_file_exactly(cluster_file):
    from cluster.writeback import REMOVE
    original = cluster_file.read_text()
    n = len(clusterfile.load(cluster_file).spec.redis.shards)
    shard = {"name": f"shard{n}", "host": "redis2", "port": 6381}
    edit = plan_edit(cluster_file, {f"redis.shards.{n}": shard})
    removed, added = changed_lines(edit.diff)
    assert removed == [] and added == [f"    - {{name: shard{n}, host: redis2, port: 6381}}"]
    apply_edit(edit)
    assert clusterfile.load(cluster_file).spec.redis.shards[n].port == 6381
    back = plan_edit(cluster_file, {f"redis.shards.{n}": REMOVE})
    apply_edit(back)
    assert cluster_file.read_text() == original


def test_appending_past_the_end_or_removing_what_is_not_there_is_refused(cluster_file):
    from cluster.writeback import REMOVE
    n = len(clusterfile.load(cluster_file).spec.redis.shards)
    with pytest.raises(WritebackError, match="index out of range"):
        plan_edit(cluster_file, {f"redis.shards.{n + 1}": {"name": "x", "host": "redis2", "port": 6390}})
    with pytest.raises(WritebackError, match="index out of range"):
        plan_edit(cluster_file, {f"redis.shards.{n}": REMOVE})
    # A shard the checks refuse (a port another shard of that host uses) is refused at plan time.
    with pytest.raises(WritebackError):
        plan_edit(cluster_file, {f"redis.shards.{n}": {"name": "x", "host": "redis2", "port": 6379}})
