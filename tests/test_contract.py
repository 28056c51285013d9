"""The contract between the CLI and the agent it runs in the sandbox.

Both sides import it from one module, `agent_bundle.protocol`, uploaded with the rest of the
agent; mypy holds the fields the CLI sends to `protocol.Request`. What is left to check: that
the CLI's own names are the protocol's, that the CLI sends every field of the request and the
agent reads no other (mypy lets `request.get("x")` by), and that the agent stays a program of
its own (nothing of codex_daytona in it).
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import agent_bundle
from agent_bundle import protocol
from codex_daytona import events
from codex_daytona.errors import ExitCode
from codex_daytona.sandbox import runtime

# Fields the agent adds itself, never sent by the CLI: `run_id` from its --run-id argument,
# `api_key` once the key has been delivered.
AGENT_FIELDS = {"run_id", "api_key"}


def _imports(source: bytes) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def _fields_read(source: bytes) -> set[str]:
    """Keys the agent reads from a request: request["x"] and request.get("x")."""
    found = set()
    for node in ast.walk(ast.parse(source)):
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
    request = json.loads(runtime.agent_request(prompt="p", api_key=None, layout=runtime.Layout("/home/u")))
    assert request["protocol"] == protocol.PROTOCOL
    assert runtime.KEY_ENV == protocol.KEY_ENV


def test_the_agents_exit_codes_are_the_clis() -> None:
    names = {name.removeprefix("EXIT_"): value for name, value in vars(protocol).items() if name.startswith("EXIT_")}
    assert names, "the protocol defines the agent's exit codes as EXIT_*"
    for name, value in names.items():
        assert ExitCode[name] == value, name


def test_every_event_the_agent_names_is_in_the_vocabulary() -> None:
    ours = {value for name, value in vars(events).items() if name.isupper() and isinstance(value, str)}
    named = {v for v in vars(protocol).values() if isinstance(v, str) and v.startswith("codex_daytona.")}
    assert named, "the agent emits codex_daytona.* events"
    assert named <= ours, sorted(named - ours)


def test_the_request_fields_the_cli_sends_are_the_ones_the_agent_reads() -> None:
    read = set(protocol.Request.__annotations__) - AGENT_FIELDS
    sent = _fields_sent()
    assert sent - read == set(), f"sent but never read by the agent: {sorted(sent - read)}"
    assert read - sent == set(), f"read by the agent but never sent: {sorted(read - sent)}"


def test_the_agent_reads_only_the_requests_fields() -> None:
    files = protocol.bundle_files(Path(agent_bundle.__file__).parent)
    read = set().union(*(_fields_read(source) for source in files.values()))
    assert read, "the agent reads its request"
    # `op` is the one field of the client's own messages to its daemon (set_key, ping, interrupt).
    unknown = read - {"op"} - set(protocol.Request.__annotations__)
    assert unknown == set(), sorted(unknown)


def test_the_agent_imports_nothing_of_the_cli_and_the_protocol_only_the_standard_library() -> None:
    files = protocol.bundle_files(Path(agent_bundle.__file__).parent)
    for name, source in files.items():
        foreign = {module for module in _imports(source) if module.split(".")[0] == "codex_daytona"}
        assert not foreign, f"{name} imports {sorted(foreign)}"
    outside = {m for m in _imports(files["protocol.py"]) if m.split(".")[0] not in sys.stdlib_module_names}
    assert outside == set(), outside


def test_what_is_uploaded_is_the_package_and_what_the_fingerprint_covers() -> None:
    files = protocol.bundle_files(Path(agent_bundle.__file__).parent)
    assert {"__main__.py", "protocol.py"} <= set(files)
    assert runtime.agent_files() == files
    layout = runtime.Layout("/home/u")
    assert runtime.agent_upload(layout) == {f"{layout.agent}/{name}": data for name, data in files.items()}
