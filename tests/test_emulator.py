"""The Daytona emulator, exercised through the real, unmodified ``daytona`` SDK."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.daytona import DaytonaEmulator, process_alive, process_state

API_KEY = "test-key"
REPO_ROOT = Path(__file__).resolve().parent.parent
STANDALONE = [sys.executable, "-m", "tests.fakes.daytona", "--port", "0"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


pid_alive = process_alive  # alive and not a zombie


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def open_pty(sandbox: Any, pty_id: str, **kwargs: Any) -> Any:
    """`create_pty_session`, opened again when the SDK gives it up because `connected` took
    over its 0.1 s (a loaded machine; see test_emulator_hands'
    test_the_sdk_gives_a_pty_up_when_connected_takes_over_a_tenth_of_a_second)."""
    import contextlib

    from daytona import DaytonaError

    from codex_daytona.sandbox.daytona_api import _handshake_gave_up

    for attempt in range(3):
        try:
            return sandbox.process.create_pty_session(pty_id, **kwargs)
        except DaytonaError as exc:
            if attempt == 2 or not _handshake_gave_up(exc):
                raise
            with contextlib.suppress(DaytonaError):
                sandbox.process.kill_pty_session(pty_id)
    raise AssertionError("unreachable")


def read_pids(home: Path, *names: str) -> list[int] | None:
    """The pids written to files by sandbox commands, or None until all are there."""
    try:
        return [int((home / name).read_text()) for name in names]
    except (OSError, ValueError):
        return None


def http(url: str, headers: dict[str, str] | None = None, data: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaytonaEmulator]:
    root = tmp_path_factory.mktemp("daytona-emulator")
    with DaytonaEmulator(root, API_KEY, log_path=root / "requests.jsonl") as emu:
        yield emu


@pytest.fixture(autouse=True)
def _reset_faults(emulator: DaytonaEmulator) -> Iterator[None]:
    emulator.reset()
    yield
    emulator.reset()


@pytest.fixture(scope="module")
def daytona(emulator: DaytonaEmulator) -> Any:
    from daytona import Daytona, DaytonaConfig

    return Daytona(DaytonaConfig(api_key=API_KEY, api_url=emulator.api_url))


@pytest.fixture
def sandbox(daytona: Any) -> Iterator[Any]:
    from daytona import CreateSandboxFromSnapshotParams

    sb = daytona.create(CreateSandboxFromSnapshotParams(labels={"suite": "emulator"}))
    yield sb
    if sb.state.value != "destroyed":
        daytona.delete(sb)


@pytest.fixture
def vm_sandbox(daytona: Any, emulator: DaytonaEmulator) -> Iterator[Any]:
    """A sandbox of Daytona's VM class (`linux-vm`), which can fork and pause; the default
    class, a container, cannot."""
    from daytona import CreateSandboxFromSnapshotParams

    emulator.set_config(sandbox_class="linux-vm")
    sb = daytona.create(CreateSandboxFromSnapshotParams(labels={"suite": "emulator"}))
    emulator.set_config(sandbox_class="container")
    yield sb
    if sb.state.value != "destroyed":
        daytona.delete(sb)


def run_async(sb: Any, session: str, command: str) -> str:
    from daytona import SessionExecuteRequest

    return str(
        sb.process.execute_session_command(session, SessionExecuteRequest(command=command, run_async=True)).cmd_id
    )


# -- control plane ---------------------------------------------------------------------------


def test_create_get_list_with_labels_and_env(daytona: Any, emulator: DaytonaEmulator) -> None:
    from daytona import CreateSandboxFromSnapshotParams, DaytonaNotFoundError, ListSandboxesQuery

    sb = daytona.create(
        CreateSandboxFromSnapshotParams(
            name="labelled",
            labels={"project": "p1", "role": "agent"},
            env_vars={"GREETING": "hello world"},
            auto_stop_interval=7,
        )
    )
    try:
        assert sb.state.value == "started"
        assert sb.labels["project"] == "p1"
        assert daytona.get(sb.id).id == sb.id
        assert daytona.get("labelled").id == sb.id
        found = [s.id for s in daytona.list(ListSandboxesQuery(labels={"project": "p1", "role": "agent"}))]
        assert found == [sb.id]
        assert list(daytona.list(ListSandboxesQuery(labels={"project": "other"}))) == []

        info = next(s for s in emulator.sandboxes() if s["id"] == sb.id)
        assert info["env"] == {"GREETING": "hello world"}
        assert info["autoStopInterval"] == 7
        assert info["home"] == str(emulator.home_dir(sb.id))

        result = sb.process.exec('echo "$GREETING|$DAYTONA_SANDBOX_ID|$HOME"')
        assert result.result.strip() == f"hello world|{sb.id}|{emulator.home_dir(sb.id)}"
    finally:
        daytona.delete(sb)
    with pytest.raises(DaytonaNotFoundError):
        daytona.get(sb.id)


def test_wrong_api_key_is_401(emulator: DaytonaEmulator, sandbox: Any) -> None:
    from daytona import Daytona, DaytonaConfig, DaytonaError

    other = Daytona(DaytonaConfig(api_key="wrong", api_url=emulator.api_url))
    with pytest.raises(DaytonaError) as err:
        other.get(sandbox.id)
    assert err.value.status_code == 401
    status, body = http(f"{emulator.base_url}/toolbox/{sandbox.id}/user-home-dir")
    assert status == 401
    assert set(json.loads(body)) >= {"message", "code", "statusCode"}


# -- toolbox: files and exec -----------------------------------------------------------------


def test_home_dir_folder_upload_download(emulator: DaytonaEmulator, sandbox: Any) -> None:
    from daytona import DaytonaError

    home = emulator.home_dir(sandbox.id)
    assert sandbox.get_user_home_dir() == str(home)
    assert sandbox.get_work_dir() == str(home)

    sandbox.fs.create_folder("work/deep", "700")
    assert (home / "work/deep").is_dir()
    assert (home / "work/deep").stat().st_mode & 0o777 == 0o700

    payload = bytes(range(256)) * 10
    sandbox.fs.upload_file(payload, "work/deep/blob.bin")
    sandbox.fs.upload_file(b"absolute", f"{home}/abs/x.txt")
    assert (home / "work/deep/blob.bin").read_bytes() == payload
    assert (home / "abs/x.txt").read_bytes() == b"absolute"
    assert sandbox.fs.download_file("work/deep/blob.bin") == payload
    assert sandbox.fs.download_file(f"{home}/abs/x.txt") == b"absolute"
    with pytest.raises(DaytonaError):
        sandbox.fs.download_file("missing.txt")


def test_exec_exit_code_output_and_timeout(sandbox: Any) -> None:
    from daytona import DaytonaTimeoutError

    result = sandbox.process.exec("echo out; echo err >&2; exit 3")
    assert result.exit_code == 3
    assert result.result == "out\nerr\n"
    sandbox.fs.create_folder("sub", "755")
    assert sandbox.process.exec("sh -c 'pwd'", cwd="sub").result == f"{sandbox.get_user_home_dir()}/sub\n"
    assert sandbox.process.exec("echo $A", env={"A": "from-exec"}).result == "from-exec\n"
    started = time.monotonic()
    with pytest.raises(DaytonaTimeoutError):
        sandbox.process.exec("sleep 10", timeout=1)
    assert time.monotonic() - started < 4


# -- toolbox: sessions -----------------------------------------------------------------------


def test_session_logs_stream_before_the_command_ends(sandbox: Any) -> None:
    sandbox.process.create_session("s1")
    # "(exit 4)", not "exit 4": commands are sourced into the session shell, which "exit" would end.
    cid = run_async(sandbox, "s1", "echo first; echo oops >&2; sleep 2; echo second; (exit 4)")
    started = time.monotonic()
    stdout: list[tuple[float, str]] = []
    stderr: list[str] = []

    def on_stdout(text: str) -> None:
        stdout.append((time.monotonic() - started, text))

    asyncio.run(sandbox.process.get_session_command_logs_async("s1", cid, on_stdout, stderr.append))

    assert "".join(t for _, t in stdout) == "first\nsecond\n"
    assert "".join(stderr) == "oops\n"
    assert stdout[0][0] < 1.0, "the first chunk must arrive while the command still sleeps"
    assert sandbox.process.get_session_command("s1", cid).exit_code == 4
    logs = sandbox.process.get_session_command_logs("s1", cid)
    assert logs.stdout == "first\nsecond\n"
    assert logs.stderr == "oops\n"

    session = sandbox.process.get_session("s1")
    assert [c.id for c in session.commands] == [cid]
    assert [s.session_id for s in sandbox.process.list_sessions()] == ["s1"]
    sandbox.process.delete_session("s1")
    assert sandbox.process.list_sessions() == []


def test_session_sync_exec_and_followed_logs_after_exit(sandbox: Any) -> None:
    from daytona import SessionExecuteRequest

    sandbox.process.create_session("s2")
    result = sandbox.process.execute_session_command("s2", SessionExecuteRequest(command="echo a; echo b >&2"))
    assert (result.exit_code, result.stdout, result.stderr) == (0, "a\n", "b\n")
    out: list[str] = []
    err: list[str] = []
    asyncio.run(sandbox.process.get_session_command_logs_async("s2", result.cmd_id, out.append, err.append))
    # Two copy loops write the streams into the log, so their lines may interleave either way.
    assert ("".join(out), "".join(err)) == ("a\n", "b\n")


def test_session_command_input(emulator: DaytonaEmulator, sandbox: Any) -> None:
    from daytona import DaytonaError

    sandbox.process.create_session("s3")
    cid = run_async(sandbox, "s3", "read line; echo got:$line")
    assert sandbox.process.get_session_command("s3", cid).exit_code is None
    # Input can only be sent once the command's stdin FIFO exists (before, the daemon answers 500).
    fifo = emulator.home_dir(sandbox.id) / ".daytona/sessions/s3" / cid / "input.pipe"
    wait_for(fifo.exists)
    sandbox.process.send_session_command_input("s3", cid, "hello\n")
    wait_for(lambda: sandbox.process.get_session_command("s3", cid).exit_code == 0)
    # The daemon echoes input into the log as stdout (no suppress_input_echo here), after writing it
    # to the command: the echo and the command's own output may land in either order.
    stdout = sandbox.process.get_session_command_logs("s3", cid).stdout
    assert sorted(stdout.splitlines(keepends=True)) == ["got:hello\n", "hello\n"]
    with pytest.raises(DaytonaError) as err:
        sandbox.process.send_session_command_input("s3", cid, "late\n")
    assert err.value.status_code == 410


# -- preview proxy ---------------------------------------------------------------------------


def test_preview_proxy_tokens_and_signed_urls(sandbox: Any) -> None:
    port = free_port()
    sandbox.fs.upload_file(b"<h1>served from the sandbox</h1>", "site/index.html")
    sandbox.process.create_session("web")
    run_async(sandbox, "web", f"cd site && exec python3 -m http.server {port} --bind 127.0.0.1")

    link = sandbox.get_preview_link(port)
    assert link.url.endswith(f"/preview/{port}-{sandbox.id}/")
    auth = {"X-Daytona-Preview-Token": link.token}
    wait_for(lambda: http(link.url, auth)[0] == 200, timeout=10)
    status, body = http(link.url + "index.html?x=1", auth)
    assert (status, body) == (200, b"<h1>served from the sandbox</h1>")

    # Refused previews redirect (307) to a sign-in page, which answers 200 to a client that follows.
    assert http(link.url) == (200, http(link.url)[1])
    assert b"Sign in" in http(link.url, {"X-Daytona-Preview-Token": "wrong"})[1]

    signed = sandbox.create_signed_preview_url(port, expires_in_seconds=60)
    assert signed.port == port
    assert http(signed.url + "index.html")[0] == 200
    sandbox.expire_signed_preview_url(port, signed.token)
    assert b"Sign in" in http(signed.url + "index.html")[1]

    short = sandbox.create_signed_preview_url(port, expires_in_seconds=1)
    assert http(short.url)[0] == 200
    time.sleep(1.1)
    assert b"Sign in" in http(short.url)[1]

    unused = free_port()
    assert http(sandbox.get_preview_link(unused).url, auth) == (502, b"")


WS_ECHO_SERVER = """
import sys
from aiohttp import web

