"""The sandbox's first turn as fast as the next: `up` has the agent daemon start Codex's
app-server and a new thread ahead of the first turn, which uses that thread only when it
would have started a new thread with the same settings. (That `up` makes the session turns
run in, so the first ask is a warm ask's two requests: tests/test_emulator_e2e.py.)"""

from __future__ import annotations

import json

import pytest

from tests.e2e import Rig
from tests.fakes.model import msg, turn
from tests.test_lifecycle import Terminal

pytestmark = pytest.mark.e2e


def _prepared_thread(rig: Rig) -> str:
    """The id of the thread `up` had the daemon prepare, from the agent's debug log."""
    log = rig.emulator.home_dir(rig.record()["sandbox_id"]) / ".codex-daytona" / "agent.log"
    replies = [
        json.loads(line.split("prepare: ", 1)[1].rsplit(" in ", 1)[0])
        for line in log.read_text().splitlines()
        if line.startswith("prepare: ")
    ]
    assert len(replies) == 1 and replies[0]["prepared"], replies
    return str(replies[0]["thread_id"])


def _thread_of(rig: Rig, *args: str, answer: str) -> str:
    """Runs `ask --json ARGS` answered `answer`; the thread its turn ran on (thread.started)."""
    rig.model.enqueue(turn(msg(answer)))
    result = rig.cli("ask", "--json", *args, answer)
    assert result.code == 0, result
    started = [e["thread_id"] for e in result.json_lines if e.get("type") == "thread.started"]
    assert len(started) == 1, result
    return str(started[0])


def test_the_first_ask_runs_on_the_thread_up_prepared_and_only_it(rig: Rig) -> None:
    """The thread `up` prepared is the first turn's, whose id the state file then keeps; it
    serves that turn only: the next turn continues it (resumed as any), and a turn asking for
    a new thread gets one of its own."""
    assert rig.cli("up").code == 0
    prepared = _prepared_thread(rig)
    assert "thread_id" not in rig.record()  # up keeps no thread: the first turn's is the one
    assert _thread_of(rig, answer="first") == prepared
    assert rig.record()["thread_id"] == prepared
    assert _thread_of(rig, answer="second") == prepared
    fresh = _thread_of(rig, "--new-thread", answer="fresh")
    assert fresh != prepared
    assert rig.record()["thread_id"] == fresh


@pytest.mark.parametrize(
    "args",
    [["--model", "gpt-other"], ["--effort", "low"], ["-c", "model_verbosity=low"], ["--new-thread"]],
    ids=["model", "effort", "config", "new-thread"],
)
def test_a_first_ask_the_prepared_thread_does_not_fit_starts_its_own(rig: Rig, args: list[str]) -> None:
    """A first turn with settings other than those the thread was prepared with (another
    model or effort, a Codex setting, `--new-thread`) starts a thread of its own, as it did
    before any was prepared; the prepared one is dropped, not kept for a later turn."""
    assert rig.cli("up").code == 0
    prepared = _prepared_thread(rig)
    own = _thread_of(rig, *args, answer="own")
    assert own != prepared
    assert rig.record()["thread_id"] == own
    if args[0] == "--model":
        assert rig.model.model_requests[-1]["body"]["model"] == "gpt-other"
    assert _thread_of(rig, "--new-thread", answer="later") not in (prepared, own)


def test_chat_s_first_prompt_runs_on_the_thread_prepared_for_it(rig: Rig) -> None:
    """`chat` in a directory with no sandbox makes one as `up` does: its first prompt runs on
    the thread prepared there."""
    rig.model.enqueue(turn(msg("Answer one.")))
    term = Terminal(rig, "chat", "--keep")
    term.read_until("User: ")
    term.send("make something\r")
    term.read_until("Answer one.")
    term.read_until("User: ")
    assert rig.record()["thread_id"] == _prepared_thread(rig)
    term.send("exit\r")
    assert term.wait() == 0, term.text()


def test_instructions_pushed_after_up_reach_the_first_turn(rig: Rig) -> None:
    """Codex reads AGENTS.md into a thread as it starts it: an AGENTS.md that arrives after
    `up` prepared the thread (a `push`, `up --repo`'s clone) makes the first turn start a new
    thread, which has it."""
    assert rig.cli("up").code == 0
    prepared = _prepared_thread(rig)
    (rig.project / "AGENTS.md").write_text("Always answer in French. AGENTS-PUSHED-41c2\n")
    assert rig.cli("push").code == 0
    first = _thread_of(rig, answer="bonjour")
    assert first != prepared
    assert "AGENTS-PUSHED-41c2" in json.dumps(rig.model.model_requests[-1]["body"]["input"])
