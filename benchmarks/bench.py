"""What users wait for, measured against the Daytona emulator and the scripted model.

Usage: `make bench` or `.venv/bin/python benchmarks/bench.py [--runs N] [--verbose]`.

Everything runs on this machine: the Daytona emulator (tests/fakes/daytona.py) in this
process, the scripted Responses API (tests/fakes/model.py), the real CLI as a subprocess
(the `codex-daytona` console script of this virtualenv), the real agent and the real Codex
binary inside the emulated sandboxes. No network, no keys. Figures are medians over --runs
runs and are given as ratios against a baseline measured in the same run, because absolute
times depend on the machine and on whatever else runs on it. The exit code is 1 when a target is not met.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
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
# This checkout's CLI, through its entry point (`python -m` runs the same launcher as the
# `codex-daytona` script), whatever the virtualenv's editable install points at.
CLI = [sys.executable, "-m", "codex_daytona"]
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
            CODEX_DAYTONA_HELPER_DIR=str(self.work / "helper"),
            # As at a terminal: the bench's commands have none (and CI may be set), where the
            # helper is otherwise off.
            CODEX_DAYTONA_HELPER="1",
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
            [*CLI, *args], cwd=project, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=900
        )
        elapsed = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"`codex-daytona {' '.join(args)}` failed ({proc.returncode}):\n{proc.stderr}")
        return elapsed, proc

    def popen(self, project: Path, env: dict[str, str], *args: str, **streams: Any) -> subprocess.Popen[str]:
        """The CLI started in `project` and not waited for: no stdin, text `streams`."""
        return subprocess.Popen([*CLI, *args], cwd=project, env=env, stdin=subprocess.DEVNULL, text=True, **streams)

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


def start_helper(bench: Bench) -> None:
    """The first command starts the helper (as a user's first command does); waits until it listens."""
    project, state = bench.project()
    bench.cli(project, bench.env(state), "--version")
    deadline = time.monotonic() + 120
    while not list((bench.work / "helper").glob("helper-*.sock")):
        if time.monotonic() > deadline:
            raise SystemExit("The helper did not start.")
        time.sleep(0.1)


def measure_instant(bench: Bench, runs: int) -> dict[str, float]:
    """`--help`, `--version` and `status` with no sandbox, against `python -c 'import typer'`."""
    project, state = bench.project()
    env = bench.env(state)
    times: dict[str, list[float]] = {"--help": [], "--version": [], "status": [], "typer": []}
    for _ in range(runs):
        for label in ("--help", "--version", "status"):
            times[label].append(timed([*CLI, label], cwd=project, env=env, stdin=subprocess.DEVNULL))
        times["typer"].append(timed([sys.executable, "-c", "import typer"]))
    return {label: median(values) for label, values in times.items()}


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


def first_request_after(model: ScriptedModel, started: float) -> float:
    """Seconds from `started` (time.time()) to the first model request received after it."""
    stamps = [float(r["received_at"]) for r in model.model_requests if float(r["received_at"]) >= started]
    return min(stamps) - started if stamps else float("nan")


@dataclass
class AskFigures:
    to_model: float  # process start -> the model's first request, helper on (the default)
    to_model_in_process: float  # the same with CODEX_DAYTONA_HELPER=0
    exec_to_model: float  # local `codex exec --json` start -> its first model request
    wall: float
    wall_in_process: float
    exec_wall: float
    trips: int


def measure_ask(bench: Bench, project: Path, env: dict[str, str], runs: int) -> AskFigures:
    binary = codex_binary()
    if binary is None:
        raise SystemExit("No codex binary: `make install` installs openai-codex.")
    codex_home = write_codex_home(bench.work / "codex-home", bench.model.base_url)
    exec_dir = bench.work / "exec-workdir"
    exec_dir.mkdir()
    exec_env = {**{k: v for k, v in os.environ.items() if not k.startswith(OUR_VARS)}, **codex_env(codex_home)}
    exec_cmd = [str(binary), "exec", "--json", "--skip-git-repo-check", "--sandbox", "danger-full-access"]
    in_process = {**env, "CODEX_DAYTONA_HELPER": "0"}
    # Warm-up turns first, so none pays a first-time cost in the figures: the helper learns
    # from the first `ask` which modules an `ask` imports, and imports them before the second.
    for _ in range(2):
        bench.model.enqueue(turn(msg("warm")))
        bench.cli(project, env, "ask", "-q", "warm up")
    bench.model.enqueue(turn(msg("warm")))
    timed([*exec_cmd, "-C", str(exec_dir), "warm up"], env=exec_env, stdin=subprocess.DEVNULL)
    figures: dict[str, list[float]] = {k: [] for k in ("ours", "inproc", "exec", "w_ours", "w_inproc", "w_exec")}
    trips = []
    for i in range(runs):
        bench.model.enqueue(turn(msg(f"ok {i}")))
        started = time.time()
        (elapsed, _), count = bench.counted("ask", lambda i=i: bench.cli(project, env, "ask", "-q", f"say ok {i}"))
        figures["ours"].append(first_request_after(bench.model, started))
        figures["w_ours"].append(elapsed)
        trips.append(count)
        bench.model.enqueue(turn(msg(f"ok {i}")))
        started = time.time()
        elapsed, _ = bench.cli(project, in_process, "ask", "-q", f"say ok {i}")
        figures["inproc"].append(first_request_after(bench.model, started))
        figures["w_inproc"].append(elapsed)
        bench.model.enqueue(turn(msg(f"ok {i}")))
        started = time.time()
        figures["w_exec"].append(
            timed([*exec_cmd, "-C", str(exec_dir), f"say ok {i}"], env=exec_env, stdin=subprocess.DEVNULL)
        )
        figures["exec"].append(first_request_after(bench.model, started))
    m = {k: median(v) for k, v in figures.items()}
    return AskFigures(m["ours"], m["inproc"], m["exec"], m["w_ours"], m["w_inproc"], m["w_exec"], int(median(trips)))


NETWORK_RTT_MS = (0, 80)  # loopback, and a laptop far from Daytona's region


@dataclass
class FirstAndWarm:
    """A newcomer's first `ask` (right after `up`, which made its session and had the agent
    start Codex and a new thread for it) and the `ask` after it (same thread), with the
    emulator a round trip `rtt_ms` away."""

    rtt_ms: int
    first_to_model: float  # process start -> the model's first request
    warm_to_model: float
    first_trips: int
    warm_trips: int


def measure_first_and_warm(bench: Bench, runs: int, rtt_ms: int) -> FirstAndWarm:
    """Each run: `up` in a new project (from the runtime snapshot, untimed, no added round
    trip), then the first and the second `ask` timed with `rtt_ms` added to every Daytona
    request, then `down` (untimed)."""
    first, warm, first_trips, warm_trips = [], [], [], []
    for i in range(runs):
        project, state = bench.project()
        env = bench.env(state)
        bench.cli(project, env, "up")
        bench.emulator.set_config(rtt_ms=rtt_ms)
        try:
            for to_model, trips, prompt in ((first, first_trips, "first"), (warm, warm_trips, "again")):
                bench.model.enqueue(turn(msg(f"{prompt} {i}")))
                started = time.time()
                _, count = bench.counted(
                    f"ask, {prompt} (rtt {rtt_ms} ms)",
                    lambda project=project, env=env, prompt=prompt: bench.cli(project, env, "ask", "-q", prompt),
                )
                to_model.append(first_request_after(bench.model, started))
                trips.append(count)
        finally:
            bench.emulator.set_config(rtt_ms=0)
        bench.cli(project, env, "down", "--yes")
    return FirstAndWarm(rtt_ms, median(first), median(warm), int(median(first_trips)), int(median(warm_trips)))


def ask_json(bench: Bench, project: Path, env: dict[str, str], prompt: str) -> tuple[list[float], float]:
    """Runs `ask --json`; returns each event's latency (ms from the agent stamping it to this
    process reading it) and the ms from the agent stamping its last event to the exit."""
    proc = bench.popen(
        project, env, "ask", "--json", prompt, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=1
    )
    assert proc.stdout is not None
    latencies, last_ts = [], 0.0
    for line in proc.stdout:
        arrived = time.time()
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event.get("ts"), int | float):
            latencies.append((arrived - float(event["ts"])) * 1000)
            last_ts = max(last_ts, float(event["ts"]))
    proc.wait(timeout=300)
    exited = time.time()
    return latencies, (exited - last_ts) * 1000 if last_ts else float("nan")


