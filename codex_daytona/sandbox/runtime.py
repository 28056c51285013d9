"""What codex-daytona puts in the sandbox: the agent runtime, its files and its command line.

Pure functions of settings and paths; no I/O. Every file is produced by a serialiser
(tomli-w, json), never by pasting text into a template, so no prompt or setting can break
it. No key ever goes into a command built here, and user text (a prompt, an `exec` command)
only as base64 in a here-document (`with_stdin`), never as an argument or shell syntax.
"""

from __future__ import annotations

import base64
import hashlib
import json
import posixpath
import secrets
import shlex
from dataclasses import dataclass

import tomli_w

from agent_bundle import protocol

# Re-exported: the host's modules name the key's variable and fingerprint through runtime.
from agent_bundle.protocol import KEY_ENV as KEY_ENV
from agent_bundle.protocol import key_fingerprint as key_fingerprint
from codex_daytona.settings import Settings

CODEX_SDK_VERSION = "0.163.0"
# The SDK asks for pydantic>=2.12, and the agent imports the SDK with pydantic's builds
# deferred (agent_bundle/sdk.py): the runtime gets the pydantic the tests ran that with, not
# whatever is newest on the day a sandbox installs it.
PYDANTIC_VERSION = "2.14.4"
PROVIDER = "codex-daytona"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
MIN_PYTHON = (3, 10)
# Asked of Daytona once to learn the sandbox's preview URL pattern; any port works.
PATTERN_PROBE_PORT = 54321


def agent_files() -> dict[str, bytes]:
    """The agent program (the agent_bundle package), file name -> contents: what `up` uploads
    into Layout.agent and what the fingerprints cover, neither more nor less."""
    return protocol.bundle_files()


def agent_upload(layout: Layout) -> dict[str, bytes]:
    """agent_files, by their paths in the sandbox."""
    return {f"{layout.agent}/{name}": data for name, data in agent_files().items()}


RUNTIME_MARKER = f"openai-codex=={CODEX_SDK_VERSION}"


def runtime_fingerprint() -> str:
    """Names what `up` set up: changes when the Codex SDK pin or the agent program changes."""
    digest = hashlib.sha256(protocol.bundle_digest(agent_files()).encode())
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
    agent = protocol.bundle_digest(agent_files()).encode()
    for part in (CODEX_SDK_VERSION.encode(), install_command(Layout("~")).encode(), agent):
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
        """The agent program: its package's files (agent_files), run as `python DIR`."""
        return f"{self.root}/agent/agent_bundle"

    @property
    def runs(self) -> str:
        return f"{self.root}/runs"

    @property
    def marker(self) -> str:
        """Written last by the install: names the installed runtime (RUNTIME_MARKER)."""
        return f"{self.root}/runtime.txt"

    @property
    def codex_home(self) -> str:
        """CODEX_HOME: ours, out of the work tree (the home), so that nothing a project ships
        (a cloned `.codex/`) can stand in for it."""
        return f"{self.root}/codex"

    @property
    def old_codex_home(self) -> str:
        """Where CODEX_HOME was before (the work tree's `.codex`): its threads move over."""
        return f"{self.home}/.codex"

    @property
    def codex_config(self) -> str:
        return f"{self.codex_home}/config.toml"


def probe_command(layout: Layout) -> str:
    """Prints the installed runtime fingerprint (or an empty line) and, unless that is this
    runtime (nothing to install, so no Python to check: one interpreter start less), the
    sandbox's Python version."""
    q = shlex.quote
    script = (
        f"marker=$(cat {q(layout.marker)} 2>/dev/null); printf '%s\\n' \"$marker\"; "
        f'if [ "$marker" = {q(RUNTIME_MARKER)} ]; then echo installed; else '
        "python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])' 2>/dev/null || echo none; fi"
    )
    return "sh -c " + q(script)


def install_command(layout: Layout) -> str:
    """Creates the runtime virtualenv and installs the pinned Codex SDK into it: with `uv` where
    the sandbox has it (Daytona's default image does; several times faster), else with pip.
    Compiled to bytecode as pip does: uv does not by default, and where the image sets
    PYTHONDONTWRITEBYTECODE (many Python images do) nothing else writes it, so every start of
    the agent compiled the SDK again (0.5 s of the sandbox's CPU). No download cache is kept:
    it would stay in the sandbox's home (and in the runtime snapshot made from it), 370 MB of
    unpacked wheels, Codex's binary among them, that nothing uses again."""
    q = shlex.quote
    pin = f"{q(f'openai-codex=={CODEX_SDK_VERSION}')} {q(f'pydantic=={PYDANTIC_VERSION}')}"
    with_uv = (
        f"(test -x {q(layout.python)} || "
        f'uv venv --quiet --no-cache --python "$(command -v python3)" {q(layout.venv)}) && '
        f"uv pip install --quiet --no-cache --compile-bytecode --python {q(layout.python)} {pin}"
    )
    with_pip = (
        f"(test -x {q(layout.python)} || python3 -m venv {q(layout.venv)}) && "
        f"{q(layout.python)} -m pip install --quiet --no-cache-dir --disable-pip-version-check {pin}"
    )
    steps = [
        f"mkdir -p {q(layout.root)}",
        f"if command -v uv >/dev/null 2>&1; then {with_uv}; else {with_pip}; fi",
        f"{q(layout.python)} -c 'import openai_codex'",
        f"echo {q(RUNTIME_MARKER)} > {q(layout.marker)}",
    ]
    return "sh -c " + q(" && ".join(steps))


