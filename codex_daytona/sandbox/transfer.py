"""Moving code in and out of the sandbox: what to send, how to pack it, how to unpack safely.

Local and pure: it never talks to Daytona and never prints. `push` lists a directory the way
git would (tracked plus untracked-but-not-ignored files), packs the list into one tar.gz;
`pull` checks an incoming tar.gz before writing anything (no absolute paths, no `..`, no
links that leave the destination, no local file silently overwritten) and then unpacks it.
Imports nothing of ours but errors.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from codex_daytona.errors import PullConflictError, TransferError, UsageError

# Never sent to the sandbox, never written by a pull, at any depth.
NEVER_TRANSFER_DIRS = frozenset({".git", ".codex-daytona"})
# Skipped when the directory cannot be listed with git (no git here).
FALLBACK_SKIP_DIRS = frozenset({".git", ".codex-daytona", ".venv", "venv", "node_modules", "__pycache__"})
# `.env.example` and friends are documentation, not secrets.
ENV_TEMPLATE_SUFFIXES = (".example", ".sample", ".template", ".dist")
CONFLICTS_SHOWN = 5
COPY_CHUNK = 1024 * 1024


def is_secret_env(name: str) -> bool:
    """`.env`, `.env.local`, `.env.production`...: never uploaded. `.env.example` is."""
    if name == ".env":
        return True
    return name.startswith(".env.") and not name.endswith(ENV_TEMPLATE_SUFFIXES)


def never_push(relpath: str) -> bool:
    parts = relpath.split("/")
    return any(p in NEVER_TRANSFER_DIRS for p in parts) or is_secret_env(parts[-1])


# --- listing what to push -----------------------------------------------------------------------


def _git(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["git", "-C", str(root), *args],
        capture_output=True,
        env={**os.environ, **(env or {})},
        check=False,
    )


def _split_z(output: bytes) -> list[str]:
    return [os.fsdecode(p) for p in output.split(b"\0") if p]


def _git_listing(root: Path) -> list[str] | None:
    """Paths git would consider part of `root`: tracked plus untracked-and-not-ignored.

    Inside a work tree that is `git ls-files`; elsewhere a throwaway git directory gives the
    same .gitignore semantics. None when git is not installed."""
    if shutil.which("git") is None:
        return None
    inside = _git(root, "rev-parse", "--is-inside-work-tree")
    if inside.returncode == 0 and inside.stdout.strip() == b"true":
        listed = _git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
        if listed.returncode == 0:
            return _split_z(listed.stdout)
        return None
    with tempfile.TemporaryDirectory(prefix="codex-daytona-git-") as tmp:
        env = {"GIT_DIR": tmp, "GIT_WORK_TREE": str(root), "GIT_CONFIG_NOSYSTEM": "1"}
        if _git(root, "init", "-q", "--bare", tmp).returncode != 0:
            return None
        _git(root, "config", "core.bare", "false", env={"GIT_DIR": tmp})
        listed = _git(root, "ls-files", "-z", "--others", "--exclude-standard", env=env)
        return _split_z(listed.stdout) if listed.returncode == 0 else None


def _walk(root: Path, under: str = "") -> list[str]:
    """Files and symlinks below root/under, skipping VCS, tool and cache directories."""
    found: list[str] = []
    start = root / under if under else root
    for dirpath, dirnames, filenames in os.walk(start):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if rel_dir == "." else rel_dir + "/"
        kept = []
        for name in sorted(dirnames):
            full = Path(dirpath) / name
            if full.is_symlink():
                filenames.append(name)  # os.walk does not follow it; send the link itself
            elif name not in FALLBACK_SKIP_DIRS:
                kept.append(name)
        dirnames[:] = kept
        found.extend(prefix + name for name in filenames)
    return found


def list_push_files(root: Path) -> list[str]:
    """The relative paths (files and symlinks, posix) `push` sends from `root`.

    Respects .gitignore (through git), never includes `.git/`, `.codex-daytona/` or `.env`
    files, and leaves out empty directories (as git does)."""
    listing = _git_listing(root)
    if listing is None:
        listing = _walk(root)
    paths: set[str] = set()
    for rel in listing:
        rel = rel.rstrip("/")
        full = root / rel
        if not os.path.lexists(full):
            continue  # tracked but deleted in the work tree
        if full.is_dir() and not full.is_symlink():
            paths.update(_walk(root, rel))  # a submodule or a nested repository: its files
        else:
            paths.add(rel)
    return sorted(p for p in paths if not never_push(p))


# --- packing --------------------------------------------------------------------------------------


@dataclass
class ArchiveStats:
    files: int = 0
    bytes: int = 0


def _anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def build_archive(root: Path, paths: Iterable[str], out: BinaryIO) -> ArchiveStats:
    """Packs root/<path> for each path into a tar.gz written to `out`: modes, symlinks, binary."""
    stats = ArchiveStats()
    with tarfile.open(fileobj=out, mode="w:gz", format=tarfile.PAX_FORMAT, compresslevel=6) as tar:
        for rel in paths:
            info = tar.gettarinfo(str(root / rel), arcname=rel)
            info = _anonymous(info)
            if info.isreg():
                with open(root / rel, "rb") as f:
                    tar.addfile(info, f)
                stats.bytes += info.size
            elif info.issym():
                tar.addfile(info)
            else:
                continue  # sockets, fifos, devices: nothing to send
            stats.files += 1
    return stats


# --- unpacking safely -----------------------------------------------------------------------------


def _inside(path: str, dest: str) -> bool:
    return path == dest or path.startswith(dest.rstrip(os.sep) + os.sep)


def unsafe_reason(member: tarfile.TarInfo, dest: Path) -> str | None:
    """Why extracting `member` under `dest` is not safe, or None when it is.

    Refuses absolute names, `..`, anything but files, directories and links, links that point
    outside `dest` (absolute targets included), and paths that reach outside through a
    symlink already on disk."""
    name = member.name
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts:
        return None if member.isdir() else "empty name"
    if ".." in parts:
        return "path with .."
    if any(p in NEVER_TRANSFER_DIRS for p in parts):
        return "inside .git or .codex-daytona"
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        return "not a file, directory or link"
    real_dest = os.path.realpath(dest)
    # The parent must resolve inside; the last component itself is replaced, never followed.
    parent = os.path.realpath(os.path.join(real_dest, *parts[:-1]))
    if not _inside(parent, real_dest):
        return "goes outside the destination through a symlink"
    if member.issym() or member.islnk():
        link = member.linkname
        if link.startswith("/"):
            return "link to an absolute path"
        base = posixpath.dirname("/".join(parts)) if member.issym() else ""
        resolved = posixpath.normpath(posixpath.join(base, link))
        if resolved == ".." or resolved.startswith("../"):
            return "link outside the destination"
        if not _inside(os.path.realpath(os.path.join(real_dest, resolved)), real_dest):
            return "link outside the destination"
    return None


def _same_content(tar: tarfile.TarFile, member: tarfile.TarInfo, local: Path) -> bool:
    if local.stat().st_size != member.size:
        return False
    incoming = tar.extractfile(member)
    if incoming is None:
        return False
    with incoming, open(local, "rb") as f:
        while True:
            a, b = incoming.read(COPY_CHUNK), f.read(COPY_CHUNK)
            if a != b:
                return False
            if not a:
                return True


@dataclass
class PullPlan:
    """What a pull would do. `conflicts` are local paths that differ from the incoming ones."""

    write: list[tarfile.TarInfo] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)  # a local directory where a file comes in
    skipped: list[tuple[str, str]] = field(default_factory=list)


def plan_pull(tar: tarfile.TarFile, dest: Path) -> PullPlan:
    """Checks every member before anything is written. Reads the archive once, front to back
    (comparing contents on the way), so a large .tar.gz is not decompressed over and over."""
    plan = PullPlan()
    for member in tar:
        reason = unsafe_reason(member, dest)
        if reason is not None:
            plan.skipped.append((member.name, reason))
            continue
        rel = "/".join(p for p in member.name.split("/") if p not in ("", "."))
        if not rel:
            continue
        local = dest / rel
        parent_clash = next(
            (p for p in list(Path(rel).parents)[:-1] if os.path.lexists(dest / p) and not (dest / p).is_dir()),
            None,
        )
        if parent_clash is not None:
            plan.conflicts.append(rel)
            plan.write.append(member)
            continue
        if member.isdir():
            if os.path.lexists(local) and not local.is_dir():
                plan.conflicts.append(rel)
            plan.write.append(member)
            continue
        if not os.path.lexists(local):
            plan.write.append(member)
            continue
        if local.is_dir() and not local.is_symlink():
            plan.blocked.append(rel)
        elif member.issym():
            if local.is_symlink() and os.readlink(local) == member.linkname:
                plan.unchanged.append(rel)
            else:
                plan.conflicts.append(rel)
                plan.write.append(member)
        elif member.isreg() and not local.is_symlink() and _same_content(tar, member, local):
            if (local.stat().st_mode & 0o111) == (member.mode & 0o111):
                plan.unchanged.append(rel)
            else:
                plan.write.append(member)  # same bytes, new mode: not a conflict
        else:
            plan.conflicts.append(rel)
            plan.write.append(member)
    return plan


def describe(paths: list[str], limit: int = CONFLICTS_SHOWN) -> str:
    shown = ", ".join(paths[:limit])
    more = len(paths) - limit
    return shown + (f" (and {more} more)" if more > 0 else "")


def apply_pull(tar: tarfile.TarFile, plan: PullPlan, dest: Path, *, force: bool) -> None:
    """Writes the plan. Without `force`, any conflict raises and nothing is written."""
    if plan.blocked:
        raise PullConflictError(
            f"{len(plan.blocked)} incoming file(s) would replace a local directory: {describe(plan.blocked)}",
            "Move or remove those directories, then pull again.",
        )
    if plan.conflicts and not force:
        raise PullConflictError(
            f"{len(plan.conflicts)} local file(s) differ from the sandbox's and would be overwritten: "
            f"{describe(plan.conflicts)}"
        )
    for rel in plan.conflicts:
        # Replace, never write through: a local symlink in the way must not redirect the write.
        local = dest / rel
        for parent in [*reversed(list(Path(rel).parents)[:-1])]:
            if os.path.lexists(dest / parent) and not (dest / parent).is_dir():
                (dest / parent).unlink()
        if os.path.lexists(local) and (local.is_symlink() or not local.is_dir()):
            local.unlink()
    dest.mkdir(parents=True, exist_ok=True)
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, members=plan.write, filter="data")
    else:  # Python without extraction filters (3.10.11 and older): our checks above are the filter
        tar.extractall(dest, members=plan.write)


def open_archive(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, mode="r:gz")
    except (tarfile.TarError, OSError) as exc:
        raise TransferError(f"The archive from the sandbox is unreadable: {exc}") from exc


def resolve_remote(home: str, remote: str | None) -> str:
    """A sandbox path: absolute as given, relative to the sandbox home otherwise."""
    if not remote or remote in (".", "~"):
        return home
    if remote.startswith("~/"):
        remote = remote[2:]
    path = remote if remote.startswith("/") else posixpath.join(home, remote)
    return posixpath.normpath(path)


def within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def require_directory(path: Path) -> Path:
    if not path.is_dir():
        raise UsageError(f"{path} is not a directory.", "Pass a directory to push (default: the current one).")
    return path.resolve()
