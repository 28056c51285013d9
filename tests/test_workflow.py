"""The core workflow end to end: the real CLI, the Daytona emulator driven by the real SDK,
the real agent program and the real Codex binary, the scripted model."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import OPENAI_KEY, Rig, free_port, http_get
from tests.fakes.model import add_file_patch, add_files_patch, msg, patch, plan, run, think, turn

pytestmark = pytest.mark.e2e

INDEX = (
    "<!doctype html>\n"
    '<html><head><link rel="stylesheet" href="style.css"></head>\n'
    '<body><canvas id="game"></canvas><script src="main.js"></script></body></html>\n'
)
STYLE = "body { margin: 0; background: #000; }\n"
MAIN = "const c = document.getElementById('game');\nc.width = 800; c.height = 600;\n"


def lunar_lander_turn() -> list[dict[str, Any]]:
    return [
        turn(think("Plan the lander game"), plan(("Write the page", "in_progress"), ("List files", "pending"))),
        turn(patch(add_file_patch("index.html", INDEX))),
        turn(patch(add_files_patch({"style.css": STYLE, "main.js": MAIN}))),
        turn(run("ls")),
        turn(plan(("Write the page", "completed"), ("List files", "completed"))),
        turn(msg("Built a self-contained 3D lunar lander game in index.html, style.css and main.js.")),
    ]


# Cold: the README's flow as a script or CI runs it, every call a process of its own.
@pytest.mark.cold
def test_seed_workflow_build_serve_preview_resume_down(rig: Rig) -> None:
    # 1. Build: the first ask creates the sandbox, installs nothing (the snapshot has the
    #    runtime), and the agent writes three files with apply_patch and runs a command.
    rig.model.enqueue(*lunar_lander_turn())
    first = rig.cli("ask", "create a 3d animated web-based lunar lander game")
    assert first.code == 0, first
    for name in ("index.html", "style.css", "main.js"):
        assert "📝 Add " in first.stderr and name in first.stderr, first
    assert "🔨" in first.stderr and "Run:" in first.stderr and "ls" in first.stderr
    assert "To-do list" in first.stderr
    assert first.stdout.strip() == "Built a self-contained 3D lunar lander game in index.html, style.css and main.js."
    record = rig.record()
    sandbox_id, thread_id = record["sandbox_id"], record["thread_id"]
    home = Path(rig.emulator.home_dir(sandbox_id))
    assert (home / "index.html").read_text() == INDEX
    assert (home / "main.js").read_text() == MAIN

    # 2. Serve: the agent starts a server in the background; the CLI prints its preview link.
    port = free_port(8080)
    rig.model.enqueue(
        turn(run(f"nohup python3 -m http.server {port} --bind 0.0.0.0 > server.log 2>&1 & sleep 1; echo started")),
        turn(msg(f"Server started on port {port}.")),
    )
    second = rig.cli("ask", "start the server")
    assert second.code == 0, second
    [line] = [line for line in second.stderr.splitlines() if line.startswith(f"🔗 Port {port}: ")]
    signed = line.split(": ", 1)[1].split()[0]
    status, body = http_get(signed)  # the link as printed opens in a browser: no header needed
    assert status == 200 and "<canvas" in body

    # `preview` lists the same port, and its plain link with the token.
    listed = rig.cli("preview", "--json")
    assert listed.code == 0, listed
    previews = json.loads(listed.stdout)["previews"]
    assert [p["port"] for p in previews] == [port]
    url, token = previews[0]["url"], previews[0]["token"]
    status, body = http_get(url, {"X-Daytona-Preview-Token": token})
    assert status == 200 and "<canvas" in body
    status, _ = http_get(url)
    assert status == 307, "a private sandbox's preview without its token goes to Daytona's sign-in"

    # 3. Resume: the third ask continues the same thread, with the earlier turns in the input.
    history = rig.ask_on_same_thread("what have we done so far?", "You asked for a lunar lander and a server.")
    assert rig.record()["thread_id"] == thread_id
    assert "create a 3d animated web-based lunar lander game" in history
    assert "start the server" in history
    assert "Built a self-contained 3D lunar lander game" in history

    # 4. Down: the sandbox is gone and the state forgets it.
    down = rig.cli("down", "--yes")
    assert down.code == 0, down
    assert sandbox_id in down.stdout
    assert (rig.sandbox(sandbox_id) or {}).get("state") == "destroyed"
    assert not home.exists()
    assert rig.record() == {}
    status, _ = http_get(url, {"X-Daytona-Preview-Token": token})
    assert status != 200


def test_up_is_idempotent_and_prints_the_id(rig: Rig) -> None:
    before = {s["id"] for s in rig.emulator.sandboxes()}
    first = rig.cli("up")
    assert first.code == 0, first
    sandbox_id = rig.record()["sandbox_id"]
    assert sandbox_id in first.stdout
    again = rig.cli("up", "-q")
    assert again.code == 0, again
    assert again.stdout.strip() == sandbox_id
    # The emulator outlives the test: of all the sandboxes it ever had, the two `up`s made one.
    assert {s["id"] for s in rig.emulator.sandboxes()} - before == {sandbox_id}
    sandbox = rig.sandbox(sandbox_id)
    assert sandbox is not None
    assert sandbox["state"] == "started"
    assert sandbox["labels"]["app"] == "codex-daytona"
    # The tool's setting (30 minutes by default), not Daytona's default of 15.
    assert sandbox.get("autoStopInterval") == 30
    # Codex's config in the sandbox is valid TOML written by a serialiser, and holds no key.
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib

    home = Path(rig.emulator.home_dir(sandbox_id))
    config_path = home / ".codex-daytona" / "codex" / "config.toml"  # CODEX_HOME, out of the work tree
    config = tomllib.loads(config_path.read_text())
    assert config["model_providers"]["codex-daytona"]["base_url"] == rig.model.base_url
    assert OPENAI_KEY not in config_path.read_text()
    assert not (home / ".codex").exists()


def test_prompt_is_delivered_intact(rig: Rig) -> None:
    prompt = "Quotes \"double\" 'single' $HOME ${PATH} `id` $(whoami) \\ backslash\nline two\n\tü ✓ 🚀 " + "x" * 100_000
    rig.model.enqueue(turn(msg("got it")))
    result = rig.cli("ask", "-", input=prompt)
    assert result.code == 0, result
    sent = rig.model.model_requests[0]["body"]["input"]
    texts = [c.get("text") for item in sent if item.get("role") == "user" for c in item.get("content", [])]
    assert prompt in texts
    # No user text reached a command line in the sandbox.
    for command in rig.emulator.commands(rig.record()["sandbox_id"]):
        assert "Quotes" not in command["command"] and OPENAI_KEY not in command["command"]


def test_failed_turn_exits_3_with_the_model_error(rig: Rig) -> None:
    from tests.fakes.model import error

    rig.model.enqueue(*[error(401, "Incorrect API key provided: sk-wrong") for _ in range(12)])
    result = rig.cli("ask", "hello")
    assert result.code == 3, result
    assert "401" in result.stderr
    assert "Traceback" not in result.stderr
    # State intact: the sandbox is kept for the next ask.
    assert rig.record()["sandbox_id"]
