"""The command-line surface, in process with Typer's CliRunner: help with an example on
every command, the version, usage errors, and the help text kept as a snapshot."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from codex_daytona import __version__
from codex_daytona.cli import app
from codex_daytona.errors import ExitCode

SNAPSHOTS = Path(__file__).parent / "snapshots"
COMMANDS = sorted(c.name or c.callback.__name__ for c in app.registered_commands)  # type: ignore[union-attr]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _help(runner: CliRunner, *args: str) -> str:
    result = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"})
    assert result.exit_code == 0, result.output
    return result.stdout


def test_version(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"codex-daytona {__version__}"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(runner: CliRunner, command: str) -> None:
    text = _help(runner, command)
    # The example runs this very command (the usage line names the program anyway).
    assert re.search(rf"^\s*Example:.*codex-daytona {re.escape(command)}( |\)|$)", text, re.MULTILINE), text


# Each exit code with its meaning, as the main help prints them (and the README's table says).
EXIT_CODE_MEANINGS = {
    ExitCode.OK: "ok",
    ExitCode.ERROR: "error",
    ExitCode.USAGE: "usage",
    ExitCode.TURN_FAILED: "the agent's turn failed",
    ExitCode.CONFIG: "missing or invalid setting",
    ExitCode.NO_SANDBOX: "no sandbox",
    ExitCode.BUSY: "busy",
    ExitCode.DAYTONA: "Daytona error",
    ExitCode.TIMEOUT: "timeout",
    ExitCode.INTERRUPTED: "interrupted",
}


def test_main_help_lists_the_exit_codes(runner: CliRunner) -> None:
    assert set(EXIT_CODE_MEANINGS) == set(ExitCode), "every exit code has its meaning here"
    text = " ".join(_help(runner).split())
    listed = ", ".join(f"{int(code)} {meaning}" for code, meaning in EXIT_CODE_MEANINGS.items())
    assert f"Exit codes: {listed}." in text, text


def test_help_snapshot(runner: CliRunner) -> None:
    """The help text, kept in tests/snapshots/help.txt. UPDATE_SNAPSHOTS=1 rewrites it."""
    text = f"$ codex-daytona --help\n{_help(runner)}"
    text += "".join(f"\n$ codex-daytona {c} --help\n{_help(runner, c)}" for c in COMMANDS)
    path = SNAPSHOTS / "help.txt"
    if os.environ.get("UPDATE_SNAPSHOTS"):
        path.write_text(text)
    assert text == path.read_text(), "help changed: run with UPDATE_SNAPSHOTS=1 and review the diff"


def test_unknown_option_is_a_usage_error(runner: CliRunner) -> None:
    result = runner.invoke(app, ["ask", "--no-such-option", "x"])
    assert result.exit_code == ExitCode.USAGE
    assert result.stdout == ""


def test_missing_key_is_one_line_on_stderr(runner: CliRunner) -> None:
    result = runner.invoke(app, ["status"])
    assert result.exit_code == ExitCode.OK  # nothing here yet, and nothing needed to say so
    assert "No sandbox here" in result.stdout
    result = runner.invoke(app, ["up"])
    assert result.exit_code == ExitCode.CONFIG
    assert result.stdout == ""
    # One line saying what is wrong, then the hint (where to get each missing setting).
    lines = result.stderr.splitlines()
    assert lines[0] == "Error: DAYTONA_API_KEY is not set.", result.stderr
    assert lines[1].startswith("Hint: DAYTONA_API_KEY: create one at "), result.stderr
    assert not any(line.startswith("Error") for line in lines[1:]), result.stderr
    assert len(lines) <= 3 and "Traceback" not in result.stderr, result.stderr


def test_empty_prompt_from_stdin(runner: CliRunner) -> None:
    result = runner.invoke(app, ["ask", "-"], input="   \n")
    assert result.exit_code == ExitCode.USAGE
    assert "empty" in result.stderr


def test_json_and_quiet_conflict(runner: CliRunner) -> None:
    result = runner.invoke(app, ["status", "--json", "-q"])
    assert result.exit_code == ExitCode.USAGE


def test_status_json_when_nothing_is_up(runner: CliRunner) -> None:
    import json

    result = runner.invoke(app, ["status", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["state"] == "none"


@pytest.mark.parametrize("ttl", ["0", "86401"])
def test_a_signed_link_lasts_between_one_second_and_daytonas_24_hours(runner: CliRunner, ttl: str) -> None:
    result = runner.invoke(app, ["preview", "--signed", "--ttl", ttl])
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "--ttl" in result.output
