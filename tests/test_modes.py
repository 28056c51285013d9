"""Every command in every output mode, as a script sees it: --json is one JSON value on
stdout, -q is the bare value, human text never leaks onto stdout, errors go to stderr."""

from __future__ import annotations

import json

import pytest

from tests.e2e import Rig
from tests.fakes.model import msg, turn

pytestmark = pytest.mark.e2e


def test_each_command_in_each_mode(rig: Rig) -> None:
    up_json = rig.cli("up", "--json")
    assert up_json.code == 0, up_json
    data = json.loads(up_json.stdout)
    sandbox_id = data["sandbox_id"]
    assert data["created"] is True and data["home_dir"]
    assert rig.cli("up", "-q").stdout == f"{sandbox_id}\n"
    assert rig.cli("up").stdout == f"Using sandbox {sandbox_id}\n"

    rig.model.enqueue(turn(msg("answer")))
    detached = rig.cli("ask", "--detach", "--json", "go")
    assert detached.code == 0, detached
    run_id = json.loads(detached.stdout)["run_id"]
    assert rig.cli("logs", "-f", "-q", run_id).stdout == "answer\n"
    logs_json = rig.cli("logs", "--json", run_id)
    assert logs_json.json_lines[-1]["type"] == "codex_daytona.result"

    exec_json = rig.cli("exec", "--json", "--", "sh", "-c", "echo out; echo err >&2; exit 4")
    assert exec_json.code == 4, exec_json
    lines = exec_json.json_lines
    assert lines[-1] == {"exit_code": 4}
    streams = {(e["stream"], e["data"]) for e in lines[:-1]}
    assert ("stdout", "out\n") in streams and ("stderr", "err\n") in streams
    exec_quiet = rig.cli("exec", "-q", "--", "echo", "just this")
    assert exec_quiet.code == 0 and exec_quiet.stdout == "just this\n", exec_quiet

    preview_json = rig.cli("preview", "--json")
    assert preview_json.code == 0 and json.loads(preview_json.stdout) == {"previews": []}, preview_json
    assert rig.cli("preview", "-q").stdout == ""

    stop_quiet = rig.cli("down", "--stop", "-q")
    assert stop_quiet.code == 0 and stop_quiet.stdout == f"{sandbox_id}\n", stop_quiet
    assert rig.cli("status", "-q").stdout == "stopped\n"
    down_json = rig.cli("down", "--yes", "--json")
    assert down_json.code == 0, down_json
    assert json.loads(down_json.stdout) == {"sandbox_id": sandbox_id, "deleted": True}
    nothing = rig.cli("down", "--yes", "-q")
    assert nothing.code == 0 and nothing.stdout == "", nothing
    assert "nothing to do" in nothing.stderr.lower()
    missing = rig.cli("status", "--json")
    assert json.loads(missing.stdout)["state"] == "none"
    error_json = rig.cli("preview", "--json")
    assert error_json.code == 5 and error_json.stdout == "", error_json
    assert "No sandbox here" in error_json.stderr
