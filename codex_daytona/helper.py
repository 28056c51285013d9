"""The warm helper behind `codex_daytona.launcher`: one process per user, version and
checkout with the CLI's heavy modules imported, which forks a process per command.

`python -m codex_daytona.helper SOCKET KEY IDLE_SECONDS`, started by the launcher, detached.
It takes a lock next to its socket first (a second helper for the same key exits at once),
imports the CLI, and listens. For each connection from the same uid it forks a waiter,
which checks that the caller may do all the helper may (same uid, groups, capabilities,
limits and namespaces where /proc tells them; else it refuses, and the client runs the
command in process), receives the command (argv, environment, stdin/stdout/stderr and working directory
as file descriptors) and forks the process that runs it; the waiter tells the client that
process's pid (for signals) and, when it ends, its exit code or the signal that killed it.
The command's process only starts once its pid has reached the client, so a command is
never half handed over; if the client goes away meanwhile, it is killed, as it would die
with the client's process if it ran there.

The helper exits after IDLE_SECONDS without a command, when its socket is removed or
taken over, and as soon as its key changes (the package's files, an installed distribution:
it refuses the command then, and the client runs it in process). No thread runs in it, so
forking is safe.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import select
import signal
import socket
import sys
import threading
import time
import types
from collections.abc import Iterable
from typing import Any

from agent_bundle.protocol import listen_private
from codex_daytona import launcher

# The CLI's modules and what its commands import lazily on the way to Daytona.
PRELOAD = (
    "codex_daytona.cli",
    "codex_daytona.usecases.turns",
    "codex_daytona.usecases.workspace",
    "codex_daytona.usecases.hands",
    "codex_daytona.usecases.doctor",
    "codex_daytona.output",
    "codex_daytona.settings",
    "codex_daytona.state",
    "codex_daytona.usecases.fleet",
    "codex_daytona.usecases.fanout",
    "codex_daytona.session",
    "daytona",
    "daytona._sync.daytona",
    "daytona._sync.sandbox",
    "daytona.common.errors",
    "daytona_api_client",
    "daytona_toolbox_api_client",
)
ACCEPT_TICK_S = 1.0


def prebuild_cli() -> None:
    """Builds the CLI's Click command once, here, instead of in every command (Typer builds it
    from the command functions' signatures on each call: some 30 ms).

    This relies on Typer.__call__ looking `get_command` up in typer.main when it is called:
    tests/test_helper.py pins that behaviour, for the Typer range in pyproject.toml."""
    import typer.main

    from codex_daytona import cli

    built = typer.main.get_command(cli.app)
    build = typer.main.get_command

    def get_command(instance: typer.Typer) -> Any:
        return built if instance is cli.app else build(instance)

    setattr(typer.main, "get_command", get_command)  # noqa: B010 - Typer.__call__ looks it up here


def preload(names: Iterable[str] = PRELOAD) -> None:
    """Imports modules (those that fail to import are left out)."""
    import importlib

    for name in names:
        if name not in sys.modules:
            with contextlib.suppress(Exception):
                importlib.import_module(name)


class Learned:
    """The modules the helper's commands imported on their own (the SDK imports much of
    itself lazily, on first use): each command adds what it imported to a file next to the
    socket, and the helper imports them between commands, so that the next command finds
    them imported. Module names only."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.seen = -1

    def refresh(self) -> None:
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except OSError:
            return
        if mtime == self.seen:
            return
        self.seen = mtime
        with contextlib.suppress(OSError), open(self.path, encoding="utf-8") as fh:
            preload(line.strip() for line in fh if line.strip())

    @staticmethod
    def record(path: str, before: set[str]) -> None:
        """In a command's process, at its end: adds what it imported to the file."""
        new = {name for name in list(sys.modules) if name not in before and not name.startswith("__main__")}
        if not new:
            return
        with contextlib.suppress(OSError), open(path, encoding="utf-8") as fh:
            new |= {line.strip() for line in fh if line.strip()}
        temp = f"{path}.{os.getpid()}"
        with contextlib.suppress(OSError):
            with open(temp, "w", encoding="utf-8") as fh:
                fh.write("\n".join(sorted(new)) + "\n")
            os.replace(temp, path)


