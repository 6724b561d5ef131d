"""The agent's web server against crowds and bad manners (real sockets, in-process)."""

from __future__ import annotations

import gzip
import logging
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.core import GaugeMetricFamily

from podscope.sinks.prometheus import HttpServer, make_registry


def _families(delay: float = 0.0):  # type: ignore[no-untyped-def]
    def source():  # type: ignore[no-untyped-def]
        time.sleep(delay)
        g = GaugeMetricFamily("podscope_test_value", "a test gauge", labels=["i"])
        for i in range(200):
            g.add_metric([str(i)], i)
        return [g]
    return source


@pytest.fixture
def server() -> Iterator[HttpServer]:
    s = HttpServer("127.0.0.1", 0, make_registry(_families()), healthy=lambda: True,
                   header_timeout=2.0, bearer_token="")
    s.start()
    yield s
    s.close()


def get(s: HttpServer, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{s.address[1]}{path}", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_a_crowd_and_3000_slow_clients(server: HttpServer, caplog: pytest.LogCaptureFixture
                                       ) -> None:
    """3000 connections that send half a request and wait, then 1000 real requests from 50
    threads: every real one is answered, the slow ones are closed after the header timeout, and
    the server's threads stay few."""
    caplog.set_level(logging.DEBUG, logger="podscope.http")
    slow = []
    for _ in range(3000):
        c = socket.create_connection(("127.0.0.1", server.address[1]), timeout=30)
        c.sendall(b"GET /healthz HTTP/1.1\r\nHo")
        slow.append(c)
    results: list[int] = []
    lock = threading.Lock()
    t0 = time.monotonic()

    def client() -> None:
        for _ in range(20):
            code, _, _ = get(server, "/healthz")
            with lock:
                results.append(code)

    threads = [threading.Thread(target=client) for _ in range(50)]
    peak = 0
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak = max(peak, sum(1 for t in threading.enumerate() if t.name.startswith("http")))
        time.sleep(0.05)
    took = time.monotonic() - t0
    assert results == [200] * 1000 and len(results) == 1000
    assert took < 15, took
    assert peak <= 9, peak  # the pool (8) and the event loop
    # the slow ones: closed by the server once the header timeout passed
    time.sleep(2.5)
    closed = 0
    for c in slow:
        c.settimeout(5)
        try:
            if c.recv(100) == b"":
                closed += 1
        except OSError:
            closed += 1
        c.close()
    assert closed == 3000
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_gzip_head_405_and_404(server: HttpServer) -> None:
    code, headers, body = get(server, "/metrics", **{"Accept-Encoding": "gzip"})
    assert code == 200 and headers["Content-Encoding"] == "gzip"
    assert b'podscope_test_value{i="199"} 199.0' in gzip.decompress(body)
    code, headers, body = get(server, "/metrics")
    assert code == 200 and "Content-Encoding" not in headers and b"podscope_test_value" in body
    req = urllib.request.Request(f"http://127.0.0.1:{server.address[1]}/metrics", method="HEAD")
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 200 and r.read() == b""
    for method in ("POST", "PUT", "DELETE"):
        req = urllib.request.Request(f"http://127.0.0.1:{server.address[1]}/metrics",
                                     method=method, data=b"x")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=5)
        assert e.value.code == 405
    assert get(server, "/nothing")[0] == 404


def test_foreign_host_names_are_refused(server: HttpServer) -> None:
    assert get(server, "/healthz", Host="evil.example")[0] == 421
    assert get(server, "/metrics", Host="evil.example:9464")[0] == 421
    assert get(server, "/healthz", Host="localhost:9464")[0] == 200
    assert get(server, "/healthz", Host="10.1.2.3:9464")[0] == 200
    assert get(server, "/healthz", Host="[::1]:9464")[0] == 200


def test_bearer_token() -> None:
    s = HttpServer("127.0.0.1", 0, make_registry(_families()), healthy=lambda: True,
                   bearer_token="s3cret")
    s.start()
    try:
        assert get(s, "/metrics")[0] == 401
        assert get(s, "/metrics", Authorization="Bearer wrong")[0] == 401
        assert get(s, "/metrics", Authorization="Bearer s3cret")[0] == 200
        assert get(s, "/healthz")[0] == 200  # probes
    finally:
        s.close()


def test_a_scrape_never_waits_long_for_a_slow_render() -> None:
    s = HttpServer("127.0.0.1", 0, make_registry(_families(delay=1.5)), healthy=lambda: True,
                   stale_after=0.3)
    s.start()
    try:
        assert get(s, "/metrics")[0] == 200  # the first render: waited for
        first = threading.Thread(target=get, args=(s, "/metrics"))
        first.start()
        time.sleep(0.2)
        t0 = time.monotonic()
        code, headers, body = get(s, "/metrics")
        assert code == 200 and headers.get("X-Podscope-Stale") == "1"
        assert time.monotonic() - t0 < 1.0 and b"podscope_test_value" in body
        first.join()
    finally:
        s.close()


def test_an_address_in_use_is_one_clear_error(server: HttpServer) -> None:
    with pytest.raises(OSError) as e:
        HttpServer("127.0.0.1", server.address[1], make_registry(_families()),
                   healthy=lambda: True)
    assert f"127.0.0.1:{server.address[1]}" in str(e.value)
