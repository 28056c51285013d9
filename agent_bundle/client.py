"""The client: what each `ask` runs in the sandbox, and the other commands that talk to the daemon.

A run's client reads the turn's request from stdin, starts the daemon if none answers, hands
it the request and relays the run's events to stdout (run_client); `--attach` picks a run up
from its event file, `--set-key` delivers the key, `--interrupt` stops a run.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from agent_bundle.emitter import Emitter
from agent_bundle.protocol import (
    EXIT_ERROR,
    EXIT_OK,
    KEY_ENV,
    PORTS,
    PORTS_SETTLED,
    PROTOCOL,
    RUN_COMPLETED,
    RUN_STARTED,
    Request,
    bundle_digest,
    bundle_files,
    run_completed,
)

REQUEST_TIMEOUT_S = 120.0


def read_request(stream: TextIO, timeout: float) -> Request:
    """The request on stdin (base64 of one JSON object, up to EOF). Fails after `timeout`
    seconds without EOF: a session command's stdin is a FIFO that is never closed."""
    box: dict[str, Any] = {}

    def reader() -> None:
        box["data"] = stream.read()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    thread.join(timeout)
    data = box.get("data")
    if not data:
        raise RuntimeError(f"no request arrived on stdin within {timeout:.0f} s")
    request: Request = json.loads(base64.b64decode("".join(data.split()), validate=True))
    if request.get("protocol") != PROTOCOL:
        raise RuntimeError(f"request protocol {request.get('protocol')!r}, this agent speaks {PROTOCOL}")
    return request


# The agent's package directory: `python PACKAGE_DIR` runs it (__main__.py).
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def agent_digest() -> str:
    """Names this version of the agent, all its files: a daemon of another one listens elsewhere."""
    return bundle_digest(bundle_files(Path(PACKAGE_DIR)))[:12]


def socket_path(home: str) -> str:
    """Short (unix socket paths are limited to 108 bytes), private to this home and agent version."""
    digest = hashlib.sha256(f"{home}\0{agent_digest()}".encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"codex-daytona-{digest}.sock")


def connect(path: str, timeout: float = 2.0) -> Any:
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    sock.settimeout(None)
    return sock


