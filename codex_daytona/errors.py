"""Exit codes and the errors a user can cause. Imports nothing of ours but the agent's
protocol (the exit codes the agent's commands end with are the CLI's).

Every expected failure is a CodexDaytonaError: one line of message, a hint saying what
to do next, and the exit code the process ends with. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

from enum import IntEnum

from agent_bundle import protocol


class ExitCode(IntEnum):
    """How `codex-daytona` ends. Scripts may rely on these."""

    OK = protocol.EXIT_OK
    ERROR = protocol.EXIT_ERROR  # anything that went wrong that is not listed below
    USAGE = 2  # bad arguments or options
    TURN_FAILED = protocol.EXIT_TURN_FAILED  # the agent's turn failed (the model's error is printed)
    CONFIG = 4  # a missing or invalid setting
    NO_SANDBOX = 5  # there is no sandbox here, or it was deleted behind our back
    BUSY = protocol.EXIT_BUSY  # another turn is running on this sandbox
    DAYTONA = 7  # Daytona refused or failed a request
    TIMEOUT = 124  # --timeout ran out; the turn was interrupted
    INTERRUPTED = protocol.EXIT_INTERRUPTED  # Ctrl-C (128 + SIGINT); sandbox and thread are kept


class CodexDaytonaError(Exception):
    """An error with a one-line message, a hint, and an exit code."""

    exit_code: ExitCode = ExitCode.ERROR
    default_hint: str = ""
    status: str = "error"  # how a fan-out lists an attempt this error ended

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = self.default_hint if hint is None else hint


class ConfigError(CodexDaytonaError):
    """A setting is missing or invalid: a key, a URL, a value in .env."""

    exit_code = ExitCode.CONFIG
    default_hint = "Set it in the environment or in a .env file here (see .env.example)."


class StateError(CodexDaytonaError):
    """The state file cannot be read or written; it is left as it is."""

    default_hint = "Fix or delete the file; `codex-daytona down` cannot find the sandbox without it."


class NoSandboxError(CodexDaytonaError):
    """The command needs a sandbox and this directory has none by that name."""

    exit_code = ExitCode.NO_SANDBOX
    default_hint = "Run `codex-daytona up` (or just `codex-daytona ask ...`) to create one."


class SandboxGoneError(NoSandboxError):
    """The state file named a sandbox Daytona no longer has."""

    default_hint = "It was forgotten here; `codex-daytona up` creates a new one."


class DaytonaError(CodexDaytonaError):
    """Daytona refused or failed a request, or could not be reached."""

    exit_code = ExitCode.DAYTONA
    default_hint = "Check DAYTONA_API_KEY, DAYTONA_API_URL and your network, then try again."


class QuotaError(DaytonaError):
    """The organization's sandboxes already use all the CPU, memory or disk its Daytona tier
    allows: a new or restarted sandbox does not fit until some are stopped or deleted."""

    default_hint = (
        "Stop or delete sandboxes you no longer need (`codex-daytona ls --all`, then "
        "`codex-daytona down --others` or `down --name NAME`), or raise the limit in Daytona's "
        "dashboard (Limits)."
    )


class RateLimitError(DaytonaError):
    """Daytona answered 429: too many requests with this API key for now."""


class NoRunnerError(DaytonaError):
    """No Daytona runner took the new sandbox in time; Daytona deleted it (a queue timeout)."""


class CommandGoneError(DaytonaError):
    """Daytona no longer knows a session or one of its commands (the sandbox restarted, or
    the session was deleted): what it was running must be reached another way."""


class AgentSetupError(CodexDaytonaError):
    """Installing or starting the agent in the sandbox failed."""

    default_hint = "Run `codex-daytona up` again; if it keeps failing, `codex-daytona down` and retry."


class TurnFailedError(CodexDaytonaError):
    """The agent's turn ended in failure: the model's or Codex's error, as the agent reports it."""

    exit_code = ExitCode.TURN_FAILED
    status = "failed"
    default_hint = "The sandbox and the thread are kept: fix the cause and ask again."


class BusyError(CodexDaytonaError):
    """Another turn is running on this sandbox; `--wait` queues behind it instead."""

    exit_code = ExitCode.BUSY


class TurnTimeoutError(CodexDaytonaError):
    """--timeout ran out and the turn was interrupted."""

    exit_code = ExitCode.TIMEOUT
    status = "timeout"
    default_hint = "The turn was interrupted; the thread is kept. Raise --timeout or ask again."


class InterruptedByUser(CodexDaytonaError):
    """Ctrl-C: the turn was interrupted, or the command stopped before it began one."""

    exit_code = ExitCode.INTERRUPTED
    status = "interrupted"
    default_hint = "The sandbox and the thread are kept; ask again to continue."


class UsageError(CodexDaytonaError):
    """Arguments or options that cannot go together, or a value out of range."""

    exit_code = ExitCode.USAGE


class TransferError(CodexDaytonaError):
    """push, pull, diff or a clone failed."""

    default_hint = "Check the paths and try again."


class PullConflictError(CodexDaytonaError):
    """A pull would overwrite local files that differ from the sandbox's."""

    default_hint = "Commit, move or discard your local changes, or pass --force to overwrite them."
