"""The preview link check on its own: real HTTP servers on 127.0.0.1, no Daytona."""

from __future__ import annotations

import contextlib
import http.server
import threading
import time
from collections.abc import Iterator
from typing import ClassVar

import pytest

from codex_daytona.sandbox import previews
from tests.e2e import free_port

VITE_BODY = (
    'Blocked request. This host ("8080-abc.proxy.daytona.works") is not allowed.\n'
    'To allow this host, add "8080-abc.proxy.daytona.works" to `server.allowedHosts` in vite.config.js.'
)


class Handler(http.server.BaseHTTPRequestHandler):
    status = 200
    body = "<html>ok</html>"
    seen: ClassVar[list[dict[str, str]]] = []  # one list per server: see serve()
    times: ClassVar[list[float]] = []  # when each request came (time.monotonic())

    location: ClassVar[str | None] = None

    def do_GET(self) -> None:
        type(self).times.append(time.monotonic())
        type(self).seen.append(dict(self.headers.items()))
        payload = self.body.encode()
        self.send_response(self.status)
        if self.location:
            self.send_header("Location", self.location)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


def serve(status: int, body: str, location: str | None = None) -> Iterator[tuple[str, type[Handler]]]:
    attrs = {"status": status, "body": body, "seen": [], "times": [], "location": location}
    handler = type("H", (Handler,), attrs)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", handler
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def good() -> Iterator[tuple[str, type[Handler]]]:
    yield from serve(200, "<html>ok</html>")


@pytest.fixture
def vite() -> Iterator[tuple[str, type[Handler]]]:
    yield from serve(403, VITE_BODY)


@pytest.fixture
def webpack() -> Iterator[tuple[str, type[Handler]]]:
    yield from serve(403, "Invalid Host header")


@pytest.fixture
def gateway() -> Iterator[tuple[str, type[Handler]]]:
    yield from serve(502, "Nothing is listening on port 3000 in sandbox x\n")


def test_a_good_server_is_ok_and_gets_the_token_and_the_skip_warning_header(good: tuple[str, type[Handler]]) -> None:
    url, handler = good
    check = previews.check_link(3000, url, "tok-123")
    assert check == previews.LinkCheck(200, True)
    assert handler.seen[0]["X-Daytona-Preview-Token"] == "tok-123"
    assert handler.seen[0]["X-Daytona-Skip-Preview-Warning"] == "true"
    assert check.as_dict() == {"status": 200, "ok": True, "outcome": "answers"}


def test_no_token_sends_no_token_header(good: tuple[str, type[Handler]]) -> None:
    url, handler = good
    assert previews.check_link(3000, url, None).ok
    assert "X-Daytona-Preview-Token" not in handler.seen[0]


def test_vite_host_check_gets_the_allowed_hosts_hint(vite: tuple[str, type[Handler]]) -> None:
    check = previews.check_link(5173, vite[0])
    assert (check.status, check.ok) == (403, False)
    assert "Vite blocked the preview host" in (check.problem or "")
    assert "server.allowedHosts" in (check.hint or "") and "allowedHosts: true" in (check.hint or "")
    assert "--host 0.0.0.0" in (check.hint or "")


def test_webpack_invalid_host_header_gets_its_hint(webpack: tuple[str, type[Handler]]) -> None:
    check = previews.check_link(8080, webpack[0])
    assert (check.status, check.ok) == (403, False)
    assert "Invalid Host header" in (check.problem or "")
    assert "allowedHosts: 'all'" in (check.hint or "")


def test_a_redirect_to_sign_in_is_a_refused_token_not_the_app() -> None:
    """Daytona's proxy answers a request it cannot authenticate with a 307 to its sign-in
    page (another host): a check that followed it would see a 200 and call the link fine."""
    with contextlib.contextmanager(serve)(307, "", "http://sign-in.example.invalid/login?next=x") as (url, handler):
        check = previews.check_link(8000, url, "wrong-token")
    assert (check.status, check.ok) == (307, False)
    assert "sign-in" in (check.problem or "") and "--signed" in (check.hint or "")
    assert len(handler.seen) == 1


def test_an_apps_own_redirect_is_the_app_answering() -> None:
    with contextlib.contextmanager(serve)(307, "", "/login") as (url, _):
        check = previews.check_link(8000, url)
    assert (check.status, check.ok) == (307, True)


def test_a_gateway_error_is_retried_then_explained_within_the_timeout(gateway: tuple[str, type[Handler]]) -> None:
    url, handler = gateway
    started = time.monotonic()
    check = previews.check_link(3000, url, timeout=1.5)
    elapsed = time.monotonic() - started
    assert (check.status, check.ok) == (502, False)
    assert "nothing answers" in (check.problem or "")
    assert len(handler.seen) >= 2, "a server still starting gets another chance"
    # Within the timeout: no request is sent after it ran out (a generous bound catches a hang).
    assert max(handler.times) - started < 1.5 + previews.RETRY_EVERY_S / 2, [t - started for t in handler.times]
    assert elapsed < 1.5 + 5


def test_nothing_there_is_a_problem_not_an_exception() -> None:
    port = free_port()
    check = previews.check_link(port, f"http://127.0.0.1:{port}/", timeout=1)
    assert check.status is None and not check.ok
    assert "Could not reach" in (check.problem or "")


def test_a_hung_server_times_out_quickly() -> None:
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # accepts the connection, never answers
        port = listener.getsockname()[1]
        started = time.monotonic()
        check = previews.check_link(port, f"http://127.0.0.1:{port}/", timeout=1)
    assert time.monotonic() - started < 3
    assert check.status is None and not check.ok
    assert "did not answer" in (check.problem or "")


def test_other_statuses() -> None:
    assert previews.diagnose(1, 404, "Not Found", None).ok  # the app answered
    assert previews.diagnose(1, 302, "", None, url="http://a/", location="http://a/next").ok
    failed = previews.diagnose(1, 500, "Traceback", None)
    assert not failed.ok and "the app itself failed" in (failed.problem or "")
    empty_502 = previews.diagnose(1, 502, "", None)  # Daytona's answer when nothing listens
    assert not empty_502.ok and "nothing answers" in (empty_502.problem or "")


def test_check_links_runs_side_by_side(gateway: tuple[str, type[Handler]], good: tuple[str, type[Handler]]) -> None:
    checks = previews.check_links([(1, gateway[0], None), (3, gateway[0], None), (2, good[0], None)], timeout=1.5)
    assert [c.status for c in checks] == [502, 502, 200]
    # Side by side: the good server was asked while the gateway checks were still retrying,
    # where one after the other it would only be asked once both had given up.
    [asked] = good[1].times
    assert asked < max(gateway[1].times), "the links were checked one after the other"
    # ... and both gateway checks were retrying at the same time.
    first_retry_round = sorted(gateway[1].times)[:2]
    assert first_retry_round[1] - first_retry_round[0] < 0.5, gateway[1].times
