"""What every use case works over.

`Context` is one project directory's view: its settings, state file, the sandbox name
commands use, and where events go. `Box` is one sandbox, started, bound to its Daytona
client, its saved record and its layout: use cases call `box.run(...)`, not
`api.exec(sandbox, ...)`. Neither prints; both report through `emit`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from codex_daytona import events as ev
from codex_daytona import runtime
from codex_daytona.daytona_api import CommandResult, DaytonaApi, PreviewLink, SandboxInfo
from codex_daytona.errors import DaytonaError, NoSandboxError, SandboxGoneError
from codex_daytona.settings import Settings
from codex_daytona.state import DEFAULT_NAME, SandboxRecord, StateStore

if TYPE_CHECKING:
    from daytona import Sandbox

OnEvent = Callable[[ev.Event], None]
T = TypeVar("T")
TOOL_LABEL = "codex-daytona"
SESSION_ID = "codex-daytona"


def project_labels(project_dir: Path, name: str) -> dict[str, str]:
    """Labels that find this tool's sandboxes, and this directory's, on Daytona."""
    digest = hashlib.sha256(str(project_dir).encode()).hexdigest()[:16]
    return {
        "app": TOOL_LABEL,
        f"{TOOL_LABEL}.project": digest,
        f"{TOOL_LABEL}.dir": project_dir.name[:63] or "root",
        f"{TOOL_LABEL}.name": name,
    }


def tail(output: str, lines: int = 3) -> str:
    """The last lines of a command's output, on one line (for an error message)."""
    return " | ".join(output.strip().splitlines()[-lines:]) or "no output"


def _ignore(_event: ev.Event) -> None:
    pass


@dataclass
class Context:
    """One project directory's sandboxes, as a command sees them."""

    settings: Settings
    store: StateStore
    name: str = DEFAULT_NAME
    project_dir: Path = field(default_factory=Path.cwd)
    emit: OnEvent = _ignore
    # The Daytona client, made on first use (the SDK's client is not shared across threads).
    _api: DaytonaApi | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.project_dir = self.project_dir.absolute()

    @property
    def api(self) -> DaytonaApi:
        if self._api is None:
            self._api = DaytonaApi(self.settings)
        return self._api

    def named(self, name: str, emit: OnEvent = _ignore) -> Context:
        """The same directory and settings, for another of its sandboxes (with its own client,
        and its events going to `emit`, nowhere by default)."""
        return Context(self.settings, self.store, name, self.project_dir, emit)

    # --- the state file ---------------------------------------------------------------------

    def record(self) -> SandboxRecord | None:
        return self.store.get(self.name)

    def require_record(self) -> SandboxRecord:
        record = self.record()
        if record is None:
            if self.name != DEFAULT_NAME:
                raise NoSandboxError(
                    f"No sandbox named {self.name} here yet.", f"`codex-daytona up --name {self.name}` creates it."
                )
            raise NoSandboxError("No sandbox here yet.")
        return record

    def save(self, record: SandboxRecord) -> None:
        with self.store.lock():
            state = self.store.load()
            record.touch()
            # Saved where its sandbox is now: `keep` may have renamed it while a turn ran.
            slot = next((n for n, r in state.sandboxes.items() if r.sandbox_id == record.sandbox_id), self.name)
            state.sandboxes[slot] = record
            self.store.save(state)

    def update_record(self, sandbox_id: str, change: Callable[[SandboxRecord], None]) -> None:
        """Changes this sandbox's saved record under the lock (wherever `keep` has moved it)."""
        with self.store.lock():
            state = self.store.load()
            for current in state.sandboxes.values():
                if current.sandbox_id == sandbox_id:
                    change(current)
                    current.touch()
            self.store.save(state)

    def forget(self, sandbox_id: str) -> None:
        with self.store.lock():
            state = self.store.load()
            current = state.sandboxes.get(self.name)
            if current is not None and current.sandbox_id == sandbox_id:
                del state.sandboxes[self.name]
                self.store.save(state)

    # --- the sandbox --------------------------------------------------------------------------

    def connect(self, record: SandboxRecord, *, trust_handle: bool = False) -> Box:
        """The sandbox in `record`, started (or resumed). SandboxGoneError when Daytona no
        longer has it.

        With `trust_handle`, a sandbox the state file has a handle for, last used within its
        auto-stop, is taken to be started as it was: no look-up, no request. The Box looks
        it up (and starts it, or finds it gone) only once a call of its answers otherwise: a
        stopped sandbox's toolbox answers 400 "no IP address", a deleted one's 404."""
        if trust_handle and self._handle_fresh(record):
            assert record.handle is not None
            sandbox = self.api.from_handle(record.handle)
            if sandbox is not None:
                return Box(self.api, sandbox, record, self.emit, from_handle=True)
        return Box.connect(self.api, record, self.emit)

    def _handle_fresh(self, record: SandboxRecord) -> bool:
        """Whether the sandbox may still be running as the record's handle found it: it was
        used (the record saved) more recently than Daytona's auto-stop would have stopped it
        since. Only a guess that spares a failed request: the Box checks what it is told."""
        if not record.handle or record.runtime != runtime.runtime_fingerprint():
            return False
        minutes = self.settings.codex_daytona_auto_stop_minutes
        if record.auto_stop_raised:
            minutes = max(minutes, self.settings.codex_daytona_detach_minutes)
        if minutes <= 0:  # never auto-stopped
            return True
        try:
            used = datetime.fromisoformat(record.updated_at)
        except ValueError:
            return False
        return datetime.now(timezone.utc) - used < timedelta(minutes=minutes)

    def box(self, record: SandboxRecord | None = None, *, start: bool = True) -> Box:
        """This name's sandbox (its saved `record`), started, or with `start=False` as it is
        (and never started by the Box); forgotten here when Daytona no longer has it."""
        record = record or self.require_record()
        try:
            if start:
                return self.connect(record)
            return Box(self.api, self.api.get(record.sandbox_id), record, self.emit, restart_when_stopped=False)
        except SandboxGoneError:
            self.forget(record.sandbox_id)
            raise


