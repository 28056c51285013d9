"""Preview links end to end: each link checked through the emulator's preview proxy, the
problems explained, signed links, `--open`, `-q` and `--json`, and a real browser."""

from __future__ import annotations

import html
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import Rig, distinct_ports, free_port, http_get
from tests.fakes.model import add_file_patch, add_files_patch, msg, patch, run, turn

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).parent / "artifacts"

# A dev server with Vite's host check: every request from a host it does not know is refused.
VITE_LIKE = """\
import http.server, sys

BODY = (
    'Blocked request. This host ("preview.example") is not allowed.\\n'
    'To allow this host, add "preview.example" to `server.allowedHosts` in vite.config.js.'
).encode()

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(403)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()
"""


def serve_turn(*commands: str) -> list[dict[str, Any]]:
    """One turn in which the agent starts servers in the background, the way Codex does."""
    background = " ".join(f"nohup {c} > server-{i}.log 2>&1 &" for i, c in enumerate(commands))
    return [turn(run(f"{background} sleep 1; echo started")), turn(msg("Servers started."))]


def block_after(lines: list[str], marker: str) -> list[str]:
    """The line that starts with `marker` and the indented lines under it."""
    start = next(i for i, line in enumerate(lines) if line.startswith(marker))
    block = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith("   "):
            break
        block.append(line)
    return block


def test_every_new_port_is_checked_and_problems_say_how_to_fix_them(rig: Rig) -> None:
    up = rig.cli("up", "-q")
    assert up.code == 0, up
    home = Path(rig.emulator.home_dir(up.stdout.strip()))
    (home / "vite_like.py").write_text(VITE_LIKE)
    good, loopback, vite = distinct_ports(3)
    rig.model.enqueue(
        *serve_turn(
            f"python3 -m http.server {good} --bind 0.0.0.0",
            f"python3 -m http.server {loopback} --bind 127.0.0.1",
            f"python3 vite_like.py {vite}",
        )
    )
    started = time.monotonic()
    asked = rig.cli("ask", "start the servers")
    assert asked.code == 0, asked
    lines = asked.stderr.splitlines()

    # A good server: one line, its link and the check's outcome in a word.
    block = block_after(lines, f"🔗 Port {good}:")
    assert len(block) == 1 and block[0].endswith("✓ answers · link valid 1 h"), asked
    assert not any(f"Port {good} " in line for line in lines if line.startswith("⚠")), asked

    # Bound to 127.0.0.1: Daytona's proxy forwards to localhost in the sandbox, so it works too.
    assert "✓ answers" in block_after(lines, f"🔗 Port {loopback}:")[0], asked
    assert not any(f"Port {loopback} " in line for line in lines if line.startswith("⚠")), asked

    # Vite's host check: the allowedHosts fix.
    assert "✗ blocked" in block_after(lines, f"🔗 Port {vite}:")[0]
    warning = next(line for line in lines if line.startswith(f"⚠ Port {vite} "))
    assert "Vite blocked the preview host" in warning, asked
    assert "server.allowedHosts" in warning and "allowedHosts: true" in warning and "--host 0.0.0.0" in warning

    # Never fatal, and quick: three checks add a few seconds at most to the turn.
    assert time.monotonic() - started < 60

    # `preview --json`: one object, every listening port with its check.
    listed = rig.cli("preview", "--json")
    assert listed.code == 0, listed
    previews = {p["port"]: p for p in json.loads(listed.stdout)["previews"]}
    assert sorted(previews) == sorted([good, loopback, vite]), "no agent or Daytona port is listed"
    assert previews[good]["status"] == 200 and previews[good]["ok"] is True
    assert previews[good]["token"] and previews[good]["public"] is False and previews[good]["signed"] is False
    assert previews[loopback]["ok"] is True and "problem" not in previews[loopback]
    assert previews[vite]["status"] == 403 and "allowedHosts" in previews[vite]["hint"]
    assert "Vite" in listed.stderr, "warnings still go to stderr in --json mode"

    # `preview -q`: only the URLs, one per line, each one the JSON's.
    quiet = rig.cli("preview", "-q")
    assert quiet.code == 0, quiet
    assert quiet.stdout.splitlines() == [previews[p]["url"] for p in sorted(previews)]


