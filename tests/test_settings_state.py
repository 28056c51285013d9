"""Settings and the state file."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from codex_daytona.errors import ConfigError, StateError
from codex_daytona.settings import load_settings
from codex_daytona.state import LastTurn, SandboxRecord, StateStore, state_dir


def test_settings_read_dotenv_and_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    Path(".env").write_text("DAYTONA_API_KEY=from-dotenv\nDAYTONA_API_URL=http://dotenv.example/api\n")
    settings = load_settings()
    assert settings.require_daytona_key() == "from-dotenv"
    # The SDK ignores DAYTONA_API_URL from .env; we read it ourselves and pass it on.
    assert settings.api_url == "http://dotenv.example/api"
    monkeypatch.setenv("DAYTONA_API_KEY", "from-env")
    assert load_settings().require_daytona_key() == "from-env"


def test_missing_keys_name_the_variable() -> None:
    settings = load_settings()
    with pytest.raises(ConfigError, match="DAYTONA_API_KEY"):
        settings.require_daytona_key()
    with pytest.raises(ConfigError, match="SANDBOX_OPENAI_API_KEY"):
        settings.require_openai_key()


def test_blank_key_counts_as_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAYTONA_API_KEY", "   ")
    with pytest.raises(ConfigError, match="DAYTONA_API_KEY"):
        load_settings().require_daytona_key()


def test_invalid_values_are_one_line_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAYTONA_API_URL", "not a url")
    monkeypatch.setenv("SANDBOX_OPENAI_API_KEY", "sk-secret-value-123")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "DAYTONA_API_URL" in info.value.message
    assert "\n" not in info.value.message
    assert "sk-secret-value-123" not in info.value.message


def test_secrets_are_not_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_OPENAI_API_KEY", "sk-secret-value-123")
    assert "sk-secret-value-123" not in repr(load_settings())


def _record(sid: str = "sb-1") -> SandboxRecord:
    return SandboxRecord(sandbox_id=sid, home_dir="/home/daytona", thread_id="t-1")


def test_state_round_trip_mode_and_directory(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    with store.update() as state:
        state.sandboxes["default"] = _record()
        state.sandboxes["default"].last_turn = LastTurn(run_id="r1", started_at="now", status="completed")
    assert store.get() is not None and store.get().thread_id == "t-1"  # type: ignore[union-attr]
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(store.directory).st_mode) == 0o700
    assert not list(store.directory.glob(".state-*"))  # no temp files left behind


def test_corrupt_state_is_a_clear_error_naming_the_file(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.path.write_text("this is [not toml")
    with pytest.raises(StateError) as info:
        store.load()
    assert str(store.path) in info.value.message
    store.path.write_text('version = 1\n[sandboxes.default]\nhome_dir = "/h"\n')  # no sandbox_id
    with pytest.raises(StateError, match="corrupt"):
        store.load()
    # Left as it was: we never overwrite what we could not read.
    assert store.path.read_text().startswith("version = 1")


def test_newer_state_version_is_refused(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.path.write_text("version = 99\n")
    with pytest.raises(StateError, match="newer"):
        store.load()


def test_concurrent_updates_do_not_lose_writes(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s")

    def bump(i: int) -> None:
        for j in range(10):
            with store.update() as state:
                state.sandboxes[f"n{i}-{j}"] = _record(f"sb-{i}-{j}")

    threads = [threading.Thread(target=bump, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.load().sandboxes) == 40


def test_state_dir_default_and_override(tmp_path: Path) -> None:
    assert state_dir(None) == Path.cwd() / ".codex-daytona"
    assert state_dir(tmp_path / "x") == tmp_path / "x"


# The forked writer only saves the state file and _exits: it takes no lock another thread of
# this process could hold, which is what Python 3.12+ warns a fork about.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded, use of fork:DeprecationWarning")
def test_the_state_file_is_whole_to_a_reader_and_after_a_kill_mid_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state file is replaced, never rewritten in place: a reader that loops while a
    writer saves (large states, so that each write takes a while) only ever sees one whole
    state or the other, and a writer SIGKILLed at any moment leaves one of them behind, whole."""
    import random
    import signal
    import time

    from codex_daytona import state as st

    def big(thread: str) -> st.State:
        return st.State(
            sandboxes={
                f"box-{i}": SandboxRecord(sandbox_id=f"sb-{i}", home_dir="/home/daytona", thread_id=thread)
                for i in range(3000)
            }
        )

    a, b = big("thread-a"), big("thread-b")
    # Serialising is done once (it is not what is tested), so that nearly all of the writer's
    # time goes to the file, where a kill or a reader would find a torn one.
    dumps = {id(a): st._dump(a), id(b): st._dump(b)}
    monkeypatch.setattr(st, "_dump", lambda state: dumps[id(state)])
    whole = set(dumps.values())
    store = StateStore(tmp_path / "state")
    with store.lock():
        store.save(a)
    rng = random.Random(25)
    reads = torn_reads = 0
    for kills in range(1, 21):
        writer = os.fork()
        if writer == 0:  # the child: saves by turns until it is killed
            try:
                while True:
                    store.save(b)
                    store.save(a)
            finally:
                os._exit(1)
        deadline = time.monotonic() + rng.uniform(0.05, 0.15)
        try:
            while time.monotonic() < deadline:
                reads += 1
                torn_reads += store.path.read_bytes() not in whole
        finally:
            os.kill(writer, signal.SIGKILL)
            os.waitpid(writer, 0)
        after = store.path.read_bytes()
        assert after in whole, f"a kill mid-write left a torn state file ({len(after)} bytes) after {kills} kills"
    assert store.load().sandboxes["box-0"].thread_id in ("thread-a", "thread-b")
    assert reads > 100, "the reader really read while the writer wrote"
    assert torn_reads == 0, f"{torn_reads} of {reads} reads saw a torn state file"
