"""What every use case works over.

`Context` is one project directory's view: its settings, state file, the sandbox name
commands use, and where events go. `Box` is one sandbox, started, bound to its Daytona
client, its saved record and its layout: use cases call `box.run(...)`, never
`api.exec(sandbox, ...)`. Above `daytona_api` the SDK's `Sandbox` lives only inside a Box,
and only `Context` makes one (`box`, `connect`, `look`, `create`). Neither prints; both
report through `emit`.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from codex_daytona import events as ev
from codex_daytona.errors import DaytonaError, NoSandboxError, SandboxGoneError
from codex_daytona.sandbox import runtime
from codex_daytona.sandbox.daytona_api import CommandResult, DaytonaApi, PreviewLink, SandboxInfo, SshAccess
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


class Clients:
    """The Daytona clients of one command's contexts: one per thread, shared by every context
    that thread uses (the SDK's client is not shared across threads). One per context cost
    `batch` and fan-outs a client per task, each kept alive for minutes by the SDK's event
    subscription worker (a thread per client, until its subscriptions expire after 300 s)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self, settings: Settings) -> DaytonaApi:
        api: DaytonaApi | None = getattr(self._local, "api", None)
        if api is None:
            api = self._local.api = DaytonaApi(settings)
        return api


@dataclass
class Context:
    """One project directory's sandboxes, as a command sees them."""

    settings: Settings
    store: StateStore
    name: str = DEFAULT_NAME
    project_dir: Path = field(default_factory=Path.cwd)
    emit: OnEvent = _ignore
    # The Daytona client: the one of the thread that first needs it (see Clients).
    _api: DaytonaApi | None = field(default=None, repr=False)
    _clients: Clients = field(default_factory=Clients, repr=False)

    def __post_init__(self) -> None:
        self.project_dir = self.project_dir.absolute()

    @property
    def api(self) -> DaytonaApi:
        if self._api is None:
            self._api = self._clients.get(self.settings)
        return self._api

    def named(self, name: str, emit: OnEvent = _ignore) -> Context:
        """The same directory and settings, for another of its sandboxes (its events going to
        `emit`, nowhere by default; its client the one of the thread that first uses it)."""
        return Context(self.settings, self.store, name, self.project_dir, emit, _clients=self._clients)

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
        with self.store.update() as state:
            record.touch()
            # Saved where its sandbox is now: `keep` may have renamed it while a turn ran.
            slot = next((n for n, r in state.sandboxes.items() if r.sandbox_id == record.sandbox_id), self.name)
            state.sandboxes[slot] = record

    def update_record(self, sandbox_id: str, change: Callable[[SandboxRecord], None]) -> None:
        """Changes this sandbox's saved record under the lock (wherever `keep` has moved it)."""
        with self.store.update() as state:
            for current in state.sandboxes.values():
                if current.sandbox_id == sandbox_id:
                    change(current)
                    current.touch()

    def forget(self, sandbox_id: str) -> None:
        # Saves only when there is something to forget: a state file it cannot write is no
        # error for a command that finds nothing to change.
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
                return self._bind(sandbox, record, from_handle=True)
        box = self._bind(self.api.get(record.sandbox_id), record)
        box.ensure_started()
        return box

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
            return self.look(record)
        except SandboxGoneError:
            self.forget(record.sandbox_id)
            raise

    def look(self, record: SandboxRecord | str) -> Box:
        """The sandbox in `record` (or of that id) as it is: looked up, never started by the
        Box (a stop found on the way stands), not forgotten when gone (SandboxGoneError)."""
        if isinstance(record, str):
            record = SandboxRecord(sandbox_id=record, home_dir="")
        return self._bind(self.api.get(record.sandbox_id), record, restart_when_stopped=False)

    def create(self, **params: Any) -> Box:
        """A new sandbox (`params` are `DaytonaApi.create`'s), with a record that knows only
        its id: the caller fills it in and saves it."""
        sandbox = self.api.create(**params)
        return self._bind(sandbox, SandboxRecord(sandbox_id=sandbox.id, home_dir=""))

    def reloaded(self, box: Box) -> Box:
        """The same sandbox, as found, with its record as the state file has it now."""
        return self._bind(box._sandbox, self.require_record())

    def _bind(
        self, sandbox: Sandbox, record: SandboxRecord, *, restart_when_stopped: bool = True, from_handle: bool = False
    ) -> Box:
        """The one place a Box is made: above `daytona_api`, the SDK's handle lives only in one."""
        return Box(
            self.api, sandbox, record, self.emit, restart_when_stopped=restart_when_stopped, from_handle=from_handle
        )


