"""Pure pieces: histograms, exports, config, /proc parsing, BTF-derived struct views."""

from __future__ import annotations

import csv
import ctypes as ct
import json
from pathlib import Path

import pytest
from prometheus_client.core import HistogramMetricFamily

from podscope import libbpf
from podscope.collectors.base import log2_histogram
from podscope.collectors.tcp import errno_reason
from podscope.config import Config
from podscope.metadata.namespaces import proc_cgroup_v2, read_netstat
from podscope.metadata.store import Labels
from podscope.sinks.files import SCHEMAS, CsvSink, JsonlSink, open_export

PROC = str(Path(__file__).resolve().parent.parent / "fixtures" / "proc")


def test_log2_histogram_buckets_are_cumulative_and_in_seconds() -> None:
    slots = [0] * 40
    slots[0], slots[1], slots[11] = 2, 3, 5  # 0 us, 1 us, [1024, 2048) us
    lab = Labels(k8s_pod_uid="u")
    fam = log2_histogram(HistogramMetricFamily("h", "h", labels=list(Labels._fields)),
                         {(lab, ()): slots}, {(lab, ()): 3 + 5 * 1500}, 1e-6)
    by = {s.labels.get("le"): s.value for s in fam.samples if s.name == "h_bucket"}
    assert by["1e-06"] == 2 and by["2e-06"] == 5 and by["0.002048"] == 10 and by["+Inf"] == 10
    assert by["0.001024"] == 5
    total = [s.value for s in fam.samples if s.name == "h_sum"][0]
    assert total == pytest.approx(0.007503)


def test_errno_reason_names() -> None:
    assert errno_reason(111) == "ECONNREFUSED"
    assert errno_reason(110) == "ETIMEDOUT"
    assert errno_reason(0) == "ABORTED"


def test_exports_jsonl_and_csv(tmp_path: Path) -> None:
    rec = {k: i for i, k in enumerate(SCHEMAS["tcp_connection"])}
    rec["duration_seconds"] = None
    j = open_export(f"jsonl:{tmp_path / 'a.jsonl'}")
    c = open_export(f"csv:{tmp_path / 'a.csv'}")
    for s in (j, c):
        s.record("tcp_connection", rec)
        s.close()
    assert json.loads((tmp_path / "a.jsonl").read_text())["type"] == "tcp_connection"
    rows = list(csv.DictReader((tmp_path / "a.csv").open()))
    assert rows[0]["src_port"] == str(rec["src_port"]) and rows[0]["duration_seconds"] == ""
    with pytest.raises(ValueError, match="jsonl:PATH or csv:PATH"):
        open_export("nonsense")
    with pytest.raises(ValueError, match="unknown format"):
        open_export("xml:/tmp/x")


