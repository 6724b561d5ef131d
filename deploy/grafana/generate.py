# ruff: noqa: E501  (one panel per line reads best here)
"""Writes deploy/grafana/dashboards/*.json (the dashboards are generated: edit this, then run
`python3 deploy/grafana/generate.py`). Every panel query is run against Prometheus by
tests/e2e/test_prometheus.py."""
import json
import os

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboards")
SEL = 'k8s_namespace_name=~"$namespace", k8s_pod_name=~"$pod"'
BY = "k8s_namespace_name, k8s_pod_name"
R = "$__rate_interval"

def panel(title, exprs, unit="short", kind="timeseries", legend=None, desc=""):
    if isinstance(exprs, str):
        exprs = [(exprs, legend or "")]
    return {"title": title, "type": kind, "description": desc,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [{"refId": chr(65 + i), "expr": e, "legendFormat": leg,
                         "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                        for i, (e, leg) in enumerate(exprs)]}

def q(metric, extra=""):
    return "{" + SEL + (", " + extra if extra else "") + "}"

def dashboard(uid, title, rows):
    panels, y, pid = [], 0, 1
    for row_title, row in rows:
        panels.append({"type": "row", "title": row_title, "id": pid, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid += 1
        y += 1
        for i, p in enumerate(row):
            p = dict(p, id=pid)
            pid += 1
            p["gridPos"] = {"h": 8, "w": 8, "x": (i % 3) * 8, "y": y + (i // 3) * 8}
            panels.append(p)
        y += 8 * ((len(row) + 2) // 3)
    return {
        "uid": uid, "title": title, "tags": ["podscope"], "schemaVersion": 39, "version": 1,
        "editable": True, "time": {"from": "now-1h", "to": "now"}, "refresh": "30s",
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
            {"name": "namespace", "type": "query", "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": "label_values(podscope_tcp_connections_opened_total, k8s_namespace_name)",
             "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2},
            {"name": "pod", "type": "query", "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": 'label_values(podscope_tcp_connections_opened_total{k8s_namespace_name=~"$namespace"}, k8s_pod_name)',
             "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2},
        ]},
        "panels": panels,
    }

def rate(m, extra="", by=BY):
    return f"sum by ({by}) (rate({m}{q(m, extra)}[{R}]))"

def quant(qv, m, by=BY, extra=""):
    return f"histogram_quantile({qv}, sum by (le, {by}) (rate({m}{q(m, extra)}[{R}])))"

L = "{{k8s_namespace_name}}/{{k8s_pod_name}}"
ERR5 = rate("http_server_request_duration_seconds_count", 'http_response_status_code=~"5.."')
overview = dashboard("podscope-overview", "podscope / pods overview", [
    ("Requests (server side)", [
        panel("Requests per second", rate("http_server_request_duration_seconds_count"), "reqps", legend=L),
        panel("Error ratio (5xx)", ERR5 + " / " + rate("http_server_request_duration_seconds_count"), "percentunit", legend=L),
        panel("p99 latency", quant(0.99, "http_server_request_duration_seconds_bucket"), "s", legend=L),
    ]),
    ("Network", [
        panel("TCP connections opened per second", rate("podscope_tcp_connections_opened_total", by=BY + ", direction"), "cps", legend=L + " {{direction}}"),
        panel("Retransmitted segments per second", rate("podscope_tcp_retransmits_total"), "short", legend=L),
        panel("Packet drops per second", rate("podscope_packet_drops_total", by=BY + ", reason"), "short", legend=L + " {{reason}}"),
        panel("Bytes sent / received per second", [(rate("podscope_tcp_sent_bytes_total"), L + " sent"), (rate("podscope_tcp_received_bytes_total"), L + " received")], "Bps"),
        panel("Accept queue depth", f"max by ({BY}, port) (podscope_tcp_accept_queue_depth{q('')})", legend=L + " :{{port}}"),
        panel("gRPC calls per second", rate("rpc_server_duration_seconds_count", by=BY + ", rpc_service"), "reqps", legend=L + " {{rpc_service}}"),
    ]),
])

tcp = dashboard("podscope-tcp", "podscope / TCP health", [
    ("Connections", [
        panel("Opened per second", rate("podscope_tcp_connections_opened_total", by=BY + ", direction"), "cps", legend=L + " {{direction}}"),
        panel("Closed per second", rate("podscope_tcp_connections_closed_total"), "cps", legend=L),
        panel("Connect failures per second", rate("podscope_tcp_connect_failures_total", by=BY + ", reason"), "short", legend=L + " {{reason}}"),
        panel("Connect latency p99", quant(0.99, "podscope_tcp_connect_duration_seconds_bucket"), "s", legend=L),
        panel("Connection duration p50", quant(0.5, "podscope_tcp_connection_duration_seconds_bucket"), "s", legend=L),
        panel("RTT p99", quant(0.99, "podscope_tcp_rtt_seconds_bucket"), "s", legend=L),
    ]),
    ("Loss and resets", [
        panel("Retransmits per second", rate("podscope_tcp_retransmits_total"), "short", legend=L),
        panel("Resets sent / received per second", [(rate("podscope_tcp_resets_sent_total"), L + " sent"), (rate("podscope_tcp_resets_received_total"), L + " received")]),
        panel("Drops per second by reason", rate("podscope_packet_drops_total", by=BY + ", reason"), legend=L + " {{reason}}"),
        panel("Bytes sent per second", rate("podscope_tcp_sent_bytes_total"), "Bps", legend=L),
        panel("Bytes received per second", rate("podscope_tcp_received_bytes_total"), "Bps", legend=L),
    ]),
    ("Queues (saturation)", [
        panel("Accept queue depth / limit", [(f"max by ({BY}, port) (podscope_tcp_accept_queue_depth{q('')})", L + " :{{port}} depth"), (f"max by ({BY}, port) (podscope_tcp_accept_queue_limit{q('')})", L + " :{{port}} limit")]),
        panel("SYN queue depth", f"max by ({BY}, port) (podscope_tcp_syn_queue_depth{q('')})", legend=L + " :{{port}}"),
        panel("Listen overflows / drops per second", [(rate("podscope_tcp_listen_overflows_total"), L + " overflows"), (rate("podscope_tcp_listen_drops_total"), L + " drops")]),
        panel("Listener socket drops per second", rate("podscope_tcp_listener_drops_total", by=BY + ", port"), legend=L + " :{{port}}"),
    ]),
])

RL = "{{k8s_pod_name}} {{http_request_method}} {{http_route}}"
requests = dashboard("podscope-requests", "podscope / requests (RED per route)", [
    ("HTTP server", [
        panel("Rate by route and status", rate("http_server_request_duration_seconds_count", by=BY + ", http_route, http_response_status_code"), "reqps", legend="{{k8s_pod_name}} {{http_route}} {{http_response_status_code}}"),
        panel("Errors (5xx) by route", rate("http_server_request_duration_seconds_count", 'http_response_status_code=~"5.."', by=BY + ", http_route"), "reqps", legend="{{k8s_pod_name}} {{http_route}}"),
        panel("p50 / p99 by route", [(quant(0.5, "http_server_request_duration_seconds_bucket", by=BY + ", http_route"), "p50 {{k8s_pod_name}} {{http_route}}"), (quant(0.99, "http_server_request_duration_seconds_bucket", by=BY + ", http_route"), "p99 {{k8s_pod_name}} {{http_route}}")], "s"),
        panel("Request / response bytes per second", [(rate("podscope_http_server_request_bytes_total"), L + " in"), (rate("podscope_http_server_response_bytes_total"), L + " out")], "Bps"),
    ]),
    ("HTTP client", [
        panel("Rate by server", rate("http_client_request_duration_seconds_count", by=BY + ", server_address, server_port"), "reqps", legend="{{k8s_pod_name}} → {{server_address}}:{{server_port}}"),
        panel("Client p99 by server", quant(0.99, "http_client_request_duration_seconds_bucket", by=BY + ", server_address"), "s", legend="{{k8s_pod_name}} → {{server_address}}"),
        panel("Client bytes per second", [(rate("podscope_http_client_request_bytes_total"), L + " out"), (rate("podscope_http_client_response_bytes_total"), L + " in")], "Bps"),
        panel("Unanswered requests per second", rate("podscope_http_requests_unanswered_total", by=BY + ", role, reason"), legend=L + " {{role}} {{reason}}"),
    ]),
    ("gRPC", [
        panel("Calls by method and code", rate("rpc_server_duration_seconds_count", by=BY + ", rpc_service, rpc_method, rpc_grpc_status_code"), "reqps", legend="{{rpc_service}}/{{rpc_method}} {{rpc_grpc_status_code}}"),
        panel("Server p99 by method", quant(0.99, "rpc_server_duration_seconds_bucket", by=BY + ", rpc_method"), "s", legend="{{k8s_pod_name}} {{rpc_method}}"),
        panel("Client calls by method", rate("rpc_client_duration_seconds_count", by=BY + ", rpc_method, rpc_grpc_status_code"), "reqps", legend="{{k8s_pod_name}} {{rpc_method}} {{rpc_grpc_status_code}}"),
        panel("HTTP/2 decode outcomes", rate("podscope_http2_decode_total", by=BY + ", outcome"), legend=L + " {{outcome}}"),
    ]),
    ("Cardinality", [
        panel("Requests folded into __other__", rate("podscope_http_routes_over_budget_total"), legend=L),
    ]),
])

DL = "{{k8s_pod_name}} {{db_system_name}} {{db_operation_name}}"
databases = dashboard("podscope-databases", "podscope / databases and caches", [
    ("Served (the database pod)", [
        panel("Operations per second", rate("podscope_db_server_operation_duration_seconds_count", by=BY + ", db_system_name, db_operation_name"), "ops", legend=DL),
        panel("Errors by status code", rate("podscope_db_server_operation_duration_seconds_count", 'db_response_status_code!=""', by=BY + ", db_system_name, db_response_status_code"), "ops", legend="{{k8s_pod_name}} {{db_system_name}} {{db_response_status_code}}"),
        panel("p99 by operation", quant(0.99, "podscope_db_server_operation_duration_seconds_bucket", by=BY + ", db_system_name, db_operation_name"), "s", legend=DL),
    ]),
    ("Called (the client pod)", [
        panel("Operations per second by server", rate("db_client_operation_duration_seconds_count", by=BY + ", db_system_name, server_address, server_port"), "ops", legend="{{k8s_pod_name}} → {{db_system_name}} {{server_address}}:{{server_port}}"),
        panel("Client p99 by operation", quant(0.99, "db_client_operation_duration_seconds_bucket", by=BY + ", db_system_name, db_operation_name"), "s", legend=DL),
        panel("Client error ratio", rate("db_client_operation_duration_seconds_count", 'db_response_status_code!=""', by=BY + ", db_system_name") + " / " + rate("db_client_operation_duration_seconds_count", by=BY + ", db_system_name"), "percentunit", legend="{{k8s_pod_name}} {{db_system_name}}"),
        panel("Time waiting on each table (share of time)", rate("db_client_operation_duration_seconds_sum", by=BY + ", db_system_name, db_collection_name"), "percentunit", legend="{{k8s_pod_name}} {{db_system_name}} {{db_collection_name}}"),
    ]),
    ("Messaging (NATS)", [
        panel("Messages published per second by subject", rate("messaging_client_sent_messages_total", by=BY + ", messaging_destination_name"), "short", legend="{{k8s_pod_name}} {{messaging_destination_name}}"),
        panel("Messages consumed per second by subject", rate("messaging_client_consumed_messages_total", by=BY + ", messaging_destination_name"), "short", legend="{{k8s_pod_name}} {{messaging_destination_name}}"),
        panel("Request-reply p99", quant(0.99, "messaging_client_operation_duration_seconds_bucket", by=BY + ", messaging_destination_name"), "s", legend="{{k8s_pod_name}} {{messaging_destination_name}}"),
        panel("Broker: messages received / delivered per second", rate("podscope_messaging_server_messages_total", by=BY + ", direction"), "short", legend=L + " {{direction}}"),
    ]),
])

kernel = dashboard("podscope-kernel", "podscope / kernel errors and CPU", [
    ("Failures the application cannot see", [
        panel("Fork failures by errno (EAGAIN: pids limit)", rate("podscope_process_fork_failures_total", by=BY + ", errno"), legend=L + " {{errno}}"),
        panel("Mount failures by errno", rate("podscope_mount_failures_total", by=BY + ", errno"), legend=L + " {{errno}}"),
        panel("OOM kills", f"sum by ({BY}, k8s_container_name) (increase(podscope_oom_kills_total{q('')}[{R}]))", legend=L + " {{k8s_container_name}}"),
        panel("Processes ended by a signal", rate("podscope_process_signal_exits_total", by=BY + ", signal"), legend=L + " {{signal}}"),
        panel("PIDs in use / limit", [(f"sum by ({BY}) (podscope_pids_current{q('')})", L + " current"), (f"sum by ({BY}) (podscope_pids_limit{q('')})", L + " limit")]),
        panel("Forks refused at the pids limit", rate("podscope_pids_limit_hits_total"), legend=L),
        panel("OOM kills the cgroup recorded", f"sum by ({BY}) (podscope_memory_oom_kill_events_total{q('')})", legend=L),
    ]),
    ("CPU", [
        panel("Throttled (share of time)", rate("podscope_cpu_throttled_seconds_total"), "percentunit", legend=L),
        panel("Throttled periods / periods", rate("podscope_cpu_throttled_periods_total") + " / " + rate("podscope_cpu_periods_total"), "percentunit", legend=L),
        panel("Run-queue delay p99", quant(0.99, "podscope_cpu_runqueue_delay_seconds_bucket"), "s", legend=L),
        panel("Off-CPU time by reason", rate("podscope_cpu_off_seconds_total", by=BY + ", reason"), "percentunit", legend=L + " {{reason}}"),
        panel("Context switches per second", rate("podscope_cpu_context_switches_total", by=BY + ", reason"), legend=L + " {{reason}}"),
        panel("Page faults per second", [(rate("podscope_page_faults_total"), L + " all"), (rate("podscope_page_faults_major_total"), L + " major")]),
    ]),
    ("Pressure (PSI) and memory", [
        panel("Stalled share of time (some tasks)", rate("podscope_pressure_stalled_seconds_total", 'kind="some"', by=BY + ", resource"), "percentunit", legend=L + " {{resource}}"),
        panel("Stalled share of time (all tasks)", rate("podscope_pressure_stalled_seconds_total", 'kind="full"', by=BY + ", resource"), "percentunit", legend=L + " {{resource}}"),
        panel("Memory refaults per second (working set does not fit)", rate("podscope_memory_refaults_total", by=BY + ", type"), legend=L + " {{type}}"),
        panel("Time in memory reclaim (share of time)", rate("podscope_memory_reclaim_stall_seconds_sum", by=BY + ", kind"), "percentunit", legend=L + " {{kind}}"),
        panel("Block I/O request p99", quant(0.99, "podscope_io_request_duration_seconds_bucket", by=BY + ", device, direction"), "s", legend=L + " {{device}} {{direction}}"),
    ]),
])

agent = dashboard("podscope-agent", "podscope / agent health", [
    ("Agent", [
        panel("Events lost per second", f"sum by (source) (rate(podscope_events_lost_total[{R}]))", legend="{{source}}"),
        panel("BPF map full per second", f"sum by (collector) (rate(podscope_bpf_map_full_total[{R}]))", legend="{{collector}}"),
        panel("HTTP parse errors per second", f"sum by (reason) (rate(podscope_http_parse_errors_total[{R}]))", legend="{{reason}}"),
        panel("Streamed HTTP connections per second", f"sum(rate(podscope_http_connections_streamed_total[{R}]))"),
        panel("Stale socket states removed", f"sum(rate(podscope_tcp_stale_socket_states_removed_total[{R}]))"),
        panel("Kubernetes API reachable", "min(podscope_metadata_api_up)", kind="stat"),
        panel("Pods known from the API", "sum by (state) (podscope_metadata_pods)", legend="{{state}}"),
        panel("Pushgateway pushes per second", f"sum by (result) (rate(podscope_pushgateway_pushes_total[{R}]))", legend="{{result}}"),
    ]),
])
for name, d in (("overview", overview), ("tcp", tcp), ("requests", requests),
                ("databases", databases), ("kernel", kernel), ("agent", agent)):
    with open(os.path.join(OUT, f"podscope-{name}.json"), "w") as f:
        json.dump(d, f, indent=1)
        f.write("\n")
