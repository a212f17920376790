"""The one duration grammar, shared by the cluster file, the CLI and the API."""

import pytest

from cluster import durations
from cluster.durations import DurationError, parse


@pytest.mark.parametrize("text, seconds", [
    ("100ms", 0.1), ("5s", 5), ("10m", 600), ("1h", 3600), ("1d", 86400), ("0s", 0),
    ("999999999ms", 999999.999),
])
def test_units(text, seconds):
    assert parse(text) == pytest.approx(seconds)


def test_bare_seconds_only_where_the_caller_allows_them():
    assert parse("90", bare_seconds=True) == 90
    with pytest.raises(DurationError, match="whole number of seconds"):
        parse("ninety", bare_seconds=True)
    with pytest.raises(DurationError, match="a whole number with a unit"):
        parse("90")


@pytest.mark.parametrize("text", [
    "5 s", " 5s", "5s\n", "5S", "1.5s", "-5s", "5", "5x", "s", "", "1e3s", "nan", "inf",
    "1234567890s", "５s", 5, 5.0, None, ["5s"],
])
def test_everything_else_is_refused_with_the_grammar_named(text):
    with pytest.raises(DurationError, match="not a duration like 100ms, 5s, 10m, 1h or 1d"):
        parse(text)


def test_cluster_file_helpers():
    assert durations.seconds("100ms") == pytest.approx(0.1)
    assert durations.milliseconds("2s") == 2000
    assert durations.milliseconds("1d") == 86_400_000
