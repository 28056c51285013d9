"""The program codex-daytona runs inside the sandbox, once per turn.

It reads one JSON request line from stdin (the prompt, the OpenAI key, the thread to
resume), drives Codex through OpenAI's ``openai-codex`` SDK, and writes one JSON
event per line to stdout and to ``<runs-dir>/<run-id>/events.jsonl``, in the
vocabulary of ``codex exec --json`` plus a few ``codex_daytona.*`` events of its own.
Later stdin lines are control messages: ``{"op": "interrupt"}`` interrupts the turn.

The prompt and the key arrive on stdin so that neither is ever part of a command
line or of a file in the sandbox. The key is handed to Codex in its environment under
KEY_ENV, which Codex's shell environment policy hides from the commands it runs.

Only the standard library and openai_codex are used; this file runs on the sandbox's
Python (>= 3.10), never on the user's machine.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

PROTOCOL = 1
KEY_ENV = "CODEX_DAYTONA_OPENAI_API_KEY"
REQUEST_TIMEOUT_S = 120.0
# Ports the sandbox itself uses (Daytona's toolbox, terminal and SSH gateway).
DAYTONA_PORTS = frozenset({2280, 22220, 22222, 33333})

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_TURN_FAILED = 3
EXIT_INTERRUPTED = 130


class Emitter:
    """Writes events to stdout and to the run's event file, one JSON line each."""

    def __init__(self, events_path: Path | None, stream: TextIO, secrets: list[str]) -> None:
        self._stream = stream
        self._file = events_path.open("a", encoding="utf-8") if events_path else None
        self._secrets = [s for s in secrets if s]
        self._lock = threading.Lock()

    def add_secret(self, secret: str) -> None:
        if secret:
            self._secrets.append(secret)

    def emit(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
        for secret in self._secrets:
            line = line.replace(secret, "***")
        with self._lock:
            if self._file is not None:
                self._file.write(line + "\n")
                self._file.flush()
            self._stream.write(line + "\n")
            self._stream.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


# --- Mapping app-server notifications to `codex exec --json` events -----------------------


def _snake_status(status: str | None) -> str:
    return {"inProgress": "in_progress"}.get(status or "", status or "in_progress")


def _diff_counts(diff: str) -> dict[str, int]:
    added = removed = 0
    for line in diff.splitlines():
        if line.startswith("+") and not line.startswith("+++"):
            added += 1
        elif line.startswith("-") and not line.startswith("---"):
            removed += 1
    return {"added": added, "removed": removed}


def _file_change(item: dict[str, Any]) -> dict[str, Any]:
    changes = []
    for change in item.get("changes") or []:
        kind = change.get("kind")
        kind_name = kind.get("type") if isinstance(kind, dict) else kind
        diff = change.get("diff") or ""
        if kind_name == "add" and diff and not diff.startswith(("@@", "---", "diff")):
            # For an added file the app-server gives the file's content, not a diff.
            counts = {"added": len(diff.splitlines()), "removed": 0}
        else:
            counts = _diff_counts(diff)
        changes.append({"path": change.get("path"), "kind": kind_name, **counts})
    return {"type": "file_change", "changes": changes, "status": _snake_status(item.get("status"))}


def convert_item(item: dict[str, Any]) -> dict[str, Any] | None:
    """One app-server ThreadItem as an exec-JSON item, or None for items exec does not show."""
    kind = item.get("type")
    out: dict[str, Any] | None
    if kind == "commandExecution":
        out = {
            "type": "command_execution",
            "command": item.get("command", ""),
            "aggregated_output": item.get("aggregatedOutput") or "",
            "exit_code": item.get("exitCode"),
            "status": _snake_status(item.get("status")),
            "duration_ms": item.get("durationMs"),
        }
    elif kind == "fileChange":
        out = _file_change(item)
    elif kind == "agentMessage":
        out = {"type": "agent_message", "text": item.get("text", "")}
    elif kind == "reasoning":
        summary = item.get("summary") or []
        out = {"type": "reasoning", "text": "\n".join(str(s) for s in summary)}
    elif kind == "mcpToolCall":
        out = {
            "type": "mcp_tool_call",
            "server": item.get("server"),
            "tool": item.get("tool"),
            "arguments": item.get("arguments"),
            "result": item.get("result"),
            "error": item.get("error"),
            "status": _snake_status(item.get("status")),
        }
    elif kind == "webSearch":
        out = {"type": "web_search", "query": item.get("query", "")}
    else:
        return None
    out["id"] = item.get("id")
    return out


class TurnMapper:
    """Turns the notifications of one turn into exec-JSON events (a small state machine)."""

    def __init__(self) -> None:
        self.open_items: dict[str, dict[str, Any]] = {}
        self.todo_started = False
        self.todo_items: list[dict[str, Any]] = []
        self.first_usage: dict[str, Any] | None = None
        self.total_usage: dict[str, Any] | None = None
        self.final_message = ""
        self.status = "in_progress"
        self.error: str | None = None

    def feed(self, method: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        if method == "turn/started":
            return [{"type": "turn.started"}]
        if method in ("item/started", "item/completed"):
            item = convert_item(params.get("item") or {})
            if item is None:
                return []
            if method == "item/started":
                self.open_items[item["id"]] = item
                return [{"type": "item.started", "item": item}]
            self.open_items.pop(item["id"], None)
            if item["type"] == "agent_message":
                self.final_message = item["text"]
            return [{"type": "item.completed", "item": item}]
        if method == "turn/plan/updated":
            self.todo_items = [
                {"text": step.get("step", ""), "completed": step.get("status") == "completed"}
                for step in params.get("plan") or []
            ]
            event = "item.updated" if self.todo_started else "item.started"
            self.todo_started = True
            return [{"type": event, "item": self._todo()}]
        if method == "thread/tokenUsage/updated":
            usage = params.get("tokenUsage") or {}
            if self.first_usage is None:
                self.first_usage = usage
            self.total_usage = usage.get("total")
            return []
        if method == "error":
            error = params.get("error") or {}
            message = error.get("message") or "unknown error"
            details = error.get("additionalDetails")
            if details and details not in message:
                message = f"{message} ({details})"
            if params.get("willRetry"):
                return [{"type": "codex_daytona.retry", "message": message}]
            self.error = message
            return [{"type": "error", "message": message}]
        if method == "turn/completed":
            return self._finish(params.get("turn") or {})
        return []

    def _todo(self) -> dict[str, Any]:
        return {"id": "todo_list", "type": "todo_list", "items": self.todo_items}

    def _usage(self) -> dict[str, Any]:
        return _usage_json(self.total_usage)

    def turn_usage(self) -> dict[str, Any]:
        """This turn's own tokens: the cumulative total now less the total before the turn."""
        if self.first_usage is None or self.total_usage is None:
            return _usage_json(None)
        end = _usage_json(self.total_usage)
        first_total = _usage_json(self.first_usage.get("total"))
        first_last = _usage_json(self.first_usage.get("last"))
        return {k: end[k] - (first_total[k] - first_last[k]) for k in end}

    def _finish(self, turn: dict[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        self.status = turn.get("status") or "failed"
        # A command killed by an interrupt never gets item/completed: close it here.
        for item in list(self.open_items.values()):
            if item["type"] == "command_execution":
                item = dict(item, status="failed", exit_code=item.get("exit_code"))
            else:
                item = dict(item, status="failed")
            events.append({"type": "item.completed", "item": item})
        self.open_items.clear()
        if self.todo_started:
            events.append({"type": "item.completed", "item": self._todo()})
        if self.status == "completed":
            events.append({"type": "turn.completed", "usage": self._usage(), "turn_usage": self.turn_usage()})
            return events
        if self.status == "interrupted":
            self.error = "turn interrupted"
        else:
            error = turn.get("error") or {}
            self.error = error.get("message") or self.error or "turn failed"
        events.append(
            {
                "type": "turn.failed",
                "error": {"message": self.error},
                "status": self.status,
                "usage": self._usage(),
                "turn_usage": self.turn_usage(),
            }
        )
        return events


def _usage_json(usage: dict[str, Any] | None) -> dict[str, int]:
    usage = usage or {}
    return {
        "input_tokens": int(usage.get("inputTokens") or 0),
        "cached_input_tokens": int(usage.get("cachedInputTokens") or 0),
        "output_tokens": int(usage.get("outputTokens") or 0),
        "reasoning_output_tokens": int(usage.get("reasoningOutputTokens") or 0),
    }


# --- Listening ports ------------------------------------------------------------------


def _socket_owners(scope: str | None) -> set | None:
    """Socket inodes owned by processes of this sandbox (those whose environment carries
    CODEX_DAYTONA_SCOPE=scope). None when no scope is set: then every socket counts."""
    if not scope:
        return None
    marker = (f"CODEX_DAYTONA_SCOPE={scope}").encode()
    inodes = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                if marker not in fh.read().split(b"\0"):
                    continue
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    return inodes


def listening_ports(scope: str | None = None) -> list[int]:
    """TCP ports listening on any address in this sandbox, less Daytona's own."""
    owners = _socket_owners(scope)
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as fh:
                rows = fh.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) < 10 or fields[3] != "0A":  # 0A = LISTEN
                continue
            if owners is not None and fields[9] not in owners:
                continue
            port = int(fields[1].rsplit(":", 1)[1], 16)
            if port not in DAYTONA_PORTS:
                ports.add(port)
    return sorted(ports)


def loopback_only_ports(ports: list[int]) -> list[int]:
    """Ports from `ports` that listen only on 127.0.0.1/::1, which the preview proxy cannot reach."""
    wildcard, loopback = set(), set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as fh:
                rows = fh.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) < 4 or fields[3] != "0A":
                continue
            addr, port_hex = fields[1].rsplit(":", 1)
            port = int(port_hex, 16)
            if addr in ("0100007F", "00000000000000000000000001000000"):
                loopback.add(port)
            else:
                wildcard.add(port)
    return sorted(p for p in ports if p in loopback and p not in wildcard)


# --- The run --------------------------------------------------------------------------


def read_request(stream: TextIO, timeout: float) -> dict[str, Any]:
    """The first stdin line, as JSON. Fails after `timeout` seconds of silence."""
    box: dict[str, Any] = {}

    def reader() -> None:
        box["line"] = stream.readline()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    thread.join(timeout)
    line = box.get("line")
    if not line:
        raise RuntimeError(f"no request arrived on stdin within {timeout:.0f} s")
    request = json.loads(line)
    if request.get("protocol") != PROTOCOL:
        raise RuntimeError(f"request protocol {request.get('protocol')!r}, this agent speaks {PROTOCOL}")
    return request


def watch_controls(stream: TextIO, on_interrupt: Callable[[], None]) -> None:
    """Reads control lines after the request; EOF is not an interrupt."""

    def loop() -> None:
        for line in stream:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if message.get("op") == "interrupt":
                on_interrupt()

    threading.Thread(target=loop, daemon=True).start()


def codex_environment(request: dict[str, Any], codex_home: str) -> dict[str, str]:
    env = {"CODEX_HOME": codex_home, "CODEX_APP_SERVER_DISABLE_MANAGED_CONFIG": "1"}
    if request.get("api_key"):
        env[KEY_ENV] = request["api_key"]
    return env


def config_overrides(request: dict[str, Any]) -> list[str]:
    """`-c key=value` overrides for this turn: the values a user may change between turns."""
    overrides = []
    if request.get("base_url"):
        overrides.append("model_providers.codex-daytona.base_url={}".format(json.dumps(request["base_url"])))
    return overrides


class Interrupter:
    """Interrupts the running turn, or the next one to start if none runs yet."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handle: Any = None
        self.requested = False

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
        if handle is not None:
            handle.interrupt()


def run_turn(
    request: dict[str, Any], emit: Callable[[dict[str, Any]], None], home: str, interrupter: Interrupter
) -> dict[str, Any]:
    """Start or resume the thread, run one turn, emit its events; returns the outcome."""
    from openai_codex import ApprovalMode, Codex, CodexConfig, InvalidRequestError, Sandbox, TextInput

    codex_home = request.get("codex_home") or os.path.join(home, ".codex")
    config = CodexConfig(
        cwd=home,
        env=codex_environment(request, codex_home),
        config_overrides=tuple(config_overrides(request)),
    )
    model = request.get("model") or None
    outcome: dict[str, Any] = {"status": "failed", "thread_id": None, "error": None}
    with Codex(config) as codex:
        options = {
            "cwd": home,
            "approval_mode": ApprovalMode.deny_all,
            "sandbox": Sandbox.full_access,
            "model": model,
        }
        thread = None
        thread_id = request.get("thread_id")
        if thread_id and not request.get("new_thread"):
            try:
                thread = codex.thread_resume(thread_id, **options)
            except InvalidRequestError as exc:
                emit(
                    {
                        "type": "codex_daytona.resume_failed",
                        "thread_id": thread_id,
                        "message": f"could not resume thread {thread_id} ({exc}); starting a new thread",
                    }
                )
        if thread is None:
            thread = codex.thread_start(**options)
        outcome["thread_id"] = thread.id
        emit({"type": "thread.started", "thread_id": thread.id})
        mapper = TurnMapper()
        handle = thread.turn(TextInput(request["prompt"]))
        interrupter.attach(handle)
        for notification in handle.stream():
            params = notification.payload.model_dump(mode="json", by_alias=True)
            for event in mapper.feed(notification.method, params):
                emit(event)
        outcome.update(
            status=mapper.status,
            error=mapper.error,
            final_message=mapper.final_message,
            usage=mapper.turn_usage(),
        )
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-id")
    parser.add_argument("--runs-dir")
    parser.add_argument("--home", default=os.path.expanduser("~"))
    parser.add_argument("--list-ports", action="store_true", help="print the listening ports as JSON and exit")
    args = parser.parse_args(argv)
    if args.list_ports:
        print(json.dumps(listening_ports(os.environ.get("CODEX_DAYTONA_SCOPE"))))
        return EXIT_OK
    if not args.run_id or not args.runs_dir:
        parser.error("--run-id and --runs-dir are required")

    run_dir = Path(args.runs_dir) / args.run_id
    run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    emitter = Emitter(run_dir / "events.jsonl", sys.stdout, [])
    emit = emitter.emit
    started = time.time()
    emit({"type": "codex_daytona.run.started", "run_id": args.run_id, "pid": os.getpid(), "ts": started})
    try:
        request = read_request(sys.stdin, REQUEST_TIMEOUT_S)
    except Exception as exc:
        emit({"type": "codex_daytona.run.completed", "status": "error", "exit_code": EXIT_ERROR, "error": str(exc)})
        emitter.close()
        return EXIT_ERROR
    emitter.add_secret(request.get("api_key") or "")
    interrupter = Interrupter()

    def on_interrupt() -> None:
        try:
            interrupter.interrupt()
        except Exception as exc:  # the turn may have ended a moment ago
            emit({"type": "codex_daytona.warning", "message": f"interrupt failed: {exc}"})

    watch_controls(sys.stdin, on_interrupt)
    # SIGINT/SIGTERM from inside the sandbox (e.g. `kill`) interrupt the turn cleanly too.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: threading.Thread(target=on_interrupt, daemon=True).start())

    scope = os.environ.get("CODEX_DAYTONA_SCOPE")
    before = set(listening_ports(scope))
    try:
        outcome = run_turn(request, emit, args.home, interrupter)
    except Exception as exc:
        emit({"type": "error", "message": f"agent error: {type(exc).__name__}: {exc}"})
        outcome = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
    ports = listening_ports(scope)
    emit(
        {
            "type": "codex_daytona.ports",
            "listening": ports,
            "new": [p for p in ports if p not in before],
            "loopback_only": loopback_only_ports(ports),
        }
    )
    exit_code = {"completed": EXIT_OK, "interrupted": EXIT_INTERRUPTED, "failed": EXIT_TURN_FAILED}.get(
        outcome.get("status") or "", EXIT_ERROR
    )
    emit(
        {
            "type": "codex_daytona.run.completed",
            "run_id": args.run_id,
            "status": outcome.get("status"),
            "exit_code": exit_code,
            "thread_id": outcome.get("thread_id"),
            "error": outcome.get("error"),
            "final_message": outcome.get("final_message"),
            "usage": outcome.get("usage"),
            "duration_ms": int((time.time() - started) * 1000),
        }
    )
    emitter.close()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
