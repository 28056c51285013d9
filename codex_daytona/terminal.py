"""The local end of `codex-daytona shell`: this terminal wired to a shell in the sandbox.

Raw mode while it runs (so Ctrl-C, Ctrl-D, arrows and tab reach the remote program, not
us), the window size passed on at start and on every SIGWINCH, the remote output written
to stdout as it comes, and the terminal restored on every way out. Writes to the terminal
by design: it is the output layer of this one command. Imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any, Protocol


class Remote(Protocol):
    def send(self, data: bytes) -> None: ...
    def resize(self, rows: int, cols: int) -> None: ...
    def output(self) -> Iterator[bytes]: ...
    @property
    def exit_code(self) -> int | None: ...


def window_size() -> tuple[int, int]:
    """(rows, cols) of the terminal on stdin or stdout, else 24 x 80."""
    for fd in (0, 1):
        with contextlib.suppress(OSError):
            size = os.get_terminal_size(fd)
            return size.lines, size.columns
    size = shutil.get_terminal_size((80, 24))
    return size.lines, size.columns


@contextlib.contextmanager
def raw_mode(fd: int) -> Iterator[None]:
    """The terminal on `fd` in raw mode, restored however we leave (a no-op off a terminal)."""
    if not os.isatty(fd):
        yield
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)  # not TCSAFLUSH: what was typed ahead goes to the shell
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


class _Hangup(Exception):
    """SIGTERM or SIGHUP while the shell runs: leave, restoring the terminal on the way."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _hang_up(signum: int, _frame: Any) -> None:
    raise _Hangup(signum)


def run(remote: Remote, stdin_fd: int = 0) -> int:
    """Pumps stdin to the remote shell and its output to stdout until it exits; returns its
    exit code (1 when the connection dropped without one; 128+N on SIGTERM or SIGHUP, after
    which the caller ends the remote shell)."""
    out = sys.stdout.buffer
    wake_r, wake_w = os.pipe()
    ended = threading.Event()
    resized = threading.Event()

    def pump_output() -> None:
        try:
            for data in remote.output():
                out.write(data)
                out.flush()
        finally:  # a dropped connection leaves no exit code: the caller says so
            ended.set()
            with contextlib.suppress(OSError):
                os.write(wake_w, b"x")

    def on_winch(_sig: int, _frame: Any) -> None:
        resized.set()
        with contextlib.suppress(OSError):
            os.write(wake_w, b"w")

    main = threading.current_thread() is threading.main_thread()
    handlers = {signal.SIGWINCH: on_winch, signal.SIGTERM: _hang_up, signal.SIGHUP: _hang_up} if main else {}
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    reader = threading.Thread(target=pump_output, name="shell-output", daemon=True)
    reader.start()
    stdin_open = True
    try:
        with raw_mode(stdin_fd):
            while not ended.is_set():
                watch = [wake_r, stdin_fd] if stdin_open else [wake_r]
                try:
                    ready, _, _ = select.select(watch, [], [])
                except InterruptedError:
                    continue
                except KeyboardInterrupt:  # off a terminal there is no raw mode: pass it on
                    remote.send(b"\x03")
                    continue
                if wake_r in ready:
                    os.read(wake_r, 64)
                if resized.is_set():
                    resized.clear()
                    rows, cols = window_size()
                    with contextlib.suppress(Exception):
                        remote.resize(rows, cols)
                if stdin_open and stdin_fd in ready:
                    data = os.read(stdin_fd, 4096)
                    if data:
                        remote.send(data)
                    else:
                        stdin_open = False  # a pipe ran dry: end of input for the shell too
                        remote.send(b"\x04")
            reader.join(timeout=5)
    except _Hangup as exc:
        return 128 + exc.signum
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(wake_r)
        os.close(wake_w)
    code = remote.exit_code
    return 1 if code is None else code
