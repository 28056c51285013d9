"""The `codex-daytona` command line: parse, call the core, render. The only module that imports typer.

Everything heavy (pydantic, the Daytona SDK) is imported inside the commands that need it,
so `--help` and `--version` stay instant.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from codex_daytona import __version__
from codex_daytona.errors import CodexDaytonaError, ExitCode, UsageError

if TYPE_CHECKING:
    from codex_daytona.core import App
    from codex_daytona.output import Output

EXIT_CODES_HELP = (
    "Exit codes: 0 ok, 1 error, 2 usage, 3 the agent's turn failed, 4 missing or invalid setting, "
    "5 no sandbox, 6 busy, 7 Daytona error, 124 timeout, 130 interrupted."
)

app = typer.Typer(
    name="codex-daytona",
    help="Run OpenAI's Codex agent in a Daytona sandbox, one command at a time.\n\n" + EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print only the value (id, URL, answer).")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.", hidden=True)]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"codex-daytona {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Run OpenAI's Codex agent in a Daytona sandbox."""


@contextmanager
def _session(json_mode: bool, quiet: bool, debug: bool) -> Iterator[tuple[App, Output]]:
    """Builds settings, state, the app and the output for one command; turns our errors into
    one line, a hint and an exit code."""
    from codex_daytona.output import Mode, Output

    if json_mode and quiet:
        out = Output(Mode.HUMAN)
        out.error("--json and --quiet cannot be used together.")
        raise typer.Exit(ExitCode.USAGE)
    mode = Mode.JSON if json_mode else Mode.QUIET if quiet else Mode.HUMAN
    out = Output(mode)
    try:
        from codex_daytona.core import App
        from codex_daytona.settings import load_settings
        from codex_daytona.state import StateStore, state_dir

        settings = load_settings()
        for secret in settings.secrets():
            out.add_secret(secret)
        store = StateStore(state_dir(settings.codex_daytona_state_dir))
        yield App(settings, store, on_event=out.event), out
    except CodexDaytonaError as exc:
        _fail(out, exc, debug)
    except KeyboardInterrupt:
        out.stop_live()
        out.error("Interrupted.")
        raise typer.Exit(ExitCode.INTERRUPTED) from None
    finally:
        out.stop_live()


def _fail(out: Output, exc: CodexDaytonaError, debug: bool) -> NoReturn:
    out.stop_live()
    if debug:
        import traceback

        traceback.print_exception(exc)
    out.error(exc.message, exc.hint)
    raise typer.Exit(int(exc.exit_code))


def _read_prompt(prompt: str | None) -> str:
    if prompt == "-" or (prompt is None and not sys.stdin.isatty()):
        text = sys.stdin.read()
    elif prompt is None:
        raise UsageError("No prompt given.", 'Pass it as an argument: codex-daytona ask "build a todo app"')
    else:
        text = prompt
    if not text.strip():
        raise UsageError("The prompt is empty.")
    return text


