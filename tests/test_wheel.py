"""Installed as users install it: the wheel `python -m build` makes, pip-installed into a fresh
virtualenv outside the checkout, runs `up`, `ask`, `preview` and `down` against the emulator,
with the agent bundle it uploads read from the wheel's files.

Slow (a build, then pip resolving every dependency into the new virtualenv: minutes), so it
runs under `make test-wheel` (CODEX_DAYTONA_TEST_WHEEL=1) and is skipped otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from agent_bundle import protocol
from tests.e2e import Result, Rig
from tests.fakes.model import msg, turn

REPO = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.environ.get("CODEX_DAYTONA_TEST_WHEEL") != "1", reason="slow: run by `make test-wheel`"),
]


def _run(*argv: str | Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=900, **kwargs)  # type: ignore[call-overload]
    assert proc.returncode == 0, f"{argv}\n{proc.stdout}\n{proc.stderr}"
    return proc  # type: ignore[no-any-return]


def test_the_wheel_installed_in_a_fresh_venv_runs_up_ask_preview_down(rig: Rig, tmp_path: Path) -> None:
    dist = Path(os.environ.get("CODEX_DAYTONA_WHEEL_DIR") or tmp_path / "dist")
    wheels = sorted(dist.glob("codex_daytona-*.whl"))
    if not wheels:
        _run(sys.executable, "-m", "build", "--wheel", "--outdir", dist, REPO)
        wheels = sorted(dist.glob("codex_daytona-*.whl"))
    wheel = wheels[-1]
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {"agent_bundle/__main__.py", "agent_bundle/protocol.py", "codex_daytona/py.typed"} <= names

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    _run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", wheel)
    tool = venv / "bin" / "codex-daytona"

    env = {k: v for k, v in rig.env.items() if k != "PYTHONPATH"}
    outside = {"cwd": rig.project, "env": env}
    # What the installed tool imports is the virtualenv's, not this checkout's.
    where = _run(
        venv / "bin" / "python",
        "-c",
        "import json, codex_daytona, importlib.resources as r, importlib.metadata as m;"
        "agent = str(r.files('agent_bundle'));"
        "print(json.dumps([codex_daytona.__file__, agent, m.version('codex-daytona')]))",
        **outside,
    )
    package, agent, version = json.loads(where.stdout)
    assert package.startswith(str(venv)) and agent.startswith(str(venv)), where.stdout

    def cli(*args: str) -> Result:
        proc = subprocess.run([str(tool), *args], capture_output=True, text=True, timeout=300, **outside)  # type: ignore[call-overload]
        return Result(proc.returncode, proc.stdout, proc.stderr)

    shown = cli("--version")
    assert shown.code == 0 and shown.stdout == f"codex-daytona {version}\n", shown

    up = cli("up", "-q")
    assert up.code == 0, up
    sandbox_id = up.stdout.strip()
    home = Path(rig.emulator.home_dir(sandbox_id))
    uploaded = home / ".codex-daytona" / "agent" / "agent_bundle"
    assert protocol.bundle_files(uploaded) == protocol.bundle_files(Path(agent))

    rig.model.enqueue(turn(msg("Hello from the wheel.")))
    asked = cli("ask", "say hello")
    assert asked.code == 0, asked
    assert asked.stdout.strip() == "Hello from the wheel."

    listed = cli("preview", "--json")
    assert listed.code == 0, listed
    assert json.loads(listed.stdout)["previews"] == []

    down = cli("down", "--yes")
    assert down.code == 0, down
    assert sandbox_id in down.stdout
    assert (rig.sandbox(sandbox_id) or {}).get("state") == "destroyed"
