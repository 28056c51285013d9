"""The program codex-daytona runs inside the sandbox.

Each `ask` runs it once as a Daytona session command (``--run-id``): it reads the turn's
request (the prompt, the thread to resume, per-turn settings) from stdin, base64-encoded
JSON that the command line feeds it through a here-document, hands it to the agent daemon
and relays the run's events to stdout, one JSON object per line, in the vocabulary of
``codex exec --json`` plus a few ``codex_daytona.*`` events of its own. The daemon (started
on demand, ``--serve``) keeps one warm Codex app-server for the sandbox, through OpenAI's
``openai-codex`` SDK, runs turns one at a time and writes every run's events to
``<runs-dir>/<run-id>/events.jsonl`` too, so a client that lost its stream can pick up
where it was (``--attach``).

The OpenAI key never travels with the request: a session command's text and stdin land
on the sandbox's disk (Daytona writes them under ``~/.daytona/sessions``). The request
names the key by a fingerprint; when the daemon does not hold that key it asks for it
(``codex_daytona.key_needed``) and the CLI delivers it with ``--set-key``, run through
Daytona's process API with the key in that process's environment only; the key then
reaches the daemon over its unix socket and lives in memory. Codex gets it in its
environment under KEY_ENV, which Codex's shell environment policy hides from the
commands it runs.

Only the standard library and openai_codex are used; this package runs on the sandbox's
Python (>= 3.10), never on the user's machine, as `python DIR` (__main__.py). This module is
its command line; each of its jobs is a module of its own: the client (client.py), the
daemon (daemon.py), the Codex engine (engine.py, exec_events.py), the sandbox's processes
and ports (processes.py, port_scan.py), the shell hooks and their hand-over (hooks.py,
detach.py) and `codex-daytona exec` (user_exec.py). What the CLI and the agent share is
protocol.py.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys

from agent_bundle.client import (
    attach,
    daemon_call,
    deliver_key,
    ensure_daemon,
    prepare_ahead,
    run_client,
    socket_path,
)
from agent_bundle.daemon import Daemon
from agent_bundle.port_scan import listening_ports
from agent_bundle.protocol import EXIT_ERROR, EXIT_OK, KEY_ENV
from agent_bundle.user_exec import run_user_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-id")
    parser.add_argument("--runs-dir")
    parser.add_argument("--home", default=os.path.expanduser("~"))
    parser.add_argument(
        "--list-ports",
        action="store_true",
        help='print {"listening": [...]} as JSON and exit',
    )
    parser.add_argument("--serve", action="store_true", help="run the agent daemon (started on demand)")
    parser.add_argument("--start-daemon", action="store_true", help="start the daemon if needed, then exit")
    parser.add_argument(
        "--set-key", action="store_true", help=f"hand the key in ${KEY_ENV} to the daemon (starting it if needed)"
    )
    parser.add_argument(
        "--prepare",
        action="store_true",
        help="with --set-key or --start-daemon: then have the daemon make ready the turn "
        "whose request (without a prompt) is on stdin",
    )
    parser.add_argument("--attach", metavar="RUN_ID", help="print a run's events from --offset")
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--follow", action="store_true", help="with --attach: until the run ends")
    parser.add_argument("--heartbeat", type=float, help="with --follow: an empty line after this many quiet seconds")
    parser.add_argument("--interrupt", metavar="RUN_ID", help="interrupt this run if it is running")
    parser.add_argument(
        "--exec", action="store_true", help="run the command on stdin (base64) in a shell of its own, in --home"
    )
    parser.add_argument("--done-marker", help="with --exec: end each stream with this marker line")
    args = parser.parse_args(argv)
    runs_dir = args.runs_dir or os.path.join(args.home, ".codex-daytona", "runs")
    if args.list_ports:
        ports = listening_ports(os.environ.get("CODEX_DAYTONA_SCOPE"))
        print(json.dumps({"listening": ports}))
        return EXIT_OK
    if args.serve:
        Daemon(args.home, runs_dir).serve(socket_path(args.home))
        return EXIT_OK
    if args.set_key or args.start_daemon:
        if args.set_key:
            code = deliver_key(args.home, runs_dir)
        else:
            ensure_daemon(args.home, runs_dir)
            code = EXIT_OK
        if args.prepare and code == EXIT_OK:
            prepare_ahead(args.home)
        return code
    if args.attach:
        return attach(args.home, runs_dir, args.attach, args.offset, args.follow, args.heartbeat)
    if args.exec:
        command = base64.b64decode("".join(sys.stdin.read().split()), validate=True).decode("utf-8")
        background_log = os.path.join(args.home, ".codex-daytona", "exec-background.log")
        return run_user_command(command, args.home, background_log, args.done_marker)
    if args.interrupt:
        reply = daemon_call(args.home, {"op": "interrupt", "run_id": args.interrupt})
        print(json.dumps(reply))
        return EXIT_OK if reply.get("interrupted") else EXIT_ERROR
    if not args.run_id:
        parser.error("--run-id is required")
    args.runs_dir = runs_dir
    return run_client(args)
