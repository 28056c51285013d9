"""The local state file: which sandbox this directory uses, and which Codex thread.

`.codex-daytona/state.toml` in the current directory (CODEX_DAYTONA_STATE_DIR overrides).
Written atomically (temp file, fsync, rename), mode 0600 in a 0700 directory, under an
exclusive lock so that two invocations never interleave their writes. It never holds a key.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import tomli_w
from pydantic import BaseModel, Field, ValidationError

from codex_daytona.errors import StateError, UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

STATE_VERSION = 1
DEFAULT_NAME = "default"
# A sandbox's name: a short slug, so that `<name>-<n>` (fan-out siblings) still fits a label.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")


def check_name(name: str) -> str:
    """`name` if it is a valid sandbox name, else a UsageError that says what is allowed."""
    if not NAME_RE.fullmatch(name):
        raise UsageError(
            f"Invalid sandbox name {name!r}.",
            "Use up to 40 letters, digits, - and _, starting with a letter or digit (e.g. --name feature-x).",
        )
    return name


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Usage(BaseModel):
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_output_tokens: int = 0


class LastTurn(BaseModel):
    run_id: str
    started_at: str
    ended_at: str | None = None
    status: str = "running"
    usage: Usage | None = None
    error: str | None = None
    session_id: str | None = None  # the Daytona session the run's agent command ran in
    command_id: str | None = None  # that command: its log replays the run's events
    # Until when that command may still watch for late ports after the turn (see `ask -q`).
    settling_until: str | None = None


class SandboxRecord(BaseModel):
    """What we remember of one sandbox."""

    sandbox_id: str
    home_dir: str
    scope: str = ""
    created_at: str = Field(default_factory=now)
    updated_at: str = Field(default_factory=now)
    created_by: str = "up"
    thread_id: str | None = None
    runtime: str | None = None  # the agent runtime fingerprint installed in the sandbox
    session_id: str | None = None  # the Daytona session turns run in, one after another
    auto_stop_raised: bool = False  # a detached turn raised the sandbox's auto-stop
    preview_pattern: str | None = None
    # What the SDK needs to reach the started sandbox without looking it up (its description
    # as Daytona last gave it, as JSON, without its environment): a warm `ask` starts its
    # command with it; a stop of ours drops it, and any answer saying the sandbox is not
    # started (or gone) is followed by the look-up it spared (see `Context.connect`).
    handle: str | None = None
    ports: list[int] = Field(default_factory=list)
    last_turn: LastTurn | None = None

    def touch(self) -> None:
        self.updated_at = now()


class State(BaseModel):
    version: int = STATE_VERSION
    sandboxes: dict[str, SandboxRecord] = Field(default_factory=dict)


def _dump(state: State) -> bytes:
    return tomli_w.dumps(state.model_dump(mode="json", exclude_none=True)).encode()


class StateStore:
    """Reads and writes the state file; every write happens under the lock."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "state.toml"
        self._lock_path = directory / "state.lock"

    def load(self) -> State:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return State()
        except OSError as exc:
            raise StateError(f"Cannot read the state file {self.path}: {exc.strerror}.") from None
        try:
            data = tomllib.loads(raw.decode("utf-8"))
            state = State.model_validate(data)
        except ValidationError as exc:
            raise StateError(f"The state file {self.path} is corrupt: {_field_problem(exc)}.", CORRUPT_HINT) from None
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            first = str(exc).splitlines()[0]
            raise StateError(f"The state file {self.path} is corrupt ({first}).", CORRUPT_HINT) from None
        if state.version > STATE_VERSION:
            raise StateError(
                f"The state file {self.path} was written by a newer codex-daytona (version {state.version}).",
                "Upgrade codex-daytona.",
            )
        return state

    def get(self, name: str = DEFAULT_NAME) -> SandboxRecord | None:
        return self.load().sandboxes.get(name)

    def _ensure_dir(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise self._unwritable(exc) from None
        with contextlib.suppress(OSError):
            os.chmod(self.directory, 0o700)
        # Keeps the state out of git without touching the project's own .gitignore.
        ignore = self.directory / ".gitignore"
        if not ignore.exists():
            with contextlib.suppress(OSError):
                ignore.write_text("# Written by codex-daytona: which sandbox this directory uses.\n*\n")

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        self._ensure_dir()
        try:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise self._unwritable(exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @contextlib.contextmanager
    def update(self) -> Iterator[State]:
        """Load, let the caller change, and save atomically, all under the lock."""
        with self.lock():
            state = self.load()
            yield state
            self.save(state)

    def check_writable(self) -> None:
        """Raises StateError unless the state file can be locked and written: a command checks
        this before it changes anything on Daytona, so that it can always record what it did."""
        with self.lock():
            try:
                fd, tmp = tempfile.mkstemp(prefix=".state-", suffix=".tmp", dir=self.directory)
                os.close(fd)
                os.unlink(tmp)
                if self.path.exists() and not os.access(self.path, os.W_OK):
                    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self.path))
            except OSError as exc:
                raise self._unwritable(exc) from None

    def _unwritable(self, exc: OSError) -> StateError:
        return StateError(
            f"Cannot write the state file in {self.directory}: {exc.strerror or exc}.",
            f"Make {self.directory} and its files writable by you (nothing was changed on Daytona), "
            "or point CODEX_DAYTONA_STATE_DIR elsewhere.",
        )

    def save(self, state: State) -> None:
        """Writes atomically. The caller holds the lock."""
        try:
            self._write(_dump(state))
        except OSError as exc:
            raise self._unwritable(exc) from None

    def _write(self, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".state-", suffix=".tmp", dir=self.directory)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


CORRUPT_HINT = (
    "Fix the file, or delete it; the sandboxes it names keep running on Daytona, and only "
    "`codex-daytona down --all` finds them then."
)


def _field_problem(exc: ValidationError) -> str:
    """The first bad field of a state file, by its path in the file, and what is wrong with it."""
    err = exc.errors()[0]
    where = ".".join(str(part) for part in err["loc"]) or "the file"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {err['msg']}{more}"


def state_dir(override: Path | None) -> Path:
    return (override or Path.cwd() / ".codex-daytona").absolute()
