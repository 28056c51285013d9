"""Conformance of the Daytona emulator to the daemon and proxy (daytona-sdk-wire.md: "How the
daemon runs a session command", "Streaming logs", "Preview links as the proxy serves them",
"Activity and auto-stop"), driven through the real SDK."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests import test_emulator as base
from tests.fakes.daytona import STDERR_MARK, STDOUT_MARK, DaytonaEmulator
from tests.test_emulator import API_KEY, free_port, http, pid_alive, read_pids, run_async, wait_for

# The fixtures of the emulator's own tests (one emulator per module, faults reset around each test).
emulator = base.emulator
daytona = base.daytona
sandbox = base.sandbox
_reset_faults = base._reset_faults


def session_dir(emu: DaytonaEmulator, sb: Any, sid: str) -> Path:
    return emu.home_dir(sb.id) / ".daytona" / "sessions" / sid


def run_sync(sb: Any, sid: str, command: str) -> Any:
    from daytona import SessionExecuteRequest

    return sb.process.execute_session_command(sid, SessionExecuteRequest(command=command))


def follow(sb: Any, sid: str, cid: str) -> tuple[str, str]:
    out: list[str] = []
    err: list[str] = []
    asyncio.run(sb.process.get_session_command_logs_async(sid, cid, out.append, err.append))
    return "".join(out), "".join(err)


async def raw_frames(
    emu: DaytonaEmulator, sb: Any, sid: str, cid: str, quiet_after: float | None = None
) -> tuple[list[bytes], Any, float]:
    """Read a follow-logs WebSocket frame by frame: (frames, final message type/close code, time).
    With ``quiet_after``, stop (without a close) once no frame came for that many seconds."""
    import aiohttp

    url = f"{emu.base_url}/toolbox/{sb.id}/process/session/{sid}/command/{cid}/logs?follow=true"
    frames: list[bytes] = []
    started = time.monotonic()
    async with (
        aiohttp.ClientSession() as client,
        client.ws_connect(url, headers={"Authorization": f"Bearer {API_KEY}"}, autoping=False) as ws,
    ):
        while True:
            try:
                msg = await ws.receive(timeout=quiet_after)
            except asyncio.TimeoutError:
                return frames, "quiet", time.monotonic() - started
            if msg.type == aiohttp.WSMsgType.BINARY:
                frames.append(msg.data)
            elif msg.type == aiohttp.WSMsgType.PING:
                return frames, "ping", time.monotonic() - started
            else:
                return frames, (msg.type, ws.close_code), time.monotonic() - started


# -- 1. a session is one long-lived shell ------------------------------------------------------


def test_session_is_one_shell_in_its_own_group_started_in_home(emulator: DaytonaEmulator, sandbox: Any) -> None:
    from daytona import DaytonaError

    sandbox.process.create_session("one")
    first = run_sync(sandbox, "one", "echo $$; pwd")
    second = run_sync(sandbox, "one", "echo $$")
    pid = int(first.stdout.split()[0])
    assert int(second.stdout) == pid, "every command runs in the same shell"
    assert first.stdout.split()[1] == str(emulator.home_dir(sandbox.id))
    assert os.getpgid(pid) == pid, "the shell leads its own process group"
    assert Path(f"/proc/{pid}/exe").resolve().name == "zsh", "zsh, since /etc/shells lists it"
    with pytest.raises(DaytonaError) as err:
        sandbox.process.create_session("one")
    assert err.value.status_code == 409


# -- 2. commands are sourced one after another -------------------------------------------------


def test_async_commands_of_a_session_run_one_after_another(emulator: DaytonaEmulator, sandbox: Any) -> None:
    sandbox.process.create_session("seq")
    first = run_async(sandbox, "seq", "echo start1 >> order; sleep 1; echo end1 >> order")
    second = run_async(sandbox, "seq", "echo start2 >> order")
    time.sleep(0.5)
    assert sandbox.process.get_session_command("seq", second).exit_code is None, "queued behind the first"
    wait_for(lambda: sandbox.process.get_session_command("seq", second).exit_code == 0)
    assert (emulator.home_dir(sandbox.id) / "order").read_text().split() == ["start1", "end1", "start2"]
    assert sandbox.process.get_session_command("seq", first).exit_code == 0


def test_cd_and_export_carry_over_to_the_next_command(sandbox: Any) -> None:
    sandbox.fs.create_folder("sub", "755")
    sandbox.process.create_session("state")
    run_sync(sandbox, "state", "cd sub; export CARRIED=yes")
    result = run_sync(sandbox, "state", 'echo "$(pwd)|$CARRIED"')
    assert result.stdout == f"{sandbox.get_user_home_dir()}/sub|yes\n"


def test_command_files_on_disk(emulator: DaytonaEmulator, sandbox: Any) -> None:
    sandbox.process.create_session("files")
    result = run_sync(sandbox, "files", "echo out; echo err >&2; printf tail; (exit 5)")
    cdir = session_dir(emulator, sandbox, "files") / result.cmd_id
    assert (cdir / "cmd.sh").read_text() == "echo out; echo err >&2; printf tail; (exit 5)"
    assert (cdir / "cmd.sh").stat().st_mode & 0o777 == 0o600
    assert (cdir / "exit_code").read_text() == "5\n"
    log = (cdir / "output.log").read_bytes()
    # one marker per line; a last line without a newline gets one
    assert sorted(log.splitlines(keepends=True)) == sorted(
        [STDOUT_MARK + b"out\n", STDERR_MARK + b"err\n", STDOUT_MARK + b"tail\n"]
    )
    assert not any(cdir.glob("*.pipe")), "the FIFOs are removed at the end"
    # the sync answer: raw log with markers as output, demultiplexed stdout/stderr
    assert result.exit_code == 5
    assert result.output == log.decode()
    assert (result.stdout, result.stderr) == ("out\ntail\n", "err\n")
    logs = sandbox.process.get_session_command_logs("files", result.cmd_id)
    assert (logs.output, logs.stdout, logs.stderr) == (log.decode(), "out\ntail\n", "err\n")


@pytest.mark.parametrize("killer", ["exit 3", "exec true", "set -e; false"])
def test_exit_or_exec_in_a_command_ends_the_session_shell(sandbox: Any, killer: str) -> None:
    from daytona import DaytonaError

    sandbox.process.create_session("doomed")
    pid = int(run_sync(sandbox, "doomed", "echo $$").stdout)
    cid = run_async(sandbox, "doomed", killer)
    wait_for(lambda: not pid_alive(pid))
    time.sleep(0.2)
    assert sandbox.process.get_session_command("doomed", cid).exit_code is None, "no exit code, ever"
    with pytest.raises(DaytonaError) as err:
        run_async(sandbox, "doomed", "echo never")
    # Daytona's exec handler wraps the error and its middleware does not unwrap: 500.
    assert err.value.status_code == 500
    assert "failed to execute command: failed to write command: broken pipe" in str(err.value)


def test_a_command_for_a_missing_session_is_500_session_not_found(sandbox: Any) -> None:
    """Daytona v0.190.0 toolbox/process/session/execute.go: `fmt.Errorf("failed to execute
    command: %w", NotFoundError)` falls to the daemon's default handler: 500, not 404."""
    from daytona import DaytonaError

    with pytest.raises(DaytonaError) as err:
        run_async(sandbox, "never-made", "echo never")
    assert err.value.status_code == 500
    assert "failed to execute command: session not found" in str(err.value)


