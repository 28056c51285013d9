"""The warm local helper (codex_daytona.launcher / codex_daytona.helper): a command that finds
it runs there and behaves byte for byte as in process; Ctrl-C goes through; a helper whose
files changed refuses; it exits when idle; without it everything still works.

The rest of the suite runs with CODEX_DAYTONA_HELPER=0 (tests/conftest.py); here each test
gets a helper directory of its own (short: a unix socket path has a length limit)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from codex_daytona import launcher
from tests.e2e import Rig, sandbox_processes
from tests.fakes.model import msg, run, turn

REPO = Path(__file__).resolve().parent.parent


def _wait_for(check: Callable[[], object], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def helper_pids(directory: Path) -> list[int]:
    """The helper processes serving from `directory` (their command line names their socket),
    less the processes they forked for commands (which share their command line)."""
    found: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            status = (proc / "status").read_text()
        except OSError:
            continue
        if "State:\tZ" in status:
            continue
        if b"codex_daytona.helper" in cmdline and any(str(directory).encode() in part for part in cmdline):
            found[int(proc.name)] = int(status.split("PPid:")[1].split()[0])
    return [pid for pid, parent in found.items() if parent not in found]


def sockets(directory: Path) -> list[Path]:
    return sorted(directory.glob("helper-*.sock"))


@pytest.fixture
def helper_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="cdh-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)  # a helper whose socket is gone exits
    _wait_for(lambda: not helper_pids(directory), timeout=10)


def helper_env(directory: Path, trace: Path, **extra: str) -> dict[str, str]:
    return {
        "CODEX_DAYTONA_HELPER": "1",
        "CODEX_DAYTONA_HELPER_DIR": str(directory),
        "CODEX_DAYTONA_HELPER_TRACE": str(trace),
        **extra,
    }


def _up_with_the_helper(rig: Rig, helper_dir: Path) -> tuple[Path, dict[str, str]]:
    """`up` with the helper on (it runs in process and starts the helper), once the helper
    listens: the trace file and the environment for the commands that follow."""
    trace = helper_dir / "trace"
    env = helper_env(helper_dir, trace)
    assert rig.cli("up", env=env).code == 0
    _wait_for(lambda: sockets(helper_dir))
    return trace, env


def traced(trace: Path) -> list[str]:
    return trace.read_text().splitlines() if trace.exists() else []


def normalized(text: str) -> str:
    """Output with what differs from run to run (ids, times) replaced."""
    text = re.sub(r"\d{8}T\d{6}-[0-9a-f]{6}", "RUN", text)
    text = re.sub(r'"(ts|duration_ms|elapsed_ms|pid)":\s*[0-9.]+', r'"\1":0', text)
    text = re.sub(r'"([a-z]+)_\d+"', r'"\1_N"', text)  # the scripted model's item and call ids
    text = re.sub(r'_tokens":\d+', '_tokens":0', text)  # the thread grows from turn to turn
    text = re.sub(r"done in [0-9.]+ s", "done in N s", text)
    text = re.sub(r"(\(exit -?\d+, )[0-9.]+ s\)", r"\1N s)", text)  # a command's own duration
    text = re.sub(r"[0-9,]+ (tokens|in|out|cached|reasoning)\b", r"N \1", text)
    return text


@pytest.mark.e2e
def test_a_second_command_runs_in_the_helper_exactly_as_in_process(rig: Rig, helper_dir: Path) -> None:
    trace = helper_dir / "trace"
    env = helper_env(helper_dir, trace)
    first = rig.cli("up", "-q", env=env)
    assert first.code == 0, first
    assert traced(trace) == ["in-process"]  # no helper yet: this one started it
    _wait_for(lambda: sockets(helper_dir))
    assert len(helper_pids(helper_dir)) == 1
    sandbox_id = first.stdout.strip()
    in_process = {**env, "CODEX_DAYTONA_HELPER": "0"}

    for mode in (["-q"], ["--json"], []):
        results = []
        for which in (env, in_process):
            rig.model.enqueue(turn(run("echo hi")), turn(msg("the answer")))
            results.append(rig.cli("ask", *mode, "say it", env=which))
        helped, local = results
        assert helped.code == local.code == 0, (helped, local)
        assert normalized(helped.stdout) == normalized(local.stdout), mode
        assert normalized(helped.stderr) == normalized(local.stderr), mode
    # The prompt from a pipe: the command's process reads the client's stdin itself.
    rig.model.enqueue(turn(msg("piped")))
    piped = rig.cli("ask", "-q", input="from the pipe\n", env=env)
    assert piped.code == 0 and piped.stdout == "piped\n", piped
    assert "from the pipe" in rig.model.last_input()
    # A failing command: the same error, hint and exit code.
    failing = [rig.cli("preview", "--json", "--name", "nope", env=which) for which in (env, in_process)]
    assert failing[0].code == failing[1].code == 5, failing
    assert (failing[0].stdout, failing[0].stderr) == (failing[1].stdout, failing[1].stderr)
    lines = traced(trace)
    helped_lines = [line for line in lines if line.startswith("helper ")]
    assert len(helped_lines) == 5, lines
    assert all(int(line.split()[1]) not in helper_pids(helper_dir) for line in helped_lines)
    assert json.loads(rig.cli("status", "--json", env=env).stdout)["sandbox_id"] == sandbox_id


@pytest.mark.e2e
def test_ctrl_c_through_the_helper_interrupts_the_turn(rig: Rig, helper_dir: Path) -> None:
    trace, env = _up_with_the_helper(rig, helper_dir)
    sandbox_id = rig.record()["sandbox_id"]
    rig.model.enqueue(turn(run("sleep 60", yield_time_ms=60000)), turn(msg("unreachable")))
    proc = rig.popen_piped("ask", "sleep for a minute", env=env)
    _wait_for(lambda: bool(sandbox_processes(sandbox_id, "sleep 60")))
    proc.send_signal(signal.SIGINT)
    _stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "Interrupted" in stderr
    assert traced(trace)[-1].startswith("helper ")
    assert rig.record()["last_turn"]["status"] == "interrupted"
    _wait_for(lambda: not sandbox_processes(sandbox_id, "sleep 60"), timeout=10)


def _process_state(pid: int) -> str:
    """R, S, T (stopped), Z, ... from /proc; "" once the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[0]


