"""The in-sandbox agent: its mapping of Codex notifications to exec-JSON events (against
captured real streams), and whole turns run by the real agent program and the real Codex
binary against the scripted model."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent_bundle import agent, engine, exec_events, port_scan, protocol
from agent_bundle.daemon import Daemon
from agent_bundle.emitter import Emitter
from codex_daytona.sandbox import runtime
from codex_daytona.settings import Settings
from tests.e2e import closing_event
from tests.fakes.model import ScriptedModel, add_file_patch, error, msg, patch, plan, run, think, turn

FIXTURES = Path(__file__).resolve().parent / "fixtures"  # captured from real Codex 0.163.0
KEY = "sk-test-agent-key-1234567890"


def _notifications(name: str) -> list[tuple[str, dict[str, Any]]]:
    path = FIXTURES / "codex-app-server" / name
    assert path.exists(), f"fixture {path} is missing (it is part of the repository)"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(r["method"], r["params"]) for r in rows]


def _map_turns(name: str) -> list[list[dict[str, Any]]]:
    """Feeds a captured stream through TurnMapper, one mapper per turn."""
    turns: list[list[dict[str, Any]]] = []
    mapper = None
    for method, params in _notifications(name):
        if method == "turn/started":
            mapper = exec_events.TurnMapper()
            turns.append([])
        if mapper is None:
            continue
        turns[-1].extend(mapper.feed(method, params))
        if method == "turn/completed":
            mapper = None
    return turns


def test_mapper_build_turn_matches_exec_vocabulary() -> None:
    first, second = _map_turns("notifications-build-and-resume.jsonl")
    standard = [e for e in first if not e["type"].startswith("codex_daytona.")]
    kinds = [(e["type"], e.get("item", {}).get("type")) for e in standard]
    assert kinds[0] == ("turn.started", None)
    assert ("item.completed", "reasoning") in kinds
    assert ("item.started", "todo_list") in kinds
    assert kinds.count(("item.started", "command_execution")) == 2
    # As exec: messages and reasoning only once complete, never started or updated.
    assert ("item.started", "agent_message") not in kinds and ("item.updated", "agent_message") not in kinds
    assert kinds[-2] == ("item.completed", "todo_list")
    assert kinds[-1] == ("turn.completed", None)
    # exec's item ids: item_0, item_1, ... in order of first appearance, not Codex's own.
    first_seen = list(dict.fromkeys(e["item"]["id"] for e in standard if "item" in e))
    assert first_seen == [f"item_{n}" for n in range(len(first_seen))]
    command = next(
        e["item"] for e in first if e["type"] == "item.completed" and e["item"]["type"] == "command_execution"
    )
    assert command == {
        "id": command["id"],
        "type": "command_execution",
        "command": command["command"],
        "aggregated_output": "wrote index.html\n",
        "exit_code": 0,
        "status": "completed",
    }
    change = next(e["item"] for e in first if e.get("item", {}).get("type") == "file_change")
    assert change["changes"][0] == {"path": "/home/daytona/style.css", "kind": "add"}
    # What exec leaves out and the display shows comes just before the item completes.
    details = next(e for e in first if e["type"] == "codex_daytona.item.details" and "changes" in e)
    assert details["item_id"] == change["id"]
    assert details["changes"][0] == {"path": "/home/daytona/style.css", "added": 1, "removed": 0}
    # exec's usage is cumulative over the thread; ours per turn comes just before it.
    assert first[-1]["usage"]["input_tokens"] == 700
    assert set(first[-1]["usage"]) == {
        "input_tokens",
        "cached_input_tokens",
        "cache_write_input_tokens",
        "output_tokens",
        "reasoning_output_tokens",
    }
    assert first[-2]["type"] == "codex_daytona.turn.usage" and first[-2]["usage"]["input_tokens"] == 700
    assert second[-1]["usage"]["input_tokens"] == 800
    assert second[-2]["usage"]["input_tokens"] == 100
    message = [e for e in second if e.get("item", {}).get("type") == "agent_message"]
    assert message[-1]["item"]["text"].startswith("RESUME_OK")
    assert message[-1]["item"]["id"] == "item_0", "each turn numbers its items from item_0, as each exec does"


def test_mapper_streams_text_as_the_model_writes_it() -> None:
    first, _ = _map_turns("notifications-build-and-resume.jsonl")
    updates = [e for e in first if e["type"] == "codex_daytona.text" and e["item_type"] == "agent_message"]
    assert updates, "the text so far goes out before the message completes"
    final = next(e for e in first if e["type"] == "item.completed" and e["item"]["type"] == "agent_message")
    assert final["item"]["text"].startswith(updates[0]["text"])
    assert first.index(updates[0]) < first.index(final)
    # Throttled: the fixture's eight deltas arrive at once here, and one update goes out.
    assert len(updates) == 1


def test_mapper_reports_an_interrupt_as_exec_does_and_names_the_command_it_cut() -> None:
    (events,) = _map_turns("notifications-interrupt.jsonl")
    standard = [e["type"] for e in events if not e["type"].startswith("codex_daytona.")]
    assert standard == ["turn.started", "item.started"], "exec prints nothing after an interrupt"
    interrupted = events[-1]
    assert interrupted["type"] == "codex_daytona.turn.interrupted"
    (cut,) = interrupted["items"]
    assert cut["type"] == "command_execution" and cut["status"] == "failed" and cut["id"] == "item_0"


def test_mapper_reports_model_failure() -> None:
    (events,) = _map_turns("notifications-failure-500-noretry.jsonl")
    assert [e["type"] for e in events] == ["turn.started", "error", "codex_daytona.turn.usage", "turn.failed"]
    assert "high demand" in events[-1]["error"]["message"]


def test_mapper_retries_are_exec_error_events() -> None:
    (events,) = _map_turns("notifications-failure-401-default-retries.jsonl")
    errors = [e["message"] for e in events if e["type"] == "error"]
    assert len(errors) == 6
    assert errors[0].startswith("Reconnecting... 1/5 (unexpected status 401 Unauthorized")
    assert events[-1]["type"] == "turn.failed"
    assert "401" in events[-1]["error"]["message"]


def test_mapper_shows_warnings_and_sub_agent_calls_as_exec_does() -> None:
    mapper = exec_events.TurnMapper()
    events = mapper.feed("warning", {"message": "Model metadata for `m` not found.", "threadId": "t"})
    events += mapper.feed("configWarning", {"summary": "bad key", "details": "line 3"})
    events += mapper.feed("model/rerouted", {"fromModel": "a", "toModel": "b", "reason": "highRiskCyberActivity"})
    call = {
        "type": "collabAgentToolCall",
        "id": "call-1",
        "tool": "spawnAgent",
        "status": "inProgress",
        "senderThreadId": "t",
        "receiverThreadIds": ["t2"],
        "prompt": "look around",
        "agentsStates": {"t2": {"status": "pendingInit", "message": None}},
    }
    events += mapper.feed("item/started", {"item": call})
    events += mapper.feed("item/completed", {"item": dict(call, status="completed")})
    events += mapper.feed("item/started", {"item": dict(call, id="call-2", tool="listAgents")})
    assert [e["item"]["message"] for e in events[:3]] == [
        "Model metadata for `m` not found.",
        "bad key (line 3)",
        "model rerouted: a -> b (HighRiskCyberActivity)",
    ]
    assert [e["item"]["id"] for e in events[:3]] == ["item_0", "item_1", "item_2"]
    started, completed = events[3:5]
    assert started["type"] == "item.started" and completed["type"] == "item.completed"
    assert completed["item"] == {
        "id": "item_3",
        "type": "collab_tool_call",
        "tool": "spawn_agent",
        "sender_thread_id": "t",
        "receiver_thread_ids": ["t2"],
        "prompt": "look around",
        "agents_states": {"t2": {"status": "pending_init", "message": None}},
        "status": "completed",
    }
    assert len(events) == 5, "exec leaves out the tools it has no name for"


def test_emitter_masks_secrets(tmp_path: Path) -> None:
    class Sink:
        text = ""

        def write(self, s: str) -> None:
            self.text += s

        def flush(self) -> None:
            pass

    sink = Sink()
    emitter = Emitter(tmp_path / "e.jsonl", sink, [KEY])
    emitter.emit({"type": "x", "text": f"the key is {KEY}"})
    emitter.close()
    assert KEY not in sink.text and KEY not in (tmp_path / "e.jsonl").read_text()
    assert "***" in sink.text


# --- the real agent program with the real Codex ---------------------------------------------


class AgentRig:
    """Runs the agent_bundle package as the sandbox would, on this machine."""

    def __init__(self, home: Path, model: ScriptedModel) -> None:
        self.home = home
        self.model = model
        self.layout = runtime.Layout(str(home))
        settings = Settings(sandbox_openai_base_url=model.base_url, codex_daytona_model="gpt-5.5")
        codex_home = Path(self.layout.codex_home)
        codex_home.mkdir(parents=True)
        Path(self.layout.codex_config).write_bytes(runtime.codex_config(settings, self.layout, None))
        self.runs = 0

    def request(self, prompt: str, thread_id: str | None = None) -> str:
        """The turn's request as the session command feeds it: base64 on stdin."""
        request = runtime.agent_request(prompt=prompt, api_key=KEY, thread_id=thread_id, layout=self.layout)
        return base64.b64encode(request.encode()).decode()

    def argv(self, *args: str) -> list[str]:
        agent_path = str(Path(agent.__file__).parent)
        return [sys.executable, "-u", agent_path, "--runs-dir", self.layout.runs, "--home", str(self.home), *args]

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if "KEY" not in k}
        env["HOME"] = str(self.home)
        env.update(extra)
        return env

    def deliver_key(self) -> subprocess.CompletedProcess[str]:
        """What the CLI does through Daytona's process API: the key in the environment only."""
        return subprocess.run(
            self.argv("--set-key"),
            capture_output=True,
            text=True,
            cwd=self.home,
            env=self.env(**{runtime.KEY_ENV: KEY}),
            timeout=60,
        )

    def run(self, prompt: str, thread_id: str | None = None, **extra: Any) -> tuple[int, list[dict[str, Any]], str]:
        self.runs += 1
        if self.runs == 1:
            assert self.deliver_key().returncode == 0
        proc = subprocess.run(
            self.argv("--run-id", f"r{self.runs}"),
            input=self.request(prompt, thread_id),
            capture_output=True,
            text=True,
            cwd=self.home,
            env=self.env(),
            timeout=60,
            **extra,
        )
        events = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
        return proc.returncode, events, proc.stderr


