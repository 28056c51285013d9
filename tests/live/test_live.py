"""The same flow against real Daytona and OpenAI. Opt-in: skipped unless the real keys are
set (DAYTONA_API_KEY and SANDBOX_OPENAI_API_KEY, or SANDBOX_OPENAI_SECRET). Costs money and
a few minutes: `make test-live`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.live.conftest import record

# Read at import, before the suite's isolation fixture clears these for every test.
LIVE_ENV = {
    k: v for k, v in os.environ.items() if k.startswith(("DAYTONA_", "SANDBOX_OPENAI_", "CODEX_DAYTONA_")) and v
}
HAVE_KEYS = "DAYTONA_API_KEY" in LIVE_ENV and (
    "SANDBOX_OPENAI_API_KEY" in LIVE_ENV or "SANDBOX_OPENAI_SECRET" in LIVE_ENV
)

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(not HAVE_KEYS, reason="live suite: set DAYTONA_API_KEY and SANDBOX_OPENAI_API_KEY"),
]


def _env(project: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAYTONA_", "SANDBOX_OPENAI_", "CODEX_"))}
    env.update(LIVE_ENV, CODEX_DAYTONA_STATE_DIR=str(project / ".codex-daytona"))
    return env


def _cli(project: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "codex_daytona", *args],
        cwd=project,
        env=_env(project),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_live_build_serve_preview_resume_down(tmp_path: Path) -> None:
    project = tmp_path / "live"
    project.mkdir()
    try:
        up = _cli(project, "up", "-q")
        assert up.returncode == 0, up.stderr
        first = _cli(
            project,
            "ask",
            "--json",
            "Create index.html containing exactly <h1>codex-daytona live</h1>, then start "
            "`python3 -m http.server 8080 --bind 0.0.0.0 &` in the background, exactly so (no nohup, "
            "no setsid). Reply 'ready'.",
        )
        assert first.returncode == 0, first.stderr
        events = [json.loads(line) for line in first.stdout.splitlines() if line.strip()]
        result = events[-1]
        assert result["type"] == "codex_daytona.result" and result["status"] == "completed"
        # Codex runs commands with the passwd entry's shell: the server hand-over needs bash or zsh.
        shell = _cli(project, "exec", "-q", "--", "getent passwd $(id -un) | cut -d: -f7")
        assert shell.stdout.strip().endswith(("/bash", "/zsh")), f"the sandbox user's shell is {shell.stdout!r}"
        preview = _cli(project, "preview", "--json", "--port", "8080")
        assert preview.returncode == 0, preview.stderr
        link = json.loads(preview.stdout)["previews"][0]
        request = urllib.request.Request(link["url"], headers={"X-Daytona-Preview-Token": link.get("token") or ""})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert "codex-daytona live" in response.read().decode()
        again = _cli(project, "ask", "-q", "What file did you create? Answer with the file name only.")
        assert again.returncode == 0, again.stderr
        assert "index.html" in again.stdout
    finally:
        down = _cli(project, "down", "--yes")
        assert down.returncode == 0, down.stderr


def _popen(project: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "codex_daytona", *args],
        cwd=project,
        env=_env(project),
        text=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_live_sessions_on_daytonas_daemon(tmp_path: Path) -> None:
    """What the session model demands of the tool, on Daytona itself (README "Sessions on
    Daytona's daemon"): exec commands that would end a session shell, a second ask while a
    turn runs, logs -f from another process, Ctrl-C, and no key on the sandbox's disk."""
    import signal
    import time

    project = tmp_path / "sessions"
    project.mkdir()
    try:
        assert _cli(project, "up", "-q").returncode == 0
        assert _cli(project, "exec", "--", "exit 3").returncode == 3
        assert _cli(project, "exec", "--", "exec true").returncode == 0
        assert _cli(project, "exec", "--", "cd / && export LEAK=1").returncode == 0
        after = _cli(project, "exec", "--", 'pwd; echo "leak=${LEAK:-none}"')
        assert after.returncode == 0 and after.stdout.endswith("leak=none\n"), after
        started = _cli(project, "exec", "--timeout", "60", "--", "sleep 120 & echo started")
        assert (started.returncode, started.stdout) == (0, "started\n"), started
        assert _cli(project, "exec", "--", "exit 4").returncode == 4

        slow = _popen(project, "ask", "--json", "Run exactly `sleep 20; echo slept` in the shell, then reply 'slept'.")
        time.sleep(10)
        busy = _cli(project, "ask", "say hi")
        assert busy.returncode == 6, busy.stderr
        follow = _cli(project, "logs", "-f", "--json", timeout=300)
        assert follow.returncode == 0, follow.stderr
        assert json.loads(follow.stdout.splitlines()[-1])["status"] == "completed"
        _out, err = slow.communicate(timeout=300)
        assert slow.returncode == 0, err

        interrupted = _popen(project, "ask", "Run exactly `sleep 300` in the shell.")
        time.sleep(15)
        interrupted.send_signal(signal.SIGINT)
        interrupted.communicate(timeout=60)
        assert interrupted.returncode == 130
        again = _cli(project, "ask", "-q", "Reply with the single word: back")
        assert again.returncode == 0 and "back" in again.stdout.lower(), again.stderr

        key = LIVE_ENV.get("SANDBOX_OPENAI_API_KEY")
        if key:
            # Every file Daytona keeps for the sessions, and the rest of the disk we write: no
            # key. The key reaches grep in its environment only (a command's text is on disk).
            from daytona import Daytona, DaytonaConfig

            status = json.loads(_cli(project, "status", "--json").stdout)
            config = DaytonaConfig(api_key=LIVE_ENV["DAYTONA_API_KEY"], api_url=LIVE_ENV.get("DAYTONA_API_URL"))
            sandbox = Daytona(config).get(status["sandbox_id"])
            found = sandbox.process.exec(
                'grep -rlF -- "$K" ~ /tmp 2>/dev/null | head -5; true', env={"K": key}, timeout=300
            )
            assert (found.result or "").strip() == "", found.result
    finally:
        down = _cli(project, "down", "--yes")
        assert down.returncode == 0, down.stderr


def test_live_batch_runs_its_tasks_at_once_checks_them_and_leaves_nothing(tmp_path: Path) -> None:
    """`batch` on Daytona: four tasks at once, each in a sandbox of its own, each checked, a
    result line each, and every sandbox deleted. On Daytona each sandbox has CPUs of its own,
    so the tasks' time overlaps as it cannot on a 2-core machine running them all (the
    benchmark's bound): the sum of the tasks' durations over the batch's wall time says how
    much, and is in the report at the end of the run."""
    import time

    from daytona import Daytona, DaytonaConfig, ListSandboxesQuery

    from codex_daytona.usecases.context import TOOL_LABEL, project_labels

    project = tmp_path / "batch"
    project.mkdir()
    tasks = [
        {
            "id": f"t{i}",
            "prompt": f"Create the file answer.txt containing exactly {i * 7} and nothing else. Reply 'done'.",
            "check": f'test "$(cat answer.txt)" = {i * 7}',
        }
        for i in range(4)
    ]
    (project / "tasks.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks))
    started = time.monotonic()
    ran = _cli(project, "batch", "tasks.jsonl", "--parallel", "4", "--out", "results.jsonl", timeout=1800)
    wall = time.monotonic() - started
    config = DaytonaConfig(api_key=LIVE_ENV["DAYTONA_API_KEY"], api_url=LIVE_ENV.get("DAYTONA_API_URL"))
    labels = project_labels(project.resolve(), "")
    ours = {k: labels[k] for k in ("app", f"{TOOL_LABEL}.project")}
    left = [
        s.id
        for s in Daytona(config).list(ListSandboxesQuery(labels=ours))
        if str(getattr(s.state, "value", s.state)) not in ("destroyed", "destroying")
    ]
    if left:
        _cli(project, "down", "--all", "--yes")
    assert ran.returncode == 0, ran.stderr
    assert not left, f"--keep none left {left}"
    lines = [json.loads(line) for line in (project / "results.jsonl").read_text().splitlines()]
    assert {line["id"]: line["status"] for line in lines} == {t["id"]: "passed" for t in tasks}, lines
    busy = sum(sum(line["durations"].values()) for line in lines)
    record(
        "batch: 4 tasks at --parallel 4",
        "ran",
        f"{wall:.1f} s, {busy:.1f} s of the tasks' own time: {busy / wall:.1f}x at once",
    )
    assert busy / wall > 2, "the tasks did not run at once"
