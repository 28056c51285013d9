"""What goes into the sandbox: Codex's config, the agent's command line and request."""

from __future__ import annotations

import json
import shlex

import tomllib

from codex_daytona import runtime
from codex_daytona.settings import Settings

NASTY = 'He said "hi" \'there\' $HOME `id` \\ \n[table]\nkey = "x"'


def test_codex_config_is_valid_toml_whatever_the_settings() -> None:
    settings = Settings(sandbox_openai_base_url="https://gw.example/v1", codex_daytona_model=NASTY)
    layout = runtime.Layout("/home/daytona")
    config = tomllib.loads(runtime.codex_config(settings, layout, "https://{PORT}-abc.proxy.daytona.works").decode())
    assert config["model"] == NASTY
    assert config["approval_policy"] == "never"
    assert config["sandbox_mode"] == "danger-full-access"
    assert config["features"]["unbounded_connection_retries"] is False
    provider = config["model_providers"][runtime.PROVIDER]
    assert provider["base_url"] == "https://gw.example/v1"
    assert provider["env_key"] == runtime.KEY_ENV
    assert provider["request_max_retries"] <= 3 and provider["stream_max_retries"] <= 3
    assert "{PORT}-abc.proxy.daytona.works" in config["developer_instructions"]
    assert "/home/daytona" in config["developer_instructions"]
    policy = config["shell_environment_policy"]
    assert policy["ignore_default_excludes"] is False and runtime.KEY_ENV in policy["exclude"]


def test_default_provider_is_openai() -> None:
    config = tomllib.loads(runtime.codex_config(Settings(), runtime.Layout("/h"), None).decode())
    assert config["model_providers"][runtime.PROVIDER]["base_url"] == runtime.DEFAULT_BASE_URL
    assert "model" not in config


def test_agent_command_holds_no_user_text_and_quotes_paths() -> None:
    layout = runtime.Layout("/home/with space/d")
    command = runtime.agent_command(layout, "20260101T000000-abc123")
    parts = shlex.split(command.split("&& exec ", 1)[1])
    assert parts[0] == "/home/with space/d/.codex-daytona/venv/bin/python"
    assert "--run-id" in parts and "20260101T000000-abc123" in parts


def test_agent_request_carries_prompt_intact_on_one_line() -> None:
    prompt = NASTY + "✓" * 10 + "x" * 100_000
    line = runtime.agent_request(
        prompt=prompt,
        api_key="sk-k",
        thread_id=None,
        new_thread=False,
        model=None,
        base_url=None,
        layout=runtime.Layout("/h"),
    )
    assert line.endswith("\n") and line.count("\n") == 1
    assert json.loads(line)["prompt"] == prompt


def test_parse_probe() -> None:
    assert runtime.parse_probe(f"{runtime.RUNTIME_MARKER}\n\n3.12\n") == (runtime.RUNTIME_MARKER, (3, 12))
    assert runtime.parse_probe("\n3.9\n") == ("", (3, 9))
    assert runtime.parse_probe("\nnone\n") == ("", None)


def test_fingerprint_changes_with_the_agent(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    before = runtime.runtime_fingerprint()
    monkeypatch.setattr(runtime, "agent_source", lambda: b"changed")
    assert runtime.runtime_fingerprint() != before
