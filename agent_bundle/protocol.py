"""The contract between codex-daytona and its agent in the sandbox: both sides import this.

The request a turn sends, the `codex_daytona.*` events the agent emits, the run's closing
event, the exit codes, the key's variable and fingerprint. Standard library only, and
nothing of `codex_daytona`: it is uploaded with the rest of the agent (see bundle_files).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:
    import socket

PROTOCOL = 2  # the request's `protocol`: an agent refuses a request of another version
KEY_ENV = "CODEX_DAYTONA_OPENAI_API_KEY"  # the variable that carries the key to the agent and to Codex

# How the agent's commands end; codex-daytona's own ExitCode (errors.py) uses the same numbers.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_TURN_FAILED = 3
EXIT_BUSY = 6
EXIT_INTERRUPTED = 130  # 128 + SIGINT

# The events of ours the agent emits, besides the `codex exec --json` ones (the host's
# events.py describes each and adds its own).
RUN_STARTED = "codex_daytona.run.started"
RUN_COMPLETED = "codex_daytona.run.completed"
PORTS = "codex_daytona.ports"
PORTS_SETTLED = "codex_daytona.ports.settled"
TEXT = "codex_daytona.text"
ITEM_DETAILS = "codex_daytona.item.details"
TURN_USAGE = "codex_daytona.turn.usage"
TURN_INTERRUPTED = "codex_daytona.turn.interrupted"
RESUME_FAILED = "codex_daytona.resume_failed"
BUSY = "codex_daytona.busy"
KEY_NEEDED = "codex_daytona.key_needed"


class Request(TypedDict, total=False):
    """A turn's request, one JSON object: what the CLI sends (runtime.agent_request), plus
    `run_id` and `api_key`, which the agent adds itself. The key never travels in it: `key_id`
    names it by its fingerprint."""

    protocol: int
    prompt: str
    key_id: str | None
    thread_id: str | None
    new_thread: bool
    model: str | None
    base_url: str | None
    codex_home: str
    wait: bool
    model_timeout: float | None
    heartbeat_seconds: float | None
    turn_model: str | None
    effort: str | None
    config: dict[str, object]  # the tool's own settings, `-c` overrides no config file outranks
    user_config: list[str]  # `ask -c KEY=VALUE`
    images: list[str]  # only when given
    output_schema: dict[str, object]  # only when given
    must_resume: bool  # only when true
    # Added by the agent.
    run_id: str
    api_key: str


class RunCompleted(TypedDict, total=False):
    """The run's closing event (RUN_COMPLETED): how it ended and what it produced."""

    type: str
    run_id: str
    status: str  # completed, failed, interrupted, error, busy
    exit_code: int
    thread_id: str | None
    error: str | None
    final_message: str | None
    usage: dict[str, int] | None
    duration_ms: int
    running_run_id: str | None  # with status busy: the run that holds the sandbox's turn


class PrepareReply(TypedDict, total=False):
    """The daemon's answer to a prepare (`--prepare`, which prints it as {"prepare": ...}):
    whether Codex's app-server, and a new thread when the request names none, are ready for
    the first turn. `up` does not read it (a turn that finds nothing prepared starts as it
    always did); the agent's debug log keeps it."""

    pid: int
    prepared: bool
    thread_id: str | None  # the prepared thread's; None when the request names a thread
    error: str  # why nothing was prepared (the key masked)


def run_completed(run_id: str, status: str, exit_code: int, **fields: Any) -> dict[str, Any]:
    """The closing event of run `run_id` (RunCompleted); `fields` are its others."""
    return {"type": RUN_COMPLETED, "run_id": run_id, "status": status, "exit_code": exit_code, **fields}


def key_fingerprint(key: str) -> str:
    """Names a key without revealing it."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def bundle_files(root: Path | None = None) -> dict[str, bytes]:
    """The agent as it is uploaded: every module of this package (`root`), by file name."""
    root = root or Path(__file__).parent
    return {path.name: path.read_bytes() for path in sorted(root.glob("*.py"))}


def bundle_digest(files: dict[str, bytes]) -> str:
    """Names a version of the agent: changes when any file of it does."""
    digest = hashlib.sha256()
    for name, data in sorted(files.items()):
        digest.update(hashlib.sha256(name.encode() + b"\0" + data).digest())
    return digest.hexdigest()


def listen_private(path: str, backlog: int) -> socket.socket:
    """A unix socket listening at `path`, in place of any stale one, with mode 0600 from the
    moment it exists (the umask at bind; a chmod after it would leave a window). The agent's
    daemon and the CLI's local helper (codex_daytona/helper.py) both listen through this."""
    import socket  # here, not at the top: most of the agent's commands never listen

    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        server.bind(path)
    finally:
        os.umask(old_umask)
    server.listen(backlog)
    return server
