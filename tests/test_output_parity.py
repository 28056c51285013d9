"""The output layer on the agent's exec-parity stream: what a person sees of exec's warnings,
retries, sub-agent calls and interrupts and of our own `codex_daytona.*` lines, and that
--exec-json prints exactly exec's lines."""

from __future__ import annotations

import io
import json
from typing import Any

from codex_daytona.output import Mode, Output
from tests.e2e import last_answer

THREAD = {"type": "thread.started", "thread_id": "t-1", "ts": 100.0}
COMMAND = {"id": "item_1", "type": "command_execution", "command": "/bin/bash -lc 'make'", "aggregated_output": ""}
TURN: list[dict[str, Any]] = [
    THREAD,
    {
        "type": "item.completed",
        "item": {"id": "item_0", "type": "error", "message": "Model metadata for `m` not found."},
    },
    {"type": "turn.started", "ts": 100.0},
    {"type": "error", "message": "Reconnecting... 1/2 (We're currently experiencing high demand.)", "ts": 101.0},
    {"type": "codex_daytona.text", "item_type": "agent_message", "text": "Work", "ts": 101.5},
    {"type": "item.started", "item": {**COMMAND, "exit_code": None, "status": "in_progress"}, "ts": 102.0},
    {"type": "codex_daytona.item.details", "item_id": "item_1", "duration_ms": 2500, "ts": 104.5},
    {"type": "item.completed", "item": {**COMMAND, "exit_code": 0, "status": "completed"}, "ts": 104.5},
    {
        "type": "item.started",
        "item": {
            "id": "item_2",
            "type": "file_change",
            "changes": [{"path": "/h/a.py", "kind": "add"}],
            "status": "in_progress",
        },
    },
    {
        "type": "codex_daytona.item.details",
        "item_id": "item_2",
        "changes": [{"path": "/h/a.py", "added": 3, "removed": 0}],
    },
    {
        "type": "item.completed",
        "item": {
            "id": "item_2",
            "type": "file_change",
            "changes": [{"path": "/h/a.py", "kind": "add"}],
            "status": "completed",
        },
    },
    {
        "type": "item.completed",
        "item": {
            "id": "item_3",
            "type": "collab_tool_call",
            "tool": "spawn_agent",
            "sender_thread_id": "t-1",
            "receiver_thread_ids": ["t-2"],
            "prompt": "Review the tests",
            "agents_states": {},
            "status": "completed",
        },
    },
    {"type": "item.completed", "item": {"id": "item_4", "type": "agent_message", "text": "Work done."}},
    {
        "type": "codex_daytona.turn.usage",
        "usage": {"input_tokens": 300, "cached_input_tokens": 100, "output_tokens": 30, "reasoning_output_tokens": 10},
    },
    {
        "type": "turn.completed",
        "usage": {
            "input_tokens": 5000,
            "cached_input_tokens": 100,
            "cache_write_input_tokens": 0,
            "output_tokens": 90,
            "reasoning_output_tokens": 10,
        },
        "ts": 110.0,
    },
    {"type": "codex_daytona.ports", "listening": [], "new": []},
]


def _render(mode: Mode, events: list[dict[str, Any]], exec_only: bool = False) -> tuple[str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    out = Output(mode, stream_events=mode is Mode.JSON, exec_only=exec_only, stdout=stdout, stderr=stderr)
    for event in events:
        out.event(event)
    if mode is not Mode.JSON:
        out.final_answer(last_answer(events))
    return stdout.getvalue(), stderr.getvalue()


def test_a_person_sees_warnings_retries_sub_agents_and_what_exec_leaves_out() -> None:
    stdout, stderr = _render(Mode.HUMAN, TURN)
    lines = stderr.splitlines()
    assert "⚠ Model metadata for `m` not found." in lines
    assert "↻ Reconnecting... 1/2 (We're currently experiencing high demand.)" in lines
    assert not any("Error" in line for line in lines), "a retry or a warning is no error"
    assert "   ✓ (exit 0, 2.5 s)" in lines, "the duration from codex_daytona.item.details"
    assert "📝 Add /h/a.py +3 -0" in lines, "the patch size from codex_daytona.item.details"
    assert "🤖 ✓ Sub-agent spawn_agent → t-2: Review the tests" in lines
    # This turn's own tokens, not exec's running total for the thread.
    assert "Tokens: 300 in (100 cached) · 30 out (10 reasoning)" in lines
    assert "Turn done in 10.0 s · 1 file changed · 1 command" in lines
    assert stdout == "Work done.\n"


def test_an_interrupt_shows_the_command_it_stopped() -> None:
    events: list[dict[str, Any]] = [
        THREAD,
        {"type": "turn.started"},
        {"type": "item.started", "item": {**COMMAND, "exit_code": None, "status": "in_progress"}},
        {"type": "codex_daytona.turn.interrupted", "items": [{**COMMAND, "exit_code": None, "status": "failed"}]},
    ]
    _, stderr = _render(Mode.HUMAN, events)
    lines = stderr.splitlines()
    assert "   ✗ (stopped)" in lines
    assert lines[-1] == "⏹ Turn interrupted"
    assert "Turn failed" not in stderr


def test_exec_json_prints_exactly_exec_lines() -> None:
    stdout, stderr = _render(Mode.JSON, [*TURN, {"type": "codex_daytona.warning", "message": "careful"}], True)
    printed = [json.loads(line) for line in stdout.splitlines()]
    expected = [
        {k: v for k, v in e.items() if k != "ts"} for e in TURN if not str(e["type"]).startswith("codex_daytona.")
    ]
    assert printed == expected
    assert "careful" in stderr, "our warnings go to stderr"
    full, _ = _render(Mode.JSON, TURN)
    assert [json.loads(line) for line in full.splitlines()] == TURN
