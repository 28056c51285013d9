"""The contract between the CLI and the agent it runs in the sandbox.

The agent (`agent_bundle/agent.py`) is one standard-library file uploaded as it is, so it
cannot import the package: it keeps its own copy of the protocol version, the key's variable,
the exit codes and the `codex_daytona.*` event names. This test holds the two copies together
(the simplest of the ways to have one contract: no generated code, no second file to upload),
and checks that every request field the CLI sends is one the agent reads, and the reverse.
"""

from __future__ import annotations

import ast
from pathlib import Path

from agent_bundle import agent
from codex_daytona import events
from codex_daytona.errors import ExitCode
from codex_daytona.sandbox import runtime

AGENT_SOURCE = Path(agent.__file__).read_text(encoding="utf-8")
# Fields the agent adds itself, never sent by the CLI: `run_id` from its --run-id argument;
# `op` and `api_key` in the messages between the agent's client and its daemon.
AGENT_FIELDS = {"run_id", "op", "api_key"}


def _agent_tree() -> ast.Module:
    return ast.parse(AGENT_SOURCE)


def _fields_read(tree: ast.Module) -> set[str]:
    """Keys the agent reads from a request: request["x"] and request.get("x")."""
    found = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id == "request"
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, str)
        ):
            found.add(node.slice.value)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "request"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value)
    return found


def _fields_sent() -> set[str]:
    import json

    line = runtime.agent_request(
        prompt="p",
        api_key="k",
        thread_id="t",
        new_thread=False,
        model="m",
        base_url="http://x",
        layout=runtime.Layout("/home/u"),
        images=["/i.png"],
        output_schema={"type": "object"},
        must_resume=True,
    )
    return set(json.loads(line))


def test_protocol_and_key_variable_are_the_same_on_both_sides() -> None:
    assert agent.PROTOCOL == runtime.AGENT_PROTOCOL
    assert agent.KEY_ENV == runtime.KEY_ENV


def test_the_agents_exit_codes_are_the_clis() -> None:
    names = {name.removeprefix("EXIT_"): getattr(agent, name) for name in dir(agent) if name.startswith("EXIT_")}
    assert names, "the agent defines its exit codes as EXIT_*"
    for name, value in names.items():
        assert ExitCode[name] == value, name


def test_every_event_the_agent_names_is_in_the_vocabulary() -> None:
    ours = {value for name, value in vars(events).items() if name.isupper() and isinstance(value, str)}
    named = {
        node.value
        for node in ast.walk(_agent_tree())
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("codex_daytona.")
    }
    assert named, "the agent emits codex_daytona.* events"
    assert named <= ours, sorted(named - ours)


def test_the_request_fields_the_cli_sends_are_the_ones_the_agent_reads() -> None:
    read = _fields_read(_agent_tree()) - AGENT_FIELDS
    sent = _fields_sent()
    assert sent - read == set(), f"sent but never read by the agent: {sorted(sent - read)}"
    assert read - sent == set(), f"read by the agent but never sent: {sorted(read - sent)}"
