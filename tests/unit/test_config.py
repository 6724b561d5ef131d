"""Configuration and flags: one schema, checked before anything loads; every bad value is one
line naming the setting or flag and what it accepts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from podscope.config import Config
from tests.conftest import PODSCOPE


def load(tmp_path: Path, text: str, **flags: object) -> Config:
    f = tmp_path / "podscope.toml"
    f.write_text(text)
    return Config.load(str(f), flags)


@pytest.mark.parametrize("text,want", [
    ('http = "off"\ncpu = "no"\ndns = "false"\nkernel = false\n',
     {"http": False, "cpu": False, "dns": False, "kernel": False}),
    ('netlat = "on"\nhttp_capture_headers = "yes"\n', {"netlat": True,
                                                         "http_capture_headers": True}),
    ('duration = "2"\ndns_timeout = "5s"\npod_grace = "2m"\nlistener_refresh = "250ms"\n',
     {"duration": 2.0, "dns_timeout": 5.0, "pod_grace": 120.0, "listener_refresh": 0.25}),
    ('exports = ["jsonl:/tmp/a.jsonl", "csv:/tmp/b.csv"]\n',
     {"exports": ["jsonl:/tmp/a.jsonl", "csv:/tmp/b.csv"]}),
])
def test_good_values_mean_what_they_say(tmp_path: Path, text: str, want: dict[str, object]
                                        ) -> None:
    cfg = load(tmp_path, text)
    assert {k: getattr(cfg, k) for k in want} == want


@pytest.mark.parametrize("text,needle", [
    ("listen = 9464\n", "listen"),
    ('http = "maybe"\n', "http"),
    ('dns_timeout = "5 parsecs"\n', "dns_timeout"),
    ("duration = -5\n", "duration"),
    ("push_interval = 0\n", "push_interval"),
    ('exports = "jsonl:/tmp/x.jsonl"\n', "exports"),
    ('exports = ["xml:/tmp/x"]\n', "jsonl:PATH or csv:PATH"),
    ('log_level = "loud"\n', "log_level"),
    ('kubernetes = "sometimes"\n', "kubernetes"),
    ('http_hooks = "kprobes"\n', "http_hooks"),
    ("http_route_budget = 0\n", "http_route_budget"),
    ('export_keep = "many"\n', "export_keep"),
    ('pushgateway = "gateway:9091"\n', "pushgateway"),
    ('listen = "999.1.1.1:9464"\n', "999.1.1.1"),
    ('listen = ":99999"\n', "65535"),
    ('nosuch = 1\n', "unknown settings"),
    ('[[triggers]]\nname = "slow"\nsignal = "http_p99_seconds"\nabove = "high"\n', "above"),
    ('[[triggers]]\nname = "slow"\nsignal = "http_p99_seconds"\n', "missing above"),
    ('[[triggers]]\nname = "slow"\nsignal = "http_p99_seconds"\nabove = 1\n'
     'for_seconds = "soon"\n', "for_seconds"),
    ('[[triggers]]\nname = "x"\nsignal = "nope"\nabove = 1\n', "signal"),
])
def test_bad_values_are_one_line_naming_the_setting(tmp_path: Path, text: str,
                                                    needle: str) -> None:
    with pytest.raises(ValueError) as e:
        load(tmp_path, text)
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


@pytest.mark.parametrize("argv,needle", [
    (["run", "--listen", ":99999"], "--listen"),
    (["run", "--listen", "999.1.1.1:9464"], "--listen"),
    (["run", "--duration", "-5"], "--duration"),
    (["run", "--duration", "0"], "--duration"),
    (["run", "--push-interval", "0"], "--push-interval"),
    (["run", "--pushgateway", "nohost"], "--pushgateway"),
    (["profile", "--pod", "x", "--frequency", "0"], "--frequency"),
    (["profile", "--pod", "x", "--frequency", "-5"], "--frequency"),
    (["top", "--interval", "-1"], "--interval"),
    ([], "COMMAND"),
])
def test_bad_flags_exit_2_with_one_line(argv: list[str], needle: str) -> None:
    r = subprocess.run([PODSCOPE, *argv], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    if argv:
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_an_address_in_use_is_said_at_once_with_the_address() -> None:
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        t0 = time.monotonic()
        r = subprocess.run([PODSCOPE, "run", "--listen", f"127.0.0.1:{port}"],
                           capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and f"127.0.0.1:{port}" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert time.monotonic() - t0 < 5  # before any BPF is loaded
