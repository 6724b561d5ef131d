"""HTTPS through uprobes on TLS libraries, against real servers and clients that count their own
requests (root, real BPF): nginx with OpenSSL (HTTP/1.1 and HTTP/2 by ALPN) under ab, curl and
h2load; Node.js (OpenSSL linked into the node binary, memory BIOs) as server and client; Python's
ssl module; a client with OpenSSL linked in, started after the agent."""

from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from podscope.testing.gobuild import build_go
from podscope.testing.pods import Pod, PodNetwork
from podscope.testing.servers import make_certificate, start_nginx
from tests.conftest import FIXTURES, PODSCOPE, SLOW, AgentProc, Metrics, python_cmd
from tests.kernel.test_http import CLIENT_HIST, SERVER_HIST, by_method_status

NODE = shutil.which("node")


def parse_errors(m: Metrics) -> float:
    return m.value("podscope_http_parse_errors_total")


def wait_metrics(agent: AgentProc, ok: object, timeout: float = 10.0) -> Metrics:
    """The agent's metrics once ok(metrics) holds (or the last ones at the timeout)."""
    deadline = time.monotonic() + timeout * SLOW
    while True:
        m = agent.metrics()
        if ok(m) or time.monotonic() > deadline:  # type: ignore[operator]
            return m
        time.sleep(0.3)


def h2load_done(out: str) -> int:
    got = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded", out)
    assert got, out
    assert got.group(1) == got.group(2) == got.group(3), out
    return int(got.group(3))


def hooks_args(tmp_path: Path, hooks: str) -> list[str]:
    cfg = tmp_path / "hooks.toml"
    cfg.write_text(f'http_hooks = "{hooks}"\n')
    return ["--config", str(cfg)]


@pytest.mark.parametrize("hooks", ["auto", "syscalls"])
def test_nginx_over_tls_with_ab_curl_and_h2load_exact_counts(pods: PodNetwork, tmp_path: Path,
                                                              hooks: str) -> None:
    server = pods.pod("server")
    client = pods.pod("client", driver="cgroupfs")
    start_nginx(server, "443 ssl http2", tls=make_certificate(tmp_path))
    agent = AgentProc(hooks_args(tmp_path, hooks), tmp_path)
    try:
        url = f"https://{server.ip}"
        out = client.run(["ab", "-n", "97", "-c", "3", "-k", f"{url}/ok"]).stdout
        assert re.search(r"Complete requests:\s+97\b", out), out
        assert re.search(r"Failed requests:\s+0\b", out), out
        h2 = h2load_done(client.run(["h2load", "-n", "61", "-c", "2", "-m", "4",
                                     f"{url}/ok"]).stdout)
        statuses: Counter[str] = Counter()
        for version, path, n in (("--http1.1", "/missing", 5), ("--http2", "/ok", 3),
                                 ("--http1.1", "/error", 2)):
            for _ in range(n):
                code = client.run(["curl", "-sk", version, "-o", "/dev/null", "-w",
                                   "%{http_code} %{http_version}", f"{url}{path}"]).stdout
                statuses[code] += 1
        assert statuses == {"404 1.1": 5, "200 2": 3, "500 1.1": 2}, statuses
        v11 = Counter({"GET 200": 97, "GET 404": 5, "GET 500": 2})
        v2 = Counter({"GET 200": h2 + 3})

        def complete(m: Metrics) -> bool:
            return all(sum(by_method_status(m, hist, k8s_pod_uid=pod.uid).values()) >=
                       sum(v11.values()) + sum(v2.values())
                       for hist, pod in ((SERVER_HIST, server), (CLIENT_HIST, client)))

        m = wait_metrics(agent, complete)
        for side, hist, pod in (("server", SERVER_HIST, server), ("client", CLIENT_HIST, client)):
            for version, truth in (("1.1", v11), ("2", v2)):
                got = by_method_status(m, hist, k8s_pod_uid=pod.uid, url_scheme="https",
                                       network_protocol_version=version)
                assert got == truth, (side, version, got)
            # the ciphertext was not taken for (or counted as) plaintext HTTP
            assert not by_method_status(m, hist, k8s_pod_uid=pod.uid, url_scheme="http")
        assert parse_errors(m) == 0
        assert m.value("podscope_tls_calls_total", outcome="unbound") == 0
        assert m.value("podscope_uprobe_files", kind="openssl") >= 1
        for src in ("http_records", "http_stream"):
            assert m.value("podscope_events_lost_total", source=src) == 0
    finally:
        agent.stop()