def _agent_argv(layout: Layout, *args: str) -> str:
    q = shlex.quote
    argv = [layout.python, "-u", layout.agent, "--home", layout.home, "--runs-dir", layout.runs, *args]
    return " ".join(q(a) for a in argv)


def with_stdin(command: str, payload: bytes) -> str:
    """`command` fed `payload` (base64) on stdin through a here-document.

    A Daytona session sources each command into its one long-lived shell, so the command
    must neither `exec` nor `exit` (either would end that shell), and data for it is best
    carried in its own text: input sent to a running command is echoed into its log. The
    delimiter is random and base64 never contains `_`, so no payload can end the document."""
    marker = f"CODEX_DAYTONA_{secrets.token_hex(8)}"
    body = base64.encodebytes(payload).decode("ascii")
    return f"{command} <<'{marker}'\n{body}{marker}"


def agent_command(layout: Layout, run_id: str, request: str) -> str:
    """The session command that runs one turn: the agent client, its request on stdin."""
    return with_stdin(_agent_argv(layout, "--run-id", run_id), request.encode())


def exec_command(layout: Layout, command: str, done_marker: str) -> str:
    """The session command for `codex-daytona exec`: the user's command, run in a shell of its
    own in the home (so `exit`, `exec`, `cd` and `export` cannot end or change the session).
    Each stream ends with a `done_marker` line, stdout's with the exit code after it."""
    return with_stdin(_agent_argv(layout, "--exec", "--done-marker", done_marker), command.encode())


def start_daemon_command(layout: Layout, *, with_key: bool = False, prepare: str | None = None) -> str:
    """Starts the agent daemon (a warm Codex) if it is not running, so the first turn starts
    fast; `with_key` also hands it the key from this command's environment. With `prepare`
    (a turn's request, agent_request without a prompt: prepare_request) the daemon then
    starts Codex's app-server and a new thread for that turn, and the command waits for it."""
    command = _agent_argv(layout, "--set-key" if with_key else "--start-daemon")
    if prepare is None:
        return command
    return with_stdin(f"{command} --prepare", prepare.encode())


def ports_command(layout: Layout) -> str:
    """Prints the sandbox's listening TCP ports (less Daytona's own; the agent itself only
    uses a unix socket) as JSON: `{"listening": [...]}`. An agent
    uploaded by an older codex-daytona prints a bare list."""
    return _agent_argv(layout, "--list-ports")


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
        "Start servers and other long-running processes in the background "
        "(for example `nohup CMD > server.log 2>&1 &`) so that your turn can finish.",
    ]
    return " ".join(lines)


def codex_config(settings: Settings, layout: Layout, preview_pattern: str | None) -> bytes:
    """Codex's config.toml for the sandbox."""
    config: dict[str, object] = {
        **_tool_config(settings),
        "developer_instructions": developer_instructions(layout, preview_pattern),
    }
    if settings.codex_daytona_model:
        config["model"] = settings.codex_daytona_model
    return tomli_w.dumps(config).encode()


def protected_config(settings: Settings) -> dict[str, object]:
    """The settings the tool depends on (provider, environment policy, sandbox mode,
    approvals, retries), as dotted keys: the agent passes them to Codex's app-server as `-c`
    overrides, which no config file can outrank, not even a project's `.codex/config.toml`
    in the work tree (Codex reads one from the working directory). Being on a command line,
    they never name the key's variable: its wildcard pattern hides it from commands all the
    same, and the provider's `env_key` stays in our own config.toml."""
    flat: dict[str, object] = {}

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        else:
            flat[prefix] = value

    walk("", _tool_config(settings))
    flat.pop(f"model_providers.{PROVIDER}.env_key")
    excluded = flat["shell_environment_policy.exclude"]
    assert isinstance(excluded, list)
    flat["shell_environment_policy.exclude"] = [name for name in excluded if name != KEY_ENV]
    return flat


# `ask -c` keys refused besides those of protected_config (and the tables above them): what
# would pick another provider or reach around the tool's (profiles, login and auth settings).
REFUSED_CONFIG_KEYS = (
    "model_providers",
    "profile",
    "profiles",
    "approvals_reviewer",
    "sandbox_workspace_write",
    "chatgpt_base_url",
    "forced_login_method",
    "forced_chatgpt_workspace_id",
    "cli_auth_credentials_store",
)


