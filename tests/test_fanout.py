"""Many sandboxes per directory: --name, ls, keep, down --others and ask --fanout, end to end.

The prompt is the same in every sandbox of a fan-out, so the scripted model tells their
requests apart by the sandbox's id, which is in each request's environment context (the
sandbox's home is `.../sandboxes/<id>/home` in the emulator).

In the emulator every sandbox's home has its own path, while on Daytona a sandbox made from a
snapshot has its parent's (`/home/daytona`); Codex keeps a thread's history at an absolute path,
so a thread continued in emulated forks would be written to the parent's file. These tests
therefore fan out with --new-thread.
"""

from __future__ import annotations

import json
import signal
import time

import pytest

from codex_daytona.usecases.context import project_labels
from codex_daytona.usecases.fanout import CANCEL_GRACE_S
from tests.e2e import Rig, sandbox_processes
from tests.fakes.model import add_file_patch, add_files_patch, error, msg, patch, run, turn
from tests.test_turns import _wait_for

NAMES = ["default-1", "default-2", "default-3"]
TWO_FILES = add_files_patch({"two.txt": "2", "three.txt": "3"})


def _ids(rig: Rig) -> dict[str, str]:
    return {name: record["sandbox_id"] for name, record in rig.state().get("sandboxes", {}).items()}


def _live(rig: Rig) -> set[str]:
    """This project's sandboxes that Daytona still has."""
    digest = project_labels(rig.project, "default")["codex-daytona.project"]
    return {
        s["id"]
        for s in rig.emulator.sandboxes()
        if s["state"] != "destroyed" and s["labels"].get("codex-daytona.project") == digest
    }


# A command that leaves when it began and ended in the sandbox's home.
STAMPED_SLEEP = "date +%s.%N > began.txt; sleep 3; date +%s.%N > ended.txt"


def _stamps(rig: Rig, sandbox_id: str) -> tuple[float, float]:
    home = rig.emulator.home_dir(sandbox_id)
    return float((home / "began.txt").read_text()), float((home / "ended.txt").read_text())


def _cleanup(rig: Rig) -> None:
    for _ in range(2):  # Daytona deletes a fork's source only after the fork: a second round
        for name in _ids(rig):
            rig.cli("down", "--yes", "--name", name)


@pytest.mark.e2e
def test_fanout_runs_in_parallel_compares_and_keep_down_leave_one(rig: Rig) -> None:
    try:
        _fanout_compare_keep_down(rig)
    finally:
        _cleanup(rig)


def _fanout_compare_keep_down(rig: Rig) -> None:
    rig.emulator.set_config(sandbox_class="linux-vm")  # only VM-class sandboxes fork
    base = rig.cli("up", "-q")
    assert base.code == 0, base
    base_id = base.stdout.strip()

    # 1. The siblings are forks of the default sandbox (Daytona's fork: no snapshot is saved).
    since = time.time()
    rig.model.enqueue(*[turn(msg("ready")) for _ in NAMES])
    first = rig.cli("ask", "--fanout", "3", "--new-thread", "get ready", timeout=300)
    assert first.code == 0, first
    ids = _ids(rig)
    assert sorted(ids) == ["default", *NAMES]
    assert ids["default"] == base_id
    for name in NAMES:
        sibling = rig.sandbox(ids[name]) or {}
        assert sibling.get("snapshot") == (rig.sandbox(base_id) or {}).get("snapshot"), name
        assert sibling["labels"]["codex-daytona.name"] == name, sibling["labels"]
        assert name in first.stdout and "completed" in first.stdout
    assert first.stderr.count("completed") >= 3, first
    requests = rig.requests(since)
    assert sum(e["path"] == f"/api/sandbox/{base_id}/fork" for e in requests) == 3
    assert not [e for e in requests if e["path"] == f"/api/sandbox/{base_id}/snapshot"]
    assert not [s for s in rig.emulator.snapshots() if s["name"].startswith("codex-daytona-fork-")], "kept"

    # 2. The same prompt in three sandboxes at once; each takes its own steps.
    d1, d2, d3 = (ids[n] for n in NAMES)
    u1, u2 = {"input_tokens": 1000, "output_tokens": 10}, {"input_tokens": 2000, "output_tokens": 20}
    rig.model.enqueue(
        turn(run(STAMPED_SLEEP), match=d1, usage=u1),
        turn(patch(add_file_patch("one.txt", "1")), match=d1, usage=u1),
        turn(msg("first attempt"), match=d1, usage=u1),
        turn(run(STAMPED_SLEEP), match=d2, usage=u2),
        turn(run("false"), match=d2, usage=u2),
        turn(
            patch(TWO_FILES),
            match=d2,
            usage=u2,
        ),
        turn(msg("second attempt"), match=d2, usage=u2),
        turn(run(STAMPED_SLEEP), match=d3),
        *[error(401, "Incorrect API key provided", match=d3) for _ in range(12)],
    )
    fanned = rig.cli("ask", "--fanout", "3", "--new-thread", "--json", "try it", timeout=300)
    assert fanned.code == 3, fanned  # one turn failed
    data = json.loads(fanned.stdout)
    assert data["exit_code"] == 3 and not data["interrupted"]
    rows = {row["name"]: row for row in data["sandboxes"]}
    assert list(rows) == NAMES
    assert rows["default-1"]["status"] == "completed" and rows["default-1"]["final_message"] == "first attempt"
    assert rows["default-1"]["usage"]["input_tokens"] == 3000 and rows["default-1"]["usage"]["output_tokens"] == 30
    assert (rows["default-1"]["files_changed"], rows["default-1"]["commands_failed"]) == (1, 0)
    assert rows["default-2"]["status"] == "completed" and rows["default-2"]["usage"]["input_tokens"] == 8000
    assert (rows["default-2"]["files_changed"], rows["default-2"]["commands_failed"]) == (2, 1)
    assert rows["default-2"]["commands_run"] == 2
    assert rows["default-3"]["status"] == "failed" and "401" in rows["default-3"]["error"], rows["default-3"]
    assert rows["default-3"]["exit_code"] == 3
    assert not rig.model.remaining()[:1] or all(s.get("match") == d3 for s in rig.model.remaining())
    # At once: each sandbox's sleep began before any of them ended (their own clocks say so).
    spans = {name: _stamps(rig, ids[name]) for name in NAMES}
    assert max(b for b, _ in spans.values()) < min(e for _, e in spans.values()), spans

    # 3. ls shows all four; keep makes default-2 the default, down --others deletes the rest
    # but the sandbox it was forked from, which Daytona deletes only after its forks: stopped.
    listed = json.loads(rig.cli("ls", "--json").stdout)["sandboxes"]
    assert [s["name"] for s in listed] == ["default", *NAMES]
    assert [s["current"] for s in listed] == [True, False, False, False]
    assert all(s["state"] == "started" for s in listed)
    assert listed[2]["last_turn"]["status"] == "completed"
    assert rig.cli("ls", "-q").stdout.split() == [s["sandbox_id"] for s in listed]
    kept = rig.cli("keep", "default-2", "-q")
    assert kept.code == 0 and kept.stdout.strip() == d2, kept
    assert _ids(rig) == {"default": d2, "default-1": d1, "default-2": base_id, "default-3": d3}
    down = rig.cli("down", "--others", "--yes", "--json")
    assert down.code == 0, down
    assert json.loads(down.stdout)["deleted"] == [
        {"name": "default-1", "sandbox_id": d1},
        {"name": "default-3", "sandbox_id": d3},
    ], down
    assert json.loads(down.stdout)["stopped"] == [{"name": "default-2", "sandbox_id": base_id}], down
    assert f"Stopped default-2 (sandbox {base_id}) instead of deleting it" in down.stderr, down
    assert _ids(rig) == {"default": d2, "default-2": base_id}
    assert _live(rig) == {d2, base_id}
    assert (rig.sandbox(base_id) or {}).get("state") == "stopped"
    for gone in (d1, d3):
        assert (rig.sandbox(gone) or {}).get("state") == "destroyed"
    assert (rig.project / "two.txt").exists() is False  # nothing was pulled; the work is in the sandbox
    assert rig.cli("exec", "--", "cat", "two.txt").stdout.strip() == "2"