@pytest.mark.e2e
def test_ctrl_z_through_the_helper_stops_both_ends_and_fg_finishes_the_turn(rig: Rig, helper_dir: Path) -> None:
    """Ctrl-Z (SIGTSTP to the launcher, as the terminal sends it) stops the launcher and the
    command's process in the helper; SIGCONT (`fg`) resumes both and the turn ends as usual."""
    trace, env = _up_with_the_helper(rig, helper_dir)
    asked = len(rig.model.model_requests)
    rig.model.enqueue(turn(msg("after the pause"), hold="answer"))
    proc = rig.popen_piped("ask", "-q", "take your time", env=env)
    try:
        _wait_for(lambda: len(rig.model.model_requests) > asked)  # the model holds its answer
        line = traced(trace)[-1]
        assert line.startswith("helper "), traced(trace)
        command = int(line.split()[1])
        proc.send_signal(signal.SIGTSTP)
        _wait_for(lambda: _process_state(proc.pid) == "T" and _process_state(command) == "T", timeout=10)
        proc.send_signal(signal.SIGCONT)
        _wait_for(lambda: _process_state(proc.pid) != "T" and _process_state(command) != "T", timeout=10)
        rig.model.release("answer")
        stdout, stderr = proc.communicate(timeout=60)
        assert (proc.returncode, stdout) == (0, "after the pause\n"), stderr
        assert "Traceback" not in stderr
    finally:
        rig.model.release("answer")
        if proc.poll() is None:
            proc.kill()