@pytest.fixture
def rig(tmp_path: Path) -> Any:
    model = ScriptedModel()
    model.start()
    home = tmp_path / "home"
    home.mkdir()
    yield AgentRig(home, model)
    stop_daemon(home)
    model.stop()


def stop_daemon(home: Path) -> None:
    """The agent leaves its daemon running between turns, as it would in a sandbox: stop it."""
    import signal

    pid_file = home / ".codex-daytona" / "agent.pid"
    if pid_file.exists():
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGTERM)


@pytest.mark.e2e
def test_agent_runs_a_turn_and_resumes_it(rig: AgentRig) -> None:
    tricky = "Build it: \"quotes\" 'single' $HOME `whoami` \\ back\nnew line ✓ ünïcode"
    rig.model.enqueue(
        turn(think("Plan first"), plan(("Write hello", "in_progress"))),
        turn(patch(add_file_patch("hello.txt", "hi there\n"))),
        turn(run("cat hello.txt && env && printenv")),
        turn(msg("Done: wrote hello.txt")),
    )
    code, events, stderr = rig.run(tricky)
    assert code == 0, stderr
    types = [e["type"] for e in events]
    assert types[0] == "codex_daytona.run.started"
    assert closing_event(events)["type"] == "codex_daytona.run.completed"
    assert "turn.completed" in types and "thread.started" in types
    assert (rig.home / "hello.txt").read_text() == "hi there\n"
    # The prompt reached the model intact.
    first_input = json.dumps(rig.model.model_requests[0]["body"]["input"], ensure_ascii=False)
    assert json.dumps(tricky, ensure_ascii=False)[1:-1] in first_input
    # The key authenticated Codex but never reached the agent's commands.
    assert rig.model.model_requests[0]["headers"]["authorization"] == f"Bearer {KEY}"
    command = next(
        e["item"] for e in events if e["type"] == "item.completed" and e["item"]["type"] == "command_execution"
    )
    assert "hi there" in command["aggregated_output"]
    assert "HOME=" in command["aggregated_output"]
    assert KEY not in command["aggregated_output"]
    assert runtime.KEY_ENV not in command["aggregated_output"]
    tool_output = json.dumps(rig.model.model_requests[3]["body"]["input"])
    assert KEY not in tool_output
    done = events[-1]
    assert done["status"] == "completed" and done["final_message"] == "Done: wrote hello.txt"
    thread_id = done["thread_id"]
    # The event file in the run directory holds the same stream.
    saved = (Path(rig.layout.runs) / "r1" / "events.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in saved] == events

    rig.model.enqueue(turn(msg("I remember")))
    code, events, stderr = rig.run("what did you do?", thread_id=thread_id)
    assert code == 0, stderr
    assert closing_event(events)["thread_id"] == thread_id
    history = json.dumps(rig.model.model_requests[-1]["body"]["input"], ensure_ascii=False)
    assert "Done: wrote hello.txt" in history and "quotes" in history


@pytest.mark.e2e
def test_a_thread_resumed_by_a_new_daemon_raises_no_warning(rig: AgentRig) -> None:
    """A new daemon (the sandbox restarted, the agent was updated) resumes the thread from
    disk; Codex must not answer with a deprecation notice, which exec would show as a warning."""
    rig.model.enqueue(turn(msg("first answer")))
    code, events, stderr = rig.run("remember this")
    assert code == 0, stderr
    closing = [e for e in events if e["type"] == "codex_daytona.run.completed"]  # late ports may follow it
    pid, thread_id = events[0]["pid"], closing[0]["thread_id"]
    stop_daemon(rig.home)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists():
        assert time.monotonic() < deadline, "the daemon did not stop"
        time.sleep(0.05)
    assert rig.deliver_key().returncode == 0
    rig.model.enqueue(turn(msg("second answer")))
    code, events, stderr = rig.run("what did I say?", thread_id=thread_id)
    assert code == 0, stderr
    closing = [e for e in events if e["type"] == "codex_daytona.run.completed"]
    assert events[0]["pid"] != pid and closing[0]["thread_id"] == thread_id
    assert "remember this" in rig.model.last_input()
    warnings = [e["item"]["message"] for e in events if e["type"] == "item.completed" and e["item"]["type"] == "error"]
    assert not warnings


@pytest.mark.e2e
def test_agent_failed_turn_exits_3_with_the_model_error(rig: AgentRig) -> None:
    # Codex retries even a 401 (request_max_retries); every attempt gets the same answer.
    rig.model.enqueue(*[error(401, "Incorrect API key provided") for _ in range(12)])
    code, events, _ = rig.run("hello")
    assert code == protocol.EXIT_TURN_FAILED
    assert events[-2]["type"] == "codex_daytona.ports"
    failed = next(e for e in events if e["type"] == "turn.failed")
    assert "401" in failed["error"]["message"]
    assert closing_event(events)["status"] == "failed"


@pytest.mark.e2e
def test_agent_warns_and_starts_fresh_when_resume_fails(rig: AgentRig) -> None:
    rig.model.enqueue(turn(msg("fresh start")))
    code, events, stderr = rig.run("hello", thread_id="01a00000-0000-7000-8000-000000000000")
    assert code == 0, stderr
    warning = next(e for e in events if e["type"] == "codex_daytona.resume_failed")
    assert "01a00000-0000-7000-8000-000000000000" in warning["message"]
    closing = [e for e in events if e["type"] == "codex_daytona.run.completed"]  # late ports may follow it
    assert closing[0]["thread_id"] != "01a00000-0000-7000-8000-000000000000"


def test_a_turn_codex_never_starts_ends_and_leaves_the_agent_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Codex that never answers the call that starts a turn (as it never answered a prompt of
    lone surrogates): the run ends with an error once START_TIMEOUT_S is over, and the
    sandbox's one turn is free again, so the next run is not told another one runs. (The
    real Codex answers every request this suite can send, so a stand-in that hangs until
    it is closed plays it here.)"""
    from openai_codex import TransportClosedError

    monkeypatch.setattr(engine, "START_TIMEOUT_S", 0.5)
    closed = threading.Event()

    class HungThread:
        id = "thread-hung"

        def turn(self, *args: Any, **kwargs: Any) -> Any:
            closed.wait(30)
            raise TransportClosedError("the app-server was stopped")

    class HungCodex:
        def thread_start(self, **options: Any) -> HungThread:
            return HungThread()

        def close(self) -> None:
            closed.set()

    daemon = Daemon(str(tmp_path), str(tmp_path / "runs"))

    def ensure(request: dict[str, Any]) -> HungCodex:
        closed.clear()
        codex = HungCodex()
        daemon.engine._codex = codex
        return codex

    monkeypatch.setattr(daemon.engine, "_ensure", ensure)

    for run_id in ("hung-1", "hung-2"):
        sink = _Sink()
        started = time.monotonic()
        daemon._run({"run_id": run_id, "prompt": "hi"}, sink)
        assert time.monotonic() - started < 10, "the run ended in bounded time"
        events = [json.loads(line) for line in sink.text.splitlines() if line.strip()]
        closing = closing_event(events)
        assert closing["status"] == "error", closing  # the second one too: not "busy"
        assert "Codex did not start the turn within 0.5 s" in closing["error"]


def test_a_run_whose_key_never_comes_ends_and_leaves_the_agent_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run names a key the CLI never delivers: it ends with an error once KEY_WAIT_S is
    over, and the next run is not told another one runs."""
    monkeypatch.setattr("agent_bundle.daemon.KEY_WAIT_S", 0.3)
    daemon = Daemon(str(tmp_path), str(tmp_path / "runs"))
    for run_id in ("keyless-1", "keyless-2"):
        sink = _Sink()
        daemon._run({"run_id": run_id, "prompt": "hi", "key_id": runtime.key_fingerprint(KEY)}, sink)
        closing = closing_event([json.loads(line) for line in sink.text.splitlines() if line.strip()])
        assert closing["status"] == "error", closing  # the second one too: not "busy"
        assert "key was not delivered" in closing["error"]