def test_signed_links_need_no_header_expire_and_open_in_the_browser(rig: Rig, tmp_path: Path) -> None:
    port = free_port()
    rig.model.enqueue(*serve_turn(f"python3 -m http.server {port} --bind 0.0.0.0"))
    asked = rig.cli("ask", "start the server")
    assert asked.code == 0, asked
    # One line for the link, a signed URL that opens in a browser as printed (no header, no
    # token shown), valid an hour, with the check's outcome.
    [line] = [line for line in asked.stderr.splitlines() if line.startswith(f"🔗 Port {port}: ")]
    assert line.endswith("  ✓ answers · link valid 1 h"), asked
    shown = line.split(": ", 1)[1].split()[0]
    token = rig.emulator.server.sandboxes[rig.record()["sandbox_id"]].preview_token
    assert token not in asked.stderr and "X-Daytona-Preview-Token" not in asked.stderr, asked
    status, body = http_get(shown)
    assert status == 200 and "Directory listing" in body, (status, body)

    # The token and the header are one flag away.
    with_token = rig.cli("preview", "--token", "--port", str(port))
    assert with_token.code == 0, with_token
    assert f"X-Daytona-Preview-Token: {token}" in with_token.stderr, with_token
    assert f"curl -H 'X-Daytona-Preview-Token: {token}' " in with_token.stderr, with_token
    # ...and so is a signed link for a private sandbox's preview, by default.
    listed = rig.cli("preview", "--port", str(port))
    assert listed.code == 0 and "link valid 1 h" in listed.stderr and token not in listed.stderr, listed

    # --signed -q: one URL that works with no header, through the proxy.
    signed = rig.cli("preview", "--signed", "-q", "--port", str(port))
    assert signed.code == 0, signed
    url = signed.stdout.strip()
    assert url.startswith("http") and len(signed.stdout.splitlines()) == 1, signed
    assert rig.record()["sandbox_id"] not in url, "a signed URL carries its own token, not the sandbox id"
    status, body = http_get(url)
    assert status == 200 and "Directory listing" in body
    # The default lifetime is an hour, not Daytona's 60 s.
    token = url.rstrip("/").rsplit("-", 1)[1]
    expires_in = rig.emulator.server.signed_urls[token].expires_at - time.time()
    assert 3500 < expires_in <= 3600

    # --ttl 1: refused once expired.
    short = rig.cli("preview", "--signed", "--ttl", "1", "-q", "--port", str(port))
    assert short.code == 0, short
    time.sleep(2.0)
    status, body = http_get(short.stdout.strip())
    assert status == 307, "an expired signed URL no longer opens the app"

    # --open on a private sandbox opens a signed URL: a browser cannot send the header.
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser"
    browser.write_text(f"#!{sys.executable}\nimport sys\nopen({str(opened)!r}, 'a').write(sys.argv[1] + '\\n')\n")
    browser.chmod(0o755)
    result = rig.cli("preview", "--open", "--port", str(port), env={"BROWSER": str(browser)})
    assert result.code == 0, result
    [url] = opened.read_text().splitlines()
    assert f"Port {port}: {url}  ✓ answers · link valid 1 h" in result.stderr, result
    assert f"Opened port {port} in the browser" in result.stderr
    status, _ = http_get(url)
    assert status == 200


# --- a real browser -------------------------------------------------------------------------

INDEX = (
    "<!doctype html>\n"
    '<html><head><title>Lunar Lander</title><link rel="stylesheet" href="style.css"></head>\n'
    '<body><canvas id="game"></canvas><script src="main.js"></script></body></html>\n'
)
STYLE = "body { margin: 0; background: #000; overflow: hidden; } canvas { display: block; }\n"
# Draws the moon, the pad and the lander, then reports what it drew so the test can see the
# script ran: the page's title, and the number of lit pixels read back from the canvas.
MAIN = """\
const c = document.getElementById('game');
c.width = 800; c.height = 600;
const g = c.getContext('2d');
g.fillStyle = '#000'; g.fillRect(0, 0, 800, 600);
g.fillStyle = '#888'; g.fillRect(0, 520, 800, 80);
g.fillStyle = '#0f0'; g.fillRect(350, 515, 100, 5);
g.fillStyle = '#fff';
g.beginPath(); g.moveTo(400, 200); g.lineTo(380, 250); g.lineTo(420, 250); g.closePath(); g.fill();
const px = g.getImageData(0, 0, 800, 600).data;
let lit = 0;
for (let i = 0; i < px.length; i += 4) if (px[i] + px[i + 1] + px[i + 2] > 0) lit++;
document.body.dataset.litPixels = String(lit);
document.title = 'Lunar Lander: ready';
let frames = 0;
function tick() {
  frames++; document.body.dataset.frames = String(frames);
  if (frames < 30) requestAnimationFrame(tick);
}
requestAnimationFrame(tick);
"""

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(profile: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-proxy-server",
            f"--user-data-dir={profile}",
            "--window-size=800,600",
            "--virtual-time-budget=3000",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HOME": str(profile)},
    )


def test_the_lunar_lander_opens_in_a_real_browser_through_the_signed_link(rig: Rig, tmp_path: Path) -> None:
    # Never skipped: the README promises the page opens in a real browser, so no Chromium is a failure.
    assert CHROMIUM is not None, (
        "this test needs Chromium: apt-get install -y --no-install-recommends chromium chromium-driver "
        "(.ci/run installs it)"
    )
    port = free_port(8080)
    rig.model.enqueue(
        turn(patch(add_file_patch("index.html", INDEX))),
        turn(patch(add_files_patch({"style.css": STYLE, "main.js": MAIN}))),
        turn(msg("Built the lunar lander in index.html, style.css and main.js.")),
    )
    built = rig.cli("ask", "create a 3d animated web-based lunar lander game")
    assert built.code == 0, built
    rig.model.enqueue(*serve_turn(f"python3 -m http.server {port} --bind 0.0.0.0"))
    served = rig.cli("ask", "start the server")
    assert served.code == 0, served
    assert f"🔗 Port {port}:" in served.stderr, served

    # The link exactly as the CLI prints it for a browser.
    signed = rig.cli("preview", "--signed", "-q", "--port", str(port))
    assert signed.code == 0, signed
    url = signed.stdout.strip()

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "lunar-lander.png"
    screenshot.unlink(missing_ok=True)
    started = time.monotonic()
    dom = chromium(tmp_path / "profile-dom", "--dump-dom", url)
    shot = chromium(tmp_path / "profile-shot", f"--screenshot={screenshot}", url)
    elapsed = time.monotonic() - started
    (ARTIFACTS / "lunar-lander.dom.html").write_text(dom.stdout)

    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "<canvas" in dom.stdout, dom.stdout[:2000]
    assert "<title>Lunar Lander: ready</title>" in html.unescape(dom.stdout), "main.js ran in the browser"
    lit = int(dom.stdout.split('data-lit-pixels="', 1)[1].split('"', 1)[0])
    assert lit > 800 * 80, "main.js drew the ground, the pad and the lander on the canvas"
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert screenshot.stat().st_size > 1000 and screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (ARTIFACTS / "lunar-lander.timing.txt").write_text(f"chromium: two page loads in {elapsed:.1f} s\n")
