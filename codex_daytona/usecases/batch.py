"""`batch`: many tasks, each in a sandbox of its own, up to N at once, each task's result
written to the results file as it ends.

A task's sandbox is named `b-<batch>-<n>` (the batch: a digest of the results file's path, so
running the same command again is the same batch) and carries the tool's labels, so `ls
--all` and `down --all` see it and a resumed batch finds the ones a killed run left behind.

Tasks that share a preparation (the same repo and branch, or dir, and setup) and are at least
two start from one base sandbox, `b-<batch>-base-<n>`, prepared once (created from the runtime
snapshot, cloned or pushed, its setup run), each task in a Daytona fork of it. Where Daytona
cannot fork, what the first base learns stands for the whole batch: the base becomes its first
task's own sandbox, and every other task makes its own as a task without a group does. A
container (Daytona's default class) says so as it is created, before its preparation; another
class by refusing the first fork (422). The base is deleted once its group's last task has ended.
Like the core, this module never prints: it reports through events, from one thread at a
time.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from codex_daytona import events as ev
from codex_daytona.batch_files import (
    Preparation,
    ResultsFile,
    Task,
    TaskDefaults,
    check_tasks,
    done_ids,
    stream_tasks,
)
from codex_daytona.errors import (
    CodexDaytonaError,
    ExitCode,
    InterruptedByUser,
    NoRunnerError,
    QuotaError,
    RateLimitError,
    SandboxGoneError,
    TurnTimeoutError,
    UsageError,
)
from codex_daytona.sandbox.daytona_api import HasForksError, RefusedError
from codex_daytona.state import SandboxRecord
from codex_daytona.usecases import hands, lifecycle, turns, workspace
from codex_daytona.usecases.context import TOOL_LABEL, Context, project_labels

T = TypeVar("T")
KEEP = ("none", "failed", "all")
# Daytona's sandbox class that never forks (nor pauses); its default.
CONTAINER_CLASS = "container"
# A task the platform failed (429, quota, no runner, a sandbox evicted or lost) runs again in a
# new sandbox, at most this many times in all; the waits between are RETRY_DELAYS_S.
MAX_TRIES = 4
RETRY_DELAYS_S = (2.0, 5.0, 15.0)
SETUP_TIMEOUT_S = 1800.0
CHECK_TIMEOUT_S = 1800.0
OUTPUT_TAIL_CHARS = 2000


class SetupFailed(CodexDaytonaError):
    """A task's `setup` command exited non-zero: the turn does not run."""


def batch_id(out: Path) -> str:
    """The batch a results file belongs to: the same file, the same batch (resumable)."""
    return hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class BatchOptions:
    parallel: int
    defaults: TaskDefaults = field(default_factory=TaskDefaults)
    timeout: float | None = None
    keep: str = "none"
    patches: Path | None = None


@dataclass
class TaskRun:
    """One task as it runs, then its result line."""

    task: Task
    name: str = ""
    status: str = "error"
    sandbox_id: str | None = None
    run_id: str | None = None
    outcome: turns.TurnOutcome | None = None  # how its turn ended (also when it failed)
    error: str | None = None
    check_exit: int | None = None
    check_tail: str = ""
    patch: str | None = None
    patch_path: str | None = None
    retries: list[str] = field(default_factory=list)
    durations: dict[str, float] = field(default_factory=dict)
    kept: bool = False
    sandbox_from: str | None = None  # "fork" (of its group's base), "snapshot" (the runtime's)
    output: list[str] = field(default_factory=list)  # the setup's or check's output, while it runs

    @property
    def final_message(self) -> str:
        return self.outcome.final_message if self.outcome else ""

    @property
    def usage(self) -> dict[str, int]:
        return self.outcome.usage if self.outcome else {}

    def to_json(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "id": self.task.id,
            "status": self.status,
            "final_message": self.final_message,
            "error": self.error,
            "model": self.task.model,
            "check": None
            if self.task.check is None
            else {"exit_code": self.check_exit, "output_tail": self.check_tail},
            "usage": self.usage,
            "durations": {k: round(v, 2) for k, v in self.durations.items()},
            "retries": self.retries,
            "sandbox_id": self.sandbox_id if self.kept else None,
            "sandbox_from": self.sandbox_from,
            "run_id": self.run_id,
        }
        if self.patch_path is not None:
            result["patch_path"] = self.patch_path
        else:
            result["patch"] = self.patch
        return result