def measure_latency(bench: Bench, project: Path, env: dict[str, str]) -> list[float]:
    """Milliseconds from the agent writing each event (its `ts`) to `ask --json` printing it."""
    steps = [turn(run(f"echo step {i}")) for i in range(LATENCY_COMMANDS)]
    bench.model.enqueue(*steps, turn(msg("done")))
    return ask_json(bench, project, env, "run the steps")[0]


def measure_exit(bench: Bench, project: Path, env: dict[str, str], runs: int) -> float:
    """Milliseconds from the agent's last event (its `ts`) to `ask --json` exiting."""
    delays = []
    for i in range(runs):
        bench.model.enqueue(turn(msg(f"bye {i}")))
        delays.append(ask_json(bench, project, env, f"say bye {i}")[1])
    return median(delays)


@dataclass
class Row:
    measure: str
    ours: str
    baseline: str
    ratio: str
    target: str
    met: bool | None

    def cells(self) -> tuple[str, ...]:
        verdict = "" if self.met is None else "met" if self.met else "NOT MET"
        return (self.measure, self.ours, self.baseline, self.ratio, self.target, verdict)


def ratio_row(measure: str, ours: float, base_label: str, base: float, limit: float | None, unit: str = "s") -> Row:
    r = ours / base if base else float("nan")
    return Row(
        measure,
        f"{ours:.2f} {unit}",
        f"{base_label} {base:.2f} {unit}",
        f"{r:.2f}x",
        f"<= {limit:g}x" if limit is not None else "",
        None if limit is None else r <= limit,
    )


