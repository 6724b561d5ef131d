"""The kernel matrix: podscope on Debian's own kernels, booted under qemu with this host's root.

    python -m tests.matrix.run [--kernels 5.10,6.1,6.12,host] [--subset] [--jobs 2] [--doc docs/kernels.md]

For each kernel: fetch Debian's package (`apt-get download`; bullseye's 5.10 through a private
apt configuration in build/kernels, the system's sources untouched), boot it with virtme-ng
(software emulation: nested KVM does not run here), and run inside `podscope check --json` and
the smoke (tests/matrix/test_smoke.py: one agent, real traffic, exact counts); with --subset a
chosen part of the kernel tests too. "host" runs the same on this machine's kernel, without a VM.
Prints the kernel x signal table; --doc writes it (docs/kernels.md). Exit 1 when a smoke or test
failed or a default signal is unavailable on a kernel of the matrix."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build" / "kernels"
VENV_BIN = Path(sys.executable).parent

# the part of the kernel tests run in each VM with --subset (exact counts, no tight timing)
SUBSET = [
    "tests/kernel/test_tcp.py::test_connections_and_bytes_per_pod",
    "tests/kernel/test_dns.py::test_query_count_and_rcode_mix_exact",
    "tests/kernel/test_kernel.py::test_mount_failures_by_errno",
    "tests/kernel/test_http2.py::test_h2load_against_nginx_h2c_exact_count",
    "tests/kernel/test_http_differential.py::test_kernel_path_stream_path_and_parser_agree",
    "tests/kernel/test_tls.py::test_nginx_over_tls_with_ab_curl_and_h2load_exact_counts[auto]",
    "tests/kernel/test_tls.py::test_grpc_connection_opened_before_the_agent_started[tls]",
    "tests/kernel/test_db.py::test_redis_benchmark_counts_per_command_on_both_sides[16]",
    "tests/kernel/test_db.py::test_sysbench_and_sql_errors_on_both_sides[auto]",
    "tests/kernel/test_db.py::test_nats_publish_subscribe_and_request_reply_on_every_side",
    "tests/kernel/test_db.py::test_postgres_connection_opened_before_the_agent",
    # on the guest's own disk (see guest_script): block I/O, reclaim, memory.high (cgroup v2)
    "tests/kernel/test_pressure.py",
    "tests/kernel/test_triggers.py::test_memory_pressure_rule_reports_the_pods_stalls",
    "tests/kernel/test_traces.py::test_three_tiers_make_one_tree_per_request[direct]",
]
SLOW = 10  # PODSCOPE_TEST_SLOW inside a VM: waits scale with it (software emulation)
VM_TIMEOUT = 5400  # seconds one kernel may take in all (the 22 tests of the subset: about an hour)


@dataclass
class Kernel:
    name: str  # "5.10", "6.1", "6.12", "host"
    suite: str = "bookworm"
    package: str = ""  # linux-image-...-unsigned
    release: str = ""  # uname -r
    image: Path | None = None


@dataclass
class Result:
    kernel: Kernel
    check: dict[str, Any] = field(default_factory=dict)
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    agent_start: float | None = None
    tests: dict[str, int] = field(default_factory=dict)  # passed / failed
    seconds: float = 0.0
    error: str = ""


def sh(*cmd: str, env: dict[str, str] | None = None, check: bool = True) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if check and r.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr.strip()[-2000:]}")
    return r.stdout


# --- kernels from Debian's archive --------------------------------------------------------


def bullseye_apt() -> dict[str, str]:
    """A private apt configuration for bullseye (Debian 11): its own lists and cache under
    build/kernels, the system's sources and state untouched."""
    base = BUILD / "apt-bullseye"
    for d in ("lists/partial", "cache/archives/partial", "etc"):
        (base / d).mkdir(parents=True, exist_ok=True)
    (base / "etc" / "sources.list").write_text(
        "deb http://deb.debian.org/debian bullseye main\n"
        "deb http://deb.debian.org/debian-security bullseye-security main\n")
    (base / "status").touch()
    conf = base / "apt.conf"
    conf.write_text("\n".join([
        f'Dir::State "{base}";', f'Dir::State::lists "{base}/lists";',
        f'Dir::State::status "{base}/status";', f'Dir::Cache "{base}/cache";',
        f'Dir::Etc::SourceList "{base}/etc/sources.list";',
        f'Dir::Etc::SourceParts "{base}/etc";', 'APT::Architecture "amd64";',
        'Acquire::Languages "none";', ""]))
    env = dict(os.environ, APT_CONFIG=str(conf))
    stamp = base / "updated"
    if not stamp.exists() or time.time() - stamp.stat().st_mtime > 86400:
        sh("apt-get", "update", "-q", env=env)
        stamp.touch()
    return env


