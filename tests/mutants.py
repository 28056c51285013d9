"""`make mutants`: breaks the code in named one-line ways, one at a time, and runs the tests
named for each; every break must make one of them fail.

Each break is a file, an exact text that must occur in it once, its replacement, and the tests
that should notice. The breaks are made in a temporary copy of the checkout (its tracked and
untracked files, as they are now), never in the checkout itself, and each is undone in that
copy before the next. A break whose text is no longer found (or found more than once) is
"stale": the code moved on and the list must follow it. That fails the run as a missed break
does, and is reported apart from one.

    .venv/bin/python -m tests.mutants               # every break, one at a time
    .venv/bin/python -m tests.mutants -k state -k down_all   # names containing these
    .venv/bin/python -m tests.mutants --list        # the breaks and their tests
    .venv/bin/python -m tests.mutants -j 2          # two breaks at once, each in its own copy

Exit 0 when every break was caught, 1 otherwise. The agent runtime the e2e tests install is
kept between runs (in the temporary directory, one per install command), so only the first
run pays for it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(tempfile.gettempdir()) / "codex-daytona-mutants"


@dataclass(frozen=True)
class Break:
    name: str
    path: str  # relative to the checkout
    original: str  # must occur exactly once in the file
    replacement: str
    tests: tuple[str, ...]  # pytest node ids, run in this order; the first failure ends the run
    note: str = ""


T = "tests/"
BREAKS: tuple[Break, ...] = (
    # --- Round two (#25): the four that no test caught -----------------------------------
    Break(
        "down_all_deletes_every_sandbox",
        "codex_daytona/usecases/lifecycle.py",
        'ctx.api.list({"app": TOOL_LABEL})',
        "ctx.api.list({})",
        (T + "test_lifecycle.py::test_down_all_deletes_every_sandbox_of_this_tool_and_no_other",),
    ),
    Break(
        "login_shell_step_dropped_from_setup",
        "codex_daytona/sandbox/home_commands.py",
        "    steps = [login_shell_step()]\n",
        "    steps = []\n",
        (T + "test_runtime.py::test_the_setup_command_up_runs_makes_bash_the_login_shell",),
    ),
    Break(
        "reattach_from_the_start_of_the_event_file",
        "codex_daytona/usecases/follower.py",
        "self.box.layout, self.run_id, self.offset, follow=True",
        "self.box.layout, self.run_id, 0, follow=True",
        (T + "test_turns.py::test_a_run_whose_own_command_vanishes_mid_run_is_followed_from_where_it_was",),
    ),
    Break(
        "state_file_written_in_place",
        "codex_daytona/state.py",
        'fd, tmp = tempfile.mkstemp(prefix=".state-", suffix=".tmp", dir=self.directory)\n'
        "        try:\n            os.fchmod",
        "fd, tmp = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), str(self.path)\n"
        "        try:\n            os.fchmod",
        (T + "test_settings_state.py::test_the_state_file_is_whole_to_a_reader_and_after_a_kill_mid_write",),
    ),
    # --- Round two (#25): caught, to keep caught ----------------------------------------
    Break(
        "turn_model_dropped",
        "agent_bundle/engine.py",
        '        settings["model"] = request["turn_model"]\n',
        "        pass\n",
        (T + "test_turn_settings.py::test_model_and_effort_apply_from_the_turn_they_are_given_on",),
    ),
    Break(
        "turn_effort_dropped",
        "agent_bundle/engine.py",
        '        settings["effort"] = ReasoningEffort(request["effort"])\n',
        "        pass\n",
        (T + "test_turn_settings.py::test_model_and_effort_apply_from_the_turn_they_are_given_on",),
    ),
    Break(
        "images_dropped_from_the_turn_input",
        "agent_bundle/engine.py",
        'return [TextInput(request["prompt"]), *(LocalImageInput(str(p)) for p in request.get("images") or [])]',
        'return [TextInput(request["prompt"])]',
        (T + "test_exec_flags.py::test_images_are_uploaded_and_reach_the_model",),
    ),
    Break(
        "output_schema_dropped_by_the_agent",
        "agent_bundle/engine.py",
        '        options["output_schema"] = request["output_schema"]\n',
        "        pass\n",
        (T + "test_exec_flags.py::test_output_schema_reaches_the_model_and_the_answer_is_the_json",),
    ),
    Break(
        "output_schema_dropped_from_the_request",
        "codex_daytona/sandbox/runtime.py",
        '        request["output_schema"] = output_schema\n',
        "        pass\n",
        (T + "test_exec_flags.py::test_output_schema_reaches_the_model_and_the_answer_is_the_json",),
    ),
    Break(
        "shell_hooks_not_set",
        "agent_bundle/hooks.py",
        '    env = {"BASH_ENV": bash_env, "ZDOTDIR": zdotdir}\n',
        "    env: dict[str, str] = {}\n",
        (T + "test_servers.py::test_every_way_of_starting_a_server_survives_the_turn_and_the_next",),
    ),
    Break(
        "setsid_removed_from_the_detach_script",
        "agent_bundle/detach.py",
        "        try:\n            os.setsid()\n            os.dup2(out_w, 1)\n",
        "        try:\n            os.dup2(out_w, 1)\n",
        (T + "test_servers.py::test_the_shell_hooks_detach_each_command_in_bash_and_zsh",),
    ),
    Break(
        "key_written_to_codex_auth_json",
        "agent_bundle/engine.py",
        '        env[KEY_ENV] = request["api_key"]\n',
        '        env[KEY_ENV] = request["api_key"]; os.makedirs(os.path.join(home, ".codex"), exist_ok=True); '
        'open(os.path.join(home, ".codex", "auth.json"), "w").write(request["api_key"])\n',
        (T + "test_secrets.py::test_the_key_stays_out_of_everything",),
    ),
    Break(
        "key_on_the_app_servers_command_line",
        "agent_bundle/engine.py",
        '    overrides = [str(pair) for pair in request.get("user_config") or []]\n',
        '    overrides = [str(pair) for pair in request.get("user_config") or []] + '
        "[f\"notice={json.dumps(request.get('api_key') or '')}\"]\n",
        (T + "test_secrets.py::test_the_key_stays_out_of_everything",),
    ),
    Break(
        "exec_always_exits_0",
        "codex_daytona/cli.py",
        "        out.result(hands.ExecResult(exit_code))\n    raise typer.Exit(exit_code)\n",
        "        out.result(hands.ExecResult(exit_code))\n    raise typer.Exit(0)\n",
        (T + "test_turns.py::test_exec_streams_and_exits_with_the_command_code",),
    ),
    Break(
        "dot_env_files_pushed",
        "codex_daytona/sandbox/transfer.py",
        '    if name == ".env":\n        return True\n',
        '    if name == ".env":\n        return False\n',
        (T + "test_transfer.py::test_push_listing_respects_gitignore_and_never_sends_secrets",),
    ),
    Break(
        "pull_overwrites_without_force",
        "codex_daytona/sandbox/transfer.py",
        "    if plan.conflicts and not force:\n",
        "    if False:\n",
        (T + "test_transfer.py::test_conflicts_refuse_without_force_and_write_nothing",),
    ),
    Break(
        "timeout_exits_1_not_124",
        "codex_daytona/errors.py",
        "    exit_code = ExitCode.TIMEOUT\n",
        "    exit_code = ExitCode.ERROR\n",
        (T + "test_turns.py::test_timeout_interrupts_the_turn_with_124",),
    ),
    Break(
        "turn_started_dropped_in_every_json_mode",
        "agent_bundle/exec_events.py",
        '            return [{"type": "turn.started"}]\n',
        "            return []\n",
        (T + "test_agent_bundle.py::test_mapper_build_turn_matches_exec_vocabulary",),
    ),
    Break(
        "turn_started_dropped_only_in_json",
        "codex_daytona/output.py",
        "                self.json_line(ev.as_exec(event) if self.exec_only else event)\n",
        "                if self.exec_only or kind != ev.TURN_STARTED:\n"
        "                    self.json_line(ev.as_exec(event) if self.exec_only else event)\n",
        (T + "test_turns.py::test_json_is_the_exec_stream_plus_ours_and_a_result",),
    ),
    Break(
        "fanout_skips_fork",
        "codex_daytona/usecases/fanout.py",
        "                forks = self._first_fork(missing[0], base)\n",
        "                forks = False\n",
        (T + "test_fanout.py::test_fanout_runs_in_parallel_compares_and_keep_down_leave_one",),
    ),
    Break(
        "reconnect_replay_skip_removed",
        "codex_daytona/usecases/follower.py",
        "        if self.received > start:  # a reconnect replays the log from its start\n",
        "        if False:\n",
        (T + "test_follower_unit.py::test_a_stream_cut_at_any_byte_loses_and_repeats_nothing",),
    ),
    # --- Round two (#25): the checks that could not fail, made to -------------------------
    Break(
        "short_flag_o_dropped",
        "codex_daytona/cli.py",
        '            "--output-last-message",\n            "-o",\n',
        '            "--output-last-message",\n',
        (T + "test_exec_flags.py::test_help_shows_the_flags",),
    ),
    Break(
        "auto_stop_interval_not_sent",
        "codex_daytona/sandbox/daytona_api.py",
        '            "auto_stop_interval": auto_stop_minutes,\n',
        "",
        (T + "test_workflow.py::test_up_is_idempotent_and_prints_the_id",),
    ),
    Break(
        "no_color_ignored",
        "codex_daytona/output.py",
        '        no_color = bool(os.environ.get("NO_COLOR"))\n',
        "        no_color = False\n",
        (T + "test_output.py::test_colour_only_on_a_terminal_and_never_with_no_color",),
    ),
    Break(
        "colour_on_pipes",
        "codex_daytona/output.py",
        "            force_terminal=None,\n",
        "            force_terminal=True,\n",
        (T + "test_output.py::test_colour_only_on_a_terminal_and_never_with_no_color",),
    ),
    Break(
        "key_written_under_the_runtime_venv",
        "agent_bundle/engine.py",
        '        env[KEY_ENV] = request["api_key"]\n',
        '        env[KEY_ENV] = request["api_key"]; '
        'open(os.path.join(sys.prefix, "key-cache"), "w").write(request["api_key"])\n',
        (T + "test_secrets.py::test_the_key_stays_out_of_everything",),
    ),
    Break(
        "a_failed_turn_forgets_its_thread",
        "codex_daytona/usecases/turns.py",
        "        if outcome.thread_id:\n            current.thread_id = outcome.thread_id\n",
        '        if outcome.thread_id and outcome.status == "completed":\n'
        "            current.thread_id = outcome.thread_id\n",
        (T + "test_model_failures.py::test_server_error",),
    ),
    Break(
        "the_helper_never_takes_a_command",
        "codex_daytona/launcher.py",
        "            return run_via_helper(path)\n",
        "            raise NotHandedOver\n",
        (T + "test_helper.py::test_help_usage_errors_and_exit_codes_are_the_same_through_the_helper",),
    ),
    # --- Earlier rounds' closing notes (stops 20-22) ----------------------------------------
    Break(
        "detached_turn_not_kept_up",
        "codex_daytona/usecases/turns.py",
        "    _keep_up_while_detached(ctx, box)\n",
        "    pass\n",
        (T + "test_lifecycle.py::test_a_detached_turn_nobody_follows_is_not_stopped_mid_turn",),
    ),
    Break(
        "output_mask_returns_its_text",
        "codex_daytona/output.py",
        "            text = text.replace(secret, MASK)\n",
        "            pass\n",
        (T + "test_secrets_output.py::test_no_key_in_any_output_mode_of_any_command",),
    ),
    Break(
        "agent_heartbeat_off",
        "agent_bundle/client.py",
        '    beat = Heartbeat(request.get("heartbeat_seconds"))\n',
        "    beat = Heartbeat(None)\n",
        (T + "test_turns.py::test_a_quiet_turn_is_not_taken_for_a_stalled_stream",),
    ),
    Break(
        "dead_session_shell_not_made_anew",
        "codex_daytona/sandbox/daytona_api.py",
        '                elif "failed to write command" in str(exc):\n',
        "                elif False:\n",
        (T + "test_daytona_api.py::test_a_command_goes_into_a_new_session_and_a_dead_one_is_made_anew",),
    ),
    Break(
        "input_echo_not_suppressed",
        "codex_daytona/sandbox/daytona_api.py",
        "SessionExecuteRequest(command=command, run_async=True, suppress_input_echo=True)",
        "SessionExecuteRequest(command=command, run_async=True, suppress_input_echo=False)",
        (T + "test_daytona_api.py::test_our_commands_never_echo_input_and_a_gone_command_says_so",),
    ),
    Break(
        "no_retries_on_transient_daytona_errors",
        "codex_daytona/sandbox/daytona_api.py",
        "RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)\n",
        "RETRY_DELAYS = ()\n",
        (T + "test_turns.py::test_transient_daytona_errors_are_retried",),
    ),
    Break(
        "follower_not_stopping_at_the_closing_event",
        "codex_daytona/usecases/follower.py",
        "                    until=done,\n",
        "                    until=None,\n",
        (T + "test_sessions_e2e.py::test_ask_returns_at_the_closing_event_not_when_daytona_closes_the_stream",),
    ),
    Break(
        "signed_link_ttl_max_lifted",
        "codex_daytona/cli.py",
        "            max=86_400,\n",
        "            max=10**9,\n",
        (T + "test_cli.py::test_a_signed_link_lasts_between_one_second_and_daytonas_24_hours",),
    ),
    Break(
        "preview_check_follows_redirects",
        "codex_daytona/sandbox/previews.py",
        "    def redirect_request(self, *args: object, **kwargs: object) -> None:\n        return None\n",
        "    pass\n",
        (T + "test_previews.py::test_a_redirect_to_sign_in_is_a_refused_token_not_the_app",),
    ),
    Break(
        "check_links_one_at_a_time",
        "codex_daytona/sandbox/previews.py",
        "ThreadPoolExecutor(max_workers=min(8, len(items)))",
        "ThreadPoolExecutor(max_workers=1)",
        (T + "test_previews.py::test_check_links_runs_side_by_side",),
    ),
    Break(
        "interrupt_leaves_the_turns_commands_running",
        "agent_bundle/processes.py",
        "        groups = self.command_groups()\n",
        "        groups: set[int] = set()\n",
        (T + "test_turns.py::test_timeout_interrupts_the_turn_with_124",),
    ),
    Break(
        "ctrl_c_does_not_ask_the_agent_to_interrupt",
        "codex_daytona/usecases/turns.py",
        "            interrupt(follower.box, follower.run_id)\n",
        "            pass\n",
        (T + "test_lifecycle.py::test_chat_ctrl_c_interrupts_the_turn_and_returns_to_the_prompt",),
    ),
    Break(
        "agent_always_starts_a_new_thread",
        "agent_bundle/engine.py",
        '        if request.get("new_thread") or not thread_id:\n',
        "        if True:\n",
        (T + "test_turns.py::test_ctrl_c_stops_the_turn_not_the_sandbox",),
    ),
    Break(
        "a_turn_claims_the_busy_session",
        "codex_daytona/usecases/turns.py",
        '            session = f"{SESSION_ID}-{run_id}"\n',
        "            session = current.session_id or SESSION_ID\n",
        (T + "test_sessions_e2e.py::test_a_second_ask_is_busy_at_once_and_wait_queues_behind_the_turn",),
    ),
    Break(
        "a_stopped_sandbox_is_not_started_again_for_the_command",
        "codex_daytona/usecases/context.py",
        "            if (isinstance(exc, SandboxGoneError) and not trusted) or not self.restart_when_stopped:\n",
        "            if True:\n",
        (T + "test_lifecycle.py::test_a_sandbox_stopped_between_look_up_and_command_is_started_and_the_turn_runs",),
    ),
    Break(
        "exit_codes_5_and_6_swapped_in_help",
        "codex_daytona/cli.py",
        '"5 no sandbox, 6 busy, ',
        '"5 busy, 6 no sandbox, ',
        (T + "test_cli.py::test_main_help_lists_the_exit_codes",),
    ),
    Break(
        "no_emulator_reset_before_an_e2e_test",
        "tests/conftest.py",
        "    reset_emulator(emulator)  # type: ignore[arg-type]\n",
        "    pass\n",
        (T + "test_claims.py::test_every_e2e_test_starts_with_the_emulator_reset",),
    ),
    Break(
        "deactivated_snapshot_not_activated",
        "codex_daytona/usecases/provision.py",
        "        ctx.api.activate_snapshot(name)\n",
        "        pass\n",
        (T + "test_claims.py::test_snapshot_reactivates_a_snapshot_daytona_deactivated",),
    ),
    Break(
        "ctrl_c_inside_the_sdks_log_callback",
        "codex_daytona/sandbox/daytona_api.py",
        "            previous = signal.signal(signal.SIGINT, on_sigint) if takes_sigint else None\n",
        "            previous = None\n",
        (T + "test_daytona_api.py::test_ctrl_c_while_a_chunk_is_handled_hands_no_chunk_over_twice",),
    ),
    Break(
        "emulator_keeps_emptied_process_groups",
        "tests/fakes/daytona.py",
        "                sb.pgids &= live\n",
        "                pass\n",
        (T + "test_emulator.py::test_a_group_id_the_kernel_hands_out_again_is_no_longer_the_sandboxs",),
        note="needs root to write ns_last_pid; where it skips, the break is missed",
    ),
    # --- This session's merge (#24, #26, #27, #29): the new behaviours, kept caught ------
    Break(
        "missing_session_only_on_404",
        "codex_daytona/sandbox/daytona_api.py",
        '    return _status(exc) == 404 or "session not found" in str(exc)\n',
        "    return _status(exc) == 404\n",
        (T + "test_emulator_e2e.py::test_ask_after_someone_else_restarted_the_sandbox_makes_the_lost_session",),
    ),
    Break(
        "a_change_of_state_not_waited_out",
        "codex_daytona/sandbox/daytona_api.py",
        "                if status not in (400, 409):\n",
        "                if True:\n",
        (T + "test_emulator_e2e.py::test_ask_waits_out_a_start_answered_409",),
    ),
    Break(
        "down_all_only_what_the_lagging_list_shows",
        "codex_daytona/usecases/lifecycle.py",
        "        if record.sandbox_id not in seen:\n",
        "        if False:\n",
        (T + "test_emulator_e2e.py::test_down_all_deletes_a_sandbox_the_lagging_list_does_not_show_yet",),
    ),
    Break(
        "shell_of_no_size_sent_as_0_by_0",
        "codex_daytona/usecases/hands.py",
        "    return (rows if rows > 0 else 24), (cols if cols > 0 else 80)\n",
        "    return rows, cols\n",
        (T + "test_hands.py::test_shell_from_a_terminal_of_no_size_gets_80_by_24",),
    ),
    Break(
        "shell_starts_in_the_workdir",
        "codex_daytona/usecases/hands.py",
        "box.open_pty(pty_id, box.record.home_dir or None, rows, cols)",
        "box.open_pty(pty_id, None, rows, cols)",
        (T + "test_emulator_e2e.py::test_the_tool_works_in_the_home_whatever_the_image_workdir",),
    ),
    Break(
        "prepared_thread_checks_instructions",
        "agent_bundle/engine.py",
        "            and instructions == self.instructions\n",
        "            and True\n",
        (T + "test_first_turn.py::test_instructions_pushed_after_up_reach_the_first_turn",),
    ),
    Break(
        "exec_runs_in_the_workdir",
        "agent_bundle/agent.py",
        "run_user_command(command, args.home, ",
        'run_user_command(command, ".", ',
        (T + "test_emulator_e2e.py::test_the_tool_works_in_the_home_whatever_the_image_workdir",),
    ),
    Break(
        "down_all_deletes_a_fork_source_first",
        "codex_daytona/usecases/lifecycle.py",
        "                    refused.append((info, exc))\n",
        "                    raise\n",
        (T + "test_emulator_e2e.py::test_down_of_a_sandbox_with_forks_says_so_and_down_all_deletes_the_forks_first",),
    ),
    Break(
        "down_others_stops_at_a_fork_source",
        "codex_daytona/usecases/fleet.py",
        "            except HasForksError:\n                refused.append(name)\n",
        "            except ValueError:\n                refused.append(name)\n",
        (T + "test_fanout.py::test_fanout_runs_in_parallel_compares_and_keep_down_leave_one",),
    ),
    Break(
        "activation_refusal_untranslated",
        "codex_daytona/sandbox/daytona_api.py",
        "        except ApiException as exc:",
        "        except KeyError as exc:",
        (T + "test_claims.py::test_snapshot_just_deactivated_says_when_to_try_again",),
    ),
    Break(
        "fork_during_a_change_not_waited_out",
        "codex_daytona/sandbox/daytona_api.py",
        "                if status not in (400, 409) or time.monotonic() > deadline:\n",
        "                if True:\n",
        (T + "test_emulator_e2e.py::test_fanout_waits_out_a_stop_asked_for_just_before_its_fork",),
    ),
    Break(
        "ls_trusts_the_lagging_list",
        "codex_daytona/usecases/fleet.py",
        "        return ctx.look(sandbox_id).info().state\n",
        '        return "deleted"\n',
        (T + "test_emulator_e2e.py::test_ls_shows_a_sandbox_the_lagging_list_does_not_show_yet",),
    ),
    Break(
        "signals_honoured_while_a_sandbox_is_made",
        "codex_daytona/usecases/lifecycle.py",
        "    with signals_deferred():\n        box = ctx.create(",
        "    with contextlib.nullcontext():\n        box = ctx.create(",
        (T + "test_hostile.py::test_no_signal_in_the_first_two_seconds_of_up_or_ask_orphans_a_sandbox",),
    ),
    Break(
        "down_deletes_before_checking_the_state_file",
        "codex_daytona/usecases/lifecycle.py",
        "    record = ctx.require_record()\n    ctx.store.check_writable()\n"
        "    try:\n        box = ctx.box(record, start=False)",
        "    record = ctx.require_record()\n    try:\n        box = ctx.box(record, start=False)",
        (T + "test_hostile.py::test_an_unwritable_state_dir_changes_nothing_on_daytona",),
        note="needs chattr; where it skips, the break is missed",
    ),
    Break(
        "the_helper_takes_any_caller",
        "codex_daytona/helper.py",
        "        refused = refusal(peer_pid)\n",
        "        refused = None\n",
        (T + "test_helper_safety.py::test_a_caller_that_may_do_less_runs_its_command_itself",),
    ),
    Break(
        "no_wait_for_servers_that_bind_late",
        "agent_bundle/daemon.py",
        '    settle = outcome.get("status") == "completed" and watch.pending()\n',
        "    settle = False\n",
        (T + "test_late_ports.py::test_a_server_binding_after_the_turn_gets_its_link_after_the_answer",),
    ),
    # --- #28: a warm ask in two requests ---------------------------------------------------
    Break(
        "a_warm_ask_looks_the_sandbox_up",
        "codex_daytona/usecases/turns.py",
        "        box = ctx.connect(record, trust_handle=True)\n",
        "        box = ctx.connect(record)\n",
        (T + "test_emulator_e2e.py::test_a_warm_ask_is_two_requests_its_command_and_its_log",),
    ),
    Break(
        "a_toolbox_that_moved_is_not_called_again",
        "codex_daytona/usecases/context.py",
        '                if not trusted or getattr(self._sandbox, "toolbox_proxy_url", None) == toolbox:\n',
        "                if True:\n",
        (T + "test_emulator_e2e.py::test_a_warm_ask_whose_sandbox_changed_behind_its_back_looks_it_up_and_runs",),
    ),
    Break(
        "a_sandbox_found_gone_by_the_turns_command_is_not_forgotten",
        "codex_daytona/usecases/turns.py",
        "        if isinstance(exc, SandboxGoneError) and _gone(box):\n",
        "        if False:\n",
        (T + "test_emulator_e2e.py::test_a_warm_ask_whose_sandbox_was_deleted_behind_its_back_says_so_and_forgets_it",),
    ),
    Break(
        "the_daemon_imports_codex_at_the_first_turn",
        "agent_bundle/daemon.py",
        "        threading.Thread(target=warm_imports, daemon=True).start()\n",
        "        pass\n",
        (T + "test_agent_bundle.py::test_the_daemon_imports_codex_before_its_first_turn",),
    ),
    Break(
        "a_terminal_slow_to_say_connected_is_not_opened_again",
        "codex_daytona/sandbox/daytona_api.py",
        "                if attempt + 1 == PTY_HANDSHAKE_TRIES or not _handshake_gave_up(exc):\n",
        "                if True:\n",
        (T + "test_hands.py::test_shell_opens_when_the_daemon_is_slow_to_say_connected",),
    ),
    Break(
        "the_chat_prompt_waits_in_read_not_select",
        "codex_daytona/output.py",
        "                waker.wait(fd)\n",
        "                pass\n",
        (
            T + "test_output.py::test_read_line_runs_a_signal_handler_that_comes_while_it_waits",
            T + "test_lifecycle.py::test_a_signal_the_kernel_hands_to_another_thread_still_ends_the_chat_at_its_prompt",
        ),
    ),
    Break(
        "the_runtime_install_keeps_uvs_download_cache",
        "codex_daytona/sandbox/runtime.py",
        '        f"uv pip install --quiet --no-cache --compile-bytecode',
        '        f"uv pip install --quiet --compile-bytecode',
        (
            T + "test_snapshot.py::test_the_runtime_is_compiled_by_its_install_even_where_"
            "the_image_forbids_writing_bytecode",
        ),
    ),
)


@dataclass
class Outcome:
    brk: Break
    status: str  # caught, missed, stale, timeout, error
    seconds: float
    detail: str = ""


def tree_files(root: Path) -> list[str]:
    """The checkout's files as they are now: tracked ones (with their changes) and untracked
    ones git does not ignore."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout
    return [name for name in out.decode().split("\0") if name and (root / name).is_file()]


