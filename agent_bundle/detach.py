"""The hand-over: `python -I -S detach.py SHELL FLAG COMMAND LOG` runs `SHELL FLAG COMMAND` in a
session of its own, relays its output, and exits with its exit code as soon as that shell exits.

The shell hooks (hooks.py) run it for every command Codex runs, so that what the command
leaves in the background outlives the process group Codex kills. Being run as a script,
isolated, by each of those commands, it imports only the standard library's builtin modules
(about 20 ms to start, where the whole agent would take several times that) and nothing of
this package. `codex-daytona exec` (user_exec.py) relays its command's output through the
same `relay`.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

TYPE_CHECKING = False  # typing itself would cost every command its import
if TYPE_CHECKING:
    from collections.abc import Callable

# What a session command gets when Daytona deletes its session: each ends the command.
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def drain_in_background(fds: list[int], background_log: str) -> None:
    """Hands `fds` to a process of its own (double-forked, so that it is nobody's child and
    deleting the session does not reach it) that copies them into `background_log` until
    every writer has closed them."""
    child = os.fork()
    if child:
        os.waitpid(child, 0)
        return
    if os.fork():
        os._exit(0)
    try:
        os.setsid()
        # Let go of the session command's own output, or Daytona would wait for us too.
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        with open(background_log, "ab") as log:
            while fds:
                for fd in select.select(fds, [], [])[0]:
                    data = os.read(fd, 65536)
                    if data:
                        log.write(data)
                        log.flush()
                    else:
                        fds.remove(fd)
    finally:
        os._exit(0)


def relay(
    group: int,
    wait: Callable[[bool], int | None],
    sinks: dict[int, Callable[[bytes], object]],
    background_log: str,
) -> int:
    """Relays the output of a command (the leader of process group `group`) from each pipe in
    `sinks` to its writer, and returns its exit code as soon as its shell has exited.

    `wait(block)` is the shell's exit code, negative for a signal, or None while it runs
    (only when not `block`). A background job the command started (`server &`) keeps its
    pipes open: 0.2 s after the shell exits, a detached drainer takes over what is left
    (into `background_log`) and we return. A signal to us before then ends the group and us."""

    def stop(signum: int, _frame: object) -> None:
        try:  # noqa: SIM105 - contextlib would cost every command its import
            os.killpg(group, signal.SIGTERM)
        except OSError:
            pass
        os._exit(128 + signum)

    for sig in SIGNALS:
        signal.signal(sig, stop)
    sinks = dict(sinks)
    code: int | None = None
    exited_at: float | None = None
    while sinks:
        if code is None:
            code = wait(False)
            if code is not None:
                exited_at = time.monotonic()
        timeout = 0.05 if exited_at is None else exited_at + 0.2 - time.monotonic()
        if timeout <= 0:
            break  # the shell is gone and only background jobs hold its output
        for fd in select.select(list(sinks), [], [], timeout)[0]:
            data = os.read(fd, 65536)
            if data:
                sinks[fd](data)
            else:
                del sinks[fd]
    if code is None:
        code = wait(True)  # at once, unless the shell closed its output and runs on
    assert code is not None
    # What is left of the command's process group now are its background jobs: a signal to
    # us (Daytona deleting the session) must no longer reach them.
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    if sinks:
        drain_in_background(list(sinks), background_log)
    return 128 - code if code < 0 else code


def main(shell: str, flag: str, command: str, log: str) -> int:
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            for fd in (out_r, out_w, err_r, err_w):
                os.close(fd)
            os.execvp(shell, [shell, flag, command])
        finally:
            os._exit(127)
    os.close(out_w)
    os.close(err_w)

    def wait(block: bool) -> int | None:
        done, status = os.waitpid(pid, 0 if block else os.WNOHANG)
        return os.waitstatus_to_exitcode(status) if done else None

    return relay(pid, wait, {out_r: lambda data: os.write(1, data), err_r: lambda data: os.write(2, data)}, log)


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
