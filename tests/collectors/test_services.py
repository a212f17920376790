"""The chat services' /metrics parser and figures, on recorded real expositions
(tests/fixtures/services/, capture commands in tests/fixtures/README.md) and a hostile variant."""

from __future__ import annotations

import socket
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from collectors.base import Observation
from collectors.services import ServiceData, by_label, parse_keys, parse_metrics, total
from controlplane.sources.service_figures import service_detail, service_figures

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "services"


def text(name: str) -> str:
    return (FIX / name).read_bytes().decode("utf-8", errors="replace")


def test_exchange_exposition():
    p = parse_metrics(text("exchange_metrics.txt"))
    assert p.unparsed == [] and p.unparsed_count == 0
    assert total(p.samples, "chat_exchange_keepalive") == 1.0
    assert total(p.samples, "chat_exchange_pool_size") == 2.0
    assert total(p.samples, "chat_exchange_connections_opened_total") == 1.0
    # The histogram's _count per edge label, and the per-edge split.
    reqs = total(p.samples, "chat_exchange_request_seconds_count")
    assert reqs and reqs > 100
    assert by_label(p.samples, "chat_exchange_request_seconds_count", "edge") == {"chat1": reqs}
    assert total(p.samples, "chat_exchange_deliveries_total", result="ok") > 0
    # A metric the service does not export is unknown, not zero.
    assert total(p.samples, "chat_exchange_io_timeouts_total") is None
    assert total(p.samples, "no_such_metric") is None


def test_edge_and_clue_expositions():
    e = parse_metrics(text("edge_metrics.txt"))
    assert e.unparsed_count == 0
    assert total(e.samples, "chat_edge_clue_pool_size") == 2.0
    assert total(e.samples, "chat_edge_clue_timeouts_total") == 0.0
    assert total(e.samples, "chat_edge_clue_connections_opened_total") >= 1
    assert total(e.samples, "chat_edge_messages_rejected_total", reason="msg_unavailable") > 0
    c = parse_metrics(text("clue_metrics.txt"))
    assert c.unparsed_count == 0
    errs = by_label(c.samples, "chat_clue_redis_errors_total", "shard")
    assert set(errs) == {"shard0", "shard1"} and errs["shard1"] > 0 and errs["shard0"] == 0
    assert total(c.samples, "chat_clue_cache_pool_size") == 10.0
    slots = by_label(c.samples, "chat_clue_redis_slot_ops_total", "slot", shard="shard1")
    assert slots and all(v > 0 for v in slots.values())


def test_clue_key_stats():
    k = parse_keys(text("clue_stats_keys.json"))
    assert set(k) == {"ops_by_shard", "errors_by_shard", "ops_by_prefix", "top_slots"}
    assert set(k["ops_by_shard"]) == {"shard0", "shard1"}
    assert all(len(p) == 2 and isinstance(p[0], int) for p in k["top_slots"])
    assert "{*}.bans" in k["ops_by_prefix"]


@pytest.mark.parametrize("name", ["edge_metrics.txt", "clue_metrics.txt", "exchange_metrics.txt"])
def test_real_expositions_take_the_plain_reader_and_read_alike(name):
    from collectors.services import _samples, _samples_plain
    plain = _samples_plain(text(name))
    assert plain is not None and len(plain) > 20
    assert plain == _samples(text(name))


def test_hostile_exposition_is_left_to_prometheus_client():
    from collectors.services import _samples_plain
    assert _samples_plain(text("exchange_metrics_evil.txt")) is None


def test_hostile_exposition_loses_only_the_bad_lines():
    good = parse_metrics(text("exchange_metrics.txt"))
    p = parse_metrics(text("exchange_metrics_evil.txt"))
    # Truncated label set, non-numeric value, NUL/invalid UTF-8 garbage, a name cut short.
    assert p.unparsed_count == 4, p.unparsed
    assert any("not-a-number" in u for u in p.unparsed)
    # Everything the real capture said is still there.
    assert total(p.samples, "chat_exchange_keepalive") == 1.0
    assert total(p.samples, "chat_exchange_connections_opened_total") == \
        total(good.samples, "chat_exchange_connections_opened_total")
    # Unknown metric with a quoted comma in a label: kept as is. NaN is dropped, a sample with
    # a timestamp keeps its value.
    assert total(p.samples, "chat_exchange_future_metric", note='a "quoted", value') == 3.0
    assert by_label(p.samples, "chat_exchange_request_seconds_count", "edge")["chat2"] == 5.0
    assert "chat-testing" not in by_label(p.samples, "chat_exchange_request_seconds_count", "edge")


@pytest.mark.parametrize("bad", ["", "\n", "#", "garbage", "{}", "x{a=\"1\"} 1 2 3 4",
                                 "\ufffd" * 100, "a" * 100000])
def test_garbage_never_raises(bad):
    p = parse_metrics(bad)
    assert isinstance(p.samples, list)


@pytest.mark.parametrize("bad", ["[]", "null", "{", '"x"'])
def test_bad_key_stats_are_a_clear_error(bad):
    with pytest.raises(ValueError):
        parse_keys(bad)


