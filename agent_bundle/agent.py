"""The program codex-daytona runs inside the sandbox.

Each `ask` runs it once as a Daytona session command (``--run-id``): it reads the turn's
request (the prompt, the thread to resume, per-turn settings) from stdin, base64-encoded
JSON that the command line feeds it through a here-document, hands it to the agent daemon
and relays the run's events to stdout, one JSON object per line, in the vocabulary of
``codex exec --json`` plus a few ``codex_daytona.*`` events of its own. The daemon (started
on demand, ``--serve``) keeps one warm Codex app-server for the sandbox, through OpenAI's
``openai-codex`` SDK, runs turns one at a time and writes every run's events to
``<runs-dir>/<run-id>/events.jsonl`` too, so a client that lost its stream can pick up
where it was (``--attach``).

The OpenAI key never travels with the request: a session command's text and stdin land
on the sandbox's disk (Daytona writes them under ``~/.daytona/sessions``). The request
names the key by a fingerprint; when the daemon does not hold that key it asks for it
(``codex_daytona.key_needed``) and the CLI delivers it with ``--set-key``, run through
Daytona's process API with the key in that process's environment only; the key then
reaches the daemon over its unix socket and lives in memory. Codex gets it in its
environment under KEY_ENV, which Codex's shell environment policy hides from the
commands it runs.

Only the standard library and openai_codex are used; this file runs on the sandbox's
Python (>= 3.10), never on the user's machine.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from agent_bundle.emitter import Emitter
from agent_bundle.engine import Engine
from agent_bundle.port_scan import SETTLE_S, PortWatch, listening_ports
from agent_bundle.processes import Interrupter
from agent_bundle.protocol import (
    BUSY,
    EXIT_BUSY,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TURN_FAILED,
    KEY_ENV,
    KEY_NEEDED,
    PORTS,
    PORTS_SETTLED,
    PROTOCOL,
    RUN_COMPLETED,
    RUN_STARTED,
    Request,
    bundle_digest,
    bundle_files,
    key_fingerprint,
    listen_private,
    run_completed,
)
from agent_bundle.user_exec import run_user_command

REQUEST_TIMEOUT_S = 120.0
KEY_WAIT_S = 60.0  # how long a run waits for the CLI to deliver the key it names


# --- The run --------------------------------------------------------------------------


def invalid_text(value: Any, where: str = "") -> str | None:
    """The first field of a request (e.g. "prompt") whose text cannot be UTF-8 (lone
    surrogates, from bytes that were not UTF-8), or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where or "text"
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        bad = invalid_text(key, where) if isinstance(key, str) else None
        bad = bad or invalid_text(item, f"{where}.{key}" if where else str(key))
        if bad is not None:
            return bad
    return None


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


def execute_run(
    engine: Engine,
    request: Request,
    emitter: Emitter,
    interrupter: Interrupter,
) -> tuple[int, PortWatch | None]:
    """One whole run: ports before, the turn, ports after, and the closing event. Returns
    the exit code, and the watch to settle after the closing event when a process the turn
    left in the background has not bound a port yet (its ports event says `settling`)."""
    emit = emitter.emit
    run_id = str(request.get("run_id"))
    started = time.time()
    watch = PortWatch(os.environ.get("CODEX_DAYTONA_SCOPE"), interrupter.started_ticks, engine.home)
    try:
        outcome = engine.run_turn(request, emit, interrupter)
    except Exception as exc:
        emit({"type": "error", "message": f"agent error: {type(exc).__name__}: {exc}"})
        outcome = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
        engine.close()
    ports, new = watch.scan()
    settle = outcome.get("status") == "completed" and watch.pending()
    emit({"type": PORTS, "listening": ports, "new": new, "settling": SETTLE_S if settle else 0})
    exit_code = {"completed": EXIT_OK, "interrupted": EXIT_INTERRUPTED, "failed": EXIT_TURN_FAILED}.get(
        outcome.get("status") or "", EXIT_ERROR
    )
    emit(
        run_completed(
            run_id,
            str(outcome.get("status")),
            exit_code,
            thread_id=outcome.get("thread_id"),
            error=outcome.get("error"),
            final_message=outcome.get("final_message"),
            usage=outcome.get("usage"),
            duration_ms=int((time.time() - started) * 1000),
        )
    )
    return exit_code, watch if settle else None


# --- The daemon: serves turns over a unix socket ---------------------------------------------


