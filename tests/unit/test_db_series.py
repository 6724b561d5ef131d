"""The database series (collectors/db.py) from the engine's cells: client and server families with
their OTel labels, tables and databases, the per-pod operation and collection budgets, client
series of a gone server expiring, a retired pod's series forgotten."""

from __future__ import annotations

from typing import Any

from podscope.collectors.db import (
    MAX_COLLECTIONS_PER_POD,
    MAX_OPS_PER_POD,
    MAX_STATUSES_PER_POD,
    OTHER,
    DbSeries,
)
from podscope.metadata.store import Labels
from tests.unit.test_dbengine import MYSQL, POSTGRES, SERVER, batch, cmd, event, my, pg

POD_A = Labels(k8s_pod_uid="uid-a", k8s_namespace_name="shop", k8s_pod_name="api")
POD_B = Labels(k8s_pod_uid="uid-b", k8s_namespace_name="shop", k8s_pod_name="redis")


def series() -> DbSeries:
    return DbSeries(lambda cg, netns: POD_A if cg == 77 else POD_B,
                    lambda family, raw: ".".join(str(b) for b in raw[:4]), peer_ttl=60.0)


def samples(db: DbSeries) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    snap = db.snapshot()
    for fam in DbSeries.families(snap, lambda items: items, lambda counts: counts):
        for s in fam.samples:
            if s.name.endswith("_count") or s.name.endswith("_total"):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(got: dict[Any, float], name: str, **labels: str) -> float:
    return sum(v for (n, lab), v in got.items()
               if n == name and all(dict(lab).get(k) == w for k, w in labels.items()))


def test_client_and_server_series_with_their_labels() -> None:
    db = series()
    db.engine.process(batch([event(cmd("GET", "k"), 1, False), event(b"$-1\r\n", 9, True),
                             event(cmd("GET", "k"), 10, True, role=SERVER, conn=6),
                             event(b"-ERR x\r\n", 12, False, role=SERVER, conn=6)]))
    db.fold()
    got = samples(db)
    assert value(got, "db_client_operation_duration_seconds_count", k8s_pod_uid="uid-a",
                 db_system_name="redis", db_operation_name="GET", db_response_status_code="",
                 server_address="10.0.0.9", server_port="6379") == 1
    assert value(got, "podscope_db_server_operation_duration_seconds_count",
                 k8s_pod_uid="uid-a", db_operation_name="GET",
                 db_response_status_code="ERR") == 1
    assert value(got, "podscope_db_unparsed_total") == 0


def test_operation_names_have_a_budget_per_pod_and_system() -> None:
    db = series()
    names = [f"CMD{i}" for i in range(MAX_OPS_PER_POD + 5)]
    db.engine.process(batch([event(b"".join(cmd(n) for n in names), 1, False),
                             event(b"+OK\r\n" * len(names), 2, True)]))
    db.fold()
    got = samples(db)
    assert value(got, "db_client_operation_duration_seconds_count",
                 db_operation_name=OTHER) == 5
    assert value(got, "podscope_db_operations_over_budget_total", k8s_pod_uid="uid-a",
                 db_system_name="redis") == 5
    assert db.state_sizes()["db_operation_names"] == MAX_OPS_PER_POD


def test_series_of_a_gone_server_expire_and_a_retired_pod_is_forgotten() -> None:
    db = series()
    db.engine.process(batch([event(cmd("GET", "k"), 1, False), event(b"$-1\r\n", 2, True),
                             event(cmd("PING"), 3, True, role=SERVER, conn=6),
                             event(b"+PONG\r\n", 4, False, role=SERVER, conn=6)]))
    db.fold()
    assert db.state_sizes()["db_series"] == 2
    db.expire(1e12)  # long after: the client series of that server address goes
    assert db.state_sizes()["db_series"] == 1
    db.forget_pods({"uid-a"})
    assert db.state_sizes()["db_series"] == 0


