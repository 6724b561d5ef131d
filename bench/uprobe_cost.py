"""What one uprobe hit costs on this machine: bench/uprobe_cost.c calls a noinline function in a
loop; timed alone, with podscope's cheapest uprobe program on it (tls_free: one map delete), and
with an entry and a return probe (tls_ret at the return).
Usage: python bench/uprobe_cost.py [CALLS]"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from podscope import libbpf  # noqa: E402


def run(binary: Path, calls: int) -> float:
    out = subprocess.run([str(binary), str(calls)], capture_output=True, text=True,
                         check=True).stdout
    return float(out.split()[0])


def main() -> int:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    with tempfile.TemporaryDirectory() as d:
        binary = Path(d) / "ub"
        subprocess.run(["gcc", "-O2", "-o", str(binary),
                        str(Path(__file__).with_name("uprobe_cost.c"))], check=True)
        base = run(binary, calls)
        obj = libbpf.BpfObject(libbpf.bpf_object_path("http"), "http")
        for p in obj.programs():
            p.autoload = p.name in ("tls_free", "tls_ret")
        obj.load()
        obj.program("tls_free").attach_uprobe(str(binary), "probed")
        entry = run(binary, calls)
        obj.program("tls_ret").attach_uprobe(str(binary), "probed", retprobe=True)
        both = run(binary, calls)
        obj.close()
    print(f"no probe: {base:.1f} ns/call; uprobe: {entry:.1f} ns/call; "
          f"uprobe + uretprobe: {both:.1f} ns/call")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
