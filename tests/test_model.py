"""Tests for the scripted Responses API fake, first on its own, then with the real Codex binary."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.codex_home import FAKE_KEY, codex_binary, codex_env, write_codex_home
from tests.fakes.model import (
    EXHAUSTED_MESSAGE,
    Ids,
    ScriptedModel,
    add_file_patch,
    error,
    expand_item,
    fail,
    hang,
    msg,
    parse_sse,
    patch,
    plan,
    poll,
    run,
    search,
    sse,
    think,
    truncate,
    turn,
    update_file_patch,
)

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- plumbing


@pytest.fixture
def model(tmp_path: Path) -> Iterator[ScriptedModel]:
    fake = ScriptedModel(log_dir=tmp_path / "model-log")
    fake.start()
    yield fake
    fake.stop()


def post(base_url: str, body: dict[str, Any], timeout: float = 5) -> tuple[int, str]:
    """POST JSON to ``base_url/responses``; return (status, body text) even for HTTP errors."""
    request = urllib.request.Request(
        f"{base_url}/responses",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer k"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def event_types(text: str) -> list[str]:
    return [event["type"] for event in parse_sse(text)]


# --------------------------------------------------------------------------- unit: encoding


def test_sse_frame_format() -> None:
    frame = sse({"type": "response.created", "response": {"id": "r1"}})
    assert frame == b'event: response.created\ndata: {"type": "response.created", "response": {"id": "r1"}}\n\n'
    assert parse_sse(frame.decode()) == [{"type": "response.created", "response": {"id": "r1"}}]


def test_item_shorthands_expand_to_responses_items() -> None:
    ids = Ids()
    exec_item = expand_item(run("ls -la", workdir="/w", yield_time_ms=500), ids)
    assert exec_item["type"] == "function_call"
    assert exec_item["name"] == "exec_command"
    assert json.loads(exec_item["arguments"]) == {"cmd": "ls -la", "workdir": "/w", "yield_time_ms": 500}

    patch_item = expand_item(patch("*** Begin Patch\n*** End Patch\n"), ids)
    assert patch_item["type"] == "custom_tool_call"
    assert patch_item["name"] == "apply_patch"
    assert patch_item["input"] == "*** Begin Patch\n*** End Patch\n"

    plan_item = expand_item(plan(("a", "completed"), ("b", "in_progress"), explanation="why"), ids)
    assert plan_item["name"] == "update_plan"
    assert json.loads(plan_item["arguments"]) == {
        "plan": [{"step": "a", "status": "completed"}, {"step": "b", "status": "in_progress"}],
        "explanation": "why",
    }

    message = expand_item(msg("hello"), ids)
    assert message["role"] == "assistant"
    assert message["content"][0] == {"type": "output_text", "text": "hello", "annotations": []}
    reasoning = expand_item(think("hmm"), ids)
    assert reasoning["summary"] == [{"type": "summary_text", "text": "hmm"}]
    assert expand_item(search("q"), ids)["action"] == {"type": "search", "query": "q"}
    assert expand_item({"raw": {"type": "x", "id": "y"}}, ids) == {"type": "x", "id": "y"}
    assert expand_item(run("true", call_id="mine"), ids)["call_id"] == "mine"

    call_ids = {expand_item(run("true"), ids)["call_id"] for _ in range(5)}
    assert len(call_ids) == 5, "generated call ids must be unique"
    with pytest.raises(ValueError):
        expand_item({"bogus": 1}, ids)


def test_write_stdin_auto_session_id_comes_from_the_request() -> None:
    request_text = json.dumps(
        {"input": [{"output": "Process running with session ID 12"}, {"output": "session ID 4242"}]}
    ).replace("session ID 4242", "Process running with session ID 4242")
    item = expand_item(poll(yield_time_ms=3000), Ids(), request_text)
    assert json.loads(item["arguments"]) == {"session_id": 4242, "chars": "", "yield_time_ms": 3000}
    explicit = expand_item(poll(7, chars="y\n"), Ids(), request_text)
    assert json.loads(explicit["arguments"]) == {"session_id": 7, "chars": "y\n"}


def test_patch_helpers() -> None:
    assert add_file_patch("a/b.txt", "one\ntwo\n") == (
        "*** Begin Patch\n*** Add File: a/b.txt\n+one\n+two\n*** End Patch\n"
    )
    assert update_file_patch("b.txt", "old", "new\nnewer") == (
        "*** Begin Patch\n*** Update File: b.txt\n@@\n-old\n+new\n+newer\n*** End Patch\n"
    )


# --------------------------------------------------------------------------- unit: HTTP


def test_items_step_streams_deltas_and_completed_usage(model: ScriptedModel, tmp_path: Path) -> None:
    model.enqueue(turn(think("plan it"), msg("hello big world"), run("ls")))
    status, text = post(model.base_url, {"model": "m", "input": []})
    assert status == 200
    events = parse_sse(text)
    assert [e["type"] for e in events] == [
        "response.created",
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.output_item.done",
        "response.output_item.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_item.done",
        "response.output_item.added",
        "response.output_item.done",
        "response.completed",
    ]
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert "".join(deltas) == "hello big world"
    usage = events[-1]["response"]["usage"]
    assert usage == {
        "input_tokens": 100,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 20,
        "output_tokens_details": {"reasoning_tokens": 5},
        "total_tokens": 120,
    }
    # Requests are recorded with lower-case headers and written to the log dir.
    assert model.requests[0]["headers"]["authorization"] == "Bearer k"
    assert model.requests[0]["body"] == {"model": "m", "input": []}
    logged = json.loads((tmp_path / "model-log" / "0001.json").read_text())
    assert logged["path"] == "/v1/responses"
    assert model.remaining() == []


def test_usage_override(model: ScriptedModel) -> None:
    model.enqueue(turn(msg("x"), usage={"input_tokens": 1000, "cached_tokens": 400, "output_tokens": 7}))
    _, text = post(model.base_url, {})
    usage = parse_sse(text)[-1]["response"]["usage"]
    assert usage["input_tokens"] == 1000
    assert usage["input_tokens_details"] == {"cached_tokens": 400}
    assert usage["total_tokens"] == 1007


def test_error_fail_and_truncate_steps(model: ScriptedModel) -> None:
    model.enqueue(
        error(401, "Incorrect API key provided"),
        fail("boom", code="server_error"),
        truncate(msg("partial")),
    )
    status, text = post(model.base_url, {})
    assert status == 401
    assert json.loads(text)["error"]["message"] == "Incorrect API key provided"

    _, text = post(model.base_url, {})
    events = parse_sse(text)
    assert [e["type"] for e in events] == ["response.created", "response.failed"]
    assert events[-1]["response"]["error"] == {"code": "server_error", "message": "boom"}

    _, text = post(model.base_url, {})
    types = event_types(text)
    assert "response.output_item.done" in types
    assert "response.completed" not in types


def test_exhausted_script_and_default_step() -> None:
    with ScriptedModel() as empty:
        status, text = post(empty.base_url, {})
        assert status == 500
        assert json.loads(text)["error"]["message"] == EXHAUSTED_MESSAGE
    with ScriptedModel(default_step=turn(msg("always"))) as defaulted:
        for _ in range(2):
            assert event_types(post(defaulted.base_url, {})[1])[-1] == "response.completed"


def test_match_routes_requests_to_separate_queues(model: ScriptedModel) -> None:
    model.enqueue(turn(msg("for alpha"), match="ALPHA"), turn(msg("for beta"), match="BETA"))
    _, beta = post(model.base_url, {"input": "BETA prompt"})
    _, alpha = post(model.base_url, {"input": "ALPHA prompt"})
    assert "for beta" in beta
    assert "for alpha" in alpha


def test_models_endpoint_unknown_paths_and_other_base_paths(model: ScriptedModel) -> None:
    with urllib.request.urlopen(f"{model.base_url}/models", timeout=5) as response:
        assert json.load(response)["data"][0]["id"] == "gpt-5.5"
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{model.base_url}/nothing", timeout=5)
    assert info.value.code == 404
    model.enqueue(turn(msg("any base path")))
    root = model.base_url.removesuffix("/v1")
    assert "any base path" in post(f"{root}/openai/v9", {})[1]


def test_delay_and_hang_do_not_block_shutdown() -> None:
    fake = ScriptedModel([turn(msg("late"), delay_ms=300), hang(), hang(before_headers=True)])
    fake.start()
    started = time.monotonic()
    post(fake.base_url, {})
    assert time.monotonic() - started >= 0.3
    for _ in range(2):
        with pytest.raises(OSError):  # socket timeout: no response.completed / no headers at all
            post(fake.base_url, {}, timeout=0.5)
    started = time.monotonic()
    fake.stop()
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_standalone_prints_url_first_and_stops_on_signal(tmp_path: Path, stop_signal: int) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps([turn(msg("from a file"))]))
    log_dir = ["--log-dir", str(tmp_path / "log")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.model", "--port", "0", "--script", str(script), *log_dir],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        assert "from a file" in post(url, {"hello": 1})[1]
        assert post(url, {})[0] == 500
        proc.send_signal(stop_signal)
        assert proc.wait(timeout=5) == 0
        assert proc.stderr is not None
        assert EXHAUSTED_MESSAGE in proc.stderr.read()
    finally:
        proc.kill()
    assert sorted(p.name for p in (tmp_path / "log").iterdir()) == ["0001.json", "0002.json"]


# --------------------------------------------------------------------------- e2e: the real Codex binary


def sdk() -> Any:
    # A dev dependency (pyproject's dev extras): missing is a broken install, not a reason to skip.
    import openai_codex

    return openai_codex


def dump(notification: Any) -> dict[str, Any]:
    payload = notification.payload
    return payload.model_dump(mode="json", by_alias=True) if hasattr(payload, "model_dump") else {}


def run_sdk_turn(home: Path, cwd: Path, prompt: str, thread_id: str | None = None) -> tuple[str, list[Any]]:
    """Run one turn in a fresh app-server (resuming ``thread_id`` if given)."""
    oc = sdk()
    config = oc.CodexConfig(cwd=str(cwd), env=codex_env(home))
    with oc.Codex(config) as codex:
        if thread_id is None:
            thread = codex.thread_start(
                cwd=str(cwd), sandbox=oc.Sandbox.full_access, approval_mode=oc.ApprovalMode.deny_all
            )
        else:
            thread = codex.thread_resume(
                thread_id,
                cwd=str(cwd),
                sandbox=oc.Sandbox.full_access,
                approval_mode=oc.ApprovalMode.deny_all,
            )
        return thread.id, list(thread.turn(prompt).stream())


def completed_turn(notifications: list[Any]) -> dict[str, Any]:
    last = notifications[-1]
    assert last.method == "turn/completed"
    turn: dict[str, Any] = dump(last)["turn"]
    return turn


def items(notifications: list[Any], method: str, item_type: str) -> list[dict[str, Any]]:
    return [dump(n)["item"] for n in notifications if n.method == method and dump(n)["item"]["type"] == item_type]


def input_items(request: dict[str, Any], item_type: str) -> list[dict[str, Any]]:
    return [item for item in request["body"]["input"] if item.get("type") == item_type]


def message_texts(request: dict[str, Any], role: str) -> list[str]:
    return [
        part.get("text", "")
        for item in input_items(request, "message")
        if item.get("role") == role
        for part in item["content"]
    ]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.mark.e2e
def test_sdk_turn_with_patch_command_plan_reasoning_and_message(
    model: ScriptedModel, tmp_path: Path, workdir: Path
) -> None:
    home = write_codex_home(tmp_path / "codex-home", model.base_url)
    model.enqueue(
        turn(
            think("I will write a file, then read it."),
            plan(("Write hello.txt", "in_progress"), ("Read it", "pending"), explanation="two steps"),
            patch(add_file_patch("hello.txt", "hello from the fake\n")),
        ),
        turn(run("cat hello.txt && echo done", call_id="call_cat")),
        turn(msg("Wrote hello.txt and read it back.")),
    )
    _thread_id, notifications = run_sdk_turn(home, workdir, "write hello.txt")

    turn_info = completed_turn(notifications)
    assert turn_info["status"] == "completed", turn_info
    assert (workdir / "hello.txt").read_text() == "hello from the fake\n"

    methods = [n.method for n in notifications]
    assert "turn/plan/updated" in methods
    for method in ("item/started", "item/completed"):
        assert items(notifications, method, "commandExecution")
        assert items(notifications, method, "fileChange")
    command = items(notifications, "item/completed", "commandExecution")[0]
    assert command["exitCode"] == 0
    assert command["aggregatedOutput"] == "hello from the fake\ndone\n"
    assert items(notifications, "item/completed", "reasoning")[0]["summary"] == ["I will write a file, then read it."]
    assert items(notifications, "item/completed", "agentMessage")[0]["text"] == ("Wrote hello.txt and read it back.")

    requests = model.model_requests
    assert len(requests) == 3
    assert all(r["headers"]["authorization"] == f"Bearer {FAKE_KEY}" for r in requests)
    assert input_items(requests[1], "custom_tool_call_output")  # the patch result
    outputs = {o["call_id"]: o["output"] for o in input_items(requests[2], "function_call_output")}
    assert "hello from the fake\ndone" in outputs["call_cat"]
    assert model.remaining() == []


@pytest.mark.e2e
def test_sdk_resume_sends_previous_turn_to_the_model(model: ScriptedModel, tmp_path: Path, workdir: Path) -> None:
    home = write_codex_home(tmp_path / "codex-home", model.base_url)
    model.enqueue(turn(msg("FIRST-ANSWER")), turn(msg("SECOND-ANSWER")))
    thread_id, first = run_sdk_turn(home, workdir, "FIRST-PROMPT")
    assert completed_turn(first)["status"] == "completed"

    _, second = run_sdk_turn(home, workdir, "SECOND-PROMPT", thread_id=thread_id)
    assert completed_turn(second)["status"] == "completed"
    last = model.model_requests[-1]
    assert "FIRST-PROMPT" in message_texts(last, "user")
    assert "SECOND-PROMPT" in message_texts(last, "user")
    assert "FIRST-ANSWER" in message_texts(last, "assistant")
    assert last["body"]["prompt_cache_key"] == thread_id


FAILURES = [
    pytest.param(error(401, "Incorrect API key: scripted"), "401 Unauthorized", id="http-401"),
    pytest.param(fail("scripted response.failed"), "scripted response.failed", id="response-failed"),
    pytest.param(truncate(msg("cut")), "stream closed before response.completed", id="truncate"),
    pytest.param(hang(), "idle timeout", id="hang"),
]


@pytest.mark.e2e
@pytest.mark.parametrize(("step", "expected"), FAILURES)
def test_sdk_failures_end_the_turn_failed(
    model: ScriptedModel, tmp_path: Path, workdir: Path, step: dict[str, Any], expected: str
) -> None:
    home = write_codex_home(tmp_path / "codex-home", model.base_url, stream_idle_timeout_ms=1500)
    model.enqueue(step)
    started = time.monotonic()
    _, notifications = run_sdk_turn(home, workdir, "this will fail")
    turn_info = completed_turn(notifications)
    assert turn_info["status"] == "failed"
    assert expected in turn_info["error"]["message"]
    assert time.monotonic() - started < 10
    assert len(model.model_requests) == 1, "retries are off"


def codex_exec(home: Path, workdir: Path, prompt: str) -> subprocess.CompletedProcess[str]:
    binary = codex_binary()
    assert binary is not None, "no codex binary: `make install` installs openai-codex, which brings it"
    command = [str(binary), "exec", "--json", "--skip-git-repo-check", "--sandbox", "danger-full-access"]
    return subprocess.run(
        [*command, "-C", str(workdir), prompt],
        stdin=subprocess.DEVNULL,  # an open stdin makes codex wait for EOF
        capture_output=True,
        text=True,
        env={**os.environ, **codex_env(home)},
        timeout=60,
    )


@pytest.mark.e2e
def test_codex_exec_json(model: ScriptedModel, tmp_path: Path, workdir: Path) -> None:
    home = write_codex_home(tmp_path / "codex-home", model.base_url)
    model.enqueue(turn(run("echo exec-ok")), turn(msg("exec finished")))
    result = codex_exec(home, workdir, "say ok")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    types = [e["type"] for e in events]
    assert types[0] == "thread.started"
    assert types[-1] == "turn.completed"
    commands = [e["item"] for e in events if e["type"] == "item.completed"]
    assert commands[0]["type"] == "command_execution"
    assert commands[0]["aggregated_output"] == "exec-ok\n"
    assert commands[-1] == {**commands[-1], "type": "agent_message", "text": "exec finished"}
    assert events[-1]["usage"]["input_tokens"] == 200  # cumulative over the two requests


@pytest.mark.e2e
def test_codex_exec_polls_a_long_command_with_write_stdin(model: ScriptedModel, tmp_path: Path, workdir: Path) -> None:
    home = write_codex_home(tmp_path / "codex-home", model.base_url)
    model.enqueue(
        turn(run("sleep 1; echo slept", yield_time_ms=250)),
        turn(poll(yield_time_ms=5000)),
        turn(msg("waited")),
    )
    result = codex_exec(home, workdir, "wait for it")
    assert result.returncode == 0, result.stderr
    first_output = input_items(model.model_requests[1], "function_call_output")[-1]["output"]
    assert "Process running with session ID" in first_output
    poll_output = input_items(model.model_requests[2], "function_call_output")[-1]["output"]
    assert "Process exited with code 0" in poll_output
    assert "slept" in poll_output


@pytest.mark.e2e
def test_sdk_concurrent_threads_get_their_own_queues(model: ScriptedModel, tmp_path: Path, workdir: Path) -> None:
    oc = sdk()
    home = write_codex_home(tmp_path / "codex-home", model.base_url)
    for name in ("ALPHA", "BETA"):
        model.enqueue(
            turn(run(f"sleep 0.3; echo {name}-out"), match=f"{name}-TASK"),
            turn(msg(f"{name} finished"), match=f"{name}-TASK"),
        )
    results: dict[str, list[Any]] = {}
    config = oc.CodexConfig(cwd=str(workdir), env=codex_env(home))
    with oc.Codex(config) as codex:

        def one(name: str) -> None:
            thread = codex.thread_start(
                cwd=str(workdir), sandbox=oc.Sandbox.full_access, approval_mode=oc.ApprovalMode.deny_all
            )
            results[name] = list(thread.turn(f"{name}-TASK please").stream())

        workers = [threading.Thread(target=one, args=(name,)) for name in ("ALPHA", "BETA")]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=30)

    for name in ("ALPHA", "BETA"):
        assert completed_turn(results[name])["status"] == "completed"
        command = items(results[name], "item/completed", "commandExecution")[0]
        assert command["aggregatedOutput"] == f"{name}-out\n"
        assert items(results[name], "item/completed", "agentMessage")[0]["text"] == f"{name} finished"
    assert model.remaining() == []
