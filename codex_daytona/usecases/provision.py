"""What goes into a sandbox before the agent can work: the agent runtime (installed, or
baked into a snapshot), the agent and Codex's config, the running agent, the diff baseline.

`setup` does it for one sandbox; `base_snapshot` says what a new sandbox starts from;
`snapshot` builds the prebuilt-runtime snapshot.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from dataclasses import dataclass

from codex_daytona import events as ev
from codex_daytona.errors import AgentSetupError, DaytonaError
from codex_daytona.sandbox import home_commands, runtime
from codex_daytona.state import State
from codex_daytona.usecases.context import SESSION_ID, TOOL_LABEL, Box, Context, tail

# Snapshot states (daytona SnapshotState) worth waiting for, and the ones that will not recover.
SNAPSHOT_PENDING = frozenset({"pending", "building", "pulling", "snapshotting"})
SNAPSHOT_FAILED = frozenset({"error", "build_failed"})
SNAPSHOT_BUILDER_MINUTES = 60


@dataclass(frozen=True)
class SnapshotResult:
    name: str
    created: bool
    state: str

    @property
    def human(self) -> str:
        return f"{'Built' if self.created else 'Snapshot exists:'} {self.name} ({self.state})"

    @property
    def quiet(self) -> str:
        return self.name

    def to_json(self) -> dict[str, object]:
        return {"snapshot": self.name, "created": self.created, "state": self.state}


def setup(
    ctx: Context, box: Box, state: State | None = None, *, baseline: bool = False, runtime_baked_in: bool = False
) -> None:
    """Installs the agent runtime when missing (never when `runtime_baked_in`), uploads the
    agent and Codex's config, starts the agent, and with `baseline` takes the diff baseline:
    one probe, one upload and one command however much there is to do (plus the install
    itself when it is needed).

    Saves the record into `state` (loaded under the caller's lock), or, without one, under
    the lock taken here."""
    record, layout = box.record, box.layout
    probe = box.run(home_commands.setup_probe_command(layout), timeout=60)
    marker, python, baseline_status, dotfiles = home_commands.parse_setup_probe(probe.output)
    install = None
    if not runtime_baked_in and marker != runtime.RUNTIME_MARKER:
        # The install runs in the sandbox while the rest of the setup goes on.
        install = _start_install(box, python)
    try:
        _prepare_agent(ctx, box, baseline, baseline_status, dotfiles)
    except BaseException:
        if install is not None:
            with contextlib.suppress(DaytonaError):
                box.delete_session(install.session)
        raise
    if install is not None:
        _await_setup_command(box, install)
    take_baseline = baseline and baseline_status == "ready"
    ctx.emit(ev.progress("Starting the agent..."))
    # In key mode the daemon gets the key now (in this command's environment only), so the
    # first turn need not ask for it; and it starts Codex's app-server and the thread the
    # first turn will use before this command returns, so that turn does not wait for them.
    key = ctx.settings.openai_key_for_turn() if ctx.settings.sandbox_openai_api_key else None
    prepare = runtime.prepare_request(ctx.settings, layout, thread_id=record.thread_id)
    started = box.run(
        home_commands.finish_setup_command(layout, take_baseline, with_key=key is not None, prepare=prepare),
        timeout=600,
        env={runtime.KEY_ENV: key} if key else None,
    )
    baseline_error = home_commands.parse_baseline_failure(started.output)
    if baseline_error is not None:
        ctx.emit(ev.warning(f"Could not record the diff baseline: {baseline_error}"))
    login_shell = home_commands.parse_login_shell_unchanged(started.output)
    if login_shell is not None:
        ctx.emit(
            ev.warning(
                f"The sandbox user's login shell is {login_shell} and could not be made bash: Codex runs "
                "commands with it, and a server a command starts in the background may not outlive it."
            )
        )
    if started.exit_code != 0:
        raise AgentSetupError(f"The agent could not start in the sandbox: {started.output.strip()[-300:]}")
    # The session turns run in, made now so the first turn's command is its first request.
    box.create_session(SESSION_ID, exist_ok=True)
    record.session_id = SESSION_ID
    record.runtime = runtime.runtime_fingerprint()
    record.handle = box.handle  # the first ask reaches the sandbox without a look-up
    if state is None:
        ctx.save(record)
        return
    record.touch()
    state.sandboxes[ctx.name] = record
    ctx.store.save(state)


def _prepare_agent(ctx: Context, box: Box, baseline: bool, baseline_status: str, dotfiles: list[str]) -> None:
    """Learns the preview URL pattern and uploads the agent and Codex's config (and the
    baseline's exclude file): what setup does besides the install and starting the agent."""
    record, layout = box.record, box.layout
    if record.preview_pattern is None:
        try:
            probe_link = box.preview_link(runtime.PATTERN_PROBE_PORT)
            record.preview_pattern = probe_link.url.replace(str(runtime.PATTERN_PROBE_PORT), "{PORT}")
        except DaytonaError as exc:
            # Only the agent's instructions lose the URL pattern; previews still work.
            ctx.emit(ev.warning(f"Could not learn the preview URL pattern: {exc.message}"))
    files = {
        **runtime.agent_upload(layout),
        layout.codex_config: runtime.codex_config(ctx.settings, layout, record.preview_pattern),
    }
    if baseline and baseline_status == "ready":
        files[home_commands.baseline_exclude(layout)] = home_commands.baseline_exclude_file(dotfiles)
    elif baseline and baseline_status == "nogit":
        ctx.emit(ev.warning("The sandbox has no git, so `codex-daytona diff` will not work in it."))
    box.upload(files)


# --- installing the runtime ---------------------------------------------------------------


@dataclass(frozen=True)
class _SetupCommand:
    """A setup command running in a session of its own."""

    session: str
    command_id: str


def _start_install(box: Box, python: tuple[int, int] | None) -> _SetupCommand:
    """Starts installing the agent runtime in a sandbox whose probe found none (python: its
    Python); `_await_setup_command` waits for it."""
    if python is None or python < runtime.MIN_PYTHON:
        found = "no python3" if python is None else f"Python {python[0]}.{python[1]}"
        raise AgentSetupError(
            f"The sandbox has {found}; the Codex SDK needs Python 3.10 or newer.",
            "Use a sandbox image with Python >= 3.10.",
        )
    box.emit(ev.progress(f"Installing the Codex agent runtime (openai-codex {runtime.CODEX_SDK_VERSION})..."))
    # A long command runs as a session command, so no HTTP request waits minutes. A new
    # session each time: creating it first costs one request, where trying the command in a
    # session that a fresh sandbox does not have yet costs two.
    session = f"{SESSION_ID}-setup-{secrets.token_hex(3)}"
    box.create_session(session)
    try:
        return _SetupCommand(session, box.start_command(session, runtime.install_command(box.layout)))
    except BaseException:
        with contextlib.suppress(DaytonaError):
            box.delete_session(session)
        raise


def _await_setup_command(box: Box, setup: _SetupCommand) -> None:
    """Waits for a setup command to end, deletes its session; raises if it failed."""
    session, command_id = setup.session, setup.command_id
    output: list[str] = []
    try:
        with contextlib.suppress(DaytonaError):
            box.stream_logs(session, command_id, output.append, output.append, timeout=900)
        exit_code = box.command_exit_code(session, command_id)
        deadline = time.monotonic() + 900
        while exit_code is None and time.monotonic() < deadline:
            time.sleep(1)
            exit_code = box.command_exit_code(session, command_id)
    finally:
        with contextlib.suppress(DaytonaError):
            box.delete_session(session)  # its shell would idle on otherwise
    if exit_code != 0:
        raise AgentSetupError(f"Installing the agent runtime failed (exit {exit_code}): {tail(''.join(output), 5)}")


# --- snapshots ------------------------------------------------------------------------------


def base_snapshot(ctx: Context) -> str | None:
    """What a new sandbox is created from: CODEX_DAYTONA_SNAPSHOT when it is set, else the
    prebuilt runtime snapshot (`codex-daytona snapshot`) when it is active, else Daytona's
    default image (and setup installs the runtime). One request to Daytona at most. A
    sandbox made from `runtime.snapshot_name()` has the runtime: its name vouches for it."""
    if ctx.settings.codex_daytona_snapshot:
        return ctx.settings.codex_daytona_snapshot
    name = runtime.snapshot_name()
    try:
        state = ctx.api.snapshot_state(name)
    except DaytonaError as exc:
        # A key that may not read snapshots must not stop `up`: it only costs the install.
        ctx.emit(ev.warning(f"Could not look up snapshot {name} ({exc.message}); installing the runtime."))
        return None
    if state == "active":
        ctx.emit(ev.progress(f"Using snapshot {name}"))
        return name
    if state is not None:
        ctx.emit(ev.progress(f"Snapshot {name} is {state}, not usable yet; installing the runtime instead."))
    return None


def snapshot(ctx: Context) -> SnapshotResult:
    """Builds the Daytona snapshot with the agent runtime baked in, named by a hash of what
    is in it (runtime.snapshot_name). Does nothing but report when it exists already."""
    name = runtime.snapshot_name()
    state = ctx.api.snapshot_state(name)
    if state == "inactive":
        ctx.emit(ev.progress(f"Activating snapshot {name} (Daytona deactivates unused snapshots)..."))
        ctx.api.activate_snapshot(name)
        state = wait_for_snapshot(ctx, name)
    elif state in SNAPSHOT_PENDING:
        state = wait_for_snapshot(ctx, name)
    elif state in SNAPSHOT_FAILED:
        raise DaytonaError(
            f"Snapshot {name} exists but its build failed (state {state}).",
            "Delete it (Daytona dashboard, Snapshots), then run `codex-daytona snapshot` again.",
        )
    if state is not None:
        return SnapshotResult(name, created=False, state=state)
    _build_snapshot(ctx, name)
    return SnapshotResult(name, created=True, state=wait_for_snapshot(ctx, name))


def _build_snapshot(ctx: Context, name: str) -> None:
    """Installs the runtime in a temporary sandbox of Daytona's default image, exactly as `up`
    would, captures its filesystem as `name`, and deletes the sandbox."""
    ctx.emit(ev.progress(f"Building snapshot {name}: creating a temporary sandbox..."))
    box = ctx.create(
        labels={"app": TOOL_LABEL, f"{TOOL_LABEL}.role": "snapshot-builder"},
        env={},
        # If this process dies mid-build, Daytona stops and then deletes the sandbox on its own.
        auto_stop_minutes=SNAPSHOT_BUILDER_MINUTES,
        auto_delete_minutes=1,
    )
    try:
        box.record.home_dir = box.home_dir()
        probe = box.run(home_commands.setup_probe_command(box.layout), timeout=60)
        marker, python, _, _ = home_commands.parse_setup_probe(probe.output)
        if marker != runtime.RUNTIME_MARKER:
            _await_setup_command(box, _start_install(box, python))
        # `up` uploads the agent anyway; it is in the snapshot too so the name tells the truth.
        box.upload(runtime.agent_upload(box.layout))
        ctx.emit(ev.progress(f"Saving snapshot {name} (this can take a few minutes)..."))
        box.snapshot(name)
    finally:
        ctx.emit(ev.progress(f"Deleting the temporary sandbox {box.id}..."))
        try:
            box.delete()
        except DaytonaError as exc:
            ctx.emit(ev.warning(f"Could not delete the temporary sandbox {box.id}: {exc.message}"))


def wait_for_snapshot(ctx: Context, name: str, timeout: float = 900) -> str:
    """Waits for Daytona to finish building or activating the snapshot; returns its state."""
    deadline = time.monotonic() + timeout
    while True:
        state = ctx.api.snapshot_state(name)
        if state is None or state in SNAPSHOT_FAILED:
            raise DaytonaError(f"Daytona could not build snapshot {name} (state {state or 'gone'}).")
        if state not in SNAPSHOT_PENDING or time.monotonic() > deadline:
            return state
        time.sleep(2)
