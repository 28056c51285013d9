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

    def require_daytona_key(self) -> str:
        if self.daytona_api_key is None:
            raise ConfigError(
                "DAYTONA_API_KEY is not set.",
                "Create a key at https://app.daytona.io/dashboard/keys and put it in .env or the environment.",
            )
        return self.daytona_api_key.get_secret_value().strip()

    def openai_key_for_turn(self) -> str | None:
        """The key to hand the agent for a turn, or None in Daytona Secret mode."""
        if self.sandbox_openai_secret:
            return None
        return self.require_openai_key()

    def require_openai_key(self) -> str:
        if self.sandbox_openai_api_key is None:
            raise ConfigError(
                "SANDBOX_OPENAI_API_KEY is not set.",
                "Codex needs an OpenAI key (or your gateway's key): put it in .env or the environment, "
                "or name a Daytona Secret holding it in SANDBOX_OPENAI_SECRET.",
            )
        return self.sandbox_openai_api_key.get_secret_value().strip()

    def secrets(self) -> list[str]:
        """The secret values, so the output layer can mask them wherever they appear."""
        return [k.get_secret_value().strip() for k in (self.daytona_api_key, self.sandbox_openai_api_key) if k]


def load_settings() -> Settings:
    """Settings, or one ConfigError line per bad field."""
    try:
        return Settings()
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = str(err["loc"][0]).upper() if err["loc"] else "setting"
            lines.append(f"{name}: {err['msg']}")
        raise ConfigError("Invalid setting: " + "; ".join(lines)) from None
