"""Shared fixtures. Every test runs with a clean environment: no real keys, no colour, a
fixed width, state under tmp_path, and the current directory in tmp_path."""

from __future__ import annotations

import fcntl
import hashlib
import inspect
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

OUR_VARS = ("DAYTONA_", "SANDBOX_OPENAI_", "CODEX_DAYTONA_", "OPENAI_", "CODEX_")


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for name in list(os.environ):
        if name.startswith(OUR_VARS):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setenv("TERM", "dumb")
    # Every CLI subprocess runs in process, independent of the others: a helper would serve
    # them all from one warm process (tests/test_helper.py tests it, with a directory of its own).
    monkeypatch.setenv("CODEX_DAYTONA_HELPER", "0")
    work = tmp_path / "project"
    work.mkdir()
    monkeypatch.chdir(work)
    yield work


# --- the end-to-end rig ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from tests.e2e import DAYTONA_KEY
    from tests.fakes.daytona import DaytonaEmulator

    root = tmp_path_factory.mktemp("daytona")
    with DaytonaEmulator(root, DAYTONA_KEY, log_path=root / "requests.jsonl") as emu:
        yield emu


@pytest.fixture(scope="session")
def runtime_snapshot(emulator: object, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The agent runtime, installed once per test run and offered as an emulator snapshot.
    Under pytest-xdist the workers share one install (the first builds it, under a lock),
    and each offers it to its own emulator."""
    from tests.e2e import SNAPSHOT, build_runtime_snapshot

    cache = os.environ.get("CODEX_DAYTONA_TEST_RUNTIME_CACHE")
    if cache:  # kept between runs (tests/mutants.py), one per install command
        from codex_daytona import runtime

        key = hashlib.sha256(runtime.install_command(runtime.Layout("/home")).encode()).hexdigest()[:16]
        shared = Path(cache)
        shared.mkdir(parents=True, exist_ok=True)
        home = shared / f"runtime-{key}"
        with open(shared / f"runtime-{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (shared / f"runtime-{key}.built").exists():
                shutil.rmtree(home, ignore_errors=True)
                build_runtime_snapshot(home)
                (shared / f"runtime-{key}.built").touch()
    elif os.environ.get("PYTEST_XDIST_WORKER"):
        shared = tmp_path_factory.getbasetemp().parent  # the run's directory, above each worker's
        home = shared / "runtime-snapshot"
        with open(shared / "runtime-snapshot.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (shared / "runtime-snapshot.built").exists():
                build_runtime_snapshot(home)
                (shared / "runtime-snapshot.built").touch()
    else:
        home = build_runtime_snapshot(tmp_path_factory.mktemp("runtime-snapshot"))
    emulator.add_snapshot(SNAPSHOT, home)  # type: ignore[attr-defined]
    return SNAPSHOT


# The fixtures that stand up the emulator and install the agent runtime: only `e2e` tests may
# use them, so that `make test-fast` (-m "not e2e") never starts them.
E2E_FIXTURES = frozenset({"rig", "emulator", "runtime_snapshot"})
# The code under test is this checkout's, in the CLI subprocesses too (whatever the
# virtualenv's editable install points at).
REPO = Path(__file__).resolve().parent.parent


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("e2e") is not None:
        return
    # The fixtures this test really gets: a module may define its own `emulator` (test_emulator.py).
    defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    used = sorted(
        name for name in E2E_FIXTURES if name in defs and Path(inspect.getfile(defs[name][-1].func)) == Path(__file__)
    )
    if used:
        pytest.fail(
            f"{item.nodeid} uses {', '.join(used)} but is not marked e2e: add @pytest.mark.e2e "
            "(or pytestmark = pytest.mark.e2e), so that `make test-fast` leaves it out.",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def warm_helper_dir() -> Iterator[Path]:
    """The directory of the warm helper that serves this worker's CLI calls (the first call
    runs in process and starts it; later ones are forked from it, as on a user's terminal).
    Removing its socket at the end makes it exit within a tick. It is under /tmp, not pytest's
    base temp: a socket's path has room for 103 bytes on macOS, and pytest's there
    (/private/var/folders/.../pytest-of-USER/pytest-N/popen-gwN/...) nearly fills it."""
    import shutil
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="cdh-", dir="/tmp"))  # 0700
    yield directory
    for sock in directory.glob("*.sock"):
        sock.unlink(missing_ok=True)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def rig(
    request: pytest.FixtureRequest,
    emulator: object,
    runtime_snapshot: str,
    _isolated: Path,
    tmp_path: Path,
    warm_helper_dir: Path,
) -> Iterator[object]:
    """The CLI, the emulator and the scripted model, wired together. The CLI's calls go through
    the warm helper (one per worker), which forks each command from a process that has the
    CLI imported: a fresh interpreter costs ~1.5 s of CPU importing the Daytona SDK, hundreds
    of times a run. A test marked `cold` (signals, the first contact, the helper itself) runs
    every call in a process of its own, as CI and scripts do."""
    from tests.e2e import DAYTONA_KEY, OPENAI_KEY, Rig, reset_emulator
    from tests.fakes.model import ScriptedModel

    reset_emulator(emulator)  # type: ignore[arg-type]

    model = ScriptedModel(log_dir=tmp_path / "model-requests")
    model.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith(OUR_VARS)}
    env.update(
        DAYTONA_API_KEY=DAYTONA_KEY,
        DAYTONA_API_URL=emulator.api_url,  # type: ignore[attr-defined]
        SANDBOX_OPENAI_API_KEY=OPENAI_KEY,
        SANDBOX_OPENAI_BASE_URL=model.base_url,
        CODEX_DAYTONA_MODEL="gpt-5.5",
        CODEX_DAYTONA_SNAPSHOT=runtime_snapshot,
        CODEX_DAYTONA_STATE_DIR=str(tmp_path / "state"),
        NO_COLOR="1",
        COLUMNS="100",
        CODEX_DAYTONA_HELPER="0" if request.node.get_closest_marker("cold") else "1",
        CODEX_DAYTONA_HELPER_DIR=str(warm_helper_dir),
        CODEX_DAYTONA_HELPER_IDLE_SECONDS="120",
        PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
    )
    rig = Rig(emulator, model, _isolated, env)  # type: ignore[arg-type]
    yield rig
    model.stop()
    # Leave no sandbox (and none of its processes) behind a test.
    try:
        leftover = rig.record()
    except ValueError:  # a test that corrupts the state file on purpose
        leftover = {}
    if leftover:
        rig.cli("down", "--yes")