FANOUT = 3


def measure_fanout(bench: Bench, project: Path, env: dict[str, str], runs: int, *, fork: bool) -> float:
    """Seconds from `ask --fanout 3` starting to the third sibling's turn reaching the model
    (its first request), with the siblings made by Daytona's fork, or (fork refused, as for a
    sandbox class that cannot fork) from a snapshot of the sandbox. Siblings are deleted
    after each run, untimed."""
    # Only VM-class sandboxes fork on Daytona; its default class, a container, cannot.
    bases = [sb["id"] for sb in bench.emulator.sandboxes() if sb["state"] != "destroyed"]
    for sandbox_id in bases:
        bench.emulator.set_sandbox_class(sandbox_id, "linux-vm" if fork else "container")
    times = []
    try:
        for i in range(runs):
            bench.model.enqueue(*[turn(msg(f"ready {i}")) for _ in range(FANOUT)])
            seen = len(bench.model.requests)
            fanout = ("ask", "--fanout", str(FANOUT), "--new-thread", "-q", f"get ready {i}")
            started = time.perf_counter()
            proc = bench.popen(project, env, *fanout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            reached = None
            while reached is None and proc.poll() is None:
                turns = [r for r in bench.model.requests[seen:] if r.get("method") == "POST"]
                if len(turns) >= FANOUT:
                    reached = time.perf_counter() - started
                time.sleep(0.01)
            _, stderr = proc.communicate(timeout=900)
            if proc.returncode != 0 or reached is None:
                raise SystemExit(f"`ask --fanout {FANOUT}` failed ({proc.returncode}):\n{stderr}")
            siblings = [
                sb
                for sb in bench.emulator.sandboxes()
                if sb["state"] != "destroyed" and sb["labels"].get("codex-daytona.name", "").startswith("default-")
            ]
            from_snapshot = any(str(sb.get("snapshot") or "").startswith("codex-daytona-fork-") for sb in siblings)
            if fork == from_snapshot:
                raise SystemExit(
                    f"`ask --fanout {FANOUT}` did not take the {'fork' if fork else 'snapshot'} path:\n{stderr}"
                )
            times.append(reached)
            for n in range(1, FANOUT + 1):
                bench.cli(project, env, "down", "--yes", "--name", f"default-{n}")
    finally:
        for sandbox_id in bases:
            bench.emulator.set_sandbox_class(sandbox_id, "container")
    return median(times)


BATCH_TASKS = 40
BATCH_PARALLEL = 8
BATCH_BIG = 400
# Runs a command and prints its peak RSS in KiB (getrusage of the waited child; Linux's unit).
PEAK_RSS = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL).returncode\n"
    "use = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "print(use.ru_maxrss, use.ru_utime + use.ru_stime, code)\n"
)


