"""Turns from a script's point of view and under stress: output modes, stdin, timeouts,
Ctrl-C, detached runs, one turn at a time, dropped streams and Daytona faults."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.e2e import DAYTONA_KEY, Rig, run_events, sandbox_processes
from tests.fakes.model import msg, run, turn

pytestmark = pytest.mark.e2e


def _ready(rig: Rig) -> str:
    result = rig.cli("up", "-q")
    assert result.code == 0, result
    return result.stdout.strip()


def _wait_for(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_quiet_prints_only_the_answer(rig: Rig) -> None:
    rig.model.enqueue(turn(run("echo working")), turn(msg("42")))
    result = rig.cli("ask", "-q", "what is the answer?")
    assert result.code == 0, result
    assert result.stdout == "42\n"
    assert "Run:" not in result.stderr


def test_json_is_the_exec_stream_plus_ours_and_a_result(rig: Rig) -> None:
    rig.model.enqueue(turn(run("echo hi")), turn(msg("done")))
    result = rig.cli("ask", "--json", "say hi")
    assert result.code == 0, result
    events = result.json_lines  # every stdout line is JSON
    types = [e["type"] for e in events]
    exec_types = [t for t in types if not t.startswith("codex_daytona.")]
    assert exec_types[0] == "thread.started" and exec_types[1] == "turn.started"
    assert exec_types[-1] == "turn.completed"
    assert types[-1] == "codex_daytona.result"
    assert events[-1]["status"] == "completed" and events[-1]["final_message"] == "done"
    assert events[-1]["thread_id"] == events[types.index("thread.started")]["thread_id"]
    assert "{" not in result.stderr


def test_prompt_from_a_pipe_and_a_new_thread(rig: Rig) -> None:
    rig.model.enqueue(turn(msg("one")))
    first = rig.cli("ask", input="from the pipe\n")
    assert first.code == 0, first
    assert "from the pipe" in rig.model.last_input()
    thread = rig.record()["thread_id"]
    rig.model.enqueue(turn(msg("two")))
    second = rig.cli("ask", "--new-thread", "fresh")
    assert second.code == 0, second
    assert rig.record()["thread_id"] != thread
    assert "from the pipe" not in rig.model.last_input()


def test_timeout_interrupts_the_turn_with_124(rig: Rig) -> None:
    sandbox_id = _ready(rig)
    rig.model.enqueue(turn(run("sleep 71", yield_time_ms=60000)), turn(msg("unreachable")))
    # 8 s: time for the command to start on a loaded machine (at 3 it timed out before that).
    proc = rig.popen_piped("ask", "--timeout", "8", "sleep a while")
    # The command really ran before the timeout: "it is gone" below then means something.
    _wait_for(lambda: bool(sandbox_processes(sandbox_id, "sleep 71")))
    _stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 124, stderr
    _wait_for(lambda: not sandbox_processes(sandbox_id, "sleep 71"), timeout=5)
    assert rig.record()["last_turn"]["status"] == "interrupted"


def test_ctrl_c_stops_the_turn_not_the_sandbox(rig: Rig) -> None:
    sandbox_id = _ready(rig)
    rig.model.enqueue(turn(run("sleep 60", yield_time_ms=60000)), turn(msg("unreachable")))
    proc = rig.popen_piped("ask", "sleep for a minute")
    _wait_for(lambda: bool(sandbox_processes(sandbox_id, "sleep 60")))
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _stdout, stderr = proc.communicate(timeout=30)
    elapsed = time.monotonic() - sent
    assert proc.returncode == 130, stderr
    assert elapsed < 5, f"took {elapsed:.1f} s to give control back"
    assert "Traceback" not in stderr
    # The agent confirmed the interrupt (had the wait run out instead, the status would
    # not be known), and the command it was running is gone.
    assert rig.record()["last_turn"]["status"] == "interrupted"
    _wait_for(lambda: not sandbox_processes(sandbox_id, "sleep 60"), timeout=5)
    assert (rig.sandbox(sandbox_id) or {}).get("state") == "started"
    # The thread resumes, and the model is told the last turn was aborted.
    history = rig.ask_on_same_thread("are you there?", "resumed")
    assert "sleep for a minute" in history
    assert "aborted" in history.lower(), "the model is told the last turn was aborted"


def test_detached_run_followed_from_another_process(rig: Rig) -> None:
    _ready(rig)
    rig.model.enqueue(turn(run("sleep 2; echo slow-work-done")), turn(msg("finished in the background")))
    started = rig.cli("ask", "--detach", "-q", "work in the background")
    assert started.code == 0, started
    run_id = started.stdout.strip()
    assert run_id
    follow = rig.cli("logs", "-f", run_id)
    assert follow.code == 0, follow
    assert "slow-work-done" not in follow.stdout  # command output stays on stderr in human mode
    assert follow.stdout.strip() == "finished in the background"
    assert "Run:" in follow.stderr
    again = rig.cli("logs", "--json", run_id)
    assert again.code == 0, again
    types = [e["type"] for e in again.json_lines]
    assert "turn.completed" in types and types[-1] == "codex_daytona.result"


def test_one_turn_at_a_time(rig: Rig) -> None:
    _ready(rig)
    rig.model.enqueue(turn(run("sleep 4", yield_time_ms=60000)), turn(msg("first done")))
    first = rig.cli("ask", "--detach", "-q", "first")
    run_id = first.stdout.strip()
    time.sleep(1.0)
    busy = rig.cli("ask", "second")
    assert busy.code == 6, busy
    assert run_id in busy.stderr
    rig.model.enqueue(turn(msg("second done")))
    waited = rig.cli("ask", "--wait", "second, patiently")
    assert waited.code == 0, waited
    assert waited.stdout.strip() == "second done"


def test_dropped_log_streams_lose_and_repeat_nothing(rig: Rig) -> None:
    _ready(rig)
    steps = [turn(run(f"echo step-{i}; sleep 0.2")) for i in range(6)] + [turn(msg("all steps done"))]
    rig.model.enqueue(*steps)
    rig.emulator.set_faults(drop_log_streams=3, drop_after_bytes=400)
    result = rig.cli("ask", "--json", "do six steps")
    assert result.code == 0, result
    shown = [e for e in result.json_lines if not e["type"].startswith("codex_daytona.")]
    run_id = result.json_lines[-1]["run_id"]
    saved = run_events(rig, run_id)
    expected = [e for e in saved if not e["type"].startswith("codex_daytona.")]
    assert shown == expected
    # Each fault cut a stream part-way (the emulator only cuts inside the log), and each cut
    # was one reconnect: a stream that ended at the closing event is not reconnected.
    assert rig.emulator.faults()["drops_done"] == 3, "the faults were really injected"
    assert sum(e["type"] == "codex_daytona.retry" for e in result.json_lines) == 3


def test_a_run_whose_own_command_vanishes_mid_run_is_followed_from_where_it_was(rig: Rig, tmp_path: Path) -> None:
    """The run's own agent command goes away while the turn runs (killed): the follower picks
    the run up from its event file at the byte it had reached, so every event is shown once,
    none twice and none lost."""
    sandbox_id = _ready(rig)
    home = Path(rig.emulator.home_dir(sandbox_id))
    runs = home / ".codex-daytona" / "runs"
    rig.model.enqueue(
        turn(run("echo step-a")),
        turn(run("echo step-b; sleep 3; echo step-c", yield_time_ms=60000)),
        turn(run("echo step-d")),
        turn(msg("all there once")),
    )
    # stdout is read through one buffered reader only (communicate() would skip what it holds).
    with (tmp_path / "stderr").open("w") as stderr:
        ask = rig.popen("ask", "--json", "four steps", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr)
    assert ask.stdout is not None
    rest: list[str] = []
    try:
        # Read until the CLI has shown the second command start: it has taken in that many
        # bytes of the run, so a follower starting over would show them again.
        shown_first: list[str] = []
        for line in ask.stdout:
            shown_first.append(line)
            if "step-b; sleep 3" in line and '"item.started"' in line:
                break
        assert shown_first and "step-b; sleep 3" in shown_first[-1], shown_first
        # The run's own agent command dies (as in a sandbox restart); the agent's daemon, which
        # runs the turn and writes its event file, goes on.
        clients = sandbox_processes(sandbox_id, "--run-id")
        assert len(clients) == 1, clients
        os.kill(next(iter(clients)), signal.SIGKILL)
        reader = threading.Thread(target=lambda: rest.append(ask.stdout.read()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(120)
        ask.wait(timeout=10)
    finally:
        if ask.poll() is None:
            ask.kill()
            ask.wait()
    err = (tmp_path / "stderr").read_text()
    out = "".join(shown_first + rest)
    assert ask.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    attaches = [c for c in rig.emulator.commands(sandbox_id) if "--attach" in c["command"]]
    assert attaches, (
        "the run was followed from its event file after its command went",
        err,
        [(c["sessionId"], c["command"][-90:], c["exitCode"]) for c in rig.emulator.commands(sandbox_id)],
    )
    run_id = lines[-1]["run_id"]
    path = runs / run_id / "events.jsonl"
    saved = [e for e in map(json.loads, path.read_text().splitlines()) if not e["type"].startswith("codex_daytona.")]
    shown = [e for e in lines if not e["type"].startswith("codex_daytona.")]
    repeated = [e for i, e in enumerate(shown) if e in shown[:i]]
    assert not repeated, f"events shown twice: {repeated}"
    assert shown == saved
    assert lines[-1]["final_message"] == "all there once"


@pytest.mark.parametrize(("fault", "counter"), [("stall", "stalls_done"), ("half_close", "half_closes_done")])
def test_a_stalled_or_half_closed_stream_is_picked_up_again(rig: Rig, fault: str, counter: str) -> None:
    """A stream that goes silent while open (the agent's heartbeat then misses) or whose
    connection closes without a close frame is reconnected, losing and repeating nothing."""
    _ready(rig)
    rig.model.enqueue(turn(run("echo step-a; sleep 0.5; echo step-b")), turn(msg("came through")))
    rig.emulator.set_faults(**{f"{fault}_log_streams": 1, "drop_after_bytes": 300})
    result = rig.cli("ask", "--json", "two steps", env={"CODEX_DAYTONA_STREAM_IDLE_SECONDS": "3"})
    assert result.code == 0, result
    assert rig.emulator.faults()[counter] == 1, "the fault really struck mid-stream"
    lines = result.json_lines
    assert sum(e["type"] == "codex_daytona.retry" for e in lines) == 1
    run_id = lines[-1]["run_id"]
    expected = [e for e in run_events(rig, run_id) if not e["type"].startswith("codex_daytona.")]
    assert [e for e in lines if not e["type"].startswith("codex_daytona.")] == expected
    assert lines[-1]["final_message"] == "came through"


def test_a_quiet_turn_is_not_taken_for_a_stalled_stream(rig: Rig) -> None:
    """A command that prints nothing for longer than the stall limit: the agent's heartbeat
    keeps the stream alive, so nothing reconnects."""
    _ready(rig)
    rig.model.enqueue(turn(run("sleep 5", yield_time_ms=60000)), turn(msg("quietly done")))
    result = rig.cli("ask", "--json", "be quiet", env={"CODEX_DAYTONA_STREAM_IDLE_SECONDS": "2"})
    assert result.code == 0, result
    assert not [e for e in result.json_lines if e["type"] == "codex_daytona.retry"], result
    assert result.json_lines[-1]["final_message"] == "quietly done"


def test_transient_daytona_errors_are_retried(rig: Rig) -> None:
    """An idempotent request that meets a transient failure (503) is tried again. Since `up`
    makes the turn session, a warm `ask` makes no idempotent request (it starts its command
    and follows its log); `status` looks the sandbox up, which is one."""
    _ready(rig)
    log = Path(rig.emulator.server.log_path or "")
    before = len(log.read_text().splitlines())
    rig.emulator.set_faults(fail_next=2)
    result = rig.cli("status")
    assert result.code == 0, result
    assert rig.emulator.faults()["fail_next"] == 0, "both faults were used"
    requests = [json.loads(line) for line in log.read_text().splitlines()[before:]]
    requests = [r for r in requests if r["kind"] in ("api", "toolbox")]
    first = requests[0]
    assert first["method"] == "GET" and first["status"] == 503, first
    assert [(r["path"], r["status"]) for r in requests[:2]] == [(first["path"], 503)] * 2
    assert requests[2]["path"] == first["path"] and requests[2]["status"] == 200, requests[:3]


def test_a_stopped_sandbox_is_started(rig: Rig) -> None:
    sandbox_id = _ready(rig)
    rig.model.enqueue(turn(msg("first")))
    assert rig.cli("ask", "hello").code == 0
    thread_before = rig.record()["thread_id"]
    assert thread_before
    request = urllib.request.Request(
        f"{rig.emulator.api_url}/sandbox/{sandbox_id}/stop",
        method="POST",
        headers={"Authorization": f"Bearer {DAYTONA_KEY}"},
    )
    urllib.request.urlopen(request, timeout=10).read()
    # Daytona answers the stop at once and passes through "stopping" (0.2 s in the emulator).
    deadline = time.monotonic() + 10
    while (rig.sandbox(sandbox_id) or {}).get("state") != "stopped":
        assert time.monotonic() < deadline, rig.sandbox(sandbox_id)
        time.sleep(0.05)
    rig.model.enqueue(turn(msg("back up")))
    result = rig.cli("ask", "hello again")
    assert result.code == 0, result
    assert "Starting sandbox" in result.stderr
    assert (rig.sandbox(sandbox_id) or {}).get("state") == "started"
    assert rig.record()["thread_id"] == thread_before
    # The same conversation went on: the model saw the turn from before the stop.
    assert "hello" in rig.model.last_input()
    starts = [e for e in rig.requests() if e["method"] == "POST" and e["path"] == f"/api/sandbox/{sandbox_id}/start"]
    assert len(starts) == 1, starts


def test_status_in_every_mode(rig: Rig) -> None:
    none = rig.cli("status", "-q")
    assert none.code == 0 and none.stdout.strip() == "none", none
    sandbox_id = _ready(rig)
    rig.model.enqueue(turn(msg("ok")))
    assert rig.cli("ask", "hi").code == 0
    human = rig.cli("status")
    assert human.code == 0, human
    assert sandbox_id in human.stdout and "completed" in human.stdout
    data = json.loads(rig.cli("status", "--json").stdout)
    assert data["state"] == "started" and data["sandbox_id"] == sandbox_id
    assert data["last_turn"]["status"] == "completed" and data["thread_id"]
    assert rig.cli("status", "-q").stdout.strip() == "started"


def test_exec_streams_and_exits_with_the_command_code(rig: Rig) -> None:
    _ready(rig)
    result = rig.cli("exec", "--", "sh", "-c", "echo to-out; echo to-err >&2; pwd; exit 7")
    assert result.code == 7, result
    assert "to-out" in result.stdout and "to-err" not in result.stdout
    assert "to-err" in result.stderr
    assert result.stdout.strip().endswith("/home")
    timed = rig.cli("exec", "--timeout", "2", "--", "sleep", "30")
    assert timed.code == 124, timed


@pytest.mark.slow
def test_soak_twenty_asks_with_streams_dropped_at_random_points(rig: Rig) -> None:
    import random

    _ready(rig)
    rng = random.Random(20261126)
    cut = 0
    for i in range(20):
        rig.model.enqueue(turn(run(f"echo soak-{i}; seq 1 {rng.randint(1, 40)}")), turn(msg(f"done {i}")))
        rig.emulator.reset()
        rig.emulator.set_faults(drop_log_streams=1, drop_after_bytes=rng.randint(1, 2500))
        result = rig.cli("ask", "--json", f"soak {i}")
        assert result.code == 0, result
        lines = result.json_lines
        assert lines[-1]["final_message"] == f"done {i}"
        run_id = lines[-1]["run_id"]
        expected = run_events(rig, run_id)  # the ports events too: --json shows them
        shown = [e for e in lines if e["type"] not in ("codex_daytona.retry", "codex_daytona.result")]
        shown = [e for e in shown if e["type"] != "codex_daytona.preview"]
        expected = [e for e in expected if e["type"] != "codex_daytona.run.completed"]
        assert shown == expected, f"ask {i}: events lost or repeated"
        # A cut counts only when the emulator really cut this ask's stream inside its log.
        struck = rig.emulator.faults()["drops_done"]
        assert sum(e["type"] == "codex_daytona.retry" for e in lines) == struck, f"ask {i}"
        cut += struck
    rig.emulator.reset()
    assert cut >= 10, f"only {cut} streams were really cut mid-way"
