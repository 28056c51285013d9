"""Turns of the agent: `ask` starts one and follows it, `logs` follows one again, Ctrl-C and
--timeout interrupt one. Every turn ends in one `TurnOutcome`.

The path of one `ask`: the sandbox is found (and started) through the context; the turn is
claimed in the state file, which picks the Daytona session its agent command runs in; the
request goes to the agent as a session command (agent_bundle/client.py, which hands it to
its warm daemon); a `RunFollower` streams that command's log, decoding the agent's events
and handing each to `ctx.emit` (the CLI's output); the agent's closing event (a
protocol.RunCompleted) is decoded once, by `TurnOutcome.from_completed`, into the
`TurnOutcome` everything after reads: the state file's last turn, the result line, the
fan-out's and the batch's rows. If the turn did not complete, its failure is raised as
the error that says why, once the caller's `on_end` has had the outcome.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from agent_bundle import protocol
from codex_daytona import events as ev
from codex_daytona.codex_facts import MAX_INPUT_CHARS
from codex_daytona.errors import (
    AgentSetupError,
    BusyError,
    CodexDaytonaError,
    DaytonaError,
    InterruptedByUser,
    NoSandboxError,
    SandboxGoneError,
    TurnFailedError,
    TurnTimeoutError,
    UsageError,
)
from codex_daytona.sandbox import runtime
from codex_daytona.state import LastTurn, SandboxRecord, Usage, now
from codex_daytona.usecases import lifecycle, links
from codex_daytona.usecases.context import SESSION_ID, Box, Context, OnEvent, tail
from codex_daytona.usecases.follower import RunFollower

INTERRUPT_GRACE_S = 10.0
DETACH_START_S = 60.0  # how long `ask --detach` waits for its turn to get under way
# Beyond the agent's own watch for late ports: the stream's delay and the links' checks.
LATE_PORTS_MARGIN_S = 10.0
# A run in one of these states has ended, and with it the agent command that ran it.
TURN_ENDED = frozenset({"completed", "failed", "interrupted", "error"})


@dataclass
class TurnOutcome:
    """How one run ended: the one source of its status, answer, thread, usage and exit code,
    read by the CLI, the JSON result line, the state file, the fan-out and the batch."""

    run_id: str
    # The agent's: completed, failed, interrupted, error, busy; or "running" (a detached
    # turn), "unknown" (`logs` of a run with no end yet).
    status: str
    thread_id: str | None
    final_message: str  # the agent's last message: the answer
    error: str | None = None  # the agent's error message, when the turn failed
    usage: dict[str, int] = field(default_factory=dict)
    previews: list[links.Preview] = field(default_factory=list)
    sandbox_id: str = ""
    running_run_id: str | None = None  # status busy: the run that holds the sandbox's turn
    # Why the turn did not complete, as the process reports it (None: it did, or still runs).
    failure: CodexDaytonaError | None = None
    forced_interrupt: bool = False  # a second Ctrl-C stopped waiting for the turn to wind down

    @classmethod
    def from_completed(
        cls,
        completed: protocol.RunCompleted | None,
        *,
        run_id: str,
        sandbox_id: str = "",
        thread_id: str | None = None,
        final_message: str = "",
    ) -> TurnOutcome:
        """The one place the agent's closing event is read (None: it has not come). The
        `thread_id` and `final_message` the stream showed before it stand in where it has
        none (a run not over yet, or lost). A field of the wrong type counts as missing."""
        done: dict[str, Any] = dict(completed or {})
        usage = done.get("usage")
        return cls(
            run_id=run_id,
            status=_text(done.get("status")) or "unknown",
            thread_id=_text(done.get("thread_id")) or thread_id,
            final_message=_text(done.get("final_message")) or final_message,
            error=_text(done.get("error")),
            usage={k: v for k, v in usage.items() if type(v) is int} if isinstance(usage, dict) else {},
            sandbox_id=sandbox_id,
            running_run_id=_text(done.get("running_run_id")),
        )

    @property
    def exit_code(self) -> int:
        return 0 if self.failure is None else int(self.failure.exit_code)

    def fail(self, error: CodexDaytonaError) -> TurnOutcome:
        """This turn, with `error` as its failure (raised by `_ended`)."""
        self.failure = error
        return self

    def to_json(self) -> dict[str, object]:
        """The last line of `ask --json` and `logs --json`: how the turn ended."""
        line: dict[str, object] = {
            "type": ev.RESULT,
            "status": self.status,
            "exit_code": self.exit_code,
            "run_id": self.run_id,
            "sandbox_id": self.sandbox_id,
            "thread_id": self.thread_id,
            "final_message": self.final_message,
            "usage": self.usage,
        }
        if self.failure is None:
            line["previews"] = [p.to_json() for p in self.previews]
        else:
            line["error"] = self.failure.message
        return line


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


OnEnd = Callable[[TurnOutcome], None]


def _ended(outcome: TurnOutcome, on_end: OnEnd | None) -> TurnOutcome:
    """Hands the outcome to `on_end`, then returns it, or raises its failure."""
    if on_end is not None:
        on_end(outcome)
    if outcome.failure is not None:
        raise outcome.failure
    return outcome


def result_line(error: CodexDaytonaError, ended: TurnOutcome | None) -> dict[str, object]:
    """The result line of a command that failed: its turn's (`ended`, as `on_end` had it), or
    the error alone."""
    if ended is not None:
        return ended.to_json()
    return {"type": ev.RESULT, "status": "error", "exit_code": int(error.exit_code), "error": error.message}


def new_run_id() -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{stamp}-{secrets.token_hex(3)}"


# --- ask ---------------------------------------------------------------------------------------


def ask(
    ctx: Context,
    prompt: str,
    *,
    new_thread: bool = False,
    model: str | None = None,
    timeout: float | None = None,
    detach: bool = False,
    wait: bool = False,
    effort: str | None = None,
    config: list[str] | None = None,
    thread_id: str | None = None,
    images: list[Path] | None = None,
    output_schema: dict[str, object] | None = None,
    links: bool = True,
    on_answer: OnEnd | None = None,
    on_end: OnEnd | None = None,
) -> TurnOutcome:
    """Runs one turn of the agent on `prompt` and streams its events.

    With `links`, once the turn has completed and `on_answer` has had its outcome (to show
    the answer first), the preview links of the ports it started are made, checked and
    reported, each as its port appears (a server may bind a few seconds after the turn);
    without, `ask` returns at the run's closing event. `on_end` has the outcome `ask` returns,
    or, when the turn did not complete, the outcome whose failure it raises.

    With `detach`, starts the turn and returns at once (status "running"); `logs` follows it.
    `thread_id` resumes that thread instead of the sandbox's current one, and fails the
    run (AgentSetupError) when the sandbox cannot resume it. `images` (local files, checked
    with `check_images`) are uploaded in one request and attached to the turn;
    `output_schema` (see `read_output_schema`) is the JSON Schema the final message must
    follow.
    """
    check_prompt(prompt)
    for pair in config or []:
        reason = runtime.refused_config_key(pair, ctx.settings)
        if reason:
            raise UsageError(
                f"-c {pair.partition('=')[0].strip() or pair!r} {reason}.",
                "Codex settings the tool does not depend on can be given with -c "
                "(e.g. -c model_reasoning_summary=detailed); see README, `ask -c`.",
            )
    api_key = ctx.settings.openai_key_for_turn()
    ctx.store.check_writable()  # the turn is claimed, and its outcome saved, in the state file
    box = _turn_box(ctx)
    run_id = new_run_id()
    box.record, session, previous = _claim_turn(ctx, box.record, run_id)
    try:
        remote_images = runtime.image_paths(box.layout, run_id, [p.name for p in images or []])
        if images:
            box.upload_from({r: str(p) for r, p in zip(remote_images, images, strict=True)})
        request = runtime.agent_request(
            prompt=prompt,
            api_key=api_key,
            thread_id=None if new_thread else thread_id or box.record.thread_id,
            new_thread=new_thread,
            model=model or ctx.settings.codex_daytona_model,
            base_url=ctx.settings.base_url,
            layout=box.layout,
            wait=wait,
            model_timeout=ctx.settings.codex_daytona_model_timeout_seconds,
            heartbeat_seconds=ctx.settings.codex_daytona_stream_idle_seconds / 3,
            turn_model=model,
            effort=effort,
            protected=runtime.protected_config(ctx.settings),
            config=config,
            images=remote_images,
            output_schema=output_schema,
            must_resume=thread_id is not None and not new_thread,
        )
        # The session is this run's own, or no turn ran here yet and `up` did not make it
        # (record.session_id): it does not exist, so it is made first (no failed request);
        # else it is tried, and made when Daytona has lost it.
        fresh = (previous is None and box.record.session_id is None) or session.endswith(run_id)
        command_id = box.start_command(session, runtime.agent_command(box.layout, run_id, request), new_session=fresh)
    except BaseException as exc:
        if isinstance(exc, SandboxGoneError) and _gone(box):
            # Found gone by the turn's first request (the state file's handle spared the look-up).
            raise _deleted_outside(ctx, box.id) from exc
        # The turn never started (a failed upload or command, Ctrl-C): it must not stay
        # "running" in the state file, which would send the next ask to a session of its own.
        with contextlib.suppress(CodexDaytonaError):
            ctx.update_record(box.id, lambda r: _unclaim(r, run_id, previous))
        raise
    handle = box.handle  # the sandbox runs the command: the next ask reaches it without a look-up
    ctx.update_record(box.id, lambda r: _set_command(r, run_id, command_id, handle))
    follower = _follower(
        ctx,
        box,
        run_id,
        api_key,
        # Detached: the events are for `logs`.
        emit=(lambda _event: None) if detach else ctx.emit,
        previous_turn=previous,
        # A session of this run's own is deleted once the run is over, not left idle.
        disposable_session=session if session != (box.record.session_id or SESSION_ID) else None,
    )
    follower.watch(session, command_id)
    if not detach:
        return _ended(_follow(ctx, follower, timeout, links=links, on_answer=on_answer), on_end)
    # Detached: follow only until the turn is under way (or refused: busy, no key).
    refused = _follow_until_started(ctx, follower)
    if refused is not None and refused.failure is not None:
        return _ended(refused, on_end)
    _keep_up_while_detached(ctx, box)
    running = TurnOutcome(run_id, "running", follower.thread_id or box.record.thread_id, "", sandbox_id=box.id)
    return _ended(running, on_end)


def check_prompt(prompt: str) -> None:
    """A prompt Codex can take, or a usage error before anything is sent: text (valid
    UTF-8: bytes that are not arrive here as lone surrogates, which no JSON reader accepts),
    no longer than Codex's input limit."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = ord(prompt[exc.start])
        what = f"byte 0x{bad - 0xDC00:02x}" if 0xDC80 <= bad <= 0xDCFF else f"U+{bad:04X}"
        raise UsageError(
            f"The prompt is not valid UTF-8 ({what} at character {exc.start}).",
            "Give the prompt as UTF-8 text (e.g. convert it with iconv -t UTF-8).",
        ) from None
    if len(prompt) > MAX_INPUT_CHARS:
        raise UsageError(
            f"The prompt is {len(prompt):,} characters; Codex takes at most {MAX_INPUT_CHARS:,} per turn.",
            "Shorten it, or `codex-daytona push` the material into the sandbox and name the files in the prompt.",
        )


