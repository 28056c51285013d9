"""The only module that talks to Daytona, through the official `daytona` SDK.

It imports the SDK lazily (importing the client costs about a second), hands the rest of
the program small typed results, and translates every SDK exception into one of our
errors with a hint. Idempotent calls are retried on transient failures.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import queue
import re
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from codex_daytona.errors import (
    CommandGoneError,
    DaytonaError,
    NoRunnerError,
    QuotaError,
    RateLimitError,
    SandboxGoneError,
)
from codex_daytona.settings import Settings

if TYPE_CHECKING:
    from daytona import Daytona, Sandbox

T = TypeVar("T")

RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)
# A sandbox's handle in the state file leaves out the times that change on every look-up and
# fields this SDK does not know (its environment is kept empty: see DaytonaApi.handle).
HANDLE_LEAVES_OUT = frozenset({"updated_at", "last_activity_at", "additional_properties"})
SDK_PREFIX = re.compile(r"^Failed to (pause sandbox|fork sandbox|create SSH access):? ?")
TRANSFER_TIMEOUT_S = 3600
# How long a start, stop or delete waits out a change of the sandbox's state that is under way
# (Daytona answers 409 "Sandbox state change in progress" meanwhile: auto-stop stopping it,
# another shell starting it).
STATE_CHANGE_WAIT_S = 180.0
CREATE_TIMEOUT_S = 300
STATE_POLL_S = 0.5
ERRORED_STATES = frozenset({"error", "build_failed"})  # Daytona starts neither (assertSandboxNotErrored)
PTY_HANDSHAKE_TRIES = 3  # opening a terminal whose daemon was slow to say "connected" (see open_pty)
TRANSITIONAL_STATES = frozenset(
    {"starting", "stopping", "pausing", "resuming", "forking", "snapshotting", "archiving", "restoring", "creating"}
)


@dataclass(frozen=True)
class SandboxInfo:
    id: str
    state: str
    labels: dict[str, str]
    public: bool
    created_at: str | None = None
    sandbox_class: str | None = None  # "container" (Daytona's default: cannot fork or pause), "linux-vm", ...


@dataclass(frozen=True)
class PreviewLink:
    port: int
    url: str
    token: str | None


@dataclass(frozen=True)
class CommandResult:
    exit_code: int
    output: str


@dataclass(frozen=True)
class SshAccess:
    command: str  # e.g. "ssh TOKEN@ssh.app.daytona.io"
    token: str
    expires_at: str  # ISO 8601, UTC


class RefusedError(DaytonaError):
    """Daytona refused an operation this sandbox (or this Daytona) does not offer: 422 for a
    sandbox class that cannot pause or fork, 404/405 from an API without the route."""


class HasForksError(DaytonaError):
    """Daytona deletes a sandbox only once the sandboxes forked from it are deleted (400)."""


def _state_name(sandbox: Sandbox) -> str:
    state = getattr(sandbox, "state", None)
    return str(getattr(state, "value", state) or "unknown")


def _info(sandbox: Any) -> SandboxInfo:
    return SandboxInfo(
        id=sandbox.id,
        state=_state_name(sandbox),
        labels=dict(sandbox.labels or {}),
        public=bool(getattr(sandbox, "public", False)),
        created_at=getattr(sandbox, "created_at", None),
        sandbox_class=getattr(sandbox, "sandbox_class", None),
    )


class DaytonaApi:
    """A Daytona client bound to one API URL and key."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._api_key = settings.require_daytona_key()
        self._client: Daytona | None = None

    # --- plumbing -------------------------------------------------------------------

    @property
    def client(self) -> Daytona:
        if self._client is None:
            with self._translate("connect to Daytona"):
                from daytona import Daytona, DaytonaConfig

                self._client = Daytona(
                    DaytonaConfig(
                        api_key=self._api_key,
                        api_url=self._settings.api_url,
                        target=self._settings.daytona_target,
                    )
                )
                _bound_requests(self._client, self._settings.codex_daytona_request_timeout_seconds)
        return self._client

    @contextmanager
    def _translate(self, action: str, sandbox_id: str | None = None) -> Iterator[None]:
        from daytona import (
            DaytonaAuthenticationError,
            DaytonaConnectionError,
            DaytonaForbiddenError,
            DaytonaNotFoundError,
            DaytonaQueueTimeoutError,
            DaytonaRateLimitError,
            DaytonaSpotEvictedError,
            DaytonaTimeoutError,
        )
        from daytona import DaytonaError as SdkError

        try:
            yield
        except DaytonaRateLimitError as exc:
            raise RateLimitError(
                f"Daytona is rate-limiting this API key (HTTP 429) while trying to {action}.",
                "Wait a minute and try again; fewer sandboxes at once (a smaller --fanout) helps.",
            ) from exc
        except DaytonaQueueTimeoutError as exc:
            raise NoRunnerError(
                f"No Daytona runner was free in time to {action}: Daytona gave up and deleted the sandbox.",
                "Try again in a few minutes, or in another region (DAYTONA_TARGET).",
            ) from exc
        except DaytonaSpotEvictedError as exc:
            which = f"sandbox {sandbox_id}" if sandbox_id else "the sandbox"
            raise SandboxGoneError(
                f"Daytona preempted {which} (spot eviction) while trying to {action}; it no longer exists.",
                "Run the command again: `codex-daytona up` makes a new sandbox (its files are lost).",
            ) from exc
        except DaytonaNotFoundError as exc:
            if sandbox_id is not None:
                raise SandboxGoneError(f"Sandbox {sandbox_id} no longer exists on Daytona.") from exc
            raise DaytonaError(f"Could not {action}: {_first_line(exc)}") from exc
        except (DaytonaAuthenticationError, DaytonaForbiddenError) as exc:
            raise DaytonaError(
                f"Daytona refused the API key while trying to {action}.",
                "Check DAYTONA_API_KEY (and DAYTONA_API_URL if you use a self-hosted Daytona).",
            ) from exc
        except DaytonaConnectionError as exc:
            raise DaytonaError(
                f"Could not reach Daytona at {self._settings.api_url} to {action}.",
                "Check your network and DAYTONA_API_URL, then try again.",
            ) from exc
        except DaytonaTimeoutError as exc:
            raise DaytonaError(f"Daytona timed out while trying to {action}.") from exc
        except SdkError as exc:
            quota = _quota_refusal(exc)
            if quota is not None:
                raise QuotaError(f"Daytona refused to {action}: {quota}") from exc
            unanswered = _unanswered(exc)
            if unanswered is not None:  # the request timeout _bound_requests set, inside the SDK's wrapping
                raise DaytonaError(f"{unanswered.message} while trying to {action}.", unanswered.hint) from exc
            if _unreachable(exc):
                raise DaytonaError(
                    f"Could not reach Daytona at {self._settings.api_url} to {action}.",
                    "Check your network and DAYTONA_API_URL, then try again.",
                ) from exc
            status = _status(exc)
            if status is not None and status >= 500:  # Daytona's own failure: the key and URL are fine
                raise DaytonaError(
                    f"Daytona failed (HTTP {status}) while trying to {action}: {_first_line(exc)}",
                    "This is on Daytona's side; try again in a minute. Nothing was lost here.",
                ) from exc
            raise DaytonaError(f"Could not {action}: {_first_line(exc)}") from exc
        except OSError as exc:
            raise DaytonaError(
                f"Could not reach Daytona at {self._settings.api_url} to {action} ({exc}).",
                "Check your network and DAYTONA_API_URL, then try again.",
            ) from exc

    def _retrying(self, action: str, call: Callable[[], T], sandbox_id: str | None = None) -> T:
        """Runs an idempotent call, retrying transient failures (5xx, timeouts, resets)."""
        for attempt, delay in enumerate((*RETRY_DELAYS, None)):
            try:
                with self._translate(action, sandbox_id):
                    return call()
            except DaytonaError as exc:
                if delay is None or not _transient(exc.__cause__):
                    raise
                del attempt
                time.sleep(delay)
        raise AssertionError("unreachable")

    # --- sandboxes ------------------------------------------------------------------

    def get(self, sandbox_id: str) -> Sandbox:
        return self._retrying("look up the sandbox", lambda: self.client.get(sandbox_id), sandbox_id)

    def handle(self, sandbox: Sandbox) -> str | None:
        """The sandbox's description as the SDK builds its handle from (`Daytona.get` hands
        it Daytona's answer), as JSON for the state file: None unless it is started. Its
        environment is left out (nothing of the sandbox's settings lands in a file), and so
        are the times that change on every look-up."""
        if _state_name(sandbox) != "started" or not getattr(sandbox, "toolbox_proxy_url", None):
            return None
        from daytona_api_client import Sandbox as SandboxDto

        fields = {name: getattr(sandbox, name, None) for name in SandboxDto.model_fields}
        fields["env"] = {}  # required by the SDK's model; the sandbox's own is never written down
        try:
            described = SandboxDto(**fields)
        except ValueError:  # an SDK whose sandboxes no longer fit their own description
            return None
        return described.model_dump_json(exclude_none=True, exclude=set(HANDLE_LEAVES_OUT))

    def from_handle(self, handle: str) -> Sandbox | None:
        """The SDK's handle on a sandbox, built from `handle` (see `handle`) as `Daytona.get`
        builds it from Daytona's answer, without a request: its toolbox client reaches the
        sandbox's toolbox as a looked-up one does. None when `handle` no longer describes a
        sandbox to this SDK."""
        from daytona import Sandbox as SdkSandbox
        from daytona.common.daytona import CODE_TOOLBOX_LANGUAGE_LABEL
        from daytona_api_client import Sandbox as SandboxDto

        try:
            described = SandboxDto.model_validate_json(handle)
        except ValueError:
            return None
        if not described.toolbox_proxy_url:
            return None  # the SDK would look its toolbox URL up: no request is spared
        client = self.client
        with self._translate("reach the sandbox", described.id):
            language = client._validate_language_label(described.labels.get(CODE_TOOLBOX_LANGUAGE_LABEL)).value
            return SdkSandbox(
                described,
                client._toolbox_api_client,
                client._sandbox_api,
                language,
                subscription_manager=client._subscription_manager,
                http_client=client._http_client,
                analytics_api_url_provider=client._get_analytics_api_url,
            )

    def create(
        self,
        *,
        labels: dict[str, str],
        env: dict[str, str],
        auto_stop_minutes: int,
        auto_delete_minutes: int,
        snapshot: str | None = None,
        secrets: dict[str, str] | None = None,
    ) -> Sandbox:
        from daytona import CreateSandboxFromSnapshotParams

        params: dict[str, Any] = {
            "labels": labels,
            "env_vars": env,
            "auto_stop_interval": auto_stop_minutes,
            "auto_delete_interval": auto_delete_minutes if auto_delete_minutes > 0 else -1,
        }
        if snapshot:
            params["snapshot"] = snapshot
        if secrets:
            params["secrets"] = secrets
        from daytona import DaytonaQueueTimeoutError, DaytonaTimeoutError

        try:
            with self._translate("create a sandbox"):
                return self.client.create(CreateSandboxFromSnapshotParams(**params), timeout=CREATE_TIMEOUT_S)
        except DaytonaError as exc:
            cause = exc.__cause__
            made = getattr(cause, "sandbox_id", None)
            if not isinstance(cause, DaytonaTimeoutError) or isinstance(cause, DaytonaQueueTimeoutError) or not made:
                raise
            # Daytona made the sandbox but it did not start in time (SDK 0.226): delete it
            # rather than leave an orphan nobody's state file names.
            try:
                with self._translate("delete the sandbox that did not start", made):
                    self.client.get(made).delete(timeout=60)
            except DaytonaError:
                raise DaytonaError(
                    f"Daytona did not start the new sandbox {made} within {CREATE_TIMEOUT_S} s, "
                    "and deleting it failed.",
                    f"Delete sandbox {made} in the Daytona dashboard, then try again.",
                ) from exc
            raise DaytonaError(
                f"Daytona did not start the new sandbox within {CREATE_TIMEOUT_S} s; it was deleted.",
                "Try again; if it keeps happening, Daytona may be short of runners (see its status page).",
            ) from exc

    def start(self, sandbox: Sandbox) -> None:
        """Starts (or resumes) the sandbox and waits until it is started. A change of state
        under way (409: stopping after auto-stop, another shell starting it) is waited out."""

        def start() -> None:
            if _state_name(sandbox) != "started":
                sandbox.start(timeout=300)

        if _state_name(sandbox) in ERRORED_STATES:
            raise _errored(sandbox)
        try:
            self._outwaiting("start the sandbox", sandbox, start, done=("started",))
        except DaytonaError as exc:
            if _state_name(sandbox) in ERRORED_STATES:  # Daytona's 400, "Sandbox is in an errored state"
                raise _errored(sandbox) from exc
            raise

    def stop(self, sandbox: Sandbox) -> None:
        """Stops the sandbox and waits until it is stopped; one already stopped (Daytona's 400
        "not in a stoppable state") or stopped meanwhile is fine."""
        self._outwaiting("stop the sandbox", sandbox, lambda: sandbox.stop(timeout=300), done=("stopped", "archived"))

    def _outwaiting(self, action: str, sandbox: Sandbox, call: Callable[[], None], done: tuple[str, ...]) -> None:
        """Makes a lifecycle call; while Daytona answers that a change of state is under way
        (409), or the sandbox is in a passing state, waits (up to STATE_CHANGE_WAIT_S) and
        tries again. Returns early once the sandbox is in one of the `done` states."""
        deadline = time.monotonic() + STATE_CHANGE_WAIT_S
        while True:
            try:
                with self._translate(action, sandbox.id):
                    if _state_name(sandbox) not in TRANSITIONAL_STATES:
                        call()
                        return
            except DaytonaError as exc:
                status = _status(exc.__cause__)
                if status not in (400, 409):
                    raise
                with self._translate("look up the sandbox", sandbox.id):
                    sandbox.refresh_data()
                if _state_name(sandbox) in done:
                    return
                if status == 400 and _state_name(sandbox) not in TRANSITIONAL_STATES:
                    raise
            if time.monotonic() > deadline:
                raise DaytonaError(
                    f"Could not {action}: sandbox {sandbox.id} is still {_state_name(sandbox)} "
                    f"after {STATE_CHANGE_WAIT_S:g} s.",
                    "Daytona is still changing its state; try again in a minute.",
                )
            time.sleep(STATE_POLL_S)
            with self._translate("look up the sandbox", sandbox.id):
                sandbox.refresh_data()
            if _state_name(sandbox) in done:
                return

    def pause(self, sandbox: Sandbox) -> None:
        """Freezes the sandbox's processes (state `paused`); `start` resumes them.
        RefusedError when Daytona cannot pause it (its class, or an API without pause)."""
        with self._refusable("pause the sandbox", sandbox.id):
            sandbox.pause(timeout=300)

    def fork(self, sandbox: Sandbox) -> Sandbox:
        """A started copy-on-write clone of the sandbox (files, env, labels; no processes).
        RefusedError when Daytona cannot fork it. Daytona forks one sandbox at a time: the
        source is `forking` meanwhile, so this waits until it is `started` again. A change of
        state under way (409: a stop asked for, by auto-stop say, not yet begun; or 400 while
        it passes through `stopping`) is waited out, and a sandbox it stopped is started again
        (Daytona forks only a started sandbox)."""
        deadline = time.monotonic() + STATE_CHANGE_WAIT_S
        while True:
            try:
                with self._refusable("fork the sandbox", sandbox.id):
                    forked = sandbox.fork(timeout=300)
                break
            except RefusedError:
                raise
            except DaytonaError as exc:
                status = _status(exc.__cause__)
                if status not in (400, 409) or time.monotonic() > deadline:
                    raise
                with self._translate("look up the sandbox", sandbox.id):
                    sandbox.refresh_data()
                if status == 400 and _state_name(sandbox) == "started":
                    raise  # refused for another reason than its state
            time.sleep(STATE_POLL_S)
            with self._translate("look up the sandbox", sandbox.id):
                sandbox.refresh_data()
            if _state_name(sandbox) not in (*TRANSITIONAL_STATES, "started"):
                self.start(sandbox)
        deadline = time.monotonic() + 120
        while _state_name(sandbox) != "started" and time.monotonic() < deadline:
            time.sleep(0.5)
            with self._translate("look up the sandbox", sandbox.id):
                sandbox.refresh_data()
        return forked

    def set_labels(self, sandbox: Sandbox, labels: dict[str, str]) -> None:
        with self._translate("label the sandbox", sandbox.id):
            sandbox.set_labels(labels)

    def ssh_access(self, sandbox: Sandbox, minutes: int) -> SshAccess:
        """A new SSH token for the sandbox, valid `minutes` (Daytona revokes the earlier ones)."""
        with self._refusable("create SSH access", sandbox.id):
            access = sandbox.create_ssh_access(expires_in_minutes=minutes)
        expires = access.expires_at
        return SshAccess(
            command=str(access.ssh_command),
            token=str(access.token),
            expires_at=expires.isoformat() if hasattr(expires, "isoformat") else str(expires),
        )

    def open_pty(self, sandbox: Sandbox, pty_id: str, cwd: str | None, rows: int, cols: int) -> Any:
        """An interactive shell on a terminal of rows x cols in the sandbox (Daytona's PTY
        sessions), connected: the SDK's PtyHandle."""
        from daytona.common.pty import PtySize

        for attempt in range(PTY_HANDSHAKE_TRIES):
            try:
                with self._translate("open a terminal in the sandbox", sandbox.id):
                    return sandbox.process.create_pty_session(pty_id, cwd=cwd, pty_size=PtySize(rows=rows, cols=cols))
            except DaytonaError as exc:
                # The SDK (0.226) waits 0.1 s for the daemon's "connected" message and takes
                # httpx-ws's queue.Empty for a failure (it catches TimeoutError): a daemon a
                # little slow to answer is no error. The terminal it made is closed, and made again.
                if attempt + 1 == PTY_HANDSHAKE_TRIES or not _handshake_gave_up(exc):
                    raise
                with contextlib.suppress(Exception):
                    sandbox.process.kill_pty_session(pty_id)
        raise AssertionError("unreachable")

    def resize_pty(self, sandbox: Sandbox, pty_id: str, rows: int, cols: int) -> None:
        from daytona.common.pty import PtySize

        with self._translate("resize the terminal"):
            sandbox.process.resize_pty_session(pty_id, PtySize(rows=rows, cols=cols))

    def kill_pty(self, sandbox: Sandbox, pty_id: str) -> None:
        with self._translate("close the terminal"):
            sandbox.process.kill_pty_session(pty_id)

    @contextmanager
    def _refusable(self, action: str, sandbox_id: str) -> Iterator[None]:
        """Like _translate, but a refusal is a RefusedError: 422 (a sandbox class that cannot
        do it), or 404/405 while the sandbox is still there (an API without the route)."""
        try:
            with self._translate(action):
                yield
        except DaytonaError as exc:
            status = _status(exc.__cause__)
            if status == 422 or (status in (404, 405) and self._exists(sandbox_id)):
                # The SDK glues its own prefix on ("Failed to pause sandboxPausing is not ...").
                detail = SDK_PREFIX.sub("", _first_line(exc.__cause__ or exc))
                raise RefusedError(f"Daytona cannot {action}: {detail}") from exc
            if status == 404:
                raise SandboxGoneError(f"Sandbox {sandbox_id} no longer exists on Daytona.") from exc
            raise

    def _exists(self, sandbox_id: str) -> bool:
        from daytona import DaytonaNotFoundError

        try:
            with self._translate("look up the sandbox"):
                self.client.get(sandbox_id)
        except DaytonaError as exc:
            return not isinstance(exc.__cause__, DaytonaNotFoundError)
        return True

    def delete(self, sandbox: Sandbox) -> None:
        """Deletes the sandbox; a change of state under way (409) is waited out first.
        HasForksError while sandboxes forked from it exist."""
        try:
            self._outwaiting("delete the sandbox", sandbox, lambda: sandbox.delete(timeout=300), done=())
        except DaytonaError as exc:
            if _status(exc.__cause__) == 400 and "fork children" in str(exc.__cause__):
                raise HasForksError(
                    f"Daytona cannot delete sandbox {sandbox.id} while sandboxes forked from it exist.",
                    "Delete its forks first (`codex-daytona down --others` deletes the fan-out sandboxes), "
                    "or stop it instead: `codex-daytona down --stop`.",
                ) from exc
            raise

    def list(self, labels: dict[str, str]) -> list[SandboxInfo]:
        from daytona import ListSandboxesQuery

        def call() -> list[SandboxInfo]:
            return [_info(s) for s in self.client.list(ListSandboxesQuery(labels=labels))]

        return self._retrying("list sandboxes", call)

    def info(self, sandbox: Sandbox) -> SandboxInfo:
        return _info(sandbox)

    def refresh_activity(self, sandbox: Sandbox) -> None:
        with self._translate("keep the sandbox active", sandbox.id):
            sandbox.refresh_activity()

    def set_auto_stop(self, sandbox: Sandbox, minutes: int) -> None:
        """Sets the minutes of inactivity after which Daytona stops the sandbox (0: never)."""
        with self._translate("change the sandbox's auto-stop", sandbox.id):
            sandbox.set_autostop_interval(minutes)

    def home_dir(self, sandbox: Sandbox) -> str:
        return self._retrying("read the sandbox's home directory", sandbox.get_user_home_dir, sandbox.id)

    # --- snapshots ------------------------------------------------------------------

    def snapshot_state(self, name: str) -> str | None:
        """The state of snapshot `name` ("active", "building", "inactive", ...), None when there is none.

        One request (`GET /api/snapshots/{name}`): `up` calls it before every create.
        """
        from daytona import DaytonaNotFoundError

        def call() -> str | None:
            try:
                snapshot = self.client.snapshot.get(name)
            except DaytonaNotFoundError:
                return None
            state = getattr(snapshot, "state", None)
            return str(getattr(state, "value", state) or "unknown")

        return self._retrying(f"look up snapshot {name}", call)

    def activate_snapshot(self, name: str) -> None:
        """Daytona deactivates snapshots nobody used for a while; this makes one usable again.
        One already active, or already being activated, is fine (the caller waits for it)."""
        from daytona_api_client.exceptions import ApiException

        try:
            with self._translate(f"activate snapshot {name}"):
                self.client.snapshot.activate(name)
        except ApiException as exc:  # SDK 0.226's activate passes the API client's errors on untranslated
            message = _api_message(exc)
            if exc.status == 400 and ("already active" in message or "in pending state" in message):
                return
            if exc.status == 400 and "deactivation is still in progress" in message:
                raise DaytonaError(
                    f"Daytona deactivated snapshot {name} only minutes ago and cannot activate it again yet.",
                    "Try again in 10 minutes (Daytona's wait after a deactivation).",
                ) from exc
            raise DaytonaError(f"Could not activate snapshot {name}: {message}") from exc

    def snapshot_sandbox(self, sandbox: Sandbox, name: str, timeout: int = 900) -> None:
        """Captures the sandbox's filesystem as snapshot `name`; waits until the sandbox is back."""
        with self._translate(f"save snapshot {name}", sandbox.id):
            sandbox.create_snapshot(name, timeout=timeout)

    def delete_snapshot(self, name: str) -> None:
        with self._translate(f"delete snapshot {name}"):
            self.client.snapshot.delete(name)

    # --- files and commands -----------------------------------------------------------

    def upload(self, sandbox: Sandbox, files: dict[str, bytes]) -> None:
        from daytona import FileUpload

        uploads = [FileUpload(source=data, destination=path) for path, data in files.items()]
        with self._translate("upload files to the sandbox", sandbox.id):
            sandbox.fs.upload_files(uploads)

    def upload_from(self, sandbox: Sandbox, files: dict[str, str | bytes]) -> None:
        """One upload request. A `str` source is a local file path, streamed from disk."""
        from daytona import FileUpload

        uploads = [FileUpload(source=source, destination=path) for path, source in files.items()]
        with self._translate("upload files to the sandbox", sandbox.id):
            sandbox.fs.upload_files(uploads, timeout=TRANSFER_TIMEOUT_S)

    def download_to(self, sandbox: Sandbox, remote_path: str, local_path: str) -> None:
        """Streams one sandbox file to a local file."""
        # No sandbox id: a missing file must not read as a deleted sandbox.
        with self._translate(f"download {remote_path} from the sandbox"):
            sandbox.fs.download_file(remote_path, local_path, TRANSFER_TIMEOUT_S)

    def exec(
        self, sandbox: Sandbox, command: str, timeout: int = 120, env: dict[str, str] | None = None
    ) -> CommandResult:
        """Runs a command through Daytona's process API and waits for it (and for every process
        holding its output). `env` reaches only that process's environment, never a file."""
        with self._translate("run a command in the sandbox", sandbox.id):
            response = sandbox.process.exec(command, env=env, timeout=timeout)
        return CommandResult(exit_code=int(response.exit_code or 0), output=response.result or "")

    def create_session(self, sandbox: Sandbox, session_id: str, *, exist_ok: bool = False) -> None:
        """Creates a session; with `exist_ok`, one that exists already (409) is fine, and a
        transient failure is tried again (_create_session_once)."""
        with self._translate("create a session in the sandbox", sandbox.id):
            if exist_ok:
                _create_session_once(sandbox, session_id)
            else:
                sandbox.process.create_session(session_id)

    def start_command(self, sandbox: Sandbox, session_id: str, command: str, *, new_session: bool = False) -> str:
        """Starts `command` asynchronously in the session and returns its id.

        A Daytona session is one shell that runs its commands one after another: the command
        starts once every earlier command of the session has ended. With `new_session` (the
        caller knows the session cannot exist yet: a fresh sandbox, one just started, a
        session name of its own) the session is created first, so no request fails. Else
        the command is tried, and the session made when Daytona says it is missing (sessions
        do not survive a restart): 404, or the 500 "failed to execute command: session not
        found" of Daytona's daemon, whose handler wraps the error. A session whose shell has
        died ("failed to write command") is made anew."""
        from daytona import SessionExecuteRequest

        # Input sent to the command is not echoed into its log (our commands take none).
        request = SessionExecuteRequest(command=command, run_async=True, suppress_input_echo=True)
        with self._translate("start a command in the sandbox", sandbox.id):
            if new_session:
                _create_session_once(sandbox, session_id)
            try:
                response = sandbox.process.execute_session_command(session_id, request)
            except Exception as exc:
                if _session_missing(exc):
                    sandbox.process.create_session(session_id)
                elif "failed to write command" in str(exc):
                    sandbox.process.delete_session(session_id)
                    sandbox.process.create_session(session_id)
                else:
                    raise
                response = sandbox.process.execute_session_command(session_id, request)
        if not response.cmd_id:
            raise DaytonaError("Daytona did not return a command id for the agent.")
        return str(response.cmd_id)

    def delete_session(self, sandbox: Sandbox, session_id: str) -> None:
        """Deletes a session: Daytona signals its shell and every process under it."""
        with self._translate("stop the command", sandbox.id):
            sandbox.process.delete_session(session_id)

    @contextmanager
    def _command_call(self, action: str) -> Iterator[None]:
        """Like _translate, but a 404 means the session or command is gone (CommandGoneError)."""
        from daytona import DaytonaNotFoundError

        try:
            with self._translate(action):
                yield
        except DaytonaError as exc:
            if isinstance(exc.__cause__, DaytonaNotFoundError):
                raise CommandGoneError(f"Could not {action}: the command is gone from the sandbox.") from exc
            raise

    def command_exit_code(self, sandbox: Sandbox, session_id: str, command_id: str) -> int | None:
        def call() -> int | None:
            with self._command_call("read a command's exit code"):
                command = sandbox.process.get_session_command(session_id, command_id)
            return None if command.exit_code is None else int(command.exit_code)

        return self._retrying("read a command's exit code", call)

    def command_logs(self, sandbox: Sandbox, session_id: str, command_id: str) -> tuple[str, str]:
        def call() -> tuple[str, str]:
            with self._command_call("read a command's output"):
                logs = sandbox.process.get_session_command_logs(session_id, command_id)
            return logs.stdout or "", logs.stderr or ""

        return self._retrying("read a command's output", call)

    def stream_logs(
        self,
        sandbox: Sandbox,
        session_id: str,
        command_id: str,
        on_stdout: Callable[[str], None],
        on_stderr: Callable[[str], None],
        *,
        timeout: float | None = None,
        keepalive_seconds: float | None = None,
        until: Callable[[], bool] | None = None,
        idle_timeout: float | None = None,
    ) -> bool:
        """Streams a command's output (from its first byte: Daytona replays the whole log on
        every connection) until the command ends, or until `until()` is true after a chunk of
        stdout; False when `timeout` ran out first.

        `until` lets a caller stop at an event of its own: Daytona closes the stream only
        about a second after the command has ended. Raises DaytonaError when the stream drops
        (close code other than 1000), CommandGoneError when the command is unknown. While it
        streams, `keepalive_seconds` (if set) refreshes the sandbox's activity so auto-stop
        does not stop it mid-turn. A stream that stays silent for `idle_timeout` seconds is
        taken for stalled: DaytonaError.

        Ctrl-C (SIGINT) ends the stream between two chunks and raises KeyboardInterrupt
        here, never inside the SDK: raised in the middle of one of the SDK's callbacks, it
        made the SDK hand the same chunk over again as it closed (the chunk leaves its
        buffer only after the callback returns), so an event was shown twice."""
        interrupted = threading.Event()

        async def main() -> bool:
            loop = asyncio.get_running_loop()
            stop = asyncio.Event()
            heard = [time.monotonic()]

            def on_sigint(signum: int, frame: object) -> None:
                interrupted.set()
                loop.call_soon_threadsafe(stop.set)

            def stdout(text: str) -> None:
                heard[0] = time.monotonic()
                on_stdout(text)
                if until is not None and until():
                    loop.call_soon_threadsafe(stop.set)

            def stderr(text: str) -> None:
                heard[0] = time.monotonic()
                on_stderr(text)

            async def watch_silence(limit: float) -> None:
                while time.monotonic() - heard[0] < limit:
                    await asyncio.sleep(min(1.0, limit / 4))
                raise DaytonaError(f"The log stream went silent for {limit:g} s.")

            async def follow() -> None:
                with self._command_call("stream a command's output"):
                    await sandbox.process.get_session_command_logs_async(session_id, command_id, stdout, stderr)

            async def keepalive(interval: float) -> None:
                while True:
                    await asyncio.sleep(interval)
                    with contextlib.suppress(DaytonaError):
                        await asyncio.to_thread(self.refresh_activity, sandbox)

            tasks = {asyncio.ensure_future(follow()), asyncio.ensure_future(stop.wait())}
            if idle_timeout:
                tasks.add(asyncio.ensure_future(watch_silence(idle_timeout)))
            ticker = asyncio.ensure_future(keepalive(keepalive_seconds)) if keepalive_seconds else None
            # Only where Python's own Ctrl-C handling is in force (the main thread, no handler
            # of the caller's): the stream then ends the way `until` ends it.
            takes_sigint = (
                threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler
            )
            previous = signal.signal(signal.SIGINT, on_sigint) if takes_sigint else None
            try:
                done, _ = await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if stop.is_set():
                    return True
                for task in done:
                    task.result()  # a dropped stream raises here
                return bool(done)
            finally:
                for task in (*tasks, *([ticker] if ticker else [])):
                    task.cancel()
                if previous is not None:
                    signal.signal(signal.SIGINT, previous)

        finished = _run_abandonable(main())
        if interrupted.is_set():
            raise KeyboardInterrupt
        return finished

    # --- previews -------------------------------------------------------------------

    def preview_link(self, sandbox: Sandbox, port: int) -> PreviewLink:
        def call() -> PreviewLink:
            link = sandbox.get_preview_link(port)
            return PreviewLink(port=port, url=link.url, token=getattr(link, "token", None) or None)

        return self._retrying(f"get the preview link for port {port}", call, sandbox.id)

    def signed_preview_link(self, sandbox: Sandbox, port: int, ttl_seconds: int) -> PreviewLink:
        def call() -> PreviewLink:
            link = sandbox.create_signed_preview_url(port, expires_in_seconds=ttl_seconds)
            return PreviewLink(port=port, url=link.url, token=None)

        return self._retrying(f"sign a preview link for port {port}", call, sandbox.id)