def serve(path: str, key: str, idle_seconds: float) -> int:
    lock_file = open(path + ".lock", "a")  # noqa: SIM115 - held for the helper's whole life
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return 0  # another helper for this key is starting or running
    if launcher.fingerprint() != key:
        return 0  # the files changed since the client looked: its successor starts another
    preload()
    prebuild_cli()
    learned = Learned(path + ".modules")
    learned.refresh()
    # In place of the stale socket of a helper that died (ours holds the lock now), mode 0600
    # as it is bound, besides the private directory and the peer's uid checked on each
    # connection: the agent's daemon listens the same way, through the same function (the
    # one piece of the agent's protocol module that is not the contract: both ends need it).
    listener = listen_private(path, 16)
    listener.settimeout(ACCEPT_TICK_S)
    inode = os.stat(path).st_ino
    last_used = time.monotonic()
    try:
        while True:
            _reap()
            if launcher.fingerprint() != key or not _still_ours(path, inode):
                return 0
            if time.monotonic() - last_used > idle_seconds:
                return 0
            learned.refresh()
            if threading.active_count() > 1:
                return 0  # an import started a thread: forking would no longer be safe
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(None)
            last_used = time.monotonic()
            learned.refresh()  # what the last command imported: this one need not import it
            with conn:
                try:
                    creds = launcher.peer_credentials(conn)  # None: the private directory is the guard
                except Exception:
                    continue
                if creds is not None and creds[1] != os.getuid():
                    continue
                if launcher.fingerprint() != key:
                    with contextlib.suppress(OSError):
                        launcher.send_message(conn, {"refused": "codex-daytona's files changed; restarting"})
                    return 0
                if os.fork() == 0:
                    listener.close()
                    lock_file.close()  # the lock is the helper's, not its commands'
                    _waiter(conn, learned.path, creds[0] if creds else None)  # never returns
    finally:
        if _still_ours(path, inode):
            with contextlib.suppress(OSError):
                os.unlink(path)
        listener.close()


def _still_ours(path: str, inode: int) -> bool:
    try:
        return os.stat(path).st_ino == inode
    except OSError:
        return False


def _reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def refusal(peer_pid: int | None) -> str | None:
    """Why the process `peer_pid` may not have its command run here, or None: a caller that
    may do less than the helper (fewer capabilities, other namespaces, lower limits, another
    group) would do more through it, so it runs its command itself."""
    if peer_pid is None:
        return None
    try:
        mine = launcher.privileges("self")
        if mine is None:
            return None
        theirs = launcher.privileges(peer_pid)
    except OSError as exc:
        return f"cannot compare the caller's privileges with the helper's ({exc.strerror})"
    differ = sorted(k for k in {*mine, *(theirs or {})} if mine.get(k) != (theirs or {}).get(k))
    return f"the caller's privileges differ from the helper's: {', '.join(differ)}" if differ else None