def busy_cpu_seconds() -> float | None:
    """CPU seconds every core of this machine has spent not idle since boot (/proc/stat);
    None where there is no /proc/stat (macOS)."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user, nice, system, irq, softirq: not idle, iowait, nor steal (time the hypervisor gave
    # another machine, which is no work done here); guest time is inside user already.
    busy = sum(fields[i] for i in (0, 1, 2, 5, 6) if i < len(fields))
    return busy / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuUse:
    """Where a run's CPU went, in CPU seconds: the whole machine, the command's own process
    (and its children), and this process (the emulator and the scripted model are threads of
    it). What is left is the emulated sandboxes' processes: the agent and Codex, which on
    Daytona run on each sandbox's own vCPUs, not on the machine the CLI runs on."""

    machine: float | None
    command: float
    stand_ins: float

    @property
    def sandboxes(self) -> float | None:
        return None if self.machine is None else max(0.0, self.machine - self.command - self.stand_ins)


class CpuMeter:
    def __init__(self) -> None:
        self.machine, self.own, self.children = busy_cpu_seconds(), time.process_time(), _children_cpu()

    def stop(self, command: float | None = None) -> CpuUse:
        """`command`: the CPU of the measured command where it was not a child of this process."""
        machine = busy_cpu_seconds()
        children = _children_cpu() - self.children
        return CpuUse(
            None if machine is None or self.machine is None else machine - self.machine,
            children if command is None else command,
            time.process_time() - self.own,
        )


def _children_cpu() -> float:
    import resource

    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


@dataclass
class BatchFigures:
    tasks: int
    wall: float  # `batch --parallel` from start to exit
    trips_per_task: float
    peak_rss_kib: int  # the driver's (CODEX_DAYTONA_HELPER=0: the command runs in its own process)
    cpu: CpuUse | None = None


def measure_batch(bench: Bench, tasks: int, parallel: int) -> BatchFigures:
    """`batch` over `tasks` one-step tasks (each its own sandbox, from the runtime snapshot),
    `parallel` at once; the driver's peak memory from the rusage of its own process."""
    project, state = bench.project()
    env = bench.env(state, CODEX_DAYTONA_HELPER="0")
    with (project / "tasks.jsonl").open("w") as fh:
        for i in range(tasks):
            fh.write(json.dumps({"id": f"t{i}", "prompt": f"task{i}: say ok"}) + "\n")
    bench.model.enqueue(*[turn(msg("ok"), match=f"task{i}:") for i in range(tasks)])
    command = [*CLI, "batch", "tasks.jsonl", "--parallel", str(parallel), "--out", "results.jsonl"]
    meter = CpuMeter()
    started = time.perf_counter()
    proc, trips = bench.counted(
        f"batch {tasks}",
        lambda: subprocess.run(
            [sys.executable, "-c", PEAK_RSS, *command], cwd=project, env=env, capture_output=True, text=True
        ),
    )
    wall = time.perf_counter() - started
    rss, driver_cpu, code = proc.stdout.split()
    cpu = meter.stop(command=float(driver_cpu))
    if code != "0":
        raise SystemExit(f"`codex-daytona batch` ({tasks} tasks) failed ({code}):\n{proc.stderr}")
    return BatchFigures(tasks, wall, trips / tasks, int(rss), cpu)


