"""A scripted fake of the OpenAI Responses API, good enough for the real Codex binary.

Codex (``codex exec`` or ``codex app-server``) is pointed at this server through a
custom model provider (see ``tests/fakes/codex_home.py``).  Every ``POST .../responses``
request consumes ONE step of a script and is answered with the Server-Sent Events that
step describes.  Everything is stdlib; nothing touches the network beyond 127.0.0.1.

Standalone::

    python -m tests.fakes.model --port 0 --script steps.json [--log-dir DIR]

prints ``http://127.0.0.1:PORT/v1`` as the first line of stdout once serving, and serves
until SIGINT/SIGTERM.  The script file is either a JSON list of steps or an object
``{"steps": [...], "default": {...}}``.

Endpoints
---------
``POST /v1/responses`` (any path ending in ``/responses``)
    takes the next step (see matching below) and answers it.
``GET /v1/models`` (any path ending in ``/models``)
    a minimal model list; with ``ScriptedModel.api_key`` set, a request without
    ``Authorization: Bearer <that key>`` gets OpenAI's 401 instead.
anything else
    404.
When no step is left: HTTP 500 ``{"error": {"message": "scripted model: script
exhausted", ...}}`` (also printed to stderr, since Codex replaces a 500's message by
"We're currently experiencing high demand...") -- unless a ``default`` step was
configured, which then answers every further request.

Every request (any method/path) is recorded in ``ScriptedModel.requests`` as
``{"method", "path", "headers" (lower-case names), "body" (parsed JSON or None)}`` and,
with a log dir, written to ``DIR/NNNN.json`` (0001.json, 0002.json, ...).

Step format (one step = the answer to one model request)
---------------------------------------------------------
A step is a JSON object.  Keys usable on every step:

``match`` (str, optional)
    The step is only taken by a request whose raw JSON body text contains this
    substring (JSON text: avoid quotes, backslashes and newlines in it).  A request
    takes the FIRST queued step that has no ``match`` or whose ``match`` occurs in its
    body, so steps with different matches form independent queues (e.g. one per
    concurrent thread, matching a word of each thread's prompt: the prompt stays in
    ``input`` for every later request of that thread).  Since a step without ``match``
    is taken by anyone, give every step a ``match`` when threads run concurrently.
``delay_ms`` (int, optional)
    Sleep this long before answering anything.
``hold`` (str, optional)
    Do not answer until ``ScriptedModel.release(name)`` is called with this name (or the
    server stops): a test holds the model's next answer while it checks what has already
    arrived, with nothing timed.

Then exactly one kind of answer:

``{"items": [ITEM, ...], "usage": {...}?}``
    A normal streamed response: ``response.created``, then for each item
    ``response.output_item.added`` / its deltas / ``response.output_item.done``, then
    ``response.completed`` carrying ``usage``.  ``usage`` is optional and may set any of
    ``input_tokens`` (default 100), ``cached_tokens`` (0), ``output_tokens`` (20),
    ``reasoning_tokens`` (5), ``total_tokens`` (default input + output).
    If any item is a tool call (exec / patch / plan / write_stdin), Codex runs it and
    sends another request with the result (``function_call_output`` or
    ``custom_tool_call_output``); a response with no tool call ends the turn.
``{"truncate": true, "items": [...]}``
    Like ``items`` but the connection is closed after the items, before
    ``response.completed``.  Codex: "stream closed before response.completed".
``{"fail": {"code": "server_error", "message": "..."}}``
    ``response.created`` then ``response.failed`` with that error.
``{"error": {"status": 401, "message": "...", "type"?: "...", "code"?: "..."}}``
    A plain HTTP error with an OpenAI-style body ``{"error": {message, type, code,
    param}}``.  Codex reports e.g. "unexpected status 401 Unauthorized: <message>".
``{"hang": true}``
    Sends the SSE headers and ``response.created``, then nothing more until the server
    stops: Codex's ``stream_idle_timeout_ms`` applies.
``{"hang": "headers"}``
    Never sends anything, not even headers (Codex has NO timeout for this case).

ITEM shorthands (``call_id`` may be given on any tool item; otherwise a unique
``call_N`` is generated; item ids are generated too):

``{"message": "text"}``
    assistant message, streamed as ``response.output_text.delta`` chunks (word by word).
``{"reasoning": "summary text"}``
    reasoning item with one ``summary_text`` part (streamed as
    ``response.reasoning_summary_text.delta``).
``{"exec": "shell command", "workdir"?: str, "yield_time_ms"?: int, ...}``
    ``function_call`` ``exec_command``; every key besides ``exec``/``call_id`` is copied
    into the arguments (``workdir``, ``yield_time_ms``, ``max_output_tokens``, ``tty``...),
    so the arguments are ``{"cmd": "shell command", ...}``.
``{"write_stdin": {"session_id": N | "auto", "chars": "", "yield_time_ms": 1000}}``
    ``function_call`` ``write_stdin`` with these arguments.  ``chars: ""`` polls a
    running command: one that outlived its ``yield_time_ms``, whose output said
    "Process running with session ID N".  N is a real, unpredictable number, so
    ``"session_id": "auto"`` (or leaving it out) uses the LAST such N found in the
    request's input.
``{"patch": "*** Begin Patch\\n...\\n*** End Patch\\n"}``
    ``custom_tool_call`` ``apply_patch`` with that input.  See ``add_file_patch`` and
    ``update_file_patch`` to build one.
``{"plan": [{"step": "...", "status": "pending|in_progress|completed"}], "explanation"?: str}``
    ``function_call`` ``update_plan``.
``{"web_search": "query"}``
    a hosted ``web_search_call`` item (no follow-up request: the "search" is done).
``{"raw": {...}}``
    any Responses API output item, streamed as added + done unchanged.

Python helpers build the same dicts: ``msg``, ``think``, ``run``, ``poll``, ``patch``,
``plan``, ``search``, ``turn``, ``error``, ``fail``, ``truncate``, ``hang``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

Step = dict[str, Any]
Event = dict[str, Any]

EXHAUSTED_MESSAGE = "scripted model: script exhausted"
DEFAULT_USAGE = {"input_tokens": 100, "cached_tokens": 0, "output_tokens": 20, "reasoning_tokens": 5}
MODELS = ["gpt-5.5"]


# --------------------------------------------------------------------------- helpers


def msg(text: str) -> dict[str, Any]:
    """An assistant message item."""
    return {"message": text}


def think(summary: str) -> dict[str, Any]:
    """A reasoning item with one summary text."""
    return {"reasoning": summary}


def run(cmd: str, **arguments: Any) -> dict[str, Any]:
    """An ``exec_command`` call; ``arguments`` e.g. ``workdir=``, ``yield_time_ms=``."""
    return {"exec": cmd, **arguments}


def poll(session_id: int | str = "auto", chars: str = "", yield_time_ms: int | None = None) -> dict[str, Any]:
    """A ``write_stdin`` call (empty ``chars`` polls; ``"auto"``: the last running session)."""
    arguments: dict[str, Any] = {"session_id": session_id, "chars": chars}
    if yield_time_ms is not None:
        arguments["yield_time_ms"] = yield_time_ms
    return {"write_stdin": arguments}


def patch(text: str) -> dict[str, Any]:
    """An ``apply_patch`` call with a full patch text."""
    return {"patch": text}


def plan(*steps: tuple[str, str] | dict[str, str], explanation: str | None = None) -> dict[str, Any]:
    """An ``update_plan`` call: ``plan(("Write code", "in_progress"), ("Test", "pending"))``."""
    items = [s if isinstance(s, dict) else {"step": s[0], "status": s[1]} for s in steps]
    item: dict[str, Any] = {"plan": items}
    if explanation is not None:
        item["explanation"] = explanation
    return item


def search(query: str) -> dict[str, Any]:
    """A hosted web_search_call item."""
    return {"web_search": query}


def turn(*items: dict[str, Any], **step: Any) -> Step:
    """A normal step: ``turn(msg("hi"), usage={...}, match="...", delay_ms=...)``."""
    return {"items": list(items), **step}


def error(status: int, message: str, **step: Any) -> Step:
    """A step answering a plain HTTP error."""
    return {"error": {"status": status, "message": message}, **step}


def fail(message: str, code: str = "server_error", **step: Any) -> Step:
    """A step answering a stream that ends in ``response.failed``."""
    return {"fail": {"code": code, "message": message}, **step}


def truncate(*items: dict[str, Any], **step: Any) -> Step:
    """A step whose stream is cut before ``response.completed``."""
    return {"truncate": True, "items": list(items), **step}


def hang(before_headers: bool = False, **step: Any) -> Step:
    """A step that never finishes (see the module docstring)."""
    return {"hang": "headers" if before_headers else True, **step}


def add_file_patch(path: str, content: str) -> str:
    """An apply_patch text creating ``path`` with ``content``."""
    return add_files_patch({path: content})


def add_files_patch(files: dict[str, str]) -> str:
    """One apply_patch text creating every file of ``files`` (path -> content)."""
    hunks = []
    for path, content in files.items():
        lines = content.splitlines() or [""]
        hunks.append(f"*** Add File: {path}\n" + "".join(f"+{line}\n" for line in lines))
    return "*** Begin Patch\n" + "".join(hunks) + "*** End Patch\n"


def update_file_patch(path: str, old: str, new: str, context: str | None = None) -> str:
    """An apply_patch text replacing the lines ``old`` by ``new`` in ``path``.

    ``context`` is an optional ``@@`` line (e.g. a function header) locating the hunk.
    """
    removed = "".join(f"-{line}\n" for line in old.splitlines())
    added = "".join(f"+{line}\n" for line in new.splitlines())
    header = f"@@ {context}\n" if context else "@@\n"
    return f"*** Begin Patch\n*** Update File: {path}\n{header}{removed}{added}*** End Patch\n"


def delete_file_patch(path: str) -> str:
    """An apply_patch text deleting ``path``."""
    return f"*** Begin Patch\n*** Delete File: {path}\n*** End Patch\n"


# --------------------------------------------------------------------------- encoding


def sse(event: Event) -> bytes:
    """One SSE frame: ``event: TYPE\\ndata: JSON\\n\\n`` (the JSON also carries ``type``)."""
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


def parse_sse(text: str) -> list[Event]:
    """Parse an SSE body back into the list of ``data`` JSON objects (for tests)."""
    events = []
    for frame in text.split("\n\n"):
        data = [line[len("data: ") :] for line in frame.splitlines() if line.startswith("data: ")]
        if data:
            events.append(json.loads("\n".join(data)))
    return events


def chunks(text: str) -> list[str]:
    """Split text into word-sized deltas that concatenate back to ``text``."""
    return re.findall(r"^\s+|\S+\s*", text) or [text]


def usage_json(overrides: dict[str, int] | None) -> dict[str, Any]:
    """The Responses API ``usage`` object for a step's (flat) usage overrides."""
    u = {**DEFAULT_USAGE, **(overrides or {})}
    total = u.get("total_tokens", u["input_tokens"] + u["output_tokens"])
    return {
        "input_tokens": u["input_tokens"],
        "input_tokens_details": {"cached_tokens": u["cached_tokens"]},
        "output_tokens": u["output_tokens"],
        "output_tokens_details": {"reasoning_tokens": u["reasoning_tokens"]},
        "total_tokens": total,
    }


