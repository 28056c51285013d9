"""A local emulator of the Daytona cloud API, for tests.

The unmodified ``daytona`` SDK (0.226.1) talks to it: point ``DaytonaConfig(api_url=...)`` at
``http://127.0.0.1:PORT/api``. Sandboxes are directories (``ROOT/sandboxes/<id>/home``) and
commands run as real local processes with a clean environment.

Wire protocol: ``/work/shared/notes/daytona-sdk-wire.md``. URL layout:

- ``/api/...``                       control plane (Bearer auth)
- ``/toolbox/{sandboxId}/...``       toolbox (Bearer auth); ``toolboxProxyUrl`` points here
- ``/preview/{port}-{id|signed}/...`` preview proxy to ``localhost:{port}`` inside the "sandbox"
  (also reachable with ``Host: {port}-{id}.preview.localhost``)
- ``/_emulator/...``                 test controls (no auth): faults, config, reset, sandboxes,
  snapshots, and the preview sign-in page

Run standalone with ``python -m tests.fakes.daytona --port 0 --root DIR --api-key KEY``; the
first line on stdout is the API URL. In pytest use :class:`DaytonaEmulator` (call ``reset()``
before each test).

Like Daytona's daemon (source v0.190.0, read for behaviour, not copied):

- A session is ONE long-lived shell (zsh if /etc/shells lists it, else bash, else sh) in its own
  process group, with the sandbox's environment; its stdin is a pipe the emulator writes to.
  Each command gets ``~/.daytona/sessions/<sid>/<cid>/`` (``cmd.sh``, ``output.log``) and a
  wrapper block written to that shell, which makes FIFOs for stdout, stderr and stdin, copies the
  output line by line into ``output.log`` behind ``\x01\x01\x01`` / ``\x02\x02\x02``, sources
  ``cmd.sh`` in the session shell, and writes ``exit_code`` once both copy loops saw EOF. So
  commands of a session run one after another, ``cd``/``export`` carry over, ``exit``/``exec``/
  ``set -e`` end the session shell (no exit code ever; the next command gets HTTP 500 "failed to
  execute command: failed to write command: broken pipe"), a command for a session that does not
  exist gets 500 "failed to execute command: session not found" (the daemon's exec handler wraps
  the error, so its middleware's 404 does not apply; every session is gone after a stop), and a
  background child holding the command's stdout keeps it running. The wrapper leaves the same
  shell variables set as the daemon's (``dir log sp ep ip r1 r2 ip_pid _ec``, function
  ``cleanup``, a trap on EXIT HUP INT TERM).
- Follow-logs WebSockets replay ``output.log`` from byte 0 in frames of at most 1024 bytes,
  poll every 20 ms and close 1000 after 50 empty reads once ``exit_code`` exists; no pings.
- ``process.exec`` pipes the command into a fresh shell and answers when it exited AND its
  output pipe is closed by every holder (or 408 at ``timeout``, killing its process group).
- The preview proxy authenticates like Daytona's (Bearer API key, ``X-Daytona-Preview-Token``,
  ``?DAYTONA_SANDBOX_AUTH_KEY=``, cookie ``daytona-sandbox-auth-<sandbox id or signed token>``
  signed by the emulator, signed-URL token) and otherwise redirects (307) to
  ``/_emulator/signin``, whose link sets that cookie. Nothing listening: 502, empty body.
- Config ``rtt_ms`` (0 by default) makes the emulator a network away: every control-plane,
  toolbox (WebSocket set-up included), Socket.IO and preview request waits that many ms before
  it is handled (see DAYTONA.md, "A network like a user's").
- Auto-stop (scaled by config ``autostop_seconds_per_minute``) counts as activity: lifecycle
  changes, ``refresh_activity``, toolbox calls, preview traffic, and every 50/60 of a scaled
  minute while a toolbox WebSocket or proxied connection stays open; not processes inside the
  sandbox nor other control-plane calls.

Newer calls (SDK 0.226.1; Daytona's api ``sandbox.service.ts`` and daemon ``pkg/toolbox/process/pty``,
v0.190.0):

- Sandbox classes (``sandboxClass``): ``container`` by default (config ``sandbox_class``), as on
  Daytona, where only ``linux-vm``/``windows`` sandboxes fork or pause: a container gets 422
  "Forking is not supported for this sandbox" / "Pausing is not supported for this sandbox".
  Tests that need fork or pause ask for ``sandbox_class="linux-vm"``.
- ``pause`` SIGSTOPs every process of the sandbox (state ``paused``); ``start`` on a paused sandbox
  resumes it (SIGCONT), as Daytona's start does; stop and delete work from ``paused``. Pause checks
  the state (400 unless started) before the class (422). While paused the toolbox answers 409 and
  previews 502 (unverified: pausing is for VM sandboxes, whose runner is not in the public
  source). A stopped sandbox's toolbox and previews answer 400 "... Is the Sandbox started?", as
  Daytona's runner does (``NOT_STARTED``).
- ``fork`` makes a started sandbox with a copy of the home and the source's env, labels, public
  flag, class and intervals (forkSandbox copies these); processes are not copied. Fork checks the
  class (422) before the state (400 unless started), then a change pending (409). A sandbox
  with live forks is not deleted (400 "Cannot delete sandbox which has active fork children.
  ..."). Unverified: the ``forking`` state the source passes through (here it stays
  ``started``) and how long a fork takes.
- Daytona's ``pending`` flag: a start or stop asked for leaves the sandbox in its state, pending,
  for config ``pending_seconds`` (0 by default) before the passing state; start, stop, delete,
  fork and pause then answer 409, as the source's checks do.
- SSH access: create (``expiresInMinutes``, default 60, revoking the sandbox's earlier tokens as
  Daytona does), revoke (one token or all), validate (``{"valid", "sandboxId"}``, null for a bad
  token, as the source does, which the SDK's model rejects). ``sshCommand`` names config
  ``ssh_gateway`` (``ssh -p PORT TOKEN@HOST``, no ``-p`` for 22). No SSH server runs: connecting
  is unverified.
- PTY sessions: the shell (``-i -l``) on a real local pty with TERM=xterm-256color, in the home
  unless ``cwd``; input, output (binary frames), resize (TIOCSWINSZ, so the program gets
  SIGWINCH), kill (descendants then the shell, exit code 137), a ``connected`` control message
  first, and at the end the close frame the daemon sends (1000, or 1011 with ``{"exitCode",
  "exitReason"}``). ``create-connect`` (one round trip, envs in a ``X-Daytona-Pty-Envs~`` subprotocol)
  and the ``exited`` control message for clients offering ``X-Daytona-Pty-Exit-Control`` are newer
  than the public source: built from the SDK's side only.

The working directory (daemon ``cmd/daemon/main.go``, runner ``docker/container_configs.go``): the
daemon runs in the image's WORKDIR, or in the home when the image has none. Session shells
(for an SDK of 0.103.0 or newer: older ones get the home, ``session.go``), ``process.exec``
and PTYs without a ``cwd`` start there, ``/work-dir`` answers it, and relative file paths
(upload, download, folders, ...) are used as given (``os.Create(dest)``), so they land there;
``~`` is not expanded. A sandbox's WORKDIR is its snapshot's (a Dockerfile's last ``WORKDIR``, or
the sandbox's a snapshot was taken from), else config ``sandbox_workdir`` (None: no WORKDIR).
An image path ``/P`` is ``ROOT/sandboxes/<id>/P`` here; the home is ``ROOT/sandboxes/<id>/home``.

``delete_session`` waits 5 s before SIGKILL, as Daytona does. Chosen where Daytona's source and
notes are silent (unverified): opening a command's stdin FIFO for input is retried non-blocking
every 10 ms for up to 30 s instead of one blocking open; a sandbox stop drops open log streams
without a close frame; a session command's exit code is omitted from JSON while unknown (the
daemon's ``omitempty``).

The default image's ``uv``: the virtualenv's ``uv`` (a dev extra) is on every sandbox
process's PATH, from a directory of its own, unless config ``sandbox_uv`` is false (a sandbox
image without uv). Its version is whatever the virtualenv has, not the image's (unverified).

Limitations: snapshots built from an image start with an empty home (the Dockerfile is only
stored); snapshot trees are hard-linked, so editing a file *in place* inside a sandbox also
changes the snapshot (tools that replace files, like pip, are fine), except that a snapshot taken
from a sandbox, and the sandboxes made from it, get their own copies of all files but big
executables and libraries. Processes are not isolated: "sandboxes" share the host's users,
network and process table.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import errno
import fcntl
import functools
import hashlib
import hmac
import html
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import stat
import struct
import sys
import termios
import threading
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
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
MARKER_SPLIT = re.compile(b"(\x01\x01\x01|\x02\x02\x02)")
KILL_GRACE_SECONDS = 5.0  # delete_session: SIGTERM, then SIGKILL after 5 s (daemon session/delete.go)
LOG_FRAME_BYTES = 1024  # the daemon reads the log in 1024-byte pieces, one frame each
LOG_POLL_SECONDS = 0.02  # ... polls every 20 ms at EOF ...
LOG_EOF_READS = 50  # ... and looks for the exit code after 50 empty reads in a row
INPUT_OPEN_TIMEOUT_SECONDS = 30.0
ACTIVITY_REFRESH_MINUTES = 50 / 60  # the proxy refreshes activity every 50 s of an open connection
# Sessions and exec shells get their own process group (setpgid, not setsid), as on the daemon.
OWN_PROCESS_GROUP: dict[str, Any] = {"process_group": 0} if sys.version_info >= (3, 11) else {"start_new_session": True}
# A sandbox's processes are the members of its process groups. The kernel hands a group's id out
# again once its last member is gone, and with pid_max at 32768 a long-lived sandbox's old ids
# soon name other groups: another test's, or the other test worker's emulator's. Signalling them
# (pause, stop, delete) froze or killed strangers. So the emulator forgets a group as soon as it
# is seen empty, sweeping every PGID_SWEEP_SECONDS: far less than the full cycle of pids the
# kernel allocates before it reaches a freed id again.
PGID_SWEEP_SECONDS = 0.5
# Toolbox calls and preview links of a sandbox that is not started (stopped, starting...):
# Daytona's runner (v0.190.0, apps/runner/pkg/api/controllers/proxy.go, getProxyTarget) finds
# the container without an IP address, tries three times (100-500 ms apart) and answers 400
# with this message; the proxy passes it on. A container that is gone is a 404.
NOT_STARTED = "no IP address found. Is the Sandbox started?"
EXEC_FAILED = "failed to execute command: "  # the prefix the daemon's exec handler wraps errors in
ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
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
# sandbox_class: the class of sandboxes created from here on (a snapshot's own class wins):
# "container", Daytona's default (sandbox.entity.ts), which refuses fork and pause with 422, or
# "linux-vm" / "windows", which can; ssh_gateway: the host:port the SSH command names; sandbox_uv:
# the default image has `uv` on its PATH (see uv_bin_dir), False takes it away;
# list_lag_seconds: `GET /sandbox` leaves out sandboxes created or forked less than this long
# ago (Daytona's list is "eventually consistent"; 0, the default, shows them at once);
# pending_seconds: how long a change asked for (start, stop) leaves the sandbox in its state
# with Daytona's `pending` flag set before it enters the passing state (Daytona's sandbox manager
# picks the change up; 0: at once); sandbox_workdir: the image WORKDIR (an absolute image path,
# see image_path) of sandboxes created from here on whose snapshot sets none; None, the default,
# is an image without one; rtt_ms: the round-trip time of a network between the client and
# Daytona (see NETWORK_KINDS), 0 on loopback; quota_cpu, quota_memory, quota_disk: the
# organization's region quota (vCPUs, GiB, GiB) that a create, start or fork must fit in, with
# Daytona's 400s (see quota_refusal); None, the default, is a region that enforces no quota
# (self-hosted): hosted Daytona's per-tier figures are not in the public source.
DEFAULT_CONFIG: dict[str, Any] = {
    "autostop_seconds_per_minute": 0,
    "sandbox_uv": True,
    "sandbox_class": "container",
    "transition_seconds": 0.2,
    "pending_seconds": 0,
    "list_lag_seconds": 0,
    "sandbox_workdir": None,
    "ssh_gateway": "ssh.emulator.localhost:2222",
    "rtt_ms": 0,
    "quota_cpu": None,
    "quota_memory": None,
    "quota_disk": None,
}
# The requests config ``rtt_ms`` delays, each once before it is handled: every one a client sends
# to Daytona over the network (the control plane, the toolbox, its WebSocket set-ups, Socket.IO,
# the preview proxy), not the emulator's own test controls.
NETWORK_KINDS = frozenset({"api", "toolbox", "socketio", "preview"})
PTY_EXIT_CONTROL = "X-Daytona-Pty-Exit-Control"
PTY_ENVS_PROTOCOL = "X-Daytona-Pty-Envs~"
PTY_MAX_SIZE = 1000
# Daytona v0.190.0 apps/api/src/sandbox/services/sandbox.service.ts: only these classes fork,
# pause or resume; the others get 422 with these messages.
VM_CLASSES = frozenset({"linux-vm", "windows"})
FORK_REFUSED = "Forking is not supported for this sandbox"
# ... and a start or stop while a change is under way gets 409 (StateChangeInProgressError).
STATE_CHANGE_IN_PROGRESS = "Sandbox state change in progress"
# sandbox.service.ts destroy: a sandbox with fork children whose desired state is not destroyed.
HAS_FORKS = "Cannot delete sandbox which has active fork children. The forks must be deleted first."
# snapshot.service.ts activateSnapshot: 10 minutes after a deactivation, activation is refused.
SNAPSHOT_ACTIVATION_COOLDOWN_S = 600
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)
TRANSITIONAL_STATES = frozenset({"starting", "stopping", "pausing", "forking", "snapshotting", "archiving"})
PAUSE_REFUSED = "Pausing is not supported for this sandbox"
# apps/api/src/organization/constants/sandbox-states-consuming-{compute,disk}.constant.ts: what a
# sandbox counts against its organization's quota in each state (the emulator's states only).
STATES_CONSUMING_COMPUTE = frozenset(
    {"creating", "restoring", "started", "starting", "stopping", "unknown", "forking", "pausing", "resuming"}
)
STATES_CONSUMING_DISK = STATES_CONSUMING_COMPUTE | {"stopped", "paused", "archiving", "snapshotting"}
# apps/api/src/common/constants/error-messages.ts, with the emulator's own dashboard address.
UPGRADE_TIER_MESSAGE = "To increase concurrency limits, upgrade your organization's Tier by visiting https://app.daytona.io/dashboard/limits."
ARCHIVE_SANDBOXES_MESSAGE = "Consider archiving your unused Sandboxes to free up available storage."


def uv_bin_dir(root: Path) -> Path | None:
    """A directory holding only `uv` (the `uv` wheel of this virtualenv, a dev extra), to put on
    the emulated sandboxes' PATH as Daytona's default image has it, without the virtualenv's
    python3 coming along. None when the virtualenv has no uv."""
    found = shutil.which("uv", path=str(Path(sys.executable).parent))
    if found is None:
        return None
    directory = root / "sandbox-bin"
    directory.mkdir(parents=True, exist_ok=True)
    link = directory / "uv"
    if not link.exists():
        with contextlib.suppress(FileExistsError):
            link.symlink_to(found)
    return directory


def add_uv(env: dict[str, str], root: Path) -> None:
    """Puts the default image's `uv` (uv_bin_dir, under `root`) first on `env`'s PATH."""
    uv_dir = uv_bin_dir(root)
    if uv_dir is not None:
        env["PATH"] = f"{uv_dir}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
        # The host may reach PyPI through a TLS proxy with a CA of its own, which uv's
        # bundled roots lack (pip here uses the system's): the host's quirk, not Daytona's.
        env["UV_NATIVE_TLS"] = "1"


ERROR_SOURCES = {"api": "DAYTONA_API", "toolbox": "DAYTONA_DAEMON"}
PREVIEW_TOKEN_HEADER = "X-Daytona-Preview-Token"
PREVIEW_QUERY_KEY = "DAYTONA_SANDBOX_AUTH_KEY"
PREVIEW_COOKIE_PREFIX = "daytona-sandbox-auth-"  # + sandbox id or signed token, as Daytona names it
SKIP_ACTIVITY_HEADER = "X-Daytona-Skip-Last-Activity-Update"
PREVIEW_TARGET = re.compile(r"^(\d+)-(.+)$")
PREVIEW_HOST = re.compile(r"^(\d+)-([^.]+)\.preview\.localhost(:\d+)?$")


def image_path(root: Path, path: str) -> Path:
    """Where an absolute path of the sandbox's image lives here: under the sandbox's directory,
    which stands in for its `/` (the home, /home/daytona on Daytona, is ``root/home``)."""
    return root / path.lstrip("/")


def dockerfile_workdir(dockerfile: str | None) -> str | None:
    """The WORKDIR a Dockerfile leaves its image with (the last one; a relative one is joined to
    the one before, as Docker does), None when it sets none."""
    workdir: str | None = None
    for line in (dockerfile or "").splitlines():
        words = line.strip().split(None, 1)
        if len(words) == 2 and words[0].upper() == "WORKDIR":
            path = words[1].strip().strip("\"'")
            workdir = os.path.normpath(os.path.join(workdir or "/", path))
    return workdir


def legacy_sdk(request: web.Request) -> bool:
    """An SDK older than 0.103.0 (daemon ``util.ExtractSdkVersionFromHeader`` and
    ``session.go``): its sessions start in the home, not the daemon's working directory."""
    version = request.headers.get("X-Daytona-SDK-Version", "")
    match = re.match(r"^v?(\d+)\.(\d+)\.(\d+)", version)
    return match is not None and version != "0.0.0-dev" and tuple(map(int, match.groups())) < (0, 103, 0)


