"""Real container runtimes for tests, from Debian's packages: podman (runc, cgroupfs manager) and
containerd driven by ctr (runc), each with a private root under one directory, and a local image
built from busybox-static (no registry is reachable here). Whatever they make — containers,
pods, cgroup directories, the image store, the daemons — goes with close(), also when a test
fails. Daemons are stopped by PID."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

IMAGE = "localhost/podscope-busybox:test"
APPLETS = ("sh", "wget", "httpd", "seq", "sleep", "cat", "echo", "true", "ls")

# podman's defaults exceed these VMs' hard limits (nofile, nproc); no systemd: cgroupfs
CONTAINERS_CONF = """[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{base}/events.log"
"""


def image_tar(dest: Path, extra: dict[str, Path] | None = None) -> Path:
    """A root file system tar: the static busybox, its applets, and /www/ok for its httpd;
    `extra`: more files (path in the image -> file here)."""
    root = dest / "rootfs"
    (root / "bin").mkdir(parents=True, exist_ok=True)
    (root / "www").mkdir(exist_ok=True)
    (root / "tmp").mkdir(exist_ok=True)
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    for a in APPLETS:
        link = root / "bin" / a
        if not link.exists():
            link.symlink_to("busybox")
    (root / "www" / "ok").write_text("ok\n")
    for inside, src in (extra or {}).items():
        target = root / inside.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    tar = dest / "rootfs.tar"
    with tarfile.open(tar, "w") as t:
        t.add(root, arcname=".")
    return tar


def _cgroup_dirs() -> list[str]:
    """Where a runtime makes directories: every cgroup mount, v2 and each v1 hierarchy."""
    roots = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split(" ", 1)[0] in ("cgroup", "cgroup2"):
                roots.append(left.split()[4])
    return roots


def _remove_tree(d: str) -> None:
    """A cgroup directory and its subdirectories, deepest first (empty ones only)."""
    if not os.path.isdir(d):
        return
    for dirpath, _dirs, _files in sorted(os.walk(d), key=lambda w: len(w[0]), reverse=True):
        try:
            os.rmdir(dirpath)
        except OSError:
            pass


def _netavark_rules() -> list[tuple[str, str, str]]:
    """(command, table, line) of every iptables-save line that names netavark's chains."""
    out = []
    for cmd in ("iptables", "ip6tables"):
        try:
            dump = subprocess.run([f"{cmd}-save"], capture_output=True, text=True,
                                  check=False).stdout
        except FileNotFoundError:
            continue
        table = ""
        for line in dump.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif "NETAVARK" in line and line.startswith((":", "-A ")):
                out.append((cmd, table, line))
    return out


def _remove_netavark_rules() -> None:
    """The jumps into netavark's chains, then the chains (podman's bridge networks make them)."""
    rules = _netavark_rules()
    for cmd, table, line in rules:
        if line.startswith("-A ") and not line.split()[1].startswith("NETAVARK"):
            subprocess.run([cmd, "-t", table, "-D", *shlex.split(line[3:])], check=False,
                           capture_output=True)
    for flag in ("-F", "-X"):
        for cmd, table, line in rules:
            if line.startswith(":"):
                subprocess.run([cmd, "-t", table, flag, line[1:].split()[0]], check=False,
                               capture_output=True)


class Podman:
    """podman with its own storage (vfs), run directory and configuration, in a new directory
    below /tmp (podman wants its run directory's path short)."""

    def __init__(self, extra: dict[str, Path] | None = None) -> None:
        base = self.base = Path(tempfile.mkdtemp(prefix="ps-pm-", dir="/tmp"))
        (base / "containers.conf").write_text(CONTAINERS_CONF.format(base=base))
        self.env = dict(os.environ, CONTAINERS_CONF=str(base / "containers.conf"))
        self.cmd = ["podman", "--root", str(base / "storage"), "--runroot", str(base / "run"),
                    "--storage-driver", "vfs", "--tmpdir", str(base / "tmp")]
        self._service: subprocess.Popen[bytes] | None = None
        self._had_parent = {r: os.path.isdir(os.path.join(r, "libpod_parent"))
                            for r in _cgroup_dirs()}
        self._had_firewall = bool(_netavark_rules())
        self.run("import", str(image_tar(base, extra)), IMAGE)

    def run(self, *args: str, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([*self.cmd, *args], capture_output=True, text=True, env=self.env,
                           timeout=timeout)
        if check and r.returncode:
            raise RuntimeError(f"podman {' '.join(args)}: {r.stderr.strip()}")
        return r

    def container(self, name: str, *cmd: str, network: str = "none", pod: str = "",
                  detach: bool = False, cidfile: Path | None = None) -> str:
        """Run a container; detached: its id, else its output (removed when it ends; cidfile:
        where podman writes its id)."""
        args = ["run", "--name", name]
        args += ["--pod", pod] if pod else ["--network", network]
        args += ["-d"] if detach else ["--rm"]
        if cidfile is not None:
            args += ["--cidfile", str(cidfile)]
        out = self.run(*args, IMAGE, *cmd).stdout.strip()
        return out

    def container_id(self, name: str) -> str:
        return self.run("inspect", "-f", "{{.Id}}", name).stdout.strip()

    def pod(self, name: str) -> str:
        """A pod with its own (loopback-only) network namespace, shared by its containers."""
        return self.run("pod", "create", "--name", name, "--network", "none").stdout.strip()

    def service(self, socket: Path) -> None:
        """podman's Docker-compatible API (and its own) on a unix socket."""
        self._service = subprocess.Popen([*self.cmd, "system", "service", "--time=0",
                                          f"unix://{socket}"], env=self.env,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not socket.exists():
            if time.monotonic() > deadline or self._service.poll() is not None:
                raise RuntimeError("podman system service did not start")
            time.sleep(0.1)

    def close(self) -> None:
        self.run("pod", "rm", "-af", "-t", "0", check=False)
        for _ in range(3):  # a container another joined (--network container:) goes after it
            self.run("rm", "-af", "-t", "0", check=False)
            if not self.run("ps", "-aq", check=False).stdout.strip():
                break
        if self._service is not None:
            self._service.send_signal(signal.SIGTERM)
            try:
                self._service.wait(10)
            except subprocess.TimeoutExpired:
                self._service.kill()
                self._service.wait()
        # the pods' directories stay behind; a container's goes once its last process has
        # (a killed one takes a moment): try for a while
        deadline = time.monotonic() + 5
        while True:
            left = []
            for root, had in self._had_parent.items():
                d = os.path.join(root, "libpod_parent")
                if not os.path.isdir(d):
                    continue
                for e in os.scandir(d) if had else [d]:
                    path = e if isinstance(e, str) else e.path
                    if os.path.isdir(path):
                        _remove_tree(path)
                        if os.path.isdir(path):
                            left.append(path)
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if not self._had_firewall:  # netavark's chains, if a network made them
            _remove_netavark_rules()
        # what podman left mounted below its directory (a container it could not remove)
        with open("/proc/self/mounts") as f:
            mounts = [line.split()[1] for line in f if line.split()[1].startswith(f"{self.base}/")]
        for m in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", m], check=False, capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)


class Containerd:
    """containerd with its own root, state and socket, driven by ctr; containers get the
    cgroup path kubelet would give them and join a network namespace made beforehand."""

    NS = "podscope-test"

    def __init__(self, base: Path, image_archive: Path):
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.sock = base / "containerd.sock"
        cfg = base / "config.toml"
        cfg.write_text(f'version = 2\nroot = "{base}/root"\nstate = "{base}/state"\n'
                       f'[grpc]\n  address = "{self.sock}"\n'
                       f'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n')
        self._daemon = subprocess.Popen(["containerd", "--config", str(cfg)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._cgroups: list[str] = []
        deadline = time.monotonic() + 20
        while not self.sock.exists() or self.ctr("version", check=False).returncode:
            if time.monotonic() > deadline or self._daemon.poll() is not None:
                raise RuntimeError("containerd did not start")
            time.sleep(0.1)
        self.ctr("images", "import", "--snapshotter", "native", str(image_archive))

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(["ctr", "-a", str(self.sock), "-n", self.NS, *args],
                           capture_output=True, text=True, timeout=120)
        if check and r.returncode:
            raise RuntimeError(f"ctr {' '.join(args)}: {r.stderr.strip()}")
        return r

    def run(self, cid: str, cgroup: str, netns: str, *cmd: str) -> None:
        """A detached container: id cid, cgroup path cgroup (below each hierarchy's root), in
        the network namespace /run/netns/<netns>."""
        self._cgroups.append(cgroup)
        self.ctr("run", "-d", "--snapshotter", "native", "--cgroup", cgroup, "--with-ns",
                 f"network:/run/netns/{netns}", IMAGE, cid, *cmd)

    def close(self) -> None:
        for c in self.ctr("tasks", "ls", "-q", check=False).stdout.split():
            self.ctr("tasks", "kill", "-s", "SIGKILL", c, check=False)
        time.sleep(0.2)
        for c in self.ctr("tasks", "ls", "-q", check=False).stdout.split():
            self.ctr("tasks", "delete", "-f", c, check=False)
        for c in self.ctr("containers", "ls", "-q", check=False).stdout.split():
            self.ctr("containers", "delete", c, check=False)
        self._daemon.send_signal(signal.SIGTERM)
        try:
            self._daemon.wait(10)
        except subprocess.TimeoutExpired:
            self._daemon.kill()
            self._daemon.wait()
        for root in _cgroup_dirs():
            for cg in self._cgroups:  # the container's directory and the parents made for it
                parts = cg.strip("/").split("/")
                for i in range(len(parts), 0, -1):
                    d = os.path.join(root, *parts[:i])
                    if os.path.isdir(d) and not any(e.is_dir() for e in os.scandir(d)):
                        try:
                            os.rmdir(d)
                        except OSError:
                            break
        shutil.rmtree(self.base, ignore_errors=True)
