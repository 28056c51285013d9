"""Preview links: which ports listen in the sandbox, their Daytona links, and what checking
each link through the preview proxy found.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from codex_daytona import events as ev
from codex_daytona import previews, runtime
from codex_daytona.context import Box, Context, OnEvent
from codex_daytona.daytona_api import PreviewLink
from codex_daytona.errors import AgentSetupError


@dataclass
class Preview:
    """A preview link and what checking it through the preview proxy found."""

    link: PreviewLink
    public: bool
    signed: bool = False
    check: previews.LinkCheck | None = None

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
        if self.check is not None:
            data.update(self.check.as_dict())
        return data


def preview(
    ctx: Context, port: int | None = None, *, signed: bool = False, ttl: int = 3600, for_browser: bool = False
) -> list[Preview]:
    """Preview links for `port`, or for every port listening in the sandbox, each checked
    through the preview proxy. `for_browser` signs the links of a private sandbox, since a
    browser cannot send the token header."""
    box = ctx.box()
    ports = [port] if port is not None else listening_ports(box)
    public = box.info().public
    signed = signed or (for_browser and not public)
    found = [box.api.signed_preview_link(box.sandbox, p, ttl) if signed else box.preview_link(p) for p in ports]
    return check_and_report(ctx.emit, found, public, signed=signed)


def after_turn(box: Box, ports: ev.Event | None) -> list[Preview]:
    """The links of the ports a turn started listening on (the agent's ports event), checked."""
    new_ports = [int(p) for p in (ports or {}).get("new") or []]
    if not new_ports:
        return []
    public = box.info().public
    return check_and_report(box.emit, [box.preview_link(port) for port in new_ports], public)


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


def check_and_report(emit: OnEvent, found: list[PreviewLink], public: bool, *, signed: bool = False) -> list[Preview]:
    """Checks each link through the preview proxy, then reports it and any problem."""
    checks = previews.check_links([(link.port, link.url, None if public else link.token) for link in found])
    result = []
    for link, check in zip(found, checks, strict=True):
        result.append(Preview(link, public, signed, check))
        emit(preview_event(link, public, check, signed=signed))
        if not check.ok:
            emit(ev.warning(check.message()))
    return result


def preview_event(
    link: PreviewLink, public: bool, check: previews.LinkCheck | None = None, *, signed: bool = False
) -> ev.Event:
    event: ev.Event = {"type": ev.PREVIEW, "port": link.port, "url": link.url, "public": public}
    if signed:
        event["signed"] = True
    if link.token and not public:
        event["token"] = link.token
        event["header"] = previews.TOKEN_HEADER
    if check is not None:
        event.update(check.as_dict())
    return event
