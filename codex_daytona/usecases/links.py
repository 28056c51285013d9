"""Preview links: which ports listen in the sandbox, their Daytona links, and what checking
each link through the preview proxy found.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from codex_daytona import events as ev
from codex_daytona.errors import AgentSetupError
from codex_daytona.sandbox import previews, runtime
from codex_daytona.sandbox.daytona_api import PreviewLink
from codex_daytona.usecases.context import Box, Context, OnEvent

# A turn's links on a private sandbox are signed URLs valid this long, so that each opens in
# a browser as printed (a browser cannot send the token header); `preview --ttl` for others.
BROWSER_TTL_S = 3600


@dataclass
class Preview:
    """A preview link and what checking it through the preview proxy found."""

    link: PreviewLink
    public: bool
    signed: bool = False
    check: previews.LinkCheck | None = None
    # On a private sandbox: a signed URL of the same port that opens in a browser as it is.
    browser: PreviewLink | None = None
    ttl: int | None = None  # the lifetime of the signed URL (`browser`, or `link` when signed)

    @property
    def port(self) -> int:
        return self.link.port

    @property
    def url(self) -> str:
        return self.link.url

    @property
    def token(self) -> str | None:
        return self.link.token

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = {
            "port": self.port,
            "url": self.url,
            "token": None if self.public else self.token,  # a public sandbox's links need none
            "public": self.public,
            "signed": self.signed,
        }
        if self.browser is not None:
            data["browser_url"] = self.browser.url
        if self.ttl is not None and (self.signed or self.browser is not None):
            data["expires_in"] = self.ttl
        if self.check is not None:
            data.update(self.check.as_dict())
        return data


@dataclass(frozen=True)
class PreviewList:
    """`preview`'s result: the links went by on stderr as they were checked; -q prints the
    URLs alone, one per line, and --json all of them in one object."""

    previews: list[Preview]

    @property
    def human(self) -> str:
        return ""

    @property
    def quiet(self) -> str:
        return "\n".join(p.url for p in self.previews)

    def to_json(self) -> dict[str, object]:
        return {"previews": [p.to_json() for p in self.previews]}


def preview(
    ctx: Context,
    port: int | None = None,
    *,
    signed: bool = False,
    ttl: int = BROWSER_TTL_S,
    for_browser: bool = False,
    browser_links: bool = False,
) -> list[Preview]:
    """Preview links for `port`, or for every port listening in the sandbox, each checked
    through the preview proxy. `for_browser` signs the links of a private sandbox, since a
    browser cannot send the token header; `browser_links` adds a signed URL beside each plain
    link of a private sandbox (`Preview.browser`)."""
    box = ctx.box()
    ports = [port] if port is not None else listening_ports(box)
    public = box.info().public
    signed = signed or (for_browser and not public)
    found = [box.signed_preview_link(p, ttl) if signed else box.preview_link(p) for p in ports]
    browser = _browser_links(box, found, public or signed or not browser_links, ttl)
    return report(ctx.emit, check(found, public, signed=signed, browser=browser, ttl=ttl))


def after_turn(box: Box, ports: ev.Event | None, *, public: bool | None = None) -> list[Preview]:
    """The links of the ports a turn started listening on (the agent's ports event), checked
    and reported, each with a signed URL for a browser on a private sandbox."""
    new_ports = [int(p) for p in (ports or {}).get("new") or []]
    if not new_ports:
        return []
    if public is None:
        public = box.info().public
    return report(box.emit, for_browser(box, new_ports, public))


def for_browser(box: Box, ports: list[int], public: bool) -> list[Preview]:
    """The links of `ports`, checked, each with a signed URL (valid BROWSER_TTL_S) beside it
    on a private sandbox: what `ask` and `status` show people. Reports nothing."""
    found = [box.preview_link(port) for port in ports]
    browser = _browser_links(box, found, public, BROWSER_TTL_S)
    return check(found, public, browser=browser, ttl=BROWSER_TTL_S)


def _browser_links(box: Box, found: list[PreviewLink], skip: bool, ttl: int) -> list[PreviewLink | None]:
    """A signed URL for each link (unless `skip`: public, already signed, or not wanted)."""
    return [None if skip else box.signed_preview_link(link.port, ttl) for link in found]


def listening_ports(box: Box) -> list[int]:
    """The TCP ports listening in the sandbox (less Daytona's own)."""
    result = box.run(runtime.ports_command(box.layout), timeout=30)
    try:
        report = json.loads(result.output.strip().splitlines()[-1])
        if isinstance(report, list):  # an agent uploaded by an older codex-daytona
            return [int(p) for p in report]
        return [int(p) for p in report["listening"]]
    except (ValueError, IndexError, KeyError, TypeError):
        raise AgentSetupError(f"Could not list the sandbox's ports: {result.output.strip()[:200]}") from None


def check(
    found: list[PreviewLink],
    public: bool,
    *,
    signed: bool = False,
    browser: list[PreviewLink | None] | None = None,
    ttl: int | None = None,
) -> list[Preview]:
    """Checks each link through the preview proxy, side by side."""
    checks = previews.check_links([(link.port, link.url, None if public else link.token) for link in found])
    browser = browser or [None] * len(found)
    return [
        Preview(link, public, signed, link_check, signed_url, ttl if signed or signed_url else None)
        for link, link_check, signed_url in zip(found, checks, browser, strict=True)
    ]


def report(emit: OnEvent, checked: list[Preview]) -> list[Preview]:
    """Reports each checked link (a preview event) and its problem, if any (a warning)."""
    for preview in checked:
        emit(preview_event(preview))
        if preview.check is not None and not preview.check.ok:
            emit(ev.warning(preview.check.message()))
    return checked


def preview_event(preview: Preview) -> ev.Event:
    event: ev.Event = {"type": ev.PREVIEW, **preview.to_json()}
    if event.get("token"):
        event["header"] = previews.TOKEN_HEADER
    else:
        event.pop("token", None)
    if not preview.signed:
        event.pop("signed", None)
    return event
