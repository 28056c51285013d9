"""Links for servers that bind after the turn: the agent watches the ports for a few seconds
more (port_scan.SETTLE_S) while a process the turn left in the background has not bound yet.
The answer comes first, each link as its port appears; `-q` does not wait at all; a server
restarted on a port that listened before the turn is the turn's too."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agent_bundle import hooks, port_scan, processes, protocol
from tests.e2e import Rig, free_port, http_get, run_events
from tests.fakes.model import msg, run, turn

# --- the watch itself, in this process -------------------------------------------------------


def test_a_port_restarted_during_the_turn_counts_as_the_turns() -> None:
    first = socket.socket()
    first.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    first.bind(("127.0.0.1", 0))
    first.listen()
    port = first.getsockname()[1]
    kept = socket.socket()
    kept.bind(("127.0.0.1", 0))
    kept.listen()
    try:
        watch = port_scan.PortWatch(None, processes.boot_ticks())
        first.close()  # the server stops and starts again on its port: a new socket
        second = socket.socket()
        second.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        second.bind(("127.0.0.1", port))
        second.listen()
        try:
            listening, new = watch.scan()
            assert port in listening and kept.getsockname()[1] in listening
            assert port in new, "restarted: a socket that did not exist before the turn"
            assert kept.getsockname()[1] not in new, "listening before and untouched: not the turn's"
            # Each port once (other processes on this machine may bind ports of their own meanwhile).
            assert port not in watch.scan()[1], "each port is reported once"
        finally:
            second.close()
    finally:
        kept.close()


def _spawn(code: str, *, marked: bool = True) -> subprocess.Popen[bytes]:
    env = {**os.environ, hooks.DETACHED_ENV: "1"} if marked else {**os.environ}
    if not marked:
        env.pop(hooks.DETACHED_ENV, None)
    env.pop("CODEX_DAYTONA_SCOPE", None)
    return subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True)


BIND_LATE = (
    "import socket, sys, time\n"
    "time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 0.8)\n"
    "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); time.sleep(60)\n"
)


def _wait(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_a_process_the_turn_left_is_pending_until_it_or_its_child_binds() -> None:
    # Whatever runs the turn's processes may listen itself (Daytona's daemon, the emulator in
    # this test process): that binds none of them.
    runner = socket.socket()
    runner.bind(("127.0.0.1", 0))
    runner.listen()
    watch = port_scan.PortWatch(None, processes.boot_ticks())
    server = _spawn(BIND_LATE)
    # A parent that never binds, whose child does (npm and the dev server it runs).
    parent = _spawn(
        f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', {BIND_LATE!r}])\ntime.sleep(60)\n"
    )
    try:
        assert watch.pending(), "alive, started by the turn, not listening yet"
        assert _wait(lambda: not watch.pending(), 10), "both bound (the parent through its child)"
    finally:
        children = [pid for pid, parent_pid in processes._parents().items() if parent_pid == parent.pid]
        for pid in children:
            os.kill(pid, 9)
        server.kill()
        parent.kill()
        runner.close()


def test_only_the_turns_own_processes_count(tmp_path: Path) -> None:
    watch = port_scan.PortWatch(None, processes.boot_ticks(), str(tmp_path / "another-home"))
    elsewhere = _spawn("import time; time.sleep(60)")  # marked, but by the hooks of no home of ours
    try:
        assert not watch.pending(), "another agent's commands (another home's hooks) are not waited for"
        mine = port_scan.PortWatch(None, watch.started_ticks, str(tmp_path / "home"))
        hook = f"{tmp_path / 'home'}/.codex-daytona/shell/bash-env.sh"
        own = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(60)"],
            env={**os.environ, hooks.DETACHED_ENV: "1", "BASH_ENV": hook},
        )
        try:
            assert mine.pending(), "this home's own command is"
        finally:
            own.kill()
    finally:
        elsewhere.kill()
    unmarked = _spawn("import time; time.sleep(60)", marked=False)
    try:
        before = _spawn("import time; time.sleep(60)")
        time.sleep(0.1)
        watch = port_scan.PortWatch(None, processes.boot_ticks() + 1)  # the turn starts after it
        try:
            assert not watch.pending(), (
                "a process started before the turn, or without the hooks' mark, is not waited for"
            )
        finally:
            before.kill()
    finally:
        unmarked.kill()


def test_the_settle_window_reports_late_ports_and_ends_at_its_bound() -> None:
    watch = port_scan.PortWatch(None, processes.boot_ticks())
    late = _spawn(BIND_LATE)
    never = _spawn("import time; time.sleep(60)")
    events: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        watch.settle(events.append, stop=lambda: False, limit=3.0)
    finally:
        late.kill()
        never.kill()
    elapsed = time.monotonic() - started
    assert 3.0 <= elapsed < 3.0 + 1.0, "a process that never binds holds the window to its bound, no more"
    ports = [e for e in events if e["type"] == "codex_daytona.ports"]
    assert ports and all(e["late"] for e in ports), events
    assert events[-1]["type"] == protocol.PORTS_SETTLED and events[-1]["new"] == [p for e in ports for p in e["new"]]


def test_a_server_binding_between_a_scan_and_the_pending_check_is_still_reported() -> None:
    """The race a loaded machine hits: the server binds after the settle loop's scan and
    before its check of what is pending, which then finds nothing. Its port is in a last scan."""
    bound = {"now": False}

    class Racy(port_scan.PortWatch):
        def scan(self) -> tuple[list[int], list[int]]:
            return ([4321], [4321]) if bound["now"] else ([], [])

        def pending(self) -> bool:
            bound["now"] = True  # it binds just as this check runs: nothing is pending any more
            return False

    events: list[dict[str, Any]] = []
    Racy(None, processes.boot_ticks()).settle(events.append, stop=lambda: False, limit=3.0)
    assert [e["new"] for e in events if e["type"] == "codex_daytona.ports"] == [[4321]], events
    assert events[-1]["type"] == protocol.PORTS_SETTLED and events[-1]["new"] == [4321]


# --- end to end: the emulator, the real Codex, the scripted model ------------------------------


def late_server_turn(port: int, gate: str) -> list[dict[str, Any]]:
    """The agent starts a server that binds once the file `gate` appears in the sandbox's home
    (the test makes it after the answer is shown), then ends its turn at once."""
    # Python starts (and imports the server) before the gate: once it opens, the port binds at
    # once. Started after the gate, its start alone outlasted the agent's 5 s watch under load.
    waits = f"iter(lambda: os.path.exists(os.path.expanduser('~/{gate}')), True)"
    serve = f"h.test(HandlerClass=h.SimpleHTTPRequestHandler, port={port}, bind='0.0.0.0')"
    program = f"import os, time, http.server as h; [time.sleep(0.01) for _ in {waits}]; {serve}"
    command = f'python3 -c "{program}" > late.log 2>&1 &'
    return [turn(run(command)), turn(msg("The server is starting."))]


def ask_opening_the_gate(rig: Rig, gate: str, *args: str) -> tuple[int, list[str]]:
    """Runs `ask` and lets the server bind once the run's closing event is in its event file:
    so it binds after the turn, however long the turn took on a loaded machine."""

    def home() -> Path | None:
        sandbox_id = rig.record().get("sandbox_id")
        return Path(rig.emulator.home_dir(sandbox_id)) if sandbox_id else None

    def runs() -> set[Path]:
        where = home()
        # The runs' own directory, not a search of the whole home (its runtime's venv is 800 files):
        # under load that search delayed the gate past the agent's 5 s watch.
        return set(where.glob(".codex-daytona/runs/*/events.jsonl")) if where else set()

    before = runs()
    proc = rig.popen(*args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def closed() -> bool:
        return any('"codex_daytona.run.completed"' in path.read_text() for path in runs() - before)

    assert _wait(lambda: closed() or proc.poll() is not None, 120), "the run never closed"
    where = home()
    if where is not None:  # else `ask` failed before it made a sandbox: its output says why
        (where / gate).touch()
    output, _ = proc.communicate(timeout=60)
    return proc.returncode, output.splitlines()


@pytest.mark.e2e
def test_a_server_binding_after_the_turn_gets_its_link_after_the_answer(rig: Rig) -> None:
    port = free_port()
    rig.model.enqueue(*late_server_turn(port, "go-1"))
    code, lines = ask_opening_the_gate(rig, "go-1", "ask", "start the server")
    output = "\n".join(lines)
    assert code == 0, output
    [link] = [line for line in lines if line.startswith(f"🔗 Port {port}: ")]
    assert lines.index("The server is starting.") < lines.index(link), "the answer first, then the link"
    assert link.endswith("✓ answers · link valid 1 h"), output
    status, body = http_get(link.split(": ", 1)[1].split()[0])
    assert status == 200 and "Directory listing" in body

    # It did bind late: the agent saw it after the run's closing event and the turn's end.
    events = run_events(rig, rig.record()["last_turn"]["run_id"])
    kinds = [e["type"] for e in events]
    closing = events[kinds.index("codex_daytona.run.completed")]
    turn_done = next(e for e in events if e["type"] == "turn.completed")
    [late] = [e for e in events if e.get("late")]
    assert late["new"] == [port] and kinds.index("codex_daytona.ports") < kinds.index("codex_daytona.run.completed")
    assert late["ts"] > turn_done["ts"] and late["ts"] > closing["ts"], events
    assert kinds[-1] == "codex_daytona.ports.settled"
    assert rig.record()["ports"] == [port], "the state file knows the late port"

    # --json: the same ports and preview events, later, and the result line still last.
    other = free_port()
    rig.model.enqueue(*late_server_turn(other, "go-2"))
    code, raw = ask_opening_the_gate(rig, "go-2", "ask", "--json", "start another")
    assert code == 0, raw
    lines_json = [json.loads(line) for line in raw if line.startswith("{")]
    previews = [e for e in lines_json if e["type"] == "codex_daytona.preview"]
    assert [p["port"] for p in previews] == [other] and previews[0]["ok"] is True
    assert previews[0]["token"] and previews[0]["browser_url"] and previews[0]["expires_in"] == 3600
    late_json = [e for e in lines_json if e["type"] == "codex_daytona.ports" and e.get("late")]
    assert late_json and late_json[0]["new"] == [other]
    assert lines_json[-1]["type"] == "codex_daytona.result" and lines_json[-1]["previews"][0]["port"] == other


@pytest.mark.e2e
def test_a_process_that_never_binds_costs_no_more_than_the_bound_and_q_does_not_wait(rig: Rig) -> None:
    never = "nohup sleep 600 > /dev/null 2>&1 &"
    rig.model.enqueue(turn(run(never)), turn(msg("Started a background job.")))
    asked = rig.cli("ask", "--json", "start a background job")
    ended = time.time()
    assert asked.code == 0, asked
    turn_done = next(e for e in asked.json_lines if e["type"] == "turn.completed")
    settled = next(e for e in asked.json_lines if e["type"] == "codex_daytona.ports.settled")
    assert settled["new"] == [] and port_scan.SETTLE_S * 1000 <= settled["waited_ms"] < port_scan.SETTLE_S * 1000 + 1000
    # From the end of the turn to the CLI's exit: the bound, the stream and the CLI's exit.
    assert ended - turn_done["ts"] < port_scan.SETTLE_S + 3.0, ended - turn_done["ts"]

    # -q: the answer alone, at the closing event, while the agent is still watching.
    rig.model.enqueue(turn(run(never)), turn(msg("Another one.")))
    quiet = rig.cli("ask", "-q", "start another")
    returned = time.time()
    assert quiet.code == 0 and quiet.stdout == "Another one.\n", quiet
    events = run_events(rig, rig.record()["last_turn"]["run_id"])
    closing = next(e for e in events if e["type"] == "codex_daytona.run.completed")
    assert returned - closing["ts"] < 2.0, returned - closing["ts"]
    deadline = time.monotonic() + port_scan.SETTLE_S + 5
    while not any(e["type"] == "codex_daytona.ports.settled" for e in events) and time.monotonic() < deadline:
        time.sleep(0.2)
        events = run_events(rig, rig.record()["last_turn"]["run_id"])
    [settled] = [e for e in events if e["type"] == "codex_daytona.ports.settled"]
    assert returned < settled["ts"], "-q returned before the agent had finished watching the ports"


@pytest.mark.e2e
def test_a_server_restarted_on_its_port_during_the_turn_gets_its_link_again(rig: Rig) -> None:
    port = free_port()
    start = f"nohup python3 -m http.server {port} --bind 0.0.0.0 > s.log 2>&1 & echo $! > s.pid; sleep 1"
    rig.model.enqueue(turn(run(start)), turn(msg("Started.")))
    first = rig.cli("ask", "--json", "start the server")
    assert first.code == 0, first
    assert [e["port"] for e in first.json_lines if e["type"] == "codex_daytona.preview"] == [port]

    restart = f"kill $(cat s.pid); sleep 0.5; {start}"
    rig.model.enqueue(turn(run(restart)), turn(msg("Restarted.")))
    again = rig.cli("ask", "--json", "restart the server")
    assert again.code == 0, again
    ports = next(e for e in again.json_lines if e["type"] == "codex_daytona.ports")
    assert ports["new"] == [port], ports
    assert [e["port"] for e in again.json_lines if e["type"] == "codex_daytona.preview"] == [port]

    # A turn that leaves it alone gives no link for it.
    rig.model.enqueue(turn(msg("Nothing to do.")))
    idle = rig.cli("ask", "--json", "anything?")
    assert idle.code == 0, idle
    assert next(e for e in idle.json_lines if e["type"] == "codex_daytona.ports")["new"] == []
    assert not [e for e in idle.json_lines if e["type"] == "codex_daytona.preview"]
