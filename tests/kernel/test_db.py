"""Databases and caches against the real servers and clients in test pods (root, real BPF): the
operations counted per name and status on both sides equal the client's own counts."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from podscope.testing.pods import Pod, PodNetwork
from tests.conftest import SLOW, AgentProc, Metrics, python_cmd

CLIENT_OPS = "db_client_operation_duration_seconds_count"
SERVER_OPS = "podscope_db_server_operation_duration_seconds_count"


def wait_metrics(agent: AgentProc, ok: Callable[[Metrics], bool], timeout: float = 10.0) -> Metrics:
    deadline = time.monotonic() + timeout * SLOW
    while True:
        m = agent.metrics()
        if ok(m) or time.monotonic() > deadline:
            return m
        time.sleep(0.3)


def ops(m: Metrics, name: str, **labels: str) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for s in m.samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            k = (s.labels["db_operation_name"], s.labels["db_response_status_code"])
            out[k] = out.get(k, 0) + int(s.value)
    return out


def both_sides(agent: AgentProc, client: Pod, server: Pod, want: dict[tuple[str, str], int],
               system: str, port: int) -> Metrics:
    """Waits until the client pod and the server pod have counted at least `want` ((operation,
    status) -> n), then checks that they counted exactly that (the client's series naming the
    server's address and port) and that nothing went unparsed."""
    def complete(m: Metrics) -> bool:
        return all(ops(m, name, k8s_pod_uid=pod.uid).get(k, 0) >= v
                   for name, pod in ((CLIENT_OPS, client), (SERVER_OPS, server))
                   for k, v in want.items())

    m = wait_metrics(agent, complete)
    for name, pod, extra in ((CLIENT_OPS, client, {"server_address": server.ip,
                                                   "server_port": str(port)}),
                             (SERVER_OPS, server, {})):
        got = ops(m, name, k8s_pod_uid=pod.uid, db_system_name=system, **extra)
        assert got == want, (name, got)
    assert m.value("podscope_db_unparsed_total") == 0, m.series("podscope_db_unparsed_total")
    return m


class Shell:
    """An interactive client (psql, mariadb) in a pod, fed a line at a time."""

    def __init__(self, pod: Pod, argv: list[str]) -> None:
        self.proc = pod.popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout

    def ask(self, sql: str) -> str:
        """The first line of the answer."""
        self.stdin.write(sql + "\n")
        self.stdin.flush()
        return self.stdout.readline().strip()

    def close(self) -> None:
        self.stdin.close()
        self.proc.wait(10)


def start_redis(pod: Pod, tmp: Path, port: int = 6379) -> subprocess.Popen[str]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is missing: make installs it (apt-get install redis-server)")
    p = pod.popen(["redis-server", "--port", str(port), "--bind", "0.0.0.0", "--save", "",
                   "--appendonly", "no", "--protected-mode", "no", "--dir", str(tmp)],
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 10
    while pod.run(["redis-cli", "-p", str(port), "ping"], check=False).stdout.strip() != "PONG":
        if time.monotonic() > deadline:
            raise RuntimeError("redis-server did not come up")
        time.sleep(0.1)
    return p


def redis_cli(client: Pod, server: Pod, *args: str) -> str:
    return client.run(["redis-cli", "-h", server.ip, *args]).stdout.strip()


def commandstats(pod: Pod) -> dict[str, int]:
    """The server's own count of calls per command (INFO commandstats), asked from its pod."""
    out = pod.run(["redis-cli", "INFO", "commandstats"]).stdout
    calls = {}
    for line in out.splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line[8:].partition(":")
            calls[name.upper()] = int(rest.split(",")[0].removeprefix("calls="))
    return calls


@pytest.mark.parametrize("pipeline", [1, 16])
def test_redis_benchmark_counts_per_command_on_both_sides(pods: PodNetwork, tmp_path: Path,
                                                          pipeline: int) -> None:
    """redis-benchmark -n 2311 per command (SET, GET, INCR, LPUSH), pipelined -P 16 or not:
    each command counted in the client pod and in the server pod as many times as the server's
    own INFO commandstats says (with -P 16 the benchmark sends whole pipelines: 2320)."""
    server = pods.pod("redis")
    client = pods.pod("client")
    start_redis(server, tmp_path)
    agent = AgentProc([], tmp_path)
    try:
        n = 2311
        out = client.run(["redis-benchmark", "-h", server.ip, "-n", str(n), "-c", "4",
                          "-P", str(pipeline), "-t", "set,get,incr,lpush", "--csv"]).stdout
        done = {line.split(",")[0].strip('"') for line in out.splitlines()[1:] if line}
        assert done == {"SET", "GET", "INCR", "LPUSH"}, out
        calls = commandstats(server)
        want = {(op, ""): calls[op] for op in ("SET", "GET", "INCR", "LPUSH")}
        assert all(n <= v < n + 16 * 4 for v in want.values()), calls

        def complete(m: Metrics) -> bool:
            return all(ops(m, name, k8s_pod_uid=pod.uid, db_system_name="redis").get(k, 0) >= v
                       for name, pod in ((CLIENT_OPS, client), (SERVER_OPS, server))
                       for k, v in want.items()) and bool(ops(m, CLIENT_OPS, k8s_pod_uid=server.uid))

        m = wait_metrics(agent, complete)
        got_c = ops(m, CLIENT_OPS, k8s_pod_uid=client.uid, db_system_name="redis",
                    server_address=server.ip, server_port="6379")
        got_s = ops(m, SERVER_OPS, k8s_pod_uid=server.uid, db_system_name="redis")
        for k, v in want.items():
            assert got_c.get(k) == v, (k, got_c)
            assert got_s.get(k) == v, (k, got_s)
        # redis-benchmark's own set-up (CONFIG GET) is counted too, and nothing unpaired
        assert m.value("podscope_db_unparsed_total") == 0
        # the redis pod's own client: the test's INFO commandstats, over its loopback
        assert ops(m, CLIENT_OPS, k8s_pod_uid=server.uid) == {("INFO", ""): 1}
    finally:
        agent.stop()


def test_redis_errors_by_prefix_and_multi_exec(pods: PodNetwork, tmp_path: Path) -> None:
    server = pods.pod("redis")
    client = pods.pod("client")
    start_redis(server, tmp_path)
    agent = AgentProc([], tmp_path)
    try:
        assert redis_cli(client, server, "SET", "s", "x") == "OK"
        for _ in range(3):
            assert "WRONGTYPE" in redis_cli(client, server, "LPUSH", "s", "y")
        assert "ERR" in redis_cli(client, server, "NOPE")
        txn = client.run(["redis-cli", "-h", server.ip], input="MULTI\nSET a 1\nINCR a\nEXEC\n",
                         text=True).stdout
        assert txn.split() == ["OK", "QUEUED", "QUEUED", "OK", "2"], txn
        want = {("SET", ""): 2, ("LPUSH", "WRONGTYPE"): 3, ("NOPE", "ERR"): 1, ("MULTI", ""): 1,
                ("INCR", ""): 1, ("EXEC", ""): 1}

        def complete(m: Metrics) -> bool:
            got = ops(m, CLIENT_OPS, k8s_pod_uid=client.uid)
            return all(got.get(k, 0) >= v for k, v in want.items())

        m = wait_metrics(agent, complete)
        for name, pod in ((CLIENT_OPS, client), (SERVER_OPS, server)):
            got = ops(m, name, k8s_pod_uid=pod.uid, db_system_name="redis")
            # redis-cli asks for COMMAND DOCS when it starts interactively: only ours are checked
            assert {k: got.get(k) for k in want} == want, (name, got)
        assert m.value("podscope_db_unparsed_total") == 0, m.series("podscope_db_unparsed_total")
    finally:
        agent.stop()


def start_memcached(pod: Pod, port: int = 11211) -> subprocess.Popen[str]:
    if shutil.which("memcached") is None or shutil.which("memcaslap") is None:
        pytest.fail("memcached or memcaslap is missing: make installs them (apt-get install "
                    "memcached libmemcached-tools)")
    p = pod.popen(["memcached", "-u", "root", "-p", str(port), "-l", "0.0.0.0", "-U", "0"],
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 10
    while pod.run(["memcstat", f"--servers=127.0.0.1:{port}"], check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError("memcached did not come up")
        time.sleep(0.1)
    return p


def test_memcaslap_gets_and_sets_on_both_sides(pods: PodNetwork, tmp_path: Path) -> None:
    """memcaslap's ~2311 operations (9 gets to 1 set): get and set counted in the client pod and
    the server pod as memcaslap and the server's own stats count them."""
    server = pods.pod("memcached")
    client = pods.pod("client")
    start_memcached(server)
    agent = AgentProc([], tmp_path)
    try:
        out = client.run(["memcaslap", "-s", f"{server.ip}:11211", "-x", "2311", "-c", "4",
                          "-T", "1"]).stdout
        mine = {k: int(v) for k, v in (line.split(": ") for line in out.splitlines()
                                       if line.startswith(("cmd_get:", "cmd_set:")))}
        stats = client.run(["memcstat", f"--servers={server.ip}:11211"]).stdout
        theirs = {k.strip(): int(v) for k, v in (line.split(": ") for line in stats.splitlines()
                                                 if line.strip().startswith(("cmd_get", "cmd_set")))}
        # memcaslap splits the 2311 between its 4 connections (577 each: 2308 done)
        assert mine == theirs and 2307 <= mine["cmd_get"] + mine["cmd_set"] <= 2311, (mine, theirs)
        want = {("get", ""): mine["cmd_get"], ("set", ""): mine["cmd_set"]}

        def complete(m: Metrics) -> bool:
            return all(ops(m, name, k8s_pod_uid=pod.uid).get(k, 0) >= v
                       for name, pod in ((CLIENT_OPS, client), (SERVER_OPS, server))
                       for k, v in want.items())

        m = wait_metrics(agent, complete)
        for name, pod, extra in ((CLIENT_OPS, client, {"server_address": server.ip,
                                                       "server_port": "11211"}),
                                 (SERVER_OPS, server, {})):
            got = ops(m, name, k8s_pod_uid=pod.uid, db_system_name="memcached", **extra)
            assert {k: got.get(k) for k in want} == want, (name, got)
            assert set(got) <= {*want, ("stats", ""), ("version", "")}, got  # memcstat's
        assert m.value("podscope_db_unparsed_total") == 0, m.series("podscope_db_unparsed_total")
    finally:
        agent.stop()


PG_BIN = Path("/usr/lib/postgresql/15/bin")


def start_postgres(pod: Pod, client: Pod, datadir: Path) -> subprocess.Popen[str]:
    """A PostgreSQL server of its own in the pod (the postgres user's, trust auth, no SSL)."""
    if not (PG_BIN / "postgres").exists():
        pytest.fail("PostgreSQL 15 is missing: make installs it (apt-get install postgresql)")
    shutil.chown(datadir, "postgres", "postgres")
    subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D",
                    str(datadir / "data"), "-U", "postgres", "-A", "trust", "--no-sync"],
                   check=True, capture_output=True)
    with open(datadir / "data" / "pg_hba.conf", "a") as f:
        f.write("host all all 0.0.0.0/0 trust\n")
    p = pod.popen(["runuser", "-u", "postgres", "--", str(PG_BIN / "postgres"), "-D",
                   str(datadir / "data"), "-c", "listen_addresses=*", "-c", "ssl=off",
                   "-c", f"unix_socket_directories={datadir}", "-c", "fsync=off"],
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 30
    while client.run([str(PG_BIN / "pg_isready"), "-h", pod.ip], check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError("postgres did not come up")
        time.sleep(0.2)
    return p


@pytest.fixture
def pgdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="podscope-pg-", dir="/var/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("mode", ["simple", "prepared"])
def test_pgbench_select_only_and_sql_errors_on_both_sides(pods: PodNetwork, tmp_path: Path,
                                                          pgdir: Path, mode: str) -> None:
    """pgbench -S (one SELECT per transaction), simple protocol or prepared statements (Parse
    once, then Bind/Execute/Sync): as many SELECTs as transactions pgbench reports, plus its two
    set-up queries, in the client pod and the server pod; a syntax error and a unique violation
    by SQLSTATE."""
    server = pods.pod("postgres")
    client = pods.pod("client")
    proc = start_postgres(server, client, pgdir)
    try:
        client.run([str(PG_BIN / "pgbench"), "-i", "-s", "1", "-q", "-h", server.ip, "-U",
                    "postgres", "postgres"])
        agent = AgentProc([], tmp_path)
        try:
            out = client.run([str(PG_BIN / "pgbench"), "-S", "-n", "-M", mode, "-t", "137",
                              "-c", "2", "-h", server.ip, "-U", "postgres", "postgres"]).stdout
            done = re.search(r"number of transactions actually processed: (\d+)/(\d+)", out)
            assert done and done.group(1) == done.group(2) == "274", out
            psql = [str(PG_BIN / "psql"), "-h", server.ip, "-U", "postgres", "-d", "postgres",
                    "-X", "-q", "-c"]
            client.run([*psql, "CREATE TABLE u (id int PRIMARY KEY)"])
            client.run([*psql, "INSERT INTO u VALUES (1)"])
            assert client.run([*psql, "INSERT INTO u VALUES (1)"], check=False).returncode
            assert client.run([*psql, "SELEC 1"], check=False).returncode
            # pgbench's own two queries before it starts (pgbench.c: the scale from
            # pgbench_branches, and how pgbench_accounts is partitioned); with -M prepared,
            # each client prepares the statement once (Parse and Sync: PREPARE)
            want = {("SELECT", ""): 274 + 2, ("CREATE", ""): 1, ("INSERT", ""): 1,
                    ("INSERT", "23505"): 1, ("SELEC", "42601"): 1}
            if mode == "prepared":
                want[("PREPARE", "")] = 2

            m = both_sides(agent, client, server, want, "postgresql", 5432)
            # every SELECT of pgbench -S reads pgbench_accounts, in the database "postgres"
            for name, pod in ((CLIENT_OPS, client), (SERVER_OPS, server)):
                assert ops(m, name, k8s_pod_uid=pod.uid, db_collection_name="pgbench_accounts",
                           db_namespace="postgres") == {("SELECT", ""): 274}, name
        finally:
            agent.stop()
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture
def mydir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="podscope-my-", dir="/var/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def start_mariadb(pod: Pod, client: Pod, datadir: Path) -> subprocess.Popen[str]:
    """A MariaDB server of its own in the pod (the mysql user's; no grant tables: any user logs in
    without a password)."""
    if shutil.which("mariadbd") is None or shutil.which("sysbench") is None:
        pytest.fail("mariadb-server or sysbench is missing: make installs them "
                    "(apt-get install mariadb-server mariadb-client sysbench)")
    shutil.chown(datadir, "mysql", "mysql")
    subprocess.run(["mariadb-install-db", "--user=mysql", f"--datadir={datadir / 'data'}",
                    "--auth-root-authentication-method=normal", "--skip-test-db"],
                   check=True, capture_output=True, cwd=datadir)
    p = pod.popen(["runuser", "-u", "mysql", "--", "mariadbd", "--no-defaults",
                   f"--datadir={datadir / 'data'}", f"--socket={datadir / 'sock'}",
                   f"--pid-file={datadir / 'pid'}", "--port=3306", "--bind-address=0.0.0.0",
                   "--skip-grant-tables", "--skip-log-bin", "--innodb-flush-log-at-trx-commit=0",
                   "--skip-name-resolve"],
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 30
    while client.run(["mariadb", "-h", pod.ip, "-u", "root", "-e", "SELECT 1"],
                     check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError("mariadbd did not come up")
        time.sleep(0.2)
    return p


def mariadb_status(pod: Pod, datadir: Path, name: str) -> int:
    """A server status counter, asked over the server's own Unix socket (not seen as traffic)."""
    out = pod.run(["mariadb", f"--socket={datadir / 'sock'}", "-u", "root", "-N", "-e",
                   f"SHOW GLOBAL STATUS LIKE '{name}'"]).stdout.split()
    return int(out[1])


@pytest.mark.parametrize("ps_mode", ["auto", "disable"])
def test_sysbench_and_sql_errors_on_both_sides(pods: PodNetwork, tmp_path: Path, mydir: Path,
                                               ps_mode: str) -> None:
    """sysbench oltp_read_only against MariaDB, with server-side prepared statements (PREPARE
    once per statement and thread, then COM_STMT_EXECUTE) or as text queries (COM_QUERY): as
    many SELECTs as sysbench's own "read" count, BEGIN and COMMIT once per transaction, PREPARE as
    often as the server's Com_stmt_prepare grew; a duplicate key (1062) and a syntax error
    (1064) by error number; in the client pod and the server pod."""
    server = pods.pod("mariadb")
    client = pods.pod("client")
    proc = start_mariadb(server, client, mydir)
    try:
        client.run(["mariadb", "-h", server.ip, "-u", "root", "-e",
                    "CREATE DATABASE sbtest; CREATE TABLE sbtest.u (id int PRIMARY KEY)"])
        bench = ["sysbench", "oltp_read_only", "--db-driver=mysql", f"--mysql-host={server.ip}",
                 "--mysql-user=root", "--tables=1", "--table-size=500"]
        client.run([*bench, "prepare"])
        prepared0 = mariadb_status(server, mydir, "Com_stmt_prepare")
        agent = AgentProc([], tmp_path)
        try:
            out = client.run([*bench, "--threads=2", "--events=53", "--time=0",
                              f"--db-ps-mode={ps_mode}", "run"]).stdout
            read = re.search(r"read:\s+(\d+)", out)
            trx = re.search(r"transactions:\s+(\d+)", out)
            assert read and trx and trx.group(1) == "53", out
            sql = ["mariadb", "-h", server.ip, "-u", "root", "sbtest", "-e"]
            client.run([*sql, "INSERT INTO u VALUES (1)"])
            assert client.run([*sql, "INSERT INTO u VALUES (1)"], check=False).returncode
            assert client.run([*sql, "SELEC 1"], check=False).returncode
            prepared = mariadb_status(server, mydir, "Com_stmt_prepare") - prepared0
            assert (prepared > 0) == (ps_mode == "auto"), prepared
            want = {("SELECT", ""): int(read.group(1)), ("BEGIN", ""): 53, ("COMMIT", ""): 53,
                    ("INSERT", ""): 1, ("INSERT", "1062"): 1, ("SELEC", "1064"): 1}
            if prepared:
                want[("PREPARE", "")] = prepared

            m = both_sides(agent, client, server, want, "mysql", 3306)
            # sysbench's reads are all of table sbtest1, in the database it logs in to
            for name, pod in ((CLIENT_OPS, client), (SERVER_OPS, server)):
                assert ops(m, name, k8s_pod_uid=pod.uid, db_collection_name="sbtest1",
                           db_namespace="sbtest")[("SELECT", "")] == want[("SELECT", "")], name
        finally:
            agent.stop()
    finally:
        proc.terminate()
        proc.wait(30)


def test_mysql_connection_opened_before_the_agent(pods: PodNetwork, tmp_path: Path,
                                                  mydir: Path) -> None:
    """A client logged in before the agent started: its connection is found at its next text
    query (COM_QUERY as a whole write), and what follows is counted on both sides, result sets
    ending with or without EOF packets (not known without the login)."""
    server = pods.pod("mariadb")
    client = pods.pod("client")
    proc = start_mariadb(server, client, mydir)
    cli = Shell(client, ["mariadb", "-h", server.ip, "-u", "root", "-N", "-B", "-n"])
    try:
        assert cli.ask("SELECT 1;") == "1"
        agent = AgentProc([], tmp_path)
        try:
            for i in range(2, 9):
                assert cli.ask(f"SELECT {i}, 'x';") == f"{i}\tx"
            assert cli.ask("SELECT COUNT(*) FROM information_schema.tables WHERE 1 = 0;") == "0"
            both_sides(agent, client, server, {("SELECT", ""): 8}, "mysql", 3306)
        finally:
            agent.stop()
    finally:
        cli.close()
        proc.terminate()
        proc.wait(30)


def test_records_spans_and_trace_of_database_operations(pods: PodNetwork, tmp_path: Path,
                                                        mydir: Path) -> None:
    """With records on: one db_operation record per Redis command and MySQL statement in the
    JSON lines and CSV files and one OTLP span, on both sides, and `podscope trace db` prints
    them; a statement's literal values are never written (db_query_text has ? instead)."""
    from podscope.testing.otlpreceiver import OtlpReceiver, attrs
    from tests.conftest import PODSCOPE

    redis, db, client = pods.pod("redis"), pods.pod("mariadb"), pods.pod("client")
    start_redis(redis, tmp_path)
    proc = start_mariadb(db, client, mydir)
    sql = ["mariadb", "-h", db.ip, "-u", "root", "-e"]
    client.run([*sql, "CREATE DATABASE shop; CREATE TABLE shop.t (id int, name text)"])
    jsonl, csv_path = tmp_path / "out.jsonl", tmp_path / "out.csv"
    try:
        with OtlpReceiver() as rx:
            agent = AgentProc(["--export", f"jsonl:{jsonl}", "--export", f"csv:{csv_path}",
                               "--otlp", rx.url], tmp_path)
            trace = subprocess.Popen([PODSCOPE, "trace", "db", "--json", "--pod", client.uid,
                                      "--duration", str(int(60 * SLOW))],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                assert trace.stderr is not None and "tracing" in trace.stderr.readline()
                redis_cli(client, redis, "SET", "k", "secret-value")
                redis_cli(client, redis, "GET", "k")
                assert "ERR" in redis_cli(client, redis, "INCR", "k")
                client.run([*sql, "INSERT INTO shop.t VALUES (42, 'bob')"])
                client.run(["mariadb", "-h", db.ip, "-u", "root", "shop", "-e",
                            "SELECT name FROM t WHERE id = 42 AND name = 'bob'"])
                want = {("redis", "SET", ""), ("redis", "GET", ""), ("redis", "INCR", "ERR"),
                        ("mysql", "INSERT", ""), ("mysql", "SELECT", "")}

                def records() -> list[dict]:  # type: ignore[type-arg]
                    if not jsonl.exists():
                        return []
                    return [r for r in map(json.loads, jsonl.read_text().split("\n")[:-1])
                            if r["type"] == "db_operation"]

                def seen(recs: list[dict]) -> set[tuple[str, str, str, str]]:  # type: ignore[type-arg]
                    return {(r["k8s_pod_uid"], r["db_system_name"], r["db_operation_name"],
                             r["db_response_status_code"]) for r in recs}

                both = {(p.uid, *w) for w in want for p in (client, redis if w[0] == "redis"
                                                             else db)}
                both |= {(client.uid, *w) for w in want}
                assert wait_for_true(lambda: both <= seen(records()), 15), seen(records())
                select = [r for r in records() if r["db_operation_name"] == "SELECT"
                          and r["db_collection_name"] == "t"]
                assert {r["role"] for r in select} == {"client", "server"}, select
                for r in select:
                    assert r["db_query_text"] == "SELECT name FROM t WHERE id = ? AND name = ?"
                    assert r["db_namespace"] == "shop" and r["duration_seconds"] > 0
                    assert r["k8s_pod_uid"] in (client.uid, db.uid)
                client_select = [r for r in select if r["role"] == "client"][0]
                assert (client_select["peer_addr"], client_select["peer_port"]) == (db.ip, 3306)
                assert not [r for r in records() if r["db_system_name"] == "redis"
                            and r["db_query_text"] is not None]
            finally:
                trace.terminate()
                traced, trace_err = trace.communicate(timeout=30)
                agent.stop()
            # no value a client sent is in any record
            for path in (jsonl, csv_path.with_name("out.db_operation.csv")):
                text = path.read_text()
                assert "bob" not in text and "secret-value" not in text, path
            csv_rows = csv_path.with_name("out.db_operation.csv").read_text().splitlines()
            assert csv_rows[0].startswith("time,") and len(csv_rows) - 1 == len(records())
            # the trace: the client pod's operations only
            lines = [json.loads(x) for x in traced.splitlines() if x.startswith("{")]
            assert {r["k8s_pod_uid"] for r in lines} == {client.uid}, trace_err[-3000:]
            assert {(r["db_system_name"], r["db_operation_name"]) for r in lines} >= \
                {(s, o) for s, o, _ in want}
            # the spans: "{operation} {collection}", db.* attributes, errors by status
            spans = [(res, s, attrs(s["attributes"])) for res, s in rx.spans()
                     if "db.system.name" in attrs(s["attributes"])]
            kinds = {(res.get("k8s.pod.uid"), s["kind"], s["name"]) for res, s, _a in spans}
            assert (client.uid, "SPAN_KIND_CLIENT", "SELECT t") in kinds, kinds
            assert (db.uid, "SPAN_KIND_SERVER", "SELECT t") in kinds, kinds
            incr = [(s, a) for _r, s, a in spans if a["db.operation.name"] == "INCR"]
            assert incr and all(s["status"]["code"] == "STATUS_CODE_ERROR"
                                and a["db.response.status_code"] == "ERR" for s, a in incr)
            sel = [a for _r, s, a in spans if s["name"] == "SELECT t"]
            assert all(a["db.query.text"] == "SELECT name FROM t WHERE id = ? AND name = ?"
                       and a["db.namespace"] == "shop" for a in sel)
    finally:
        proc.terminate()
        proc.wait(30)


def wait_for_true(ok: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout * SLOW
    while not ok():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.3)
    return True


def test_postgres_connection_opened_before_the_agent(pods: PodNetwork, tmp_path: Path,
                                                     pgdir: Path) -> None:
    """psql connected before the agent started: its connection is found at its next Query, on
    both sides, and its queries and errors are counted from there."""
    server = pods.pod("postgres")
    client = pods.pod("client")
    proc = start_postgres(server, client, pgdir)
    cli = Shell(client, [str(PG_BIN / "psql"), "-h", server.ip, "-U", "postgres", "-d",
                         "postgres", "-X", "-q", "-A", "-t"])
    try:
        assert cli.ask("SELECT 1;") == "1"
        agent = AgentProc([], tmp_path)
        try:
            for i in range(2, 7):
                assert cli.ask(f"SELECT {i};") == str(i)
            assert "syntax error" in cli.ask("SELEC 7;")
            assert cli.stdout.readline().startswith("LINE 1")  # and where: a caret
            assert cli.stdout.readline().strip() == "^"
            assert cli.ask("SELECT 8;") == "8"
            both_sides(agent, client, server, {("SELECT", ""): 6, ("SELEC", "42601"): 1},
                       "postgresql", 5432)
        finally:
            agent.stop()
    finally:
        cli.close()
        proc.terminate()
        proc.wait(30)


def start_nats(pod: Pod, client: Pod) -> subprocess.Popen[str]:
    """nats-server in the pod, its monitoring port on the pod's loopback."""
    if not Path("/usr/sbin/nats-server").exists():
        pytest.fail("nats-server is missing: make installs it (apt-get install nats-server)")
    p = pod.popen(["/usr/sbin/nats-server", "-a", "0.0.0.0", "-p", "4222", "-m", "8222"],
                  stdout=subprocess.DEVNULL,
                  stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 20
    while pod.run(["curl", "-sf", "http://127.0.0.1:8222/healthz"], check=False).returncode:
        if time.monotonic() > deadline:
            raise RuntimeError("nats-server did not come up")
        time.sleep(0.2)
    return p


def nats_varz(pod: Pod) -> dict[str, int]:
    return json.loads(pod.run(["curl", "-sf", "http://127.0.0.1:8222/varz"]).stdout)


def messaging(m: Metrics, name: str, pod: Pod, key: str = "messaging_destination_name",
              **labels: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in m.samples:
        if s.name == name and s.labels.get("k8s_pod_uid") == pod.uid and all(
                s.labels.get(k) == v for k, v in labels.items()):
            out[s.labels[key]] = out.get(s.labels[key], 0) + int(s.value)
    return out


def test_nats_publish_subscribe_and_request_reply_on_every_side(pods: PodNetwork,
                                                                 tmp_path: Path) -> None:
    """nats-py clients through nats-server: the publisher's messages per subject and its
    requests (with their round trips) as the client counted them, the worker's deliveries as it
    counted them, and what the broker pod received and delivered as its own /varz says."""
    server, client, worker = pods.pod("nats"), pods.pod("client"), pods.pod("worker")
    proc = start_nats(server, client)
    url = f"nats://{server.ip}:4222"
    agent = AgentProc([], tmp_path)
    w = worker.popen(python_cmd("nats_client.py", "worker", url), stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE, text=True)
    try:
        assert w.stdout is not None and w.stdin is not None
        assert w.stdout.readline().strip() == "ready"
        varz0 = nats_varz(server)
        out = json.loads(client.run(python_cmd("nats_client.py", "client", url, json.dumps(
            {"orders.new": 23, "orders.paid": 7, "requests": 11}))).stdout)
        assert out["replies"] == 11 and out["published"] == {"orders.new": 23, "orders.paid": 7}
        w.stdin.write("done\n")
        w.stdin.flush()
        got = json.loads(w.stdout.readline())
        assert got == {"orders.new": 23, "orders.paid": 7, "svc.echo": 11}, got
        varz = nats_varz(server)
        received = varz["in_msgs"] - varz0["in_msgs"]
        delivered = varz["out_msgs"] - varz0["out_msgs"]
        assert received == 23 + 7 + 11 + 11 and delivered == received  # one subscriber each

        want_sent = {client.uid: {"orders.new": 23, "orders.paid": 7, "svc.echo": 11},
                     worker.uid: {"_INBOX": 11}}
        want_consumed = {client.uid: {"_INBOX": 11}, worker.uid: got}

        def complete(m: Metrics) -> bool:
            return all(messaging(m, "messaging_client_sent_messages_total", p) == want_sent[p.uid]
                       and messaging(m, "messaging_client_consumed_messages_total", p)
                       == want_consumed[p.uid] for p in (client, worker)) and \
                sum(messaging(m, "podscope_messaging_server_messages_total", server,
                              "direction").values()) == received + delivered

        m = wait_metrics(agent, complete, timeout=15)
        for p in (client, worker):
            assert messaging(m, "messaging_client_sent_messages_total", p,
                             messaging_system="nats", server_address=server.ip,
                             server_port="4222") == want_sent[p.uid]
            assert messaging(m, "messaging_client_consumed_messages_total", p) == \
                want_consumed[p.uid]
        assert messaging(m, "podscope_messaging_server_messages_total", server, "direction") == \
            {"received": received, "delivered": delivered}
        # the requests' round trips, in the client pod only
        assert messaging(m, "messaging_client_operation_duration_seconds_count", client,
                         messaging_operation_name="request") == {"svc.echo": 11}
        assert m.value("messaging_client_operation_duration_seconds_sum",
                       k8s_pod_uid=client.uid) > 0
        assert not messaging(m, "messaging_client_operation_duration_seconds_count", worker)
        assert m.value("podscope_db_unparsed_total") == 0, m.series("podscope_db_unparsed_total")
    finally:
        w.kill()
        w.wait(10)
        agent.stop()
        proc.terminate()
        proc.wait(30)
