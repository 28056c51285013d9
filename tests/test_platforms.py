"""A macOS-shaped run on Linux: every command works with the Linux-only pieces taken away, and
the helper still serves them.

The CLI (and the helper it starts) run with a `sitecustomize` that removes `socket.SO_PEERCRED`
and `os.pidfd_open` (macOS's Python has neither; glibc has no getpeereid either, so the
helper's only guard is its 0700 directory, as on a platform with no peer-id call), without
XDG_RUNTIME_DIR (the helper's directory falls back to /tmp/codex-daytona-UID), and, as root,
in a mount namespace whose /proc is an empty tmpfs (no /proc, as on macOS)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from codex_daytona import launcher
from tests.e2e import Result, Rig
from tests.fakes.model import msg, turn

SHIM = """\
import os, socket
for module, name in ((socket, "SO_PEERCRED"), (os, "pidfd_open")):
    if hasattr(module, name):
        delattr(module, name)
"""


def no_proc_prefix() -> tuple[str, ...]:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return ()
    probe = subprocess.run(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            "mount -t tmpfs none /proc && ! test -e /proc/self",
        ],
        capture_output=True,
    )
    if probe.returncode != 0:
        return ()
    return (
        "unshare", "-m", "--propagation", "private", "--",
        "sh", "-c", 'mount -t tmpfs none /proc && exec "$@"', "sh",
    )  # fmt: skip


@pytest.mark.e2e
def test_every_command_works_without_linux_only_pieces_with_the_helper(rig: Rig, tmp_path: Path) -> None:
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(SHIM)
    trace = tmp_path / "trace"
    env = {k: v for k, v in rig.env.items() if k not in ("XDG_RUNTIME_DIR", "CODEX_DAYTONA_HELPER_DIR")}
    env.update(
        PYTHONPATH=os.pathsep.join([str(shim), rig.env["PYTHONPATH"]]),
        CODEX_DAYTONA_HELPER="1",
        CODEX_DAYTONA_HELPER_TRACE=str(trace),
        CODEX_DAYTONA_HELPER_IDLE_SECONDS="600",  # the finally below ends it
    )
    prefix = no_proc_prefix()
    directory = Path(launcher.helper_dir(env))
    assert directory == Path(f"/tmp/codex-daytona-{os.getuid()}")

    def cli(*args: str) -> Result:
        proc = subprocess.run(
            [*prefix, sys.executable, "-m", "codex_daytona", *args],
            cwd=rig.project,
            env=env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=300,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    if prefix:
        seen = cli("--version")
        assert seen.code == 0, seen
    try:
        up = cli("up", "-q")
        assert up.code == 0, up
        sandbox_id = up.stdout.strip()
        deadline = time.monotonic() + 180  # a loaded machine imports slowly
        while not list(directory.glob("helper-*.sock")):
            assert time.monotonic() < deadline, "the helper did not start"
            time.sleep(0.1)
        time.sleep(0.5)
        started = len(trace.read_text().splitlines())  # the commands before it: in process

        rig.model.enqueue(turn(msg("Hello, macOS-shaped.")))
        asked = cli("ask", "say hello")
        assert asked.code == 0, asked
        assert asked.stdout.strip() == "Hello, macOS-shaped."
        (rig.project / "notes.txt").write_text("pushed\n")
        for args in (["status"], ["ls"], ["logs"], ["preview"], ["push"], ["diff"], ["pull"], ["doctor"]):
            result = cli(*args)
            assert result.code == 0, (args, result)
            assert "Traceback" not in result.stderr, (args, result)
        paused = cli("pause", "--or-stop")  # the default sandbox is a container: it stops
        assert paused.code == 0, paused
        resumed = cli("up")
        assert resumed.code == 0, resumed
        down = cli("down", "--yes")
        assert down.code == 0, down
        assert sandbox_id in down.stdout
        lines = trace.read_text().splitlines()
        assert set(lines[:started]) == {"in-process"}, lines
        assert all(line.startswith("helper ") for line in lines[started:]) and len(lines) - started == 12, lines
    finally:
        key = launcher.fingerprint({**os.environ, **env})
        with_socket = Path(launcher.socket_path(str(directory), key))
        for path in (with_socket, Path(f"{with_socket}.lock"), Path(f"{with_socket}.modules")):
            path.unlink(missing_ok=True)  # the helper sees its socket gone and exits