async def echo(request):
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        await ws.send_str("echo:" + msg.data)
    return ws

app = web.Application()
app.router.add_get("/ws", echo)
app.router.add_get("/", lambda request: web.Response(text="host-routed"))
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


def test_preview_proxies_websockets_and_host_routing(emulator: DaytonaEmulator, sandbox: Any) -> None:
    import aiohttp

    port = free_port()
    sandbox.fs.upload_file(WS_ECHO_SERVER.encode(), "ws_server.py")
    sandbox.process.create_session("ws")
    run_async(sandbox, "ws", f"exec {sys.executable} ws_server.py {port}")
    link = sandbox.get_preview_link(port)
    auth = {"X-Daytona-Preview-Token": link.token}
    wait_for(lambda: http(link.url, auth)[0] == 200, timeout=10)

    host = {**auth, "Host": f"{port}-{sandbox.id}.preview.localhost:{emulator.port}"}
    assert http(emulator.base_url + "/", host) == (200, b"host-routed")

    async def talk() -> str:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(link.url + "ws", headers=auth) as ws,
        ):
            await ws.send_str("hi")
            msg = await ws.receive(timeout=5)
            return str(msg.data)

    assert asyncio.run(talk()) == "echo:hi"


# -- lifecycle: stop / start / delete --------------------------------------------------------


