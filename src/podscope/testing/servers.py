"""Real servers inside test pods (used by tests and benchmarks)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .pods import Pod

NGINX_CONF = """
worker_processes {workers};
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  server {{
    listen {port} backlog=4096;
{tls}{locations}
  }}
}}
"""
# Tiny fixed responses: the worst case for per-request overhead.
DEFAULT_LOCATIONS = """
    location = /ok {{ return 200 "podscope bench payload 0123456789abcdef\\n"; }}
    location = /missing {{ return 404; }}
    location = /error {{ return 500; }}
    location / {{ return 200 "podscope bench payload 0123456789abcdef\\n"; }}
"""


def make_certificate(directory: Path, name: str = "localhost") -> tuple[Path, Path]:
    """A self-signed certificate and its key (openssl), for TLS servers in tests."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def start_nginx(pod: Pod, port: int | str = 80, workers: int = 1,
                locations: str = DEFAULT_LOCATIONS,
                tls: tuple[Path, Path] | None = None) -> subprocess.Popen[bytes]:
    """nginx in the pod, serving `locations`; returns once it accepts connections. `port` may
    carry listen options ("8080 http2": HTTP/2 over cleartext, prior knowledge; "443 ssl http2":
    TLS with HTTP/2 by ALPN, with `tls` = (certificate, key))."""
    listen = str(port)
    port = int(listen.split()[0])
    tmp = tempfile.mkdtemp(prefix="podscope-nginx-")
    conf = Path(tmp) / "nginx.conf"
    tls_conf = (f"    ssl_certificate {tls[0]};\n    ssl_certificate_key {tls[1]};\n"
                if tls else "")
    conf.write_text(NGINX_CONF.format(tmp=tmp, port=listen, workers=workers, tls=tls_conf,
                                      locations=locations.replace("{{", "{").replace("}}", "}")))
    proc = pod.popen(["nginx", "-e", f"{tmp}/error.log", "-c", str(conf)])
    pod.cleanups.append(lambda: shutil.rmtree(tmp, ignore_errors=True))
    deadline = time.monotonic() + 10
    while pod.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"],
                  check=False).returncode:
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"nginx did not start: {(Path(tmp) / 'error.log').read_text()}")
        time.sleep(0.1)
    return proc


def _wait_http(url: str, proc: subprocess.Popen[bytes], what: str, log: Path,
               timeout: float = 30) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError(f"{what} did not start: {log.read_text()[-2000:]}")
        time.sleep(0.1)


def start_pushgateway(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    """Debian's prometheus-pushgateway on 127.0.0.1:port (its state in workdir); the caller
    stops it by its PID."""
    log = workdir / f"pushgateway-{port}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(["prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{port}",
                                 f"--persistence.file={workdir}/pushgateway.data"],
                                stdout=out, stderr=subprocess.STDOUT)
    _wait_http(f"http://127.0.0.1:{port}/-/ready", proc, "prometheus-pushgateway", log)
    return proc


def start_prometheus(port: int, workdir: Path, config: str) -> subprocess.Popen[bytes]:
    """Debian's prometheus on 127.0.0.1:port with this configuration (YAML), its TSDB in
    workdir; the caller stops it by its PID."""
    (workdir / "prometheus.yml").write_text(config)
    log = workdir / f"prometheus-{port}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(["prometheus", f"--config.file={workdir}/prometheus.yml",
                                 f"--storage.tsdb.path={workdir}/tsdb",
                                 f"--web.listen-address=127.0.0.1:{port}",
                                 "--web.enable-lifecycle"],
                                stdout=out, stderr=subprocess.STDOUT)
    _wait_http(f"http://127.0.0.1:{port}/-/ready", proc, "prometheus", log)
    return proc