@pytest.mark.parametrize("hooks", ["auto", "syscalls"])
def test_node_https_server_and_clients_node_and_python_ssl(pods: PodNetwork, tmp_path: Path,
                                                           hooks: str) -> None:
    """node links OpenSSL into its own binary and feeds it through memory BIOs from its event
    loop (no socket call inside SSL_read/SSL_write): the socket is found from the event loop's
    own reads and writes."""
    assert NODE, "node not found: make test installs it (Debian package nodejs)"
    server = pods.pod("server")
    client = pods.pod("client")
    cert, key = make_certificate(tmp_path)
    p = server.popen([NODE, str(FIXTURES / "https_server.js"), "8443", str(cert), str(key)],
                     stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "listening"
    agent = AgentProc(hooks_args(tmp_path, hooks), tmp_path)
    try:
        node_truth = Counter(json.loads(client.run(
            [NODE, str(FIXTURES / "https_client.js"), server.ip, "8443", "41", "3"]).stdout))
        assert sum(node_truth.values()) == 41
        # libssl.so is probed from the moment a process of a pod first maps it; a process that
        # makes its TLS calls within milliseconds of loading a library never seen before would
        # race the probes (measured: podscope_uprobe_attach_seconds). One such process first:
        client.run(["python3", "-c", "import ssl, time; time.sleep(1.0)"])
        plan = [["GET", "/py/1", 13], ["POST", "/py/upload", 4, 20000], ["GET", "/bad/py", 3]]
        py_truth = Counter(json.loads(client.run(
            python_cmd("http_client.py", server.ip, 8443, json.dumps(plan), "tls")).stdout))
        assert py_truth.pop("_connections") == 1
        total = node_truth + py_truth

        def complete(m: Metrics) -> bool:
            return all(sum(by_method_status(m, hist, k8s_pod_uid=pod.uid).values()) >=
                       sum(total.values())
                       for hist, pod in ((SERVER_HIST, server), (CLIENT_HIST, client)))

        m = wait_metrics(agent, complete)
        assert by_method_status(m, SERVER_HIST, k8s_pod_uid=server.uid,
                                url_scheme="https") == total
        assert by_method_status(m, CLIENT_HIST, k8s_pod_uid=client.uid, url_scheme="https",
                                server_port="8443") == total
        assert not by_method_status(m, SERVER_HIST, url_scheme="http", k8s_pod_uid=server.uid)
        assert parse_errors(m) == 0
        files = {s["path"] for s in m.series("podscope_uprobe_file_processes", kind="openssl")}
        assert NODE in files or str(Path(NODE).resolve()) in files, files
    finally:
        agent.stop()
        p.terminate()
        p.wait()


def test_tls_connection_opened_before_the_agent_started(pods: PodNetwork,
                                                        tmp_path: Path) -> None:
    """The socket of a TLS connection set up before the agent is learned from the syscall the
    library makes inside SSL_read/SSL_write: every request after the start is whole."""
    server = pods.pod("server")
    client = pods.pod("client")
    start_nginx(server, "443 ssl", tls=make_certificate(tmp_path))
    script = (
        "import http.client, ssl, sys\n"
        "ctx = ssl.create_default_context(); ctx.check_hostname = False\n"
        "ctx.verify_mode = ssl.CERT_NONE\n"
        f"c = http.client.HTTPSConnection('{server.ip}', 443, context=ctx, timeout=30)\n"
        "def go(n, path):\n"
        "    for _ in range(n):\n"
        "        c.request('GET', path); r = c.getresponse(); r.read()\n"
        "go(3, '/ok'); print('ready', flush=True); sys.stdin.readline()\n"
        "go(17, '/ok'); go(4, '/missing'); print('done', flush=True)\n")
    p = client.popen(["python3", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                     text=True)
    assert p.stdin is not None and p.stdout is not None
    try:
        assert p.stdout.readline().strip() == "ready"
        agent = AgentProc([], tmp_path)
        try:
            p.stdin.write("go\n")
            p.stdin.flush()
            assert p.stdout.readline().strip() == "done"
            truth = Counter({"GET 200": 17, "GET 404": 4})
            m = wait_metrics(agent, lambda m: sum(by_method_status(
                m, CLIENT_HIST, k8s_pod_uid=client.uid).values()) >= 21)
            assert by_method_status(m, CLIENT_HIST, k8s_pod_uid=client.uid,
                                    url_scheme="https") == truth
            assert by_method_status(m, SERVER_HIST, k8s_pod_uid=server.uid,
                                    url_scheme="https") == truth
            assert parse_errors(m) == 0
        finally:
            agent.stop()
    finally:
        p.kill()
        p.wait()


def build_static_client(out: Path, fully_static: bool = False) -> Path:
    """tests/fixtures/tls_client.c with OpenSSL (libssl.a, libcrypto.a) linked into it;
    fully_static: libc too (for an image without one)."""
    link = (["-static", "-lssl", "-lcrypto"] if fully_static else
            ["-Wl,-Bstatic", "-lssl", "-lcrypto", "-Wl,-Bdynamic", "-ldl", "-lpthread"])
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-o", str(out),
                    str(FIXTURES / "tls_client.c"), *link], check=True, capture_output=True)
    nm = subprocess.run(["nm", str(out)], check=True, capture_output=True, text=True).stdout
    assert re.search(r" T SSL_write$", nm, re.M) and "libssl" not in subprocess.run(
        ["ldd", str(out)], capture_output=True, text=True).stdout
    return out


