"""Core decisions that need no sandbox: fallbacks when Daytona refuses an optional call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from codex_daytona import events as ev
from codex_daytona.errors import DaytonaError
from codex_daytona.settings import Settings
from codex_daytona.state import StateStore
from codex_daytona.usecases.context import Context
from codex_daytona.usecases.provision import base_snapshot


class RefusingApi:
    """A Daytona that will not tell us about snapshots (a key without that permission)."""

    def snapshot_state(self, name: str) -> Any:
        raise DaytonaError("Could not look up the snapshot: forbidden")


def test_a_snapshot_lookup_that_fails_falls_back_to_installing(tmp_path: Path) -> None:
    seen: list[ev.Event] = []
    ctx = Context(Settings(daytona_api_key="k"), StateStore(tmp_path), emit=seen.append)
    ctx._api = RefusingApi()  # type: ignore[assignment]
    assert base_snapshot(ctx) is None
    assert [e["type"] for e in seen] == [ev.WARNING]
    assert "forbidden" in seen[0]["message"]


def test_an_explicit_snapshot_needs_no_lookup(tmp_path: Path) -> None:
    ctx = Context(Settings(daytona_api_key="k", codex_daytona_snapshot="mine"), StateStore(tmp_path))
    ctx._api = RefusingApi()  # type: ignore[assignment]
    assert base_snapshot(ctx) == "mine"
