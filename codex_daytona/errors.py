"""Exit codes and the errors a user can cause. Imports nothing of ours.

Every expected failure is a CodexDaytonaError: one line of message, a hint saying what
to do next, and the exit code the process ends with. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """How `codex-daytona` ends. Scripts may rely on these."""

    OK = 0
    ERROR = 1  # anything that went wrong that is not listed below
    USAGE = 2  # bad arguments or options
    TURN_FAILED = 3  # the agent's turn failed (the model's error is printed)
    CONFIG = 4  # a missing or invalid setting
    NO_SANDBOX = 5  # there is no sandbox here, or it was deleted behind our back
    BUSY = 6  # another turn is running on this sandbox
    DAYTONA = 7  # Daytona refused or failed a request
    TIMEOUT = 124  # --timeout ran out; the turn was interrupted
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT); sandbox and thread are kept


class CodexDaytonaError(Exception):
    """An error with a one-line message, a hint, and an exit code."""

    exit_code: ExitCode = ExitCode.ERROR
    default_hint: str = ""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = self.default_hint if hint is None else hint
        # The turn this error ended (a turns.TurnOutcome), for machine output and the fan-out.
        self.outcome: object | None = None


class ConfigError(CodexDaytonaError):
    exit_code = ExitCode.CONFIG
    default_hint = "Set it in the environment or in a .env file here (see .env.example)."


class StateError(CodexDaytonaError):
    default_hint = "Fix or delete the file; `codex-daytona down` cannot find the sandbox without it."


class NoSandboxError(CodexDaytonaError):
    exit_code = ExitCode.NO_SANDBOX
    default_hint = "Run `codex-daytona up` (or just `codex-daytona ask ...`) to create one."


class SandboxGoneError(NoSandboxError):
    default_hint = "It was forgotten here; `codex-daytona up` creates a new one."


class DaytonaError(CodexDaytonaError):
    exit_code = ExitCode.DAYTONA
    default_hint = "Check DAYTONA_API_KEY, DAYTONA_API_URL and your network, then try again."


class CommandGoneError(DaytonaError):
    """Daytona no longer knows a session or one of its commands (the sandbox restarted, or
    the session was deleted): what it was running must be reached another way."""


class AgentSetupError(CodexDaytonaError):
    default_hint = "Run `codex-daytona up` again; if it keeps failing, `codex-daytona down` and retry."


class TurnFailedError(CodexDaytonaError):
    exit_code = ExitCode.TURN_FAILED
    default_hint = "The sandbox and the thread are kept: fix the cause and ask again."


class BusyError(CodexDaytonaError):
    exit_code = ExitCode.BUSY


class TurnTimeoutError(CodexDaytonaError):
    exit_code = ExitCode.TIMEOUT
    default_hint = "The turn was interrupted; the thread is kept. Raise --timeout or ask again."


class InterruptedByUser(CodexDaytonaError):
    exit_code = ExitCode.INTERRUPTED
    default_hint = "The sandbox and the thread are kept; ask again to continue."


class UsageError(CodexDaytonaError):
    exit_code = ExitCode.USAGE


class TransferError(CodexDaytonaError):
    """push, pull, diff or a clone failed."""

    default_hint = "Check the paths and try again."


class PullConflictError(CodexDaytonaError):
    """A pull would overwrite local files that differ from the sandbox's."""

    default_hint = "Commit, move or discard your local changes, or pass --force to overwrite them."