def test_stop_kills_processes_and_keeps_files_then_start(emulator: DaytonaEmulator, sandbox: Any) -> None:
    from daytona import DaytonaError

    home = emulator.home_dir(sandbox.id)
    sandbox.fs.upload_file(b"keep me", "keep.txt")
    sandbox.process.create_session("bg")
    run_async(sandbox, "bg", "echo $$ > fg.pid; exec sleep 100")
    sandbox.process.exec("setsid sleep 100 > /dev/null 2>&1 & echo $! > setsid.pid")
    pids = wait_for(lambda: read_pids(home, "fg.pid", "setsid.pid"))
    assert all(pid_alive(p) for p in pids)

    sandbox.stop()
    assert sandbox.state.value == "stopped"
    assert not any(pid_alive(p) for p in pids)
    assert (home / "keep.txt").read_bytes() == b"keep me"
    # The toolbox of a stopped sandbox answers as Daytona's runner does (no container IP).
    with pytest.raises(DaytonaError, match="Is the Sandbox started") as refused:
        sandbox.process.exec("true")
    assert refused.value.status_code == 400

    sandbox.start()
    assert sandbox.state.value == "started"
    assert sandbox.process.exec("cat keep.txt").result == "keep me"


def spawn_with_pid(pid: int, attempts: int = 20) -> subprocess.Popen[bytes]:
    """A process (own group) given exactly ``pid``, through the kernel's ns_last_pid: the next
    pid it hands out is that number plus one, unless another process forks first (retried).

    The counter is wound back only for the moment of the spawn and then set where it was: left
    wound back, it would hand every process of the other test worker the pids of processes
    that just died, and a test checking that one of those is dead would see it alive."""
    last_pid = Path("/proc/sys/kernel/ns_last_pid")
    for _ in range(attempts):
        try:
            was = last_pid.read_text().strip()
            last_pid.write_text(str(pid - 1))
        except OSError as exc:
            pytest.skip(f"needs a writable {last_pid} to reuse a pid: {exc}")
        try:
            proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
        finally:
            last_pid.write_text(was)
        if proc.pid == pid:
            return proc
        proc.kill()
        proc.wait()
    raise AssertionError(f"pid {pid} not obtained in {attempts} attempts")