def measure_ask_loop(bench: Bench, tasks: int) -> tuple[float, CpuUse]:
    """The same tasks as a script's loop runs them: `ask --name tN` (a new sandbox each) then
    `down --name tN`, one after the other; seconds for all, and where the CPU went (the
    commands run in the helper, whose CPU is not told apart from the sandboxes')."""
    project, state = bench.project()
    env = bench.env(state)
    bench.model.enqueue(*[turn(msg("ok"), match=f"loop{i}:") for i in range(tasks)])
    meter = CpuMeter()
    started = time.perf_counter()
    for i in range(tasks):
        bench.cli(project, env, "ask", "-q", "--name", f"t{i}", f"loop{i}: say ok")
        bench.cli(project, env, "down", "--yes", "--name", f"t{i}")
    return time.perf_counter() - started, meter.stop()


@dataclass
class BatchSpeed:
    rtt_ms: int
    batch: BatchFigures
    loop: float  # seconds for the same tasks as a loop of `ask` + `down`
    loop_cpu: CpuUse | None = None


def measure_batch_speed(bench: Bench) -> list[BatchSpeed]:
    """`batch` against the loop, with Daytona on this machine and a network away (NETWORK_RTT_MS)."""
    speeds = []
    for rtt in NETWORK_RTT_MS:
        bench.emulator.set_config(rtt_ms=rtt)
        try:
            batch = measure_batch(bench, BATCH_TASKS, BATCH_PARALLEL)
            loop, loop_cpu = measure_ask_loop(bench, BATCH_TASKS)
            speeds.append(BatchSpeed(rtt, batch, loop, loop_cpu))
        finally:
            bench.emulator.set_config(rtt_ms=0)
    return speeds


def batch_rows(speeds: list[BatchSpeed], big: BatchFigures | None) -> list[Row]:
    rows = []
    for speed in speeds:
        small, loop, far = speed.batch, speed.loop, f", rtt {speed.rtt_ms} ms" if speed.rtt_ms else ""
        rows += [
            ratio_row(
                f"`batch` {small.tasks} tasks, --parallel {BATCH_PARALLEL}{far}",
                small.wall,
                "a loop of `ask` + `down`",
                loop,
                None,
            ),
            Row(f"  speed-up over the loop{far}", f"{loop / small.wall:.1f}x", "", "", ">= 4x", loop / small.wall >= 4),
        ]
    small = speeds[0].batch
    rows.append(Row("  Daytona requests per task", f"{small.trips_per_task:.1f}", "", "", "", None))
    rows += cpu_rows(speeds[0])
    if big is not None:
        rows.append(
            Row(
                f"  driver's peak memory, {small.tasks} / {big.tasks} tasks",
                f"{small.peak_rss_kib / 1024:.0f} / {big.peak_rss_kib / 1024:.0f} MiB",
                "",
                f"{big.peak_rss_kib / small.peak_rss_kib:.2f}x",
                "<= 1.5x",
                big.peak_rss_kib <= 1.5 * small.peak_rss_kib,
            )
        )
    return rows