def test_config_file_and_flags(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('listen = "0.0.0.0:9464"\nexports = ["jsonl:/tmp/x"]\n')
    cfg = Config.load(str(f), {"listen": "127.0.0.1:1", "duration": None, "exports": []})
    assert cfg.listen_addr() == ("127.0.0.1", 1) and cfg.exports == ["jsonl:/tmp/x"]
    f.write_text("bogus = 1\n")
    with pytest.raises(ValueError, match="unknown settings"):
        Config.load(str(f), {})
    with pytest.raises(ValueError, match="HOST:PORT"):
        Config(listen="nope").listen_addr()


def test_proc_parsing() -> None:
    ns = read_netstat(4242, PROC)
    assert ns["TcpExtListenOverflows"] == 17 and ns["IpExtInOctets"] == 123456
    assert proc_cgroup_v2(4242, PROC).startswith("/kubepods.slice/")  # type: ignore[union-attr]


def test_struct_views_come_from_btf_and_match_sizes() -> None:
    with libbpf.BpfObject(libbpf.bpf_object_path("tcp")) as obj:
        ev = obj.struct("tcp_close_event")
        assert ct.sizeof(ev) == 96
        assert ev.saddr.offset == ev.direction.offset + 2
        assert ct.sizeof(obj.struct("pod_key")) == 16
        assert ct.sizeof(obj.struct("hist")) == 41 * 8
        # the header's fields, by name, in the user-space view
        names = [f[0] for f in obj.struct("tcp_pod_stats")._fields_]
        assert names[:3] == ["opened_outbound", "opened_inbound", "closed"]
        pod = obj.struct("tcp_pod")
        assert [f[0] for f in pod._fields_] == ["stats", "connect", "duration", "rtt"]
        assert ct.sizeof(pod) == ct.sizeof(obj.struct("tcp_pod_stats")) + 3 * 41 * 8
        assert obj.btf.enum("tcp_label_kind") == {"TCP_LABEL_CONNECT_FAILURE": 0,
                                                  "TCP_LABEL_DROP_REASON": 1}
        m = obj.map("tcp_pods")
        m.check_types(obj.struct("pod_key"), pod)
        with pytest.raises(TypeError, match="value is"):
            m.check_types(obj.struct("pod_key"), ct.c_uint64)
        with pytest.raises(KeyError, match="no const volatile setting"):
            obj.set_rodata(no_such_setting=1)


def test_render_matches_prometheus_client() -> None:
    """sinks.prometheus.render is read back by the official parser as generate_latest's text."""
    from prometheus_client import generate_latest
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )
    from prometheus_client.parser import text_string_to_metric_families

    from podscope.sinks.prometheus import make_registry, render

    def families() -> list:  # type: ignore[type-arg]
        c = CounterMetricFamily("podscope_x", "help with \\ and\nnewline", labels=["a", "b"])
        c.add_metric(['va"l', "back\\slash\nnl"], 3)
        c.add_metric(["", "π"], 0.5)
        g = GaugeMetricFamily("podscope_g", "g")
        g.add_metric([], float("inf"))
        h = HistogramMetricFamily("podscope_h_seconds", "h", labels=["pod"])
        h.add_metric(["p1"], [("0.001", 1.0), ("0.002", 3.0), ("+Inf", 4.0)], 0.25)
        return [c, g, h]

    ours = list(text_string_to_metric_families(render(families()).decode()))
    ref = list(text_string_to_metric_families(
        generate_latest(make_registry(families)).decode()))
    def view(fams: list) -> list:  # type: ignore[type-arg]
        return [(f.name, f.type, f.documentation,
                 sorted((s.name, sorted(s.labels.items()), s.value) for s in f.samples))
                for f in fams]

    assert view(ours) == view(ref)
    assert len(ours) == 3 and len(ours[2].samples) == 5


def test_pushgateway_group_path() -> None:
    from podscope.sinks.pushgateway import group_path

    assert group_path("podscope", {"instance": "node-1"}) == "/metrics/job/podscope/instance/node-1"
    # a '/' or an empty value needs the base64 form of the grouping key
    assert group_path("podscope", {"instance": "a/b"}) == \
        "/metrics/job/podscope/instance@base64/YS9i"
    assert group_path("podscope", {"instance": ""}) == "/metrics/job/podscope/instance@base64/="


def test_records_doc_lists_every_column_in_order() -> None:
    """docs/records.md and SCHEMAS (the CSV columns) cannot drift apart."""
    import re

    from podscope.metadata.store import LABEL_NAMES
    from podscope.sinks.files import IDENTITY

    doc = (Path(__file__).resolve().parents[2] / "docs" / "records.md").read_text()
    sections = re.split(r"^## ", doc, flags=re.M)

    def columns(title: str) -> list[str]:
        sec = next(s for s in sections if s.startswith(title))
        return re.findall(r"^\| `([a-z0-9_]+)` \|", sec, flags=re.M)

    assert columns("Identity") == IDENTITY
    assert set(IDENTITY) == set(LABEL_NAMES)  # every label of a series is in its records
    for kind in SCHEMAS:
        cols = columns(f"`{kind}`")
        assert ["time", *IDENTITY, *cols[1:]] == SCHEMAS[kind], kind


