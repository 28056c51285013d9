"""Servers the agent starts outlive the command that started them, however it phrased it.

Codex SIGKILLs each command's process group when the command returns; the agent's shell
hooks run every command in a session of its own, so what it leaves running survives. The
matrix runs through the real CLI, the emulator (its preview proxy) and the real Codex
binary; the hooks themselves are also checked for bash and zsh the way Codex uses them."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from agent_bundle import port_scan
from agent_bundle.hooks import DETACHED_ENV, write_shell_hooks
from tests.e2e import Rig, distinct_ports
from tests.fakes.model import msg, run, turn

NODE_SERVER = (
    "require('http').createServer((q, r) => { console.log(q.url); r.end('node'); }).listen(+process.argv[2]);\n"
)


def server_forms(ports: list[int]) -> dict[int, tuple[str, str | None]]:
    """port -> (the command the agent runs, the pid file it writes or None)."""

    def s(port: int) -> str:
        return f"python3 -m http.server {port}"

    forms = [
        (f"nohup {s(ports[0])} > s0.log 2>&1 & echo $! > s0.pid", "s0.pid"),
        (f"{s(ports[1])} > s1.log 2>&1 & echo $! > s1.pid", "s1.pid"),
        (f"({s(ports[2])} &)", None),
        (f"setsid {s(ports[3])} & echo $! > s3.pid", "s3.pid"),
        (f"command nohup {s(ports[4])} & echo $! > s4.pid", "s4.pid"),
        (f"sh -c '{s(ports[5])} &'", None),
        (f'bash -c "cd app && {s(ports[6])} &"', None),
        (f"{s(ports[7])} & disown; echo $! > s7.pid", "s7.pid"),
        (f"node server.js {ports[8]} & echo $! > s8.pid", "s8.pid"),
        (f"python3 -m http.server {ports[9]} & echo $! > s9.pid", "s9.pid"),
    ]
    return dict(zip(ports, forms, strict=True))


def listening_pid(port: int) -> int | None:
    """The process that holds the listening socket of `port`."""
    inodes = {inode for _, p, inode in port_scan._listening_sockets() if p == port}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{entry}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                return int(entry)
    return None


def assert_previews_answer(rig: Rig, ports: list[int]) -> None:
    listed = rig.cli("preview", "--json")
    assert listed.code == 0, listed
    previews = {p["port"]: p for p in json.loads(listed.stdout)["previews"]}
    for port in ports:
        assert port in previews, f"port {port} no longer listens: {sorted(previews)}"
        assert previews[port]["ok"] is True and previews[port]["status"] == 200, previews[port]


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("node") is None, reason="needs node")
def test_every_way_of_starting_a_server_survives_the_turn_and_the_next(rig: Rig) -> None:
    up = rig.cli("up", "-q")
    assert up.code == 0, up
    home = Path(rig.emulator.home_dir(up.stdout.strip()))
    (home / "server.js").write_text(NODE_SERVER)
    (home / "app").mkdir()
    ports = distinct_ports(10)
    forms = server_forms(ports)
    rig.model.enqueue(
        turn(*[run(command) for command, _ in forms.values()], run("echo failing >&2; exit 7")),
        turn(msg("Servers started.")),
    )
    asked = rig.cli("ask", "--json", "start the servers")
    assert asked.code == 0, asked
    commands = {
        e["item"]["command"]: e["item"]
        for e in asked.json_lines
        if e.get("type") == "item.completed" and e["item"]["type"] == "command_execution"
    }
    assert len(commands) == len(forms) + 1, commands
    for item in commands.values():
        expected = 7 if "exit 7" in item["command"] else 0
        assert item["exit_code"] == expected, item  # exit codes come through unchanged
    failing = next(item for item in commands.values() if "exit 7" in item["command"])
    assert "failing" in failing["aggregated_output"]
    # After the turn, each answers through its preview link; the pid a form gave is the server's.
    assert_previews_answer(rig, ports)
    for port, (command, pid_file) in forms.items():
        if pid_file is not None:
            pid = int((home / pid_file).read_text())
            assert listening_pid(port) == pid, f"{command}: $! is {pid}, the server is {listening_pid(port)}"

    # And after the next turn, which runs a command of its own.
    rig.model.enqueue(turn(run("echo second")), turn(msg("Still here.")))
    again = rig.cli("ask", "anything else?")
    assert again.code == 0, again
    assert_previews_answer(rig, ports)


# --- the hooks, as Codex uses them, for each shell ----------------------------------------


class Ran(subprocess.CompletedProcess[bytes]):
    """A command run as Codex runs it; `pid` is its shell's, the leader of its session and group."""

    pid: int


