"""The output layer: the only module that writes to the terminal.

Three modes. Human: progress and the agent's work on stderr (rich; colour and a live
spinner only on a terminal), the result (the final answer, a URL, an id) on stdout.
JSON: the event stream or one object on stdout, one JSON value per line. Quiet: only
the value on stdout. Errors and warnings always go to stderr. Every line is masked so a
secret can never be printed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from enum import Enum
from pathlib import Path
from typing import Any, Protocol, TextIO

from rich.console import Console, ConsoleRenderable, Group
from rich.live import Live
from rich.markup import escape
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from codex_daytona import events as ev
from codex_daytona.launcher import in_ci


class Mode(str, Enum):
    HUMAN = "human"
    JSON = "json"
    QUIET = "quiet"


MASK = "***"
FAILED_OUTPUT_LINES = 8


class Result(Protocol):
    """What a command returns: a sentence for people, the one value for -q, and JSON (None:
    nothing on stdout in JSON mode)."""

    @property
    def human(self) -> str: ...

    @property
    def quiet(self) -> str: ...

    def to_json(self) -> dict[str, object] | None: ...


class TableResult(Result, Protocol):
    """A result people see as a table on stdout: its columns, rows and the columns that never
    wrap (ids); `empty` is said on stderr instead when there are no rows."""

    @property
    def table(self) -> tuple[list[str], list[list[str]], tuple[str, ...]]: ...

    @property
    def empty(self) -> str: ...


class Step(Protocol):
    """One step of a command's progress that --json reports as an object of its own (a
    `doctor` check): a line on stderr for people, nothing for -q."""

    @property
    def human(self) -> str: ...

    def to_json(self) -> dict[str, object]: ...


class Patch(Protocol):
    """A patch (`diff`): its bytes on stdout as they are, or an object for --json."""

    @property
    def patch(self) -> bytes: ...

    def to_json(self) -> dict[str, object]: ...


class Outcome(Protocol):
    """A turn's outcome, as `ask` and `logs` print it at the end."""

    @property
    def status(self) -> str: ...

    @property
    def final_message(self) -> str: ...

    def to_json(self) -> dict[str, object]: ...


