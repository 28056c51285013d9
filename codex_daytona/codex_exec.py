"""`codex-daytona-exec`: a stand-in for the `codex` binary that runs `codex exec` turns in
this directory's Daytona sandbox.

OpenAI's TypeScript SDK (`@openai/codex-sdk`) runs its agent by spawning a codex binary as
`exec --experimental-json`, with the prompt on stdin, and reads exec's JSON lines from
stdout; `new Codex({codexPathOverride: "codex-daytona-exec"})` points it here instead. This
module accepts exactly the arguments the SDK (0.163) passes, in its order:

    exec --experimental-json [--config K=V]... [--model M] [--thread-source S]
         [--sandbox MODE] [--cd DIR] [--add-dir DIR]... [--skip-git-repo-check]
         [--output-schema FILE] [--config K=V]... [resume THREAD_ID] [--image FILE]...

(plus exec's own short forms `-c -m -s -C -i -o` and `--json`), runs the turn through the
same core path as `codex-daytona ask` (`turns.ask`), prints exec's JSON lines only (our
`codex_daytona.*` lines are left out; warnings go to stderr), and exits as exec does: 0 when
the turn completed, 1 when it failed or anything else went wrong, 2 for bad arguments.

`--cd DIR` names the LOCAL directory whose sandbox runs the turn (its state file, its `.env`),
as `codex exec --cd DIR` names the directory Codex works in: a program that ran Codex on a
project runs it in that project's sandbox by changing only the binary's path. Without
`resume`, a turn starts a new thread (as exec does); `resume ID` continues thread ID.
`CODEX_API_KEY` (the SDK's `apiKey`) is the OpenAI key when SANDBOX_OPENAI_API_KEY is not
set; it is handed to the agent like any key, never written or printed.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from codex_daytona.errors import CodexDaytonaError, ConfigError, ExitCode, InterruptedByUser, UsageError

if TYPE_CHECKING:
    from codex_daytona.output import Output
    from codex_daytona.settings import Settings

PROG = "codex-daytona-exec"
# `codex exec`'s exit codes: where they mean what codex-daytona's do, they are its ExitCode.
EXIT_OK = ExitCode.OK
EXIT_FAILED = ExitCode.ERROR  # exec: a failed turn, or any error
EXIT_USAGE = ExitCode.USAGE  # exec (clap): bad arguments
EXIT_SIGTERM = 143  # exec killed by SIGTERM (128 + 15)

# --sandbox: the agent always has full access inside its Daytona sandbox (the sandbox is the
# boundary), which is what these two ask for there; read-only cannot be honoured.
ACCEPTED_SANDBOX_MODES = frozenset({"danger-full-access", "workspace-write"})


@dataclass
class Invocation:
    """What the command line asked for."""

    prompt: str | None = None
    config: list[str] = field(default_factory=list)
    model: str | None = None
    sandbox: str | None = None
    cd: Path | None = None
    output_schema: Path | None = None
    output_last_message: Path | None = None
    images: list[Path] = field(default_factory=list)
    resume: str | None = None
    json: bool = False


# Flags that take a value -> the Invocation field (lists are appended to).
_VALUE_FLAGS = {
    "--config": "config",
    "-c": "config",
    "--model": "model",
    "-m": "model",
    "--sandbox": "sandbox",
    "-s": "sandbox",
    "--cd": "cd",
    "-C": "cd",
    "--output-schema": "output_schema",
    "--output-last-message": "output_last_message",
    "-o": "output_last_message",
    "--image": "images",
    "-i": "images",
    "--thread-source": None,  # a label on a new thread for Codex's own bookkeeping: no effect here
}
_SWITCHES = {"--experimental-json": "json", "--json": "json", "--skip-git-repo-check": None}
_REFUSED = {
    "--add-dir": "the agent works in the sandbox, where local directories are not mounted "
    "(copy them in with `codex-daytona push`)",
    "--cyber-access-program": "not available in the sandbox's Codex",
    "--last": "name the thread to resume: resume THREAD_ID",
}


def parse_args(argv: list[str]) -> Invocation:
    """exec's command line as the SDK writes it, or a UsageError naming what is not supported."""
    if not argv or argv[0] not in ("exec", "e"):
        raise UsageError(
            f"{PROG} runs `codex exec` turns: the first argument must be `exec`.",
            f'Usage: {PROG} exec --json [--model M] [--cd DIR] [resume THREAD_ID] ["PROMPT" | -] < prompt',
        )
    inv = Invocation()
    rest = argv[1:]
    i = 0
    while i < len(rest):
        arg = rest[i]
        flag, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if flag in _REFUSED:
            raise UsageError(f"{PROG}: {flag} is not supported: {_REFUSED[flag]}.")
        if flag in _SWITCHES:
            if eq:
                raise UsageError(f"{PROG}: {flag} takes no value.")
            if _SWITCHES[flag]:
                setattr(inv, str(_SWITCHES[flag]), True)
            i += 1
            continue
        if flag in _VALUE_FLAGS:
            if eq:
                value, i = inline, i + 1
            elif i + 1 < len(rest):
                value, i = rest[i + 1], i + 2
            else:
                raise UsageError(f"{PROG}: {flag} needs a value.")
            _set(inv, _VALUE_FLAGS[flag], value)
            continue
        if arg == "resume" and inv.resume is None and inv.prompt is None:
            if i + 1 >= len(rest) or rest[i + 1].startswith("-"):
                raise UsageError(f"{PROG}: resume needs a THREAD_ID.")
            inv.resume, i = rest[i + 1], i + 2
            continue
        if arg.startswith("-") and arg != "-":
            raise UsageError(f"{PROG}: unsupported argument {arg}.", f"{PROG} accepts what the Codex SDK passes.")
        if inv.prompt is not None:
            raise UsageError(f"{PROG}: unexpected argument {arg!r} (the prompt was already given).")
        inv.prompt = arg
        i += 1
    if not inv.json:
        raise UsageError(
            f"{PROG} speaks exec's JSON only: pass --experimental-json (or --json).",
            "For a person at a terminal, use `codex-daytona ask`.",
        )
    if inv.sandbox is not None and inv.sandbox not in ACCEPTED_SANDBOX_MODES:
        raise UsageError(
            f"{PROG}: --sandbox {inv.sandbox} cannot be honoured: the agent has full access inside its "
            "Daytona sandbox.",
            "Use workspace-write or danger-full-access (the Daytona sandbox is the boundary).",
        )
    return inv


