"""podscope._fast, the compiled per-event paths: the ring buffer callback's batches, and the kernel
records encoded as JSON lines — line for line what the Python path writes, for any record."""

from __future__ import annotations

import ctypes as ct
import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podscope import _fast, libbpf
from podscope.collectors.http import HttpCollector
from podscope.metadata.store import MetadataStore

SAMPLE = libbpf.SAMPLE_FN(_fast.SAMPLE_CALLBACK)


def gather(records: list[bytes], batch: _fast.Batch | None = None) -> bytes:
    """What libbpf's calls of the callback leave in a batch."""
    b = batch or _fast.Batch()
    for r in records:
        buf = ct.create_string_buffer(r, len(r))
        assert SAMPLE(b.ctx, ct.addressof(buf), len(r)) == 0
    return b.take()


@given(st.lists(st.binary(max_size=300), max_size=40))
def test_a_batch_gives_back_every_record_in_order(records: list[bytes]) -> None:
    data = gather(records)
    assert _fast.split(data) == records
    assert len(data) % 8 == 0


def test_a_batch_past_its_limit_counts_what_it_dropped() -> None:
    b = _fast.Batch(limit=4096)
    data = gather([b"x" * 1000] * 5, b)
    assert len(_fast.split(data)) == 4 and b.dropped == 1  # 4 x 1008 bytes fit in 4096
    assert b.take() == b"" and b.pending == 0


def test_a_malformed_batch_is_an_error_not_a_crash() -> None:
    with pytest.raises(ValueError):
        _fast.split(b"\xff\x00\x00\x00\x00\x00\x00\x00abc")
    with pytest.raises(ValueError):
        _fast.split(b"\x01\x00")


# --- HTTP records as JSON lines ---


def collector() -> tuple[HttpCollector, list[dict[str, Any]], list[bytes]]:
    dicts: list[dict[str, Any]] = []
    lines: list[bytes] = []
    c = HttpCollector(MetadataStore(None, proc="/nonexistent"),
                      emit=lambda _k, r: dicts.append(r), records=True,
                      emit_lines=lambda _k, data, n: lines.append(data))
    c._jsonl = c._jsonl_encoder()
    return c, dicts, lines


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, int | float) and isinstance(b, int | float) and math.isclose(
            a, b, rel_tol=1e-12, abs_tol=1e-9)
    return bool(a == b)


records = st.fixed_dictionaries({
    "conn_id": st.integers(0, 2**64 - 1), "cgroup_id": st.integers(0, 2**64 - 1),
    "req_start": st.integers(0, 2**62), "resp_start": st.integers(0, 2**62),
    "end_ns": st.integers(0, 2**62), "req_bytes": st.integers(0, 2**64 - 1),
    "resp_bytes": st.integers(0, 2**64 - 1), "netns": st.just(0),  # no /proc here
    "pid": st.integers(0, 2**32 - 1), "status": st.integers(0, 999),
    "path_len": st.integers(0, 2**16 - 1), "local_port": st.integers(0, 65535),
    "peer_port": st.integers(0, 65535), "method": st.integers(0, 255),
    "role": st.integers(0, 3), "family": st.sampled_from([2, 10, 0]),
    "breakdown": st.integers(0, 3), "tls": st.integers(0, 1),
    "path": st.binary(max_size=64),
    "peer_addr": st.one_of(st.binary(min_size=16, max_size=16),
                           st.just(bytes(10) + b"\xff\xff\x0a\x00\x00\x01")),
    "bd": st.lists(st.integers(0, 2**40), min_size=8, max_size=8),
})


def record(c: HttpCollector, f: dict[str, Any]) -> bytes:
    r = c.Record()
    for k, v in f.items():
        if k in ("path", "peer_addr"):
            ct.memmove(ct.addressof(r) + getattr(c.Record, k).offset, v, len(v))
        elif k == "bd":
            r.bd.on_cpu_ns, r.bd.runqueue_ns, r.bd.blocked_ns = v[:3]
            for i, x in enumerate(v[3:]):
                r.bd.by_reason_ns[i] = x
        else:
            setattr(r, k, v)
    return bytes(r)


@settings(max_examples=300, deadline=None)
@given(st.lists(records, min_size=1, max_size=8))
def test_compiled_lines_equal_the_python_records(fields: list[dict[str, Any]]) -> None:
    c, dicts, lines = collector()
    raw = [record(c, f) for f in fields]
    for r in raw:
        c._on_record(r)
    c._on_records(gather(raw))
    got = [json.loads(line) for line in b"".join(lines).splitlines()]
    want = [{"type": "http_request", **d} for d in dicts]
    assert len(got) == len(want) == len(raw)
    for g, w in zip(got, want, strict=True):
        assert list(g) == list(w)  # the same keys in the same order
        bad = {k: (g[k], w[k]) for k in w if not same(g[k], w[k])}
        assert not bad


def test_a_short_record_is_counted_and_skipped() -> None:
    c, _dicts, lines = collector()
    c._on_records(gather([b"\x00" * 10]))
    assert not lines and c.parse_errors == {"short_event": 1}


def test_records_go_as_dicts_while_someone_in_the_process_listens() -> None:
    c, dicts, lines = collector()
    seen: list[dict[str, Any]] = []
    c.listeners.append(seen.append)
    raw = record(c, {"status": 200, "role": 1, "method": 1, "path": b"/x", "path_len": 2})
    c._on_records(gather([raw]))
    assert not lines and len(dicts) == len(seen) == 1 and seen[0]["path"] == "/x"


def test_a_batch_is_read_in_place_and_cannot_move_while_viewed() -> None:
    b = _fast.Batch()
    for r in (b"abc", b"defgh"):
        buf = ct.create_string_buffer(r, len(r))
        SAMPLE(b.ctx, ct.addressof(buf), len(r))
    with memoryview(b) as view:
        assert _fast.split(view) == [b"abc", b"defgh"]
        with pytest.raises(BufferError):
            b.clear()
    b.clear()
    assert b.pending == 0 and b.take() == b""


def test_compiled_lines_are_handed_over_in_bounded_chunks() -> None:
    c, _dicts, lines = collector()
    raw = record(c, {"status": 200, "role": 1, "method": 1, "path": b"/x", "path_len": 2})
    c._on_records(gather([raw] * 2000))  # ~1 MB of lines
    assert len(lines) > 2 and all(len(chunk) < 300_000 for chunk in lines)
    assert sum(chunk.count(b"\n") for chunk in lines) == 2000
