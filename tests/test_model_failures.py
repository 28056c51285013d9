"""Model endpoint failures end the turn in bounded time, with the model's error and exit 3,
and leave the sandbox and thread ready for the next ask."""

from __future__ import annotations

import time

import pytest

from tests.e2e import Rig, free_port
from tests.fakes.model import error, fail, hang, msg, turn

pytestmark = pytest.mark.e2e

FAST = {"CODEX_DAYTONA_MODEL_TIMEOUT_SECONDS": "4"}


def _ask(rig: Rig, env: dict[str, str] | None = None) -> tuple[int, str, float]:
    started = time.monotonic()
    result = rig.cli("ask", "hello", env={**FAST, **(env or {})}, timeout=180)
    assert "Traceback" not in result.stderr, result
    return result.code, result.stderr, time.monotonic() - started


@pytest.fixture
def ready(rig: Rig) -> Rig:
    assert rig.cli("up").code == 0
    return rig


def _next_ask_works(rig: Rig, failed_prompt: str = "hello") -> None:
    """The sandbox and the thread are fine after the failure: the next ask completes on the
    same thread, and the model is sent the failed turn's prompt with the history."""
    rig.model.clear()  # the failure's unused answers
    history = rig.ask_on_same_thread("are you back?", "back")
    assert failed_prompt in history and "are you back?" in history


def test_rate_limited(ready: Rig) -> None:
    ready.model.enqueue(*[error(429, "Rate limit reached for requests") for _ in range(20)])
    code, stderr, took = _ask(ready)
    assert code == 3 and "429" in stderr, stderr
    assert took < 90
    _next_ask_works(ready)


def test_server_error(ready: Rig) -> None:
    ready.model.enqueue(*[error(500, "boom") for _ in range(20)])
    code, stderr, took = _ask(ready)
    assert code == 3, stderr
    assert "turn failed" in stderr.lower()
    assert took < 90
    _next_ask_works(ready)


def test_stream_failed(ready: Rig) -> None:
    ready.model.enqueue(*[fail("scripted response.failed") for _ in range(5)])
    code, stderr, _ = _ask(ready)
    assert code == 3 and "scripted response.failed" in stderr, stderr
    _next_ask_works(ready)


def test_unreachable_endpoint(ready: Rig) -> None:
    port = free_port()
    code, stderr, took = _ask(ready, {"SANDBOX_OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1"})
    assert code == 3, stderr
    assert took < 90
    _next_ask_works(ready)  # back on the endpoint that answers


@pytest.mark.parametrize("before_headers", [True, False], ids=["no-headers", "stalled-stream"])
def test_endpoint_that_never_answers(ready: Rig, before_headers: bool) -> None:
    ready.model.enqueue(*[hang(before_headers=before_headers) for _ in range(3)])
    code, stderr, took = _ask(ready)
    assert code == 3, stderr
    assert "did not answer" in stderr or "idle" in stderr, stderr
    assert took < 60
    # The sandbox and the thread are fine: the next turn works.
    ready.model.stop()  # frees the hung connections
    ready.model.start()
    ready.model.enqueue(turn(msg("back")))
    result = ready.cli("ask", "again", env={"SANDBOX_OPENAI_BASE_URL": ready.model.base_url})
    assert result.code == 0, result
