"""The tool against the emulator's Daytona-as-its-source-answers paths, end to end: the errors
and states of tests/fakes/DAYTONA.md that a user's command meets."""

from __future__ import annotations

import json
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from codex_daytona.errors import ExitCode
from tests.e2e import DAYTONA_KEY, Rig, free_port
from tests.fakes.model import msg, run, turn
from tests.test_hostile import _delete_on_daytona

pytestmark = pytest.mark.e2e


def _failed(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in requests if r["status"] >= 400]


def _session_execs(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in requests if r["path"].endswith("/exec") and "/process/session/" in r["path"]]


# Cold: first contact as a script or CI makes it, every call a process of its own.
@pytest.mark.cold
def test_first_ask_and_ask_after_a_restart_make_their_session_first(rig: Rig) -> None:
    """Daytona answers a command for a missing session with 500 (not 404): a fresh sandbox's
    session is made by `up`, the ask that starts a stopped sandbox makes it first, and no
    request fails but the one that finds the sandbox stopped (the ask does not look the
    sandbox up first: its command's 400 says it is stopped)."""
    assert rig.cli("up").code == 0
    rig.model.enqueue(turn(msg("first")), turn(msg("after restart")), turn(msg("warm")))
    since = time.time()
    first = rig.cli("ask", "-q", "hello")
    assert (first.code, first.stdout) == (0, "first\n"), first
    first_requests = rig.round_trips(since)
    assert _failed(first_requests) == [], first_requests
    assert len(_session_execs(first_requests)) == 1, first_requests

    sandbox_id = rig.record()["sandbox_id"]
    rig.emulator.stop_sandbox(sandbox_id)
    since = time.time()
    again = rig.cli("ask", "-q", "again")
    assert (again.code, again.stdout) == (0, "after restart\n"), again
    restart_requests = rig.round_trips(since)
    assert [(r["status"], r["path"].rsplit("/", 1)[-1]) for r in _failed(restart_requests)] == [(400, "exec")]
    after_start = restart_requests[[r["path"] for r in restart_requests].index(f"/api/sandbox/{sandbox_id}/start") :]
    # The session first (201), then the command (202); the agent, restarted, may then ask for the key.
    assert [r["status"] for r in after_start if r["kind"] == "toolbox"][:2] == [201, 202], restart_requests
    assert (rig.sandbox(sandbox_id) or {}).get("state") == "started"

    # A warm ask: not one sent while the last run still watches for late ports (a `-q` ask
    # does not wait for them, and the next ask then takes a session of its own).
    settling = (rig.record().get("last_turn") or {}).get("settling_until")
    if settling:
        time.sleep(max(0.0, min(15.0, datetime.fromisoformat(settling).timestamp() - time.time())))
    since = time.time()
    warm = rig.cli("ask", "-q", "warm")
    assert (warm.code, warm.stdout) == (0, "warm\n"), warm
    warm_requests = rig.round_trips(since)
    assert _failed(warm_requests) == [], warm_requests
    # The first ask costs what a warm one does: `up` made its session.
    created = [r for r in first_requests if r["path"].endswith("/process/session") and r["method"] == "POST"]
    assert created == [] and len(first_requests) == len(warm_requests), (first_requests, warm_requests)


def _settled(rig: Rig) -> None:
    """Waits until the last run no longer watches for late ports (a `-q` ask does not wait
    for them, and the next ask would then take a session of its own)."""
    settling = (rig.record().get("last_turn") or {}).get("settling_until")
    if settling:
        time.sleep(max(0.0, min(15.0, datetime.fromisoformat(settling).timestamp() - time.time())))


def _trips(requests: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(r["method"], r["kind"], r["path"].rsplit("/", 1)[-1]) for r in requests]


def _ask(rig: Rig, answer: str) -> list[dict[str, Any]]:
    """One `ask -q` answered `answer`; the requests it made."""
    rig.model.enqueue(turn(msg(answer)))
    since = time.time()
    result = rig.cli("ask", "-q", answer)
    assert (result.code, result.stdout) == (0, f"{answer}\n"), result
    return rig.round_trips(since)


WARM_ASK = [("POST", "toolbox", "exec"), ("GET", "ws", "logs")]