def _turn_box(ctx: Context) -> Box:
    """The sandbox a turn runs in: made first when there is none, set up again when its
    runtime is not this version's."""
    if ctx.record() is None:
        lifecycle.up(ctx)
    record = ctx.require_record()
    try:
        # A sandbox the state file knows started is not looked up: the turn's command is
        # the first request, and its failure says when the sandbox must be found or started.
        box = ctx.connect(record, trust_handle=True)
    except SandboxGoneError as exc:
        raise _deleted_outside(ctx, record.sandbox_id) from exc
    if record.runtime != runtime.runtime_fingerprint():
        lifecycle.up(ctx)
        box = ctx.reloaded(box)
    return box


def _deleted_outside(ctx: Context, sandbox_id: str) -> SandboxGoneError:
    """Forgets a sandbox Daytona no longer has; the error that says so."""
    ctx.forget(sandbox_id)
    return SandboxGoneError(
        f"Sandbox {sandbox_id} no longer exists on Daytona (deleted outside codex-daytona).",
        "It was forgotten here; ask again to start over in a new sandbox.",
    )


def _gone(box: Box) -> bool:
    """Whether Daytona no longer has the box's sandbox, as a look-up says (made unless the
    Box has made it already): a toolbox 404 alone may mean less."""
    if not box.gone:
        with contextlib.suppress(CodexDaytonaError):
            box.look_up()
    return box.gone


