"""The engine: one warm Codex app-server for the sandbox, through OpenAI's `openai-codex` SDK.

It runs one turn at a time (Engine.run_turn) and maps what Codex sends to exec's events
(exec_events.TurnMapper); a Watchdog ends a turn whose model endpoint stopped answering.
openai_codex is imported where it is used (sdk.import_sdk), so that the agent's other commands never pay for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

from agent_bundle.exec_events import TurnMapper
from agent_bundle.hooks import write_shell_hooks
from agent_bundle.processes import Interrupter
from agent_bundle.protocol import KEY_ENV, RESUME_FAILED, Request, RunCompleted
from agent_bundle.sdk import import_sdk

START_TIMEOUT_S = 60.0  # how long Codex may take to start a turn (its app-server, the thread, the turn)
MODEL_TIMEOUT_S = 300.0  # silence from the model, while no command runs, that fails a turn


def codex_environment(request: Request, codex_home: str, home: str) -> dict[str, str]:
    env = {"CODEX_HOME": codex_home, "CODEX_APP_SERVER_DISABLE_MANAGED_CONFIG": "1"}
    env.update(write_shell_hooks(home))
    if request.get("api_key"):
        env[KEY_ENV] = request["api_key"]
    return env


def config_overrides(request: Request) -> list[str]:
    """`-c key=value` overrides for the app-server: the user's for this turn (`ask -c`), then
    the tool's own settings (the request's `config`: provider, environment policy, sandbox
    mode, approvals, retries; the last of a key wins, and `-c` outranks every config file, a
    project's `.codex/config.toml` in the work tree included), and the values a user may
    change between turns. JSON values are TOML values too. When they change from one turn to
    the next, the app-server is started again with them (Engine._ensure)."""
    overrides = [str(pair) for pair in request.get("user_config") or []]
    overrides += [f"{key}={json.dumps(value)}" for key, value in (request.get("config") or {}).items()]
    if request.get("base_url"):
        overrides.append("model_providers.codex-daytona.base_url={}".format(json.dumps(request["base_url"])))
    return overrides


def turn_settings(request: Request) -> dict[str, Any]:
    """The settings asked for this turn (`ask --model`, `--effort`), passed with the turn itself:
    on a thread the app-server has loaded, only the turn call changes them. As in Codex, they
    then stay for the thread's later turns."""
    settings: dict[str, Any] = {}
    if request.get("turn_model"):
        settings["model"] = request["turn_model"]
    if request.get("effort"):
        settings["effort"] = import_sdk().generated.v2_all.ReasoningEffort(request["effort"])
    return settings


def migrate_codex_home(home: str, codex_home: str) -> None:
    """Earlier versions kept CODEX_HOME in the work tree (`~/.codex`). If that one is ours (its
    config.toml names our provider), its threads and state move to `codex_home`, and the rest
    out of the work tree, where Codex would read it as the project's own config."""
    import shutil

    old = os.path.join(home, ".codex")
    if os.path.realpath(old) == os.path.realpath(codex_home):
        return
    try:
        with open(os.path.join(old, "config.toml"), encoding="utf-8") as fh:
            ours = 'model_provider = "codex-daytona"' in fh.read()
    except OSError:
        return
    if not ours:
        return
    os.makedirs(codex_home, exist_ok=True)
    # The threads themselves (rollout files); Codex's databases name them by their old
    # paths, so those stay behind and Codex indexes the moved threads anew.
    for name in ("sessions", "archived_sessions", "history.jsonl"):
        if os.path.exists(os.path.join(old, name)) and not os.path.exists(os.path.join(codex_home, name)):
            shutil.move(os.path.join(old, name), os.path.join(codex_home, name))
    leftover = os.path.join(os.path.dirname(codex_home), "old-codex-home")
    shutil.rmtree(leftover, ignore_errors=True)
    shutil.move(old, leftover)


