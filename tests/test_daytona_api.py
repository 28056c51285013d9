"""The one module that talks to Daytona, against the emulator's daemon: what it relies on
of Daytona's sessions (one shell per session, commands one after another)."""

from __future__ import annotations

from typing import Any

from codex_daytona.errors import CommandGoneError
from codex_daytona.sandbox.daytona_api import DaytonaApi
from codex_daytona.settings import Settings
from tests import test_emulator as base
from tests.fakes.daytona import DaytonaEmulator
from tests.test_emulator import API_KEY, pid_alive, run_async, wait_for

emulator = base.emulator
daytona = base.daytona
sandbox = base.sandbox
_reset_faults = base._reset_faults


def _api(emulator: DaytonaEmulator) -> DaytonaApi:
    return DaytonaApi(Settings(daytona_api_key=API_KEY, daytona_api_url=emulator.api_url))


def _exit_code(api: DaytonaApi, sb: Any, session: str, command_id: str) -> int | None:
    return api.command_exit_code(sb, session, command_id)


def test_a_command_goes_into_a_new_session_and_a_dead_one_is_made_anew(emulator: DaytonaEmulator, sandbox: Any) -> None:
    api = _api(emulator)
    sb = api.get(sandbox.id)
    first = api.start_command(sb, "turns", "echo $$")  # no such session yet: created
    wait_for(lambda: _exit_code(api, sb, "turns", first) == 0)
    shell = int(api.command_logs(sb, "turns", first)[0])
    # A command that ends the session's shell (as `exec prog` would): Daytona then refuses
    # to write the next command into it ("failed to write command: broken pipe").
    run_async(sandbox, "turns", "exit 3")
    wait_for(lambda: not pid_alive(shell))
    again = api.start_command(sb, "turns", "echo two")
    wait_for(lambda: _exit_code(api, sb, "turns", again) == 0)
    assert api.command_logs(sb, "turns", again) == ("two\n", "")


def test_our_commands_never_echo_input_and_a_gone_command_says_so(emulator: DaytonaEmulator, sandbox: Any) -> None:
    api = _api(emulator)
    sb = api.get(sandbox.id)
    command_id = api.start_command(sb, "quiet", "read line; echo got-$line")
    wait_for(lambda: (emulator.home_dir(sb.id) / ".daytona/sessions/quiet" / command_id / "input.pipe").exists())
    sandbox.process.send_session_command_input("quiet", command_id, "secret-ish")
    wait_for(lambda: _exit_code(api, sb, "quiet", command_id) == 0)
    assert api.command_logs(sb, "quiet", command_id) == ("got-secret-ish\n", "")  # no echo of the input
    api.delete_session(sb, "quiet")
    try:
        api.command_exit_code(sb, "quiet", command_id)
    except CommandGoneError:
        pass
    else:
        raise AssertionError("a command of a deleted session must be reported gone")


def test_ctrl_c_while_a_chunk_is_handled_hands_no_chunk_over_twice(emulator: DaytonaEmulator, sandbox: Any) -> None:
    """Ctrl-C lands while our callback handles a chunk of a followed log: the stream stops,
    KeyboardInterrupt comes out of stream_logs, and no byte reached the callback twice (the
    SDK re-delivers a chunk whose callback raised, as it closes)."""
    import os
    import signal

    api = _api(emulator)
    sb = api.get(sandbox.id)
    command_id = api.start_command(sb, "lines", "for i in $(seq 1 50); do echo line-$i; done; sleep 30")
    seen: list[str] = []

    def on_stdout(text: str) -> None:
        seen.append(text)
        if len(seen) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # Python runs the handler before this callback returns

    try:
        api.stream_logs(sb, "lines", command_id, on_stdout, lambda _text: None, timeout=20)
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("Ctrl-C must come out of stream_logs as KeyboardInterrupt")
    received = "".join(seen)
    expected = "".join(f"line-{i}\n" for i in range(1, 51))
    assert expected.startswith(received), received
    api.delete_session(sb, "lines")


def test_daytona_failing_on_its_side_says_so_and_does_not_blame_the_key(
    emulator: DaytonaEmulator, sandbox: Any
) -> None:
    """A 5xx on a call not safe to repeat (starting a command) is Daytona's failure: the key
    and URL are fine, so the hint must not send the user off to check them."""
    import pytest

    from codex_daytona.errors import DaytonaError

    api = _api(emulator)
    sb = api.get(sandbox.id)
    emulator.set_faults(fail_next=1)
    with pytest.raises(DaytonaError) as failed:
        api.start_command(sb, "fails", "true")
    assert emulator.faults()["fail_next"] == 0, "the fault struck"
    assert failed.value.message.startswith("Daytona failed (HTTP 503) while trying to start a command"), failed.value
    assert "on Daytona's side" in failed.value.hint and "DAYTONA_API_KEY" not in failed.value.hint


def _receiving() -> list[Any]:
    """The threads waiting in a WebSocket session's receive() (the SDK's log streams)."""
    import sys
    import threading

    frames = sys._current_frames()
    stuck = []
    for thread in threading.enumerate():
        frame = frames.get(thread.ident or 0)
        while frame is not None:
            if frame.f_code.co_name == "receive" and frame.f_code.co_filename.endswith("httpx_ws/_api.py"):
                stuck.append(thread)
                break
            frame = frame.f_back
    return stuck


