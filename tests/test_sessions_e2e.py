"""The tool on Daytona's session model, end to end: one shell per session that runs its
commands one after another, logs replayed from byte 0, nothing sent as input.

See README "Sessions on Daytona's daemon"; the emulator's conformance tests pin the daemon
behaviour these rely on (tests/test_emulator_daemon.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e import OPENAI_KEY, Rig, files_holding, sandbox_processes
from tests.fakes.model import msg, run, turn

pytestmark = pytest.mark.e2e


def _ready(rig: Rig) -> str:
    result = rig.cli("up", "-q")
    assert result.code == 0, result
    return result.stdout.strip()


def _wait_for(predicate, timeout: float = 30.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} not met in time")


def test_exec_commands_that_would_break_a_session_shell_each_return_their_own_code(rig: Rig) -> None:
    sandbox_id = _ready(rig)
    home = rig.emulator.home_dir(sandbox_id)
    assert rig.cli("exec", "--", "exit 3").code == 3
    assert rig.cli("exec", "--", "exec true").code == 0
    assert rig.cli("exec", "--", "set -e; false; echo never").code == 1
    changed = rig.cli("exec", "--", "cd / && export CODEX_DAYTONA_LEAK=1 && pwd")
    assert (changed.code, changed.stdout) == (0, "/\n"), changed
    # None of it reached the next command: it starts in the home, with a clean environment.
    after = rig.cli("exec", "--", 'pwd; echo "leak=${CODEX_DAYTONA_LEAK:-none}"')
    assert (after.code, after.stdout) == (0, f"{home}\nleak=none\n"), after
    # A background job that holds the command's output does not keep the command running...
    marker = f"bg-job-{os.getpid()}"
    started = rig.cli("exec", "--timeout", "20", "--", f"sh -c 'sleep 30; echo {marker}' & echo started")
    assert (started.code, started.stdout) == (0, "started\n"), started
    # ... it lives on, and the next command still works.
    assert sandbox_processes(sandbox_id, "sleep 30"), "the background job was killed"
    assert rig.cli("exec", "--", "exit 4").code == 4
    for pid in sandbox_processes(sandbox_id, "sleep 30"):
        os.kill(pid, signal.SIGTERM)


def test_logs_follow_from_a_second_process_sees_the_turn_live(rig: Rig) -> None:
    sandbox_id = _ready(rig)
    rig.model.enqueue(
        turn(run("echo first-step; sleep 4; echo second-step", yield_time_ms=60000)),
        turn(msg("both steps done")),
    )
    asker = rig.popen("ask", "--json", "two steps", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for(lambda: bool(sandbox_processes(sandbox_id, "sleep 4")), what="the turn's command running")
    follower = rig.popen("logs", "-f", "--json", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert follower.stdout is not None
    # The command's start arrives while the command still runs: live, not after the turn.
    for line in follower.stdout:
        event = json.loads(line)
        if event["type"] == "item.started" and "sleep 4" in event["item"].get("command", ""):
            break
    assert sandbox_processes(sandbox_id, "sleep 4"), "the event arrived only after the command ended"
    rest = [json.loads(line) for line in follower.stdout]
    assert follower.wait(timeout=60) == 0
    assert rest[-1]["type"] == "codex_daytona.result" and rest[-1]["final_message"] == "both steps done"
    out, err = asker.communicate(timeout=60)
    assert asker.returncode == 0, err
    assert json.loads(out.splitlines()[-1])["final_message"] == "both steps done"


def test_a_second_ask_is_busy_at_once_and_wait_queues_behind_the_turn(rig: Rig) -> None:
    _ready(rig)
    rig.model.enqueue(turn(run("sleep 5", yield_time_ms=60000)), turn(msg("first done")))
    first = rig.popen("ask", "-q", "first", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for(lambda: len(rig.model.model_requests) >= 1, what="the first turn reaching the model")
    run_id = rig.record()["last_turn"]["run_id"]
    before = time.monotonic()
    busy = rig.cli("ask", "second")
    assert busy.code == 6, busy
    assert run_id in busy.stderr
    assert first.poll() is None, "busy came back only after the running turn ended"
    assert time.monotonic() - before < 5
    sandbox_id = rig.record()["sandbox_id"]
    assert (rig.sandbox(sandbox_id) or {})["sessions"] == ["codex-daytona"], "the busy ask's session is gone"
    rig.model.enqueue(turn(msg("second done")))
    waited = rig.cli("ask", "-q", "--wait", "second, patiently")
    assert waited.code == 0, waited
    assert waited.stdout == "second done\n"
    assert (rig.sandbox(sandbox_id) or {})["sessions"] == ["codex-daytona"], "no session is left idle"
    out, _ = first.communicate(timeout=60)
    assert (first.returncode, out) == (0, "first done\n")
    # The queued turn reached the model only after the first had its answer.
    prompts = [json.dumps(r["body"]["input"]) for r in rig.model.model_requests]
    assert "second, patiently" in prompts[-1]
    assert not any("second, patiently" in p for p in prompts[:2])
    # The next ask still works (no session is left holding a command).
    rig.model.enqueue(turn(msg("third done")))
    third = rig.cli("ask", "-q", "third")
    assert (third.code, third.stdout) == (0, "third done\n"), third


def test_the_key_is_handed_over_again_when_the_agent_restarted_and_lands_on_no_disk(rig: Rig) -> None:
    sandbox_id = _ready(rig)
    home = Path(rig.emulator.home_dir(sandbox_id))
    rig.model.enqueue(turn(msg("one")))
    assert rig.cli("ask", "-q", "one").code == 0
    # The sandbox's agent daemon goes away (as on a restart): it no longer holds the key.
    pid = int((home / ".codex-daytona" / "agent.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    _wait_for(lambda: not Path(f"/proc/{pid}").exists(), what="the daemon gone")
    rig.model.enqueue(turn(msg("two")))
    again = rig.cli("ask", "--json", "two")
    assert again.code == 0, again
    assert again.json_lines[-1]["final_message"] == "two"
    assert rig.model.model_requests[-1]["headers"]["authorization"] == f"Bearer {OPENAI_KEY}"
    assert "key_needed" not in again.stdout  # handled, not shown
    # Daytona's own records of every command (~/.daytona/sessions/...) and every other file
    # in the sandbox: no key.
    sessions = home / ".daytona" / "sessions"
    assert any(sessions.rglob("output.log")), "the emulator keeps Daytona's session logs"
    holding, scanned = files_holding(Path(rig.emulator.sandbox_dir(sandbox_id)), OPENAI_KEY)
    assert holding == [] and scanned > 100, (holding, scanned)
    for command in rig.emulator.commands(sandbox_id):
        assert OPENAI_KEY not in command["command"]


def test_ask_returns_at_the_closing_event_not_when_daytona_closes_the_stream(rig: Rig) -> None:
    """Daytona closes a command's log stream about a second after the command ends; ask
    leaves at the run's closing event, so the stream is always ended from our side."""
    sandbox_id = _ready(rig)
    for answer in ("one", "two"):
        rig.model.enqueue(turn(msg(answer)))
        result = rig.cli("ask", "-q", answer)
        assert (result.code, result.stdout) == (0, f"{answer}\n"), result

    def agent_commands() -> list[dict[str, object]]:
        return [c for c in rig.emulator.commands(sandbox_id) if "--run-id" in c["command"]]

    # The emulator notes how a stream ended once its handler sees it end, which under load can
    # be a moment after `ask` has exited: waited for, then it must be our side that ended it.
    _wait_for(lambda: all(c["streamsEndedBy"] for c in agent_commands()), timeout=10, what="both streams ended")
    first, second = agent_commands()
    assert [first["streamsEndedBy"], second["streamsEndedBy"]] == [["client"], ["client"]]
    # Both turns ran in one session, one after the other, each command ending with its turn
    # (the last one a moment after ask has left at its closing event).
    assert first["sessionId"] == second["sessionId"]

    def exit_codes() -> list[object]:
        return [c["exitCode"] for c in rig.emulator.commands(sandbox_id) if "--run-id" in c["command"]]

    _wait_for(lambda: None not in exit_codes(), timeout=10, what="both agent commands ended")
    assert exit_codes() == [0, 0]


