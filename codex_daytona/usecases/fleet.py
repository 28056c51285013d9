"""Many sandboxes per project directory: `ls`, `keep` and `down --others`.

A directory's sandboxes are the named records of its one state file ("default" unless
--name says otherwise); a fan-out's are `<name>-1` .. `<name>-N` (`fanout.py` runs them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

from codex_daytona import events as ev
from codex_daytona.errors import (
    NoSandboxError,
    SandboxGoneError,
)
from codex_daytona.sandbox.daytona_api import HasForksError, SandboxInfo
from codex_daytona.state import DEFAULT_NAME, SandboxRecord
from codex_daytona.usecases import lifecycle
from codex_daytona.usecases.context import TOOL_LABEL, Context, project_labels


def sibling_names(name: str, count: int) -> list[str]:
    return [f"{name}-{i}" for i in range(1, count + 1)]


def is_sibling(name: str, candidate: str) -> bool:
    """True when `candidate` is one of `name`'s fan-out sandboxes: `<name>-<number>`."""
    return re.fullmatch(re.escape(name) + r"-[0-9]+", candidate) is not None


# --- ls ------------------------------------------------------------------------------------


@dataclass
class SandboxRow:
    name: str
    record: SandboxRecord
    state: str  # Daytona's state, or "deleted" when Daytona no longer has it
    current: bool  # the one commands use without --name (or the --name given)

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "current": self.current,
            "default": self.name == DEFAULT_NAME,
            "state": self.state,
            **self.record.model_dump(mode="json", include=_LS_FIELDS),
        }


_LS_FIELDS = {"sandbox_id", "thread_id", "created_at", "created_by", "ports", "last_turn"}


@dataclass(frozen=True)
class SandboxList:
    """`ls`: a table for people (short ids that never wrap), the full sandbox ids for -q,
    one object for --json."""

    rows: list[SandboxRow]
    empty: str = 'No sandboxes here. `codex-daytona up` or `codex-daytona ask "..."` creates one.'

    @property
    def table(self) -> tuple[list[str], list[list[str]], tuple[str, ...]]:
        columns = ["", "name", "state", "sandbox", "thread", "last turn", "ports"]
        cells = [
            [
                "*" if row.current else "",
                row.name,
                row.state,
                short_id(row.record.sandbox_id),
                short_id(row.record.thread_id, tail=True) if row.record.thread_id else "-",
                _last_turn_text(row.record),
                " ".join(str(p) for p in row.record.ports) or "-",
            ]
            for row in self.rows
        ]
        return columns, cells, ("", "state", "sandbox", "thread")

    @property
    def human(self) -> str:
        return ""

    @property
    def quiet(self) -> str:
        return "\n".join(row.record.sandbox_id for row in self.rows)

    def to_json(self) -> dict[str, object]:
        return {"sandboxes": [row.to_json() for row in self.rows]}


@dataclass(frozen=True)
class AccountList:
    """`ls --all`: every sandbox this tool made, in every project of the Daytona account,
    with the name and directory it was made for (from its labels); `here` marks those this
    directory's state file knows."""

    sandboxes: list[SandboxInfo]
    here: set[str]
    empty: str = "This tool has no sandboxes on this Daytona account."

    @property
    def table(self) -> tuple[list[str], list[list[str]], tuple[str, ...]]:
        columns = ["", "name", "dir", "state", "sandbox", "created"]
        cells = [
            [
                "here" if info.id in self.here else "",
                info.labels.get(f"{TOOL_LABEL}.name", "-"),
                info.labels.get(f"{TOOL_LABEL}.dir", "-"),
                info.state,
                short_id(info.id),
                (info.created_at or "-")[:16].replace("T", " "),
            ]
            for info in self.sandboxes
        ]
        return columns, cells, ("", "state", "sandbox")

    @property
    def human(self) -> str:
        return ""

    @property
    def quiet(self) -> str:
        return "\n".join(info.id for info in self.sandboxes)

    def to_json(self) -> dict[str, object]:
        return {
            "sandboxes": [
                {
                    "sandbox_id": info.id,
                    "name": info.labels.get(f"{TOOL_LABEL}.name"),
                    "dir": info.labels.get(f"{TOOL_LABEL}.dir"),
                    "project": info.labels.get(f"{TOOL_LABEL}.project"),
                    "state": info.state,
                    "created_at": info.created_at,
                    "here": info.id in self.here,
                }
                for info in self.sandboxes
            ]
        }


