"""A sandbox's life: up (create, or start the one there is), forks for a fan-out, status,
pause, stop and down.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from codex_daytona import events as ev
from codex_daytona.errors import DaytonaError, SandboxGoneError, StateError, TransferError, UsageError
from codex_daytona.sandbox import home_commands, runtime
from codex_daytona.sandbox.daytona_api import HasForksError, RefusedError, SandboxInfo
from codex_daytona.state import LastTurn, SandboxRecord, State
from codex_daytona.usecases import links, provision
from codex_daytona.usecases.context import TOOL_LABEL, Box, Context, project_labels, tail


@dataclass(frozen=True)
class UpResult:
    sandbox_id: str
    created: bool
    home_dir: str

    @property
    def human(self) -> str:
        return f"{'Created' if self.created else 'Using'} sandbox {self.sandbox_id}"

    @property
    def quiet(self) -> str:
        return self.sandbox_id

    def to_json(self) -> dict[str, object]:
        return {"sandbox_id": self.sandbox_id, "created": self.created, "home_dir": self.home_dir}


def up(ctx: Context, *, repo: str | None = None, branch: str | None = None) -> UpResult:
    """Reuses the sandbox in state (starting it if stopped), or creates and sets up one.

    With `repo`, creates a new sandbox whose home is a clone of that repository."""
    if repo is not None:
        return _up_from_repo(ctx, repo, branch)
    ctx.store.check_writable()  # before anything is made on Daytona: it must be recorded
    with ctx.store.lock():
        state = ctx.store.load()
        record = state.sandboxes.get(ctx.name)
        if record is not None:
            try:
                box = ctx.connect(record)
            except SandboxGoneError:
                del state.sandboxes[ctx.name]
                ctx.store.save(state)
                ctx.emit(
                    ev.warning(
                        f"Sandbox {record.sandbox_id} was deleted outside codex-daytona; "
                        "creating a new one (the old conversation is gone)."
                    )
                )
            else:
                if record.runtime != runtime.runtime_fingerprint():
                    provision.setup(ctx, box, state)
                elif record.handle != box.handle:  # the next ask reaches it without a look-up
                    record.handle = box.handle
                    record.touch()
                    ctx.store.save(state)
                return UpResult(record.sandbox_id, created=False, home_dir=record.home_dir)
        snapshot = provision.base_snapshot(ctx)
        box = _new_sandbox(ctx, snapshot, state=state)
        provision.setup(ctx, box, state, baseline=True, runtime_baked_in=snapshot == runtime.snapshot_name())
        return UpResult(box.id, created=True, home_dir=box.record.home_dir)


def create(
    ctx: Context, *, snapshot: str | None = None, runtime_baked_in: bool = False, thread_id: str | None = None
) -> UpResult:
    """Creates this name's sandbox, from `snapshot` (of another sandbox, which has the
    runtime when `runtime_baked_in`, and continues `thread_id`) or, without one, as `up`
    would. Unlike `up`, holds the state lock only to save, so that several names can be
    created at once (`ask --fanout`)."""
    if ctx.record() is not None:
        raise UsageError(f"There is already a sandbox named {ctx.name}.")
    ctx.store.check_writable()
    forked = snapshot is not None
    if snapshot is None:
        snapshot = provision.base_snapshot(ctx)
        runtime_baked_in = snapshot == runtime.snapshot_name()
    box = _new_sandbox(ctx, snapshot, created_by="fanout", thread_id=thread_id)
    # A sandbox from another's snapshot has that sandbox's diff baseline.
    provision.setup(ctx, box, baseline=not forked, runtime_baked_in=runtime_baked_in)
    return UpResult(box.id, created=True, home_dir=box.record.home_dir)


def _new_sandbox(
    ctx: Context,
    snapshot: str | None,
    *,
    state: State | None = None,
    created_by: str | None = None,
    thread_id: str | None = None,
) -> Box:
    """Creates a sandbox for this name and saves its record: into `state` (loaded under the
    caller's lock), or under the lock taken here."""
    scope = uuid.uuid4().hex
    ctx.emit(ev.progress("Creating sandbox..."))

    def save() -> None:
        if state is None:
            ctx.save(record)
        else:
            state.sandboxes[ctx.name] = record
            ctx.store.save(state)

    # Ctrl-C or SIGTERM while Daytona makes it waits until it is recorded, so the sandbox is
    # never orphaned; the command then stops (exit 130, or the signal's own end).
    with signals_deferred():
        box = ctx.create(
            labels=project_labels(ctx.project_dir, ctx.name),
            env={"CODEX_DAYTONA_SCOPE": scope},
            auto_stop_minutes=ctx.settings.codex_daytona_auto_stop_minutes,
            auto_delete_minutes=ctx.settings.codex_daytona_auto_delete_minutes,
            snapshot=snapshot,
            secrets=_secrets(ctx),
        )
        record = box.record
        record.scope, record.thread_id = scope, thread_id
        if created_by is not None:
            record.created_by = created_by
        save()  # before anything else can fail, so the sandbox is never orphaned
    record.home_dir = box.home_dir()
    save()
    ctx.emit(ev.progress(f"Created sandbox {box.id}"))
    return box


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Holds SIGINT and SIGTERM back until the block is over, then delivers them (in the main
    thread; elsewhere Python delivers no signal anyway). For a block that makes something on
    Daytona and records it: stopped between the two, it would leave a sandbox nobody knows."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def hold(signum: int, _frame: object) -> None:
        pending.append(signum)

    held = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, hold) for sig in held}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in dict.fromkeys(pending):
            signal.raise_signal(signum)


