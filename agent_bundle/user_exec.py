"""`codex-daytona exec`: a user's command in a shell of its own, in the sandbox's home."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import BinaryIO

from agent_bundle.detach import relay


def user_shell() -> str:
    """The shell Daytona itself runs commands with: zsh, else bash, else sh."""
    import shutil

    return next((s for s in ("zsh", "bash") if shutil.which(s)), "sh")


def run_user_command(command: str, cwd: str, background_log: str, done_marker: str | None = None) -> int:
    """Runs `command` in a shell of its own, relays its output, and returns its exit code as
    soon as that shell exits.

    A Daytona session sources its commands into one long-lived shell, where `exit`, `exec`,
    `set -e` or `cd` would act on that shell; here they act on the user's own shell. Daytona
    ends a command only when every process holding its output has exited, so a background
    job the command started (`server &`) would keep it running: once the shell has exited, a
    detached drainer takes over such a job's output (into `background_log`) and we return
    (detach.relay, as the shell hooks' hand-over does). With `done_marker`, a last line
    `<marker> <exit code>` on stdout and `<marker>` on stderr tell the reader that each
    stream is complete, without waiting for Daytona to close it."""
    proc = subprocess.Popen(
        [user_shell(), "-c", command],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    ends: dict[int, bytes] = {}  # the last byte relayed on each stream

    def writer(sink: BinaryIO) -> Callable[[bytes], object]:
        def write(data: bytes) -> None:
            sink.write(data)
            sink.flush()
            ends[sink.fileno()] = data[-1:]

        return write

    sinks = {proc.stdout.fileno(): writer(sys.stdout.buffer), proc.stderr.fileno(): writer(sys.stderr.buffer)}
    code = relay(proc.pid, lambda block: proc.wait() if block else proc.poll(), sinks, background_log)
    if done_marker:
        for sink, line in ((sys.stdout.buffer, f"{done_marker} {code}\n"), (sys.stderr.buffer, f"{done_marker}\n")):
            sink.write((b"" if ends.get(sink.fileno(), b"\n") == b"\n" else b"\n") + line.encode())
            sink.flush()
    return code
