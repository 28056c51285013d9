"""Checks that a preview link answers through Daytona's preview proxy, and says why not.

One quick HTTP GET per link (standard library only, a few seconds at most, never an
error): the status it got, and for the usual ways a dev server is unreachable from the
proxy a problem and a fix. Imports nothing of ours.
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

CHECK_TIMEOUT_S = 4.0
RETRY_EVERY_S = 0.5
GATEWAY_ERRORS = (502, 503, 504)
BODY_LIMIT = 4096
TOKEN_HEADER = "X-Daytona-Preview-Token"
# Without it a real Daytona proxy may answer with its own "preview warning" page, not the app.
SKIP_WARNING_HEADER = "X-Daytona-Skip-Preview-Warning"

# Vite (>= 5.4.12 / 6.0.9): 403 "Blocked request. This host ("x") is not allowed."
VITE_BLOCKED = re.compile(r"Blocked request\. This host .{0,200}? is not allowed", re.IGNORECASE | re.DOTALL)
# webpack-dev-server (Angular, Create React App, Vue CLI): 403 "Invalid Host header".
INVALID_HOST = re.compile(r"Invalid Host header", re.IGNORECASE)

LOOPBACK_HINT = (
    "restart the server bound to 0.0.0.0 (e.g. `python3 -m http.server PORT --bind 0.0.0.0`, "
    "`vite --host 0.0.0.0`, `flask run --host 0.0.0.0`, `uvicorn app:app --host 0.0.0.0`)."
)
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

    def message(self) -> str:
        """One line for a warning: what is wrong and how to fix it."""
        text = self.problem or f"HTTP {self.status}"
        return f"{text} Fix: {self.hint}" if self.hint else text

    def as_dict(self) -> dict[str, object]:
        data: dict[str, object] = {"status": self.status, "ok": self.ok}
        if self.problem:
            data["problem"] = self.problem
        if self.hint:
            data["hint"] = self.hint
        return data


def fetch(url: str, token: str | None = None, timeout: float = CHECK_TIMEOUT_S) -> tuple[int | None, str, str | None]:
    """GET `url` as a browser would through the proxy: (status, start of the body, error)."""
    headers = {SKIP_WARNING_HEADER: "true", "User-Agent": "codex-daytona-link-check"}
    if token:
        headers[TOKEN_HEADER] = token
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read(BODY_LIMIT).decode("utf-8", "replace"), None
    except urllib.error.HTTPError as exc:
        try:
            body = exc.read(BODY_LIMIT).decode("utf-8", "replace")
        except OSError:
            body = ""
        return int(exc.code), body, None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, socket.timeout | TimeoutError):
            return None, "", f"no answer within {timeout:g} s"
        return None, "", str(reason) or type(exc).__name__


def diagnose(port: int, status: int | None, body: str, error: str | None, *, loopback_only: bool) -> LinkCheck:
    """Turns one GET's outcome into ok, or a problem and a fix.

    A port bound to 127.0.0.1 is a problem whatever the GET found: Daytona's proxy cannot
    reach it (a local proxy such as the test emulator's may)."""
    host_check = status in (400, 403) and bool(VITE_BLOCKED.search(body) or INVALID_HOST.search(body))
    if loopback_only and not host_check:
        return loopback_problem(port, status)
    if status is None:
        if error and "no answer" in error:
            return LinkCheck(
                None,
                False,
                f"Port {port} did not answer through the preview proxy ({error}).",
                "the server may still be starting or be busy; try `codex-daytona preview` again in a moment.",
            )
        return LinkCheck(None, False, f"Could not reach the preview proxy for port {port}: {error}.", None)
    if status in (400, 403) and VITE_BLOCKED.search(body):
        return LinkCheck(
            status, False, f"Port {port} answered HTTP {status}: Vite blocked the preview host.", VITE_HINT
        )
    if status in (400, 403) and INVALID_HOST.search(body):
        return LinkCheck(
            status,
            False,
            f'Port {port} answered HTTP {status} "Invalid Host header": the dev server rejects the preview host.',
            WEBPACK_HINT,
        )
    if status in (502, 503, 504):
        return LinkCheck(
            status,
            False,
            f"Port {port} answered HTTP {status} through the preview proxy: nothing answers on it in the sandbox.",
            "the server may have stopped or still be starting; check its log, and that it listens on 0.0.0.0.",
        )
    if status in (401, 403) and body.strip().lower().startswith(("missing x-daytona", "invalid preview token")):
        return LinkCheck(status, False, f"Daytona refused the preview token for port {port} (HTTP {status}).", None)
    if status >= 500:
        return LinkCheck(
            status, False, f"Port {port} answered HTTP {status}: the app itself failed.", "check the server's log."
        )
    return LinkCheck(status, True)


def loopback_problem(port: int, status: int | None = None) -> LinkCheck:
    got = f" (HTTP {status})" if status is not None and status >= 500 else ""
    return LinkCheck(
        status,
        False,
        f"Port {port} listens on 127.0.0.1 only, so the preview proxy cannot reach it{got}.",
        LOOPBACK_HINT.replace("PORT", str(port)),
    )


def check_link(
    port: int, url: str, token: str | None = None, *, loopback_only: bool = False, timeout: float = CHECK_TIMEOUT_S
) -> LinkCheck:
    """One GET through the proxy (with the token when the sandbox is private), diagnosed.

    A server started a moment ago may not answer yet: a gateway error is retried until
    `timeout` runs out, so the whole check still takes at most about `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        status, body, error = fetch(url, token, max(0.5, deadline - time.monotonic()))
        if loopback_only or status not in GATEWAY_ERRORS or time.monotonic() + RETRY_EVERY_S >= deadline:
            return diagnose(port, status, body, error, loopback_only=loopback_only)
        time.sleep(RETRY_EVERY_S)


def check_links(
    targets: Iterable[tuple[int, str, str | None]],
    loopback_only: Iterable[int] = (),
    timeout: float = CHECK_TIMEOUT_S,
) -> list[LinkCheck]:
    """Checks (port, url, token) links side by side, so several ports cost one timeout."""
    items = list(targets)
    loopback = set(loopback_only)
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(items))) as pool:
        return list(
            pool.map(lambda t: check_link(t[0], t[1], t[2], loopback_only=t[0] in loopback, timeout=timeout), items)
        )