def copy_tree(root: Path, dest: Path) -> None:
    for name in tree_files(root):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target, follow_symlinks=False)


def stale_reason(tree: Path, brk: Break) -> str | None:
    path = tree / brk.path
    if not path.exists():
        return f"{brk.path} is gone"
    count = path.read_text().count(brk.original)
    if count != 1:
        where = "not found" if count == 0 else f"found {count} times"
        return f"the original text is {where} in {brk.path}: {brk.original.strip()[:80]!r}"
    return None


def run_break(tree: Path, brk: Break, timeout: float, python: str) -> Outcome:
    began = time.monotonic()
    reason = stale_reason(tree, brk)
    if reason:
        return Outcome(brk, "stale", 0.0, reason)
    path = tree / brk.path
    original = path.read_text()
    try:
        path.write_text(original.replace(brk.original, brk.replacement, 1))
        env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER")}
        env.update(
            PYTHONPATH=str(tree),
            PYTHONDONTWRITEBYTECODE="1",  # no stale bytecode of a mutated file
            CODEX_DAYTONA_TEST_RUNTIME_CACHE=str(CACHE),
        )
        argv = [python, "-m", "pytest", "-n", "0", "-x", "-q", "-p", "no:cacheprovider", "--no-header"]
        argv += ["-o", "addopts=--strict-markers", *brk.tests]
        try:
            done = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return Outcome(brk, "timeout", time.monotonic() - began, f"no verdict within {timeout:g} s")
    finally:
        path.write_text(original)
    seconds = time.monotonic() - began
    tail = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode == 0:
        return Outcome(brk, "missed", seconds, tail[-1] if tail else "")
    if done.returncode == 1:
        failed = next((line for line in tail if line.startswith(("FAILED", "ERROR"))), tail[-1] if tail else "")
        why = next((line[1:].strip() for line in tail if line.startswith("E ")), "")
        return Outcome(brk, "caught", seconds, f"{failed.split(' - ')[0]}: {why}" if why else failed)
    return Outcome(brk, "error", seconds, f"pytest exit {done.returncode}: " + " | ".join(tail[-5:]))


