"""The warm helper never costs a command and never widens what a caller may do: each thing it
relies on is taken away in turn (a socket option, the platform, any function raising, the
caller's capabilities or namespaces, a terminal, an unchanged install) and the command
still runs, in process where the helper cannot be trusted with it. Also the Windows line.

Each CLI run here is a subprocess whose `sitecustomize` (a directory first on PYTHONPATH)
runs a prelude that takes the piece away before the launcher starts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from codex_daytona import launcher
from tests.test_helper import REPO, _wait_for, helper_dir, helper_env, helper_pids, sockets, traced

__all__ = ["helper_dir"]  # the fixture, used by name

# The helper's processes are found through /proc (tests/test_helper.py's helper_pids), and
# what is taken away here is Linux's; tests/test_platforms.py is the macOS-shaped run.
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def cli(
    env: dict[str, str], *args: str, prelude: str = "", shim: Path | None = None, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """`python -m codex_daytona ARGS` with `prelude` run first (in a sitecustomize)."""
    path = [str(REPO)]
    if prelude:
        assert shim is not None
        shim.mkdir(exist_ok=True)
        (shim / "sitecustomize.py").write_text(prelude)
        path.insert(0, str(shim))
    full = {**os.environ, **env, "PYTHONPATH": os.pathsep.join([*path, *filter(None, [env.get("PYTHONPATH")])])}
    return subprocess.run(
        [*prefix, sys.executable, "-m", "codex_daytona", *args],
        env=full,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


def start(helper_dir: Path, **extra: str) -> tuple[Path, dict[str, str]]:
    """A helper listening in `helper_dir`, started by a first command: the trace and the env."""
    trace = helper_dir / "trace"
    env = helper_env(helper_dir, trace, **extra)
    first = cli(env, "status", "-q")
    assert first.returncode == 0, first.stderr
    _wait_for(lambda: sockets(helper_dir))
    _wait_for(lambda: len(helper_pids(helper_dir)) == 1)
    second = cli(env, "status", "-q")
    assert second.returncode == 0 and traced(trace)[-1].startswith("helper "), (second.stderr, traced(trace))
    return trace, env


def test_a_caller_without_so_peercred_still_runs_its_command(helper_dir: Path, tmp_path: Path) -> None:
    trace, env = start(helper_dir)
    # macOS's Python has no SO_PEERCRED (and glibc no getpeereid): the 0700 directory is the guard.
    prelude = "import socket\ndel socket.SO_PEERCRED\n"
    result = cli(env, "status", "-q", prelude=prelude, shim=tmp_path / "shim")
    assert result.returncode == 0 and result.stdout == "none\n", result.stderr
    assert "Traceback" not in result.stderr
    assert traced(trace)[-1].startswith("helper ")


@pytest.mark.parametrize(
    "prelude",
    [
        # Inside the hand-over (before it): an exception the launcher does not expect.
        "from codex_daytona import launcher\ndef boom(): raise RuntimeError('no')\nlauncher._request = boom\n",
        # Before it even looks for a helper.
        "from codex_daytona import launcher\ndef boom(*a, **k): raise LookupError('no')\nlauncher.fingerprint = boom\n",
        # Asking the peer's credentials fails in an unexpected way.
        "from codex_daytona import launcher\n"
        "def boom(sock): raise AttributeError('SO_PEERCRED')\n"
        "launcher.peer_credentials = boom\n",
    ],
    ids=["request", "fingerprint", "peer-credentials"],
)
def test_any_exception_before_the_hand_over_runs_the_command_in_process(
    helper_dir: Path, tmp_path: Path, prelude: str
) -> None:
    trace, env = start(helper_dir)
    result = cli(env, "status", "-q", prelude=prelude, shim=tmp_path / "shim")
    assert result.returncode == 0 and result.stdout == "none\n", result.stderr
    assert result.stderr == ""
    assert traced(trace)[-1] == "in-process"


def test_an_unknown_platform_runs_in_process_and_starts_no_helper(helper_dir: Path, tmp_path: Path) -> None:
    trace = helper_dir / "trace"
    # This platform, as one the helper does not know (a fake sys.platform trips up Click).
    prelude = "from codex_daytona import launcher\nlauncher.HELPER_PLATFORMS = ('sunos',)\n"
    for _ in range(2):
        result = cli(helper_env(helper_dir, trace), "status", "-q", prelude=prelude, shim=tmp_path / "shim")
        assert result.returncode == 0 and result.stdout == "none\n", result.stderr
    assert traced(trace) == ["in-process", "in-process"]
    time.sleep(1)
    assert not sockets(helper_dir) and not helper_pids(helper_dir)


def test_windows_says_in_one_line_what_it_needs(tmp_path: Path) -> None:
    prelude = (
        "import sys\nsys.platform = 'win32'\nfor m in ('fcntl', 'termios', 'tty', 'pty'):\n    sys.modules[m] = None\n"
    )
    for args in (["--version"], ["ask", "hello"], ["up"]):
        result = cli({}, *args, prelude=prelude, shim=tmp_path / "shim")
        assert result.returncode == 1, result
        assert result.stderr == "codex-daytona needs macOS, Linux or WSL: on Windows, run it inside WSL.\n"
        assert result.stdout == ""


def _with_a_terminal(env: dict[str, str], *args: str) -> int:
    """Runs the CLI with a terminal as its stderr (stdin and stdout not): the exit code."""
    controller, terminal = os.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "codex_daytona", *args],
            env={**os.environ, **env, "PYTHONPATH": str(REPO)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=terminal,
            timeout=120,
        )
        return proc.returncode
    finally:
        os.close(terminal)
        os.close(controller)


def test_the_helper_is_off_in_ci_and_without_a_terminal_unless_asked_for(helper_dir: Path) -> None:
    trace = helper_dir / "trace"
    auto = helper_env(helper_dir, trace, CODEX_DAYTONA_HELPER="")
    # No terminal (a script, a container build): in process, and nothing left behind.
    assert cli({**auto, "CI": ""}, "status", "-q").returncode == 0
    # CI set, even with a terminal: the same.
    assert _with_a_terminal({**auto, "CI": "true"}, "status", "-q") == 0
    time.sleep(1)
    assert traced(trace) == ["in-process", "in-process"]
    assert not sockets(helper_dir) and not helper_pids(helper_dir)
    # CI=false and a terminal: on, the first command starts it and the next uses it.
    assert _with_a_terminal({**auto, "CI": "false"}, "status", "-q") == 0
    _wait_for(lambda: sockets(helper_dir))
    assert _with_a_terminal({**auto, "CI": "false"}, "status", "-q") == 0
    assert traced(trace)[-1].startswith("helper ")
    # Asked for (CODEX_DAYTONA_HELPER=1): used in CI and without a terminal too.
    result = cli({**auto, "CODEX_DAYTONA_HELPER": "1", "CI": "true"}, "status", "-q")
    assert result.returncode == 0, result.stderr
    assert traced(trace)[-1].startswith("helper ")
    assert launcher.enabled({"CODEX_DAYTONA_HELPER": "on", "CI": "1"})
    assert not launcher.enabled({"CODEX_DAYTONA_HELPER": "off"})


def test_upgrading_a_dependency_in_place_replaces_the_helper(helper_dir: Path, tmp_path: Path) -> None:
    import tomli_w

    # A dependency the helper imports (state.py uses tomli-w), installed where it is found
    # first: a copy of the virtualenv's, with its metadata.
    site = tmp_path / "site"
    source = Path(tomli_w.__file__).parent
    (info,) = source.parent.glob("tomli_w-*.dist-info")
    shutil.copytree(source, site / "tomli_w", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(info, site / info.name)
    trace, env = start(helper_dir, PYTHONPATH=str(site))
    (old,) = helper_pids(helper_dir)
    assert cli(env, "status", "-q").returncode == 0
    assert traced(trace)[-1].startswith("helper ") and helper_pids(helper_dir) == [old]

    # Upgrade in place, as pip does it: new files, the old metadata replaced by the new version's.
    shutil.rmtree(site / info.name)
    (site / "tomli_w-99.0.dist-info").mkdir()
    shutil.copy(info / "METADATA", site / "tomli_w-99.0.dist-info" / "METADATA")
    init = site / "tomli_w" / "__init__.py"
    init.write_text(init.read_text() + "\n# 99.0\n")

    result = cli(env, "status", "-q")
    assert result.returncode == 0, result.stderr
    assert traced(trace)[-1] == "in-process"
    _wait_for(lambda: old not in helper_pids(helper_dir), timeout=15)  # the old helper left
    _wait_for(lambda: len(helper_pids(helper_dir)) == 1 and len(sockets(helper_dir)) == 1)
    assert cli(env, "status", "-q").returncode == 0
    (new,) = helper_pids(helper_dir)
    assert new != old and traced(trace)[-1].startswith("helper ")


def test_every_file_of_the_package_is_in_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "checkout"
    shutil.copytree(REPO / "codex_daytona", copy / "codex_daytona", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(launcher, "PACKAGE_DIR", str(copy / "codex_daytona"))
    before = launcher.files_signature()
    sub = copy / "codex_daytona" / "sub"
    sub.mkdir()
    (sub / "data.json").write_text("{}")
    assert launcher.files_signature() != before
    again = launcher.files_signature()
    (copy / "codex_daytona" / "__pycache__").mkdir()
    (copy / "codex_daytona" / "__pycache__" / "x.pyc").write_text("")
    assert launcher.files_signature() == again


needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv") or not shutil.which("unshare"),
    reason="drops capabilities and makes namespaces (setpriv, unshare) as root",
)


@needs_root
@pytest.mark.parametrize(
    "prefix",
    [
        ("setpriv", "--bounding-set=-all", "--inh-caps=-all", "--"),
        ("setpriv", "--no-new-privs", "--"),
        ("unshare", "--uts", "--"),
        ("prlimit", "--nofile=512:512", "--"),
    ],
    ids=["capabilities", "no-new-privs", "uts-namespace", "limits"],
)
def test_a_caller_that_may_do_less_runs_its_command_itself(
    helper_dir: Path, tmp_path: Path, prefix: tuple[str, ...]
) -> None:
    if not shutil.which(prefix[0]):
        pytest.skip(f"no {prefix[0]}")
    trace, env = start(helper_dir)
    result = cli(env, "status", "-q", prefix=prefix)
    assert result.returncode == 0 and result.stdout == "none\n", result.stderr
    assert traced(trace)[-1] == "in-process", traced(trace)
    # The helper is still there, and serves its equals.
    again = cli(env, "status", "-q")
    assert again.returncode == 0 and traced(trace)[-1].startswith("helper ")


def test_typer_calls_the_get_command_the_helper_prebuilds(monkeypatch: pytest.MonkeyPatch) -> None:
    """helper.prebuild_cli replaces typer.main.get_command so that each command skips building
    the Click command: this pins the Typer behaviour it relies on (Typer.__call__ looks the
    function up in typer.main when called), within the Typer range of pyproject.toml."""
    import importlib.metadata

    import typer.main

    from codex_daytona import cli

    calls: list[object] = []

    def get_command(app: object) -> object:
        calls.append(app)
        return lambda *args, **kwargs: "built once"

    monkeypatch.setattr(typer.main, "get_command", get_command)
    assert cli.app() == "built once"
    assert calls == [cli.app]
    major, minor = (int(part) for part in importlib.metadata.version("typer").split(".")[:2])
    assert (0, 26) <= (major, minor) < (0, 30), "widen the range in pyproject.toml only after this test passes"
    requirement = next(r for r in importlib.metadata.requires("codex-daytona") or [] if r.startswith("typer"))
    assert requirement.replace(" ", "") == "typer<0.30,>=0.26", requirement
