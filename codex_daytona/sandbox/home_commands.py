"""The sandbox home's side of setup and of moving files: the diff baseline, setup's one probe
and one finishing command, and the shell commands of push, pull, diff and clone.

Pure functions of paths, as `runtime` is; no I/O. Paths and names go into commands only
through `shlex.quote`.

The baseline is a git directory of our own (~/.codex-daytona/baseline.git) whose work tree is
the sandbox home. Its HEAD is the home as codex-daytona left it (at `up`, after a clone, after
each push); `diff` compares the home with it. It never touches a repository the project or the
agent has in the home (`~/.git` is skipped by git itself).
"""

from __future__ import annotations

import posixpath
import shlex

from codex_daytona.sandbox.runtime import Layout, parse_probe, probe_command, start_daemon_command

# Left out of the baseline, of `diff` and of a default `pull` (gitignore syntax). The sandbox's
# own dotfiles (.bashrc, .cache, ...) are added when the baseline is first taken.
TRANSFER_EXCLUDES = (
    "/.codex-daytona/",
    "/.daytona/",
    "/.codex/",
    "node_modules/",
    ".venv/",
    "__pycache__/",
    "*.pyc",
)
_GIT = (
    "git -c core.autocrlf=false -c core.safecrlf=false -c core.quotePath=false -c core.fileMode=true "
    "-c core.symlinks=true -c user.name=codex-daytona -c user.email=codex-daytona@localhost "
    "-c commit.gpgSign=false -c core.looseCompression=1"
)
# Exit code of the pull script when the path does not exist in the sandbox.
MISSING_PATH_EXIT = 44
NO_BASELINE_EXIT = 45
CHANGES_MARKER = "--codex-daytona-changes--"


def baseline_dir(layout: Layout) -> str:
    return f"{layout.root}/baseline.git"


def baseline_exclude(layout: Layout) -> str:
    return f"{layout.root}/baseline-exclude"


def transfer_dir(layout: Layout) -> str:
    return f"{layout.root}/transfer"


def gitignore_escape(name: str) -> str:
    """A file name as a gitignore pattern that matches only that name."""
    escaped = "".join("\\" + c if c in "*?[]\\" else c for c in name)
    if escaped.startswith(("#", "!")):
        escaped = "\\" + escaped
    if escaped.endswith(" "):
        escaped = escaped[:-1] + "\\ "
    return escaped


def baseline_exclude_file(system_entries: list[str]) -> bytes:
    """The baseline's exclude file: our own directories, caches, and the sandbox's dotfiles."""
    lines = ["# Written by codex-daytona: not part of the project, not in diff or pull.", *TRANSFER_EXCLUDES]
    lines += ["/" + gitignore_escape(name) for name in sorted(system_entries) if "\n" not in name]
    return ("\n".join(lines) + "\n").encode()


def _git_env(layout: Layout, index: str) -> str:
    q = shlex.quote
    return (
        f"export GIT_DIR={q(baseline_dir(layout))} GIT_WORK_TREE={q(layout.home)} "
        f"GIT_INDEX_FILE={q(index)} GIT_CONFIG_NOSYSTEM=1 GIT_LITERAL_PATHSPECS=1"
    )


def _snapshot_index() -> str:
    """Shell steps: the scratch index becomes the home as it is now (baseline files that are
    still there, plus every file git does not ignore). Nested repositories are left out."""
    return (
        f'{_GIT} read-tree HEAD 2>/dev/null || rm -f "$GIT_INDEX_FILE"; '
        f"{{ {_GIT} ls-files -z --cached; {_GIT} ls-files -z --others --exclude-standard; }} "
        f"| grep -zv '/$' | {_GIT} update-index -z --add --remove --stdin"
    )


def _commit_index(message: str) -> str:
    q = shlex.quote
    return (
        f"tree=$({_GIT} write-tree) && "
        f'if parent=$({_GIT} rev-parse -q --verify HEAD); then p="-p $parent"; else p=; fi && '
        f"commit=$({_GIT} commit-tree $tree $p -m {q(message)}) && {_GIT} update-ref HEAD $commit"
    )


def baseline_probe_command(layout: Layout) -> str:
    """Prints `present`, `nogit`, or `ready` followed by the home's top-level dotfiles (NUL-separated)."""
    q = shlex.quote
    script = (
        f"if [ -d {q(baseline_dir(layout))} ]; then echo present; "
        "elif ! command -v git >/dev/null 2>&1; then echo nogit; "
        f"else echo ready; cd {q(layout.home)} && find . -mindepth 1 -maxdepth 1 -name '.*' -print0; fi"
    )
    return "sh -c " + q(script)


def parse_baseline_probe(output: str) -> tuple[str, list[str]]:
    status, _, rest = output.partition("\n")
    entries = [e[2:] if e.startswith("./") else e for e in rest.split("\0") if e.strip()]
    return status.strip(), entries


SETUP_PROBE_SEPARATOR = "---codex-daytona-baseline---"
BASELINE_FAILED = "codex-daytona-baseline-failed:"


