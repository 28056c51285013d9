"""What users wait for, measured against the Daytona emulator and the scripted model.

Usage: `make bench` or `.venv/bin/python benchmarks/bench.py [--runs N] [--verbose]`.

Everything runs on this machine: the Daytona emulator (tests/fakes/daytona.py) in this
process, the scripted Responses API (tests/fakes/model.py), the real CLI as a subprocess
(the `codex-daytona` console script of this virtualenv), the real agent and the real Codex
binary inside the emulated sandboxes. No network, no keys. Figures are medians over --runs
runs and are given as ratios against a baseline measured in the same run, because absolute
times depend on the machine and on whatever else runs on it. Nothing here fails on speed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e import DAYTONA_KEY, OPENAI_KEY  # noqa: E402
from tests.fakes.codex_home import codex_binary, codex_env, write_codex_home  # noqa: E402
from tests.fakes.daytona import DaytonaEmulator  # noqa: E402
from tests.fakes.model import ScriptedModel, msg, run, turn  # noqa: E402

OUR_VARS = ("DAYTONA_", "SANDBOX_OPENAI_", "CODEX_DAYTONA_", "OPENAI_", "CODEX_")
BIN = Path(sys.executable).parent
CLI = str(BIN / "codex-daytona")
COUNTED_KINDS = ("api", "toolbox", "ws")  # Socket.IO is the SDK's background channel: not a round trip
LATENCY_COMMANDS = 25  # each command is an item.started and an item.completed: 50 events and a few more


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


class RequestLog:
    """The emulator's JSON-lines request log, read from a mark onwards."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def since_mark(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self.path.open(encoding="utf-8") as fh:
            fh.seek(self.offset)
            entries = [json.loads(line) for line in fh if line.strip()]
        return [e for e in entries if e.get("kind") in COUNTED_KINDS]


@dataclass
class Bench:
    work: Path
    emulator: DaytonaEmulator
    model: ScriptedModel
    log: RequestLog
    verbose: bool = False
    projects: int = 0
    notes: dict[str, list[str]] = field(default_factory=dict)

    def env(self, state_dir: Path, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(OUR_VARS)}
        env.update(
            DAYTONA_API_KEY=DAYTONA_KEY,
            DAYTONA_API_URL=self.emulator.api_url,
            SANDBOX_OPENAI_API_KEY=OPENAI_KEY,
            SANDBOX_OPENAI_BASE_URL=self.model.base_url,
            CODEX_DAYTONA_MODEL="gpt-5.5",
            CODEX_DAYTONA_STATE_DIR=str(state_dir),
            CODEX_DAYTONA_SNAPSHOT="",  # no explicit snapshot: `up` looks up the one `snapshot` builds
            NO_COLOR="1",
            # This checkout's code, whatever the virtualenv's editable install points at.
            PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        )
        env.update(extra)
        return env

    def project(self) -> tuple[Path, Path]:
        self.projects += 1
        project = self.work / f"project-{self.projects}"
        project.mkdir()
        return project, project / ".state"

    def cli(self, project: Path, env: dict[str, str], *args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
        started = time.perf_counter()
        proc = subprocess.run(
            [CLI, *args], cwd=project, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=900
        )
        elapsed = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"`codex-daytona {' '.join(args)}` failed ({proc.returncode}):\n{proc.stderr}")
        return elapsed, proc

    def counted(self, label: str, call: Callable[[], Any]) -> tuple[Any, int]:
        self.log.mark()
        result = call()
        entries = self.log.since_mark()
        if self.verbose:
            calls = [f"{e['method']} {e['path']}" for e in entries]
            self.notes.setdefault(label, calls)
        return result, len(entries)


def timed(command: list[str], **kwargs: Any) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)
    return time.perf_counter() - started


def measure_help(runs: int) -> tuple[float, float]:
    ours, typer = [], []
    for _ in range(runs):
        ours.append(timed([CLI, "--help"]))
        typer.append(timed([sys.executable, "-c", "import typer"]))
    return median(ours), median(typer)


def measure_up(bench: Bench, runs: int, label: str, **extra: str) -> tuple[float, int]:
    times, trips = [], []
    for _ in range(runs):
        project, state = bench.project()
        env = bench.env(state, **extra)
        (elapsed, _), count = bench.counted(label, lambda project=project, env=env: bench.cli(project, env, "up"))
        times.append(elapsed)
        trips.append(count)
        bench.cli(project, env, "down", "--yes")
    return median(times), int(median(trips))


