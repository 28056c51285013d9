"""Write a CODEX_HOME whose config.toml points Codex at a fake Responses API.

Usage::

    home = write_codex_home(tmp_path / "codex-home", model.base_url)
    env = codex_env(home)          # CODEX_HOME, FAKE_OPENAI_KEY, ... for the codex process

The config keeps Codex offline and quick to fail: it behaves as the tool's Codex in the
sandbox does (runtime.codex_behaviour: no plugins, which contact chatgpt.com and github.com,
no update check, no analytics, bounded connection retries), with no request/stream retries
by default.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import tomli_w

from codex_daytona.sandbox import runtime

FAKE_KEY_ENV = "FAKE_OPENAI_KEY"
FAKE_KEY = "test-key"


def codex_config(
    base_url: str,
    *,
    model: str = "gpt-5.5",
    retries: int = 0,
    stream_idle_timeout_ms: int = 300_000,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The config.toml content (as a dict) for a custom provider at ``base_url``.

    ``extra`` is merged at the top level (one level deep for tables).
    """
    config: dict[str, Any] = {
        "model": model,
        "model_provider": "custom",
        **runtime.codex_behaviour(),
        "model_providers": {
            "custom": {
                "name": "custom",
                "base_url": base_url,
                "wire_api": "responses",
                "env_key": FAKE_KEY_ENV,
                "request_max_retries": retries,
                "stream_max_retries": retries,
                "stream_idle_timeout_ms": stream_idle_timeout_ms,
            }
        },
    }
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def write_codex_home(home: Path, base_url: str, **options: Any) -> Path:
    """Create ``home`` and write ``home/config.toml`` (options: see ``codex_config``)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(tomli_w.dumps(codex_config(base_url, **options)))
    return home


def codex_env(home: Path, key: str = FAKE_KEY) -> dict[str, str]:
    """Environment variables for a codex process using ``home``. Its HOME is an empty
    directory beside it: the login shells Codex starts (`bash -lc`) read no profile of this
    machine's user (pyenv's rehash in one printed into a command's output under load)."""
    user_home = home.parent / f"{home.name}-user-home"
    user_home.mkdir(parents=True, exist_ok=True)
    return {
        "HOME": str(user_home),
        "CODEX_HOME": str(home),
        "CODEX_APP_SERVER_DISABLE_MANAGED_CONFIG": "1",
        FAKE_KEY_ENV: key,
    }


def codex_binary() -> Path | None:
    """The native codex binary shipped with ``openai-codex-cli-bin`` (or on PATH), if any."""
    try:
        from codex_cli_bin import bundled_codex_path  # type: ignore[import-untyped]

        return Path(bundled_codex_path())
    except (ImportError, FileNotFoundError):
        found = shutil.which("codex")
        return Path(found) if found else None
