"""Record exports: JSON lines and CSV, one schema per record type (documented in
docs/records.md; a test keeps the two in step).

CSV columns are fixed per record type (SCHEMAS); a CSV file holds one record type, and a
second type goes to PATH with the type inserted before the extension. Files rotate by size:
past `max_bytes` the file becomes PATH.1 (PATH.1 becomes PATH.2, ...; `keep` old files are
kept) and a new PATH starts (a CSV one with its header)."""

from __future__ import annotations

import csv
import json
import os
import threading
from collections.abc import Callable, Iterable
from typing import IO, Any

import orjson
from prometheus_client.core import CounterMetricFamily, Metric

IDENTITY = ["k8s_pod_uid", "container_id", "k8s_namespace_name", "k8s_pod_name",
            "k8s_container_name", "k8s_node_name", "k8s_workload_kind", "k8s_workload_name",
            "container_name", "process_name", "cgroup", "pod_name"]
SCHEMAS: dict[str, list[str]] = {
    "tcp_connection": [
        "time", *IDENTITY, "netns", "direction", "src_addr", "src_port", "dst_addr",
        "dst_port", "duration_seconds", "sent_bytes", "received_bytes", "retransmits",
        "srtt_seconds",
    ],
    "kernel_event": [
        "time", *IDENTITY, "event", "pid", "tid", "comm", "errno", "signal", "core_dumped",
        "syscall",
    ],
    "dns_query": [
        "time", *IDENTITY, "pid", "comm", "query_name", "query_type", "rcode",
        "duration_seconds", "answers", "server_address", "server_port", "transport",
    ],
    "http_request": [
        "time", *IDENTITY, "role", "peer_addr", "peer_port", "local_port", "method",
        "method_original", "path", "route", "status", "duration_seconds", "first_byte_seconds",
        "request_bytes", "response_bytes",
        "connection_id", "pid", "capture", "protocol", "grpc_status", "decode",
        "trace_id", "span_id", "parent_span_id",
        "on_cpu_seconds", "runqueue_seconds", "blocked_seconds", "blocked_sleep_seconds",
        "blocked_lock_seconds", "blocked_disk_seconds", "blocked_network_seconds",
        "blocked_other_seconds", "blocked_memory_seconds", "reclaim_seconds", "major_faults",
        "request_headers", "response_headers",
    ],
    "db_operation": [
        "time", *IDENTITY, "role", "peer_addr", "peer_port", "db_system_name",
        "db_operation_name", "db_response_status_code", "db_collection_name", "db_namespace",
        "db_query_text", "duration_seconds", "request_bytes", "response_bytes", "connection_id",
        "tls",
    ],
}


class _Rotating:
    """A file that starts over past max_bytes, keeping `keep` old ones (PATH.1 newest)."""

    def __init__(self, path: str, max_bytes: int, keep: int, binary: bool,
                 on_new: Callable[[IO[Any]], None] | None = None):
        self.path, self.max_bytes, self.keep, self.binary = path, max_bytes, keep, binary
        self.on_new = on_new
        self.rotations = 0
        self._open()

    def _open(self) -> None:
        new = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
        if self.binary:
            self.f: IO[Any] = open(self.path, "ab", buffering=1 << 16)  # noqa: SIM115
        else:
            self.f = open(self.path, "a", newline="")  # noqa: SIM115
        self.size = os.path.getsize(self.path)
        if new and self.on_new:
            self.on_new(self.f)

    def wrote(self) -> None:
        """Call after each record: rotates when the file is past its size."""
        self.size = self.f.tell()
        if self.max_bytes and self.size >= self.max_bytes:
            self.f.close()
            for i in range(self.keep - 1, 0, -1):
                if os.path.exists(f"{self.path}.{i}"):
                    os.replace(f"{self.path}.{i}", f"{self.path}.{i + 1}")
            if self.keep:
                os.replace(self.path, f"{self.path}.1")
            else:
                os.unlink(self.path)
            self.rotations += 1
            self._open()

    def close(self) -> None:
        self.f.close()