def test_a_session_that_exists_is_409_and_an_empty_command_400(sandbox: Any) -> None:
    """`pkg/session/create.go`: a second create of one session id is 409 (the tool takes it
    for made); `execute.go`: an empty command is 400."""
    from daytona import DaytonaError, SessionExecuteRequest

    sandbox.process.create_session("twice")
    with pytest.raises(DaytonaError, match="session already exists") as again:
        sandbox.process.create_session("twice")
    assert again.value.status_code == 409
    with pytest.raises(DaytonaError, match="command cannot be empty") as empty:
        sandbox.process.execute_session_command("twice", SessionExecuteRequest(command=""))
    assert empty.value.status_code == 400


def test_background_child_holding_stdout_keeps_the_command_running(sandbox: Any) -> None:
    sandbox.process.create_session("bg")
    started = time.monotonic()
    held = run_async(sandbox, "bg", "sleep 2 &")
    time.sleep(0.5)
    assert sandbox.process.get_session_command("bg", held).exit_code is None
    follow(sandbox, "bg", held)
    assert time.monotonic() - started >= 2, "the log stream closes only after the child exits"
    assert sandbox.process.get_session_command("bg", held).exit_code == 0

    free = run_async(sandbox, "bg", "sleep 3 > /dev/null 2>&1 &")
    wait_for(lambda: sandbox.process.get_session_command("bg", free).exit_code == 0, timeout=1.5)