def _set(inv: Invocation, name: str | None, value: str) -> None:
    if name is None:
        return
    if name == "config":
        inv.config.append(value)
    elif name == "images":
        inv.images.append(Path(value))
    elif name in ("cd", "output_schema", "output_last_message"):
        setattr(inv, name, Path(value))
    else:
        setattr(inv, name, value)


def apply_config(settings: Settings, overrides: list[str]) -> tuple[str | None, list[str]]:
    """The `--config key=value` overrides the SDK passes: the reasoning effort
    (`modelReasoningEffort`) and the Codex settings `ask -c` takes, returned for the turn; the
    endpoint and the approval and network options where they agree with the sandbox's. The
    tool's own settings (provider, key handling, environment policy, sandbox mode) are refused."""
    from pydantic import AnyHttpUrl, ValidationError

    from codex_daytona.codex_facts import REASONING_EFFORTS
    from codex_daytona.sandbox.runtime import refused_config_key

    effort: str | None = None
    passed: list[str] = []
    for override in overrides:
        key, eq, raw = override.partition("=")
        key = key.strip()
        if not eq or not key:
            raise UsageError(f"{PROG}: --config {override!r}: expected key=value.")
        value = _toml_value(raw.strip())
        if key == "approval_policy":
            if value != "never":
                raise UsageError(
                    f"{PROG}: --config approval_policy={value} cannot be honoured: nobody can answer an "
                    "approval in the sandbox, where the agent runs with approval_policy=never.",
                    'Use approvalPolicy: "never" (or leave it out).',
                )
        elif key == "sandbox_workspace_write.network_access":
            if value is not True:
                raise UsageError(f"{PROG}: the sandbox's network is Daytona's to set, not --config {key}.")
        elif key == "openai_base_url":
            # The SDK's `baseUrl`: the endpoint, unless SANDBOX_OPENAI_BASE_URL already names one.
            if settings.sandbox_openai_base_url is None:
                try:
                    settings.sandbox_openai_base_url = AnyHttpUrl(str(value))
                except ValidationError:
                    raise UsageError(f"{PROG}: --config openai_base_url={value!r} is not a URL.") from None
        elif key == "model_reasoning_effort":
            if value not in REASONING_EFFORTS:
                raise UsageError(f"{PROG}: --config {key}={value!r}: use one of {', '.join(REASONING_EFFORTS)}.")
            effort = str(value)
        elif (why := refused_config_key(override, settings)) is None:
            passed.append(override)
        else:
            raise UsageError(
                f"{PROG}: --config {key} {why}: the Codex in the sandbox is configured by codex-daytona.",
                "Leave it out of the Codex options.",
            )
    return effort, passed


