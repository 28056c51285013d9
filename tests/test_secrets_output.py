"""The keys in no output: every command that can print one, in every output mode, its exit
code checked, and the key replaced by *** where it would have been."""

from __future__ import annotations

import pytest

from tests.e2e import DAYTONA_KEY, OPENAI_KEY, Result, Rig
from tests.fakes.model import error, msg, run, turn

pytestmark = pytest.mark.e2e


def _masked(result: Result, *, expect_mask: bool = True) -> None:
    text = result.stdout + result.stderr
    assert OPENAI_KEY not in text and DAYTONA_KEY not in text, result
    if expect_mask:
        assert "***" in text, f"the key was not shown masked: {result}"


def test_no_key_in_any_output_mode_of_any_command(rig: Rig) -> None:
    assert rig.cli("up", "-q").code == 0
    leak = f"echo leaked {OPENAI_KEY} {DAYTONA_KEY}"

    # ask, in each mode: the key in a command's output and in the answer.
    modes: tuple[tuple[str, ...], ...] = ((), ("--json",), ("-q",))
    for mode in modes:
        rig.model.enqueue(turn(run(leak)), turn(msg(f"the key is {OPENAI_KEY}")))
        result = rig.cli("ask", *mode, "leak it")
        assert result.code == 0, result
        _masked(result)
    run_id = rig.record()["last_turn"]["run_id"]

    # logs and logs -f of that turn, in each mode.
    logs_args: tuple[tuple[str, ...], ...] = (
        ("logs", run_id),
        ("logs", "--json", run_id),
        ("logs", "-q", run_id),
        ("logs", "-f", run_id),
    )
    for args in logs_args:
        result = rig.cli(*args)
        assert result.code == 0, result
        _masked(result)

    # exec, in each mode: the command prints both keys.
    for mode in modes:
        result = rig.cli("exec", *mode, "--", f"echo {OPENAI_KEY}; echo {DAYTONA_KEY} >&2")
        assert result.code == 0, result
        _masked(result)

    # status and preview, in each mode (nothing to mask: they must simply not carry a key).
    for args in (("status",), ("status", "--json"), ("status", "-q"), ("preview",), ("preview", "--json")):
        result = rig.cli(*args)
        assert result.code == 0, result
        _masked(result, expect_mask=False)

    # The error path: a model that echoes the key in its 401 (as OpenAI's does, in part).
    for mode in ((), ("--json",), ("-q",)):
        rig.model.enqueue(*[error(401, f"Incorrect API key provided: {OPENAI_KEY}") for _ in range(12)])
        result = rig.cli("ask", *mode, "fail")
        assert result.code == 3, result
        _masked(result)
        rig.model.clear()


def test_no_key_in_fanout_output(rig: Rig) -> None:
    assert rig.cli("up", "-q").code == 0
    for mode in ((), ("--json",)):
        rig.model.enqueue(*[turn(msg(f"sibling says {OPENAI_KEY}")) for _ in range(2)])
        result = rig.cli("ask", "--fanout", "2", "--new-thread", *mode, "leak it")
        assert result.code == 0, result
        _masked(result, expect_mask=mode == ())
        assert rig.cli("down", "--others", "--yes").code == 0


def test_no_key_in_chat(rig: Rig) -> None:
    from tests.test_lifecycle import Terminal

    rig.model.enqueue(turn(run(f"echo leaked {OPENAI_KEY}")), turn(msg(f"the key is {OPENAI_KEY}")))
    term = Terminal(rig, "chat")
    term.read_until("User: ")
    term.send("leak it\r")
    term.read_until("the key is")
    term.read_until("User: ")
    term.send("\x04")  # Ctrl-D
    assert term.wait() == 0, term.text()
    assert OPENAI_KEY not in term.text() and DAYTONA_KEY not in term.text()
    assert "the key is ***" in term.text()