def _secrets(ctx: Context) -> dict[str, str] | None:
    """Daytona Secret mode: the key's variable holds a placeholder Daytona replaces in transit."""
    if ctx.settings.sandbox_openai_secret:
        return {runtime.KEY_ENV: ctx.settings.sandbox_openai_secret}
    return None


def _up_from_repo(ctx: Context, repo: str, branch: str | None) -> UpResult:
    """A new sandbox whose home is a clone of `repo`; the clone is the diff baseline."""
    record = ctx.record()
    if record is not None:
        raise UsageError(
            f"This directory already has sandbox {record.sandbox_id}; --repo only applies to a new sandbox.",
            "Run `codex-daytona down` first, or `codex-daytona push` your code into the existing one.",
        )
    result = up(ctx)
    try:
        clone_into(ctx, repo, branch)
    except TransferError as exc:
        # A fresh sandbox with a failed clone is of no use: delete it so `up --repo` can be retried.
        with contextlib.suppress(DaytonaError):
            ctx.connect(ctx.require_record()).delete()
        ctx.forget(result.sandbox_id)
        raise TransferError(exc.message, exc.hint + "; the new sandbox was deleted.") from None
    return result


def clone_into(ctx: Context, repo: str, branch: str | None) -> None:
    """Clones `repo` into this name's (new) sandbox as its home, which becomes the diff baseline."""
    box = ctx.connect(ctx.require_record())
    ctx.emit(ev.progress(f"Cloning {repo}{f' (branch {branch})' if branch else ''}..."))
    cloned = box.run(home_commands.clone_command(box.layout, repo, branch), timeout=900)
    if cloned.exit_code != 0:
        raise TransferError(
            f"Could not clone {repo}: {tail(cloned.output)}",
            "Check the URL and the branch (the sandbox must reach the repository)",
        )
    rebased = box.run(home_commands.rebaseline_all_command(box.layout), timeout=600)
    if rebased.exit_code != 0:
        ctx.emit(ev.warning(f"Could not record the clone as the diff baseline: {tail(rebased.output)}"))


def mark_created_by(ctx: Context, command: str) -> None:
    record = ctx.require_record()
    record.created_by = command
    ctx.save(record)


