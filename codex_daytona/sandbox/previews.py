"""Checks that a preview link answers through Daytona's preview proxy, and says why not.

One quick HTTP GET per link (standard library only, a few seconds at most, never an
error): the status it got, and for the usual ways a dev server is unreachable from the
proxy a problem and a fix. Imports nothing of ours.

How Daytona's proxy answers (its source, see ../shared/notes/daytona-sdk-wire.md): it
forwards to `localhost:PORT` inside the sandbox, so a server bound to 127.0.0.1 is
reachable; nothing listening is a 502 with an empty body; a request it cannot
authenticate is redirected (307) to Daytona's sign-in page, which a client following
redirects would read as a 200. So redirects are not followed here.
"""

from __future__ import annotations

import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

CHECK_TIMEOUT_S = 4.0
RETRY_EVERY_S = 0.5
GATEWAY_ERRORS = (502, 503, 504)
REDIRECTS = (301, 302, 303, 307, 308)
BODY_LIMIT = 4096
TOKEN_HEADER = "X-Daytona-Preview-Token"
# Without it a real Daytona proxy may answer with its own "preview warning" page, not the app.
SKIP_WARNING_HEADER = "X-Daytona-Skip-Preview-Warning"

# Vite (>= 5.4.12 / 6.0.9): 403 "Blocked request. This host ("x") is not allowed."
VITE_BLOCKED = re.compile(r"Blocked request\. This host .{0,200}? is not allowed", re.IGNORECASE | re.DOTALL)
# webpack-dev-server (Angular, Create React App, Vue CLI): 403 "Invalid Host header".
INVALID_HOST = re.compile(r"Invalid Host header", re.IGNORECASE)

VITE_HINT = (
    "allow the preview host: set `server.allowedHosts: true` (`preview.allowedHosts` for `vite preview`) "
    "in vite.config.js, or list the host, e.g. `allowedHosts: ['.daytona.works']`; run it with `--host 0.0.0.0`."
)
WEBPACK_HINT = (
    "allow the preview host: `devServer.allowedHosts: 'all'` in the webpack config "
    "(`--allowed-hosts all` on the command line), and run it with `--host 0.0.0.0`."
)


@dataclass(frozen=True)
class LinkCheck:
    """What one GET through the preview proxy found.

    `status` is the HTTP status (None when nothing came back); `ok` means the app itself
    answered; otherwise `problem` says why not and `hint` how to fix it.
    """

    status: int | None
    ok: bool
    problem: str | None = None
    hint: str | None = None
    # The outcome in a word, for the link's line: answers, down, blocked, failing, sign-in,
    # timeout, unreachable.
    outcome: str = ""

    @property
    def word(self) -> str:
        return self.outcome or ("answers" if self.ok else f"HTTP {self.status}")

    def message(self) -> str:
        """One line for a warning: what is wrong and how to fix it."""
        text = self.problem or f"HTTP {self.status}"
        return f"{text} Fix: {self.hint}" if self.hint else text

    def as_dict(self) -> dict[str, object]:
        data: dict[str, object] = {"status": self.status, "ok": self.ok, "outcome": self.word}
        if self.problem:
            data["problem"] = self.problem
        if self.hint:
            data["hint"] = self.hint
        return data


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirects)


def fetch(
    url: str, token: str | None = None, timeout: float = CHECK_TIMEOUT_S
) -> tuple[int | None, str, str | None, str | None]:
    """GET `url` as a browser would through the proxy, without following redirects:
    (status, start of the body, error, redirect location)."""
    headers = {SKIP_WARNING_HEADER: "true", "User-Agent": "codex-daytona-link-check"}
    if token:
        headers[TOKEN_HEADER] = token
    request = urllib.request.Request(url, headers=headers)
    try:
        with _opener.open(request, timeout=timeout) as response:
            return int(response.status), response.read(BODY_LIMIT).decode("utf-8", "replace"), None, None
    except urllib.error.HTTPError as exc:
        try:
            body = exc.read(BODY_LIMIT).decode("utf-8", "replace")
        except OSError:
            body = ""
        location = exc.headers.get("Location") if exc.headers else None
        return int(exc.code), body, None, urljoin(url, location) if location else None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, socket.timeout | TimeoutError):
            return None, "", f"no answer within {timeout:g} s", None
        return None, "", str(reason) or type(exc).__name__, None


def _sign_in_redirect(url: str, status: int | None, location: str | None) -> bool:
    """Daytona's proxy sends a request it cannot authenticate to its sign-in page, on another
    host; an app's own redirects stay on the preview host."""
    if status not in REDIRECTS or not location:
        return False
    return urlsplit(location).netloc != urlsplit(url).netloc


def diagnose(
    port: int, status: int | None, body: str, error: str | None, *, url: str = "", location: str | None = None
) -> LinkCheck:
    """Turns one GET's outcome into ok, or a problem and a fix."""
    if status is None:
        if error and "no answer" in error:
            return LinkCheck(
                None,
                False,
                f"Port {port} did not answer through the preview proxy ({error}).",
                "the server may still be starting or be busy; try `codex-daytona preview` again in a moment.",
                "timeout",
            )
        return LinkCheck(
            None, False, f"Could not reach the preview proxy for port {port}: {error}.", None, "unreachable"
        )
    if _sign_in_redirect(url, status, location):
        return LinkCheck(
            status,
            False,
            f"Daytona sent the check of port {port} to its sign-in page (HTTP {status}): it did not accept the token.",
            "a member of your Daytona organisation can open the link after signing in; "
            "`codex-daytona preview --signed` makes a link that works for anyone.",
            "sign-in",
        )
    if status in (400, 403) and VITE_BLOCKED.search(body):
        return LinkCheck(
            status, False, f"Port {port} answered HTTP {status}: Vite blocked the preview host.", VITE_HINT, "blocked"
        )
    if status in (400, 403) and INVALID_HOST.search(body):
        return LinkCheck(
            status,
            False,
            f'Port {port} answered HTTP {status} "Invalid Host header": the dev server rejects the preview host.',
            WEBPACK_HINT,
            "blocked",
        )
    if status in GATEWAY_ERRORS:
        return LinkCheck(
            status,
            False,
            f"Port {port} answered HTTP {status} through the preview proxy: nothing answers on it in the sandbox.",
            "the server may have stopped or still be starting; check its log.",
            "down",
        )
    if status >= 500:
        return LinkCheck(
            status,
            False,
            f"Port {port} answered HTTP {status}: the app itself failed.",
            "check the server's log.",
            "failing",
        )
    return LinkCheck(status, True)


def check_link(port: int, url: str, token: str | None = None, *, timeout: float = CHECK_TIMEOUT_S) -> LinkCheck:
    """One GET through the proxy (with the token when the sandbox is private), diagnosed.

    A server started a moment ago may not answer yet: a gateway error is retried until
    `timeout` runs out, so the whole check still takes at most about `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        status, body, error, location = fetch(url, token, max(0.5, deadline - time.monotonic()))
        if status not in GATEWAY_ERRORS or time.monotonic() + RETRY_EVERY_S >= deadline:
            return diagnose(port, status, body, error, url=url, location=location)
        time.sleep(RETRY_EVERY_S)


def check_links(targets: Iterable[tuple[int, str, str | None]], timeout: float = CHECK_TIMEOUT_S) -> list[LinkCheck]:
    """Checks (port, url, token) links side by side, so several ports cost one timeout."""
    items = list(targets)
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(items))) as pool:
        return list(pool.map(lambda t: check_link(t[0], t[1], t[2], timeout=timeout), items))