def measure_ask(bench: Bench, project: Path, env: dict[str, str], runs: int) -> tuple[float, float, int]:
    binary = codex_binary()
    if binary is None:
        raise SystemExit("No codex binary: `make install` installs openai-codex.")
    codex_home = write_codex_home(bench.work / "codex-home", bench.model.base_url)
    exec_dir = bench.work / "exec-workdir"
    exec_dir.mkdir()
    exec_env = {**{k: v for k, v in os.environ.items() if not k.startswith(OUR_VARS)}, **codex_env(codex_home)}
    exec_cmd = [str(binary), "exec", "--json", "--skip-git-repo-check", "--sandbox", "danger-full-access"]
    # One turn first on both sides, so neither pays a first-time cost in the figures.
    bench.model.enqueue(turn(msg("warm")))
    bench.cli(project, env, "ask", "-q", "warm up")
    bench.model.enqueue(turn(msg("warm")))
    timed([*exec_cmd, "-C", str(exec_dir), "warm up"], env=exec_env, stdin=subprocess.DEVNULL)
    ours, theirs, trips = [], [], []
    for i in range(runs):
        bench.model.enqueue(turn(msg(f"ok {i}")))
        (elapsed, _), count = bench.counted("ask", lambda i=i: bench.cli(project, env, "ask", "-q", f"say ok {i}"))
        ours.append(elapsed)
        trips.append(count)
        bench.model.enqueue(turn(msg(f"ok {i}")))
        theirs.append(timed([*exec_cmd, "-C", str(exec_dir), f"say ok {i}"], env=exec_env, stdin=subprocess.DEVNULL))
    return median(ours), median(theirs), int(median(trips))


def measure_latency(bench: Bench, project: Path, env: dict[str, str]) -> list[float]:
    """Milliseconds from the agent writing each event (its `ts`) to `ask --json` printing it."""
    steps = [turn(run(f"echo step {i}")) for i in range(LATENCY_COMMANDS)]
    bench.model.enqueue(*steps, turn(msg("done")))
    proc = subprocess.Popen(
        [CLI, "ask", "--json", "run the steps"],
        cwd=project,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        bufsize=1,
    )
    assert proc.stdout is not None
    latencies = []
    for line in proc.stdout:
        arrived = time.time()
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event.get("ts"), int | float):
            latencies.append((arrived - float(event["ts"])) * 1000)
    proc.wait(timeout=300)
    return latencies


FANOUT = 3