# --- forks, for a fan-out -------------------------------------------------------------------


def fork_from(ctx: Context, base: SandboxRecord) -> str:
    """Creates this name's sandbox as a fork of `base`'s sandbox: its files, the agent
    runtime and Codex's threads, continuing `base`'s thread. Saves the record at once;
    `finish_fork` then starts the agent. RefusedError when Daytona cannot fork it
    (`ask --fanout` then saves a snapshot instead)."""
    if ctx.record() is not None:
        raise UsageError(f"There is already a sandbox named {ctx.name}.")
    source = ctx.look(base)
    if source.info().state != "started":  # Daytona forks only a started sandbox
        ctx.emit(ev.progress(f"Starting sandbox {base.sandbox_id} to fork it..."))
        source.start()
    ctx.emit(ev.progress(f"Forking sandbox {base.sandbox_id}..."))
    with signals_deferred():
        fork_id = source.fork()
        # Saved before anything else can fail, so the fork is never orphaned. A fork has its
        # source's environment, and so its scope.
        record = SandboxRecord(
            sandbox_id=fork_id, home_dir="", scope=base.scope, created_by="fanout", thread_id=base.thread_id
        )
        ctx.save(record)
    return fork_id


def finish_fork(ctx: Context, base: SandboxRecord) -> None:
    """Labels a fork of `base`'s sandbox as this name's (it has its source's labels), and
    starts its agent: processes are not copied by a fork."""
    record = ctx.require_record()
    box = ctx.connect(record)
    box.set_labels(project_labels(ctx.project_dir, ctx.name))
    record.home_dir = box.home_dir()
    ctx.save(record)
    baked_in = base.runtime == runtime.runtime_fingerprint()
    provision.setup(ctx, box, baseline=False, runtime_baked_in=baked_in)  # a fork has its source's baseline


def fork_snapshot(ctx: Context, name: str) -> SandboxRecord:
    """Saves this name's sandbox's filesystem (its files, the agent runtime, Codex's
    threads) as snapshot `name`, for `ask --fanout` to create sandboxes from. Returns the
    record it was taken from."""
    box = ctx.box()
    if box.record.last_turn is not None and box.record.last_turn.status == "running":
        ctx.emit(ev.warning(f"A turn may be running in {ctx.name}; its files are copied as they are now."))
    ctx.emit(ev.progress(f"Saving sandbox {ctx.name} as snapshot {name} to start the fan-out from..."))
    box.snapshot(name)
    state = provision.wait_for_snapshot(ctx, name)
    if state != "active":
        raise DaytonaError(f"Snapshot {name} is {state}, not active.")
    return box.record


# --- status ------------------------------------------------------------------------------------


@dataclass
class StatusReport:
    name: str
    state: str  # "none" (no sandbox here), "deleted", or Daytona's state: started, stopped, ...
    sandbox_id: str | None = None
    thread_id: str | None = None
    home_dir: str | None = None
    last_turn: LastTurn | None = None
    # Each listening port's link, checked, with a signed URL beside it on a private sandbox.
    # The human view shows them as `ask` does, one line per link (the output layer draws them).
    previews: list[links.Preview] = field(default_factory=list)

    @property
    def human(self) -> str:
        if self.state == "none":
            return 'No sandbox here. `codex-daytona up` or `codex-daytona ask "..."` creates one.'
        lines = [f"Sandbox    {self.sandbox_id} ({self.state})"]
        if self.state == "deleted":
            lines.append("           deleted outside codex-daytona; `codex-daytona up` creates a new one")
        if self.state == "paused":
            lines.append("           paused: the next command that needs it resumes it, servers and agent included")
        lines.append(f"Thread     {self.thread_id or '-'}")
        turn = self.last_turn
        if turn is not None:
            tokens = ""
            if turn.usage is not None:
                tokens = f", {turn.usage.input_tokens:,} tokens in, {turn.usage.output_tokens:,} out"
            error = f": {turn.error}" if turn.error else ""
            lines.append(
                f"Last turn  {turn.ended_at or turn.started_at}, {turn.status}{error}{tokens} (run {turn.run_id})"
            )
        if self.state == "started" and not self.previews:
            lines.append("Ports      nothing listening")
        return "\n".join(lines)

    @property
    def quiet(self) -> str:
        return self.state

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "state": self.state,
            "sandbox_id": self.sandbox_id,
            "thread_id": self.thread_id,
            "home_dir": self.home_dir,
            "last_turn": self.last_turn.model_dump(mode="json") if self.last_turn else None,
            "previews": [p.to_json() for p in self.previews],
        }