def newest(pattern: str, env: dict[str, str] | None = None) -> str:
    names = sh("apt-cache", "pkgnames", "linux-image-", env=env).split()
    found = [n for n in names if re.fullmatch(pattern, n)]
    if not found:
        raise RuntimeError(f"no kernel package matches {pattern} (apt-get update?)")

    def key(n: str) -> list[int]:
        return [int(x) for x in re.findall(r"\d+", n)]

    return max(found, key=key)


def fetch(k: Kernel) -> Kernel:
    if k.name == "host":
        k.release = platform.release()
        return k
    env = bullseye_apt() if k.suite == "bullseye" else None
    if env is None and not sh("apt-cache", "pkgnames", "linux-image-6.1").strip():
        sh("apt-get", "update", "-q")
    if k.name == "6.1":  # what Debian 12 installs: the dependency of linux-image-amd64
        dep = re.search(r"Depends: (linux-image-6\.1\.\S+-amd64)",
                        sh("apt-cache", "depends", "linux-image-amd64"))
        if not dep:
            raise RuntimeError("apt-cache depends linux-image-amd64: no 6.1 kernel found")
        k.package = dep.group(1) + "-unsigned"
    elif k.name == "6.12":
        k.package = newest(r"linux-image-6\.12\.\d+\+deb12-amd64-unsigned")
    else:
        k.package = newest(r"linux-image-5\.10\.0-\d+-amd64-unsigned", env)
    k.release = k.package.removeprefix("linux-image-").removesuffix("-unsigned")
    dest = BUILD / k.release
    image = dest / "boot" / f"vmlinuz-{k.release}"
    if not image.exists():
        debs = BUILD / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        for old in debs.glob(f"{k.package}_*.deb"):
            old.unlink()
        subprocess.run(["apt-get", "download", "-q", k.package], cwd=debs, env=env,
                       check=True, capture_output=True)
        deb = next(debs.glob(f"{k.package}_*.deb"))
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        sh("dpkg-deb", "-x", str(deb), str(tmp))
        tmp.rename(dest)
        deb.unlink()
    k.image = image
    return k


# --- running the smoke ------------------------------------------------------------------------


def guest_script(out: Path, subset: bool, modules: Path) -> str:
    """The guest's command: a script in the output directory (the kernel's command line, which
    carries --exec, holds 2 KB on x86: a longer one stops the boot before the kernel starts).
    The guest's root is the host's over 9p: no block device. The disk the VM is given (virtio,
    the kernel package's own module) gets a file system for the tests that need block I/O and
    page cache (PODSCOPE_TEST_DISK)."""
    tests = "tests/matrix/test_smoke.py" + (" " + " ".join(SUBSET) if subset else "")
    py = VENV_BIN
    # a hang shows its threads' stacks (SIGABRT with PYTHONFAULTHANDLER) instead of eating the time
    script = out / "guest.sh"
    disk = "/tmp/podscope-disk"
    script.write_text(
        f"modprobe -d {modules} virtio_blk 2> {out}/disk.err;"
        " for i in 1 2 3 4 5; do [ -b /dev/vda ] && break; sleep 1; done;"
        f" mkfs.ext4 -q -F /dev/vda 2>> {out}/disk.err && mkdir -p {disk} &&"
        f" mount /dev/vda {disk} 2>> {out}/disk.err && export PODSCOPE_TEST_DISK={disk};"
        f" cd {ROOT} && export PODSCOPE_TEST_SLOW={SLOW} PODSCOPE_SMOKE_OUT={out}/smoke.jsonl"
        f" PYTHONPATH={ROOT}/src"
        f" PYTHONFAULTHANDLER=1 PYTHONUNBUFFERED=1;"
        f" timeout -s ABRT 900 {py}/podscope check --json > {out}/check.json 2> {out}/check.err;"
        f" {py}/pytest -q -p no:cacheprovider -o timeout=1800 --junitxml={out}/junit.xml "
        f"{tests} > {out}/pytest.log 2>&1; echo $? > {out}/pytest.rc\n")
    return f"bash {script}"


