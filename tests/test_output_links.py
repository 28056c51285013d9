"""How a preview link reads: one line that opens in a browser as printed, with the check's
outcome in a word; the token and its header only when asked for (`preview --token`)."""

from __future__ import annotations

import io

from codex_daytona import events as ev
from codex_daytona.output import Mode, Output, duration

TOKEN = "tok-secret-0123"


def rendered(*events: ev.Event, mode: Mode = Mode.HUMAN) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    output = Output(mode, stdout=out, stderr=err)
    for event in events:
        output.event(event)
    return out.getvalue(), err.getvalue()


def test_a_private_link_is_one_signed_line_with_its_lifetime_and_no_token() -> None:
    event = {
        "type": ev.PREVIEW,
        "port": 8080,
        "url": "https://8080-sbx.proxy.example",
        "token": TOKEN,
        "header": "X-Daytona-Preview-Token",
        "public": False,
        "browser_url": "https://8080-signed.proxy.example",
        "expires_in": 3600,
        "status": 200,
        "ok": True,
        "outcome": "answers",
    }
    stdout, stderr = rendered(event)
    assert stdout == ""
    assert stderr.splitlines() == ["🔗 Port 8080: https://8080-signed.proxy.example  ✓ answers · link valid 1 h"]
    assert TOKEN not in stderr


def test_a_public_link_is_the_plain_url_and_a_failing_one_says_why_in_a_word() -> None:
    public = {"type": ev.PREVIEW, "port": 3000, "url": "https://3000-sbx.proxy.example", "public": True}
    failing = {**public, "port": 5173, "url": "https://5173-sbx.proxy.example", "status": 403, "ok": False}
    _, stderr = rendered({**public, "status": 200, "ok": True, "outcome": "answers"}, {**failing, "outcome": "blocked"})
    assert stderr.splitlines() == [
        "🔗 Port 3000: https://3000-sbx.proxy.example  ✓ answers",
        "🔗 Port 5173: https://5173-sbx.proxy.example  ✗ blocked",
    ]


def test_the_token_form_shows_the_header_and_quiet_shows_nothing() -> None:
    event = {
        "type": ev.PREVIEW,
        "port": 8080,
        "url": "https://8080-sbx.proxy.example",
        "token": TOKEN,
        "header": "X-Daytona-Preview-Token",
        "public": False,
        "status": 200,
        "ok": True,
        "outcome": "answers",
    }
    _, stderr = rendered(event)
    first, second = stderr.splitlines()
    assert first == "🔗 Port 8080: https://8080-sbx.proxy.example  ✓ answers"
    assert f"X-Daytona-Preview-Token: {TOKEN}" in second and "curl -H" in second
    assert rendered(event, mode=Mode.QUIET) == ("", "")


def test_durations_read_as_people_say_them() -> None:
    assert [duration(s) for s in (3600, 86400, 5400, 60, 45)] == ["1 h", "24 h", "90 min", "1 min", "45 s"]
