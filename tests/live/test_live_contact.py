"""First contact with real Daytona: the paths of tests/fakes/DAYTONA.md that the emulator can
only take from Daytona's public source. One run, one table (printed at the end, see
conftest.py): a fresh sandbox's first ask, an ask after stop and start, pause or its refusal,
fork (fan-out) or its refusal, shell, ssh, preview 200/307/502, and `down --all`'s listing.
Every sandbox it makes is deleted at the end, also on Ctrl-C. Skipped without keys."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.live.conftest import record
from tests.live.test_live import HAVE_KEYS, LIVE_ENV, _cli

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(not HAVE_KEYS, reason="live suite: set DAYTONA_API_KEY and SANDBOX_OPENAI_API_KEY"),
]

NAMES = ("default", "default-1", "default-2")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def _status(url: str, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.build_opener(_NoRedirects).open(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _check(what: str, ok: bool, detail: str = "", *, soft: bool = False) -> None:
    record(what, "ok" if ok else ("NOTE" if soft else "FAIL"), detail)
    if not ok and not soft:
        pytest.fail(f"{what}: {detail}")


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    """The project directory; on the way out (Ctrl-C included) every sandbox its state file
    names is deleted, then any sandbox Daytona lists with its labels."""
    directory = tmp_path / "contact"
    directory.mkdir()
    try:
        yield directory
    finally:
        for name in reversed(NAMES):  # forks first: Daytona deletes a fork's source only after it
            _cli(directory, "down", "--yes", "--name", name, timeout=300)
        from daytona import Daytona, DaytonaConfig, ListSandboxesQuery

        from codex_daytona.usecases.context import project_labels

        config = DaytonaConfig(api_key=LIVE_ENV["DAYTONA_API_KEY"], api_url=LIVE_ENV.get("DAYTONA_API_URL"))
        client = Daytona(config)
        digest = project_labels(directory, "default")["codex-daytona.project"]
        left = list(client.list(ListSandboxesQuery(labels={"codex-daytona.project": digest})))
        for sandbox in left:
            client.delete(sandbox)
        record("cleanup: sandboxes left after down", "ok" if not left else "NOTE", f"{len(left)} deleted by label")


def test_live_first_contact(project: Path) -> None:
    up = _cli(project, "up", "-q")
    _check("up (fresh sandbox)", up.returncode == 0, up.stderr)
    first = _cli(project, "ask", "-q", "Reply with the single word: first")
    _check("first ask in a fresh sandbox (missing session)", first.returncode == 0, first.stderr or first.stdout)

    stopped = _cli(project, "down", "--stop")
    _check("down --stop", stopped.returncode == 0, stopped.stderr)
    again = _cli(project, "ask", "-q", "Reply with the single word: again")
    _check("ask after stop/start (sessions gone)", again.returncode == 0, again.stderr or again.stdout)

    pause = _cli(project, "pause")
    if pause.returncode == 0:
        resumed = _cli(project, "exec", "--", "echo resumed")
        _check("pause (VM class) then resume", resumed.stdout.strip() == "resumed", resumed.stderr)
    else:
        _check(
            "pause refused (container class: 422)",
            pause.returncode == 7 and "Pausing is not supported" in pause.stderr,
            pause.stderr,
        )

    fan = _cli(project, "ask", "--fanout", "2", "--new-thread", "--json", "Reply with the single word: sibling")
    summary = json.loads(fan.stdout) if fan.returncode == 0 and fan.stdout.strip() else {}
    _check("fan-out 2 (fork or snapshot fallback)", fan.returncode == 0, fan.stderr)
    record("  ... siblings forked", str(summary.get("forked")), str(summary.get("snapshot") or ""))
    _check("down --others", _cli(project, "down", "--others", "--yes").returncode == 0)

    shell = subprocess.run(
        [*_shell_cmd()],
        input="echo live-shell-$((40+2))\nexit\n",
        capture_output=True,
        text=True,
        timeout=300,
        cwd=project,
        env=_env_of(project),
    )
    _check("shell (off a terminal, 0x0 size)", "live-shell-42" in shell.stdout, shell.stderr)

    ssh = _cli(project, "ssh", "--expires", "5", "-q")
    _check("ssh command printed", ssh.returncode == 0 and "ssh" in ssh.stdout, ssh.stderr)

    served = _cli(project, "exec", "--", "nohup python3 -m http.server 8080 >/dev/null 2>&1 & sleep 2; echo up")
    _check("exec: start a server", served.returncode == 0, served.stderr)
    preview = _cli(project, "preview", "--json", "--port", "8080")
    links = json.loads(preview.stdout).get("previews", []) if preview.returncode == 0 else []
    _check("preview link", bool(links), preview.stderr)
    if links:
        url, token = links[0]["url"], links[0].get("token") or ""
        _check("preview 200 with the token", _status(url, {"X-Daytona-Preview-Token": token}) == 200, url)
        no_token = _status(url, {})
        _check("preview 307 without it (private sandbox)", no_token == 307, f"got {no_token}", soft=True)
        nothing = _status(url.replace("8080", "8099", 1), {"X-Daytona-Preview-Token": token})
        _check("preview 502 where nothing listens", nothing == 502, f"got {nothing}", soft=True)

    listing = _cli(project, "down", "--all")  # no --yes, no terminal: lists, then refuses
    status = json.loads(_cli(project, "status", "--json").stdout or "{}")
    _check(
        "down --all lists this sandbox (without deleting)",
        listing.returncode == 2 and str(status.get("sandbox_id")) in listing.stderr,
        listing.stderr,
    )


def _env_of(project: Path) -> dict[str, str]:
    from tests.live.test_live import _env

    return _env(project)


def _shell_cmd() -> list[str]:
    import sys

    return [sys.executable, "-m", "codex_daytona", "shell"]
