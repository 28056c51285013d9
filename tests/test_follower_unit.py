"""The run follower on a log stream that drops at any byte, through the Daytona SDK's own
demultiplexer: every event arrives once, wherever the cut falls (inside a stream marker too)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from daytona._utils.stream import _std_demux_loop

from codex_daytona import events as ev
from codex_daytona.errors import DaytonaError
from codex_daytona.state import SandboxRecord
from codex_daytona.usecases.context import Box
from codex_daytona.usecases.follower import RunFollower

EVENTS = [
    {"type": "codex_daytona.run.started", "run_id": "r"},
    {"type": "thread.started", "thread_id": "t"},
    {"type": "item.completed", "item": {"id": "item_0", "type": "agent_message", "text": "déjà vu ✓"}},
    {"type": "codex_daytona.run.completed", "run_id": "r", "status": "completed", "exit_code": 0},
]
# The log as Daytona's daemon writes it: every line prefixed with the stdout marker.
LOG = b"".join(b"\x01\x01\x01" + json.dumps(e, ensure_ascii=False).encode() + b"\n" for e in EVENTS)


class DroppingApi:
    """Serves LOG through the SDK's demultiplexer, the first connection cut after `cut` bytes."""

    def __init__(self, cut: int) -> None:
        self.cut = cut
        self.connections = 0

    def get(self, _sandbox_id: str) -> None:
        """The follower looks the sandbox up when its stream drops: it is still there."""

    def stream_logs(
        self,
        _sandbox: Any,
        _session: str,
        _command: str,
        on_stdout: Callable[[str], None],
        on_stderr: Callable[[str], None],
        **_kw: Any,
    ) -> bool:
        self.connections += 1
        data = LOG[: self.cut] if self.connections == 1 else LOG
        frames = [data[i : i + 7] for i in range(0, len(data), 7)]

        async def recv() -> bytes | None:
            if frames:
                return frames.pop(0)
            if self.connections == 1:
                raise DaytonaError("dropped")
            return None

        asyncio.run(_std_demux_loop(recv, on_stdout, on_stderr))
        return True


def test_a_stream_cut_at_any_byte_loses_and_repeats_nothing() -> None:
    # Every cut inside or next to a marker, inside a multi-byte character, and a few more.
    tricky = {i + d for i in range(len(LOG)) if LOG[i] == 1 or LOG[i] >= 0x80 for d in (0, 1)}
    for cut in sorted(tricky | {len(LOG) // 3, len(LOG) - 1}):
        seen: list[ev.Event] = []
        api = DroppingApi(cut)
        box = Box(api, None, SandboxRecord(sandbox_id="sb", home_dir="/home/x"))  # type: ignore[arg-type]
        follower = RunFollower(box, "r", seen.append)
        follower.watch("s", "c")
        follower.follow(10)
        shown = [e for e in seen if e["type"] != ev.RETRY]
        assert shown == EVENTS[:3], f"cut after {cut} bytes"
        assert follower.completed == EVENTS[-1]
