"""OpenAI's TypeScript Codex SDK (`@openai/codex-sdk`, from npm) runs its agent in a Daytona
sandbox, unchanged, through `codex-daytona-exec` (`codexPathOverride`): against the emulator,
the real Codex binary in the sandbox and the scripted model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from codex_daytona import codex_exec
from codex_daytona.errors import UsageError
from tests.ci import skip_unless_ci
from tests.e2e import OPENAI_KEY, Rig
from tests.fakes.model import fail, msg, run, turn

SDK_VERSION = "0.163.0"  # the SDK of the Codex this tool pins (runtime.CODEX_SDK_VERSION)
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def codex_sdk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`@openai/codex-sdk` installed from npm once per session: its node_modules directory.
    Without the platform binary (optional dependency): codexPathOverride replaces it."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        skip_unless_ci("node and npm are not installed (.ci/run installs them: apt-get install -y nodejs npm)")
    root = tmp_path_factory.mktemp("codex-sdk")
    (root / "package.json").write_text('{"name": "codex-sdk-test", "private": true, "type": "module"}')
    proc = subprocess.run(
        [npm, "install", "--omit=optional", "--no-audit", "--no-fund", f"@openai/codex-sdk@{SDK_VERSION}"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        ping = subprocess.run([npm, "ping"], cwd=root, capture_output=True, text=True, timeout=120)
        if ping.returncode != 0:
            skip_unless_ci(f"npm cannot reach its registry: {ping.stderr.strip()[-300:]}")
        raise AssertionError(f"npm install failed:\n{proc.stderr}")
    return root / "node_modules"


@pytest.fixture
def exec_bin(tmp_path: Path) -> Path:
    """`codex-daytona-exec` as pip installs it: a script that calls the entry point."""
    path = tmp_path / "bin" / "codex-daytona-exec"
    path.parent.mkdir()
    path.write_text(f"#!{sys.executable}\nimport sys\nfrom codex_daytona.codex_exec import main\nsys.exit(main())\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def node_dir(tmp_path: Path, codex_sdk: Path) -> Path:
    """Where the Node programs live: outside the project, with the SDK importable by name."""
    directory = tmp_path / "node-app"
    directory.mkdir()
    (directory / "node_modules").symlink_to(codex_sdk)
    return directory


class Node:
    """Runs a Node program that uses the SDK, with the environment a user would have: the
    Daytona settings, but no OpenAI key (the program passes it as `apiKey`)."""

    def __init__(self, rig: Rig, directory: Path, exec_bin: Path) -> None:
        self.rig = rig
        self.directory = directory
        self.exec_bin = exec_bin
        self.env = {k: v for k, v in rig.env.items() if k not in ("SANDBOX_OPENAI_API_KEY", "CODEX_DAYTONA_STATE_DIR")}

    def program(self, body: str) -> Path:
        path = self.directory / f"program-{len(list(self.directory.glob('program-*')))}.mjs"
        header = (
            'import { Codex } from "@openai/codex-sdk";\n'
            f"const codex = new Codex({{ codexPathOverride: {json.dumps(str(self.exec_bin))}, "
            f"apiKey: {json.dumps(OPENAI_KEY)} }});\n"
            f"const project = {json.dumps(str(self.rig.project))};\n"
            "const out = (value) => process.stdout.write(JSON.stringify(value) + '\\n');\n"
        )
        path.write_text(header + body)
        return path

    def run(self, body: str, timeout: float = 180) -> list[dict[str, Any]]:
        proc = subprocess.run(
            ["node", str(self.program(body))],
            cwd=self.directory,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert proc.returncode == 0, f"node exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]

    def popen(self, body: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["node", str(self.program(body))],
            cwd=self.directory,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


@pytest.fixture
def node(rig: Rig, node_dir: Path, exec_bin: Path) -> Iterator[Node]:
    # The project's own state file, as `codex-daytona` run in the project would use: the Node
    # program names the project only through `workingDirectory`.
    rig.env["CODEX_DAYTONA_STATE_DIR"] = str(rig.project / ".codex-daytona")
    yield Node(rig, node_dir, exec_bin)


def _input_text(request: dict[str, Any]) -> str:
    return json.dumps(request["body"]["input"])


@pytest.mark.e2e
def test_start_thread_run_works_in_the_projects_sandbox(rig: Rig, node: Node) -> None:
    rig.model.enqueue(turn(run("echo sandbox=$DAYTONA_SANDBOX_ID")), turn(msg("hello from daytona")))
    [result] = node.run(
        "const thread = codex.startThread({ workingDirectory: project, skipGitRepoCheck: true });\n"
        'const turn = await thread.run("say hello");\n'
        "out({ id: thread.id, final: turn.finalResponse, items: turn.items, usage: turn.usage });\n"
    )
    assert result["final"] == "hello from daytona"
    sandbox_id = rig.record()["sandbox_id"]
    commands = [i for i in result["items"] if i["type"] == "command_execution"]
    assert [c["aggregated_output"].strip() for c in commands] == [f"sandbox={sandbox_id}"]
    assert result["usage"]["input_tokens"] > 0
    # The same thread the CLI continues in that project, and the key came from `apiKey`.
    assert result["id"] and rig.record()["thread_id"] == result["id"]
    assert rig.model.model_requests[-1]["headers"]["authorization"] == f"Bearer {OPENAI_KEY}"
    assert "say hello" in _input_text(rig.model.model_requests[0])


@pytest.mark.e2e
def test_run_streamed_yields_items_while_the_turn_runs(rig: Rig, node: Node) -> None:
    rig.model.enqueue(turn(run("echo live")), turn(msg("finished"), hold="answer"))
    proc = node.popen(
        "const thread = codex.startThread({ workingDirectory: project });\n"
        'const { events } = await thread.runStreamed("stream it");\n'
        "for await (const event of events) out(event);\n"
    )
    assert proc.stdout is not None
    seen: list[dict[str, Any]] = []
    try:
        for line in proc.stdout:
            event = json.loads(line)
            seen.append(event)
            item = event.get("item") or {}
            if event["type"] == "item.completed" and item.get("type") == "command_execution":
                # The model holds its last answer: the turn cannot have ended yet.
                assert not [e for e in seen if e["type"].startswith("turn.") and e["type"] != "turn.started"]
                assert item["aggregated_output"].strip() == "live"
                rig.model.release("answer")
        assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        rig.model.release("answer")
        if proc.poll() is None:
            proc.kill()
    types = [e["type"] for e in seen]
    assert types[0] == "thread.started" and types[1] == "turn.started" and types[-1] == "turn.completed"
    assert not [t for t in types if t.startswith("codex_daytona.")]  # exec's lines only
    assert any(e.get("item", {}).get("text") == "finished" for e in seen if e["type"] == "item.completed")


@pytest.mark.e2e
def test_resume_thread_remembers_and_start_thread_starts_afresh(rig: Rig, node: Node) -> None:
    rig.model.enqueue(turn(msg("noted")))
    [first] = node.run(
        "const thread = codex.startThread({ workingDirectory: project });\n"
        'await thread.run("remember the word PINEAPPLE");\n'
        "out({ id: thread.id });\n"
    )
    rig.model.enqueue(turn(msg("PINEAPPLE")), turn(msg("which word?")))
    [second, third] = node.run(
        f"const again = codex.resumeThread({json.dumps(first['id'])}, {{ workingDirectory: project }});\n"
        'const turn = await again.run("what was the word?");\n'
        "out({ id: again.id, final: turn.finalResponse });\n"
        "const fresh = codex.startThread({ workingDirectory: project });\n"
        'const other = await fresh.run("what was the word, if any?");\n'
        "out({ id: fresh.id, final: other.finalResponse });\n"
    )
    requests = rig.model.model_requests
    assert second == {"id": first["id"], "final": "PINEAPPLE"}
    assert "remember the word PINEAPPLE" in _input_text(requests[1])  # the earlier turn, resumed
    assert third["id"] != first["id"]
    assert "PINEAPPLE" not in _input_text(requests[2])


@pytest.mark.e2e
def test_resuming_a_thread_the_sandbox_does_not_have_throws(rig: Rig, node: Node) -> None:
    # Nothing is queued for the model: a turn that reached it would fail another way.
    [result] = node.run(
        'const thread = codex.resumeThread("019a0000-0000-7000-8000-000000000000", { workingDirectory: project });\n'
        "try {\n"
        '  await thread.run("go on");\n'
        "  out({ threw: false });\n"
        "} catch (error) {\n"
        "  out({ threw: true, message: String(error.message) });\n"
        "}\n"
    )
    assert result["threw"] is True, result
    assert "Codex Exec exited with code 1" in result["message"]
    assert "could not resume thread 019a0000-0000-7000-8000-000000000000" in result["message"]
    assert rig.model.model_requests == []  # no fresh thread behind the program's back


@pytest.mark.e2e
def test_output_schema_and_local_images_reach_the_model(rig: Rig, node: Node, tmp_path: Path) -> None:
    from tests.test_exec_flags import png

    image = tmp_path / "shot.png"
    image.write_bytes(png((0, 255, 0)))
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    rig.model.enqueue(turn(msg('{"ok": true}')))
    [result] = node.run(
        "const thread = codex.startThread({ workingDirectory: project });\n"
        "const turn = await thread.run(\n"
        f'  [{{ type: "text", text: "is it green?" }}, {{ type: "local_image", path: {json.dumps(str(image))} }}],\n'
        f"  {{ outputSchema: {json.dumps(schema)} }},\n"
        ");\n"
        "out({ final: JSON.parse(turn.finalResponse) });\n"
    )
    assert result == {"final": {"ok": True}}
    body = rig.model.model_requests[-1]["body"]
    assert body["text"]["format"]["schema"] == schema
    assert "data:image/png;base64," in json.dumps(body["input"])


@pytest.mark.e2e
def test_reasoning_effort_and_codex_config_reach_the_model(rig: Rig, node: Node) -> None:
    """The SDK's `modelReasoningEffort` and its `config` (both passed as `--config`) go with
    the turn, as `ask --effort` and `ask -c` do."""
    rig.model.enqueue(turn(msg("ok")))
    options = {"codexPathOverride": str(node.exec_bin), "apiKey": OPENAI_KEY, "config": {"model_verbosity": "low"}}
    [result] = node.run(
        f"const configured = new Codex({json.dumps(options)});\n"
        'const thread = configured.startThread({ workingDirectory: project, modelReasoningEffort: "high" });\n'
        'const turn = await thread.run("think hard");\n'
        "out({ final: turn.finalResponse });\n"
    )
    assert result == {"final": "ok"}
    body = rig.model.model_requests[-1]["body"]
    assert body["reasoning"]["effort"] == "high", body.get("reasoning")
    assert body["text"]["verbosity"] == "low", body.get("text")


@pytest.mark.e2e
def test_a_failed_turn_throws_in_the_program(rig: Rig, node: Node) -> None:
    rig.model.enqueue(*[fail("the model fell over") for _ in range(5)])  # retried, then fatal
    [result] = node.run(
        "const thread = codex.startThread({ workingDirectory: project });\n"
        "try {\n"
        '  await thread.run("break");\n'
        "  out({ threw: false });\n"
        "} catch (error) {\n"
        "  out({ threw: true, message: String(error.message) });\n"
        "}\n"
    )
    assert result["threw"] is True
    assert "the model fell over" in result["message"]
    # Streamed, the program sees turn.failed, then the process's exit code 1 (as exec's).
    rig.model.clear()
    rig.model.enqueue(*[fail("the model fell over again") for _ in range(5)])
    [streamed] = node.run(
        "const thread = codex.startThread({ workingDirectory: project });\n"
        "const types = [];\n"
        "try {\n"
        '  const { events } = await thread.runStreamed("break again");\n'
        "  for await (const event of events) types.push(event.type);\n"
        "  out({ types, threw: false });\n"
        "} catch (error) {\n"
        "  out({ types, threw: true, message: String(error.message) });\n"
        "}\n"
    )
    assert streamed["threw"] is True and streamed["types"][-1] == "turn.failed", streamed
    assert streamed["message"].startswith("Codex Exec exited with code 1:"), streamed
    assert "the model fell over again" in streamed["message"]  # our error line, on stderr


@pytest.mark.e2e
def test_an_aborted_turn_is_interrupted_in_the_sandbox(rig: Rig, node: Node) -> None:
    """The SDK's AbortSignal kills codex-daytona-exec with SIGTERM: the turn is interrupted
    (not left running), and the thread goes on."""
    rig.model.enqueue(turn(run("sleep 61", yield_time_ms=60000)), turn(msg("after the abort")))
    [result] = node.run(
        "const controller = new AbortController();\n"
        "const thread = codex.startThread({ workingDirectory: project });\n"
        "const types = [];\n"
        "try {\n"
        '  const { events } = await thread.runStreamed("sleep a while", { signal: controller.signal });\n'
        "  for await (const event of events) {\n"
        "    types.push(event.type);\n"
        '    if (event.type === "item.started" && event.item.type === "command_execution") controller.abort();\n'
        "  }\n"
        "} catch (error) {\n"
        "  types.push(`threw ${error.name}`);\n"
        "}\n"
        "const again = codex.resumeThread(thread.id, { workingDirectory: project });\n"
        'const turn = await again.run("go on");\n'
        "out({ types, final: turn.finalResponse, first: thread.id, second: again.id });\n",
        timeout=120,
    )
    assert result["types"][-1] == "threw AbortError", result
    assert result["final"] == "after the abort" and result["first"] == result["second"]
    # The model heard of the interrupted turn: it was stopped, not left to finish.
    assert "aborted" in _input_text(rig.model.model_requests[-1]).lower()
    assert len(rig.model.model_requests) == 2


# --- the command line the SDK writes, without a sandbox ----------------------------------------


def test_the_sdks_arguments_parse() -> None:
    argv = [
        "exec",
        "--experimental-json",
        "--config",
        'approval_policy="never"',
        "--model",
        "gpt-5.5",
        "--thread-source",
        "user",
        "--sandbox",
        "workspace-write",
        "--cd",
        "/some/project",
        "--skip-git-repo-check",
        "--output-schema",
        "/tmp/schema.json",
        "--config",
        "sandbox_workspace_write.network_access=true",
        "resume",
        "thread-1",
        "--image",
        "a.png",
        "--image",
        "b.png",
    ]
    inv = codex_exec.parse_args(argv)
    assert inv.json and inv.model == "gpt-5.5" and inv.sandbox == "workspace-write"
    assert inv.cd == Path("/some/project") and inv.output_schema == Path("/tmp/schema.json")
    assert inv.resume == "thread-1" and inv.images == [Path("a.png"), Path("b.png")]
    assert inv.config == ['approval_policy="never"', "sandbox_workspace_write.network_access=true"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["exec"], "--experimental-json"),
        (["review", "--json"], "first argument must be `exec`"),
        (["exec", "--json", "--add-dir", "/x"], "--add-dir is not supported"),
        (["exec", "--json", "--sandbox", "read-only"], "--sandbox read-only cannot be honoured"),
        (["exec", "--json", "--frobnicate"], "unsupported argument --frobnicate"),
        (["exec", "--json", "resume"], "resume needs a THREAD_ID"),
        (["exec", "--json", "--model"], "--model needs a value"),
    ],
)
def test_unsupported_arguments_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace("[", r"\[")):
        codex_exec.parse_args(argv)


def _exec(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "codex_daytona.codex_exec", *args],
        input="a prompt",
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        timeout=60,
    )


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ('model_provider="mine"', "--config model_provider would change model_provider"),
        ('shell_environment_policy.inherit="all"', "would change shell_environment_policy"),
        ('approval_policy="on-request"', "approval_policy=on-request cannot be honoured"),
        ("sandbox_workspace_write.network_access=false", "network is Daytona's to set"),
    ],
)
def test_refused_config_exits_2_with_one_clear_line(config: str, message: str) -> None:
    result = _exec(["exec", "--experimental-json", "--config", config])
    assert result.returncode == 2, result
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_without_settings_it_fails_like_exec_with_the_reason_on_stderr() -> None:
    result = _exec(["exec", "--experimental-json"])
    assert result.returncode == 1, result
    assert "SANDBOX_OPENAI_API_KEY is not set" in result.stderr and "CODEX_API_KEY" in result.stderr
    assert result.stdout == ""
    # CODEX_API_KEY (the SDK's apiKey) is the OpenAI key: the next missing setting is Daytona's.
    with_key = _exec(["exec", "--experimental-json"], env={"CODEX_API_KEY": OPENAI_KEY})
    assert with_key.returncode == 1, with_key
    assert "DAYTONA_API_KEY is not set" in with_key.stderr
    assert OPENAI_KEY not in with_key.stderr + with_key.stdout


def test_the_package_installs_the_executable() -> None:
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, function = scripts["codex-daytona-exec"].partition(":")
    assert (module, function) == ("codex_daytona.codex_exec", "main")
    assert callable(getattr(codex_exec, function))


def test_exec_only_output_leaves_our_lines_out_and_warns_on_stderr() -> None:
    import io

    from codex_daytona.output import Mode, Output

    stdout, stderr = io.StringIO(), io.StringIO()
    out = Output(Mode.JSON, stream_events=True, exec_only=True, stdout=stdout, stderr=stderr, secrets=[OPENAI_KEY])
    out.event({"type": "codex_daytona.progress", "message": "Creating the sandbox..."})
    out.event({"type": "thread.started", "thread_id": "t1"})
    out.event({"type": "codex_daytona.warning", "message": "careful"})
    out.event({"type": "item.completed", "item": {"id": "i", "type": "agent_message", "text": f"k={OPENAI_KEY}"}})
    out.event({"type": "codex_daytona.run.completed", "status": "completed"})
    lines = [json.loads(line) for line in stdout.getvalue().splitlines()]
    assert [e["type"] for e in lines] == ["thread.started", "item.completed"]
    assert OPENAI_KEY not in stdout.getvalue()
    assert "careful" in stderr.getvalue()