def _waiter(conn: socket.socket, learned_path: str, peer_pid: int | None = None) -> None:
    """In the forked waiter: takes the command, starts its process, reports how it ended."""
    code = 0
    try:
        request, fds = launcher.recv_message(conn, max_fds=4)
        if request is None:
            return
        refused = refusal(peer_pid)
        if refused:
            for fd in fds:
                os.close(fd)
            launcher.send_message(conn, {"refused": refused})
            return
        go_read, go_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(go_write)
            if os.read(go_read, 1) != b"g":
                os._exit(0)  # the client never learnt of us: the command must not run
            os.close(go_read)
            _run_command(request, fds, conn, learned_path)
        os.close(go_read)
        for fd in fds:
            os.close(fd)
        try:
            launcher.send_message(conn, {"pid": pid})
            os.write(go_write, b"g")
        finally:
            os.close(go_write)
        status = _wait_or_kill(conn, pid)
        reply: dict[str, object] = (
            {"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status) else {"exit": os.WEXITSTATUS(status)}
        )
        with contextlib.suppress(OSError):
            launcher.send_message(conn, reply)
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def _wait_or_kill(conn: socket.socket, pid: int) -> int:
    """Waits for the command's process; kills it if the client goes away first (the client
    forwards the signals it can catch; this covers the ones it cannot)."""
    if not hasattr(os, "pidfd_open"):  # macOS, the BSDs: look every 50 ms
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status
            ready, _, _ = select.select([conn.fileno()], [], [], 0.05)
            if ready and not conn.recv(1, socket.MSG_PEEK):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                return os.waitpid(pid, 0)[1]
    pidfd = os.pidfd_open(pid)
    try:
        while True:
            ready, _, _ = select.select([pidfd, conn.fileno()], [], [])
            if pidfd in ready:
                return os.waitpid(pid, 0)[1]
            if conn.fileno() in ready and not conn.recv(1, socket.MSG_PEEK):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                return os.waitpid(pid, 0)[1]
    finally:
        os.close(pidfd)


def _run_command(request: dict[str, Any], fds: list[int], conn: socket.socket, learned_path: str) -> None:
    """In the command's process: becomes the client's process, runs the CLI, exits."""
    before = set(sys.modules)
    stdio = list(request.get("stdio") or [])
    *passed, cwd_fd = fds
    for target in (0, 1, 2):
        if target in stdio:
            os.dup2(passed[stdio.index(target)], target)
        else:
            with contextlib.suppress(OSError):
                os.close(target)
    for fd in passed:
        if fd > 2:
            os.close(fd)
    os.fchdir(cwd_fd)
    os.close(cwd_fd)
    os.umask(int(request["umask"]))
    os.environ.clear()
    os.environ.update(request["env"])
    time.tzset()
    import tempfile

    tempfile.tempdir = None  # chosen again from this environment's TMPDIR
    sys.argv = list(request["argv"])
    main = types.ModuleType("__main__")
    main.__package__ = request.get("main_package")
    sys.modules["__main__"] = main  # Click names the program from it and argv[0]
    for name in ("SIGTERM", "SIGHUP", "SIGQUIT", "SIGWINCH", "SIGUSR1", "SIGUSR2", "SIGCHLD"):
        signal.signal(getattr(signal, name), signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN if request.get("sigint_ignored") else signal.default_int_handler)
    _reopen_stdio(stdio)
    code = _run_cli()
    launcher.flush_stdio()
    for fd in (0, 1, 2):  # a reader of our output sees its end now, not after the bookkeeping
        with contextlib.suppress(OSError):
            os.close(fd)
    # Told here rather than by the waiter once this process is gone: a hop less before the
    # client exits (the waiter says it again, and reports a death by a signal).
    with contextlib.suppress(OSError):
        launcher.send_message(conn, {"exit": code})
    conn.close()
    Learned.record(learned_path, before)
    os._exit(code)


def _reopen_stdio(present: list[int]) -> None:
    """New sys.stdin/stdout/stderr on the client's descriptors, set up as Python sets them up
    at start-up (the helper's own are /dev/null): line-buffered on a terminal, stderr always
    line-buffered and backslash-escaped, unbuffered under PYTHONUNBUFFERED."""
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    encoding = sys.stdout.encoding if sys.stdout is not None else "utf-8"
    errors = (sys.stdout.errors if sys.stdout is not None else None) or "strict"

    def stream(fd: int, write: bool, stream_errors: str) -> io.TextIOWrapper | None:
        if fd not in present:
            return None
        raw = io.FileIO(fd, "w" if write else "r", closefd=False)
        tty = raw.isatty()
        buffered: Any = raw
        if not (write and unbuffered):
            buffered = io.BufferedWriter(raw) if write else io.BufferedReader(raw)
        return io.TextIOWrapper(
            buffered,
            encoding=encoding,
            errors=stream_errors,
            line_buffering=write and (tty or fd == 2),
            write_through=write and unbuffered,
        )

    sys.stdin = sys.__stdin__ = stream(0, False, errors)  # type: ignore[misc]
    sys.stdout = sys.__stdout__ = stream(1, True, errors)  # type: ignore[misc]
    sys.stderr = sys.__stderr__ = stream(2, True, "backslashreplace")  # type: ignore[misc]


def _run_cli() -> int:
    """Runs the CLI's main as the interpreter would run a script: the exit code it would end with."""
    from codex_daytona.cli import main

    try:
        main()
    except SystemExit as exc:
        return launcher.exit_status(exc)
    except KeyboardInterrupt:
        import traceback

        traceback.print_exc()
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        return 130
    except BaseException:
        import traceback

        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1], sys.argv[2], float(sys.argv[3])))
