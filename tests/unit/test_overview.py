"""The overview's arithmetic: keys, quantiles, rates over a window of snapshots."""

from __future__ import annotations

import math

from podscope.overview import pod_key, quantile


def test_pod_key_prefers_names() -> None:
    assert pod_key({"k8s_namespace_name": "shop", "k8s_pod_name": "web-0",
                    "k8s_pod_uid": "u"}) == "shop/web-0"
    assert pod_key({"k8s_pod_uid": "u1"}) == "pod:u1"
    assert pod_key({"container_id": "a" * 64, "container_name": "db"}) == "container:db"
    assert pod_key({"cgroup": "/system.slice/nginx.service", "process_name": "nginx"}) == \
        "node:nginx"
    assert pod_key({"cgroup": "/"}) == "node:(root cgroup)"
    assert pod_key({}) == ""


def test_quantile_interpolates_like_prometheus() -> None:
    b = {0.001: 10.0, 0.002: 90.0, 0.004: 100.0, math.inf: 100.0}
    assert quantile(0.5, b) == 0.001 + 0.001 * (50 - 10) / 80
    assert quantile(0.99, b) == 0.002 + 0.002 * (99 - 90) / 10
    assert quantile(0.5, {math.inf: 0.0}) is None
    assert quantile(0.5, {}) is None
    # everything above the highest finite bucket: the highest finite bound
    assert quantile(0.9, {0.001: 0.0, math.inf: 5.0}) == 0.001


def test_rates_and_window_quantiles_across_trimmed_buckets() -> None:
    import time

    from prometheus_client.core import HistogramMetricFamily

    from podscope.metadata.store import MetadataStore
    from podscope.overview import Overview

    labels = ["k8s_namespace_name", "k8s_pod_name", "http_response_status_code"]
    state = {"buckets": [("0.001", 5.0), ("+Inf", 5.0)], "sum": 0.004}

    def source():  # type: ignore[no-untyped-def]
        h = HistogramMetricFamily("http_server_request_duration_seconds", "d", labels=labels)
        h.add_metric(["shop", "web-0", "200"], state["buckets"], state["sum"])
        return [h]

    ov = Overview(source, MetadataStore(None, node="n"), window=10)
    first = ov.snapshot()
    assert first["pods"][0]["requests_total"] == 5
    assert abs(first["pods"][0]["p99_seconds"] - 0.00099) < 1e-12  # from 0, as Prometheus
    time.sleep(0.6)
    # three slower requests; the exposition now shows a bucket it left out before
    state["buckets"] = [("0.001", 5.0), ("0.002", 8.0), ("+Inf", 8.0)]
    second = ov.snapshot()["pods"][0]
    assert second["requests_total"] == 8
    assert 3 / 0.7 < second["requests_per_second"] < 3 / 0.6
    assert 0.001 < second["p99_seconds"] <= 0.002  # the window's requests, not all of them


def test_baselines_forget_pods_whose_series_are_gone() -> None:
    """Pods come and go: the baselines of those whose series went leave with them."""
    from podscope.baselines import Baselines
    from podscope.overview import _PodTotals

    live: dict[str, _PodTotals] = {}

    def totals() -> dict[str, object]:
        return {"pods": dict(live), "info": {k: {"k8s_pod_name": k} for k in live}}

    b = Baselines(totals, interval=10.0)  # type: ignore[arg-type]
    for i in range(50):
        live[f"pod-{i}"] = _PodTotals(requests=0.0)
        b.tick(float(i * 10))
        live[f"pod-{i}"] = _PodTotals(requests=5.0, buckets={0.1: 5.0})
        b.tick(float(i * 10 + 5))
        assert b.view()["pods"][-1]["id"] == f"pod-{i}"
        del live[f"pod-{i}"]
    b.tick(1000.0)
    assert b.size() == 0 and b.view()["pods"] == []


def test_database_operations_are_service_map_edges_and_a_database_pods_requests() -> None:
    from prometheus_client.core import HistogramMetricFamily

    from podscope.metadata.store import MetadataStore
    from podscope.overview import Overview

    labels = ["k8s_namespace_name", "k8s_pod_name", "db_system_name", "db_operation_name",
              "db_response_status_code", "server_address", "server_port"]

    def source():  # type: ignore[no-untyped-def]
        h = HistogramMetricFamily("db_client_operation_duration_seconds", "d", labels=labels)
        h.add_metric(["shop", "api-0", "postgresql", "SELECT", "", "10.9.0.5", "5432"],
                     [("0.001", 7.0), ("+Inf", 7.0)], 0.003)
        h.add_metric(["shop", "api-0", "postgresql", "INSERT", "23505", "10.9.0.5", "5432"],
                     [("0.001", 1.0), ("+Inf", 1.0)], 0.0005)
        h.add_metric(["shop", "api-0", "redis", "GET", "", "10.9.0.6", "6379"],
                     [("0.001", 2.0), ("+Inf", 2.0)], 0.0001)
        srv = HistogramMetricFamily("podscope_db_server_operation_duration_seconds", "d",
                                    labels=labels[:5])
        srv.add_metric(["shop", "pg-0", "postgresql", "SELECT", ""], [("0.001", 4.0),
                                                                     ("+Inf", 4.0)], 0.002)
        srv.add_metric(["shop", "pg-0", "postgresql", "SELEC", "42601"], [("0.001", 1.0),
                                                                          ("+Inf", 1.0)], 0.0)
        return [h, srv]

    view = Overview(source, MetadataStore(None, node="n")).snapshot()
    (edge,) = view["edges"]  # neither address is a pod of this node
    assert edge["from"] == "shop/api-0" and edge["to"] == "external"
    assert edge["protocols"] == ["postgresql", "redis"]
    assert edge["peers"] == ["10.9.0.5:5432", "10.9.0.6:6379"]
    assert edge["requests_total"] == 10 and edge["errors_total"] == 1
    # the database pod's own row: the operations it served
    pg = {p["id"]: p for p in view["pods"]}["shop/pg-0"]
    assert pg["requests_total"] == 5 and pg["errors_total"] == 1


def test_pressure_as_a_share_of_the_window() -> None:
    import time

    from prometheus_client.core import CounterMetricFamily

    from podscope.metadata.store import MetadataStore
    from podscope.overview import Overview
    from podscope.top import table

    state = {"cpu": 1.0, "memory": 0.5}

    def source():  # type: ignore[no-untyped-def]
        c = CounterMetricFamily("podscope_pressure_stalled_seconds_total", "s",
                                labels=["k8s_namespace_name", "k8s_pod_name", "resource", "kind"])
        for res, v in state.items():
            c.add_metric(["shop", "db-0", res, "some"], v)
            c.add_metric(["shop", "db-0", res, "full"], v / 2)
        return [c]

    ov = Overview(source, MetadataStore(None, node="n"), window=10)
    ov.snapshot()
    time.sleep(0.6)
    state["memory"] += 0.3  # 0.3 s of memory stalls in about 0.6 s
    (pod,) = ov.snapshot()["pods"]
    assert pod["pressure_ratio"]["cpu"] == 0
    assert 0.3 / 0.7 < pod["pressure_ratio"]["memory"] < 0.3 / 0.6
    assert pod["pressure_max_ratio"] == pod["pressure_ratio"]["memory"]
    t = table({"node": "n", "window_seconds": 0.6, "pods": [pod]}, "pressure")
    assert t.row_count == 1
