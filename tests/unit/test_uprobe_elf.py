"""What podscope finds in real executable files: TLS functions defined (not merely imported),
the dynamic linker, Go's crypto/tls by symbol table and by .gopclntab (a stripped binary), the
RET instructions of Read, and the HTTP/2 offsets from DWARF."""

from __future__ import annotations

import glob
from pathlib import Path

import pytest

from podscope.testing.gobuild import build_go
from podscope.uprobes import elf

GO = Path(__file__).resolve().parents[1] / "fixtures" / "go"


def first(pattern: str) -> str:
    found = sorted(glob.glob(pattern))
    assert found, pattern
    return found[0]


def test_openssl_defined_not_imported() -> None:
    ssl = elf.inspect(first("/usr/lib/*-linux-gnu/libssl.so.3"))
    assert ssl.kind == "openssl" and {"SSL_read", "SSL_write", "SSL_read_ex",
                                      "SSL_set_fd"} <= ssl.funcs
    # libcurl calls SSL_read: it names it, it does not define it
    assert elf.inspect(first("/usr/lib/*-linux-gnu/libcurl.so.4")).kind == ""
    assert elf.inspect(first("/usr/lib/*-linux-gnu/ld-linux*.so.*")).kind == "ld"
    assert elf.inspect("/etc/passwd").kind == ""


@pytest.fixture(scope="module")
def go_bins(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("go")
    return (build_go(GO / "gohttps.go", d / "full"),
            build_go(GO / "gohttps.go", d / "stripped", ldflags="-s -w"))


def test_go_crypto_tls_by_symbols_and_by_function_table(go_bins: tuple[Path, Path]) -> None:
    full, stripped = (elf.inspect(str(p)) for p in go_bins)
    assert full.kind == stripped.kind == "go" and not full.why_not and not stripped.why_not
    assert full.go_version.startswith("go1.") and full.go_version == stripped.go_version
    assert set(elf.GO_TLS_FUNCS) <= full.funcs and set(elf.GO_TLS_FUNCS) <= stripped.funcs
    # the same code: the same RETs, found from the symbol table and from .gopclntab
    assert full.returns == stripped.returns and full.returns[0][1]
    assert stripped.stripped and dict(stripped.file_offsets).keys() == set(elf.GO_TLS_FUNCS)
    # HTTP/2 probes need DWARF: the full build has them, the stripped one does not
    assert {p for _f, p in full.h2_probes} >= {"go_nh_srv_rh", "go_nh_srv_wh", "go_nh_cli_rh",
                                                "go_nh_cli_enc", "go_nh_cli_wh"}
    assert dict(full.h2_offsets)["frame_stream_id"] == 8 and not stripped.h2_probes
    assert set(dict(full.h2_types)) >= {"type_tcp_conn", "type_tls_conn"}
