"""The sandbox's processes, read from /proc, and the interrupt of a turn's commands.

Codex runs each command in a process group of its own and, on an interrupt, ends the turn
but leaves that command running: the Interrupter finds the groups the turn started and
stops them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import Any


class Interrupter:
    """Interrupts the running turn, or the next one to start if none runs yet, and stops the
    commands it started: Codex ends the turn but leaves a running command alive."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handle: Any = None
        self.requested = False
        self.started_ticks = boot_ticks()

    def attach(self, handle: Any) -> None:
        with self._lock:
            self._handle = handle
            pending = self.requested
        if pending:
            handle.interrupt()

    def interrupt(self) -> None:
        with self._lock:
            self.requested = True
            handle = self._handle
        # The groups are found before Codex hears of the interrupt: it may then kill the group
        # it made for a running command, whose session (detach.py) would be orphaned and no
        # longer found under the app-server.
        groups = self.command_groups()
        if handle is not None:
            handle.interrupt()
        for group in groups:
            with contextlib.suppress(OSError):
                os.killpg(group, signal.SIGTERM)
            threading.Timer(2.0, _kill_group, (group,)).start()

    def command_groups(self) -> set[int]:
        """The process groups of the commands started since this turn began. Codex runs each
        command in a group of its own, as a child of the app-server (our child); the shell
        hooks run the command itself in a session of its own under that group."""
        own = os.getpgid(0)
        parents = _parents()
        groups: set[int] = set()
        for server in _children(os.getpid(), parents):
            for pid in _children(server, parents):
                with contextlib.suppress(OSError, IndexError, ValueError):
                    group = os.getpgid(pid)
                    if group == pid and group != own and _start_ticks(pid) >= self.started_ticks:
                        groups.add(group)
                        for child in _descendants(pid, parents):
                            with contextlib.suppress(OSError, IndexError, ValueError):
                                if _start_ticks(child) >= self.started_ticks:
                                    groups.add(os.getpgid(child))
        return groups - {own}


def boot_ticks() -> int:
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * os.sysconf("SC_CLK_TCK"))


def stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
        return fh.read().rsplit(")", 1)[1].split()


def _start_ticks(pid: int) -> int:
    return int(stat_fields(pid)[19])


def _parents() -> dict[int, int]:
    """pid -> parent pid, for every process."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                found[int(entry)] = int(stat_fields(int(entry))[1])
    return found


def _children(parent: int, parents: dict[int, int] | None = None) -> list[int]:
    return [pid for pid, ppid in (parents if parents is not None else _parents()).items() if ppid == parent]


def _descendants(root: int, parents: dict[int, int]) -> list[int]:
    found: list[int] = []
    todo = [root]
    while todo:
        kids = _children(todo.pop(), parents)
        found += kids
        todo += kids
    return found


def _kill_group(group: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(group, signal.SIGKILL)