@dataclass
class BaseGroup:
    """The tasks still to run that share one preparation, and the base sandbox prepared once
    for them to fork."""

    name: str  # the base sandbox's: b-<batch>-base-<n>
    remaining: int  # its tasks that have not ended yet
    # Held to prepare the base, then for each fork of it: Daytona forks a sandbox only while no
    # other change of it is under way.
    lock: threading.Lock = field(default_factory=threading.Lock)
    base: SandboxRecord | None = None  # once prepared, until deleted (or taken by a task)
    forks: int = 0  # forks made of it
    taken: bool = False  # a task took the base as its own sandbox (Daytona does not fork here)
    failed: CodexDaytonaError | None = None  # its preparation failed: so does every task of it


@dataclass
class BatchSummary:
    total: int  # tasks in the file
    skipped: int  # already in the results file
    runs: list[dict[str, Any]]  # this run's result lines (id, status, model, usage)
    interrupted: bool = False
    elapsed_s: float = 0.0
    kept_bases: list[str] = field(default_factory=list)  # base sandboxes kept forks still need

    @property
    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for run in self.runs:
            counts[run["status"]] = counts.get(run["status"], 0) + 1
        return counts

    @property
    def exit_code(self) -> ExitCode:
        """130 on Ctrl-C, 0 when every task this run passed, else 3."""
        if self.interrupted:
            return ExitCode.INTERRUPTED
        if all(run["status"] == "passed" for run in self.runs):
            return ExitCode.OK
        return ExitCode.TURN_FAILED

    def to_json(self) -> dict[str, Any]:
        by_model: dict[str, dict[str, int]] = {}
        for run in self.runs:
            model = by_model.setdefault(str(run.get("model") or "default"), {})
            model[run["status"]] = model.get(run["status"], 0) + 1
        return {
            "total": self.total,
            "skipped": self.skipped,
            "ran": len(self.runs),
            "statuses": self.counts,
            "by_model": by_model,
            "input_tokens": sum(int(r["usage"].get("input_tokens", 0)) for r in self.runs),
            "output_tokens": sum(int(r["usage"].get("output_tokens", 0)) for r in self.runs),
            "interrupted": self.interrupted,
            "elapsed_s": round(self.elapsed_s, 2),
            "kept_bases": self.kept_bases,
            "exit_code": int(self.exit_code),
        }


