"""One typed configuration: defaults < config file (TOML) < command-line flags."""

from __future__ import annotations

import ipaddress
import re
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
    # seconds a client series of one server address stays without new requests (peers come
    # and go with pods: their series must not pile up over months)
    http_peer_series_ttl: float = 600.0
    netlat: bool = False  # network stack latency (a hash update per packet: a deep probe)
    http_breakdown_reasons: bool = False  # blocked time of server requests by reason (a probe
    # on every context switch while on: a deep diagnostic)
    http_breakdown_reclaim: bool = True  # and their time in memory reclaim (vmscan tracepoints:
    # they fire only while reclaiming)
    kernel: bool = True  # fork/mount failures, OOM kills, fatal signals, cgroup limits
    cpu: bool = True  # context switches, off-CPU time, run-queue delay of pod containers
    pressure: bool = True  # PSI, block I/O and memory.high events per container (cgroup files)
    dns: bool = True  # DNS queries of pods (UDP and TCP port 53): latency, rcode, timeouts
    dns_timeout: float = 5.0  # seconds without an answer: the query timed out (glibc's default)
    tls: str = "pods"  # TLS plaintext through uprobes on the TLS libraries of processes in pods
    # and containers (pods), of every process (all), or nowhere (off)
    max_uprobe_files: int = 256  # files (libraries, binaries) with uprobes at once
    uprobe_detach_after: float = 60.0  # seconds after the last process mapping a file is gone
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
    trace_join_hold: float = 2.0  # seconds a span waits for its parents' trace id before the
    # OTLP export sends it (one trace id per tree of the hops this node sees; 0: no wait)
    triggers: list[dict[str, Any]] = field(default_factory=list)  # [[triggers]] rules
    reports_dir: str = "/var/lib/podscope/reports"  # where trigger reports go
    reports_per_hour: int = 6  # trigger reports made at most per hour
    trigger_interval: float = 5.0  # seconds between trigger checks (each is an overview pass)
    baseline_interval: float = 10.0  # seconds per latency baseline interval (idle / load)
    web_hosts: list[str] = field(default_factory=list)  # Host names the web server answers to
    # (besides addresses, localhost and the node's name: others get 421, against DNS rebinding)
    web_tls_cert: str = ""  # PEM certificate (chain): serve HTTPS
    web_tls_key: str = ""  # its key (if not in the certificate file)
    web_client_ca: str = ""  # PEM CA: clients must present a certificate it signed
    web_bearer_token_file: str = ""  # every path but /healthz needs "Authorization: Bearer <it>"
    rules: list[Any] = field(default_factory=list, init=False)  # triggers.Rule, parsed

    @classmethod
    def load(cls, path: str | None, overrides: dict[str, Any]) -> Config:
        """The file's settings, then the flags' (`overrides`: setting -> value, None = not
        given). Every value is checked and converted here, before anything loads: a bad one is
        a ValueError whose message names the setting (or flag) and what it accepts."""
        data: dict[str, Any] = {}
        if path:
            try:
                with open(path, "rb") as f:
                    raw = tomllib.load(f)
            except (OSError, tomllib.TOMLDecodeError) as e:
                raise ValueError(f"config file {path}: {e}") from None
            names = {f.name for f in fields(cls) if f.init}
            unknown = set(raw) - names
            if unknown:
                raise ValueError(f"config file {path}: unknown settings {sorted(unknown)}")
            data = {k: _coerce(k, v, f"{k} (in {path})") for k, v in raw.items()}
        for k, v in overrides.items():
            if v is not None and v != []:
                data[k] = _coerce(k, v, FLAGS.get(k, k))
        return cls(**data)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> Config:
        """Settings from a mapping (a ConfigMap's TOML, Helm values), checked like a file's."""
        return cls(**{k: _coerce(k, v, f"{k} (in {where})") for k, v in data.items()})

    def __post_init__(self) -> None:
        from .triggers import Rule

        self.rules = [Rule.parse(t) for t in self.triggers]  # errors name the rule
        self.listen_addr()  # a bad address is an error now, not after loading

    def listen_addr(self) -> tuple[str, int] | None:
        if not self.listen:
            return None
        return parse_listen(self.listen, FLAGS["listen"])