def list_account(ctx: Context) -> AccountList:
    """`ls --all`: one list request by the tool's label, plus the sandboxes this directory's
    state file names that the (eventually consistent) list does not show yet."""
    found = lifecycle.all_sandboxes(ctx)
    here = {record.sandbox_id for record in ctx.store.load().sandboxes.values()}
    found.sort(key=lambda s: (s.labels.get(f"{TOOL_LABEL}.dir", ""), s.labels.get(f"{TOOL_LABEL}.name", ""), s.id))
    return AccountList(found, here)


def short_id(value: str, *, tail: bool = False) -> str:
    """An id in 8 characters, as `docker ps` and `gh` show them: a sandbox id's first 8 (its
    start is random), a thread id's last 8 (Codex's thread ids are UUIDv7, whose first
    digits are the time it started, the same for threads started in the same minute)."""
    return value[-8:] if tail else value[:8]


def _last_turn_text(record: SandboxRecord) -> str:
    """The last turn's outcome and how long ago it ended (or started): `completed 5m ago`."""
    turn = record.last_turn
    if turn is None:
        return "-"
    try:
        when = datetime.fromisoformat(turn.ended_at or turn.started_at)
        seconds = max(0, int((datetime.now(timezone.utc) - when).total_seconds()))
    except ValueError:
        return turn.status
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{turn.status} {seconds // size}{unit} ago"
    return f"{turn.status} {seconds}s ago"


def list_sandboxes(ctx: Context) -> list[SandboxRow]:
    """This directory's sandboxes from the state file, with their live state from ONE list
    request by the project's labels. Warns about sandboxes that carry this directory's
    labels but are not in the state file."""
    sandboxes = ctx.store.load().sandboxes
    labels = project_labels(ctx.project_dir, DEFAULT_NAME)
    live = {info.id: info for info in ctx.api.list({k: labels[k] for k in ("app", f"{TOOL_LABEL}.project")})}
    known = {record.sandbox_id for record in sandboxes.values()}
    for info in live.values():
        if info.id not in known:
            name = info.labels.get(f"{TOOL_LABEL}.name", "?")
            ctx.emit(
                ev.warning(
                    f"Sandbox {info.id} (created as {name}) carries this directory's labels but is not in "
                    f"the state file {ctx.store.path}."
                )
            )
    order = sorted(sandboxes, key=lambda n: (n != DEFAULT_NAME, n))
    return [SandboxRow(n, sandboxes[n], _live_state(ctx, live, sandboxes[n].sandbox_id), n == ctx.name) for n in order]


def _live_state(ctx: Context, live: dict[str, SandboxInfo], sandbox_id: str) -> str:
    """The sandbox's state from the list; one the list does not show is looked up by id, since
    Daytona's list is eventually consistent (a sandbox just created or forked can be missing)."""
    if sandbox_id in live:
        return live[sandbox_id].state
    try:
        return ctx.look(sandbox_id).info().state
    except SandboxGoneError:
        return "deleted"


# --- keep and down --others ---------------------------------------------------------------------


@dataclass
class KeepResult:
    name: str  # the slot it now has (the default, or --name)
    sandbox_id: str
    was: str  # the name it had
    previous_id: str | None  # the sandbox that had `name` before, now under `was`

    @property
    def human(self) -> str:
        if self.was == self.name:
            return f"{self.name} is sandbox {self.sandbox_id} already."
        text = f"{self.name} is now sandbox {self.sandbox_id} (was {self.was})."
        if self.previous_id:
            text += f" The previous {self.name}, sandbox {self.previous_id}, is now {self.was}."
        return text

    @property
    def quiet(self) -> str:
        return self.sandbox_id

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "sandbox_id": self.sandbox_id, "was": self.was, "previous_id": self.previous_id}