def ensure_daemon(home: str, runs_dir: str, start_timeout: float = 60.0, env: dict[str, str] | None = None) -> str:
    """The daemon's socket path, starting the daemon first (with `env`) if none answers."""
    path = socket_path(home)
    with contextlib.suppress(OSError):
        connect(path).close()
        return path
    state_dir = os.path.join(home, ".codex-daytona")
    os.makedirs(state_dir, exist_ok=True)
    with open(os.path.join(state_dir, "agent.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with contextlib.suppress(OSError):
            connect(path).close()
            return path
        with open(os.path.join(state_dir, "agent.log"), "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-u", PACKAGE_DIR, "--serve", "--home", home, "--runs-dir", runs_dir],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=home,
                env=env,
                start_new_session=True,  # not in the session command's process group: it outlives the ask
            )
        deadline = time.monotonic() + start_timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = Path(os.path.join(state_dir, "agent.log")).read_text(errors="replace")[-500:]
                raise RuntimeError(f"the agent daemon exited with code {process.returncode}: {tail}")
            try:
                connect(path).close()
                return path
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the agent daemon did not start in time")


class Heartbeat:
    """Writes lines to stdout, and an empty line whenever nothing was written for `interval`
    seconds, so that a reader can tell a quiet run from a stalled stream. Empty lines are no
    events: readers skip them, and they never go to a run's event file."""

    def __init__(self, interval: float | None) -> None:
        self._lock = threading.Lock()
        self._last = time.monotonic()
        self._done = threading.Event()
        if interval:
            threading.Thread(target=self._beat, args=(interval,), daemon=True).start()

    def write(self, data: bytes) -> None:
        with self._lock:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
            self._last = time.monotonic()

    def stop(self) -> None:
        self._done.set()

    def _beat(self, interval: float) -> None:
        while not self._done.wait(interval / 4):
            if time.monotonic() - self._last >= interval:
                with contextlib.suppress(OSError, ValueError):
                    self.write(b"\n")


def run_client(args: argparse.Namespace) -> int:
    """Relays one run between the session command's stdin/stdout and the daemon."""
    out = Emitter(None, sys.stdout, [])
    try:
        request = read_request(sys.stdin, REQUEST_TIMEOUT_S)
        request["run_id"] = args.run_id
        path = ensure_daemon(args.home, args.runs_dir)
        sock = connect(path, timeout=10)
    except Exception as exc:
        out.emit({"type": RUN_STARTED, "run_id": args.run_id, "pid": os.getpid(), "ts": time.time()})
        out.emit(run_completed(args.run_id, "error", EXIT_ERROR, error=f"{type(exc).__name__}: {exc}"))
        return EXIT_ERROR
    sock.sendall((json.dumps(request) + "\n").encode())
    beat = Heartbeat(request.get("heartbeat_seconds"))
    exit_code = EXIT_ERROR
    for raw in sock.makefile("rb"):
        beat.write(raw)
        with contextlib.suppress(ValueError):
            event = json.loads(raw)
            if event.get("type") == RUN_COMPLETED:
                exit_code = int(event.get("exit_code", EXIT_ERROR))
    beat.stop()
    return exit_code


def deliver_key(home: str, runs_dir: str) -> int:
    """Hands the key in this process's environment (KEY_ENV) to the daemon, starting it if
    needed. The daemon is started without the key in its environment: it keeps it in memory."""
    key = os.environ.get(KEY_ENV, "").strip()
    if not key:
        sys.stderr.write(f"{KEY_ENV} is not set\n")
        return EXIT_ERROR
    env = {k: v for k, v in os.environ.items() if k != KEY_ENV}
    ensure_daemon(home, runs_dir, env=env)
    reply = daemon_call(home, {"op": "set_key", "api_key": key})
    print(json.dumps({"ok": bool(reply.get("ok")), "pid": reply.get("pid")}))
    return EXIT_OK if reply.get("ok") else EXIT_ERROR


def prepare_ahead(home: str) -> int:
    """Hands the daemon the request on stdin (a turn's, without its prompt) to make ready
    ahead of the turn (Daemon.prepare), and waits until it is. Prints the daemon's reply;
    exits 0 whatever it says: a turn that finds nothing prepared starts as it always did."""
    from agent_bundle.engine import START_TIMEOUT_S  # here: the client's other commands need no engine

    replies: list[dict[str, Any]] = []

    def call() -> None:
        try:
            request = read_request(sys.stdin, REQUEST_TIMEOUT_S)
            replies.append(daemon_call(home, {**request, "op": "prepare"}))
        except Exception as exc:
            replies.append({"prepared": False, "error": f"{type(exc).__name__}: {exc}"})

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    caller.join(START_TIMEOUT_S)  # `up` goes on without it rather than wait longer
    print(json.dumps({"prepare": replies[0] if replies else {"prepared": False, "error": "timed out"}}))
    return EXIT_OK


def daemon_call(home: str, message: dict[str, Any]) -> dict[str, Any]:
    """One request/reply exchange with the running daemon; {} when none runs."""
    try:
        sock = connect(socket_path(home))
    except OSError:
        return {}
    with sock:
        sock.sendall((json.dumps(message) + "\n").encode())
        line = sock.makefile("r", encoding="utf-8").readline()
    return json.loads(line) if line else {}


def attach(home: str, runs_dir: str, run_id: str, offset: int, follow: bool, heartbeat: float | None = None) -> int:
    """Prints a run's events from byte `offset` of its event file; with `follow`, until it ends
    (and an empty line after `heartbeat` seconds without one, see Heartbeat).

    This is how a client that lost its stream picks up where it was: no event lost, none twice.
    """
    path = Path(runs_dir) / run_id / "events.jsonl"
    if not path.exists():
        sys.stderr.write(f"no run {run_id}\n")
        return EXIT_ERROR
    idle_checks = 0
    last_pass = False
    out = Heartbeat(heartbeat if follow else None)
    settling = 0.0  # the run's ports event said late ports may follow its closing event
    exit_code: int | None = None
    settle_deadline = 0.0
    with path.open("rb") as fh:
        fh.seek(offset)
        pending = b""
        while True:
            chunk = fh.read()
            if chunk:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    out.write(line + b"\n")
                    with contextlib.suppress(ValueError):
                        event = json.loads(line)
                        kind = event.get("type")
                        if kind == PORTS and not event.get("late"):
                            settling = float(event.get("settling") or 0)
                        if kind == RUN_COMPLETED:
                            exit_code = int(event.get("exit_code", EXIT_ERROR))
                            settle_deadline = time.monotonic() + settling + 2.0
                        if exit_code is not None and (not settling or kind == PORTS_SETTLED):
                            out.stop()
                            return exit_code
                continue
            if exit_code is not None and (not follow or time.monotonic() > settle_deadline):
                out.stop()
                return exit_code
            if not follow:
                return EXIT_OK
            if last_pass:
                return EXIT_ERROR
            time.sleep(0.05)
            idle_checks += 1
            if (
                exit_code is None
                and idle_checks % 40 == 0
                and daemon_call(home, {"op": "ping"}).get("run_id") != run_id
            ):
                # Not running, yet no closing event: it died with its daemon. Read what is left, stop.
                last_pass = True
