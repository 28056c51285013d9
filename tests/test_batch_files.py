"""`batch`'s tasks file (refused up front, line by line, then streamed) and results file
(appended, durable, resumable after a kill mid-write)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from codex_daytona.batch_files import (
    RESULTS_SCHEMA,
    ResultsFile,
    TaskDefaults,
    check_tasks,
    done_ids,
    stream_tasks,
)
from codex_daytona.errors import ExitCode, UsageError


def write(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_tasks_are_read_with_the_command_lines_defaults_and_their_own(tmp_path: Path) -> None:
    (tmp_path / "proj").mkdir()
    tasks = write(
        tmp_path / "tasks.jsonl",
        json.dumps({"id": "a", "prompt": 'say "hi"\nand\tbye'}),
        "",
        json.dumps({"id": "b", "prompt": "p", "model": "gpt-x", "effort": "high", "dir": "proj", "check": "pytest"}),
        json.dumps({"id": "c", "prompt": "p", "repo": "https://example.com/r.git", "branch": "dev", "setup": "make"}),
    )
    defaults = TaskDefaults(model="gpt-5.5", effort="low")
    assert check_tasks(tasks, defaults).total == 3
    a, b, c = stream_tasks(tasks, defaults)
    assert (a.id, a.prompt, a.line, a.model, a.effort) == ("a", 'say "hi"\nand\tbye', 1, "gpt-5.5", "low")
    assert (b.line, b.model, b.effort, b.dir, b.check) == (3, "gpt-x", "high", str(tmp_path / "proj"), "pytest")
    assert (c.repo, c.branch, c.setup, c.dir) == ("https://example.com/r.git", "dev", "make", None)


def test_the_check_counts_the_tasks_still_to_run_that_share_a_preparation(tmp_path: Path) -> None:
    """The same repo and branch, or the same dir (however it is written), and the same setup:
    one group; a preparation only one task still to run has, or none, is no group."""
    (tmp_path / "proj").mkdir()
    repo = "https://example.com/r.git"
    tasks = write(
        tmp_path / "tasks.jsonl",
        *(
            json.dumps({"id": task_id, "prompt": "p", **fields})
            for task_id, fields in [
                ("r1", {"repo": repo, "setup": "make"}),
                ("r2", {"repo": repo, "setup": "make", "check": "pytest", "model": "other"}),
                ("r3", {"repo": repo, "setup": "make", "branch": "dev"}),
                ("r4", {"repo": repo}),
                ("d1", {"dir": "proj"}),
                ("d2", {"dir": "./proj/"}),
                ("d3", {"dir": "proj", "setup": "make"}),
                ("d4", {"dir": "proj", "setup": "make"}),
                ("n1", {}),
                ("n2", {"check": "true"}),
            ]
        ),
    )
    proj = str(tmp_path / "proj")
    checked = check_tasks(tasks, TaskDefaults())
    assert checked.total == 10
    assert checked.shared == {(repo, None, None, "make"): 2, (None, None, proj, None): 2, (None, None, proj, "make"): 2}
    # Resumed with d3 done: d4 alone has its preparation, and is no group.
    assert check_tasks(tasks, TaskDefaults(), done={"d3", "r1"}).shared == {(None, None, proj, None): 2}


def test_the_ids_a_results_file_has_are_read_without_writing_it(tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    assert done_ids(out) == set() and not out.exists()
    out.write_text('{"id": "a"}\n{"id": "b"}\nnot json\n{"id": "torn"')
    assert done_ids(out) == {"a", "b"}


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("{not json", "line 2: not JSON"),
        ('["a"]', "line 2: a JSON list, not an object"),
        ('{"prompt": "p"}', 'line 2: no "id"'),
        ('{"id": "x"}', "line 2: task 'x' has no \"prompt\""),
        ('{"id": "x", "prompt": "  "}', "line 2: task 'x' has no \"prompt\""),
        ('{"id": "x", "prompt": "p", "modle": "m"}', "line 2: unknown field 'modle'"),
        ('{"id": "x", "prompt": 3}', 'line 2: "prompt" must be a string'),
        ('{"id": "a/b", "prompt": "p"}', 'line 2: "id" must be one line'),
        ('{"id": "x", "prompt": "p", "effort": "huge"}', "line 2: 'huge' is not a reasoning effort"),
        ('{"id": "x", "prompt": "p", "branch": "b"}', 'has a "branch" but no "repo"'),
        ('{"id": "x", "prompt": "p", "repo": "r", "dir": "."}', 'both "repo" and "dir"'),
        ('{"id": "x", "prompt": "p", "dir": "nowhere"}', "\"dir\" 'nowhere' is not a directory"),
        ('{"id": "ok", "prompt": "again"}', "line 2: id 'ok' again (first on line 1)"),
    ],
)
def test_a_malformed_line_is_refused_up_front_with_its_number(tmp_path: Path, line: str, why: str) -> None:
    tasks = write(tmp_path / "tasks.jsonl", '{"id": "ok", "prompt": "p"}', line, '{"id": "z", "prompt": "p"}')
    with pytest.raises(UsageError) as refused:
        check_tasks(tasks, TaskDefaults())
    assert refused.value.message.startswith(f"{tasks}, line ") and why in refused.value.message
    assert refused.value.exit_code == ExitCode.USAGE and "nothing ran" in refused.value.hint


def test_an_empty_unreadable_or_binary_tasks_file_is_refused(tmp_path: Path) -> None:
    for content, why in ((b"\n\n", "has no tasks"), (b"\xff\xfe{", "is not UTF-8")):
        path = tmp_path / "t.jsonl"
        path.write_bytes(content)
        with pytest.raises(UsageError, match=why):
            check_tasks(path, TaskDefaults())
    with pytest.raises(UsageError, match="Cannot read the tasks file"):
        check_tasks(tmp_path / "missing.jsonl", TaskDefaults())


def test_streaming_holds_one_task_at_a_time(tmp_path: Path) -> None:
    """The driver's memory does not grow with the tasks file: checking it keeps only the ids,
    streaming it keeps nothing."""
    prompt = "x" * 2000

    def peak(n: int) -> int:
        path = write(tmp_path / f"{n}.jsonl", *(json.dumps({"id": f"t{i}", "prompt": prompt}) for i in range(n)))
        tracemalloc.start()
        try:
            check_tasks(path, TaskDefaults())
            for _task in stream_tasks(path, TaskDefaults()):
                pass
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak(40), peak(4000)
    # 100x the tasks (8 MB of prompts): what grows is the ids, ~100 bytes a task.
    assert large < small + 4000 * 250, (small, large)


def result(task_id: str, status: str = "passed") -> dict[str, object]:
    return {"id": task_id, "status": status, "final_message": "done"}


def test_results_are_appended_with_the_schema_and_read_back_on_resume(tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    with ResultsFile(out) as results:
        assert results.done == set()
        results.write(result("a"))
        results.write(result("b", "failed"))
        assert results.done == {"a", "b"}
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["schema"], r["id"], r["status"]) for r in lines] == [(RESULTS_SCHEMA, "a", "passed"), (1, "b", "failed")]
    with ResultsFile(out) as again:
        assert again.done == {"a", "b"}
        again.write(result("c", "timeout"))
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["a", "b", "c"]
    with ResultsFile(out) as results, pytest.raises(ValueError, match="unknown status"):
        results.write(result("d", "ok"))


def test_a_line_torn_by_a_kill_is_cut_off_and_its_task_is_not_done(tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    out.write_text(json.dumps(result("a")) + "\n" + '{"schema": 1, "id": "b", "sta')
    with ResultsFile(out) as results:
        assert results.done == {"a"}
        results.write(result("b"))
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["a", "b"]


def test_a_kill_9_while_writing_leaves_whole_lines_and_loses_none_written(tmp_path: Path) -> None:
    """A writer killed at a random moment: every line it had returned from write() for is
    there, whole, and a resume goes on from them."""
    out = tmp_path / "results.jsonl"
    acked = tmp_path / "acked"
    program = (
        "import sys; from pathlib import Path; from codex_daytona.batch_files import ResultsFile\n"
        "acked = open(sys.argv[2], 'a', buffering=1)\n"
        "with ResultsFile(Path(sys.argv[1])) as r:\n"
        "    i = 0\n"
        "    while True:\n"
        "        r.write({'id': f't{i}', 'status': 'passed', 'final_message': 'x' * 5000})\n"
        "        print(i, file=acked)\n"
        "        i += 1\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", program, str(out), str(acked)])
    try:
        while not acked.exists() or len(acked.read_text().splitlines()) < 20:
            assert writer.poll() is None, "the writer died"
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
    written = {f"t{line}" for line in acked.read_text().split()}
    with ResultsFile(out) as results:
        assert written <= results.done and len(results.done) - len(written) <= 1
    assert all(json.loads(line)["final_message"] == "x" * 5000 for line in out.read_text().splitlines())


def test_a_results_file_that_is_not_one_is_refused_and_left_alone(tmp_path: Path) -> None:
    out = tmp_path / "notes.txt"
    out.write_text("my notes\n")
    with pytest.raises(UsageError, match="line 1 is not a result line"):
        ResultsFile(out).__enter__()
    assert out.read_text() == "my notes\n"
