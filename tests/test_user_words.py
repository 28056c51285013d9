"""What a user reads names only things a user can know: no word from the project's own
making-of (its planning notes, the prototype it grew from, its issue tracker) in `--help` of
any command or in the README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from codex_daytona.cli import app

README = Path(__file__).resolve().parent.parent / "README.md"
COMMANDS = sorted(c.name or c.callback.__name__ for c in app.registered_commands)  # type: ignore[union-attr]

# Words that mean something only inside the project: "the seed" (the prototype this tool grew
# from; name Daytona's TypeScript Codex guide instead), its planning notes and trackers.
INTERNAL = [
    r"\bseed\b",
    r"\bseed's\b",
    r"\bbrief\b",
    r"\bpreamble\b",
    r"\bworktree\b",
    r"\bthe lead\b",
    r"\bengineers?\b",
    r"\bhouse style\b",
    r"\bshared/notes\b",
    r"\bissue #\d+",
    r"\bCHOSEN\b",  # a parameter's name where the user types NAME
]


def internal_words(text: str) -> list[str]:
    found = []
    for pattern in INTERNAL:
        for match in re.finditer(pattern, text, re.IGNORECASE if pattern != r"\bCHOSEN\b" else 0):
            line = text[: match.start()].count("\n") + 1
            found.append(f"line {line}: {match.group(0)!r}")
    return found


def _help(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"})
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_no_internal_words_in_help(command: str) -> None:
    text = _help(*([command] if command else []))
    assert not internal_words(text), f"`{command or 'codex-daytona'} --help`: {internal_words(text)}"


def test_no_internal_words_in_the_readme() -> None:
    assert not internal_words(README.read_text()), internal_words(README.read_text())


def test_the_word_list_catches_what_it_names() -> None:
    assert internal_words("like the seed's REPL") and internal_words("Against the seed (measured")
    assert internal_words("Make sandbox CHOSEN the default")
    assert not internal_words("Daytona's TypeScript Codex guide; seeded random")
