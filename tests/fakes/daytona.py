"""A local emulator of the Daytona cloud API, for tests.

The unmodified ``daytona`` SDK (0.226.1) talks to it: point ``DaytonaConfig(api_url=...)`` at
``http://127.0.0.1:PORT/api``. Sandboxes are directories (``ROOT/sandboxes/<id>/home``) and
commands run as real local processes (``bash -c COMMAND``) with a clean environment.

Wire protocol: ``/work/shared/notes/daytona-sdk-wire.md``. URL layout:

- ``/api/...``                       control plane (Bearer auth)
- ``/toolbox/{sandboxId}/...``       toolbox (Bearer auth); ``toolboxProxyUrl`` points here
- ``/preview/{port}-{id|signed}/...`` preview proxy to ``127.0.0.1:{port}`` inside the "sandbox"
- ``/_emulator/...``                 test controls (no auth): faults, config, sandboxes, snapshots

Run standalone with ``python -m tests.fakes.daytona --port 0 --root DIR --api-key KEY``; the
first line on stdout is the API URL. In pytest use :class:`DaytonaEmulator`.

Limitations: each session command is its own ``bash -c`` process (``cd``/``export`` do not
carry over between commands of a session as they would in a real Daytona session shell);
snapshots built from an image start with an empty home (the Dockerfile is only stored);
snapshot trees are hard-linked, so editing a file *in place* inside a sandbox also changes
the snapshot (tools that replace files, like pip, are fine), except that a snapshot taken
from a sandbox, and the sandboxes made from it, get their own copies of all files but big
executables and libraries.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import signal
import stat
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ORG_ID = "emulator-org"
SANDBOX_USER = "daytona"
DEFAULT_AUTO_STOP_MINUTES = 15
STDOUT_MARK = b"\x01\x01\x01"
STDERR_MARK = b"\x02\x02\x02"
PIPE_DRAIN_SECONDS = 0.3
KILL_GRACE_SECONDS = 1.0
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "x-daytona-preview-token",
    }
)
ERROR_SOURCES = {"api": "DAYTONA_API", "toolbox": "DAYTONA_DAEMON"}
PREVIEW_TARGET = re.compile(r"^(\d+)-(.+)$")
PREVIEW_HOST = re.compile(r"^(\d+)-([^.]+)\.preview\.localhost(:\d+)?$")


def iso_now() -> str:
    """Current UTC time the way Daytona formats it."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ApiError(Exception):
    """An error answered as Daytona's JSON error shape."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or {
            400: "BAD_REQUEST",
            401: "UNAUTHORIZED",
            404: "NOT_FOUND",
            408: "REQUEST_TIMEOUT",
            409: "CONFLICT",
            410: "GONE",
            503: "SERVICE_UNAVAILABLE",
        }.get(status, "ERROR")


def json_error(status: int, message: str, code: str | None = None, source: str | None = None) -> web.Response:
    """Daytona's error body; ``source`` (DAYTONA_API / DAYTONA_DAEMON) picks the SDK's precise error class."""
    err = ApiError(status, message, code)
    body: dict[str, Any] = {"message": err.message, "code": err.code, "statusCode": status}
    if source:
        body["source"] = source
    return web.json_response(body, status=status)


# ---------------------------------------------------------------------------------------------
# Files and processes


# A snapshot taken from a sandbox links only its big binaries and libraries (nobody edits them
# in place) and copies every other file, so that files edited in place (logs, Codex's SQLite
# databases) stay private to each sandbox made from it, as on Daytona.
LINK_BINARIES_FROM = 1 << 20


def _linkable(path: Path, binaries_from: int) -> bool:
    if not binaries_from:
        return True
    st = path.stat()
    return st.st_size >= binaries_from and (bool(st.st_mode & 0o111) or ".so" in path.name)


def link_copy_tree(src: Path, dst: Path, link: bool = True, binaries_from: int = 0) -> None:
    """Copy a tree cheaply: hard links for files (copy2 across filesystems, if not ``link``, or,
    with ``binaries_from``, for all but executables and libraries of at least that many bytes)."""
    can_link = link
    dst.mkdir(parents=True, exist_ok=True)
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        target_dir = dst / rel
        for name in list(dirnames):
            s = Path(dirpath) / name
            if s.is_symlink():  # os.walk does not descend into dir symlinks: recreate them
                os.symlink(os.readlink(s), target_dir / name)
                dirnames.remove(name)
            else:
                (target_dir / name).mkdir(exist_ok=True)
                shutil.copymode(s, target_dir / name)
        for name in filenames:
            s, d = Path(dirpath) / name, target_dir / name
            if s.is_symlink():
                os.symlink(os.readlink(s), d)
                continue
            if can_link and _linkable(s, binaries_from):
                try:
                    os.link(s, d)
                    continue
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                        raise
                    can_link = exc.errno != errno.EXDEV
            shutil.copy2(s, d)


def _read_proc(pid: int, name: str) -> bytes | None:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read()
    except OSError:
        return None


def find_sandbox_pids(sandbox_id: str, pgids: set[int]) -> set[int]:
    """Live processes of a sandbox: members of its process groups or carrying its id in environ."""
    marker = f"DAYTONA_SANDBOX_ID={sandbox_id}".encode()
    me = os.getpid()
    pgids = pgids - {os.getpgid(0)}  # never our own group, whatever happens to pid reuse
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        raw = _read_proc(pid, "stat")
        if raw is None:
            continue
        fields = raw[raw.rfind(b")") + 2 :].split()
        if not fields or fields[0] == b"Z":
            continue
        if int(fields[2]) in pgids:
            found.add(pid)
            continue
        environ = _read_proc(pid, "environ")
        if environ and marker in environ.split(b"\0"):
            found.add(pid)
    return found


async def kill_sandbox_processes(sandbox_id: str, pgids: set[int]) -> None:
    """SIGTERM every process of the sandbox, then SIGKILL what is left after a grace period."""
    deadline = time.monotonic() + KILL_GRACE_SECONDS
    sig = signal.SIGTERM
    while True:
        pids = find_sandbox_pids(sandbox_id, pgids)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        if sig == signal.SIGKILL:
            await asyncio.sleep(0.05)
            if not find_sandbox_pids(sandbox_id, pgids):
                return
        await asyncio.sleep(0.05)
        if time.monotonic() > deadline:
            sig = signal.SIGKILL
        if time.monotonic() > deadline + 3:
            return


def exit_status(returncode: int) -> int:
    """Shell-style exit status: 128+N for a process killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


# ---------------------------------------------------------------------------------------------
# State


@dataclass
class Command:
    """One command run in a session; its output is kept in order as (stream, bytes) chunks."""

    id: str
    session_id: str | None
    command: str
    proc: asyncio.subprocess.Process | None = None
    exit_code: int | None = None
    chunks: list[tuple[int, bytes]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def append(self, stream: int, data: bytes) -> None:
        self.chunks.append((stream, data))
        self.notify()

    def notify(self) -> None:
        """Wake everyone waiting on :attr:`changed` and arm a fresh event."""
        self.changed.set()
        self.changed = asyncio.Event()

    def text(self, stream: int | None = None) -> str:
        data = b"".join(d for s, d in self.chunks if stream is None or s == stream)
        return data.decode("utf-8", "replace")

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "command": self.command, "exitCode": self.exit_code}