# Where a setting comes from on the command line (error messages name what the user typed).
FLAGS = {"listen": "--listen", "duration": "--duration", "exports": "--export",
         "log_level": "--log-level", "http_capture_headers": "--http-headers",
         "node_name": "--node-name", "pushgateway": "--pushgateway", "otlp": "--otlp",
         "push_interval": "--push-interval", "kubeconfig": "--kubeconfig"}

_CHOICES = {"log_level": ("debug", "info", "warning", "error"),
            "http_hooks": ("auto", "socket", "syscalls"), "kubernetes": ("auto", "on", "off"),
            "tls": ("pods", "all", "off")}
_INT_MIN = {"export_max_bytes": 0, "export_keep": 0, "http_route_budget": 1,
            "max_uprobe_files": 0,
            "reports_per_hour": 0}
_URLS = ("pushgateway", "otlp")
_ZERO_OFF = ("trace_join_hold",)  # durations where 0 means off
_TRUE = ("true", "on", "yes", "1")
_FALSE = ("false", "off", "no", "0")
_DUR = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"{where} = {value!r}: expected true or false (on/off, yes/no)")


def parse_seconds(value: Any, where: str, zero: bool = False) -> float:
    """A duration in seconds: a number, or a string with a unit (250ms, 5s, 2m, 1h); 0 only
    where it means off (zero=True)."""
    if isinstance(value, bool):
        raise ValueError(f"{where} = {value!r}: expected a duration (5, 5s, 250ms, 2m)")
    if isinstance(value, int | float):
        secs = float(value)
    elif isinstance(value, str) and (m := _DUR.match(value)):
        secs = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError(f"{where} = {value!r}: expected a duration (5, 5s, 250ms, 2m)")
    if zero and secs == 0:
        return 0.0
    if not secs > 0 or secs != secs or secs == float("inf"):
        raise ValueError(f"{where} = {value!r}: must be more than 0 seconds")
    return secs


def parse_listen(value: str, where: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{where} {value!r}: expected HOST:PORT with a port from 1 to 65535")
    host = host.strip("[]")
    if host and (re.fullmatch(r"[\d.]+", host) or ":" in host):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{where} {value!r}: {host} is not an IP address") from None
    return host or "0.0.0.0", int(port)


def _coerce(name: str, value: Any, where: str) -> Any:
    """One setting, checked against Config's field type and its own rules."""
    kind = _TYPES.get(name)
    if kind is None:
        raise ValueError(f"{where}: no such setting")
    if kind == "bool":
        return parse_bool(value, where)
    if kind in ("float", "float | None"):
        return parse_seconds(value, where, zero=name in _ZERO_OFF)
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, str) and value.strip().isdigit():
                value = int(value)
            else:
                raise ValueError(f"{where} = {value!r}: expected a whole number")
        low = _INT_MIN.get(name, 0)
        if value < low:
            raise ValueError(f"{where} = {value!r}: must be {low} or more")
        return value
    if kind in ("str", "str | None"):
        if not isinstance(value, str):
            raise ValueError(f"{where} = {value!r}: expected a string")
        if name in _CHOICES and value not in _CHOICES[name]:
            raise ValueError(f"{where} = {value!r}: expected one of {', '.join(_CHOICES[name])}")
        if name in _URLS and value and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"{where} = {value!r}: expected an http:// or https:// URL")
        if name == "listen":
            parse_listen(value, where)
        return value
    if kind == "list[str]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{where} = {value!r}: expected a list of strings, like "
                             f'["{"jsonl:/var/log/podscope.jsonl" if name == "exports" else "x"}"]')
        if name == "exports":
            for v in value:
                kind_, _, target = v.partition(":")
                if kind_ not in ("jsonl", "csv") or not target:
                    raise ValueError(f"{where} {v!r}: expected jsonl:PATH or csv:PATH")
        return value
    if kind == "list[dict[str, Any]]":
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise ValueError(f"{where}: expected [[{name}]] tables")
        return value
    return value


_TYPES = {f.name: str(f.type) for f in fields(Config) if f.init}