def _bound_requests(client: Daytona, seconds: float) -> None:
    """Every REST request the client makes (control plane and toolbox) gets a timeout: the
    SDK sends most with none, and one to a Daytona that accepts the connection and never
    answers would wait forever. A request the SDK gives a timeout of its own (a command's
    run time) keeps it. urllib3 retries no read that timed out (that would multiply the
    wait); it still retries connections refused or dropped before an answer."""
    import urllib3

    for api_client in (client._api_client, client._toolbox_api_client):
        rest = api_client.rest_client
        pool_kw = rest.pool_manager.connection_pool_kw
        retries = pool_kw.get("retries")
        pool_kw["retries"] = (retries if isinstance(retries, urllib3.Retry) else urllib3.Retry()).new(read=0)
        request = rest.request

        def bounded(*args: Any, _request: Any = request, _request_timeout: Any = None, **kwargs: Any) -> Any:
            try:
                return _request(*args, _request_timeout=_request_timeout or seconds, **kwargs)
            except (urllib3.exceptions.MaxRetryError, urllib3.exceptions.TimeoutError) as exc:
                reason = getattr(exc, "reason", exc)
                if not isinstance(reason, urllib3.exceptions.TimeoutError) or isinstance(
                    reason, urllib3.exceptions.NewConnectionError
                ):
                    raise
                waited = _request_timeout or seconds
                raise _Unanswered(
                    f"Daytona did not answer within {waited:g} s",
                    "Daytona may be down or overloaded: try again later "
                    "(CODEX_DAYTONA_REQUEST_TIMEOUT_SECONDS sets how long to wait).",
                ) from None

        rest.request = bounded  # type: ignore[method-assign]