def iso_now() -> str:
    """Current UTC time the way Daytona formats it."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ApiError(Exception):
    """An error answered as Daytona's JSON error shape."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        # "" for the daemon's default handler, which sets no code (`code,omitempty`).
        self.code = (
            code
            if code is not None
            else {
                400: "BAD_REQUEST",
                401: "UNAUTHORIZED",
                404: "NOT_FOUND",
                408: "REQUEST_TIMEOUT",
                409: "CONFLICT",
                410: "GONE",
                503: "SERVICE_UNAVAILABLE",
            }.get(status, "ERROR")
        )


def json_error(status: int, message: str, code: str | None = None, source: str | None = None) -> web.Response:
    """Daytona's error body; ``source`` (DAYTONA_API / DAYTONA_DAEMON) picks the SDK's precise error class."""
    err = ApiError(status, message, code)
    body: dict[str, Any] = {"message": err.message, "statusCode": status}
    if err.code:
        body["code"] = err.code
    if source:
        body["source"] = source
    return web.json_response(body, status=status)


# ---------------------------------------------------------------------------------------------
# Files and processes


# A snapshot taken from a sandbox links only what nobody edits in place, its big binaries and
# libraries and the installed Python packages (pip and uv replace a package's files, never
# write into them; uv itself installs them as hard links to its cache), and copies every
# other file, so that files edited in place (logs, Codex's SQLite databases) stay private to
# each sandbox made from it, as on Daytona. (Copying the runtime's packages too cost the
# emulator about 0.3 s of CPU for every sandbox made from such a snapshot.)
LINK_BINARIES_FROM = 1 << 20


def _linkable(path: Path, binaries_from: int) -> bool:
    if not binaries_from or "site-packages" in path.parts:
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


def proc_stat(pid: int) -> list[bytes]:
    """The fields of /proc/PID/stat after the command name (state, ppid, pgrp, ...); none
    for a process that is gone. The name, in parentheses, may hold spaces and parentheses."""
    raw = _read_proc(pid, "stat")
    return raw[raw.rfind(b")") + 2 :].split() if raw else []


def process_state(pid: int) -> str | None:
    """R, S, T (stopped), Z (zombie), ...; None for a process that is gone."""
    fields = proc_stat(pid)
    return fields[0].decode() if fields else None


def live_process_groups() -> set[int]:
    """Every process-group id in use; a zombie holds its group's id until it is reaped."""
    groups: set[int] = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = proc_stat(int(entry))
            if len(fields) > 2:
                groups.add(int(fields[2]))
    return groups


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
        fields = proc_stat(pid)
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


