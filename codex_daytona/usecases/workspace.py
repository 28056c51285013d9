"""Files between this machine and the sandbox: `push`, `pull` and `diff` (the archive work
is in transfer.py, the commands run in the sandbox in runtime.py).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from codex_daytona import events as ev
from codex_daytona.errors import DaytonaError, TransferError, UsageError
from codex_daytona.sandbox import home_commands, transfer
from codex_daytona.usecases import lifecycle
from codex_daytona.usecases.context import Box, Context, tail


@dataclass
class PushResult:
    sandbox_id: str
    destination: str
    files: int
    bytes: int
    baselined: bool

    @property
    def human(self) -> str:
        return f"Pushed {self.files} files ({self.bytes:,} bytes) to {self.destination}"

    @property
    def quiet(self) -> str:
        return self.destination

    def to_json(self) -> dict[str, object]:
        return {
            "sandbox_id": self.sandbox_id,
            "destination": self.destination,
            "files": self.files,
            "bytes": self.bytes,
            "baselined": self.baselined,
        }


@dataclass
class PullResult:
    sandbox_id: str
    source: str
    destination: Path
    written: int
    unchanged: int
    overwritten: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def human(self) -> str:
        unchanged = f", {self.unchanged} unchanged" if self.unchanged else ""
        return f"Pulled {self.written} files{unchanged} from {self.source} into {self.destination}"

    @property
    def quiet(self) -> str:
        return str(self.destination)

    def to_json(self) -> dict[str, object]:
        return {
            "sandbox_id": self.sandbox_id,
            "source": self.source,
            "destination": str(self.destination),
            "written": self.written,
            "unchanged": self.unchanged,
            "overwritten": self.overwritten,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
        }


@dataclass
class DiffResult:
    sandbox_id: str
    patch: bytes
    changes: list[tuple[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "sandbox_id": self.sandbox_id,
            "changes": [{"status": s, "path": p} for s, p in self.changes],
            "patch": self.patch.decode("utf-8", "replace"),
        }


def _ensure_baseline(ctx: Context, box: Box) -> bool:
    """Takes the diff baseline once (the home as `up` left it). False when git is missing."""
    layout = box.layout
    probe = box.run(home_commands.baseline_probe_command(layout), timeout=60)
    status, dotfiles = home_commands.parse_baseline_probe(probe.output)
    if status == "present":
        return True
    if status != "ready":
        ctx.emit(ev.warning("The sandbox has no git, so `codex-daytona diff` will not work in it."))
        return False
    box.upload({home_commands.baseline_exclude(layout): home_commands.baseline_exclude_file(dotfiles)})
    taken = box.run(home_commands.baseline_init_command(layout), timeout=600)
    if taken.exit_code != 0:
        ctx.emit(ev.warning(f"Could not record the diff baseline: {tail(taken.output)}"))
        return False
    return True


def push(ctx: Context, local: Path | None = None, remote: str | None = None) -> PushResult:
    """Uploads a local directory (its files git does not ignore) into the sandbox as one archive."""
    source = transfer.require_directory(local or ctx.project_dir)
    if ctx.record() is None:
        lifecycle.up(ctx)  # like `ask`: the first push creates the sandbox
    box = ctx.box()
    record, layout = box.record, box.layout
    dest = transfer.resolve_remote(record.home_dir, remote)
    paths = transfer.list_push_files(source)
    ctx.emit(ev.progress(f"Packing {len(paths)} files from {source}..."))
    token = secrets.token_hex(6)
    archive = f"{home_commands.transfer_dir(layout)}/push-{token}.tar.gz"
    path_list = f"{home_commands.transfer_dir(layout)}/push-{token}.list"
    with tempfile.TemporaryDirectory(prefix="codex-daytona-push-") as tmp:
        local_archive = Path(tmp) / "push.tar.gz"
        with open(local_archive, "wb") as out:
            stats = transfer.build_archive(source, paths, out)
        size = local_archive.stat().st_size
        ctx.emit(ev.progress(f"Uploading {stats.files} files ({_size(size)} compressed) to {dest}..."))
        listing = b"".join(os.fsencode(p) + b"\0" for p in paths)
        box.upload_from({archive: str(local_archive), path_list: listing})
    unpacked = box.run(home_commands.push_extract_command(archive, dest), timeout=900)
    if unpacked.exit_code != 0:
        box.run(home_commands.remove_command(path_list), timeout=60)
        raise TransferError(f"Unpacking in the sandbox failed: {tail(unpacked.output)}")
    baselined = False
    if transfer.within(dest, record.home_dir) and _ensure_baseline(ctx, box):
        rebased = box.run(home_commands.rebaseline_paths_command(layout, dest, path_list), timeout=600)
        baselined = rebased.exit_code == 0
        if not baselined:
            ctx.emit(ev.warning(f"Could not update the diff baseline: {tail(rebased.output)}"))
    else:
        box.run(home_commands.remove_command(path_list), timeout=60)
    return PushResult(record.sandbox_id, dest, stats.files, stats.bytes, baselined)


def pull(ctx: Context, remote: str | None = None, local: Path | None = None, *, force: bool = False) -> PullResult:
    """Downloads sandbox files as one archive and unpacks it locally, refusing to overwrite
    local files that differ unless `force`."""
    box = ctx.box()
    record, layout = box.record, box.layout
    source = transfer.resolve_remote(record.home_dir, remote)
    dest = (local or ctx.project_dir).absolute()
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"{dest} is not a directory.", "Pull into a directory (default: the current one).")
    archive = f"{home_commands.transfer_dir(layout)}/pull-{secrets.token_hex(6)}.tar.gz"
    ctx.emit(ev.progress(f"Packing {source} in the sandbox..."))
    command = home_commands.pull_archive_command(
        layout, source, archive, use_baseline=transfer.within(source, record.home_dir)
    )
    packed = box.run(command, timeout=900)
    if packed.exit_code != 0:
        box.run(home_commands.remove_command(archive), timeout=60)
        if packed.exit_code == home_commands.MISSING_PATH_EXIT:
            raise TransferError(f"No such file or directory in the sandbox: {source}")
        raise TransferError(f"Packing {source} in the sandbox failed: {tail(packed.output)}")
    with tempfile.TemporaryDirectory(prefix="codex-daytona-pull-") as tmp:
        local_archive = Path(tmp) / "pull.tar.gz"
        ctx.emit(ev.progress("Downloading..."))
        try:
            box.download_to(archive, str(local_archive))
        finally:
            with contextlib.suppress(DaytonaError):
                box.run(home_commands.remove_command(archive), timeout=60)
        with transfer.open_archive(local_archive) as tar:
            plan = transfer.plan_pull(tar, dest)
            if plan.conflicts and force:
                ctx.emit(ev.warning(f"Overwriting local changes: {transfer.describe(plan.conflicts)}"))
            try:
                transfer.apply_pull(tar, plan, dest, force=force)
            except (OSError, ValueError) as exc:
                raise TransferError(f"Unpacking into {dest} failed: {exc}") from exc
    for name, reason in plan.skipped:
        ctx.emit(ev.warning(f"Skipped {name}: {reason}."))
    files = [m for m in plan.write if not m.isdir()]
    return PullResult(
        record.sandbox_id,
        source,
        dest,
        written=len(files),
        unchanged=len(plan.unchanged),
        overwritten=list(plan.conflicts),
        skipped=plan.skipped,
    )


def diff(ctx: Context) -> DiffResult:
    """The agent's changes since the baseline, as a patch `git apply` accepts."""
    box = ctx.box()
    record, layout = box.record, box.layout
    patch_path = f"{home_commands.transfer_dir(layout)}/diff-{secrets.token_hex(6)}.patch"
    result = box.run(home_commands.diff_command(layout, patch_path), timeout=600)
    if result.exit_code == home_commands.NO_BASELINE_EXIT:
        raise TransferError(
            "This sandbox has no baseline to compare with (it predates `diff`, or has no git).",
            "`codex-daytona push` records one when the sandbox has git.",
        )
    if result.exit_code != 0:
        box.run(home_commands.remove_command(patch_path), timeout=60)
        raise TransferError(f"Computing the diff in the sandbox failed: {tail(result.output)}")
    with tempfile.TemporaryDirectory(prefix="codex-daytona-diff-") as tmp:
        local_patch = Path(tmp) / "changes.patch"
        try:
            box.download_to(patch_path, str(local_patch))
        finally:
            with contextlib.suppress(DaytonaError):
                box.run(home_commands.remove_command(patch_path), timeout=60)
        patch = local_patch.read_bytes()
    return DiffResult(record.sandbox_id, patch, home_commands.parse_changes(result.output))


def _size(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB" if n >= 100_000 else f"{n / 1000:.1f} kB"
