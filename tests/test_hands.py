"""Hands on the sandbox, end to end: `pause` (servers and the warm agent survive it), `shell`
under a real pty, `ssh`, `doctor`, and fan-out by fork with the snapshot as the fallback."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import select
import stat
import struct
import subprocess
import sys
import termios
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tests.e2e import DAYTONA_KEY, OPENAI_KEY, Rig, free_port, http_get, sandbox_processes
from tests.fakes.daytona import process_state
from tests.fakes.model import msg, run, turn
from tests.test_lifecycle import _controlling_terminal
from tests.test_turns import _wait_for

pytestmark = pytest.mark.e2e


def _preview(rig: Rig, sandbox_id: str, port: int) -> tuple[int, str]:
    token = (rig.sandbox(sandbox_id) or {})["previewToken"]
    return http_get(f"{rig.emulator.base_url}/preview/{port}-{sandbox_id}/", {"X-Daytona-Preview-Token": token})


# --- pause -----------------------------------------------------------------------------------


def test_pause_keeps_the_dev_server_and_the_warm_agent(rig: Rig) -> None:
    rig.emulator.set_config(sandbox_class="linux-vm")  # only VM-class sandboxes pause
    port = free_port()
    rig.model.enqueue(
        turn(run(f"echo alive > page.txt; nohup python3 -m http.server {port} > server.log 2>&1 & sleep 1")),
        turn(msg("Serving.")),
    )
    first = rig.cli("ask", "serve the page")
    assert first.code == 0, first
    sandbox_id = rig.record()["sandbox_id"]
    _wait_for(lambda: _preview(rig, sandbox_id, port)[0] == 200)
    server = sandbox_processes(sandbox_id, "http.server")
    agent = sandbox_processes(sandbox_id, "--serve")
    assert len(server) == 1 and len(agent) == 1, (server, agent)

    paused = rig.cli("pause")
    assert paused.code == 0, paused
    assert paused.stdout.strip() == f"Paused sandbox {sandbox_id}"
    assert (rig.sandbox(sandbox_id) or {})["state"] == "paused"
    assert all(process_state(pid) == "T" for pid in [*server, *agent])
    assert rig.cli("status", "-q").stdout.strip() == "paused"
    listed = rig.cli("ls", "--json")
    assert listed.code == 0, listed
    assert "paused" in listed.stdout, listed
    assert _preview(rig, sandbox_id, port)[0] == 502  # frozen: nothing answers through the proxy
    again = rig.cli("pause")
    assert again.code == 0 and "already paused" in again.stderr, again

    # The next command that needs the sandbox resumes it: the same server answers again, and
    # the turn runs on the same agent daemon (no agent start).
    rig.model.enqueue(turn(run("cat page.txt")), turn(msg("Still serving.")))
    since = time.time()
    resumed = rig.cli("ask", "still there?")
    assert resumed.code == 0, resumed
    assert "Resuming sandbox" in resumed.stderr and "Starting the agent" not in resumed.stderr, resumed
    assert (rig.sandbox(sandbox_id) or {})["state"] == "started"
    assert sandbox_processes(sandbox_id, "http.server") == server
    assert sandbox_processes(sandbox_id, "--serve") == agent
    status, body = _preview(rig, sandbox_id, port)
    assert status == 200 and "page.txt" in body
    starts = [e for e in rig.requests(since) if e["path"] == f"/api/sandbox/{sandbox_id}/start"]
    assert len(starts) == 1, starts


def test_pause_where_daytona_cannot_says_so_and_stops_only_when_asked(rig: Rig) -> None:
    up = rig.cli("up", "-q")
    assert up.code == 0, up
    sandbox_id = up.stdout.strip()
    refused = rig.cli("pause")  # the default class, a container, cannot pause
    assert refused.code == 7, refused
    assert (
        "Daytona cannot pause the sandbox: Pausing is not supported for this sandbox (it is a container: "
        "Daytona pauses only VM-class sandboxes)." in refused.stderr
    ), refused
    assert "Hint: `codex-daytona pause --or-stop` stops it instead" in refused.stderr
    assert "Traceback" not in refused.stderr and refused.stdout == ""
    assert (rig.sandbox(sandbox_id) or {})["state"] == "started"
    stopped = rig.cli("pause", "--or-stop", "--json")
    assert stopped.code == 0, stopped
    assert json.loads(stopped.stdout) == {"sandbox_id": sandbox_id, "state": "stopped"}
    assert "stopping it instead" in stopped.stderr
    assert (rig.sandbox(sandbox_id) or {})["state"] == "stopped"


# --- shell -----------------------------------------------------------------------------------


class Pty:
    """The CLI on a pseudo-terminal of a given size, as a person would run it."""

    def __init__(self, rig: Rig, rows: int, cols: int, *args: str) -> None:
        self.master, self.slave = pty.openpty()
        self.resize(rows, cols)
        self.before = termios.tcgetattr(self.slave)
        env = dict(rig.env, TERM="xterm-256color")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "codex_daytona", *args],
            stdin=self.slave,
            stdout=self.slave,
            stderr=self.slave,
            cwd=rig.project,
            env=env,
            preexec_fn=_controlling_terminal,
        )
        self.seen = b""

    def resize(self, rows: int, cols: int) -> None:
        """Like a window resize: the kernel sends SIGWINCH to the terminal's foreground group."""
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def read_until(self, needle: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while needle.encode() not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"{needle!r} never appeared; saw:\n{self.seen.decode('utf-8', 'replace')[-2000:]}"
            ready, _, _ = select.select([self.master], [], [], min(left, 0.2))
            if ready:
                try:
                    self.seen += os.read(self.master, 65536)
                except OSError:
                    break
        return self.seen.decode("utf-8", "replace")

    def send(self, text: str | bytes) -> None:
        os.write(self.master, text.encode() if isinstance(text, str) else text)

    def wait(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if ready:
                try:
                    self.seen += os.read(self.master, 65536)
                except OSError:
                    time.sleep(0.05)
        return self.proc.wait(timeout=1)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)
        os.close(self.slave)


def test_shell_is_a_terminal_in_the_home_that_resizes_passes_ctrl_c_and_exits_with_its_code(rig: Rig) -> None:
    up = rig.cli("up", "-q")
    assert up.code == 0, up
    sandbox_id = up.stdout.strip()
    home = str(rig.emulator.home_dir(sandbox_id))
    term = Pty(rig, 30, 90, "shell")
    try:
        term.send("echo at-$(pwd)-$((40+2))\r")
        term.read_until(f"at-{home}-42")
        term.send("stty size\r")
        term.read_until("30 90")

        # The window grows: SIGWINCH -> resize of the remote terminal.
        term.resize(50, 120)
        deadline = time.monotonic() + 20
        while "50 120" not in term.seen.decode("utf-8", "replace"):
            assert time.monotonic() < deadline, term.seen[-1000:]
            term.send("stty size\r")
            with contextlib.suppress(AssertionError):
                term.read_until("50 120", timeout=1)

        # Ctrl-C reaches the remote program (raw mode here), and we are still connected.
        term.send("sleep 31; echo slept-$((6*7))\r")
        _wait_for(lambda: sandbox_processes(sandbox_id, "sleep 31"), timeout=20)
        term.send(b"\x03")
        term.send("echo after-$?\r")
        text = term.read_until("after-130")
        assert "slept-42" not in text
        assert term.proc.poll() is None
        _wait_for(lambda: not sandbox_processes(sandbox_id, "sleep 31"), timeout=10)

        term.send("exit 5\r")
        assert term.wait() == 5, term.seen[-1000:]
        # The local terminal is as it was before (raw mode undone).
        assert termios.tcgetattr(term.slave) == term.before
        # Nothing left behind: the shell's PTY session ended with it.
        assert not sandbox_processes(sandbox_id, "-i -l")
    finally:
        term.close()


def test_shell_from_a_terminal_of_no_size_gets_80_by_24(rig: Rig) -> None:
    """A terminal that reports 0 x 0 (a fresh `docker exec -t`, some CI ptys): Daytona would
    accept 0 x 0 and the remote programs would see no columns; the shell gets 24 rows x 80."""
    assert rig.cli("up").code == 0
    term = Pty(rig, 0, 0, "shell")
    try:
        term.send("echo size-$(stty size | tr ' ' x)\r")
        term.read_until("size-24x80")
        term.send("exit 0\r")
        assert term.wait() == 0, term.seen[-1000:]
    finally:
        term.close()


def test_shell_opens_when_the_daemon_is_slow_to_say_connected(rig: Rig) -> None:
    """The SDK gives a terminal up when the daemon's `connected` message takes over 0.1 s (a
    busy sandbox, a slow hop): `shell` closes that one and opens it again."""
    assert rig.cli("up").code == 0
    rig.emulator.set_faults(slow_pty_handshake_ms=400)
    result = rig.cli("shell", input="echo piped-$((2*21))\nexit 3\n", timeout=60)
    assert result.code == 3, result
    assert "piped-42" in result.stdout
    assert rig.emulator.faults()["slow_pty_handshakes_done"] == 1


def test_shell_from_a_pipe_runs_the_lines_and_ends_with_them(rig: Rig) -> None:
    assert rig.cli("up").code == 0
    result = rig.cli("shell", input="echo piped-$((2*21))\nexit 3\n", timeout=60)
    assert result.code == 3, result
    assert "piped-42" in result.stdout


# --- ssh -------------------------------------------------------------------------------------


FAKE_SSH = """#!{python}
# Stands in for ssh and Daytona's SSH gateway: checks the token the way the gateway does.
import json, sys, urllib.request
args = sys.argv[1:]
user, host = args[-1].split("@")
request = urllib.request.Request(
    "{api}/sandbox/ssh-access/validate?token=" + user, headers={{"Authorization": "Bearer {key}"}}
)
answer = json.loads(urllib.request.urlopen(request).read())
open({record!r}, "w").write(json.dumps({{"args": args, "answer": answer}}))
sys.exit(0 if answer["valid"] else 255)
"""


def test_ssh_prints_a_command_that_expires_and_connects(rig: Rig, tmp_path: Path) -> None:
    up = rig.cli("up", "-q")
    assert up.code == 0, up
    sandbox_id = up.stdout.strip()

    quiet = rig.cli("ssh", "-q", "--expires", "30")
    assert quiet.code == 0, quiet
    command = quiet.stdout.strip()
    assert command.startswith("ssh -p 2222 ") and command.endswith("@ssh.emulator.localhost"), command
    assert len(quiet.stdout.splitlines()) == 1

    human = rig.cli("ssh")
    assert human.code == 0, human
    assert human.stdout.startswith("ssh ") and "VS Code" in human.stderr and "Expires at" in human.stderr
    # A new access revokes the earlier one, as on Daytona.
    token = human.stdout.split()[-1].split("@")[0]
    old_token = command.split()[-1].split("@")[0]
    assert token != old_token

    data = rig.cli("ssh", "--json", "--expires", "15")
    assert data.code == 0, data
    access = json.loads(data.stdout)
    assert access["sandbox_id"] == sandbox_id and access["ssh_command"].startswith("ssh ")
    left = datetime.fromisoformat(access["expires_at"].replace("Z", "+00:00")) - datetime.now(timezone.utc)
    assert 14 * 60 < left.total_seconds() <= 15 * 60

    bin_dir, record = tmp_path / "bin", tmp_path / "ssh-record.json"
    bin_dir.mkdir()
    fake = bin_dir / "ssh"
    fake.write_text(
        FAKE_SSH.format(python=sys.executable, api=rig.emulator.api_url, key=DAYTONA_KEY, record=str(record))
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    connected = rig.cli("ssh", "--connect", env={"PATH": f"{bin_dir}{os.pathsep}{rig.env['PATH']}"})
    assert connected.code == 0, connected
    seen = json.loads(record.read_text())
    assert seen["answer"] == {"valid": True, "sandboxId": sandbox_id}
    assert seen["args"][:2] == ["-p", "2222"]


# --- doctor ----------------------------------------------------------------------------------


def test_doctor_passes_on_a_working_setup(rig: Rig) -> None:
    rig.model.api_key = OPENAI_KEY
    result = rig.cli("doctor")
    assert result.code == 0, result
    lines = [line.split()[:2] for line in result.stderr.splitlines() if line.strip()]
    assert lines[:4] == [["ok", "settings"], ["ok", "daytona"], ["ok", "model"], ["ok", "snapshot"]], result
    assert "offers gpt-5.5" in result.stderr and "is active" in result.stderr
    as_json = rig.cli("doctor", "--json")
    assert as_json.code == 0
    assert [c["check"] for c in as_json.json_lines] == ["settings", "daytona", "model", "snapshot"]
    assert all(c["ok"] for c in as_json.json_lines)
    assert rig.cli("doctor", "-q").stdout.strip() == "ok"
    # It looked and changed nothing: no sandbox was made.
    assert not rig.record()


@pytest.mark.parametrize(
    ("env", "code", "failed", "words"),
    [
        (
            {"DAYTONA_API_KEY": "", "SANDBOX_OPENAI_API_KEY": ""},
            4,
            "settings",
            ["DAYTONA_API_KEY", "SANDBOX_OPENAI_API_KEY", "dashboard/keys"],
        ),
        ({"DAYTONA_API_KEY": "dtn-wrong"}, 7, "daytona", ["refused the API key"]),
        ({"SANDBOX_OPENAI_API_KEY": "sk-wrong"}, 4, "model", ["refused the key"]),
        ({"CODEX_DAYTONA_MODEL": "no-such-model"}, 4, "model", ["does not offer no-such-model"]),
        ({"SANDBOX_OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}, 1, "model", ["Could not reach the model endpoint"]),
        ({"CODEX_DAYTONA_SNAPSHOT": "no-such-snapshot"}, 4, "snapshot", ["no-such-snapshot", "not on Daytona"]),
    ],
)
def test_doctor_stops_at_the_first_thing_that_would_fail_ask_with_the_fix(
    rig: Rig, env: dict[str, str], code: int, failed: str, words: list[str]
) -> None:
    rig.model.api_key = OPENAI_KEY
    result = rig.cli("doctor", env=env)
    assert result.code == code, result
    assert f"FAIL {failed}" in result.stderr, result
    assert "Hint:" in result.stderr and "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr, result
    after = {"settings": "daytona", "daytona": "model", "model": "snapshot"}.get(failed)
    if after:
        assert f" {after} " not in result.stderr.split(f"FAIL {failed}")[1], result


def test_every_missing_setting_at_once(rig: Rig) -> None:
    result = rig.cli("ask", "hello", env={"DAYTONA_API_KEY": "", "SANDBOX_OPENAI_API_KEY": ""})
    assert result.code == 4, result
    assert "2 settings need fixing" in result.stderr, result
    assert "https://app.daytona.io/dashboard/keys" in result.stderr
    assert "https://platform.openai.com/api-keys" in result.stderr
    invalid = rig.cli("up", env={"DAYTONA_API_KEY": "", "SANDBOX_OPENAI_BASE_URL": "not a url"})
    assert invalid.code == 4, invalid
    assert "SANDBOX_OPENAI_BASE_URL is invalid" in invalid.stderr and "DAYTONA_API_KEY is not set" in invalid.stderr


# --- fan-out: fork, and the snapshot where Daytona cannot fork ----------------------------------


def test_fanout_falls_back_to_a_snapshot_where_daytona_cannot_fork(rig: Rig) -> None:
    base = rig.cli("up", "-q")
    assert base.code == 0, base
    base_id = base.stdout.strip()
    rig.model.enqueue(*[turn(msg("ready")) for _ in range(2)])  # the default class, a container, cannot fork
    since = time.time()
    try:
        result = rig.cli("ask", "--fanout", "2", "--new-thread", "--json", "get ready", timeout=300)
        assert result.code == 0, result
        assert "Warning" not in result.stderr, result  # the ordinary path for a container, not a fault
        summary = json.loads(result.stdout)
        assert summary["forked"] is False and summary["snapshot"].startswith("codex-daytona-fork-")
        ids = {n: r["sandbox_id"] for n, r in rig.state()["sandboxes"].items()}
        for name in ("default-1", "default-2"):
            assert (rig.sandbox(ids[name]) or {}).get("snapshot") == summary["snapshot"]
        requests = rig.requests(since)
        assert sum(e["path"] == f"/api/sandbox/{base_id}/fork" for e in requests) == 1  # refused once, not retried
        assert [e for e in requests if e["path"] == f"/api/sandbox/{base_id}/snapshot"]
        assert not [s for s in rig.emulator.snapshots() if s["name"] == summary["snapshot"]], "kept"
    finally:
        for name in ("default-1", "default-2"):
            rig.cli("down", "--yes", "--name", name)


def test_shell_on_sigterm_restores_the_terminal_and_ends_the_remote_shell(rig: Rig) -> None:
    up = rig.cli("up", "-q")
    assert up.code == 0, up
    sandbox_id = up.stdout.strip()
    term = Pty(rig, 24, 80, "shell")
    try:
        term.send("echo up-$((20+1))\r")
        term.read_until("up-21")
        assert termios.tcgetattr(term.slave) != term.before  # raw mode while it runs
        term.proc.terminate()
        assert term.wait() == 143
        assert termios.tcgetattr(term.slave) == term.before
        _wait_for(lambda: not sandbox_processes(sandbox_id, "-i -l"), timeout=10)
    finally:
        term.close()