# -- 4. following logs -------------------------------------------------------------------------


def test_follow_replays_from_byte_zero_in_1k_frames_and_closes_a_second_after_exit(
    emulator: DaytonaEmulator, sandbox: Any
) -> None:
    sandbox.process.create_session("big")
    cid = run_async(sandbox, "big", "for i in $(seq 400); do echo line-$i; done; sleep 0.5; echo last >&2")
    frames, end, elapsed = asyncio.run(raw_frames(emulator, sandbox, "big", cid))
    log = (session_dir(emulator, sandbox, "big") / cid / "output.log").read_bytes()
    assert b"".join(frames) == log
    assert max(len(f) for f in frames) <= 1024 and len(frames) > 3
    assert end[1] == 1000
    assert elapsed >= 1.4, "closed about 1 s after the command ended (0.5 s in)"
    # every connection starts over at byte 0
    again, end, elapsed = asyncio.run(raw_frames(emulator, sandbox, "big", cid))
    assert b"".join(again) == log and end[1] == 1000 and 0.9 <= elapsed < 2.5
    out, err = follow(sandbox, "big", cid)
    assert out.count("line-") == 400 and err == "last\n"
    # the emulator records who ended each stream: here Daytona's side, every time
    [record] = [c for c in emulator.commands(sandbox.id) if c["cmdId"] == cid]
    assert record["streamsEndedBy"] == ["server", "server", "server"]


def test_follow_never_pings_and_answers_pings(emulator: DaytonaEmulator, sandbox: Any) -> None:
    import aiohttp

    sandbox.process.create_session("ping")
    cid = run_async(sandbox, "ping", "sleep 30")

    async def probe() -> tuple[Any, Any]:
        url = f"{emulator.base_url}/toolbox/{sandbox.id}/process/session/ping/command/{cid}/logs?follow=true"
        async with (
            aiohttp.ClientSession() as client,
            client.ws_connect(url, headers={"Authorization": f"Bearer {API_KEY}"}, autoping=False) as ws,
        ):
            try:
                unsolicited = await ws.receive(timeout=1.5)
            except asyncio.TimeoutError:
                unsolicited = None
            await ws.ping(b"hi")
            pong = await ws.receive(timeout=2)
            return unsolicited, pong

    unsolicited, pong = asyncio.run(probe())
    assert unsolicited is None
    assert (pong.type, pong.data) == (aiohttp.WSMsgType.PONG, b"hi")


def test_drop_fault_strikes_only_inside_the_log_and_is_counted(emulator: DaytonaEmulator, sandbox: Any) -> None:
    from daytona import DaytonaError

    sandbox.process.create_session("drop")
    short = run_sync(sandbox, "drop", "echo short").cmd_id
    emulator.set_faults(drop_log_streams=1, drop_after_bytes=100)
    assert follow(sandbox, "drop", short) == ("short\n", "")
    assert emulator.faults()["drop_log_streams"] == 1 and emulator.faults()["drops_done"] == 0

    long = run_sync(sandbox, "drop", "seq 100").cmd_id
    log = (session_dir(emulator, sandbox, "drop") / long / "output.log").read_bytes()
    frames, end, _ = asyncio.run(raw_frames(emulator, sandbox, "drop", long))
    assert b"".join(frames) == log[:100]
    assert end[1] == 1011
    assert emulator.faults()["drop_log_streams"] == 0 and emulator.faults()["drops_done"] == 1
    emulator.set_faults(drop_log_streams=1)
    with pytest.raises(DaytonaError, match="1011"):
        follow(sandbox, "drop", long)