class _DaemonThreadExecutor(concurrent.futures.ThreadPoolExecutor):
    """Runs each call on a daemon thread and never waits for it.

    The SDK reads its log WebSocket with a blocking receive() (no timeout) on an executor
    thread. A stream we stop (at the run's closing event, a timeout, Ctrl-C) cancels that
    await and closes the socket, but httpx_ws's close() does not wake a receive() already
    waiting on its queue: the thread would wait forever, holding the socket's session and,
    through the callbacks, the client and the sandbox. In one `ask` that only cost the exit
    (asyncio's default executor would hang it, which daemon threads avoid); in `batch`,
    `chat` and a fan-out, one such thread per turn made the process grow without bound. So
    `release()` wakes every call still blocked in a WebSocket receive() when its loop ends."""

    def __init__(self) -> None:
        super().__init__()
        self._running: set[Callable[..., Any]] = set()
        self._guard = threading.Lock()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def work() -> None:
            if not future.set_running_or_notify_cancel():
                return
            with self._guard:
                self._running.add(fn)
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)
            finally:
                with self._guard:
                    self._running.discard(fn)

        threading.Thread(target=work, daemon=True).start()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        return None

    def release(self) -> None:
        """Wakes the calls left blocked in a WebSocket's receive(): each raises, and its
        thread ends (nobody awaits it any more)."""
        with self._guard:
            calls = list(self._running)
        for call in calls:
            _wake_receive(call)