def cpu_rows(speed: BatchSpeed) -> list[Row]:
    """Where the batch's CPU went, per task, and the most any driver could get here: the
    sandboxes' own work alone, spread over every core, against the loop as measured."""
    cpu, tasks, cores = speed.batch.cpu, speed.batch.tasks, os.cpu_count() or 1
    if cpu is None or cpu.machine is None or cpu.sandboxes is None:
        return []
    loop = speed.loop_cpu
    rows = [
        Row(
            "  CPU per task: all / driver / emulator+model / sandboxes",
            f"{cpu.machine / tasks:.2f} / {cpu.command / tasks:.2f} / {cpu.stand_ins / tasks:.2f} / "
            f"{cpu.sandboxes / tasks:.2f} s",
            f"loop: {loop.machine / tasks:.2f} s" if loop is not None and loop.machine is not None else "",
            "",
            "",
            None,
        ),
        Row(
            f"  cores busy in the batch / the loop (of {cores})",
            f"{cpu.machine / speed.batch.wall:.2f}",
            f"{loop.machine / speed.loop:.2f}" if loop is not None and loop.machine is not None else "",
            "",
            "",
            None,
        ),
    ]
    if cpu.sandboxes > 0:
        ceiling = speed.loop / (cpu.sandboxes / cores)
        rows.append(
            Row(
                "  ceiling here: driver, emulator and model at no CPU",
                f"{ceiling:.1f}x",
                "",
                "",
                "",
                None,
            )
        )
    return rows