class Ids:
    """Thread-safe unique ids: ``call_1``, ``msg_2``..."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    def new(self, prefix: str) -> str:
        with self._lock:
            return f"{prefix}_{next(self._counter)}"


SESSION_RE = re.compile(r"Process running with session ID (\d+)")


def last_session_id(request_text: str) -> int | None:
    """The last "Process running with session ID N" in a request body, if any."""
    found = SESSION_RE.findall(request_text)
    return int(found[-1]) if found else None


def expand_item(short: dict[str, Any], ids: Ids, request_text: str = "") -> dict[str, Any]:
    """Expand one ITEM shorthand to a full Responses API output item.

    ``request_text`` (the raw request body) resolves ``"session_id": "auto"``.
    """
    if "raw" in short:
        return dict(short["raw"])
    if "message" in short:
        return {
            "type": "message",
            "id": ids.new("msg"),
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": short["message"], "annotations": []}],
        }
    if "reasoning" in short:
        return {
            "type": "reasoning",
            "id": ids.new("rs"),
            "summary": [{"type": "summary_text", "text": short["reasoning"]}],
        }
    if "web_search" in short:
        query = short["web_search"]
        return {
            "type": "web_search_call",
            "id": ids.new("ws"),
            "status": "completed",
            "action": {"type": "search", "query": query},
        }
    call_id = short.get("call_id") or ids.new("call")
    if "patch" in short:
        return {
            "type": "custom_tool_call",
            "id": ids.new("ctc"),
            "call_id": call_id,
            "name": "apply_patch",
            "input": short["patch"],
            "status": "completed",
        }
    if "exec" in short:
        extra = {k: v for k, v in short.items() if k not in ("exec", "call_id")}
        return function_call(ids, call_id, "exec_command", {"cmd": short["exec"], **extra})
    if "write_stdin" in short:
        arguments = dict(short["write_stdin"])
        if arguments.get("session_id", "auto") == "auto":
            arguments["session_id"] = last_session_id(request_text)
        return function_call(ids, call_id, "write_stdin", arguments)
    if "plan" in short:
        plan_args: dict[str, Any] = {"plan": short["plan"]}
        if "explanation" in short:
            plan_args["explanation"] = short["explanation"]
        return function_call(ids, call_id, "update_plan", plan_args)
    raise ValueError(f"unknown item shorthand: {short!r}")


def function_call(ids: Ids, call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": ids.new("fc"),
        "call_id": call_id,
        "name": name,
        "arguments": json.dumps(arguments),
        "status": "completed",
    }


def item_events(item: dict[str, Any], index: int) -> Iterator[Event]:
    """The SSE events streaming one output item (added, deltas, done)."""
    added: dict[str, Any] = dict(item)
    if item.get("type") == "message":
        added["content"] = []
        added["status"] = "in_progress"
    elif item.get("type") == "reasoning":
        added["summary"] = []
    yield {"type": "response.output_item.added", "output_index": index, "item": added}
    if item.get("type") == "message":
        for part in item["content"]:
            if part.get("type") == "output_text":
                for delta in chunks(part["text"]):
                    yield {
                        "type": "response.output_text.delta",
                        "item_id": item["id"],
                        "output_index": index,
                        "content_index": 0,
                        "delta": delta,
                    }
    elif item.get("type") == "reasoning":
        for n, part in enumerate(item.get("summary", [])):
            common = {"item_id": item["id"], "output_index": index, "summary_index": n}
            yield {"type": "response.reasoning_summary_part.added", **common, "part": part}
            yield {"type": "response.reasoning_summary_text.delta", **common, "delta": part["text"]}
    yield {"type": "response.output_item.done", "output_index": index, "item": item}


def step_events(step: Step, ids: Ids, request_text: str = "") -> tuple[list[Event], bool]:
    """All SSE events for a streamed step and whether the stream is complete.

    Handles ``items`` (complete), ``truncate`` (no response.completed) and ``fail``.
    """
    response_id = ids.new("resp")
    events: list[Event] = [{"type": "response.created", "response": {"id": response_id, "status": "in_progress"}}]
    if "fail" in step:
        error_body = {"code": "server_error", "message": "scripted failure", **step["fail"]}
        events.append(
            {
                "type": "response.failed",
                "response": {"id": response_id, "status": "failed", "error": error_body},
            }
        )
        return events, True
    items = [expand_item(short, ids, request_text) for short in step.get("items", [])]
    for index, item in enumerate(items):
        events.extend(item_events(item, index))
    if step.get("truncate"):
        return events, False
    completed = {
        "id": response_id,
        "status": "completed",
        "output": items,
        "usage": usage_json(step.get("usage")),
    }
    events.append({"type": "response.completed", "response": completed})
    return events, True


def error_body(spec: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI-style JSON error body for an ``error`` step."""
    return {
        "error": {
            "message": spec.get("message", "scripted error"),
            "type": spec.get("type", "invalid_request_error"),
            "code": spec.get("code"),
            "param": None,
        }
    }


