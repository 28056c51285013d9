"""The output layer, on captured real Codex event streams: what a person sees, what a
script gets, and that a secret never gets out."""

from __future__ import annotations

import io
import json
import os
import re
import time
from pathlib import Path

import pytest

from codex_daytona import events as ev
from codex_daytona.output import Mode, Output
from tests.e2e import last_answer

FIXTURES = Path(__file__).parent / "fixtures" / "codex-exec-json"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _events(name: str) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines() if line.strip()]


def _render(mode: Mode, events: list[dict], secrets: list[str] | None = None) -> tuple[str, str]:  # type: ignore[type-arg]
    stdout, stderr = io.StringIO(), io.StringIO()
    out = Output(mode, secrets=secrets, stdout=stdout, stderr=stderr)
    for event in events:
        out.event(event)
    out.final_answer(last_answer(events))
    return stdout.getvalue(), stderr.getvalue()


def test_human_rendering_of_a_real_turn() -> None:
    stdout, stderr = _render(Mode.HUMAN, _events("e2e.jsonl"))
    lines = stderr.splitlines()
    # Commands are shown when they start and resolved when they end, with the exit code.
    # Codex reports each command as `/bin/bash -lc "<script>"`: people are shown the script.
    assert "🔨 Run: ls -la && printf 'hello from shell\\n' > shell_out.txt && cat shell_out.txt" in lines, lines
    assert "-lc" not in stderr
    assert "   ✓ (exit 0)" in lines
    assert "   ✗ (exit 3)" in lines
    assert any("│ to-stderr" in line for line in lines), "the tail of a failed command's output"
    assert "📝 Add /home/daytona/patched.txt" in stderr and "📝 Update /home/daytona/shell_out.txt" in stderr
    assert "🗒️  To-do list (0/2):" in stderr and "🗒️  To-do list (2/2):" in stderr
    assert "[x] Inspect dir" in stderr and "[ ] Write files" in stderr
    assert "💭 I'll plan, then run a shell command." in stderr
    assert "Now applying a patch and running a failing command." in stderr  # not the last message
    assert "Tokens: 1,000 in (100 cached) · 28 out (12 reasoning)" in stderr
    summary = next(line for line in lines if line.startswith("Turn done in "))
    assert summary.endswith(" s · 2 files changed · 2 commands, 1 failed")
    # The final answer is the result: on stdout, and only there.
    assert stdout == "All done: created shell_out.txt and patched.txt.\n"
    assert "All done" not in stderr
    # Not a terminal: no escape codes, no spinner frames, nothing drawn twice.
    assert not ANSI.search(stderr)
    assert stderr.count("Run: echo to-stderr >&2; exit 3") == 1


def test_web_search_and_failed_turn() -> None:
    _, stderr = _render(Mode.HUMAN, _events("websearch.jsonl"))
    assert "🌐 Web search: codex offline fake" in stderr
    _, stderr = _render(Mode.HUMAN, _events("r0-failed.jsonl"))
    assert "❌ Error: stream disconnected before completion" in stderr
    assert "❌ Turn failed:" in stderr


def test_json_mode_passes_every_event_through() -> None:
    events = _events("e2e.jsonl")
    stdout = io.StringIO()
    out = Output(Mode.JSON, stream_events=True, stdout=stdout, stderr=io.StringIO())
    for event in events:
        out.event(event)
    assert [json.loads(line) for line in stdout.getvalue().splitlines()] == events


def test_quiet_mode_prints_only_the_answer() -> None:
    stdout, stderr = _render(Mode.QUIET, _events("e2e.jsonl"))
    assert stdout == "All done: created shell_out.txt and patched.txt.\n"
    assert stderr == ""


def test_secrets_are_masked_in_every_mode() -> None:
    secret = "sk-very-secret-0123456789"
    event = {"type": "item.completed", "item": {"id": "1", "type": "agent_message", "text": f"key={secret}"}}
    for mode in Mode:
        stdout, stderr = io.StringIO(), io.StringIO()
        out = Output(mode, stream_events=True, secrets=[secret], stdout=stdout, stderr=stderr)
        out.event(event)
        out.final_answer(last_answer([event]))
        out.error(f"failed with {secret}", f"hint {secret}")
        assert secret not in stdout.getvalue() + stderr.getvalue(), mode
        assert "***" in stdout.getvalue() + stderr.getvalue()


class _Terminal(io.StringIO):
    """A stream that says it is a terminal, as a person's stderr does."""

    def isatty(self) -> bool:
        return True


def _colours(text: str) -> list[str]:
    """The SGR escape sequences in `text` that set a colour (bold or dim are no colour)."""

    def colour(code: str) -> bool:
        n = int(code or 0)
        return 30 <= n <= 49 or 90 <= n <= 107

    return [m.group(0) for m in re.finditer(r"\x1b\[([0-9;]*)m", text) if any(map(colour, m.group(1).split(";")))]