def test_stall_fault_stops_sending_without_closing(emulator: DaytonaEmulator, sandbox: Any) -> None:
    sandbox.process.create_session("stall")
    cid = run_async(sandbox, "stall", "echo 0123456789; sleep 0.3; echo more; sleep 0.3; echo end")
    emulator.set_faults(stall_log_streams=1, drop_after_bytes=8)
    frames, end, _ = asyncio.run(raw_frames(emulator, sandbox, "stall", cid, quiet_after=2.0))
    assert b"".join(frames) == STDOUT_MARK + b"01234"
    assert end == "quiet"
    assert sandbox.process.get_session_command("stall", cid).exit_code == 0, "the log grew and ended meanwhile"
    assert emulator.faults()["stalls_done"] == 1


def test_half_close_fault_drops_tcp_without_a_close_frame(emulator: DaytonaEmulator, sandbox: Any) -> None:
    import aiohttp

    sandbox.process.create_session("half")
    cid = run_sync(sandbox, "half", "seq 50").cmd_id
    emulator.set_faults(half_close_log_streams=1, drop_after_bytes=10)
    frames, end, _ = asyncio.run(raw_frames(emulator, sandbox, "half", cid))
    assert len(b"".join(frames)) == 10
    assert end[0] in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR) and end[1] != 1000
    assert emulator.faults()["half_closes_done"] == 1


def test_reset_zeroes_faults_and_restores_config(emulator: DaytonaEmulator) -> None:
    emulator.set_faults(fail_next=2, stall_log_streams=1, drop_after_bytes=5)
    emulator.set_config(autostop_seconds_per_minute=3)
    emulator.set_faults(drop_log_streams=1)
    status, _ = http(f"{emulator.base_url}/_emulator/reset", data=b"")
    assert status == 200
    assert set(emulator.faults().values()) == {0}
    assert emulator.set_config()["autostop_seconds_per_minute"] == 0


# -- 5. input ----------------------------------------------------------------------------------


def test_input_is_echoed_unless_suppressed(emulator: DaytonaEmulator, sandbox: Any) -> None:
    from daytona import SessionExecuteRequest

    sandbox.process.create_session("in")
    for suppress in (False, True):
        cid = sandbox.process.execute_session_command(
            "in",
            SessionExecuteRequest(command="read a; echo got:$a", run_async=True, suppress_input_echo=suppress),
        ).cmd_id
        wait_for((session_dir(emulator, sandbox, "in") / cid / "input.pipe").exists)
        sandbox.process.send_session_command_input("in", cid, "typed")  # a newline is added

        def finished(cid: str | None = cid) -> bool:
            return bool(sandbox.process.get_session_command("in", cid).exit_code == 0)

        wait_for(finished)
        stdout = sandbox.process.get_session_command_logs("in", cid).stdout
        expected = ["got:typed\n"] if suppress else ["got:typed\n", "typed\n"]
        assert sorted(stdout.splitlines(keepends=True)) == expected


def test_input_answers_404_500_and_410(sandbox: Any) -> None:
    from daytona import DaytonaError

    sandbox.process.create_session("q")
    running = run_async(sandbox, "q", "sleep 1")
    queued = run_async(sandbox, "q", "read x; echo $x")
    with pytest.raises(DaytonaError) as err:
        sandbox.process.send_session_command_input("q", queued, "early")
    assert err.value.status_code == 500, "the queued command has no stdin FIFO yet"
    with pytest.raises(DaytonaError) as err:
        sandbox.process.send_session_command_input("q", "no-such-command", "x")
    assert err.value.status_code == 404
    wait_for(lambda: sandbox.process.get_session_command("q", running).exit_code == 0)
    with pytest.raises(DaytonaError) as err:
        sandbox.process.send_session_command_input("q", running, "late")
    assert err.value.status_code == 410


# -- 6. delete_session -------------------------------------------------------------------------