def _wake_receive(call: Callable[..., Any]) -> None:
    """If `call` is (asyncio.to_thread's wrapping of) a sync httpx_ws session's receive(),
    hands that receive() an error, as the session's reader does when the network fails."""
    target = call.args[0] if isinstance(call, functools.partial) and call.args else call
    session = getattr(target, "__self__", None)
    if getattr(target, "__name__", "") != "receive" or session is None:
        return
    try:
        import httpx_ws  # the SDK's WebSocket client (not a dependency of ours)
    except ImportError:
        return
    events = getattr(session, "_events", None)
    if isinstance(session, httpx_ws.WebSocketSession) and isinstance(events, queue.Queue):
        events.put(httpx_ws.WebSocketNetworkError())


def _run_abandonable(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, except that threads left blocked by cancelled work never block us, and
    those blocked in a WebSocket's receive() are woken to end."""
    loop = asyncio.new_event_loop()
    executor = _DaemonThreadExecutor()
    loop.set_default_executor(executor)
    task = loop.create_task(coro)
    try:
        return loop.run_until_complete(task)
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            loop.run_until_complete(asyncio.wait_for(asyncio.shield(task), 2.0))
        loop.close()
        executor.release()


def _api_message(exc: Any) -> str:
    """The `message` of an API client exception's JSON body (or its reason)."""
    try:
        return str(json.loads(exc.body or "")["message"])
    except (ValueError, KeyError, TypeError):
        return str(getattr(exc, "reason", None) or exc).strip()


# Daytona's organization quota (sandbox.service.ts validateOrganizationQuotas, a 400 on create,
# start and fork): "Total CPU limit exceeded. Maximum allowed: 10.\nTo increase ...", the SDK
# prefixing what it was doing ("Failed to create sandbox: ").
QUOTA_REFUSAL = re.compile(r"Total (CPU|memory|disk|GPU) limit exceeded\. Maximum allowed: [^\n]*")


def _quota_refusal(exc: BaseException) -> str | None:
    """The quota line of Daytona's refusal, or None when `exc` is not one."""
    if getattr(exc, "status_code", None) != 400:
        return None
    found = QUOTA_REFUSAL.search(str(exc))
    return found.group(0) if found else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


UNREACHABLE_MARKERS = (
    "Connection refused",
    "Name or service not known",
    "Temporary failure in name resolution",
    "NewConnectionError",
    "Cannot connect to host",
    "Network is unreachable",
)


class _Unanswered(DaytonaError):
    """A request Daytona did not answer within the request timeout (see _bound_requests)."""


def _unanswered(exc: BaseException) -> DaytonaError | None:
    """The error _bound_requests raised for a request Daytona did not answer in time, when
    the SDK wrapped it in one of its own (whose message and hint would hide what to do)."""
    seen: BaseException | None = exc.__cause__ or exc.__context__
    while seen is not None:
        if isinstance(seen, _Unanswered):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _unreachable(exc: BaseException) -> bool:
    """True when the SDK wrapped a connection failure in a generic error."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionError) or any(m in str(seen) for m in UNREACHABLE_MARKERS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _session_missing(exc: BaseException) -> bool:
    """Daytona's answer to a command sent to a session it does not have: 404 by the SDK's
    contract, 500 "failed to execute command: session not found" from the daemon's source."""
    return _status(exc) == 404 or "session not found" in str(exc)


def _create_session_once(sandbox: Any, session_id: str) -> None:
    """Creates the session; one that already exists (409) is fine. So a transient failure
    (5xx, a dropped connection) is tried again: a try whose session was made but whose answer
    was lost is the next try's 409. (It is the first request of an ask that makes its session,
    where a look-up, retried the same way, used to come first.)"""
    for delay in (*RETRY_DELAYS, None):
        try:
            sandbox.process.create_session(session_id)
            return
        except Exception as exc:
            if _status(exc) == 409:
                return
            if delay is None or not _transient(exc):
                raise
            time.sleep(delay)


def _errored(sandbox: Sandbox) -> DaytonaError:
    return DaytonaError(
        f"Sandbox {sandbox.id} is in Daytona's {_state_name(sandbox)} state: Daytona will not start it again.",
        "Delete it and make a new one: codex-daytona down --yes, then codex-daytona up "
        "(its files and the thread are lost with it).",
    )


def _handshake_gave_up(exc: BaseException) -> bool:
    """Whether the SDK's PTY handshake gave up because the first message took over its 0.1 s
    (queue.Empty from httpx-ws, somewhere in the chain)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, queue.Empty):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _status(exc: BaseException | None) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def _transient(exc: BaseException | None) -> bool:
    if exc is None:
        return False
    from daytona import (
        DaytonaBadGatewayError,
        DaytonaConnectionError,
        DaytonaInternalServerError,
        DaytonaRateLimitError,
        DaytonaServiceUnavailableError,
    )

    if isinstance(
        exc,
        DaytonaServiceUnavailableError | DaytonaBadGatewayError | DaytonaInternalServerError | DaytonaRateLimitError,
    ):
        return True  # 429 too: the calls _retrying makes are safe to repeat, and it backs off
    if isinstance(exc, DaytonaConnectionError | ConnectionError) or _unreachable(exc):
        return True
    status = getattr(exc, "status_code", None)
    return isinstance(status, int) and status >= 500
