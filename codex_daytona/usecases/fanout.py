"""`ask --fanout`: one prompt in N sibling sandboxes at once.

The siblings are named `<name>-1` .. `<name>-N` (`fleet.sibling_names`), each run on its own
thread with its own `Context` (and so its own Daytona client: the SDK's client is not shared
across threads). Like the core, this module never prints: it reports through events,
calling `on_event` from one thread at a time.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from codex_daytona import events as ev
from codex_daytona.errors import (
    CodexDaytonaError,
    DaytonaError,
    ExitCode,
    InterruptedByUser,
    UsageError,
)
from codex_daytona.sandbox import runtime
from codex_daytona.sandbox.daytona_api import RefusedError
from codex_daytona.state import SandboxRecord
from codex_daytona.usecases import lifecycle, turns
from codex_daytona.usecases.context import TOOL_LABEL, Context, OnEvent, project_labels
from codex_daytona.usecases.fleet import sibling_names

# How long Ctrl-C waits for the attempts to wind down (sandboxes being created are saved
# first; running turns are interrupted) before giving up; a second Ctrl-C gives up at once.
CANCEL_GRACE_S = 60.0


@dataclass
class Attempt:
    """One sandbox of a fan-out: what it is doing now, and then how its turn went."""

    name: str
    status: str = "waiting"  # creating, running, then completed, failed, interrupted, timeout, error
    detail: str = ""
    sandbox_id: str | None = None
    created: bool = False
    run_id: str | None = None
    thread_id: str | None = None
    started: float | None = None  # time.time() when its turn started
    ended: float | None = None
    duration_s: float | None = None
    setup_s: float | None = None
    tally: ev.TurnTally = field(default_factory=ev.TurnTally)
    outcome: turns.TurnOutcome | None = None  # how its turn ended (also when it failed)
    error: str | None = None
    exit_code: int = 0
    # Set when the attempt's thread has finished with it. Waited on instead of the thread
    # itself: on Python 3.11 a Ctrl-C that lands in Thread.join() leaves is_alive() False for
    # a thread that still runs.
    finished: threading.Event = field(default_factory=threading.Event)

    @property
    def done(self) -> bool:
        return self.finished.is_set()

    # What its turn came to: its outcome's, nothing when no turn ended.
    @property
    def usage(self) -> dict[str, int]:
        return self.outcome.usage if self.outcome else {}

    @property
    def final_message(self) -> str:
        return self.outcome.final_message if self.outcome else ""

    @property
    def previews(self) -> list[dict[str, object]]:
        return [p.to_json() for p in self.outcome.previews] if self.outcome else []

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sandbox_id": self.sandbox_id,
            "created": self.created,
            "status": self.status,
            "exit_code": self.exit_code,
            "error": self.error,
            "run_id": self.run_id,
            "thread_id": self.thread_id,
            "duration_s": None if self.duration_s is None else round(self.duration_s, 2),
            "setup_s": None if self.setup_s is None else round(self.setup_s, 2),
            "usage": self.usage,
            "files_changed": len(self.tally.files),
            "files": sorted(self.tally.files),
            "commands_run": self.tally.commands,
            "commands_failed": self.tally.failed,
            "final_message": self.final_message,
            "previews": self.previews,
        }


@dataclass
class FanoutResult:
    name: str  # the sandbox the fan-out was asked from
    attempts: list[Attempt]
    interrupted: bool = False
    snapshot: str | None = None  # the snapshot of the base sandbox they were created from
    forked: bool = False  # created with Daytona's fork of the base sandbox (no snapshot)

    @property
    def exit_code(self) -> ExitCode:
        """130 on Ctrl-C, 0 when every turn completed, else 3 (each row says what happened)."""
        if self.interrupted:
            return ExitCode.INTERRUPTED
        if all(a.status == "completed" for a in self.attempts):
            return ExitCode.OK
        return ExitCode.TURN_FAILED

    def to_json(self) -> dict[str, object]:
        """The summary after the rows (each attempt's is `Attempt.to_json`)."""
        return {
            "name": self.name,
            "forked": self.forked,
            "snapshot": self.snapshot,
            "interrupted": self.interrupted,
            "exit_code": self.exit_code,
        }


class Fanout:
    """Runs one prompt in `count` sandboxes at once: `<name>-1` .. `<name>-<count>`.

    Missing ones are forks of `ctx.name`'s sandbox when it exists (its files, runtime and
    thread: each attempt continues the conversation from there), or, where Daytona cannot
    fork it, created from a snapshot of it; else fresh as `up` would; existing ones are
    reused as they are, continuing their own thread.
    """

    def __init__(self, ctx: Context, count: int) -> None:
        limit = ctx.settings.codex_daytona_max_sandboxes
        if count < 1:
            raise UsageError("--fanout needs at least 1 sandbox.")
        if count > limit:
            raise UsageError(
                f"--fanout {count} is more than the limit of {limit} sandboxes at once.",
                "Ask for fewer, or raise CODEX_DAYTONA_MAX_SANDBOXES.",
            )
        self.ctx = ctx
        self.attempts = [Attempt(name) for name in sibling_names(ctx.name, count)]
        self._emit_lock = threading.Lock()
        self._fork_lock = threading.Lock()
        self._cancel = threading.Event()

    # --- events, from every thread -------------------------------------------------------

    def _emit(self, event: ev.Event) -> None:
        with self._emit_lock:
            self.ctx.emit(event)

    def _update(self, attempt: Attempt, status: str | None = None, detail: str | None = None) -> None:
        changed = (status is not None and status != attempt.status) or (detail is not None and detail != attempt.detail)
        attempt.status = status or attempt.status
        attempt.detail = attempt.detail if detail is None else detail
        if changed:
            self._emit(
                {
                    "type": ev.FANOUT_UPDATE,
                    "sandbox": attempt.name,
                    "status": attempt.status,
                    "detail": attempt.detail,
                    "started": attempt.started,
                    "ended": attempt.ended,
                }
            )

    def _on_event(self, attempt: Attempt) -> OnEvent:
        def handle(event: ev.Event) -> None:
            kind = event.get("type")
            item = event.get("item") or {}
            if kind == ev.PROGRESS:
                self._update(attempt, detail=str(event.get("message", "")))
            elif kind == ev.RUN_STARTED:
                attempt.run_id = attempt.run_id or event.get("run_id")
            elif kind == ev.THREAD_STARTED:
                attempt.thread_id = event.get("thread_id")
            elif kind in (ev.WARNING, ev.RESUME_FAILED):
                self._emit(ev.warning(f"{attempt.name}: {event.get('message', '')}"))
            elif kind == ev.ITEM_STARTED and item.get("type") == ev.COMMAND:
                self._update(attempt, detail=f"Run: {ev.command_text(item)}")
            elif kind == ev.ITEM_COMPLETED and item.get("type") == ev.COMMAND:
                attempt.tally.count(item)
                mark = "✓" if ev.command_ok(item) else "✗"
                self._update(attempt, detail=f"{mark} {ev.command_text(item)} (exit {item.get('exit_code')})")
            elif kind == ev.ITEM_COMPLETED and item.get("type") == ev.FILE_CHANGE:
                attempt.tally.count(item)
                paths = [str(c.get("path")) for c in item.get("changes") or []]
                self._update(attempt, detail=f"Changed {', '.join(paths)}")
            elif kind == ev.ITEM_COMPLETED and item.get("type") == ev.AGENT_MESSAGE:
                text = str(item.get("text", "")).strip()
                self._update(attempt, detail=text.splitlines()[0] if text else "")
            elif kind == ev.TURN_FAILED:
                self._update(attempt, detail=str((event.get("error") or {}).get("message", "turn failed")))
            elif kind == ev.TURN_INTERRUPTED:
                self._update(attempt, detail="turn interrupted")

        return handle

    # --- the run ---------------------------------------------------------------------------

    def run(
        self,
        prompt: str,
        *,
        new_thread: bool = False,
        model: str | None = None,
        timeout: float | None = None,
        effort: str | None = None,
    ) -> FanoutResult:
        """Runs `prompt` in every attempt at once. Ctrl-C (KeyboardInterrupt here, in the main
        thread) interrupts every running turn and waits for the attempts to wind down."""
        self.ctx.settings.require_openai_key()
        # Forks, snapshots and sandboxes are made below, each recorded as it is made.
        self.ctx.store.check_writable()
        existing = self.ctx.store.load().sandboxes
        missing = [a for a in self.attempts if a.name not in existing]
        snapshot: str | None = None
        base: SandboxRecord | None = None
        forks = False
        result = FanoutResult(self.ctx.name, self.attempts)
        try:
            if missing and (base := self.ctx.record()) is not None:
                forks = self._first_fork(missing[0], base)
                result.forked = forks
                if not forks:
                    snapshot = self._fork_name()
                    result.snapshot = snapshot
                    base = lifecycle.fork_snapshot(self.ctx, snapshot)
            threads = [
                threading.Thread(
                    target=self._attempt,
                    args=(
                        a,
                        "fork" if forks and a in missing else "create" if a in missing else "",
                        snapshot,
                        base,
                        prompt,
                        new_thread,
                        model,
                        timeout,
                        effort,
                    ),
                    name=f"fanout-{a.name}",
                    daemon=True,  # a thread stuck in the SDK never keeps the process alive
                )
                for a in self.attempts
            ]
            for thread in threads:
                thread.start()
            try:
                for attempt in self.attempts:
                    while not attempt.finished.wait(0.1):
                        pass
            except KeyboardInterrupt:
                result.interrupted = True
                self._cancel_all()
        except KeyboardInterrupt:
            result.interrupted = True  # while saving the snapshot: no attempt started
        finally:
            if snapshot is not None:
                self._delete_snapshot(snapshot)
        for attempt in self.attempts:
            if not attempt.done:  # never started, or still winding down after Ctrl-C
                attempt.status = "interrupted" if result.interrupted else "error"
                attempt.exit_code = int(InterruptedByUser.exit_code)
        return result

    def _first_fork(self, attempt: Attempt, base: SandboxRecord) -> bool:
        """Forks the base sandbox for the first missing sibling, in this thread; False when
        Daytona cannot fork it (the caller then saves a snapshot instead). The other forks
        happen on the attempts' threads, one at a time: Daytona forks a sandbox only while no
        other change of it is under way."""
        ctx = self.ctx.named(attempt.name, self._on_event(attempt))
        self._update(attempt, "creating", "Forking the sandbox...")
        began = time.monotonic()
        try:
            attempt.sandbox_id = lifecycle.fork_from(ctx, base)
        except RefusedError as exc:
            # Not a warning: containers, Daytona's default class, never fork, and the snapshot
            # path is the ordinary one for them (only VM-class sandboxes fork).
            detail = exc.message.split(": ", 1)[-1]
            self._emit(
                ev.progress(f"Saving a snapshot to start the fan-out from (this sandbox cannot fork: {detail}).")
            )
            self._update(attempt, "waiting", "")
            return False
        attempt.setup_s = time.monotonic() - began
        attempt.created = True
        return True

    def _fork_name(self) -> str:
        digest = project_labels(self.ctx.project_dir, self.ctx.name)[f"{TOOL_LABEL}.project"][:8]
        return f"{TOOL_LABEL}-fork-{digest}-{self.ctx.name}-{secrets.token_hex(3)}"

    def _delete_snapshot(self, name: str) -> None:
        """The fork snapshot is only the starting point: the sandboxes have their own copies."""
        try:
            self.ctx.api.delete_snapshot(name)
        except (DaytonaError, KeyboardInterrupt):
            self._emit(
                ev.warning(f"Could not delete the temporary snapshot {name}; delete it in the Daytona dashboard.")
            )

    def _attempt(
        self,
        attempt: Attempt,
        create: str,  # "fork" (of base's sandbox), "create" (from snapshot, or fresh), "" (exists)
        snapshot: str | None,
        base: SandboxRecord | None,
        prompt: str,
        new_thread: bool,
        model: str | None,
        timeout: float | None,
        effort: str | None = None,
    ) -> None:
        ctx = self.ctx.named(attempt.name, self._on_event(attempt))
        status = "error"
        try:
            if self._cancel.is_set():
                raise InterruptedByUser("Interrupted before it started.")
            if create == "fork":
                self._update(attempt, "creating", "Forking the sandbox...")
                began = time.monotonic()
                if not attempt.created:
                    assert base is not None
                    with self._fork_lock:
                        attempt.sandbox_id = lifecycle.fork_from(ctx, base)
                    attempt.created = True
                assert base is not None
                lifecycle.finish_fork(ctx, base)
                attempt.setup_s = (attempt.setup_s or 0.0) + time.monotonic() - began
            elif create:
                self._update(attempt, "creating", "Creating the sandbox...")
                began = time.monotonic()
                created = lifecycle.create(
                    ctx,
                    snapshot=snapshot,
                    runtime_baked_in=base is not None and base.runtime == runtime.runtime_fingerprint(),
                    thread_id=None if base is None else base.thread_id,
                )
                attempt.setup_s = time.monotonic() - began
                attempt.created = True
                attempt.sandbox_id = created.sandbox_id
            if self._cancel.is_set():
                raise InterruptedByUser("Interrupted before its turn started.")
            record = ctx.record()
            attempt.sandbox_id = record.sandbox_id if record else attempt.sandbox_id
            attempt.started = time.time()
            self._update(attempt, "running", "Starting the turn...")
            began = time.monotonic()
            try:
                turns.ask(
                    ctx,
                    prompt,
                    new_thread=new_thread,
                    model=model,
                    timeout=timeout,
                    effort=effort,
                    on_end=lambda outcome: self._record_outcome(attempt, outcome),  # also when it failed
                )
            finally:
                attempt.duration_s = time.monotonic() - began
            status = "completed"
        except CodexDaytonaError as exc:
            attempt.error = exc.message
            attempt.exit_code = int(exc.exit_code)
            status = exc.status
        finally:  # a bug (any other exception) leaves "error" here and its traceback on stderr
            if status == "error" and not attempt.exit_code:
                attempt.exit_code = 1
            attempt.ended = time.time()
            self._update(attempt, status, attempt.error or attempt.detail)
            attempt.finished.set()

    def _record_outcome(self, attempt: Attempt, outcome: turns.TurnOutcome) -> None:
        attempt.outcome = outcome
        attempt.run_id = outcome.run_id
        attempt.thread_id = outcome.thread_id or attempt.thread_id
        attempt.sandbox_id = outcome.sandbox_id or attempt.sandbox_id

    # --- Ctrl-C ------------------------------------------------------------------------------

    def _cancel_all(self) -> None:
        """Stops every attempt: none starts a turn any more, running turns are interrupted
        (each by its own client, on its own thread), and sandboxes being created are saved
        in the state file before we return. A second Ctrl-C stops waiting."""
        self._cancel.set()
        self._emit(ev.progress("Interrupting every turn..."))
        interrupting: set[str] = set()
        deadline = time.monotonic() + CANCEL_GRACE_S
        while not all(a.done for a in self.attempts) and time.monotonic() < deadline:
            for attempt in self.attempts:
                if attempt.run_id and not attempt.done and attempt.name not in interrupting:
                    interrupting.add(attempt.name)
                    threading.Thread(target=self._interrupt, args=(attempt,), daemon=True).start()
            pending = [a for a in self.attempts if not a.done]
            if pending:
                pending[0].finished.wait(0.05)

    def _interrupt(self, attempt: Attempt) -> None:
        """Interrupts the attempt's run until it has, or the run ended."""
        turns.interrupt_until_ended(self.ctx.named(attempt.name), lambda: attempt.run_id, lambda: not attempt.done)
