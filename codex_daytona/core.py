"""The application: up, ask, preview, down. Never prints; reports through events.

Every step that the user should see is an event passed to `on_event` (progress,
warnings, the agent's own events, preview links); results are return values; failures
are our errors. The CLI decides how any of it looks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from codex_daytona import events as ev
from codex_daytona import previews, runtime, transfer
from codex_daytona.daytona_api import DaytonaApi, PreviewLink, RefusedError, SandboxInfo, SshAccess
from codex_daytona.errors import (
    AgentSetupError,
    BusyError,
    CodexDaytonaError,
    CommandGoneError,
    ConfigError,
    DaytonaError,
    InterruptedByUser,
    NoSandboxError,
    SandboxGoneError,
    TransferError,
    TurnFailedError,
    TurnTimeoutError,
    UsageError,
)
from codex_daytona.settings import Settings
from codex_daytona.state import DEFAULT_NAME, LastTurn, SandboxRecord, State, StateStore, Usage, now

if TYPE_CHECKING:
    from daytona import Sandbox

OnEvent = Callable[[ev.Event], None]
TOOL_LABEL = "codex-daytona"
SESSION_ID = "codex-daytona"
INTERRUPT_GRACE_S = 10.0
DETACH_START_S = 60.0  # how long `ask --detach` waits for its turn to get under way
STREAM_RECONNECTS = 20
# Snapshot states (daytona SnapshotState) worth waiting for, and the ones that will not recover.
SNAPSHOT_PENDING = frozenset({"pending", "building", "pulling", "snapshotting"})
SNAPSHOT_FAILED = frozenset({"error", "build_failed"})
SNAPSHOT_BUILDER_MINUTES = 60
# A run in one of these states has ended, and with it the agent command that ran it.
TURN_ENDED = frozenset({"completed", "failed", "interrupted", "error"})


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


@dataclass(frozen=True)
class _SetupCommand:
    """A setup command running in a session of its own."""

    session: str
    command_id: str


@dataclass
class UpResult:
    sandbox_id: str
    created: bool
    home_dir: str
    state: str = "started"


@dataclass
class Check:
    """One thing `doctor` checked: ok, or what is wrong and how to fix it."""

    name: str
    ok: bool
    detail: str
    hint: str = ""
    error: CodexDaytonaError | None = None

    def as_dict(self) -> dict[str, object]:
        return {"check": self.name, "ok": self.ok, "detail": self.detail, "hint": self.hint or None}


@dataclass
class StatusReport:
    name: str
    state: str  # "none" (no sandbox here), "deleted", or Daytona's state: started, stopped, ...
    sandbox_id: str | None = None
    thread_id: str | None = None
    home_dir: str | None = None
    last_turn: LastTurn | None = None
    previews: list[PreviewLink] = field(default_factory=list)


@dataclass
class Preview:
    """A preview link and what checking it through the preview proxy found."""

    link: PreviewLink
    public: bool
    signed: bool = False
    check: previews.LinkCheck | None = None

    @property
    def port(self) -> int:
        return self.link.port

    @property
    def url(self) -> str:
        return self.link.url

    @property
    def token(self) -> str | None:
        return self.link.token

    def as_dict(self) -> dict[str, object]:
        data: dict[str, object] = {
            "port": self.port,
            "url": self.url,
            "token": None if self.public else self.token,  # a public sandbox's links need none
            "public": self.public,
            "signed": self.signed,
        }
        if self.check is not None:
            data.update(self.check.as_dict())
        return data


@dataclass
class SnapshotResult:
    name: str
    created: bool
    state: str


@dataclass
class TurnOutcome:
    run_id: str
    status: str
    thread_id: str | None
    final_message: str
    error: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    previews: list[Preview] = field(default_factory=list)
    sandbox_id: str = ""


@dataclass
class PushResult:
    sandbox_id: str
    destination: str
    files: int
    bytes: int
    baselined: bool


@dataclass
class PullResult:
    sandbox_id: str
    source: str
    destination: Path
    written: int
    unchanged: int
    overwritten: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class DiffResult:
    sandbox_id: str
    patch: bytes
    changes: list[tuple[str, str]] = field(default_factory=list)


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
        self.forced_interrupt = False
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
            if self.name != DEFAULT_NAME:
                raise NoSandboxError(
                    f"No sandbox named {self.name} here yet.", f"`codex-daytona up --name {self.name}` creates it."
                )
            raise NoSandboxError("No sandbox here yet.")
        return record

    def _save(self, record: SandboxRecord) -> None:
        with self.store.lock():
            state = self.store.load()
            record.touch()
            # Saved where its sandbox is now: `keep` may have renamed it while a turn ran.
            slot = next((n for n, r in state.sandboxes.items() if r.sandbox_id == record.sandbox_id), self.name)
            state.sandboxes[slot] = record
            self.store.save(state)

    def _update_record(self, sandbox_id: str, change: Callable[[SandboxRecord], None]) -> None:
        """Changes this sandbox's saved record under the lock (wherever `keep` has moved it)."""
        with self.store.lock():
            state = self.store.load()
            for current in state.sandboxes.values():
                if current.sandbox_id == sandbox_id:
                    change(current)
                    current.touch()
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
        if current == "paused":  # Daytona's start resumes it: its processes go on where they were
            self.emit(ev.progress(f"Resuming sandbox {record.sandbox_id}..."))
            self.api.start(sandbox)
        elif current != "started":
            self.emit(ev.progress(f"Starting sandbox {record.sandbox_id} (it was {current})..."))
            self.api.start(sandbox)
        return sandbox

    def _start_turn_command(
        self, sandbox: Sandbox, record: SandboxRecord, session: str, command: str
    ) -> tuple[Sandbox, str]:
        """Starts a turn's agent command. Daytona may have stopped the sandbox (auto-stop)
        between our look-up and this command: then it is started again and the command sent
        once more (the agent starts its daemon on demand); any other failure stands."""
        try:
            return sandbox, self.api.start_command(sandbox, session, command)
        except SandboxGoneError:
            raise
        except DaytonaError:
            if self.api.info(self.api.get(record.sandbox_id)).state == "started":
                raise
            sandbox = self._connect(record)
            return sandbox, self.api.start_command(sandbox, session, command)

    def _connect_or_forget(self, record: SandboxRecord) -> Sandbox:
        try:
            return self._connect(record)
        except SandboxGoneError:
            self._forget(record.sandbox_id)
            raise

    # --- up ------------------------------------------------------------------------------

    def up(self, *, repo: str | None = None, branch: str | None = None) -> UpResult:
        """Reuses the sandbox in state (starting it if stopped), or creates and sets up one.

        With `repo`, creates a new sandbox whose home is a clone of that repository."""
        if repo is not None:
            return self._up_from_repo(repo, branch)
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
            self._setup(sandbox, record, state, baseline=True)
            return UpResult(record.sandbox_id, created=True, home_dir=record.home_dir)

    def _new_sandbox(self, snapshot: str | None) -> tuple[Sandbox, str]:
        """Creates a sandbox for this name; returns it and its scope."""
        scope = uuid.uuid4().hex
        self.emit(ev.progress("Creating sandbox..."))
        sandbox = self.api.create(
            labels=project_labels(self.project_dir, self.name),
            env={"CODEX_DAYTONA_SCOPE": scope},
            auto_stop_minutes=self.settings.codex_daytona_auto_stop_minutes,
            auto_delete_minutes=self.settings.codex_daytona_auto_delete_minutes,
            snapshot=snapshot,
            secrets=self._secrets(),
        )
        return sandbox, scope

    def _create(self, state: State) -> tuple[Sandbox, SandboxRecord]:
        sandbox, scope = self._new_sandbox(self._base_snapshot())
        # Saved before anything else can fail, so the sandbox is never orphaned.
        record = SandboxRecord(sandbox_id=sandbox.id, home_dir="", scope=scope)
        state.sandboxes[self.name] = record
        self.store.save(state)
        record.home_dir = self.api.home_dir(sandbox)
        self.store.save(state)
        self.emit(ev.progress(f"Created sandbox {sandbox.id}"))
        return sandbox, record

    def _secrets(self) -> dict[str, str] | None:
        """Daytona Secret mode: the key's variable holds a placeholder Daytona replaces in transit."""
        if self.settings.sandbox_openai_secret:
            return {runtime.KEY_ENV: self.settings.sandbox_openai_secret}
        return None

    def _setup(
        self, sandbox: Sandbox, record: SandboxRecord, state: State | None = None, *, baseline: bool = False
    ) -> None:
        """Installs the agent runtime when missing, uploads the agent and Codex's config, starts
        the agent, and with `baseline` takes the diff baseline: one probe, one upload and one
        command however much there is to do (plus the install itself when it is needed).

        Saves the record into `state` (loaded under the caller's lock), or, without one,
        under the lock taken here."""
        layout = runtime.Layout(record.home_dir)
        probe = self.api.exec(sandbox, runtime.setup_probe_command(layout), timeout=60)
        marker, python, baseline_status, dotfiles = runtime.parse_setup_probe(probe.output)
        install = None
        if not self._runtime_baked_in and marker != runtime.RUNTIME_MARKER:
            # The install runs in the sandbox while the rest of the setup goes on.
            install = self._start_install(sandbox, layout, python)
        try:
            self._prepare_agent(sandbox, record, layout, baseline, baseline_status, dotfiles)
        except BaseException:
            if install is not None:
                with contextlib.suppress(DaytonaError):
                    self.api.delete_session(sandbox, install.session)
            raise
        if install is not None:
            self._await_setup_command(sandbox, install)
        take_baseline = baseline and baseline_status == "ready"
        self.emit(ev.progress("Starting the agent..."))
        # In key mode the daemon gets the key now (in this command's environment only), so
        # the first turn need not ask for it.
        key = self.settings.openai_key_for_turn() if self.settings.sandbox_openai_api_key else None
        started = self.api.exec(
            sandbox,
            runtime.finish_setup_command(layout, take_baseline, with_key=key is not None),
            timeout=600,
            env={runtime.KEY_ENV: key} if key else None,
        )
        baseline_error = runtime.parse_baseline_failure(started.output)
        if baseline_error is not None:
            self.emit(ev.warning(f"Could not record the diff baseline: {baseline_error}"))
        if started.exit_code != 0:
            raise AgentSetupError(f"The agent could not start in the sandbox: {started.output.strip()[-300:]}")
        record.runtime = runtime.runtime_fingerprint()
        if state is None:
            self._save(record)
            return
        record.touch()
        state.sandboxes[self.name] = record
        self.store.save(state)

    def _prepare_agent(
        self,
        sandbox: Sandbox,
        record: SandboxRecord,
        layout: runtime.Layout,
        baseline: bool,
        baseline_status: str,
        dotfiles: list[str],
    ) -> None:
        """Learns the preview URL pattern and uploads the agent and Codex's config (and the
        baseline's exclude file): what setup does besides the install and starting the agent."""
        if record.preview_pattern is None:
            try:
                probe_link = self.api.preview_link(sandbox, runtime.PATTERN_PROBE_PORT)
                record.preview_pattern = probe_link.url.replace(str(runtime.PATTERN_PROBE_PORT), "{PORT}")
            except DaytonaError as exc:
                # Only the agent's instructions lose the URL pattern; previews still work.
                self.emit(ev.warning(f"Could not learn the preview URL pattern: {exc.message}"))
        files = {
            layout.agent: runtime.agent_source(),
            layout.codex_config: runtime.codex_config(self.settings, layout, record.preview_pattern),
        }
        take_baseline = baseline and baseline_status == "ready"
        if take_baseline:
            files[runtime.baseline_exclude(layout)] = runtime.baseline_exclude_file(dotfiles)
        elif baseline and baseline_status == "nogit":
            self.emit(ev.warning("The sandbox has no git, so `codex-daytona diff` will not work in it."))
        self.api.upload(sandbox, files)

    def create(
        self, *, snapshot: str | None = None, runtime_baked_in: bool = False, thread_id: str | None = None
    ) -> UpResult:
        """Creates this name's sandbox, from `snapshot` (a fork of another sandbox, which has
        the runtime when `runtime_baked_in`, and continues `thread_id`) or, without one, as
        `up` would. Unlike `up`, holds the state lock only to save, so that several names can
        be created at once (`ask --fanout`)."""
        if self.record() is not None:
            raise UsageError(f"There is already a sandbox named {self.name}.")
        forked = snapshot is not None
        if snapshot is None:
            snapshot = self._base_snapshot()
        else:
            self._runtime_baked_in = runtime_baked_in
        sandbox, scope = self._new_sandbox(snapshot)
        # Saved before anything else can fail, so the sandbox is never orphaned.
        record = SandboxRecord(
            sandbox_id=sandbox.id, home_dir="", scope=scope, created_by="fanout", thread_id=thread_id
        )
        self._save(record)
        record.home_dir = self.api.home_dir(sandbox)
        self._save(record)
        self.emit(ev.progress(f"Created sandbox {sandbox.id}"))
        self._setup(sandbox, record, baseline=not forked)  # a fork has its parent's baseline
        return UpResult(record.sandbox_id, created=True, home_dir=record.home_dir)

    def fork_from(self, source_id: str, base: SandboxRecord) -> str:
        """Creates this name's sandbox as a fork of sandbox `source_id` (whose record is `base`):
        its files, the agent runtime and Codex's threads, continuing `base`'s thread. Saves the
        record at once; `finish_fork` then starts the agent. RefusedError when Daytona cannot
        fork it (`ask --fanout` then saves a snapshot instead)."""
        if self.record() is not None:
            raise UsageError(f"There is already a sandbox named {self.name}.")
        source = self.api.get(source_id)
        if self.api.info(source).state != "started":  # Daytona forks only a started sandbox
            self.emit(ev.progress(f"Starting sandbox {source_id} to fork it..."))
            self.api.start(source)
        self.emit(ev.progress(f"Forking sandbox {source_id}..."))
        sandbox = self.api.fork(source)
        # Saved before anything else can fail, so the fork is never orphaned. A fork has its
        # source's environment, and so its scope.
        record = SandboxRecord(
            sandbox_id=sandbox.id, home_dir="", scope=base.scope, created_by="fanout", thread_id=base.thread_id
        )
        self._save(record)
        self._runtime_baked_in = base.runtime == runtime.runtime_fingerprint()
        return str(sandbox.id)

    def finish_fork(self) -> None:
        """Labels a fork as this name's (it has its source's labels), and starts its agent:
        processes are not copied by a fork."""
        record = self._require_record()
        sandbox = self._connect(record)
        self.api.set_labels(sandbox, project_labels(self.project_dir, self.name))
        record.home_dir = self.api.home_dir(sandbox)
        self._save(record)
        self._setup(sandbox, record, baseline=False)  # a fork has its source's diff baseline

    def fork_snapshot(self, name: str) -> SandboxRecord:
        """Saves this name's sandbox's filesystem (its files, the agent runtime, Codex's
        threads) as snapshot `name`, for `ask --fanout` to create sandboxes from. Returns the
        record it was taken from."""
        record = self._require_record()
        sandbox = self._connect_or_forget(record)
        if record.last_turn is not None and record.last_turn.status == "running":
            self.emit(ev.warning(f"A turn may be running in {self.name}; its files are copied as they are now."))
        self.emit(ev.progress(f"Saving sandbox {self.name} as snapshot {name} to start the fan-out from..."))
        self.api.snapshot_sandbox(sandbox, name)
        state = self._wait_for_snapshot(name)
        if state != "active":
            raise DaytonaError(f"Snapshot {name} is {state}, not active.")
        return record

    def _install_runtime(self, sandbox: Sandbox, layout: runtime.Layout, python: tuple[int, int] | None) -> None:
        """Installs the agent runtime in a sandbox whose probe found none (python: its Python)."""
        self._await_setup_command(sandbox, self._start_install(sandbox, layout, python))

    def _start_install(self, sandbox: Sandbox, layout: runtime.Layout, python: tuple[int, int] | None) -> _SetupCommand:
        """Starts installing the agent runtime (see _install_runtime); _await_setup_command waits."""
        if python is None or python < runtime.MIN_PYTHON:
            found = "no python3" if python is None else f"Python {python[0]}.{python[1]}"
            raise AgentSetupError(
                f"The sandbox has {found}; the Codex SDK needs Python 3.10 or newer.",
                "Use a sandbox image with Python >= 3.10.",
            )
        self.emit(ev.progress(f"Installing the Codex agent runtime (openai-codex {runtime.CODEX_SDK_VERSION})..."))
        return self._start_setup_command(sandbox, runtime.install_command(layout))

    def _start_setup_command(self, sandbox: Sandbox, command: str) -> _SetupCommand:
        """Starts a long setup command as a session command, so no HTTP request waits minutes."""
        # A new session each time: creating it first costs one request, where trying the
        # command in a session that a fresh sandbox does not have yet costs two.
        session = f"{SESSION_ID}-setup-{secrets.token_hex(3)}"
        self.api.create_session(sandbox, session)
        try:
            return _SetupCommand(session, self.api.start_command(sandbox, session, command))
        except BaseException:
            with contextlib.suppress(DaytonaError):
                self.api.delete_session(sandbox, session)
            raise

    def _await_setup_command(self, sandbox: Sandbox, setup: _SetupCommand) -> None:
        """Waits for a setup command to end, deletes its session; raises if it failed."""
        session, command_id = setup.session, setup.command_id
        output: list[str] = []
        try:
            with contextlib.suppress(DaytonaError):
                self.api.stream_logs(sandbox, session, command_id, output.append, output.append, timeout=900)
            exit_code = self.api.command_exit_code(sandbox, session, command_id)
            deadline = time.monotonic() + 900
            while exit_code is None and time.monotonic() < deadline:
                time.sleep(1)
                exit_code = self.api.command_exit_code(sandbox, session, command_id)
        finally:
            with contextlib.suppress(DaytonaError):
                self.api.delete_session(sandbox, session)  # its shell would idle on otherwise
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
        try:
            state = self.api.snapshot_state(name)
        except DaytonaError as exc:
            # A key that may not read snapshots must not stop `up`: it only costs the install.
            self.emit(ev.warning(f"Could not look up snapshot {name} ({exc.message}); installing the runtime."))
            return None
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
            probe = self.api.exec(sandbox, runtime.setup_probe_command(layout), timeout=60)
            marker, python, _, _ = runtime.parse_setup_probe(probe.output)
            if marker != runtime.RUNTIME_MARKER:
                self._install_runtime(sandbox, layout, python)
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
        detach: bool = False,
        wait: bool = False,
        effort: str | None = None,
        config: list[str] | None = None,
        thread_id: str | None = None,
        images: list[Path] | None = None,
        output_schema: dict[str, object] | None = None,
    ) -> TurnOutcome:
        """Runs one turn of the agent on `prompt` and streams its events.

        With `detach`, starts the turn and returns at once (status "running"); `logs` follows it.
        `thread_id` resumes that thread instead of the sandbox's current one, and fails the
        run (AgentSetupError) when the sandbox cannot resume it. `images` (local
        files, checked with `check_images`) are uploaded in one request and attached to the
        turn; `output_schema` (see `read_output_schema`) is the JSON Schema the final message
        must follow.
        """
        for pair in config or []:
            reason = runtime.refused_config_key(pair, self.settings)
            if reason:
                raise UsageError(
                    f"-c {pair.partition('=')[0].strip() or pair!r} {reason}.",
                    "Codex settings the tool does not depend on can be given with -c "
                    "(e.g. -c model_reasoning_summary=detailed); see README, `ask -c`.",
                )
        api_key = self.settings.openai_key_for_turn()
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
        layout = runtime.Layout(record.home_dir)
        run_id = new_run_id()
        record, session, previous = self._claim_turn(record, run_id)
        remote_images = runtime.image_paths(layout, run_id, [p.name for p in images or []])
        if images:
            try:
                self.api.upload_from(sandbox, {r: str(p) for r, p in zip(remote_images, images, strict=True)})
            except CodexDaytonaError:
                self._update_record(record.sandbox_id, lambda r: _unclaim(r, run_id, previous))
                raise
        request = runtime.agent_request(
            prompt=prompt,
            api_key=api_key,
            thread_id=None if new_thread else thread_id or record.thread_id,
            new_thread=new_thread,
            model=model or self.settings.codex_daytona_model,
            base_url=self.settings.base_url,
            layout=layout,
            wait=wait,
            model_timeout=self.settings.codex_daytona_model_timeout_seconds,
            heartbeat_seconds=self.settings.codex_daytona_stream_idle_seconds / 3,
            turn_model=model,
            effort=effort,
            protected=runtime.protected_config(self.settings),
            config=config,
            images=remote_images,
            output_schema=output_schema,
            must_resume=thread_id is not None and not new_thread,
        )
        sandbox, command_id = self._start_turn_command(
            sandbox, record, session, runtime.agent_command(layout, run_id, request)
        )
        self._update_record(record.sandbox_id, lambda r: _set_command(r, run_id, command_id))
        follower = self._follower(sandbox, layout, run_id, api_key)
        follower.watch(session, command_id)
        follower.previous_turn = previous
        if session != (record.session_id or SESSION_ID):
            follower.disposable_session = session  # deleted once the run is over, not left idle
        if not detach:
            return self._follow(sandbox, record, follower, timeout)
        # Detached: follow only until the turn is under way (or refused: busy, no key); its
        # events are for `logs`.
        follower.emit = lambda _event: None
        self._follow_until_started(sandbox, record, follower)
        self._keep_up_while_detached(sandbox, record)
        return TurnOutcome(run_id, "running", follower.thread_id or record.thread_id, "", sandbox_id=record.sandbox_id)

    def _claim_turn(self, record: SandboxRecord, run_id: str) -> tuple[SandboxRecord, str, LastTurn | None]:
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
            if previous is not None and previous.status not in TURN_ENDED:
                session = f"{SESSION_ID}-{run_id}"
            else:
                session = current.session_id or SESSION_ID
            current.last_turn = LastTurn(run_id=run_id, started_at=now(), session_id=session)
            claimed.append((current, session, previous))

        self._update_record(record.sandbox_id, claim)
        if not claimed:  # forgotten meanwhile (`down` in another shell): the turn goes on
            claimed.append((record, record.session_id or SESSION_ID, record.last_turn))
        return claimed[0]

    def logs(self, run_id: str | None = None, *, follow: bool = False) -> TurnOutcome:
        """Shows a run's events (the last run by default); with `follow`, until it ends."""
        record = self._require_record()
        run_id = run_id or (record.last_turn.run_id if record.last_turn else None)
        if not run_id:
            raise NoSandboxError("No turn has run in this sandbox yet.", 'Run `codex-daytona ask "..."` first.')
        sandbox = self._connect_or_forget(record)
        layout = runtime.Layout(record.home_dir)
        follower = self._follower(sandbox, layout, run_id, None)
        if not follow:
            result = self.api.exec(sandbox, runtime.attach_command(layout, run_id, 0, follow=False), timeout=60)
            if result.exit_code != 0:
                raise NoSandboxError(f"No run {run_id} in this sandbox.", "`codex-daytona status` shows the last run.")
            follower.feed_text(result.output)
            return follower.outcome(record)
        last = record.last_turn
        if last is not None and last.run_id == run_id and last.session_id and last.command_id:
            # The turn's own command: its log replays the run from the start, live.
            follower.watch(last.session_id, last.command_id)
        return self._follow(sandbox, record, follower, None)

    def _follower(self, sandbox: Sandbox, layout: runtime.Layout, run_id: str, api_key: str | None) -> RunFollower:
        def deliver_key() -> None:
            assert api_key is not None
            self.emit(ev.progress("Handing the OpenAI key to the agent..."))
            command = runtime.start_daemon_command(layout, with_key=True)
            result = self.api.exec(sandbox, command, timeout=120, env={runtime.KEY_ENV: api_key})
            if result.exit_code != 0:
                raise AgentSetupError(f"Could not hand the key to the agent: {_tail(result.output)}")

        follower = RunFollower(
            self.api, sandbox, layout, run_id, self.emit, on_key_needed=deliver_key if api_key else None
        )
        follower.keepalive_seconds = self.settings.codex_daytona_keepalive_seconds
        follower.idle_seconds = self.settings.codex_daytona_stream_idle_seconds
        return follower

    def _follow_until_started(self, sandbox: Sandbox, record: SandboxRecord, follower: RunFollower) -> None:
        """Follows a detached turn until it is under way; raises what `_follow` would if the
        agent refused or failed it before that."""
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
            self._follow(sandbox, record, follower, None)  # raises the run's error

    def _keep_up_while_detached(self, sandbox: Sandbox, record: SandboxRecord) -> None:
        """Daytona counts API calls, preview traffic and open connections as activity, never
        the processes in the sandbox: a detached turn nobody follows would look idle and be
        stopped mid-turn. The sandbox's auto-stop is raised to the detached-turn budget; the
        next command that finds the turn over puts it back."""
        budget = self.settings.codex_daytona_detach_minutes
        normal = self.settings.codex_daytona_auto_stop_minutes
        if normal == 0 or budget <= normal:
            return
        try:
            self.api.set_auto_stop(sandbox, budget)
        except DaytonaError as exc:
            self.emit(ev.warning(f"Could not raise the sandbox's auto-stop for the detached turn: {exc.message}"))
            return
        self._update_record(record.sandbox_id, lambda r: setattr(r, "auto_stop_raised", True))

    def _restore_auto_stop(self, sandbox: Sandbox, record: SandboxRecord) -> None:
        """Puts back the auto-stop a detached turn raised, once no turn runs."""
        if not record.auto_stop_raised:
            return
        with contextlib.suppress(DaytonaError):
            self.api.set_auto_stop(sandbox, self.settings.codex_daytona_auto_stop_minutes)
            self._update_record(record.sandbox_id, lambda r: setattr(r, "auto_stop_raised", False))
            record.auto_stop_raised = False

    def _follow(
        self, sandbox: Sandbox, record: SandboxRecord, follower: RunFollower, timeout: float | None
    ) -> TurnOutcome:
        try:
            follower.follow(timeout)
        except KeyboardInterrupt:
            self._interrupt(sandbox, follower)
            raise _with_details(
                InterruptedByUser(f"Interrupted: run {follower.run_id} was stopped."), self._finish(record, follower)
            ) from None
        except TurnTimeoutError as exc:
            self._interrupt(sandbox, follower)
            raise _with_details(exc, self._finish(record, follower)) from None
        outcome = self._finish(record, follower)
        outcome.previews = self._previews(sandbox, record, follower.ports_event)
        error: CodexDaytonaError | None = None
        if outcome.status == "busy":
            running = (follower.completed or {}).get("running_run_id") or "unknown"
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
        if error is not None:
            raise _with_details(error, outcome)
        return outcome

    def interrupt(self, sandbox: Sandbox, layout: runtime.Layout, run_id: str) -> bool:
        result = self.api.exec(sandbox, runtime.interrupt_command(layout, run_id), timeout=30)
        return result.exit_code == 0

    def _interrupt(self, sandbox: Sandbox, follower: RunFollower) -> None:
        """Asks the agent to interrupt the turn, then waits briefly for it to wind down.

        A second Ctrl-C while it winds down stops waiting and sets `forced_interrupt`."""
        self.emit(ev.progress("Interrupting the turn..."))
        self.forced_interrupt = False
        try:
            with contextlib.suppress(DaytonaError):
                self.interrupt(sandbox, follower.layout, follower.run_id)
            with contextlib.suppress(DaytonaError, TurnTimeoutError, AgentSetupError):
                follower.follow(INTERRUPT_GRACE_S)
        except KeyboardInterrupt:
            self.forced_interrupt = True

    def _finish(self, record: SandboxRecord, follower: RunFollower) -> TurnOutcome:
        """Saves what the run came to (a refused "busy" run leaves the record as it was)."""
        outcome = follower.outcome(record)
        follower.close()
        if follower.disposable_session is not None and follower.completed is not None:
            with contextlib.suppress(DaytonaError):
                self.api.delete_session(follower.sandbox, follower.disposable_session)
        if outcome.status == "busy":
            self._update_record(record.sandbox_id, lambda r: _unclaim(r, follower.run_id, follower.previous_turn))
            return outcome
        if outcome.thread_id:
            record.thread_id = outcome.thread_id
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

        self._update_record(record.sandbox_id, change)
        if outcome.status in TURN_ENDED:
            self._restore_auto_stop(follower.sandbox, record)
        return outcome

    def _previews(self, sandbox: Sandbox, record: SandboxRecord, ports: ev.Event | None) -> list[Preview]:
        if not ports:
            return []
        new_ports = [int(p) for p in ports.get("new") or []]
        if not new_ports:
            return []
        public = self.api.info(sandbox).public
        links = [self.api.preview_link(sandbox, port) for port in new_ports]
        return self._check_and_report(links, public)

    def _check_and_report(self, links: list[PreviewLink], public: bool, *, signed: bool = False) -> list[Preview]:
        """Checks each link through the preview proxy, then reports it and any problem."""
        checks = previews.check_links([(link.port, link.url, None if public else link.token) for link in links])
        found = []
        for link, check in zip(links, checks, strict=True):
            preview = Preview(link, public, signed, check)
            found.append(preview)
            self.emit(preview_event(link, public, check, signed=signed))
            if not check.ok:
                self.emit(ev.warning(check.message()))
        return found

    # --- preview -------------------------------------------------------------------------

    def listening_ports(self, sandbox: Sandbox, record: SandboxRecord) -> list[int]:
        """The TCP ports listening in the sandbox (less Daytona's own)."""
        layout = runtime.Layout(record.home_dir)
        result = self.api.exec(sandbox, runtime.ports_command(layout), timeout=30)
        try:
            report = json.loads(result.output.strip().splitlines()[-1])
            if isinstance(report, list):  # an agent uploaded by an older codex-daytona
                return [int(p) for p in report]
            return [int(p) for p in report["listening"]]
        except (ValueError, IndexError, KeyError, TypeError):
            raise AgentSetupError(f"Could not list the sandbox's ports: {result.output.strip()[:200]}") from None

    def preview(
        self, port: int | None = None, *, signed: bool = False, ttl: int = 3600, for_browser: bool = False
    ) -> list[Preview]:
        """Preview links for `port`, or for every port listening in the sandbox, each checked
        through the preview proxy. `for_browser` signs the links of a private sandbox, since
        a browser cannot send the token header."""
        record = self._require_record()
        sandbox = self._connect_or_forget(record)
        ports = [port] if port is not None else self.listening_ports(sandbox, record)
        public = self.api.info(sandbox).public
        signed = signed or (for_browser and not public)
        links = [
            self.api.signed_preview_link(sandbox, p, ttl) if signed else self.api.preview_link(sandbox, p)
            for p in ports
        ]
        return self._check_and_report(links, public, signed=signed)

    # --- status and exec -------------------------------------------------------------------

    def status(self) -> StatusReport:
        """What this directory's sandbox is doing. Read-only: forgets nothing, starts nothing."""
        record = self.record()
        if record is None:
            return StatusReport(name=self.name, state="none")
        report = StatusReport(
            name=self.name,
            state="unknown",
            sandbox_id=record.sandbox_id,
            thread_id=record.thread_id,
            home_dir=record.home_dir,
            last_turn=record.last_turn,
        )
        try:
            sandbox = self.api.get(record.sandbox_id)
        except SandboxGoneError:
            report.state = "deleted"
            return report
        report.state = self.api.info(sandbox).state
        if report.state == "started" and record.runtime:
            for port in self.listening_ports(sandbox, record):
                link = self.api.preview_link(sandbox, port)
                report.previews.append(link)
        return report

    def exec(self, command: str, *, timeout: float | None = None) -> int:
        """Runs a shell command in the sandbox's home, streams its output; returns its exit code.

        The command runs in a shell of its own (the agent's `--exec`), in a session of its
        own that is deleted afterwards: `exit`, `exec`, `cd` or `export` in it cannot break
        or change anything for the next command, and a background job it starts does not
        keep it running."""
        record = self._require_record()
        sandbox = self._connect_or_forget(record)
        stream = CommandStream(self.api, sandbox, self.emit)
        try:
            return stream.run(runtime.Layout(record.home_dir), command, timeout)
        except KeyboardInterrupt:
            raise InterruptedByUser("Interrupted: the command was stopped.") from None
        except TurnTimeoutError:
            raise TurnTimeoutError(f"The command did not finish within {timeout:g} s; it was stopped.") from None
        finally:
            stream.close()

    # --- down ----------------------------------------------------------------------------

    def mark_created_by(self, command: str) -> None:
        record = self._require_record()
        record.created_by = command
        self._save(record)

    def stop(self) -> str:
        """Stops the sandbox, keeping its files and the thread; the next `up` or `ask` starts it."""
        record = self._require_record()
        try:
            sandbox = self.api.get(record.sandbox_id)
        except SandboxGoneError:
            self._forget(record.sandbox_id)
            raise
        if self.api.info(sandbox).state != "stopped":
            self.emit(ev.progress(f"Stopping sandbox {record.sandbox_id}..."))
            self.api.stop(sandbox)
        return record.sandbox_id

    def doctor(self, on_check: Callable[[Check], None]) -> list[Check]:
        """Checks, in order, what `ask` needs: the settings, Daytona (one request), the model
        endpoint (one `GET /models` where the provider offers it) and the snapshot new
        sandboxes start from. Stops at the first check that would make `ask` fail (the last
        one returned, not ok, with its error)."""
        checks: list[Check] = []

        def report(check: Check) -> bool:
            checks.append(check)
            on_check(check)
            return check.ok

        from codex_daytona.settings import settings_error

        missing = self.settings.missing(openai=True)
        if missing:
            error = settings_error(missing)
            report(Check("settings", False, error.message, error.hint, error))
            return checks
        mode = "a Daytona Secret" if self.settings.sandbox_openai_secret else "SANDBOX_OPENAI_API_KEY"
        if not report(Check("settings", True, f"Daytona key set; the OpenAI key comes from {mode}")):
            return checks
        try:
            count = len(self.all_sandboxes())
        except CodexDaytonaError as exc:
            report(Check("daytona", False, exc.message, exc.hint, exc))
            return checks
        if not report(Check("daytona", True, f"{self.settings.api_url} answers; {count} sandboxes of this tool")):
            return checks
        if not report(self._check_model()):
            return checks
        report(self._check_snapshot())
        return checks

    def _check_model(self) -> Check:
        import urllib.error
        import urllib.request

        base = self.settings.base_url or "https://api.openai.com/v1"
        if self.settings.sandbox_openai_secret and self.settings.sandbox_openai_api_key is None:
            return Check("model", True, f"{base}: not checked from here (the key is a Daytona Secret)")
        key = self.settings.require_openai_key()
        request = urllib.request.Request(f"{base}/models", headers={"Authorization": f"Bearer {key}"})
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                body = json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                error: CodexDaytonaError = ConfigError(
                    f"The model endpoint {base} refused the key (HTTP {exc.code}).",
                    "Check SANDBOX_OPENAI_API_KEY (and SANDBOX_OPENAI_BASE_URL if you use a gateway).",
                )
                return Check("model", False, error.message, error.hint, error)
            # Not every provider lists models: only a refusal of the key is certain to fail a turn.
            return Check("model", True, f"{base} answers (no model list: HTTP {exc.code})")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            error = CodexDaytonaError(
                f"Could not reach the model endpoint {base} ({reason}).",
                "Check SANDBOX_OPENAI_BASE_URL and your network (the sandbox reaches it the same way).",
            )
            return Check("model", False, error.message, error.hint, error)
        ids = [str(m.get("id")) for m in body.get("data") or [] if isinstance(m, dict)]
        model = self.settings.codex_daytona_model
        if model and ids and model not in ids:
            error = ConfigError(
                f"The model endpoint {base} does not offer {model}.",
                f"Set CODEX_DAYTONA_MODEL to one it lists, e.g. {', '.join(ids[:3])}.",
            )
            return Check("model", False, error.message, error.hint, error)
        offered = f"offers {model}" if model else f"lists {len(ids)} models"
        return Check("model", True, f"{base} {offered}")

    def _check_snapshot(self) -> Check:
        name = self.settings.codex_daytona_snapshot
        try:
            if name:
                state = self.api.snapshot_state(name)
                if state == "active":
                    return Check("snapshot", True, f"{name} is active; new sandboxes start from it")
                error: CodexDaytonaError = ConfigError(
                    f"CODEX_DAYTONA_SNAPSHOT names {name}, which is {state or 'not on Daytona'}.",
                    "Unset CODEX_DAYTONA_SNAPSHOT, or name an active snapshot (`codex-daytona snapshot` builds one).",
                )
                return Check("snapshot", False, error.message, error.hint, error)
            name = runtime.snapshot_name()
            state = self.api.snapshot_state(name)
        except CodexDaytonaError as exc:
            return Check("snapshot", False, exc.message, exc.hint, exc)
        if state == "active":
            return Check("snapshot", True, f"{name} is active; new sandboxes start with the runtime in place")
        return Check(
            "snapshot",
            True,
            f"{name} is {state or 'not built'}; the first `up` installs the runtime "
            "(`codex-daytona snapshot` makes every new sandbox start faster)",
        )

    def pause(self, *, or_stop: bool = False) -> tuple[str, str]:
        """Pauses the sandbox: its processes (the warm agent, dev servers) freeze with their
        memory, and the next command that needs the sandbox resumes it. Where Daytona cannot
        pause it, stops it instead when `or_stop`, else raises RefusedError. Returns the
        sandbox id and its state now ("paused" or "stopped")."""
        record = self._require_record()
        try:
            sandbox = self.api.get(record.sandbox_id)
        except SandboxGoneError:
            self._forget(record.sandbox_id)
            raise
        state = self.api.info(sandbox).state
        if state in ("paused", "stopped", "archived"):
            self.emit(ev.warning(f"Sandbox {record.sandbox_id} is already {state}."))
            return record.sandbox_id, state
        if record.last_turn is not None and record.last_turn.status == "running":
            self.emit(ev.warning("A turn is running: it freezes with the sandbox and goes on when it resumes."))
        self.emit(ev.progress(f"Pausing sandbox {record.sandbox_id}..."))
        try:
            self.api.pause(sandbox)
        except RefusedError as exc:
            if not or_stop:
                raise RefusedError(
                    exc.message,
                    "`codex-daytona pause --or-stop` stops it instead (dev servers and the warm agent "
                    "do not survive a stop); `codex-daytona down --stop` always stops.",
                ) from exc
            self.emit(ev.warning(f"{exc.message}; stopping it instead."))
            self.api.stop(sandbox)
            return record.sandbox_id, "stopped"
        return record.sandbox_id, "paused"

    def ssh(self, minutes: int) -> tuple[str, SshAccess]:
        """SSH access to the sandbox for `minutes` (Daytona revokes the earlier tokens); starts
        or resumes the sandbox first. Returns the sandbox id and the access."""
        record = self._require_record()
        sandbox = self._connect_or_forget(record)
        return record.sandbox_id, self.api.ssh_access(sandbox, minutes)

    def open_shell(self, rows: int, cols: int) -> RemoteShell:
        """An interactive shell on a terminal of rows x cols in the sandbox's home (Daytona's
        PTY sessions); starts or resumes the sandbox first."""
        record = self._require_record()
        sandbox = self._connect_or_forget(record)
        pty_id = f"{TOOL_LABEL}-shell-{secrets.token_hex(4)}"
        handle = self.api.open_pty(sandbox, pty_id, record.home_dir or None, rows, cols)
        return RemoteShell(self.api, sandbox, pty_id, handle)

    def all_sandboxes(self) -> list[SandboxInfo]:
        """Every sandbox this tool made, in every project of this Daytona account."""
        return [s for s in self.api.list({"app": TOOL_LABEL}) if s.state not in ("destroyed", "destroying")]

    def down_all(self, sandboxes: list[SandboxInfo]) -> list[str]:
        """Deletes the given sandboxes and forgets those this directory knew. Returns their ids."""
        deleted = []
        for info in sandboxes:
            self.emit(ev.progress(f"Deleting sandbox {info.id}..."))
            with contextlib.suppress(SandboxGoneError):
                self.api.delete(self.api.get(info.id))
            deleted.append(info.id)
        with self.store.lock():
            state = self.store.load()
            gone = set(deleted)
            state.sandboxes = {n: r for n, r in state.sandboxes.items() if r.sandbox_id not in gone}
            self.store.save(state)
        return deleted

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

    # --- transfer: up --repo, push, pull, diff --------------------------------------------

    def _up_from_repo(self, repo: str, branch: str | None) -> UpResult:
        """A new sandbox whose home is a clone of `repo`; the clone is the diff baseline."""
        record = self.record()
        if record is not None:
            raise UsageError(
                f"This directory already has sandbox {record.sandbox_id}; --repo only applies to a new sandbox.",
                "Run `codex-daytona down` first, or `codex-daytona push` your code into the existing one.",
            )
        result = self.up()
        record = self._require_record()
        sandbox = self._connect(record)
        layout = runtime.Layout(record.home_dir)
        self.emit(ev.progress(f"Cloning {repo}{f' (branch {branch})' if branch else ''}..."))
        cloned = self.api.exec(sandbox, runtime.clone_command(layout, repo, branch), timeout=900)
        if cloned.exit_code != 0:
            # A fresh sandbox with a failed clone is of no use: delete it so `up --repo` can be retried.
            with contextlib.suppress(DaytonaError):
                self.api.delete(sandbox)
            self._forget(record.sandbox_id)
            raise TransferError(
                f"Could not clone {repo}: {_tail(cloned.output)}",
                "Check the URL and the branch (the sandbox must reach the repository); the new sandbox was deleted.",
            )
        rebased = self.api.exec(sandbox, runtime.rebaseline_all_command(layout), timeout=600)
        if rebased.exit_code != 0:
            self.emit(ev.warning(f"Could not record the clone as the diff baseline: {_tail(rebased.output)}"))
        return result

    def _ensure_baseline(self, sandbox: Sandbox, record: SandboxRecord) -> bool:
        """Takes the diff baseline once (the home as `up` left it). False when git is missing."""
        layout = runtime.Layout(record.home_dir)
        probe = self.api.exec(sandbox, runtime.baseline_probe_command(layout), timeout=60)
        status, dotfiles = runtime.parse_baseline_probe(probe.output)
        if status == "present":
            return True
        if status != "ready":
            self.emit(ev.warning("The sandbox has no git, so `codex-daytona diff` will not work in it."))
            return False
        self.api.upload(sandbox, {runtime.baseline_exclude(layout): runtime.baseline_exclude_file(dotfiles)})
        taken = self.api.exec(sandbox, runtime.baseline_init_command(layout), timeout=600)
        if taken.exit_code != 0:
            self.emit(ev.warning(f"Could not record the diff baseline: {_tail(taken.output)}"))
            return False
        return True

    def push(self, local: Path | None = None, remote: str | None = None) -> PushResult:
        """Uploads a local directory (its files git does not ignore) into the sandbox as one archive."""
        source = transfer.require_directory(local or self.project_dir)
        if self.record() is None:
            self.up()  # like `ask`: the first push creates the sandbox
        record = self._require_record()
        sandbox = self._connect_or_forget(record)
        layout = runtime.Layout(record.home_dir)
        dest = transfer.resolve_remote(record.home_dir, remote)
        paths = transfer.list_push_files(source)
        self.emit(ev.progress(f"Packing {len(paths)} files from {source}..."))
        token = secrets.token_hex(6)
        archive = f"{runtime.transfer_dir(layout)}/push-{token}.tar.gz"
        path_list = f"{runtime.transfer_dir(layout)}/push-{token}.list"
        with tempfile.TemporaryDirectory(prefix="codex-daytona-push-") as tmp:
            local_archive = Path(tmp) / "push.tar.gz"
            with open(local_archive, "wb") as out:
                stats = transfer.build_archive(source, paths, out)
            size = local_archive.stat().st_size
            self.emit(ev.progress(f"Uploading {stats.files} files ({_size(size)} compressed) to {dest}..."))
            listing = b"".join(os.fsencode(p) + b"\0" for p in paths)
            self.api.upload_from(sandbox, {archive: str(local_archive), path_list: listing})
        unpacked = self.api.exec(sandbox, runtime.push_extract_command(archive, dest), timeout=900)
        if unpacked.exit_code != 0:
            self.api.exec(sandbox, runtime.remove_command(path_list), timeout=60)
            raise TransferError(f"Unpacking in the sandbox failed: {_tail(unpacked.output)}")
        baselined = False
        if transfer.within(dest, record.home_dir) and self._ensure_baseline(sandbox, record):
            rebased = self.api.exec(sandbox, runtime.rebaseline_paths_command(layout, dest, path_list), timeout=600)
            baselined = rebased.exit_code == 0
            if not baselined:
                self.emit(ev.warning(f"Could not update the diff baseline: {_tail(rebased.output)}"))
        else:
            self.api.exec(sandbox, runtime.remove_command(path_list), timeout=60)
        return PushResult(record.sandbox_id, dest, stats.files, stats.bytes, baselined)

    def pull(self, remote: str | None = None, local: Path | None = None, *, force: bool = False) -> PullResult:
        """Downloads sandbox files as one archive and unpacks it locally, refusing to overwrite
        local files that differ unless `force`."""
        record = self._require_record()
        sandbox = self._connect_or_forget(record)
        layout = runtime.Layout(record.home_dir)
        source = transfer.resolve_remote(record.home_dir, remote)
        dest = (local or self.project_dir).absolute()
        if dest.exists() and not dest.is_dir():
            raise UsageError(f"{dest} is not a directory.", "Pull into a directory (default: the current one).")
        archive = f"{runtime.transfer_dir(layout)}/pull-{secrets.token_hex(6)}.tar.gz"
        self.emit(ev.progress(f"Packing {source} in the sandbox..."))
        command = runtime.pull_archive_command(
            layout, source, archive, use_baseline=transfer.within(source, record.home_dir)
        )
        packed = self.api.exec(sandbox, command, timeout=900)
        if packed.exit_code != 0:
            self.api.exec(sandbox, runtime.remove_command(archive), timeout=60)
            if packed.exit_code == runtime.MISSING_PATH_EXIT:
                raise TransferError(f"No such file or directory in the sandbox: {source}")
            raise TransferError(f"Packing {source} in the sandbox failed: {_tail(packed.output)}")
        with tempfile.TemporaryDirectory(prefix="codex-daytona-pull-") as tmp:
            local_archive = Path(tmp) / "pull.tar.gz"
            self.emit(ev.progress("Downloading..."))
            try:
                self.api.download_to(sandbox, archive, str(local_archive))
            finally:
                with contextlib.suppress(DaytonaError):
                    self.api.exec(sandbox, runtime.remove_command(archive), timeout=60)
            with transfer.open_archive(local_archive) as tar:
                plan = transfer.plan_pull(tar, dest)
                if plan.conflicts and force:
                    self.emit(ev.warning(f"Overwriting local changes: {transfer.describe(plan.conflicts)}"))
                try:
                    transfer.apply_pull(tar, plan, dest, force=force)
                except (OSError, ValueError) as exc:
                    raise TransferError(f"Unpacking into {dest} failed: {exc}") from exc
        for name, reason in plan.skipped:
            self.emit(ev.warning(f"Skipped {name}: {reason}."))
        files = [m for m in plan.write if not m.isdir()]
        return PullResult(
            record.sandbox_id,
            source,
            dest,
            written=len(files),
            unchanged=len(plan.unchanged),
            overwritten=list(plan.conflicts),
            skipped=plan.skipped,
        )

    def diff(self) -> DiffResult:
        """The agent's changes since the baseline, as a patch `git apply` accepts."""
        record = self._require_record()
        sandbox = self._connect_or_forget(record)
        layout = runtime.Layout(record.home_dir)
        patch_path = f"{runtime.transfer_dir(layout)}/diff-{secrets.token_hex(6)}.patch"
        result = self.api.exec(sandbox, runtime.diff_command(layout, patch_path), timeout=600)
        if result.exit_code == runtime.NO_BASELINE_EXIT:
            raise TransferError(
                "This sandbox has no baseline to compare with (it predates `diff`, or has no git).",
                "`codex-daytona push` records one when the sandbox has git.",
            )
        if result.exit_code != 0:
            self.api.exec(sandbox, runtime.remove_command(patch_path), timeout=60)
            raise TransferError(f"Computing the diff in the sandbox failed: {_tail(result.output)}")
        with tempfile.TemporaryDirectory(prefix="codex-daytona-diff-") as tmp:
            local_patch = Path(tmp) / "changes.patch"
            try:
                self.api.download_to(sandbox, patch_path, str(local_patch))
            finally:
                with contextlib.suppress(DaytonaError):
                    self.api.exec(sandbox, runtime.remove_command(patch_path), timeout=60)
            patch = local_patch.read_bytes()
        return DiffResult(record.sandbox_id, patch, runtime.parse_changes(result.output))


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


