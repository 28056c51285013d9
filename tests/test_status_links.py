"""`status` shows each listening port as `ask` does: one line that opens in a browser as
printed (a signed URL, valid an hour, on a private sandbox; the plain URL on a public one)
with the check's outcome in a word; the token only in `--json`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.e2e import Rig, distinct_ports, http_get
from tests.test_claims import _api
from tests.test_preview_links import VITE_LIKE, serve_turn

pytestmark = pytest.mark.e2e


def link_lines(text: str) -> dict[int, str]:
    found = {}
    for line in text.splitlines():
        match = re.match(r"🔗 Port (\d+): ", line)
        if match:
            assert int(match.group(1)) not in found, f"one line per port\n{text}"
            found[int(match.group(1))] = line
    return found


def test_status_prints_one_clickable_line_per_port_as_ask_does(rig: Rig) -> None:
    up = rig.cli("up", "-q")
    assert up.code == 0, up
    sandbox_id = up.stdout.strip()
    (Path(rig.emulator.home_dir(sandbox_id)) / "vite_like.py").write_text(VITE_LIKE)
    good, vite = distinct_ports(2)
    rig.model.enqueue(*serve_turn(f"python3 -m http.server {good} --bind 0.0.0.0", f"python3 vite_like.py {vite}"))
    asked = rig.cli("ask", "start the servers")
    assert asked.code == 0, asked
    token = rig.emulator.server.sandboxes[sandbox_id].preview_token

    # Private: a signed URL that opens with no header, its lifetime, the outcome in a word;
    # the same form as the turn's own lines, on stdout since the links are status's result.
    status = rig.cli("status")
    assert status.code == 0, status
    shown = link_lines(status.stdout)
    assert sorted(shown) == sorted([good, vite]), status
    pattern = r"🔗 Port {port}: (https?://\S+)  {word} · link valid 1 h"
    for port, word in ((good, "✓ answers"), (vite, "✗ blocked")):
        assert re.fullmatch(pattern.format(port=port, word=word), shown[port]), status
        assert re.fullmatch(pattern.format(port=port, word=word), link_lines(asked.stderr)[port]), asked
    signed = shown[good].split(": ", 1)[1].split()[0]
    answer, body = http_get(signed)
    assert answer == 200 and "Directory listing" in body, (answer, body)
    assert token not in status.stdout + status.stderr and "X-Daytona-Preview-Token" not in status.stdout, status
    assert f"Sandbox    {sandbox_id} (started)" in status.stdout, status
    # Why the blocked one fails, and the fix, as a warning on stderr.
    assert any(line.startswith(f"⚠ Port {vite} ") and "allowedHosts" in line for line in status.stderr.splitlines())

    # --json: the link with its token, the signed one, its lifetime and the check.
    listed = json.loads(rig.cli("status", "--json").stdout)
    previews = {p["port"]: p for p in listed["previews"]}
    assert previews[good]["token"] == token and previews[good]["browser_url"] and previews[good]["expires_in"] == 3600
    assert (previews[good]["ok"], previews[good]["outcome"]) == (True, "answers")
    assert (previews[vite]["ok"], previews[vite]["outcome"], previews[vite]["status"]) == (False, "blocked", 403)
    # -q: the state alone.
    quiet = rig.cli("status", "-q")
    assert quiet.code == 0 and quiet.stdout == "started\n", quiet

    # Public: the plain URL, no lifetime, and it opens with no token.
    _api(rig, "POST", f"/sandbox/{sandbox_id}/public/true")
    public = rig.cli("status")
    assert public.code == 0, public
    line = link_lines(public.stdout)[good]
    assert re.fullmatch(rf"🔗 Port {good}: (https?://\S+)  ✓ answers", line), public
    plain = line.split(": ", 1)[1].split()[0]
    assert plain == previews[good]["url"] and http_get(plain)[0] == 200