def status(ctx: Context) -> StatusReport:
    """What this directory's sandbox is doing. Read-only: forgets nothing, starts nothing."""
    record = ctx.record()
    if record is None:
        return StatusReport(name=ctx.name, state="none")
    report = StatusReport(
        name=ctx.name,
        state="unknown",
        sandbox_id=record.sandbox_id,
        thread_id=record.thread_id,
        home_dir=record.home_dir,
        last_turn=record.last_turn,
    )
    try:
        box = ctx.look(record)
    except SandboxGoneError:
        report.state = "deleted"
        return report
    info = box.info()
    report.state = info.state
    if report.state == "started" and record.runtime:
        report.previews = links.for_browser(box, links.listening_ports(box), info.public)
        for preview in report.previews:
            if preview.check is not None and not preview.check.ok:
                ctx.emit(ev.warning(preview.check.message()))
    return report


# --- pause, stop, down -------------------------------------------------------------------------


@dataclass(frozen=True)
class PauseResult:
    sandbox_id: str
    state: str  # paused, or stopped (--or-stop), or what it already was

    @property
    def human(self) -> str:
        verb = {"paused": "Paused", "stopped": "Stopped"}.get(self.state, self.state.capitalize())
        return f"{verb} sandbox {self.sandbox_id}"

    @property
    def quiet(self) -> str:
        return self.state

    def to_json(self) -> dict[str, object]:
        return {"sandbox_id": self.sandbox_id, "state": self.state}


@dataclass(frozen=True)
class SandboxDone:
    """What `down` or `down --stop` did to a sandbox."""

    sandbox_id: str
    did: str  # "deleted", "stopped", or "forgotten" (it was already gone: a warning says so)

    @property
    def human(self) -> str:
        return "" if self.did == "forgotten" else f"{self.did.capitalize()} sandbox {self.sandbox_id}"

    @property
    def quiet(self) -> str:
        return "" if self.did == "forgotten" else self.sandbox_id

    def to_json(self) -> dict[str, object]:
        if self.did == "forgotten":
            return {"sandbox_id": self.sandbox_id, "deleted": False, "forgotten": True}
        return {"sandbox_id": self.sandbox_id, self.did: True}


def pause(ctx: Context, *, or_stop: bool = False) -> PauseResult:
    """Pauses the sandbox: its processes (the warm agent, dev servers) freeze with their
    memory, and the next command that needs the sandbox resumes it. Where Daytona cannot
    pause it, stops it instead when `or_stop`, else raises RefusedError."""
    box = ctx.box(start=False)
    record = box.record
    state = box.info().state
    if state in ("paused", "stopped", "archived"):
        ctx.emit(ev.warning(f"Sandbox {record.sandbox_id} is already {state}."))
        return PauseResult(record.sandbox_id, state)
    if record.last_turn is not None and record.last_turn.status == "running":
        ctx.emit(ev.warning("A turn is running: it freezes with the sandbox and goes on when it resumes."))
    ctx.emit(ev.progress(f"Pausing sandbox {record.sandbox_id}..."))
    try:
        box.pause()
    except RefusedError as exc:
        if not or_stop:
            kind = box.sandbox_class
            why = f" (it is a {kind}: Daytona pauses only VM-class sandboxes)" if kind == "container" else ""
            raise RefusedError(
                f"{exc.message}{why}.",
                "`codex-daytona pause --or-stop` stops it instead; its files stay, running processes end.",
            ) from exc
        ctx.emit(ev.warning(f"{exc.message}; stopping it instead."))
        box.stop()
        _drop_handle(ctx, record.sandbox_id)
        return PauseResult(record.sandbox_id, "stopped")
    _drop_handle(ctx, record.sandbox_id)
    return PauseResult(record.sandbox_id, "paused")


