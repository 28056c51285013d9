"""`batch` end to end: the real CLI, the emulator, the real agent and Codex, the scripted model.
Each task's model steps `match` a word of its own prompt: tasks run at once."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from codex_daytona.errors import ExitCode
from codex_daytona.usecases.context import project_labels
from tests.e2e import Rig, sandbox_processes
from tests.fakes.model import add_file_patch, msg, patch, run, turn

pytestmark = pytest.mark.e2e


def tasks_file(rig: Rig, *tasks: dict[str, Any], name: str = "tasks.jsonl") -> Path:
    path = rig.project / name
    with path.open("a", encoding="utf-8") as fh:
        for task in tasks:
            fh.write(json.dumps(task) + "\n")
    return path


def results(rig: Rig, name: str = "results.jsonl") -> dict[str, dict[str, Any]]:
    lines = [json.loads(line) for line in (rig.project / name).read_text().splitlines()]
    assert all(line["schema"] == 1 for line in lines)
    by_id = {line["id"]: line for line in lines}
    assert len(by_id) == len(lines), "a task ran twice"
    return by_id


def batch_sandboxes(rig: Rig, state: str | None = None) -> list[dict[str, Any]]:
    """This project's batch sandboxes on the emulator (deleted ones too: state "destroyed")."""
    project = project_labels(rig.project.resolve(), "")["codex-daytona.project"]
    return [
        s
        for s in rig.emulator.sandboxes()
        if s["labels"].get("codex-daytona.name", "").startswith("b-")
        and s["labels"].get("codex-daytona.project") == project
        and (state is None or s["state"] == state)
    ]


def test_a_batch_runs_its_tasks_at_once_checks_them_and_leaves_nothing_behind(rig: Rig) -> None:
    (rig.project / "proj").mkdir()
    (rig.project / "proj" / "given.txt").write_text("from the task's dir\n")
    tasks = tasks_file(
        rig,
        {"id": "alpha", "prompt": "alpha: add a file", "setup": "echo set-up > setup.txt", "check": "test -f one.txt"},
        {"id": "beta", "prompt": "beta: 'quotes' and \"more\"", "check": "echo broken-check >&2; exit 1"},
        {"id": "gamma", "prompt": "gamma: read it", "dir": "proj", "check": "test -f given.txt && echo saw-it"},
    )
    usage = {"input_tokens": 100, "output_tokens": 7}
    rig.model.enqueue(
        turn(patch(add_file_patch("one.txt", "1")), match="alpha:", usage=usage),
        turn(msg("added one.txt"), match="alpha:", usage=usage),
        turn(msg("beta done"), match="beta:", usage=usage),
        turn(run("cat given.txt"), match="gamma:", usage=usage),
        turn(msg("gamma done"), match="gamma:", usage=usage),
    )
    ran = rig.cli("batch", "tasks.jsonl", "--parallel", "3", "--out", "results.jsonl", timeout=300)
    assert ran.code == ExitCode.TURN_FAILED, ran  # beta's check failed
    got = results(rig)
    assert {k: v["status"] for k, v in got.items()} == {"alpha": "passed", "beta": "failed", "gamma": "passed"}
    alpha, beta, gamma = got["alpha"], got["beta"], got["gamma"]
    assert alpha["final_message"] == "added one.txt" and alpha["check"] == {"exit_code": 0, "output_tail": ""}
    assert "one.txt" in alpha["patch"] and "setup.txt" in alpha["patch"], alpha["patch"]
    assert beta["check"]["exit_code"] == 1 and "broken-check" in beta["check"]["output_tail"]
    assert gamma["check"]["output_tail"] == "saw-it\n" and gamma["final_message"] == "gamma done"
    for line in got.values():
        assert line["run_id"] and line["usage"]["input_tokens"] >= 100 and line["sandbox_id"] is None
        assert {"queue", "sandbox", "turn", "check"} <= set(line["durations"]), line["durations"]
    assert tasks.exists()

    # At once: the three turns overlapped (each sandbox made before any turn ended).
    assert len(batch_sandboxes(rig)) == 3
    assert batch_sandboxes(rig, "destroyed") == batch_sandboxes(rig), "--keep none deletes every sandbox"
    assert not [n for n in rig.state().get("sandboxes", {}) if n.startswith("b-")]
    assert "passed" in ran.stdout and "3 ran, 0 already done, 67% passed" in ran.stdout, ran
    for task_id in ("alpha", "beta", "gamma"):
        assert task_id in ran.stderr

    # Again: every task is in the results already; nothing runs, nothing is asked of the model.
    asked = len(rig.model.requests)
    again = rig.cli("batch", "tasks.jsonl", "-p", "3", "--out", "results.jsonl", "--json")
    assert again.code == 0, again
    summary = json.loads(again.stdout)
    assert (summary["ran"], summary["skipped"], summary["total"]) == (0, 3, 3)
    assert len(rig.model.requests) == asked and len(batch_sandboxes(rig)) == 3

    # A task added to the file: only it runs.
    tasks_file(rig, {"id": "delta", "prompt": "delta: hello"})
    rig.model.enqueue(turn(msg("delta done"), match="delta:"))
    more = rig.cli("batch", "tasks.jsonl", "--out", "results.jsonl", "-q")
    assert more.code == 0 and more.stdout == "delta\n", more
    assert list(results(rig)) == ["alpha", "beta", "gamma", "delta"] or set(results(rig)) == {
        "alpha",
        "beta",
        "gamma",
        "delta",
    }


