"""`codex-daytona snapshot` and how `up` uses it, end to end against the emulator.

The rig points CODEX_DAYTONA_SNAPSHOT at a prebuilt test snapshot; these tests unset it
(an empty value counts as unset) to exercise the real lookup."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from codex_daytona.sandbox import runtime
from tests.e2e import DAYTONA_KEY, SNAPSHOT, Rig, build_runtime_snapshot
from tests.fakes.model import msg, turn

pytestmark = pytest.mark.e2e

NO_SNAPSHOT = {"CODEX_DAYTONA_SNAPSHOT": ""}
PIP_INSTALL = "pip install"


def delete_snapshot(rig: Rig, name: str) -> None:
    """Removes snapshot `name` from the (session-wide) emulator, if it is there."""
    if not any(s["name"] == name for s in rig.emulator.snapshots()):
        return
    request = urllib.request.Request(
        f"{rig.emulator.api_url}/snapshots/{name}",
        method="DELETE",
        headers={"Authorization": f"Bearer {DAYTONA_KEY}"},
    )
    urllib.request.urlopen(request, timeout=10).read()


def commands(rig: Rig, sandbox_id: str) -> list[str]:
    return [c["command"] for c in rig.emulator.commands(sandbox_id)]


def live_sandboxes(rig: Rig) -> set[str]:
    return {s["id"] for s in rig.emulator.sandboxes() if s["state"] != "destroyed"}


@pytest.mark.slow
def test_up_without_a_snapshot_installs_the_runtime(rig: Rig) -> None:
    delete_snapshot(rig, runtime.snapshot_name())
    result = rig.cli("up", env=NO_SNAPSHOT, timeout=900)
    assert result.code == 0, result
    sandbox_id = rig.record()["sandbox_id"]
    sandbox = rig.sandbox(sandbox_id)
    assert sandbox is not None and sandbox["snapshot"] is None
    assert "Installing the Codex agent runtime" in result.stderr, result
    assert any(PIP_INSTALL in c for c in commands(rig, sandbox_id))
    # The sandbox has uv (as Daytona's default image does): uv made the virtualenv.
    assert "\nuv = " in venv_config(rig, sandbox_id)
    assert not (rig.emulator.home_dir(sandbox_id) / ".cache/uv").exists(), "uv kept its download cache"
    rig.model.enqueue(turn(msg("installed by uv")))
    asked = rig.cli("ask", "-q", "hi", env=NO_SNAPSHOT)
    assert asked.code == 0 and asked.stdout == "installed by uv\n", asked


def venv_config(rig: Rig, sandbox_id: str) -> str:
    return "\n" + (rig.emulator.home_dir(sandbox_id) / ".codex-daytona/venv/pyvenv.cfg").read_text()


@pytest.mark.slow
def test_up_installs_with_pip_where_the_sandbox_has_no_uv(rig: Rig) -> None:
    delete_snapshot(rig, runtime.snapshot_name())
    rig.emulator.set_config(sandbox_uv=False)
    result = rig.cli("up", env=NO_SNAPSHOT, timeout=900)
    assert result.code == 0, result
    sandbox_id = rig.record()["sandbox_id"]
    config = venv_config(rig, sandbox_id)
    assert "\nuv = " not in config and "\nhome = " in config  # python3 -m venv's
    assert (rig.emulator.home_dir(sandbox_id) / ".codex-daytona/venv/bin/pip").exists()
    assert not (rig.emulator.home_dir(sandbox_id) / ".cache/pip").exists(), "pip kept its download cache"
    rig.model.enqueue(turn(msg("installed by pip")))
    asked = rig.cli("ask", "-q", "hi", env=NO_SNAPSHOT)
    assert asked.code == 0 and asked.stdout == "installed by pip\n", asked


def test_snapshot_is_built_once_and_up_starts_from_it(rig: Rig) -> None:
    name = runtime.snapshot_name()
    delete_snapshot(rig, name)
    try:
        before = live_sandboxes(rig)
        built = rig.cli("snapshot", "--json", env=NO_SNAPSHOT, timeout=900)
        assert built.code == 0, built
        assert json.loads(built.stdout) == {"snapshot": name, "created": True, "state": "active"}
        snapshot = next(s for s in rig.emulator.snapshots() if s["name"] == name)
        builder = snapshot["sourceSandboxId"]
        assert builder and PIP_INSTALL in " ".join(commands(rig, builder))
        # The temporary sandbox is gone; nothing else was created or kept.
        assert live_sandboxes(rig) == before
        assert (rig.sandbox(builder) or {}).get("state") == "destroyed"

        # Idempotent: the second call reports the snapshot and builds nothing.
        sandboxes = len(rig.emulator.sandboxes())
        again = rig.cli("snapshot", "-q", env=NO_SNAPSHOT)
        assert again.code == 0, again
        assert again.stdout.strip() == name
        assert "Building" not in again.stderr
        assert len(rig.emulator.sandboxes()) == sandboxes
        assert [s["name"] for s in rig.emulator.snapshots()].count(name) == 1

        # `up` finds it by name and creates the sandbox from it: no pip install.
        up = rig.cli("up", env=NO_SNAPSHOT)
        assert up.code == 0, up
        sandbox_id = rig.record()["sandbox_id"]
        assert (rig.sandbox(sandbox_id) or {}).get("snapshot") == name
        assert f"Using snapshot {name}" in up.stderr, up
        assert "Installing" not in up.stderr
        assert not any(PIP_INSTALL in c for c in commands(rig, sandbox_id))
        # ... and the runtime from the snapshot runs a turn.
        rig.model.enqueue(turn(msg("hello from the snapshot")))
        asked = rig.cli("ask", "-q", "hi", env=NO_SNAPSHOT)
        assert asked.code == 0, asked
        assert asked.stdout.strip() == "hello from the snapshot"
        assert rig.cli("down", "--yes").code == 0

        # CODEX_DAYTONA_SNAPSHOT, when set, wins over the built snapshot.
        explicit = rig.cli("up")
        assert explicit.code == 0, explicit
        assert (rig.sandbox(rig.record()["sandbox_id"]) or {}).get("snapshot") == SNAPSHOT
        assert "Using snapshot" not in explicit.stderr
    finally:
        delete_snapshot(rig, name)


@pytest.mark.slow
def test_the_runtime_is_compiled_by_its_install_even_where_the_image_forbids_writing_bytecode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many Python images set PYTHONDONTWRITEBYTECODE: uv compiles the runtime anyway, so the
    agent never compiles the SDK as it starts (0.5 s of the sandbox's CPU on every start)."""
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    home = build_runtime_snapshot(tmp_path / "home")
    site = next((home / ".codex-daytona/venv/lib").glob("python3*/site-packages"))
    assert "\nuv = " in "\n" + (home / ".codex-daytona/venv/pyvenv.cfg").read_text(), "uv installed it"
    assert list((site / "openai_codex/generated/__pycache__").glob("v2_all.*.pyc"))
    assert list(site.glob(f"pydantic-{runtime.PYDANTIC_VERSION}.dist-info")), "pydantic is the pinned one"
    # Nor does it keep its download cache in the home (and so in the snapshot): 370 MB.
    assert not (home / ".cache/uv").exists()
