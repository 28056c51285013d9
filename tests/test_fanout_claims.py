"""`ask --fanout` and Ctrl-C while its sandboxes are still being created: they are created at
once, every one of them ends up in the state file (none orphaned, none starts a turn), the
table is printed and the exit code is 130; a second Ctrl-C stops waiting for them.

The emulator's `latency_ms` fault makes every Daytona request slow, so that creating a
sandbox takes seconds; its request log (when each request ended, and how long it took) is
what shows the creations overlapping and still in flight when Ctrl-C came."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from typing import Any

import pytest

from tests.e2e import Rig, default_sigint
from tests.test_claims import _api
from tests.test_fanout import _cleanup, _ids, _live
from tests.test_turns import _wait_for

pytestmark = pytest.mark.e2e

SIBLINGS = ["default-1", "default-2"]


class Watched:
    """The CLI run in the background, its stderr read line by line as it comes."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.stdout = ""
        self.ended: float | None = None

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def seen(self, pattern: str) -> bool:
        return any(re.search(pattern, line) for line in self.lines)

    def wait_for(self, pattern: str, timeout: float = 60) -> None:
        try:
            _wait_for(lambda: self.seen(pattern), timeout=timeout)
        except AssertionError:
            raise AssertionError(f"{pattern!r} never appeared on stderr:\n" + "\n".join(self.lines)) from None

    def finish(self, timeout: float) -> int:
        assert self.proc.stdout is not None
        self.stdout = self.proc.stdout.read()  # until the CLI exits (or closes stdout)
        code = self.proc.wait(timeout=timeout)
        self.ended = time.time()
        self._reader.join(5)
        return code

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)


def _fanout(rig: Rig) -> Watched:
    proc = rig.popen_piped(
        "ask", "--fanout", str(len(SIBLINGS)), "--new-thread", "never runs", preexec_fn=default_sigint
    )
    return Watched(proc)


def _while_both_are_created(rig: Rig, cli: Watched, before: int) -> None:
    """Returns once both siblings are being created: each thread's request to create its
    sandbox has reached the emulator (after the first `before` requests), which holds it for
    `latency_ms`."""
    for name in SIBLINGS:
        cli.wait_for(rf"^{name}\s+creating\s+Creating sandbox\.\.\.")
    _wait_for(lambda: rig.emulator.arrived()[before:].count(("POST", "/api/sandbox")) == len(SIBLINGS), timeout=30)


def _fanout_while_slowly_created(rig: Rig, latency: float) -> Watched:
    """`ask --fanout`, every Daytona request taking `latency` seconds, once both siblings are
    being created."""
    rig.emulator.set_faults(latency_ms=int(latency * 1000))
    before = len(rig.emulator.arrived())
    cli = _fanout(rig)
    _while_both_are_created(rig, cli, before)
    return cli


def _creations(rig: Rig, since: float) -> list[dict[str, Any]]:
    return [e for e in rig.requests(since) if e["method"] == "POST" and e["path"] == "/api/sandbox"]


def _table_rows(stdout: str) -> dict[str, str]:
    """The comparison table's rows by sandbox name (continuation lines of a folded cell left out)."""
    lines = stdout.splitlines()
    assert lines and lines[0].split()[:2] == ["sandbox", "outcome"], stdout
    return {line.split()[0]: line for line in lines[1:] if line.split() and line.split()[0] in SIBLINGS}


def _assert_every_sibling_interrupted(cli: Watched, code: int) -> None:
    """The table: one row per sandbox, interrupted; exit code 130, no traceback."""
    rows = _table_rows(cli.stdout)
    assert sorted(rows) == SIBLINGS, cli.stdout
    for name in SIBLINGS:
        assert rows[name].split()[1].startswith("interrupted"), rows[name]
    assert code == 130, f"exit {code}\n{cli.stderr}\n{cli.stdout}"
    assert "Traceback" not in cli.stderr


def test_ctrl_c_while_sandboxes_are_created_keeps_them_all_and_prints_the_table(rig: Rig) -> None:
    since = time.time()
    try:
        cli = _fanout_while_slowly_created(rig, latency=3.0)
        sent = time.time()
        cli.proc.send_signal(signal.SIGINT)
        code = cli.finish(timeout=120)
        rig.emulator.set_faults(latency_ms=0)

        # Ctrl-C came while both sandboxes were being created, and they were created at once.
        creations = _creations(rig, since)
        assert [e["status"] for e in creations] == [200] * len(SIBLINGS), creations
        spans = [(e["ts"] - e["duration_ms"] / 1000, e["ts"]) for e in creations]
        assert all(began < sent < ended for began, ended in spans), (sent, spans)
        assert max(b for b, _ in spans) < min(e for _, e in spans), f"created one after the other: {spans}"

        _assert_every_sibling_interrupted(cli, code)
        assert "Interrupted: every turn was stopped; the sandboxes are kept." in cli.stderr

        # Every sandbox the emulator created is in the state file: none orphaned.
        ids = _ids(rig)
        assert sorted(ids) == SIBLINGS, ids
        assert _live(rig) == set(ids.values())
        # None of them started a turn: no agent run in any sandbox, no request to the model.
        for sandbox_id in ids.values():
            assert not [c for c in rig.emulator.commands(sandbox_id) if "--run-id" in c["command"]]
        assert rig.model.model_requests == []

    finally:
        rig.emulator.set_faults(latency_ms=0)
        _cleanup(rig)


def test_a_second_ctrl_c_stops_waiting_for_the_sandboxes_being_created(rig: Rig) -> None:
    since = time.time()
    try:
        cli = _fanout_while_slowly_created(rig, latency=5.0)
        cli.proc.send_signal(signal.SIGINT)
        cli.wait_for(r"Interrupting every turn", timeout=10)  # the first Ctrl-C: now waiting for them
        cli.proc.send_signal(signal.SIGINT)
        code = cli.finish(timeout=60)

        # It did not wait: it was gone before the creations it had asked for were even answered.
        _wait_for(lambda: len(_creations(rig, since)) == len(SIBLINGS), timeout=30)
        creations = _creations(rig, since)
        assert cli.ended is not None and all(cli.ended < e["ts"] for e in creations), (cli.ended, creations)

        _assert_every_sibling_interrupted(cli, code)
    finally:
        rig.emulator.set_faults(latency_ms=0)
        # Not waiting has its price: sandboxes created after the CLI left are in no state file.
        known = set(_ids(rig).values())
        for sandbox_id in _live(rig) - known:
            _api(rig, "DELETE", f"/sandbox/{sandbox_id}")
        _cleanup(rig)