def test_delete_session_kills_the_tree_but_not_a_daemon(emulator: DaytonaEmulator, sandbox: Any) -> None:
    home = emulator.home_dir(sandbox.id)
    sandbox.process.create_session("tree")
    run_async(sandbox, "tree", "sleep 100 & echo $! > child.pid; setsid sleep 100 & echo $! > escaped.pid; wait")
    sandbox.process.create_session("spawner")
    run_sync(sandbox, "spawner", "setsid sh -c 'sleep 100 > /dev/null 2>&1 & echo $! > daemon.pid' < /dev/null")
    child, escaped, daemon = wait_for(lambda: read_pids(home, "child.pid", "escaped.pid", "daemon.pid"))
    assert all(pid_alive(p) for p in (child, escaped, daemon))

    sandbox.process.delete_session("tree")
    assert not pid_alive(child), "same process group"
    assert not pid_alive(escaped), "own group, but a descendant of the shell"
    assert not session_dir(emulator, sandbox, "tree").exists()
    sandbox.process.delete_session("spawner")
    assert pid_alive(daemon), "double-forked out of the tree and the group: survives, as on Daytona"
    os.kill(daemon, signal.SIGKILL)


# -- 7. process.exec ---------------------------------------------------------------------------


def test_exec_waits_for_every_holder_of_its_output(sandbox: Any) -> None:
    from daytona import DaytonaTimeoutError

    assert sandbox.process.exec('echo "${ZSH_VERSION:+zsh}"').result == "zsh\n"
    started = time.monotonic()
    sandbox.process.exec("sleep 2 &")
    assert time.monotonic() - started >= 2
    started = time.monotonic()
    sandbox.process.exec("sleep 2 > /dev/null 2>&1 &")
    assert time.monotonic() - started < 1
    started = time.monotonic()
    with pytest.raises(DaytonaTimeoutError):
        sandbox.process.exec("echo $$ > exec.pid; sleep 30", timeout=1)
    assert time.monotonic() - started < 3


# -- 8. preview proxy --------------------------------------------------------------------------


def test_preview_auth_order_signin_redirect_and_empty_502(
    emulator: DaytonaEmulator, daytona: Any, sandbox: Any
) -> None:
    import urllib.request

    from daytona import DaytonaError

    port = free_port()
    sandbox.process.exec(f"{sys.executable} -m http.server {port} --bind 127.0.0.1 > /dev/null 2>&1 &")
    link = sandbox.get_preview_link(port)
    wait_for(lambda: http(link.url, {"X-Daytona-Preview-Token": link.token})[0] == 200, timeout=10)
    assert http(link.url, {"Authorization": f"Bearer {API_KEY}"})[0] == 200
    assert http(f"{link.url}?DAYTONA_SANDBOX_AUTH_KEY={link.token}")[0] == 200

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        opener.open(link.url, timeout=5)
        raise AssertionError("expected a redirect")
    except urllib.error.HTTPError as refused:
        assert refused.code == 307
        signin = refused.headers["Location"]
    assert signin.startswith(f"{emulator.base_url}/_emulator/signin?")
    status, page = http(signin)
    assert status == 200 and b"<h1>" in page

    # signing in sets the cookie daytona-sandbox-auth-<sandbox id>; the plain link then works
    from http.cookiejar import CookieJar

    jar = CookieJar()
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    callback = emulator.base_url + page.split(b'href="')[1].split(b'"')[0].decode().replace("&amp;", "&")
    with browser.open(callback, timeout=5) as resp:
        assert resp.status == 200 and resp.url == link.url
    assert [c.name for c in jar] == [f"daytona-sandbox-auth-{sandbox.id}"]

    signed = sandbox.create_signed_preview_url(port)
    assert http(signed.url)[0] == 200
    for bad in (0, 86401):
        with pytest.raises(DaytonaError, match="expiresInSeconds must be between 1 second and 24 hours"):
            sandbox.create_signed_preview_url(port, expires_in_seconds=bad)

    assert http(sandbox.get_preview_link(free_port()).url, {"X-Daytona-Preview-Token": link.token}) == (502, b"")