def network_rows(figures: list[FirstAndWarm], exec_to_model: float) -> list[Row]:
    """A newcomer's first `ask` against the one after it, and the later `ask` against local
    `codex exec` plus the two round trips it cannot do without (start the command, follow its
    log), at each round-trip time."""
    rows = []
    for f in figures:
        net = f"rtt {f.rtt_ms} ms"
        rows.append(ratio_row(f"first `ask` -> model, {net}", f.first_to_model, "the next `ask`", f.warm_to_model, 1.2))
        base = exec_to_model + 2 * f.rtt_ms / 1000
        label = "`codex exec --json`" + (f" + 2 x {f.rtt_ms} ms" if f.rtt_ms else "")
        rows.append(ratio_row(f"next `ask` -> model, {net}", f.warm_to_model, label, base, 1.2 if f.rtt_ms else None))
        rows.append(
            Row(f"Daytona requests, first / next `ask`, {net}", f"{f.first_trips} / {f.warm_trips}", "", "", "", None)
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per measurement (medians are reported)")
    parser.add_argument("--verbose", action="store_true", help="also list the Daytona calls of each command")
    parser.add_argument("--batch-only", action="store_true", help="only `batch` against a loop of `ask`")
    parser.add_argument(
        "--batch-big", type=int, default=BATCH_BIG, help="tasks of the batch whose memory is compared (0: none)"
    )
    args = parser.parse_args(argv)
    runs = max(1, args.runs)
    if args.batch_only:
        return batch_only(args.batch_big)

    with bench_rig(verbose=args.verbose) as bench:
        emulator = bench.emulator
        print(f"Measuring, {runs} runs each (a few minutes)...", file=sys.stderr)
        start_helper(bench)
        instant = measure_instant(bench, runs)
        up_fresh, trips_fresh = measure_up(bench, runs, "up fresh")
        emulator.set_config(sandbox_uv=False)
        up_pip, _ = measure_up(bench, runs, "up fresh, no uv")
        emulator.set_config(sandbox_uv=True)
        project, state = bench.project()
        env = bench.env(state)
        (build, _), trips_build = bench.counted("snapshot", lambda: bench.cli(project, env, "snapshot"))
        up_snap, trips_snap = measure_up(bench, runs, "up from snapshot")
        first_warm = [measure_first_and_warm(bench, runs, rtt) for rtt in NETWORK_RTT_MS]
        bench.cli(project, env, "up")
        ask = measure_ask(bench, project, env, runs)
        latencies = measure_latency(bench, project, env)
        exit_helper = measure_exit(bench, project, env, runs)
        exit_in_process = measure_exit(bench, project, {**env, "CODEX_DAYTONA_HELPER": "0"}, runs)
        fanout_runs = min(runs, 3)
        fanout_fork = measure_fanout(bench, project, env, fanout_runs, fork=True)
        fanout_snap = measure_fanout(bench, project, env, fanout_runs, fork=False)
        bench.cli(project, env, "down", "--yes")
        speeds = measure_batch_speed(bench)
        big = measure_batch(bench, args.batch_big, BATCH_PARALLEL) if args.batch_big else None

    typer_s = instant["typer"]
    rows = [
        ratio_row(
            "`ask` start -> the model's first request", ask.to_model, "`codex exec --json`", ask.exec_to_model, 2
        ),
        ratio_row(
            "  the same, helper off (CODEX_DAYTONA_HELPER=0)",
            ask.to_model_in_process,
            "`codex exec --json`",
            ask.exec_to_model,
            None,
        ),
        ratio_row("`ask` wall time, 1-step turn", ask.wall, "`codex exec --json`", ask.exec_wall, None),
        ratio_row("  the same, helper off", ask.wall_in_process, "`codex exec --json`", ask.exec_wall, None),
        Row(
            "`ask`: the agent's last event -> exit",
            f"{exit_helper:.0f} ms",
            f"helper off {exit_in_process:.0f} ms",
            "",
            "<= 100 ms",
            exit_helper <= 100 and exit_in_process <= 100,
        ),
        Row("Daytona requests per `ask`, ready sandbox", str(ask.trips), "", "", "<= 2", ask.trips <= 2),
        *network_rows(first_warm, ask.exec_to_model),
        Row(
            f"event latency, median / max ({len(latencies)} events)",
            f"{median(latencies):.0f} / {max(latencies):.0f} ms" if latencies else "n/a",
            "",
            "",
            "median <= 100 ms",
            bool(latencies) and median(latencies) <= 100,
        ),
        ratio_row("`up`, fresh (uv in the sandbox)", up_fresh, "the same without uv (pip)", up_pip, 0.5),
        Row("`up`, from the snapshot", f"{up_snap:.2f} s", "", "", "< 2 s", up_snap < 2),
        Row("Daytona requests: `up` fresh / from the snapshot", f"{trips_fresh} / {trips_snap}", "", "", "", None),
        Row("`snapshot`, once", f"{build:.1f} s ({trips_build} requests)", "", "", "", None),
        *(
            ratio_row(
                f"`{label}`" + (" (no sandbox)" if label == "status" else ""),
                instant[label],
                "`import typer`",
                typer_s,
                1.5,
            )
            for label in ("--help", "--version", "status")
        ),
        Row(
            f"`ask --fanout {FANOUT}` to {FANOUT} running turns: fork / snapshot fallback (up to 3 runs)",
            f"{fanout_fork:.1f} s",
            f"{fanout_snap:.1f} s",
            f"{fanout_fork / fanout_snap:.2f}x" if fanout_snap else "",
            "",
            None,
        ),
        *batch_rows(speeds, big),
    ]
    missed = print_rows(rows)
    print(
        f"\nMedians of {runs} runs on this machine ({os.cpu_count()} cores), everything local: the Daytona\n"
        "emulator, the scripted model, the real CLI (as `python -m codex_daytona`, this checkout), agent\n"
        "and Codex binary. `ask` runs on a ready sandbox (agent daemon warm, two warm-up turns first, the\n"
        "helper started by an earlier command) and continues its thread. Start -> first model request:\n"
        "from just before the process is spawned to the scripted model receiving the turn's first\n"
        "request (its own clock, the same machine), against `codex exec --json` running the same\n"
        "one-step turn here (stdin /dev/null, one warm-up run first). Last event -> exit: from the `ts`\n"
        "the agent stamped on the turn's last event to `ask --json` having exited. Requests: the\n"
        "emulator's log, kinds api, toolbox and ws (the SDK's background Socket.IO left out). `up`\n"
        "fresh installs the runtime (uv, else pip; the bench's baseline hides uv from the sandbox);\n"
        "a sandbox is deleted (`down`) after each `up` run, untimed.\n"
        "First / next `ask`: in a new project each run, `up` from the snapshot (untimed; it makes the\n"
        "session and has the agent start Codex and the first turn's thread), then the first `ask` (on\n"
        "that thread) and the one after it, with the emulator's rtt_ms adding\n"
        f"{' and '.join(f'{r} ms' for r in NETWORK_RTT_MS)} to every Daytona request (80 ms: a laptop far from "
        "Daytona's region);\n"
        "the next `ask` against local `codex exec` plus two round trips (its command and its log).\n"
        f"Fan-out: from `ask --fanout {FANOUT}` starting to the {FANOUT}rd sibling's first model request, siblings\n"
        "made with Daytona's fork, then with fork refused (the snapshot fallback); median of up to 3 runs.\n"
        + BATCH_NOTE
    )
    if args.verbose:
        for label, calls in bench.notes.items():
            print(f"\n{label}:\n  " + "\n  ".join(calls))
    return 0 if not missed else 1


BATCH_NOTE = (
    f"Batch: {BATCH_TASKS} one-step tasks, each in a sandbox of its own made from the runtime snapshot,\n"
    f"--parallel {BATCH_PARALLEL}, once, against the same tasks as a script's loop of `ask --name tN` and\n"
    "`down --name tN` (helper on), with Daytona on this machine and again 80 ms away (every Daytona\n"
    "request delayed once, as a laptop far from the region sees it); the driver's peak RSS from\n"
    "getrusage of its own process (helper off). What bounds the speed-up here: every sandbox's\n"
    "processes run on this machine's cores (real sandboxes each have their own); the CPU rows say\n"
    "where each task's CPU went, and the ceiling is the loop's time over the sandboxes' CPU spread\n"
    "on every core: the most any driver could show here."
)


def print_rows(rows: list[Row]) -> list[str]:
    """The table; returns the measures whose target was missed."""
    header = ("measure", "ours", "baseline (same run)", "ratio", "target", "")
    cells = [header, *(row.cells() for row in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    line = "| " + " | ".join(f"{{:<{w}}}" for w in widths) + " |"
    print(line.format(*header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line.format(*row.cells()))
    missed = [row.measure.strip() for row in rows if row.met is False]
    print(f"\n{'Every target met.' if not missed else 'Not met: ' + '; '.join(missed)}")
    return missed


@contextlib.contextmanager
def bench_rig(*, verbose: bool = False) -> Iterator[Bench]:
    """The emulator and the scripted model, each a real server, for one bench run."""
    with tempfile.TemporaryDirectory(prefix="cdb-") as tmp:
        work = Path(tmp)
        emulator = DaytonaEmulator(work / "daytona", DAYTONA_KEY, log_path=work / "requests.jsonl")
        emulator.start()
        model = ScriptedModel(log_dir=None)
        model.start()
        try:
            yield Bench(work, emulator, model, RequestLog(work / "requests.jsonl"), verbose=verbose)
        finally:
            model.stop()
            emulator.stop()


def batch_only(big_tasks: int) -> int:
    with bench_rig() as bench:
        print("Measuring `batch` (minutes)...", file=sys.stderr)
        start_helper(bench)
        project, state = bench.project()
        bench.cli(project, bench.env(state), "snapshot")
        speeds = measure_batch_speed(bench)
        big = measure_batch(bench, big_tasks, BATCH_PARALLEL) if big_tasks else None
    missed = print_rows(batch_rows(speeds, big))
    print("\n" + BATCH_NOTE)
    return 0 if not missed else 1


if __name__ == "__main__":
    sys.exit(main())