@app.command()
def up(json_mode: JsonOpt = False, quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """Create the sandbox for this directory (or start the one it has) and install the agent.

    Prints the sandbox id. A second `up` only reports the sandbox.

    Example: codex-daytona up
    """
    with _session(json_mode, quiet, debug) as (core, out):
        result = core.up()
        verb = "Created" if result.created else "Using"
        out.value(
            f"{verb} sandbox {result.sandbox_id}",
            result.sandbox_id,
            {"sandbox_id": result.sandbox_id, "created": result.created, "home_dir": result.home_dir},
        )


@app.command()
def snapshot(json_mode: JsonOpt = False, quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """Build a Daytona snapshot with the agent runtime preinstalled, so `up` starts fast.

    The name is a hash of what is in it (the Codex SDK version and the agent); `up` uses the
    snapshot whenever it exists, unless CODEX_DAYTONA_SNAPSHOT names another. Builds in a
    temporary sandbox that is deleted afterwards; when the snapshot exists, only reports it.
    Prints the snapshot name.

    Example: codex-daytona snapshot
    """
    with _session(json_mode, quiet, debug) as (core, out):
        result = core.snapshot()
        verb = "Built" if result.created else "Snapshot exists:"
        out.value(
            f"{verb} {result.name} ({result.state})",
            result.name,
            {"snapshot": result.name, "created": result.created, "state": result.state},
        )


@app.command()
def ask(
    prompt: Annotated[
        str | None, typer.Argument(help="What to do, in plain words. `-` (or a pipe) reads it from stdin.")
    ] = None,
    new_thread: Annotated[bool, typer.Option("--new-thread", help="Start a fresh conversation.")] = False,
    model: Annotated[str | None, typer.Option("--model", help="The model for this turn.")] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", min=1, help="Interrupt the turn after SECONDS (exit 124).")
    ] = None,
    json_mode: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Ask the agent to do something; streams its work and prints its answer.

    Creates the sandbox first when there is none, and continues the same conversation
    on every call.

    Example: codex-daytona ask "create a 3d animated web-based lunar lander game"
    """
    from codex_daytona import events as ev

    with _session(json_mode, quiet, debug) as (core, out):
        out.stream_events = json_mode
        text = _read_prompt(prompt)
        try:
            outcome = core.ask(text, new_thread=new_thread, model=model, timeout=timeout)
        except CodexDaytonaError as exc:
            if json_mode:
                out.json_line(
                    {"type": ev.RESULT, "status": "error", "exit_code": int(exc.exit_code), "error": exc.message}
                )
            raise
        if json_mode:
            out.json_line(
                {
                    "type": ev.RESULT,
                    "status": outcome.status,
                    "exit_code": 0,
                    "run_id": outcome.run_id,
                    "sandbox_id": outcome.sandbox_id,
                    "thread_id": outcome.thread_id,
                    "final_message": outcome.final_message,
                    "usage": outcome.usage,
                    "previews": [{"port": p.port, "url": p.url} for p in outcome.previews],
                }
            )
        else:
            out.final_answer(outcome.final_message or out.final_message)


@app.command()
def preview(
    port: Annotated[int | None, typer.Option("--port", "-p", min=1, max=65535, help="Only this port.")] = None,
    signed: Annotated[
        bool, typer.Option("--signed", help="A signed URL that opens in any browser with no header.")
    ] = False,
    ttl: Annotated[int, typer.Option("--ttl", min=1, help="Lifetime of a signed URL, in seconds.")] = 3600,
    json_mode: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Print preview links for the servers listening in the sandbox.

    Example: URL=$(codex-daytona preview -q --port 8080)
    """
    with _session(json_mode, quiet, debug) as (core, out):
        links = core.preview(port, signed=signed, ttl=ttl)
        if not links:
            out.warning("Nothing is listening in the sandbox yet. Ask the agent to start a server.")
        if json_mode:
            out.json_line({"previews": [{"port": p.port, "url": p.url, "token": p.token} for p in links]})
        elif quiet:
            for link in links:
                out.value("", link.url, {})


@app.command()
def down(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_mode: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Delete this directory's sandbox and forget it.

    Asks first on a terminal; never asks when stdin is not a terminal.

    Example: codex-daytona down --yes
    """
    with _session(json_mode, quiet, debug) as (core, out):
        record = core.record()
        if record is None:
            out.warning("No sandbox here; nothing to delete.")
            out.value("Nothing to delete.", "", {"sandbox_id": None, "deleted": False})
            return
        if not yes and sys.stdin.isatty() and sys.stdout.isatty():
            typer.confirm(f"Delete sandbox {record.sandbox_id} and everything in it?", abort=True, err=True)
        sandbox_id = core.down()
        out.value(f"Deleted sandbox {sandbox_id}", sandbox_id, {"sandbox_id": sandbox_id, "deleted": True})


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        app()
    except KeyboardInterrupt:  # Ctrl-C before a command took over
        sys.stderr.write("Interrupted.\n")
        sys.exit(ExitCode.INTERRUPTED)
