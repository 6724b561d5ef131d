"""Databases and caches per pod: the operations the native engine (native/dbengine.c) parsed and
paired from the HTTP collector's streamed connections, as OpenTelemetry database series.

Client side (the pod sent the request): `db_client_operation_duration_seconds` with
`db_system_name`, `db_operation_name`, `db_response_status_code` (the error's code or prefix;
"" for a success), `db_collection_name` (the table a SQL statement names first), `db_namespace`
(the database the connection uses), `server_address` and `server_port`. Server side (the
database pod is a pod too): `podscope_db_server_operation_duration_seconds`, the same without the
server's address.

NATS is messaging, by OpenTelemetry's messaging conventions: `messaging_client_sent_messages_total`
and `messaging_client_consumed_messages_total` (`messaging_system`, `messaging_operation_name`,
`messaging_destination_name`: the subject, reply inboxes as `_INBOX`; `server_address`,
`server_port`), `messaging_client_operation_duration_seconds{messaging_operation_name="request"}`
(a publish naming a reply subject to the message on it), in the server pod
`podscope_messaging_server_messages_total{direction="received"|"delivered"}`, and
`podscope_messaging_errors_total{error_type}` (the server's -ERR).

Records (when asked for): one `db_operation` per operation, with the same names, the times and
sizes, and `db_query_text`, the SQL statement with its literal values replaced (`?`) by the
engine: never a parameter or a value.

Bounded: a pod's operation names per system (MAX_OPS_PER_POD), its status codes
(MAX_STATUSES_PER_POD: a Redis script can make up error prefixes) and its (namespace,
collection) pairs per system (MAX_COLLECTIONS_PER_POD); beyond them `_OTHER`, counted; client series of a
server address without operations for `peer_ttl` seconds go."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client.core import CounterMetricFamily, Metric

from .. import _fast
from ..metadata.store import Labels, identity
from .base import HIST_SLOTS_DEFAULT as SLOTS
from .base import Histogram, label_names, log2_buckets, top_slot

HIST_UNIT = 1e-9
ROLE_SERVER, ROLE_CLIENT = 1, 2
MAX_OPS_PER_POD = 64  # distinct operation names per pod and system
MAX_COLLECTIONS_PER_POD = 256  # distinct (namespace, collection) pairs per pod and system
MAX_STATUSES_PER_POD = 64  # distinct status codes per pod and system (a script's own errors)
OTHER = "_OTHER"
_CELL = struct.Struct(f"<4Q{SLOTS}Q")  # native/dbengine.c struct db_cell

# (labels, role, system, operation, status, collection, namespace, server address, server port)
DbKey = tuple[Labels, int, str, str, str, str, str, str, int]


class DbOps:
    """count, sum and log2 slots of one series."""

    __slots__ = ("count", "sum_ns", "slots", "req_bytes", "resp_bytes")

    def __init__(self) -> None:
        self.count = self.sum_ns = self.req_bytes = self.resp_bytes = 0
        self.slots = [0] * SLOTS

    def add(self, v: tuple[int, ...]) -> None:
        self.count += v[0]
        self.sum_ns += v[1]
        self.req_bytes += v[2]
        self.resp_bytes += v[3]
        for i, n in enumerate(v[4:]):
            if n:
                self.slots[i] += n

    def merge(self, o: DbOps) -> None:
        self.count += o.count
        self.sum_ns += o.sum_ns
        self.req_bytes += o.req_bytes
        self.resp_bytes += o.resp_bytes
        self.slots = [a + b for a, b in zip(self.slots, o.slots, strict=True)]


Publish = Callable[[str, dict[str, Any]], None]


class DbSeries:
    def __init__(self, labels_of: Callable[[int, int], Labels],
                 peer_of: Callable[[int, bytes], str], peer_ttl: float = 300.0,
                 publish: Publish | None = None, mono_to_wall: float = 0.0) -> None:
        if _fast.DB_CELL_SIZE != _CELL.size:
            raise RuntimeError("podscope._fast is not the build of this source: run make")
        self.engine = _fast.DbEngine(records=publish is not None)
        self._publish = publish
        self._mono_to_wall = mono_to_wall
        self._labels_of = labels_of
        self._peer_of = peer_of
        self.peer_ttl = peer_ttl
        self._ops: dict[DbKey, DbOps] = {}
        self._names: dict[tuple[Labels, str], set[str]] = {}  # operation names per pod, system
        self._colls: dict[tuple[Labels, str], set[tuple[str, str]]] = {}  # (namespace, table)
        self._statuses: dict[tuple[Labels, str], set[str]] = {}
        self._peer_seen: dict[DbKey, float] = {}
        self.over_budget: dict[tuple[Labels, str], int] = {}
        self.colls_over_budget: dict[tuple[Labels, str], int] = {}
        self.errors: dict[str, int] = {}

    def fold(self) -> None:
        """What the engine paired since the last fold, into the series (the caller's lock), and
        its records published."""
        if self._publish is not None:
            self._records(self._publish)
        cells, errors = self.engine.take()
        for reason, n in errors.items():
            self.errors[reason] = self.errors.get(reason, 0) + n
        now = time.monotonic()
        for (ident, system, op, status, coll, ns), cell in cells:
            cgroup_id, netns, role, _tls, family, peer, peer_port = ident
            labels = self._labels_of(cgroup_id, netns)
            k = (labels, system)
            names = self._names.setdefault(k, set())
            if op not in names:
                if len(names) >= MAX_OPS_PER_POD:
                    self.over_budget[k] = self.over_budget.get(k, 0) + _CELL.unpack(cell)[0]
                    op = OTHER
                else:
                    names.add(op)
            statuses = self._statuses.setdefault(k, set())
            if status and status not in statuses:
                if len(statuses) >= MAX_STATUSES_PER_POD:
                    self.over_budget[k] = self.over_budget.get(k, 0) + _CELL.unpack(cell)[0]
                    status = OTHER
                else:
                    statuses.add(status)
            colls = self._colls.setdefault(k, set())
            if (ns, coll) not in colls and (ns or coll):
                if len(colls) >= MAX_COLLECTIONS_PER_POD:
                    self.colls_over_budget[k] = (self.colls_over_budget.get(k, 0)
                                                 + _CELL.unpack(cell)[0])
                    ns, coll = OTHER if ns else "", OTHER if coll else ""
                else:
                    colls.add((ns, coll))
            addr, port = (self._peer_of(family, peer), peer_port) if role == ROLE_CLIENT \
                else ("", 0)
            key: DbKey = (labels, role, system, op, status, coll, ns, addr, port)
            ops = self._ops.get(key)
            if ops is None:
                ops = self._ops[key] = DbOps()
            ops.add(_CELL.unpack(cell))
            if addr:
                self._peer_seen[key] = now

    def _records(self, publish: Publish) -> None:
        for (ident, system, op, status, coll, ns), start, end, req_b, resp_b, conn, query in \
                self.engine.take_records():
            cgroup_id, netns, role, tls, family, peer, peer_port = ident
            rec: dict[str, Any] = {
                "time": round(start / 1e9 + self._mono_to_wall, 6),
                **self._labels_of(cgroup_id, netns)._asdict(),
                "role": "client" if role == ROLE_CLIENT else "server",
                "peer_addr": self._peer_of(family, peer), "peer_port": peer_port,
                "db_system_name": system, "db_operation_name": op,
                "db_response_status_code": status, "db_collection_name": coll,
                "db_namespace": ns, "db_query_text": query,
                "duration_seconds": round(max(end - start, 0) / 1e9, 9),
                "request_bytes": req_b, "response_bytes": resp_b, "connection_id": conn,
                "tls": bool(tls),
            }
            publish("db_operation", rec)

    def expire(self, now: float) -> None:
        """Client series of a server without operations for peer_ttl go, and idle connections
        whose closes were lost (the engine's)."""
        for key, at in list(self._peer_seen.items()):
            if now - at >= self.peer_ttl:
                del self._peer_seen[key]
                self._ops.pop(key, None)
        self.engine.expire(max(0, time.clock_gettime_ns(time.CLOCK_MONOTONIC)
                               - int(self.peer_ttl * 1e9)))

    def forget_pods(self, uids: set[str]) -> None:
        for d in (self._ops, self._peer_seen):
            for k in [k for k in d if identity(k[0]) in uids]:
                del d[k]
        for d2 in (self._names, self.over_budget, self._colls, self.colls_over_budget,
                   self._statuses):
            for k2 in [k for k in d2 if identity(k[0]) in uids]:
                del d2[k2]

    @property
    def records_dropped(self) -> int:
        return self.engine.records_dropped

    def state_sizes(self) -> dict[str, int]:
        return {"db_series": len(self._ops), "db_engine_connections": self.engine.connections,
                "db_operation_names": sum(len(v) for v in self._names.values()),
                "db_collection_names": sum(len(v) for v in self._colls.values())}

    def snapshot(self) -> DbSnapshot:
        """The series, the over-budget counts and the errors (taken under the caller's lock)."""
        return ([(k, _copy(o)) for k, o in self._ops.items()], dict(self.over_budget),
                dict(self.colls_over_budget), dict(self.errors))

    @staticmethod
    def families(snap: DbSnapshot,
                 live: Callable[[list[tuple[Any, Any]]], list[tuple[Any, Any]]],
                 live_counts: Callable[[dict[Any, int]], dict[Any, int]]) -> Iterable[Metric]:
        """The families of a snapshot; `live` renames series (and drops retired pods) as the
        HTTP collector does its own."""
        items, over_budget, colls_over_budget, errors = snap
        ops = live(items)
        names = ("db_system_name", "db_operation_name", "db_response_status_code",
                 "db_collection_name", "db_namespace")
        client = Histogram(
            "db_client_operation_duration_seconds",
            "Duration of database and cache operations the pod made: request written to the "
            "last byte of its response read",
            labels=label_names(*names, "server_address", "server_port"))
        server = Histogram(
            "podscope_db_server_operation_duration_seconds",
            "Duration of database and cache operations the pod served: request read to the "
            "last byte of its response written",
            labels=label_names(*names))
        top = top_slot(o.slots for _k, o in ops)
        msg = _Messaging()
        for (labels, role, system, op, status, coll, ns, addr, port), o in ops:
            if system == "nats":
                msg.add(labels, role, system, op, status, coll, addr, port, o, top)
                continue
            values = list(labels) + [system, op, status, coll, ns]
            buckets = log2_buckets(o.slots, HIST_UNIT, top)
            if role == ROLE_CLIENT:
                client.add_metric(values + [addr, str(port)], buckets, o.sum_ns * HIST_UNIT)
            else:
                server.add_metric(values, buckets, o.sum_ns * HIST_UNIT)
        yield client
        yield server
        yield from msg.families()
        over = CounterMetricFamily(
            "podscope_db_operations_over_budget_total",
            f"Operations counted as db_operation_name or db_response_status_code \"{OTHER}\": the "
            f"pod had used its {MAX_OPS_PER_POD} operation names or {MAX_STATUSES_PER_POD} status "
            "codes of that system", labels=label_names("db_system_name"))
        for (labels, system), n in live_counts(over_budget).items():
            over.add_metric(list(labels) + [system], n)
        yield over
        over_c = CounterMetricFamily(
            "podscope_db_collections_over_budget_total",
            f"Operations counted as db_collection_name or db_namespace \"{OTHER}\": the pod had "
            f"used its {MAX_COLLECTIONS_PER_POD} (namespace, collection) pairs of that system",
            labels=label_names("db_system_name"))
        for (labels, system), n in live_counts(colls_over_budget).items():
            over_c.add_metric(list(labels) + [system], n)
        yield over_c
        un = CounterMetricFamily(
            "podscope_db_unparsed_total",
            "Database and cache protocol data that could not be parsed or paired, by reason "
            "(counted, never fatal: the connection's parser starts over)", labels=["reason"])
        for reason, n in sorted(errors.items()):
            un.add_metric([reason], n)
        yield un


class _Messaging:
    """NATS's cells as OpenTelemetry messaging series."""

    def __init__(self) -> None:
        where = ("messaging_system", "messaging_operation_name", "messaging_destination_name",
                 "server_address", "server_port")
        self.sent = CounterMetricFamily(
            "messaging_client_sent_messages_total", "Messages the pod published",
            labels=label_names(*where))
        self.consumed = CounterMetricFamily(
            "messaging_client_consumed_messages_total", "Messages delivered to the pod",
            labels=label_names(*where))
        self.duration = Histogram(
            "messaging_client_operation_duration_seconds",
            "Requests the pod made (a publish naming a reply subject) to the first message on "
            "that subject", labels=label_names(*where))
        self.server = CounterMetricFamily(
            "podscope_messaging_server_messages_total",
            "Messages the pod (a broker) received from publishers and delivered to subscribers",
            labels=label_names("messaging_system", "messaging_destination_name", "direction"))
        self.errors = CounterMetricFamily(
            "podscope_messaging_errors_total", "Errors the broker sent (-ERR), by kind",
            labels=label_names("messaging_system", "error_type", "role"))

    def add(self, labels: Labels, role: int, system: str, op: str, status: str, dest: str,
            addr: str, port: int, o: DbOps, top: int) -> None:
        lv = list(labels)
        client = role == ROLE_CLIENT
        if op == "error":
            self.errors.add_metric(lv + [system, status, "client" if client else "server"],
                                   o.count)
        elif not client:
            direction = {"publish": "received", "deliver": "delivered"}.get(op)
            if direction:
                self.server.add_metric(lv + [system, dest, direction], o.count)
        elif op == "request":
            self.duration.add_metric(lv + [system, op, dest, addr, str(port)],
                                     log2_buckets(o.slots, HIST_UNIT, top), o.sum_ns * HIST_UNIT)
        elif op in ("publish", "receive"):
            fam = self.sent if op == "publish" else self.consumed
            fam.add_metric(lv + [system, op, dest, addr, str(port)], o.count)

    def families(self) -> Iterable[Metric]:
        yield self.sent
        yield self.consumed
        yield self.duration
        yield self.server
        yield self.errors


DbSnapshot = tuple[list[tuple[DbKey, DbOps]], dict[Any, int], dict[Any, int], dict[str, int]]


def _copy(o: DbOps) -> DbOps:
    c = DbOps()
    c.merge(o)
    return c