def _warned(stderr: io.StringIO) -> str:
    out = Output(Mode.HUMAN, stdout=io.StringIO(), stderr=stderr)
    out.warning("careful")
    out.error("broken", "fix it")
    return stderr.getvalue()


def test_colour_only_on_a_terminal_and_never_with_no_color(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.delenv("NO_COLOR", raising=False)  # conftest sets it for every test
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)
    coloured = _warned(_Terminal())
    assert _colours(coloured), coloured  # a terminal gets colour: the checks below can fail
    piped = _warned(io.StringIO())
    assert not ANSI.search(piped), piped  # a pipe gets no escape code at all
    assert "Error: broken" in piped and "Hint: fix it" in piped
    monkeypatch.setenv("NO_COLOR", "1")
    plain = _warned(_Terminal())
    assert not _colours(plain), plain  # NO_COLOR: bold and dim may stay, colour goes
    assert "Error: broken" in ANSI.sub("", plain) and "Hint: fix it" in ANSI.sub("", plain)


def test_text_being_written_is_not_printed_twice_off_a_terminal() -> None:
    partial = {"type": "item.updated", "item": {"id": "m", "type": "agent_message", "text": "Half a sen"}}
    done = {"type": "item.completed", "item": {"id": "m", "type": "agent_message", "text": "Half a sentence."}}
    stdout, stderr = _render(Mode.HUMAN, [{"type": "turn.started"}, partial, done])
    assert "Half a sen" not in stderr
    assert stdout == "Half a sentence.\n"


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        ("/bin/bash -lc 'npm install'", "npm install"),
        ("/usr/bin/zsh -c 'echo \"a b\"'", 'echo "a b"'),
        ("bash -lc 'a' extra", "bash -lc 'a' extra"),  # not the shell wrapper alone: as it is
        ("/usr/bin/python3 -c 'print(1)'", "/usr/bin/python3 -c 'print(1)'"),
        ("/bin/bash -lc 'unterminated", "/bin/bash -lc 'unterminated"),
        ("", ""),
    ],
)
def test_a_command_is_shown_as_its_script_without_codexs_shell_wrapper(command: str, shown: str) -> None:
    assert ev.command_text({"command": command}) == shown


@pytest.mark.parametrize(
    ("ci", "live"), [(None, True), ("", True), ("false", True), ("0", True), ("true", False), ("1", False)]
)
def test_live_displays_are_off_in_ci_and_on_where_ci_says_it_is_not(monkeypatch, ci: str | None, live: bool) -> None:  # type: ignore[no-untyped-def]
    """CI services set CI (true, 1): a terminal there is a log, not a person. CI=false is not CI."""
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    assert Output(Mode.HUMAN, stdout=io.StringIO(), stderr=_Terminal()).live_terminal is live
    assert not Output(Mode.HUMAN, stdout=io.StringIO(), stderr=io.StringIO()).live_terminal


def test_read_line_reads_a_line_at_a_time_leaves_the_rest_and_ends_with_eoferror() -> None:
    from codex_daytona.output import read_line

    r, w = os.pipe()
    os.write(w, "first\nsecond ünï\nlast".encode())
    os.close(w)
    with open(r, encoding="utf-8") as stream:
        assert read_line(stream) == "first"
        assert os.read(r, 0) == b""  # (the fd is still open)
        assert read_line(stream) == "second ünï"
        assert read_line(stream) == "last"
        with pytest.raises(EOFError):
            read_line(stream)


def test_read_line_runs_a_signal_handler_that_comes_while_it_waits() -> None:
    """The handler raises out of the wait, even with no input at all; the wakeup fd is put back."""
    import signal
    import threading

    from codex_daytona.output import read_line

    class Ended(Exception):
        pass

    def end(_signum: int, _frame: object) -> None:
        raise Ended

    r, w = os.pipe()
    previous = signal.signal(signal.SIGUSR1, end)
    before = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(before)
    # To another thread, as when the kernel hands the signal to one of the SDK's threads: its
    # handler only marks it pending, for the main thread to run. A line comes after 10 s, so
    # that a wait the signal does not end fails here instead of hanging.
    timer = threading.Timer(0.2, lambda: signal.pthread_kill(threading.get_ident(), signal.SIGUSR1))
    late = threading.Timer(10, lambda: os.write(w, b"a line\n"))
    try:
        timer.start()
        late.start()
        started = time.monotonic()
        with open(r, encoding="utf-8") as stream, pytest.raises(Ended):
            read_line(stream)
        assert time.monotonic() - started < 5, "the signal waited for the line"
    finally:
        timer.cancel()
        late.cancel()
        signal.signal(signal.SIGUSR1, previous)
        os.close(w)
    assert signal.set_wakeup_fd(before) == before
