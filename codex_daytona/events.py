"""The event vocabulary: what the agent in the sandbox emits and what `ask --json` prints.

Events are plain dicts, one JSON object per line. The `codex exec --json` events are exactly
the lines `codex exec --json` (0.163) prints for the same turn (the agent maps Codex's
notifications as exec does: item ids item_0, item_1, ..., messages and reasoning only once
complete, warnings as `error` items, retries as `error` events, nothing after an interrupt),
plus a `ts` field. Ours are separate lines namespaced `codex_daytona.*`, which consumers of
exec's stream ignore; `--exec-json` leaves them (and `ts`) out. Imports nothing of ours but
the agent's protocol, which names the events the agent emits.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from typing import Any

from agent_bundle import protocol

Event = dict[str, Any]

# `codex exec --json`
THREAD_STARTED = "thread.started"
TURN_STARTED = "turn.started"
TURN_COMPLETED = "turn.completed"
TURN_FAILED = "turn.failed"
ITEM_STARTED = "item.started"
ITEM_UPDATED = "item.updated"
ITEM_COMPLETED = "item.completed"
ERROR = "error"

# Item types
COMMAND = "command_execution"
FILE_CHANGE = "file_change"
AGENT_MESSAGE = "agent_message"
REASONING = "reasoning"
TODO_LIST = "todo_list"
MCP_TOOL_CALL = "mcp_tool_call"
COLLAB_TOOL_CALL = "collab_tool_call"  # a sub-agent (collaboration) tool call
WEB_SEARCH = "web_search"
ERROR_ITEM = "error"  # a warning that does not end the turn ("Model metadata for `x` not found...")

# Ours. The agent emits the run, ports, resume, text, item details, turn usage and interrupt
# events; the CLI adds the rest.
RUN_STARTED = protocol.RUN_STARTED
RUN_COMPLETED = protocol.RUN_COMPLETED
# The ports listening after the turn ({listening, new, settling}): `settling` > 0 when a process
# the turn left in the background has not bound a port yet, and the agent then watches that
# many seconds more, after the closing event, for its late ports ({listening, new, late: true}),
# and ends with PORTS_SETTLED ({new, waited_ms}), the run's very last event.
PORTS = protocol.PORTS
PORTS_SETTLED = protocol.PORTS_SETTLED
# The text of a message or reasoning so far, while the model writes it ({item_type, text}).
TEXT = protocol.TEXT
# What exec leaves out of an item, just before its item.completed ({item_id, duration_ms} for
# a command, {item_id, changes: [{path, added, removed}]} for a file change).
ITEM_DETAILS = protocol.ITEM_DETAILS
# This turn's own tokens ({usage}; exec's turn.completed usage is the thread's running total).
TURN_USAGE = protocol.TURN_USAGE
# The turn was interrupted (exec prints nothing then): {items} the running items it cut short.
TURN_INTERRUPTED = protocol.TURN_INTERRUPTED
RETRY = "codex_daytona.retry"  # the CLI reconnects a dropped log stream
RESUME_FAILED = protocol.RESUME_FAILED
WARNING = "codex_daytona.warning"
PROGRESS = "codex_daytona.progress"  # setup steps: creating the sandbox, installing the agent
PREVIEW = "codex_daytona.preview"
AGENT_OUTPUT = "codex_daytona.agent_output"  # a line from the agent that is not an event
RESULT = "codex_daytona.result"  # the last line of `ask --json`
EXEC_OUTPUT = "codex_daytona.exec.output"  # a chunk of `exec`'s stdout or stderr
BUSY = protocol.BUSY
# The run names a key the agent does not hold: the CLI hands it over (never in the run's stream).
KEY_NEEDED = protocol.KEY_NEEDED
# `ask --fanout`: one attempt's status changed ({sandbox, status, detail, started}).
FANOUT_UPDATE = "codex_daytona.fanout.update"
# A batch begins: {total, skipped, parallel} (tasks in the file, already in the results, at once).
BATCH_STARTED = "codex_daytona.batch.started"
# A batch task's progress ({id, status, detail}; done: true with its final status and usage).
BATCH_TASK = "codex_daytona.batch.task"


def progress(message: str) -> Event:
    return {"type": PROGRESS, "message": message}


def warning(message: str) -> Event:
    return {"type": WARNING, "message": message}


def parse_line(line: str) -> Event | None:
    """One line of the agent's output as an event. A line that is not a JSON object (a stray
    print, a warning from a library) becomes an AGENT_OUTPUT event rather than being lost."""
    line = line.strip()
    if not line:
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return {"type": AGENT_OUTPUT, "text": line}
    if not isinstance(value, dict) or "type" not in value:
        return {"type": AGENT_OUTPUT, "text": line}
    return value


def is_ours(event: Event) -> bool:
    """A codex-daytona event, not one of `codex exec --json`'s."""
    return str(event.get("type", "")).startswith("codex_daytona.")


def as_exec(event: Event) -> Event:
    """One of exec's events exactly as exec prints it: without the `ts` we add."""
    return {k: v for k, v in event.items() if k != "ts"}


SHELLS = ("bash", "sh", "zsh", "dash")


def command_text(item: Event) -> str:
    """A command item's command as people read it: Codex runs each as `/bin/bash -lc '<script>'`
    and reports it so; the script alone says what runs. Anything else is shown as it is."""
    command = str(item.get("command", ""))
    try:
        argv = shlex.split(command)
    except ValueError:
        return command
    if len(argv) == 3 and argv[0].rsplit("/", 1)[-1] in SHELLS and argv[1] in ("-c", "-lc"):
        return argv[2]
    return command


def command_ok(item: Event) -> bool:
    """The one rule for a command item: it completed with exit code 0 (or none given)."""
    return item.get("status") == "completed" and item.get("exit_code") in (0, None)


@dataclass
class TurnTally:
    """What a turn did, counted from its completed items: the commands it ran, those that
    failed, the files it changed. The closing line of a turn and a fan-out's table read it."""

    started: float = 0.0
    commands: int = 0
    failed: int = 0
    files: set[str] = field(default_factory=set)

    def count(self, item: Event) -> None:
        if item.get("type") == COMMAND:
            self.commands += 1
            self.failed += not command_ok(item)
        elif item.get("type") == FILE_CHANGE:
            self.files.update(str(c.get("path")) for c in item.get("changes") or [])
