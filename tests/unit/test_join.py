"""`podscope join` (join.py): re-keys trees of spans, passes metrics through, refuses bad input
with a clear status (a real OTLP receiver upstream, over loopback)."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request

import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from podscope.join import MAX_BODY, Relay
from podscope.testing.otlpreceiver import OtlpReceiver


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> int:
    rq = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/x-protobuf", **(headers or {})})
    try:
        with urllib.request.urlopen(rq, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def request(*spans: tuple[bytes, bytes, bytes], pod: str) -> bytes:
    req = trace_service_pb2.ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    kv = rs.resource.attributes.add()
    kv.key, kv.value.string_value = "k8s.pod.uid", pod
    ss = rs.scope_spans.add()
    ss.scope.name = "podscope"
    for span_id, parent, trace in spans:
        sp = ss.spans.add()
        sp.span_id, sp.parent_span_id, sp.trace_id, sp.name = span_id, parent, trace, "GET"
    return req.SerializeToString()


@pytest.fixture
def relay() -> object:
    with OtlpReceiver() as rx:
        r = Relay(("127.0.0.1", 0), rx.url, hold=0.5)
        t = threading.Thread(target=r.serve, daemon=True)
        t.start()
        yield r, rx, f"http://127.0.0.1:{r.port}"
        r.stop()
        t.join(5)


def test_spans_of_two_agents_go_on_under_their_roots_trace(relay: object) -> None:
    r, rx, url = relay  # type: ignore[misc]
    # node B: the back end's server span (its own hop's trace); node A: the caller, later
    assert post(url + "/v1/traces", request((b"b" * 8, b"c" * 8, b"2" * 16), pod="back")) == 200
    assert post(url + "/v1/traces", request((b"c" * 8, b"s" * 8, b"1" * 16),
                                            (b"s" * 8, b"", b"1" * 16), pod="front")) == 200
    deadline = time.monotonic() + 10
    while len(rx.spans()) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    got = {(res["k8s.pod.uid"], sp["traceId"]) for res, sp in rx.spans()}
    one = "MTExMTExMTExMTExMTExMQ=="  # base64 of b"1" * 16
    assert got == {("back", one), ("front", one)}
    assert r.joiner.counts["rekeyed"] == 1 and r.counts["sent"] == 3


def test_bad_input_is_refused_and_counted(relay: object) -> None:
    r, _rx, url = relay  # type: ignore[misc]
    assert post(url + "/v1/traces", b"\xff\xff not protobuf") == 400
    assert post(url + "/v1/traces", b"\x1f\x8b junk", {"Content-Encoding": "gzip"}) == 400
    assert post(url + "/v1/logs", b"") == 404
    rq = urllib.request.Request(url + "/v1/traces", data=b"x", method="POST",
                                headers={"Content-Length": str(MAX_BODY + 1)})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(rq, timeout=10)
    assert e.value.code == 413
    assert r.counts["bad_requests"] == 2
    with urllib.request.urlopen(url + "/metrics", timeout=10) as m:
        text = m.read().decode()
    assert 'podscope_join_requests_total{what="bad_requests"} 2.0' in text
    assert "podscope_trace_join_pending_spans" in text
    assert post(url + "/v1/metrics", b"") == 200  # passed through to the collector