def run(k: Kernel, subset: bool) -> Result:
    res = Result(k)
    out = BUILD / "out" / k.name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t0 = time.monotonic()
    if k.name == "host":
        env = dict(os.environ, PODSCOPE_SMOKE_OUT=str(out / "smoke.jsonl"))
        (out / "check.json").write_text(sh(str(VENV_BIN / "podscope"), "check", "--json",
                                           check=False))
        tests = ["tests/matrix/test_smoke.py"] + (SUBSET if subset else [])
        r = subprocess.run([str(VENV_BIN / "pytest"), "-q", "-p", "no:cacheprovider",
                            f"--junitxml={out}/junit.xml", *tests], cwd=ROOT, env=env,
                           capture_output=True, text=True)
        (out / "pytest.log").write_text(r.stdout + r.stderr)
        (out / "pytest.rc").write_text(str(r.returncode))
    else:
        assert k.image is not None
        vng = shutil.which("vng", path=str(VENV_BIN)) or "vng"
        # one vCPU: under software emulation, the kernel's live patching of its own code (int3 then
        # the new bytes: static keys flip as programs attach) can race another emulated CPU and
        # end in an "Oops: int3" panic (seen on 6.12 with two); one CPU has nothing to race
        disk = out / "disk.img"
        with open(disk, "wb") as f:
            f.truncate(1 << 30)  # sparse: what the guest writes
        cmd = [vng, "--verbose", "--run", str(k.image), "--disable-kvm", "--cpus", "1",
               "--memory", "2G", "--disk", str(disk),
               "--rwdir", str(out), "--exec", guest_script(out, subset, BUILD / k.release)]
        env = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ.get('PATH', '')}")  # virtme-run
        with open(out / "boot.log", "w") as console:  # the guest's console, readable live
            vm = subprocess.Popen(cmd, stdout=console, stderr=subprocess.STDOUT, cwd=ROOT,
                                  env=env, start_new_session=True)
            try:
                vm.wait(timeout=VM_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(vm.pid, signal.SIGKILL)  # vng and the qemu it started
                vm.wait()
                res.error = f"the VM did not finish within {VM_TIMEOUT} s; see {out}"
        disk.unlink(missing_ok=True)
        # vng exits 255 without udevd even when the script succeeded: the files tell
    res.seconds = time.monotonic() - t0
    try:
        res.check = json.loads((out / "check.json").read_text())
    except (OSError, ValueError) as e:
        res.error = f"podscope check gave no report ({e}); see {out}"
    if (out / "smoke.jsonl").exists():
        for line in (out / "smoke.jsonl").read_text().splitlines():
            rec = json.loads(line)
            if "agent_start_seconds" in rec:
                res.agent_start = rec["agent_start_seconds"]
            elif "what" in rec:
                res.comparisons.append(rec)
    log = (out / "pytest.log").read_text() if (out / "pytest.log").exists() else ""
    for n, what in re.findall(r"(\d+) (passed|failed|error)", log):
        res.tests[what] = res.tests.get(what, 0) + int(n)
    if not res.tests and not res.error:
        res.error = f"the tests did not run; see {out}"
    return res


# --- the table --------------------------------------------------------------------------------


def table(results: list[Result]) -> str:
    heads = [f"{r.kernel.name}" + (f" ({r.kernel.release})" if r.kernel.release else "")
             for r in results]
    lines = ["| signal | " + " | ".join(heads) + " |", "|---" * (len(results) + 1) + "|"]
    names: list[tuple[str, str]] = []
    for r in results:
        for s in r.check.get("signals", []):
            key = (s["collector"], s["name"])
            if key not in names:
                names.append(key)
    notes: dict[str, int] = {}

    def note(text: str) -> str:
        notes.setdefault(text, len(notes) + 1)
        return f"[{notes[text]}]"

    for coll, name in names:
        row = [f"{coll}: {name}"]
        for r in results:
            s = next((x for x in r.check.get("signals", [])
                      if x["collector"] == coll and x["name"] == name), None)
            if s is None:
                row.append("?")
            elif s["state"] == "works":
                row.append("works" + (f" ({_short_hooks(s['hooks'])})" if coll in ("http", "dns")
                                      else ""))
            else:
                row.append(f"{s['state']} {note(s['detail'])}")
        lines.append("| " + " | ".join(row) + " |")
    lines.append("| BPF load per collector (ms) | " + " | ".join(
        _loads(r) for r in results) + " |")
    lines.append("| agent start to healthy | " + " | ".join(
        f"{r.agent_start:.1f} s" if r.agent_start is not None else "-" for r in results) + " |")
    lines.append("| smoke: exact comparisons | " + " | ".join(
        f"{sum(c['ok'] for c in r.comparisons)}/{len(r.comparisons)}" for r in results) + " |")
    lines.append("| tests passed / failed | " + " | ".join(
        f"{r.tests.get('passed', 0)} / {r.tests.get('failed', 0) + r.tests.get('error', 0)}"
        for r in results) + " |")
    out = "\n".join(lines)
    if notes:
        out += "\n\n" + "\n".join(f"{i}. {t}" for t, i in notes.items())
    return out


def _short_hooks(hooks: str) -> str:
    for kind in ("socket tracepoints", "syscall tracepoints"):
        if hooks.startswith(kind):
            return kind
    return hooks


def _loads(r: Result) -> str:
    seen: dict[str, float] = {}
    for s in r.check.get("signals", []):
        if s.get("load_ms"):
            seen[s["collector"]] = s["load_ms"]
    return ", ".join(f"{c} {ms:.0f}" for c, ms in seen.items()) or "-"


def comparisons(results: list[Result]) -> str:
    lines = []
    for r in results:
        for c in r.comparisons:
            mark = "exact" if c["ok"] else "MISMATCH"
            lines.append(f"  {r.kernel.name:<5} {c['signal']:<9} {c['what']:<52} {mark}: "
                         f"expected {c['expected']}, got {c['got']}")
    return "\n".join(lines)


def failed(r: Result) -> list[str]:
    why = []
    if r.error:
        why.append(r.error)
    if r.tests.get("failed") or r.tests.get("error"):
        why.append(f"{r.tests} (build/kernels/out/{r.kernel.name}/pytest.log)")
    why += [f"{c['signal']}: {c['what']}: expected {c['expected']}, got {c['got']}"
            for c in r.comparisons if not c["ok"]]
    why += [f"default signal unavailable: {s['collector']}: {s['name']}: {s['detail']}"
            for s in r.check.get("signals", []) if s["default"] and s["state"] == "unavailable"]
    return why


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kernels", default="5.10,6.1,6.12,host")
    p.add_argument("--subset", action="store_true", help="also run a part of the kernel tests")
    p.add_argument("--doc", help="write the table here (docs/kernels.md)")
    p.add_argument("--jobs", type=int, default=1, help="kernels run at once (default 1)")
    p.add_argument("--only", default="", help="with --subset: only its tests whose name has one of "
                   "these texts, comma-separated (a rerun of a part after a fix)")
    a = p.parse_args(argv)
    if a.only:
        SUBSET[:] = [t for t in SUBSET if any(o in t for o in a.only.split(","))]
        if not SUBSET:
            p.error(f"--only {a.only!r}: no test of the subset matches")
    if os.geteuid() != 0:
        print("the kernel matrix runs as root", file=sys.stderr)
        return 2
    kernels = [Kernel(n, suite="bullseye" if n == "5.10" else "bookworm")
               for n in a.kernels.split(",")]
    for k in kernels:  # one at a time: apt-get's downloads share a cache
        print(f"kernel matrix: {k.name}: fetching", flush=True)
        fetch(k)

    def one(k: Kernel) -> Result:
        t0 = time.monotonic()
        print(f"kernel matrix: {k.name} ({k.release}): booting and running the smoke"
              + (" and the test subset" if a.subset else ""), flush=True)
        r = run(k, a.subset)
        bad = failed(r)
        print(f"kernel matrix: {k.name}: {'FAILED' if bad else 'passed'} in "
              f"{time.monotonic() - t0:.0f} s" + "".join(f"\n    {b}" for b in bad), flush=True)
        return r

    # each guest is one emulated vCPU: --jobs 2 runs two at once on a 2-vCPU host
    with ThreadPoolExecutor(max_workers=max(1, a.jobs)) as pool:
        results = list(pool.map(one, kernels))
    print(table(results))
    print("comparisons (each against the traffic generator's own count):")
    print(comparisons(results))
    if a.doc:
        write_doc(Path(a.doc), results, a.subset)
    return 1 if any(failed(r) for r in results) else 0


def write_doc(path: Path, results: list[Result], subset: bool) -> None:
    when = time.strftime("%Y-%m-%d")
    path.write_text(f"""# Kernels

Generated by `make kernels` (`python -m tests.matrix.run --subset --jobs 2 --doc docs/kernels.md`) on
{when}: Debian's kernel packages booted under qemu (software emulation, 1 vCPU, 2 GiB) with this
host's root file system, and this host's own kernel. In each: `podscope check`, then the smoke
(`tests/matrix/test_smoke.py`: one agent, real servers and clients in test pods, every count
compared exactly with the traffic generator's own){" and a part of the kernel tests" if subset
else ""}. Load times under emulation are 10 to 30 times what the same kernel takes on hardware.

{table(results)}

Every comparison of the smoke:

```
{comparisons(results)}
```
""")
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