OPENSSL11 = Path(__file__).resolve().parents[2] / "build" / "openssl11"


def openssl11_client(out: Path) -> tuple[Path, Path]:
    """tests/fixtures/tls_client.c linked against OpenSSL 1.1 as a shared library: Debian 11's
    libssl1.1 and libssl-dev (through the kernel matrix's private apt configuration for
    bullseye; the system's sources untouched), unpacked under build/. Returns (client, the
    libssl.so.1.1 it maps)."""
    from tests.matrix.run import bullseye_apt

    lib = OPENSSL11 / "usr" / "lib" / "x86_64-linux-gnu"
    if not (lib / "libssl.so.1.1").exists():
        debs = OPENSSL11 / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", "-q", "libssl1.1", "libssl-dev"], cwd=debs,
                       env=bullseye_apt(), check=True, capture_output=True)
        for deb in sorted(debs.glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(OPENSSL11)], check=True)
    inc = OPENSSL11 / "usr" / "include"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", f"-I{inc}", f"-I{inc}/x86_64-linux-gnu",
                    "-o", str(out), str(FIXTURES / "tls_client.c"), f"-L{lib}",
                    "-l:libssl.so.1.1", "-l:libcrypto.so.1.1", f"-Wl,-rpath,{lib}"],
                   check=True, capture_output=True)
    return out, lib / "libssl.so.1.1"


@pytest.mark.skipif(platform.machine() != "x86_64", reason="Debian 11's amd64 packages")
def test_openssl_1_1_shared_library(pods: PodNetwork, tmp_path: Path) -> None:
    """OpenSSL 1.1 (Debian 11's libssl.so.1.1): the same functions, the same counts."""
    client_bin, libssl11 = openssl11_client(tmp_path / "client11")
    server = pods.pod("server")
    client = pods.pod("client")
    start_nginx(server, "443 ssl", tls=make_certificate(tmp_path))
    agent = AgentProc([], tmp_path)
    try:
        # the library is new to the agent: a first process maps it (and waits), then the test
        client.run([str(client_bin), server.ip, "443", "1", "1500"])
        truth = Counter(json.loads(client.run([str(client_bin), server.ip, "443", "19",
                                               "0"]).stdout))
        sides = ((SERVER_HIST, server), (CLIENT_HIST, client))
        m = wait_metrics(agent, lambda m: all(sum(by_method_status(
            m, hist, k8s_pod_uid=pod.uid).values()) >= 20 for hist, pod in sides))
        assert by_method_status(m, CLIENT_HIST, k8s_pod_uid=client.uid,
                                url_scheme="https") == truth + Counter({"GET 200": 1})
        # exited processes are looked for once a second
        m = wait_metrics(agent, lambda m: m.value("podscope_uprobe_file_processes",
                                                  path=str(libssl11)) == 0)
        assert m.value("podscope_uprobe_file_processes", path=str(libssl11)) == 0
        assert m.series("podscope_uprobe_file_processes", path=str(libssl11), kind="openssl")
    finally:
        agent.stop()


