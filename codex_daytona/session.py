"""What a front door (`cli`, `codex_exec`) builds before it calls a use case: the settings,
their secrets masked in the output, and the context of the sandbox it works on."""

from __future__ import annotations

from typing import TYPE_CHECKING

from codex_daytona.errors import ConfigError, UsageError
from codex_daytona.settings import Settings
from codex_daytona.settings import load_settings as _load
from codex_daytona.state import DEFAULT_NAME, StateStore, check_name, state_dir
from codex_daytona.usecases.context import Context

if TYPE_CHECKING:
    from codex_daytona.output import Output


def load_settings(out: Output) -> Settings:
    """The settings (ConfigError names every missing or invalid one); `out` masks their secrets."""
    settings = _load()
    for secret in settings.secrets():
        out.add_secret(secret)
    return settings


def context_for(settings: Settings, name: str | None, out: Output) -> Context:
    """The context of sandbox `name` (--name), else CODEX_DAYTONA_SANDBOX's (a ConfigError
    when that is not a name), else "default"; its events go to `out`."""
    if name is None and settings.codex_daytona_sandbox:
        try:
            check_name(settings.codex_daytona_sandbox)
        except UsageError as exc:
            raise ConfigError(f"CODEX_DAYTONA_SANDBOX: {exc.message}", exc.hint) from None
    # An empty --name is a usage error, not the default.
    selected = check_name(name if name is not None else settings.codex_daytona_sandbox or DEFAULT_NAME)
    store = StateStore(state_dir(settings.codex_daytona_state_dir))
    return Context(settings, store, selected, emit=out.event)