def test_a_warm_ask_is_two_requests_its_command_and_its_log(rig: Rig) -> None:
    """On a started sandbox the state file knows, `ask` starts its command and follows its
    log: two requests to Daytona, no look-up (the state file keeps what the SDK needs to
    reach the sandbox). So is the first ask after `up`, which made its session."""
    assert rig.cli("up").code == 0
    assert _trips(_ask(rig, "first")) == WARM_ASK
    _settled(rig)
    assert _trips(_ask(rig, "warm")) == WARM_ASK
    _settled(rig)
    assert _trips(_ask(rig, "warm again")) == WARM_ASK


def _behind_our_back(rig: Rig, sandbox_id: str, method: str, path: str = "") -> None:
    """A call to Daytona's API that is not the tool's (the dashboard, another tool)."""
    request = urllib.request.Request(
        f"{rig.emulator.api_url}/sandbox/{sandbox_id}{path}",
        method=method,
        headers={"Authorization": f"Bearer {DAYTONA_KEY}"},
    )
    urllib.request.urlopen(request, timeout=10).read()


@pytest.mark.parametrize("change", ["stopped", "paused", "moved"])
def test_a_warm_ask_whose_sandbox_changed_behind_its_back_looks_it_up_and_runs(rig: Rig, change: str) -> None:
    """The state file's handle is stale: the sandbox was stopped or paused by someone else,
    or its toolbox answers at another address. The turn's command fails, the ask looks the
    sandbox up (and starts or resumes it), sends its command again and runs; the next ask
    is warm again, at the sandbox's address as Daytona gives it."""
    assert rig.cli("up").code == 0
    sandbox_id = rig.record()["sandbox_id"]
    _ask(rig, "first")
    _settled(rig)
    if change == "stopped":
        rig.emulator.stop_sandbox(sandbox_id)
    elif change == "paused":
        rig.emulator.set_sandbox_class(sandbox_id, "linux-vm")  # Daytona pauses only VM sandboxes
        _behind_our_back(rig, sandbox_id, "POST", "/pause")
        _wait_for_state(rig, sandbox_id, "paused")
    else:
        state_file = Path(rig.env["CODEX_DAYTONA_STATE_DIR"]) / "state.toml"
        toolbox = f"{rig.emulator.base_url}/toolbox"
        moved = f"http://127.0.0.1:{free_port()}/toolbox"  # nothing listens there
        assert toolbox in state_file.read_text()
        state_file.write_text(state_file.read_text().replace(toolbox, moved))
    trips = _ask(rig, "again")
    look_ups = [r for r in trips if r["method"] == "GET" and r["path"] == f"/api/sandbox/{sandbox_id}"]
    assert look_ups, trips
    assert _state(rig, sandbox_id) == "started"
    if change == "moved":
        assert _failed(trips) == [], trips  # the old address did not answer at all
        assert toolbox in (Path(rig.env["CODEX_DAYTONA_STATE_DIR"]) / "state.toml").read_text()
    else:
        # One failed request, the command's: Daytona's toolbox says the sandbox is not started.
        assert [(r["status"], r["path"].rsplit("/", 1)[-1]) for r in _failed(trips)] == [
            (400 if change == "stopped" else 409, "exec")
        ], trips
    _settled(rig)
    assert _trips(_ask(rig, "warm")) == WARM_ASK


def test_a_warm_ask_whose_sandbox_was_deleted_behind_its_back_says_so_and_forgets_it(rig: Rig) -> None:
    """The sandbox the state file's handle describes is gone: the command's 404 is checked
    with a look-up, and the ask ends as one that looked it up first would (exit 5, the
    sandbox forgotten, no traceback)."""
    assert rig.cli("up").code == 0
    sandbox_id = rig.record()["sandbox_id"]
    _ask(rig, "first")
    _settled(rig)
    _behind_our_back(rig, sandbox_id, "DELETE")
    rig.model.enqueue(turn(msg("never")))
    result = rig.cli("ask", "-q", "again")
    assert result.code == 5, result
    assert f"Sandbox {sandbox_id} no longer exists on Daytona (deleted outside codex-daytona)" in result.stderr
    assert "Traceback" not in result.stderr
    assert rig.record() == {}


def test_an_ask_after_our_own_stop_looks_the_sandbox_up_first(rig: Rig) -> None:
    """`down --stop` (or `pause`) drops the handle: the next ask looks the sandbox up and
    starts it, and no request fails."""
    assert rig.cli("up").code == 0
    sandbox_id = rig.record()["sandbox_id"]
    _ask(rig, "first")
    assert rig.cli("down", "--stop").code == 0
    assert "handle" not in rig.record()
    trips = _ask(rig, "again")
    assert _failed(trips) == [], trips
    assert _trips(trips)[0] == ("GET", "api", sandbox_id), trips
    assert _state(rig, sandbox_id) == "started"
    assert "handle" in rig.record()


