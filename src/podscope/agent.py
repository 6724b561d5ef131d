"""Wires collectors -> attribution -> sinks; life cycle, signals, shutdown."""

from __future__ import annotations

import logging
import select
import signal
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from importlib import resources
from typing import Any

import orjson
from prometheus_client.core import GaugeMetricFamily, Metric

from . import features
from .baselines import Baselines
from .collectors import registry
from .collectors.base import Collector
from .collectors.http import HttpCollector
from .collectors.netlat import NetlatCollector
from .collectors.pressure import PressureCollector
from .config import Config
from .libbpf import BpfError
from .metadata import kube
from .metadata.docker import DockerNames
from .metadata.store import MetadataStore
from .overview import Overview, pod_key
from .sinks.files import CsvSink, JsonlSink, export_metrics, open_export
from .sinks.prometheus import HttpServer, make_registry
from .sinks.pushgateway import PushgatewaySink
from .traces import SlowTrees

log = logging.getLogger("podscope.agent")
PODMAN_SOCKET = "/run/podman/podman.sock"


class Agent:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.stop_event = threading.Event()
        self._stop_requested = False  # set by request_stop(), from a signal handler
        self.collectors: list[Collector] = []
        self.files: list[JsonlSink | CsvSink] = []
        self.http: HttpServer | None = None
        self.store: MetadataStore | None = None
        self.kube: kube.KubeWatcher | None = None
        self.push: PushgatewaySink | None = None
        self.overview: Overview | None = None
        self.triggers: Any = None  # triggers.Triggers, when rules are configured
        self.baselines: Baselines | None = None  # with the web API
        self.otlp: Any = None  # sinks.otlp.OtlpSink (imported only when used: OpenTelemetry is big)
        self.signals: list[features.Signal] = []  # what each collector runs, as this kernel allows
        self.slow: SlowTrees | None = None  # the web page's slowest whole requests

    def _emit(self, kind: str, rec: dict[str, Any]) -> None:
        for sink in self.files:
            sink.record(kind, rec)
        if self.otlp is not None:
            self.otlp.record(kind, rec)
        if self.slow is not None and kind == "http_request":
            self.slow.add(rec)

    def _emit_lines(self, kind: str, lines: bytes, n: int) -> None:
        for sink in self.files:
            assert isinstance(sink, JsonlSink)  # offered only when all of them are
            sink.write_lines(kind, lines, n)

    def metrics(self) -> Iterable[Metric]:
        """Every collector's families; one family per name (podscope_events_lost_total and
        friends are shared: their samples are merged)."""
        merged: dict[str, Metric] = {}
        sources: list[Iterable[Metric]] = [c.metrics() for c in self.collectors]
        if self.store is not None:
            sources.append(self.store.metrics())
        if self.push is not None:
            sources.append(self.push.metrics())
        if self.otlp is not None:
            sources.append(self.otlp.metrics())
        if self.triggers is not None:
            sources.append(self.triggers.metrics())
        sources.append(self._signal_metrics())
        sources.append(self._state_metrics())
        if self.files:
            sources.append(export_metrics(self.files))
        for source in sources:
            for fam in source:
                if fam.name in merged:
                    merged[fam.name].samples.extend(fam.samples)
                else:
                    merged[fam.name] = fam
        return list(merged.values())

    def _signal_metrics(self) -> Iterable[Metric]:
        fam = GaugeMetricFamily("podscope_signal_info",
                                "1 per signal: how this kernel runs it (works, degraded or "
                                "unavailable) and the hooks it uses",
                                labels=["collector", "signal", "state", "hooks"])
        for s in self.signals:
            fam.add_metric([s.collector, s.name, s.state, s.hooks], 1)
        yield fam

    def _state_metrics(self) -> Iterable[Metric]:
        fam = GaugeMetricFamily("podscope_state_entries",
                                "Entries in the agent's own tables (each one bounded and "
                                "expiring): flat over months, or something leaks",
                                labels=["table"])
        sizes: dict[str, int] = self.store.state_sizes() if self.store is not None else {}
        for c in self.collectors:
            sizer = getattr(c, "state_sizes", None)
            if sizer is not None:
                sizes.update(sizer())
        if self.baselines is not None:
            sizes["baselines"] = self.baselines.size()
        for table, n in sorted(sizes.items()):
            fam.add_metric([table], n)
        yield fam

    def start(self) -> None:
        cg2 = features.preflight()
        cfg = self.cfg
        self.store = MetadataStore(cg2, proc=cfg.proc_root, node=kube.node_name(cfg.node_name),
                                   grace=cfg.pod_grace)
        self._listen()
        if cfg.otlp:
            from .sinks.otlp import OtlpSink

            self.otlp = OtlpSink(cfg.otlp, self.metrics, node=self.store.node,
                                 interval=cfg.otlp_interval, join_hold=cfg.trace_join_hold)
        if cfg.kubernetes == "on" or (cfg.kubernetes == "auto"
                                      and kube.cluster_configured(cfg.kubeconfig)):
            self.kube = kube.KubeWatcher(self.store.node, self.store.set_pods,
                                         self.store.pod_event, kubeconfig=cfg.kubeconfig)
            self.store.api = self.kube
            self.kube.start()
            log.info("watching the pods of node %s in the Kubernetes API", self.store.node)
        else:
            # Docker's socket, else podman's (`podman system service`, its systemd socket)
            for path in dict.fromkeys([cfg.docker_socket, PODMAN_SOCKET]):
                docker = DockerNames(path)
                if docker.available():
                    self.store.docker = docker
                    docker.follow()
                    log.info("container names from the container engine API at %s", path)
                    break
        self.files = [open_export(spec, cfg.export_max_bytes, cfg.export_keep)
                      for spec in self.cfg.exports]
        records = bool(self.files) or self.otlp is not None
        lines_only = (records and self.otlp is None
                      and all(isinstance(f, JsonlSink) for f in self.files))
        if records and not lines_only and self.http is not None:
            self.slow = SlowTrees(pod_key)  # the records are dicts anyway: the page gets trees
        ctx = registry.Context(cfg, self.store, emit=self._emit if records else None,
                               emit_lines=self._emit_lines if lines_only else None)
        self.netlat: NetlatCollector | None = None
        for spec in registry.SPECS:  # each in its own guarded step: one refusal costs one
            if not spec.enabled(cfg):
                continue
            col, sigs = registry.start(spec, ctx)
            self.signals += sigs
            if col is not None:
                self.collectors.append(col)
        self.netlat = next((c for c in self.collectors if isinstance(c, NetlatCollector)), None)
        if self.netlat is not None and cfg.netlat:  # loaded always (triggers switch it on)
            try:
                self.netlat.set_active(True)
            except BpfError as e:
                log.error("network latency probe could not attach: %s", e)
        if self.otlp is not None:
            self.otlp.start()
            log.info("exporting spans and metrics to %s (OTLP/HTTP)", cfg.otlp)
        if cfg.pushgateway:
            self.push = PushgatewaySink(cfg.pushgateway, self.metrics, instance=self.store.node,
                                        interval=cfg.push_interval,
                                        delete_on_exit=cfg.push_delete_on_exit)
            self.push.start()
            log.info("pushing to %s every %gs", self.push.url, cfg.push_interval)
        if cfg.rules:
            from .triggers import Triggers

            self.trigger_view = Overview(self.metrics, self.store,
                                         window=max(5.0, 2 * cfg.trigger_interval))
            http_c = next((c for c in self.collectors if isinstance(c, HttpCollector)), None)

            def blocked_reasons(on: bool) -> bool:
                # on for the window; off after it, unless the configuration keeps it on
                if http_c is None:
                    return False
                return http_c.set_blocked_reasons(on or cfg.http_breakdown_reasons)

            netlat = self.netlat
            pressure = next((c for c in self.collectors if isinstance(c, PressureCollector)),
                            None)

            def net_probes(on: bool) -> bool:
                return netlat.set_active(on or cfg.netlat) if netlat is not None else False

            self.triggers = Triggers(cfg.rules, self.trigger_view.snapshot, self.store,
                                     cfg.reports_dir, cfg.reports_per_hour,
                                     interval=cfg.trigger_interval,
                                     blocked_reasons=blocked_reasons, net_probes=net_probes,
                                     net_view=netlat.histograms if netlat else None,
                                     pressure_view=pressure.pod_state if pressure else None)
            self.triggers.start()
            log.info("%d trigger rules; reports in %s", len(cfg.rules), cfg.reports_dir)
        if self.http is not None:
            self.overview = Overview(self.metrics, self.store)
            self.baselines = Baselines(self.overview.totals, interval=cfg.baseline_interval)
            self.baselines.start()
            self.http.start()
            scheme = "https" if cfg.web_tls_cert else "http"
            log.info("serving /metrics and /healthz on %s://%s:%d", scheme,
                     *self.http.address[:2])

    def _listen(self) -> None:
        """Bind the web server's address before any BPF loads: an address in use, or a bad
        TLS or token file, is a one-line error at once."""
        cfg = self.cfg
        addr = cfg.listen_addr()
        if not addr:
            return
        token = ""
        if cfg.web_bearer_token_file:
            try:
                with open(cfg.web_bearer_token_file) as f:
                    token = f.read().strip()
            except OSError as e:
                raise OSError(e.errno, f"web_bearer_token_file {cfg.web_bearer_token_file}: "
                                       f"{e.strerror}") from None
            if not token:
                raise ValueError(f"web_bearer_token_file {cfg.web_bearer_token_file}: empty")
        tls = None
        if cfg.web_tls_cert:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            try:
                tls.load_cert_chain(cfg.web_tls_cert, cfg.web_tls_key or None)
                if cfg.web_client_ca:
                    tls.load_verify_locations(cfg.web_client_ca)
                    tls.verify_mode = ssl.CERT_REQUIRED
            except (OSError, ssl.SSLError) as e:
                raise ValueError(f"web TLS files ({cfg.web_tls_cert}, {cfg.web_tls_key}, "
                                 f"{cfg.web_client_ca}): {e}") from None
        self.http = HttpServer(addr[0], addr[1], make_registry(self.metrics),
                               healthy=lambda: not self.stopping(), pages=self._pages(),
                               prefixes={"/api/reports/": self._report_file},
                               hosts=[*cfg.web_hosts, self.store.node if self.store else ""],
                               tls=tls, bearer_token=token)

    def _pages(self) -> dict[str, Callable[[], tuple[bytes, str]]]:
        """The web page (shipped in the package) and the JSON API behind it (and `top`)."""
        index = (resources.files("podscope") / "web" / "index.html").read_bytes()

        def page() -> tuple[bytes, str]:
            return index, "text/html; charset=utf-8"

        def overview() -> tuple[bytes, str]:
            assert self.overview is not None
            return orjson.dumps(self.overview.snapshot()), "application/json"

        from .triggers import list_reports

        def reports() -> tuple[bytes, str]:
            return orjson.dumps({"reports": list_reports(self.cfg.reports_dir)}), \
                "application/json"

        def baselines() -> tuple[bytes, str]:
            view = self.baselines.view() if self.baselines else {"pods": []}
            return orjson.dumps(view), "application/json"

        def traces() -> tuple[bytes, str]:
            view = self.slow.view() if self.slow else {
                "trees": [], "off": "no request records: run with --otlp or a CSV export"
                                    " (a JSON-lines-only export writes them from compiled code)"}
            return orjson.dumps(view), "application/json"

        return {"/": page, "/index.html": page, "/api/v1/overview": overview,
                "/api/reports": reports, "/api/v1/baselines": baselines,
                "/api/v1/traces": traces}

    def _report_file(self, rel: str) -> tuple[bytes, str] | None:
        from .triggers import report_file

        return report_file(self.cfg.reports_dir, rel)

    def request_stop(self, *_: object) -> None:
        """SIGTERM/SIGINT: a plain flag, nothing that can block. (Event.set() here could wait
        forever for the Event's own lock, held by the very code the signal interrupted: seen
        when the signal landed inside the main loop's wait.) The loop sees it within 0.1 s."""
        self._stop_requested = True

    def stopping(self) -> bool:
        return self._stop_requested or self.stop_event.is_set()

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self.request_stop)
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self.serve()

    def serve(self) -> int:
        """The agent's loop (after start()): drain ring buffers, retire deleted pods, upkeep,
        flush files; until stop_event or cfg.duration. Closes everything at the end."""
        waiter: select.epoll | None = None
        try:
            deadline = time.monotonic() + self.cfg.duration if self.cfg.duration else None
            log.info("podscope running%s", f" for {self.cfg.duration:g}s" if deadline else "")
            last_flush = last_maintain = last_retire = last_all = time.monotonic()
            # one wait for every ring buffer: a burst in one is taken as soon as it starts, not
            # after the others' timeouts (a ring left alone for 100 ms at 100k records/s fills)
            waiter = select.epoll()
            ready_of: dict[int, Collector] = {}
            for c in self.collectors:
                fd = c.wait_fd() if hasattr(c, "wait_fd") else None
                if fd is not None and fd >= 0:
                    waiter.register(fd, select.EPOLLIN)
                    ready_of[fd] = c
            while not self.stopping():
                if deadline and time.monotonic() >= deadline:
                    break
                ready = waiter.poll(0.1)
                if ready:
                    # let a burst gather: one batch of hundreds of events costs the Python
                    # calls of one, and 5 ms is ~2 % of what the records ring holds at 100k/s
                    time.sleep(0.005)
                for fd, _ev in ready:
                    ready_of[fd].poll(0)
                if time.monotonic() - last_all >= 0.1:  # everyone's own upkeep in poll()
                    for c in self.collectors:
                        c.poll(0)
                    last_all = time.monotonic()
                if time.monotonic() - last_retire > 1.0:
                    gone = self.store.retire() if self.store else set()
                    if gone and self.store:
                        for c in self.collectors:
                            c.forget_pods(gone)
                        self.store.forget_netns(self.store.netns_of(gone))
                    last_retire = time.monotonic()
                if time.monotonic() - last_maintain > self.cfg.maintain_interval:
                    for c in self.collectors:
                        c.maintain()
                    last_maintain = time.monotonic()
                if time.monotonic() - last_flush > 1.0:
                    for f in self.files:
                        f.flush()
                    if self.slow is not None:
                        self.slow.take()
                    last_flush = time.monotonic()
            for c in self.collectors:  # last records before the programs go away
                c.poll(0)
        finally:
            if waiter is not None:
                waiter.close()
            self.close()
        return 0

    def close(self) -> None:
        self.stop_event.set()
        if self.push:
            self.push.close()  # before the collectors: the last push reads their maps
            self.push = None
        if self.otlp:
            self.otlp.close()
            self.otlp = None
        if self.kube:
            self.kube.stop()
            self.kube = None
        if self.store is not None and self.store.docker is not None:
            self.store.docker.close()
        if self.baselines:
            self.baselines.stop()
            self.baselines = None
        if self.triggers:  # a deep window still running ends here, its probes detached
            self.triggers.stop()
            self.triggers = None
        if self.http:
            self.http.close()
            self.http = None
        for c in self.collectors:
            try:
                c.close()
            except Exception:
                log.exception("closing collector %s", c.name)
        self.collectors.clear()
        for f in self.files:
            f.close()
        self.files.clear()