def measure_fanout(bench: Bench, project: Path, env: dict[str, str], runs: int, *, fork: bool) -> float:
    """Seconds from `ask --fanout 3` starting to the third sibling's turn reaching the model
    (its first request), with the siblings made by Daytona's fork, or (fork refused, as for a
    sandbox class that cannot fork) from a snapshot of the sandbox. Siblings are deleted
    after each run, untimed."""
    bench.emulator.set_config(refuse_fork=not fork)
    times = []
    try:
        for i in range(runs):
            bench.model.enqueue(*[turn(msg(f"ready {i}")) for _ in range(FANOUT)])
            seen = len(bench.model.requests)
            started = time.perf_counter()
            proc = subprocess.Popen(
                [CLI, "ask", "--fanout", str(FANOUT), "--new-thread", "-q", f"get ready {i}"],
                cwd=project,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            reached = None
            while reached is None and proc.poll() is None:
                turns = [r for r in bench.model.requests[seen:] if r.get("method") == "POST"]
                if len(turns) >= FANOUT:
                    reached = time.perf_counter() - started
                time.sleep(0.01)
            _, stderr = proc.communicate(timeout=900)
            if proc.returncode != 0 or reached is None:
                raise SystemExit(f"`ask --fanout {FANOUT}` failed ({proc.returncode}):\n{stderr}")
            if fork == ("saving a snapshot" in stderr):
                raise SystemExit(
                    f"`ask --fanout {FANOUT}` did not take the {'fork' if fork else 'snapshot'} path:\n{stderr}"
                )
            times.append(reached)
            for n in range(1, FANOUT + 1):
                bench.cli(project, env, "down", "--yes", "--name", f"default-{n}")
    finally:
        bench.emulator.set_config(refuse_fork=False)
    return median(times)


def fanout_row(fork: float, snap: float) -> tuple[str, str, str]:
    return (
        f"`ask --fanout {FANOUT}` to {FANOUT} running turns: fork / snapshot",
        f"{ratio(fork, snap)} ({fork:.1f} s / {snap:.1f} s)",
        "",
    )


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per measurement (medians are reported)")
    parser.add_argument("--verbose", action="store_true", help="also list the Daytona calls of each command")
    args = parser.parse_args(argv)
    runs = max(1, args.runs)

    with tempfile.TemporaryDirectory(prefix="codex-daytona-bench-") as tmp:
        work = Path(tmp)
        emulator = DaytonaEmulator(work / "daytona", DAYTONA_KEY, log_path=work / "requests.jsonl")
        emulator.start()
        model = ScriptedModel(log_dir=None)
        model.start()
        bench = Bench(work, emulator, model, RequestLog(work / "requests.jsonl"), verbose=args.verbose)
        try:
            print(f"Measuring, {runs} runs each (a few minutes)...", file=sys.stderr)
            help_ours, help_typer = measure_help(runs)
            up_fresh, trips_fresh = measure_up(bench, runs, "up fresh")
            project, state = bench.project()
            env = bench.env(state)
            (build, _), trips_build = bench.counted("snapshot", lambda: bench.cli(project, env, "snapshot"))
            up_snap, trips_snap = measure_up(bench, runs, "up from snapshot")
            bench.cli(project, env, "up")
            ask_ours, ask_exec, trips_ask = measure_ask(bench, project, env, runs)
            latencies = measure_latency(bench, project, env)
            fanout_runs = min(runs, 3)
            fanout_fork = measure_fanout(bench, project, env, fanout_runs, fork=True)
            fanout_snap = measure_fanout(bench, project, env, fanout_runs, fork=False)
            bench.cli(project, env, "down", "--yes")
        finally:
            model.stop()
            emulator.stop()

    rows = [
        (
            "`--help` / `python -c 'import typer'`",
            f"{ratio(help_ours, help_typer)} ({help_ours:.2f} s / {help_typer:.2f} s)",
            "<= 1.5x",
        ),
        (
            "`ask` (1 step) / `codex exec --json`",
            f"{ratio(ask_ours, ask_exec)} ({ask_ours:.2f} s / {ask_exec:.2f} s)",
            "",
        ),
        ("Daytona round trips: `up`, fresh", str(trips_fresh), ""),
        ("Daytona round trips: `up`, from snapshot", str(trips_snap), ""),
        ("Daytona round trips: `ask`, ready sandbox", str(trips_ask), "<= 4"),
        (
            f"event latency, median / max ({len(latencies)} events)",
            f"{median(latencies):.0f} ms / {max(latencies):.0f} ms" if latencies else "n/a (events carry no ts)",
            "median <= 100 ms",
        ),
        ("`up` fresh / `up` from snapshot", f"{ratio(up_fresh, up_snap)} ({up_fresh:.1f} s / {up_snap:.1f} s)", ""),
        ("`snapshot`, once / `up` fresh", f"{ratio(build, up_fresh)} ({build:.1f} s, {trips_build} round trips)", ""),
        fanout_row(fanout_fork, fanout_snap),
    ]
    widths = [max(len(r[i]) for r in [("measure", "median", "target"), *rows]) for i in range(3)]
    line = "| " + " | ".join(f"{{:<{w}}}" for w in widths) + " |"
    print(line.format("measure", "median", "target"))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line.format(*row))
    print(
        f"\nMedians of {runs} runs on this machine ({os.cpu_count()} cores), everything local: the Daytona emulator,\n"
        "the scripted model, the real CLI, agent and Codex binary. Wall times of whole processes\n"
        "(perf_counter around subprocess.run). `ask` runs on a ready sandbox (agent daemon warm, one\n"
        "warm-up turn first) and continues its thread; `codex exec --json` runs the same one-step\n"
        "scripted turn on this machine (stdin /dev/null, one warm-up run first). Round trips: requests\n"
        "in the emulator's log of kind api, toolbox or ws (Socket.IO left out). Event latency: arrival\n"
        "time of each `ask --json` line at this process minus the `ts` the agent stamped on it, over a\n"
        f"turn of {LATENCY_COMMANDS} commands (same clock). `up` fresh: no snapshot yet, the runtime is\n"
        "pip-installed in the sandbox; then `codex-daytona snapshot` builds the runtime snapshot once\n"
        "and `up` finds it by name. A sandbox is deleted (`down`) after each `up` run, untimed.\n"
        f"Fan-out: from `ask --fanout {FANOUT}` starting to the {FANOUT}rd sibling's first model request, siblings\n"
        "made with Daytona's fork, then with fork refused (the snapshot fallback); median of up to 3 runs."
    )
    if args.verbose:
        for label, calls in bench.notes.items():
            print(f"\n{label}:\n  " + "\n  ".join(calls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