class ResumeError(RuntimeError):
    """The request's thread could not be resumed, and the request forbids starting afresh."""


def wants_fresh_thread(request: Request) -> bool:
    """Whether the request starts a new thread because it names none (the sandbox's first
    turn), not because it asks for one (`--new-thread`) or for a thread that must resume."""
    return not request.get("thread_id") and not request.get("new_thread") and not request.get("must_resume")


# What Codex reads into a new thread's instructions as it starts it: AGENTS.md (or
# AGENTS.override.md) in CODEX_HOME and in the directories from the project's root down to the
# work tree. A thread prepared before one of them appeared or changed (`up --repo`'s clone, a
# `push`) would go without it: such a thread is not used.
INSTRUCTION_FILES = ("AGENTS.md", "AGENTS.override.md")


def instructions_stamp(cwd: str, codex_home: str) -> tuple[tuple[int, int] | None, ...]:
    """(mtime, size) of every file Codex could read instructions from, None where there is
    none: every directory from / down to `cwd` is looked at, a superset of the project's."""
    directories = [codex_home]
    path = os.path.abspath(cwd)
    while True:
        directories.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    stamp: list[tuple[int, int] | None] = []
    for directory in directories:
        for name in INSTRUCTION_FILES:
            try:
                st = os.stat(os.path.join(directory, name))
            except OSError:
                stamp.append(None)
            else:
                stamp.append((st.st_mtime_ns, st.st_size))
    return tuple(stamp)


class PreparedThread:
    """A new thread started ahead of the turn that will use it (`up` asks the daemon for one,
    `--prepare`), so that the sandbox's first turn does not wait for Codex's app-server and a
    new thread. It is taken by the next turn to start, and used by it only if that turn would
    have started a new thread on the same Codex with the same settings (FITS); any other turn
    drops it and goes on exactly as without it."""

    # The request fields a thread is started with besides what picks the app-server (the
    # Engine's signature: key, CODEX_HOME, config overrides, endpoint).
    FITS: tuple[Literal["model", "turn_model", "effort"], ...] = ("model", "turn_model", "effort")

    def __init__(
        self, thread: Any, signature: tuple[Any, ...], request: Request, instructions: tuple[Any, ...]
    ) -> None:
        self.thread = thread
        self.signature = signature
        self.settings = {name: request.get(name) or None for name in self.FITS}
        self.instructions = instructions  # instructions_stamp as the thread started

    def fits(self, request: Request, signature: tuple[Any, ...] | None, instructions: tuple[Any, ...]) -> bool:
        return (
            wants_fresh_thread(request)
            and signature == self.signature
            and all((request.get(name) or None) == value for name, value in self.settings.items())
            and instructions == self.instructions
        )


