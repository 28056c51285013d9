"""The sandbox lifecycle: chat like the seed's REPL, stop and start, delete everything, and
no auto-stop in the middle of a turn."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import select
import signal
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e import Rig, default_sigint, sandbox_processes
from tests.fakes.model import msg, run, turn

pytestmark = pytest.mark.e2e


def _controlling_terminal() -> None:
    """In the child: a session of its own with the pty as controlling terminal, so ^C is SIGINT."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    default_sigint()


class Terminal:
    """The CLI on a pseudo-terminal, as a person would run it."""

    def __init__(self, rig: Rig, *args: str) -> None:
        self.master, slave = pty.openpty()
        env = dict(rig.env, TERM="xterm-256color", COLUMNS="100", LINES="40")
        env.pop("NO_COLOR", None)
        env.pop("CI", None)  # a person at a terminal: CI services set CI, which turns live displays off
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "codex_daytona", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=rig.project,
            env=env,
            preexec_fn=_controlling_terminal,
        )
        os.close(slave)
        self.seen = b""
        self.stamps: list[tuple[float, bytes]] = []

    def read_until(self, needle: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while needle.encode() not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{needle!r} never appeared; saw:\n{self.text()}")
            ready, _, _ = select.select([self.master], [], [], min(left, 0.5))
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # the program ended and closed the terminal
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"{needle!r} never appeared before the program ended; saw:\n{self.text()}")
                self.seen += chunk
                self.stamps.append((time.monotonic(), chunk))
        return self.text()

    def text(self) -> str:
        return self.seen.decode("utf-8", "replace")

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def wait(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if ready:
                with contextlib.suppress(OSError):
                    self.seen += os.read(self.master, 65536)
        if self.proc.poll() is None:  # the failure says what it showed
            self.proc.kill()
            raise AssertionError(f"still running after {timeout:.0f} s; it showed:\n{self.text()}")
        # What it wrote last may still be in the terminal: read it to the end.
        while select.select([self.master], [], [], 0.2)[0]:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # every end of the terminal closed
                break
            if not chunk:
                break
            self.seen += chunk
        return self.proc.wait(timeout=1)


def test_chat_two_turns_then_exit_deletes_its_sandbox(rig: Rig) -> None:
    rig.model.enqueue(turn(run("echo first-turn")), turn(msg("Answer one.")))
    term = Terminal(rig, "chat")
    term.read_until("User: ")
    term.send("make something\r")
    term.read_until("Answer one.")
    term.read_until("User: ")
    sandbox_id = rig.record()["sandbox_id"]
    thread = rig.record()["thread_id"]
    rig.model.enqueue(turn(msg("Answer two.")))
    term.send("and now?\r")
    term.read_until("Answer two.")
    assert rig.record()["thread_id"] == thread
    term.read_until("User: ")
    term.send("exit\r")
    assert term.wait() == 0, term.text()
    assert (rig.sandbox(sandbox_id) or {}).get("state") == "destroyed"
    assert rig.record() == {}
    # Both prompts were one conversation.
    assert "make something" in str(rig.model.model_requests[-1]["body"]["input"])


def test_chat_on_a_sandbox_from_up_leaves_it_running_and_continues_the_thread(rig: Rig) -> None:
    rig.model.enqueue(turn(msg("from ask")))
    assert rig.cli("ask", "hello from ask").code == 0
    sandbox_id, thread = rig.record()["sandbox_id"], rig.record()["thread_id"]
    rig.model.enqueue(turn(msg("from chat")))
    term = Terminal(rig, "chat")
    term.read_until("User: ")
    term.send("hello from chat\r")
    term.read_until("from chat")
    term.read_until("User: ")
    os.close(term.master)  # the terminal goes away: SIGHUP
    term.proc.send_signal(signal.SIGHUP)
    term.proc.wait(timeout=30)
    assert (rig.sandbox(sandbox_id) or {}).get("state") == "started"
    assert rig.record()["thread_id"] == thread
    assert "hello from ask" in str(rig.model.model_requests[-1]["body"]["input"])


def test_chat_ctrl_c_interrupts_the_turn_and_returns_to_the_prompt(rig: Rig) -> None:
    rig.model.enqueue(turn(run("sleep 63", yield_time_ms=60000)))
    term = Terminal(rig, "chat")
    term.read_until("User: ")
    term.send("sleep a while\r")
    term.read_until("sleep 63")
    sandbox_id = rig.record()["sandbox_id"]
    deadline = time.monotonic() + 30
    while not sandbox_processes(sandbox_id, "sleep 63"):  # the command really runs
        assert time.monotonic() < deadline, "the turn's command never started"
        time.sleep(0.05)
    interrupted_run = rig.record()["last_turn"]["run_id"]
    term.send("\x03")  # Ctrl-C
    term.read_until("Interrupted", timeout=15)
    term.read_until("User: ")
    # The turn was interrupted through the agent, and the command it ran is gone.
    last = rig.record()["last_turn"]
    assert (last["run_id"], last["status"]) == (interrupted_run, "interrupted")
    deadline = time.monotonic() + 5
    while sandbox_processes(sandbox_id, "sleep 63"):
        assert time.monotonic() < deadline, "the interrupted command still runs"
        time.sleep(0.05)
    rig.model.enqueue(turn(msg("still here")))
    term.send("are you there?\r")
    term.read_until("still here")
    term.read_until("User: ")
    term.send("\x04")  # Ctrl-D
    assert term.wait() == 0, term.text()


def test_sigterm_ends_a_chat_and_deletes_its_sandbox(rig: Rig) -> None:
    term = Terminal(rig, "chat")
    term.read_until("User: ")
    sandbox_id = rig.record()["sandbox_id"]
    term.proc.send_signal(signal.SIGTERM)
    term.wait()
    assert (rig.sandbox(sandbox_id) or {}).get("state") == "destroyed"


def _tgkill() -> Callable[[int, int, int], int] | None:
    """glibc's tgkill (a signal to one thread of another process), where there is one."""
    import ctypes

    if not sys.platform.startswith("linux"):
        return None
    return getattr(ctypes.CDLL(None, use_errno=True), "tgkill", None)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_the_kernel_hands_to_another_thread_still_ends_the_chat_at_its_prompt(
    rig: Rig, sig: signal.Signals
) -> None:
    """A signal to the process goes to any of its threads that does not block it; Python
    runs the handler in the main thread, which must not stay blocked reading the prompt."""
    tgkill = _tgkill()
    if tgkill is None:
        pytest.skip("needs Linux's tgkill to pick the thread a signal goes to")
    term = Terminal(rig, "chat")
    term.read_until("User: ")
    sandbox_id = rig.record()["sandbox_id"]
    pid = term.proc.pid
    others = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid)
    assert others, "the chat has no thread but its main one (the Daytona SDK's keeps one): nothing to test"
    assert tgkill(pid, others[0], sig) == 0
    term.wait(timeout=30)
    assert (rig.sandbox(sandbox_id) or {}).get("state") == "destroyed", term.text()


