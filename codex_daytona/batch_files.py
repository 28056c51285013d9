"""`batch`'s two files: the tasks it reads (JSON lines, one task each) and the results it
writes (JSON lines, one per finished task, flushed as each ends). No Daytona, no output: the
batch use case drives these, and a resumed batch learns from the results file what is done.

The tasks file is read twice and never held: once to refuse a malformed line before anything
runs (keeping only the ids, to refuse a repeated one, and a count per distinct preparation, to
learn which tasks share one), then streamed task by task as the batch runs.
The results file is appended to; a line a kill cut short is cut off before the next write, so
the file stays one whole JSON object per line.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Container, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, Any

from codex_daytona.codex_facts import REASONING_EFFORTS
from codex_daytona.errors import UsageError

RESULTS_SCHEMA = 1  # in every result line, as "schema"; raised when a field changes meaning
# A task's outcome in the results file: the check passed (or there is none and the turn
# completed); the check failed or the turn did not complete; the platform or the tool failed
# it; its --timeout ran out; Ctrl-C stopped it.
STATUSES = ("passed", "failed", "error", "timeout", "interrupted")
MAX_ID = 200


@dataclass(frozen=True)
class Task:
    """One line of the tasks file. `line` is its line number, for messages."""

    id: str
    prompt: str
    line: int
    model: str | None = None
    effort: str | None = None
    repo: str | None = None
    branch: str | None = None
    dir: str | None = None
    setup: str | None = None
    check: str | None = None

    @property
    def preparation(self) -> Preparation | None:
        """What makes this task's sandbox before its turn (what it clones or pushes, and its
        setup), None when it has none: tasks with the same one can start from one prepared base."""
        key = (self.repo, self.branch, self.dir, self.setup)
        return None if key == (None, None, None, None) else key


# A task's (repo, branch, dir, setup).
Preparation = tuple[str | None, str | None, str | None, str | None]


@dataclass(frozen=True)
class TasksCheck:
    """What `check_tasks` learned: how many tasks the file has, and how many of those still to
    run share each preparation (only those shared by at least two)."""

    total: int
    shared: dict[Preparation, int] = field(default_factory=dict)


_OPTIONAL = tuple(f.name for f in fields(Task) if f.name not in ("id", "prompt", "line"))
_KNOWN = ("id", "prompt", *_OPTIONAL)


@dataclass(frozen=True)
class TaskDefaults:
    """What the command line sets for every task that does not say otherwise."""

    model: str | None = None
    effort: str | None = None


def _refuse(path: Path, line: int, why: str) -> UsageError:
    return UsageError(
        f"{path}, line {line}: {why}",
        'Each line is one JSON object with "id" and "prompt" (and optionally '
        + ", ".join(f'"{name}"' for name in _OPTIONAL)
        + "); nothing ran.",
    )


def _parse(path: Path, number: int, text: str, defaults: TaskDefaults) -> Task | None:
    """The task on line `number`, None for a blank line; UsageError naming the line."""
    if not text.strip():
        return None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _refuse(path, number, f"not JSON ({exc.msg} at column {exc.colno}).") from None
    if not isinstance(raw, dict):
        raise _refuse(path, number, f"a JSON {type(raw).__name__}, not an object.")
    unknown = sorted(set(raw) - set(_KNOWN))
    if unknown:
        raise _refuse(path, number, "unknown field " + ", ".join(repr(k) for k in unknown) + ".")
    for key in _KNOWN:
        if key in raw and raw[key] is not None and not isinstance(raw[key], str):
            raise _refuse(path, number, f'"{key}" must be a string.')
    task_id, prompt = raw.get("id"), raw.get("prompt")
    if not task_id or not task_id.strip():
        raise _refuse(path, number, 'no "id".')
    if len(task_id) > MAX_ID or any(c in task_id for c in "\n\r\t/\\") or task_id != task_id.strip():
        raise _refuse(path, number, f'"id" must be one line of at most {MAX_ID} characters, without / or \\.')
    if not prompt or not prompt.strip():
        raise _refuse(path, number, f'task {task_id!r} has no "prompt".')
    effort = raw.get("effort") or defaults.effort
    if effort is not None and effort not in REASONING_EFFORTS:
        raise _refuse(
            path, number, f"{effort!r} is not a reasoning effort; use one of: {', '.join(REASONING_EFFORTS)}."
        )
    if raw.get("repo") and raw.get("dir"):
        raise _refuse(path, number, f'task {task_id!r} has both "repo" and "dir"; give one.')
    if raw.get("branch") and not raw.get("repo"):
        raise _refuse(path, number, f'task {task_id!r} has a "branch" but no "repo".')
    if raw.get("dir") and not (path.parent / raw["dir"]).is_dir():
        raise _refuse(path, number, f'task {task_id!r}: "dir" {raw["dir"]!r} is not a directory.')
    return Task(
        id=task_id,
        prompt=prompt,
        line=number,
        model=raw.get("model") or defaults.model,
        effort=effort,
        repo=raw.get("repo"),
        branch=raw.get("branch"),
        dir=str((path.parent / raw["dir"]).resolve()) if raw.get("dir") else None,
        setup=raw.get("setup"),
        check=raw.get("check"),
    )


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        with path.open(encoding="utf-8") as fh:
            yield from enumerate(fh, start=1)
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path} is not UTF-8 text ({exc.reason}).") from None
    except OSError as exc:
        raise UsageError(f"Cannot read the tasks file {path}: {exc.strerror or exc}.") from None


def check_tasks(path: Path, defaults: TaskDefaults, done: Container[str] = ()) -> TasksCheck:
    """Reads the whole tasks file and refuses it (UsageError naming the line) when any line is
    malformed or repeats an id; returns how many tasks it has, and which preparations the
    tasks not `done` share. Holds only the ids and a count per distinct preparation."""
    seen: dict[str, int] = {}
    preparations: dict[Preparation, int] = {}
    for number, text in _lines(path):
        task = _parse(path, number, text, defaults)
        if task is None:
            continue
        if task.id in seen:
            raise _refuse(path, number, f"id {task.id!r} again (first on line {seen[task.id]}).")
        seen[task.id] = number
        key = task.preparation
        if key is not None and task.id not in done:
            preparations[key] = preparations.get(key, 0) + 1
    if not seen:
        raise UsageError(f"{path} has no tasks.", 'Write one JSON object per line, e.g. {"id": "t1", "prompt": "..."}.')
    return TasksCheck(len(seen), {key: count for key, count in preparations.items() if count > 1})


def stream_tasks(path: Path, defaults: TaskDefaults) -> Iterator[Task]:
    """The tasks, one at a time, in file order (check_tasks first: this assumes them valid)."""
    for number, text in _lines(path):
        task = _parse(path, number, text, defaults)
        if task is not None:
            yield task


def done_ids(path: Path) -> set[str]:
    """The ids a results file already has (none when there is no file), read without writing
    it: what `check_tasks` leaves out before the file is opened (which refuses a bad line)."""
    try:
        with path.open("rb") as fh:
            ids: set[str] = set()
            for raw in fh:
                with contextlib.suppress(json.JSONDecodeError):
                    result = json.loads(raw) if raw.endswith(b"\n") else None
                    if isinstance(result, dict) and isinstance(result.get("id"), str):
                        ids.add(result["id"])
            return ids
    except FileNotFoundError:
        return set()
    except OSError as exc:
        raise UsageError(f"Cannot read the results file {path}: {exc.strerror or exc}.") from None


class ResultsFile:
    """The results, one JSON object per line, appended and flushed (and fsynced) as each task
    ends, so a `kill -9` loses at most the line being written. Opening it reads the ids already
    there (what a resumed batch skips) and cuts off a torn last line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: set[str] = set()
        self.kept: set[str] = set()  # the sandboxes finished tasks kept (--keep), by id
        self._fh: IO[bytes] | None = None

    def __enter__(self) -> ResultsFile:
        try:
            self._fh = self.path.open("a+b")
            self._fh.seek(0)
            whole = 0
            for number, raw in enumerate(self._fh, start=1):
                if not raw.endswith(b"\n"):
                    break  # the line a kill cut short
                try:
                    result = json.loads(raw)
                except json.JSONDecodeError:
                    raise UsageError(
                        f"{self.path}, line {number} is not a result line.",
                        "Give --out a new file, or the results file of this same batch.",
                    ) from None
                if not isinstance(result, dict) or not isinstance(result.get("id"), str):
                    raise UsageError(f"{self.path}, line {number} is not a result line.")
                self.done.add(result["id"])
                if isinstance(result.get("sandbox_id"), str):
                    self.kept.add(result["sandbox_id"])
                whole += len(raw)
            self._fh.truncate(whole)
            self._fh.seek(0, os.SEEK_END)
        except OSError as exc:
            self.close()
            raise UsageError(f"Cannot write the results file {self.path}: {exc.strerror or exc}.") from None
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def write(self, result: dict[str, Any]) -> None:
        """Appends one result (its "schema" first) and makes it durable before returning."""
        assert self._fh is not None, "write() outside `with ResultsFile(...)`"
        if result.get("status") not in STATUSES:
            raise ValueError(f"unknown status {result.get('status')!r}")
        line = json.dumps({"schema": RESULTS_SCHEMA, **result}, ensure_ascii=False) + "\n"
        self._fh.write(line.encode("utf-8"))
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.done.add(str(result["id"]))