def test_a_malformed_tasks_file_is_refused_before_anything_runs(rig: Rig) -> None:
    tasks_file(rig, {"id": "ok", "prompt": "fine"})
    with (rig.project / "tasks.jsonl").open("a") as fh:
        fh.write('{"id": "bad", "prompt": "p", "chek": "x"}\n')
    refused = rig.cli("batch", "tasks.jsonl", "--out", "results.jsonl")
    assert refused.code == ExitCode.USAGE, refused
    assert "tasks.jsonl, line 2: unknown field 'chek'" in refused.stderr and "Traceback" not in refused.stderr
    assert not batch_sandboxes(rig) and not (rig.project / "results.jsonl").exists()


def test_keep_failed_keeps_the_failed_tasks_sandbox_named_for_ls_and_down(rig: Rig) -> None:
    tasks_file(
        rig,
        {"id": "good", "prompt": "good: hi", "check": "true"},
        {"id": "bad", "prompt": "bad: hi", "check": "false"},
    )
    rig.model.enqueue(turn(msg("ok"), match="good:"), turn(msg("ok"), match="bad:"))
    ran = rig.cli("batch", "tasks.jsonl", "-p", "2", "--out", "results.jsonl", "--keep", "failed")
    assert ran.code == ExitCode.TURN_FAILED, ran
    got = results(rig)
    assert got["good"]["sandbox_id"] is None and got["bad"]["sandbox_id"]
    kept = [s for s in batch_sandboxes(rig) if s["state"] != "destroyed"]
    assert [s["id"] for s in kept] == [got["bad"]["sandbox_id"]]
    # The same command again (a task added): the kept sandbox is a finished task's, not a
    # killed run's leftover, so it is not deleted.
    tasks_file(rig, {"id": "late", "prompt": "late: hi"})
    rig.model.enqueue(turn(msg("ok"), match="late:"))
    again = rig.cli("batch", "tasks.jsonl", "-p", "2", "--out", "results.jsonl", "--keep", "failed")
    assert again.code == 0 and "stopped run" not in again.stderr, again
    assert [s["id"] for s in batch_sandboxes(rig) if s["state"] != "destroyed"] == [got["bad"]["sandbox_id"]]
    [name] = [n for n in rig.state()["sandboxes"] if n.startswith("b-")]
    assert rig.cli("down", "--name", name, "--yes").code == 0
    assert not [s for s in batch_sandboxes(rig) if s["state"] != "destroyed"]