def _claim_turn(ctx: Context, record: SandboxRecord, run_id: str) -> tuple[SandboxRecord, str, LastTurn | None]:
    """Records the turn as running, and picks the session its agent command runs in.

    Daytona runs the commands of one session one after another, so the session of a turn
    that may still be running would hold ours back: that turn's own command (in the
    sandbox) ends only with the turn. The record's session is used when its last turn has
    ended; otherwise a session of our own, where the agent answers "busy" at once (or
    waits, with --wait). Done under the state lock, so two asks never pick one session.
    Returns the record as saved, the session, and the last turn before this one."""
    claimed: list[tuple[SandboxRecord, str, LastTurn | None]] = []

    def claim(current: SandboxRecord) -> None:
        previous = current.last_turn
        if previous is not None and (previous.status not in TURN_ENDED or _still_settling(previous)):
            session = f"{SESSION_ID}-{run_id}"
        else:
            session = current.session_id or SESSION_ID
        current.last_turn = LastTurn(run_id=run_id, started_at=now(), session_id=session)
        claimed.append((current, session, previous))

    ctx.update_record(record.sandbox_id, claim)
    if not claimed:  # forgotten meanwhile (`down` in another shell): the turn goes on
        claimed.append((record, record.session_id or SESSION_ID, record.last_turn))
    return claimed[0]


