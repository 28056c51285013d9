"""What goes into the sandbox: Codex's config, the agent's command line and request."""

from __future__ import annotations

import base64
import fnmatch
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


from codex_daytona.sandbox import home_commands, runtime
from codex_daytona.settings import Settings
from tests.ci import skip_unless_ci

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


def test_agent_command_carries_the_request_in_a_here_document_and_never_execs() -> None:
    layout = runtime.Layout("/home/with space/d")
    request = runtime.agent_request(
        prompt=NASTY + "\nCODEX_DAYTONA_x\n" + "✓",
        api_key="sk-secret-key",
        layout=layout,
    )
    command = runtime.agent_command(layout, "20260101T000000-abc123", request)
    first, *body, last = command.split("\n")
    parts = shlex.split(first)
    assert parts[0] == "/home/with space/d/.codex-daytona/venv/bin/python"
    assert "--run-id" in parts and "20260101T000000-abc123" in parts
    # A session sources its commands into one shell: `exec` or `exit` would end that shell.
    assert "exec" not in parts and "exit" not in command.split()
    marker = parts[-1].removeprefix("<<")
    assert first.endswith(f"<<'{marker}'") and last == marker and marker not in "".join(body)
    # The body is the request, base64: no user text and no key in the command's text.
    assert base64.b64decode("".join(body)).decode() == request
    assert "sk-secret-key" not in command and "NASTY" not in command


def test_agent_request_names_the_key_and_never_carries_it() -> None:
    prompt = NASTY + "✓" * 10 + "x" * 100_000
    line = runtime.agent_request(prompt=prompt, api_key="sk-k", layout=runtime.Layout("/h"))
    assert line.endswith("\n") and line.count("\n") == 1
    request = json.loads(line)
    assert request["prompt"] == prompt
    assert "sk-k" not in line and request["key_id"] == runtime.key_fingerprint("sk-k")


def test_parse_probe() -> None:
    assert runtime.parse_probe(f"{runtime.RUNTIME_MARKER}\n\n3.12\n") == (runtime.RUNTIME_MARKER, (3, 12))
    assert runtime.parse_probe("\n3.9\n") == ("", (3, 9))
    assert runtime.parse_probe("\nnone\n") == ("", None)