def _unclaim(record: SandboxRecord, run_id: str, previous: LastTurn | None) -> None:
    """Puts back the last turn a refused run claimed (unless another has claimed it since)."""
    if record.last_turn is not None and record.last_turn.run_id == run_id:
        record.last_turn = previous


def _set_command(record: SandboxRecord, run_id: str, command_id: str) -> None:
    if record.last_turn is not None and record.last_turn.run_id == run_id:
        record.last_turn.command_id = command_id


def _with_details(error: CodexDaytonaError, outcome: TurnOutcome) -> CodexDaytonaError:
    error.details = {
        "status": outcome.status,
        "run_id": outcome.run_id,
        "sandbox_id": outcome.sandbox_id,
        "thread_id": outcome.thread_id,
        "final_message": outcome.final_message,
        "usage": outcome.usage,
    }
    return error


def preview_event(
    link: PreviewLink, public: bool, check: previews.LinkCheck | None = None, *, signed: bool = False
) -> ev.Event:
    event: ev.Event = {"type": ev.PREVIEW, "port": link.port, "url": link.url, "public": public}
    if signed:
        event["signed"] = True
    if link.token and not public:
        event["token"] = link.token
        event["header"] = previews.TOKEN_HEADER
    if check is not None:
        event.update(check.as_dict())
    return event