@pytest.mark.e2e
def test_detach_and_timeout_through_the_helper(rig: Rig, helper_dir: Path) -> None:
    trace, env = _up_with_the_helper(rig, helper_dir)
    sandbox_id = rig.record()["sandbox_id"]
    rig.model.enqueue(turn(run("sleep 1; echo slow")), turn(msg("finished detached")))
    started = rig.cli("ask", "--detach", "-q", "work", env=env)
    assert started.code == 0, started
    followed = rig.cli("logs", "-f", "-q", started.stdout.strip(), env=env)
    assert followed.code == 0 and followed.stdout == "finished detached\n", followed
    rig.model.enqueue(turn(run("sleep 72", yield_time_ms=60000)), turn(msg("unreachable")))
    timed_out = rig.cli("ask", "--timeout", "3", "sleep a while", env=env)
    assert timed_out.code == 124, timed_out
    assert rig.record()["last_turn"]["status"] == "interrupted"
    _wait_for(lambda: not sandbox_processes(sandbox_id, "sleep 72"), timeout=10)
    assert [line.split()[0] for line in traced(trace)] == ["in-process", "helper", "helper", "helper"]


@pytest.mark.e2e
def test_wait_and_fanout_through_the_helper(rig: Rig, helper_dir: Path) -> None:
    """A queued ask (--wait) and a fan-out (threads in the forked command process) run
    through the helper as they do in process."""
    trace, env = _up_with_the_helper(rig, helper_dir)
    rig.model.enqueue(turn(run("sleep 2")), turn(msg("first done")))
    first = rig.cli("ask", "--detach", "-q", "first", env=env)
    assert first.code == 0, first
    rig.model.enqueue(turn(msg("second done")))
    waited = rig.cli("ask", "-q", "--wait", "second, patiently", env=env)
    assert (waited.code, waited.stdout) == (0, "second done\n"), waited
    rig.model.enqueue(*[turn(msg("sibling ready")) for _ in range(2)])
    fanned = rig.cli("ask", "--fanout", "2", "--new-thread", "-q", "go", env=env, timeout=300)
    assert fanned.code == 0, fanned
    assert sorted(fanned.stdout.split()) == ["default-1", "default-2"], fanned
    assert [line.split()[0] for line in traced(trace)] == ["in-process", "helper", "helper", "helper"]