class FanoutAttempt(Protocol):
    """One sandbox of `ask --fanout`, and what its turn came to (from its TurnOutcome)."""

    @property
    def name(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def error(self) -> str | None: ...
    @property
    def duration_s(self) -> float | None: ...
    @property
    def tally(self) -> ev.TurnTally: ...
    @property
    def usage(self) -> dict[str, int]: ...
    @property
    def final_message(self) -> str: ...
    @property
    def previews(self) -> list[dict[str, object]]: ...

    def to_json(self) -> dict[str, Any]: ...


class Fanout(Protocol):
    """The end of `ask --fanout`: its attempts, and a summary for --json."""

    @property
    def attempts(self) -> Sequence[FanoutAttempt]: ...

    def to_json(self) -> dict[str, object]: ...


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Output:
    """Renders events, results and errors for one invocation."""

    def __init__(
        self,
        mode: Mode = Mode.HUMAN,
        *,
        stream_events: bool = False,
        exec_only: bool = False,
        secrets: list[str] | None = None,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
    ) -> None:
        self.mode = mode
        self.secrets = [s for s in (secrets or []) if len(s) >= 4]
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.live_terminal = _is_tty(self.stderr) and mode is Mode.HUMAN and not in_ci()
        no_color = bool(os.environ.get("NO_COLOR"))
        self.err = Console(
            file=self.stderr,
            highlight=False,
            no_color=no_color,
            force_terminal=None,
            soft_wrap=True,
        )
        self._live: Live | None = None
        self._pending_message: str | None = None
        self._running: dict[str, str] = {}
        self._writing = ""  # the last line of the text the model is writing, for the spinner
        self._turn = ev.TurnTally(started=time.time())
        self._batch = BatchBoard()
        # `ask --json` streams every event as a JSON line; other commands print one object.
        self.stream_events = stream_events
        # `--exec-json`: only `codex exec --json`'s own lines, exactly as exec prints them.
        self.exec_only = exec_only
        self._answered = False  # the turn's answer is out (before its links)
        self._details: dict[str, dict[str, Any]] = {}  # item id -> what exec leaves out of it
        self._turn_usage: dict[str, Any] | None = None  # this turn's own tokens, when the agent said
        # `ask --fanout`: one row per sandbox (status, detail, started, ended), in order of arrival.
        self._fanout: dict[str, tuple[str, str, float | None, float | None]] = {}

    # --- primitives -------------------------------------------------------------------

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text

    def add_secret(self, secret: str) -> None:
        if len(secret) >= 4:
            self.secrets.append(secret)

    def _out(self, text: str) -> None:
        # A closed pipe or terminal (`| head`, a hung-up chat) must not stop the work itself.
        with contextlib.suppress(OSError, ValueError):
            self.stdout.write(self.mask(text) + "\n")
            self.stdout.flush()

    def _err(self, markup: str) -> None:
        """A permanent line on stderr (above the spinner when one runs)."""
        with contextlib.suppress(OSError, ValueError):
            self.err.print(self.mask(markup))

    def json_line(self, value: Any) -> None:
        self._out(json.dumps(value, ensure_ascii=False, separators=(",", ":")))

    def progress(self, message: str) -> None:
        if self.mode is Mode.HUMAN:
            self._err(f"[dim]{escape(message)}[/dim]")

    def warning(self, message: str) -> None:
        self._err(f"[yellow]⚠ {escape(message)}[/yellow]")

    def error(self, message: str, hint: str = "") -> None:
        self.stop_live()
        self._err(f"[bold red]Error:[/bold red] {escape(message)}")
        if hint:
            self._err(f"[dim]Hint: {escape(hint)}[/dim]")

    # --- the live spinner --------------------------------------------------------------

    def _status_text(self) -> str:
        if self._running:
            return "Running: " + list(self._running.values())[-1]
        if self._writing:
            return self._writing
        return "Thinking..."

    def _refresh_live(self) -> None:
        if not self.live_terminal:
            return
        status = Text(self.mask(self._status_text()), style="dim", no_wrap=True, overflow="ellipsis")
        spinner = Spinner("dots", status)
        if self._live is None:
            self._live = Live(spinner, console=self.err, refresh_per_second=12, transient=True)
            self._live.start()
        else:
            self._live.update(spinner)

    def _live_board(self, view: Callable[[], ConsoleRenderable]) -> None:
        """A board redrawn from `view` four times a second, until stop_live (fan-out, batch)."""
        if self._live is None:
            self._live = Live(console=self.err, refresh_per_second=4, transient=True, get_renderable=view)
            self._live.start()

    def stop_live(self) -> None:
        if self._live is not None:
            live, self._live = self._live, None
            with contextlib.suppress(OSError, ValueError):
                live.stop()

    # --- events ------------------------------------------------------------------------

    def event(self, event: ev.Event) -> None:
        kind = event.get("type")
        if kind == ev.FANOUT_UPDATE:
            self._fanout_update(event)
            return
        if kind in (ev.BATCH_STARTED, ev.BATCH_TASK):
            self._batch_task(event)
            return
        if kind == ev.EXEC_OUTPUT and self.mode is not Mode.JSON:
            stream = self.stdout if event.get("stream") == "stdout" else self.stderr
            with contextlib.suppress(OSError, ValueError):
                stream.write(self.mask(str(event.get("data", ""))))
                stream.flush()
            return
        if self.mode is Mode.JSON:
            if self.stream_events and not (self.exec_only and ev.is_ours(event)):
                self.json_line(ev.as_exec(event) if self.exec_only else event)
            elif kind in (ev.WARNING, ev.RESUME_FAILED):
                self.warning(str(event.get("message", "")))
            return
        if kind == ev.WARNING or kind == ev.RESUME_FAILED:
            self.warning(str(event.get("message", "")))
            return
        if kind == ev.PREVIEW:
            self._preview(event)
            return
        if self.mode is Mode.QUIET:
            return
        self._human(event)

    def _flush_message(self) -> None:
        """An agent message that turned out not to be the last one goes to stderr."""
        if self._pending_message is not None:
            self._err(escape(self._pending_message))
            self._pending_message = None

    def _human(self, event: ev.Event) -> None:
        kind = event.get("type")
        if kind == ev.PROGRESS:
            self.progress(str(event.get("message", "")))
        elif kind == ev.THREAD_STARTED:
            self._err(f"[dim]Thread {escape(str(event.get('thread_id')))}[/dim]")
        elif kind == ev.TURN_STARTED:
            self._turn = ev.TurnTally(started=float(event.get("ts") or time.time()))
            self._details, self._turn_usage = {}, None
            if not self.live_terminal:
                self._err("[dim]Thinking...[/dim]")
            self._refresh_live()
        elif kind in (ev.ITEM_STARTED, ev.ITEM_UPDATED, ev.ITEM_COMPLETED):
            item = event.get("item") or {}
            # A message followed by more work was not the last one: it goes to stderr.
            if kind == ev.ITEM_STARTED and item.get("type") != ev.AGENT_MESSAGE:
                self._flush_message()
            self._item(kind, item)
            self._refresh_live()
        elif kind == ev.ERROR:
            message = str(event.get("message", ""))
            if message.startswith("Reconnecting..."):
                # exec's word for a retry of the model request: the turn goes on.
                self._err(f"[dim]↻ {escape(message)}[/dim]")
                return
            self._flush_message()
            self._err(f"[red]❌ Error: {escape(message)}[/red]")
        elif kind == ev.RETRY:
            self._err(f"[dim]↻ {escape(str(event.get('message', '')))}[/dim]")
        elif kind == ev.TEXT:
            self._item(ev.ITEM_UPDATED, {"type": event.get("item_type"), "text": event.get("text", "")})
            self._refresh_live()
        elif kind == ev.ITEM_DETAILS:
            self._details[str(event.get("item_id"))] = event
        elif kind == ev.TURN_USAGE:
            self._turn_usage = event.get("usage") or None
        elif kind == ev.TURN_COMPLETED:
            self.stop_live()
            self._summary(float(event.get("ts") or time.time()))
            usage, self._turn_usage = self._turn_usage, None
            self._usage(usage or event.get("turn_usage") or event.get("usage") or {})
        elif kind == ev.TURN_INTERRUPTED:
            for item in event.get("items") or []:
                self._item(ev.ITEM_COMPLETED, item)
            self.stop_live()
            self._flush_message()
            self._err("[yellow]⏹ Turn interrupted[/yellow]")
        elif kind == ev.TURN_FAILED:
            self.stop_live()
            self._flush_message()
            message = (event.get("error") or {}).get("message", "turn failed")
            self._err(f"[bold red]❌ Turn failed: {escape(str(message))}[/bold red]")
        elif kind == ev.AGENT_OUTPUT:
            self._err(f"[dim]{escape(str(event.get('text', '')))}[/dim]")

    def _item(self, kind: str, item: dict[str, Any]) -> None:
        item_type = item.get("type")
        if kind == ev.ITEM_COMPLETED:
            item = self._with_details(item)
            self._turn.count(item)
            self._writing = ""
        if kind == ev.ITEM_UPDATED and item_type in (ev.AGENT_MESSAGE, ev.REASONING):
            # Shown live in the spinner on a terminal; printed once, whole, when it completes.
            lines = str(item.get("text", "")).strip().splitlines()
            prefix = "Writing: " if item_type == ev.AGENT_MESSAGE else "Thinking: "
            self._writing = (prefix + lines[-1]) if lines else ""
            return
        item_id = str(item.get("id"))
        if item_type == ev.COMMAND:
            self._command(kind, item_id, item)
        elif item_type == ev.FILE_CHANGE and kind == ev.ITEM_COMPLETED:
            verbs = {"add": "Add", "update": "Update", "delete": "Delete"}
            for change in item.get("changes") or []:
                verb = verbs.get(str(change.get("kind")), str(change.get("kind")).title())
                counts = ""
                if "added" in change:
                    counts = f" [green]+{change.get('added', 0)}[/green] [red]-{change.get('removed', 0)}[/red]"
                self._err(f"📝 {verb} {escape(str(change.get('path')))}{counts}")
        elif item_type == ev.AGENT_MESSAGE and kind == ev.ITEM_COMPLETED:
            self._flush_message()
            self._pending_message = str(item.get("text", ""))
        elif item_type == ev.REASONING and kind == ev.ITEM_COMPLETED:
            text = str(item.get("text", "")).strip()
            if text:
                self._err(f"[dim italic]💭 {escape(text)}[/dim italic]")
        elif item_type == ev.TODO_LIST and kind != ev.ITEM_COMPLETED:
            todos = item.get("items") or []
            done = sum(1 for t in todos if t.get("completed"))
            self._err(f"🗒️  To-do list ({done}/{len(todos)}):")
            for todo in todos:
                mark = "[green]\\[x][/green]" if todo.get("completed") else "\\[ ]"
                self._err(f"   {mark} {escape(str(todo.get('text', '')))}")
        elif item_type == ev.MCP_TOOL_CALL and kind == ev.ITEM_COMPLETED:
            ok = "✓" if item.get("status") == "completed" else "✗"
            self._err(f"🔧 {ok} MCP Tool: {escape(str(item.get('server')))}.{escape(str(item.get('tool')))}")
        elif item_type == ev.WEB_SEARCH and kind == ev.ITEM_COMPLETED:
            self._err(f"🌐 Web search: {escape(str(item.get('query', '')))}")
        elif item_type == ev.COLLAB_TOOL_CALL and kind == ev.ITEM_COMPLETED:
            ok = "✓" if item.get("status") == "completed" else "✗"
            receivers = ", ".join(str(t) for t in item.get("receiver_thread_ids") or [])
            prompt = str(item.get("prompt") or "").strip().splitlines()
            detail = f": {prompt[0]}" if prompt else ""
            target = f" → {receivers}" if receivers else ""
            self._err(f"🤖 {ok} Sub-agent {escape(str(item.get('tool')))}{escape(target)}{escape(detail)}")
        elif item_type == ev.ERROR_ITEM and kind == ev.ITEM_COMPLETED:
            # exec's warnings: the turn goes on.
            self.warning(str(item.get("message", "")))

    def _with_details(self, item: dict[str, Any]) -> dict[str, Any]:
        """The item with what the agent sent about it beside exec's event (duration, patch size)."""
        details = self._details.pop(str(item.get("id")), None)
        if not details:
            return item
        item = dict(item)
        if "duration_ms" in details:
            item["duration_ms"] = details["duration_ms"]
        counts = {str(c.get("path")): c for c in details.get("changes") or []}
        if counts:
            item["changes"] = [
                {**c, **{k: v for k, v in counts.get(str(c.get("path")), {}).items() if k != "path"}}
                for c in item.get("changes") or []
            ]
        return item

    def _command(self, kind: str, item_id: str, item: dict[str, Any]) -> None:
        command = ev.command_text(item)
        if kind == ev.ITEM_STARTED:
            self._running[item_id] = command
            if not self.live_terminal:
                self._err(f"🔨 Run: {escape(command)}")
            return
        if kind != ev.ITEM_COMPLETED:
            return
        self._running.pop(item_id, None)
        exit_code = item.get("exit_code")
        ok = ev.command_ok(item)
        duration = item.get("duration_ms")
        timing = f", {duration / 1000:.1f} s" if isinstance(duration, int | float) else ""
        detail = f"[dim](exit {exit_code}{timing})[/dim]" if exit_code is not None else "[dim](stopped)[/dim]"
        mark = "[green]✓[/green]" if ok else "[red]✗[/red]"
        if self.live_terminal:
            self._err(f"🔨 {mark} Run: {escape(command)} {detail}")
        else:
            self._err(f"   {mark} {detail}")
        if not ok:
            tail = str(item.get("aggregated_output") or "").rstrip().splitlines()[-FAILED_OUTPUT_LINES:]
            for line in tail:
                self._err(f"[dim]   │ {escape(line)}[/dim]")

    def _summary(self, ended: float) -> None:
        tally = self._turn
        parts = [f"Turn done in {max(0.0, ended - tally.started):.1f} s"]
        if tally.files:
            parts.append(f"{len(tally.files)} file{'s' if len(tally.files) != 1 else ''} changed")
        if tally.commands:
            failed = f", {tally.failed} failed" if tally.failed else ""
            parts.append(f"{tally.commands} command{'s' if tally.commands != 1 else ''}{failed}")
        self._err(f"[dim]{escape(' · '.join(parts))}[/dim]")

    def _usage(self, usage: dict[str, Any]) -> None:
        if not usage:
            return
        self._err(
            "[dim]Tokens: {inp:,} in ({cached:,} cached) · {out:,} out ({reasoning:,} reasoning)[/dim]".format(
                inp=usage.get("input_tokens", 0),
                cached=usage.get("cached_input_tokens", 0),
                out=usage.get("output_tokens", 0),
                reasoning=usage.get("reasoning_output_tokens", 0),
            )
        )

    def _preview(self, event: ev.Event) -> None:
        if self.mode is not Mode.QUIET:
            for line in _link_lines(event):
                self._err(line)

    def links(self, previews: list[dict[str, Any]]) -> None:
        """Links that are a command's result (`status`): on stdout, in the human view only,
        each the same line as `ask` and `preview` print on stderr."""
        if self.mode is not Mode.HUMAN:
            return
        console = Console(file=self.stdout, highlight=False, no_color=bool(os.environ.get("NO_COLOR")), soft_wrap=True)
        with contextlib.suppress(OSError, ValueError):
            for preview in previews:
                for line in _link_lines(preview):
                    console.print(self.mask(line))

    def confirm(self, question: str) -> bool:
        """`question [y/N]: ` on stderr, as typer.confirm asks it (y or yes, n or no, Enter for
        no, asked again on anything else, no at the end of input), read with read_line, so that
        Ctrl-C at the question ends the wait whichever thread the kernel hands it to."""
        self.stop_live()
        while True:
            self.stderr.write(f"{question} [y/N]: ")
            self.stderr.flush()
            try:
                answer = read_line(sys.stdin).strip().lower()
            except EOFError:
                self.stderr.write("\n")
                return False
            if answer in ("y", "yes"):
                return True
            if answer in ("", "n", "no"):
                return False
            self.stderr.write("Error: invalid input\n")

    def ask_line(self, prompt: str) -> str:
        """Reads one line of input after showing `prompt` on stderr (the chat's `User:`)."""
        self.stop_live()
        self.stderr.write(prompt)
        self.stderr.flush()
        return read_line(sys.stdin)

    # --- ask --fanout: one line per sandbox -------------------------------------------------

    def _fanout_update(self, event: ev.Event) -> None:
        name = str(event.get("sandbox"))
        status, detail = str(event.get("status")), str(event.get("detail") or "")
        row = (status, detail, event.get("started"), event.get("ended"))
        self._fanout[name] = row
        if self.mode is not Mode.HUMAN:
            return
        if self.live_terminal:
            self._live_board(self._fanout_view)
            return
        # No terminal: a plain line per change, never redrawn.
        elapsed = _elapsed(row)
        self._err(f"[dim]{escape(name)}  {escape(status)}{f'  {elapsed}' if elapsed else ''}[/dim]  {escape(detail)}")

    def _fanout_view(self) -> Table:
        table = Table(box=None, show_header=False, pad_edge=False)
        for column in ("sandbox", "status", "elapsed"):
            table.add_column(column, no_wrap=True, style="dim" if column == "elapsed" else None)
        table.add_column("now", no_wrap=True, overflow="ellipsis")
        for name, row in self._fanout.items():
            status, detail = row[0], row[1]
            style = {"completed": "green", "running": "cyan"}.get(status, "red" if row[3] else "dim")
            table.add_row(name, Text(status, style=style), _elapsed(row), Text(self.mask(detail)))
        return table

    def fanout_results(self, result: Fanout) -> None:
        """The comparison at the end of `ask --fanout`: a table on stdout, one object for
        --json, the names of the sandboxes whose turn completed for -q."""
        self.stop_live()
        if self.mode is Mode.JSON:
            self.json_line({**result.to_json(), "sandboxes": [a.to_json() for a in result.attempts]})
            return
        if self.mode is Mode.QUIET:
            for attempt in result.attempts:
                if attempt.status == "completed":
                    self._out(attempt.name)
            return
        table = Table(box=None, pad_edge=False, header_style="bold")
        for column in ("sandbox", "outcome", "time", "tokens in/out", "files", "failed cmds", "answer"):
            right = column in ("time", "tokens in/out", "files", "failed cmds")
            table.add_column(column, justify="right" if right else "left", overflow="fold")
        for attempt in result.attempts:
            usage = attempt.usage
            tokens = f"{usage.get('input_tokens', 0):,}/{usage.get('output_tokens', 0):,}" if usage else "-"
            seconds = attempt.duration_s
            answer = attempt.final_message.strip().splitlines()
            table.add_row(
                attempt.name,
                attempt.status + (f": {attempt.error}" if attempt.error else ""),
                "-" if seconds is None else f"{round(seconds, 2):.1f} s",
                tokens,
                str(len(attempt.tally.files)),
                f"{attempt.tally.failed} of {attempt.tally.commands}",
                answer[0] if answer else "",
            )
        self._table(table)
        for attempt in result.attempts:
            for preview in attempt.previews:
                url = preview.get("browser_url") or preview["url"]  # the one that opens in a browser
                self._out(f"{attempt.name}  port {preview['port']}: {url}")

    def _batch_task(self, event: ev.Event) -> None:
        """A batch's progress. On a terminal, a live board (counts, pass rate, tokens, elapsed
        time, ETA, and a line per running task with what it is doing now); elsewhere a plain
        line on stderr as a task starts, retries and ends (not for -q; with --json too, since
        stdout carries only the summary)."""
        board = self._batch
        if event.get("type") == ev.BATCH_STARTED:
            board.start(int(event.get("total") or 0), int(event.get("skipped") or 0))
            return
        task_id, status = str(event.get("id")), str(event.get("status"))
        detail = self.mask(str(event.get("detail") or "").strip())
        board.update(task_id, status, detail, done=bool(event.get("done")), usage=event.get("usage") or {})
        if self.mode is Mode.QUIET:
            return
        if self.live_terminal:
            self._live_board(self._batch_view)
            return
        if status not in ("creating", "retrying") and not event.get("done"):
            return
        style = {"passed": "green", "creating": "dim", "retrying": "yellow"}.get(status, "red")
        line = f"[{style}]{escape(status)}[/{style}] {escape(task_id)}"
        if event.get("done"):
            line += f" [dim]({board.finished}/{board.to_run})[/dim]"
        self._err(line + (f"[dim]  {escape(detail.splitlines()[0][:120])}[/dim]" if detail else ""))

    def _batch_view(self) -> Group:
        board = self._batch
        passed = board.counts.get("passed", 0)
        failed = board.finished - passed
        eta = board.eta()
        counts = [
            f"{board.finished}/{board.to_run} done",
            f"{len(board.running)} running",
            f"{failed} not passed",
            f"{100 * passed / board.finished:.0f}% passed" if board.finished else "",
        ]
        times = [
            f"tokens {board.tokens_in:,} in / {board.tokens_out:,} out",
            f"{_clock(time.monotonic() - board.began)} elapsed",
            f"ETA {_clock(eta)}" if eta is not None else "ETA --:--",
        ]
        header = Text(" · ".join(p for p in counts if p) + "\n" + " · ".join(times), style="bold")
        width = min(32, max((len(task_id) for task_id in board.running), default=0))
        lines = [header]
        for task_id, (status, detail, since) in board.running.items():
            style = {"running": "cyan", "retrying": "yellow"}.get(status, "dim")
            name = task_id if len(task_id) <= width else task_id[: width - 1] + "…"
            line = Text(f"{name:<{width}}  ", no_wrap=True, overflow="ellipsis")
            line.append(f"{status:<9}", style=style)
            line.append(f"{_clock(time.monotonic() - since):>6}  ", style="dim")
            line.append(detail.splitlines()[0] if detail else "")
            lines.append(line)
        return Group(*lines)

    def batch_summary(self, summary: dict[str, Any], passed: list[str]) -> None:
        """The end of a batch: counts by status (and by model when tasks used several) on
        stdout, one object for --json, the ids of the tasks that passed for -q."""
        self.stop_live()
        if self.mode is Mode.JSON:
            self.json_line(summary)
            return
        if self.mode is Mode.QUIET:
            for task_id in passed:
                self._out(task_id)
            return
        ran = summary["ran"]
        models = summary["by_model"]
        columns = ["status", "tasks"] + (sorted(models) if len(models) > 1 else [])
        rows = [
            [status, str(count)] + ([str(models[m].get(status, 0)) for m in sorted(models)] if len(models) > 1 else [])
            for status, count in sorted(summary["statuses"].items())
        ]
        self.table(columns, rows)
        rate = f"{100 * summary['statuses'].get('passed', 0) / ran:.0f}% passed" if ran else "nothing to run"
        self._out(
            f"{ran} ran, {summary['skipped']} already done, {rate}, "
            f"tokens {summary['input_tokens']:,} in / {summary['output_tokens']:,} out, {summary['elapsed_s']:.1f} s"
        )

    # --- results -------------------------------------------------------------------------

    def _table(self, table: Table) -> None:
        buffer = io.StringIO()
        Console(file=buffer, width=self.err.width, no_color=True, highlight=False).print(table)
        self._out("\n".join(line.rstrip() for line in buffer.getvalue().rstrip("\n").splitlines()))

    def table(self, columns: list[str], rows: list[list[str]], *, whole: tuple[str, ...] = ()) -> None:
        """A plain table on stdout (human mode), as wide as the terminal. The `whole` columns
        (ids) never wrap, so that each can be copied; the others fold when the table is too wide."""
        table = Table(box=None, pad_edge=False, header_style="bold")
        for column in columns:
            if column in whole:
                width = max([len(column), *(len(r[columns.index(column)]) for r in rows)])
                table.add_column(column, no_wrap=True, min_width=width)
            else:
                table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*row)
        self._table(table)

    def final_answer(self, text: str | None) -> None:
        """The agent's last message: the result of `ask`, on stdout."""
        self.stop_live()
        self._pending_message = None
        if text:
            self._out(text)

    def last_message_file(self, path: Path, text: str | None) -> None:
        """`-o FILE`: the final message, as `codex exec -o` writes it (empty, with a warning,
        when the turn ended without one)."""
        try:
            path.write_text(self.mask(text or ""), encoding="utf-8")
        except OSError as exc:
            self.warning(f"Failed to write last message file {path}: {exc}")
            return
        if not text:
            self.warning(f"No last agent message; wrote empty content to {path}")

    def value(self, human: str, quiet: str, data: dict[str, Any] | None) -> None:
        """One result: a sentence for people, the bare value for -q, an object for --json."""
        if self.mode is Mode.JSON:
            if data is not None:
                self.json_line(data)
        elif self.mode is Mode.QUIET:
            if quiet:
                self._out(quiet)
        elif human:
            self._out(human)

    def result(self, result: Result | TableResult) -> None:
        """A command's result, in this output's mode."""
        table = getattr(result, "table", None)
        if self.mode is Mode.HUMAN and table is not None:
            columns, rows, whole = table
            if rows:
                self.table(columns, rows, whole=whole)
            else:
                self.progress(getattr(result, "empty", ""))
            return
        self.value(result.human, result.quiet, result.to_json())

    def step(self, step: Step) -> None:
        """A step of the command's progress: an object of its own for --json, else a line on stderr."""
        if self.mode is Mode.JSON:
            self.json_line(step.to_json())
        else:
            self.progress(step.human)

    def patch(self, result: Patch) -> None:
        """A patch on stdout as it is (-q too), or its object for --json."""
        if self.mode is Mode.JSON:
            self.json_line(result.to_json())
            return
        if not result.patch:
            self.progress("No changes since the baseline.")
        self.raw(result.patch)

    # --- a turn's end ------------------------------------------------------------------

    @property
    def for_people(self) -> bool:
        """Whether more than the one value is shown (not -q): what only people read is worth making."""
        return self.mode is not Mode.QUIET

    @property
    def wants_links(self) -> bool:
        """Whether a turn should wait for its preview links: -q is the answer alone and
        --exec-json exec's stream, and neither waits for them."""
        return self.for_people and not self.exec_only

    def answer(self, text: str | None) -> None:
        """The turn's answer as soon as it has one, before its links (which may wait for a
        server still starting); JSON prints its result line at the end instead."""
        if self.mode is not Mode.JSON:
            self.final_answer(text)
            self._answered = True

    def outcome(self, outcome: Outcome) -> None:
        """The end of a turn `ask` or `logs` followed: the result line for --json (none for
        --exec-json: exec's stream ends with its last event), else the answer, unless it
        was given already or the turn did not complete (-q prints what there is)."""
        if self.exec_only:
            return
        if self.mode is Mode.JSON:
            self.json_line(outcome.to_json())
        elif not self._answered and (outcome.status in ("completed", "unknown") or self.mode is Mode.QUIET):
            self.final_answer(outcome.final_message)

    def turn_error(self, line: dict[str, Any]) -> None:
        """The result line of a turn that ended in an error, for --json (exec's stream has none)."""
        if self.mode is Mode.JSON and not self.exec_only:
            self.json_line(line)

    def raw(self, data: bytes) -> None:
        """Bytes as they are (a patch) on stdout, secrets masked."""
        for secret in self.secrets:
            data = data.replace(secret.encode(), MASK.encode())
        buffer = getattr(self.stdout, "buffer", None)
        self.stdout.flush()
        if buffer is None:
            self.stdout.write(data.decode("utf-8", "replace"))
        else:
            buffer.write(data)
            buffer.flush()