class RunFollower:
    """Follows one agent run: decodes its events from an agent command's log, and when the
    stream drops, picks up where it was, so no event is lost or repeated.

    Daytona replays a command's whole log on every connection, so a dropped stream is
    reconnected to the same command and the bytes already taken in are skipped. When that
    command is gone or ended mid-run (its client went away, the sandbox restarted), the run
    is followed from its event file in the sandbox, by an attach command in a session of
    its own, from the byte where this follower is. It stops at the run's closing event,
    not when Daytona closes the stream (about a second after the command ends)."""

    keepalive_seconds = 240.0
    # Silence after which a stream counts as stalled; the agent's heartbeat comes 3x as often.
    idle_seconds = 60.0

    def __init__(
        self,
        api: DaytonaApi,
        sandbox: Sandbox,
        layout: runtime.Layout,
        run_id: str,
        emit: OnEvent,
        *,
        on_key_needed: Callable[[], None] | None = None,
    ) -> None:
        self.api = api
        self.sandbox = sandbox
        self.layout = layout
        self.run_id = run_id
        self.emit = emit
        self.on_key_needed = on_key_needed
        self.previous_turn: LastTurn | None = None  # the last turn before this run claimed it
        # A session made for this run alone (the usual one was busy): deleted when it is over.
        self.disposable_session: str | None = None
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
        self.completed: ev.Event | None = None
        self.ports_event: ev.Event | None = None
        self.thread_id: str | None = None
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

    def _on_stderr(self, chunk: str) -> None:
        self.stderr.append(chunk)

    def _handle(self, event: ev.Event) -> None:
        kind = event.get("type")
        if kind == ev.RUN_COMPLETED:
            self.completed = event
            return
        if kind == ev.PORTS:
            self.ports_event = event
            return
        if kind == ev.KEY_NEEDED:
            self.key_needed = self.on_key_needed is not None
            return
        if kind == ev.THREAD_STARTED:
            self.thread_id = event.get("thread_id")
            self.started = True
        self.emit(event)

    def outcome(self, record: SandboxRecord) -> TurnOutcome:
        done = self.completed or {}
        status = str(done.get("status") or "unknown")
        return TurnOutcome(
            run_id=self.run_id,
            status=status,
            thread_id=done.get("thread_id") or self.thread_id or record.thread_id,
            final_message=str(done.get("final_message") or ""),
            error=done.get("error"),
            usage=done.get("usage") or {},
            sandbox_id=record.sandbox_id,
        )

    # --- streaming --------------------------------------------------------------------

    def follow(self, timeout: float | None, *, until_started: bool = False) -> None:
        """Streams until the run completes (or, with `until_started`, until the turn is under
        way); raises TurnTimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout

        def done() -> bool:
            return self.completed is not None or self.key_needed or (until_started and self.started)

        while True:
            if self.key_needed:
                assert self.on_key_needed is not None
                self.key_needed = False
                self.on_key_needed()
            if self.completed is not None or (until_started and self.started):
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
                finished = self.api.stream_logs(
                    self.sandbox,
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
                self.command_id = None  # follow the run from its event file instead
                continue
            except DaytonaError:
                self._count_reconnect()
                self.emit({"type": ev.RETRY, "message": "The log stream dropped; reconnecting..."})
                time.sleep(min(0.1 * self.reconnects, 1.0))
                continue
            if not finished:
                raise TurnTimeoutError(f"The turn did not finish within {timeout:g} s.")
            if not done():
                self._command_ended()

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
            self.layout, self.run_id, self.offset, follow=True, heartbeat_seconds=self.idle_seconds / 3
        )
        self.api.create_session(self.sandbox, session)  # new: one request, not a 404 first
        self._temp_sessions.append(session)
        command_id = self.api.start_command(self.sandbox, session, command)
        self.session, self.command_id, self.attached = session, command_id, True
        self.received = 0
        self._partial = b""

    def _command_ended(self) -> None:
        """The followed command's log closed before the run's closing event."""
        assert self.session is not None and self.command_id is not None
        try:
            exit_code = self.api.command_exit_code(self.sandbox, self.session, self.command_id)
        except CommandGoneError:
            exit_code = None
            self.command_id = None
        if self.command_id is None:
            return
        if exit_code is None:
            self._count_reconnect()  # closed early: connect again
            return
        if self.attached:
            raise AgentSetupError(
                f"Run {self.run_id} ended without a result: the agent stopped in the sandbox.",
                "Ask again; `codex-daytona up` restarts the agent if it keeps failing.",
            )
        if self.offset == 0:
            stderr = "".join(self.stderr).strip().splitlines()
            tail = " | ".join(stderr[-3:]) or "no output"
            raise AgentSetupError(f"The agent in the sandbox exited with code {exit_code} before starting: {tail}")
        # The run's own command went away mid-run (killed, its session reset): the run goes on.
        self.command_id = None

    def close(self) -> None:
        """Deletes the sessions this follower made for attach commands (best effort)."""
        for session in self._temp_sessions:
            with contextlib.suppress(DaytonaError):
                self.api.delete_session(self.sandbox, session)
        self._temp_sessions.clear()


class RemoteShell:
    """A shell on a terminal in the sandbox: bytes in, bytes out, resize, its exit code."""

    def __init__(self, api: DaytonaApi, sandbox: Sandbox, pty_id: str, handle: Any) -> None:
        self._api = api
        self._sandbox = sandbox
        self.pty_id = pty_id
        self._handle = handle

    def send(self, data: bytes) -> None:
        try:
            self._handle.send_input(data)
        except Exception as exc:  # the SDK's connection errors: the shell is gone
            raise DaytonaError(f"The terminal connection dropped: {exc}") from exc

    def resize(self, rows: int, cols: int) -> None:
        self._api.resize_pty(self._sandbox, self.pty_id, rows, cols)

    def output(self) -> Iterator[bytes]:
        """What the shell writes, until it exits (or the connection drops)."""
        yield from self._handle

    @property
    def exit_code(self) -> int | None:
        code = self._handle.exit_code
        return None if code is None else int(code)

    @property
    def error(self) -> str | None:
        return self._handle.error  # type: ignore[no-any-return]

    def close(self) -> None:
        """Ends the shell if it still runs (a dropped connection must not leave it behind)."""
        if self.exit_code is None:
            with contextlib.suppress(CodexDaytonaError):
                self._api.kill_pty(self._sandbox, self.pty_id)
        with contextlib.suppress(Exception):
            self._handle.disconnect()


class CommandStream:
    """Runs one `exec` command in a session of its own and streams its stdout and stderr as
    EXEC_OUTPUT events, line by line, until it exits; the session is deleted afterwards.

    The agent ends each stream with a marker line (stdout's carries the exit code), so the
    stream ends with the command, not a second later when Daytona closes it."""

    def __init__(self, api: DaytonaApi, sandbox: Sandbox, emit: OnEvent) -> None:
        self.api = api
        self.sandbox = sandbox
        self.emit = emit
        self.session = f"{SESSION_ID}-exec-{secrets.token_hex(3)}"
        self.marker = f"codex-daytona-done-{secrets.token_hex(8)}"
        self.sent = {"stdout": 0, "stderr": 0}  # characters of each stream taken in
        self._partial = {"stdout": "", "stderr": ""}
        self._done: dict[str, str] = {}  # stream -> what followed its marker

    def _take(self, stream: str, text: str) -> None:
        if stream in self._done or not text:
            return
        self.sent[stream] += len(text)
        *lines, self._partial[stream] = (self._partial[stream] + text).split("\n")
        out = []
        for line in lines:
            if line == self.marker or line.startswith(self.marker + " "):
                self._done[stream] = line[len(self.marker) :].strip()
                break
            out.append(line + "\n")
        if out:
            self.emit({"type": ev.EXEC_OUTPUT, "stream": stream, "data": "".join(out)})

    def _finished(self) -> bool:
        return len(self._done) == 2

    def run(self, layout: runtime.Layout, command: str, timeout: float | None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        self.api.create_session(self.sandbox, self.session)  # new: one request, not a 404 first
        command_id = self.api.start_command(
            self.sandbox, self.session, runtime.exec_command(layout, command, self.marker)
        )
        try:
            finished = self.api.stream_logs(
                self.sandbox,
                self.session,
                command_id,
                lambda t: self._take("stdout", t),
                lambda t: self._take("stderr", t),
                timeout=timeout,
                until=self._finished,
            )
        except DaytonaError:
            finished = True  # the stream dropped: read the rest below
        if not finished:
            raise TurnTimeoutError("The command did not finish in time.")
        while not self._finished():
            exit_code = self.api.command_exit_code(self.sandbox, self.session, command_id)
            stdout, stderr = self.api.command_logs(self.sandbox, self.session, command_id)
            self._take("stdout", stdout[self.sent["stdout"] :])
            self._take("stderr", stderr[self.sent["stderr"] :])
            if exit_code is not None:
                for stream in ("stdout", "stderr"):
                    self._take(stream, "\n" if self._partial[stream] else "")
                return int(self._done.get("stdout") or exit_code)
            if deadline is not None and time.monotonic() > deadline:
                raise TurnTimeoutError("The command did not finish in time.")
            time.sleep(0.5)
        return int(self._done["stdout"])

    def close(self) -> None:
        """Deletes the session, which stops the command if it still runs."""
        with contextlib.suppress(DaytonaError):
            self.api.delete_session(self.sandbox, self.session)


def _tail(output: str, lines: int = 3) -> str:
    return " | ".join(output.strip().splitlines()[-lines:]) or "no output"


def _size(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB" if n >= 100_000 else f"{n / 1000:.1f} kB"