def test_public_sandbox_preview_needs_no_auth(daytona: Any) -> None:
    from daytona import CreateSandboxFromSnapshotParams

    sb = daytona.create(CreateSandboxFromSnapshotParams(public=True))
    try:
        port = free_port()
        sb.process.exec(f"{sys.executable} -m http.server {port} --bind 127.0.0.1 > /dev/null 2>&1 &")
        url = sb.get_preview_link(port).url
        wait_for(lambda: http(url)[0] == 200, timeout=10)
    finally:
        daytona.delete(sb)


# -- 9. activity and auto-stop -----------------------------------------------------------------


def state_of(emu: DaytonaEmulator, sandbox_id: str) -> str:
    return str(next(s for s in emu.sandboxes() if s["id"] == sandbox_id)["state"])


def test_busy_process_does_not_keep_a_sandbox_alive_toolbox_calls_do(emulator: DaytonaEmulator, daytona: Any) -> None:
    from daytona import CreateSandboxFromSnapshotParams

    sb = daytona.create(CreateSandboxFromSnapshotParams(auto_stop_interval=1))
    try:
        emulator.set_config(autostop_seconds_per_minute=1.5)
        sb.process.exec("sleep 60 > /dev/null 2>&1 &")
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:  # toolbox calls keep it started past the idle window
            sb.get_user_home_dir()
            time.sleep(0.3)
        assert state_of(emulator, sb.id) == "started"
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:  # control-plane reads do not
            daytona.get(sb.id)
            time.sleep(0.3)
        assert state_of(emulator, sb.id) == "stopped", "idle despite the busy process and the GETs"
    finally:
        daytona.delete(sb)


def test_open_log_websocket_keeps_the_sandbox_alive(emulator: DaytonaEmulator, daytona: Any) -> None:
    from daytona import CreateSandboxFromSnapshotParams

    sb = daytona.create(CreateSandboxFromSnapshotParams(auto_stop_interval=1))
    try:
        emulator.set_config(autostop_seconds_per_minute=1.2)
        sb.process.create_session("watch")
        cid = run_async(sb, "watch", "sleep 3; echo done")
        assert follow(sb, "watch", cid) == ("done\n", "")  # about 4 s, over three idle windows
        assert state_of(emulator, sb.id) == "started"
    finally:
        daytona.delete(sb)


# -- 10. stop ----------------------------------------------------------------------------------


def test_stop_forgets_sessions_but_keeps_their_files(emulator: DaytonaEmulator, sandbox: Any) -> None:
    sandbox.process.create_session("kept")
    cid = run_sync(sandbox, "kept", "echo on-disk").cmd_id
    sandbox.stop()
    sandbox.start()
    assert sandbox.process.list_sessions() == []
    assert (session_dir(emulator, sandbox, "kept") / cid / "output.log").read_bytes() == STDOUT_MARK + b"on-disk\n"
    sandbox.process.create_session("kept")  # the id is free again


def test_an_inactive_snapshot_is_activated(emulator: DaytonaEmulator, daytona: Any, tmp_path: Path) -> None:
    (tmp_path / "snap").mkdir()
    added = emulator.add_snapshot("to-wake", tmp_path / "snap")
    emulator.set_snapshot_state("to-wake", "inactive")
    assert daytona.snapshot.get("to-wake").state.value == "inactive"
    daytona.snapshot.activate(daytona.snapshot.get("to-wake"))  # it passes through `pending`
    assert wait_for(lambda: daytona.snapshot.get(added["id"]).state.value == "active")


def test_the_default_image_has_uv_on_its_path_unless_configured_away(emulator: DaytonaEmulator, sandbox: Any) -> None:
    """daytona-sdk-wire.md "The default sandbox": the default image ships uv (and python3)."""
    found = sandbox.process.exec("command -v uv && uv --version && command -v python3")
    assert found.exit_code == 0, found.result
    _uv_path, version, python = found.result.strip().splitlines()
    assert version.startswith("uv ")
    # uv comes alone: the sandbox's python3 is still the system's, not this virtualenv's.
    assert Path(python).resolve() != Path(sys.executable).resolve()
    emulator.set_config(sandbox_uv=False)
    missing = sandbox.process.exec("command -v uv || echo no-uv")
    assert missing.result.strip() == "no-uv"