def _link_lines(event: dict[str, Any]) -> list[str]:
    """A link as people see it (markup): one line that opens in a browser as printed (the
    signed URL of a private sandbox, the plain one of a public sandbox), with the check's
    outcome in a word. The token and its header only when asked for (`preview --token`: no
    signed URL then), on a second line."""
    url = str(event.get("browser_url") or event.get("url"))
    line = f"🔗 Port {event.get('port')}: [bold]{escape(url)}[/bold]"
    if "ok" in event:
        word = escape(str(event.get("outcome") or ("answers" if event.get("ok") else "fails")))
        line += f"  [green]✓ {word}[/green]" if event.get("ok") else f"  [red]✗ {word}[/red]"
    if event.get("expires_in"):
        line += f" [dim]· link valid {escape(duration(int(event['expires_in'])))}[/dim]"
    lines = [line]
    if event.get("token") and not event.get("browser_url"):
        token, header = escape(str(event.get("token"))), escape(str(event.get("header")))
        lines.append(f"[dim]   {header}: {token}   e.g. curl -H '{header}: {token}' {escape(url)}[/dim]")
    return lines


def duration(seconds: int) -> str:
    """A lifetime for people: 1 h, 90 min, 45 s."""
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def _clock(seconds: float) -> str:
    """A duration as m:ss (h:mm:ss past an hour)."""
    whole = max(0, int(seconds))
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class BatchBoard:
    """What a batch's progress display shows, kept from its events."""

    def __init__(self) -> None:
        self.began = time.monotonic()
        self.to_run = 0  # the tasks this run has to run (the file's, less those already done)
        self.counts: dict[str, int] = {}  # finished tasks by status
        self.tokens_in = 0
        self.tokens_out = 0
        self.running: dict[str, tuple[str, str, float]] = {}  # id -> status, detail, since

    def start(self, total: int, skipped: int) -> None:
        self.began, self.to_run = time.monotonic(), max(0, total - skipped)

    @property
    def finished(self) -> int:
        return sum(self.counts.values())

    def update(self, task_id: str, status: str, detail: str, *, done: bool, usage: dict[str, Any]) -> None:
        if done:
            self.running.pop(task_id, None)
            self.counts[status] = self.counts.get(status, 0) + 1
            self.tokens_in += int(usage.get("input_tokens") or 0)
            self.tokens_out += int(usage.get("output_tokens") or 0)
            return
        since = self.running.get(task_id, ("", "", time.monotonic()))[2]
        self.running[task_id] = (status, detail, since)

    def eta(self) -> float | None:
        """Seconds until the last task ends, at the pace so far (None before the first ends)."""
        if not self.finished:
            return None
        elapsed = time.monotonic() - self.began
        return elapsed / self.finished * max(0, self.to_run - self.finished)