def test_down_at_a_terminal_asks_first_and_no_keeps_the_sandbox(rig: Rig) -> None:
    assert rig.cli("up").code == 0
    sandbox_id = rig.record()["sandbox_id"]
    term = Terminal(rig, "down")
    term.read_until(f"Delete sandbox {sandbox_id} and everything in it? [y/N]: ")
    term.send("maybe\r")
    term.read_until("Error: invalid input")
    term.send("n\r")
    assert term.wait() == 1, term.text()
    assert "Aborted" in term.text()
    assert (rig.sandbox(sandbox_id) or {}).get("state") == "started"
    term = Terminal(rig, "down")
    term.read_until("[y/N]: ")
    term.send("yes\r")
    assert term.wait() == 0, term.text()
    assert (rig.sandbox(sandbox_id) or {}).get("state") == "destroyed"


def test_ctrl_c_at_down_alls_question_deletes_nothing_and_exits_130(rig: Rig) -> None:
    assert rig.cli("up").code == 0
    sandbox_id = rig.record()["sandbox_id"]
    term = Terminal(rig, "down", "--all")
    term.read_until("sandboxes and everything in them? [y/N]: ")
    term.send("\x03")  # Ctrl-C
    assert term.wait(timeout=30) == 130, term.text()
    assert (rig.sandbox(sandbox_id) or {}).get("state") == "started"
    assert rig.record()["sandbox_id"] == sandbox_id


def test_a_turn_watched_in_a_terminal_shows_commands_as_they_start(rig: Rig) -> None:
    assert rig.cli("up").code == 0
    rig.model.enqueue(turn(run("sleep 3; echo woke")), turn(msg("rested")))
    term = Terminal(rig, "ask", "rest a bit")
    term.read_until("sleep 3")
    shown = time.monotonic()
    term.read_until("rested", timeout=60)
    done = time.monotonic()
    assert term.wait() == 0, term.text()
    assert done - shown > 2, "the running command was on screen while it ran"
    assert "Run:" in term.text()


def test_down_stop_keeps_files_and_thread(rig: Rig) -> None:
    rig.model.enqueue(turn(run("echo kept > kept.txt")), turn(msg("written")))
    assert rig.cli("ask", "write a file").code == 0
    sandbox_id, thread = rig.record()["sandbox_id"], rig.record()["thread_id"]
    stopped = rig.cli("down", "--stop")
    assert stopped.code == 0, stopped
    assert (rig.sandbox(sandbox_id) or {}).get("state") == "stopped"
    assert rig.record()["sandbox_id"] == sandbox_id
    rig.model.enqueue(turn(run("cat kept.txt")), turn(msg("still kept")))
    again = rig.cli("ask", "is it there?")
    assert again.code == 0, again
    assert (rig.sandbox(sandbox_id) or {}).get("state") == "started"
    assert rig.record()["thread_id"] == thread
    assert "kept" in str(rig.model.model_requests[-1]["body"]["input"])


