"""The OpenAI key never reaches the agent's commands, a command line, the state file, a
file in the sandbox or anything the CLI prints."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e import DAYTONA_KEY, OPENAI_KEY, Rig, files_holding, sandbox_processes
from tests.fakes.model import msg, run, turn

pytestmark = pytest.mark.e2e


# `ps -eo args` as it prints in a real sandbox: the emulator runs every sandbox's processes on
# this machine, where ps would list other tests' processes too (some started with the test key),
# so the command lines printed are those of the processes carrying this sandbox's id.
SANDBOX_PS = (
    "for p in /proc/[0-9]*; do tr '\\0' '\\n' < $p/environ 2>/dev/null"
    " | grep -qx \"DAYTONA_SANDBOX_ID=$DAYTONA_SANDBOX_ID\" && { tr '\\0' ' ' < $p/cmdline; echo; }; done; true"
)


def test_the_key_stays_out_of_everything(rig: Rig) -> None:
    rig.model.enqueue(
        turn(run(f"env; printenv; echo ps-follows; {SANDBOX_PS}; sleep 2", yield_time_ms=30000)),
        turn(msg("looked around")),
    )
    proc = rig.popen("ask", "look around", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # While the turn runs: no process of the sandbox has the key on its command line.
    deadline = time.monotonic() + 60
    seen_turn = False
    while proc.poll() is None and time.monotonic() < deadline:
        record = rig.record()
        if record.get("sandbox_id"):
            cmdlines = list(sandbox_processes(record["sandbox_id"]).values())
            seen_turn = seen_turn or any("sleep 2" in c for c in cmdlines)
            assert not any(OPENAI_KEY in c for c in cmdlines)
        time.sleep(0.2)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert seen_turn, "the check ran while the agent's command was running"
    sandbox_id = rig.record()["sandbox_id"]

    # The agent's commands did not see it: what `env`/`printenv` printed reached the model.
    tool_output = rig.model.last_input()
    assert "HOME=" in tool_output and "ps-follows" in tool_output
    listed = tool_output.split("ps-follows", 1)[1]
    assert "agent_bundle" in listed, "the sandbox's processes were listed, the agent's too"
    assert OPENAI_KEY not in tool_output
    assert "CODEX_DAYTONA_OPENAI_API_KEY" not in tool_output
    # ... yet it authenticated Codex with the model.
    assert rig.model.model_requests[0]["headers"]["authorization"] == f"Bearer {OPENAI_KEY}"

    # Nowhere on the sandbox's disk, nor in the state file, nor in what the CLI printed.
    sandbox_dir = Path(rig.emulator.sandbox_dir(sandbox_id))
    holding, scanned = files_holding(sandbox_dir, OPENAI_KEY)
    assert holding == []
    assert scanned > 100, "the runtime's venv was read too"
    state_file = Path(rig.env["CODEX_DAYTONA_STATE_DIR"]) / "state.toml"
    assert OPENAI_KEY not in state_file.read_text() and DAYTONA_KEY not in state_file.read_text()
    assert OPENAI_KEY not in stdout + stderr
    # Nor in the command records Daytona keeps.
    for command in rig.emulator.commands(sandbox_id):
        assert OPENAI_KEY not in command["command"]
    # Nor in the sandbox's environment as Daytona knows it.
    assert OPENAI_KEY not in json.dumps(rig.sandbox(sandbox_id))


def test_state_file_and_directory_are_private_and_ignored_by_git(rig: Rig) -> None:
    assert rig.cli("up").code == 0
    state_dir = Path(rig.env["CODEX_DAYTONA_STATE_DIR"])
    assert stat.S_IMODE(os.stat(state_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(state_dir / "state.toml").st_mode) == 0o600
    assert (state_dir / ".gitignore").read_text().splitlines()[-1] == "*"


def test_daytona_secret_mode_puts_only_a_placeholder_in_the_sandbox(rig: Rig) -> None:
    env = {"SANDBOX_OPENAI_API_KEY": "", "SANDBOX_OPENAI_SECRET": "team-openai-key"}
    rig.model.enqueue(turn(run("env")), turn(msg("ok")))
    result = rig.cli("ask", "hello", env=env)
    assert result.code == 0, result
    sandbox = rig.sandbox(rig.record()["sandbox_id"])
    assert sandbox is not None
    # The emulator stands in for Daytona's egress proxy by sending the placeholder as is.
    auth = rig.model.model_requests[0]["headers"]["authorization"]
    assert auth.startswith("Bearer ") and "team-openai-key" in auth
    assert OPENAI_KEY not in json.dumps(sandbox)
    # The agent's commands do not even see the placeholder.
    tool_output = rig.model.last_input()
    assert "HOME=" in tool_output
    assert "CODEX_DAYTONA_OPENAI_API_KEY" not in tool_output and "team-openai-key" not in tool_output
