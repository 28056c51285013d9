"""The user's own hands on the sandbox: `exec` (one command, streamed), `shell` (a terminal
over Daytona's PTY sessions) and `ssh` (Daytona SSH access).
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from codex_daytona import events as ev
from codex_daytona.errors import CodexDaytonaError, DaytonaError, InterruptedByUser, TurnTimeoutError
from codex_daytona.sandbox import runtime
from codex_daytona.usecases.context import SESSION_ID, TOOL_LABEL, Box, Context, OnEvent


def exec_command(ctx: Context, command: str, *, timeout: float | None = None) -> int:
    """Runs a shell command in the sandbox's home, streams its output; returns its exit code.

    The command runs in a shell of its own (the agent's `--exec`), in a session of its own
    that is deleted afterwards: `exit`, `exec`, `cd` or `export` in it cannot break or
    change anything for the next command, and a background job it starts does not keep it
    running."""
    stream = CommandStream(ctx.box(), ctx.emit)
    try:
        return stream.run(command, timeout)
    except KeyboardInterrupt:
        raise InterruptedByUser("Interrupted: the command was stopped.") from None
    except TurnTimeoutError:
        raise TurnTimeoutError(f"The command did not finish within {timeout:g} s; it was stopped.") from None
    finally:
        stream.close()


@dataclass(frozen=True)
class ExecResult:
    """An `exec` command's end: its output went by as it ran; --json adds its exit code."""

    exit_code: int

    @property
    def human(self) -> str:
        return ""

    @property
    def quiet(self) -> str:
        return ""

    def to_json(self) -> dict[str, object]:
        return {"exit_code": self.exit_code}


@dataclass(frozen=True)
class SshResult:
    sandbox_id: str
    command: str  # the ssh command line, token included
    expires_at: str

    @property
    def human(self) -> str:
        return self.command

    @property
    def quiet(self) -> str:
        return self.command

    def to_json(self) -> dict[str, object]:
        return {"sandbox_id": self.sandbox_id, "ssh_command": self.command, "expires_at": self.expires_at}


def ssh(ctx: Context, minutes: int) -> SshResult:
    """SSH access to the sandbox for `minutes` (Daytona revokes the earlier tokens); starts or
    resumes the sandbox first."""
    box = ctx.box()
    access = box.ssh_access(minutes)
    return SshResult(box.id, access.command, access.expires_at)


def open_shell(ctx: Context, rows: int, cols: int) -> RemoteShell:
    """An interactive shell on a terminal of rows x cols in the sandbox's home (Daytona's PTY
    sessions); starts or resumes the sandbox first. A terminal that reports no size (0 x 0: a
    fresh `docker exec -t`, some CI ptys) gets 24 x 80."""
    rows, cols = _size(rows, cols)
    box = ctx.box()
    pty_id = f"{TOOL_LABEL}-shell-{secrets.token_hex(4)}"
    handle = box.open_pty(pty_id, box.record.home_dir or None, rows, cols)
    return RemoteShell(box, pty_id, handle)


class RemoteShell:
    """A shell on a terminal in the sandbox: bytes in, bytes out, resize, its exit code."""

    def __init__(self, box: Box, pty_id: str, handle: Any) -> None:
        self._box = box
        self.pty_id = pty_id
        self._handle = handle

    def send(self, data: bytes) -> None:
        try:
            self._handle.send_input(data)
        except Exception as exc:  # the SDK's connection errors: the shell is gone
            raise DaytonaError(f"The terminal connection dropped: {exc}") from exc

    def resize(self, rows: int, cols: int) -> None:
        self._box.resize_pty(self.pty_id, *_size(rows, cols))

    def output(self) -> Iterator[bytes]:
        """What the shell writes, until it exits (or the connection drops)."""
        yield from self._handle

    @property
    def exit_code(self) -> int | None:
        code = self._handle.exit_code
        return None if code is None else int(code)

    @property
    def error(self) -> str | None:
        return self._handle.error  # type: ignore[no-any-return]

    def close(self) -> None:
        """Ends the shell if it still runs (a dropped connection must not leave it behind)."""
        if self.exit_code is None:
            with contextlib.suppress(CodexDaytonaError):
                self._box.kill_pty(self.pty_id)
        with contextlib.suppress(Exception):
            self._handle.disconnect()


class CommandStream:
    """Runs one `exec` command in a session of its own and streams its stdout and stderr as
    EXEC_OUTPUT events, line by line, until it exits; the session is deleted afterwards.

    The agent ends each stream with a marker line (stdout's carries the exit code), so the
    stream ends with the command, not a second later when Daytona closes it."""

    def __init__(self, box: Box, emit: OnEvent) -> None:
        self.box = box
        self.emit = emit
        self.session = f"{SESSION_ID}-exec-{secrets.token_hex(3)}"
        self.marker = f"codex-daytona-done-{secrets.token_hex(8)}"
        self.sent = {"stdout": 0, "stderr": 0}  # characters of each stream taken in
        self._partial = {"stdout": "", "stderr": ""}
        self._done: dict[str, str] = {}  # stream -> what followed its marker

    def _take(self, stream: str, text: str) -> None:
        if stream in self._done or not text:
            return
        self.sent[stream] += len(text)
        *lines, self._partial[stream] = (self._partial[stream] + text).split("\n")
        out = []
        for line in lines:
            if line == self.marker or line.startswith(self.marker + " "):
                self._done[stream] = line[len(self.marker) :].strip()
                break
            out.append(line + "\n")
        if out:
            self.emit({"type": ev.EXEC_OUTPUT, "stream": stream, "data": "".join(out)})

    def _finished(self) -> bool:
        return len(self._done) == 2

    def run(self, command: str, timeout: float | None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        box = self.box
        box.create_session(self.session)  # new: one request, not a 404 first
        command_id = box.start_command(self.session, runtime.exec_command(box.layout, command, self.marker))
        try:
            finished = box.stream_logs(
                self.session,
                command_id,
                lambda t: self._take("stdout", t),
                lambda t: self._take("stderr", t),
                timeout=timeout,
                until=self._finished,
            )
        except DaytonaError:
            finished = True  # the stream dropped: read the rest below
        if not finished:
            raise TurnTimeoutError("The command did not finish in time.")
        while not self._finished():
            exit_code = box.command_exit_code(self.session, command_id)
            stdout, stderr = box.command_logs(self.session, command_id)
            self._take("stdout", stdout[self.sent["stdout"] :])
            self._take("stderr", stderr[self.sent["stderr"] :])
            if exit_code is not None:
                for stream in ("stdout", "stderr"):
                    self._take(stream, "\n" if self._partial[stream] else "")
                return int(self._done.get("stdout") or exit_code)
            if deadline is not None and time.monotonic() > deadline:
                raise TurnTimeoutError("The command did not finish in time.")
            time.sleep(0.5)
        return int(self._done["stdout"])

    def close(self) -> None:
        """Deletes the session, which stops the command if it still runs."""
        with contextlib.suppress(DaytonaError):
            self.box.delete_session(self.session)


def _size(rows: int, cols: int) -> tuple[int, int]:
    """A terminal size Daytona's PTY takes: 0 (unknown) becomes 24 rows or 80 columns."""
    return (rows if rows > 0 else 24), (cols if cols > 0 else 80)