def test_logs_follow_of_an_earlier_run_reads_its_event_file_and_leaves_no_session(rig: Rig) -> None:
    """An earlier run's command is not known: it is followed by an attach command in a session
    of its own, deleted afterwards."""
    sandbox_id = _ready(rig)
    rig.model.enqueue(turn(msg("first answer")))
    first = rig.cli("ask", "--json", "first")
    assert first.code == 0, first
    first_run = first.json_lines[-1]["run_id"]
    rig.model.enqueue(turn(msg("second answer")))
    assert rig.cli("ask", "-q", "second").code == 0
    followed = rig.cli("logs", "-f", "--json", first_run)
    assert followed.code == 0, followed
    assert followed.json_lines[-1]["final_message"] == "first answer"
    shown = [e for e in followed.json_lines if not e["type"].startswith("codex_daytona.")]
    assert shown == [e for e in first.json_lines if not e["type"].startswith("codex_daytona.")]
    attaches = [c for c in rig.emulator.commands(sandbox_id) if "--attach" in c["command"]]
    assert len(attaches) == 1 and attaches[0]["sessionId"] != "codex-daytona"
    assert (rig.sandbox(sandbox_id) or {})["sessions"] == ["codex-daytona"]


def test_codex_capturing_the_login_profile_is_not_taken_for_the_turns_work(rig: Rig) -> None:
    """Codex captures the login shell's environment as it starts (its shell snapshot, `bash
    -lc`). That shell is Codex's own, not the turn's: it reads the login profile once, and a
    turn that started nothing does not wait for late ports for it (under load the capture
    outlived such a turn, the session stayed busy, and the next ask went to a disposable one)."""
    sandbox_id = _ready(rig)
    home = rig.emulator.home_dir(sandbox_id)
    (home / ".bash_profile").write_text('echo read >> "$HOME/profile-reads"\n')
    # A fresh agent (as after any restart): its first turn starts Codex, which takes the snapshot.
    rig.emulator.stop_sandbox(sandbox_id)
    rig.emulator.start_sandbox(sandbox_id)
    for answer in ("one", "two"):
        rig.model.enqueue(turn(msg(answer)))
        result = rig.cli("ask", "-q", answer)
        assert (result.code, result.stdout) == (0, f"{answer}\n"), result
    assert (home / "profile-reads").read_text() == "read\n"
    agent_commands = [c for c in rig.emulator.commands(sandbox_id) if "--run-id" in c["command"]]
    assert [c["sessionId"] for c in agent_commands] == ["codex-daytona", "codex-daytona"]
    events = sorted((home / ".codex-daytona" / "runs").glob("*/events.jsonl"))
    assert len(events) == 2
    for path in events:
        ports = [json.loads(line) for line in path.read_text().splitlines() if '"codex_daytona.ports"' in line]
        assert [p.get("settling") for p in ports if not p.get("late")] == [0], ports
