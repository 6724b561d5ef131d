"""The uprobe manager against a fake /proc (maps, stat, cgroup, root) and a fake BPF object:
which processes are looked at, one set of probes per file however many processes map it, probes
kept while any process maps the file and removed after uprobe_detach_after, the file limit, pid
reuse. The real attachment is in tests/kernel/test_tls.py."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from podscope.uprobes import elf
from podscope.uprobes.manager import UprobeManager

POD_CGROUP = "/kubepods.slice/kubepods-pod1b2c3d4e_0000_4000_8000_000000000001.slice/cri-containerd-" \
    + "ab" * 32 + ".scope"


class FakeLink:
    def __init__(self, where: str) -> None:
        self.where = where
        self.alive = True
        self.pid = -1

    def destroy(self) -> None:
        self.alive = False


class FakeProgram:
    def __init__(self, obj: FakeObj, name: str) -> None:
        self.obj, self.name = obj, name

    def attach_uprobe(self, binary: str, func: str | None = None, offset: int = 0,
                      pid: int = -1, retprobe: bool = False) -> FakeLink:
        link = FakeLink(f"{binary}:{func}+{offset}:{self.name}")
        link.pid = pid
        self.obj.links.append(link)
        return link


class FakeMap:
    def __init__(self) -> None:
        self.items: dict[int, object] = {}

    def update(self, key: Any, value: object) -> None:
        self.items[key.value] = value

    def delete(self, key: Any) -> None:
        self.items.pop(key.value, None)


class FakeObj:
    def __init__(self) -> None:
        self.links: list[FakeLink] = []
        self.maps: dict[str, FakeMap] = {}

    def program(self, name: str) -> FakeProgram:
        return FakeProgram(self, name)

    def map(self, name: str) -> FakeMap:
        return self.maps.setdefault(name, FakeMap())

    def struct(self, name: str) -> type:
        return type(name, (), {})


class FakeProc:
    """/proc/PID/{maps,stat,cgroup,root} for made-up processes; files in a fake root."""

    def __init__(self, base: Path) -> None:
        self.proc = base / "proc"
        self.root = base / "root"
        self.proc.mkdir()
        (self.root / "lib").mkdir(parents=True)
        for name in ("libssl.so.3", "libc.so.6", "ld.so", "gosrv"):
            (self.root / "lib" / name).write_bytes(name.encode())

    def file(self, name: str) -> Path:
        return self.root / "lib" / name

    def spawn(self, pid: int, libs: list[str], cgroup: str = POD_CGROUP, start: int = 100) -> None:
        d = self.proc / str(pid)
        d.mkdir(exist_ok=True)
        lines = []
        for i, name in enumerate(libs):
            st = os.stat(self.file(name))
            dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}"
            lo = 0x7F0000000000 + i * 0x100000
            lines.append(f"{lo:x}-{lo + 0x1000:x} r-xp 00000000 {dev} {st.st_ino}    "
                         f"/lib/{name}")
        (d / "maps").write_text("\n".join(lines) + "\n")
        (d / "stat").write_text(f"{pid} (x) S " + " ".join(["0"] * 18) + f" {start} 0\n")
        (d / "cgroup").write_text(f"0::{cgroup}\n")
        if not (d / "root").exists():
            (d / "root").symlink_to(self.root)

    def sockets(self, pid: int, established: list[int], listening: list[int] = ()) -> None:
        """The process's socket fds, and its namespace's TCP table (state 01: established)."""
        fd, net = self.proc / str(pid) / "fd", self.proc / str(pid) / "net"
        for d in (fd, net):
            d.mkdir(exist_ok=True)
            for f in d.iterdir():
                f.unlink()
        rows = ["  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt"
                "   uid  timeout inode"]
        for i, (ino, st) in enumerate([(n, "01") for n in established]
                                      + [(n, "0A") for n in listening]):
            (fd / str(3 + i)).symlink_to(f"socket:[{ino}]")
            rows.append(f"   {i}: 0100007F:1F90 0100007F:C350 {st} 00000000:00000000 00:00000000"
                        f" 00000000     0        0 {ino} 1 0000000000000000 20 4 30 10 -1")
        (net / "tcp").write_text("\n".join(rows) + "\n")

    def kill(self, pid: int) -> None:
        d = self.proc / str(pid)
        for f in ("maps", "stat", "cgroup", "root"):
            (d / f).unlink()
        for sub in ("fd", "net"):
            if (d / sub).exists():
                for f in (d / sub).iterdir():
                    f.unlink()
                (d / sub).rmdir()
        d.rmdir()


def inspect(path: str) -> elf.ElfInfo:
    name = os.path.basename(path)
    if name == "libssl.so.3":
        return elf.ElfInfo("openssl", frozenset({"SSL_read", "SSL_write", "SSL_set_fd"}))
    if name == "ld.so":
        return elf.ElfInfo("ld", frozenset({"_dl_debug_state"}))
    if name == "gosrv":
        return elf.ElfInfo("go", frozenset({"crypto/tls.(*Conn).Read"}), h2_probes=(
            ("golang.org/x/net/http2.(*Framer).WriteHeaders", "go_h2_wh"),
            ("google.golang.org/grpc/internal/transport.(*http2Server).operateHeaders",
             "go_grpc_srv_oh")))
    return elf.ElfInfo("", frozenset())


@pytest.fixture
def fake(tmp_path: Path) -> FakeProc:
    return FakeProc(tmp_path)


def manager(fake: FakeProc, **kw: Any) -> tuple[UprobeManager, FakeObj]:
    obj = FakeObj()
    m = UprobeManager(obj, proc=str(fake.proc), inspect=inspect, **kw)  # type: ignore[arg-type]
    m.expire_every = 0.0  # every tick() looks for exited processes
    return m, obj


def test_one_set_of_probes_per_file_kept_while_mapped(fake: FakeProc) -> None:
    fake.spawn(10, ["libc.so.6", "libssl.so.3", "ld.so"])
    fake.spawn(11, ["libc.so.6", "libssl.so.3"])
    m, obj = manager(fake, detach_after=0.0)
    m.scan_all()
    kinds = sorted(t.kind for t in m.targets.values())
    assert kinds == ["ld", "openssl"]
    ssl = next(t for t in m.targets.values() if t.kind == "openssl")
    assert ssl.pids == {10, 11}
    # SSL_read and SSL_write at entry and return, SSL_set_fd at entry: once for both processes
    assert len(ssl.links) == 5 and len(obj.links) == 6
    fake.kill(10)
    m.tick()
    assert ssl.pids == {11} and all(link.alive for link in ssl.links)
    fake.kill(11)
    m.tick()  # gone: unused from now
    m.tick()  # past detach_after (0 s)
    assert not m.targets and not any(link.alive for link in obj.links)


def test_scope_pods_leaves_host_processes_alone(fake: FakeProc) -> None:
    fake.spawn(20, ["libssl.so.3"], cgroup="/system.slice/sshd.service")
    m, obj = manager(fake)
    m.scan_all()
    assert not m.targets and not obj.links
    m_all, obj_all = manager(fake, scope="all")
    m_all.scan_all()
    assert len(m_all.targets) == 1
    with pytest.raises(ValueError, match="uprobe scope 'some'"):
        manager(fake, scope="some")


def test_the_file_limit_is_counted(fake: FakeProc) -> None:
    fake.spawn(30, ["libssl.so.3", "ld.so"])
    m, _ = manager(fake, max_files=1)
    m.scan_all()
    assert len(m.targets) == 1 and m.skipped_files == 1
    errors = {s.labels["reason"]: s.value for fam in m.metrics()
              if fam.name == "podscope_uprobe_errors" for s in fam.samples}
    assert errors["limit"] == 1


def test_a_reused_pid_is_a_new_process(fake: FakeProc) -> None:
    fake.spawn(40, ["libssl.so.3"], start=100)
    m, _ = manager(fake, detach_after=0.0)
    m.scan_all()
    (t,) = m.targets.values()
    # pid 40 exits and a new process (another start time) gets its number, without TLS
    fake.kill(40)
    fake.spawn(40, ["libc.so.6"], start=500)
    m.tick()
    m.tick()
    assert not m.targets and t.pids == set()


def test_an_event_is_looked_at_after_its_delay_and_timed(fake: FakeProc) -> None:
    m, _ = manager(fake, rescan=3600)
    m.scan_all()
    m._last_scan = float("inf")  # no full pass: only the event
    fake.spawn(50, ["libssl.so.3"])
    m.event(50, cgroup_id=1234)
    m.tick()  # within the delay: not yet
    assert not m.targets
    m._due[50] = 0.0
    m.tick()
    assert len(m.targets) == 1
    hist = next(fam for fam in m.metrics() if fam.name == "podscope_uprobe_attach_seconds")
    count = next(s.value for s in hist.samples if s.name.endswith("_count"))
    assert count == 1
    # a host cgroup found out of scope: its next events are dropped before any /proc read
    fake.spawn(51, ["libssl.so.3"], cgroup="/user.slice")
    m.event(51, cgroup_id=99)
    m._due[51] = 0.0
    m.tick()
    assert m._cg_scope[99] is False
    m.event(52, cgroup_id=99)
    assert 52 not in m._due


def test_go_header_probes_only_on_processes_whose_connections_started_unseen(
        fake: FakeProc) -> None:
    """At the agent's start, a Go process holding established connections gets the HTTP/2
    header probes for itself (pid-filtered) until those connections are gone; one with only a
    listener gets none, nor does one started later. A connection met mid-way later asks for
    them while it is open."""
    fake.spawn(20, ["gosrv"])
    fake.sockets(20, established=[555, 556], listening=[500])
    fake.spawn(21, ["gosrv"])
    fake.sockets(21, established=[], listening=[501])
    m, obj = manager(fake)
    m.hint_check_every = 0.0
    m.scan_all()
    assert set(m.hints) == {20}
    assert sorted(link.pid for link in m.hints[20].links) == [20, 20]
    assert m.hints_attached == {"connections_before_start": 1, "met_midway": 0}
    tls = next(t for t in m.targets.values() if t.kind == "go")
    assert tls.pids == {20, 21} and all(link.pid == -1 for link in tls.links)
    fake.sockets(20, established=[556, 600], listening=[500])
    m.tick()
    assert m.hints[20].old == {556}
    fake.sockets(20, established=[600], listening=[500])
    hinted = list(m.hints[20].links)
    m.tick()
    assert not m.hints and not any(link.alive for link in hinted)
    assert all(link.alive for link in tls.links)
    fake.spawn(22, ["gosrv"], start=200)  # after the start: its connections are seen whole
    fake.sockets(22, established=[700])
    m.event(22)
    m._due[22] = 0.0
    m.tick()
    assert 22 in tls.pids and not m.hints
    midway = {21}
    m.midway = lambda: midway
    m.want_hints(1234)  # not a Go process podscope knows: nothing
    m.want_hints(21)
    assert set(m.hints) == {21} and not m.hints[21].old
    assert m.hints_attached == {"connections_before_start": 1, "met_midway": 1}
    m.tick()
    assert set(m.hints) == {21}  # its connection met mid-way is open
    midway.clear()
    m.tick()
    assert not m.hints
    m.want_hints(22)
    fake.kill(22)
    m.tick()
    assert not m.hints and m.state_sizes()["uprobe_hint_processes"] == 0