def _still_settling(turn: LastTurn) -> bool:
    """Whether the agent command of this ended turn may still be watching for late ports
    (its follower left at the closing event): Daytona would run our command only after it."""
    if not turn.settling_until:
        return False
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(turn.settling_until) > datetime.now(timezone.utc)
    return False


def logs(
    ctx: Context,
    run_id: str | None = None,
    *,
    follow: bool = False,
    links: bool = True,
    on_answer: OnEnd | None = None,
    on_end: OnEnd | None = None,
) -> TurnOutcome:
    """Shows a run's events (the last run by default); with `follow`, until it ends. See
    `ask` for `on_end`."""
    record = ctx.require_record()
    run_id = run_id or (record.last_turn.run_id if record.last_turn else None)
    if not run_id:
        raise NoSandboxError("No turn has run in this sandbox yet.", 'Run `codex-daytona ask "..."` first.')
    box = ctx.box()
    follower = _follower(ctx, box, run_id, None)
    if not follow:
        result = box.run(runtime.attach_command(box.layout, run_id, 0, follow=False), timeout=60)
        if result.exit_code != 0:
            raise NoSandboxError(f"No run {run_id} in this sandbox.", "`codex-daytona status` shows the last run.")
        follower.feed_text(result.output)
        return _ended(_outcome(follower), on_end)
    last = box.record.last_turn
    if last is not None and last.run_id == run_id and last.session_id and last.command_id:
        # The turn's own command: its log replays the run from the start, live.
        follower.watch(last.session_id, last.command_id)
    return _ended(_follow(ctx, follower, None, links=links, on_answer=on_answer), on_end)