def _cli(env: dict[str, str], *args: str, pythonpath: Path = REPO) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env, "PYTHONPATH": str(pythonpath)}
    return subprocess.run(
        [sys.executable, "-m", "codex_daytona", *args],
        env=full,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


def test_a_helper_whose_files_changed_refuses_and_exits(helper_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "checkout"
    for package in ("codex_daytona", "agent_bundle"):
        shutil.copytree(REPO / package, copy / package, ignore=shutil.ignore_patterns("__pycache__"))
    trace = helper_dir / "trace"
    env = helper_env(helper_dir, trace)
    assert _cli(env, "status", pythonpath=copy).returncode == 0
    _wait_for(lambda: sockets(helper_dir))
    (old_socket,) = sockets(helper_dir)
    assert _cli(env, "status", pythonpath=copy).returncode == 0
    assert traced(trace)[-1].startswith("helper ")
    (pid,) = helper_pids(helper_dir)

    changed = copy / "codex_daytona" / "errors.py"
    changed.write_text(changed.read_text() + "\n# changed\n")
    with pytest.raises(launcher.NotHandedOver):
        launcher.run_via_helper(str(old_socket))  # refused, or already gone
    _wait_for(lambda: not Path(f"/proc/{pid}").exists() or "State:\tZ" in Path(f"/proc/{pid}/status").read_text())
    assert not old_socket.exists()
    # The changed checkout runs in process (and starts a helper of its own).
    result = _cli(env, "status", pythonpath=copy)
    assert result.returncode == 0, result.stderr
    assert traced(trace)[-1] == "in-process"


def test_the_helper_exits_when_idle(helper_dir: Path) -> None:
    env = helper_env(helper_dir, helper_dir / "trace", CODEX_DAYTONA_HELPER_IDLE_SECONDS="1")
    assert _cli(env, "--version").returncode == 0
    _wait_for(lambda: sockets(helper_dir))
    _wait_for(lambda: not helper_pids(helper_dir), timeout=15)
    assert not sockets(helper_dir)


def test_without_a_helper_commands_run_in_process(helper_dir: Path, tmp_path: Path) -> None:
    trace = helper_dir / "trace"
    # Turned off: runs here and starts nothing.
    off = _cli(helper_env(helper_dir, trace, CODEX_DAYTONA_HELPER="0"), "--version")
    assert off.returncode == 0 and off.stdout.startswith("codex-daytona ")
    assert traced(trace) == ["in-process"]
    assert not sockets(helper_dir) and not helper_pids(helper_dir)
    # A directory others can open is never used: still works, in process.
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    assert not launcher.private_dir(str(shared))
    for _ in range(2):
        result = _cli(helper_env(shared, trace), "status", "-q")
        assert result.returncode == 0 and result.stdout == "none\n", result.stderr
    assert traced(trace)[-2:] == ["in-process", "in-process"]
    assert not list(shared.iterdir())
    # A stale socket (no helper behind it): in process again, and a helper replaces it.
    key = launcher.fingerprint({**os.environ})
    stale = Path(launcher.socket_path(str(helper_dir), key))
    stale.touch()
    result = _cli(helper_env(helper_dir, trace), "status", "-q")
    assert result.returncode == 0 and result.stdout == "none\n", result.stderr
    assert traced(trace)[-1] == "in-process"


def test_help_usage_errors_and_exit_codes_are_the_same_through_the_helper(helper_dir: Path) -> None:
    trace = helper_dir / "trace"
    env = helper_env(helper_dir, trace)
    assert _cli(env, "--version").returncode == 0
    _wait_for(lambda: sockets(helper_dir))
    for args in (["--help"], ["ask", "--help"], ["ask", "--timeout", "0", "x"], ["bogus"], ["status", "-q"]):
        before = len(traced(trace))
        helped = _cli(env, *args)
        local = _cli({**env, "CODEX_DAYTONA_HELPER": "0"}, *args)
        # One line each: the first command went through the helper, the second ran in process.
        through, in_process = traced(trace)[before:]
        assert re.fullmatch(r"helper \d+", through) and in_process == "in-process", (args, through, in_process)
        assert (helped.returncode, helped.stdout, helped.stderr) == (local.returncode, local.stdout, local.stderr), args


# --- the rig's own use of the helper ---------------------------------------------------------


def _rig_trace(rig: Rig, tmp_path: Path) -> list[str]:
    trace = tmp_path / "rig-trace"
    for _ in range(3):
        assert rig.cli("status", "-q", env={"CODEX_DAYTONA_HELPER_TRACE": str(trace)}).code == 0
    return [line.split()[0] for line in trace.read_text().splitlines()]  # "helper PID" or "in-process"


@pytest.mark.e2e
def test_the_rigs_calls_go_through_the_warm_helper(rig: Rig, tmp_path: Path) -> None:
    """The e2e rig forks its CLI calls from the worker's warm helper (once one is up): the
    suite's time depends on it, so a rig that silently went back to cold calls fails here."""
    assert rig.cli("status", "-q").code == 0  # starts the helper, if no test has yet
    directory = Path(rig.env["CODEX_DAYTONA_HELPER_DIR"])
    deadline = time.monotonic() + 60
    while not list(directory.glob("helper-*.sock")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _rig_trace(rig, tmp_path) == ["helper"] * 3


@pytest.mark.e2e
@pytest.mark.cold
def test_a_cold_tests_calls_run_in_process_every_time(rig: Rig, tmp_path: Path) -> None:
    """`@pytest.mark.cold` keeps the path scripts and CI take: each call a process of its own."""
    assert _rig_trace(rig, tmp_path) == ["in-process"] * 3
