"""README claims that nothing else pins: preview links of a public sandbox (no token, and
`--open` opens the link as it is), `snapshot` reactivating a snapshot Daytona deactivated,
and the exit-code table."""

from __future__ import annotations

import json
import re
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from codex_daytona.errors import ExitCode
from codex_daytona.sandbox import runtime
from tests.e2e import DAYTONA_KEY, DEFAULT_CONFIG, SNAPSHOT, Rig, free_port, http_get
from tests.fakes.model import msg, turn
from tests.test_preview_links import serve_turn
from tests.test_snapshot import NO_SNAPSHOT, delete_snapshot

README = Path(__file__).resolve().parent.parent / "README.md"


def _api(rig: Rig, method: str, path: str) -> Any:
    request = urllib.request.Request(
        f"{rig.emulator.api_url}{path}", method=method, headers={"Authorization": f"Bearer {DAYTONA_KEY}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
    return json.loads(body) if body else None


def _browser(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in for the local browser (`BROWSER`): it writes down every URL it is given."""
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser"
    browser.write_text(f"#!{sys.executable}\nimport sys\nopen({str(opened)!r}, 'a').write(sys.argv[1] + '\\n')\n")
    browser.chmod(0o755)
    return browser, opened


# --- preview links of a public sandbox ---------------------------------------------------------


@pytest.mark.e2e
def test_a_public_sandboxs_links_need_no_token_and_open_as_they_are(rig: Rig, tmp_path: Path) -> None:
    up = rig.cli("up", "-q")
    assert up.code == 0, up
    sandbox_id = up.stdout.strip()
    _api(rig, "POST", f"/sandbox/{sandbox_id}/public/true")
    token = rig.emulator.server.sandboxes[sandbox_id].preview_token
    port = free_port()
    rig.model.enqueue(*serve_turn(f"python3 -m http.server {port} --bind 0.0.0.0"))
    asked = rig.cli("ask", "start the server")
    assert asked.code == 0, asked

    # The turn's link: checked without a token, and no token or header hint printed.
    lines = asked.stderr.splitlines()
    [link_line] = [line for line in lines if line.startswith(f"🔗 Port {port}: ")]
    url = link_line.split(": ", 1)[1].split()[0]
    # One line: the plain link (no signed URL, no expiry) and the check's outcome.
    assert link_line == f"🔗 Port {port}: {url}  ✓ answers", asked
    assert token not in asked.stdout + asked.stderr
    assert "X-Daytona-Preview-Token" not in asked.stderr and "Private sandbox" not in asked.stderr, asked

    # The link answers with no token at all; the same link of a private sandbox does not.
    status, body = http_get(url)
    assert status == 200 and "Directory listing" in body, (status, body)
    _api(rig, "POST", f"/sandbox/{sandbox_id}/public/false")
    assert http_get(url)[0] == 307, "a private sandbox sends a request without its token to sign-in"
    _api(rig, "POST", f"/sandbox/{sandbox_id}/public/true")

    # `preview`, in each output mode: the same unsigned link, public, checked OK, no token shown.
    human = rig.cli("preview", "--port", str(port))
    assert human.code == 0, human
    assert f"🔗 Port {port}: {url}" in human.stderr, human
    assert f"🔗 Port {port}: {url}  ✓ answers\n" in human.stderr and "link valid" not in human.stderr, human
    assert token not in human.stdout + human.stderr and "X-Daytona-Preview-Token" not in human.stderr, human
    quiet = rig.cli("preview", "-q", "--port", str(port))
    assert quiet.code == 0 and quiet.stdout.splitlines() == [url], quiet
    listed = rig.cli("preview", "--json", "--port", str(port))
    assert listed.code == 0, listed
    [entry] = json.loads(listed.stdout)["previews"]
    facts = {k: entry[k] for k in ("url", "public", "signed", "status", "ok")}
    assert facts == {"url": url, "public": True, "signed": False, "status": 200, "ok": True}, entry
    assert entry["token"] is None and token not in listed.stdout, "a public link needs no token"

    # --open opens that link as it is: no signed URL for a public sandbox.
    browser, opened = _browser(tmp_path)
    result = rig.cli("preview", "--open", "--port", str(port), env={"BROWSER": str(browser)})
    assert result.code == 0, result
    assert opened.read_text().splitlines() == [url]
    assert f"🔗 Port {port}: {url}" in result.stderr and f"Opened port {port} in the browser" in result.stderr
    assert "link valid" not in result.stderr and token not in result.stdout + result.stderr, result
    assert not rig.emulator.server.signed_urls or all(
        s.sandbox_id != sandbox_id for s in rig.emulator.server.signed_urls.values()
    ), "no signed URL was asked for"


# --- snapshot reactivates a deactivated snapshot -------------------------------------------------


@pytest.mark.e2e
def test_snapshot_reactivates_a_snapshot_daytona_deactivated(rig: Rig) -> None:
    name = runtime.snapshot_name()
    delete_snapshot(rig, name)
    runtime_home = next(s["sourceDir"] for s in rig.emulator.snapshots() if s["name"] == SNAPSHOT)
    added = rig.emulator.add_snapshot(name, runtime_home)
    rig.emulator.set_snapshot_state(added["id"], "inactive")
    try:
        assert next(s for s in rig.emulator.snapshots() if s["name"] == name)["state"] == "inactive"
        sandboxes = len(rig.emulator.sandboxes())
        since = time.time()
        result = rig.cli("snapshot", "--json", env=NO_SNAPSHOT)
        assert result.code == 0, result
        assert json.loads(result.stdout) == {"snapshot": name, "created": False, "state": "active"}
        activations = [
            e
            for e in rig.requests(since)
            if e["method"] == "POST" and re.fullmatch(r"/api/snapshots/.+/activate", e["path"])
        ]
        assert [(e["path"].split("/")[3] in (name, added["id"]), e["status"]) for e in activations] == [(True, 200)]
        assert next(s for s in rig.emulator.snapshots() if s["name"] == name)["state"] == "active"
        assert len(rig.emulator.sandboxes()) == sandboxes, "nothing was built"

        # ... and `up` now starts from it.
        up = rig.cli("up", env=NO_SNAPSHOT)
        assert up.code == 0, up
        assert f"Using snapshot {name}" in up.stderr and "Installing" not in up.stderr, up
        assert (rig.sandbox(rig.record()["sandbox_id"]) or {}).get("snapshot") == name
        rig.model.enqueue(turn(msg("from the reactivated snapshot")))
        asked = rig.cli("ask", "-q", "hi", env=NO_SNAPSHOT)
        assert asked.code == 0 and asked.stdout.strip() == "from the reactivated snapshot", asked
    finally:
        delete_snapshot(rig, name)


@pytest.mark.e2e
def test_snapshot_just_deactivated_says_when_to_try_again(rig: Rig) -> None:
    """Daytona refuses to activate a snapshot deactivated under 10 minutes ago (400; SDK
    0.226 passes the API client's exception on untranslated): one line and a hint, no
    traceback. One line: "already active" (activated meanwhile) is fine."""
    name = runtime.snapshot_name()
    delete_snapshot(rig, name)
    runtime_home = next(s["sourceDir"] for s in rig.emulator.snapshots() if s["name"] == SNAPSHOT)
    added = rig.emulator.add_snapshot(name, runtime_home)
    rig.emulator.set_snapshot_state(added["id"], "inactive", ago=60)
    try:
        result = rig.cli("snapshot", env=NO_SNAPSHOT)
        assert result.code == ExitCode.DAYTONA, result
        assert "Traceback" not in result.stderr, result
        assert f"Daytona deactivated snapshot {name} only minutes ago" in result.stderr, result
        assert "Try again in 10 minutes" in result.stderr, result
        assert result.stdout == ""
    finally:
        delete_snapshot(rig, name)


# --- the exit-code table -----------------------------------------------------------------------


def test_the_readme_lists_every_exit_code_and_no_other() -> None:
    text = README.read_text()
    table = text.split("### Exit codes", 1)[1].split("\n## ", 1)[0]
    codes = [int(m) for m in re.findall(r"^\| (\d+) \|", table, re.MULTILINE)]
    assert codes == [int(c) for c in ExitCode], codes


# --- the rig ---------------------------------------------------------------------------------


@pytest.mark.e2e
def test_every_e2e_test_starts_with_the_emulator_reset(emulator: Any, request: pytest.FixtureRequest) -> None:
    """A fault or setting left behind by a test that failed before its cleanup does not leak."""
    emulator.set_faults(**{name: 7 for name in emulator.faults()})
    emulator.set_config(autostop_seconds_per_minute=1)
    request.getfixturevalue("rig")
    assert set(emulator.faults().values()) == {0}, emulator.faults()
    assert emulator.server.config == DEFAULT_CONFIG
