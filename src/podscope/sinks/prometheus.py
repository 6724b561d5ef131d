"""/metrics (read from BPF maps at scrape time), /healthz; read-only HTTP."""

from __future__ import annotations

import asyncio
import gzip
import hmac
import ipaddress
import logging
import re
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

log = logging.getLogger("podscope.http")


class _Adapter(Collector):
    def __init__(self, source: Callable[[], Iterable[Metric]]):
        self.source = source

    def collect(self) -> Iterable[Metric]:
        return self.source()


_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_TYPES = {"counter": "counter", "gauge": "gauge", "histogram": "histogram",
          "summary": "summary", "unknown": "untyped"}


def _value(v: str) -> str:
    if "\\" in v or '"' in v or "\n" in v:
        return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return v


def render(metrics: Iterable[Metric]) -> bytes:
    """The Prometheus text format (0.0.4) of metric families: what prometheus_client's
    generate_latest writes for counters, gauges and histograms, without its per-sample name
    validation and label sorting (a node with 500 pods has ~100k samples: 3 s there, a few
    hundred ms here). Names are checked once per family; label values are escaped."""
    out: list[str] = []
    for m in metrics:
        mtype = _TYPES.get(m.type)
        if mtype is None:
            raise ValueError(f"metric {m.name}: type {m.type} is not rendered")
        mname = m.name + "_total" if m.type == "counter" else m.name
        if not _NAME.match(mname):
            raise ValueError(f"invalid metric name {mname!r}")
        doc = m.documentation.replace("\\", "\\\\").replace("\n", "\\n")
        out.append(f"# HELP {mname} {doc}\n# TYPE {mname} {mtype}\n")
        checked: set[str] = set()
        for smp in m.samples:
            labels = smp.labels
            if smp.name.endswith("_created"):
                continue  # OpenMetrics only
            if labels:
                for k in labels:
                    if k not in checked:
                        if not _NAME.match(k) or ":" in k:
                            raise ValueError(f"metric {mname}: invalid label name {k!r}")
                        checked.add(k)
                inner = ",".join([f'{k}="{_value(v)}"' for k, v in labels.items()])
                out.append(f"{smp.name}{{{inner}}} {floatToGoString(smp.value)}\n")
            else:
                out.append(f"{smp.name} {floatToGoString(smp.value)}\n")
    return "".join(out).encode()


def make_registry(source: Callable[[], Iterable[Metric]]) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Adapter(source))
    return reg


Page = Callable[[], tuple[bytes, str]]  # -> (body, content type)
Files = Callable[[str], tuple[bytes, str] | None]  # path below a prefix -> page, None: 404


Response = tuple[int, str, bytes, dict[str, str]]  # status, content type, body, headers
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 408: "Request Timeout", 421: "Misdirected Request",
            431: "Request Header Fields Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}


