"""Following one agent run from its log in the sandbox, whatever the stream does."""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable
from typing import cast

from agent_bundle import protocol
from codex_daytona import events as ev
from codex_daytona.errors import AgentSetupError, CommandGoneError, DaytonaError, NoSandboxError, TurnTimeoutError
from codex_daytona.sandbox import runtime
from codex_daytona.state import LastTurn
from codex_daytona.usecases.context import SESSION_ID, Box, OnEvent, tail

STREAM_RECONNECTS = 20


class RunFollower:
    """Follows one agent run: decodes its events from an agent command's log, and when the
    stream drops, picks up where it was, so no event is lost or repeated.

    Daytona replays a command's whole log on every connection, so a dropped stream is
    reconnected to the same command and the bytes already taken in are skipped. When that
    command is gone or ended mid-run (its client went away, the sandbox restarted), the run
    is followed from its event file in the sandbox, by an attach command in a session of
    its own, from the byte where this follower is. It stops at the run's closing event,
    not when Daytona closes the stream (about a second after the command ends)."""

    def __init__(
        self,
        box: Box,
        run_id: str,
        emit: OnEvent,
        *,
        on_key_needed: Callable[[], None] | None = None,
        keepalive_seconds: float = 240.0,
        idle_seconds: float = 60.0,
        previous_turn: LastTurn | None = None,
        disposable_session: str | None = None,
    ) -> None:
        """`emit` has every event of the run up to its closing one, and the late ports after it;
        `on_key_needed` hands the agent the key its run names (None: it cannot be). After
        `idle_seconds` of silence a stream counts as stalled (the agent's heartbeat comes 3x as
        often). `previous_turn` is the last turn before this run claimed it, and
        `disposable_session` a session made for this run alone (the usual one was busy),
        deleted once the run is over (`release_session`)."""
        self.box = box
        self.run_id = run_id
        self.emit = emit
        self.on_key_needed = on_key_needed
        self.keepalive_seconds = keepalive_seconds
        self.idle_seconds = idle_seconds
        self.previous_turn = previous_turn
        self.disposable_session = disposable_session
        self.session: str | None = None
        self.command_id: str | None = None
        self.attached = False  # following an attach command rather than the run's own
        self.offset = 0  # bytes of complete event lines handled: the position in the event file
        self.received = 0  # bytes of the followed command's stdout taken in
        self._replayed = 0  # bytes of stdout seen on the current connection
        self.reconnects = 0
        self._partial = b""
        self._temp_sessions: list[str] = []
        self.stderr: list[str] = []
        # The run's closing event as the agent sent it: TurnOutcome.from_completed decodes it.
        self.completed: protocol.RunCompleted | None = None
        self.ports_event: ev.Event | None = None  # the ports right after the turn
        # After the closing event: the late ports events, and the agent's last word on them.
        self.late_ports: list[ev.Event] = []
        self.settled: ev.Event | None = None
        self._on_late_ports: Callable[[ev.Event], None] | None = None  # while `follow(until_settled)`
        # What the stream showed before the closing event, for a run that has none (yet).
        self.thread_id: str | None = None
        self.last_message = ""  # the text of the last agent message
        self.started = False  # the turn is under way (thread.started)
        self.key_needed = False

    def watch(self, session: str, command_id: str) -> None:
        """Follows this command's log (the run's own agent command) from its first byte."""
        self.session, self.command_id, self.attached = session, command_id, False
        self.received = 0
        self._partial = b""

    # --- decoding ---------------------------------------------------------------------

    def _on_stdout(self, text: str) -> None:
        data = text.encode("utf-8")
        start = self._replayed
        self._replayed += len(data)
        if self.received > start:  # a reconnect replays the log from its start
            data = data[self.received - start :]
        self.received += len(data)
        self._feed(data)

    def feed_text(self, chunk: str) -> None:
        self._feed(chunk.encode("utf-8"))

    def _feed(self, data: bytes) -> None:
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            if not line:
                continue  # a heartbeat: on the stream only, never in the run's event file
            self.offset += len(line) + 1
            event = ev.parse_line(line.decode("utf-8", "replace"))
            if event is not None and self.completed is None:
                self._handle(event)
            elif event is not None and event.get("type") in (ev.PORTS, ev.PORTS_SETTLED):
                self._handle_late(event)

    def _on_stderr(self, chunk: str) -> None:
        self.stderr.append(chunk)

    def _handle(self, event: ev.Event) -> None:
        kind = event.get("type")
        if kind == ev.RUN_COMPLETED:
            self.completed = cast("protocol.RunCompleted", event)
            return
        if kind == ev.PORTS:
            self.ports_event = event
        if kind == ev.KEY_NEEDED:
            self.key_needed = self.on_key_needed is not None
            return
        if kind == ev.THREAD_STARTED:
            self.thread_id = event.get("thread_id")
            self.started = True
        item = event.get("item") or {}
        if kind == ev.ITEM_COMPLETED and item.get("type") == ev.AGENT_MESSAGE:
            self.last_message = str(item.get("text") or "")
        self.emit(event)

    def _handle_late(self, event: ev.Event) -> None:
        """What comes after the closing event: the ports of servers that bound late."""
        if event.get("type") == ev.PORTS_SETTLED:
            self.settled = event
        else:
            self.late_ports.append(event)
        self.emit(event)
        if event.get("type") == ev.PORTS and self._on_late_ports is not None:
            self._on_late_ports(event)

    @property
    def settling(self) -> float:
        """How long after its closing event the agent watches for late ports (0: not at all)."""
        return float((self.ports_event or {}).get("settling") or 0)

    # --- streaming --------------------------------------------------------------------

    def follow(
        self,
        timeout: float | None,
        *,
        until_started: bool = False,
        until_settled: bool = False,
        on_late_ports: Callable[[ev.Event], None] | None = None,
    ) -> None:
        """Streams until the run completes (or, with `until_started`, until the turn is under
        way; with `until_settled`, past its closing event until the agent has reported the
        ports that bound late, each ports event handed to `on_late_ports` as it comes);
        raises TurnTimeoutError after `timeout` seconds."""
        self._on_late_ports = on_late_ports
        try:
            self._follow(timeout, until_started=until_started, until_settled=until_settled)
        finally:
            self._on_late_ports = None

    def _follow(self, timeout: float | None, *, until_started: bool, until_settled: bool) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout

        def reached() -> bool:
            if until_settled:
                return self.completed is not None and (self.settled is not None or not self.settling)
            return self.completed is not None or (until_started and self.started)

        def done() -> bool:
            return reached() or self.key_needed

        while True:
            if self.key_needed:
                assert self.on_key_needed is not None
                self.key_needed = False
                self.on_key_needed()
            if reached():
                return
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TurnTimeoutError(f"The turn did not finish within {timeout:g} s.")
            if self.command_id is None:
                self._attach()
            assert self.session is not None and self.command_id is not None
            self._replayed = 0
            # A connection resumes after the last complete line: when a stream drops, the SDK
            # flushes what it held back as stdout, which may be part of Daytona's stream
            # marker or of a character, not output. The replay brings that line again, whole.
            self.received -= len(self._partial)
            self._partial = b""
            try:
                finished = self.box.stream_logs(
                    self.session,
                    self.command_id,
                    self._on_stdout,
                    self._on_stderr,
                    timeout=remaining,
                    keepalive_seconds=self.keepalive_seconds,
                    until=done,
                    idle_timeout=self.idle_seconds,
                )
            except CommandGoneError:
                self._still_there()
                self.command_id = None  # follow the run from its event file instead
                continue
            except DaytonaError:
                self._still_there()
                self._count_reconnect()
                self.emit({"type": ev.RETRY, "message": "The log stream dropped; reconnecting..."})
                time.sleep(min(0.1 * self.reconnects, 1.0))
                continue
            if not finished:
                raise TurnTimeoutError(f"The turn did not finish within {timeout:g} s.")
            if not done():
                self._command_ended()

    def _still_there(self) -> None:
        """Raises SandboxGoneError when the stream dropped because the sandbox was deleted
        (one look-up): its run is over, and reconnecting would only meet 404s."""
        self.box.exists()

    def _count_reconnect(self) -> None:
        self.reconnects += 1
        if self.reconnects > STREAM_RECONNECTS:
            raise DaytonaError(
                "The agent's output stream kept dropping; the run goes on in the sandbox.",
                f"Follow it with `codex-daytona logs -f {self.run_id}`.",
            )

    def _attach(self) -> None:
        """Follows the run from its event file, from this follower's offset, in a session of
        its own (the run's own session may be busy with the run)."""
        self._count_reconnect()
        session = f"{SESSION_ID}-attach-{secrets.token_hex(3)}"
        command = runtime.attach_command(
            self.box.layout, self.run_id, self.offset, follow=True, heartbeat_seconds=self.idle_seconds / 3
        )
        self.box.create_session(session)  # new: one request, not a 404 first
        self._temp_sessions.append(session)
        command_id = self.box.start_command(session, command)
        self.session, self.command_id, self.attached = session, command_id, True
        self.received = 0
        self._partial = b""

    def _command_ended(self) -> None:
        """The followed command's log closed before the run's closing event."""
        assert self.session is not None and self.command_id is not None
        try:
            exit_code = self.box.command_exit_code(self.session, self.command_id)
        except CommandGoneError:
            exit_code = None
            self.command_id = None
        if self.command_id is None:
            return
        if exit_code is None:
            self._count_reconnect()  # closed early: connect again
            return
        if self.attached and self.offset == 0 and any(f"no run {self.run_id}" in c for c in self.stderr):
            raise NoSandboxError(f"No run {self.run_id} in this sandbox.", "`codex-daytona status` shows the last run.")
        if self.attached:
            raise AgentSetupError(
                f"Run {self.run_id} ended without a result: the agent stopped in the sandbox.",
                "Ask again; `codex-daytona up` restarts the agent if it keeps failing.",
            )
        if self.offset == 0:
            output = tail("".join(self.stderr))
            raise AgentSetupError(f"The agent in the sandbox exited with code {exit_code} before starting: {output}")
        # The run's own command went away mid-run (killed, its session reset): the run goes on.
        self.command_id = None

    def close(self) -> None:
        """Deletes the sessions this follower made for attach commands (best effort)."""
        for session in self._temp_sessions:
            with contextlib.suppress(DaytonaError):
                self.box.delete_session(session)
        self._temp_sessions.clear()

    def release_session(self) -> None:
        """Deletes the session made for this run alone, once the run is over."""
        if self.disposable_session is not None and self.completed is not None:
            with contextlib.suppress(DaytonaError):
                self.box.delete_session(self.disposable_session)
            self.disposable_session = None