def _toml_value(raw: str) -> object:
    """A `--config` value as Codex reads it: TOML (JSON-compatible for what the SDK writes),
    else the raw string."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _api_key_from_env(settings: Settings, out: Output) -> None:
    """CODEX_API_KEY (the SDK's `apiKey`) is the OpenAI key when codex-daytona has none."""
    from pydantic import SecretStr

    key = os.environ.get("CODEX_API_KEY", "").strip()
    if key and settings.sandbox_openai_api_key is None and not settings.sandbox_openai_secret:
        if any(c.isspace() for c in key):
            raise ConfigError("CODEX_API_KEY: must not contain spaces")
        settings.sandbox_openai_api_key = SecretStr(key)
        out.add_secret(key)


def _read_prompt(inv: Invocation) -> str:
    text = sys.stdin.read() if inv.prompt is None or inv.prompt == "-" else inv.prompt
    if not text.strip():
        raise UsageError(f"{PROG}: no prompt given (on stdin or as an argument).")
    return text


class _Signals:
    """The SDK's AbortSignal kills its child with SIGTERM: the turn is interrupted as Ctrl-C
    interrupts it (the sandbox and thread are kept), and the exit code says SIGTERM."""

    terminated = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, _signum: int, _frame: object) -> NoReturn:
        self.terminated = True
        raise KeyboardInterrupt


def run(argv: list[str]) -> int:
    from codex_daytona.output import Mode, Output

    out = Output(Mode.JSON, stream_events=True, exec_only=True)
    signals = _Signals()
    try:
        inv = parse_args(argv)
        if inv.cd is not None:
            if not inv.cd.is_dir():
                raise UsageError(f"{PROG}: --cd: no such directory: {inv.cd}")
            os.chdir(inv.cd)
        from codex_daytona.session import context_for, load_settings
        from codex_daytona.state import DEFAULT_NAME
        from codex_daytona.usecases import turns

        settings = load_settings(out)
        effort, config = apply_config(settings, inv.config)
        _api_key_from_env(settings, out)
        schema = turns.read_output_schema(inv.output_schema) if inv.output_schema else None
        images = turns.check_images(inv.images)
        if inv.output_last_message is not None and not inv.output_last_message.absolute().parent.is_dir():
            raise UsageError(f"{PROG}: -o: no such directory: {inv.output_last_message.absolute().parent}")
        prompt = _read_prompt(inv)
        # No --name here: an invalid CODEX_DAYTONA_SANDBOX is exec's usage error (exit 2).
        ctx = context_for(settings, settings.codex_daytona_sandbox or DEFAULT_NAME, out)
        signals.install()
        try:
            outcome = turns.ask(
                ctx,
                prompt,
                new_thread=inv.resume is None,
                thread_id=inv.resume,
                model=inv.model,
                wait=True,  # turns of one sandbox take their turn, as threads of one SDK program may overlap
                links=False,  # exec prints no links: return at the run's closing event
                images=images,
                output_schema=schema,
                effort=effort,
                config=config,
            )
        except InterruptedByUser as exc:
            out.error(exc.message)
            return EXIT_SIGTERM if signals.terminated else EXIT_FAILED
        if inv.output_last_message is not None:
            out.last_message_file(inv.output_last_message, outcome.final_message)
        return EXIT_OK
    except KeyboardInterrupt:
        out.error("Terminated." if signals.terminated else "Interrupted.")
        return EXIT_SIGTERM if signals.terminated else EXIT_FAILED
    except CodexDaytonaError as exc:
        if "could not resume thread" in exc.message:
            exc.hint = "Threads live in the sandbox that ran them: resume it from the same directory (--cd)."
        elif isinstance(exc, ConfigError) and "SANDBOX_OPENAI_API_KEY" in exc.message:
            exc.hint = "Pass it as the SDK's `apiKey` (CODEX_API_KEY), or set it as for codex-daytona. " + exc.hint
        out.error(exc.message, exc.hint)
        return EXIT_USAGE if isinstance(exc, UsageError) else EXIT_FAILED
    finally:
        out.stop_live()


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