def file_processes(m: Metrics, path: Path) -> list[dict[str, str]]:
    return m.series("podscope_uprobe_file_processes", path=str(path))


def test_static_openssl_client_started_after_the_agent_is_probed_within_two_seconds(
        pods: PodNetwork, tmp_path: Path) -> None:
    """A binary the agent has never seen (built by the test: a new file), with OpenSSL linked in,
    exec'd in a pod after the agent started: probed within the promised 2 s of its exec (it waits
    exactly that long before its first request), every request counted; a copy run outside any
    pod is not probed (scope "pods"); its probes go once no process maps it."""
    server = pods.pod("server")
    client = pods.pod("client")
    start_nginx(server, "443 ssl", tls=make_certificate(tmp_path))
    binary = build_static_client(tmp_path / "tls_client")
    host_copy = tmp_path / "host_tls_client"
    shutil.copy(binary, host_copy)
    cfg = tmp_path / "podscope.toml"
    cfg.write_text('uprobe_detach_after = "1s"\n')
    agent = AgentProc(["--config", str(cfg)], tmp_path)
    try:
        out = client.run([str(binary), server.ip, "443", "23", "2000"]).stdout
        truth = Counter(json.loads(out))
        assert truth == {"GET 200": 23}
        # outside any pod: not probed (its requests are not counted as https either)
        assert json.loads(subprocess.run([str(host_copy), server.ip, "443", "5", "300"],
                                         check=True, capture_output=True, text=True).stdout)
        m = wait_metrics(agent, lambda m: sum(by_method_status(
            m, CLIENT_HIST, k8s_pod_uid=client.uid).values()) >= 23)
        assert by_method_status(m, CLIENT_HIST, k8s_pod_uid=client.uid,
                                url_scheme="https") == truth
        served = by_method_status(m, SERVER_HIST, k8s_pod_uid=server.uid, url_scheme="https")
        assert served == {"GET 200": 23 + 5}  # nginx, in its pod, saw both clients
        attach = "podscope_uprobe_attach_seconds"
        count = m.value(attach + "_count")
        assert count >= 1
        assert m.value(attach + "_bucket", le="2.0") == count  # every one within 2 s
        assert not file_processes(m, host_copy)
        # the client exited: its binary's probes go after uprobe_detach_after (1 s)
        m = wait_metrics(agent, lambda m: not file_processes(m, binary))
        assert not file_processes(m, binary), file_processes(m, binary)
        # nginx still runs: the shared libssl it maps keeps its probes
        libssl = [s for s in m.samples if s.name == "podscope_uprobe_file_processes"
                  and "libssl.so" in s.labels["path"]]
        assert libssl and all(s.value >= 1 for s in libssl), libssl
    finally:
        agent.stop()


def test_tls_off_leaves_tls_alone(pods: PodNetwork, tmp_path: Path) -> None:
    """tls = "off": no uprobes, and the ciphertext on the sockets is still not taken for HTTP."""
    server = pods.pod("server")
    client = pods.pod("client")
    start_nginx(server, "443 ssl", tls=make_certificate(tmp_path))
    cfg = tmp_path / "podscope.toml"
    cfg.write_text('tls = "off"\n')
    agent = AgentProc(["--config", str(cfg)], tmp_path)
    try:
        client.run(["ab", "-n", "31", "-c", "1", "-k", f"https://{server.ip}/ok"])
        time.sleep(1.5)
        m = agent.metrics()
        assert not by_method_status(m, SERVER_HIST, k8s_pod_uid=server.uid)
        assert not m.series("podscope_uprobe_files")
        assert parse_errors(m) == 0
    finally:
        agent.stop()


