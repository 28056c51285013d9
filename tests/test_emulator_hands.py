"""Conformance of the Daytona emulator's newer calls (SDK 0.226.1): pause and resume, fork,
SSH access and PTY sessions, driven through the unmodified SDK (daytona-sdk-wire.md, "Newer
SDK calls"; Daytona's api sandbox.service.ts and daemon pkg/toolbox/process/pty, v0.190.0)."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any

import pytest

from tests import test_emulator as base
from tests.e2e import sandbox_processes
from tests.fakes.daytona import DaytonaEmulator, process_state
from tests.test_emulator import API_KEY, http, open_pty, pid_alive, read_pids, wait_for

emulator = base.emulator
daytona = base.daytona
sandbox = base.sandbox
vm_sandbox = base.vm_sandbox
_reset_faults = base._reset_faults


def start_counter(sb: Any, emulator: DaytonaEmulator) -> tuple[int, Any]:
    """A background loop that counts in a file; returns its pid and the file."""
    sb.process.exec(
        "nohup sh -c 'echo $$ > counter.pid; i=0; while :; do i=$((i+1)); echo $i > count; sleep 0.05; done'"
        " >/dev/null 2>&1 &"
    )
    home = emulator.home_dir(sb.id)
    (pid,) = wait_for(lambda: read_pids(home, "counter.pid"))
    return pid, home / "count"


# --- pause and resume ------------------------------------------------------------------------


def test_pause_freezes_processes_and_start_resumes_them(vm_sandbox: Any, emulator: DaytonaEmulator) -> None:
    from daytona import DaytonaError

    pid, count = start_counter(vm_sandbox, emulator)
    vm_sandbox.pause()
    assert vm_sandbox.state.value == "paused"
    assert wait_for(lambda: process_state(pid) == "T"), process_state(pid)
    frozen = count.read_text()
    time.sleep(0.3)
    assert count.read_text() == frozen  # no CPU while paused
    # The toolbox does not answer for a paused vm_sandbox.
    with pytest.raises(DaytonaError):
        vm_sandbox.process.exec("true")
    with pytest.raises(DaytonaError, match="started state to pause"):
        vm_sandbox.pause()
    vm_sandbox.start()  # Daytona's start resumes a paused vm_sandbox
    assert vm_sandbox.state.value == "started"
    assert pid_alive(pid) and process_state(pid) != "T"
    assert wait_for(lambda: count.read_text() != frozen)
    assert vm_sandbox.process.exec("echo back").result.strip() == "back"


def test_a_paused_sandbox_stops_and_deletes(daytona: Any, emulator: DaytonaEmulator) -> None:
    from daytona import CreateSandboxFromSnapshotParams

    emulator.set_config(sandbox_class="linux-vm")
    sb = daytona.create(CreateSandboxFromSnapshotParams(labels={"suite": "emulator"}))
    pid, _ = start_counter(sb, emulator)
    sb.pause()
    sb.stop()
    assert sb.state.value == "stopped"
    assert wait_for(lambda: not pid_alive(pid))
    daytona.delete(sb)


def test_pause_refused_for_a_container_state_first(sandbox: Any, vm_sandbox: Any, emulator: DaytonaEmulator) -> None:
    """Daytona's pause checks the state (400) before the class (422); containers, the default
    class, never pause."""
    from daytona import DaytonaError

    assert sandbox.sandbox_class == "container" and vm_sandbox.sandbox_class == "linux-vm"
    with pytest.raises(DaytonaError, match="Pausing is not supported for this sandbox") as refused:
        sandbox.pause()
    assert refused.value.status_code == 422
    assert daytona_state(emulator, sandbox.id) == "started"
    sandbox.stop()
    with pytest.raises(DaytonaError, match="Sandbox must be in started state to pause") as stopped:
        sandbox.pause()
    assert stopped.value.status_code == 400


def daytona_state(emulator: DaytonaEmulator, sandbox_id: str) -> str:
    return str(next(s["state"] for s in emulator.sandboxes() if s["id"] == sandbox_id))


# --- fork ------------------------------------------------------------------------------------


def test_fork_copies_files_env_and_labels_not_processes(daytona: Any, emulator: DaytonaEmulator) -> None:
    from daytona import CreateSandboxFromSnapshotParams

    emulator.set_config(sandbox_class="linux-vm")
    source = daytona.create(
        CreateSandboxFromSnapshotParams(labels={"suite": "emulator", "k": "v"}, env_vars={"E": "1"})
    )
    try:
        source.process.exec("mkdir -p work && echo hello > work/file.txt")
        pid, _ = start_counter(source, emulator)
        fork = source.fork(name="the-fork")
        try:
            assert fork.state.value == "started"
            assert fork.id != source.id and fork.name == "the-fork"
            assert fork.labels["k"] == "v" and fork.env["E"] == "1"
            assert fork.process.exec("cat work/file.txt").result.strip() == "hello"
            # Independent from here on.
            fork.process.exec("echo changed > work/file.txt")
            assert source.process.exec("cat work/file.txt").result.strip() == "hello"
            # Processes are not copied: only the source's counter runs.
            assert pid_alive(pid)
            assert fork.process.exec("cat counter.pid").result.strip() == str(pid)
            assert sandbox_processes(fork.id, "count") == {}
        finally:
            daytona.delete(fork)
    finally:
        daytona.delete(source)


def test_fork_refused_for_a_container_class_first(sandbox: Any, vm_sandbox: Any) -> None:
    """Daytona's fork checks the class (422) before the state (400)."""
    from daytona import DaytonaError

    with pytest.raises(DaytonaError, match="Forking is not supported for this sandbox") as refused:
        sandbox.fork()
    assert refused.value.status_code == 422
    sandbox.stop()
    with pytest.raises(DaytonaError, match="Forking is not supported for this sandbox"):
        sandbox.fork()  # stopped, but the class is checked first
    vm_sandbox.stop()
    with pytest.raises(DaytonaError, match="started state to fork") as stopped:
        vm_sandbox.fork()
    assert stopped.value.status_code == 400