def test_ask_after_someone_else_restarted_the_sandbox_makes_the_lost_session(rig: Rig) -> None:
    """The sandbox was stopped and started behind the tool's back: its session is gone, and
    Daytona's 500 "failed to execute command: session not found" makes the tool create it."""
    assert rig.cli("up").code == 0
    rig.model.enqueue(turn(msg("one")), turn(msg("two")))
    assert rig.cli("ask", "-q", "one").code == 0
    sandbox_id = rig.record()["sandbox_id"]
    rig.emulator.stop_sandbox(sandbox_id)
    assert rig.cli("status").code == 0  # looks, starts nothing
    rig.emulator.start_sandbox(sandbox_id)
    since = time.time()
    result = rig.cli("ask", "-q", "two")
    assert (result.code, result.stdout) == (0, "two\n"), result
    misses = _failed(rig.round_trips(since))
    assert [(r["status"], r["path"].rsplit("/", 1)[-1]) for r in misses] == [(500, "exec")], misses


# --- changes of state under way: Daytona's starting/stopping, and 409 meanwhile ---------------


def _state(rig: Rig, sandbox_id: str) -> str:
    return str((rig.sandbox(sandbox_id) or {}).get("state"))


def _wait_for_state(rig: Rig, sandbox_id: str, state: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while _state(rig, sandbox_id) != state:
        assert time.monotonic() < deadline, f"sandbox {sandbox_id} is {_state(rig, sandbox_id)}, not {state}"
        time.sleep(0.05)


@pytest.mark.parametrize("command", ["ask", "exec", "logs", "preview"])
def test_a_command_waits_out_a_sandbox_that_auto_stop_is_stopping(rig: Rig, command: str) -> None:
    """Auto-stop has begun stopping the sandbox (`stopping`, during which Daytona answers a
    start with 409) when a command needs it: the command waits for `stopped`, starts it and
    runs, instead of failing. `ask` does not look a sandbox the state file knows up: its
    command meets `stopping` (400, not started), and its look-up then finds it so."""
    rig.model.enqueue(turn(msg("before")))
    assert rig.cli("ask", "-q", "before").code == 0
    sandbox_id = rig.record()["sandbox_id"]
    if command == "ask":
        rig.emulator.set_config(transition_seconds=10.0)  # outlasts the CLI's start
        rig.emulator.begin_stop(sandbox_id)
    else:
        rig.emulator.set_config(transition_seconds=3.0)
        rig.emulator.set_faults(stopping_on_next_get=1)  # the command's look-up finds it `stopping`
    args = {
        "ask": ("ask", "after"),
        "exec": ("exec", "--", "echo", "after"),
        "logs": ("logs", "-q"),
        "preview": ("preview", "--port", "8080", "-q"),
    }[command]
    if command == "ask":
        rig.model.enqueue(turn(msg("after")))
    result = rig.cli(*args)
    assert result.code == 0, result
    if command != "ask":
        assert rig.emulator.faults()["stopping_on_next_get"] == 0, "the fault never struck"
    if command in ("ask", "exec"):  # the others' -q shows no progress
        assert "(it was stopping)" in result.stderr, result
    expected = {"ask": "after\n", "exec": "after\n", "logs": "before\n"}.get(command)
    if expected is not None:
        assert result.stdout == expected, result
    assert _state(rig, sandbox_id) == "started"


def test_ask_waits_out_a_start_answered_409(rig: Rig) -> None:
    """The sandbox is still `stopping` when the tool sends its start: Daytona answers 409
    "Sandbox state change in progress", and the ask waits and starts it once it is stopped."""
    rig.model.enqueue(turn(msg("one")), turn(msg("two")))
    assert rig.cli("ask", "-q", "one").code == 0
    sandbox_id = rig.record()["sandbox_id"]
    rig.emulator.set_config(transition_seconds=2.0)
    # The tool looks at the sandbox (started), then auto-stop begins, then its command: the
    # command finds it not started, and the start that follows meets `stopping`.
    rig.emulator.set_faults(autostop_before_next_command=1)
    since = time.time()
    result = rig.cli("ask", "-q", "two")
    trips = [(r["method"], r["path"].rsplit("/", 2)[-2:], r["status"]) for r in rig.round_trips(since)]
    assert (result.code, result.stdout) == (0, "two\n"), (result, trips)
    assert rig.emulator.faults()["autostop_before_next_command"] == 0, "the fault never struck"
    assert _state(rig, sandbox_id) == "started"
    starts = [r["status"] for r in rig.round_trips(since) if r["path"] == f"/api/sandbox/{sandbox_id}/start"]
    assert starts and starts[-1] == 200, starts


def test_two_commands_starting_one_stopped_sandbox_at_once_both_run(rig: Rig) -> None:
    """Two shells start the same stopped sandbox at the same moment: one start is accepted,
    the other meets `starting` (or a 409) and waits; both commands run."""
    assert rig.cli("up").code == 0
    sandbox_id = rig.record()["sandbox_id"]
    rig.emulator.stop_sandbox(sandbox_id)
    rig.emulator.set_config(transition_seconds=1.5)
    since = time.time()
    procs = [rig.popen_piped("exec", "--", "echo", f"shell-{n}") for n in (1, 2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert [o[0] for o in outputs] == ["shell-1\n", "shell-2\n"], outputs
    starts = [r["status"] for r in rig.round_trips(since) if r["path"] == f"/api/sandbox/{sandbox_id}/start"]
    assert starts.count(200) >= 1 and set(starts) <= {200, 409}, starts
    assert _state(rig, sandbox_id) == "started"


def test_down_all_deletes_a_sandbox_the_lagging_list_does_not_show_yet(rig: Rig) -> None:
    """Daytona's list is eventually consistent: a sandbox just made can be missing from it.
    `down --all` also deletes the sandboxes this directory's state file names."""
    rig.emulator.set_config(list_lag_seconds=600)
    assert rig.cli("up").code == 0
    sandbox_id = rig.record()["sandbox_id"]
    result = rig.cli("down", "--all", "--yes", "--json")
    assert result.code == 0, result
    assert sandbox_id in result.stdout, result
    assert _state(rig, sandbox_id) == "destroyed"
    assert rig.record() == {}


def test_ls_shows_a_sandbox_the_lagging_list_does_not_show_yet(rig: Rig) -> None:
    """Sandboxes just made can be missing from Daytona's list: `ls` looks the state file's
    sandboxes up by id instead of calling them deleted, and one that is gone stays `deleted`."""
    rig.emulator.set_config(list_lag_seconds=600)
    assert rig.cli("up").code == 0
    assert rig.cli("up", "--name", "other").code == 0
    ids = {name: record["sandbox_id"] for name, record in rig.state()["sandboxes"].items()}
    _delete_on_daytona(rig, ids["other"])
    result = rig.cli("ls", "--json")
    assert result.code == 0, result
    rows = json.loads(result.stdout)["sandboxes"]
    assert [(r["name"], r["sandbox_id"], r["state"]) for r in rows] == [
        ("default", ids["default"], "started"),
        ("other", ids["other"], "deleted"),
    ], rows
    assert rig.cli("down", "--name", "other", "--yes").code == 0


def test_the_tool_works_in_the_home_whatever_the_image_workdir(rig: Rig) -> None:
    """Daytona starts commands, PTYs and relative paths in the image's WORKDIR (the home only
    when the image has none). The tool names the home itself everywhere: with a WORKDIR that is
    not the home, the agent, `exec`, `shell`, `push`, `pull` and `diff` all work in the home,
    and nothing lands in the WORKDIR."""
    rig.emulator.set_config(sandbox_workdir="/workspace")
    (rig.project / "pushed.txt").write_text("pushed\n")
    rig.model.enqueue(turn(run("pwd > agent-pwd.txt")), turn(msg("Noted.")))
    assert rig.cli("push", "-q").code == 0
    sandbox_id = rig.record()["sandbox_id"]
    home = rig.emulator.home_dir(sandbox_id)
    workdir = rig.emulator.sandbox_dir(sandbox_id) / "workspace"
    assert workdir.is_dir() and (home / "pushed.txt").read_text() == "pushed\n"

    asked = rig.cli("ask", "-q", "where are you?")
    assert (asked.code, asked.stdout) == (0, "Noted.\n"), asked
    assert (home / "agent-pwd.txt").read_text().strip() == str(home)
    ran = rig.cli("exec", "--", "pwd")
    assert (ran.code, ran.stdout.strip()) == (0, str(home)), ran
    shell = rig.cli("shell", input="echo at-$(pwd)-$((40+2))\nexit 0\n", timeout=60)
    assert shell.code == 0 and f"at-{home}-42" in shell.stdout, shell
    diff = rig.cli("diff", "--json")
    assert diff.code == 0 and "agent-pwd.txt" in diff.stdout, diff
    pulled = rig.cli("pull", "--force", "-q")
    assert pulled.code == 0 and (rig.project / "agent-pwd.txt").read_text().strip() == str(home), pulled
    assert sorted(p.name for p in workdir.iterdir()) == []


def _fork_on_daytona(rig: Rig, sandbox_id: str) -> str:
    """Forks the sandbox as `ask --fanout` does (the fork has its source's labels)."""
    request = urllib.request.Request(
        f"{rig.emulator.api_url}/sandbox/{sandbox_id}/fork",
        data=b"{}",
        method="POST",
        headers={"Authorization": f"Bearer {DAYTONA_KEY}", "Content-Type": "application/json"},
    )
    return str(json.loads(urllib.request.urlopen(request, timeout=60).read())["id"])


def test_down_of_a_sandbox_with_forks_says_so_and_down_all_deletes_the_forks_first(rig: Rig) -> None:
    """Daytona deletes a sandbox only after the sandboxes forked from it (400 "Cannot delete
    sandbox which has active fork children"): `down` says so in one line with a hint and
    forgets nothing; `down --all` deletes the forks first, then their source."""
    rig.emulator.set_config(sandbox_class="linux-vm")  # only VM-class sandboxes fork
    assert rig.cli("up").code == 0
    source = rig.record()["sandbox_id"]
    fork = _fork_on_daytona(rig, source)

    refused = rig.cli("down", "--yes")
    assert refused.code == ExitCode.DAYTONA, refused
    assert "Traceback" not in refused.stderr, refused
    assert f"Daytona cannot delete sandbox {source} while sandboxes forked from it exist." in refused.stderr
    assert "down --others" in refused.stderr and "down --stop" in refused.stderr, refused
    assert rig.record()["sandbox_id"] == source
    assert _state(rig, source) == "started"

    result = rig.cli("down", "--all", "--yes", "--json")
    assert result.code == 0, result
    assert sorted(json.loads(result.stdout)["deleted"]) == sorted([source, fork]), result
    assert (_state(rig, source), _state(rig, fork)) == ("destroyed", "destroyed")
    assert rig.record() == {}


def test_fanout_waits_out_a_stop_asked_for_just_before_its_fork(rig: Rig) -> None:
    """Auto-stop asks Daytona to stop the sandbox just as the fan-out forks it: the sandbox is
    still `started` but pending, and the fork answers 409 "Sandbox state change in progress"
    (then 400 while it is `stopping`). The fan-out waits, starts the stopped sandbox again and
    forks it."""
    rig.emulator.set_config(sandbox_class="linux-vm")  # only VM-class sandboxes fork
    assert rig.cli("up").code == 0
    source = rig.record()["sandbox_id"]
    rig.emulator.set_config(pending_seconds=1.0, transition_seconds=0.5)
    rig.emulator.set_faults(stop_before_next_fork=1)
    rig.model.enqueue(*[turn(msg("ready")) for _ in range(2)])
    since = time.time()
    try:
        result = rig.cli("ask", "--fanout", "2", "--new-thread", "--json", "get ready", timeout=300)
        forks = [r["status"] for r in rig.round_trips(since) if r["path"] == f"/api/sandbox/{source}/fork"]
        assert result.code == 0, (result, forks)
        assert rig.emulator.faults()["stop_before_next_fork"] == 0, "the fault never struck"
        assert forks[0] == 409 and forks.count(200) == 2, forks
        summary = json.loads(result.stdout)
        assert summary["forked"] is True, summary
        assert [row["status"] for row in summary["sandboxes"]] == ["completed", "completed"], summary
    finally:
        assert rig.cli("down", "--all", "--yes").code == 0


def test_ask_on_a_sandbox_daytona_failed_says_so_and_what_to_do(rig: Rig) -> None:
    """A sandbox in Daytona's `error` state is never started again (400 "Sandbox is in an
    errored state"): `ask` says that in one line, with `down` and `up` for a hint (not the
    hint for a network or a key), and keeps the record; `down` then deletes it."""
    assert rig.cli("up").code == 0
    sandbox_id = rig.record()["sandbox_id"]
    rig.emulator.break_sandbox(sandbox_id)
    result = rig.cli("ask", "-q", "hello")
    assert result.code == ExitCode.DAYTONA, result
    lines = result.stderr.splitlines()
    assert lines[0] == (f"Error: Sandbox {sandbox_id} is in Daytona's error state: Daytona will not start it again."), (
        result
    )
    assert "codex-daytona down --yes" in lines[1] and "DAYTONA_API_KEY" not in result.stderr, result
    assert len(lines) == 2 and "Traceback" not in result.stderr
    assert rig.record()["sandbox_id"] == sandbox_id
    assert rig.cli("down", "--yes").code == 0
    assert (rig.sandbox(sandbox_id) or {}).get("state") == "destroyed"


@pytest.mark.e2e
def test_a_sandbox_past_the_organizations_quota_is_one_line_that_says_what_to_free(rig: Rig) -> None:
    """Daytona refuses a create or a start that its organization's quota has no room for
    (400 "Total CPU limit exceeded. Maximum allowed: N."): `up` and `ask` say so in one line,
    with what to stop or delete for a hint (not the key and the network), and keep the state."""
    rig.emulator.set_config(quota_cpu=0)
    made = rig.cli("up")
    assert made.code == ExitCode.DAYTONA, made
    lines = made.stderr.splitlines()
    lines = lines[[line.startswith("Error: ") for line in lines].index(True) :]  # after the progress
    assert lines[0] == "Error: Daytona refused to create a sandbox: Total CPU limit exceeded. Maximum allowed: 0.", made
    assert "codex-daytona ls --all" in lines[1] and "DAYTONA_API_KEY" not in made.stderr, made
    assert len(lines) == 2 and not rig.record(), made

    rig.emulator.set_config(quota_cpu=None)
    assert rig.cli("up").code == 0
    sandbox_id = rig.record()["sandbox_id"]
    rig.emulator.begin_stop(sandbox_id)
    deadline = time.monotonic() + 30
    while (rig.sandbox(sandbox_id) or {}).get("state") != "stopped" and time.monotonic() < deadline:
        time.sleep(0.05)
    rig.emulator.set_config(quota_memory=0)
    asked = rig.cli("ask", "-q", "hello")
    assert asked.code == ExitCode.DAYTONA, asked
    assert (
        "Error: Daytona refused to start the sandbox: Total memory limit exceeded. Maximum allowed: 0GiB."
        in asked.stderr.splitlines()
    ), asked
    assert "Traceback" not in asked.stderr and rig.record()["sandbox_id"] == sandbox_id


def test_ls_all_lists_every_project_s_sandboxes_with_their_name_and_dir(rig: Rig) -> None:
    """`ls --all` shows what `down --all` would delete: every sandbox of this tool on the
    account, whichever directory made it, with its name and directory; `here` marks ours."""
    import subprocess
    import sys

    assert rig.cli("up").code == 0
    ours = rig.record()["sandbox_id"]
    other = rig.project.parent / "elsewhere-proj"
    other.mkdir()
    made = subprocess.run(
        [sys.executable, "-m", "codex_daytona", "up", "--name", "side", "-q"],
        cwd=other,
        env={k: v for k, v in rig.env.items() if k != "CODEX_DAYTONA_STATE_DIR"},  # its own ./.codex-daytona
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    theirs = made.stdout.strip().splitlines()[-1]
    assert theirs and theirs != ours, made.stdout

    table = rig.cli("ls", "--all")
    assert table.code == 0, table
    ours_line = next(line for line in table.stdout.splitlines() if ours[:8] in line)
    theirs_line = next(line for line in table.stdout.splitlines() if theirs[:8] in line)
    assert ours_line.lstrip().startswith("here") and "default" in ours_line and rig.project.name in ours_line
    assert not theirs_line.lstrip().startswith("here") and "side" in theirs_line and "elsewhere-proj" in theirs_line
    assert set(rig.cli("ls", "--all", "-q").stdout.split()) == {ours, theirs}
    found = {s["sandbox_id"]: s for s in json.loads(rig.cli("ls", "--all", "--json").stdout)["sandboxes"]}
    assert found[ours]["here"] and not found[theirs]["here"] and found[theirs]["name"] == "side"
    assert rig.cli("ls", "-q").stdout.split() == [ours], "plain ls stays this directory's"
    assert rig.cli("down", "--all", "--yes").code == 0
    assert rig.cli("ls", "--all", "-q").stdout.strip() == ""
