"""The agent's daemon: serves runs over a unix socket, one turn at a time, for every client.

It holds the OpenAI key in memory once delivered (`--set-key`), writes each run's events to
`<runs-dir>/<run-id>/events.jsonl` as it relays them, and keeps the engine warm between turns.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from agent_bundle.emitter import Emitter
from agent_bundle.engine import Engine
from agent_bundle.port_scan import SETTLE_S, PortWatch
from agent_bundle.processes import Interrupter
from agent_bundle.protocol import (
    BUSY,
    EXIT_BUSY,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TURN_FAILED,
    KEY_NEEDED,
    PORTS,
    RUN_STARTED,
    PrepareReply,
    Request,
    RunCompleted,
    key_fingerprint,
    listen_private,
    run_completed,
)
from agent_bundle.sdk import import_sdk

KEY_WAIT_S = 60.0  # how long a run waits for the CLI to deliver the key it names


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
    outcome: RunCompleted
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


def warm_imports() -> None:
    """Imports what a turn imports (Engine), so that the first turn does not pay for it."""
    with contextlib.suppress(Exception):
        import_sdk()


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
            if op == "prepare":
                writer.write(json.dumps(self.prepare(request)) + "\n")
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

    def prepare(self, request: Request) -> PrepareReply:
        """Makes the engine ready for the turn `request` describes (Engine.prepare), unless a
        turn is under way (it may run on the app-server a prepare would restart) or the key it
        names was not delivered. Never fails: a turn then starts as it would have anyway."""
        started = time.monotonic()
        reply: PrepareReply = {"pid": os.getpid(), "prepared": False}
        fingerprint = request.get("key_id")
        key = self._key if self._key and fingerprint and key_fingerprint(self._key) == fingerprint else None
        if fingerprint and key is None:
            reply["error"] = "the key it names was not delivered"
            return reply
        with self.engine.starting:
            if self.current_run is not None:
                reply["error"] = f"run {self.current_run} is under way"
                return reply
            ready: Request = {**request}
            ready.pop("api_key", None)  # only the key delivered, never one sent along
            if key:
                ready["api_key"] = key
            try:
                reply["thread_id"] = self.engine.prepare(ready)
                reply["prepared"] = True
            except Exception as exc:
                self.engine.close()
                message = f"{type(exc).__name__}: {exc}"
                reply["error"] = message.replace(key, "***") if key else message  # the log is a file
        # The agent's debug log (agent.log): how long a first turn would have waited for this.
        sys.stderr.write(f"prepare: {json.dumps(reply)} in {time.monotonic() - started:.3f} s\n")
        return reply

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