class Engine:
    """Owns the Codex app-server. It outlives turns, so the processes a turn starts in the
    background (dev servers) keep running, and a turn starts without paying for Codex's
    import and start-up. A new key or endpoint restarts it."""

    def __init__(self, home: str) -> None:
        self.home = home
        self._codex: Any = None
        self._signature: tuple[Any, ...] | None = None
        self._thread: Any = None
        self._prepared: PreparedThread | None = None
        # Held while the app-server and a thread are being made ready, by a turn or by
        # `prepare`: a turn that comes during a prepare waits for it, then takes its thread.
        self.starting = threading.Lock()

    def _ensure(self, request: Request) -> Any:
        sdk = import_sdk()

        codex_home = request.get("codex_home") or os.path.join(self.home, ".codex-daytona", "codex")
        migrate_codex_home(self.home, codex_home)
        signature = (request.get("api_key"), codex_home, tuple(config_overrides(request)))
        if self._codex is not None and signature == self._signature:
            return self._codex
        self.close()
        config = sdk.CodexConfig(
            cwd=self.home,
            env=codex_environment(request, codex_home, self.home),
            config_overrides=tuple(config_overrides(request)),
        )
        self._codex = sdk.Codex(config)
        self._signature = signature
        return self._codex

    def close(self) -> None:
        if self._codex is not None:
            with contextlib.suppress(Exception):
                self._codex.close()
        self._codex = None
        self._thread = None
        self._prepared = None

    def prepare(self, request: Request) -> str | None:
        """Starts the app-server for `request` (a turn's request without its prompt) and,
        when it names no thread, a new thread for the first turn to use (PreparedThread).
        Returns that thread's id. The caller holds `starting` and knows no turn runs."""
        codex = self._ensure(request)
        self._prepared = None
        if not wants_fresh_thread(request):
            return None
        before = self._instructions()
        thread = codex.thread_start(**self._thread_options(request))
        self._prepared = PreparedThread(thread, self._signature or (), request, before)
        return str(thread.id)

    def _instructions(self) -> tuple[Any, ...]:
        codex_home = self._signature[1] if self._signature else os.path.join(self.home, ".codex-daytona", "codex")
        return instructions_stamp(self.home, str(codex_home))

    def _thread_options(self, request: Request) -> dict[str, Any]:
        sdk = import_sdk()

        return {
            "cwd": self.home,
            "approval_mode": sdk.ApprovalMode.deny_all,
            "sandbox": sdk.Sandbox.full_access,
            "model": request.get("model") or None,
        }

    def _thread_for(self, codex: Any, request: Request, emit: Callable[[dict[str, Any]], None]) -> Any:
        sdk = import_sdk()

        # A thread prepared ahead serves one turn at most: this one if it fits, else none.
        prepared, self._prepared = self._prepared, None
        if prepared is not None and prepared.fits(request, self._signature, self._instructions()):
            self._thread = prepared.thread
            return self._thread
        options = self._thread_options(request)
        thread_id = request.get("thread_id")
        if request.get("new_thread") or not thread_id:
            self._thread = codex.thread_start(**options)
            return self._thread
        if self._thread is not None and self._thread.id == thread_id and not request.get("model"):
            return self._thread
        try:
            # Without include_turns=False Codex sends the whole history back, and a deprecation
            # notice about that ("Full-history hydration is deprecated") that exec shows as a warning.
            self._thread = codex.thread_resume(thread_id, include_turns=False, **options)
        except sdk.InvalidRequestError as exc:
            if request.get("must_resume"):  # `codex exec resume ID`: fail as exec does, never start afresh
                raise ResumeError(f"could not resume thread {thread_id}: {exc}") from None
            emit(
                {
                    "type": RESUME_FAILED,
                    "thread_id": thread_id,
                    "message": f"could not resume thread {thread_id} ({exc}); started a new thread",
                }
            )
            self._thread = codex.thread_start(**options)
        return self._thread

    def run_turn(
        self, request: Request, emit: Callable[[dict[str, Any]], None], interrupter: Interrupter
    ) -> RunCompleted:
        """Starts or resumes the thread, runs one turn, emits its events; returns what the
        run's closing event says of the turn (execute_run adds the run's own fields)."""
        sdk = import_sdk()

        # Codex may never answer a call that starts the turn (a request it cannot read): then
        # the app-server is stopped, which fails the call, and the run ends instead of holding
        # the sandbox's one turn forever.
        abandoned = threading.Event()

        def abandon() -> None:
            abandoned.set()
            self.close()

        timer = threading.Timer(START_TIMEOUT_S, abandon)
        timer.daemon = True
        timer.start()
        try:
            with self.starting:
                try:
                    codex = self._ensure(request)
                    thread = self._thread_for(codex, request, emit)
                except sdk.TransportClosedError:
                    if abandoned.is_set():
                        raise
                    # The app-server died between turns: start a fresh one once.
                    self.close()
                    codex = self._ensure(request)
                    thread = self._thread_for(codex, request, emit)
            emit({"type": "thread.started", "thread_id": thread.id})
            handle = thread.turn(turn_input(request), **turn_options(request), **turn_settings(request))
        except Exception:
            if abandoned.is_set():
                raise RuntimeError(f"Codex did not start the turn within {START_TIMEOUT_S:g} s") from None
            raise
        finally:
            timer.cancel()
        if abandoned.is_set():
            raise RuntimeError(f"Codex did not start the turn within {START_TIMEOUT_S:g} s")
        mapper = TurnMapper()
        interrupter.attach(handle)
        watchdog = Watchdog(mapper, interrupter, float(request.get("model_timeout") or MODEL_TIMEOUT_S))
        try:
            for notification in handle.stream():
                watchdog.touch()
                # Warnings belong to no turn and reach the app-server's global queue, before
                # the turn notification that follows them: exec shows them in that order.
                for method, params in _global_notifications(codex, thread.id):
                    for event in mapper.feed(method, params):
                        emit(event)
                params = notification.payload.model_dump(mode="json", by_alias=True)
                for event in mapper.feed(notification.method, params):
                    emit(event)
        finally:
            watchdog.stop()
            _global_notifications(codex, thread.id)  # what came after the turn belongs to no run
        return {
            "status": mapper.status,
            "thread_id": thread.id,
            "error": mapper.error,
            "final_message": mapper.final_message,
            "usage": mapper.turn_usage(),
        }


