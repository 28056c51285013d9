"""push, pull, diff and up --repo end to end: the real CLI against the Daytona emulator, whose
sandbox home is a local directory (changing it directly is what the agent would do)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.e2e import Rig, add_files_push_leaves_behind

pytestmark = pytest.mark.e2e

BIG = 50 * 1024 * 1024


def tree(root: Path) -> dict[str, tuple[str, bytes, bool]]:
    """Every file and symlink below root: kind, content (or link target), executable bit."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                found[rel] = ("link", os.readlink(path).encode(), False)
            else:
                found[rel] = ("file", path.read_bytes(), bool(path.stat().st_mode & stat.S_IXUSR))
    return found


def make_project(root: Path) -> tuple[str, ...]:
    """A project with every kind of file; returns the paths push must leave behind."""
    (root / "bin").mkdir()
    (root / "bin" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "bin" / "run.sh").chmod(0o755)
    (root / "data").mkdir()
    (root / "data" / "blob.bin").write_bytes(bytes(range(256)) * 7 + b"\0\r\n\xff")
    with open(root / "big.bin", "wb") as f:
        f.write(os.urandom(BIG))
    (root / "dir with spaces").mkdir()
    (root / "dir with spaces" / "naïve ünïcødé ✓ 🚀.txt").write_text("ünïcødé\n")
    (root / "a" / "b" / "c" / "d").mkdir(parents=True)
    (root / "a" / "b" / "c" / "d" / "deep.txt").write_text("deep\n")
    (root / "empty.txt").write_bytes(b"")
    (root / "link-to-run").symlink_to("bin/run.sh")
    (root / "empty-dir").mkdir()
    return add_files_push_leaves_behind(root)


def test_push_then_pull_round_trips_byte_for_byte(rig: Rig, tmp_path: Path) -> None:
    assert rig.cli("up").code == 0
    home = Path(rig.emulator.home_dir(rig.record()["sandbox_id"]))
    left_behind = make_project(rig.project)
    pushed = {k: v for k, v in tree(rig.project).items() if k not in left_behind}

    result = rig.cli("push", "--json")
    assert result.code == 0, result
    summary = result.json_lines[0]
    assert summary["destination"] == str(home) and summary["files"] == len(pushed)
    for name in left_behind:
        assert not (home / name).exists(), f"{name} must not be pushed"
    assert "Traceback" not in result.stderr

    # Pull into a fresh directory: exactly the pushed files come back, byte for byte.
    fresh = tmp_path / "fresh"
    pulled = rig.cli("pull", "-q", ".", str(fresh))
    assert pulled.code == 0, pulled
    assert pulled.stdout.strip() == str(fresh)
    assert tree(fresh) == pushed
    assert not (fresh / "empty-dir").exists()  # like git, empty directories are not transferred

    # A local change is never overwritten without --force; nothing is written then.
    (home / "bin" / "run.sh").write_text("#!/bin/sh\necho from the agent\n")
    (home / "new.txt").write_text("new\n")
    (rig.project / "bin" / "run.sh").write_text("#!/bin/sh\necho my local edit\n")
    refused = rig.cli("pull")
    assert refused.code == 1, refused
    assert "bin/run.sh" in refused.stderr and "--force" in refused.stderr
    assert not (rig.project / "new.txt").exists()
    assert "my local edit" in (rig.project / "bin" / "run.sh").read_text()

    forced = rig.cli("pull", "--force")
    assert forced.code == 0, forced
    assert (rig.project / "bin" / "run.sh").read_text() == "#!/bin/sh\necho from the agent\n"
    assert os.access(rig.project / "bin" / "run.sh", os.X_OK)
    assert (rig.project / "new.txt").read_text() == "new\n"
    assert (rig.project / ".env").read_text().startswith("SANDBOX_OPENAI_API_KEY")  # untouched

    # push --to a subdirectory; pull a single file from it.
    sub = rig.cli("push", "data", "--to", "copies/data", "-q")
    assert sub.code == 0, sub
    assert sub.stdout.strip() == str(home / "copies" / "data")
    assert (home / "copies" / "data" / "blob.bin").read_bytes() == (rig.project / "data" / "blob.bin").read_bytes()
    one = rig.cli("pull", "copies/data/blob.bin", str(tmp_path / "one"))
    assert one.code == 0, one
    assert (tmp_path / "one" / "blob.bin").read_bytes() == (rig.project / "data" / "blob.bin").read_bytes()
    missing = rig.cli("pull", "no/such/path")
    assert missing.code == 1 and "No such file or directory in the sandbox" in missing.stderr


