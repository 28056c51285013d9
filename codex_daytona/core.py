"""The application: up, ask, preview, down. Never prints; reports through events.

Every step that the user should see is an event passed to `on_event` (progress,
warnings, the agent's own events, preview links); results are return values; failures
are our errors. The CLI decides how any of it looks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from codex_daytona import events as ev
from codex_daytona import runtime
from codex_daytona.daytona_api import DaytonaApi, PreviewLink
from codex_daytona.errors import (
    AgentSetupError,
    DaytonaError,
    InterruptedByUser,
    NoSandboxError,
    SandboxGoneError,
    TurnFailedError,
    TurnTimeoutError,
)
from codex_daytona.settings import Settings
from codex_daytona.state import DEFAULT_NAME, LastTurn, SandboxRecord, State, StateStore, Usage, now

if TYPE_CHECKING:
    from daytona import Sandbox

OnEvent = Callable[[ev.Event], None]
TOOL_LABEL = "codex-daytona"
SESSION_ID = "codex-daytona"
INTERRUPT_GRACE_S = 10.0
STREAM_RECONNECTS = 20
# Snapshot states (daytona SnapshotState) worth waiting for, and the ones that will not recover.
SNAPSHOT_PENDING = frozenset({"pending", "building", "pulling", "snapshotting"})
SNAPSHOT_FAILED = frozenset({"error", "build_failed"})
SNAPSHOT_BUILDER_MINUTES = 60


def project_labels(project_dir: Path, name: str) -> dict[str, str]:
    """Labels that find this tool's sandboxes, and this directory's, on Daytona."""
    digest = hashlib.sha256(str(project_dir).encode()).hexdigest()[:16]
    return {
        "app": TOOL_LABEL,
        f"{TOOL_LABEL}.project": digest,
        f"{TOOL_LABEL}.dir": project_dir.name[:63] or "root",
        f"{TOOL_LABEL}.name": name,
    }


def new_run_id() -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{stamp}-{secrets.token_hex(3)}"


@dataclass
class UpResult:
    sandbox_id: str
    created: bool
    home_dir: str
    state: str = "started"


@dataclass
class SnapshotResult:
    name: str
    created: bool
    state: str


@dataclass
class TurnOutcome:
    run_id: str
    status: str
    exit_code: int
    thread_id: str | None
    final_message: str
    error: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    previews: list[PreviewLink] = field(default_factory=list)
    sandbox_id: str = ""


class App:
    """One project directory's sandboxes, as the CLI sees them."""

    def __init__(
        self,
        settings: Settings,
        store: StateStore,
        *,
        name: str = DEFAULT_NAME,
        project_dir: Path | None = None,
        on_event: OnEvent | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.name = name
        self.project_dir = (project_dir or Path.cwd()).absolute()
        self.emit: OnEvent = on_event or (lambda _event: None)
        self._api: DaytonaApi | None = None
        # Set when a new sandbox comes from the prebuilt runtime snapshot (runtime.snapshot_name).
        self._runtime_baked_in = False

    @property
    def api(self) -> DaytonaApi:
        if self._api is None:
            self._api = DaytonaApi(self.settings)
        return self._api

    # --- state helpers ------------------------------------------------------------------

    def record(self) -> SandboxRecord | None:
        return self.store.get(self.name)

    def _require_record(self) -> SandboxRecord:
        record = self.record()
        if record is None:
            raise NoSandboxError("No sandbox here yet.")
        return record

    def _save(self, record: SandboxRecord) -> None:
        with self.store.lock():
            state = self.store.load()
            record.touch()
            state.sandboxes[self.name] = record
            self.store.save(state)

    def _forget(self, sandbox_id: str) -> None:
        with self.store.lock():
            state = self.store.load()
            current = state.sandboxes.get(self.name)
            if current is not None and current.sandbox_id == sandbox_id:
                del state.sandboxes[self.name]
                self.store.save(state)

    def _connect(self, record: SandboxRecord) -> Sandbox:
        """The sandbox in state, started. Raises SandboxGoneError when Daytona no longer has it."""
        sandbox = self.api.get(record.sandbox_id)
        current = self.api.info(sandbox).state
        if current != "started":
            self.emit(ev.progress(f"Starting sandbox {record.sandbox_id} (it was {current})..."))
            self.api.start(sandbox)
        return sandbox

    def _connect_or_forget(self, record: SandboxRecord) -> Sandbox:
        try:
            return self._connect(record)
        except SandboxGoneError:
            self._forget(record.sandbox_id)
            raise

    # --- up ------------------------------------------------------------------------------

    def up(self) -> UpResult:
        """Reuses the sandbox in state (starting it if stopped), or creates and sets up one."""
        with self.store.lock():
            state = self.store.load()
            record = state.sandboxes.get(self.name)
            if record is not None:
                try:
                    sandbox = self._connect(record)
                except SandboxGoneError:
                    del state.sandboxes[self.name]
                    self.store.save(state)
                    self.emit(
                        ev.warning(
                            f"Sandbox {record.sandbox_id} was deleted outside codex-daytona; "
                            "creating a new one (the old conversation is gone)."
                        )
                    )
                    record = None
                else:
                    if record.runtime != runtime.runtime_fingerprint():
                        self._setup(sandbox, record, state)
                    return UpResult(record.sandbox_id, created=False, home_dir=record.home_dir)
            sandbox, record = self._create(state)
            self._setup(sandbox, record, state)
            return UpResult(record.sandbox_id, created=True, home_dir=record.home_dir)

    def _create(self, state: State) -> tuple[Sandbox, SandboxRecord]:
        scope = uuid.uuid4().hex
        self.emit(ev.progress("Creating sandbox..."))
        sandbox = self.api.create(
            labels=project_labels(self.project_dir, self.name),
            env={"CODEX_DAYTONA_SCOPE": scope},
            auto_stop_minutes=self.settings.codex_daytona_auto_stop_minutes,
            auto_delete_minutes=self.settings.codex_daytona_auto_delete_minutes,
            snapshot=self._base_snapshot(),
        )
        # Saved before anything else can fail, so the sandbox is never orphaned.
        record = SandboxRecord(sandbox_id=sandbox.id, home_dir="", scope=scope)
        state.sandboxes[self.name] = record
        self.store.save(state)
        record.home_dir = self.api.home_dir(sandbox)
        self.store.save(state)
        self.emit(ev.progress(f"Created sandbox {sandbox.id}"))
        return sandbox, record

    def _setup(self, sandbox: Sandbox, record: SandboxRecord, state: State) -> None:
        """Installs the agent runtime when missing, uploads the agent and Codex's config."""
        layout = runtime.Layout(record.home_dir)
        if not self._runtime_baked_in:
            self._install_runtime(sandbox, layout)
        if record.preview_pattern is None:
            probe_link = self.api.preview_link(sandbox, runtime.PATTERN_PROBE_PORT)
            record.preview_pattern = probe_link.url.replace(str(runtime.PATTERN_PROBE_PORT), "{PORT}")
        self.api.upload(
            sandbox,
            {
                layout.agent: runtime.agent_source(),
                layout.codex_config: runtime.codex_config(self.settings, layout, record.preview_pattern),
            },
        )
        self.emit(ev.progress("Starting the agent..."))
        started = self.api.exec(sandbox, runtime.start_daemon_command(layout), timeout=120)
        if started.exit_code != 0:
            raise AgentSetupError(f"The agent could not start in the sandbox: {started.output.strip()[-300:]}")
        record.runtime = runtime.runtime_fingerprint()
        record.touch()
        state.sandboxes[self.name] = record
        self.store.save(state)

    def _install_runtime(self, sandbox: Sandbox, layout: runtime.Layout) -> None:
        """Installs the agent runtime unless the sandbox's marker says it is there already."""
        probe = self.api.exec(sandbox, runtime.probe_command(layout), timeout=60)
        marker, python = runtime.parse_probe(probe.output)
        if marker == runtime.RUNTIME_MARKER:
            return
        if python is None or python < runtime.MIN_PYTHON:
            found = "no python3" if python is None else f"Python {python[0]}.{python[1]}"
            raise AgentSetupError(
                f"The sandbox has {found}; the Codex SDK needs Python 3.10 or newer.",
                "Use a sandbox image with Python >= 3.10.",
            )
        self.emit(ev.progress(f"Installing the Codex agent runtime (openai-codex {runtime.CODEX_SDK_VERSION})..."))
        self._run_setup_command(sandbox, runtime.install_command(layout))

    def _run_setup_command(self, sandbox: Sandbox, command: str) -> None:
        """Runs a long setup command as a session command, so no HTTP request waits minutes."""
        # A new session each time: creating it first costs one request, where trying the
        # command in a session that a fresh sandbox does not have yet costs two.
        session = f"{SESSION_ID}-setup-{secrets.token_hex(3)}"
        self.api.create_session(sandbox, session)
        command_id = self.api.start_command(sandbox, session, command)
        output: list[str] = []
        with contextlib.suppress(DaytonaError):
            asyncio.run(self.api.follow_logs(sandbox, session, command_id, output.append, output.append))
        exit_code = self.api.command_exit_code(sandbox, session, command_id)
        deadline = time.monotonic() + 900
        while exit_code is None and time.monotonic() < deadline:
            time.sleep(1)
            exit_code = self.api.command_exit_code(sandbox, session, command_id)
        if exit_code != 0:
            tail = "".join(output).strip().splitlines()[-5:]
            raise AgentSetupError(
                f"Installing the agent runtime failed (exit {exit_code}): {' | '.join(tail) or 'no output'}"
            )

    # --- snapshot ------------------------------------------------------------------------

    def _base_snapshot(self) -> str | None:
        """What a new sandbox is created from: CODEX_DAYTONA_SNAPSHOT when it is set, else the
        prebuilt runtime snapshot (`codex-daytona snapshot`) when it is active, else Daytona's
        default image (and `up` installs the runtime). One request to Daytona at most."""
        if self.settings.codex_daytona_snapshot:
            return self.settings.codex_daytona_snapshot
        name = runtime.snapshot_name()
        state = self.api.snapshot_state(name)
        if state == "active":
            self.emit(ev.progress(f"Using snapshot {name}"))
            # Its name vouches for the runtime in it, so `_setup` need not probe for it.
            self._runtime_baked_in = True
            return name
        if state is not None:
            self.emit(ev.progress(f"Snapshot {name} is {state}, not usable yet; installing the runtime instead."))
        return None

    def snapshot(self) -> SnapshotResult:
        """Builds the Daytona snapshot with the agent runtime baked in, named by a hash of what
        is in it (runtime.snapshot_name). Does nothing but report when it exists already."""
        name = runtime.snapshot_name()
        state = self.api.snapshot_state(name)
        if state == "inactive":
            self.emit(ev.progress(f"Activating snapshot {name} (Daytona deactivates unused snapshots)..."))
            self.api.activate_snapshot(name)
            state = self._wait_for_snapshot(name)
        elif state in SNAPSHOT_PENDING:
            state = self._wait_for_snapshot(name)
        elif state in SNAPSHOT_FAILED:
            raise DaytonaError(
                f"Snapshot {name} exists but its build failed (state {state}).",
                "Delete it (Daytona dashboard, Snapshots), then run `codex-daytona snapshot` again.",
            )
        if state is not None:
            return SnapshotResult(name, created=False, state=state)
        self._build_snapshot(name)
        return SnapshotResult(name, created=True, state=self._wait_for_snapshot(name))

    def _build_snapshot(self, name: str) -> None:
        """Installs the runtime in a temporary sandbox of Daytona's default image, exactly as `up`
        would, captures its filesystem as `name`, and deletes the sandbox."""
        self.emit(ev.progress(f"Building snapshot {name}: creating a temporary sandbox..."))
        sandbox = self.api.create(
            labels={"app": TOOL_LABEL, f"{TOOL_LABEL}.role": "snapshot-builder"},
            env={},
            # If this process dies mid-build, Daytona stops and then deletes the sandbox on its own.
            auto_stop_minutes=SNAPSHOT_BUILDER_MINUTES,
            auto_delete_minutes=1,
        )
        try:
            layout = runtime.Layout(self.api.home_dir(sandbox))
            self._install_runtime(sandbox, layout)
            # `up` uploads the agent anyway; it is in the snapshot too so the name tells the truth.
            self.api.upload(sandbox, {layout.agent: runtime.agent_source()})
            self.emit(ev.progress(f"Saving snapshot {name} (this can take a few minutes)..."))
            self.api.snapshot_sandbox(sandbox, name)
        finally:
            self.emit(ev.progress(f"Deleting the temporary sandbox {sandbox.id}..."))
            try:
                self.api.delete(sandbox)
            except DaytonaError as exc:
                self.emit(ev.warning(f"Could not delete the temporary sandbox {sandbox.id}: {exc.message}"))

    def _wait_for_snapshot(self, name: str, timeout: float = 900) -> str:
        """Waits for Daytona to finish building or activating the snapshot; returns its state."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.api.snapshot_state(name)
            if state is None or state in SNAPSHOT_FAILED:
                raise DaytonaError(f"Daytona could not build snapshot {name} (state {state or 'gone'}).")
            if state not in SNAPSHOT_PENDING or time.monotonic() > deadline:
                return state
            time.sleep(2)

    # --- ask -----------------------------------------------------------------------------

    def ask(
        self,
        prompt: str,
        *,
        new_thread: bool = False,
        model: str | None = None,
        timeout: float | None = None,
    ) -> TurnOutcome:
        """Runs one turn of the agent on `prompt` and streams its events."""
        api_key = self.settings.require_openai_key()
        record = self.record()
        if record is None:
            self.up()
            record = self._require_record()
        try:
            sandbox = self._connect(record)
        except SandboxGoneError as exc:
            self._forget(record.sandbox_id)
            raise SandboxGoneError(
                f"Sandbox {record.sandbox_id} no longer exists on Daytona (deleted outside codex-daytona).",
                "It was forgotten here; ask again to start over in a new sandbox.",
            ) from exc
        if record.runtime != runtime.runtime_fingerprint():
            self.up()
            record = self._require_record()
        return self._turn(sandbox, record, prompt, api_key, new_thread=new_thread, model=model, timeout=timeout)

    def _turn(
        self,
        sandbox: Sandbox,
        record: SandboxRecord,
        prompt: str,
        api_key: str,
        *,
        new_thread: bool,
        model: str | None,
        timeout: float | None,
    ) -> TurnOutcome:
        layout = runtime.Layout(record.home_dir)
        run_id = new_run_id()
        session = record.session_id or SESSION_ID
        command_id = self.api.start_command(sandbox, session, runtime.agent_command(layout, run_id))
        record.session_id = session
        record.last_turn = LastTurn(run_id=run_id, started_at=now())
        self._save(record)
        self.api.send_input(
            sandbox,
            session,
            command_id,
            runtime.agent_request(
                prompt=prompt,
                api_key=api_key,
                thread_id=None if new_thread else record.thread_id,
                new_thread=new_thread,
                model=model or self.settings.codex_daytona_model,
                base_url=self.settings.base_url,
                layout=layout,
            ),
        )
        follower = RunFollower(self.api, sandbox, session, command_id, self.emit)
        try:
            follower.follow(timeout)
        except KeyboardInterrupt:
            self._interrupt(follower, sandbox, session, command_id)
            self._finish(record, follower, run_id)
            raise InterruptedByUser("Interrupted: the turn was stopped.") from None
        except TurnTimeoutError:
            self._interrupt(follower, sandbox, session, command_id)
            self._finish(record, follower, run_id)
            raise
        outcome = self._finish(record, follower, run_id)
        outcome.previews = self._previews(sandbox, record, follower.ports_event)
        if outcome.status != "completed":
            raise TurnFailedError(f"The agent's turn failed: {outcome.error or 'unknown error'}")
        return outcome

    def _interrupt(self, follower: RunFollower, sandbox: Sandbox, session: str, command_id: str) -> None:
        """Asks the agent to interrupt the turn, then waits briefly for it to wind down."""
        self.emit(ev.progress("Interrupting the turn..."))
        with contextlib.suppress(DaytonaError):
            self.api.send_input(sandbox, session, command_id, runtime.interrupt_request())
        with contextlib.suppress(DaytonaError, TurnTimeoutError, KeyboardInterrupt):
            follower.follow(INTERRUPT_GRACE_S)

    def _finish(self, record: SandboxRecord, follower: RunFollower, run_id: str) -> TurnOutcome:
        done = follower.completed or {}
        status = str(done.get("status") or ("interrupted" if follower.interrupted else "unknown"))
        thread_id = done.get("thread_id") or follower.thread_id or record.thread_id
        usage = done.get("usage") or {}
        if thread_id:
            record.thread_id = thread_id
        record.last_turn = LastTurn(
            run_id=run_id,
            started_at=record.last_turn.started_at if record.last_turn else now(),
            ended_at=now(),
            status=status,
            usage=Usage(**usage) if usage else None,
            error=done.get("error"),
        )
        if follower.ports_event is not None:
            record.ports = list(follower.ports_event.get("listening") or [])
        self._save(record)
        return TurnOutcome(
            run_id=run_id,
            status=status,
            exit_code=int(done.get("exit_code", 1)),
            thread_id=thread_id,
            final_message=str(done.get("final_message") or ""),
            error=done.get("error"),
            usage=usage,
            sandbox_id=record.sandbox_id,
        )

    def _previews(self, sandbox: Sandbox, record: SandboxRecord, ports: ev.Event | None) -> list[PreviewLink]:
        if not ports:
            return []
        links = []
        public = self.api.info(sandbox).public
        for port in ports.get("loopback_only") or []:
            self.emit(
                ev.warning(
                    f"Port {port} listens on 127.0.0.1 only, so its preview link cannot reach it: "
                    "restart the server bound to 0.0.0.0 (e.g. `--host 0.0.0.0`)."
                )
            )
        for port in ports.get("new") or []:
            link = self.api.preview_link(sandbox, int(port))
            links.append(link)
            self.emit(preview_event(link, public))
        return links

    # --- preview -------------------------------------------------------------------------

    def listening_ports(self, sandbox: Sandbox, record: SandboxRecord) -> list[int]:
        layout = runtime.Layout(record.home_dir)
        result = self.api.exec(sandbox, runtime.ports_command(layout), timeout=30)
        try:
            return [int(p) for p in json.loads(result.output.strip().splitlines()[-1])]
        except (ValueError, IndexError):
            raise AgentSetupError(f"Could not list the sandbox's ports: {result.output.strip()[:200]}") from None

    def preview(self, port: int | None = None, *, signed: bool = False, ttl: int = 3600) -> list[PreviewLink]:
        """Preview links for `port`, or for every port listening in the sandbox."""
        record = self._require_record()
        sandbox = self._connect_or_forget(record)
        ports = [port] if port is not None else self.listening_ports(sandbox, record)
        public = self.api.info(sandbox).public
        links = []
        for p in ports:
            link = self.api.signed_preview_link(sandbox, p, ttl) if signed else self.api.preview_link(sandbox, p)
            links.append(link)
            self.emit(preview_event(link, public or signed))
        return links

    # --- down ----------------------------------------------------------------------------

    def down(self) -> str:
        """Deletes the sandbox and forgets it. Returns its id."""
        record = self._require_record()
        try:
            sandbox = self.api.get(record.sandbox_id)
        except SandboxGoneError:
            self._forget(record.sandbox_id)
            self.emit(ev.warning(f"Sandbox {record.sandbox_id} was already gone; forgot it."))
            return record.sandbox_id
        self.emit(ev.progress(f"Deleting sandbox {record.sandbox_id}..."))
        self.api.delete(sandbox)
        self._forget(record.sandbox_id)
        return record.sandbox_id


def preview_event(link: PreviewLink, public: bool) -> ev.Event:
    event: ev.Event = {"type": ev.PREVIEW, "port": link.port, "url": link.url, "public": public}
    if link.token and not public:
        event["token"] = link.token
        event["header"] = "X-Daytona-Preview-Token"
    return event


class RunFollower:
    """Follows one agent run's output: decodes events, survives dropped streams, never
    shows an event twice, and knows when the run is over."""

    keepalive_seconds = 240.0

    def __init__(self, api: DaytonaApi, sandbox: Sandbox, session: str, command_id: str, emit: OnEvent) -> None:
        self.api = api
        self.sandbox = sandbox
        self.session = session
        self.command_id = command_id
        self.emit = emit
        self.decoder = ev.LineDecoder()
        self.seen_stdout = 0
        self.seen_stderr = 0
        self.stderr: list[str] = []
        self.completed: ev.Event | None = None
        self.ports_event: ev.Event | None = None
        self.thread_id: str | None = None
        self.interrupted = False
        self._skip_stdout = 0
        self._skip_stderr = 0

    # Replayed output is skipped by counting characters already delivered on earlier streams.
    def _on_stdout(self, chunk: str) -> None:
        if self._skip_stdout:
            dropped = min(self._skip_stdout, len(chunk))
            self._skip_stdout -= dropped
            chunk = chunk[dropped:]
        self.seen_stdout += len(chunk)
        for event in self.decoder.feed(chunk):
            self._handle(event)

    def _on_stderr(self, chunk: str) -> None:
        if self._skip_stderr:
            dropped = min(self._skip_stderr, len(chunk))
            self._skip_stderr -= dropped
            chunk = chunk[dropped:]
        self.seen_stderr += len(chunk)
        self.stderr.append(chunk)

    def _handle(self, event: ev.Event) -> None:
        kind = event.get("type")
        if kind == ev.RUN_COMPLETED:
            self.completed = event
            return
        if kind == ev.PORTS:
            self.ports_event = event
            return
        if kind == ev.THREAD_STARTED:
            self.thread_id = event.get("thread_id")
        if kind == ev.TURN_FAILED and event.get("status") == "interrupted":
            self.interrupted = True
        self.emit(event)

    def follow(self, timeout: float | None) -> None:
        """Streams until the run completes; raises TurnTimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        drops = 0
        while self.completed is None:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TurnTimeoutError(f"The turn did not finish within {timeout:g} s.")
            self._skip_stdout, self._skip_stderr = self.seen_stdout, self.seen_stderr
            try:
                finished = asyncio.run(self._stream(remaining))
            except DaytonaError:
                drops += 1
                if drops > STREAM_RECONNECTS:
                    raise
                self.emit({"type": ev.RETRY, "message": "The log stream dropped; reconnecting..."})
                time.sleep(min(0.2 * drops, 2.0))
                continue
            if not finished:
                raise TurnTimeoutError(f"The turn did not finish within {timeout:g} s.")
            if self.completed is None:
                for event in self.decoder.flush():
                    self._handle(event)
            if self.completed is None:
                self._check_exited()
                time.sleep(0.2)

    async def _stream(self, timeout: float | None) -> bool:
        """One log stream; False when `timeout` ran out first."""
        follow = asyncio.ensure_future(
            self.api.follow_logs(self.sandbox, self.session, self.command_id, self._on_stdout, self._on_stderr)
        )
        keepalive = asyncio.ensure_future(self._keepalive())
        try:
            await asyncio.wait_for(asyncio.shield(follow), timeout)
            return True
        except asyncio.TimeoutError:
            follow.cancel()
            return False
        finally:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await keepalive
            if not follow.done():
                follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follow

    async def _keepalive(self) -> None:
        """Tells Daytona the sandbox is busy while the model thinks, so auto-stop waits."""
        while True:
            await asyncio.sleep(self.keepalive_seconds)
            with contextlib.suppress(DaytonaError):
                await asyncio.to_thread(self.api.refresh_activity, self.sandbox)

    def _check_exited(self) -> None:
        """The stream ended without the agent's last event: it crashed or was killed."""
        exit_code = self.api.command_exit_code(self.sandbox, self.session, self.command_id)
        if exit_code is None:
            return  # still running: the stream closed early; reconnect
        stderr = "".join(self.stderr).strip().splitlines()
        tail = " | ".join(stderr[-3:]) or "no output"
        raise AgentSetupError(f"The agent in the sandbox exited with code {exit_code} before finishing: {tail}")
