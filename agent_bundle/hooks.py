"""The shell start-up files that hand each command Codex runs to a session of its own.

Written into the home by the engine (codex_environment) before it starts Codex; they run
detach.py, which is a program of its own.
"""

from __future__ import annotations

import os
import sys

# Codex gives every command a process group of its own and SIGKILLs that group when the
# command returns, which takes down a server the command left running in the background
# (`server &`, `(server &)`, `sh -c 'server &'`, ...). So every shell Codex starts first
# hands its whole command line to a new session (detach.py): whatever the
# command starts lives outside the group Codex kills, `$!` inside names the real process,
# and the outer shell waits for the command, relays its output and exits with its status.
# Bash reads BASH_ENV before its `-c` string, zsh reads $ZDOTDIR/.zshenv; DETACHED_ENV,
# exported, makes sure it happens once per Codex command and not again in nested shells.
DETACHED_ENV = "CODEX_DAYTONA_DETACHED"


# Not every shell Codex starts runs a command of the agent's: as a thread starts, Codex
# captures the login shell's environment (its shell snapshot: `SHELL -lc` with a script that
# prints "# Snapshot file") and then sources the result once to check it (`set -e; . "PATH"`).
# Those are left alone (a `case` pattern in both hooks): detached, they would read the login
# profile a second time, and a slow profile (nvm, conda) would keep a process that looks like
# one the turn left running alive past the turn, holding the late-port wait (PortWatch) and
# so the session. A command of the agent's that spells either out stays attached, which only
# costs it the detach.
CODEX_OWN_SHELLS = "*\"'# Snapshot file'\"*|'set -e; . \"'*/shell_snapshots/*'\"'"


BASH_HOOK = """# Written by codex-daytona's agent (BASH_ENV of the shells Codex starts): runs the
# command in a session of its own, so its background processes outlive the command.
if [ -z "${{{guard}-}}" ] && [ -n "${{BASH_EXECUTION_STRING-}}" ]; then
  case "$BASH_EXECUTION_STRING" in
    {codex_own}) ;;
    *)
      export {guard}=1
      if shopt -q login_shell; then set -- -lc; else set -- -c; fi
      exec {python} -I -S {detach} "$BASH" "$1" "$BASH_EXECUTION_STRING" {log} ;;
  esac
fi
"""


ZSH_HOOK = """# Written by codex-daytona's agent ($ZDOTDIR/.zshenv of the shells Codex starts): runs the
# command in a session of its own, then the user's own zsh files are read as usual.
if [[ -z "${{{guard}-}}" && -n "${{ZSH_EXECUTION_STRING-}}" ]]; then
  case "$ZSH_EXECUTION_STRING" in
    {codex_own}) ;;
    *)
      export {guard}=1
      if [[ -o login ]]; then set -- -lc; else set -- -c; fi
      exec {python} -I -S {detach} "$(command -v zsh || echo zsh)" "$1" "$ZSH_EXECUTION_STRING" {log} ;;
  esac
fi
ZDOTDIR="${{CODEX_DAYTONA_USER_ZDOTDIR:-$HOME}}"
[[ -r "$ZDOTDIR/.zshenv" ]] && . "$ZDOTDIR/.zshenv"
"""


def write_shell_hooks(home: str) -> dict[str, str]:
    """Writes the bash and zsh start-up files that detach each Codex command (see BASH_HOOK)
    and returns the environment that points Codex's shells at them."""
    import shlex

    root = os.path.join(home, ".codex-daytona", "shell")
    zdotdir = os.path.join(root, "zsh")
    os.makedirs(zdotdir, exist_ok=True)
    detach = os.path.join(os.path.dirname(os.path.abspath(__file__)), "detach.py")
    values = {
        "guard": DETACHED_ENV,
        "codex_own": CODEX_OWN_SHELLS,
        "python": shlex.quote(sys.executable),
        "detach": shlex.quote(detach),
        # Output a background job keeps writing once its command has returned.
        "log": shlex.quote(os.path.join(home, ".codex-daytona", "background.log")),
    }
    bash_env = os.path.join(root, "bash-env.sh")
    for path, text in ((bash_env, BASH_HOOK), (os.path.join(zdotdir, ".zshenv"), ZSH_HOOK)):
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text.format(**values))
    env = {"BASH_ENV": bash_env, "ZDOTDIR": zdotdir}
    if os.environ.get("ZDOTDIR"):
        env["CODEX_DAYTONA_USER_ZDOTDIR"] = os.environ["ZDOTDIR"]
    return env