@dataclass
class Session:
    id: str
    commands: dict[str, Command] = field(default_factory=dict)


@dataclass
class Sandbox:
    id: str
    name: str
    dir: Path
    env: dict[str, str]
    labels: dict[str, str]
    public: bool
    target: str
    snapshot: str | None
    preview_token: str
    cpu: int = 1
    gpu: int = 0
    memory: int = 1
    disk: int = 3
    state: str = "started"
    auto_stop_interval: int = DEFAULT_AUTO_STOP_MINUTES
    auto_archive_interval: int = 10080
    auto_delete_interval: int = -1
    volumes: list[dict[str, Any]] = field(default_factory=list)
    build_info: dict[str, Any] | None = None
    secrets: list[dict[str, str]] = field(default_factory=list)
    created_at: str = field(default_factory=iso_now)
    updated_at: str = field(default_factory=iso_now)
    last_activity_at: str = field(default_factory=iso_now)
    last_activity: float = field(default_factory=time.monotonic)
    sessions: dict[str, Session] = field(default_factory=dict)
    history: list[Command] = field(default_factory=list)
    pgids: set[int] = field(default_factory=set)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.dir / "home"

    def touch(self) -> None:
        self.last_activity = time.monotonic()
        self.last_activity_at = iso_now()

    def to_json(self, toolbox_url: str) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "organizationId": ORG_ID,
            "name": self.name,
            "snapshot": self.snapshot,
            "user": SANDBOX_USER,
            "env": dict(self.env),
            "labels": dict(self.labels),
            "public": self.public,
            "networkBlockAll": False,
            "kvm": False,
            "target": self.target,
            "cpu": self.cpu,
            "gpu": self.gpu,
            "memory": self.memory,
            "disk": self.disk,
            "state": self.state,
            "errorReason": None,
            "autoStopInterval": self.auto_stop_interval,
            "autoArchiveInterval": self.auto_archive_interval,
            "autoDeleteInterval": self.auto_delete_interval,
            "volumes": self.volumes,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            "lastActivityAt": self.last_activity_at,
            "toolboxProxyUrl": toolbox_url,
        }
        if self.build_info:
            data["buildInfo"] = self.build_info
        return data

    def to_emulator_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "dir": str(self.dir),
            "home": str(self.home),
            "labels": dict(self.labels),
            "env": dict(self.env),
            "secrets": self.secrets,
            "autoStopInterval": self.auto_stop_interval,
            "autoArchiveInterval": self.auto_archive_interval,
            "autoDeleteInterval": self.auto_delete_interval,
            "public": self.public,
            "snapshot": self.snapshot,
            "previewToken": self.preview_token,
            "sessions": sorted(self.sessions),
        }


@dataclass
class Snapshot:
    id: str
    name: str
    dir: Path
    image_name: str | None = None
    dockerfile: str | None = None
    context_hashes: list[str] | None = None
    source_sandbox_id: str | None = None
    source_dir: str | None = None
    state: str = "active"
    created_at: str = field(default_factory=iso_now)

    def to_json(self) -> dict[str, Any]:
        build_info = None
        if self.dockerfile is not None:
            build_info = {
                "dockerfileContent": self.dockerfile,
                "contextHashes": self.context_hashes or [],
                "createdAt": self.created_at,
                "updatedAt": self.created_at,
                "snapshotRef": f"emulator/{self.id}",
            }
        return {
            "id": self.id,
            "organizationId": ORG_ID,
            "general": False,
            "name": self.name,
            "imageName": self.image_name,
            "state": self.state,
            "size": None,
            "entrypoint": None,
            "cpu": 1,
            "gpu": 0,
            "mem": 1,
            "disk": 3,
            "errorReason": None,
            "createdAt": self.created_at,
            "updatedAt": self.created_at,
            "lastUsedAt": None,
            "buildInfo": build_info,
            "ref": f"emulator/{self.id}",
            "sourceSandboxId": self.source_sandbox_id,
        }

    def to_emulator_json(self) -> dict[str, Any]:
        return {
            **self.to_json(),
            "dir": str(self.dir),
            "dockerfile": self.dockerfile,
            "sourceDir": self.source_dir,
        }


@dataclass
class SignedUrl:
    token: str
    sandbox_id: str
    port: int
    expires_at: float
    expired: bool = False

    def valid(self) -> bool:
        return not self.expired and time.time() < self.expires_at


@dataclass
class Faults:
    """Fault injection, changed at run time through ``POST /_emulator/faults``."""

    fail_next: int = 0
    drop_log_streams: int = 0
    # Where a dropped stream is cut: after this many bytes of log (0: after the first chunk).
    drop_after_bytes: int = 0
    latency_ms: int = 0

    def to_json(self) -> dict[str, int]:
        return {
            "fail_next": self.fail_next,
            "drop_log_streams": self.drop_log_streams,
            "drop_after_bytes": self.drop_after_bytes,
            "latency_ms": self.latency_ms,
        }


# ---------------------------------------------------------------------------------------------
# The server