class Batch:
    """Runs a tasks file: each task in a sandbox of its own, `parallel` at once."""

    def __init__(self, ctx: Context, tasks: Path, out: Path, options: BatchOptions) -> None:
        if options.parallel < 1:
            raise UsageError("--parallel needs at least 1.")
        if options.keep not in KEEP:
            raise UsageError(f"--keep is one of {', '.join(KEEP)}.")
        self.ctx = ctx
        self.tasks = tasks
        self.out = out
        self.options = options
        self.id = batch_id(out)
        self._lock = threading.Lock()  # the task stream, the counters, the results file, events
        self._cancel = threading.Event()
        self._running: dict[str, TaskRun] = {}
        self._written: set[str] = set()
        self._seq = 0
        self._allowed = options.parallel  # lowered while Daytona refuses for quota or rate
        self._active = 0
        self._room = threading.Condition(self._lock)
        self._shared: dict[Preparation, int] = {}  # from check_tasks: tasks to run per shared preparation
        self._groups: dict[Preparation, BaseGroup] = {}
        self._forks: bool | None = None  # whether Daytona forks this batch's sandboxes, once known
        self._kept_bases: list[str] = []

    # --- events ------------------------------------------------------------------------------

    def _emit(self, event: ev.Event) -> None:
        with self._lock:
            self.ctx.emit(event)

    def _update(self, run: TaskRun, status: str, detail: str = "") -> None:
        self._emit({"type": ev.BATCH_TASK, "id": run.task.id, "status": status, "detail": detail})

    # --- the run -----------------------------------------------------------------------------

    def run(self) -> BatchSummary:
        checked = check_tasks(self.tasks, self.options.defaults, done_ids(self.out))
        total, self._shared = checked.total, dict(checked.shared)
        self.ctx.settings.require_openai_key()
        self.ctx.store.check_writable()
        if self.options.patches is not None:
            self.options.patches.mkdir(parents=True, exist_ok=True)
        began = time.monotonic()
        with ResultsFile(self.out) as results:
            skipped = len(results.done)
            summary = BatchSummary(total, skipped, [])
            self._emit(
                {"type": ev.BATCH_STARTED, "total": total, "skipped": skipped, "parallel": self.options.parallel}
            )
            self._clean_leftovers(results.kept)
            pending = self._pending(results)
            # Each worker sets its event when it ends. Waited on instead of the threads: on
            # Python 3.11 a Ctrl-C that lands in Thread.join() leaves is_alive() False for a
            # thread that still runs (its task would then never be written).
            workers = [threading.Event() for _ in range(min(self.options.parallel, total - skipped))]
            for ended in workers:
                threading.Thread(target=self._worker, args=(pending, results, summary, ended), daemon=True).start()
            try:
                for ended in workers:
                    while not ended.wait(0.1):
                        pass
            except KeyboardInterrupt:
                summary.interrupted = True
                self._cancel_all(workers)
                for run in list(self._running.values()):  # still winding down: written as they stand
                    run.status, run.error = "interrupted", "Interrupted; still winding down when the batch ended."
                    self._write(run, results, summary)
            finally:
                for group in list(self._groups.values()):  # the bases of groups Ctrl-C cut short
                    self._delete_base(group)
                summary.kept_bases = list(self._kept_bases)
        summary.elapsed_s = time.monotonic() - began
        return summary

    def _pending(self, results: ResultsFile) -> Iterator[Task]:
        for task in stream_tasks(self.tasks, self.options.defaults):
            if task.id not in results.done:
                yield task

    def _worker(
        self, pending: Iterator[Task], results: ResultsFile, summary: BatchSummary, ended: threading.Event
    ) -> None:
        try:
            self._work(pending, results, summary)
        finally:
            ended.set()

    def _work(self, pending: Iterator[Task], results: ResultsFile, summary: BatchSummary) -> None:
        queued = time.monotonic()
        while not self._cancel.is_set():
            with self._lock:
                task = next(pending, None)
                self._seq += 1
                seq = self._seq
            if task is None:
                return
            run = TaskRun(task, name=f"b-{self.id}-{seq}")
            run.durations["queue"] = time.monotonic() - queued
            self._running[task.id] = run
            try:
                self._run_task(run)
            finally:
                self._running.pop(task.id, None)
                self._write(run, results, summary)
                self._ended(task)

    def _write(self, run: TaskRun, results: ResultsFile, summary: BatchSummary) -> None:
        """The task's result line, once (a task still winding down when Ctrl-C's wait ran out
        is written by the main thread, and not again by its own)."""
        line = run.to_json()
        with self._lock:
            if run.task.id in self._written:
                return
            self._written.add(run.task.id)
            results.write(line)
            summary.runs.append({k: line[k] for k in ("id", "status", "model", "usage", "error", "final_message")})
            self.ctx.emit(
                {
                    "type": ev.BATCH_TASK,
                    "id": run.task.id,
                    "status": run.status,
                    "detail": run.error
                    or (f"check exited {run.check_exit}" if run.status == "failed" else "")
                    or _first_line(run.final_message),
                    "done": True,
                    "usage": line["usage"],
                }
            )

    @contextlib.contextmanager
    def _slot(self) -> Iterator[None]:
        """At most `_allowed` tasks make sandboxes and run at once."""
        with self._room:
            while self._active >= self._allowed and not self._cancel.is_set():
                self._room.wait(0.5)
            self._active += 1
        try:
            yield
        finally:
            with self._room:
                self._active -= 1
                self._room.notify_all()

    def _refused(self) -> None:
        """Daytona refused for quota or rate: fewer at once until a task gets through."""
        with self._room:
            self._allowed = max(1, min(self._allowed, self._active) - 1)

    def _got_through(self) -> None:
        with self._room:
            if self._allowed < self.options.parallel:
                self._allowed += 1
                self._room.notify_all()

    def _run_task(self, run: TaskRun) -> None:
        for attempt in range(MAX_TRIES):
            if self._cancel.is_set():
                run.status, run.error = "interrupted", "Interrupted before it started."
                return
            try:
                with self._slot():
                    self._attempt(run)
                return
            except (QuotaError, RateLimitError, NoRunnerError, SandboxGoneError) as exc:
                if isinstance(exc, (QuotaError, RateLimitError)):
                    self._refused()
                run.retries.append(exc.message)
                run.outcome = None  # a turn lost with its sandbox is not the task's
                self._update(run, "retrying", exc.message)
                self._drop(run, keep=False)
                if attempt + 1 == MAX_TRIES:
                    run.status, run.error = "error", exc.message
                    return
                if self._cancel.wait(RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S) - 1)]):
                    run.status, run.error = "interrupted", "Interrupted while waiting to retry."
                    return

    def _attempt(self, run: TaskRun) -> None:
        task = run.task
        ctx = self.ctx.named(run.name, self._on_event(run))
        try:
            ctx = self._sandbox(ctx, run)
            if self._cancel.is_set():
                raise InterruptedByUser("Interrupted before its turn started.")
            self._update(run, "running", "Starting the turn...")
            began = time.monotonic()
            try:
                turns.ask(
                    ctx,
                    task.prompt,
                    model=task.model,
                    effort=task.effort,
                    timeout=self.options.timeout,
                    links=False,
                    on_end=lambda outcome: self._take(run, outcome),  # also when it failed
                )
            finally:
                run.durations["turn"] = time.monotonic() - began
            if task.check:
                self._update(run, "checking", task.check)
                began = time.monotonic()
                run.check_exit = self._command(ctx, run, task.check, CHECK_TIMEOUT_S)
                run.durations["check"] = time.monotonic() - began
                run.check_tail = _tail("".join(run.output), OUTPUT_TAIL_CHARS)
            run.status = "passed" if (run.check_exit == 0 if task.check else True) else "failed"
            self._patch(ctx, run)
        except (QuotaError, RateLimitError, NoRunnerError, SandboxGoneError):
            raise  # the platform's: _run_task deletes the sandbox and runs the task again
        except TurnTimeoutError as exc:
            self._failed(ctx, run, exc, "timeout")
        except InterruptedByUser as exc:
            self._failed(ctx, run, exc, "interrupted")
        except CodexDaytonaError as exc:
            self._failed(ctx, run, exc, "failed" if exc.exit_code == ExitCode.TURN_FAILED else "error")
        self._drop(run, keep=self._keeps(run))

    # --- the task's sandbox ----------------------------------------------------------------

    def _sandbox(self, ctx: Context, run: TaskRun) -> Context:
        """Makes the task's sandbox ready for its turn: a fork of its group's base, or created
        from the runtime snapshot, cloned or pushed, and set up. Returns the context to run in
        (a task can take its group's base as its own)."""
        key = run.task.preparation
        group = None if key is None else self._group(key)
        made: Context | str | None = None
        if group is not None and (self._forks is not False or group.base is not None):
            made = self._from_base(ctx, run, group)
            if isinstance(made, Context):
                return made
        if made == "created":  # the group's base, just created, is the task's own sandbox
            ctx = self.ctx.named(run.name, self._on_event(run))
            began = time.monotonic() - run.durations.get("sandbox", 0.0)
        else:
            self._update(run, "creating", "Creating the sandbox...")
            began = time.monotonic()
            created = lifecycle.create(ctx)
            run.sandbox_id, run.sandbox_from = created.sandbox_id, "snapshot"
        self._fill(ctx, run.task)
        run.durations["sandbox"] = time.monotonic() - began
        self._got_through()
        self._setup(ctx, run)
        return ctx

    def _fill(self, ctx: Context, task: Task) -> None:
        if task.dir:
            workspace.push(ctx, Path(task.dir))
        elif task.repo:
            lifecycle.clone_into(ctx, task.repo, task.branch)

    def _setup(self, ctx: Context, run: TaskRun) -> None:
        if not run.task.setup:
            return
        self._update(run, "setup", run.task.setup)
        began = time.monotonic()
        code = self._command(ctx, run, run.task.setup, SETUP_TIMEOUT_S)
        run.durations["setup"] = time.monotonic() - began
        if code != 0:
            raise SetupFailed(f"setup exited {code}: {_tail(''.join(run.output), 300)}")

    def _group(self, key: Preparation) -> BaseGroup | None:
        """The group of tasks with this preparation, made as its first task starts; None when
        no other task still to run shares it."""
        with self._lock:
            group = self._groups.get(key)
            if group is None and key in self._shared:
                group = BaseGroup(f"b-{self.id}-base-{len(self._groups) + 1}", self._shared.pop(key))
                self._groups[key] = group
            return group

    def _from_base(self, ctx: Context, run: TaskRun, group: BaseGroup) -> Context | str | None:
        """The task's sandbox, ready for its turn, as a fork of its group's base, preparing the
        base first if no task has. Where Daytona does not fork: None (the task makes its own),
        or the task takes the base, which no fork was made of, as its own: its context when
        prepared, "created" when only created (the task then fills and sets it up)."""
        waited = time.monotonic()
        with group.lock:
            # Waiting for the base another task prepares, or for the fork before this one: queue.
            run.durations["queue"] = run.durations.get("queue", 0.0) + time.monotonic() - waited
            if group.failed is not None:
                raise copy.copy(group.failed)
            if self._cancel.is_set():
                raise InterruptedByUser("Interrupted before it started.")
            if group.base is None and self._forks is not False and not self._prepare_base(run, group):
                group.taken = True  # a container: the base, only created, is this task's sandbox
                run.name, run.sandbox_from = group.name, "snapshot"
                return "created"
            base = group.base
            if base is None:
                return None
            began = time.monotonic()
            if self._forks is not False:
                self._update(run, "creating", "Forking its group's base sandbox...")
                try:
                    run.sandbox_id = lifecycle.fork_from(ctx, base)
                except RefusedError as exc:
                    self._cannot_fork(exc.message.split(": ", 1)[-1])
                except SandboxGoneError:
                    group.base = None  # the next task prepares a new one; this one runs again
                    self._forget(group.name)
                    raise
                else:
                    self._forks = True
                    group.forks += 1
            if self._forks is False:
                if group.forks:
                    return None
                group.base, group.taken = None, True  # no fork of it: the base is this task's sandbox, ready
                run.name, run.sandbox_id, run.sandbox_from = group.name, base.sandbox_id, "snapshot"
                return self.ctx.named(group.name, self._on_event(run))
        run.sandbox_from = "fork"
        lifecycle.finish_fork(ctx, base)
        run.durations["sandbox"] = run.durations.get("sandbox", 0.0) + time.monotonic() - began
        self._got_through()
        return ctx

    def _prepare_base(self, run: TaskRun, group: BaseGroup) -> bool:
        """Creates the group's base, clones or pushes into it and runs the setup there, once
        for every task of the group; charged to this task's `sandbox` and `setup` durations.
        False, once only created, when it is of the class that never forks (no task knew yet):
        the task takes it as its own. A failure the platform caused leaves the base to the next
        task; any other fails the whole group, as a task's own setup fails it."""
        ctx = self.ctx.named(group.name, self._on_event(run))
        self._update(run, "creating", "Preparing the base sandbox its group forks...")
        began = time.monotonic()
        try:
            run.sandbox_id = lifecycle.create(ctx).sandbox_id
            run.durations["sandbox"] = time.monotonic() - began
            if self._forks is None and ctx.look(ctx.require_record()).info().sandbox_class == CONTAINER_CLASS:
                self._cannot_fork(f"its {CONTAINER_CLASS} class")
                return False
            run.sandbox_id = None  # the base is not the task's own sandbox
            self._fill(ctx, run.task)
            run.durations["sandbox"] = time.monotonic() - began
            self._got_through()
            self._setup(ctx, run)
        except (QuotaError, RateLimitError, NoRunnerError, SandboxGoneError, InterruptedByUser):
            self._delete_base(group)
            raise
        except CodexDaytonaError as exc:
            group.failed = copy.copy(exc)  # without its traceback, which holds this task's frames
            self._delete_base(group)
            raise
        group.base = ctx.require_record()
        return True

    def _cannot_fork(self, why: str) -> None:
        """Learnt for the whole batch. Not a warning: containers, Daytona's default class,
        never fork, and a sandbox of its own per task is the ordinary path for them."""
        self._forks = False
        self._emit(ev.progress(f"Each task makes its own sandbox (Daytona cannot fork them: {why})."))

    def _forget(self, name: str) -> None:
        ctx = self.ctx.named(name)
        record = ctx.record()
        if record is not None:
            ctx.forget(record.sandbox_id)

    def _ended(self, task: Task) -> None:
        """A task has ended: its group's base goes with the group's last task."""
        key = task.preparation
        with self._lock:
            group = None if key is None else self._groups.get(key)
            if group is None:
                return
            group.remaining -= 1
            last = group.remaining <= 0
        if last:
            self._delete_base(group)

    def _delete_base(self, group: BaseGroup) -> None:
        """Deletes the group's base, if there is one; keeps it (and says so) while sandboxes
        forked from it are kept: Daytona deletes a sandbox only after its forks."""
        ctx = self.ctx.named(group.name)
        record = ctx.record()
        group.base = None
        if record is None or group.taken:
            return
        try:
            self._patiently(lambda: lifecycle.down(ctx))
        except HasForksError:
            with self._lock:
                if group.name in self._kept_bases:
                    return
                self._kept_bases.append(group.name)
            self._emit(
                ev.warning(
                    f"Kept the base sandbox {group.name} ({record.sandbox_id}): kept task sandboxes were forked "
                    f"from it, and Daytona deletes it only after them; delete them, then it "
                    f"(`codex-daytona down --name {group.name}`)."
                )
            )
        except CodexDaytonaError as exc:
            self._emit(ev.warning(f"Could not delete the base sandbox {group.name}: {exc.message}"))

    # --- the task's turn, check and patch ----------------------------------------------------

    def _failed(self, ctx: Context, run: TaskRun, exc: CodexDaytonaError, status: str) -> None:
        run.status, run.error = status, exc.message
        if status in ("failed", "timeout", "interrupted") and run.sandbox_id is not None:
            with contextlib.suppress(CodexDaytonaError):
                self._patch(ctx, run)

    def _take(self, run: TaskRun, outcome: turns.TurnOutcome) -> None:
        run.run_id = outcome.run_id
        run.outcome = outcome

    def _command(self, ctx: Context, run: TaskRun, command: str, timeout: float) -> int:
        run.output = []
        return hands.exec_command(ctx, command, timeout=timeout)

    def _patch(self, ctx: Context, run: TaskRun) -> None:
        patch = workspace.diff(ctx).patch
        if self.options.patches is not None:
            path = self.options.patches / f"{run.task.id}.patch"
            path.write_bytes(patch)
            run.patch_path = str(path)
        else:
            run.patch = patch.decode("utf-8", "replace")

    def _keeps(self, run: TaskRun) -> bool:
        return self.options.keep == "all" or (self.options.keep == "failed" and run.status != "passed")

    def _drop(self, run: TaskRun, *, keep: bool) -> None:
        """Deletes the task's sandbox (and forgets it), or keeps it, named, for `ls` and `down`."""
        ctx = self.ctx.named(run.name)
        if ctx.record() is None:
            return
        if keep:
            run.kept = True
            return
        with contextlib.suppress(CodexDaytonaError):
            self._patiently(lambda: lifecycle.down(ctx))

    def _on_event(self, run: TaskRun) -> Any:
        def handle(event: ev.Event) -> None:
            kind = event.get("type")
            item = event.get("item") or {}
            if kind == ev.EXEC_OUTPUT:
                run.output.append(str(event.get("data", "")))
                if sum(len(chunk) for chunk in run.output) > 4 * OUTPUT_TAIL_CHARS:
                    run.output = [_tail("".join(run.output), OUTPUT_TAIL_CHARS)]
            elif kind == ev.RUN_STARTED:
                run.run_id = run.run_id or event.get("run_id")
            elif kind == ev.ITEM_STARTED and item.get("type") == ev.COMMAND:
                self._update(run, "running", f"Run: {ev.command_text(item)}")
            elif kind == ev.ITEM_COMPLETED and item.get("type") == ev.FILE_CHANGE:
                paths = [str(c.get("path")) for c in item.get("changes") or []]
                self._update(run, "running", f"Changed {', '.join(paths)}")

        return handle

    # --- leftovers and Ctrl-C ----------------------------------------------------------------

    def _clean_leftovers(self, kept: set[str]) -> None:
        """Deletes the sandboxes a killed run of this batch left: their tasks have no result
        line, so they run again. Not those finished tasks kept (`kept`, from their result
        lines), nor, while any is, the bases they may have been forked from (Daytona refuses
        to delete a sandbox with live forks; `down --all` deletes them all, forks first)."""
        prefix = f"b-{self.id}-"
        project = project_labels(self.ctx.project_dir, "")[f"{TOOL_LABEL}.project"]
        ours = [
            s
            for s in self._patiently(lambda: lifecycle.all_sandboxes(self.ctx))
            if s.labels.get(f"{TOOL_LABEL}.name", "").startswith(prefix)
            and s.labels.get(f"{TOOL_LABEL}.project") == project
        ]
        still_kept = {s.id for s in ours} & kept
        left = [
            s
            for s in ours
            if s.id not in kept
            and not (still_kept and s.labels.get(f"{TOOL_LABEL}.name", "").startswith(f"{prefix}base-"))
        ]
        if left:
            self._emit(ev.progress(f"Deleting {len(left)} sandbox(es) a stopped run of this batch left..."))
            self._patiently(lambda: lifecycle.down_all(self.ctx, left))

    def _patiently(self, call: Callable[[], T]) -> T:
        """`call`, again after a wait while Daytona answers 429 (the batch's own requests:
        listing what a killed run left, deleting a finished task's sandbox)."""
        for delay in (*RETRY_DELAYS_S, None):
            try:
                return call()
            except RateLimitError:
                if delay is None or self._cancel.wait(delay):
                    raise
        raise AssertionError("unreachable")

    def _cancel_all(self, workers: list[threading.Event]) -> None:
        self._cancel.set()
        with self._room:
            self._room.notify_all()
        self._emit(ev.progress("Interrupting every task..."))
        interrupting: set[str] = set()
        deadline = time.monotonic() + 60
        while not all(ended.is_set() for ended in workers) and time.monotonic() < deadline:
            for run in list(self._running.values()):
                if run.run_id and run.task.id not in interrupting:
                    interrupting.add(run.task.id)
                    threading.Thread(target=self._interrupt, args=(run,), daemon=True).start()
            time.sleep(0.05)

    def _interrupt(self, run: TaskRun) -> None:
        """Interrupts the task's run until it has, or the task ended."""
        turns.interrupt_until_ended(self.ctx.named(run.name), lambda: run.run_id, lambda: run.task.id in self._running)


def _tail(text: str, chars: int) -> str:
    return text[-chars:]


def _first_line(text: str) -> str:
    text = text.strip()
    return text.splitlines()[0] if text else ""