# --- SSH access ------------------------------------------------------------------------------


def test_ssh_access_create_validate_revoke_and_expiry(sandbox: Any, emulator: DaytonaEmulator) -> None:
    emulator.set_config(ssh_gateway="ssh.example.test:2222")
    access = sandbox.create_ssh_access(expires_in_minutes=30)
    assert access.sandbox_id == sandbox.id
    assert len(access.token) == 32 and access.token.isalnum()
    assert access.ssh_command == f"ssh -p 2222 {access.token}@ssh.example.test"
    minutes = (access.expires_at - datetime.now(timezone.utc)).total_seconds() / 60
    assert 29 < minutes <= 30
    assert sandbox.validate_ssh_access(access.token).valid is True

    emulator.set_config(ssh_gateway="ssh.example.test")
    second = sandbox.create_ssh_access()
    assert second.ssh_command == f"ssh {second.token}@ssh.example.test"
    # A new access revokes the earlier one (sandbox.service.ts createSshAccess).
    assert validate_raw(emulator, access.token) == {"valid": False, "sandboxId": None}
    sandbox.revoke_ssh_access(second.token)
    assert validate_raw(emulator, second.token)["valid"] is False

    expired = sandbox.create_ssh_access(expires_in_minutes=0)
    assert validate_raw(emulator, expired.token)["valid"] is False


def validate_raw(emulator: DaytonaEmulator, token: str) -> dict[str, Any]:
    """Raw: an invalid token's answer has sandboxId null, which the SDK's model rejects."""
    status, body = http(
        f"{emulator.api_url}/sandbox/ssh-access/validate?token={token}", {"Authorization": f"Bearer {API_KEY}"}
    )
    assert status == 200
    return dict(json.loads(body))