def codex_like(shell: list[str], command: str, env: dict[str, str], cwd: Path) -> Ran:
    """What Codex does with a command: `shell -c command` as a process group (and session) of
    its own, output to pipes, and SIGKILL for the whole group once the shell has exited."""
    proc = subprocess.Popen(
        [*shell, command],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    out, err = proc.communicate(timeout=30)
    with contextlib.suppress(ProcessLookupError):  # nothing left in the group
        os.killpg(proc.pid, signal.SIGKILL)
    ran = Ran(proc.args, proc.returncode, out, err)
    ran.pid = proc.pid
    return ran


def cmdline_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.parametrize(
    "shell",
    [
        ["bash", "-c"],
        ["bash", "-lc"],
        pytest.param(["zsh", "-c"], marks=pytest.mark.skipif(shutil.which("zsh") is None, reason="needs zsh")),
        pytest.param(["zsh", "-lc"], marks=pytest.mark.skipif(shutil.which("zsh") is None, reason="needs zsh")),
    ],
)
def test_the_shell_hooks_detach_each_command_in_bash_and_zsh(tmp_path: Path, shell: list[str]) -> None:
    home = tmp_path / "home"
    home.mkdir()
    hooks = write_shell_hooks(str(home))
    assert Path(hooks["BASH_ENV"]).is_file() and Path(hooks["ZDOTDIR"], ".zshenv").is_file()
    env = {k: v for k, v in os.environ.items() if k not in ("ZDOTDIR", DETACHED_ENV)}
    env.update(hooks, HOME=str(home))
    (home / ".zshenv").write_text("export FROM_USER_ZSHENV=yes\n")
    (home / "server.py").write_text(
        "import signal, time\nsignal.signal(signal.SIGHUP, signal.SIG_IGN)\nprint('up', flush=True)\ntime.sleep(120)\n"
    )
    marker = f"server.py {os.getpid()}-{shell[-1]}"
    try:
        done = codex_like(shell, f"python3 {marker} & echo $! > pid; echo out; echo err >&2; exit 5", env, home)
        # The exit status and both streams are the command's, at once (no wait for the
        # background job that still holds the output).
        assert done.returncode == 5, done
        assert b"out" in done.stdout and done.stderr.strip().endswith(b"err"), done
        pid = int((home / "pid").read_text())
        deadline = time.monotonic() + 10
        while marker not in cmdline_of(pid) and time.monotonic() < deadline:
            time.sleep(0.05)  # the fork that becomes the server execs it
        assert marker in cmdline_of(pid), "the pid $! gave is the server's, and it is alive after the group kill"
        # Out of the session (and so the group) Codex made for the command and kills.
        assert os.getsid(pid) != done.pid and os.getpgid(pid) != done.pid, (os.getsid(pid), done.pid)
        assert os.getsid(pid) != os.getsid(0) and os.getpgid(pid) != os.getpgid(0)
        if shell[0] == "zsh":
            # The user's own zsh start-up files are still read.
            shown = codex_like(shell, "echo $FROM_USER_ZSHENV", env, home)
            assert shown.stdout.strip() == b"yes", shown
    finally:
        subprocess.run(["pkill", "-f", marker], check=False)


@pytest.mark.parametrize(
    "shell",
    [
        "bash",
        pytest.param("zsh", marks=pytest.mark.skipif(shutil.which("zsh") is None, reason="needs zsh")),
    ],
)
def test_codex_own_snapshot_shells_are_not_detached_and_read_the_profile_once(tmp_path: Path, shell: str) -> None:
    """Codex's shell snapshot (a login shell printing '# Snapshot file', then `set -e; . PATH`
    to check the result) is Codex's own: not handed to a session of its own, so it reads the
    login profile once and is not taken for a process the turn left running (PortWatch)."""
    home = tmp_path / "home"
    (home / "shell_snapshots").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in ("ZDOTDIR", DETACHED_ENV)}
    env.update(write_shell_hooks(str(home)), HOME=str(home))
    profile = ".bash_profile" if shell == "bash" else ".zprofile"
    (home / profile).write_text('echo read >> "$HOME/profile-reads"\n')
    report = 'echo "$$ ${CODEX_DAYTONA_DETACHED:-attached}"'
    snapshot = f"echo '# Snapshot file'\n{report}\n"
    done = codex_like([shell, "-lc"], snapshot, env, home)
    assert done.returncode == 0, done
    assert done.stdout.split() == [b"#", b"Snapshot", b"file", str(done.pid).encode(), b"attached"], done
    assert (home / "profile-reads").read_text() == "read\n"
    (home / "shell_snapshots" / "t.sh").write_text(report + "\n")
    checked = codex_like([shell, "-c"], f'set -e; . "{home}/shell_snapshots/t.sh"', env, home)
    assert checked.stdout.split() == [str(checked.pid).encode(), b"attached"], checked
    # Any other login command is detached (a shell of its own, the mark set), the profile
    # read by the hand-over's shell too.
    ordinary = codex_like([shell, "-lc"], report, env, home)
    pid, mark = ordinary.stdout.split()
    assert (int(pid) != ordinary.pid, mark) == (True, b"1"), ordinary


def test_a_command_killed_on_interrupt_takes_its_detached_session_with_it(tmp_path: Path) -> None:
    """What the Interrupter does to a command still running: SIGTERM to Codex's group reaches
    the session the hook made, so a foreground `sleep` stops."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != DETACHED_ENV}
    env.update(write_shell_hooks(str(home)), HOME=str(home))
    marker = f"sleep 7{os.getpid() % 1000}"
    proc = subprocess.Popen(
        ["bash", "-c", f"{marker}; echo after"],
        stdout=subprocess.PIPE,
        env=env,
        cwd=home,
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while not subprocess.run(["pgrep", "-fx", marker], capture_output=True).stdout and time.monotonic() < deadline:
        time.sleep(0.05)
    assert subprocess.run(["pgrep", "-fx", marker], capture_output=True).stdout, "the command runs"
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=5) == 128 + signal.SIGTERM
    deadline = time.monotonic() + 5
    while subprocess.run(["pgrep", "-fx", marker], capture_output=True).stdout and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not subprocess.run(["pgrep", "-fx", marker], capture_output=True).stdout, "the sleep is gone"
