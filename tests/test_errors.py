"""Every input a user can get wrong: one clear line, a hint, the right exit code, no
traceback, and the state left intact."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from tests.e2e import DAYTONA_KEY, Rig, free_port

pytestmark = pytest.mark.e2e


def _no_traceback(text: str) -> None:
    assert "Traceback" not in text, text


def _up_then_deleted_behind_our_back(rig: Rig) -> str:
    """A sandbox made by `up`, then deleted on Daytona directly: its id."""
    assert rig.cli("up").code == 0
    sandbox_id: str = rig.record()["sandbox_id"]
    request = urllib.request.Request(
        f"{rig.emulator.api_url}/sandbox/{sandbox_id}",
        method="DELETE",
        headers={"Authorization": f"Bearer {DAYTONA_KEY}"},
    )
    urllib.request.urlopen(request, timeout=10).read()
    return sandbox_id


def test_missing_daytona_key(rig: Rig) -> None:
    result = rig.cli("up", env={"DAYTONA_API_KEY": ""})
    assert result.code == 4, result
    assert "DAYTONA_API_KEY" in result.stderr
    _no_traceback(result.stderr)
    assert result.stdout == ""


def test_missing_openai_key_creates_nothing(rig: Rig) -> None:
    result = rig.cli("ask", "hi", env={"SANDBOX_OPENAI_API_KEY": ""})
    assert result.code == 4, result
    assert "SANDBOX_OPENAI_API_KEY" in result.stderr
    assert rig.record() == {}


def test_wrong_daytona_key(rig: Rig) -> None:
    result = rig.cli("up", env={"DAYTONA_API_KEY": "wrong-key"})
    assert result.code == 7, result
    assert "refused the API key" in result.stderr
    _no_traceback(result.stderr)


def test_dead_network(rig: Rig) -> None:
    port = free_port()
    result = rig.cli("up", env={"DAYTONA_API_URL": f"http://127.0.0.1:{port}/api"}, timeout=120)
    assert result.code == 7, result
    assert "Could not reach Daytona" in result.stderr
    _no_traceback(result.stderr)


def test_corrupt_state_file_is_named_and_kept(rig: Rig) -> None:
    state = Path(rig.env["CODEX_DAYTONA_STATE_DIR"]) / "state.toml"
    state.parent.mkdir(parents=True)
    state.write_text("sandboxes = [broken")
    for args in (("up",), ("ask", "hi"), ("preview",), ("down", "--yes")):
        result = rig.cli(*args)
        assert result.code == 1, result
        assert str(state) in result.stderr
        _no_traceback(result.stderr)
    assert state.read_text() == "sandboxes = [broken"


def test_no_sandbox_yet(rig: Rig) -> None:
    result = rig.cli("preview")
    assert result.code == 5, result
    assert "codex-daytona up" in result.stderr
    down = rig.cli("down", "--yes")
    assert down.code == 0, down


def test_sandbox_deleted_behind_our_back(rig: Rig) -> None:
    old = _up_then_deleted_behind_our_back(rig)
    result = rig.cli("ask", "hello")
    assert result.code == 5, result
    assert old in result.stderr and "no longer exists" in result.stderr
    _no_traceback(result.stderr)
    assert rig.record() == {}, "a sandbox that is gone is forgotten"
    # `up` then makes a new one.
    again = rig.cli("up", "-q")
    assert again.code == 0, again
    assert again.stdout.strip() != old


def test_up_replaces_a_deleted_sandbox_with_a_warning(rig: Rig) -> None:
    old = _up_then_deleted_behind_our_back(rig)
    result = rig.cli("up", "-q")
    assert result.code == 0, result
    assert "deleted outside codex-daytona" in result.stderr
    assert result.stdout.strip() not in ("", old)


def test_empty_prompt_is_a_usage_error(rig: Rig) -> None:
    result = rig.cli("ask", "   ")
    assert result.code == 2, result
    assert "empty" in result.stderr


def test_json_and_quiet_together_is_a_usage_error(rig: Rig) -> None:
    result = rig.cli("up", "--json", "-q")
    assert result.code == 2, result
