"""`ask --exec-json` IS `codex exec --json`: the same scripted turns run through the real
`codex exec --json` (the binary of the pinned openai-codex-cli-bin, on this machine, with a
CODEX_HOME written by the same `runtime.codex_config` the sandbox gets) and through
`codex-daytona ask --exec-json` (on the emulator), and the two streams compared line by line.

What is normalised, and why (nothing else is):
- `thread.started`'s thread_id: each side starts its own thread.
- the two home directories in paths (file changes): exec works in a temporary directory
  here, the agent in the sandbox's home.
Timestamps need no normalising: --exec-json leaves out the `ts` we add (checked too).
The exit codes differ on purpose and are checked as such: exec exits 1 on a failed or
interrupted turn, `ask` exits 3 and 130 as its README says.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from codex_daytona.sandbox import runtime
from codex_daytona.settings import Settings
from tests.e2e import OPENAI_KEY, Rig, default_sigint
from tests.fakes.codex_home import codex_binary
from tests.fakes.model import (
    Step,
    add_file_patch,
    error,
    msg,
    patch,
    plan,
    run,
    think,
    turn,
    update_file_patch,
)

pytestmark = pytest.mark.e2e

Events = list[dict[str, Any]]


@dataclass
class Scenario:
    name: str
    steps: list[Step]
    exec_code: int = 0
    ask_code: int = 0
    model: str | None = None
    interrupt_on: Callable[[dict[str, Any]], bool] | None = None
    check: Callable[[Events], None] = field(default=lambda events: None)


def _command_started(event: dict[str, Any]) -> bool:
    return event.get("type") == "item.started" and event["item"]["type"] == "command_execution"


def _types(events: Events) -> list[tuple[str, str | None]]:
    return [(e["type"], (e.get("item") or {}).get("type")) for e in events]


def _check_build(events: Events) -> None:
    kinds = _types(events)
    assert ("item.updated", "todo_list") in kinds and ("item.completed", "file_change") in kinds
    changes = [e["item"]["changes"][0] for e in events if e["type"] == "item.completed" and "changes" in e["item"]]
    assert [c["kind"] for c in changes] == ["add", "update"] and changes[0]["path"] == "<home>/hello.txt"
    assert kinds[-1] == ("turn.completed", None)


def _check_failed_command(events: Events) -> None:
    command = next(e["item"] for e in events if e["type"] == "item.completed" and "exit_code" in e["item"])
    assert (command["exit_code"], command["status"]) == (3, "failed")


def _check_401(events: Events) -> None:
    assert events[-1]["type"] == "turn.failed" and "401" in events[-1]["error"]["message"]
    assert any(e["type"] == "error" and e["message"].startswith("Reconnecting... 1/") for e in events)


def _check_retried_500(events: Events) -> None:
    retry = next(e for e in events if e["type"] == "error")
    assert retry["message"].startswith("Reconnecting... 1/2 (We")
    assert events[-1]["type"] == "turn.completed"


def _check_interrupt(events: Events) -> None:
    assert events[-1]["type"] == "item.started", "nothing after the interrupt, no turn.* event"


def _check_search(events: Events) -> None:
    search = next(e["item"] for e in events if e["type"] == "item.completed" and e["item"]["type"] == "web_search")
    assert search["action"] == {"type": "search", "query": "codex daytona parity"}


def _check_unknown_model(events: Events) -> None:
    warning = events[1]
    assert warning["type"] == "item.completed" and warning["item"]["type"] == "error"
    assert "Model metadata for `my-gateway-model` not found" in warning["item"]["message"]


SCENARIOS = [
    Scenario(
        "build",
        [
            turn(think("Plan first"), plan(("Write hello", "in_progress"), ("Check it", "pending"))),
            turn(patch(add_file_patch("hello.txt", "hi there\n"))),
            turn(patch(update_file_patch("hello.txt", "hi there", "hello there"))),
            turn(msg("Checking."), run("cat hello.txt && ls")),
            turn(plan(("Write hello", "completed"), ("Check it", "completed"))),
            turn(think(""), msg("Done: wrote hello.txt")),
        ],
        check=_check_build,
    ),
    Scenario(
        "failing-command",
        [turn(run("echo to-stderr >&2; exit 3")), turn(msg("The command failed."))],
        check=_check_failed_command,
    ),
    # Codex makes 1 + 2 requests per attempt (request_max_retries = 2) and 1 + 2 attempts
    # (stream_max_retries = 2): each side takes exactly these nine.
    Scenario("unauthorized", [error(401, "Incorrect API key provided") for _ in range(9)], 1, 3, check=_check_401),
    Scenario(
        "retried-500",
        [*[error(500, "boom") for _ in range(3)], turn(msg("recovered"))],
        check=_check_retried_500,
    ),
    Scenario(
        "interrupt",
        [turn(msg("Sleeping."), run("sleep 30", yield_time_ms=60000)), turn(msg("unreachable"))],
        1,
        130,
        interrupt_on=_command_started,
        check=_check_interrupt,
    ),
    Scenario(
        "web-search",
        [
            turn(
                {
                    "raw": {
                        "type": "web_search_call",
                        "id": "ws_parity",
                        "status": "completed",
                        "action": {"type": "search", "query": "codex daytona parity"},
                    }
                }
            ),
            turn(msg("found it")),
        ],
        check=_check_search,
    ),
    Scenario(
        "unknown-model", [turn(msg("hello from a gateway"))], model="my-gateway-model", check=_check_unknown_model
    ),
]


def _normalised(events: Events, home: str) -> Events:
    text = json.dumps(events).replace(home.rstrip("/"), "<home>")
    out: Events = json.loads(text)
    for event in out:
        if event["type"] == "thread.started":
            event["thread_id"] = "<thread>"
    return out


def _lines(stdout: str) -> Events:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def _stream(proc: subprocess.Popen[str], interrupt_on: Callable[[dict[str, Any]], bool] | None) -> tuple[int, str]:
    """Reads proc's stdout to the end; sends SIGINT once a line matches `interrupt_on`."""
    assert proc.stdout is not None
    out = []
    for line in proc.stdout:
        out.append(line)
        if interrupt_on is not None and line.strip() and interrupt_on(json.loads(line)):
            proc.send_signal(signal.SIGINT)
            interrupt_on = None
    return proc.wait(timeout=60), "".join(out)