class HttpServer:
    """The agent's read-only web server: GET (and HEAD) of /metrics, /healthz and the `pages`
    (the web page and its JSON API), files below `prefixes`; 404 otherwise, 405 for other methods.

    Connections are read by one event loop (asyncio): a client that sends slowly or not at all
    costs a socket until `header_timeout`, never a thread; at most `max_conns` at once (more are
    closed at once, counted). Complete requests run on a fixed pool of `workers` threads. One
    render of /metrics at a time: a scrape that would wait longer than `stale_after` seconds for
    the render in progress gets the last exposition (header X-Podscope-Stale: 1). gzip when the
    client accepts it. A Host that is not an address, localhost or one of `hosts` is refused (421:
    a browser page of another site cannot reach the agent through DNS rebinding). Optional: TLS
    (`tls` context, client certificates if it asks for them) and a bearer token (every path but
    /healthz). close() waits for the requests in flight: they read the collectors' maps."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry,
                 healthy: Callable[[], bool], pages: dict[str, Page] | None = None,
                 prefixes: dict[str, Files] | None = None, workers: int = 8,
                 max_conns: int = 4096, header_timeout: float = 10.0,
                 stale_after: float = 5.0, hosts: Iterable[str] = (),
                 tls: ssl.SSLContext | None = None, bearer_token: str = ""):
        self.registry = registry
        self.healthy = healthy
        self.pages = dict(pages or {})
        self.prefixes = dict(prefixes or {})
        self.max_conns = max_conns
        self.header_timeout = header_timeout
        self.stale_after = stale_after
        self.hosts = {h.lower() for h in hosts} | {"localhost", socket.gethostname().lower()}
        self.tls = tls
        self.token = bearer_token.encode()
        self.open = 0
        self.refused = 0  # connections closed at once: max_conns were open
        self._closing = False
        self._render_lock = threading.Lock()
        self._last = b""
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="http")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self._sock = socket.create_server((host, port), family=family, backlog=1024)
        except (OSError, OverflowError) as e:
            raise OSError(getattr(e, "errno", None) or 22,
                          f"listening on {host}:{port}: {getattr(e, 'strerror', None) or e}") \
                from None
        self.address = self._sock.getsockname()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, name="http", daemon=True)

    # --- the event loop ---
    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._client, sock=self._sock, ssl=self.tls,
                                            limit=16384)
        async with server:
            await self._stop.wait()
        # connections still open (slow clients, responses being written): end them here, while
        # the loop runs, not when their tasks are collected after it closed
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in rest:
            t.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.open >= self.max_conns or self._closing:
            self.refused += 1
            writer.close()
            return
        self.open += 1
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.header_timeout)
                method, path, headers = _parse_head(head)
            except TimeoutError:
                return  # said nothing in time: closed
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            except (asyncio.LimitOverrunError, ValueError) as e:
                code = 431 if isinstance(e, asyncio.LimitOverrunError) else 400
                await self._write(writer, "GET", (code, "text/plain", b"bad request\n", {}))
                return
            if self._closing:
                return
            try:
                resp = await self._loop.run_in_executor(self._pool, self._respond, method, path,
                                                        headers)
            except RuntimeError:  # the pool is shut down: the agent is stopping
                return
            await self._write(writer, method, resp)
        except Exception:  # noqa: BLE001 (a client's doing must never end the server)
            log.debug("http client", exc_info=True)
        finally:
            self.open -= 1
            try:
                writer.close()
            except RuntimeError:  # the loop is gone (the agent is stopping)
                pass

    async def _write(self, writer: asyncio.StreamWriter, method: str, resp: Response) -> None:
        code, ctype, body, headers = resp
        lines = [f"HTTP/1.1 {code} {_REASONS.get(code, 'OK')}", f"Content-Type: {ctype}",
                 f"Content-Length: {len(body)}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        if method != "HEAD":
            writer.write(body)
        try:
            await asyncio.wait_for(writer.drain(), self.header_timeout)
        except (TimeoutError, ConnectionError):
            pass

    # --- requests (on the worker threads) ---
    def _exposition(self) -> tuple[bytes, bool]:
        """(body, stale)"""
        if self._render_lock.acquire(timeout=self.stale_after):
            try:
                self._last = render(self.registry.collect())
                return self._last, False
            finally:
                self._render_lock.release()
        if self._last:
            return self._last, True
        with self._render_lock:  # nothing rendered yet: wait for the first
            return self._last or render(self.registry.collect()), False

    def _respond(self, method: str, target: str, headers: dict[str, str]) -> Response:
        path = target.split("?", 1)[0]
        host = headers.get("host", "").rsplit(":", 1)[0].strip("[]").lower()
        if host and not _is_address(host) and host not in self.hosts:
            return 421, "text/plain", b"unknown host: ask for this agent by its address\n", {}
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"read-only: GET only\n", {"Allow": "GET, HEAD"}
        if self.token and path != "/healthz":
            auth = headers.get("authorization", "")
            if not hmac.compare_digest(auth.encode(), b"Bearer " + self.token):
                return 401, "text/plain", b"unauthorized\n", {"WWW-Authenticate": "Bearer"}
        try:
            if path == "/metrics":
                body, stale = self._exposition()
                return self._maybe_gzip(headers, 200, CONTENT_TYPE_LATEST, body,
                                        {"X-Podscope-Stale": "1"} if stale else {})
            if path == "/healthz":
                ok = self.healthy()
                return (200 if ok else 503), "text/plain", b"ok\n" if ok else b"unhealthy\n", {}
            if path in self.pages:
                body, ctype = self.pages[path]()
                return self._maybe_gzip(headers, 200, ctype, body, {})
            pre = next((p for p in self.prefixes if path.startswith(p)), None)
            got = self.prefixes[pre](path[len(pre):]) if pre is not None else None
            if got:
                return self._maybe_gzip(headers, 200, got[1], got[0], {})
        except Exception as e:  # a scrape or page error must not kill the agent
            log.exception("serving %s failed", path)
            return 500, "text/plain", f"failed: {e}\n".encode(), {}
        return 404, "text/plain", b"not found: try /metrics or /healthz\n", {}

    @staticmethod
    def _maybe_gzip(headers: dict[str, str], code: int, ctype: str, body: bytes,
                    extra: dict[str, str]) -> Response:
        if len(body) > 1024 and "gzip" in headers.get("accept-encoding", ""):
            return code, ctype, gzip.compress(body, compresslevel=1), {
                **extra, "Content-Encoding": "gzip", "Vary": "Accept-Encoding"}
        return code, ctype, body, extra

    def close(self) -> None:
        """Stop serving. Requests already running finish first (they read the collectors'
        maps, which are closed after this); those still queued are dropped."""
        self._closing = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._stop is not None and self.thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(5)
        self._sock.close()


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise ValueError(f"bad request line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise ValueError("bad header line")
        headers[name.strip().lower()] = value.strip()
    return parts[0], parts[1], headers


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False