def test_tables_and_databases_of_sql_statements() -> None:
    """db_collection_name is the table a statement names first; db_namespace the database of the
    connection: PostgreSQL's startup, MySQL's login or COM_INIT_DB."""
    db = series()
    startup = b"\x00\x03\x00\x00user\x00bench\x00database\x00shop\x00\x00"
    ready = pg(b"Z", b"I")
    db.engine.process(batch([
        event((len(startup) + 4).to_bytes(4, "big") + startup, 1, False, proto=POSTGRES),
        event(pg(b"R", b"\x00" * 4) + ready, 2, True, proto=POSTGRES),
        event(pg(b"Q", b"SELECT a FROM public.orders o JOIN x ON true\x00"), 3, False,
              proto=POSTGRES),
        event(pg(b"C", b"SELECT 1\x00") + ready, 4, True, proto=POSTGRES),
        event(pg(b"Q", b'insert into "Items" values (1)\x00'), 5, False, proto=POSTGRES),
        event(pg(b"C", b"INSERT 0 1\x00") + ready, 6, True, proto=POSTGRES),
        event(pg(b"Q", b"select 1 from (select 2) s\x00"), 7, False, proto=POSTGRES),
        event(pg(b"C", b"SELECT 1\x00") + ready, 8, True, proto=POSTGRES),
        event(my(0, b"\x02inventory"), 1, False, conn=9, proto=MYSQL),
        event(my(1, b"\x00\x00\x00\x02\x00\x00\x00"), 2, True, conn=9, proto=MYSQL),
        event(my(0, b"\x03UPDATE LOW_PRIORITY `stock` SET n = 1"), 3, False, conn=9, proto=MYSQL),
        event(my(1, b"\x00\x01\x00\x02\x00\x00\x00"), 4, True, conn=9, proto=MYSQL),
        event(my(0, b"\x03DELETE FROM inventory.stock WHERE 'from x' = ''"), 5, False, conn=9,
              proto=MYSQL),
        event(my(1, b"\x00\x01\x00\x02\x00\x00\x00"), 6, True, conn=9, proto=MYSQL)]))
    db.fold()
    got = samples(db)
    name = "db_client_operation_duration_seconds_count"
    for system, op, coll, ns in (("postgresql", "SELECT", "public.orders", "shop"),
                                 ("postgresql", "INSERT", "Items", "shop"),
                                 ("postgresql", "SELECT", "", "shop"),
                                 ("mysql", "INIT_DB", "", "inventory"),
                                 ("mysql", "UPDATE", "stock", "inventory"),
                                 ("mysql", "DELETE", "inventory.stock", "inventory")):
        assert value(got, name, db_system_name=system, db_operation_name=op,
                     db_collection_name=coll, db_namespace=ns) == 1, (op, coll, ns, got)


def test_collections_have_a_budget_per_pod_and_system() -> None:
    db = series()
    n = MAX_COLLECTIONS_PER_POD + 3
    db.engine.process(batch([event(b"".join(pg(b"Q", b"SELECT * FROM t%d\x00" % i)
                                            for i in range(n)), 1, False, proto=POSTGRES),
                             event((pg(b"C", b"SELECT 1\x00") + pg(b"Z", b"I")) * n, 2, True,
                                   proto=POSTGRES)]))
    db.fold()
    got = samples(db)
    assert value(got, "db_client_operation_duration_seconds_count",
                 db_collection_name=OTHER) == 3
    assert value(got, "podscope_db_collections_over_budget_total", k8s_pod_uid="uid-a",
                 db_system_name="postgresql") == 3
    assert db.state_sizes()["db_collection_names"] == MAX_COLLECTIONS_PER_POD


def test_records_as_spans_and_trace_lines() -> None:
    """A record per operation (labels, peer, statement without values), its OTLP span by the
    database conventions, and `trace db`'s line and status filter."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.trace import SpanKind, StatusCode

    from podscope.sinks.otlp import db_span_of
    from podscope.trace import db_status_filter, format_db_line

    recs: list[tuple[str, dict[str, Any]]] = []
    db = DbSeries(lambda cg, netns: POD_A, lambda family, raw: "10.0.0.9",
                  publish=lambda kind, rec: recs.append((kind, rec)), mono_to_wall=1e9)
    db.engine.process(batch([
        event(my(0, b"\x03SELECT v FROM kv WHERE k = 'x'"), 1_000, False, conn=3, proto=MYSQL),
        event(my(1, b"\xff\x7a\x04#42S02no such table"), 3_000, True, conn=3, proto=MYSQL)]))
    db.fold()
    ((kind, rec),) = recs
    assert kind == "db_operation" and rec["k8s_pod_uid"] == "uid-a" and rec["role"] == "client"
    assert (rec["db_system_name"], rec["db_operation_name"], rec["db_response_status_code"],
            rec["db_collection_name"], rec["db_query_text"]) == \
        ("mysql", "SELECT", "1146", "kv", "SELECT v FROM kv WHERE k = ?")
    assert rec["duration_seconds"] == 2e-6 and rec["time"] == 1e9 + 1e-6
    span = db_span_of(rec, Resource({}))
    assert span.name == "SELECT kv" and span.kind == SpanKind.CLIENT
    assert span.status.status_code == StatusCode.ERROR and span.attributes is not None
    assert span.attributes["db.query.text"] == "SELECT v FROM kv WHERE k = ?"
    assert span.attributes["server.address"] == "10.0.0.9"
    assert "SELECT v FROM kv WHERE k = ?" in format_db_line(rec)
    assert db_status_filter("1146")(rec["db_response_status_code"])
    assert db_status_filter("error")("1146") and not db_status_filter("ok")("1146")
    try:
        db_status_filter("a b")
    except ValueError as e:
        assert "--status" in str(e)
    else:
        raise AssertionError("a bad --status was taken")


def test_status_codes_have_a_budget_per_pod_and_system() -> None:
    """A Redis script can answer errors of any prefix: past 64 a pod's statuses are _OTHER."""
    db = series()
    n = MAX_STATUSES_PER_POD + 4
    db.engine.process(batch([event(cmd("EVAL", "x", "0") * n, 1, False),
                             event(b"".join(b"-E%d oops\r\n" % i for i in range(n)), 2, True)]))
    db.fold()
    got = samples(db)
    assert value(got, "db_client_operation_duration_seconds_count",
                 db_response_status_code=OTHER) == 4
    assert value(got, "podscope_db_operations_over_budget_total", db_system_name="redis") == 4