def keep(ctx: Context, chosen: str) -> KeepResult:
    """Makes sandbox `chosen` this directory's `ctx.name` (the default): the two records swap
    names, so the previous one is not lost and `down --others` can delete it."""
    with ctx.store.update() as state:
        record = state.sandboxes.get(chosen)
        if record is None:
            raise NoSandboxError(f"No sandbox named {chosen} here.", "`codex-daytona ls` lists this directory's.")
        if chosen == ctx.name:
            return KeepResult(ctx.name, record.sandbox_id, chosen, None)
        previous = state.sandboxes.get(ctx.name)
        state.sandboxes[ctx.name] = record
        if previous is not None:
            state.sandboxes[chosen] = previous
        else:
            del state.sandboxes[chosen]
    return KeepResult(ctx.name, record.sandbox_id, chosen, previous.sandbox_id if previous else None)


def siblings(ctx: Context) -> list[str]:
    """The names of `ctx.name`'s fan-out sandboxes in the state file."""
    return sorted(n for n in ctx.store.load().sandboxes if is_sibling(ctx.name, n))


@dataclass(frozen=True)
class DownOthersResult:
    kept: str
    deleted: list[tuple[str, str]]  # (name, sandbox id)
    stopped: list[tuple[str, str]] = field(default_factory=list)  # forked from: Daytona keeps them

    @property
    def human(self) -> str:
        if not self.deleted and not self.stopped:
            return f"{self.kept} has no fan-out sandboxes; nothing to delete."
        lines = [f"Deleted {n} (sandbox {sid})" for n, sid in self.deleted]
        lines += [f"Stopped {n} (sandbox {sid}): forks of it remain" for n, sid in self.stopped]
        return "\n".join(lines) + f"\nKept {self.kept}."

    @property
    def quiet(self) -> str:
        return "\n".join(n for n, _ in self.deleted)

    def to_json(self) -> dict[str, object]:
        return {
            "kept": self.kept,
            "deleted": [{"name": n, "sandbox_id": sid} for n, sid in self.deleted],
            "stopped": [{"name": n, "sandbox_id": sid} for n, sid in self.stopped],
        }


def down_others(ctx: Context) -> DownOthersResult:
    """Deletes `ctx.name`'s fan-out siblings (`<name>-<n>`) and keeps it. Daytona deletes a
    sandbox only after the sandboxes forked from it: one it refuses is tried again after the
    others, and one still refused (the source of the sandbox `keep` chose) is stopped instead."""
    if ctx.record() is None:
        raise NoSandboxError(
            f"No sandbox named {ctx.name} here, so there is nothing to keep.",
            "Choose the one to keep first: `codex-daytona keep NAME`.",
        )
    deleted: list[tuple[str, str]] = []
    waiting = siblings(ctx)
    while waiting:
        refused = []
        for name in waiting:
            try:
                deleted.append((name, lifecycle.down(ctx.named(name, ctx.emit)).sandbox_id))
            except HasForksError:
                refused.append(name)
        if len(refused) == len(waiting):
            break
        waiting = refused
    stopped = []
    for name in waiting:
        done = lifecycle.stop(ctx.named(name, ctx.emit))
        ctx.emit(
            ev.warning(
                f"Stopped {name} (sandbox {done.sandbox_id}) instead of deleting it: sandboxes forked from it "
                f"remain (such as {ctx.name}, when `keep` chose a fork of it), and Daytona deletes a sandbox "
                "only after its forks. "
                f"`codex-daytona down --name {name}` deletes it once they are gone."
            )
        )
        stopped.append((name, done.sandbox_id))
    return DownOthersResult(ctx.name, deleted, stopped)