def test_fingerprint_changes_with_the_agent(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    before = runtime.runtime_fingerprint()
    changed = {**runtime.agent_files(), "agent.py": b"changed"}
    monkeypatch.setattr(runtime, "agent_files", lambda: changed)
    assert runtime.runtime_fingerprint() != before


def test_protected_config_covers_what_the_tool_depends_on_as_toml_values() -> None:
    settings = Settings(sandbox_openai_base_url="https://gw.example/v1")
    protected = runtime.protected_config(settings)
    provider = f"model_providers.{runtime.PROVIDER}"
    assert protected["model_provider"] == runtime.PROVIDER
    assert protected[f"{provider}.base_url"] == "https://gw.example/v1"
    assert protected["sandbox_mode"] == "danger-full-access" and protected["approval_policy"] == "never"
    # On the app-server's command line (`ps` shows it): the key's variable is never named, a
    # pattern in the environment policy hides it all the same.
    assert runtime.KEY_ENV not in json.dumps(protected)
    excluded = protected["shell_environment_policy.exclude"]
    assert isinstance(excluded, list) and any(fnmatch.fnmatchcase(runtime.KEY_ENV, p) for p in excluded)
    assert protected["shell_environment_policy.ignore_default_excludes"] is False
    assert protected["features.unbounded_connection_retries"] is False
    # Each is a JSON value that reads back as TOML too (as a `-c key=<JSON>` would).
    for key, value in protected.items():
        assert tomllib.loads(f"v = {json.dumps(value)}")["v"] == value, key
    # The CODEX_HOME the tool writes is out of the work tree.
    layout = runtime.Layout("/home/daytona")
    assert layout.codex_home.startswith(layout.root + "/")


def test_ask_c_refuses_the_tools_own_settings_and_takes_the_rest() -> None:
    settings = Settings()
    for pair in (
        "model_provider=evil",
        'model_providers.evil.base_url="http://x"',
        f"model_providers.{runtime.PROVIDER}.env_key=OTHER",
        "shell_environment_policy.inherit=all",
        "shell_environment_policy={}",
        'sandbox_mode="read-only"',
        "approval_policy=on-request",
        "features.unbounded_connection_retries=true",
        "features={}",
        "profile=other",
        ' "model_provider" = evil',
        "no-equals-sign",
        "=value",
    ):
        assert runtime.refused_config_key(pair, settings), pair
    for pair in ("model_reasoning_summary=detailed", "model_verbosity=low", "features.web_search_request=true"):
        assert runtime.refused_config_key(pair, settings) is None, pair


def _as_root_with_passwd_shell(
    tmp_path: Path, shell: str, command: str, *, read_only: bool = False, check: bool = True
) -> tuple[str, str]:
    """Runs `command` as root in a mount namespace whose /etc is a copy with root's login
    shell set to `shell` (the machine's own /etc is untouched); returns the command's output
    and root's login shell in the copy afterwards."""
    missing = [
        what
        for what, there in (
            ("root", os.geteuid() == 0),
            ("unshare", shutil.which("unshare")),
            ("usermod", shutil.which("usermod", path="/usr/sbin:/sbin")),
        )
        if not there
    ]
    if missing:
        skip_unless_ci(
            f"needs {', '.join(missing)} to give root another login shell in a mount namespace "
            "(run the suite as root on Linux, with util-linux and passwd installed)"
        )
    etc = tmp_path / "etc"
    shutil.copytree("/etc", etc, symlinks=True)
    passwd = etc / "passwd"
    lines = passwd.read_text().splitlines()
    root_with = {line: f"{line.rsplit(':', 1)[0]}:{shell}" for line in lines if line.startswith("root:")}
    passwd.write_text("".join(root_with.get(line, line) + "\n" for line in lines))
    remount = "mount -o remount,ro,bind /etc && " if read_only else ""
    script = f"mount --bind {shlex.quote(str(etc))} /etc && {remount}{command}"
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 or not check, done.stderr
    root = next(line for line in passwd.read_text().splitlines() if line.startswith("root:"))
    return done.stdout, root.rsplit(":", 1)[1]


def _setup_step_with_passwd_shell(tmp_path: Path, shell: str, *, read_only: bool = False) -> tuple[str, str]:
    return _as_root_with_passwd_shell(tmp_path, shell, home_commands.login_shell_step(), read_only=read_only)


def test_setup_makes_bash_the_login_shell_codex_runs_commands_with(tmp_path: Path) -> None:
    """Daytona's image gives its user /bin/sh (a bare `useradd -m` on Debian): Codex would then
    run commands with sh, which reads none of the start-up files that keep servers alive."""
    output, shell = _setup_step_with_passwd_shell(tmp_path, "/bin/sh")
    assert shell.endswith("/bash") and home_commands.parse_login_shell_unchanged(output) is None, (output, shell)
    output, shell = _setup_step_with_passwd_shell(tmp_path / "zsh", "/usr/bin/zsh")
    assert (output, shell) == ("", "/usr/bin/zsh")  # bash or zsh is left as it is


def test_setup_says_so_when_the_login_shell_cannot_be_changed(tmp_path: Path) -> None:
    output, shell = _setup_step_with_passwd_shell(tmp_path, "/bin/sh", read_only=True)
    assert shell == "/bin/sh"
    assert home_commands.parse_login_shell_unchanged(output) == "/bin/sh", output


def test_the_setup_command_up_runs_makes_bash_the_login_shell(tmp_path: Path) -> None:
    """The whole command `up` sends to finish setup (as provision.py builds it, with and without
    the baseline), not the step alone: a user whose shell is /bin/sh has bash afterwards. There
    is no agent in this home, so its start fails, and setup goes on past it as it does past a
    failed baseline."""
    home = tmp_path / "home"
    home.mkdir()
    for baseline in (False, True):
        command = home_commands.finish_setup_command(runtime.Layout(str(home)), baseline)
        output, shell = _as_root_with_passwd_shell(tmp_path / f"baseline-{baseline}", "/bin/sh", command, check=False)
        assert shell.endswith("/bash"), (baseline, output)
        assert home_commands.parse_login_shell_unchanged(output) is None, output
