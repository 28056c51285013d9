"""What codex-daytona puts in the sandbox: the agent runtime, its files and its command line.

Pure functions of settings and paths; no I/O. Every file is produced by a serialiser
(tomli-w, json), never by pasting text into a template, so no prompt or setting can break
it. No user text and no key ever goes into a command line built here.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass
from importlib import resources

import tomli_w

from codex_daytona.settings import Settings

CODEX_SDK_VERSION = "0.163.0"
AGENT_PROTOCOL = 1
PROVIDER = "codex-daytona"
KEY_ENV = "CODEX_DAYTONA_OPENAI_API_KEY"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
MIN_PYTHON = (3, 10)
# Asked of Daytona once to learn the sandbox's preview URL pattern; any port works.
PATTERN_PROBE_PORT = 54321


def agent_source() -> bytes:
    return resources.files("agent_bundle").joinpath("agent.py").read_bytes()


RUNTIME_MARKER = f"openai-codex=={CODEX_SDK_VERSION}"


def runtime_fingerprint() -> str:
    """Names what `up` set up: changes when the Codex SDK pin or the agent program changes."""
    digest = hashlib.sha256(agent_source())
    digest.update(CODEX_SDK_VERSION.encode())
    return f"openai-codex-{CODEX_SDK_VERSION}-{digest.hexdigest()[:12]}"


SNAPSHOT_PREFIX = "codex-daytona-runtime"


def snapshot_name() -> str:
    """The name of the Daytona snapshot that has this runtime baked in, a hash of what is in it.

    `codex-daytona snapshot` builds it from a sandbox of Daytona's default image with the
    runtime installed by `install_command` and the agent uploaded; `up` looks it up by this
    name. The hash covers the Codex SDK pin, the install recipe and the agent program, so a
    change to any of them names a new snapshot (and `up` falls back to installing until it is
    built). The Python version is not in the name: it is whatever Daytona's default image has,
    and the snapshot captures the whole filesystem, interpreter included, so the venv in it
    always matches the Python in it.
    """
    digest = hashlib.sha256()
    for part in (CODEX_SDK_VERSION.encode(), install_command(Layout("~")).encode(), agent_source()):
        digest.update(hashlib.sha256(part).digest())
    return f"{SNAPSHOT_PREFIX}-{CODEX_SDK_VERSION}-{digest.hexdigest()[:12]}"


@dataclass(frozen=True)
class Layout:
    """Where things live inside the sandbox, all under its home directory."""

    home: str

    @property
    def root(self) -> str:
        return f"{self.home}/.codex-daytona"

    @property
    def venv(self) -> str:
        return f"{self.root}/venv"

    @property
    def python(self) -> str:
        return f"{self.venv}/bin/python"

    @property
    def agent(self) -> str:
        return f"{self.root}/agent/agent.py"

    @property
    def runs(self) -> str:
        return f"{self.root}/runs"

    @property
    def marker(self) -> str:
        """Written last by the install: names the installed runtime (RUNTIME_MARKER)."""
        return f"{self.root}/runtime.txt"

    @property
    def codex_home(self) -> str:
        return f"{self.home}/.codex"

    @property
    def codex_config(self) -> str:
        return f"{self.codex_home}/config.toml"


def probe_command(layout: Layout) -> str:
    """Prints the installed runtime fingerprint (or an empty line) and the sandbox's Python version."""
    q = shlex.quote
    script = (
        f"cat {q(layout.marker)} 2>/dev/null; echo; "
        "python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])' 2>/dev/null || echo none"
    )
    return "sh -c " + q(script)


def install_command(layout: Layout) -> str:
    """Creates the runtime virtualenv and installs the pinned Codex SDK into it."""
    q = shlex.quote
    steps = [
        f"mkdir -p {q(layout.root)}",
        f"(test -x {q(layout.python)} || python3 -m venv {q(layout.venv)})",
        f"{q(layout.python)} -m pip install --quiet --disable-pip-version-check "
        f"{q(f'openai-codex=={CODEX_SDK_VERSION}')}",
        f"{q(layout.python)} -c 'import openai_codex'",
        f"echo {q(RUNTIME_MARKER)} > {q(layout.marker)}",
    ]
    return "sh -c " + q(" && ".join(steps))


