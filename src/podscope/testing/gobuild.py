"""Go test programs built offline: Debian's golang-go with Debian's Go sources (GOPATH mode,
/usr/share/gocode: grpc-go from golang-google-grpc-dev); no module is downloaded."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

GOPATH = "/usr/share/gocode"


def build_go(source: Path, out: Path, ldflags: str = "") -> Path:
    """`go build` of one file in GOPATH mode; raises with go's own message on failure."""
    cache = Path(tempfile.gettempdir()) / "podscope-gocache"
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": GOPATH, "GOCACHE": str(cache),
           "GOFLAGS": "", "CGO_ENABLED": "0"}
    cmd = ["go", "build", "-o", str(out)] + (["-ldflags", ldflags] if ldflags else []) + [
        str(source)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"go build {source.name}: {r.stderr.strip()}")
    return out
