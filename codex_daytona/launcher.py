"""The `codex-daytona` entry point: hands the command to a warm local helper when one is
running, else runs it in this process (and starts the helper for next time).

Standard library only, and nothing else of ours is imported on the helper path: a new
process that finds the helper costs the interpreter's start-up plus a few milliseconds,
where importing the CLI (typer, rich, pydantic-settings, the Daytona SDK) costs about a
second. The helper (codex_daytona.helper) has all of that imported; for each command it
forks a process that gets this process's stdin, stdout and stderr (the file descriptors
themselves), its argv, environment, working directory and umask, and runs the normal CLI
in it. This process forwards the signals it gets (Ctrl-C, SIGTERM, SIGHUP, SIGWINCH,
Ctrl-Z) to that one and exits with its exit code, so the command behaves as if it ran here.

The helper is never required. CODEX_DAYTONA_HELPER=0 turns it off; it is off by default
when CI is set or when none of stdin, stdout and stderr is a terminal (a script, a CI job,
a container build: no process left behind), and on a platform it does not know. Any failure
before the command has been handed over (a missing socket option, any exception) falls
back to running it here, silently; once it has been handed over it is never run a second
time. Everything travels over a unix socket in a directory only this user can open (0700);
each side checks the other's uid where the platform tells it (SO_PEERCRED on Linux,
getpeereid on macOS and the BSDs; elsewhere the directory is the guard, as for ssh-agent),
and the helper takes a command only from a process with its own uid, groups, capabilities,
limits and namespaces (read from /proc where there is one), so that it never lets a caller
do more than it could itself. The environment, keys included, never touches the disk.

A helper serves one version only: its socket's name is a hash of the interpreter, the
package's location, every file of the package (sizes and modification times, subpackages
included), the installed distributions next to it (their names carry their versions) and
the variables that decide how Python sets up stdio; so an upgrade, of the tool or of a
dependency, a changed checkout or another virtualenv talks to a helper of its own, and a
helper whose key changes under it refuses and exits.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import struct
import sys
from typing import Any

HELPER_ENV = "CODEX_DAYTONA_HELPER"  # 0/false/no/off: never; 1/true/yes/on: also in CI and without a terminal
DIR_ENV = "CODEX_DAYTONA_HELPER_DIR"  # where its socket lives (default: $XDG_RUNTIME_DIR/codex-daytona)
IDLE_ENV = "CODEX_DAYTONA_HELPER_IDLE_SECONDS"  # it exits after this long without a command
TRACE_ENV = "CODEX_DAYTONA_HELPER_TRACE"  # a file: one line per command, "helper PID" or "in-process"
DEFAULT_IDLE_SECONDS = 300
# What decides how Python sets up stdio (and so the bytes a command writes): part of the key,
# and handed to the helper so that its stdio is set up as the client's would be.
STDIO_VARS = ("LANG", "LC_ALL", "LC_CTYPE", "PYTHONIOENCODING", "PYTHONUTF8", "PYTHONUNBUFFERED")
FORWARDED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGWINCH", "SIGUSR1", "SIGUSR2")
# Commands that stay in this process: they own the terminal for minutes (line editing, raw
# mode, ssh opening /dev/tty, which needs the terminal to be the process's controlling
# one), where start-up does not matter.
IN_PROCESS_COMMANDS = frozenset({"chat", "shell", "ssh"})
MAX_MESSAGE = 16 * 1024 * 1024
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT_DIR = os.path.dirname(PACKAGE_DIR)
OFF = ("0", "false", "no", "off")
ON = ("1", "true", "yes", "on")
# Where the helper knows how to run: a fork, unix sockets that pass descriptors, and a way to
# ask the peer's uid or a private directory. Elsewhere every command runs in process.
HELPER_PLATFORMS = ("linux", "darwin", "freebsd", "openbsd", "netbsd", "dragonfly")
# What a process may do, from /proc/PID/status: the helper serves only its equals.
PRIVILEGE_FIELDS = (
    "Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp",
)  # fmt: skip


class NotHandedOver(Exception):
    """The helper did not take the command: it may safely run in this process."""


# --- what both sides agree on ---------------------------------------------------------------


def fingerprint(environ: dict[str, str] | os._Environ[str] | None = None) -> str:
    """Names the code a helper runs and how it sets up stdio (see the module docstring)."""
    environ = os.environ if environ is None else environ
    digest = hashlib.sha256()
    digest.update(f"{sys.executable}\0{sys.version}\0{PACKAGE_DIR}\0".encode())
    for var in STDIO_VARS:
        digest.update(f"{var}={environ.get(var, '')}\0".encode())
    digest.update(files_signature().encode())
    digest.update(installed_signature(environ).encode())
    return digest.hexdigest()[:20]


def files_signature() -> str:
    """Sizes and modification times of every file of the package and of the agent bundle,
    subpackages included (compiled caches left out)."""
    parts = []
    for top in (PACKAGE_DIR, os.path.join(ROOT_DIR, "agent_bundle")):
        for directory, subdirs, names in os.walk(top):
            subdirs[:] = sorted(d for d in subdirs if d != "__pycache__")
            for name in sorted(names):
                try:
                    st = os.stat(os.path.join(directory, name))
                except OSError:
                    continue
                parts.append(f"{directory}/{name}:{st.st_size}:{st.st_mtime_ns}")
    return "\n".join(parts)


def installed_signature(environ: dict[str, str] | os._Environ[str] | None = None) -> str:
    """The distributions installed where this interpreter imports from (the site directories,
    PYTHONPATH and this package's own directory): each one's metadata directory, whose name
    carries its version, and when it was written (a reinstall writes it again). This covers
    the installed codex-daytona and every dependency the helper imports (and more: any
    install there replaces the helper, which costs one command's start-up)."""
    environ = os.environ if environ is None else environ
    directories = {ROOT_DIR, *filter(None, environ.get("PYTHONPATH", "").split(os.pathsep))}
    with contextlib.suppress(Exception):
        import site

        directories.update(site.getsitepackages())
        directories.add(site.getusersitepackages())
    parts = []
    for directory in sorted(directories):
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            if name.endswith((".dist-info", ".egg-info", ".pth", ".egg-link")):
                try:
                    mtime = os.stat(os.path.join(directory, name)).st_mtime_ns
                except OSError:
                    continue
                parts.append(f"{directory}/{name}:{mtime}")
    return "\n".join(parts)


def helper_dir(environ: dict[str, str] | os._Environ[str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    if environ.get(DIR_ENV):
        return environ[DIR_ENV]
    runtime = environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "codex-daytona")
    return f"/tmp/codex-daytona-{os.getuid()}"


def private_dir(path: str) -> bool:
    """Makes `path` (0700) when missing; True when it is a directory only this user can use."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return False
    try:
        st = os.lstat(path)
    except OSError:
        return False
    import stat

    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and st.st_mode & 0o077 == 0


def socket_path(directory: str, key: str) -> str:
    return os.path.join(directory, f"helper-{key}.sock")


def peer_credentials(sock: socket.socket) -> tuple[int | None, int, int] | None:
    """The peer's (pid when known, uid, gid), or None where the platform has no way to ask:
    SO_PEERCRED on Linux, getpeereid on macOS and the BSDs (libc's, through ctypes)."""
    so_peercred = getattr(socket, "SO_PEERCRED", None)
    if so_peercred is not None and sys.platform.startswith("linux"):
        creds = sock.getsockopt(socket.SOL_SOCKET, so_peercred, struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", creds)
        return pid, uid, gid
    getpeereid = _getpeereid()
    if getpeereid is None:
        return None
    import ctypes

    uid, gid = ctypes.c_uint32(), ctypes.c_uint32()
    if getpeereid(sock.fileno(), ctypes.byref(uid), ctypes.byref(gid)) != 0:
        raise OSError(ctypes.get_errno(), "getpeereid failed")
    return None, uid.value, gid.value


def _getpeereid() -> Any:
    """libc's getpeereid(2), or None (glibc has none: Linux has SO_PEERCRED)."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).getpeereid
    except (ImportError, OSError, AttributeError):
        return None


def privileges(pid: int | str) -> dict[str, object] | None:
    """What process `pid` may do, as /proc tells it: uid, gids, capabilities, no_new_privs,
    seccomp, resource limits, security label and namespaces. None when there is no /proc
    (macOS, the BSDs): then only the uid is compared. Raises OSError when it cannot be read."""
    if not os.path.isdir("/proc/self/ns"):
        return None
    base = f"/proc/{pid}"
    found: dict[str, object] = {}
    with open(f"{base}/status", encoding="utf-8") as fh:
        for line in fh:
            name, _, value = line.partition(":")
            if name in PRIVILEGE_FIELDS:
                found[name] = sorted(value.split()) if name == "Groups" else value.split()
    with open(f"{base}/limits", encoding="utf-8") as fh:
        found["limits"] = fh.read()
    with contextlib.suppress(OSError), open(f"{base}/attr/current", encoding="utf-8") as fh:
        found["label"] = fh.read()
    for name in sorted(os.listdir(f"{base}/ns")):
        found[f"ns/{name}"] = os.readlink(f"{base}/ns/{name}")
    return found


def send_message(sock: socket.socket, payload: dict[str, object], fds: list[int] | None = None) -> None:
    data = json.dumps(payload).encode()
    frame = struct.pack("!I", len(data)) + data
    if fds:
        import array

        sent = sock.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        frame = frame[sent:]
    if frame:
        sock.sendall(frame)


def recv_message(sock: socket.socket, max_fds: int = 0) -> tuple[dict[str, Any] | None, list[int]]:
    """One framed message (None at end of stream) and the descriptors that came with it."""
    fds: list[int] = []
    buffer = b""
    if max_fds:
        import array

        data, ancillary, _flags, _addr = sock.recvmsg(65536, socket.CMSG_SPACE(max_fds * 4))
        for level, kind, cdata in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                received = array.array("i")
                received.frombytes(cdata[: len(cdata) - len(cdata) % received.itemsize])
                fds.extend(received)
        buffer = data
        if not data:
            return None, fds
    while len(buffer) < 4:
        chunk = sock.recv(65536)
        if not chunk:
            return None, fds
        buffer += chunk
    (length,) = struct.unpack("!I", buffer[:4])
    if length > MAX_MESSAGE:
        raise ValueError("message too large")
    body = buffer[4:]
    while len(body) < length:
        chunk = sock.recv(min(65536, length - len(body)))
        if not chunk:
            return None, fds
        body += chunk
    return json.loads(body[:length]), fds


# --- the client ---------------------------------------------------------------------------


def enabled(environ: dict[str, str] | os._Environ[str] | None = None) -> bool:
    """Whether to use (and start) the helper: CODEX_DAYTONA_HELPER decides when set; else not
    in CI, nor when none of stdin, stdout and stderr is a terminal (nobody waits at a prompt
    there for start-up to be quick, and a helper would outlive the job or container)."""
    environ = os.environ if environ is None else environ
    asked = environ.get(HELPER_ENV, "").strip().lower()
    if asked in OFF or not platform_supported():
        return False
    if asked in ON:
        return True
    if in_ci(environ):
        return False
    return any(_isatty(fd) for fd in (0, 1, 2))


def in_ci(environ: dict[str, str] | os._Environ[str] | None = None) -> bool:
    """Whether `CI` says this runs in CI, as CI services set it (`CI=false` or empty: not)."""
    environ = os.environ if environ is None else environ
    return environ.get("CI", "").strip().lower() not in ("", *OFF)


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def platform_supported() -> bool:
    return (
        sys.platform.startswith(HELPER_PLATFORMS)
        and hasattr(os, "fork")
        and hasattr(socket, "AF_UNIX")
        and hasattr(socket, "SCM_RIGHTS")
    )


def _command(argv: list[str]) -> str | None:
    return next((a for a in argv[1:] if not a.startswith("-")), None)


def _trace(line: str) -> None:
    path = os.environ.get(TRACE_ENV)
    if path:
        try:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")
        except OSError:
            pass


def _request() -> tuple[dict[str, object], list[int]]:
    """What the helper needs to run the command as this process would, and the descriptors
    to send: stdin, stdout, stderr (those that are open) and the working directory."""
    main = sys.modules.get("__main__")
    fds, present = [], []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            continue
        fds.append(fd)
        present.append(fd)
    cwd_fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    fds.append(cwd_fd)
    umask = os.umask(0o022)
    os.umask(umask)
    request: dict[str, object] = {
        "argv": sys.argv,
        "main_package": getattr(main, "__package__", None),
        "env": dict(os.environ),
        "stdio": present,
        "umask": umask,
        "sigint_ignored": signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
    }
    return request, fds


def run_via_helper(path: str) -> int:
    """Runs the command in the helper listening at `path`; returns its exit status as this
    process should end with it (a negative number: killed by that signal).

    Raises NotHandedOver when the helper is not there or did not take the command."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    cwd_fd = -1
    # A signal that comes while the command is being handed over is held, then passed on to
    # the command's process, or (when the helper does not take it) delivered here again.
    pending: list[int] = []
    held = {}
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        sig = getattr(signal, name)
        if signal.getsignal(sig) != signal.SIG_IGN:
            held[sig] = signal.signal(sig, lambda signum, _frame: pending.append(signum))
    try:
        try:
            sock.connect(path)
            creds = peer_credentials(sock)  # None: the private directory is the guard
            if creds is not None and creds[1] != os.getuid():
                raise NotHandedOver("the helper runs as another user")
            request, fds = _request()
            cwd_fd = fds[-1]
            send_message(sock, request, fds)
            reply, _ = recv_message(sock)
        except NotHandedOver:
            raise
        except Exception as exc:  # nothing was handed over: whatever it is, run it here
            raise NotHandedOver(repr(exc)) from None
        finally:
            if cwd_fd >= 0:
                os.close(cwd_fd)
        if not reply or "pid" not in reply:
            raise NotHandedOver(str((reply or {}).get("refused", "the helper did not answer")))
        pid = int(reply["pid"])
    except NotHandedOver:
        for sig, handler in held.items():
            signal.signal(sig, handler)
        for sig in pending:
            os.kill(os.getpid(), sig)
        sock.close()
        raise
    except BaseException:
        sock.close()
        raise
    # Handed over: from here on the command is the helper's, and must not run again here.
    try:
        _trace(f"helper {pid}")
        return _wait(sock, pid, pending)
    except Exception as exc:
        with contextlib.suppress(OSError):
            os.write(2, f"codex-daytona: lost track of the command in the helper ({exc!r}).\n".encode())
        return 1
    finally:
        sock.close()


def _wait(sock: socket.socket, pid: int, pending: list[int]) -> int:
    """Forwards signals to the command's process until the helper reports how it ended."""

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(OSError):
            os.kill(pid, signum)

    def suspend(_signum: int, _frame: object) -> None:  # Ctrl-Z: stop both, resume both
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGSTOP)
        os.kill(os.getpid(), signal.SIGSTOP)
        forward(signal.SIGCONT, None)

    for name in FORWARDED:
        sig = getattr(signal, name)
        if signal.getsignal(sig) != signal.SIG_IGN or name == "SIGWINCH":
            signal.signal(sig, forward)
    signal.signal(signal.SIGTSTP, suspend)
    signal.signal(signal.SIGCONT, forward)
    for sig in pending:
        forward(sig, None)
    try:
        reply, _ = recv_message(sock)
    except (OSError, ValueError):
        reply = None
    if not reply:
        # The command was handed over, so it must not run again here.
        os.write(2, b"codex-daytona: lost the connection to the helper; the command's outcome is unknown.\n")
        return 1
    if "signal" in reply:
        return -int(reply["signal"])
    return int(reply.get("exit", 1))


def start_helper(path: str, key: str) -> None:
    """Starts the helper for next time, detached; never waits for it. Its environment holds
    only what decides how Python starts (no keys): each command brings its own."""
    import subprocess

    keep = ("PATH", "HOME", "TMPDIR", "PYTHONPATH", "PYTHONHOME", *STDIO_VARS)
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env["PYTHONPATH"] = os.pathsep.join([ROOT_DIR, *filter(None, [env.get("PYTHONPATH")])])
    try:
        idle = float(os.environ.get(IDLE_ENV) or DEFAULT_IDLE_SECONDS)
    except ValueError:
        idle = DEFAULT_IDLE_SECONDS
    with contextlib.suppress(Exception):
        subprocess.Popen(
            [sys.executable, "-m", "codex_daytona.helper", path, key, str(idle)],
            env=env,
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )


def _exit_with(status: int) -> None:
    flush_stdio()
    if status < 0:  # die of the same signal, as the command did
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
        status = 128 - status
    os._exit(status)


def main() -> None:
    """Console-script entry point: the helper when there is one, else this process."""
    if sys.platform.startswith("win"):
        # fcntl, termios and pty, unix sockets and fork: nothing below would import or run.
        sys.stderr.write("codex-daytona needs macOS, Linux or WSL: on Windows, run it inside WSL.\n")
        sys.stderr.flush()
        raise SystemExit(1)
    try:
        status = _try_helper()
        if status is not None:
            _exit_with(status)
            return
        _trace("in-process")
        from codex_daytona.cli import main as cli_main
    except KeyboardInterrupt:
        # Ctrl-C while starting up (the CLI's import takes a few hundred milliseconds), or
        # held while a helper was asked and delivered here again: what cli.main says for a
        # Ctrl-C before a command took over, not a traceback.
        sys.stderr.write("Interrupted.\n")
        flush_stdio()
        os._exit(130)
    try:
        cli_main()
    except SystemExit as exc:
        status = exit_status(exc)
    else:
        status = 0
    # Done: skip the interpreter's teardown. Unwinding the Daytona SDK (its atexit hooks and
    # some 1,500 modules) takes a few hundred milliseconds after the last line is printed.
    flush_stdio()
    os._exit(status)


def _try_helper() -> int | None:
    """The command's exit status when the helper ran it; None when it is to run here (no
    helper, or anything at all went wrong before it took the command)."""
    try:
        if not enabled() or _command(sys.argv) in IN_PROCESS_COMMANDS:
            return None
        key = fingerprint()
        directory = helper_dir()
        if not private_dir(directory):
            return None
        path = socket_path(directory, key)
        try:
            return run_via_helper(path)
        except NotHandedOver:
            start_helper(path, key)
            return None
    except Exception:
        return None


def exit_status(exc: SystemExit) -> int:
    """The exit status the interpreter gives a SystemExit (printing a text one, as it does)."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    with contextlib.suppress(Exception):
        sys.stderr.write(f"{exc.code}\n")
    return 1


def flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()
