"""The emulator answers Daytona's state and error paths as Daytona's source does (the rows of
tests/fakes/DAYTONA.md), checked through the unmodified SDK."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import test_emulator as base
from tests.fakes.daytona import DaytonaEmulator
from tests.test_emulator import open_pty, wait_for
from tests.test_emulator_hands import read_until

emulator = base.emulator
daytona = base.daytona
sandbox = base.sandbox
vm_sandbox = base.vm_sandbox
_reset_faults = base._reset_faults


def _state(emulator: DaytonaEmulator, sandbox_id: str) -> str:
    return str(next(s["state"] for s in emulator.sandboxes() if s["id"] == sandbox_id))


@pytest.fixture
def slow(emulator: DaytonaEmulator) -> Iterator[float]:
    seconds = 3.0
    emulator.set_config(transition_seconds=seconds)
    yield seconds


def test_start_stop_and_delete_during_a_change_are_409_and_stop_on_stopped_is_400(
    daytona: Any, sandbox: Any, emulator: DaytonaEmulator, slow: float
) -> None:
    from daytona import DaytonaError

    emulator.begin_stop(sandbox.id)
    assert _state(emulator, sandbox.id) == "stopping"
    for call in (sandbox.start, sandbox.stop, lambda: daytona.delete(sandbox)):
        with pytest.raises(DaytonaError, match="Sandbox state change in progress") as err:
            call()
        assert err.value.status_code == 409
    assert wait_for(lambda: _state(emulator, sandbox.id) == "stopped", timeout=slow + 5)
    sandbox.refresh_data()
    with pytest.raises(DaytonaError, match="Sandbox is not in a stoppable state") as stopped:
        sandbox.stop()
    assert stopped.value.status_code == 400
    began = time.monotonic()
    sandbox.start()  # passes through `starting`: the SDK waits for `started`
    assert sandbox.state.value == "started" and time.monotonic() - began >= slow - 0.5
    sandbox.start()  # a started sandbox is answered as it is
    assert sandbox.state.value == "started"


def test_a_sandbox_in_the_error_state_is_not_started_400(sandbox: Any, emulator: DaytonaEmulator) -> None:
    """`assertSandboxNotErrored`, checked before anything else but a started sandbox."""
    from daytona import DaytonaError

    emulator.break_sandbox(sandbox.id)
    sandbox.refresh_data()
    assert sandbox.state.value == "error"
    with pytest.raises(DaytonaError, match="Sandbox is in an errored state") as err:
        sandbox.start()
    assert err.value.status_code == 400


def test_a_start_issues_a_new_preview_token_and_a_resume_does_not(sandbox: Any, vm_sandbox: Any) -> None:
    before = sandbox.get_preview_link(3000).token
    sandbox.stop()
    sandbox.start()
    assert sandbox.get_preview_link(3000).token != before
    kept = vm_sandbox.get_preview_link(3000).token
    vm_sandbox.pause()
    vm_sandbox.start()
    assert vm_sandbox.get_preview_link(3000).token == kept


def test_exec_of_a_shell_killed_by_a_signal_reports_minus_1(sandbox: Any) -> None:
    assert sandbox.process.exec("kill -9 $$").exit_code == -1
    assert sandbox.process.exec("exit 3").exit_code == 3


def test_a_pty_of_0_by_0_is_accepted_and_over_1000_refused(sandbox: Any) -> None:
    from daytona import DaytonaError
    from daytona.common.pty import PtySize

    handle = open_pty(sandbox, "zero", pty_size=PtySize(rows=0, cols=0))
    handle.kill()
    with pytest.raises(DaytonaError, match="HTTP 400"):  # the daemon: "must be less than 1000"
        sandbox.process.create_pty_session("huge", pty_size=PtySize(rows=24, cols=1001))


# --- the working directory (daemon cmd/daemon/main.go, runner docker/container_configs.go) -----


def _pty_pwd(sandbox: Any, pty_id: str) -> str:
    handle = open_pty(sandbox, pty_id)
    try:
        handle.send_input("echo at-$(pwd)-$((20+22))\n")
        text = read_until(handle, b"-42\r\n").decode("utf-8", "replace")
    finally:
        handle.kill()
    return text[text.rindex("at-") + 3 : text.rindex("-42")]


def _where_commands_start(sandbox: Any) -> dict[str, str]:
    """Where each kind of command starts when the caller names no directory."""
    from daytona import SessionExecuteRequest

    sandbox.process.create_session("where")
    session = sandbox.process.execute_session_command("where", SessionExecuteRequest(command="pwd"))
    return {
        "work-dir": sandbox.get_work_dir(),
        "exec": sandbox.process.exec("pwd").result.strip(),
        "session": (session.stdout or session.output or "").strip(),
        "pty": _pty_pwd(sandbox, "where"),
    }


def test_without_a_workdir_commands_and_relative_uploads_start_in_the_home(sandbox: Any) -> None:
    home = sandbox.get_user_home_dir()
    assert _where_commands_start(sandbox) == dict.fromkeys(("work-dir", "exec", "session", "pty"), home)
    sandbox.fs.upload_file(b"relative", "rel/a.txt")
    assert Path(home, "rel", "a.txt").read_bytes() == b"relative"


def test_with_a_workdir_commands_and_relative_uploads_start_there_and_paths_are_used_as_given(
    daytona: Any, emulator: DaytonaEmulator
) -> None:
    """The image's WORKDIR, not the home, is where session, exec and PTY commands start and
    where a relative upload lands; `~` is a directory name like any other; absolute paths and
    an explicit cwd are used as given."""
    from daytona import CreateSandboxFromSnapshotParams

    emulator.set_config(sandbox_workdir="/workspace")
    sandbox = daytona.create(CreateSandboxFromSnapshotParams(labels={"suite": "emulator"}))
    try:
        home = sandbox.get_user_home_dir()
        workdir = str(emulator.sandbox_dir(sandbox.id) / "workspace")
        assert workdir != home
        assert _where_commands_start(sandbox) == dict.fromkeys(("work-dir", "exec", "session", "pty"), workdir)
        sandbox.fs.upload_file(b"relative", "rel/a.txt")
        sandbox.fs.upload_file(b"tilde", "~/b.txt")
        sandbox.fs.upload_file(b"absolute", f"{home}/c.txt")
        assert Path(workdir, "rel", "a.txt").read_bytes() == b"relative"
        assert Path(workdir, "~", "b.txt").read_bytes() == b"tilde"
        assert not Path(home, "rel").exists() and not Path(home, "b.txt").exists()
        assert Path(home, "c.txt").read_bytes() == b"absolute"
        assert sandbox.fs.download_file("rel/a.txt") == b"relative"
        assert sandbox.process.exec("pwd", cwd=home).result.strip() == home
    finally:
        daytona.delete(sandbox)


def test_a_snapshot_s_dockerfile_workdir_is_its_sandboxes_working_directory(
    daytona: Any, emulator: DaytonaEmulator
) -> None:
    from daytona import CreateSandboxFromSnapshotParams, CreateSnapshotParams, Image

    image = Image.base("python:3.12-slim").workdir("/app").workdir("src")
    snapshot = daytona.snapshot.create(CreateSnapshotParams(name="with-workdir", image=image))
    sandbox = daytona.create(CreateSandboxFromSnapshotParams(snapshot=snapshot.name))
    try:
        assert sandbox.get_work_dir() == str(emulator.sandbox_dir(sandbox.id) / "app" / "src")
        assert sandbox.process.exec("pwd").result.strip() == sandbox.get_work_dir()
    finally:
        daytona.delete(sandbox)
        daytona.snapshot.delete(snapshot)


# --- forks, deletes and snapshot activation (sandbox.service.ts, snapshot.service.ts) ---------


def test_a_sandbox_with_live_forks_is_deleted_only_after_them(
    daytona: Any, vm_sandbox: Any, emulator: DaytonaEmulator
) -> None:
    from daytona import DaytonaError

    child = vm_sandbox.fork()
    with pytest.raises(DaytonaError, match="Cannot delete sandbox which has active fork children") as refused:
        daytona.delete(vm_sandbox)
    assert refused.value.status_code == 400
    daytona.delete(child)
    daytona.delete(vm_sandbox)
    assert _state(emulator, vm_sandbox.id) == "destroyed"


def test_fork_and_pause_while_a_change_is_pending_are_409(vm_sandbox: Any, emulator: DaytonaEmulator) -> None:
    """Daytona's stop sets the desired state and `pending`, and its manager then moves the
    sandbox to `stopping`: in between the sandbox is `started` and pending. Fork and pause
    check the state first (400 once it is `stopping`), then pending (409)."""
    from daytona import DaytonaError

    emulator.set_config(pending_seconds=2.0, transition_seconds=1.0)
    emulator.begin_stop(vm_sandbox.id)
    assert _state(emulator, vm_sandbox.id) == "started"
    for call in (vm_sandbox.fork, vm_sandbox.pause, vm_sandbox.start):
        with pytest.raises(DaytonaError, match="Sandbox state change in progress") as err:
            call()
        assert err.value.status_code == 409
    assert wait_for(lambda: _state(emulator, vm_sandbox.id) == "stopping", timeout=10)
    with pytest.raises(DaytonaError, match="Sandbox must be in started state to fork") as stopping:
        vm_sandbox.fork()
    assert stopping.value.status_code == 400
    assert wait_for(lambda: _state(emulator, vm_sandbox.id) == "stopped", timeout=10)


def test_activating_a_snapshot_is_refused_when_active_or_just_deactivated(
    daytona: Any, emulator: DaytonaEmulator, tmp_path: Path
) -> None:
    """SDK 0.226's `snapshot.activate` does not translate errors: a refusal is the API
    client's own BadRequestException, not a DaytonaError."""
    from daytona_api_client.exceptions import BadRequestException

    (tmp_path / "snap").mkdir()
    added = emulator.add_snapshot("to-activate", tmp_path / "snap")
    try:
        with pytest.raises(BadRequestException) as active:
            daytona.snapshot.activate("to-activate")
        assert active.value.status == 400 and f"Snapshot {added['id']} is already active" in str(active.value.body)
        emulator.set_snapshot_state("to-activate", "inactive", ago=60)
        with pytest.raises(BadRequestException) as recent:
            daytona.snapshot.activate("to-activate")
        assert "Snapshot deactivation is still in progress. Please try again in a few minutes." in str(
            recent.value.body
        )
        emulator.set_snapshot_state("to-activate", "pending")
        with pytest.raises(BadRequestException) as passing:
            daytona.snapshot.activate("to-activate")
        assert f"Snapshot {added['id']} cannot be activated - it is in pending state" in str(passing.value.body)
        emulator.set_snapshot_state("to-activate", "inactive", ago=601)
        assert daytona.snapshot.activate("to-activate").state.value == "pending"
        assert wait_for(lambda: daytona.snapshot.get("to-activate").state.value == "active")
    finally:
        daytona.snapshot.delete(daytona.snapshot.get("to-activate"))


def _in_use(daytona: Any, field: str, states: frozenset[str]) -> int:
    """What the organization's sandboxes use of `field` in `states`, as the SDK lists them."""
    return sum(int(getattr(sb, field)) for sb in daytona.list() if sb.state.value in states)


def test_a_create_start_or_fork_past_the_organizations_quota_is_400(
    daytona: Any, sandbox: Any, vm_sandbox: Any, emulator: DaytonaEmulator
) -> None:
    """validateOrganizationQuotas: what the organization's sandboxes use in their states,
    plus the new one, must fit the region's quota; a started sandbox counts its CPU and memory,
    a stopped one only its disk; a start does not count the sandbox itself twice."""
    from daytona import CreateSandboxFromSnapshotParams, DaytonaError

    from tests.fakes.daytona import STATES_CONSUMING_COMPUTE, STATES_CONSUMING_DISK

    full = _in_use(daytona, "cpu", STATES_CONSUMING_COMPUTE)
    emulator.set_config(quota_cpu=full)
    for call in (lambda: daytona.create(CreateSandboxFromSnapshotParams()), vm_sandbox.fork):
        with pytest.raises(DaytonaError, match=rf"Total CPU limit exceeded. Maximum allowed: {full}.\n") as cpu:
            call()
        assert cpu.value.status_code == 400
        assert "upgrade your organization's Tier" in str(cpu.value)

    sandbox.stop()  # frees its CPU (not its disk): room for one more
    other = daytona.create(CreateSandboxFromSnapshotParams())
    with pytest.raises(DaytonaError, match="Total CPU limit exceeded") as start:
        sandbox.start()
    assert start.value.status_code == 400 and _state(emulator, sandbox.id) == "stopped"
    daytona.delete(other)
    sandbox.start()
    assert _state(emulator, sandbox.id) == "started"

    emulator.set_config(quota_cpu=None, quota_disk=_in_use(daytona, "disk", STATES_CONSUMING_DISK))
    sandbox.stop()  # a stopped sandbox's disk still counts
    with pytest.raises(
        DaytonaError, match=r"Total disk limit exceeded. Maximum allowed: \d+GiB.\nConsider archiving"
    ) as disk:
        daytona.create(CreateSandboxFromSnapshotParams())
    assert disk.value.status_code == 400
    sandbox.start()  # its own disk is not counted twice
    assert _state(emulator, sandbox.id) == "started"