def setup_probe_command(layout: Layout) -> str:
    """One command that answers everything setup needs to know: the installed runtime, the
    sandbox's Python, and whether the diff baseline is taken (with the home's dotfiles)."""
    q = shlex.quote
    runtime_part = probe_command(layout)
    baseline_part = baseline_probe_command(layout)
    return f"{runtime_part}; echo {q(SETUP_PROBE_SEPARATOR)}; {baseline_part}"


def parse_setup_probe(output: str) -> tuple[str, tuple[int, int] | None, str, list[str]]:
    """(runtime marker, Python version, baseline status, home dotfiles)."""
    runtime_out, _, baseline_out = output.partition(SETUP_PROBE_SEPARATOR + "\n")
    marker, python = parse_probe(runtime_out)
    status, dotfiles = parse_baseline_probe(baseline_out)
    return marker, python, status, dotfiles


# Codex runs the agent's commands with the shell of the user's passwd entry, and only bash
# and zsh read the start-up files that keep servers alive (agent_bundle/hooks.py). Daytona's
# image makes its user with a bare `useradd -m` (images/sandbox/Dockerfile, v0.190.0), whose
# shell on Debian is /bin/sh; the user has passwordless sudo there.
LOGIN_SHELL_UNCHANGED = "codex-daytona-login-shell:"


def login_shell_step() -> str:
    """Makes bash (else zsh) the sandbox user's login shell when it is neither, as root or
    through `sudo -n`; prints LOGIN_SHELL_UNCHANGED and the shell when it cannot. Run before
    the agent starts Codex, which reads the passwd entry once, as it starts."""
    return (
        'u=$(id -un); s=$(getent passwd "$u" | cut -d: -f7); case "${s##*/}" in bash|zsh) ;; *) '
        'b=$(command -v bash || command -v zsh) && PATH="$PATH:/usr/sbin:/sbin" && '
        'if [ "$(id -u)" = 0 ]; then usermod -s "$b" "$u"; else sudo -n usermod -s "$b" "$u"; fi '
        f'>/dev/null 2>&1 || printf "%s %s\\n" {LOGIN_SHELL_UNCHANGED} "${{s:-unknown}}";; esac'
    )


def parse_login_shell_unchanged(output: str) -> str | None:
    """The login shell setup could not replace, if it could not."""
    for line in output.splitlines():
        if line.startswith(LOGIN_SHELL_UNCHANGED):
            return line[len(LOGIN_SHELL_UNCHANGED) :].strip()
    return None


def finish_setup_command(layout: Layout, baseline: bool, *, with_key: bool = False, prepare: str | None = None) -> str:
    """Makes bash the login shell if it is not (login_shell_step), takes the diff baseline
    (when asked) and starts the agent daemon (handing it the key from the command's
    environment when `with_key`, and making ready the turn `prepare` describes), in one
    command. A failed baseline or login shell is reported on a line of its own and does not
    stop the agent."""
    q = shlex.quote
    steps = [login_shell_step()]
    if baseline:
        steps.append(
            f"out=$({baseline_init_command(layout)} 2>&1) || "
            f'printf "%s %s\\n" {q(BASELINE_FAILED)} "$(printf "%s" "$out" | tail -n 3 | tr "\\n" " ")"'
        )
    # Last: its here-document (with `prepare`) runs to the end of the script.
    steps.append(start_daemon_command(layout, with_key=with_key, prepare=prepare))
    return "sh -c " + q("; ".join(steps))


def parse_baseline_failure(output: str) -> str | None:
    for line in output.splitlines():
        if line.startswith(BASELINE_FAILED):
            return line[len(BASELINE_FAILED) :].strip() or "unknown error"
    return None


def baseline_init_command(layout: Layout) -> str:
    """Creates the baseline git directory (if missing) and commits the home as it is."""
    q = shlex.quote
    base = baseline_dir(layout)
    index = f"{base}/codex-daytona-index"
    script = (
        "set -e; "
        f"if [ ! -d {q(base)} ]; then git init -q --bare {q(base)}; "
        f"git --git-dir={q(base)} config core.bare false; "
        f"git --git-dir={q(base)} config core.excludesFile {q(baseline_exclude(layout))}; fi; "
        f"{_git_env(layout, index)}; cd {q(layout.home)}; "
        f'{_snapshot_index()}; {_commit_index("baseline")}; rm -f "$GIT_INDEX_FILE"'
    )
    return "sh -c " + q(script)


def push_extract_command(archive: str, dest: str) -> str:
    """Unpacks a pushed archive into `dest` and removes it. Existing directories keep their modes."""
    q = shlex.quote
    script = (
        f"mkdir -p {q(dest)} && tar -xzf {q(archive)} -C {q(dest)} --no-same-owner --no-overwrite-dir; "
        f"status=$?; rm -f {q(archive)}; exit $status"
    )
    return "sh -c " + q(script)