def test_diff_applies_cleanly_and_reproduces_the_sandbox(rig: Rig, tmp_path: Path) -> None:
    assert rig.cli("up").code == 0
    home = Path(rig.emulator.home_dir(rig.record()["sandbox_id"]))
    (rig.project / "src").mkdir()
    (rig.project / "src" / "app.py").write_text("print('v1')\n")
    (rig.project / "src" / "old.txt").write_text("to be deleted\n")
    (rig.project / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (rig.project / "tool.sh").write_text("#!/bin/sh\n")
    assert rig.cli("push").code == 0
    assert rig.cli("diff").stdout == "", "right after a push there is nothing to diff"
    base_copy = tmp_path / "copy"
    shutil.copytree(rig.project, base_copy, symlinks=True)

    # The agent edits, adds, deletes (text and binary), and changes a mode.
    (home / "src" / "app.py").write_text("print('v2')\nprint('more')\n")
    (home / "src" / "old.txt").unlink()
    (home / "src" / "new module.py").write_text("X = 1\n")
    (home / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(reversed(range(256))) * 5)
    (home / "assets").mkdir()
    (home / "assets" / "sound.bin").write_bytes(os.urandom(3000))
    (home / "tool.sh").chmod(0o755)
    (home / "node_modules" / "dep").mkdir(parents=True)
    (home / "node_modules" / "dep" / "index.js").write_text("cache, not work\n")

    result = rig.cli("diff")
    assert result.code == 0, result
    patch = tmp_path / "agent.patch"
    patch.write_text(result.stdout)
    assert "GIT binary patch" in result.stdout
    assert "node_modules" not in result.stdout and ".codex" not in result.stdout
    applied = subprocess.run(["git", "apply", str(patch)], cwd=base_copy, capture_output=True, text=True)
    assert applied.returncode == 0, applied.stderr
    sandbox_files = {k: v for k, v in tree(home).items() if k in tree(base_copy) or not k.startswith(".")}
    sandbox_files = {k: v for k, v in sandbox_files.items() if not k.startswith(("node_modules/",))}
    assert tree(base_copy) == sandbox_files

    listed = rig.cli("diff", "--json")
    assert listed.code == 0, listed
    changes = {c["path"]: c["status"] for c in listed.json_lines[0]["changes"]}
    assert changes == {
        "assets/sound.bin": "A",
        "logo.png": "M",
        "src/app.py": "M",
        "src/new module.py": "A",
        "src/old.txt": "D",
        "tool.sh": "M",
    }


def test_up_repo_clones_a_branch_into_the_home(rig: Rig, tmp_path: Path) -> None:
    def git(*args: str, cwd: Path) -> None:
        env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
        env["GIT_COMMITTER_EMAIL"] = "t@t"
        subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)

    work, bare = tmp_path / "work", tmp_path / "origin.git"
    work.mkdir()
    git("init", "-q", "-b", "main", cwd=work)
    (work / "README.md").write_text("main\n")
    (work / ".gitignore").write_text("dist/\n")
    git("add", "-A", cwd=work)
    git("commit", "-qm", "main", cwd=work)
    git("checkout", "-qb", "feature", cwd=work)
    (work / "feature.txt").write_text("only on the branch\n")
    git("add", "-A", cwd=work)
    git("commit", "-qm", "feature", cwd=work)
    git("clone", "-q", "--bare", str(work), str(bare), cwd=tmp_path)

    up = rig.cli("up", "--repo", f"file://{bare}", "--branch", "feature")
    assert up.code == 0, up
    home = Path(rig.emulator.home_dir(rig.record()["sandbox_id"]))
    assert (home / "feature.txt").read_text() == "only on the branch\n"
    assert (home / ".git").is_dir()
    assert rig.cli("diff").stdout == "", "the clone is the baseline"

    (home / "README.md").write_text("changed by the agent\n")
    (home / "dist").mkdir()
    (home / "dist" / "bundle.js").write_text("ignored by the repo's .gitignore\n")
    result = rig.cli("diff")
    assert result.code == 0, result
    assert "README.md" in result.stdout and "+changed by the agent" in result.stdout
    assert "dist/" not in result.stdout and "feature.txt" not in result.stdout

    again = rig.cli("up", "--repo", f"file://{bare}")
    assert again.code == 2, again
    assert "--repo only applies to a new sandbox" in again.stderr


def test_up_repo_with_a_bad_url_deletes_the_new_sandbox(rig: Rig, tmp_path: Path) -> None:
    result = rig.cli("up", "--repo", f"file://{tmp_path}/nope.git")
    assert result.code == 1, result
    assert "Could not clone" in result.stderr
    assert rig.record() == {}