def test_a_429_storm_slows_the_batch_down_and_fails_no_task(rig: Rig) -> None:
    tasks_file(rig, *({"id": f"t{i}", "prompt": f"task{i}: hi"} for i in range(3)))
    rig.model.enqueue(*(turn(msg("ok"), match=f"task{i}:") for i in range(3)))
    rig.emulator.set_faults(rate_limit_next=6)
    ran = rig.cli("batch", "tasks.jsonl", "-p", "3", "--out", "results.jsonl", timeout=300)
    assert ran.code == 0, ran
    assert {line["status"] for line in results(rig).values()} == {"passed"}
    assert rig.emulator.faults()["rate_limit_next"] == 0, "the storm struck"
    assert not [s for s in batch_sandboxes(rig) if s["state"] != "destroyed"]


def _wait_for(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _sleeping(rig: Rig, count: int) -> bool:
    live = batch_sandboxes(rig, "started")
    return len(live) >= count and all(sandbox_processes(s["id"], "sleep 60") for s in live)


def _sleepy_tasks(rig: Rig, count: int) -> None:
    tasks_file(rig, *({"id": f"t{i}", "prompt": f"task{i}: sleep"} for i in range(count)))
    for i in range(count):
        rig.model.enqueue(turn(run("sleep 60", yield_time_ms=60000), match=f"task{i}:"))


@pytest.mark.cold  # the CLI's own process takes the SIGKILL, as a script's would
def test_a_batch_killed_with_sigkill_resumes_without_running_a_task_twice_or_losing_one(rig: Rig) -> None:
    tasks_file(rig, {"id": "quick", "prompt": "quick: hi"})
    rig.model.enqueue(turn(msg("quick done"), match="quick:"))
    _sleepy_tasks(rig, 2)
    proc = rig.popen_piped("batch", "tasks.jsonl", "-p", "3", "--out", "results.jsonl")
    _wait_for(lambda: _sleeping(rig, 2) and (rig.project / "results.jsonl").read_text().count("\n") == 1, 120)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert list(results(rig)) == ["quick"]
    left = {s["id"] for s in batch_sandboxes(rig) if s["state"] != "destroyed"}
    assert len(left) == 2, "the killed run's sandboxes are still there"

    for i in range(2):
        rig.model.enqueue(turn(msg(f"t{i} done"), match=f"task{i}:"))
    resumed = rig.cli("batch", "tasks.jsonl", "-p", "3", "--out", "results.jsonl", timeout=300)
    assert resumed.code == 0, resumed
    assert "Deleting 2 sandbox(es) a stopped run of this batch left" in resumed.stderr, resumed
    got = results(rig)  # each id once
    assert sorted(got) == ["quick", "t0", "t1"] and {line["status"] for line in got.values()} == {"passed"}
    assert got["quick"]["final_message"] == "quick done" and got["t0"]["final_message"] == "t0 done"
    assert not [s for s in batch_sandboxes(rig) if s["state"] != "destroyed"], "nothing left behind"
    assert not [n for n in rig.state().get("sandboxes", {}) if n.startswith("b-")]


def test_ctrl_c_interrupts_the_running_tasks_writes_them_and_leaves_nothing(rig: Rig) -> None:
    _sleepy_tasks(rig, 2)
    proc = rig.popen_piped("batch", "tasks.jsonl", "-p", "2", "--out", "results.jsonl")
    _wait_for(lambda: _sleeping(rig, 2), 120)
    proc.send_signal(signal.SIGINT)
    _stdout, stderr = proc.communicate(timeout=90)
    assert proc.returncode == ExitCode.INTERRUPTED, stderr
    assert "Traceback" not in stderr
    got = results(rig)
    assert sorted(got) == ["t0", "t1"] and {line["status"] for line in got.values()} == {"interrupted"}, got
    assert not [s for s in batch_sandboxes(rig) if s["state"] != "destroyed"]


def test_a_task_whose_sandbox_is_evicted_mid_turn_runs_again_in_a_new_one(rig: Rig) -> None:
    _sleepy_tasks(rig, 1)
    proc = rig.popen_piped("batch", "tasks.jsonl", "--out", "results.jsonl")
    _wait_for(lambda: _sleeping(rig, 1), 120)
    [first] = batch_sandboxes(rig, "started")
    rig.model.enqueue(turn(msg("done the second time"), match="task0:"))
    rig.emulator.evict_sandbox(first["id"])
    _stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    [line] = results(rig).values()
    assert line["status"] == "passed" and line["final_message"] == "done the second time", line
    assert len(line["retries"]) == 1 and first["id"] in line["retries"][0], line["retries"]
    assert "retrying" in stderr and "t0" in stderr
    assert len(batch_sandboxes(rig)) == 2 and not batch_sandboxes(rig, "started")


def test_on_a_terminal_a_live_board_shows_counts_tokens_eta_and_what_each_running_task_does(rig: Rig) -> None:
    from tests.test_lifecycle import Terminal

    gate = rig.project / "gate"
    tasks_file(rig, {"id": "quick", "prompt": "quick: say hi"}, {"id": "slow", "prompt": "slow: wait"})
    rig.model.enqueue(
        turn(msg("hi"), match="quick:", usage={"input_tokens": 1234, "output_tokens": 56}),
        turn(run(f"while [ ! -e '{gate}' ]; do sleep 0.05; done; echo opened"), match="slow:"),
        turn(msg("slow done"), match="slow:"),
    )
    term = Terminal(rig, "batch", "tasks.jsonl", "--parallel", "2", "--out", "results.jsonl")
    try:
        # quick has ended while slow waits in its command: the board says both, and how long.
        term.read_until("1/2 done · 1 running · 0 not passed · 100% passed", timeout=120)
        term.read_until("tokens 1,234 in / 56 out", timeout=30)
        screen = term.read_until("Run: while", timeout=60)
        assert "ETA 0:" in screen and " elapsed" in screen, screen
        assert "slow" in screen and "running" in screen
    finally:
        gate.touch()
    assert term.wait(timeout=120) == 0, term.text()
    final = term.text()
    assert "2 ran, 0 already done, 100% passed" in final, final
    assert {k: v["status"] for k, v in results(rig).items()} == {"quick": "passed", "slow": "passed"}


def test_off_a_terminal_each_ended_task_says_how_far_the_batch_is(rig: Rig) -> None:
    tasks_file(rig, {"id": "one", "prompt": "one: hi"}, {"id": "two", "prompt": "two: hi"})
    rig.model.enqueue(turn(msg("hi"), match="one:"), turn(msg("hi"), match="two:"))
    ran = rig.cli("batch", "tasks.jsonl", "-p", "1", "--out", "results.jsonl")
    assert ran.code == 0, ran
    assert "passed one (1/2)" in ran.stderr and "passed two (2/2)" in ran.stderr, ran.stderr
    assert "\x1b[" not in ran.stderr  # no board, no cursor movement off a terminal


def _shared_tasks(rig: Rig, setup: str) -> None:
    """Three tasks with the same dir and setup (a group), and one with neither."""
    (rig.project / "proj").mkdir()
    (rig.project / "proj" / "given.txt").write_text("pushed\n")
    tasks_file(
        rig,
        *(
            {"id": f"s{i}", "prompt": f"shared{i}: hi", "dir": "proj", "setup": setup, "check": "test -f prepared.txt"}
            for i in range(3)
        ),
        {"id": "plain", "prompt": "plain: hi", "check": "test ! -e given.txt"},
    )


def _setup_counting(rig: Rig) -> tuple[Path, str]:
    """A setup that counts its runs on the host (a sandbox's commands are local processes)."""
    counter = (rig.project / "setup-runs").resolve()
    return counter, f"echo ready > prepared.txt; echo ran >> '{counter}'"


def test_tasks_that_share_a_preparation_fork_one_base_set_up_once_and_leave_nothing(rig: Rig) -> None:
    rig.emulator.set_config(sandbox_class="linux-vm")  # only VM-class sandboxes fork
    counter, setup = _setup_counting(rig)
    _shared_tasks(rig, setup)
    rig.model.enqueue(*(turn(msg(f"done {i}"), match=f"shared{i}:") for i in range(3)))
    rig.model.enqueue(turn(msg("plain done"), match="plain:"))
    since = time.time()
    ran = rig.cli("batch", "tasks.jsonl", "-p", "4", "--out", "results.jsonl", "--json", timeout=300)
    assert ran.code == 0, ran
    assert counter.read_text() == "ran\n", "the setup ran once, on the base"
    got = results(rig)
    assert {k: v["status"] for k, v in got.items()} == dict.fromkeys(["s0", "s1", "s2", "plain"], "passed"), got
    assert {got[f"s{i}"]["sandbox_from"] for i in range(3)} == {"fork"} and got["plain"]["sandbox_from"] == "snapshot"
    for i in range(3):  # the fork has the base's diff baseline: the setup's file is in each patch
        assert "prepared.txt" in got[f"s{i}"]["patch"] and "given.txt" not in got[f"s{i}"]["patch"]
    # The base's setup is charged once, to the task that prepared the base.
    assert sum("setup" in got[f"s{i}"]["durations"] for i in range(3)) == 1, [v["durations"] for v in got.values()]
    sandboxes = {s["labels"]["codex-daytona.name"]: s for s in batch_sandboxes(rig)}
    [base] = [s for name, s in sandboxes.items() if "-base-" in name]
    assert len(sandboxes) == 5, sandboxes  # the base, its 3 forks, and plain's own
    assert sum(e["path"] == f"/api/sandbox/{base['id']}/fork" for e in rig.requests(since)) == 3
    assert batch_sandboxes(rig, "destroyed") == batch_sandboxes(rig), "every sandbox, the base too, is deleted"
    assert not [n for n in rig.state().get("sandboxes", {}) if n.startswith("b-")]
    assert json.loads(ran.stdout)["kept_bases"] == []


def test_where_daytona_cannot_fork_each_task_of_a_group_makes_and_sets_up_its_own_quietly(rig: Rig) -> None:
    counter, setup = _setup_counting(rig)  # the emulator's default class, container, never forks
    _shared_tasks(rig, setup)
    rig.model.enqueue(*(turn(msg(f"done {i}"), match=f"shared{i}:") for i in range(3)))
    rig.model.enqueue(turn(msg("plain done"), match="plain:"))
    since = time.time()
    ran = rig.cli("batch", "tasks.jsonl", "-p", "4", "--out", "results.jsonl", timeout=300)
    assert ran.code == 0, ran
    assert counter.read_text() == "ran\n" * 3, "each task ran its own setup"
    got = results(rig)
    assert {v["status"] for v in got.values()} == {"passed"} and {v["sandbox_from"] for v in got.values()} == {
        "snapshot"
    }
    assert "⚠" not in ran.stderr and "Traceback" not in ran.stderr, ran.stderr
    # A container says so as it is created: its group's base, only created, is its first task's
    # own sandbox (one sandbox per task, no more), and no fork is asked for.
    assert len(batch_sandboxes(rig)) == 4
    assert not [e for e in rig.requests(since) if e["path"].endswith("/fork")]
    assert batch_sandboxes(rig, "destroyed") == batch_sandboxes(rig), "nothing left"
    assert not [n for n in rig.state().get("sandboxes", {}) if n.startswith("b-")]


def test_a_fork_daytona_refuses_makes_the_prepared_base_its_tasks_own_and_the_others_make_theirs(rig: Rig) -> None:
    """A class that says nothing as it is created but refuses the fork (422): the first refusal
    stands for the batch; the prepared base is that task's sandbox, set up once, not twice."""
    rig.emulator.set_config(sandbox_class="linux-vm")
    counter, setup = _setup_counting(rig)
    gate = (rig.project / "gate").resolve()
    _shared_tasks(rig, f"while [ ! -e '{gate}' ]; do sleep 0.05; done; {setup}")
    rig.model.enqueue(*(turn(msg(f"done {i}"), match=f"shared{i}:") for i in range(3)))
    rig.model.enqueue(turn(msg("plain done"), match="plain:"))
    since = time.time()
    proc = rig.popen_piped("batch", "tasks.jsonl", "-p", "4", "--out", "results.jsonl")

    def base() -> dict[str, Any] | None:
        bases = [s for s in batch_sandboxes(rig, "started") if "-base-" in s["labels"]["codex-daytona.name"]]
        return bases[0] if bases and sandbox_processes(bases[0]["id"], "while [") else None

    _wait_for(lambda: base() is not None, 120)  # the base runs its setup: it was found able to fork
    prepared = base()
    assert prepared is not None
    rig.emulator.set_sandbox_class(prepared["id"], "container")  # ... and then refuses to
    gate.touch()
    _stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert counter.read_text() == "ran\n" * 3, "the base's setup, then each other task's own"
    got = results(rig)
    assert {v["status"] for v in got.values()} == {"passed"} and {v["sandbox_from"] for v in got.values()} == {
        "snapshot"
    }
    assert "⚠" not in stderr and "Daytona cannot fork them" in stderr, stderr
    assert sum(e["path"].endswith("/fork") for e in rig.requests(since)) == 1, "one refusal learns it for all"
    assert len(batch_sandboxes(rig)) == 4 and batch_sandboxes(rig, "destroyed") == batch_sandboxes(rig)


def test_a_setup_that_fails_on_the_base_fails_every_task_of_its_group_without_a_turn(rig: Rig) -> None:
    rig.emulator.set_config(sandbox_class="linux-vm")
    counter, setup = _setup_counting(rig)
    _shared_tasks(rig, f"{setup}; echo broken-setup >&2; exit 3")
    rig.model.enqueue(turn(msg("plain done"), match="plain:"))
    ran = rig.cli("batch", "tasks.jsonl", "-p", "4", "--out", "results.jsonl", timeout=300)
    assert ran.code == ExitCode.TURN_FAILED, ran
    assert counter.read_text() == "ran\n", "the setup ran once"
    got = results(rig)
    assert got["plain"]["status"] == "passed"
    for i in range(3):
        line = got[f"s{i}"]
        assert line["status"] == "error" and line["error"].startswith("setup exited 3: "), line
        assert "broken-setup" in line["error"] and line["run_id"] is None, line
    asked = [r for r in rig.model.requests if any(f"shared{i}:" in json.dumps(r) for i in range(3))]
    assert not asked, "no turn of the group asked the model"
    assert batch_sandboxes(rig, "destroyed") == batch_sandboxes(rig), "the base is deleted"


def test_kept_forks_keep_their_base_which_the_summary_names_and_down_all_deletes_after_them(rig: Rig) -> None:
    rig.emulator.set_config(sandbox_class="linux-vm")
    tasks_file(
        rig, *({"id": f"k{i}", "prompt": f"kept{i}: hi", "setup": "echo ready > prepared.txt"} for i in range(2))
    )
    rig.model.enqueue(*(turn(msg("ok"), match=f"kept{i}:") for i in range(2)))
    ran = rig.cli("batch", "tasks.jsonl", "-p", "2", "--out", "results.jsonl", "--keep", "all", "--json")
    assert ran.code == 0, ran  # a kept base is said, not a failure
    [base] = json.loads(ran.stdout)["kept_bases"]
    assert base.startswith("b-") and "-base-1" in base
    assert f"Kept the base sandbox {base}" in ran.stderr, ran.stderr
    got = results(rig)
    assert {line["sandbox_from"] for line in got.values()} == {"fork"} and all(
        line["sandbox_id"] for line in got.values()
    )
    live = {s["labels"]["codex-daytona.name"] for s in batch_sandboxes(rig) if s["state"] != "destroyed"}
    assert base in live and len(live) == 3, live
    listed = rig.cli("ls", "--json")
    assert listed.code == 0 and base in listed.stdout, listed
    down = rig.cli("down", "--all", "--yes")
    assert down.code == 0, down
    assert batch_sandboxes(rig, "destroyed") == batch_sandboxes(rig)


def _grouped_sleepers(rig: Rig) -> None:
    """Two tasks with the same setup (one group), each asleep in its turn, in forks (VM class)."""
    rig.emulator.set_config(sandbox_class="linux-vm")
    tasks_file(rig, *({"id": f"t{i}", "prompt": f"task{i}: sleep", "setup": "true"} for i in range(2)))
    for i in range(2):
        rig.model.enqueue(turn(run("sleep 60", yield_time_ms=60000), match=f"task{i}:"))


def _forks_sleeping(rig: Rig) -> bool:
    live = [s for s in batch_sandboxes(rig, "started") if "-base-" not in s["labels"]["codex-daytona.name"]]
    return len(live) == 2 and all(sandbox_processes(s["id"], "sleep 60") for s in live)


def test_ctrl_c_in_a_group_interrupts_its_forks_and_deletes_them_and_their_base(rig: Rig) -> None:
    _grouped_sleepers(rig)
    proc = rig.popen_piped("batch", "tasks.jsonl", "-p", "2", "--out", "results.jsonl")
    _wait_for(lambda: _forks_sleeping(rig), 120)
    assert len([s for s in batch_sandboxes(rig) if s["state"] != "destroyed"]) == 3, "two forks and their base"
    proc.send_signal(signal.SIGINT)
    _stdout, stderr = proc.communicate(timeout=90)
    assert proc.returncode == ExitCode.INTERRUPTED, stderr
    assert "Traceback" not in stderr and "⚠" not in stderr, stderr
    got = results(rig)
    assert {line["status"] for line in got.values()} == {"interrupted"} and sorted(got) == ["t0", "t1"], got
    assert not [s for s in batch_sandboxes(rig) if s["state"] != "destroyed"], "the forks and the base are deleted"


@pytest.mark.cold  # the CLI's own process takes the SIGKILL, as a script's would
def test_a_killed_batch_with_a_group_resumes_deleting_the_forks_then_their_base(rig: Rig) -> None:
    _grouped_sleepers(rig)
    proc = rig.popen_piped("batch", "tasks.jsonl", "-p", "2", "--out", "results.jsonl")
    _wait_for(lambda: _forks_sleeping(rig), 120)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert len([s for s in batch_sandboxes(rig) if s["state"] != "destroyed"]) == 3, "two forks and their base"

    for i in range(2):
        rig.model.enqueue(turn(msg(f"t{i} done"), match=f"task{i}:"))
    resumed = rig.cli("batch", "tasks.jsonl", "-p", "2", "--out", "results.jsonl", timeout=300)
    assert resumed.code == 0, resumed
    assert "Deleting 3 sandbox(es) a stopped run of this batch left" in resumed.stderr, resumed
    got = results(rig)
    assert sorted(got) == ["t0", "t1"] and {line["sandbox_from"] for line in got.values()} == {"fork"}, got
    assert not [s for s in batch_sandboxes(rig) if s["state"] != "destroyed"], "nothing left behind"
    assert not [n for n in rig.state().get("sandboxes", {}) if n.startswith("b-")]