# The agent's package directory: `python PACKAGE_DIR` runs it (__main__.py).
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def agent_digest() -> str:
    return bundle_digest(bundle_files(Path(PACKAGE_DIR)))[:12]


def socket_path(home: str) -> str:
    """Short (unix socket paths are limited to 108 bytes), private to this home and agent version."""
    digest = hashlib.sha256(f"{home}\0{agent_digest()}".encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"codex-daytona-{digest}.sock")


def warm_imports() -> None:
    """Imports what a turn imports (Engine), so that the first turn does not pay for it."""
    with contextlib.suppress(Exception):
        import openai_codex
        import openai_codex.generated.v2_all  # noqa: F401


class Daemon:
    """Runs turns one at a time for every client that connects."""

    def __init__(self, home: str, runs_dir: str) -> None:
        self.home = home
        self.runs_dir = runs_dir
        self.engine = Engine(home)
        self._busy = threading.Lock()
        self.current_run: str | None = None
        self.interrupter: Interrupter | None = None
        self._key: str | None = None  # delivered by `--set-key`; held in memory only
        self._key_changed = threading.Condition()

    def set_key(self, key: str) -> None:
        with self._key_changed:
            self._key = key
            self._key_changed.notify_all()

    def _await_key(self, fingerprint: str, timeout: float) -> str | None:
        """The key with this fingerprint, once it has been delivered (None after `timeout`)."""
        deadline = time.monotonic() + timeout
        with self._key_changed:
            while self._key is None or key_fingerprint(self._key) != fingerprint:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._key_changed.wait(remaining)
            return self._key

    def serve(self, path: str) -> None:
        server = listen_private(path, 8)
        self._replace_previous_daemon()
        signal.signal(signal.SIGTERM, lambda *_: self._shutdown(path))
        # Codex's Python SDK takes about two seconds to import: paid now, while `up` ends and
        # the user types the first prompt, not by that prompt (a turn that comes first waits
        # for the same import, Python's import lock, and does not do it twice).
        threading.Thread(target=warm_imports, daemon=True).start()
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _replace_previous_daemon(self) -> None:
        """A daemon of an older agent version (another socket) is stopped: one per sandbox."""
        pid_file = Path(self.home) / ".codex-daytona" / "agent.pid"
        with contextlib.suppress(OSError, ValueError):
            old = int(pid_file.read_text().strip())
            cmdline = Path(f"/proc/{old}/cmdline").read_bytes().split(b"\0")
            # Only a daemon of this home: a sandbox made from a snapshot of another one has its pid file.
            if old != os.getpid() and b"--serve" in cmdline and self.home.encode() in cmdline:
                os.kill(old, signal.SIGTERM)
        with contextlib.suppress(OSError):
            pid_file.parent.mkdir(parents=True, exist_ok=True)
            pid_file.write_text(str(os.getpid()))

    def _shutdown(self, path: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(path)
        self.engine.close()
        os._exit(0)

    def _handle(self, conn: Any) -> None:
        import socket

        reader = conn.makefile("r", encoding="utf-8")
        writer = conn.makefile("w", encoding="utf-8")
        try:
            line = reader.readline()
            if not line:
                return
            request = json.loads(line)
            op = request.get("op")
            if op == "set_key":
                self.set_key(str(request.get("api_key") or ""))
                writer.write(json.dumps({"pid": os.getpid(), "ok": True}) + "\n")
                writer.flush()
                return
            if op in ("ping", "interrupt"):
                interrupted = False
                matches = request.get("run_id") in (None, self.current_run)
                if op == "interrupt" and self.interrupter is not None and matches:
                    with contextlib.suppress(Exception):  # the turn may have just ended
                        self.interrupter.interrupt()
                        interrupted = True
                reply = {"pid": os.getpid(), "run_id": self.current_run, "interrupted": interrupted}
                writer.write(json.dumps(reply) + "\n")
                writer.flush()
                return
            self._run(request, writer)
        except (OSError, ValueError):
            pass
        finally:
            # shutdown, not just close: the reader thread's file object would keep it open.
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                conn.close()

    def _run(self, request: Request, writer: Any) -> None:
        run_id = str(request.get("run_id"))
        run_dir = Path(self.runs_dir) / run_id
        run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        emitter = Emitter(run_dir / "events.jsonl", writer, [self._key or ""])
        emit = emitter.emit
        emit({"type": RUN_STARTED, "run_id": run_id, "pid": os.getpid(), "ts": time.time()})
        bad = invalid_text(request)
        if bad is not None:
            # Codex's JSON reader refuses lone surrogates and never answers the turn: refuse
            # the run here, before it takes the sandbox's one turn.
            message = f"the request's {bad} is not valid UTF-8 text"
            emit({"type": "error", "message": f"agent error: {message}"})
            emit(run_completed(run_id, "error", EXIT_ERROR, error=message))
            emitter.close()
            return
        if not self._busy.acquire(blocking=bool(request.get("wait"))):
            emit({"type": BUSY, "run_id": self.current_run, "message": "another turn is running"})
            emit(
                run_completed(
                    run_id,
                    "busy",
                    EXIT_BUSY,
                    error=f"another turn is running (run {self.current_run})",
                    running_run_id=self.current_run,
                )
            )
            emitter.close()
            return
        watch: PortWatch | None = None
        try:
            self.current_run = run_id
            self.interrupter = Interrupter()
            fingerprint = request.get("key_id")
            if fingerprint:
                key = self._key if self._key and key_fingerprint(self._key) == fingerprint else None
                if key is None:
                    emit({"type": KEY_NEEDED, "run_id": run_id, "key_id": fingerprint})
                    key = self._await_key(fingerprint, KEY_WAIT_S)
                if key is None:
                    message = f"the OpenAI key was not delivered within {KEY_WAIT_S:.0f} s"
                    emit(run_completed(run_id, "error", EXIT_ERROR, error=message))
                    return
                emitter.add_secret(key)
                request["api_key"] = key
            _, watch = execute_run(self.engine, request, emitter, self.interrupter)
        finally:
            self.current_run = None
            self.interrupter = None
            self._busy.release()
            # After the closing event, with the next turn free to start (which ends the watch):
            # the late ports of servers still starting, on the same stream.
            if watch is not None:
                with contextlib.suppress(Exception):
                    watch.settle(emitter.emit, stop=lambda: self.current_run is not None)
            emitter.close()


# --- The client: what each `ask` runs in the sandbox ------------------------------------------


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-id")
    parser.add_argument("--runs-dir")
    parser.add_argument("--home", default=os.path.expanduser("~"))
    parser.add_argument(
        "--list-ports",
        action="store_true",
        help='print {"listening": [...]} as JSON and exit',
    )
    parser.add_argument("--serve", action="store_true", help="run the agent daemon (started on demand)")
    parser.add_argument("--start-daemon", action="store_true", help="start the daemon if needed, then exit")
    parser.add_argument(
        "--set-key", action="store_true", help=f"hand the key in ${KEY_ENV} to the daemon (starting it if needed)"
    )
    parser.add_argument("--attach", metavar="RUN_ID", help="print a run's events from --offset")
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--follow", action="store_true", help="with --attach: until the run ends")
    parser.add_argument("--heartbeat", type=float, help="with --follow: an empty line after this many quiet seconds")
    parser.add_argument("--interrupt", metavar="RUN_ID", help="interrupt this run if it is running")
    parser.add_argument(
        "--exec", action="store_true", help="run the command on stdin (base64) in a shell of its own, in --home"
    )
    parser.add_argument("--done-marker", help="with --exec: end each stream with this marker line")
    args = parser.parse_args(argv)
    runs_dir = args.runs_dir or os.path.join(args.home, ".codex-daytona", "runs")
    if args.list_ports:
        ports = listening_ports(os.environ.get("CODEX_DAYTONA_SCOPE"))
        print(json.dumps({"listening": ports}))
        return EXIT_OK
    if args.serve:
        Daemon(args.home, runs_dir).serve(socket_path(args.home))
        return EXIT_OK
    if args.set_key:
        return deliver_key(args.home, runs_dir)
    if args.start_daemon:
        ensure_daemon(args.home, runs_dir)
        return EXIT_OK
    if args.attach:
        return attach(args.home, runs_dir, args.attach, args.offset, args.follow, args.heartbeat)
    if args.exec:
        command = base64.b64decode("".join(sys.stdin.read().split()), validate=True).decode("utf-8")
        background_log = os.path.join(args.home, ".codex-daytona", "exec-background.log")
        return run_user_command(command, args.home, background_log, args.done_marker)
    if args.interrupt:
        reply = daemon_call(args.home, {"op": "interrupt", "run_id": args.interrupt})
        print(json.dumps(reply))
        return EXIT_OK if reply.get("interrupted") else EXIT_ERROR
    if not args.run_id:
        parser.error("--run-id is required")
    args.runs_dir = runs_dir
    return run_client(args)
