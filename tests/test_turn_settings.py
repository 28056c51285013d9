"""Per-turn settings that take effect on a warm thread: `--model` and `--effort` reach the
model's request (recorded by the scripted model), for `ask` and `chat`, and stay for the
thread's later turns, as in Codex."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e import Rig
from tests.fakes.model import msg, turn

pytestmark = pytest.mark.e2e


def last_request(rig: Rig) -> dict[str, Any]:
    body: dict[str, Any] = rig.model.model_requests[-1]["body"]
    return body


def effort(body: dict[str, Any]) -> str | None:
    reasoning = body.get("reasoning") or {}
    return reasoning.get("effort")


def test_model_and_effort_apply_from_the_turn_they_are_given_on(rig: Rig) -> None:
    rig.model.enqueue(turn(msg("first")))
    first = rig.cli("ask", "one")
    assert first.code == 0, first
    assert last_request(rig)["model"] == "gpt-5.5"  # CODEX_DAYTONA_MODEL: the thread starts with it
    assert effort(last_request(rig)) != "xhigh"
    pid_before = rig.record()

    # The app-server has this thread loaded now: the turn call itself carries the settings.
    # Switching models, Codex first sends the thread's context once more with the old model
    # (to hand it over), then the turn goes to the new one.
    rig.model.enqueue(turn(msg("handover")), turn(msg("second")))
    second = rig.cli("ask", "--model", "gpt-6-sol", "--effort", "xhigh", "two")
    assert second.code == 0, second
    assert last_request(rig)["model"] == "gpt-6-sol"
    assert effort(last_request(rig)) == "xhigh"
    assert rig.record()["thread_id"] == pid_before["thread_id"], "the same thread"

    # A later turn without them keeps them, as Codex does.
    rig.model.enqueue(turn(msg("third")))
    third = rig.cli("ask", "three")
    assert third.code == 0, third
    assert last_request(rig)["model"] == "gpt-6-sol" and effort(last_request(rig)) == "xhigh"

    # chat takes them too.
    rig.model.enqueue(turn(msg("handover")), turn(msg("fourth")))
    chat = rig.cli("chat", "--model", "gpt-5.5", "--effort", "low", input="four\nexit\n")
    assert chat.code == 0, chat
    assert "fourth" in chat.stdout
    assert last_request(rig)["model"] == "gpt-5.5" and effort(last_request(rig)) == "low"
    assert rig.model.remaining() == []


def test_an_unknown_effort_is_a_usage_error_before_anything_runs(rig: Rig) -> None:
    refused = rig.cli("ask", "--effort", "extreme", "hi")
    assert refused.code == 2, refused
    assert "xhigh" in refused.stderr  # the valid values are named
    assert rig.record() == {} and rig.model.model_requests == []


def test_c_sets_a_codex_setting_for_the_turn(rig: Rig) -> None:
    rig.model.enqueue(turn(msg("plain")))
    first = rig.cli("ask", "one")
    assert first.code == 0, first
    assert (last_request(rig).get("reasoning") or {}).get("summary") != "detailed"

    rig.model.enqueue(turn(msg("detailed")))
    second = rig.cli("ask", "-c", "model_reasoning_summary=detailed", "-c", 'model_verbosity="low"', "two")
    assert second.code == 0, second
    body = last_request(rig)
    assert body["reasoning"]["summary"] == "detailed", body.get("reasoning")
    assert body["text"]["verbosity"] == "low", body.get("text")
    assert "two" in json.dumps(body["input"]) and "one" in json.dumps(body["input"]), "the same thread"

    # For that turn only: the next one is back to Codex's defaults.
    rig.model.enqueue(turn(msg("plain again")))
    third = rig.cli("ask", "three")
    assert third.code == 0, third
    assert (last_request(rig).get("reasoning") or {}).get("summary") != "detailed"


@pytest.mark.parametrize(
    "pair",
    [
        "model_provider=evil",
        'model_providers.codex-daytona.base_url="http://evil.example/v1"',
        'shell_environment_policy.inherit="all"',
        'sandbox_mode="read-only"',
    ],
)
def test_c_refuses_the_tools_own_settings_before_anything_runs(rig: Rig, pair: str) -> None:
    before = len(rig.emulator.sandboxes())
    refused = rig.cli("ask", "-c", pair, "hi")
    assert refused.code == 2, refused
    assert "codex-daytona sets itself" in refused.stderr and "Hint:" in refused.stderr, refused
    assert "Traceback" not in refused.stderr
    assert rig.record() == {} and len(rig.emulator.sandboxes()) == before and rig.model.model_requests == []