# --- PTY sessions ----------------------------------------------------------------------------


def read_until(handle: Any, needle: bytes, timeout: float = 10) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, seen[-500:]
        for data in handle._handle_events(time.monotonic() + min(remaining, 0.5)):
            seen += data
            if needle in seen:
                break
    return seen


def test_pty_session_runs_a_shell_in_the_home_resizes_and_exits_with_its_code(
    sandbox: Any, emulator: DaytonaEmulator
) -> None:
    from daytona.common.pty import PtySize

    handle = open_pty(sandbox, "term", envs={"GREETING": "hi"}, pty_size=PtySize(rows=30, cols=90))
    try:
        handle.send_input('echo "[$GREETING:$TERM:$(pwd)]"; stty size\n')
        home = str(emulator.home_dir(sandbox.id))
        out = read_until(handle, b"30 90")
        assert f"[hi:xterm-256color:{home}]".encode() in out
        info = sandbox.process.get_pty_session_info("term")
        assert (info.cols, info.rows, info.active, info.cwd) == (90, 30, True, home)
        assert [s.id for s in sandbox.process.list_pty_sessions()] == ["term"]

        handle.resize(PtySize(rows=40, cols=100))
        handle.send_input("stty size\n")
        read_until(handle, b"40 100")

        # Ctrl-C reaches the program in the terminal, not the shell.
        handle.send_input("sleep 30; echo slept-$((6*7))\n")
        time.sleep(0.5)
        handle.send_input(b"\x03")
        handle.send_input("echo after-$?\n")
        out = read_until(handle, b"after-130")
        assert b"slept-42" not in out

        handle.send_input("exit 5\n")
        result = handle.wait(timeout=10)
        assert result.exit_code == 5
        assert wait_for(lambda: sandbox.process.list_pty_sessions() == [])
    finally:
        handle.disconnect()


def test_pty_kill_ends_the_session_with_137_and_unknown_sessions_are_404(sandbox: Any) -> None:
    from daytona import DaytonaError, DaytonaNotFoundError

    handle = open_pty(sandbox, "doomed")
    try:
        handle.send_input("echo ready\n")
        read_until(handle, b"ready")
        handle.kill()
        result = handle.wait(timeout=10)
        assert result.exit_code == 137
    finally:
        handle.disconnect()
    with pytest.raises(DaytonaNotFoundError):
        sandbox.process.get_pty_session_info("doomed")
    with pytest.raises(DaytonaError):
        sandbox.process.connect_pty_session("doomed")


def test_the_sdk_gives_a_pty_up_when_connected_takes_over_a_tenth_of_a_second(
    sandbox: Any, emulator: DaytonaEmulator
) -> None:
    """SDK 0.226 waits 0.1 s for the daemon's `connected` message and then fails (its
    handshake catches TimeoutError; httpx-ws raises queue.Empty): what `shell` works around
    (daytona_api.open_pty). Should an SDK fix it, this fails and the work-around can go."""
    import queue

    from daytona import DaytonaError

    emulator.set_faults(slow_pty_handshake_ms=400)
    with pytest.raises(DaytonaError) as caught:
        sandbox.process.create_pty_session("slow")
    assert isinstance(caught.value.__cause__, queue.Empty)
    assert emulator.faults()["slow_pty_handshakes_done"] == 1
    handle = sandbox.process.create_pty_session("fast")  # one slow handshake only
    handle.disconnect()


def test_pty_survives_pause(vm_sandbox: Any) -> None:
    handle = open_pty(vm_sandbox, "paused")
    try:
        handle.send_input("X=kept\n")
        vm_sandbox.pause()
        vm_sandbox.start()
        handle.send_input("echo value-$X\n")
        read_until(handle, b"value-kept")
        handle.send_input("exit\n")
        assert handle.wait(timeout=10).exit_code == 0
    finally:
        handle.disconnect()