def export_metrics(sinks: list[JsonlSink | CsvSink]) -> Iterable[Metric]:
    """What the exports wrote and rotated away, by file: with podscope_events_lost_total they
    reconcile (every record was written, rotated or lost)."""
    written = CounterMetricFamily("podscope_export_records_written_total",
                                  "Records written to an export file", labels=["path", "type"])
    rotated = CounterMetricFamily("podscope_export_files_rotated_total",
                                  "Times an export file was rotated (renamed to PATH.1)",
                                  labels=["path"])
    for sink in sinks:
        for kind, n in sorted(sink.written.items()):
            written.add_metric([sink.path, kind], n)
        rotated.add_metric([sink.path], sink.rotations)
    yield written
    yield rotated


class JsonlSink:
    """One JSON object per line (orjson: a record costs about a tenth of json.dumps here)."""

    def __init__(self, path: str, max_bytes: int = 0, keep: int = 5):
        self.path = path
        self._file = _Rotating(path, max_bytes, keep, binary=True)
        self._lock = threading.Lock()
        self.written: dict[str, int] = {}

    @property
    def rotations(self) -> int:
        return self._file.rotations

    def record(self, kind: str, rec: dict[str, Any]) -> None:
        line = orjson.dumps({"type": kind, **rec}, option=orjson.OPT_APPEND_NEWLINE)
        with self._lock:
            self._file.f.write(line)
            self._file.wrote()
            self.written[kind] = self.written.get(kind, 0) + 1

    def write_lines(self, kind: str, lines: bytes, n: int) -> None:
        """n records of `kind` already encoded as JSON lines (by compiled code), at once."""
        with self._lock:
            self._file.f.write(lines)
            self._file.wrote()
            self.written[kind] = self.written.get(kind, 0) + n

    def flush(self) -> None:
        with self._lock:
            self._file.f.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


class CsvSink:
    def __init__(self, path: str, max_bytes: int = 0, keep: int = 5):
        self.path = path
        self.max_bytes, self.keep = max_bytes, keep
        self._files: dict[str, _Rotating] = {}
        self._writers: dict[str, tuple[IO[Any], Any]] = {}  # kind -> (file, its DictWriter)
        self._lock = threading.Lock()
        self.written: dict[str, int] = {}

    @property
    def rotations(self) -> int:
        return sum(rf.rotations for rf in list(self._files.values()))

    def _writer(self, kind: str) -> tuple[_Rotating, Any]:
        rf = self._files.get(kind)
        if rf is None:
            path = self.path
            if self._files:
                root, ext = os.path.splitext(self.path)
                path = f"{root}.{kind}{ext or '.csv'}"
            rf = self._files[kind] = _Rotating(
                path, self.max_bytes, self.keep, binary=False,
                on_new=lambda f: csv.DictWriter(f, fieldnames=SCHEMAS[kind]).writeheader())
        f, w = self._writers.get(kind, (None, None))
        if f is not rf.f:  # new, or rotated
            w = csv.DictWriter(rf.f, fieldnames=SCHEMAS[kind], extrasaction="ignore")
            self._writers[kind] = (rf.f, w)
        return rf, w

    def record(self, kind: str, rec: dict[str, Any]) -> None:
        with self._lock:
            rf, w = self._writer(kind)
            w.writerow({k: "" if v is None else json.dumps(v) if isinstance(v, (list, dict))
                        else v for k, v in rec.items()})
            rf.wrote()
            self.written[kind] = self.written.get(kind, 0) + 1

    def flush(self) -> None:
        with self._lock:
            for rf in self._files.values():
                rf.f.flush()

    def close(self) -> None:
        with self._lock:
            for rf in self._files.values():
                rf.close()
            self._files.clear()
            self._writers.clear()


def open_export(spec: str, max_bytes: int = 0, keep: int = 5) -> JsonlSink | CsvSink:
    kind, sep, path = spec.partition(":")
    if not sep or not path:
        raise ValueError(f"--export {spec!r}: expected jsonl:PATH or csv:PATH")
    if kind == "jsonl":
        return JsonlSink(path, max_bytes, keep)
    if kind == "csv":
        return CsvSink(path, max_bytes, keep)
    raise ValueError(f"--export {spec!r}: unknown format {kind!r} (jsonl or csv)")