def check_copy_is_imported(tree: Path, python: str) -> None:
    """The tests in the copy must import the copy's package, not the checkout's."""
    found = subprocess.run(
        [python, "-c", "import codex_daytona, agent_bundle; print(codex_daytona.__file__, agent_bundle.__file__)"],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    outside = [f for f in found if not Path(f).resolve().is_relative_to(tree.resolve())]
    if outside:
        raise SystemExit(f"mutants: the copy imports {outside}, not its own files; nothing was run")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mutants", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-k", action="append", default=[], help="only breaks whose name contains this (repeatable)")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="breaks run at once, each in its own copy")
    parser.add_argument("--timeout", type=float, default=600, help="seconds a break's tests may take")
    parser.add_argument("--list", action="store_true", help="list the breaks and their tests, and exit")
    args = parser.parse_args(argv)
    chosen = [b for b in BREAKS if not args.k or any(k in b.name for k in args.k)]
    if args.list:
        for b in chosen:
            sys.stdout.write(f"{b.name}  ({b.path})\n" + "".join(f"    {t}\n" for t in b.tests))
        return 0
    if not chosen:
        sys.stderr.write("mutants: no break matches\n")
        return 2
    python = sys.executable
    began = time.monotonic()
    lock = threading.Lock()
    outcomes: list[Outcome] = []
    jobs = max(1, min(args.jobs, len(chosen)))
    with tempfile.TemporaryDirectory(prefix="codex-daytona-mutants-") as scratch:
        trees = []
        for i in range(jobs):
            tree = Path(scratch) / f"tree-{i}"
            copy_tree(REPO, tree)
            trees.append(tree)
        check_copy_is_imported(trees[0], python)
        free = list(trees)
        sys.stdout.write(f"mutants: {len(chosen)} breaks, {jobs} at a time, in copies of {REPO}\n")
        sys.stdout.flush()

        def one(brk: Break) -> Outcome:
            with lock:
                tree = free.pop()
            try:
                outcome = run_break(tree, brk, args.timeout, python)
            finally:
                with lock:
                    free.append(tree)
            with lock:
                outcomes.append(outcome)
                sys.stdout.write(f"{outcome.status:8} {outcome.seconds:6.1f} s  {brk.name}\n")
                if outcome.detail:
                    sys.stdout.write(f"{'':18}{outcome.detail[:300]}\n")
                sys.stdout.flush()
            return outcome

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(one, chosen))
    wall = time.monotonic() - began
    counts = {s: sum(o.status == s for o in outcomes) for s in ("caught", "missed", "stale", "timeout", "error")}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    sys.stdout.write(f"mutants: {summary} of {len(chosen)}; wall time {int(wall // 60)} min {int(wall % 60):02d} s\n")
    return 0 if counts["caught"] == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main())