class _Sink:
    """Where a run's events go (the client's end of the agent's socket)."""

    text = ""

    def write(self, s: str) -> None:
        self.text += s

    def flush(self) -> None:
        pass


def test_agent_rejects_a_missing_request(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(Path(agent.__file__).parent), "--run-id", "x", "--runs-dir", str(tmp_path)],
        input="not json\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == protocol.EXIT_ERROR
    last = json.loads(proc.stdout.splitlines()[-1])
    assert last["type"] == "codex_daytona.run.completed" and last["status"] == "error"


def test_listening_ports_sees_servers_on_any_address(tmp_path: Path) -> None:
    import socket

    wildcard = socket.socket()
    wildcard.bind(("0.0.0.0", 0))
    wildcard.listen()
    loop = socket.socket()
    loop.bind(("127.0.0.1", 0))
    loop.listen()
    try:
        ports = port_scan.listening_ports()
        w, lp = wildcard.getsockname()[1], loop.getsockname()[1]
        # Daytona's proxy forwards to localhost: a loopback server is as reachable as any.
        assert w in ports and lp in ports
        # Scoped to processes carrying a marker that nobody has: nothing.
        assert w not in port_scan.listening_ports("no-such-scope")
    finally:
        wildcard.close()
        loop.close()


@pytest.mark.e2e
def test_background_server_outlives_the_turn_and_the_daemon_stays_warm(rig: AgentRig) -> None:
    import socket
    import time

    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        port = s.getsockname()[1]
    rig.model.enqueue(
        turn(run(f"nohup python3 -m http.server {port} --bind 0.0.0.0 > server.log 2>&1 & sleep 1; echo started")),
        turn(msg("server started")),
    )
    code, events, stderr = rig.run("start the server")
    assert code == 0, stderr
    ports = next(e for e in events if e["type"] == "codex_daytona.ports")
    assert port in ports["new"]
    first_pid = events[0]["pid"]
    time.sleep(0.5)
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass  # still serving after the turn ended
    try:
        rig.model.enqueue(turn(msg("still here")))
        code, events, stderr = rig.run("again", thread_id=closing_event(events)["thread_id"])
        assert code == 0, stderr
        assert events[0]["pid"] == first_pid, "the second turn ran in the same warm daemon"
        ports = next(e for e in events if e["type"] == "codex_daytona.ports")
        assert port in ports["listening"] and port not in ports["new"]
    finally:
        subprocess.run(["pkill", "-f", f"http.server {port}"], check=False)