@dataclass
class Box:
    """One sandbox: the Daytona client, the SDK's handle, its record and its layout."""

    api: DaytonaApi
    sandbox: Sandbox
    record: SandboxRecord
    emit: OnEvent = _ignore
    # False for a look that must start nothing (`status`): a stop found on the way stands.
    restart_when_stopped: bool = True
    # True once this Box started the sandbox from a stop: Daytona's sessions did not survive
    # it, so a session command makes its session first instead of failing once (see
    # `start_command`); the sessions made since are in `_sessions_made`.
    sessions_lost: bool = False
    # True while `sandbox` is built from the state file's handle, not looked up: its state is
    # what it was then (see `Context.connect`); the first call that fails looks it up.
    from_handle: bool = False
    gone: bool = False  # a look-up found the sandbox gone from Daytona
    _sessions_made: set[str] = field(default_factory=set, repr=False)

    @classmethod
    def connect(cls, api: DaytonaApi, record: SandboxRecord, emit: OnEvent) -> Box:
        box = cls(api, api.get(record.sandbox_id), record, emit)
        box.ensure_started()
        return box

    def ensure_started(self) -> None:
        current = self.info().state
        if current == "paused":  # Daytona's start resumes it: its processes go on where they were
            self.emit(ev.progress(f"Resuming sandbox {self.id}..."))
            self.api.start(self.sandbox)
        elif current != "started":
            self.emit(ev.progress(f"Starting sandbox {self.id} (it was {current})..."))
            self.api.start(self.sandbox)
            self.sessions_lost = True
            self._sessions_made.clear()

    @property
    def id(self) -> str:
        return self.record.sandbox_id

    @cached_property
    def layout(self) -> runtime.Layout:
        return runtime.Layout(self.record.home_dir)

    def info(self) -> SandboxInfo:
        return self.api.info(self.sandbox)

    def looked_up_info(self) -> SandboxInfo:
        """`info`, as Daytona has it now when the Box has not looked the sandbox up yet."""
        if self.from_handle:
            self.look_up()
        return self.info()

    def look_up(self) -> None:
        """Asks Daytona for the sandbox afresh. SandboxGoneError when it no longer has it."""
        try:
            self.sandbox = self.api.get(self.id)
        except SandboxGoneError:
            self.gone = True
            raise
        self.from_handle = False

    @property
    def handle(self) -> str | None:
        """What the state file keeps to reach this sandbox without a look-up (None unless it
        is started as far as the Box knows)."""
        return self.api.handle(self.sandbox)

    def run(self, command: str, timeout: int = 120, env: dict[str, str] | None = None) -> CommandResult:
        """Runs a command and waits for it (Daytona's process API); `env` reaches only it."""
        return self._started_again_if_stopped(lambda: self.api.exec(self.sandbox, command, timeout=timeout, env=env))

    def upload(self, files: dict[str, bytes]) -> None:
        self.api.upload(self.sandbox, files)

    def upload_from(self, files: dict[str, str | bytes]) -> None:
        self._started_again_if_stopped(lambda: self.api.upload_from(self.sandbox, files))

    def download_to(self, remote_path: str, local_path: str) -> None:
        self.api.download_to(self.sandbox, remote_path, local_path)

    def preview_link(self, port: int) -> PreviewLink:
        return self.api.preview_link(self.sandbox, port)

    def create_session(self, session: str, *, exist_ok: bool = False) -> None:
        self._started_again_if_stopped(lambda: self.api.create_session(self.sandbox, session, exist_ok=exist_ok))
        self._sessions_made.add(session)

    def delete_session(self, session: str) -> None:
        self.api.delete_session(self.sandbox, session)

    def start_command(self, session: str, command: str, *, new_session: bool = False) -> str:
        """Starts a command in a session; returns its id. `new_session`: the caller knows the
        session does not exist yet (it is then made first, no request fails); so does the Box
        once it started the sandbox from a stop."""

        def call() -> str:
            new = session not in self._sessions_made and (new_session or self.sessions_lost)
            command_id = self.api.start_command(self.sandbox, session, command, new_session=new)
            self._sessions_made.add(session)
            return command_id

        return self._started_again_if_stopped(call)

    def _started_again_if_stopped(self, call: Callable[[], T]) -> T:
        """Daytona may have stopped the sandbox (auto-stop) since we found it started: then it
        is started again and `call` made once more (`start_command` makes its session again
        if the stop took it; the commands `run` is given may run again). Any other failure
        stands. A Box built from the state file's handle found nothing yet: any failure
        looks the sandbox up (SandboxGoneError when Daytona no longer has it), and a started
        sandbox whose toolbox moved is called again at its new address."""
        try:
            return call()
        except DaytonaError as exc:
            trusted = self.from_handle
            if (isinstance(exc, SandboxGoneError) and not trusted) or not self.restart_when_stopped:
                raise
            toolbox = getattr(self.sandbox, "toolbox_proxy_url", None)
            self.look_up()
            if self.info().state == "started":
                if not trusted or getattr(self.sandbox, "toolbox_proxy_url", None) == toolbox:
                    raise
            else:
                self.ensure_started()
            return call()

    def command_exit_code(self, session: str, command_id: str) -> int | None:
        return self.api.command_exit_code(self.sandbox, session, command_id)