def _elapsed(row: tuple[str, str, float | None, float | None]) -> str:
    started, ended = row[2], row[3]
    if started is None:
        return ""
    seconds = (ended or time.time()) - started
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


def read_line(stream: TextIO) -> str:
    """One line of `stream` without its newline, as input() reads it; EOFError at its end.

    Unlike input(), a signal ends the wait as soon as it comes. Python runs signal handlers in
    the main thread only, and the kernel may hand a signal to any thread that does not block it,
    such as the one the Daytona SDK keeps: then nothing wakes a main thread blocked in read(),
    and SIGTERM, SIGHUP or Ctrl-C at the chat's prompt would wait for the next key. Here the
    main thread waits in select() on the line and on the signal's wakeup fd, which the handler
    of any thread writes to. Bytes are read one at a time, so that nothing after the line is
    taken from the stream."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return input()
    encoding = getattr(stream, "encoding", None) or "utf-8"
    waker = _SignalWaker() if threading.current_thread() is threading.main_thread() else None
    data = bytearray()
    try:
        while not data.endswith(b"\n"):
            if waker is not None:
                waker.wait(fd)
            chunk = os.read(fd, 1)
            if not chunk:
                if not data:
                    raise EOFError
                break  # the last line, without a newline
            data += chunk
    finally:
        if waker is not None:
            waker.close()
    return data.decode(encoding, "replace").removesuffix("\n")


class _SignalWaker:
    """The signal module's wakeup fd, for a select() that any signal ends (main thread only)."""

    def __init__(self) -> None:
        self.read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        os.set_blocking(self.read_end, False)
        self.write_end = write_end
        self.previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)

    def wait(self, fd: int) -> None:
        """Returns once `fd` can be read; a signal's handler runs (and may raise) meanwhile."""
        while True:
            ready, _, _ = select.select([fd, self.read_end], [], [])
            if self.read_end in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self.read_end, 512)
                # Back in Python code: the handler of the signal runs here, in this thread.
            if fd in ready:
                return

    def close(self) -> None:
        signal.set_wakeup_fd(self.previous)
        os.close(self.read_end)
        os.close(self.write_end)
