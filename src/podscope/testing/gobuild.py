"""Go test programs built offline: Debian's golang-go with Debian's Go sources (GOPATH mode,
/usr/share/gocode: grpc-go from golang-google-grpc-dev); no module is downloaded."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

GOPATH = "/usr/share/gocode"
# built programs by source and flags: the kernel matrix's guests (software emulation, where a
# build takes minutes) use what the host built
CACHE = Path(__file__).resolve().parents[3] / "build" / "go"


def build_go(source: Path, out: Path, ldflags: str = "") -> Path:
    """`go build` of one file in GOPATH mode; raises with go's own message on failure."""
    digest = hashlib.sha256(source.read_bytes() + ldflags.encode()).hexdigest()[:16]
    cached = CACHE / f"{source.stem}-{digest}"
    if cached.exists():
        shutil.copy2(cached, out)
        return out
    gocache = Path(tempfile.gettempdir()) / "podscope-gocache"
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": GOPATH, "GOCACHE": str(gocache),
           "GOFLAGS": "", "CGO_ENABLED": "0"}
    cmd = ["go", "build", "-o", str(out)] + (["-ldflags", ldflags] if ldflags else []) + [
        str(source)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"go build {source.name}: {r.stderr.strip()}")
    try:
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp")
        shutil.copy2(out, tmp)
        tmp.rename(cached)
    except OSError:  # a read-only tree (the matrix's guests): build each time
        pass
    return out
