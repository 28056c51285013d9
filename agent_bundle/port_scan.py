"""The sandbox's listening TCP ports, and the ports a turn started (PortWatch)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent_bundle.hooks import DETACHED_ENV
from agent_bundle.processes import stat_fields
from agent_bundle.protocol import PORTS, PORTS_SETTLED

# Ports the sandbox itself uses (Daytona's toolbox, terminal and SSH gateway).
DAYTONA_PORTS = frozenset({2280, 22220, 22222, 33333})


def _socket_owners(scope: str | None) -> set[str] | None:
    """Socket inodes owned by processes of this sandbox (those whose environment carries
    CODEX_DAYTONA_SCOPE=scope). None when no scope is set: then every socket counts."""
    if not scope:
        return None
    marker = (f"CODEX_DAYTONA_SCOPE={scope}").encode()
    inodes = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                if marker not in fh.read().split(b"\0"):
                    continue
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    return inodes


def _listening_sockets() -> list[tuple[str, int, str]]:
    """(address, port, socket inode) of every listening TCP socket, IPv4 and IPv6."""
    sockets = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as fh:
                rows = fh.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) >= 10 and fields[3] == "0A":  # 0A = LISTEN
                address, port = fields[1].rsplit(":", 1)
                sockets.append((address, int(port, 16), fields[9]))
    return sockets


def listening_ports(scope: str | None = None) -> list[int]:
    """TCP ports listening on any address in this sandbox, less Daytona's own."""
    return sorted(listening_inodes(scope))


def listening_inodes(scope: str | None = None) -> dict[int, set[str]]:
    """port -> the inodes of its listening sockets, in this sandbox, less Daytona's ports. A
    server restarted on a port listens on a new socket, so a new inode."""
    owners = _socket_owners(scope)
    found: dict[int, set[str]] = {}
    for _, port, inode in _listening_sockets():
        if port not in DAYTONA_PORTS and (owners is None or inode in owners):
            found.setdefault(port, set()).add(inode)
    return found


# After a turn, the ports are watched for up to SETTLE_S seconds more while a process the turn
# left running in the background has not bound a port yet: the model often ends its turn right
# after `npm run dev &`, and a dev server takes a moment to listen (Vite and uvicorn well under
# a second, Next.js and Rails a few seconds). Past 5 s a person waiting at the prompt would
# rather run `preview` themselves; a turn that started nothing, or whose servers already
# listen, waits not at all. Only processes the turn started count (started after it began,
# carrying the mark the shell hooks export, DETACHED_ENV); a process "has bound" when it, an
# ancestor or a descendant holds a listening socket (npm's child is the server; a server's
# children are its workers or its esbuild).
SETTLE_S = 5.0
SETTLE_POLL_S = 0.2
_DRAINER_MARK = b"/agent_bundle/detach.py"  # the hand-over's drainer, never a server


class PortWatch:
    """The ports one turn started: what listened before it, what listens after, and the late
    ones that bind while processes it left in the background settle."""

    def __init__(self, scope: str | None, started_ticks: int, home: str | None = None) -> None:
        self.scope = scope
        self.started_ticks = started_ticks
        # The processes of this home's Codex carry its shell hook (write_shell_hooks) in BASH_ENV.
        self.hook_mark = f"BASH_ENV={os.path.join(home, '.codex-daytona', 'shell', 'bash-env.sh')}" if home else None
        self.before = listening_inodes(scope)
        self.reported: set[int] = set()

    def scan(self) -> tuple[list[int], list[int]]:
        """(every listening port, those not yet reported that the turn started): a port is
        the turn's when one of its sockets did not exist before it (a restart makes a new one)."""
        now = listening_inodes(self.scope)
        new = [p for p in sorted(now) if p not in self.reported and now[p] - self.before.get(p, set())]
        self.reported.update(new)
        return sorted(now), new

    def pending(self) -> bool:
        """Whether a process the turn started is still alive and has not bound a port yet."""
        stats: dict[int, tuple[str, int, int]] = {}  # pid -> (state, parent, start ticks)
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    fields = stat_fields(int(entry))
                    stats[int(entry)] = (fields[0], int(fields[1]), int(fields[19]))
        marks = [f"{DETACHED_ENV}=1".encode()]
        marks += [
            m.encode() for m in (f"CODEX_DAYTONA_SCOPE={self.scope}" if self.scope else None, self.hook_mark) if m
        ]
        turn: list[int] = []
        for pid, (state, _, start) in stats.items():
            if start < self.started_ticks or state in "ZX" or pid == os.getpid():
                continue
            with contextlib.suppress(OSError):
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                if not all(mark in environ for mark in marks):
                    continue
                if _DRAINER_MARK not in Path(f"/proc/{pid}/cmdline").read_bytes():
                    turn.append(pid)
        if not turn:
            return False
        listening = {i for inodes in listening_inodes().values() for i in inodes}
        children: dict[int, list[int]] = {}
        for pid, (_, parent, _) in stats.items():
            children.setdefault(parent, []).append(pid)
        bound: dict[int, bool] = {}

        def holds(pid: int) -> bool:
            if pid not in bound:
                bound[pid] = bool(_socket_inodes(pid) & listening)
            return bound[pid]

        ours = set(turn)

        def settled(pid: int) -> bool:
            up, seen = pid, set()
            # The process and those of its ancestors the turn started too (npm above its dev
            # server): not beyond, where a daemon that listens (Daytona's own, or whatever runs
            # the agent) would make every process look bound.
            while up in ours and up not in seen:
                seen.add(up)
                if holds(up):
                    return True
                up = stats[up][1]
            todo = list(children.get(pid, []))
            while todo:  # its descendants
                child = todo.pop()
                if holds(child):
                    return True
                todo += children.get(child, [])
            return False

        return not all(settled(pid) for pid in turn)

    def settle(self, emit: Callable[[dict[str, Any]], None], stop: Callable[[], bool], limit: float = SETTLE_S) -> None:
        """Reports each late port as it appears, until nothing the turn started is pending,
        `limit` seconds have passed or `stop()` (a new turn began); then PORTS_SETTLED."""
        started = time.monotonic()
        late: list[int] = []
        while True:
            # Whether to stop is decided before the scan: a server that binds between a scan
            # and the check that finds nothing pending any more is in the last scan, not lost.
            last = stop() or time.monotonic() - started >= limit or not self.pending()
            listening, new = self.scan()
            if new:
                late += new
                emit({"type": PORTS, "listening": listening, "new": new, "late": True})
            if last:
                break
            time.sleep(SETTLE_POLL_S)
        emit({"type": PORTS_SETTLED, "new": late, "waited_ms": int((time.monotonic() - started) * 1000)})


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes
