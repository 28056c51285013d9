"""The emulator answers Daytona's state and error paths as Daytona's source does (the rows of
tests/fakes/DAYTONA.md), checked through the unmodified SDK."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests import test_emulator as base
from tests.fakes.daytona import DaytonaEmulator
from tests.test_emulator import wait_for

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

    handle = sandbox.process.create_pty_session("zero", pty_size=PtySize(rows=0, cols=0))
    handle.kill()
    with pytest.raises(DaytonaError, match="HTTP 400"):  # the daemon: "must be less than 1000"
        sandbox.process.create_pty_session("huge", pty_size=PtySize(rows=24, cols=1001))
