"""The end-to-end rig: the Daytona emulator, the scripted model and the real CLI as a
subprocess, wired together. Fixtures that use it live in conftest.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from codex_daytona.sandbox import runtime
from tests.fakes.daytona import DEFAULT_CONFIG as EMULATOR_DEFAULT_CONFIG
from tests.fakes.daytona import DaytonaEmulator, add_uv
from tests.fakes.model import ScriptedModel, msg, turn

DAYTONA_KEY = "dtn-test-key-0123456789abcdef"
OPENAI_KEY = "sk-test-openai-key-0123456789"
SNAPSHOT = "codex-daytona-test-runtime"


def free_port(preferred: int | None = None) -> int:
    if preferred is not None:
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", preferred))
                return preferred
            except OSError:
                pass
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def distinct_ports(n: int) -> list[int]:
    """`n` free ports, no two the same."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


# What the emulator starts with, restored before every end-to-end test so that a fault or a
# setting one test leaves behind (a failing test never reaches its `finally`) cannot leak
# into the next: the emulator lives for the whole session.
DEFAULT_CONFIG: dict[str, Any] = dict(EMULATOR_DEFAULT_CONFIG)


def reset_emulator(emulator: DaytonaEmulator) -> None:
    """Every fault off and every setting at its default (`reset()` once the emulator has one)."""
    reset = getattr(emulator, "reset", None)
    if callable(reset):
        reset()
        return
    emulator.set_faults(**{name: 0 for name in emulator.faults()})
    emulator.set_config(**DEFAULT_CONFIG)


def build_runtime_snapshot(directory: Path) -> Path:
    """Installs the agent runtime exactly as `up` does on Daytona's default image, which has
    `uv` (so the runtime has no pip nor setuptools: 1,450 files fewer for every sandbox made
    from it to copy), into a home directory for a snapshot."""
    directory.mkdir(parents=True, exist_ok=True)
    layout = runtime.Layout(str(directory))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CODEX_", "DAYTONA_"))}
    env["HOME"] = str(directory)
    with tempfile.TemporaryDirectory(prefix="cdt-uv-") as bin_root:
        add_uv(env, Path(bin_root))  # as the emulator's sandboxes have it
        subprocess.run(["bash", "-c", runtime.install_command(layout)], check=True, env=env, cwd=directory, timeout=900)
    return directory


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