def _follower(
    ctx: Context,
    box: Box,
    run_id: str,
    api_key: str | None,
    *,
    emit: OnEvent | None = None,
    previous_turn: LastTurn | None = None,
    disposable_session: str | None = None,
) -> RunFollower:
    def deliver_key() -> None:
        assert api_key is not None
        ctx.emit(ev.progress("Handing the OpenAI key to the agent..."))
        command = runtime.start_daemon_command(box.layout, with_key=True)
        result = box.run(command, timeout=120, env={runtime.KEY_ENV: api_key})
        if result.exit_code != 0:
            raise AgentSetupError(f"Could not hand the key to the agent: {tail(result.output)}")

    return RunFollower(
        box,
        run_id,
        ctx.emit if emit is None else emit,
        on_key_needed=deliver_key if api_key else None,
        keepalive_seconds=ctx.settings.codex_daytona_keepalive_seconds,
        idle_seconds=ctx.settings.codex_daytona_stream_idle_seconds,
        previous_turn=previous_turn,
        disposable_session=disposable_session,
    )


def _outcome(follower: RunFollower) -> TurnOutcome:
    """What the run's closing event says (or, before it, what the follower has seen)."""
    record = follower.box.record
    return TurnOutcome.from_completed(
        follower.completed,
        run_id=follower.run_id,
        sandbox_id=record.sandbox_id,
        thread_id=follower.thread_id or record.thread_id,
        final_message=follower.last_message,
    )


# --- following to the end ------------------------------------------------------------------------


def _follow(
    ctx: Context,
    follower: RunFollower,
    timeout: float | None,
    *,
    links: bool = True,
    on_answer: OnEnd | None = None,
) -> TurnOutcome:
    """Follows the run to its end; returns its outcome, with the error that says why it did
    not complete as its failure. See `ask` for `links` and `on_answer`."""
    try:
        follower.follow(timeout)
    except KeyboardInterrupt:
        forced = _interrupt(ctx, follower)
        outcome = _finish(ctx, follower)
        outcome.forced_interrupt = forced
        return outcome.fail(InterruptedByUser(f"Interrupted: run {follower.run_id} was stopped."))
    except TurnTimeoutError as exc:
        _interrupt(ctx, follower)
        return _finish(ctx, follower).fail(exc)
    except SandboxGoneError:
        return _lost(ctx, follower)
    outcome = _finish(ctx, follower, keep_session=links)
    error = _error_of(outcome)
    if error is None and on_answer is not None:
        on_answer(outcome)
    if links:
        outcome.previews = _previews(ctx, follower)
    elif follower.settling and follower.settled is None:
        until = (datetime.now(timezone.utc) + timedelta(seconds=follower.settling + 5)).isoformat(timespec="seconds")
        ctx.update_record(follower.box.id, lambda r: _set_settling(r, follower.run_id, until))
    if error is not None:
        outcome.fail(error)
    return outcome


def _previews(ctx: Context, follower: RunFollower) -> list[links.Preview]:
    """The links of the ports the turn started, each made, checked and reported as its port
    appears: those listening at the closing event, then those that bind while the agent
    watches (`follower.settling` seconds at most). Ctrl-C stops the wait, not the command."""
    box = follower.box
    found: list[links.Preview] = []
    public: list[bool] = []  # asked of Daytona once, when the first port needs it

    def report(ports: ev.Event) -> None:
        if ports.get("new"):
            if not public:
                public.append(box.looked_up_info().public)
            found.extend(links.after_turn(box, ports, public=public[0]))

    try:
        report(follower.ports_event or {})
        if follower.settling:
            for late in follower.late_ports:  # those that came with the closing event
                report(late)
            follower.follow(follower.settling + LATE_PORTS_MARGIN_S, until_settled=True, on_late_ports=report)
    except (KeyboardInterrupt, TurnTimeoutError, CodexDaytonaError):
        pass  # the turn is over: only its late links are given up
    finally:
        follower.close()
        follower.release_session()
    if follower.late_ports:
        listening = [int(p) for p in follower.late_ports[-1].get("listening") or []]
        ctx.update_record(box.id, lambda r: setattr(r, "ports", listening))
    return found