def test_key_stats_drop_mistyped_parts():
    k = parse_keys('{"ops_by_shard": {"shard0": 1, "shard1": "x", "s2": true}, "top_slots": [[1, 2], [3], "x", [4, "y"]],'
                   ' "errors_by_shard": [], "future": 1}')
    assert k == {"ops_by_shard": {"shard0": 1.0}, "top_slots": [[1, 2.0]]}


def _obs(target: str, at: float, exposition: str, keys=None, up=True) -> Observation:
    p = parse_metrics(exposition)
    data = ServiceData(target.partition("-")[0], "chat1", "http://x/metrics", p.samples, keys=keys,
                       time_wait={"127.0.0.1:17080": 3}) if up else None
    return Observation("service", target, at, up, 0.01, data, None if up else "refused")


def test_figures_are_rates_between_scrapes():
    before = text("exchange_metrics.txt")
    n = total(parse_metrics(before).samples, "chat_exchange_request_seconds_count")
    after = before.replace(f'chat_exchange_request_seconds_count{{edge="chat1"}} {n}',
                           f'chat_exchange_request_seconds_count{{edge="chat1"}} {n + 20}') \
                  .replace("chat_exchange_connections_opened_total 1.0", "chat_exchange_connections_opened_total 19.0")
    a, b = _obs("exchange-chat1", 100.0, before), _obs("exchange-chat1", 102.0, after)
    first = service_figures(a, None)
    assert first["requests_per_s"] is None and first["keepalive"] == 1.0 and first["time_wait"] == 3.0
    f = service_figures(b, a)
    assert f["requests_per_s"] == 10.0 and f["connections_opened_per_s"] == 9.0
    assert f["edge:chat1:requests_per_s"] == 10.0
    assert f["io_timeouts_per_s"] == 0.0         # no sample yet: zero once the service is up
    # A restart (counters went backwards) is unknown, not a negative rate.
    assert service_figures(a, b)["requests_per_s"] is None
    down = service_figures(_obs("exchange-chat1", 104.0, "", up=False), b)
    assert down == {"up": 0.0, "scrape_duration_seconds": 0.01}


def test_clue_detail_rates():
    keys = parse_keys(text("clue_stats_keys.json"))
    more = {**keys, "ops_by_shard": {k: v + 10 for k, v in keys["ops_by_shard"].items()}}
    a = _obs("clue-chat1", 10.0, text("clue_metrics.txt"), keys)
    b = _obs("clue-chat1", 12.0, text("clue_metrics.txt"), more)
    d = service_detail(b, a)
    assert d["keys"] == more and d["ops_by_shard_per_s"] == {"shard0": 5.0, "shard1": 5.0}
    f = service_figures(b, a)
    assert f["errors_per_s"] == 0.0 and f["shard:shard1:redis_errors_per_s"] == 0.0
    assert service_detail(_obs("edge-chat1", 1.0, text("edge_metrics.txt")), None) == {}


# -- fetching: one kept connection per service ------------------------------------------------------

class _Exposition(BaseHTTPRequestHandler):
    """A real HTTP/1.1 server in a thread that serves a recorded exposition and counts the
    connections it accepts; `close` makes it answer with Connection: close."""
    protocol_version = "HTTP/1.1"
    close = False

    def setup(self):
        super().setup()
        self.server.connections += 1
        self.server.accepted.append(self.connection)

    def do_GET(self):
        body = text("exchange_metrics.txt").encode() if self.path == "/metrics" else b"no"
        self.send_response(200 if self.path == "/metrics" else 404)
        self.send_header("Content-Length", str(len(body)))
        if self.close:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextmanager
def _serving(address: str, port: int = 0, close: bool = False):
    handler = type("Handler", (_Exposition,), {"close": close})
    server = ThreadingHTTPServer((address, port), handler)
    server.connections, server.accepted = 0, []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        for conn in server.accepted:          # as a stopped service's connections are
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def test_fetch_keeps_its_connection_and_replaces_a_closed_one(subnet):
    from collectors.services import FetchError, fetch
    address = f"{subnet}.31"
    with _serving(address) as server:
        port = server.server_address[1]
        for _ in range(3):
            assert "chat_exchange_keepalive" in fetch(address, port, "/metrics", 2)
        assert server.connections == 1
        with pytest.raises(FetchError, match="HTTP 404"):
            fetch(address, port, "/nope", 2)
        fetch(address, port, "/metrics", 2)          # a whole 404 reply leaves it usable
        assert server.connections == 1
    # The service restarts on the same port: the kept connection was closed under us.
    with _serving(address, port) as server:
        assert "chat_exchange_keepalive" in fetch(address, port, "/metrics", 2)
        assert server.connections == 1


def test_fetch_does_not_keep_a_connection_the_service_closes(subnet):
    from collectors.services import fetch
    address = f"{subnet}.32"
    with _serving(address, close=True) as server:
        port = server.server_address[1]
        for _ in range(2):
            fetch(address, port, "/metrics", 2)
        assert server.connections == 2