def test_a_stream_stopped_early_leaves_no_thread_behind(emulator: DaytonaEmulator, sandbox: Any) -> None:
    """A log stream we stop before Daytona closes it (at the run's closing event, as every
    turn does) leaves no thread waiting on its socket: in `batch`, `chat` and a fan-out such
    threads, one per turn, kept each turn's client and sandbox alive and the driver grew."""
    api = _api(emulator)
    sb = api.get(sandbox.id)
    before = len(_receiving())
    for n in range(3):
        command_id = api.start_command(sb, f"early-{n}", "echo started; sleep 30")
        seen: list[str] = []

        def started(seen: list[str] = seen) -> bool:
            return bool(seen)

        finished = api.stream_logs(
            sb, f"early-{n}", command_id, seen.append, lambda _text: None, timeout=20, until=started
        )
        assert finished and "".join(seen).startswith("started"), seen
    wait_for(lambda: len(_receiving()) == before, timeout=10)
    for n in range(3):
        api.delete_session(sb, f"early-{n}")


# --- SDK 0.226's newer failures, injected by the emulator --------------------------------------


def test_a_429_is_retried_on_a_call_safe_to_repeat_and_explained_on_one_that_is_not(
    emulator: DaytonaEmulator, sandbox: Any
) -> None:
    import pytest

    from codex_daytona.errors import DaytonaError

    api = _api(emulator)
    emulator.set_faults(rate_limit_next=2)
    assert [s.id for s in api.list({"suite": "emulator"})] == [sandbox.id]  # two 429s, then the answer
    assert emulator.faults()["rate_limit_next"] == 0
    sb = api.get(sandbox.id)
    emulator.set_faults(rate_limit_next=1)
    with pytest.raises(DaytonaError) as err:
        api.set_labels(sb, {"suite": "emulator"})  # not retried: one line says why
    assert err.value.message.startswith("Daytona is rate-limiting this API key (HTTP 429)"), err.value.message
    assert "Wait a minute" in (err.value.hint or "")


def test_a_queue_timeout_on_create_says_what_happened(emulator: DaytonaEmulator) -> None:
    import pytest

    from codex_daytona.errors import DaytonaError

    emulator.set_faults(queue_timeout_next_create=1)
    with pytest.raises(DaytonaError) as err:
        _api(emulator).create(labels={"suite": "queue"}, env={}, auto_stop_minutes=15, auto_delete_minutes=0)
    assert err.value.message.startswith("No Daytona runner was free in time"), err.value.message
    assert "DAYTONA_TARGET" in (err.value.hint or "")


def test_a_spot_eviction_on_start_reads_as_a_gone_sandbox(emulator: DaytonaEmulator, daytona: Any) -> None:
    import pytest
    from daytona import CreateSandboxFromSnapshotParams

    from codex_daytona.errors import SandboxGoneError

    sandbox = daytona.create(CreateSandboxFromSnapshotParams(labels={"suite": "spot"}))
    sandbox.stop()
    api = _api(emulator)
    sb = api.get(sandbox.id)
    emulator.set_faults(spot_evict_next_start=1)
    with pytest.raises(SandboxGoneError) as err:
        api.start(sb)
    assert f"Daytona preempted sandbox {sandbox.id} (spot eviction)" in err.value.message, err.value.message


def test_a_create_that_times_out_after_the_sandbox_exists_leaves_no_orphan(
    emulator: DaytonaEmulator, monkeypatch: Any
) -> None:
    import pytest

    from codex_daytona.errors import DaytonaError
    from codex_daytona.sandbox import daytona_api

    monkeypatch.setattr(daytona_api, "CREATE_TIMEOUT_S", 2)
    emulator.set_faults(stall_next_create=1)
    with pytest.raises(DaytonaError) as err:
        _api(emulator).create(labels={"suite": "stalled"}, env={}, auto_stop_minutes=15, auto_delete_minutes=0)
    assert "it was deleted" in err.value.message, err.value.message
    stalled = [s for s in emulator.sandboxes() if s["labels"].get("suite") == "stalled"]
    assert stalled and all(s["state"] == "destroyed" for s in stalled), stalled


def test_a_sandbox_reached_from_its_handle_makes_no_request_and_keeps_no_environment(
    emulator: DaytonaEmulator, daytona: Any
) -> None:
    """The state file's handle: the SDK's handle on a started sandbox is built from it without
    a request, and reaches the sandbox's toolbox; the sandbox's environment (which may name a
    secret) is not in it. A stopped sandbox has none."""
    from daytona import CreateSandboxFromSnapshotParams

    sandbox = daytona.create(CreateSandboxFromSnapshotParams(env_vars={"SECRETISH": "do-not-write-me"}))
    try:
        api = _api(emulator)
        handle = api.handle(api.get(sandbox.id))
        assert handle is not None and "do-not-write-me" not in handle and "SECRETISH" not in handle
        before = len(emulator.arrived())
        rebuilt = api.from_handle(handle)
        assert rebuilt is not None and rebuilt.id == sandbox.id
        assert [p for _, p in emulator.arrived()[before:] if not p.startswith("/api/socket.io")] == []
        assert api.exec(rebuilt, "echo reached").output.strip() == "reached"
        assert api.from_handle("{not json") is None
        emulator.stop_sandbox(sandbox.id)
        assert api.handle(api.get(sandbox.id)) is None
    finally:
        daytona.delete(sandbox)