def _error_of(outcome: TurnOutcome) -> CodexDaytonaError | None:
    """The error a run that did not complete ends `ask` with (None: it completed)."""
    error: CodexDaytonaError | None = None
    if outcome.status == "busy":
        running = outcome.running_run_id or "unknown"
        error = BusyError(
            f"Another turn is running on this sandbox (run {running}).",
            f"Follow it with `codex-daytona logs -f {running}`, or ask with --wait to queue behind it.",
        )
    elif outcome.status == "error":
        error = AgentSetupError(f"The agent failed in the sandbox: {outcome.error or 'unknown error'}")
    elif outcome.status == "interrupted":
        error = InterruptedByUser(f"The turn (run {outcome.run_id}) was interrupted.")
    elif outcome.status != "completed":
        error = TurnFailedError(f"The agent's turn failed: {outcome.error or 'unknown error'}")
    return error


def _lost(ctx: Context, follower: RunFollower) -> TurnOutcome:
    """The sandbox was deleted while the run was followed (`down` elsewhere, the API, a
    Daytona restart): the run is lost with it, and the sandbox forgotten here."""
    box = follower.box
    outcome = _outcome(follower)
    outcome.status = "lost"

    def lost(current: SandboxRecord) -> None:
        if current.last_turn is not None and current.last_turn.run_id == follower.run_id:
            current.last_turn.status = "lost"
            current.last_turn.ended_at = now()
            current.last_turn.error = "the sandbox was deleted during the turn"

    ctx.update_record(box.id, lost)
    ctx.forget(box.id)
    return outcome.fail(
        SandboxGoneError(
            f"Sandbox {box.id} was deleted during the turn (run {follower.run_id}): the turn is lost.",
            "It was forgotten here; `codex-daytona up` (or the next ask) creates a new one.",
        )
    )


def _follow_until_started(ctx: Context, follower: RunFollower) -> TurnOutcome | None:
    """Follows a detached turn until it is under way; the run's outcome (as `_follow` has
    it) if it ended before that (refused or failed), else None."""
    try:
        follower.follow(DETACH_START_S, until_started=True)
    except TurnTimeoutError:
        raise DaytonaError(
            f"Run {follower.run_id} did not start within {DETACH_START_S:g} s.",
            f"See `codex-daytona logs {follower.run_id}`.",
        ) from None
    finally:
        follower.close()
    if follower.completed is not None:
        return _follow(ctx, follower, None)
    return None


def interrupt(box: Box, run_id: str) -> bool:
    """Asks the agent to interrupt run `run_id`; False when it has no such run running."""
    result = box.run(runtime.interrupt_command(box.layout, run_id), timeout=30)
    return result.exit_code == 0


INTERRUPT_RETRY_S = 0.5


def interrupt_until_ended(ctx: Context, run_id: Callable[[], str | None], running: Callable[[], bool]) -> None:
    """Asks the agent in `ctx`'s sandbox to interrupt its run until it has, or the run ended
    (`running` turns false). A failed look-up or request is tried again: one lost interrupt
    would leave a turn running in a sandbox nobody follows. The run's id is read on every try,
    as a turn that has only just started may not have told it yet."""
    while running():
        record, current = ctx.record(), run_id()
        if record is None or current is None:
            return
        try:
            if interrupt(ctx.look(record), current):
                return
        except (DaytonaError, SandboxGoneError):
            pass
        time.sleep(INTERRUPT_RETRY_S)


def _interrupt(ctx: Context, follower: RunFollower) -> bool:
    """Asks the agent to interrupt the turn, then waits briefly for it to wind down. A
    second Ctrl-C while it winds down stops waiting: then True."""
    ctx.emit(ev.progress("Interrupting the turn..."))
    try:
        with contextlib.suppress(DaytonaError):
            interrupt(follower.box, follower.run_id)
        with contextlib.suppress(DaytonaError, TurnTimeoutError, AgentSetupError):
            follower.follow(INTERRUPT_GRACE_S)
    except KeyboardInterrupt:
        return True
    return False