def test_a_group_id_the_kernel_hands_out_again_is_no_longer_the_sandboxs(
    emulator: DaytonaEmulator, vm_sandbox: Any
) -> None:
    """The kernel reuses a process-group id once the group is empty (pid_max is 32768 here):
    pause and stop must not freeze or kill the stranger who gets it, be it another test's
    process or the other worker's emulator's."""

    def groups() -> list[int]:
        (info,) = [sb for sb in emulator.sandboxes() if sb["id"] == vm_sandbox.id]
        return list(info["processGroups"])

    gone = int(vm_sandbox.process.exec("echo $$").result)  # the exec shell leads its own group
    vm_sandbox.process.create_session("s")  # a group that lives on
    assert wait_for(lambda: gone not in groups()), groups()
    stranger = spawn_with_pid(gone)
    try:
        vm_sandbox.pause()
        time.sleep(0.2)  # a SIGSTOP, were one sent, has landed by now
        assert process_state(stranger.pid) != "T"
        vm_sandbox.start()
        vm_sandbox.stop()
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_delete_removes_dir_and_kills_daemons(emulator: DaytonaEmulator, daytona: Any, sandbox: Any) -> None:
    from daytona import DaytonaNotFoundError

    home = emulator.home_dir(sandbox.id)
    sandbox.process.exec("nohup sleep 100 > /dev/null 2>&1 & echo $! > daemon.pid")
    sandbox.process.create_session("d")
    run_async(sandbox, "d", "nohup sleep 100 & echo $! > session-daemon.pid; sleep 0.1")
    pids = wait_for(lambda: read_pids(home, "daemon.pid", "session-daemon.pid"))
    assert all(pid_alive(p) for p in pids)

    daytona.delete(sandbox)
    assert not emulator.sandbox_dir(sandbox.id).exists()
    assert not any(pid_alive(p) for p in pids)
    with pytest.raises(DaytonaNotFoundError):
        daytona.get(sandbox.id)
    assert next(s for s in emulator.sandboxes() if s["id"] == sandbox.id)["state"] == "destroyed"


