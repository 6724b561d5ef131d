"""The executable files a process maps (/proc/PID/maps), and where podscope can open them."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Mapped:
    dev: int  # the file's device (os.makedev of the maps line's major:minor)
    inode: int
    path: str  # as the process sees it (inside its mount namespace)
    start: int  # one executable mapping of it (for /proc/PID/map_files)
    end: int


def exec_mappings(pid: int, proc: str = "/proc") -> list[Mapped]:
    """Files mapped executable by pid, one entry per file; [] when the process is gone."""
    out: dict[tuple[int, int], Mapped] = {}
    try:
        with open(f"{proc}/{pid}/maps") as f:
            for line in f:
                parts = line.split(maxsplit=5)
                if len(parts) < 6 or "x" not in parts[1] or not parts[5].startswith("/"):
                    continue
                inode = int(parts[4])
                if not inode:
                    continue
                major, _, minor = parts[3].partition(":")
                dev = os.makedev(int(major, 16), int(minor, 16))
                if (dev, inode) in out:
                    continue
                lo, _, hi = parts[0].partition("-")
                out[(dev, inode)] = Mapped(dev, inode, parts[5].rstrip("\n"), int(lo, 16),
                                           int(hi, 16))
    except (OSError, ValueError):
        return []
    return list(out.values())


def openable(pid: int, m: Mapped, proc: str = "/proc") -> str | None:
    """A path of the mapped file itself from this (the agent's) mount namespace: through the
    process's root when the name there is still that file, else the mapping's own link (a file
    deleted or replaced since, e.g. by a package upgrade)."""
    if not m.path.endswith(" (deleted)"):
        p = f"{proc}/{pid}/root{m.path}"
        try:
            st = os.stat(p)
            if st.st_ino == m.inode and st.st_dev == m.dev:
                return p
        except OSError:
            pass
    p = f"{proc}/{pid}/map_files/{m.start:x}-{m.end:x}"
    try:
        st = os.stat(p)
    except OSError:
        return None
    return p if st.st_ino == m.inode else None


def start_time(pid: int, proc: str = "/proc") -> int:
    """The process's start time (clock ticks since boot), 0 when it is gone: with the pid, who
    it is (pids are reused)."""
    try:
        with open(f"{proc}/{pid}/stat") as f:
            return int(f.read().rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


def established_sockets(pid: int, proc: str = "/proc") -> set[int]:
    """Inodes of the established TCP sockets the process holds (its fds, against the TCP tables
    of its network namespace); empty when it is gone."""
    held: set[int] = set()
    try:
        for fd in os.listdir(f"{proc}/{pid}/fd"):
            try:
                link = os.readlink(f"{proc}/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                held.add(int(link[8:-1]))
    except (OSError, ValueError):
        return set()
    if not held:
        return held
    out: set[int] = set()
    for table in ("tcp", "tcp6"):
        try:
            with open(f"{proc}/{pid}/net/{table}") as f:
                next(f, None)
                for line in f:
                    parts = line.split()
                    if len(parts) > 9 and parts[3] == "01" and int(parts[9]) in held:
                        out.add(int(parts[9]))
        except (OSError, ValueError):
            continue
    return out
