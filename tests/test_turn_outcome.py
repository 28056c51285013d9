"""The agent's closing event (protocol.RunCompleted) is decoded in one place,
TurnOutcome.from_completed: every field the agent sends lands in the outcome, and a missing
or garbled one falls back to what the stream showed, or to a sane default."""

from __future__ import annotations

from typing import Any, cast

from agent_bundle import protocol
from codex_daytona.errors import TurnFailedError
from codex_daytona.usecases.turns import TurnOutcome, result_line

USAGE = {"input_tokens": 120, "cached_input_tokens": 20, "output_tokens": 7, "reasoning_output_tokens": 3}


def test_every_field_of_the_closing_event_lands_in_the_outcome() -> None:
    completed = protocol.run_completed(  # as the agent builds it (daemon.execute_run)
        "run-1",
        "busy",
        protocol.EXIT_BUSY,
        thread_id="thread-1",
        error="another turn is running (run run-0)",
        final_message="The answer.",
        usage=USAGE,
        duration_ms=1234,
        running_run_id="run-0",
    )
    outcome = TurnOutcome.from_completed(
        cast(protocol.RunCompleted, completed),
        run_id="run-1",
        sandbox_id="sb-1",
        thread_id="seen-thread",
        final_message="seen message",
    )
    assert outcome == TurnOutcome(
        run_id="run-1",
        status="busy",
        thread_id="thread-1",
        final_message="The answer.",
        error="another turn is running (run run-0)",
        usage=USAGE,
        sandbox_id="sb-1",
        running_run_id="run-0",
    )
    assert outcome.exit_code == 0  # a turn's exit code is its failure's, set by the caller
    outcome.fail(TurnFailedError("The agent's turn failed: boom"))
    line = result_line(TurnFailedError("unused"), outcome)
    assert line["exit_code"] == 3 and line["error"] == "The agent's turn failed: boom"
    assert line["final_message"] == "The answer." and line["thread_id"] == "thread-1" and line["usage"] == USAGE


def test_no_closing_event_yet_is_what_the_stream_showed() -> None:
    outcome = TurnOutcome.from_completed(None, run_id="r", thread_id="t", final_message="so far")
    assert (outcome.status, outcome.thread_id, outcome.final_message) == ("unknown", "t", "so far")
    assert (outcome.error, outcome.usage, outcome.running_run_id) == (None, {}, None)


def test_missing_or_garbled_fields_fall_back() -> None:
    garbled: dict[str, Any] = {
        "type": protocol.RUN_COMPLETED,
        "status": 3,
        "thread_id": ["t"],
        "final_message": None,
        "error": {"message": "x"},
        "usage": {"input_tokens": 5, "output_tokens": "many", "cached": True},
        "running_run_id": 7,
    }
    outcome = TurnOutcome.from_completed(
        cast(protocol.RunCompleted, garbled), run_id="r", thread_id="seen", final_message="seen text"
    )
    assert (outcome.status, outcome.thread_id, outcome.final_message) == ("unknown", "seen", "seen text")
    assert (outcome.error, outcome.running_run_id) == (None, None)
    assert outcome.usage == {"input_tokens": 5}
    not_a_dict = cast(protocol.RunCompleted, {"status": "completed", "usage": "lots", "final_message": ""})
    outcome = TurnOutcome.from_completed(not_a_dict, run_id="r", final_message="last message")
    assert (outcome.status, outcome.usage, outcome.final_message) == ("completed", {}, "last message")