class ExecSide:
    """`codex exec --json` on this machine, configured as the agent's Codex in the sandbox."""

    def __init__(self, root: Path, base_url: str) -> None:
        self.home = root / "exec-home"
        self.home.mkdir(parents=True)
        layout = runtime.Layout(str(self.home))
        Path(layout.codex_home).mkdir(parents=True)
        settings = Settings(sandbox_openai_base_url=base_url, codex_daytona_model="gpt-5.5")
        Path(layout.codex_config).write_bytes(runtime.codex_config(settings, layout, None))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("CODEX_", "OPENAI_"))}
        self.env.update(
            HOME=str(self.home),
            CODEX_HOME=layout.codex_home,
            CODEX_APP_SERVER_DISABLE_MANAGED_CONFIG="1",
            **{runtime.KEY_ENV: OPENAI_KEY},
        )
        binary = codex_binary()
        assert binary is not None, "the pinned openai-codex-cli-bin ships the codex binary"
        self.binary = str(binary)

    def run(self, scenario: Scenario, prompt: str) -> tuple[int, Events]:
        argv = [self.binary, "exec", "--json", "--skip-git-repo-check", "-C", str(self.home)]
        if scenario.model:
            argv += ["--model", scenario.model]
        proc = subprocess.Popen(
            [*argv, prompt],
            stdin=subprocess.DEVNULL,  # with a pipe, exec waits for its end and appends it to the prompt
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=self.home,
            env=self.env,
            preexec_fn=default_sigint,
        )
        code, stdout = _stream(proc, scenario.interrupt_on)
        return code, _lines(stdout)


def _ask(rig: Rig, scenario: Scenario, prompt: str) -> tuple[int, str, str]:
    args = ["ask", "--exec-json", "--new-thread", *(["--model", scenario.model] if scenario.model else []), prompt]
    proc = rig.popen_piped(*args)
    code, stdout = _stream(proc, scenario.interrupt_on)
    assert proc.stderr is not None
    return code, stdout, proc.stderr.read()


def test_ask_exec_json_is_codex_exec_json(rig: Rig, tmp_path: Path) -> None:
    assert rig.cli("up", "-q").code == 0
    sandbox_home = str(rig.emulator.home_dir(rig.record()["sandbox_id"]))
    exec_side = ExecSide(tmp_path, rig.model.base_url)
    mismatches: dict[str, str] = {}
    for scenario in SCENARIOS:
        prompt = f"Scenario {scenario.name}: do as scripted."
        rig.model.clear()
        rig.model.enqueue(*scenario.steps)
        exec_code, expected = exec_side.run(scenario, prompt)
        rig.model.clear()
        rig.model.enqueue(*scenario.steps)
        ask_code, stdout, stderr = _ask(rig, scenario, prompt)
        got = _lines(stdout)
        assert "Traceback" not in stderr, stderr
        assert (exec_code, ask_code) == (scenario.exec_code, scenario.ask_code), f"{scenario.name}: {stderr}"
        assert all("ts" not in e and not e["type"].startswith("codex_daytona.") for e in got), scenario.name
        expected, got = _normalised(expected, str(exec_side.home)), _normalised(got, sandbox_home)
        scenario.check(expected)  # the scenario really produced what it is about
        if got != expected:
            mismatches[scenario.name] = "\n".join(
                ["exec:", *map(json.dumps, expected), "ask --exec-json:", *map(json.dumps, got)]
            )
    assert not mismatches, "\n\n".join(f"== {name}\n{diff}" for name, diff in mismatches.items())


def test_json_is_exec_json_plus_our_own_lines(rig: Rig) -> None:
    """`--json` carries the same standard events (with `ts`), our lines besides; `logs`
    replays a run both ways."""
    rig.model.enqueue(turn(think("Let me see"), run("echo hi")), turn(msg("All done.")))
    full = rig.cli("ask", "--json", "say hi")
    assert full.code == 0, full
    lines = full.json_lines
    ours = [e for e in lines if e["type"].startswith("codex_daytona.")]
    standard = [{k: v for k, v in e.items() if k != "ts"} for e in lines if e not in ours]
    assert all("ts" in e for e in lines if e not in ours), "--json adds when the agent wrote each event"
    assert {"codex_daytona.text", "codex_daytona.item.details", "codex_daytona.turn.usage"} <= {e["type"] for e in ours}
    assert lines[-1]["type"] == "codex_daytona.result"
    run_id = lines[-1]["run_id"]
    replay = rig.cli("logs", "--exec-json", run_id)
    assert replay.code == 0, replay
    assert replay.json_lines == standard