# -- snapshots -------------------------------------------------------------------------------


def test_snapshot_from_sandbox_and_from_local_dir(
    emulator: DaytonaEmulator, daytona: Any, sandbox: Any, tmp_path: Path
) -> None:
    from daytona import CreateSandboxFromSnapshotParams, CreateSnapshotParams, DaytonaNotFoundError

    sandbox.fs.upload_file(b"baked", ".venv/bin/tool")
    sandbox.create_snapshot("baked-runtime")
    assert daytona.snapshot.get("baked-runtime").state.value == "active"

    child = daytona.create(CreateSandboxFromSnapshotParams(snapshot="baked-runtime"))
    try:
        assert child.fs.download_file(".venv/bin/tool") == b"baked"
        assert next(s for s in emulator.sandboxes() if s["id"] == child.id)["snapshot"] == "baked-runtime"
    finally:
        daytona.delete(child)

    local = tmp_path / "runtime"
    (local / "lib").mkdir(parents=True)
    (local / "lib/mod.py").write_text("X = 1\n")
    emulator.add_snapshot("local-runtime", local)
    from_local = daytona.create(CreateSandboxFromSnapshotParams(snapshot="local-runtime"))
    try:
        copied = emulator.home_dir(from_local.id) / "lib/mod.py"
        assert copied.read_text() == "X = 1\n"
        assert copied.stat().st_ino == (local / "lib/mod.py").stat().st_ino  # hard-linked, not copied
    finally:
        daytona.delete(from_local)

    body = json.dumps({"name": "copied-runtime", "dir": str(local), "link": False}).encode()
    status, answer = http(f"{emulator.base_url}/_emulator/snapshots", {"Content-Type": "application/json"}, body)
    assert status == 200
    copy = Path(json.loads(answer)["dir"]) / "lib/mod.py"
    assert copy.read_text() == "X = 1\n" and copy.stat().st_ino != (local / "lib/mod.py").stat().st_ino

    image_snapshot = daytona.snapshot.create(CreateSnapshotParams(name="from-image", image="python:3.12-slim"))
    assert image_snapshot.state.value == "active"
    assert "from-image" in [s.name for s in daytona.snapshot.list().items]
    stored = next(s for s in emulator.snapshots() if s["name"] == "from-image")
    assert stored["dockerfile"] == "FROM python:3.12-slim\n"
    daytona.snapshot.delete(image_snapshot)
    with pytest.raises(DaytonaNotFoundError):
        daytona.snapshot.get("from-image")