def _drop_handle(ctx: Context, sandbox_id: str) -> None:
    """The sandbox no longer runs as its handle says: the next command looks it up and starts
    it, rather than learn it from a failed request (which a handle kept still does)."""
    with contextlib.suppress(StateError):
        ctx.update_record(sandbox_id, lambda r: setattr(r, "handle", None))


def stop(ctx: Context) -> SandboxDone:
    """Stops the sandbox, keeping its files and the thread; the next `up` or `ask` starts it."""
    box = ctx.box(start=False)
    if box.info().state != "stopped":
        ctx.emit(ev.progress(f"Stopping sandbox {box.id}..."))
        box.stop()
    _drop_handle(ctx, box.id)
    return SandboxDone(box.id, "stopped")


def down(ctx: Context) -> SandboxDone:
    """Deletes the sandbox and forgets it. Checks first that it can forget it: a sandbox
    deleted and still named in the state file would be an error on every later command."""
    record = ctx.require_record()
    ctx.store.check_writable()
    try:
        box = ctx.box(record, start=False)
    except SandboxGoneError:
        ctx.emit(ev.warning(f"Sandbox {record.sandbox_id} was already gone (nothing deleted); forgot it."))
        return SandboxDone(record.sandbox_id, "forgotten")
    ctx.emit(ev.progress(f"Deleting sandbox {record.sandbox_id}..."))
    box.delete()
    ctx.forget(record.sandbox_id)
    return SandboxDone(record.sandbox_id, "deleted")


def all_sandboxes(ctx: Context) -> list[SandboxInfo]:
    """Every sandbox this tool made, in every project of this Daytona account, and every one
    this directory's state file names: Daytona's list is eventually consistent, so a sandbox
    just created or forked can be missing from it (state "unlisted" here)."""
    found = [s for s in ctx.api.list({"app": TOOL_LABEL}) if s.state not in ("destroyed", "destroying")]
    seen = {s.id for s in found}
    for name, record in sorted(ctx.store.load().sandboxes.items()):
        if record.sandbox_id not in seen:
            seen.add(record.sandbox_id)
            labels = project_labels(ctx.project_dir, name)
            found.append(SandboxInfo(id=record.sandbox_id, state="unlisted", labels=labels, public=False))
    return found


def down_all(ctx: Context, sandboxes: list[SandboxInfo]) -> list[str]:
    """Deletes the given sandboxes and forgets those this directory knew. Returns their ids.
    Daytona deletes a sandbox only after the sandboxes forked from it: one it refuses is
    tried again once the others are deleted (forks first, however the list is ordered)."""
    if sandboxes:
        ctx.store.check_writable()
    deleted: list[str] = []
    try:
        waiting = list(sandboxes)
        while waiting:
            refused: list[tuple[SandboxInfo, HasForksError]] = []
            for info in waiting:
                ctx.emit(ev.progress(f"Deleting sandbox {info.id}..."))
                try:
                    with contextlib.suppress(SandboxGoneError):
                        ctx.look(info.id).delete()
                except HasForksError as exc:
                    refused.append((info, exc))
                    continue
                deleted.append(info.id)
            if len(refused) == len(waiting):  # forks of them are not in the list
                raise refused[0][1]
            waiting = [info for info, _ in refused]
    finally:
        with ctx.store.update() as state:
            gone = set(deleted)
            state.sandboxes = {n: r for n, r in state.sandboxes.items() if r.sandbox_id not in gone}
    return deleted