@pytest.mark.e2e
def test_ctrl_c_interrupts_every_turn_and_orphans_nothing(rig: Rig) -> None:
    try:
        assert rig.cli("up").code == 0
        rig.model.enqueue(*[turn(run("sleep 60", yield_time_ms=60000)) for _ in range(2)])
        rig.model.enqueue(*[turn(msg("unreachable")) for _ in range(2)])
        proc = rig.popen_piped("ask", "--fanout", "2", "--new-thread", "-q", "sleep a minute")

        def both_sleeping() -> bool:
            ids = _ids(rig)
            return all(n in ids and sandbox_processes(ids[n], "sleep 60") for n in ("default-1", "default-2"))

        _wait_for(both_sleeping, timeout=120)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130, stderr
        # Well before the grace for stragglers ran out: the turns were interrupted, not waited for.
        assert time.monotonic() - sent < CANCEL_GRACE_S
        assert "Traceback" not in stderr
        assert stdout == ""  # -q: the names of the completed ones, and none completed
        ids = _ids(rig)
        for name in ("default-1", "default-2"):
            _wait_for(lambda n=name: not sandbox_processes(ids[n], "sleep 60"), timeout=10)
            assert rig.state()["sandboxes"][name]["last_turn"]["status"] == "interrupted"
        assert _live(rig) == set(ids.values())  # every sandbox Daytona has is in the state file
    finally:
        _cleanup(rig)


@pytest.mark.e2e
def test_names_are_checked(rig: Rig) -> None:
    bad = rig.cli("status", "--name", "no spaces")
    assert bad.code == 2 and "Invalid sandbox name" in bad.stderr, bad
    from_env = rig.cli("status", env={"CODEX_DAYTONA_SANDBOX": "a/b"})
    assert from_env.code == 4 and "CODEX_DAYTONA_SANDBOX" in from_env.stderr, from_env
    named = rig.cli("status", "-q", env={"CODEX_DAYTONA_SANDBOX": "feature-x"})
    assert named.code == 0 and named.stdout.strip() == "none", named
    missing = rig.cli("diff", "--name", "feature-x")
    assert missing.code == 5 and "feature-x" in missing.stderr, missing


@pytest.mark.e2e
def test_fanout_above_the_limit_is_a_usage_error(rig: Rig) -> None:
    over = rig.cli("ask", "--fanout", "6", "hello")
    assert over.code == 2 and "CODEX_DAYTONA_MAX_SANDBOXES" in over.stderr, over
    lowered = rig.cli("ask", "--fanout", "3", "hello", env={"CODEX_DAYTONA_MAX_SANDBOXES": "2"})
    assert lowered.code == 2, lowered
    assert rig.state() == {} and not _live(rig)