def signal_pids(pids: set[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)


def exit_status(returncode: int) -> int:
    """Shell-style exit status: 128+N for a process killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


@functools.lru_cache(maxsize=1)
def session_shell() -> str:
    """The shell the daemon uses: zsh if /etc/shells lists it (and it is there), else bash, else sh."""
    try:
        listed = {line.strip() for line in Path("/etc/shells").read_text().splitlines()}
    except OSError:
        listed = set()
    for candidate in ("/usr/bin/zsh", "/bin/zsh", "/usr/bin/bash", "/bin/bash"):
        if candidate in listed and os.access(candidate, os.X_OK):
            return candidate
    return "sh"


def process_alive(pid: int) -> bool:
    return process_state(pid) not in (None, "Z")


def parent_map() -> dict[int, list[int]]:
    """Children of every live process, by parent pid (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = proc_stat(int(entry))
        if len(fields) > 1 and fields[0] != b"Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid``, deepest first (as the daemon signals them)."""
    tree = parent_map()
    out: list[int] = []

    def walk(p: int) -> None:
        for child in tree.get(p, []):
            walk(child)
            out.append(child)

    walk(pid)
    return out


def signal_session(pid: int, sig: int) -> None:
    """Signal a session shell's process group and every descendant of the shell by parent pid."""
    if pid != os.getpgid(0):
        with contextlib.suppress(OSError):
            os.killpg(pid, sig)
    for child in descendants(pid):
        with contextlib.suppress(OSError):
            os.kill(child, sig)


def write_fifo(path: Path, data: bytes, timeout: float) -> None:
    """Open a FIFO for writing as the daemon does (it blocks until the command reads it), and
    write. The open is retried non-blocking every 10 ms, up to ``timeout``, so that no thread is
    left stuck on a FIFO nobody will ever open: ENOENT (no FIFO yet) fails at once."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError as exc:
            if exc.errno != errno.ENXIO or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    try:
        os.set_blocking(fd, True)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def demux_log(data: bytes) -> tuple[bytes, bytes]:
    """Split a session log into stdout and stderr by its 3-byte markers; bytes before the first
    marker belong to neither stream."""
    out, err = bytearray(), bytearray()
    pieces = MARKER_SPLIT.split(data)
    # split() with a capturing group alternates text and markers: [pre, m1, t1, m2, t2, ...]
    for marker, text in zip(pieces[1::2], pieces[2::2], strict=False):
        (out if marker == STDOUT_MARK else err).extend(text)
    return bytes(out), bytes(err)


# The block the emulator writes to a session shell's stdin for each command: an equivalent of the
# daemon's wrapper (same FIFOs, same order of events, same shell variables left set in the session
# shell: dir, log, sp, ep, ip, r1, r2, ip_pid, _ec and the function cleanup), written anew.
SESSION_WRAPPER = r"""{{
dir={dir}
log="$dir/output.log"
sp="$dir/stdout.pipe" ep="$dir/stderr.pipe" ip="$dir/input.pipe"
rm -f "$sp" "$ep" "$ip"; mkfifo "$sp" "$ep" "$ip" || exit 1
cleanup() {{ rm -f "$sp" "$ep" "$ip"; }}
trap cleanup EXIT HUP INT TERM
( exec < "$sp" >> "$log"
  while line=; IFS= read -r line || [ -n "$line" ]; do printf '\001\001\001%s\n' "$line"; done ) &
r1=$!
( exec < "$ep" >> "$log"
  while line=; IFS= read -r line || [ -n "$line" ]; do printf '\002\002\002%s\n' "$line"; done ) &
r2=$!
{holder}
ip_pid=$!
{{ . {script}; }} < "$ip" > "$sp" 2> "$ep"
_ec=$?
kill "$ip_pid" 2> /dev/null; wait "$ip_pid" 2> /dev/null
wait "$r1" "$r2"
echo "$_ec" >> "$dir/exit_code"
cleanup
}}
"""
# Async commands: stdin stays open (a loop of sleeps holds the FIFO for writing; killing the loop
# leaves its current sleep behind, as the daemon's does). Sync commands: stdin is at EOF at once.
HOLD_STDIN_ASYNC = '( while :; do sleep 3600; done ) > "$ip" &'
HOLD_STDIN_SYNC = ': > "$ip" &'


# ---------------------------------------------------------------------------------------------
# State


@dataclass
class Command:
    """One command run in a sandbox. Session commands live in ``dir`` (``output.log``, ``cmd.sh``,
    ``exit_code``, the FIFOs); their exit code is whatever the ``exit_code`` file says."""

    id: str
    session_id: str | None
    command: str
    dir: Path | None = None
    suppress_input_echo: bool = False
    exit_code: int | None = None
    # How each follow-logs stream of this command ended: "server" (close 1000 after the
    # command ended), "client" (the client went away first), or the fault that struck.
    streams_ended_by: list[str] = field(default_factory=list)

    @property
    def log_path(self) -> Path:
        assert self.dir is not None
        return self.dir / "output.log"

    @property
    def input_path(self) -> Path:
        assert self.dir is not None
        return self.dir / "input.pipe"

    def refresh(self) -> int | None:
        """The exit code, read from the ``exit_code`` file once it has one."""
        if self.exit_code is None and self.dir is not None:
            try:
                text = (self.dir / "exit_code").read_text().strip()
            except OSError:
                return None
            with contextlib.suppress(ValueError):
                self.exit_code = int(text.splitlines()[0]) if text else None
        return self.exit_code

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "command": self.command}
        if self.refresh() is not None:  # the daemon omits a missing exit code (omitempty)
            data["exitCode"] = self.exit_code
        return data


@dataclass
class Session:
    """A long-lived shell (its own process group) that session commands are written into."""

    id: str
    dir: Path
    shell: asyncio.subprocess.Process
    commands: dict[str, Command] = field(default_factory=dict)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    close_reason: str = ""

    def close(self, reason: str) -> None:
        self.close_reason = reason
        self.closed.set()
        if self.shell.stdin is not None:
            self.shell.stdin.close()


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
    sandbox_class: str = "container"
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
    ssh_accesses: list[SshAccess] = field(default_factory=list)
    ptys: dict[str, PtySession] = field(default_factory=dict)
    listed_from: float = 0.0  # time.monotonic() from which `list` shows it (config list_lag_seconds)
    image_workdir: str | None = None  # the image's WORKDIR, an absolute image path; None: none
    pending: bool = False  # Daytona's flag: a change was asked for and is not over (config pending_seconds)
    fork_parent: str | None = None  # the sandbox this one was forked from (Daytona's sandbox_fork table)

    @property
    def home(self) -> Path:
        return self.dir / "home"

    @property
    def workdir(self) -> Path:
        """The daemon's working directory: the image's WORKDIR, else the home (the runner sets
        DAYTONA_USER_HOME_AS_WORKDIR). An image path /P is the sandbox's directory + P here."""
        return image_path(self.dir, self.image_workdir) if self.image_workdir else self.home

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
            "sandboxClass": self.sandbox_class,
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
            "sandboxClass": self.sandbox_class,
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
            "processGroups": sorted(self.pgids),
        }


@dataclass
class SshAccess:
    id: str
    sandbox_id: str
    token: str
    expires_at: datetime
    created_at: datetime

    def to_json(self, gateway: str) -> dict[str, Any]:
        host, _, port = gateway.partition(":")
        command = f"ssh {self.token}@{host}" if port in ("", "22") else f"ssh -p {port} {self.token}@{host}"

        def stamp(moment: datetime) -> str:
            return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

        return {
            "id": self.id,
            "sandboxId": self.sandbox_id,
            "token": self.token,
            "expiresAt": stamp(self.expires_at),
            "createdAt": stamp(self.created_at),
            "updatedAt": stamp(self.created_at),
            "sshCommand": command,
        }


@dataclass
class PtyClient:
    ws: web.WebSocketResponse
    exit_control: bool
    queue: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)


