"""The `codex-daytona` command line: parse, call the core, render. The only module that imports typer.

Everything heavy (pydantic, the Daytona SDK) is imported inside the commands that need it,
so `--help` and `--version` stay instant.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
import typer.core

from codex_daytona import __version__
from codex_daytona.codex_facts import REASONING_EFFORTS
from codex_daytona.errors import (
    AgentSetupError,
    BusyError,
    CodexDaytonaError,
    ExitCode,
    InterruptedByUser,
    TurnFailedError,
    UsageError,
)

if TYPE_CHECKING:
    from codex_daytona.output import Output
    from codex_daytona.usecases.context import Context

EXIT_CODES_HELP = (
    "Exit codes: 0 ok, 1 error, 2 usage, 3 the agent's turn failed, 4 missing or invalid setting, "
    "5 no sandbox, 6 busy, 7 Daytona error, 124 timeout, 130 interrupted."
)

# The help page's panels, in the order a person meets them; a command not listed here is
# shown under "Other commands".
PANELS: dict[str, tuple[str, ...]] = {
    "Sandbox": ("doctor", "up", "status", "exec", "shell", "ssh", "pause", "down", "snapshot"),
    "Agent": ("ask", "chat", "logs", "preview"),
    "Files": ("push", "pull", "diff"),
    "Many sandboxes": ("ls", "keep", "batch"),
}


class _PanelGroup(typer.core.TyperGroup):
    """Lists the commands in panels (plain text: the help stays the same on any terminal)."""

    def format_commands(self, ctx: typer.Context, formatter: Any) -> None:  # type: ignore[override]
        shown = {n: c for n in self.list_commands(ctx) if (c := self.get_command(ctx, n)) and not c.hidden}
        if not shown:
            return
        width = max(len(n) for n in shown)
        limit = formatter.width - 6 - width
        placed = {n for names in PANELS.values() for n in names}
        panels = [(title, [n for n in names if n in shown]) for title, names in PANELS.items()]
        panels.append(("Other commands", [n for n in shown if n not in placed]))
        for title, names in panels:
            if names:
                with formatter.section(title):
                    formatter.write_dl([(n.ljust(width), shown[n].get_short_help_str(limit)) for n in names])


app = typer.Typer(
    name="codex-daytona",
    cls=_PanelGroup,
    help="Run OpenAI's Codex agent in a Daytona sandbox, one command at a time.\n\n" + EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
ExecJsonOpt = Annotated[
    bool,
    typer.Option(
        "--exec-json",
        help="Print exactly `codex exec --json`'s event lines on stdout: no codex_daytona.* lines, "
        "no ts fields, no closing result line (implies --json).",
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print only the value (id, URL, answer).")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.", hidden=True)]
NameOpt = Annotated[
    str | None,
    typer.Option(
        "--name",
        help="Which of this directory's sandboxes (default: $CODEX_DAYTONA_SANDBOX, else 'default').",
        show_default=False,
    ),
]


def _check_effort(value: str | None) -> str | None:
    if value is not None and value not in REASONING_EFFORTS:
        raise typer.BadParameter(f"{value!r} is not a reasoning effort; use one of: {', '.join(REASONING_EFFORTS)}.")
    return value


EffortOpt = Annotated[
    str | None,
    typer.Option(
        "--effort",
        help="Reasoning effort from this turn on: " + "|".join(REASONING_EFFORTS) + " (the thread keeps it).",
        callback=_check_effort,
        show_default=False,
    ),
]


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


@dataclass(frozen=True)
class Common:
    """The options every command shares, declared once (`_SHARED`) and handed to each
    command as one value. They are the command's own options, not the group's, so that
    they go after the command name as people write them: `codex-daytona ls -q`."""

    name: str | None = None
    json_mode: bool = False
    quiet: bool = False
    debug: bool = False


def _shared(name: str, annotation: object, default: object) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default, annotation=annotation)


_SHARED = {
    "name": _shared("name", NameOpt, None),
    "json_mode": _shared("json_mode", JsonOpt, False),
    "quiet": _shared("quiet", QuietOpt, False),
    "debug": _shared("debug", DebugOpt, False),
}


def command(*names: str, named: bool = True, modes: bool = True, **settings: Any) -> Callable[..., Any]:
    """Registers a command whose function takes the shared options as `opts: Common`.

    Its options are its own, then --name (unless not `named`: it works on no sandbox),
    --json, a mode option of its own (--exec-json), -q (unless not `modes`: it talks to a
    person only) and --debug: the order its --help lists them in."""

    def register(func: Callable[..., None]) -> Callable[..., None]:
        own = [p for p in inspect.signature(func, eval_str=True).parameters.values() if p.name != "opts"]
        mode_options = [p for p in own if p.name == "exec_json"]
        left_out = ({"name"} if not named else set()) | ({"json_mode", "quiet"} if not modes else set())
        shared = [n for n in _SHARED if n not in left_out]
        params = [p for p in own if p not in mode_options]
        for option in shared:
            params.append(_SHARED[option])
            if option == "json_mode":
                params += mode_options

        @functools.wraps(func)
        def run(**kwargs: Any) -> None:
            opts = Common(**{n: kwargs.pop(n) for n in shared})
            func(opts=opts, **kwargs)

        run.__signature__ = inspect.Signature(params, return_annotation=None)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params}
        app.command(*names, **settings)(run)
        return run

    return register


@contextmanager
def _session(opts: Common, *, events: bool = False, exec_only: bool = False) -> Iterator[tuple[Context, Output]]:
    """Builds settings, state, the context and the output for one command; turns our errors
    into one line, a hint and an exit code. `opts.name` (--name, else CODEX_DAYTONA_SANDBOX,
    else "default") selects which of the directory's sandboxes the command works on. With
    `events`, --json streams the events as JSON lines (`ask`, `logs`, `exec`); `exec_only`
    is --exec-json (JSON mode, exec's own lines only)."""
    from codex_daytona.output import Mode, Output

    json_mode = opts.json_mode or exec_only
    if json_mode and opts.quiet:
        out = Output(Mode.HUMAN)
        out.error("--json and --quiet cannot be used together.")
        raise typer.Exit(ExitCode.USAGE)
    mode = Mode.JSON if json_mode else Mode.QUIET if opts.quiet else Mode.HUMAN
    out = Output(mode, stream_events=events and json_mode, exec_only=exec_only)
    try:
        from codex_daytona.session import context_for, load_settings

        settings = load_settings(out)
        yield context_for(settings, opts.name, out), out
    except CodexDaytonaError as exc:
        _fail(out, exc, opts.debug)
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
    from codex_daytona.usecases.turns import check_prompt

    if prompt == "-" or (prompt is None and not sys.stdin.isatty()):
        # As bytes: bytes that are not UTF-8 come through as the arguments' do (lone
        # surrogates), and check_prompt refuses both the same way.
        buffer = getattr(sys.stdin, "buffer", None)
        text = buffer.read().decode("utf-8", "surrogateescape") if buffer is not None else sys.stdin.read()
    elif prompt is None:
        raise UsageError("No prompt given.", 'Pass it as an argument: codex-daytona ask "build a todo app"')
    else:
        text = prompt
    if not text.strip():
        raise UsageError("The prompt is empty.")
    check_prompt(text)
    return text


@command()
def up(
    opts: Common,
    repo: Annotated[
        str | None,
        typer.Option("--repo", help="Create the sandbox with a clone of this git repository as its home."),
    ] = None,
    branch: Annotated[str | None, typer.Option("--branch", help="The branch (or tag) to clone.")] = None,
) -> None:
    """Create the sandbox for this directory (or start the one it has) and install the agent.

    Prints the sandbox id. A second `up` only reports the sandbox. `--repo URL` clones a
    repository into the new sandbox's home, where the agent works.

    Example: codex-daytona up --repo https://github.com/me/app.git --branch main
    """
    from codex_daytona.usecases import lifecycle

    with _session(opts) as (ctx, out):
        if branch is not None and repo is None:
            raise_usage("--branch needs --repo.")
        out.result(lifecycle.up(ctx, repo=repo, branch=branch))


@command(named=False)
def snapshot(opts: Common) -> None:
    """Build a Daytona snapshot with the agent runtime preinstalled, so `up` starts fast.

    The name is a hash of what is in it (the Codex SDK version and the agent); `up` uses the
    snapshot whenever it exists, unless CODEX_DAYTONA_SNAPSHOT names another. Builds in a
    temporary sandbox that is deleted afterwards; when the snapshot exists, only reports it.
    Prints the snapshot name.

    Example: codex-daytona snapshot
    """
    from codex_daytona.usecases import provision

    with _session(opts) as (ctx, out):
        out.result(provision.snapshot(ctx))


@command()
def ask(
    opts: Common,
    prompt: Annotated[
        str | None, typer.Argument(help="What to do, in plain words. `-` (or a pipe) reads it from stdin.")
    ] = None,
    new_thread: Annotated[bool, typer.Option("--new-thread", help="Start a fresh conversation.")] = False,
    model: Annotated[
        str | None, typer.Option("--model", help="The model from this turn on (the thread keeps it, as in Codex).")
    ] = None,
    effort: EffortOpt = None,
    config: Annotated[
        list[str] | None,
        typer.Option(
            "--config",
            "-c",
            metavar="KEY=VALUE",
            help="A Codex setting for this turn (repeatable; VALUE is TOML, as for `codex -c`). "
            "The tool's own (provider, key, environment policy, sandbox mode, approvals) are refused.",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", min=1, help="Interrupt the turn after SECONDS (exit 124).")
    ] = None,
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Start the turn, print its run id and return.")
    ] = False,
    wait: Annotated[bool, typer.Option("--wait", help="If a turn is running, wait for it instead of failing.")] = False,
    fanout: Annotated[
        int | None,
        typer.Option(
            "--fanout",
            min=1,
            help="Run the prompt in N sandboxes at once (<name>-1..N, forked from this one) and compare them.",
            show_default=False,
        ),
    ] = None,
    output_last_message: Annotated[
        Path | None,
        typer.Option(
            "--output-last-message",
            "-o",
            metavar="FILE",
            help="Also write the agent's final message to FILE (as `codex exec -o` does).",
            show_default=False,
        ),
    ] = None,
    output_schema: Annotated[
        Path | None,
        typer.Option(
            "--output-schema",
            metavar="FILE",
            help="A JSON Schema file the final message must conform to (the model answers in JSON).",
            show_default=False,
        ),
    ] = None,
    image: Annotated[
        list[Path] | None,
        typer.Option(
            "--image", "-i", metavar="FILE", help="Attach an image to the prompt (repeatable).", show_default=False
        ),
    ] = None,
    exec_json: ExecJsonOpt = False,
) -> None:
    """Ask the agent to do something; streams its work and prints its answer.

    Creates the sandbox first when there is none, and continues the same conversation
    on every call. Ctrl-C interrupts the turn (exit 130) and keeps the sandbox and thread.

    -o FILE writes the final message to FILE when the turn completes (an empty file and a
    warning when there is none). --output-schema FILE makes the final message JSON that
    follows that schema. -i FILE (repeatable) uploads an image and attaches it to the prompt.

    --fanout N runs the prompt in sandboxes <name>-1..N at once (forks of this one, or
    reused), shows one line per sandbox, and ends with a table comparing them
    (-q: the names whose turn completed). Exit 0 when every turn completed, 3 when any did
    not, 130 on Ctrl-C (every turn is interrupted). `keep NAME` then `down --others` keeps one.

    --json prints the events of `codex exec --json` plus codex-daytona's own lines
    (codex_daytona.*, ending with a codex_daytona.result line); --exec-json prints only
    exec's lines, exactly as `codex exec --json` would (the exit codes stay this command's).

    Example: codex-daytona ask "create a 3d animated web-based lunar lander game"

    Example: codex-daytona ask -i sketch.png --output-schema answer.json -o answer.txt "which colours?"
    """
    from codex_daytona.usecases import turns

    with _session(opts, events=fanout is None, exec_only=exec_json) as (ctx, out):
        if exec_json and (fanout is not None or detach):
            raise_usage("--exec-json cannot be used with --fanout or --detach.")
        if fanout is not None:
            if detach or wait:
                raise_usage("--fanout cannot be used with --detach or --wait.")
            if config:
                raise_usage("--fanout cannot be used with -c.")
            if output_last_message or output_schema or image:
                raise_usage("--fanout cannot be used with -o, --output-schema or --image.")
            _fanout(
                ctx,
                out,
                fanout,
                _read_prompt(prompt),
                new_thread=new_thread,
                model=model,
                timeout=timeout,
                effort=effort,
            )
            return
        if detach and output_last_message:
            raise_usage("-o cannot be used with --detach: the turn ends after the command returns.")
        schema = turns.read_output_schema(output_schema) if output_schema else None
        images = turns.check_images(image or [])
        _check_writable(output_last_message)
        text = _read_prompt(prompt)
        ended: list[turns.TurnOutcome] = []
        try:
            outcome = turns.ask(
                ctx,
                text,
                new_thread=new_thread,
                model=model,
                timeout=timeout,
                detach=detach,
                wait=wait,
                effort=effort,
                config=config,
                images=images,
                output_schema=schema,
                links=out.wants_links,
                on_answer=lambda done: out.answer(done.final_message),
                on_end=ended.append,
            )
        except CodexDaytonaError as exc:
            out.turn_error(turns.result_line(exc, ended[-1] if ended else None))
            raise
        if output_last_message is not None and not detach:
            out.last_message_file(output_last_message, outcome.final_message)
        if detach:
            out.value(f"Started run {outcome.run_id}", outcome.run_id, {"run_id": outcome.run_id, "status": "running"})
        else:
            out.outcome(outcome)


def _check_writable(path: Path | None) -> None:
    """-o FILE is written after the turn: a missing directory is a usage error before it."""
    if path is not None and not path.absolute().parent.is_dir():
        raise UsageError(f"-o: no such directory: {path.absolute().parent}")
    if path is not None and path.is_dir():
        raise UsageError(f"-o: {path} is a directory.")


def _fanout(
    ctx: Context,
    out: Output,
    count: int,
    text: str,
    *,
    new_thread: bool,
    model: str | None,
    timeout: float | None,
    effort: str | None = None,
) -> None:
    from codex_daytona.usecases.fanout import Fanout

    result = Fanout(ctx, count).run(text, new_thread=new_thread, model=model, timeout=timeout, effort=effort)
    out.fanout_results(result)
    if result.interrupted:
        out.error("Interrupted: every turn was stopped; the sandboxes are kept.")
    completed = [a.name for a in result.attempts if a.status == "completed"]
    if completed:
        flag = "" if ctx.name == "default" else f" --name {ctx.name}"
        out.progress(f"Keep one: codex-daytona keep {completed[0]}{flag} && codex-daytona down --others --yes{flag}")
    if result.exit_code:
        raise typer.Exit(int(result.exit_code))


@command()
def batch(
    opts: Common,
    tasks: Annotated[
        Path,
        typer.Argument(
            metavar="TASKS", help='A JSON-lines file: one task per line, {"id", "prompt", ...}.', show_default=False
        ),
    ],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", metavar="RESULTS", help="The JSON-lines results file (appended to; resumable)."),
    ],
    parallel: Annotated[int, typer.Option("--parallel", "-p", min=1, help="Tasks running at once.")] = 4,
    model: Annotated[
        str | None, typer.Option("--model", help="The model of tasks that name none.", show_default=False)
    ] = None,
    effort: EffortOpt = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", min=1, help="Interrupt a task's turn after SECONDS (status timeout).")
    ] = None,
    keep: Annotated[
        str, typer.Option("--keep", metavar="none|failed|all", help="Which tasks' sandboxes to keep afterwards.")
    ] = "none",
    patches: Annotated[
        Path | None,
        typer.Option(
            "--patches",
            metavar="DIR",
            help="Write each task's patch to DIR/<id>.patch (else it is in the results).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run every task of TASKS, each in a sandbox of its own, --parallel at once; write one
    result line per task to RESULTS as it ends.

    A task: "id" and "prompt", and optionally "model", "effort", "repo" and "branch" (cloned
    as its home) or "dir" (a local directory pushed there), "setup" (a command run before the
    turn) and "check" (a command run after it: exit 0 passes the task). Tasks with the same
    repo or dir and setup fork one sandbox set up once, where Daytona forks (VM class). A
    malformed line is refused before anything runs. Running the same command again skips the
    tasks RESULTS has and deletes what a killed run left. Ctrl-C interrupts the running tasks
    (exit 130).

    Exit 0 when every task run passed, 3 when any did not.

    Example: codex-daytona batch tasks.jsonl --parallel 8 --out results.jsonl
    """
    from codex_daytona.batch_files import TaskDefaults
    from codex_daytona.usecases.batch import Batch, BatchOptions

    with _session(opts) as (ctx, output):
        options = BatchOptions(
            parallel=parallel,
            defaults=TaskDefaults(model=model, effort=effort),
            timeout=timeout,
            keep=keep,
            patches=patches,
        )
        summary = Batch(ctx, tasks, out, options).run()
        output.batch_summary(summary.to_json(), [r["id"] for r in summary.runs if r["status"] == "passed"])
        if summary.interrupted:
            output.error("Interrupted: the running tasks were stopped and written as interrupted.")
        if summary.exit_code:
            raise typer.Exit(int(summary.exit_code))


@command("ls")
def ls(
    opts: Common,
    every: Annotated[
        bool,
        typer.Option("--all", help="Every sandbox this tool made, in every project of the Daytona account."),
    ] = False,
) -> None:
    """List this directory's sandboxes: state, sandbox and thread ids (short: their first and
    last 8 characters), last turn and ports; * marks the one commands use (the default, or
    --name's). --all lists every sandbox this tool made on the account, with the name and
    directory each was made for ("here": this directory's), e.g. those `down --all` deletes.

    -q prints the full sandbox ids, one per line; --json the names, the full ids, the times
    and the tokens.

    Example: codex-daytona ls
    """
    from codex_daytona.usecases import fleet

    with _session(opts) as (ctx, out):
        out.result(fleet.list_account(ctx) if every else fleet.SandboxList(fleet.list_sandboxes(ctx)))


@command()
def keep(
    opts: Common,
    chosen: Annotated[
        str, typer.Argument(metavar="NAME", help="The sandbox to keep, e.g. default-2.", show_default=False)
    ],
) -> None:
    """Keep sandbox NAME: it becomes the default (or --name's), e.g. the best of a fan-out.

    The two swap names: the previous default takes NAME's name, so nothing is lost, and
    `down --others` then deletes it with the other fan-out sandboxes. -q prints the sandbox id.

    Example: codex-daytona keep default-2 && codex-daytona down --others --yes
    """
    from codex_daytona.state import check_name
    from codex_daytona.usecases.fleet import keep as keep_sandbox

    with _session(opts) as (ctx, out):
        out.result(keep_sandbox(ctx, check_name(chosen)))


@command()
def logs(
    opts: Common,
    run_id: Annotated[str | None, typer.Argument(help="The run to show (default: the last one).")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep following until the run ends.")] = False,
    exec_json: ExecJsonOpt = False,
) -> None:
    """Show a run's events, also one started by another process or machine.

    --json and --exec-json print them as `ask` does.

    Example: codex-daytona logs -f
    """
    from codex_daytona.usecases import turns

    with _session(opts, events=True, exec_only=exec_json) as (ctx, out):
        ended: list[turns.TurnOutcome] = []
        try:
            outcome = turns.logs(ctx, run_id, follow=follow, links=out.wants_links, on_end=ended.append)
        except CodexDaytonaError as exc:
            out.turn_error(turns.result_line(exc, ended[-1] if ended else None))
            raise
        out.outcome(outcome)


@command()
def preview(
    opts: Common,
    port: Annotated[int | None, typer.Option("--port", "-p", min=1, max=65535, help="Only this port.")] = None,
    signed: Annotated[
        bool, typer.Option("--signed", help="A signed URL that opens in any browser with no header.")
    ] = False,
    ttl: Annotated[
        int,
        typer.Option(
            "--ttl",
            min=1,
            max=86_400,
            help="Lifetime of a signed URL, in seconds, at most 86400 (24 h, Daytona's limit).",
        ),
    ] = 3600,
    open_browser: Annotated[
        bool, typer.Option("--open", help="Open the links in the local browser (signed when the sandbox is private).")
    ] = False,
    token: Annotated[
        bool,
        typer.Option(
            "--token",
            help="Show each private link unsigned, with the token and the header to send it in (as curl would).",
        ),
    ] = False,
) -> None:
    """Print preview links for the servers listening in the sandbox, each checked through
    Daytona's preview proxy (its HTTP status, and why it fails when it does).

    One line per port, that opens in a browser as printed: on a private sandbox a signed URL
    (valid --ttl seconds), on a public one the plain URL. --token shows the unsigned link
    with its token instead; -q prints the unsigned URLs (signed with --signed); --json has
    both, and the token.

    Example: URL=$(codex-daytona preview -q --signed --port 8080)
    """
    from codex_daytona.usecases.links import PreviewList
    from codex_daytona.usecases.links import preview as preview_links

    with _session(opts) as (ctx, out):
        browser = out.for_people and not token  # a signed URL beside each private link
        links = preview_links(ctx, port, signed=signed, ttl=ttl, for_browser=open_browser, browser_links=browser)
        if not links:
            out.warning("Nothing is listening in the sandbox yet. Ask the agent to start a server.")
        if open_browser:
            import webbrowser

            for link in links:
                if webbrowser.open(link.url):
                    out.progress(f"Opened port {link.port} in the browser.")
                else:
                    out.warning(f"Could not open a browser; open {link.url} yourself.")
        out.result(PreviewList(links))


@command()
def status(opts: Common) -> None:
    """Show the sandbox, its state, the thread, the last turn and the listening ports.

    One line per port, as ask prints it: a link that opens in a browser as printed (signed,
    valid 1 h, on a private sandbox), and what checking it through Daytona's preview proxy
    found, in a word. -q prints only the sandbox's state (none, started, stopped, deleted,
    ...); --json has the links, the checks and, on a private sandbox, the token.

    Example: codex-daytona status
    """
    from codex_daytona.usecases import lifecycle

    with _session(opts) as (ctx, out):
        report = lifecycle.status(ctx)
        out.result(report)
        out.links([p.to_json() for p in report.previews])


@command(
    "exec",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def exec_(
    opts: Common,
    command: Annotated[list[str], typer.Argument(help="The command and its arguments (after --).")],
    timeout: Annotated[float | None, typer.Option("--timeout", min=1, help="Stop it after SECONDS (exit 124).")] = None,
) -> None:
    """Run a shell command in the sandbox's home; streams its output, exits with its exit code.

    One argument is run as a shell line; several are quoted and joined.

    Example: codex-daytona exec -- ls -la
    """
    import shlex

    line = command[0] if len(command) == 1 else shlex.join(command)
    from codex_daytona.usecases import hands

    with _session(opts, events=True) as (ctx, out):
        exit_code = hands.exec_command(ctx, line, timeout=timeout)
        out.result(hands.ExecResult(exit_code))
    raise typer.Exit(exit_code)


@command()
def down(
    opts: Common,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    stop: Annotated[
        bool, typer.Option("--stop", help="Stop the sandbox instead: files and thread are kept for the next ask.")
    ] = False,
    all_: Annotated[
        bool, typer.Option("--all", help="Delete every sandbox this tool made, in every project (asks first).")
    ] = False,
    others: Annotated[
        bool,
        typer.Option(
            "--others", help="Instead, delete this sandbox's fan-out siblings (<name>-1, -2, ...) and keep it."
        ),
    ] = False,
) -> None:
    """Delete this directory's sandbox and forget it (or stop it, or delete all of them).

    Asks first on a terminal; never asks when stdin is not a terminal (`--all` then needs --yes).
    With --others, deletes the fan-out siblings instead: after `keep NAME`, exactly one
    sandbox is left.

    Example: codex-daytona down --yes
    """
    from codex_daytona.usecases import lifecycle

    with _session(opts) as (ctx, out):
        if sum((stop, all_, others)) > 1:
            raise UsageError("--stop, --all and --others cannot be used together.")
        interactive = sys.stdin.isatty() and sys.stdout.isatty()
        if others:
            _down_others(ctx, out, ask=interactive and not yes)
            return
        if all_:
            sandboxes = lifecycle.all_sandboxes(ctx)
            for info in sandboxes:
                out.progress(f"{info.id}  {info.state:<10} {info.labels.get('codex-daytona.dir', '')}")
            if sandboxes and not yes:
                if not interactive:
                    raise UsageError(f"--all would delete {len(sandboxes)} sandboxes; pass --yes to confirm.")
                _confirm_or_abort(out, f"Delete these {len(sandboxes)} sandboxes and everything in them?")
            deleted = lifecycle.down_all(ctx, sandboxes)
            out.value(f"Deleted {len(deleted)} sandboxes", "\n".join(deleted), {"deleted": deleted})
            return
        record = ctx.record()
        if record is None:
            out.warning("No sandbox here; nothing to do.")
            out.value("Nothing to do.", "", {"sandbox_id": None, "deleted": False, "stopped": False})
            return
        if stop:
            out.result(lifecycle.stop(ctx))
            return
        if not yes and interactive:
            _confirm_or_abort(out, f"Delete sandbox {record.sandbox_id} and everything in it?")
        out.result(lifecycle.down(ctx))


@command()
def pause(
    opts: Common,
    or_stop: Annotated[
        bool, typer.Option("--or-stop", help="Where Daytona cannot pause this sandbox, stop it instead.")
    ] = False,
) -> None:
    """Pause the sandbox: its processes freeze with their memory, so dev servers and the warm
    agent go on where they were when the next command resumes it.

    Any command that needs the sandbox (ask, exec, shell, preview, up, ...) resumes it.
    `status` and `ls` show it as paused. Where Daytona cannot pause it, says so and stops
    nothing, unless --or-stop (then it is stopped, as `down --stop` does). -q prints the
    state it is left in (paused or stopped).

    Example: codex-daytona pause
    """
    from codex_daytona.usecases import lifecycle

    with _session(opts) as (ctx, out):
        out.result(lifecycle.pause(ctx, or_stop=or_stop))


@command(modes=False)
def shell(opts: Common) -> None:
    """Open an interactive shell in the sandbox, in its home directory.

    A real terminal over Daytona's PTY sessions: it follows this window's size, Ctrl-C
    goes to the program running in it, and `exit` (or Ctrl-D) leaves with the remote
    shell's exit code. Starts or resumes the sandbox first.

    Example: codex-daytona shell
    """
    from codex_daytona import terminal
    from codex_daytona.usecases import hands

    with _session(opts) as (ctx, out):
        rows, cols = terminal.window_size()
        remote = hands.open_shell(ctx, rows, cols)
        try:
            code = terminal.run(remote)
        finally:
            remote.close()
        if remote.exit_code is None:
            out.warning(f"The terminal connection dropped: {remote.error or 'no exit code'}.")
    raise typer.Exit(code)


@command()
def ssh(
    opts: Common,
    expires: Annotated[
        int, typer.Option("--expires", min=1, max=60 * 24, help="Minutes the access lasts.", metavar="MINUTES")
    ] = 60,
    connect: Annotated[bool, typer.Option("--connect", help="Run the SSH command now.")] = False,
) -> None:
    """Print an SSH command into the sandbox (Daytona SSH access), or run it with --connect.

    The access expires after --expires MINUTES; a new one revokes the previous. -q prints
    only the command. Starts or resumes the sandbox first. With --connect, exits with ssh's
    exit code.

    Example: codex-daytona ssh --expires 30
    """
    import shlex
    import subprocess

    from codex_daytona.usecases import hands

    with _session(opts) as (ctx, out):
        access = hands.ssh(ctx, expires)
        if connect:
            out.progress(f"Connecting (access expires at {access.expires_at})...")
            code = subprocess.call(shlex.split(access.command))
        else:
            out.result(access)
            out.progress(f"Expires at {access.expires_at}.")
            target = access.command.removeprefix("ssh ")
            out.progress(f"VS Code: Remote-SSH: Connect to Host..., then enter `{target}`.")
            return
    raise typer.Exit(code)


@command(named=False)
def doctor(opts: Common) -> None:
    """Check everything `ask` needs, in order: the settings, Daytona, the model endpoint and
    the snapshot new sandboxes start from.

    Each check is one line on stderr; it stops at the first one that would make `ask` fail,
    with the fix, and exits with that error's code (4 for a setting or a key the model
    endpoint refuses, 7 for Daytona, 1 when the model endpoint cannot be reached). -q
    prints only ok; --json one object per check.

    Example: codex-daytona doctor
    """
    from codex_daytona.usecases.doctor import Ready
    from codex_daytona.usecases.doctor import doctor as run_checks

    with _session(opts) as (ctx, out):
        checks = run_checks(ctx, out.step)
        failed = next((c for c in checks if not c.ok), None)
        if failed is not None and failed.error is not None:
            raise failed.error
        out.progress('Ready: `codex-daytona ask "..."` has what it needs.')
        out.result(Ready())


class _EndChat(Exception):
    """SIGTERM or SIGHUP: leave the chat, cleaning up as on Ctrl-D."""


@command(modes=False)
def chat(
    opts: Common,
    keep: Annotated[bool, typer.Option("--keep", help="Keep a sandbox that this chat created when it ends.")] = False,
    model: Annotated[str | None, typer.Option("--model", help="The model for this chat.")] = None,
    effort: EffortOpt = None,
) -> None:
    """Talk to the agent turn after turn at a `User:` prompt, on the same thread as `ask`.

    Ctrl-C interrupts the running turn and returns to the prompt; Ctrl-C at the prompt, a
    second Ctrl-C, Ctrl-D or `exit` ends the chat. A sandbox the chat created is deleted when
    it ends (unless --keep); one it found is left running.

    Example: codex-daytona chat
    """
    import signal

    def end(signum: int, _frame: object) -> None:
        raise _EndChat(signal.Signals(signum).name)

    from codex_daytona.usecases import lifecycle

    with _session(opts) as (ctx, out):
        ctx.settings.openai_key_for_turn()
        created = False
        if ctx.record() is None:
            created = lifecycle.up(ctx).created
            lifecycle.mark_created_by(ctx, "chat")
        previous = {sig: signal.signal(sig, end) for sig in (signal.SIGTERM, signal.SIGHUP)}
        try:
            _chat_loop(ctx, out, model, effort)
        except _EndChat as exc:
            out.progress(f"{exc.args[0]}: ending the chat.")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            record = ctx.record()
            if created and not keep and record is not None and record.created_by == "chat":
                out.progress("Deleting the sandbox this chat created (use --keep to keep it)...")
                lifecycle.down(ctx)
            elif record is not None:
                out.progress(f"Sandbox {record.sandbox_id} is still running; `codex-daytona down` deletes it.")


def _chat_loop(ctx: Context, out: Output, model: str | None, effort: str | None = None) -> None:
    from codex_daytona.usecases import turns

    answered: list[str] = []
    ended: list[turns.TurnOutcome] = []

    def answer_first(done: turns.TurnOutcome) -> None:
        out.final_answer(done.final_message)  # before the links, which may wait for a server
        answered.append(done.final_message)

    while True:
        try:
            prompt = out.ask_line("User: ")
        except (EOFError, KeyboardInterrupt):
            out.progress("")
            return
        if prompt.strip() in ("exit", "quit"):
            return
        if not prompt.strip():
            continue
        try:
            answered.clear()
            ended.clear()
            outcome = turns.ask(ctx, prompt, model=model, effort=effort, on_answer=answer_first, on_end=ended.append)
        except InterruptedByUser:
            if ended and ended[-1].forced_interrupt:
                return
            out.warning("Interrupted. The thread is kept; ask again or Ctrl-D to leave.")
            continue
        except (TurnFailedError, BusyError, AgentSetupError) as exc:
            out.error(exc.message, exc.hint)
            continue
        if not answered:
            out.final_answer(outcome.final_message)


def _down_others(ctx: Context, out: Output, ask: bool) -> None:
    from codex_daytona.usecases.fleet import down_others, siblings

    names = siblings(ctx)
    if names and ask:
        _confirm_or_abort(out, f"Delete sandboxes {', '.join(names)} and everything in them?")
    out.result(down_others(ctx))


def _confirm_or_abort(out: Output, question: str) -> None:
    """`down`'s question: anything but yes ends the command ("Aborted!", exit 1)."""
    if not out.confirm(question):
        raise typer.Abort()


def raise_usage(message: str, hint: str = "") -> NoReturn:
    raise UsageError(message, hint)


@command()
def push(
    opts: Common,
    local: Annotated[
        Path | None, typer.Argument(help="The directory to upload (default: the current one).", show_default=False)
    ] = None,
    to: Annotated[
        str | None,
        typer.Option("--to", help="Where in the sandbox: relative to its home, or absolute (default: the home)."),
    ] = None,
) -> None:
    """Upload a local directory into the sandbox.

    Sends the files git would track (tracked plus untracked, less .gitignore'd ones), never
    `.git/`, `.codex-daytona/` or `.env` files, as one archive. Files in the sandbox that
    are not in the upload are kept. The pushed files become the starting point of `diff`.
    -q prints the destination path.

    Example: codex-daytona push ./src --to src
    """
    from codex_daytona.usecases import workspace

    with _session(opts) as (ctx, out):
        out.result(workspace.push(ctx, local, to))


@command()
def pull(
    opts: Common,
    remote: Annotated[
        str | None,
        typer.Argument(help="A directory or file in the sandbox (default: its home).", show_default=False),
    ] = None,
    local: Annotated[
        Path | None, typer.Argument(help="Where to put it (default: the current directory).", show_default=False)
    ] = None,
    force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite local files that differ.")] = False,
) -> None:
    """Download the agent's work from the sandbox.

    By default the sandbox home's project files: what git would not ignore there, less
    `.codex-daytona/`, `.codex/`, the sandbox's own dotfiles and caches (node_modules, .venv,
    __pycache__). Refuses to overwrite a local file whose content differs, unless --force;
    never deletes local files. -q prints the local directory.

    Example: codex-daytona pull src ./src
    """
    from codex_daytona.usecases import workspace

    with _session(opts) as (ctx, out):
        out.result(workspace.pull(ctx, remote, local, force=force))


@command()
def diff(opts: Common) -> None:
    """Print what changed in the sandbox since it was set up (or last pushed to), as a patch.

    The output is a git-style unified diff with binary files included, relative to the
    sandbox home: `codex-daytona diff | git apply` replays the agent's work here. Prints
    nothing when nothing changed. --json gives the patch and the changed paths.

    Example: codex-daytona diff > agent.patch && git apply agent.patch
    """
    from codex_daytona.usecases import workspace

    with _session(opts) as (ctx, out):
        out.patch(workspace.diff(ctx))


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        app()
    except KeyboardInterrupt:  # Ctrl-C before a command took over
        sys.stderr.write("Interrupted.\n")
        sys.exit(ExitCode.INTERRUPTED)