@dataclass
class Box:
    """One sandbox: the Daytona client, the SDK's handle, its record and its layout."""

    api: DaytonaApi
    _sandbox: Sandbox
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

    def ensure_started(self) -> None:
        current = self.info().state
        if current == "paused":  # Daytona's start resumes it: its processes go on where they were
            self.emit(ev.progress(f"Resuming sandbox {self.id}..."))
            self.api.start(self._sandbox)
        elif current != "started":
            self.emit(ev.progress(f"Starting sandbox {self.id} (it was {current})..."))
            self.api.start(self._sandbox)
            self.sessions_lost = True
            self._sessions_made.clear()

    @property
    def id(self) -> str:
        return self.record.sandbox_id

    @cached_property
    def layout(self) -> runtime.Layout:
        return runtime.Layout(self.record.home_dir)

    def info(self) -> SandboxInfo:
        return self.api.info(self._sandbox)

    def looked_up_info(self) -> SandboxInfo:
        """`info`, as Daytona has it now when the Box has not looked the sandbox up yet."""
        if self.from_handle:
            self.look_up()
        return self.info()

    def look_up(self) -> None:
        """Asks Daytona for the sandbox afresh. SandboxGoneError when it no longer has it."""
        try:
            self._sandbox = self.api.get(self.id)
        except SandboxGoneError:
            self.gone = True
            raise
        self.from_handle = False

    @property
    def handle(self) -> str | None:
        """What the state file keeps to reach this sandbox without a look-up (None unless it
        is started as far as the Box knows)."""
        return self.api.handle(self._sandbox)

    def run(self, command: str, timeout: int = 120, env: dict[str, str] | None = None) -> CommandResult:
        """Runs a command and waits for it (Daytona's process API); `env` reaches only it."""
        return self._started_again_if_stopped(lambda: self.api.exec(self._sandbox, command, timeout=timeout, env=env))

    def upload(self, files: dict[str, bytes]) -> None:
        self.api.upload(self._sandbox, files)

    def upload_from(self, files: dict[str, str | bytes]) -> None:
        self._started_again_if_stopped(lambda: self.api.upload_from(self._sandbox, files))

    def download_to(self, remote_path: str, local_path: str) -> None:
        self.api.download_to(self._sandbox, remote_path, local_path)

    def preview_link(self, port: int) -> PreviewLink:
        return self.api.preview_link(self._sandbox, port)

    def create_session(self, session: str, *, exist_ok: bool = False) -> None:
        self._started_again_if_stopped(lambda: self.api.create_session(self._sandbox, session, exist_ok=exist_ok))
        self._sessions_made.add(session)

    def delete_session(self, session: str) -> None:
        self.api.delete_session(self._sandbox, session)

    def start_command(self, session: str, command: str, *, new_session: bool = False) -> str:
        """Starts a command in a session; returns its id. `new_session`: the caller knows the
        session does not exist yet (it is then made first, no request fails); so does the Box
        once it started the sandbox from a stop."""

        def call() -> str:
            new = session not in self._sessions_made and (new_session or self.sessions_lost)
            command_id = self.api.start_command(self._sandbox, session, command, new_session=new)
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
            toolbox = getattr(self._sandbox, "toolbox_proxy_url", None)
            self.look_up()
            if self.info().state == "started":
                if not trusted or getattr(self._sandbox, "toolbox_proxy_url", None) == toolbox:
                    raise
            else:
                self.ensure_started()
            return call()

    def command_exit_code(self, session: str, command_id: str) -> int | None:
        return self.api.command_exit_code(self._sandbox, session, command_id)

    def command_logs(self, session: str, command_id: str) -> tuple[str, str]:
        return self.api.command_logs(self._sandbox, session, command_id)

    def stream_logs(self, session: str, command_id: str, *outputs: Callable[[str], None], **options: Any) -> bool:
        """Streams a command's stdout and stderr to the two `outputs`; `options` (timeout,
        until, ...) and the answer are `DaytonaApi.stream_logs`'s."""
        on_stdout, on_stderr = outputs
        return self.api.stream_logs(self._sandbox, session, command_id, on_stdout, on_stderr, **options)

    def signed_preview_link(self, port: int, ttl_seconds: int) -> PreviewLink:
        return self.api.signed_preview_link(self._sandbox, port, ttl_seconds)

    # --- the sandbox's life -------------------------------------------------------------------

    def exists(self) -> None:
        """Raises SandboxGoneError when Daytona no longer has the sandbox (one look-up; the
        Box keeps the handle it has)."""
        self.api.get(self.id)

    def start(self) -> None:
        self.api.start(self._sandbox)

    def stop(self) -> None:
        self.api.stop(self._sandbox)

    def pause(self) -> None:
        self.api.pause(self._sandbox)

    def delete(self) -> None:
        self.api.delete(self._sandbox)

    def fork(self) -> str:
        """Forks the sandbox (Daytona's copy-on-write clone); returns the fork's id."""
        return str(self.api.fork(self._sandbox).id)

    def snapshot(self, name: str) -> None:
        """Saves the sandbox's filesystem as snapshot `name`."""
        self.api.snapshot_sandbox(self._sandbox, name)

    def set_labels(self, labels: dict[str, str]) -> None:
        self.api.set_labels(self._sandbox, labels)

    def set_auto_stop(self, minutes: int) -> None:
        self.api.set_auto_stop(self._sandbox, minutes)

    def home_dir(self) -> str:
        return self.api.home_dir(self._sandbox)

    @property
    def sandbox_class(self) -> object:
        """Daytona's class of the sandbox (`container`, `linux-vm`, ...), None when it does not say."""
        return getattr(self._sandbox, "sandbox_class", None)

    # --- terminals ----------------------------------------------------------------------------

    def ssh_access(self, minutes: int) -> SshAccess:
        return self.api.ssh_access(self._sandbox, minutes)

    def open_pty(self, pty_id: str, cwd: str | None, rows: int, cols: int) -> Any:
        return self.api.open_pty(self._sandbox, pty_id, cwd, rows, cols)

    def resize_pty(self, pty_id: str, rows: int, cols: int) -> None:
        self.api.resize_pty(self._sandbox, pty_id, rows, cols)

    def kill_pty(self, pty_id: str) -> None:
        self.api.kill_pty(self._sandbox, pty_id)