def refused_config_key(pair: str, settings: Settings) -> str | None:
    """Why `ask -c KEY=VALUE` cannot be given `pair`, or None when it can: the tool's own
    settings (protected_config), the tables that hold them, and REFUSED_CONFIG_KEYS."""
    key, sep, _value = pair.partition("=")
    key = ".".join(part.strip().strip("\"'") for part in key.strip().split("."))
    if not sep or not key or "" in key.split("."):
        return "is not KEY=VALUE"
    protected = [*protected_config(settings), *REFUSED_CONFIG_KEYS]
    for each in protected:
        if key == each or each.startswith(key + ".") or key.startswith(each + "."):
            return f"would change {each}, which codex-daytona sets itself"
    return None


def codex_behaviour() -> dict[str, object]:
    """How every Codex the tool runs behaves, whatever its provider: no approvals and no
    sandbox of its own (the Daytona sandbox is one), nothing that calls home (update check,
    analytics, plugins), bounded connection retries, the plan tool on. The tests' local Codex
    (tests/fakes/codex_home.py) runs with the same."""
    return {
        "approval_policy": "never",
        "sandbox_mode": "danger-full-access",
        "check_for_update_on_startup": False,
        "analytics": {"enabled": False},
        "features": {"plugins": False, "unbounded_connection_retries": False},
        "tools": {"update_plan": {"enabled": True}},
    }


def _tool_config(settings: Settings) -> dict[str, object]:
    return {
        "model_provider": PROVIDER,
        **codex_behaviour(),
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


def agent_request(
    *,
    prompt: str,
    api_key: str | None,
    layout: Layout,
    thread_id: str | None = None,
    new_thread: bool = False,
    model: str | None = None,
    base_url: str | None = None,
    wait: bool = False,
    model_timeout: float | None = None,
    heartbeat_seconds: float | None = None,
    turn_model: str | None = None,
    effort: str | None = None,
    protected: dict[str, object] | None = None,
    config: list[str] | None = None,
    images: list[str] | None = None,
    output_schema: dict[str, object] | None = None,
    must_resume: bool = False,
) -> str:
    """The turn's request, one JSON line. It names the key by its fingerprint and never
    carries it (the session command that holds the request is written to the sandbox's
    disk); with no key (Daytona Secret mode) the agent uses the sandbox's environment.
    `model` is the one a thread starts with; `turn_model` and `effort` (`ask --model`,
    `--effort`) change the thread's from this turn on. `protected` (protected_config) goes
    to Codex's app-server as `-c` overrides after the user's own `config` (`ask -c`, checked
    with refused_config_key), so it wins."""
    request: protocol.Request = {
        "protocol": protocol.PROTOCOL,
        "prompt": prompt,
        "key_id": key_fingerprint(api_key) if api_key else None,
        "thread_id": thread_id,
        "new_thread": new_thread,
        "model": model,
        "base_url": base_url,
        "codex_home": layout.codex_home,
        "wait": wait,
        "model_timeout": model_timeout,
        "heartbeat_seconds": heartbeat_seconds,
        "turn_model": turn_model,
        "effort": effort,
        "config": protected or {},
        "user_config": config or [],
    }
    # Only when given, so a turn without them asks exactly what it did before.
    if images:
        request["images"] = images
    if output_schema is not None:
        request["output_schema"] = output_schema
    if must_resume:  # a thread that cannot be resumed fails the run instead of starting a new one
        request["must_resume"] = True
    return json.dumps(request, ensure_ascii=True) + "\n"


def prepare_request(settings: Settings, layout: Layout, *, thread_id: str | None) -> str:
    """What the sandbox's first turn will ask, without its prompt: the request of an `ask`
    with no option on this sandbox (`thread_id` its record's), for the agent daemon to make
    ready ahead of it (start_daemon_command's `prepare`). A turn that asks anything else does
    not use what was prepared: the agent compares the two requests."""
    key = settings.openai_key_for_turn() if settings.sandbox_openai_api_key else None
    return agent_request(
        prompt="",
        api_key=key,
        layout=layout,
        thread_id=thread_id,
        model=settings.codex_daytona_model,
        base_url=settings.base_url,
        protected=protected_config(settings),
    )


def image_paths(layout: Layout, run_id: str, names: list[str]) -> list[str]:
    """Where a turn's `--image` files go in the sandbox: the run's own directory, numbered so
    two images of one name stay apart."""
    return [f"{layout.runs}/{run_id}/images/{i}-{posixpath.basename(n) or 'image'}" for i, n in enumerate(names)]


def attach_command(
    layout: Layout, run_id: str, offset: int, *, follow: bool, heartbeat_seconds: float | None = None
) -> str:
    """Prints a run's events from byte `offset` of its event file (and follows it, with an
    empty line after `heartbeat_seconds` without an event)."""
    follow_args = ["--follow"] if follow else []
    if follow and heartbeat_seconds:
        follow_args += ["--heartbeat", f"{heartbeat_seconds:g}"]
    return _agent_argv(layout, "--attach", run_id, "--offset", str(offset), *follow_args)


def interrupt_command(layout: Layout, run_id: str) -> str:
    return _agent_argv(layout, "--interrupt", run_id)


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
