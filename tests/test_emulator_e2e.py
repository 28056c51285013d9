"""The tool against the emulator's Daytona-as-its-source-answers paths, end to end: the errors
and states of tests/fakes/DAYTONA.md that a user's command meets."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.e2e import Rig
from tests.fakes.model import msg, turn

pytestmark = pytest.mark.e2e


def _failed(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in requests if r["status"] >= 400]


def _session_execs(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in requests if r["path"].endswith("/exec") and "/process/session/" in r["path"]]


def test_first_ask_and_ask_after_a_restart_make_their_session_first(rig: Rig) -> None:
    """Daytona answers a command for a missing session with 500 (not 404): a fresh sandbox's
    first ask and the ask that starts a stopped sandbox make the session first, and no
    request fails."""
    assert rig.cli("up").code == 0
    rig.model.enqueue(turn(msg("first")), turn(msg("after restart")), turn(msg("warm")))
    since = time.time()
    first = rig.cli("ask", "-q", "hello")
    assert (first.code, first.stdout) == (0, "first\n"), first
    first_requests = rig.round_trips(since)
    assert _failed(first_requests) == [], first_requests
    assert len(_session_execs(first_requests)) == 1, first_requests

    sandbox_id = rig.record()["sandbox_id"]
    rig.emulator.stop_sandbox(sandbox_id)
    since = time.time()
    again = rig.cli("ask", "-q", "again")
    assert (again.code, again.stdout) == (0, "after restart\n"), again
    restart_requests = rig.round_trips(since)
    assert _failed(restart_requests) == [], restart_requests
    assert (rig.sandbox(sandbox_id) or {}).get("state") == "started"

    since = time.time()
    warm = rig.cli("ask", "-q", "warm")
    assert (warm.code, warm.stdout) == (0, "warm\n"), warm
    warm_requests = rig.round_trips(since)
    assert _failed(warm_requests) == [], warm_requests
    # The first ask costs one request more than a warm one: creating its session, nothing else.
    created = [r for r in first_requests if r["path"].endswith("/process/session") and r["method"] == "POST"]
    assert len(created) == 1 and len(first_requests) == len(warm_requests) + 1, (first_requests, warm_requests)


def test_ask_after_someone_else_restarted_the_sandbox_makes_the_lost_session(rig: Rig) -> None:
    """The sandbox was stopped and started behind the tool's back: its session is gone, and
    Daytona's 500 "failed to execute command: session not found" makes the tool create it."""
    assert rig.cli("up").code == 0
    rig.model.enqueue(turn(msg("one")), turn(msg("two")))
    assert rig.cli("ask", "-q", "one").code == 0
    sandbox_id = rig.record()["sandbox_id"]
    rig.emulator.stop_sandbox(sandbox_id)
    assert rig.cli("status").code == 0  # looks, starts nothing
    rig.emulator.start_sandbox(sandbox_id)
    since = time.time()
    result = rig.cli("ask", "-q", "two")
    assert (result.code, result.stdout) == (0, "two\n"), result
    misses = _failed(rig.round_trips(since))
    assert [(r["status"], r["path"].rsplit("/", 1)[-1]) for r in misses] == [(500, "exec")], misses