@dataclass
class Rig:
    emulator: DaytonaEmulator
    model: ScriptedModel
    project: Path
    env: dict[str, str] = field(default_factory=dict)

    def cli(
        self, *args: str, input: str | None = None, timeout: float = 120, env: dict[str, str] | None = None
    ) -> Result:
        proc = subprocess.run(
            [sys.executable, "-m", "codex_daytona", *args],
            input=input if input is not None else "",
            capture_output=True,
            text=True,
            cwd=self.project,
            env={**self.env, **(env or {})},
            timeout=timeout,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def popen(self, *args: str, env: dict[str, str] | None = None, **kwargs: Any) -> subprocess.Popen[str]:
        kwargs.setdefault("preexec_fn", default_sigint)
        return subprocess.Popen(
            [sys.executable, "-m", "codex_daytona", *args],
            cwd=self.project,
            env={**self.env, **(env or {})},
            text=True,
            **kwargs,
        )

    def popen_piped(self, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
        """`popen` as a script runs the CLI in the background: no stdin, stdout and stderr piped."""
        return self.popen(*args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)

    def ask_on_same_thread(self, prompt: str, answer: str) -> str:
        """Asks again with the model answering `answer`; checks the ask completed on the
        thread the state file had, and returns the input the model was sent (the history)."""
        thread = self.record()["thread_id"]
        self.model.enqueue(turn(msg(answer)))
        again = self.cli("ask", prompt)
        assert again.code == 0, again
        assert self.record()["thread_id"] == thread
        return self.model.last_input()

    def state(self) -> dict[str, Any]:
        if sys.version_info >= (3, 11):
            import tomllib
        else:
            import tomli as tomllib

        path = Path(self.env["CODEX_DAYTONA_STATE_DIR"]) / "state.toml"
        return tomllib.loads(path.read_text()) if path.exists() else {}

    def record(self) -> dict[str, Any]:
        return dict(self.state().get("sandboxes", {}).get("default", {}))

    def sandbox(self, sandbox_id: str) -> dict[str, Any] | None:
        return next((s for s in self.emulator.sandboxes() if s["id"] == sandbox_id), None)

    def requests(self, since: float = 0.0) -> list[dict[str, Any]]:
        """The emulator's request log (one entry per request, written when it is answered:
        ts is when it ended, duration_ms how long it took), from `since` (time.time()) on."""
        path = self.emulator.server.log_path
        assert path is not None, "the rig's emulator keeps a request log"
        entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [e for e in entries if e["ts"] >= since]

    def round_trips(self, since: float = 0.0) -> list[dict[str, Any]]:
        """The requests a command made, once the emulator has answered them all: those that
        started at or after `since` (time.time()), in the order they ended, less the SDK's
        background Socket.IO channel (whether its attempt is made before the process exits is
        a matter of timing, as in `make bench`). An entry is written when its request ends: a
        log WebSocket may close just after the command's process exits, and a request of the
        command before may end after `since`."""
        deadline = time.monotonic() + 10
        while self.emulator.in_flight() and time.monotonic() < deadline:
            time.sleep(0.02)
        return [e for e in self.requests() if e["started"] >= since and e.get("kind") != "socketio"]


def default_sigint() -> None:
    """In a child about to run the CLI: Ctrl-C is KeyboardInterrupt again. A shell starts its
    background jobs with SIGINT ignored, which every child inherits, and Python then leaves
    it ignored; tests that send SIGINT must not depend on how the suite was started."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """One GET, redirects not followed: Daytona's proxy answers a request it cannot
    authenticate with a 307 to its sign-in page, which would otherwise read as a 200."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.build_opener(_NoRedirects).open(request, timeout=10) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def add_files_push_leaves_behind(root: Path) -> tuple[str, ...]:
    """Writes what `push` must never send, and returns their paths: files a .gitignore
    (`*.log`, `/build/`) ignores, and .env files holding secrets."""
    (root / ".gitignore").write_text("*.log\n/build/\n")
    (root / "debug.log").write_text("ignored\n")
    (root / "build").mkdir()
    (root / "build" / "out.o").write_bytes(b"\x7fELF")
    (root / ".env").write_text("SANDBOX_OPENAI_API_KEY=sk-real-secret\n")
    (root / ".env.local").write_text("TOKEN=also-secret\n")
    return (".env", ".env.local", "debug.log", "build/out.o")


def sandbox_processes(sandbox_id: str, needle: str = "") -> dict[int, str]:
    """The live processes of an emulated sandbox (they carry its id in their environment)
    whose command line contains `needle`: pid -> command line."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if f"DAYTONA_SANDBOX_ID={sandbox_id}".encode() in environ and needle in cmdline:
            found[int(proc.name)] = cmdline
    return found


def last_answer(events: list[dict[str, Any]]) -> str:
    """A turn's answer as the core takes it (TurnOutcome.final_message): its last agent message."""
    items = [e.get("item") or {} for e in events if e.get("type") == "item.completed"]
    return next((str(i.get("text", "")) for i in reversed(items) if i.get("type") == "agent_message"), "")


def files_holding(root: Path, secret: str) -> tuple[list[Path], int]:
    """Every regular file under `root` (symlinks not followed, the runtime's venv included)
    whose bytes hold `secret`, and how many files were read."""
    needle = secret.encode()
    found, scanned = [], 0
    for directory, _dirs, names in os.walk(root):
        for name in names:
            path = Path(directory, name)
            if path.is_symlink() or not path.is_file():
                continue
            scanned += 1
            if needle in path.read_bytes():
                found.append(path)
    return found, scanned


def closing_event(events: list[dict[str, Any]]) -> dict[str, Any]:
    """An agent run's closing event: late port events (codex_daytona.ports, .ports.settled)
    may follow it while servers the turn started bind; nothing else may."""
    types = [e["type"] for e in events]
    at = types.index("codex_daytona.run.completed")
    assert all(t.startswith("codex_daytona.ports") for t in types[at + 1 :]), types[at:]
    return events[at]


def run_events(rig: Rig, run_id: str) -> list[dict[str, Any]]:
    """A run's events as the agent wrote them to its event file in the sandbox."""
    home = Path(rig.emulator.home_dir(rig.record()["sandbox_id"]))
    [path] = list(home.glob(f"**/runs/{run_id}/events.jsonl"))
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