def rotated_exports(tmp_path: Path) -> tuple[dict[str, str], JsonlSink | CsvSink,
                                              JsonlSink | CsvSink]:
    """A JSON lines and a CSV export of 2000 bytes each, two old files kept, 40 records in."""
    rec = {k: "x" * 10 for k in SCHEMAS["http_request"]}
    j = open_export(f"jsonl:{tmp_path / 'r.jsonl'}", max_bytes=2000, keep=2)
    c = open_export(f"csv:{tmp_path / 'r.csv'}", max_bytes=2000, keep=2)
    for _ in range(40):
        j.record("http_request", rec)
        c.record("http_request", rec)
    return rec, j, c


def test_exports_rotate_by_size(tmp_path: Path) -> None:
    rec, j, c = rotated_exports(tmp_path)
    j.close()
    c.close()
    for name in ("r.jsonl", "r.csv"):
        files = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(name))
        assert files == [name, f"{name}.1", f"{name}.2"], files  # two old ones kept, no more
        one = len(json.dumps({"type": "http_request", **rec})) + 1  # a record, as JSON
        for p in tmp_path.glob(name + "*"):
            assert p.stat().st_size < 2000 + one  # past the limit by one record at most
    # every CSV file starts with the header, and every JSON line is whole
    for p in tmp_path.glob("r.csv*"):
        with p.open() as f:
            assert next(csv.reader(f)) == SCHEMAS["http_request"]
    for p in tmp_path.glob("r.jsonl*"):
        assert all(json.loads(line)["type"] == "http_request" for line in p.read_text().splitlines())


def test_exports_count_what_they_wrote_and_rotated(tmp_path: Path) -> None:
    from podscope.sinks.files import export_metrics

    rec, j, c = rotated_exports(tmp_path)
    j.record("dns_query", {"time": 1})
    fams = {f.name: f for f in export_metrics([j, c])}
    written = {(s.labels["path"], s.labels["type"]): s.value
               for s in fams["podscope_export_records_written"].samples}
    assert written == {(j.path, "http_request"): 40, (j.path, "dns_query"): 1,
                       (c.path, "http_request"): 40}
    rotated = {s.labels["path"]: s.value for s in fams["podscope_export_files_rotated"].samples}
    # every rotation left a file behind (two kept, the rest deleted): at least those two
    assert rotated[j.path] >= 2 and rotated[c.path] >= 2
    lines = sum(len(p.read_text().splitlines()) for p in tmp_path.glob("r.jsonl*"))
    assert lines <= 41  # what the kept files hold, of the 41 written
    j.close()
    c.close()


@pytest.mark.parametrize("target,route,record", [
    ("/a;jsessionid=SECRET", "/a", "/a;jsessionid=<redacted>"),
    ("/cart;jsessionid=S3CR3T/items", "/cart/items", "/cart;jsessionid=<redacted>/items"),
    ("/invite/AbCdEfGhIjKlMnOp", "/invite/{id}", "/invite/<redacted>"),
    ("/u/bob@example.com/profile", "/u/{id}/profile", "/u/<redacted>/profile"),
    ("/v1/tokens/sk_live_abcdef1234567890", "/v1/tokens/{id}", "/v1/tokens/<redacted>"),
    ("/a/b;v=1?x=2", "/a/b", "/a/b;v=<redacted>?x=<redacted>"),
    # left alone: words, CamelCase, numbers (templated, not secret), file names
    ("/api/GetUserProfileSettings", "/api/GetUserProfileSettings",
     "/api/GetUserProfileSettings"),
    ("/notifications/settings", "/notifications/settings", "/notifications/settings"),
    ("/users/123/orders", "/users/{id}/orders", "/users/123/orders"),
    ("/static/app.min.js", "/static/app.min.js", "/static/app.min.js"),
])
def test_routes_and_records_carry_no_secrets(target: str, route: str, record: str) -> None:
    from podscope.protocols.routes import redact_target, template_path

    assert template_path(target) == route
    assert redact_target(target) == record