# -- faults, config and the emulator endpoints -----------------------------------------------


def test_fail_next_and_latency(emulator: DaytonaEmulator, daytona: Any, sandbox: Any) -> None:
    from daytona import DaytonaError

    emulator.set_faults(fail_next=1)
    with pytest.raises(DaytonaError) as err:
        daytona.get(sandbox.id)
    assert err.value.status_code == 503
    assert daytona.get(sandbox.id).id == sandbox.id

    status, body = http(
        f"{emulator.base_url}/_emulator/faults", {"Content-Type": "application/json"}, b'{"latency_ms": 200}'
    )
    assert status == 200 and json.loads(body)["latency_ms"] == 200
    started = time.monotonic()
    daytona.get(sandbox.id)
    assert time.monotonic() - started >= 0.2


def test_rtt_delays_every_request_to_daytona_once_and_not_the_test_controls(
    emulator: DaytonaEmulator, daytona: Any, sandbox: Any
) -> None:
    """Config `rtt_ms`: a network between the client and Daytona. Each API and toolbox
    request, each WebSocket set-up and each preview request waits one round trip before it
    is answered; the emulator's own controls do not."""
    import aiohttp

    sandbox.process.create_session("rtt")
    cid = run_async(sandbox, "rtt", "echo hi")
    wait_for(lambda: sandbox.process.get_session_command("rtt", cid).exit_code is not None)
    rtt = 0.5
    assert emulator.set_config(rtt_ms=int(rtt * 1000))["rtt_ms"] == 500

    def took(call: Callable[[], Any]) -> float:
        started = time.monotonic()
        call()
        return time.monotonic() - started

    async def ws_set_up() -> float:
        url = f"{emulator.base_url}/toolbox/{sandbox.id}/process/session/rtt/command/{cid}/logs?follow=true"
        async with aiohttp.ClientSession() as client:
            started = time.monotonic()
            async with client.ws_connect(url, headers={"Authorization": f"Bearer {API_KEY}"}) as ws:
                elapsed = time.monotonic() - started
                await ws.close()
        return elapsed

    preview = sandbox.get_preview_link(free_port())  # nothing listens there: 502, after the round trip
    assert took(lambda: daytona.get(sandbox.id)) >= rtt
    assert took(sandbox.get_user_home_dir) >= rtt
    assert took(lambda: http(preview.url, {"X-Daytona-Preview-Token": preview.token})[0] == 502) >= rtt
    assert asyncio.run(ws_set_up()) >= rtt
    assert took(lambda: http(f"{emulator.base_url}/_emulator/faults")) < rtt
    # Once per request, not per message: the SDK's exec answers after one round trip and its
    # command's time, however much it prints.
    assert rtt <= took(lambda: sandbox.process.exec("seq 1 2000 >/dev/null; echo done")) < 2 * rtt
    assert emulator.reset()["config"]["rtt_ms"] == 0


