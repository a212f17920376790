"""cluster/secrets.py: the local profile's generated secrets file, and the environment winning over it."""

from __future__ import annotations

import os
import stat

import pytest

from cluster import secrets
from cluster.rundir import RunDir
from cluster.spec import ClusterFile

VARS = ["CHATOPS_INTERNAL_TOKEN", "CHATOPS_REDIS_CLUE_PASSWORD", "CHATOPS_REDIS_CONTROLPLANE_PASSWORD",
        "CHATOPS_REDIS_REPLICATION_PASSWORD"]


@pytest.fixture
def cf() -> ClusterFile:
    return ClusterFile.model_validate({
        "hosts": {"chat1": {"address": "127.0.0.1"}, "redis1": {"address": "127.0.0.2"}},
        "clusters": {"main": {"hosts": ["chat1"]}},
        "redis": {"shards": [{"name": "shard0", "host": "redis1", "port": 6379}]}})


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in VARS:
        monkeypatch.delenv(name, raising=False)


def test_first_start_generates_every_secret_into_a_private_file_and_the_second_reuses_it(cf, tmp_path):
    run = RunDir(tmp_path / "run")
    assert sorted(secrets.ensure_local(cf, run)) == sorted(VARS)
    mode = stat.S_IMODE(run.secrets_file.stat().st_mode)
    assert mode == 0o600, oct(mode)
    first = {name: os.environ[name] for name in VARS}
    assert len(set(first.values())) == 4 and all(len(v) >= 32 for v in first.values())
    assert secrets.read_file(run) == first
    for name in VARS:
        del os.environ[name]
    assert secrets.ensure_local(cf, run) == []
    assert {name: os.environ[name] for name in VARS} == first


def test_a_set_variable_wins_and_is_never_written_to_the_file(cf, tmp_path, monkeypatch):
    run = RunDir(tmp_path / "run")
    monkeypatch.setenv("CHATOPS_INTERNAL_TOKEN", "x" * 40)
    generated = secrets.ensure_local(cf, run)
    assert "CHATOPS_INTERNAL_TOKEN" not in generated
    assert "CHATOPS_INTERNAL_TOKEN" not in secrets.read_file(run)
    assert secrets.value(cf, "internal_token_env") == "x" * 40


def test_value_falls_back_to_the_local_file_and_names_the_variable_when_missing(cf, tmp_path):
    run = RunDir(tmp_path / "run")
    with pytest.raises(secrets.SecretError, match="CHATOPS_REDIS_CLUE_PASSWORD is not set.*secrets.env"):
        secrets.value(cf, "redis_clue_password_env", run)
    secrets.ensure_local(cf, run)
    stored = secrets.read_file(run)["CHATOPS_REDIS_CLUE_PASSWORD"]
    del os.environ["CHATOPS_REDIS_CLUE_PASSWORD"]
    assert secrets.value(cf, "redis_clue_password_env", run) == stored
    remote = cf.model_copy(update={"profile": "remote"})
    with pytest.raises(secrets.SecretError, match="CHATOPS_REDIS_CLUE_PASSWORD is not set"):
        secrets.value(remote, "redis_clue_password_env", run)


@pytest.mark.parametrize("bad", ["short", "has space" * 4, "line\nbreak" * 4, "quote'" * 8, "é" * 20])
def test_a_value_that_could_break_a_config_line_is_refused_without_showing_it(cf, tmp_path, monkeypatch, bad):
    monkeypatch.setenv("CHATOPS_INTERNAL_TOKEN", bad)
    with pytest.raises(secrets.SecretError) as err:
        secrets.ensure_local(cf, RunDir(tmp_path / "run"))
    assert "CHATOPS_INTERNAL_TOKEN" in str(err.value) and bad not in str(err.value)