# --------------------------------------------------------------------------- server


class ScriptedModel:
    """The fake Responses API server; see the module docstring for the step format."""

    def __init__(
        self,
        script: list[Step] | None = None,
        log_dir: Path | None = None,
        default_step: Step | None = None,
    ) -> None:
        self._steps: list[Step] = list(script or [])
        self.default_step = default_step
        self.log_dir = Path(log_dir) if log_dir else None
        self.requests: list[dict[str, Any]] = []
        # The key GET /models accepts (None: any), as OpenAI checks it.
        self.api_key: str | None = None
        self.ids = Ids()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._released: dict[str, threading.Event] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.base_url = ""

    # -- script
    def enqueue(self, *steps: Step) -> None:
        with self._lock:
            self._steps.extend(steps)

    def clear(self) -> None:
        """Drops the steps not taken (e.g. the spare errors of a retried failure)."""
        with self._lock:
            self._steps.clear()

    def remaining(self) -> list[Step]:
        with self._lock:
            return list(self._steps)

    def take_step(self, body_text: str) -> Step | None:
        """Remove and return the first step matching this request body (or the default)."""
        with self._lock:
            for i, step in enumerate(self._steps):
                match = step.get("match")
                if match is None or match in body_text:
                    return self._steps.pop(i)
        return self.default_step

    def _hold(self, name: str) -> threading.Event:
        with self._lock:
            return self._released.setdefault(name, threading.Event())

    def release(self, name: str) -> None:
        """Lets the steps held under `name` (``hold``) be answered, now and later."""
        self._hold(name).set()

    def wait_released(self, name: str) -> None:
        released = self._hold(name)
        while not released.wait(0.05) and not self._stopping.is_set():
            pass

    @property
    def model_requests(self) -> list[dict[str, Any]]:
        """Only the ``POST .../responses`` requests (the ones that consume steps)."""
        with self._lock:
            return [r for r in self.requests if r["method"] == "POST" and r["path"].endswith("/responses")]

    def last_input(self) -> str:
        """The input of the last model request, as JSON text: what the model was shown."""
        return json.dumps(self.model_requests[-1]["body"]["input"])

    def record(self, method: str, path: str, headers: dict[str, str], body: Any) -> None:
        # received_at: when the request reached the model (time.time()), for `make bench`.
        entry = {"method": method, "path": path, "headers": headers, "body": body, "received_at": time.time()}
        with self._lock:
            self.requests.append(entry)
            number = len(self.requests)
        if self.log_dir:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            path_out = self.log_dir / f"{number:04d}.json"
            path_out.write_text(json.dumps(entry, indent=2))

    # -- lifecycle
    def start(self, port: int = 0) -> str:
        handler = type("Handler", (_Handler,), {"model": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="scripted-model",
            daemon=True,
        )
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        self._stopping.set()
        if self._server:
            self._server.shutdown()
            self._server.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def wait_stopping(self, seconds: float | None = None) -> bool:
        """Block a handler until the server stops (used by ``hang``)."""
        return self._stopping.wait(seconds)

    def __enter__(self) -> ScriptedModel:
        if not self.base_url:
            self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    model: ScriptedModel
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # silence stderr
        pass

    def _record(self) -> tuple[str, Any]:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            body = raw
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.model.record(self.command, self.path.split("?")[0], headers, body)
        return raw, body

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self.close_connection = True

    def do_GET(self) -> None:
        self._record()
        if self.path.split("?")[0].endswith("/models"):
            expected = self.model.api_key
            if expected is not None and self.headers.get("Authorization") != f"Bearer {expected}":
                spec = {"message": "Incorrect API key provided", "code": "invalid_api_key"}
                self._send_json(401, error_body(spec))
                return
            models = [{"id": m, "object": "model", "owned_by": "scripted"} for m in MODELS]
            self._send_json(200, {"object": "list", "data": models})
        else:
            self._send_json(404, error_body({"message": f"no route for GET {self.path}"}))

    def do_POST(self) -> None:
        raw, _body = self._record()
        if not self.path.split("?")[0].endswith("/responses"):
            self._send_json(404, error_body({"message": f"no route for POST {self.path}"}))
            return
        step = self.model.take_step(raw)
        if step is None:
            # Codex shows a 500 as "We're currently experiencing high demand": say it here too.
            print(f"{EXHAUSTED_MESSAGE} (request #{len(self.model.requests)})", file=sys.stderr, flush=True)
            self._send_json(500, error_body({"message": EXHAUSTED_MESSAGE, "type": "server_error"}))
            return
        self._answer(step, raw)

    def _answer(self, step: Step, request_text: str) -> None:
        if step.get("hold"):
            self.model.wait_released(str(step["hold"]))
        if step.get("delay_ms"):
            time.sleep(step["delay_ms"] / 1000)
        if "error" in step:
            self._send_json(int(step["error"].get("status", 500)), error_body(step["error"]))
            return
        if step.get("hang") == "headers":
            self.model.wait_stopping()
            self.close_connection = True
            return
        self._start_sse()
        if step.get("hang"):
            self._write(sse({"type": "response.created", "response": {"id": self.model.ids.new("resp")}}))
            self.model.wait_stopping()
            return
        events, _complete = step_events(step, self.model.ids, request_text)
        for event in events:
            self._write(sse(event))

    def _start_sse(self) -> None:
        # No Content-Length: the body ends when the connection closes.
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def _write(self, data: bytes) -> None:
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


# --------------------------------------------------------------------------- CLI


def load_script(path: Path) -> tuple[list[Step], Step | None]:
    """Read a script file: a list of steps, or ``{"steps": [...], "default": {...}}``."""
    data = json.loads(path.read_text())
    if isinstance(data, list):
        return data, None
    return list(data.get("steps", [])), data.get("default")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Scripted fake of the OpenAI Responses API.")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0 = any free port)")
    parser.add_argument("--script", type=Path, help="JSON script file (list of steps)")
    parser.add_argument("--log-dir", type=Path, help="write every request as NNNN.json here")
    args = parser.parse_args(argv)

    steps, default = load_script(args.script) if args.script else ([], None)
    model = ScriptedModel(steps, log_dir=args.log_dir, default_step=default)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    print(model.start(args.port), flush=True)
    while not done.wait(0.2):
        pass
    model.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
