"""Settings from the environment and a `.env` in the current directory. Imports nothing of ours
but the error module.

Built once by the CLI and passed down. Keys are SecretStr so that they never show up in a
repr, a log line or a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AnyHttpUrl, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from codex_daytona.errors import ConfigError

DEFAULT_API_URL = "https://app.daytona.io/api"

# Where to get (or how to write) each setting, for the errors that name it.
WHERE = {
    "DAYTONA_API_KEY": "create one at https://app.daytona.io/dashboard/keys",
    "DAYTONA_API_URL": "Daytona's API, https://app.daytona.io/api (a self-hosted Daytona: its URL ending in /api)",
    "SANDBOX_OPENAI_API_KEY": (
        "an OpenAI key from https://platform.openai.com/api-keys (or your gateway's key), "
        "or name a Daytona Secret holding it in SANDBOX_OPENAI_SECRET"
    ),
    "SANDBOX_OPENAI_BASE_URL": "a Responses-API endpoint such as https://api.openai.com/v1, or leave it unset",
}
OTHER_WHERE = "see .env.example for what it takes"

PositiveMinutes = Annotated[int, Field(ge=0, le=60 * 24 * 30)]


class Settings(BaseSettings):
    """Every setting codex-daytona reads. Field names are the environment variables."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        extra="ignore",
        case_sensitive=False,
    )

    daytona_api_key: SecretStr | None = None
    daytona_api_url: AnyHttpUrl = AnyHttpUrl(DEFAULT_API_URL)
    daytona_target: str | None = None
    sandbox_openai_api_key: SecretStr | None = None
    sandbox_openai_base_url: AnyHttpUrl | None = None
    # The name of a Daytona organisation Secret holding the OpenAI key. The sandbox then only
    # ever holds a placeholder; Daytona puts the real key in on outbound requests.
    sandbox_openai_secret: str | None = None
    codex_daytona_model: str | None = None
    codex_daytona_state_dir: Path | None = None
    # The sandbox commands use when --name is not given (default: "default").
    codex_daytona_sandbox: str | None = None
    # The most sandboxes `ask --fanout N` runs at once.
    codex_daytona_max_sandboxes: Annotated[int, Field(ge=1, le=50)] = 5
    # Create sandboxes from this Daytona snapshot (one with the agent runtime baked in starts fastest).
    codex_daytona_snapshot: str | None = None
    # Minutes of inactivity before Daytona stops the sandbox (0 = never). A running turn keeps
    # it active regardless.
    codex_daytona_auto_stop_minutes: PositiveMinutes = 30
    # Minutes a stopped sandbox is kept before Daytona deletes it: the backstop against
    # sandboxes orphaned by a crash (0 = never delete; default one week).
    codex_daytona_auto_delete_minutes: PositiveMinutes = 60 * 24 * 7
    # How long a detached turn (`ask --detach`) may run unwatched: Daytona never counts the
    # processes in a sandbox as activity, so the sandbox's auto-stop is raised to this while
    # such a turn runs, and put back by the next command that finds it over.
    codex_daytona_detach_minutes: Annotated[int, Field(ge=1, le=60 * 24)] = 120

    # While a turn runs, tell Daytona the sandbox is active this often, so auto-stop never
    # stops it mid-turn (Daytona counts API calls, not model thinking, as activity).
    codex_daytona_keepalive_seconds: Annotated[float, Field(gt=0, le=3600)] = 120.0
    # A turn's log stream that stays silent this long is taken for stalled and reconnected:
    # the agent sends an empty line after a third of it without an event.
    codex_daytona_stream_idle_seconds: Annotated[float, Field(ge=1, le=3600)] = 60.0

    # How long one request to Daytona may go unanswered before the command gives up (exit 7);
    # requests that carry their own (a command's run time, a transfer) keep theirs.
    codex_daytona_request_timeout_seconds: Annotated[float, Field(ge=1, le=3600)] = 30.0

    # A turn fails when the model endpoint stays silent this long while no command runs
    # (Codex itself never times out a server that accepts a request and does not answer).
    codex_daytona_model_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 300.0

    @field_validator("daytona_api_key", "sandbox_openai_api_key")
    @classmethod
    def _no_blank_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            return None
        if value is not None and any(c.isspace() for c in value.get_secret_value().strip()):
            raise ValueError("must not contain spaces")
        return value

    @property
    def api_url(self) -> str:
        return str(self.daytona_api_url).rstrip("/")

    @property
    def base_url(self) -> str | None:
        return str(self.sandbox_openai_base_url).rstrip("/") if self.sandbox_openai_base_url else None

    def missing(self, *, openai: bool) -> list[tuple[str, str]]:
        """The settings a command needs that are not set: (name, what is wrong)."""
        problems = []
        if self.daytona_api_key is None:
            problems.append(("DAYTONA_API_KEY", "is not set"))
        if openai and self.sandbox_openai_api_key is None and not self.sandbox_openai_secret:
            problems.append(("SANDBOX_OPENAI_API_KEY", "is not set"))
        return problems

    def require(self, *, openai: bool) -> None:
        """Every setting a command needs, all checked at once: one ConfigError naming each
        missing one, with where to get it."""
        problems = self.missing(openai=openai)
        if problems:
            raise settings_error(problems)

    def require_daytona_key(self) -> str:
        self.require(openai=False)
        assert self.daytona_api_key is not None
        return self.daytona_api_key.get_secret_value().strip()

    def openai_key_for_turn(self) -> str | None:
        """The key to hand the agent for a turn, or None in Daytona Secret mode."""
        if self.sandbox_openai_secret:
            return None
        return self.require_openai_key()

    def require_openai_key(self) -> str:
        """The OpenAI key; a turn needs Daytona's key too, so both are checked at once."""
        problems = self.missing(openai=True)
        if self.sandbox_openai_api_key is None and ("SANDBOX_OPENAI_API_KEY", "is not set") not in problems:
            problems.append(("SANDBOX_OPENAI_API_KEY", "is not set"))
        if problems:
            raise settings_error(problems)
        assert self.sandbox_openai_api_key is not None
        return self.sandbox_openai_api_key.get_secret_value().strip()

    def secrets(self) -> list[str]:
        """The secret values, so the output layer can mask them wherever they appear."""
        return [k.get_secret_value().strip() for k in (self.daytona_api_key, self.sandbox_openai_api_key) if k]