# The notifications exec shows that belong to no turn (warnings such as "Model metadata for
# `x` not found").
_WARNINGS = frozenset({"warning", "configWarning", "deprecationNotice"})


def _global_notifications(codex: Any, thread_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The warnings for this thread among the app-server's notifications that belong to no
    turn, taken off the SDK's queue for them (which nothing else reads, so it is emptied)."""
    import queue

    pending = getattr(getattr(getattr(codex, "_client", None), "_router", None), "_global_notifications", None)
    found: list[tuple[str, dict[str, Any]]] = []
    while pending is not None:
        try:
            notification = pending.get_nowait()
        except queue.Empty:
            break
        if isinstance(notification, BaseException) or notification.method not in _WARNINGS:
            continue
        params = notification.payload.model_dump(mode="json", by_alias=True)
        if params.get("threadId") in (None, thread_id):
            found.append((notification.method, params))
    return found


def turn_input(request: Request) -> list[Any]:
    """The turn's input items: the prompt, then the images uploaded for it (`--image`)."""
    sdk = import_sdk()

    return [sdk.TextInput(request["prompt"]), *(sdk.LocalImageInput(str(p)) for p in request.get("images") or [])]


def turn_options(request: Request) -> dict[str, Any]:
    """Options of `thread.turn(...)` that the request sets: the output schema (`--output-schema`)."""
    options: dict[str, Any] = {}
    if request.get("output_schema") is not None:
        options["output_schema"] = request["output_schema"]
    return options


class Watchdog:
    """Ends a turn whose model endpoint stopped answering.

    Codex has no timeout for a server that accepts a request and never sends headers, and its
    idle timeout for a stalled stream is long. While no command runs, silence from Codex means
    it waits on the model: after `limit` seconds of it the turn is interrupted and fails."""

    def __init__(self, mapper: TurnMapper, interrupter: Interrupter, limit: float) -> None:
        self.mapper = mapper
        self.interrupter = interrupter
        self.limit = limit
        self.fired = False
        self.message = f"the model endpoint did not answer for {limit:g} s"
        self._last = time.monotonic()
        self._done = threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()

    def touch(self) -> None:
        self._last = time.monotonic()

    def stop(self) -> None:
        self._done.set()

    def _watch(self) -> None:
        while not self._done.wait(min(1.0, self.limit / 4)):
            running = any(i.get("type") == "command_execution" for i in list(self.mapper.open_items.values()))
            if running:
                self.touch()
            elif time.monotonic() - self._last > self.limit:
                self.fired = True
                self.mapper.timeout_message = self.message
                with contextlib.suppress(Exception):
                    self.interrupter.interrupt()
                return