@pytest.mark.e2e
def test_a_run_asks_for_a_key_it_does_not_hold_and_goes_on_once_delivered(rig: AgentRig) -> None:
    rig.model.enqueue(turn(msg("got it")))
    proc = subprocess.Popen(
        rig.argv("--run-id", "k1"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=rig.home,
        env=rig.env(),
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(rig.request("hello"))
    proc.stdin.close()
    first = [json.loads(proc.stdout.readline()) for _ in range(2)]
    assert [e["type"] for e in first] == ["codex_daytona.run.started", "codex_daytona.key_needed"]
    assert first[1]["key_id"] == runtime.key_fingerprint(KEY) and KEY not in json.dumps(first)
    assert rig.model.model_requests == []  # nothing reached the model without the key
    assert rig.deliver_key().returncode == 0
    rest = [json.loads(line) for line in proc.stdout if line.strip()]
    assert proc.wait(timeout=30) == 0
    closing = [e for e in rest if e["type"] == "codex_daytona.run.completed"]  # late ports may follow it
    assert closing[0]["status"] == "completed" and closing[0]["final_message"] == "got it"
    assert rig.model.model_requests[0]["headers"]["authorization"] == f"Bearer {KEY}"
    # The key is in no file of the home, the run's event file included.
    for path in rig.home.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def _user_command(tmp_path: Path, command: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(Path(agent.__file__).parent), "--home", str(tmp_path), "--exec"],
        input=base64.b64encode(command.encode()).decode(),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=30,
    )
    return proc, time.monotonic() - started


@pytest.mark.parametrize(
    ("command", "code", "stdout"),
    [
        ("echo before; exit 3", 3, "before\n"),
        ("exec true", 0, ""),
        ("cd / && export X=1 && echo $X", 0, "1\n"),
        ("set -e; false; echo never", 1, ""),
        ("echo out; echo err >&2", 0, "out\n"),
    ],
)
def test_exec_runs_a_command_in_a_shell_of_its_own(tmp_path: Path, command: str, code: int, stdout: str) -> None:
    (tmp_path / ".codex-daytona").mkdir()
    proc, _ = _user_command(tmp_path, command)
    assert (proc.returncode, proc.stdout) == (code, stdout), proc.stderr


def test_exec_returns_when_the_shell_exits_though_a_background_job_holds_its_output(tmp_path: Path) -> None:
    (tmp_path / ".codex-daytona").mkdir()
    marker = f"bg-{os.getpid()}"
    proc, took = _user_command(tmp_path, f"(sleep 3; echo {marker}) & echo started")
    assert (proc.returncode, proc.stdout) == (0, "started\n"), proc.stderr
    assert took < 2.5, f"waited {took:.1f} s for the background job"
    # The job lives on, its later output in the background log.
    log = tmp_path / ".codex-daytona" / "exec-background.log"
    deadline = time.monotonic() + 10
    while marker not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, "the background job's output was lost"
        time.sleep(0.1)


def test_exec_ends_each_stream_with_the_done_marker(tmp_path: Path) -> None:
    (tmp_path / ".codex-daytona").mkdir()
    proc = subprocess.run(
        [sys.executable, str(Path(agent.__file__).parent), "--home", str(tmp_path), "--exec", "--done-marker", "M-1"],
        input=base64.b64encode(b"printf partial; printf 'e1\\ne2' >&2; exit 5").decode(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 5
    assert proc.stdout == "partial\nM-1 5\n"
    assert proc.stderr == "e1\ne2\nM-1\n"


def test_a_background_job_survives_the_session_being_deleted_as_exec_returns(tmp_path: Path) -> None:
    """Daytona deletes the exec session (SIGTERM to the session's processes and their
    descendants) the moment the CLI has the exit code, maybe while our --exec is still
    exiting: that must not reach the job the command left in the background."""
    import signal

    (tmp_path / ".codex-daytona").mkdir()
    tag = f"survivor-{os.getpid()}"
    proc = subprocess.Popen(
        [sys.executable, str(Path(agent.__file__).parent), "--home", str(tmp_path), "--exec", "--done-marker", "M"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(base64.b64encode(f"sh -c 'sleep 20; echo {tag}' & echo started".encode()).decode())
    proc.stdin.close()
    assert proc.stdout.readline() == "started\n"
    assert proc.stdout.readline() == "M 0\n"

    def processes() -> dict[int, tuple[int, str]]:
        found = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError):
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                    found[int(entry.name)] = (ppid, (entry / "cmdline").read_bytes().decode(errors="replace"))
        return found

    table = processes()
    tree, frontier = {proc.pid}, [proc.pid]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, (ppid, _) in table.items() if ppid == parent]
        tree.update(children)
        frontier += children
    for pid in tree:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    proc.wait(timeout=10)
    time.sleep(0.3)
    survivors = [pid for pid, (_, cmdline) in processes().items() if tag in cmdline]
    assert survivors, "the background job died with the session"
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)


WATCH_IMPORTS = """
import os, sys, threading, time
from agent_bundle import daemon

def watch():
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if "openai_codex" in sys.modules and "openai_codex.generated.v2_all" in sys.modules:
            print("imported", flush=True)
            os._exit(0)
        time.sleep(0.05)
    print("not imported", flush=True)
    os._exit(1)

threading.Thread(target=watch, daemon=True).start()
daemon.Daemon(sys.argv[1], sys.argv[1] + "/runs").serve(sys.argv[1] + "/agent.sock")
"""


def test_the_daemon_imports_codex_before_its_first_turn(tmp_path: Path) -> None:
    """Codex's Python SDK takes seconds to import: a daemon that has just started (at `up`)
    imports it while it waits, so the first turn does not pay for it, no turn asked for."""
    proc = subprocess.run(
        [sys.executable, "-c", WATCH_IMPORTS, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    assert (proc.returncode, proc.stdout) == (0, "imported\n"), proc
