"""`doctor`: checks, in order, everything `ask` needs."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from codex_daytona.errors import CodexDaytonaError, ConfigError
from codex_daytona.sandbox import runtime
from codex_daytona.usecases import lifecycle
from codex_daytona.usecases.context import Context


@dataclass
class Check:
    """One thing `doctor` checked: ok, or what is wrong and how to fix it."""

    name: str
    ok: bool
    detail: str
    hint: str = ""
    error: CodexDaytonaError | None = None

    @property
    def human(self) -> str:
        # A failed check's detail is the error printed below it.
        return f"{'ok':<5}{self.name:<10}{self.detail}" if self.ok else f"FAIL {self.name}"

    def to_json(self) -> dict[str, object]:
        return {"check": self.name, "ok": self.ok, "detail": self.detail, "hint": self.hint or None}


@dataclass(frozen=True)
class Ready:
    """Every check passed: nothing more on stdout for people (the checks and a closing line
    went to stderr) or for --json (one object per check was), `ok` for -q."""

    @property
    def human(self) -> str:
        return ""

    @property
    def quiet(self) -> str:
        return "ok"

    def to_json(self) -> None:
        return None


def doctor(ctx: Context, on_check: Callable[[Check], None]) -> list[Check]:
    """Checks, in order, what `ask` needs: the settings, Daytona (one request), the model
    endpoint (one `GET /models` where the provider offers it) and the snapshot new
    sandboxes start from. Stops at the first check that would make `ask` fail (the last
    one returned, not ok, with its error)."""
    checks: list[Check] = []

    def report(check: Check) -> bool:
        checks.append(check)
        on_check(check)
        return check.ok

    from codex_daytona.settings import settings_error

    missing = ctx.settings.missing(openai=True)
    if missing:
        error = settings_error(missing)
        report(Check("settings", False, error.message, error.hint, error))
        return checks
    mode = "a Daytona Secret" if ctx.settings.sandbox_openai_secret else "SANDBOX_OPENAI_API_KEY"
    if not report(Check("settings", True, f"Daytona key set; the OpenAI key comes from {mode}")):
        return checks
    try:
        count = len(lifecycle.all_sandboxes(ctx))
    except CodexDaytonaError as exc:
        report(Check("daytona", False, exc.message, exc.hint, exc))
        return checks
    if not report(Check("daytona", True, f"{ctx.settings.api_url} answers; {count} sandboxes of this tool")):
        return checks
    if not report(_check_model(ctx)):
        return checks
    report(_check_snapshot(ctx))
    return checks


def _check_model(ctx: Context) -> Check:
    import urllib.error
    import urllib.request

    base = ctx.settings.base_url or "https://api.openai.com/v1"
    if ctx.settings.sandbox_openai_secret and ctx.settings.sandbox_openai_api_key is None:
        return Check("model", True, f"{base}: not checked from here (the key is a Daytona Secret)")
    key = ctx.settings.require_openai_key()
    request = urllib.request.Request(f"{base}/models", headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            body = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            error: CodexDaytonaError = ConfigError(
                f"The model endpoint {base} refused the key (HTTP {exc.code}).",
                "Check SANDBOX_OPENAI_API_KEY (and SANDBOX_OPENAI_BASE_URL if you use a gateway).",
            )
            return Check("model", False, error.message, error.hint, error)
        # Not every provider lists models: only a refusal of the key is certain to fail a turn.
        return Check("model", True, f"{base} answers (no model list: HTTP {exc.code})")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        error = CodexDaytonaError(
            f"Could not reach the model endpoint {base} ({reason}).",
            "Check SANDBOX_OPENAI_BASE_URL and your network (the sandbox reaches it the same way).",
        )
        return Check("model", False, error.message, error.hint, error)
    ids = [str(m.get("id")) for m in body.get("data") or [] if isinstance(m, dict)]
    model = ctx.settings.codex_daytona_model
    if model and ids and model not in ids:
        error = ConfigError(
            f"The model endpoint {base} does not offer {model}.",
            f"Set CODEX_DAYTONA_MODEL to one it lists, e.g. {', '.join(ids[:3])}.",
        )
        return Check("model", False, error.message, error.hint, error)
    offered = f"offers {model}" if model else f"lists {len(ids)} models"
    return Check("model", True, f"{base} {offered}")


def _check_snapshot(ctx: Context) -> Check:
    name = ctx.settings.codex_daytona_snapshot
    try:
        if name:
            state = ctx.api.snapshot_state(name)
            if state == "active":
                return Check("snapshot", True, f"{name} is active; new sandboxes start from it")
            error: CodexDaytonaError = ConfigError(
                f"CODEX_DAYTONA_SNAPSHOT names {name}, which is {state or 'not on Daytona'}.",
                "Unset CODEX_DAYTONA_SNAPSHOT, or name an active snapshot (`codex-daytona snapshot` builds one).",
            )
            return Check("snapshot", False, error.message, error.hint, error)
        name = runtime.snapshot_name()
        state = ctx.api.snapshot_state(name)
    except CodexDaytonaError as exc:
        return Check("snapshot", False, exc.message, exc.hint, exc)
    if state == "active":
        return Check("snapshot", True, f"{name} is active; new sandboxes start with the runtime in place")
    return Check(
        "snapshot",
        True,
        f"{name} is {state or 'not built'}; the first `up` installs the runtime "
        "(`codex-daytona snapshot` makes every new sandbox start faster)",
    )