def agent_command(layout: Layout, run_id: str) -> str:
    """The command that runs one turn. Everything in it is ours: paths and a run id."""
    q = shlex.quote
    argv = [layout.python, "-u", layout.agent, "--run-id", run_id, "--runs-dir", layout.runs, "--home", layout.home]
    return f"cd {q(layout.home)} && exec " + " ".join(q(a) for a in argv)


def start_daemon_command(layout: Layout) -> str:
    """Starts the agent daemon (a warm Codex) if it is not running, so the first turn starts fast."""
    q = shlex.quote
    argv = [layout.python, layout.agent, "--start-daemon", "--home", layout.home, "--runs-dir", layout.runs]
    return f"cd {q(layout.home)} && " + " ".join(q(a) for a in argv)


def ports_command(layout: Layout) -> str:
    """Prints the sandbox's listening ports (less Daytona's own) as a JSON list."""
    q = shlex.quote
    return f"{q(layout.python)} {q(layout.agent)} --list-ports"


def developer_instructions(layout: Layout, preview_pattern: str | None) -> str:
    lines = [
        "You are running in a Daytona sandbox.",
        f"Use the {layout.home} directory for all file operations (not /workspace).",
    ]
    if preview_pattern:
        lines.append(
            "When running services on localhost, they will be accessible as: "
            f"{preview_pattern} (replace {{PORT}} with the port)."
        )
    lines += [
        "Servers must listen on 0.0.0.0 (not 127.0.0.1 or localhost) so the preview link can reach them.",
        "Start servers and other long-running processes in the background "
        "(for example `nohup CMD > server.log 2>&1 &`) so that your turn can finish.",
    ]
    return " ".join(lines)


def codex_config(settings: Settings, layout: Layout, preview_pattern: str | None) -> bytes:
    """Codex's config.toml for the sandbox."""
    config: dict[str, object] = {
        "model_provider": PROVIDER,
        "approval_policy": "never",
        "sandbox_mode": "danger-full-access",
        "check_for_update_on_startup": False,
        "developer_instructions": developer_instructions(layout, preview_pattern),
        "analytics": {"enabled": False},
        "features": {"plugins": False, "unbounded_connection_retries": False},
        "tools": {"update_plan": {"enabled": True}},
        # The commands the agent runs never see the key, nor anything named like a secret.
        "shell_environment_policy": {
            "inherit": "all",
            "ignore_default_excludes": False,
            "exclude": [KEY_ENV, "*OPENAI*KEY*", "DAYTONA_API_KEY"],
        },
        "model_providers": {
            PROVIDER: {
                "name": PROVIDER,
                "base_url": settings.base_url or DEFAULT_BASE_URL,
                "wire_api": "responses",
                "env_key": KEY_ENV,
                # Bounded: a dead endpoint must fail the turn, not hang it.
                "request_max_retries": 2,
                "stream_max_retries": 2,
                "stream_idle_timeout_ms": 300_000,
            }
        },
    }
    if settings.codex_daytona_model:
        config["model"] = settings.codex_daytona_model
    return tomli_w.dumps(config).encode()


def agent_request(
    *,
    prompt: str,
    api_key: str,
    thread_id: str | None,
    new_thread: bool,
    model: str | None,
    base_url: str | None,
    layout: Layout,
) -> str:
    """The one JSON line the agent reads from stdin. It carries the key: never log it."""
    request = {
        "protocol": AGENT_PROTOCOL,
        "prompt": prompt,
        "api_key": api_key,
        "thread_id": thread_id,
        "new_thread": new_thread,
        "model": model,
        "base_url": base_url,
        "codex_home": layout.codex_home,
    }
    return json.dumps(request, ensure_ascii=True) + "\n"


def interrupt_request() -> str:
    return json.dumps({"op": "interrupt"}) + "\n"


def parse_probe(output: str) -> tuple[str, tuple[int, int] | None]:
    """(installed fingerprint or "", the sandbox's Python version or None)."""
    lines = [line.strip() for line in output.splitlines()]
    marker = lines[0] if lines else ""
    version: tuple[int, int] | None = None
    for line in reversed(lines):
        parts = line.split(".")
        if len(parts) == 2 and all(p.isdigit() for p in parts):
            version = (int(parts[0]), int(parts[1]))
            break
    return marker, version