def _finish(ctx: Context, follower: RunFollower, *, keep_session: bool = False) -> TurnOutcome:
    """Saves what the run came to (a refused "busy" run leaves the record as it was).
    `keep_session`: its command is followed further (for late ports), so its session stays."""
    box = follower.box
    outcome = _outcome(follower)
    if not keep_session:
        follower.close()
        follower.release_session()
    if outcome.status == "busy":
        ctx.update_record(box.id, lambda r: _unclaim(r, follower.run_id, follower.previous_turn))
        return outcome
    if outcome.thread_id:
        box.record.thread_id = outcome.thread_id
    usage = outcome.usage
    listening = None if follower.ports_event is None else list(follower.ports_event.get("listening") or [])

    def change(current: SandboxRecord) -> None:
        if outcome.thread_id:
            current.thread_id = outcome.thread_id
        last = current.last_turn
        if last is None or last.run_id == follower.run_id:
            current.last_turn = LastTurn(
                run_id=follower.run_id,
                started_at=last.started_at if last else now(),
                ended_at=now(),
                status=outcome.status,
                usage=Usage(**usage) if usage else None,
                error=outcome.error,
                session_id=last.session_id if last else None,
                command_id=last.command_id if last else None,
            )
        if listening is not None:
            current.ports = listening

    ctx.update_record(box.id, change)
    if outcome.status in TURN_ENDED:
        _restore_auto_stop(ctx, box)
    return outcome


def _set_settling(record: SandboxRecord, run_id: str, until: str) -> None:
    if record.last_turn is not None and record.last_turn.run_id == run_id:
        record.last_turn.settling_until = until


# --- a detached turn keeps its sandbox up ------------------------------------------------------


def _keep_up_while_detached(ctx: Context, box: Box) -> None:
    """Daytona counts API calls, preview traffic and open connections as activity, never
    the processes in the sandbox: a detached turn nobody follows would look idle and be
    stopped mid-turn. The sandbox's auto-stop is raised to the detached-turn budget; the
    next command that finds the turn over puts it back."""
    budget = ctx.settings.codex_daytona_detach_minutes
    normal = ctx.settings.codex_daytona_auto_stop_minutes
    if normal == 0 or budget <= normal:
        return
    try:
        box.set_auto_stop(budget)
    except DaytonaError as exc:
        ctx.emit(ev.warning(f"Could not raise the sandbox's auto-stop for the detached turn: {exc.message}"))
        return
    ctx.update_record(box.id, lambda r: setattr(r, "auto_stop_raised", True))


def _restore_auto_stop(ctx: Context, box: Box) -> None:
    """Puts back the auto-stop a detached turn raised, once no turn runs."""
    if not box.record.auto_stop_raised:
        return
    with contextlib.suppress(DaytonaError):
        box.set_auto_stop(ctx.settings.codex_daytona_auto_stop_minutes)
        ctx.update_record(box.id, lambda r: setattr(r, "auto_stop_raised", False))
        box.record.auto_stop_raised = False


def _unclaim(record: SandboxRecord, run_id: str, previous: LastTurn | None) -> None:
    """Puts back the last turn a refused run claimed (unless another has claimed it since)."""
    if record.last_turn is not None and record.last_turn.run_id == run_id:
        record.last_turn = previous


def _set_command(record: SandboxRecord, run_id: str, command_id: str, handle: str | None) -> None:
    if record.last_turn is not None and record.last_turn.run_id == run_id:
        record.last_turn.command_id = command_id
    if handle is not None:
        record.handle = handle


# --- what `ask` takes besides the prompt ---------------------------------------------------------


def read_output_schema(path: Path) -> dict[str, object]:
    """The JSON Schema in `path` for `--output-schema`: a JSON object, or a usage error before
    anything is sent."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"--output-schema: no such file: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--output-schema: cannot read {path}: {exc}") from None
    try:
        schema = json.loads(text)
    except ValueError as exc:
        raise UsageError(
            f"--output-schema: {path} is not JSON ({exc}).", 'Give a JSON Schema object, e.g. {"type": "object", ...}.'
        ) from None
    if not isinstance(schema, dict):
        raise UsageError(f"--output-schema: {path} holds a JSON {type(schema).__name__}, not a JSON Schema object.")
    return schema


def check_images(paths: list[Path]) -> list[Path]:
    """The `--image` files, each one a readable local file, or a usage error."""
    for path in paths:
        if not path.is_file():
            raise UsageError(f"--image: no such file: {path}")
        if not os.access(path, os.R_OK):
            raise UsageError(f"--image: cannot read {path}")
    return [p.absolute() for p in paths]