@dataclass
class PtySession:
    """An interactive shell on a real local pty (the daemon's ``PTYSession``)."""

    id: str
    cwd: str
    envs: dict[str, str]
    cols: int
    rows: int
    master: int = -1
    proc: asyncio.subprocess.Process | None = None
    created_at: str = field(default_factory=iso_now)
    active: bool = False
    clients: list[PtyClient] = field(default_factory=list)
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    exit_code: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "cwd": self.cwd,
            "envs": dict(self.envs),
            "cols": self.cols,
            "rows": self.rows,
            "createdAt": self.created_at,
            "active": self.active,
            "lazyStart": False,
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
    workdir: str | None = None  # the image's WORKDIR (a Dockerfile's, or the sandbox's it was taken from)
    state: str = "active"
    created_at: str = field(default_factory=iso_now)
    updated_at: str = ""  # the last change of state; the creation until then
    changed: float = field(default_factory=time.time)  # time.time() of that change

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
            "updatedAt": self.updated_at or self.created_at,
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
    """Fault injection, changed at run time through ``POST /_emulator/faults``.

    Log-stream faults (``drop_log_streams``: close 1011; ``stall_log_streams``: stop sending,
    never close; ``half_close_log_streams``: close the TCP connection without a close frame)
    strike a follow-logs stream at ``drop_after_bytes`` bytes of raw log (0: after its first
    frame), and only when the log goes on past that point; a stream that ends first is left
    alone and the fault stays armed. ``*_done`` count the faults that really struck.
    ``autostop_before_next_command``: the next session command finds its sandbox just stopped,
    as when auto-stop fires between a client's look-up and its command (400, not started);
    ``autostop_before_next_session``: the same for the next session to be created;
    ``autostop_before_next_exec``: the same for the next process-API command.
    ``stop_before_next_fork``: auto-stop asks for a stop of the next fork's source just before
    the fork (with config ``pending_seconds``, the source is still ``started`` but pending: 409).
    ``stopping_on_next_get``: auto-stop begins stopping the sandbox as a client looks it up
    (``GET /api/sandbox/{id}``), which then finds it ``stopping`` (config ``transition_seconds``).
    SDK 0.226's newer failures: ``rate_limit_next``: the next API or toolbox requests answer 429
    (Nest's throttler); ``queue_timeout_next_create``: the next create answers a sandbox Daytona
    destroyed for waiting too long for a runner (``queueTimedOutAt``: the SDK raises
    DaytonaQueueTimeoutError); ``spot_evict_next_start``: the next start answers a sandbox
    destroyed by spot preemption (``spotEvictedAt``: DaytonaSpotEvictedError);
    ``stall_next_create``: the next created sandbox stays ``creating`` and never starts (the
    SDK's create times out with the sandbox's id).
    ``slow_pty_handshake_ms``: the next PTY connection's ``connected`` control message comes
    this long after the WebSocket upgrade (a busy daemon or a slow hop; SDK 0.226 gives up
    after 0.1 s: its handshake catches TimeoutError, and httpx-ws raises queue.Empty).
    """

    fail_next: int = 0
    stopping_on_next_get: int = 0
    rate_limit_next: int = 0
    queue_timeout_next_create: int = 0
    spot_evict_next_start: int = 0
    stall_next_create: int = 0
    autostop_before_next_command: int = 0
    autostop_before_next_session: int = 0
    autostop_before_next_exec: int = 0
    stop_before_next_fork: int = 0
    drop_log_streams: int = 0
    drop_after_bytes: int = 0
    stall_log_streams: int = 0
    half_close_log_streams: int = 0
    latency_ms: int = 0
    slow_pty_handshake_ms: int = 0
    freeze_api: int = 0  # API and toolbox requests are accepted and not answered while it is set
    refuse_next_command: int = 0  # the next session command is refused (HTTP 400)
    refuse_next_upload: int = 0  # the next file upload is refused (HTTP 400)
    drops_done: int = 0
    stalls_done: int = 0
    half_closes_done: int = 0
    slow_pty_handshakes_done: int = 0

    def to_json(self) -> dict[str, int]:
        return dict(vars(self))

    def take_log_fault(self) -> str | None:
        """Consume one armed log-stream fault, if any: "drop", "stall" or "half_close"."""
        for kind, done in (("drop", "drops_done"), ("stall", "stalls_done"), ("half_close", "half_closes_done")):
            armed = f"{kind}_log_streams"
            if getattr(self, armed) > 0:
                setattr(self, armed, getattr(self, armed) - 1)
                setattr(self, done, getattr(self, done) + 1)
                return kind
        return None

    def log_fault_armed(self) -> bool:
        return self.drop_log_streams > 0 or self.stall_log_streams > 0 or self.half_close_log_streams > 0


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
        # Every request as it arrives (method, path), before latency or a fault: for tests that
        # must know a request reached Daytona while it is still held (the log has it once answered).
        self.arrived: list[tuple[str, str]] = []
        # Requests to Daytona (API, toolbox, their WebSockets) being handled now: a WebSocket
        # counts until it closes. The SDK's background Socket.IO channel does not count.
        self.in_flight = 0
        self.config: dict[str, Any] = dict(DEFAULT_CONFIG)
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        self._log_file: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._autostop_task: asyncio.Task[None] | None = None
        self._cookie_key = secrets.token_bytes(32)

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
        self._spawn_task(self._pgid_sweep_loop())
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
        kind = "preview" if host_match else self._kind(request.path)
        if not host_match:
            self.arrived.append((request.method, request.path))
        started = time.monotonic()
        if kind in NETWORK_KINDS and self.config["rtt_ms"]:
            # One round trip per request (a WebSocket's per set-up): what a client far from
            # Daytona's region waits before the answer can start, beyond Daytona's own time.
            await asyncio.sleep(float(self.config["rtt_ms"]) / 1000)
        if host_match:
            return await self._preview(request, int(host_match[1]), host_match[2], request.path.lstrip("/"))
        status = 500
        counted = kind in ("api", "toolbox", "other")
        self.in_flight += counted
        try:
            response = await self._guarded(request, handler, kind)
            status = response.status
            if isinstance(response, web.WebSocketResponse) and kind == "toolbox":
                kind = "ws"
            return response
        finally:
            self.in_flight -= counted
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
                while self.faults.freeze_api:
                    await asyncio.sleep(0.05)
                if self.faults.refuse_next_command > 0 and re.search(r"/process/session/[^/]+/exec$", request.path):
                    self.faults.refuse_next_command -= 1
                    raise ApiError(400, "Emulator fault: command refused")
                if self.faults.refuse_next_upload > 0 and request.path.endswith("/files/bulk-upload"):
                    self.faults.refuse_next_upload -= 1
                    raise ApiError(400, "Emulator fault: upload refused")
                if self.faults.rate_limit_next > 0:
                    self.faults.rate_limit_next -= 1
                    raise ApiError(429, "ThrottlerException: Too Many Requests", "TOO_MANY_REQUESTS")
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
        """Toolbox calls reset the auto-stop timer; control-plane calls do not (lifecycle changes
        and ``refresh_activity`` touch the sandbox in their own handlers)."""
        parts = path.split("/")
        key = parts[2] if kind == "toolbox" and len(parts) > 2 else None
        if key:
            sb = self._find_sandbox(key)
            if sb is not None and sb.state == "started":
                sb.touch()

    def _log(self, request: web.Request, status: int, started: float, kind: str) -> None:
        if self._log_file is None:
            return
        now, took = time.time(), time.monotonic() - started
        entry = {
            "ts": round(now, 3),
            "started": round(now - took, 3),
            "method": request.method,
            "path": request.path,
            "status": status,
            "duration_ms": round(took * 1000, 1),
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
                web.post(sb + "/pause", self._pause_sandbox),
                web.post(sb + "/fork", self._fork_sandbox),
                web.get("/api/sandbox/ssh-access/validate", self._validate_ssh_access),
                web.post(sb + "/ssh-access", self._create_ssh_access),
                web.delete(sb + "/ssh-access", self._revoke_ssh_access),
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
                web.post("/api/snapshots/{snap}/activate", self._activate_snapshot),
                web.get("/api/snapshots/{snap}/build-logs-url", self._snapshot_build_logs_url),
                web.get("/api/snapshots/{snap}/build-logs", self._snapshot_build_logs),
                web.get(tb + "/user-home-dir", self._home_dir),
                web.get(tb + "/work-dir", self._work_dir),
                web.get(tb + "/version", self._version),
                web.post(tb + "/files/folder", self._create_folder),
                web.post(tb + "/files/bulk-upload", self._bulk_upload),
                web.post(tb + "/files/bulk-download", self._bulk_download),
                web.get(tb + "/files/download", self._download),
                web.get(tb + "/files/info", self._file_info),
                web.get(tb + "/files", self._list_files),
                web.delete(tb + "/files", self._delete_file),
                web.post(tb + "/process/execute", self._execute),
                web.get(tb + "/process/pty/create-connect", self._pty_create_connect),
                web.post(tb + "/process/pty", self._pty_create),
                web.get(tb + "/process/pty", self._pty_list),
                web.get(tb + "/process/pty/{pty}", self._pty_get),
                web.delete(tb + "/process/pty/{pty}", self._pty_delete),
                web.post(tb + "/process/pty/{pty}/resize", self._pty_resize),
                web.get(tb + "/process/pty/{pty}/connect", self._pty_connect),
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
                web.post("/_emulator/reset", self._post_reset),
                web.get("/_emulator/signin", self._signin),
                web.get("/_emulator/signin/callback", self._signin_callback),
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
        if sb.state == "paused":  # unverified: pausing is for VM sandboxes, whose runner is not public
            raise ApiError(409, f"Sandbox {sb.id} is not started (state: {sb.state})")
        if sb.state != "started":
            raise ApiError(400, NOT_STARTED)
        return sb

    def _sandbox_response(self, sb: Sandbox) -> web.Response:
        return web.json_response(sb.to_json(self.toolbox_url))

    def _find_snapshot(self, id_or_name: str) -> Snapshot | None:
        snap = self.snapshots.get(id_or_name)
        return snap or next((s for s in self.snapshots.values() if s.name == id_or_name), None)

    @staticmethod
    def _resolve(sb: Sandbox, path: str | None) -> Path:
        """A sandbox path as the daemon opens it (``os.Create(dest)``, ``os.MkdirAll``, ...):
        absolute paths as given (host paths here), relative ones against the daemon's working
        directory (``sb.workdir``: the image's WORKDIR, else the home); no ``~`` expansion."""
        if not path:
            return sb.workdir
        p = Path(path)
        return p if p.is_absolute() else sb.workdir / p

    def _process_env(self, sb: Sandbox, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: os.environ[k] for k in ("PATH", "LANG") if k in os.environ}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        if self.config.get("sandbox_uv"):
            add_uv(env, self.root)
        env["HOME"] = str(sb.home)
        env.update(sb.env)
        for mapping in sb.secrets:  # real Daytona sets an opaque placeholder, never the plaintext
            env.update({var: f"daytona-secret-placeholder:{name}" for var, name in mapping.items()})
        env.update(extra or {})
        env["DAYTONA_SANDBOX_ID"] = sb.id
        env["DAYTONA_SANDBOX_USER"] = SANDBOX_USER
        return env

    async def _stop_processes(self, sb: Sandbox, paused: bool | None = None) -> None:
        """Kill every process of the sandbox and forget its sessions (their files stay).
        `paused`: its processes are frozen (default: the sandbox's state says so)."""
        for session in sb.sessions.values():
            session.close("stopped")
        if sb.state == "paused" if paused is None else paused:  # frozen processes take a SIGTERM only once thawed
            signal_pids(find_sandbox_pids(sb.id, sb.pgids), signal.SIGCONT)
        await kill_sandbox_processes(sb.id, sb.pgids)
        for pty_session in list(sb.ptys.values()):
            await self._pty_finish(sb, pty_session, 137)
        sb.pgids.clear()
        sb.sessions.clear()

    @contextlib.asynccontextmanager
    async def _kept_active(self, sb: Sandbox) -> AsyncIterator[None]:
        """While a connection through the proxy stays open, refresh the sandbox's activity about
        every 50 s (50/60 of a minute, scaled like auto-stop by ``autostop_seconds_per_minute``)."""

        async def pulse() -> None:
            last = time.monotonic()
            while True:
                factor = float(self.config.get("autostop_seconds_per_minute") or 0)
                interval = (factor if factor > 0 else 60.0) * ACTIVITY_REFRESH_MINUTES
                # Due within 2% of the interval: the proxy's refresh comes 10 s before the
                # shortest auto-stop (1 minute), and a coarse tick would eat that margin when
                # minutes are scaled down to a second.
                await asyncio.sleep(min(0.1, interval / 50))
                if time.monotonic() - last >= interval:
                    last = time.monotonic()
                    if sb.state == "started":
                        sb.touch()

        task = asyncio.create_task(pulse())
        try:
            yield
        finally:
            task.cancel()

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
        self.check_quota(int(body.get("cpu") or 1), int(body.get("memory") or 1), int(body.get("disk") or 3))
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
            sandbox_class=str(self.config.get("sandbox_class") or "container"),
            cpu=int(body.get("cpu") or 1),
            gpu=int(body.get("gpu") or 0),
            memory=int(body.get("memory") or 1),
            disk=int(body.get("disk") or 3),
            volumes=list(body.get("volumes") or []),
            secrets=list(body.get("secrets") or []),
            image_workdir=(snapshot.workdir if snapshot else None) or self.config.get("sandbox_workdir") or None,
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
        if self.faults.queue_timeout_next_create > 0:
            self.faults.queue_timeout_next_create -= 1
            sb.state = "destroyed"
            self.sandboxes[sid] = sb
            gone = sb.to_json(self.toolbox_url) | {"queueTimedOutAt": iso_now(), "queueTimeout": 5}
            return web.json_response(gone)
        if self.faults.stall_next_create > 0:
            self.faults.stall_next_create -= 1
            sb.state = "creating"
        if snapshot is not None:
            binaries_from = LINK_BINARIES_FROM if snapshot.source_sandbox_id else 0
            await asyncio.to_thread(link_copy_tree, snapshot.dir, sb.home, True, binaries_from)
        else:
            sb.home.mkdir(parents=True)
        sb.workdir.mkdir(parents=True, exist_ok=True)  # docker makes the image's WORKDIR
        sb.listed_from = time.monotonic() + float(self.config.get("list_lag_seconds") or 0)
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
            and time.monotonic() >= sb.listed_from  # Daytona's list is eventually consistent
        ]
        return web.json_response({"items": items, "nextCursor": None})

    async def _get_sandbox(self, request: web.Request) -> web.Response:
        sb = self._sandbox(request)
        if self.faults.stopping_on_next_get > 0 and sb.state == "started":
            self.faults.stopping_on_next_get -= 1
            self.begin_stop(sb)
        return self._sandbox_response(sb)

    async def _start_sandbox(self, request: web.Request) -> web.Response:
        sb = self._sandbox(request)
        if self.faults.spot_evict_next_start > 0:
            self.faults.spot_evict_next_start -= 1
            await self._stop_processes(sb)
            sb.state = "destroyed"
            return web.json_response(sb.to_json(self.toolbox_url) | {"spotEvictedAt": iso_now()})
        self.begin_start(sb)
        return self._sandbox_response(sb)

    def check_quota(self, cpu: int, memory: int, disk: int, exclude: Sandbox | None = None) -> None:
        """Daytona's validateOrganizationQuotas (sandbox.service.ts) for a create, a start
        (`exclude`: the sandbox itself) or a fork: what the organization's sandboxes use in
        their states (STATES_CONSUMING_*) plus this one must fit config quota_*, checked CPU,
        memory, disk in that order, each refused with 400 and Daytona's message."""
        others = [sb for sb in self.sandboxes.values() if sb is not exclude]
        compute = [sb for sb in others if sb.state in STATES_CONSUMING_COMPUTE]
        disk_users = [sb for sb in others if sb.state in STATES_CONSUMING_DISK]
        for key, used, wanted, message in (
            ("quota_cpu", sum(sb.cpu for sb in compute), cpu, "Total CPU limit exceeded. Maximum allowed: {}."),
            (
                "quota_memory",
                sum(sb.memory for sb in compute),
                memory,
                "Total memory limit exceeded. Maximum allowed: {}GiB.",
            ),
            (
                "quota_disk",
                sum(sb.disk for sb in disk_users),
                disk,
                "Total disk limit exceeded. Maximum allowed: {}GiB.\n" + ARCHIVE_SANDBOXES_MESSAGE,
            ),
        ):
            quota = self.config.get(key)
            if quota is not None and used + wanted > int(quota):
                raise ApiError(400, message.format(quota) + "\n" + UPGRADE_TIER_MESSAGE)

    def _transition_seconds(self) -> float:
        return max(0.0, float(self.config.get("transition_seconds") or 0))

    def begin_start(self, sb: Sandbox) -> asyncio.Task[None] | None:
        """Daytona's start, in its order of checks (sandbox.service.ts start): a started
        sandbox is answered as it is; a change under way is 409; only stopped (or archived)
        and paused sandboxes start (400). It passes through ``starting`` for config
        ``transition_seconds`` (the task that ends it is returned; None when it was instant).
        A paused sandbox resumes (SIGCONT: its processes go on); any other start issues a new
        preview token, so links and tokens printed before it stop working."""
        if sb.state == "started" and not sb.pending:
            return None
        if sb.state in ("error", "build_failed"):  # assertSandboxNotErrored, before anything else
            raise ApiError(400, "Sandbox is in an errored state")
        if sb.state in TRANSITIONAL_STATES or sb.pending:
            raise ApiError(409, STATE_CHANGE_IN_PROGRESS)
        if sb.state not in ("stopped", "archived", "paused"):
            raise ApiError(400, "Sandbox is not in valid state")
        resume = sb.state == "paused"
        if resume and sb.sandbox_class not in VM_CLASSES:
            raise ApiError(422, "Resuming is not supported for this sandbox", "UNPROCESSABLE_ENTITY")
        self.check_quota(sb.cpu, sb.memory, sb.disk, exclude=sb)
        if not resume:
            sb.preview_token = secrets.token_urlsafe(24)

        def finish() -> None:
            if sb.state != "starting" and sb.state != ("paused" if resume else "stopped"):
                return  # deleted meanwhile
            if resume:
                signal_pids(find_sandbox_pids(sb.id, sb.pgids), signal.SIGCONT)
            sb.state = "started"
            sb.updated_at = iso_now()
            sb.touch()

        return self._transition(sb, "starting", finish)

    def _transition(self, sb: Sandbox, passing: str, finish: Callable[[], Any]) -> asyncio.Task[None] | None:
        """Runs `finish` (a function, or one returning an awaitable) now, or later: the sandbox
        stays in its state with ``pending`` set for config ``pending_seconds`` (Daytona's API
        has set the desired state; its manager has not acted yet), then is in state `passing`
        for config ``transition_seconds``."""
        delay = self._transition_seconds()
        wait = max(0.0, float(self.config.get("pending_seconds") or 0))
        was = sb.state

        async def later() -> None:
            try:
                if wait > 0:
                    await asyncio.sleep(wait)
                    if sb.state != was:
                        return  # deleted meanwhile
                    sb.state = passing
                    sb.updated_at = iso_now()
                if delay > 0:
                    await asyncio.sleep(delay)
                result = finish()
                if asyncio.iscoroutine(result):
                    await result
            finally:
                sb.pending = False

        if delay <= 0 and wait <= 0:
            result = finish()
            if asyncio.iscoroutine(result):
                return self._spawn_task(result)
            return None
        sb.pending = True
        if wait <= 0:
            sb.state = passing
        sb.updated_at = iso_now()
        sb.touch()
        return self._spawn_task(later())

    def begin_stop(self, sb: Sandbox) -> asyncio.Task[None] | None:
        """Daytona's stop (sandbox.service.ts stop): a change under way is 409; only started or
        paused sandboxes stop (400 "Sandbox is not in a stoppable state", e.g. a stopped one).
        It passes through ``stopping`` for config ``transition_seconds``; processes die at
        the end, files stay."""
        if sb.state in TRANSITIONAL_STATES or sb.pending:
            raise ApiError(409, STATE_CHANGE_IN_PROGRESS)
        if sb.state not in ("started", "paused"):
            raise ApiError(400, "Sandbox is not in a stoppable state")
        was = sb.state

        async def finish() -> None:
            if sb.state not in ("stopping", was):
                return  # deleted meanwhile
            await self._stop_processes(sb, paused=was == "paused")
            sb.state = "stopped"
            sb.updated_at = iso_now()

        return self._transition(sb, "stopping", finish)

    async def autostop(self, sb: Sandbox) -> None:
        """What Daytona's auto-stop does: a stop, passing through ``stopping`` (an instant one
        is over when this returns)."""
        with contextlib.suppress(ApiError):  # not stoppable now: auto-stop leaves it
            task = self.begin_stop(sb)
            if task is not None and self._transition_seconds() <= 0:
                await task

    async def stop_sandbox(self, sb: Sandbox) -> None:
        """Stops the sandbox at once (processes die, files stay), whatever its state."""
        if sb.state != "stopped":
            await self._stop_processes(sb)
            sb.state = "stopped"
            sb.updated_at = iso_now()

    async def start_sandbox(self, sb: Sandbox) -> None:
        """Starts (or resumes) the sandbox and waits until it is started."""
        task = self.begin_start(sb)
        if task is not None:
            await task

    async def _stop_sandbox(self, request: web.Request) -> web.Response:
        sb = self._sandbox(request)
        task = self.begin_stop(sb)
        if task is not None and self._transition_seconds() <= 0:
            await task
        return self._sandbox_response(sb)

    async def _pause_sandbox(self, request: web.Request) -> web.Response:
        """Freeze every process of the sandbox (SIGSTOP), keeping their memory; ``start`` thaws
        them. Daytona checks, in this order: started (400), no change in progress (409), a
        class that can pause (422: containers, the default, cannot)."""
        sb = self._sandbox(request)
        if sb.state != "started":
            raise ApiError(400, "Sandbox must be in started state to pause")
        if sb.pending:
            raise ApiError(409, STATE_CHANGE_IN_PROGRESS)
        if sb.sandbox_class not in VM_CLASSES:
            raise ApiError(422, PAUSE_REFUSED, "UNPROCESSABLE_ENTITY")
        signal_pids(find_sandbox_pids(sb.id, sb.pgids), signal.SIGSTOP)
        sb.state = "paused"
        sb.updated_at = iso_now()
        return self._sandbox_response(sb)

    async def _fork_sandbox(self, request: web.Request) -> web.Response:
        """A new, started sandbox with a copy of this one's files, env, labels and settings (as
        Daytona's forkSandbox copies them); processes are not copied. Refused like Daytona, in
        its order: a class that cannot fork first (422: containers, the default), then 400
        unless started."""
        source = self._sandbox(request)
        if source.sandbox_class not in VM_CLASSES:
            raise ApiError(422, FORK_REFUSED, "UNPROCESSABLE_ENTITY")
        if self.faults.stop_before_next_fork > 0:
            self.faults.stop_before_next_fork -= 1
            with contextlib.suppress(ApiError):
                self.begin_stop(source)
        if source.state != "started":
            raise ApiError(400, "Sandbox must be in started state to fork")
        if source.pending:
            raise ApiError(409, STATE_CHANGE_IN_PROGRESS)
        body = await self._json_body(request)
        sid = str(uuid.uuid4())
        name = body.get("name") or sid
        if self._find_sandbox(name) is not None:
            raise ApiError(409, f"Sandbox with name {name} already exists")
        self.check_quota(source.cpu, source.memory, source.disk)
        sb = Sandbox(
            id=sid,
            name=name,
            dir=self.root / "sandboxes" / sid,
            env=dict(source.env),
            labels=dict(source.labels),
            public=source.public,
            target=source.target,
            snapshot=source.snapshot,
            preview_token=secrets.token_urlsafe(24),
            sandbox_class=source.sandbox_class,
            cpu=source.cpu,
            gpu=source.gpu,
            memory=source.memory,
            disk=source.disk,
            auto_stop_interval=source.auto_stop_interval,
            auto_archive_interval=source.auto_archive_interval,
            auto_delete_interval=source.auto_delete_interval,
            volumes=[dict(v) for v in source.volumes],
            secrets=list(source.secrets),
            image_workdir=source.image_workdir,
            fork_parent=source.id,
        )
        # Copy-on-write on Daytona; here private copies of all but big binaries (see the docstring).
        await asyncio.to_thread(link_copy_tree, source.home, sb.home, True, LINK_BINARIES_FROM)
        sb.workdir.mkdir(parents=True, exist_ok=True)
        sb.listed_from = time.monotonic() + float(self.config.get("list_lag_seconds") or 0)
        self.sandboxes[sid] = sb
        source.touch()
        return self._sandbox_response(sb)

    async def _create_ssh_access(self, request: web.Request) -> web.Response:
        """A new SSH token (any earlier one of the sandbox is revoked first, as on Daytona),
        valid ``expiresInMinutes`` (default 60)."""
        sb = self._sandbox(request)
        try:
            minutes = int(request.query.get("expiresInMinutes") or 60)
        except ValueError as exc:
            raise ApiError(400, "expiresInMinutes must be a number") from exc
        now = datetime.now(timezone.utc)
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
        access = SshAccess(
            id=str(uuid.uuid4()),
            sandbox_id=sb.id,
            token="".join(secrets.choice(alphabet) for _ in range(32)),
            expires_at=now + timedelta(minutes=minutes),
            created_at=now,
        )
        sb.ssh_accesses = [access]
        return web.json_response(access.to_json(str(self.config.get("ssh_gateway") or "localhost")))

    async def _revoke_ssh_access(self, request: web.Request) -> web.Response:
        sb = self._sandbox(request)
        token = request.query.get("token")
        sb.ssh_accesses = [a for a in sb.ssh_accesses if token and a.token != token]
        return self._sandbox_response(sb)

    async def _validate_ssh_access(self, request: web.Request) -> web.Response:
        """What Daytona's SSH gateway asks: is this token valid, and for which sandbox."""
        token = request.query.get("token", "")
        now = datetime.now(timezone.utc)
        for sb in self.sandboxes.values():
            if sb.state == "destroyed":
                continue
            for access in sb.ssh_accesses:
                if secrets.compare_digest(access.token, token) and access.expires_at > now:
                    return web.json_response({"valid": True, "sandboxId": sb.id})
        return web.json_response({"valid": False, "sandboxId": None})

    async def _delete_sandbox(self, request: web.Request) -> web.Response:
        sb = self._sandbox(request)
        if sb.state in TRANSITIONAL_STATES or sb.pending:  # sandbox.service.ts destroy: pending -> 409
            raise ApiError(409, STATE_CHANGE_IN_PROGRESS)
        forks = [c.id for c in self.sandboxes.values() if c.fork_parent == sb.id and c.state != "destroyed"]
        if forks:  # ... then its live fork children: 400
            raise ApiError(400, HAS_FORKS, "BAD_REQUEST")
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
        if not 1 <= expires <= 86400:
            raise ApiError(400, "expiresInSeconds must be between 1 second and 24 hours")
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
            workdir=dockerfile_workdir(dockerfile),
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

    async def _activate_snapshot(self, request: web.Request) -> web.Response:
        """Daytona deactivates snapshots nobody used for a while (`set_snapshot_state` plays
        that part here); activating makes one usable again. As snapshot.service.ts
        activateSnapshot checks: the id must be a UUID (the controller's ParseUUIDPipe: the SDK
        resolves a name first), an active snapshot is 400, so is one not inactive, and one
        deactivated less than 10 minutes ago; then it passes through ``pending`` (config
        ``transition_seconds``) to ``active``."""
        if not UUID_RE.match(request.match_info["snap"]):
            raise ApiError(400, "Validation failed (uuid is expected)", "BAD_REQUEST")
        snap = self._snapshot(request)
        if snap.state == "active":
            raise ApiError(400, f"Snapshot {snap.id} is already active", "BAD_REQUEST")
        if snap.state != "inactive":
            raise ApiError(400, f"Snapshot {snap.id} cannot be activated - it is in {snap.state} state", "BAD_REQUEST")
        if time.time() - snap.changed < SNAPSHOT_ACTIVATION_COOLDOWN_S:
            raise ApiError(
                400, "Snapshot deactivation is still in progress. Please try again in a few minutes.", "BAD_REQUEST"
            )
        self._set_snapshot_state(snap, "pending")
        delay = self._transition_seconds()

        async def activate() -> None:
            await asyncio.sleep(delay)
            if snap.state == "pending":
                self._set_snapshot_state(snap, "active")

        if delay > 0:
            self._spawn_task(activate())
        else:
            self._set_snapshot_state(snap, "active")
        return web.json_response(snap.to_json())

    @staticmethod
    def _set_snapshot_state(snap: Snapshot, state: str, ago: float = 0.0) -> None:
        snap.state = state
        snap.changed = time.time() - ago
        moment = datetime.fromtimestamp(snap.changed, timezone.utc)
        snap.updated_at = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

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
        snap = self._new_snapshot(body["name"], source_sandbox_id=sb.id, workdir=sb.image_workdir)
        await asyncio.to_thread(link_copy_tree, sb.home, snap.dir, True, LINK_BINARIES_FROM)
        self.snapshots[snap.id] = snap
        return self._sandbox_response(sb)

    # -- toolbox: info and files -----------------------------------------------------------

    async def _home_dir(self, request: web.Request) -> web.Response:
        return web.json_response({"dir": str(self._running_sandbox(request).home)})

    async def _work_dir(self, request: web.Request) -> web.Response:
        return web.json_response({"dir": str(self._running_sandbox(request).workdir)})

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
                paths[index] = (await part.text()).strip()  # the daemon trims it, then uses it as given
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
        """``process.exec``: the command is piped into a fresh shell (own process group); the
        answer waits for the shell to exit AND for every holder of its output pipe to close it."""
        if self.faults.autostop_before_next_exec > 0:
            self.faults.autostop_before_next_exec -= 1
            await self.autostop(self._sandbox(request))
        sb = self._running_sandbox(request)
        body = await self._json_body(request)
        command = body.get("command")
        if not isinstance(command, str) or not command.strip():
            raise ApiError(400, "command cannot be empty or whitespace-only")
        envs = body.get("envs") or {}
        for key in envs:
            if not ENV_KEY.match(str(key)):
                raise ApiError(400, f"invalid environment variable name: '{key}'")
        workdir = self._resolve(sb, body.get("cwd"))
        record = Command(id=str(uuid.uuid4()), session_id=None, command=command)
        sb.history.append(record)
        try:
            proc = await asyncio.create_subprocess_exec(
                session_shell(),
                cwd=workdir,
                env=self._process_env(sb, {str(k): str(v) for k, v in envs.items()}),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                **OWN_PROCESS_GROUP,
            )
        except OSError as exc:
            record.exit_code = -1
            return web.json_response({"exitCode": -1, "result": str(exc)})
        sb.pgids.add(proc.pid)
        timeout = body.get("timeout") or None
        try:
            output, _ = await asyncio.wait_for(proc.communicate(command.encode()), timeout)
        except asyncio.TimeoutError:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            record.exit_code = -1
            raise ApiError(408, "command execution timeout", "REQUEST_TIMEOUT") from None
        assert proc.returncode is not None
        # The daemon reports -1 for a shell killed by a signal (ProcessState.ExitCode()).
        record.exit_code = -1 if proc.returncode < 0 else proc.returncode
        return web.json_response({"exitCode": record.exit_code, "result": output.decode("utf-8", "replace")})

    def _session(self, request: web.Request, sb: Sandbox) -> Session:
        session = sb.sessions.get(request.match_info["session"])
        if session is None:
            raise ApiError(404, "session not found")
        return session

    def _command(self, request: web.Request) -> tuple[Sandbox, Session, Command]:
        sb = self._running_sandbox(request)
        session = self._session(request, sb)
        cmd = session.commands.get(request.match_info["cid"])
        if cmd is None:
            raise ApiError(404, "command not found")
        return sb, session, cmd

    @staticmethod
    def _session_json(session: Session) -> dict[str, Any]:
        return {"sessionId": session.id, "commands": [c.to_json() for c in session.commands.values()]}

    async def _create_session(self, request: web.Request) -> web.Response:
        if self.faults.autostop_before_next_session > 0:
            self.faults.autostop_before_next_session -= 1
            await self.autostop(self._sandbox(request))
        sb = self._running_sandbox(request)
        body = await self._json_body(request)
        sid = body.get("sessionId")
        if not isinstance(sid, str) or not sid:
            raise ApiError(400, "sessionId is required")
        if sid in sb.sessions:
            raise ApiError(409, "session already exists")
        shell = await asyncio.create_subprocess_exec(
            session_shell(),
            cwd=sb.home if legacy_sdk(request) else sb.workdir,
            env=self._process_env(sb),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            **OWN_PROCESS_GROUP,
        )
        sb.pgids.add(shell.pid)
        session = Session(sid, sb.home / ".daytona" / "sessions" / sid, shell)
        sb.sessions[sid] = session
        session.dir.mkdir(parents=True, exist_ok=True)
        return web.Response(status=201)

    async def _list_sessions(self, request: web.Request) -> web.Response:
        sb = self._running_sandbox(request)
        return web.json_response([self._session_json(s) for s in sb.sessions.values()])

    async def _get_session(self, request: web.Request) -> web.Response:
        sb = self._running_sandbox(request)
        return web.json_response(self._session_json(self._session(request, sb)))

    async def _delete_session(self, request: web.Request) -> web.Response:
        """SIGTERM the shell's group and descendants; SIGKILL them if some outlive the grace."""
        sb = self._running_sandbox(request)
        session = self._session(request, sb)
        pid = session.shell.pid
        signal_session(pid, signal.SIGTERM)
        deadline = time.monotonic() + KILL_GRACE_SECONDS
        graceful = False
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            if not process_alive(pid) or not parent_map().get(pid):
                graceful = True
                break
        if not graceful:
            signal_session(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):  # the daemon's context cancel kills the shell itself
            os.kill(pid, signal.SIGKILL)
        session.close("deleted")
        sb.sessions.pop(session.id, None)
        await asyncio.to_thread(shutil.rmtree, session.dir, True)
        return web.Response(status=204)

    async def _session_exec(self, request: web.Request) -> web.Response:
        if self.faults.autostop_before_next_command > 0:
            self.faults.autostop_before_next_command -= 1
            await self.autostop(self._sandbox(request))
        sb = self._running_sandbox(request)
        body = await self._json_body(request)
        command = body.get("command")
        if not isinstance(command, str) or not command.strip():
            raise ApiError(400, "command cannot be empty")
        # The daemon's handler wraps the service's errors (fmt.Errorf "failed to execute
        # command: %w"), and its error middleware does not unwrap: 500, not 404 or 400
        # (toolbox/process/session/execute.go, libs/common-go/pkg/errors/middleware.go).
        session = sb.sessions.get(request.match_info["session"])
        if session is None:
            raise ApiError(500, f"{EXEC_FAILED}session not found", "")
        run_async = bool(body.get("runAsync") or body.get("async"))
        cid = str(uuid.uuid4())
        cmd = Command(
            id=cid,
            session_id=session.id,
            command=command,
            dir=session.dir / cid,
            suppress_input_echo=bool(body.get("suppressInputEcho")),
        )
        session.commands[cmd.id] = cmd
        sb.history.append(cmd)
        try:
            (session.dir / cid).mkdir(parents=True, exist_ok=True)
            cmd.log_path.write_bytes(b"")
            script = session.dir / cid / "cmd.sh"
            script.write_text(command)
            script.chmod(0o600)
        except OSError as exc:
            raise ApiError(400, f"failed to prepare command: {exc}") from exc
        block = SESSION_WRAPPER.format(
            dir=shlex.quote(str(session.dir / cid)),
            script=shlex.quote(str(script)),
            holder=HOLD_STDIN_ASYNC if run_async else HOLD_STDIN_SYNC,
        )
        await self._write_to_shell(session, block.encode())
        if run_async:
            return web.json_response({"cmdId": cmd.id}, status=202)
        while (code := cmd.refresh()) is None:
            if session.closed.is_set():
                cmd.exit_code = 1
                raise ApiError(400, "session cancelled")
            if request.transport is None or request.transport.is_closing():
                return web.Response(status=499)  # the client is gone; nobody reads this
            await asyncio.sleep(0.05)
        raw = cmd.log_path.read_bytes() if cmd.log_path.exists() else b""
        stdout, stderr = demux_log(raw)
        return web.json_response(
            {
                "cmdId": cmd.id,
                "output": raw.decode("utf-8", "replace"),
                "stdout": stdout.decode("utf-8", "replace"),
                "stderr": stderr.decode("utf-8", "replace"),
                "exitCode": code,
            }
        )

    @staticmethod
    async def _write_to_shell(session: Session, data: bytes) -> None:
        """Write to the session shell's stdin; a shell that has exited answers "broken pipe"."""
        stdin = session.shell.stdin
        broken = ApiError(500, f"{EXEC_FAILED}failed to write command: broken pipe", "")
        if stdin is None or stdin.is_closing() or not process_alive(session.shell.pid):
            raise broken
        try:
            stdin.write(data)
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise broken from exc

    async def _get_command(self, request: web.Request) -> web.Response:
        return web.json_response(self._command(request)[2].to_json())

    async def _command_logs(self, request: web.Request) -> web.StreamResponse:
        sb, session, cmd = self._command(request)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            try:
                log = open(cmd.log_path, "rb", buffering=0)  # noqa: SIM115
            except FileNotFoundError as exc:
                raise ApiError(404, str(exc)) from exc
            with log:
                return await self._follow_logs(request, sb, session, cmd, log)
        try:
            raw = cmd.log_path.read_bytes()
        except FileNotFoundError as exc:
            raise ApiError(404, str(exc)) from exc
        stdout, stderr = demux_log(raw)
        return web.json_response(
            {
                "output": raw.decode("utf-8", "replace"),
                "stdout": stdout.decode("utf-8", "replace"),
                "stderr": stderr.decode("utf-8", "replace"),
            }
        )

    async def _follow_logs(
        self, request: web.Request, sb: Sandbox, session: Session, cmd: Command, log: Any
    ) -> web.WebSocketResponse:
        """Stream the raw log like the daemon: replay from byte 0 in frames of at most 1024
        bytes, poll every 20 ms at EOF, and close 1000 once 50 reads in a row found nothing
        new and the exit code file exists. Pings from the client are answered, none are sent."""
        ws = web.WebSocketResponse()  # autoping answers pings; no heartbeat: never pings
        await ws.prepare(request)
        client_gone = asyncio.create_task(self._drain_websocket(ws))
        cut = self.faults.drop_after_bytes if self.faults.drop_after_bytes > 0 else None
        sent = empty = 0
        ended_by = "client"
        try:
            async with self._kept_active(sb):
                while not client_gone.done():
                    if session.closed.is_set():
                        ended_by = "session-closed"
                        if session.close_reason == "stopped":  # the daemon died with the sandbox
                            self._abort_connection(request)
                        else:
                            await ws.close(code=1000)
                        return ws
                    chunk = log.read(LOG_FRAME_BYTES)
                    if not chunk:
                        empty += 1
                        if empty >= LOG_EOF_READS:
                            if cmd.refresh() is not None:
                                ended_by = "server"
                                await ws.close(code=1000)
                                return ws
                            empty = 0
                        await asyncio.wait([client_gone], timeout=LOG_POLL_SECONDS)
                        continue
                    empty = 0
                    if cut is not None and sent + len(chunk) > cut and (fault := self.faults.take_log_fault()):
                        ended_by = fault
                        if cut > sent:
                            await ws.send_bytes(chunk[: cut - sent])
                        await self._strike(fault, request, ws, client_gone)
                        return ws
                    await ws.send_bytes(chunk)
                    sent += len(chunk)
                    if cut is None:
                        cut = sent  # drop_after_bytes 0: strike after the first frame
        except (ConnectionResetError, RuntimeError):
            pass
        finally:
            client_gone.cancel()
            cmd.streams_ended_by.append(ended_by)
        return ws

    @staticmethod
    async def _drain_websocket(ws: web.WebSocketResponse) -> None:
        """Read (and so answer pings and close frames) until the client goes."""
        async for _ in ws:
            pass

    @staticmethod
    def _abort_connection(request: web.Request) -> None:
        if request.transport is not None:
            request.transport.close()  # FIN, no close frame

    async def _strike(self, fault: str, request: web.Request, ws: web.WebSocketResponse, client_gone: Any) -> None:
        if fault == "drop":
            await ws.close(code=1011, message=b"emulator fault: log stream dropped")
        elif fault == "stall":
            await client_gone  # silent but open (pings still answered) until the client leaves
        else:
            self._abort_connection(request)

    async def _command_input(self, request: web.Request) -> web.Response:
        _, _, cmd = self._command(request)
        body = await self._json_body(request)
        data = body.get("data")
        if not isinstance(data, str):
            raise ApiError(400, "data is required")
        if cmd.refresh() is not None:
            raise ApiError(410, f"command has already completed with exit code {cmd.exit_code}")
        if not data.endswith("\n"):
            data += "\n"
        try:
            await asyncio.to_thread(write_fifo, cmd.input_path, data.encode(), INPUT_OPEN_TIMEOUT_SECONDS)
        except OSError as exc:
            raise ApiError(500, f"failed to open input pipe: {exc}", "INTERNAL_SERVER_ERROR") from exc
        if not cmd.suppress_input_echo:
            with contextlib.suppress(OSError), open(cmd.log_path, "ab") as f:
                f.write(STDOUT_MARK + data.encode())
        return web.Response(status=204)

    # -- toolbox: PTY sessions (daemon pkg/toolbox/process/pty) ------------------------------

    def _pty(self, request: web.Request, sb: Sandbox) -> PtySession:
        session = sb.ptys.get(request.match_info["pty"])
        if session is None:
            raise ApiError(404, "PTY session not found")
        return session

    @staticmethod
    def _pty_size(value: Any, name: str, default: int) -> int:
        if value is None or value == "":
            return default
        try:
            size = int(value)
        except (TypeError, ValueError) as exc:
            raise ApiError(400, f"invalid value for {name}") from exc
        if not 0 <= size <= PTY_MAX_SIZE:  # the daemon refuses only > 1000; 0 is accepted
            raise ApiError(400, f"invalid value for {name} - must be less than {PTY_MAX_SIZE}")
        return size

    async def _pty_start(
        self, sb: Sandbox, pty_id: str, cwd: str | None, envs: dict[str, str], cols: int, rows: int
    ) -> PtySession:
        """The daemon's create: ``$SHELL -i -l`` on a new pty of cols x rows, in ``cwd`` (default
        the daemon's working directory), with TERM=xterm-256color unless ``envs`` sets it."""
        if not pty_id:
            raise ApiError(400, "session ID is required")
        if pty_id in sb.ptys:
            raise ApiError(409, f"PTY session with ID '{pty_id}' already exists")
        envs = {str(k): str(v) for k, v in envs.items()}
        envs.setdefault("TERM", "xterm-256color")
        directory = str(self._resolve(sb, cwd))
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

        def controlling_tty() -> None:
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        try:
            proc = await asyncio.create_subprocess_exec(
                session_shell(),
                "-i",
                "-l",
                cwd=directory,
                env=self._process_env(sb, envs),
                stdin=slave,
                stdout=slave,
                stderr=slave,
                preexec_fn=controlling_tty,
            )
        except OSError as exc:
            os.close(master)
            raise ApiError(500, "failed to start PTY session") from exc
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        session = PtySession(pty_id, directory, envs, cols, rows, master=master, proc=proc, active=True)
        sb.ptys[pty_id] = session
        sb.pgids.add(proc.pid)
        asyncio.get_running_loop().add_reader(master, self._pty_read, session)
        self._spawn_task(self._pty_reap(sb, session))
        return session

    @staticmethod
    def _pty_read(session: PtySession) -> None:
        try:
            data = os.read(session.master, 32 * 1024)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # EIO: every holder of the terminal is gone
            asyncio.get_running_loop().remove_reader(session.master)
            return
        for client in session.clients:
            client.queue.put_nowait(data)

    async def _pty_reap(self, sb: Sandbox, session: PtySession) -> None:
        assert session.proc is not None
        code = exit_status(await session.proc.wait())
        await self._pty_finish(sb, session, code)

    async def _pty_finish(self, sb: Sandbox, session: PtySession, code: int) -> None:
        """The shell ended (or was killed): send what it wrote last, then tell every client its
        exit code (the "exited" control message to those that asked for it, and the close frame
        the daemon sends: 1000 for 0, else 1011 with {"exitCode", "exitReason"})."""
        if session.exited.is_set():
            return
        session.exited.set()
        session.exit_code = code
        session.active = False
        sb.ptys.pop(session.id, None)
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError, ValueError):
            loop.remove_reader(session.master)
        while True:  # what is left in the terminal
            try:
                data = os.read(session.master, 32 * 1024)
            except OSError:
                break
            if not data:
                break
            for client in session.clients:
                client.queue.put_nowait(data)
        with contextlib.suppress(OSError):
            os.close(session.master)
        for client in session.clients:
            client.queue.put_nowait(None)

    @staticmethod
    def _pty_exit_reason(code: int) -> str | None:
        if code == 0:
            return None
        named = {130: "Ctrl+C", 137: "SIGKILL", 143: "SIGTERM"}
        return named.get(code) or (f"signal {code - 128}" if code > 128 else "non-zero exit")

    async def _pty_attach(
        self, request: web.Request, sb: Sandbox, session: PtySession | None, error: str | None = None
    ) -> web.WebSocketResponse:
        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        ws = web.WebSocketResponse(protocols=[PTY_EXIT_CONTROL] if PTY_EXIT_CONTROL in offered else [])
        await ws.prepare(request)
        if session is None or session.exited.is_set():
            message = {
                "type": "control",
                "status": "error",
                "error": f"Failed to connect to PTY session: {error or 'session exited'}",
            }
            await ws.send_str(json.dumps(message))
            await ws.close()
            return ws
        client = PtyClient(ws, PTY_EXIT_CONTROL in offered)
        session.clients.append(client)

        async def writer() -> None:
            while (data := await client.queue.get()) is not None:
                await ws.send_bytes(data)
            code = session.exit_code if session.exit_code is not None else 1
            reason = self._pty_exit_reason(code)
            if client.exit_control:
                control: dict[str, Any] = {"type": "control", "status": "exited", "exitCode": code}
                if reason:
                    control["exitReason"] = reason
                await ws.send_str(json.dumps(control))
            close: dict[str, Any] = {"exitCode": code}
            if reason:
                close["exitReason"] = reason
            await ws.close(code=1000 if code == 0 else 1011, message=json.dumps(close).encode())

        if self.faults.slow_pty_handshake_ms:
            delay, self.faults.slow_pty_handshake_ms = self.faults.slow_pty_handshake_ms, 0
            self.faults.slow_pty_handshakes_done += 1
            await asyncio.sleep(delay / 1000)
        await ws.send_str(json.dumps({"type": "control", "status": "connected"}))
        sending = asyncio.create_task(writer())
        try:
            async with self._kept_active(sb):
                async for msg in ws:
                    if msg.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                        data = msg.data if isinstance(msg.data, bytes) else msg.data.encode()
                        if session.exited.is_set():
                            break
                        await asyncio.to_thread(self._pty_write, session.master, data)
                    else:
                        break
                await asyncio.wait([sending], timeout=5)
        except (ConnectionResetError, OSError):
            pass
        finally:
            sending.cancel()
            with contextlib.suppress(ValueError):
                session.clients.remove(client)
        return ws

    @staticmethod
    def _pty_write(master: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(master, view) :]
            except BlockingIOError:
                time.sleep(0.005)

    async def _pty_create(self, request: web.Request) -> web.Response:
        sb = self._running_sandbox(request)
        body = await self._json_body(request)
        session = await self._pty_start(
            sb,
            str(body.get("id") or ""),
            body.get("cwd"),
            dict(body.get("envs") or {}),
            self._pty_size(body.get("cols"), "cols", 80),
            self._pty_size(body.get("rows"), "rows", 24),
        )
        return web.json_response({"sessionId": session.id}, status=201)

    async def _pty_create_connect(self, request: web.Request) -> web.StreamResponse:
        """SDK 0.226's one round trip (newer than the public daemon source): create from the
        query (id, cols, rows, cwd) and the envs subprotocol, then attach as ``connect`` does."""
        sb = self._running_sandbox(request)
        envs: dict[str, str] = {}
        for proto in request.headers.get("Sec-WebSocket-Protocol", "").split(","):
            proto = proto.strip()
            if proto.startswith(PTY_ENVS_PROTOCOL):
                encoded = proto[len(PTY_ENVS_PROTOCOL) :]
                try:
                    envs = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
                except (ValueError, json.JSONDecodeError) as exc:
                    raise ApiError(400, "invalid PTY envs") from exc
        q = request.query
        session = await self._pty_start(
            sb,
            q.get("id", ""),
            q.get("cwd"),
            envs,
            self._pty_size(q.get("cols"), "cols", 80),
            self._pty_size(q.get("rows"), "rows", 24),
        )
        return await self._pty_attach(request, sb, session)

    async def _pty_connect(self, request: web.Request) -> web.StreamResponse:
        sb = self._running_sandbox(request)
        session = sb.ptys.get(request.match_info["pty"])
        return await self._pty_attach(request, sb, session, None if session else "PTY session not found")

    async def _pty_list(self, request: web.Request) -> web.Response:
        sb = self._running_sandbox(request)
        return web.json_response({"sessions": [s.to_json() for s in sb.ptys.values()]})

    async def _pty_get(self, request: web.Request) -> web.Response:
        sb = self._running_sandbox(request)
        return web.json_response(self._pty(request, sb).to_json())

    async def _pty_delete(self, request: web.Request) -> web.Response:
        """SIGKILL the shell's descendants, then the shell; clients get exit code 137."""
        sb = self._running_sandbox(request)
        session = self._pty(request, sb)
        assert session.proc is not None
        for child in descendants(session.proc.pid):
            with contextlib.suppress(OSError):
                os.kill(child, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            session.proc.kill()
        await self._pty_finish(sb, session, 137)
        return web.json_response({"message": "PTY session deleted"})

    async def _pty_resize(self, request: web.Request) -> web.Response:
        sb = self._running_sandbox(request)
        body = await self._json_body(request)
        cols = self._pty_size(body.get("cols"), "cols", 0)
        rows = self._pty_size(body.get("rows"), "rows", 0)
        session = sb.ptys.get(request.match_info["pty"])
        if session is None or not session.active:
            raise ApiError(410, "PTY session not found or inactive", "GONE")
        # The kernel sends SIGWINCH to the terminal's foreground process group.
        fcntl.ioctl(session.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        session.cols, session.rows = cols, rows
        return web.json_response(session.to_json())

    # -- preview proxy ---------------------------------------------------------------------

    async def _preview_route(self, request: web.Request) -> web.StreamResponse:
        m = PREVIEW_TARGET.match(request.match_info["target"])
        if not m:
            return web.Response(status=404, text="Unknown preview URL\n")
        return await self._preview(request, int(m[1]), m[2], request.match_info.get("tail", ""))

    def _cookie_value(self, name: str, sandbox_id: str) -> str:
        mac = hmac.new(self._cookie_key, f"{name}|{sandbox_id}".encode(), hashlib.sha256).hexdigest()
        return f"{sandbox_id}.{mac}"

    def _cookie_sandbox(self, name: str, value: str) -> str | None:
        sandbox_id, _, _ = value.rpartition(".")
        if sandbox_id and secrets.compare_digest(value, self._cookie_value(name, sandbox_id)):
            return sandbox_id
        return None

    def _set_auth_cookie(self, response: web.StreamResponse, key: str, sandbox_id: str) -> None:
        name = PREVIEW_COOKIE_PREFIX + key
        response.set_cookie(name, self._cookie_value(name, sandbox_id), max_age=3600, path="/", httponly=True)

    def _preview_auth(self, request: web.Request, port: int, key: str) -> tuple[str | None, dict[str, Any]]:
        """Daytona's proxy order: Bearer API key, X-Daytona-Preview-Token, the query parameter
        DAYTONA_SANDBOX_AUTH_KEY, the auth cookie, a signed-URL token. Returns the sandbox id (None
        when all fail) and what to change in the forwarded request / the response."""
        sb = self._find_sandbox(key)
        changes: dict[str, Any] = {}
        if sb is not None and sb.public:
            return sb.id, changes
        if sb is not None:
            if request.headers.get("Authorization", "") == f"Bearer {self.api_key}":
                changes["drop_authorization"] = True
                return sb.id, changes
            if secrets.compare_digest(request.headers.get(PREVIEW_TOKEN_HEADER, ""), sb.preview_token):
                return sb.id, changes
            if secrets.compare_digest(request.query.get(PREVIEW_QUERY_KEY, ""), sb.preview_token):
                changes["drop_query_key"] = True
                return sb.id, changes
        cookie = request.cookies.get(PREVIEW_COOKIE_PREFIX + key)
        if cookie and (cookie_sandbox := self._cookie_sandbox(PREVIEW_COOKIE_PREFIX + key, cookie)):
            return cookie_sandbox, changes
        signed = self.signed_urls.get(key)
        if signed is not None and signed.valid() and signed.port == port:
            changes["set_cookie"] = signed.sandbox_id
            return signed.sandbox_id, changes
        return None, changes

    def _signin_redirect(self, request: web.Request, port: int, key: str) -> web.Response:
        query = urllib.parse.urlencode({"target": key, "port": port, "redirect": str(request.url)})
        return web.Response(status=307, headers={"Location": f"{self.base_url}/_emulator/signin?{query}"})

    async def _preview(self, request: web.Request, port: int, key: str, tail: str) -> web.StreamResponse:
        sandbox_id, changes = self._preview_auth(request, port, key)
        if sandbox_id is None:
            return self._signin_redirect(request, port, key)
        sb = self._find_sandbox(sandbox_id)
        if sb is None:
            return web.Response(status=404, text="Sandbox not found\n")
        if sb.state == "paused":  # unverified, as for the toolbox
            return web.Response(status=502, text=f"Sandbox {sb.id} is not started (state: {sb.state})\n")
        if sb.state != "started":
            return json_error(400, NOT_STARTED)
        skip_activity = request.headers.get(SKIP_ACTIVITY_HEADER, "").lower() == "true"
        if not skip_activity:
            sb.touch()
        url = f"http://localhost:{port}/{tail}"
        if changes.get("drop_query_key"):
            kept = [(k, v) for k, v in request.query.items() if k != PREVIEW_QUERY_KEY]
            url += "?" + urllib.parse.urlencode(kept) if kept else ""
        elif request.query_string:
            url += f"?{request.query_string}"
        drop = HOP_BY_HOP | {SKIP_ACTIVITY_HEADER.lower()}
        if changes.get("drop_authorization"):
            drop = drop | {"authorization"}
        headers = {k: v for k, v in request.headers.items() if k.lower() not in drop}
        keeper = contextlib.nullcontext() if skip_activity else self._kept_active(sb)
        async with keeper:
            if request.headers.get("Upgrade", "").lower() == "websocket":
                return await self._proxy_websocket(request, url, headers)
            return await self._proxy_http(request, url, headers, changes.get("set_cookie"), key)

    async def _proxy_http(
        self, request: web.Request, url: str, headers: dict[str, str], cookie_for: str | None, key: str
    ) -> web.StreamResponse:
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
                if cookie_for:
                    self._set_auth_cookie(response, key, cookie_for)
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except aiohttp.ClientError:
            return web.Response(status=502)  # nothing listening: Daytona's proxy answers an empty 502

    async def _signin(self, request: web.Request) -> web.Response:
        """The sign-in page a refused preview redirects to (Daytona's is its OAuth login)."""
        query = urllib.parse.urlencode(
            {k: request.query.get(k, "") for k in ("target", "port", "redirect")}, quote_via=urllib.parse.quote
        )
        page = (
            "<!doctype html><title>Sign in - Daytona emulator</title>"
            "<h1>Sign in to see this preview</h1>"
            f'<p><a href="/_emulator/signin/callback?{html.escape(query)}">Continue as a member of {ORG_ID}</a></p>'
        )
        return web.Response(text=page, content_type="text/html")

    async def _signin_callback(self, request: web.Request) -> web.Response:
        """Signing in sets the auth cookie for the sandbox and goes back to the preview."""
        key = request.query.get("target", "")
        sb = self._find_sandbox(key)
        if sb is None:
            raise ApiError(404, "Sandbox not found")
        redirect = request.query.get("redirect") or "/"
        response = web.Response(status=307, headers={"Location": redirect})
        self._set_auth_cookie(response, key, sb.id)
        return response

    async def _proxy_websocket(self, request: web.Request, url: str, headers: dict[str, str]) -> web.StreamResponse:
        assert self._client is not None
        protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        fwd = {k: v for k, v in headers.items() if not k.lower().startswith("sec-websocket")}
        try:
            upstream = await self._client.ws_connect("ws" + url[4:], headers=fwd, protocols=protocols)
        except aiohttp.ClientError:
            return web.Response(status=502)
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

    async def _pgid_sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(PGID_SWEEP_SECONDS)
            self.forget_empty_process_groups()

    def forget_empty_process_groups(self) -> None:
        """Drop every sandbox's process groups that have no member left (PGID_SWEEP_SECONDS)."""
        if any(sb.pgids for sb in self.sandboxes.values()):
            live = live_process_groups()
            for sb in self.sandboxes.values():
                sb.pgids &= live

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
                    await self.autostop(sb)

    # -- /_emulator ------------------------------------------------------------------------

    def emulator_sandboxes(self) -> list[dict[str, Any]]:
        return [sb.to_emulator_json() for sb in self.sandboxes.values()]

    def emulator_commands(self, sandbox_id: str) -> list[dict[str, Any]]:
        sb = self.sandboxes.get(sandbox_id)
        if sb is None:
            raise ApiError(404, f"Sandbox {sandbox_id} not found")
        return [
            {
                "sessionId": c.session_id,
                "cmdId": c.id,
                "command": c.command,
                "exitCode": c.refresh(),
                "streamsEndedBy": list(c.streams_ended_by),
            }
            for c in sb.history
        ]

    def set_faults(self, **changes: Any) -> dict[str, int]:
        for key, value in changes.items():
            if key not in vars(self.faults):
                raise ApiError(400, f"unknown fault {key!r}")
            setattr(self.faults, key, int(value))
        return self.faults.to_json()

    def reset(self) -> dict[str, Any]:
        """Zero every fault (and the counters of faults done) and restore the default config."""
        self.faults = Faults()
        self.config = dict(DEFAULT_CONFIG)
        return {"faults": self.faults.to_json(), "config": dict(self.config)}

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

    async def _post_reset(self, request: web.Request) -> web.Response:
        return web.json_response(self.reset())

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

    def set_sandbox_class(self, sandbox_id: str, sandbox_class: str) -> None:
        """Makes an existing sandbox one of this class (``container``, ``linux-vm``, ``windows``)."""
        sb = self.server.sandboxes[sandbox_id]
        self._sync(lambda: setattr(sb, "sandbox_class", sandbox_class))

    def start_sandbox(self, sandbox_id: str) -> None:
        """Starts a stopped sandbox, as another client would, and waits until it is started."""
        self._call(self.server.start_sandbox(self.server.sandboxes[sandbox_id]))

    def begin_stop(self, sandbox_id: str) -> None:
        """Starts stopping the sandbox as auto-stop does: ``stopping`` for config
        ``transition_seconds``, then ``stopped``; returns at once."""
        sb = self.server.sandboxes[sandbox_id]
        self._sync(lambda: self.server.begin_stop(sb))

    def stop_sandbox(self, sandbox_id: str) -> None:
        """Stops the sandbox at once, as auto-stop does (processes die, sessions are gone)."""
        self._call(self.server.stop_sandbox(self.server.sandboxes[sandbox_id]))

    def break_sandbox(self, sandbox_id: str) -> None:
        """Puts the sandbox in Daytona's ``error`` state (its runner failed it): its processes
        die as in a stop, and Daytona will not start it again (400)."""
        self.stop_sandbox(sandbox_id)

        def fail() -> None:
            self.server.sandboxes[sandbox_id].state = "error"

        self._sync(fail)

    def evict_sandbox(self, sandbox_id: str) -> None:
        """Takes the sandbox away as a spot preemption does, mid-whatever: its processes die
        and it is destroyed (404 from then on). Unverified: whether the hosted API still
        answers a look-up of it with the destroyed sandbox and its ``spotEvictedAt``."""
        self.stop_sandbox(sandbox_id)

        def evict() -> None:
            self.server.sandboxes[sandbox_id].state = "destroyed"

        self._sync(evict)

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
        return self._sync(lambda: self.server.faults.to_json())

    def in_flight(self) -> int:
        """How many requests to Daytona are being handled (open WebSockets included; not the
        SDK's Socket.IO channel)."""
        return self._sync(lambda: self.server.in_flight)

    def arrived(self) -> list[tuple[str, str]]:
        """Every request so far, (method, path), in order of arrival (answered or not)."""
        return self._sync(lambda: list(self.server.arrived))

    def reset(self) -> dict[str, Any]:
        """Zero all faults and restore the default config (``POST /_emulator/reset``); call it
        before each test."""
        return self._sync(self.server.reset)

    def set_config(self, **config: Any) -> dict[str, Any]:
        """E.g. ``set_config(autostop_seconds_per_minute=1)``."""
        return self._sync(lambda: self.server.set_config(**config))

    def add_snapshot(self, name: str, directory: str | Path, link: bool = True) -> dict[str, Any]:
        """Register snapshot ``name`` holding a copy (hard links unless ``link=False``) of a local dir."""
        return self._call(self.server.add_snapshot(name, directory, link)).to_emulator_json()

    def snapshots(self) -> list[dict[str, Any]]:
        return self._sync(lambda: [s.to_emulator_json() for s in self.server.snapshots.values()])

    def set_snapshot_state(self, name_or_id: str, state: str, ago: float = 3600.0) -> dict[str, Any]:
        """E.g. ``set_snapshot_state(name, "inactive")``, as Daytona does to unused snapshots,
        ``ago`` seconds ago (an hour by default: Daytona refuses to activate a snapshot
        deactivated less than 10 minutes ago)."""

        def change() -> dict[str, Any]:
            snap = self.server._find_snapshot(name_or_id)
            if snap is None:
                raise KeyError(name_or_id)
            self.server._set_snapshot_state(snap, state, ago)
            return snap.to_emulator_json()

        return self._sync(change)

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