def test_down_all_deletes_every_sandbox_of_this_tool_and_no_other(rig: Rig, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`down --all` deletes exactly the sandboxes labelled as this tool's, in every project,
    and leaves alone a sandbox of the same Daytona account that the tool did not make."""
    from daytona import CreateSandboxFromSnapshotParams, Daytona, DaytonaConfig

    assert rig.cli("up").code == 0
    other = tmp_path / "other-project"
    other.mkdir()
    elsewhere = subprocess.run(
        [sys.executable, "-m", "codex_daytona", "up", "-q"],
        cwd=other,
        env=dict(rig.env, CODEX_DAYTONA_STATE_DIR=str(other / ".state")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert elsewhere.returncode == 0, elsewhere.stderr
    # Someone else's sandbox in the same account: labels of its own, one of them named "app".
    daytona = Daytona(DaytonaConfig(api_key=rig.env["DAYTONA_API_KEY"], api_url=rig.env["DAYTONA_API_URL"]))
    foreign = daytona.create(CreateSandboxFromSnapshotParams(labels={"app": "someone-else", "team": "data"}))
    try:
        refused = rig.cli("down", "--all")
        assert refused.code == 2, refused  # not a terminal and no --yes: nothing deleted
        ours = {
            s["id"]
            for s in rig.emulator.sandboxes()
            if s["labels"].get("app") == "codex-daytona" and s["state"] not in ("destroyed", "destroying")
        }
        assert {rig.record()["sandbox_id"], elsewhere.stdout.strip()} <= ours
        assert foreign.id not in ours
        result = rig.cli("down", "--all", "--yes", "--json")
        assert result.code == 0, result
        deleted = json.loads(result.stdout)["deleted"]
        assert sorted(deleted) == sorted(ours), "exactly the tool's sandboxes, each once"
        for sandbox_id in ours:
            assert (rig.sandbox(sandbox_id) or {}).get("state") == "destroyed"
        assert (rig.sandbox(foreign.id) or {}).get("state") == "started", "a sandbox the tool did not make survives"
        assert rig.record() == {}
    finally:
        daytona.delete(daytona.get(foreign.id))


def _states_while(rig: Rig, sandbox_id: str, busy: Callable[[], bool], limit: float = 60) -> set[str]:
    """The sandbox states seen, sampled every 50 ms, while `busy()` holds."""
    seen = set()
    deadline = time.monotonic() + limit
    while busy() and time.monotonic() < deadline:
        seen.add((rig.sandbox(sandbox_id) or {}).get("state", "gone"))
        time.sleep(0.05)
    return seen


def test_no_auto_stop_in_the_middle_of_a_followed_turn(rig: Rig) -> None:
    """A 1-minute auto-stop (two seconds on the emulator's clock, which applies Daytona's
    activity rules: processes in the sandbox do not count) through a turn four times as long."""
    env = {"CODEX_DAYTONA_AUTO_STOP_MINUTES": "1", "CODEX_DAYTONA_KEEPALIVE_SECONDS": "0.4"}
    assert rig.cli("up", env=env).code == 0
    sandbox_id = rig.record()["sandbox_id"]
    rig.emulator.set_config(autostop_seconds_per_minute=2)
    rig.model.enqueue(turn(run("sleep 8; echo survived", yield_time_ms=60000)), turn(msg("made it")))
    proc = rig.popen("ask", "-q", "a long turn", env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # (The sandbox may well stop while the CLI starts: that ask then starts it again.)
    deadline = time.monotonic() + 60
    while not rig.model.model_requests and time.monotonic() < deadline:
        time.sleep(0.05)
    seen = _states_while(rig, sandbox_id, lambda: proc.poll() is None)
    out, err = proc.communicate(timeout=30)
    assert (proc.returncode, out) == (0, "made it\n"), err
    assert seen == {"started"}, f"the sandbox was {seen} during the turn"
    # The tool's own keepalive reached Daytona while the turn ran.
    log = Path(rig.emulator.server.log_path or "")
    refreshes = [
        e
        for e in map(json.loads, log.read_text().splitlines())
        if e["path"] == f"/api/sandbox/{sandbox_id}/last-activity"
    ]
    assert refreshes, "no refresh_activity call"
    # Left idle, the sandbox stops: the emulator's auto-stop is real.
    _wait_for_state(rig, sandbox_id, "stopped", 10)


def test_a_sandbox_stopped_between_look_up_and_command_is_started_and_the_turn_runs(rig: Rig) -> None:
    """Auto-stop can fire between `ask` finding the sandbox started and sending the turn's
    command: the sandbox is started again and the command sent once more."""
    assert rig.cli("up").code == 0
    sandbox_id = rig.record()["sandbox_id"]
    rig.emulator.set_faults(autostop_before_next_command=1)
    rig.model.enqueue(turn(msg("made it anyway")))
    result = rig.cli("ask", "-q", "hello")
    assert (result.code, result.stdout) == (0, "made it anyway\n"), result
    assert rig.emulator.faults()["autostop_before_next_command"] == 0, "the fault never struck"
    assert (rig.sandbox(sandbox_id) or {}).get("state") == "started"


@pytest.mark.parametrize("fault", ["autostop_before_next_command", "autostop_before_next_session"])
def test_exec_in_a_sandbox_stopped_between_look_up_and_command_starts_it_and_runs(rig: Rig, fault: str) -> None:
    """The same window for `exec`, whether the stop lands on its session or on its command:
    both go through the same restart-and-resend (Box), where exec used to fail with exit 7."""
    assert rig.cli("up").code == 0
    sandbox_id = rig.record()["sandbox_id"]
    rig.emulator.set_faults(**{fault: 1})
    result = rig.cli("exec", "--", "echo", "still here")
    assert (result.code, result.stdout) == (0, "still here\n"), result
    assert rig.emulator.faults()[fault] == 0, "the fault never struck"
    assert (rig.sandbox(sandbox_id) or {}).get("state") == "started"


def test_a_process_command_in_a_sandbox_stopped_since_the_look_up_starts_it_and_runs(rig: Rig) -> None:
    """Commands through Daytona's process API (here `logs`' read of the run's event file) take
    the same restart-and-retry when auto-stop struck between the look-up and the command."""
    assert rig.cli("up").code == 0
    sandbox_id = rig.record()["sandbox_id"]
    rig.model.enqueue(turn(msg("remembered")))
    assert rig.cli("ask", "-q", "hello").stdout == "remembered\n"
    rig.emulator.set_faults(autostop_before_next_exec=1)
    result = rig.cli("logs", "-q")
    assert (result.code, result.stdout) == (0, "remembered\n"), result
    assert rig.emulator.faults()["autostop_before_next_exec"] == 0, "the fault never struck"
    assert (rig.sandbox(sandbox_id) or {}).get("state") == "started"


def test_a_detached_turn_nobody_follows_is_not_stopped_mid_turn(rig: Rig) -> None:
    """Daytona never counts the processes in a sandbox as activity: a detached turn raises
    the auto-stop to CODEX_DAYTONA_DETACH_MINUTES, and the next command that finds the turn
    over puts it back."""
    env = {"CODEX_DAYTONA_AUTO_STOP_MINUTES": "1", "CODEX_DAYTONA_DETACH_MINUTES": "30"}
    assert rig.cli("up", env=env).code == 0
    record = rig.record()
    sandbox_id = record["sandbox_id"]
    events = Path(rig.emulator.home_dir(sandbox_id)) / ".codex-daytona" / "runs"
    # A scaled minute of 2 s: idle that long, the sandbox stops, and the turn takes over 5 s.
    # (At 1 s, a loaded machine's CLI start-up alone, before its first call, looked idle.)
    rig.emulator.set_config(autostop_seconds_per_minute=2)
    rig.model.enqueue(turn(run("sleep 5; echo survived", yield_time_ms=60000)), turn(msg("made it alone")))
    started = rig.cli("ask", "--detach", "-q", "work alone", env=env)
    assert started.code == 0, started
    run_id = started.stdout.strip()
    assert (rig.sandbox(sandbox_id) or {})["autoStopInterval"] == 30
    done_file = events / run_id / "events.jsonl"

    def running() -> bool:
        return "codex_daytona.run.completed" not in (done_file.read_text() if done_file.exists() else "")

    seen = _states_while(rig, sandbox_id, running)
    assert not running(), "the turn did not finish"
    assert seen == {"started"}, f"the sandbox was {seen} during the detached turn"
    followed = rig.cli("logs", "-q", "-f", run_id, env=env)
    assert (followed.code, followed.stdout) == (0, "made it alone\n"), followed
    assert (rig.sandbox(sandbox_id) or {})["autoStopInterval"] == 1, "the auto-stop was put back"
    assert rig.record()["auto_stop_raised"] is False
    _wait_for_state(rig, sandbox_id, "stopped", 10)


def _wait_for_state(rig: Rig, sandbox_id: str, state: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (rig.sandbox(sandbox_id) or {}).get("state") != state:
        assert time.monotonic() < deadline, f"the sandbox never became {state}"
        time.sleep(0.1)