class EmulatorServer:
    """All state and handlers; lives on one asyncio loop."""

    def __init__(self, root: Path, api_key: str, log_path: Path | None = None) -> None:
        self.root = Path(root)
        self.api_key = api_key
        self.log_path = log_path
        self.sandboxes: dict[str, Sandbox] = {}
        self.snapshots: dict[str, Snapshot] = {}
        self.signed_urls: dict[str, SignedUrl] = {}
        self.faults = Faults()
        self.config: dict[str, Any] = {"autostop_seconds_per_minute": 0}
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        self._log_file: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._autostop_task: asyncio.Task[None] | None = None

    # -- URLs ------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api"

    @property
    def toolbox_url(self) -> str:
        return f"{self.base_url}/toolbox"

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, port: int = 0, host: str = "127.0.0.1") -> int:
        (self.root / "sandboxes").mkdir(parents=True, exist_ok=True)
        (self.root / "snapshots").mkdir(parents=True, exist_ok=True)
        if self.log_path is not None:
            self._log_file = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115
        self._client = aiohttp.ClientSession(auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar())
        app = web.Application(middlewares=[self._middleware], client_max_size=1024**3)
        self._add_routes(app)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self._autostop_task = asyncio.create_task(self._autostop_loop())
        return self.port

    async def shutdown(self) -> None:
        """Kill every sandbox process and stop serving."""
        if self._autostop_task:
            self._autostop_task.cancel()
        await asyncio.gather(
            *(kill_sandbox_processes(sb.id, sb.pgids) for sb in self.sandboxes.values()),
            return_exceptions=True,
        )
        if self._runner is not None:
            await self._runner.cleanup()
        if self._client is not None:
            await self._client.close()
        for task in list(self._tasks):
            task.cancel()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _spawn_task(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- middleware: auth, faults, latency, activity, JSON errors, request log ---------------

    @staticmethod
    def _kind(path: str) -> str:
        if path.startswith("/api/socket.io"):
            return "socketio"
        for prefix in ("api", "toolbox", "_emulator", "preview"):
            if path == f"/{prefix}" or path.startswith(f"/{prefix}/"):
                return prefix
        return "other"

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        host_match = PREVIEW_HOST.match(request.headers.get("Host", ""))
        if host_match:
            return await self._preview(request, int(host_match[1]), host_match[2], request.path.lstrip("/"))
        kind = self._kind(request.path)
        started = time.monotonic()
        status = 500
        try:
            response = await self._guarded(request, handler, kind)
            status = response.status
            if isinstance(response, web.WebSocketResponse) and kind == "toolbox":
                kind = "ws"
            return response
        finally:
            if kind in ("api", "toolbox", "ws", "socketio", "other"):
                self._log(request, status, started, kind)

    async def _guarded(self, request: web.Request, handler: Handler, kind: str) -> web.StreamResponse:
        try:
            if kind in ("api", "toolbox"):
                self._check_auth(request)
                if self.faults.latency_ms:
                    await asyncio.sleep(self.faults.latency_ms / 1000)
                if self.faults.fail_next > 0:
                    self.faults.fail_next -= 1
                    raise ApiError(503, "Emulator fault: service unavailable")
                self._record_activity(request.path, kind)
            return await handler(request)
        except ApiError as exc:
            return json_error(exc.status, exc.message, exc.code, ERROR_SOURCES.get(kind))
        except web.HTTPException as exc:
            if kind in ("api", "toolbox", "_emulator", "socketio"):
                return json_error(exc.status, exc.reason, None, ERROR_SOURCES.get(kind))
            raise

    def _check_auth(self, request: web.Request) -> None:
        if request.headers.get("Authorization", "") != f"Bearer {self.api_key}":
            raise ApiError(401, "Invalid credentials")

    def _record_activity(self, path: str, kind: str) -> None:
        parts = path.split("/")
        key = None
        if kind == "toolbox" and len(parts) > 2:
            key = parts[2]
        elif kind == "api" and len(parts) > 3 and parts[2] == "sandbox":
            key = parts[3]
        if key:
            sb = self._find_sandbox(key)
            if sb is not None and sb.state == "started":
                sb.touch()

    def _log(self, request: web.Request, status: int, started: float, kind: str) -> None:
        if self._log_file is None:
            return
        entry = {
            "ts": round(time.time(), 3),
            "method": request.method,
            "path": request.path,
            "status": status,
            "duration_ms": round((time.monotonic() - started) * 1000, 1),
            "kind": kind,
        }
        self._log_file.write(json.dumps(entry) + "\n")
        self._log_file.flush()

    # -- routes ----------------------------------------------------------------------------

    def _add_routes(self, app: web.Application) -> None:
        sb = "/api/sandbox/{sid}"
        tb = "/toolbox/{sid}"
        ses = tb + "/process/session/{session}"
        cmd = ses + "/command/{cid}"
        app.router.add_route("*", "/api/socket.io/", self._socketio)
        app.router.add_route("*", "/api/socket.io", self._socketio)
        app.add_routes(
            [
                web.post("/api/sandbox", self._create_sandbox),
                web.get("/api/sandbox", self._list_sandboxes),
                web.get(sb, self._get_sandbox),
                web.delete(sb, self._delete_sandbox),
                web.post(sb + "/start", self._start_sandbox),
                web.post(sb + "/stop", self._stop_sandbox),
                web.post(sb + "/last-activity", self._last_activity),
                web.post(sb + "/autostop/{interval}", self._set_interval),
                web.post(sb + "/autoarchive/{interval}", self._set_interval),
                web.post(sb + "/autodelete/{interval}", self._set_interval),
                web.post(sb + "/public/{public}", self._set_public),
                web.put(sb + "/labels", self._set_labels),
                web.get(sb + "/toolbox-proxy-url", self._toolbox_proxy_url),
                web.get(sb + "/ports/{port}/preview-url", self._preview_url),
                web.get(sb + "/ports/{port}/signed-preview-url", self._signed_preview_url),
                web.post(sb + "/ports/{port}/signed-preview-url/{token}/expire", self._expire_signed_url),
                web.post(sb + "/snapshot", self._snapshot_sandbox),
                web.post("/api/snapshots", self._create_snapshot),
                web.get("/api/snapshots", self._list_snapshots),
                web.get("/api/snapshots/{snap}", self._get_snapshot),
                web.delete("/api/snapshots/{snap}", self._delete_snapshot),
                web.post("/api/snapshots/{snap}/activate", self._get_snapshot),
                web.get("/api/snapshots/{snap}/build-logs-url", self._snapshot_build_logs_url),
                web.get("/api/snapshots/{snap}/build-logs", self._snapshot_build_logs),
                web.get(tb + "/user-home-dir", self._home_dir),
                web.get(tb + "/work-dir", self._home_dir),
                web.get(tb + "/version", self._version),
                web.post(tb + "/files/folder", self._create_folder),
                web.post(tb + "/files/bulk-upload", self._bulk_upload),
                web.post(tb + "/files/bulk-download", self._bulk_download),
                web.get(tb + "/files/download", self._download),
                web.get(tb + "/files/info", self._file_info),
                web.get(tb + "/files", self._list_files),
                web.delete(tb + "/files", self._delete_file),
                web.post(tb + "/process/execute", self._execute),
                web.post(tb + "/process/session", self._create_session),
                web.get(tb + "/process/session", self._list_sessions),
                web.get(ses, self._get_session),
                web.delete(ses, self._delete_session),
                web.post(ses + "/exec", self._session_exec),
                web.get(cmd, self._get_command),
                web.get(cmd + "/logs", self._command_logs),
                web.post(cmd + "/input", self._command_input),
                web.route("*", "/preview/{target}", self._preview_route),
                web.route("*", "/preview/{target}/{tail:.*}", self._preview_route),
                web.get("/_emulator/faults", self._get_faults),
                web.post("/_emulator/faults", self._post_faults),
                web.get("/_emulator/config", self._get_config),
                web.post("/_emulator/config", self._post_config),
                web.get("/_emulator/sandboxes", self._emu_sandboxes),
                web.get("/_emulator/sandboxes/{sid}/commands", self._emu_commands),
                web.get("/_emulator/snapshots", self._emu_snapshots),
                web.post("/_emulator/snapshots", self._emu_add_snapshot),
            ]
        )

    # -- helpers ---------------------------------------------------------------------------

    @staticmethod
    async def _json_body(request: web.Request) -> dict[str, Any]:
        if not request.can_read_body:
            return {}
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"Invalid JSON body: {exc}") from exc
        if not isinstance(body, dict):
            raise ApiError(400, "JSON body must be an object")
        return body

    def _find_sandbox(self, id_or_name: str) -> Sandbox | None:
        sb = self.sandboxes.get(id_or_name)
        if sb is None:
            sb = next((s for s in self.sandboxes.values() if s.name == id_or_name and s.state != "destroyed"), None)
        if sb is None or sb.state == "destroyed":
            return None
        return sb

    def _sandbox(self, request: web.Request) -> Sandbox:
        sb = self._find_sandbox(request.match_info["sid"])
        if sb is None:
            raise ApiError(404, f"Sandbox with ID or name {request.match_info['sid']} not found")
        return sb

    def _running_sandbox(self, request: web.Request) -> Sandbox:
        sb = self._sandbox(request)
        if sb.state != "started":
            raise ApiError(409, f"Sandbox {sb.id} is not started (state: {sb.state})")
        return sb

    def _sandbox_response(self, sb: Sandbox) -> web.Response:
        return web.json_response(sb.to_json(self.toolbox_url))

    def _find_snapshot(self, id_or_name: str) -> Snapshot | None:
        snap = self.snapshots.get(id_or_name)
        return snap or next((s for s in self.snapshots.values() if s.name == id_or_name), None)

    @staticmethod
    def _resolve(sb: Sandbox, path: str | None) -> Path:
        """A sandbox path: absolute paths are host paths, relative ones are under the home dir."""
        if not path:
            return sb.home
        if path == "~" or path.startswith("~/"):
            return sb.home / path[2:]
        p = Path(path)
        return p if p.is_absolute() else sb.home / p

    def _process_env(self, sb: Sandbox, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: os.environ[k] for k in ("PATH", "LANG") if k in os.environ}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env["HOME"] = str(sb.home)
        env.update(sb.env)
        for mapping in sb.secrets:  # real Daytona sets an opaque placeholder, never the plaintext
            env.update({var: f"daytona-secret-placeholder:{name}" for var, name in mapping.items()})
        env.update(extra or {})
        env["DAYTONA_SANDBOX_ID"] = sb.id
        env["DAYTONA_SANDBOX_USER"] = SANDBOX_USER
        return env

    async def _spawn(
        self, sb: Sandbox, command: str, cwd: str | None, envs: dict[str, str] | None, *, interactive: bool
    ) -> asyncio.subprocess.Process:
        workdir = self._resolve(sb, cwd)
        if not workdir.is_dir():
            raise ApiError(400, f"Working directory {workdir} does not exist")
        pipe = asyncio.subprocess.PIPE
        proc = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            command,
            cwd=workdir,
            env=self._process_env(sb, envs),
            stdin=pipe if interactive else asyncio.subprocess.DEVNULL,
            stdout=pipe,
            stderr=pipe if interactive else asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        sb.pgids.add(proc.pid)
        return proc

    async def _stop_processes(self, sb: Sandbox) -> None:
        await kill_sandbox_processes(sb.id, sb.pgids)
        sb.pgids.clear()
        sb.sessions.clear()

    # -- control plane ---------------------------------------------------------------------

    async def _socketio(self, request: web.Request) -> web.StreamResponse:
        raise ApiError(404, "Socket.IO is not supported by the emulator; the SDK falls back to polling")

    async def _create_sandbox(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        sid = str(uuid.uuid4())
        name = body.get("name") or sid
        if self._find_sandbox(name) is not None:
            raise ApiError(409, f"Sandbox with name {name} already exists")
        snapshot = self._find_snapshot(body["snapshot"]) if body.get("snapshot") else None
        if body.get("snapshot") and snapshot is None:
            raise ApiError(404, f"Snapshot {body['snapshot']} not found")
        if snapshot is not None and snapshot.state != "active":
            raise ApiError(400, f"Snapshot {snapshot.name} is not active")
        sb = Sandbox(
            id=sid,
            name=name,
            dir=self.root / "sandboxes" / sid,
            env={str(k): str(v) for k, v in (body.get("env") or {}).items()},
            labels={str(k): str(v) for k, v in (body.get("labels") or {}).items()},
            public=bool(body.get("public", False)),
            target=body.get("target") or "us",
            snapshot=snapshot.name if snapshot else None,
            preview_token=secrets.token_urlsafe(24),
            cpu=int(body.get("cpu") or 1),
            gpu=int(body.get("gpu") or 0),
            memory=int(body.get("memory") or 1),
            disk=int(body.get("disk") or 3),
            volumes=list(body.get("volumes") or []),
            secrets=list(body.get("secrets") or []),
        )
        for key, attr in (
            ("autoStopInterval", "auto_stop_interval"),
            ("autoArchiveInterval", "auto_archive_interval"),
            ("autoDeleteInterval", "auto_delete_interval"),
        ):
            if body.get(key) is not None:
                setattr(sb, attr, int(body[key]))
        if body.get("buildInfo"):
            now = iso_now()
            sb.build_info = {
                "dockerfileContent": body["buildInfo"].get("dockerfileContent"),
                "contextHashes": body["buildInfo"].get("contextHashes") or [],
                "createdAt": now,
                "updatedAt": now,
                "snapshotRef": f"emulator/{sid}",
            }
        sb.extra = {k: v for k, v in body.items() if k not in ("env", "labels")}
        if snapshot is not None:
            binaries_from = LINK_BINARIES_FROM if snapshot.source_sandbox_id else 0
            await asyncio.to_thread(link_copy_tree, snapshot.dir, sb.home, True, binaries_from)
        else:
            sb.home.mkdir(parents=True)
        self.sandboxes[sid] = sb
        return self._sandbox_response(sb)

    async def _list_sandboxes(self, request: web.Request) -> web.Response:
        labels: dict[str, str] = {}
        if request.query.get("labels"):
            try:
                labels = json.loads(request.query["labels"])
            except json.JSONDecodeError as exc:
                raise ApiError(400, f"labels must be JSON: {exc}") from exc
        states = {s for v in request.query.getall("states", []) for s in v.split(",") if s}
        name = request.query.get("name")
        items = [
            sb.to_json(self.toolbox_url)
            for sb in self.sandboxes.values()
            if sb.state != "destroyed"
            and all(sb.labels.get(k) == str(v) for k, v in labels.items())
            and (not states or sb.state in states)
            and (not name or name in sb.name)
        ]
        return web.json_response({"items": items, "nextCursor": None})

    async def _get_sandbox(self, request: web.Request) -> web.Response:
        return self._sandbox_response(self._sandbox(request))

    async def _start_sandbox(self, request: web.Request) -> web.Response:
        sb = self._sandbox(request)
        sb.state = "started"
        sb.updated_at = iso_now()
        sb.touch()
        return self._sandbox_response(sb)

    async def stop_sandbox(self, sb: Sandbox) -> None:
        """Stop like Daytona: processes die, files stay."""
        await self._stop_processes(sb)
        sb.state = "stopped"
        sb.updated_at = iso_now()

    async def _stop_sandbox(self, request: web.Request) -> web.Response:
        sb = self._sandbox(request)
        await self.stop_sandbox(sb)
        return self._sandbox_response(sb)

    async def _delete_sandbox(self, request: web.Request) -> web.Response:
        sb = self._sandbox(request)
        await self._stop_processes(sb)
        await asyncio.to_thread(shutil.rmtree, sb.dir, True)
        sb.state = "destroyed"
        sb.updated_at = iso_now()
        return self._sandbox_response(sb)

    async def _last_activity(self, request: web.Request) -> web.Response:
        self._sandbox(request).touch()
        return web.Response(status=201)

    async def _set_interval(self, request: web.Request) -> web.Response:
        sb = self._sandbox(request)
        attr = {
            "autostop": "auto_stop_interval",
            "autoarchive": "auto_archive_interval",
            "autodelete": "auto_delete_interval",
        }[request.path.rstrip("/").split("/")[-2]]
        try:
            setattr(sb, attr, int(request.match_info["interval"]))
        except ValueError as exc:
            raise ApiError(400, "interval must be an integer") from exc
        return self._sandbox_response(sb)

    async def _set_public(self, request: web.Request) -> web.Response:
        sb = self._sandbox(request)
        sb.public = request.match_info["public"].lower() == "true"
        return self._sandbox_response(sb)

    async def _set_labels(self, request: web.Request) -> web.Response:
        sb = self._sandbox(request)
        body = await self._json_body(request)
        sb.labels = {str(k): str(v) for k, v in (body.get("labels") or {}).items()}
        return web.json_response({"labels": sb.labels})

    async def _toolbox_proxy_url(self, request: web.Request) -> web.Response:
        self._sandbox(request)
        return web.json_response({"url": self.toolbox_url})

    @staticmethod
    def _port(request: web.Request) -> int:
        try:
            port = int(request.match_info["port"])
        except ValueError as exc:
            raise ApiError(400, "port must be an integer") from exc
        if not 1 <= port <= 65535:
            raise ApiError(400, "port out of range")
        return port

    async def _preview_url(self, request: web.Request) -> web.Response:
        sb = self._sandbox(request)
        port = self._port(request)
        url = f"{self.base_url}/preview/{port}-{sb.id}/"
        return web.json_response({"sandboxId": sb.id, "url": url, "token": sb.preview_token})

    async def _signed_preview_url(self, request: web.Request) -> web.Response:
        sb = self._sandbox(request)
        port = self._port(request)
        try:
            expires = int(request.query.get("expiresInSeconds") or 60)
        except ValueError as exc:
            raise ApiError(400, "expiresInSeconds must be an integer") from exc
        token = secrets.token_hex(16)
        self.signed_urls[token] = SignedUrl(token, sb.id, port, time.time() + expires)
        url = f"{self.base_url}/preview/{port}-{token}/"
        return web.json_response({"sandboxId": sb.id, "port": port, "token": token, "url": url})

    async def _expire_signed_url(self, request: web.Request) -> web.Response:
        self._sandbox(request)
        signed = self.signed_urls.get(request.match_info["token"])
        if signed is None:
            raise ApiError(404, "Signed preview URL not found")
        signed.expired = True
        return web.Response(status=200)

    # -- snapshots -------------------------------------------------------------------------

    def _new_snapshot(self, name: str, **kwargs: Any) -> Snapshot:
        if self._find_snapshot(name) is not None:
            raise ApiError(409, f"Snapshot {name} already exists")
        sid = str(uuid.uuid4())
        snap = Snapshot(id=sid, name=name, dir=self.root / "snapshots" / sid, **kwargs)
        return snap

    async def add_snapshot(self, name: str, directory: str | Path, link: bool = True) -> Snapshot:
        """Register a snapshot whose files are a copy of a local directory.

        With ``link`` (the default) files are hard links to the originals: cheap, but a sandbox
        editing a file in place would change ``directory`` too. ``link=False`` copies.
        """
        src = Path(directory)
        if not src.is_dir():
            raise ApiError(400, f"{src} is not a directory")
        snap = self._new_snapshot(name, source_dir=str(src))
        await asyncio.to_thread(link_copy_tree, src, snap.dir, link)
        self.snapshots[snap.id] = snap
        return snap

    async def _create_snapshot(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        if not body.get("name"):
            raise ApiError(400, "name is required")
        build = body.get("buildInfo") or {}
        if not body.get("imageName") and not build.get("dockerfileContent"):
            raise ApiError(400, "imageName or buildInfo is required")
        dockerfile = build.get("dockerfileContent")
        if dockerfile is None and body.get("imageName"):
            dockerfile = f"FROM {body['imageName']}\n"
        snap = self._new_snapshot(
            body["name"],
            image_name=body.get("imageName"),
            dockerfile=dockerfile,
            context_hashes=build.get("contextHashes"),
        )
        snap.dir.mkdir(parents=True)
        self.snapshots[snap.id] = snap
        return web.json_response(snap.to_json())

    async def _list_snapshots(self, request: web.Request) -> web.Response:
        items = [s.to_json() for s in self.snapshots.values()]
        return web.json_response({"items": items, "total": len(items), "page": 1, "totalPages": 1})

    def _snapshot(self, request: web.Request) -> Snapshot:
        snap = self._find_snapshot(request.match_info["snap"])
        if snap is None:
            raise ApiError(404, f"Snapshot {request.match_info['snap']} not found")
        return snap

    async def _get_snapshot(self, request: web.Request) -> web.Response:
        return web.json_response(self._snapshot(request).to_json())

    async def _delete_snapshot(self, request: web.Request) -> web.Response:
        snap = self._snapshot(request)
        del self.snapshots[snap.id]
        await asyncio.to_thread(shutil.rmtree, snap.dir, True)
        return web.Response(status=200)

    async def _snapshot_build_logs_url(self, request: web.Request) -> web.Response:
        snap = self._snapshot(request)
        return web.json_response({"url": f"{self.api_url}/snapshots/{snap.id}/build-logs"})

    async def _snapshot_build_logs(self, request: web.Request) -> web.Response:
        snap = self._snapshot(request)
        return web.Response(text=f"emulator: snapshot {snap.name} is {snap.state}; nothing was built\n")

    async def _snapshot_sandbox(self, request: web.Request) -> web.Response:
        sb = self._sandbox(request)
        body = await self._json_body(request)
        if not body.get("name"):
            raise ApiError(400, "name is required")
        snap = self._new_snapshot(body["name"], source_sandbox_id=sb.id)
        await asyncio.to_thread(link_copy_tree, sb.home, snap.dir, True, LINK_BINARIES_FROM)
        self.snapshots[snap.id] = snap
        return self._sandbox_response(sb)

    # -- toolbox: info and files -----------------------------------------------------------

    async def _home_dir(self, request: web.Request) -> web.Response:
        return web.json_response({"dir": str(self._running_sandbox(request).home)})

    async def _version(self, request: web.Request) -> web.Response:
        self._running_sandbox(request)
        return web.json_response({"version": "emulator"})

    async def _create_folder(self, request: web.Request) -> web.Response:
        sb = self._running_sandbox(request)
        path = self._resolve(sb, request.query.get("path"))
        try:
            mode = int(request.query.get("mode") or "755", 8)
        except ValueError as exc:
            raise ApiError(400, "mode must be octal") from exc
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)
        return web.Response(status=200)

    async def _bulk_upload(self, request: web.Request) -> web.Response:
        sb = self._running_sandbox(request)
        reader = await request.multipart()
        paths: dict[str, str] = {}
        pending: dict[str, bytes] = {}
        field_re = re.compile(r"^files\[(\d+)\]\.(path|file)$")
        while (part := await reader.next()) is not None:
            assert isinstance(part, aiohttp.BodyPartReader)
            m = field_re.match(part.name or "")
            if not m:
                await part.release()
                continue
            index, kind = m.groups()
            if kind == "path":
                paths[index] = await part.text()
                if index in pending:
                    self._write_file(self._resolve(sb, paths[index]), pending.pop(index))
            elif index in paths:
                await self._stream_to_file(part, self._resolve(sb, paths[index]))
            else:
                pending[index] = await part.read()
        if pending:
            raise ApiError(400, f"files without a path: {sorted(pending)}")
        return web.Response(status=200)

    @staticmethod
    def _write_file(dest: Path, data: bytes) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)

    @staticmethod
    async def _stream_to_file(part: aiohttp.BodyPartReader, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "wb") as f:
            while chunk := await part.read_chunk(256 * 1024):
                f.write(chunk)

    async def _bulk_download(self, request: web.Request) -> web.StreamResponse:
        sb = self._running_sandbox(request)
        body = await self._json_body(request)
        boundary = uuid.uuid4().hex
        response = web.StreamResponse(headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        await response.prepare(request)
        for requested in body.get("paths") or []:
            path = self._resolve(sb, requested)
            quoted = json.dumps(str(requested))  # a quoted string, escapes included
            if path.is_file():
                head = (
                    f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename={quoted}\r\n'
                    f"Content-Type: application/octet-stream\r\nContent-Length: {path.stat().st_size}\r\n\r\n"
                )
                await response.write(head.encode())
                with open(path, "rb") as f:
                    while chunk := f.read(256 * 1024):
                        await response.write(chunk)
            else:
                payload = json.dumps(
                    {"message": f"file not found: {requested}", "statusCode": 404, "code": "FILE_NOT_FOUND"}
                )
                head = (
                    f'--{boundary}\r\nContent-Disposition: form-data; name="error"; filename={quoted}\r\n'
                    "Content-Type: application/json\r\n\r\n"
                )
                await response.write(head.encode() + payload.encode())
            await response.write(b"\r\n")
        await response.write(f"--{boundary}--\r\n".encode())
        await response.write_eof()
        return response

    async def _download(self, request: web.Request) -> web.StreamResponse:
        sb = self._running_sandbox(request)
        path = self._resolve(sb, request.query.get("path"))
        if not path.is_file():
            raise ApiError(404, f"file not found: {request.query.get('path')}", "FILE_NOT_FOUND")
        return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})

    @staticmethod
    def _file_info_json(path: Path) -> dict[str, Any]:
        st = path.stat()
        modified = datetime.fromtimestamp(st.st_mtime, timezone.utc)
        return {
            "name": path.name,
            "path": str(path),
            "isDir": path.is_dir(),
            "size": st.st_size,
            "mode": stat.filemode(st.st_mode),
            "permissions": oct(st.st_mode & 0o777)[2:].rjust(4, "0"),
            "owner": SANDBOX_USER,
            "group": SANDBOX_USER,
            "modTime": modified.strftime("%Y-%m-%d %H:%M:%S.%f +0000 UTC"),
            "modifiedAt": modified.isoformat().replace("+00:00", "Z"),
        }

    async def _file_info(self, request: web.Request) -> web.Response:
        sb = self._running_sandbox(request)
        path = self._resolve(sb, request.query.get("path"))
        if not path.exists():
            raise ApiError(404, f"file not found: {request.query.get('path')}", "FILE_NOT_FOUND")
        return web.json_response(self._file_info_json(path))

    async def _list_files(self, request: web.Request) -> web.Response:
        sb = self._running_sandbox(request)
        path = self._resolve(sb, request.query.get("path"))
        if not path.is_dir():
            raise ApiError(404, f"directory not found: {request.query.get('path')}", "FILE_NOT_FOUND")
        return web.json_response([self._file_info_json(p) for p in sorted(path.iterdir())])

    async def _delete_file(self, request: web.Request) -> web.Response:
        sb = self._running_sandbox(request)
        path = self._resolve(sb, request.query.get("path"))
        if path.is_dir() and not path.is_symlink():
            if request.query.get("recursive", "false").lower() != "true":
                raise ApiError(400, "path is a directory; pass recursive=true")
            await asyncio.to_thread(shutil.rmtree, path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            raise ApiError(404, f"file not found: {request.query.get('path')}", "FILE_NOT_FOUND")
        return web.Response(status=204)

    # -- toolbox: processes ----------------------------------------------------------------

    async def _execute(self, request: web.Request) -> web.Response:
        sb = self._running_sandbox(request)
        body = await self._json_body(request)
        command = body.get("command")
        if not isinstance(command, str) or not command:
            raise ApiError(400, "command is required")
        record = Command(id=str(uuid.uuid4()), session_id=None, command=command)
        sb.history.append(record)
        proc = await self._spawn(sb, command, body.get("cwd"), body.get("envs"), interactive=False)
        record.proc = proc
        assert proc.stdout is not None
        output = bytearray()

        async def pump() -> None:
            assert proc.stdout is not None
            while data := await proc.stdout.read(65536):
                output.extend(data)

        reader = asyncio.create_task(pump())
        timeout = body.get("timeout") or None
        try:
            returncode = await asyncio.wait_for(proc.wait(), timeout)
        except asyncio.TimeoutError:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            reader.cancel()
            record.exit_code = -1
            raise ApiError(408, f"command timed out after {timeout} seconds", "PROCESS_EXECUTION_TIMEOUT") from None
        await asyncio.wait([reader], timeout=PIPE_DRAIN_SECONDS)
        reader.cancel()
        record.exit_code = exit_status(returncode)
        return web.json_response({"exitCode": record.exit_code, "result": output.decode("utf-8", "replace")})

    def _session(self, request: web.Request, sb: Sandbox) -> Session:
        session = sb.sessions.get(request.match_info["session"])
        if session is None:
            raise ApiError(404, f"session {request.match_info['session']} not found")
        return session

    def _command(self, request: web.Request) -> Command:
        sb = self._running_sandbox(request)
        cmd = self._session(request, sb).commands.get(request.match_info["cid"])
        if cmd is None:
            raise ApiError(404, f"command {request.match_info['cid']} not found")
        return cmd

    @staticmethod
    def _session_json(session: Session) -> dict[str, Any]:
        return {"sessionId": session.id, "commands": [c.to_json() for c in session.commands.values()]}

    async def _create_session(self, request: web.Request) -> web.Response:
        sb = self._running_sandbox(request)
        body = await self._json_body(request)
        sid = body.get("sessionId")
        if not isinstance(sid, str) or not sid:
            raise ApiError(400, "sessionId is required")
        if sid in sb.sessions:
            raise ApiError(409, f"session {sid} already exists")
        sb.sessions[sid] = Session(sid)
        return web.Response(status=201)

    async def _list_sessions(self, request: web.Request) -> web.Response:
        sb = self._running_sandbox(request)
        return web.json_response([self._session_json(s) for s in sb.sessions.values()])

    async def _get_session(self, request: web.Request) -> web.Response:
        sb = self._running_sandbox(request)
        return web.json_response(self._session_json(self._session(request, sb)))

    async def _delete_session(self, request: web.Request) -> web.Response:
        sb = self._running_sandbox(request)
        session = self._session(request, sb)
        for cmd in session.commands.values():
            if cmd.proc is not None and cmd.exit_code is None:
                with contextlib.suppress(OSError):
                    os.killpg(cmd.proc.pid, signal.SIGKILL)
        del sb.sessions[session.id]
        return web.Response(status=204)

    async def _session_exec(self, request: web.Request) -> web.Response:
        sb = self._running_sandbox(request)
        session = self._session(request, sb)
        body = await self._json_body(request)
        command = body.get("command")
        if not isinstance(command, str) or not command:
            raise ApiError(400, "command is required")
        cmd = Command(id=str(uuid.uuid4()), session_id=session.id, command=command)
        sb.history.append(cmd)
        cmd.proc = await self._spawn(sb, command, None, None, interactive=True)
        session.commands[cmd.id] = cmd
        self._spawn_task(self._run_command(cmd))
        if body.get("runAsync") or body.get("async"):
            return web.json_response({"cmdId": cmd.id}, status=202)
        await cmd.done.wait()
        return web.json_response(
            {
                "cmdId": cmd.id,
                "exitCode": cmd.exit_code,
                "output": cmd.text(),
                "stdout": cmd.text(1),
                "stderr": cmd.text(2),
            }
        )

    async def _run_command(self, cmd: Command) -> None:
        """Collect a session command's output as it comes and record its exit code."""
        proc = cmd.proc
        assert proc is not None and proc.stdout is not None and proc.stderr is not None

        async def pump(stream: asyncio.StreamReader, kind: int) -> None:
            while data := await stream.read(65536):
                cmd.append(kind, data)

        # Readers outlive the command when a daemonised child keeps the pipe open.
        readers = [self._spawn_task(pump(proc.stdout, 1)), self._spawn_task(pump(proc.stderr, 2))]
        returncode = await proc.wait()
        await asyncio.wait(readers, timeout=PIPE_DRAIN_SECONDS)
        if proc.stdin is not None:
            proc.stdin.close()
        cmd.exit_code = exit_status(returncode)
        cmd.done.set()
        cmd.notify()

    async def _get_command(self, request: web.Request) -> web.Response:
        return web.json_response(self._command(request).to_json())

    async def _command_logs(self, request: web.Request) -> web.StreamResponse:
        cmd = self._command(request)
        if request.query.get("follow", "").lower() == "true":
            return await self._follow_logs(request, cmd)
        return web.json_response({"output": cmd.text(), "stdout": cmd.text(1), "stderr": cmd.text(2)})

    async def _follow_logs(self, request: web.Request, cmd: Command) -> web.WebSocketResponse:
        """Stream the log as a WebSocket: markers before each chunk, close 1000 at the end."""
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        drop = self.faults.drop_log_streams > 0
        if drop:
            self.faults.drop_log_streams -= 1
        budget = self.faults.drop_after_bytes if drop else 0
        client_gone = asyncio.create_task(ws.receive())
        sent = 0
        try:
            while True:
                changed = cmd.changed
                while sent < len(cmd.chunks):
                    kind, data = cmd.chunks[sent]
                    sent += 1
                    cut = drop and len(data) >= budget
                    if cut and budget:
                        data = data[:budget]  # part-way through a chunk, maybe through a line
                    await ws.send_bytes((STDOUT_MARK if kind == 1 else STDERR_MARK) + data)
                    if cut:
                        await ws.close(code=1011, message=b"emulator fault: log stream dropped")
                        return ws
                    budget -= len(data)
                if cmd.done.is_set():
                    break
                waiter = asyncio.create_task(changed.wait())
                await asyncio.wait([waiter, client_gone], return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if client_gone.done():
                    return ws
            await ws.close(code=1011 if drop else 1000)
        except (ConnectionResetError, RuntimeError):
            pass
        finally:
            client_gone.cancel()
        return ws

    async def _command_input(self, request: web.Request) -> web.Response:
        cmd = self._command(request)
        body = await self._json_body(request)
        data = body.get("data")
        if not isinstance(data, str):
            raise ApiError(400, "data is required")
        stdin = cmd.proc.stdin if cmd.proc else None
        if cmd.exit_code is not None or stdin is None or stdin.is_closing():
            raise ApiError(410, "command has already finished", "COMMAND_ALREADY_COMPLETED")
        try:
            stdin.write(data.encode())
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ApiError(410, "command has already finished", "COMMAND_ALREADY_COMPLETED") from exc
        return web.Response(status=200)

    # -- preview proxy ---------------------------------------------------------------------

    async def _preview_route(self, request: web.Request) -> web.StreamResponse:
        m = PREVIEW_TARGET.match(request.match_info["target"])
        if not m:
            return web.Response(status=404, text="Unknown preview URL\n")
        return await self._preview(request, int(m[1]), m[2], request.match_info.get("tail", ""))

    def _preview_access(self, request: web.Request, port: int, key: str) -> Sandbox | web.Response:
        """Resolve a preview target to its sandbox, or answer why access is refused."""
        sb = self._find_sandbox(key) if key in self.sandboxes else None
        if sb is None and key in self.sandboxes:
            return web.Response(status=404, text="Sandbox not found\n")
        if sb is not None:
            if not sb.public:
                token = request.headers.get("X-Daytona-Preview-Token")
                if not token:
                    return web.Response(status=401, text="Missing X-Daytona-Preview-Token\n")
                if not secrets.compare_digest(token, sb.preview_token):
                    return web.Response(status=403, text="Invalid preview token\n")
        else:
            signed = self.signed_urls.get(key)
            if signed is None:
                return web.Response(status=404, text="Unknown preview URL\n")
            if not signed.valid():
                return web.Response(status=403, text="Signed preview URL expired\n")
            if signed.port != port:
                return web.Response(status=403, text="Signed preview URL is for another port\n")
            sb = self._find_sandbox(signed.sandbox_id)
            if sb is None:
                return web.Response(status=404, text="Sandbox not found\n")
        if sb.state != "started":
            return web.Response(status=502, text=f"Sandbox {sb.id} is not started (state: {sb.state})\n")
        return sb

    async def _preview(self, request: web.Request, port: int, key: str, tail: str) -> web.StreamResponse:
        access = self._preview_access(request, port, key)
        if isinstance(access, web.Response):
            return access
        access.touch()
        url = f"http://127.0.0.1:{port}/{tail}"
        if request.query_string:
            url += f"?{request.query_string}"
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._proxy_websocket(request, url, headers)
        assert self._client is not None
        body = await request.read()
        try:
            async with self._client.request(
                request.method, url, headers=headers, data=body or None, allow_redirects=False
            ) as upstream:
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for k, v in upstream.headers.items():
                    if k.lower() not in HOP_BY_HOP or k.lower() == "content-length":
                        response.headers.add(k, v)
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except aiohttp.ClientConnectorError:
            return web.Response(status=502, text=f"Nothing is listening on port {port} in sandbox {access.id}\n")
        except aiohttp.ClientError as exc:
            return web.Response(status=502, text=f"Upstream error on port {port}: {exc}\n")

    async def _proxy_websocket(self, request: web.Request, url: str, headers: dict[str, str]) -> web.StreamResponse:
        assert self._client is not None
        protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        fwd = {k: v for k, v in headers.items() if not k.lower().startswith("sec-websocket")}
        try:
            upstream = await self._client.ws_connect("ws" + url[4:], headers=fwd, protocols=protocols)
        except aiohttp.ClientError as exc:
            return web.Response(status=502, text=f"WebSocket upstream error: {exc}\n")
        downstream = web.WebSocketResponse(protocols=protocols)
        await downstream.prepare(request)

        async def pump(src: Any, dst: Any) -> None:
            async for msg in src:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await dst.send_str(msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    await dst.send_bytes(msg.data)
                else:
                    break
            await dst.close()

        tasks = [
            asyncio.create_task(pump(upstream, downstream)),
            asyncio.create_task(pump(downstream, upstream)),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        await upstream.close()
        await downstream.close()
        return downstream

    # -- auto-stop -------------------------------------------------------------------------

    async def _autostop_loop(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            factor = float(self.config.get("autostop_seconds_per_minute") or 0)
            if factor <= 0:
                continue
            now = time.monotonic()
            for sb in list(self.sandboxes.values()):
                idle_limit = sb.auto_stop_interval * factor
                if sb.state == "started" and sb.auto_stop_interval > 0 and now - sb.last_activity > idle_limit:
                    await self.stop_sandbox(sb)

    # -- /_emulator ------------------------------------------------------------------------

    def emulator_sandboxes(self) -> list[dict[str, Any]]:
        return [sb.to_emulator_json() for sb in self.sandboxes.values()]

    def emulator_commands(self, sandbox_id: str) -> list[dict[str, Any]]:
        sb = self.sandboxes.get(sandbox_id)
        if sb is None:
            raise ApiError(404, f"Sandbox {sandbox_id} not found")
        return [
            {"sessionId": c.session_id, "cmdId": c.id, "command": c.command, "exitCode": c.exit_code}
            for c in sb.history
        ]

    def set_faults(self, **changes: Any) -> dict[str, int]:
        for key, value in changes.items():
            if not hasattr(self.faults, key):
                raise ApiError(400, f"unknown fault {key!r}")
            setattr(self.faults, key, int(value))
        return self.faults.to_json()

    def set_config(self, **changes: Any) -> dict[str, Any]:
        for key, value in changes.items():
            if key not in self.config:
                raise ApiError(400, f"unknown config key {key!r}")
            self.config[key] = value
        return dict(self.config)

    async def _get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self.faults.to_json())

    async def _post_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self.set_faults(**await self._json_body(request)))

    async def _get_config(self, request: web.Request) -> web.Response:
        return web.json_response(self.config)

    async def _post_config(self, request: web.Request) -> web.Response:
        return web.json_response(self.set_config(**await self._json_body(request)))

    async def _emu_sandboxes(self, request: web.Request) -> web.Response:
        return web.json_response(self.emulator_sandboxes())

    async def _emu_commands(self, request: web.Request) -> web.Response:
        return web.json_response(self.emulator_commands(request.match_info["sid"]))

    async def _emu_snapshots(self, request: web.Request) -> web.Response:
        return web.json_response([s.to_emulator_json() for s in self.snapshots.values()])

    async def _emu_add_snapshot(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        if not body.get("name") or not body.get("dir"):
            raise ApiError(400, "name and dir are required")
        snap = await self.add_snapshot(body["name"], body["dir"], bool(body.get("link", True)))
        return web.json_response(snap.to_emulator_json())


# ---------------------------------------------------------------------------------------------
# Thread wrapper for pytest fixtures (and the __main__ entry point)


class DaytonaEmulator:
    """Runs :class:`EmulatorServer` on an asyncio loop in a background thread."""

    def __init__(self, root: Path, api_key: str, log_path: Path | None = None) -> None:
        self.root = Path(root)
        self.api_key = api_key
        self.server = EmulatorServer(self.root, api_key, log_path)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self, port: int = 0) -> str:
        """Serve on 127.0.0.1:port (0 = any free port); returns the API URL."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="daytona-emulator", daemon=True)
        self._thread.start()
        self._call(self.server.start(port))
        return self.api_url

    def stop(self) -> None:
        """Kill all sandbox processes and stop the server thread."""
        if self._loop is None or self._thread is None:
            return
        with contextlib.suppress(Exception):
            self._call(self.server.shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> DaytonaEmulator:
        if self._loop is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("emulator is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _sync(self, fn: Callable[[], T]) -> T:
        async def run() -> T:
            return fn()

        return self._call(run())

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def api_url(self) -> str:
        return self.server.api_url

    def sandboxes(self) -> list[dict[str, Any]]:
        """Same as ``GET /_emulator/sandboxes`` (destroyed sandboxes included, state "destroyed")."""
        return self._sync(self.server.emulator_sandboxes)

    def commands(self, sandbox_id: str) -> list[dict[str, Any]]:
        """Same as ``GET /_emulator/sandboxes/{id}/commands`` (exec commands have sessionId None)."""
        return self._sync(lambda: self.server.emulator_commands(sandbox_id))

    def set_faults(self, **faults: int) -> dict[str, int]:
        """E.g. ``set_faults(fail_next=2, drop_log_streams=1, latency_ms=200)``."""
        return self._sync(lambda: self.server.set_faults(**faults))

    def faults(self) -> dict[str, int]:
        return self._sync(self.server.faults.to_json)

    def set_config(self, **config: Any) -> dict[str, Any]:
        """E.g. ``set_config(autostop_seconds_per_minute=1)``."""
        return self._sync(lambda: self.server.set_config(**config))

    def add_snapshot(self, name: str, directory: str | Path, link: bool = True) -> dict[str, Any]:
        """Register snapshot ``name`` holding a copy (hard links unless ``link=False``) of a local dir."""
        return self._call(self.server.add_snapshot(name, directory, link)).to_emulator_json()

    def snapshots(self) -> list[dict[str, Any]]:
        return self._sync(lambda: [s.to_emulator_json() for s in self.server.snapshots.values()])

    def sandbox_dir(self, sandbox_id: str) -> Path:
        return self.root / "sandboxes" / sandbox_id

    def home_dir(self, sandbox_id: str) -> Path:
        return self.sandbox_dir(sandbox_id) / "home"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.daytona", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--root", type=Path, required=True, help="directory holding sandboxes and snapshots")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--log", type=Path, default=None, help="JSON-lines request log")
    args = parser.parse_args(argv)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    emulator = DaytonaEmulator(args.root, args.api_key, args.log)
    url = emulator.start(args.port)
    print(url, flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
