"""`ls` at 80 and 120 columns: short ids that never wrap, one line per sandbox, the full ids
in `--json`, the full sandbox ids alone with `-q` (for `codex-daytona ls -q | xargs ...`)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from typer.testing import CliRunner

from codex_daytona.cli import app
from codex_daytona.state import LastTurn, SandboxRecord, Usage
from codex_daytona.usecases import fleet

SANDBOXES = [
    ("default", "7c1e0c9e-5b2a-4d51-9a6f-0c1d2e3f4a5b", "01a21932-9d72-76f2-8d08-9eee4fce39a1", [8080, 5173]),
    ("default-1", "b3f0a6d2-1c4e-4b7a-8e9f-1a2b3c4d5e6f", "01a21932-9e01-7a10-9c3b-5d6e7f8091a2", [3000]),
    # The longest name there can be: the ids still never wrap.
    ("a-feature-branch-with-a-very-long-name-x", "e9d8c7b6-a5f4-4e3d-9c2b-1a0f9e8d7c6b", None, []),
]


def rows() -> list[fleet.SandboxRow]:
    ended = (datetime.now(timezone.utc) - timedelta(minutes=5)).isoformat(timespec="seconds")
    found = []
    for i, (name, sandbox_id, thread_id, ports) in enumerate(SANDBOXES):
        record = SandboxRecord(sandbox_id=sandbox_id, home_dir="/home/daytona", thread_id=thread_id, ports=ports)
        if thread_id:
            record.last_turn = LastTurn(
                run_id="20261202T150000-abcdef",
                started_at=ended,
                ended_at=ended,
                status="completed",
                usage=Usage(input_tokens=12_410, output_tokens=2_950),
            )
        found.append(fleet.SandboxRow(name, record, "started" if i < 2 else "stopped", i == 0))
    return found


def run_ls(monkeypatch: pytest.MonkeyPatch, tmp_path: Any, columns: int, *args: str) -> str:
    monkeypatch.setattr(fleet, "list_sandboxes", lambda ctx: rows())
    env = {"COLUMNS": str(columns), "NO_COLOR": "1", "TERM": "dumb", "CODEX_DAYTONA_STATE_DIR": str(tmp_path)}
    result = CliRunner().invoke(app, ["ls", *args], env=env)
    assert result.exit_code == 0, result.output
    assert result.stderr == "", result.stderr
    return result.stdout


@pytest.mark.parametrize("columns", [80, 120])
def test_ls_shows_short_ids_that_never_wrap_and_fits_the_terminal(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, columns: int
) -> None:
    text = run_ls(monkeypatch, tmp_path, columns)
    lines = text.splitlines()
    assert all(len(line) <= columns and line == line.rstrip() for line in lines), "\n" + text
    for name, sandbox_id, thread_id, ports in SANDBOXES:
        assert name[:19] in text
        # Each sandbox id (its first 8) and thread id (its last 8) whole, on the sandbox's line.
        [line] = [line for line in lines if f" {sandbox_id[:8]} " in f" {line} "]
        if thread_id:
            assert f" {thread_id[-8:]} " in line, "\n" + text
            assert "completed 5m ago" in line, "\n" + text
        assert sandbox_id not in text and (thread_id is None or thread_id not in text), "short ids only"
        assert all(str(p) in text for p in ports)
    header = lines[0].split()
    assert header == ["name", "state", "sandbox", "thread", "last", "turn", "ports"], "\n" + text
    if columns >= 120:
        # Wide enough: one line per sandbox, nothing folded.
        assert len(lines) == 1 + len(SANDBOXES), "\n" + text


def test_even_too_narrow_a_terminal_folds_the_other_columns_not_the_ids(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    text = run_ls(monkeypatch, tmp_path, 50)
    lines = text.splitlines()
    assert all(len(line) <= 50 for line in lines), "\n" + text
    for _, sandbox_id, thread_id, _ in SANDBOXES:
        assert any(f" {sandbox_id[:8]} " in f" {line} " for line in lines), "\n" + text
        assert thread_id is None or any(f" {thread_id[-8:]} " in f" {line} " for line in lines), "\n" + text


def test_ls_json_keeps_the_full_ids_and_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    listed = json.loads(run_ls(monkeypatch, tmp_path, 80, "--json"))["sandboxes"]
    assert [(s["name"], s["sandbox_id"], s.get("thread_id")) for s in listed] == [
        (name, sandbox_id, thread_id) for name, sandbox_id, thread_id, _ in SANDBOXES
    ]
    assert listed[0]["last_turn"]["usage"]["input_tokens"] == 12_410


def test_ls_quiet_prints_the_full_sandbox_ids_and_nothing_else(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    # One whole id a line, no header, no mark, at any width: `codex-daytona ls -q | xargs ...`.
    for columns in (20, 80):
        quiet = run_ls(monkeypatch, tmp_path, columns, "-q")
        assert quiet == "".join(f"{sandbox_id}\n" for _, sandbox_id, _, _ in SANDBOXES), quiet
