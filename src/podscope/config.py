"""One typed configuration: defaults < config file (TOML) < command-line flags."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass
class Config:
    listen: str | None = None  # HOST:PORT for /metrics and /healthz
    duration: float | None = None  # seconds; None = until SIGINT/SIGTERM
    exports: list[str] = field(default_factory=list)  # jsonl:PATH, csv:PATH
    export_max_bytes: int = 100 * 1024 * 1024  # an export file rotates past this size (0: never)
    export_keep: int = 5  # rotated export files kept (PATH.1 ... PATH.N)
    log_level: str = "info"
    listener_refresh: float = 0.5  # seconds between iter/tcp passes
    maintain_interval: float = 30.0  # seconds between collector upkeep (stale state removal)
    http: bool = True  # HTTP/1.x requests from socket syscalls
    http_capture_headers: bool = False  # headers in records (redacted); streams HTTP to user space
    http_route_budget: int = 100  # distinct http_route values per pod; the rest are "__other__"
    http_request_timeout: float = 60.0  # seconds without a response: counted as unanswered
    netlat: bool = False  # network stack latency (a hash update per packet: a deep probe)
    http_breakdown_reasons: bool = False  # blocked time of server requests by reason (a probe
    # on every context switch while on: a deep diagnostic)
    kernel: bool = True  # fork/mount failures, OOM kills, fatal signals, cgroup limits
    cpu: bool = True  # context switches, off-CPU time, run-queue delay of pod containers
    dns: bool = True  # DNS queries of pods (UDP and TCP port 53): latency, rcode, timeouts
    dns_timeout: float = 5.0  # seconds without an answer: the query timed out (glibc's default)
    http_hooks: str = "auto"  # socket (tp_btf sock_*_length) | syscalls (syscall tracepoints):
    # for HTTP and DNS (auto: socket where the kernel has those tracepoints, Linux 6.3)
    node_name: str = ""  # this node's name (default: $NODE_NAME, then the host name)
    kubernetes: str = "auto"  # auto (when in a pod or a kubeconfig exists) | on | off
    kubeconfig: str = ""  # default: in-cluster service account, $KUBECONFIG, ~/.kube/config
    pod_grace: float = 60.0  # seconds a deleted pod's series stay before they disappear
    proc_root: str = "/proc"  # the host's /proc (in a DaemonSet: mounted at /host/proc)
    docker_socket: str = "/var/run/docker.sock"  # container names outside Kubernetes
    pushgateway: str = ""  # URL of a Prometheus Pushgateway to push every metric to
    push_interval: float = 15.0  # seconds between pushes
    push_delete_on_exit: bool = True  # delete this node's group from the gateway at shutdown
    otlp: str = ""  # OTLP/HTTP endpoint (http://collector:4318): spans per request, metrics
    otlp_interval: float = 15.0  # seconds between OTLP metric exports
    triggers: list[dict[str, Any]] = field(default_factory=list)  # [[triggers]] rules
    reports_dir: str = "/var/lib/podscope/reports"  # where trigger reports go
    reports_per_hour: int = 6  # trigger reports made at most per hour
    trigger_interval: float = 5.0  # seconds between trigger checks (each is an overview pass)
    baseline_interval: float = 10.0  # seconds per latency baseline interval (idle / load)
    rules: list[Any] = field(default_factory=list, init=False)  # triggers.Rule, parsed

    @classmethod
    def load(cls, path: str | None, overrides: dict[str, Any]) -> Config:
        data: dict[str, Any] = {}
        if path:
            try:
                with open(path, "rb") as f:
                    data = tomllib.load(f)
            except (OSError, tomllib.TOMLDecodeError) as e:
                raise ValueError(f"config file {path}: {e}") from None
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"config file {path}: unknown settings {sorted(unknown)}")
        data.update({k: v for k, v in overrides.items() if v is not None and v != []})
        return cls(**data)

    def __post_init__(self) -> None:
        from .triggers import Rule

        self.rules = [Rule.parse(t) for t in self.triggers]  # errors name the rule
        if self.kubernetes not in ("auto", "on", "off"):
            raise ValueError(f"kubernetes = {self.kubernetes!r}: expected auto, on or off")
        if self.http_hooks not in ("auto", "socket", "syscalls"):
            raise ValueError(f"http_hooks = {self.http_hooks!r}: expected auto, socket or syscalls")

    def listen_addr(self) -> tuple[str, int] | None:
        if not self.listen:
            return None
        host, sep, port = self.listen.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"--listen {self.listen!r}: expected HOST:PORT")
        return host.strip("[]") or "0.0.0.0", int(port)