def settings_error(problems: list[tuple[str, str]]) -> ConfigError:
    """One error for every bad setting: the message names them all, the hint says, one line
    each, where to get them."""
    if len(problems) == 1:
        name, what = problems[0]
        message = f"{name} {what}."
    else:
        message = f"{len(problems)} settings need fixing: " + "; ".join(f"{n} {w}" for n, w in problems) + "."
    hint = "\n".join(f"{name}: {WHERE.get(name, OTHER_WHERE)}." for name, _ in dict(problems).items())
    return ConfigError(message, hint + "\nPut them in the environment or in a .env file here (see .env.example).")


def load_settings() -> Settings:
    """Settings, or one ConfigError naming every bad field (and the missing keys with them)."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = str(err["loc"][0]).upper() if err["loc"] else "setting"
            problems.append((name, f"is invalid ({err['msg']})"))
        invalid = {name for name, _ in problems}
        for name in ("DAYTONA_API_KEY", "SANDBOX_OPENAI_API_KEY"):
            if name not in invalid and not _env_or_dotenv(name):
                problems.append((name, "is not set"))
        raise settings_error(problems) from None


def _env_or_dotenv(name: str) -> bool:
    """Whether a setting has a non-empty value in the environment or in ./.env."""
    import os

    if os.environ.get(name, "").strip() or os.environ.get(name.lower(), "").strip():
        return True
    try:
        text = Path(".env").read_text(encoding="utf-8")
    except OSError:
        return False
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.strip().removeprefix("export ").strip().upper() == name and value.strip().strip("'\""):
            return True
    return False