# --- Go: crypto/tls (uprobes at the entry and every RET), net/http and grpc-go ---

GO_FIXTURES = FIXTURES / "go"


@pytest.fixture(scope="module")
def go_bins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("go")
    return {name: build_go(GO_FIXTURES / f"{name}.go", d / name)
            for name in ("gohttps", "gogrpc")}


def _json_counts(out: str) -> Counter[str]:
    return Counter(json.loads(out.strip().splitlines()[-1]))


def rpc_counts(m: Metrics, name: str, **labels: str) -> Counter[str]:
    out: Counter[str] = Counter()
    for s in m.samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            out[f"{s.labels['rpc_method']} {s.labels['rpc_grpc_status_code']}"] += int(s.value)
    return out


def start_go(pod: Pod, cmd: list[str]) -> subprocess.Popen[str]:
    p = pod.popen(cmd, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "listening", cmd
    return p


def test_go_net_http_over_tls_http1_and_http2_server_and_client(
        pods: PodNetwork, tmp_path: Path, go_bins: dict[str, Path]) -> None:
    server = pods.pod("server")
    client = pods.pod("client")
    cert, key = make_certificate(tmp_path)
    p = start_go(server, [str(go_bins["gohttps"]), "server", "8443", str(cert), str(key)])
    agent = AgentProc([], tmp_path)
    try:
        url = f"https://{server.ip}:8443"
        h1 = _json_counts(client.run([str(go_bins["gohttps"]), "client", url, "43", "3",
                                      "h1"]).stdout)
        h2 = _json_counts(client.run([str(go_bins["gohttps"]), "client", url, "37", "2",
                                      "h2"]).stdout)
        assert sum(h1.values()) == 43 and sum(h2.values()) == 37

        def complete(m: Metrics) -> bool:
            return all(sum(by_method_status(m, hist, k8s_pod_uid=pod.uid).values()) >= 80
                       for hist, pod in ((SERVER_HIST, server), (CLIENT_HIST, client)))

        m = wait_metrics(agent, complete)
        for hist, pod in ((SERVER_HIST, server), (CLIENT_HIST, client)):
            for version, truth in (("1.1", h1), ("2", h2)):
                got = by_method_status(m, hist, k8s_pod_uid=pod.uid, url_scheme="https",
                                       network_protocol_version=version)
                assert got == truth, (hist, version, got)
        assert parse_errors(m) == 0
        assert m.value("podscope_tls_calls_total", outcome="unbound") == 0
        assert m.value("podscope_uprobe_files", kind="go") == 1
    finally:
        agent.stop()
        p.terminate()
        p.wait()


@pytest.mark.parametrize("transport", ["tls", "h2c"])
def test_grpc_go_unary_and_streaming_with_ok_and_error_statuses(
        pods: PodNetwork, tmp_path: Path, go_bins: dict[str, Path], transport: str) -> None:
    server = pods.pod("server")
    client = pods.pod("client")
    cert, key = make_certificate(tmp_path)
    creds = [str(cert), str(key)] if transport == "tls" else []
    p = start_go(server, [str(go_bins["gogrpc"]), "server", "50051", *creds])
    agent = AgentProc([], tmp_path)
    try:
        truth = _json_counts(client.run([str(go_bins["gogrpc"]), "client",
                                         f"{server.ip}:50051", transport, "31", "9"]).stdout)
        assert sum(truth.values()) == 40
        assert {"Check 0", "Check 5", "Check 13", "Watch 0", "Watch 13"} <= set(truth)

        def complete(m: Metrics) -> bool:
            return all(sum(rpc_counts(m, f"rpc_{side}_duration_seconds_count",
                                      k8s_pod_uid=pod.uid).values()) >= 40
                       for side, pod in (("server", server), ("client", client)))

        m = wait_metrics(agent, complete)
        assert rpc_counts(m, "rpc_server_duration_seconds_count",
                          k8s_pod_uid=server.uid) == truth
        assert rpc_counts(m, "rpc_client_duration_seconds_count", k8s_pod_uid=client.uid,
                          server_port="50051") == truth
        assert parse_errors(m) == 0
        assert m.value("podscope_http2_decode_total", outcome="full") >= 80
        # every connection was seen from its start: no process carries the header probes
        assert m.value("podscope_uprobe_hint_processes") == 0
        assert m.value("podscope_uprobe_hint_attachments_total") == 0
    finally:
        agent.stop()
        p.terminate()
        p.wait()


@pytest.mark.parametrize("proto", ["h1", "h2"])
def test_go_https_connection_opened_before_the_agent_started(
        pods: PodNetwork, tmp_path: Path, go_bins: dict[str, Path], proto: str) -> None:
    """HTTP/2: the HPACK state of the connection is unknown to the decoder; the header blocks
    come from net/http's HTTP/2 code before HPACK (outcome "uprobes")."""
    server = pods.pod("server")
    client = pods.pod("client")
    cert, key = make_certificate(tmp_path)
    srv = start_go(server, [str(go_bins["gohttps"]), "server", "8443", str(cert), str(key)])
    p = client.popen([str(go_bins["gohttps"]), "hold", f"https://{server.ip}:8443", proto],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdin is not None and p.stdout is not None
    try:
        assert p.stdout.readline().strip() == "ready"
        agent = AgentProc([], tmp_path)
        try:
            p.stdin.write("go\n")
            p.stdin.flush()
            assert p.stdout.readline().strip() == "done"
            truth = Counter({"GET 200": 17, "GET 404": 4})
            # both sides had a goroutine blocked in (*Conn).Read when the probes came (the
            # server's connection reader, the client's read loop): that Read has no entry,
            # its receiver and buffer are taken from their spill slots at its RET
            m = wait_metrics(agent, lambda m: all(sum(by_method_status(
                m, hist, k8s_pod_uid=pod.uid).values()) >= 21 for hist, pod in (
                    (SERVER_HIST, server), (CLIENT_HIST, client))))
            version = "2" if proto == "h2" else "1.1"
            for hist, pod in ((SERVER_HIST, server), (CLIENT_HIST, client)):
                assert by_method_status(m, hist, k8s_pod_uid=pod.uid, url_scheme="https",
                                        network_protocol_version=version) == truth, hist
            assert parse_errors(m) == 0
            if proto == "h2":
                assert m.value("podscope_http2_decode_total", outcome="uprobes") == 42
                assert m.value("podscope_http2_decode_total", outcome="partial") == 0
        finally:
            agent.stop()
    finally:
        p.kill()
        p.wait()
        srv.terminate()
        srv.wait()


@pytest.mark.parametrize("transport", ["tls", "h2c"])
def test_grpc_connection_opened_before_the_agent_started(
        pods: PodNetwork, tmp_path: Path, go_bins: dict[str, Path], transport: str) -> None:
    """grpc-go's header blocks before HPACK (operateHeaders, loopyWriter.writeHeader): every
    call after the start by service, method and status on both sides, none partial."""
    server = pods.pod("server")
    client = pods.pod("client")
    cert, key = make_certificate(tmp_path)
    creds = [str(cert), str(key)] if transport == "tls" else []
    srv = start_go(server, [str(go_bins["gogrpc"]), "server", "50051", *creds])
    p = client.popen([str(go_bins["gogrpc"]), "hold", f"{server.ip}:50051", transport],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdin is not None and p.stdout is not None
    try:
        assert p.stdout.readline().strip() == "ready"
        agent = AgentProc([], tmp_path)
        try:
            p.stdin.write("go\n")
            p.stdin.flush()
            assert p.stdout.readline().strip() == "done"
            truth = Counter({"Check 0": 11, "Check 5": 2})
            m = wait_metrics(agent, lambda m: all(sum(rpc_counts(
                m, f"rpc_{side}_duration_seconds_count", k8s_pod_uid=pod.uid).values()) >= 13
                for side, pod in (("server", server), ("client", client))))
            for side, pod in (("server", server), ("client", client)):
                assert rpc_counts(m, f"rpc_{side}_duration_seconds_count",
                                  k8s_pod_uid=pod.uid) == truth, side
            assert not by_method_status(m, SERVER_HIST, k8s_pod_uid=server.uid)
            assert m.value("podscope_http2_decode_total", outcome="uprobes") == 26
            assert m.value("podscope_http2_decode_total", outcome="partial") == 0
            # the header probes went on the two processes that held the connection, and go
            # with it (looked for every 5 s; the client closes it after its calls)
            assert m.value("podscope_uprobe_hint_attachments_total",
                           reason="connections_before_start") == 2
            # (under emulation the client's close can reach the HTTP collector after the probes
            # went: its stream, still open there, asks for them once more; no more than that)
            assert m.value("podscope_uprobe_hint_attachments_total", reason="met_midway") <= 2
            p.kill()
            p.wait()
            m = wait_metrics(agent, lambda m: m.value("podscope_uprobe_hint_processes") == 0,
                             timeout=20)
            assert m.value("podscope_uprobe_hint_processes") == 0
        finally:
            agent.stop()
    finally:
        p.kill()
        p.wait()
        srv.terminate()
        srv.wait()


def test_stripped_go_binary_found_by_its_function_table(pods: PodNetwork, tmp_path: Path) -> None:
    """A Go binary built with -ldflags="-s -w" (no symbol table, no DWARF): crypto/tls found in
    .gopclntab and probed by file offset; every request counted on both sides."""
    binary = build_go(GO_FIXTURES / "gohttps.go", tmp_path / "stripped", ldflags="-s -w")
    assert " .symtab " not in subprocess.run(["readelf", "-S", str(binary)], capture_output=True,
                                           text=True, check=True).stdout
    server = pods.pod("server")
    client = pods.pod("client")
    cert, key = make_certificate(tmp_path)
    p = start_go(server, [str(binary), "server", "8443", str(cert), str(key)])
    agent = AgentProc([], tmp_path)
    try:
        truth = _json_counts(client.run([str(binary), "client", f"https://{server.ip}:8443",
                                         "29", "2", "h1"]).stdout)
        sides = ((SERVER_HIST, server), (CLIENT_HIST, client))
        m = wait_metrics(agent, lambda m: all(sum(by_method_status(
            m, hist, k8s_pod_uid=pod.uid).values()) >= 29 for hist, pod in sides))
        for hist, pod in sides:
            assert by_method_status(m, hist, k8s_pod_uid=pod.uid, url_scheme="https") == truth
        assert m.value("podscope_uprobe_files", kind="go") == 1
        assert m.value("podscope_uprobe_errors_total", reason="go_stripped") == 0
    finally:
        agent.stop()
        p.terminate()
        p.wait()


def test_check_tls_lists_per_pod_and_the_file_limit_is_counted(pods: PodNetwork,
                                                                tmp_path: Path) -> None:
    """`podscope check --tls` names, per pod, the processes and the files that would be probed;
    with max_uprobe_files = 2 the third file is not probed, and that is counted."""
    server = pods.pod("server")
    client = pods.pod("client")
    start_nginx(server, "443 ssl", tls=make_certificate(tmp_path))
    out = subprocess.run([PODSCOPE, "check", "--tls", "--json"], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    found = [f for f in json.loads(out) if f["pod_uid"] == server.uid]
    assert found and all(f["kind"] == "openssl" and "libssl.so" in f["path"] and f["probed"]
                         for f in found), found
    text = subprocess.run([PODSCOPE, "check", "--tls"], capture_output=True, text=True,
                          check=True, timeout=60).stdout
    assert f"pod {server.uid}" in text and "nginx" in text
    binary = build_static_client(tmp_path / "tls_client")
    cfg = tmp_path / "podscope.toml"
    cfg.write_text("max_uprobe_files = 2\n")
    agent = AgentProc(["--config", str(cfg)], tmp_path)
    try:
        client.run([str(binary), server.ip, "443", "3", "500"])
        m = wait_metrics(agent, lambda m: m.value("podscope_uprobe_errors_total",
                                                  reason="limit") >= 1)
        assert m.value("podscope_uprobe_errors_total", reason="limit") >= 1
        # nginx's files, found first: libssl, and the dynamic linker (told of library loads)
        assert m.value("podscope_uprobe_files", kind="openssl") == 1
        assert m.value("podscope_uprobe_files", kind="ld") == 1
        assert not file_processes(m, binary)
    finally:
        agent.stop()