def test_dropped_log_stream_raises_after_partial_output(emulator: DaytonaEmulator, sandbox: Any) -> None:
    from daytona import DaytonaError

    sandbox.process.create_session("drop")
    cid = run_async(sandbox, "drop", "echo part1; sleep 1; echo part2")
    emulator.set_faults(drop_log_streams=1)
    out: list[str] = []
    with pytest.raises(DaytonaError, match="1011"):
        asyncio.run(sandbox.process.get_session_command_logs_async("drop", cid, out.append, out.append))
    assert "".join(out) == "part1\n"
    assert emulator.faults()["drop_log_streams"] == 0
    assert emulator.faults()["drops_done"] == 1


def test_command_history_and_request_log(emulator: DaytonaEmulator, sandbox: Any) -> None:
    sandbox.process.create_session("h")
    run_async(sandbox, "h", "echo recorded")
    sandbox.process.exec("true")
    status, body = http(f"{emulator.base_url}/_emulator/sandboxes/{sandbox.id}/commands")
    assert status == 200
    commands = json.loads(body)
    assert [(c["sessionId"], c["command"]) for c in commands] == [("h", "echo recorded"), (None, "true")]

    log = emulator.root / "requests.jsonl"
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert any(e["path"] == f"/toolbox/{sandbox.id}/process/execute" and e["status"] == 200 for e in entries)
    assert not any(e["path"].startswith("/_emulator") for e in entries)
    assert {"ts", "method", "path", "status", "duration_ms"} <= set(entries[-1])


def test_autostop_after_idle(emulator: DaytonaEmulator, daytona: Any) -> None:
    from daytona import CreateSandboxFromSnapshotParams

    sb = daytona.create(CreateSandboxFromSnapshotParams(auto_stop_interval=1))
    try:
        emulator.set_config(autostop_seconds_per_minute=0.3)
        sb.refresh_activity()
        # Poll the emulator, not the API: every API call for the sandbox counts as activity.
        wait_for(lambda: next(s for s in emulator.sandboxes() if s["id"] == sb.id)["state"] == "stopped")
        assert daytona.get(sb.id).state.value == "stopped"
    finally:
        daytona.delete(sb)


def test_standalone_prints_url_first_and_stops_on_sigterm(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    daemon = 0
    proc = subprocess.Popen(
        [*STANDALONE, "--root", str(tmp_path / "root"), "--api-key", "k", "--log", str(log)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/api")
        status, body = http(f"{url}/sandbox", {"Authorization": "Bearer k"})
        assert (status, json.loads(body)) == (200, {"items": [], "nextCursor": None})
        status, _ = http(f"{url}/sandbox", {"Authorization": "Bearer nope"})
        assert status == 401

        auth = {"Authorization": "Bearer k", "Content-Type": "application/json"}
        status, body = http(f"{url}/sandbox", auth, b'{"labels": {"code-toolbox-language": "python"}}')
        sandbox = json.loads(body)
        assert status == 200 and sandbox["toolboxProxyUrl"] == url.removesuffix("/api") + "/toolbox"
        command = json.dumps({"command": "setsid sleep 100 > /dev/null 2>&1 & echo $!"}).encode()
        status, body = http(f"{sandbox['toolboxProxyUrl']}/{sandbox['id']}/process/execute", auth, command)
        daemon = int(json.loads(body)["result"])
        assert pid_alive(daemon)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    assert not pid_alive(daemon), "shutting the emulator down kills every sandbox process"
    statuses = [json.loads(line)["status"] for line in log.read_text().splitlines()]
    assert statuses == [200, 401, 200, 200]
