"""The pure parts of push and pull: what gets sent, packing, and safe unpacking."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from codex_daytona.errors import PullConflictError
from codex_daytona.sandbox import home_commands, runtime, transfer
from tests.e2e import add_files_push_leaves_behind


def _tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> tarfile.TarFile:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    buf.seek(0)
    return tarfile.open(fileobj=buf, mode="r:gz")


def _file(name: str, data: bytes = b"x", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info, data


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (_file("../x"), "path with .."),
        (_file("a/../../x"), "path with .."),
        (_file("/etc/passwd"), "absolute path"),
        (_link("evil", "/etc/passwd"), "link to an absolute path"),
        (_link("evil", "../outside"), "link outside the destination"),
        (_link("sub/evil", "../../outside"), "link outside the destination"),
        (_link("hard", "../outside", tarfile.LNKTYPE), "link outside the destination"),
        (_file(".git/hooks/post-checkout"), "inside .git or .codex-daytona"),
        (_file("sub/.codex-daytona/state.toml"), "inside .git or .codex-daytona"),
    ],
)
def test_unsafe_members_are_skipped(tmp_path: Path, member: tuple[tarfile.TarInfo, bytes | None], reason: str) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    with _tar(member, _file("ok.txt", b"fine")) as tar:
        plan = transfer.plan_pull(tar, dest)
        transfer.apply_pull(tar, plan, dest, force=False)
    assert plan.skipped == [(member[0].name, reason)]
    assert sorted(p.name for p in dest.iterdir()) == ["ok.txt"]
    assert not (tmp_path / "x").exists() and not (tmp_path / "outside").exists()


def test_links_inside_the_destination_are_kept(tmp_path: Path) -> None:
    with _tar(_file("sub/a.txt", b"a"), _link("sub/to-a", "a.txt"), _link("up", "sub/../sub/a.txt")) as tar:
        plan = transfer.plan_pull(tar, tmp_path)
        transfer.apply_pull(tar, plan, tmp_path, force=False)
    assert plan.skipped == []
    assert os.readlink(tmp_path / "sub" / "to-a") == "a.txt"
    assert (tmp_path / "up").read_bytes() == b"a"


def test_a_local_symlink_cannot_redirect_a_write_outside(tmp_path: Path) -> None:
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    (dest / "sub").symlink_to(outside)
    with _tar(_file("sub/x", b"evil")) as tar:
        plan = transfer.plan_pull(tar, dest)
    assert plan.skipped == [("sub/x", "goes outside the destination through a symlink")]
    assert not (outside / "x").exists()


def test_conflicts_refuse_without_force_and_write_nothing(tmp_path: Path) -> None:
    (tmp_path / "same.txt").write_bytes(b"same")
    (tmp_path / "mine.txt").write_bytes(b"local edit")
    with _tar(_file("same.txt", b"same"), _file("mine.txt", b"sandbox"), _file("new.txt", b"new")) as tar:
        plan = transfer.plan_pull(tar, tmp_path)
        assert plan.conflicts == ["mine.txt"] and plan.unchanged == ["same.txt"]
        with pytest.raises(PullConflictError, match=r"mine\.txt"):
            transfer.apply_pull(tar, plan, tmp_path, force=False)
    assert not (tmp_path / "new.txt").exists()
    assert (tmp_path / "mine.txt").read_bytes() == b"local edit"
    with _tar(_file("same.txt", b"same"), _file("mine.txt", b"sandbox"), _file("new.txt", b"new")) as tar:
        plan = transfer.plan_pull(tar, tmp_path)
        transfer.apply_pull(tar, plan, tmp_path, force=True)
    assert (tmp_path / "mine.txt").read_bytes() == b"sandbox"
    assert (tmp_path / "new.txt").read_bytes() == b"new"


def test_force_replaces_a_local_symlink_instead_of_writing_through_it(tmp_path: Path) -> None:
    dest, victim = tmp_path / "dest", tmp_path / "victim.txt"
    dest.mkdir()
    victim.write_bytes(b"keep me")
    (dest / "f.txt").symlink_to(victim)
    with _tar(_file("f.txt", b"incoming")) as tar:
        plan = transfer.plan_pull(tar, dest)
        assert plan.conflicts == ["f.txt"]
        transfer.apply_pull(tar, plan, dest, force=True)
    assert victim.read_bytes() == b"keep me"
    assert not (dest / "f.txt").is_symlink() and (dest / "f.txt").read_bytes() == b"incoming"


def test_push_listing_respects_gitignore_and_never_sends_secrets(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    (root / "src").mkdir(parents=True)
    (root / "src" / "app.py").write_text("print(1)\n")
    add_files_push_leaves_behind(root)
    (root / ".env.example").write_text("SECRET=")
    (root / ".codex-daytona").mkdir()
    (root / ".codex-daytona" / "state.toml").write_text("")
    expected = [".env.example", ".gitignore", "src/app.py"]
    # Not a git work tree: a throwaway git directory applies the same .gitignore rules.
    assert transfer.list_push_files(root) == expected
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "-f", ".env"], check=True)  # even if someone tracks it
    assert transfer.list_push_files(root) == expected


def test_archive_keeps_modes_links_and_bytes(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    (root / "blob").write_bytes(bytes(range(256)))
    (root / "empty").write_bytes(b"")
    (root / "link").symlink_to("run.sh")
    buf = io.BytesIO()
    stats = transfer.build_archive(root, ["blob", "empty", "link", "run.sh"], buf)
    assert stats.files == 4 and stats.bytes == 256 + len("#!/bin/sh\n")
    buf.seek(0)
    out = tmp_path / "out"
    with tarfile.open(fileobj=buf, mode="r:gz") as tar:
        plan = transfer.plan_pull(tar, out)
        transfer.apply_pull(tar, plan, out, force=False)
    assert os.access(out / "run.sh", os.X_OK)
    assert (out / "blob").read_bytes() == bytes(range(256))
    assert (out / "empty").read_bytes() == b""
    assert os.readlink(out / "link") == "run.sh"


def test_resolve_remote() -> None:
    assert transfer.resolve_remote("/home/daytona", None) == "/home/daytona"
    assert transfer.resolve_remote("/home/daytona", "src/") == "/home/daytona/src"
    assert transfer.resolve_remote("/home/daytona", "~/a") == "/home/daytona/a"
    assert transfer.resolve_remote("/home/daytona", "/tmp/x") == "/tmp/x"
    assert transfer.within("/home/daytona/src", "/home/daytona")
    assert not transfer.within("/home/daytonax", "/home/daytona")


def test_sandbox_commands_quote_user_paths(tmp_path: Path) -> None:
    """Paths and names from the user reach the shell quoted: run the commands on odd names."""
    odd = tmp_path / "it's; touch pwned #$(id) `id`"
    src = tmp_path / "src"
    src.mkdir()
    (src / "a b.txt").write_text("hi")
    archive = tmp_path / "a'rch $x.tar.gz"
    with open(archive, "wb") as out:
        transfer.build_archive(src, ["a b.txt"], out)
    done = subprocess.run(["bash", "-c", home_commands.push_extract_command(str(archive), str(odd))], cwd=tmp_path)
    assert done.returncode == 0
    assert (odd / "a b.txt").read_text() == "hi" and not archive.exists()
    layout = runtime.Layout(str(tmp_path))
    packed = tmp_path / "out.tar.gz"
    done = subprocess.run(
        ["bash", "-c", home_commands.pull_archive_command(layout, str(odd), str(packed), use_baseline=False)],
        cwd=tmp_path,
    )
    assert done.returncode == 0
    with tarfile.open(packed) as tar:
        assert [m.name for m in tar.getmembers() if m.isfile()] == ["./a b.txt"]
    assert not list(tmp_path.rglob("pwned"))


def test_gitignore_escape() -> None:
    assert home_commands.gitignore_escape(".bashrc") == ".bashrc"
    assert home_commands.gitignore_escape("#x*") == "\\#x\\*"
    exclude = home_commands.baseline_exclude_file([".profile", "!odd"]).decode()
    assert "/.profile\n" in exclude and "/\\!odd\n" in exclude and "/.codex-daytona/\n" in exclude