def rebaseline_paths_command(layout: Layout, dest: str, path_list: str) -> str:
    """After a push: the pushed files (listed NUL-separated in `path_list`, relative to `dest`)
    take their pushed content in the baseline; everything else keeps its baseline content."""
    q = shlex.quote
    base = baseline_dir(layout)
    index = f"{base}/codex-daytona-index"
    script = (
        f"set -e; trap 'rm -f {q(path_list)}' EXIT; test -d {q(base)}; {_git_env(layout, index)}; "
        f'cd {q(dest)}; {_GIT} read-tree HEAD 2>/dev/null || rm -f "$GIT_INDEX_FILE"; '
        f"{_GIT} update-index -z --add --remove --stdin < {q(path_list)}; "
        f'{_commit_index("push")}; rm -f "$GIT_INDEX_FILE"'
    )
    return "sh -c " + q(script)


def rebaseline_all_command(layout: Layout) -> str:
    """The whole home becomes the baseline (after a clone)."""
    return baseline_init_command(layout)


def pull_archive_command(layout: Layout, remote: str, archive: str, *, use_baseline: bool) -> str:
    """Packs `remote` into `archive`: a directory's files that git does not ignore (with the
    baseline's excludes) or, without git, everything but our own and cache directories; a file
    as itself. Exits MISSING_PATH_EXIT when `remote` does not exist."""
    q = shlex.quote
    base = baseline_dir(layout)
    fallback_excludes = " ".join(
        f"--exclude={q(name)}" for name in (".codex-daytona", ".codex", ".git", "node_modules", ".venv", "__pycache__")
    )
    if use_baseline:
        listing = (
            f"if [ -d {q(base)} ] && command -v git >/dev/null 2>&1; then "
            f"export GIT_DIR={q(base)} GIT_WORK_TREE={q(layout.home)} "
            f"GIT_INDEX_FILE={q(archive + '.index')} GIT_CONFIG_NOSYSTEM=1; "
            f"{_GIT} ls-files -z --others --exclude-standard | grep -zv '/$' "
            f"| tar -czf {q(archive)} --null --no-recursion -T -; rm -f {q(archive + '.index')}; "
            f"else tar -czf {q(archive)} {fallback_excludes} .; fi"
        )
    else:
        listing = f"tar -czf {q(archive)} {fallback_excludes} ."
    script = (
        f"set -e; mkdir -p {q(posixpath.dirname(archive))}; "
        f"if [ -d {q(remote)} ]; then cd {q(remote)}; {listing}; "
        f"elif [ -e {q(remote)} ] || [ -L {q(remote)} ]; then "
        f"cd {q(posixpath.dirname(remote) or '/')}; tar -czf {q(archive)} -- {q(posixpath.basename(remote))}; "
        f"else echo 'No such file or directory' >&2; exit {MISSING_PATH_EXIT}; fi"
    )
    return "sh -c " + q(script)


def diff_command(layout: Layout, patch: str) -> str:
    """Writes the home's changes since the baseline to `patch` (a binary-safe unified diff that
    `git apply` accepts) and prints the changed paths (`git diff --name-status -z`)."""
    q = shlex.quote
    base = baseline_dir(layout)
    index = f"{base}/codex-daytona-diff-index"
    options = "--cached --binary --no-color --no-ext-diff --no-textconv --no-renames --src-prefix=a/ --dst-prefix=b/"
    script = (
        f"if [ ! -d {q(base)} ]; then exit {NO_BASELINE_EXIT}; fi; set -e; "
        f"mkdir -p {q(posixpath.dirname(patch))}; {_git_env(layout, index)}; cd {q(layout.home)}; "
        f"{_snapshot_index()}; {_GIT} diff {options} HEAD > {q(patch)}; "
        f"printf '%s\\n' {q(CHANGES_MARKER)}; {_GIT} diff --cached --no-renames --name-status -z HEAD; "
        'rm -f "$GIT_INDEX_FILE"'
    )
    return "sh -c " + q(script)


def parse_changes(output: str) -> list[tuple[str, str]]:
    """(status letter, path) pairs from the output of diff_command."""
    _, marker, rest = output.rpartition(CHANGES_MARKER + "\n")
    if not marker:
        return []
    fields = rest.split("\0")
    return [(fields[i], fields[i + 1]) for i in range(0, len(fields) - 1, 2) if fields[i]]


def clone_command(layout: Layout, url: str, branch: str | None) -> str:
    """Clones `url` into the sandbox home itself (the agent's working directory): the repository
    is fetched beside, its .git moved into the home, and its files checked out there."""
    q = shlex.quote
    tmp = f"{layout.root}/clone"
    branch_args = f"--branch {q(branch)} " if branch else ""
    script = (
        f"set -e; cd {q(layout.home)}; "
        "if [ -e .git ]; then echo 'The sandbox home is already a git repository.' >&2; exit 1; fi; "
        f"rm -rf {q(tmp)}; mkdir -p {q(layout.root)}; "
        f"git clone -q --no-checkout {branch_args}-- {q(url)} {q(tmp)}; "
        f"mv {q(tmp + '/.git')} .git; rm -rf {q(tmp)}; git reset -q --hard"
    )
    return "sh -c " + q(script)


def remove_command(*paths: str) -> str:
    return "rm -f -- " + " ".join(shlex.quote(p) for p in paths)
