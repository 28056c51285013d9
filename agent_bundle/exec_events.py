"""Codex's app-server notifications as `codex exec --json` events.

What `codex exec --json` (0.163, codex-rs/exec/src/event_processor_with_jsonl_output.rs)
prints for the same notifications, line for line: items numbered item_0, item_1, ... in
order of first appearance; messages and reasoning only once complete (a reasoning item with
an empty summary not at all); warnings as `error` items; every `error` notification (the
retries' "Reconnecting... 1/2 (...)" too) as an `error` event; an interrupted turn with no
turn.* event. What exec does not send and a person wants to see (the text while it is being
written, a command's duration, a patch's size, this turn's own tokens, an interrupt) goes
out as `codex_daytona.*` events, which a consumer of exec's stream ignores.
"""

from __future__ import annotations

import time
from typing import Any

from agent_bundle.protocol import ITEM_DETAILS, TEXT, TURN_INTERRUPTED, TURN_USAGE

DELTA_INTERVAL_S = 0.15  # at most this often a codex_daytona.text with the text so far


def _snake_status(status: str | None) -> str:
    return {"inProgress": "in_progress"}.get(status or "", status or "in_progress")


def _with_details(message: str, details: Any) -> str:
    return f"{message} ({details})" if details else message


def _diff_counts(diff: str) -> dict[str, int]:
    added = removed = 0
    for line in diff.splitlines():
        if line.startswith("+") and not line.startswith("+++"):
            added += 1
        elif line.startswith("-") and not line.startswith("---"):
            removed += 1
    return {"added": added, "removed": removed}


def _change_kind(change: dict[str, Any]) -> str:
    kind = change.get("kind")
    return str(kind.get("type") if isinstance(kind, dict) else kind)


def _change_counts(change: dict[str, Any]) -> dict[str, int]:
    diff = change.get("diff") or ""
    if _change_kind(change) == "add" and diff and not diff.startswith(("@@", "---", "diff")):
        # For an added file the app-server gives the file's content, not a diff.
        return {"added": len(diff.splitlines()), "removed": 0}
    return _diff_counts(diff)


def _web_search_action(action: Any) -> dict[str, Any]:
    # exec round-trips it through its own WebSearchAction, which leaves out empty fields.
    if not isinstance(action, dict) or not action.get("type"):
        return {"type": "other"}
    return {k: v for k, v in action.items() if v is not None}


_COLLAB_TOOLS = {
    "spawnAgent": "spawn_agent",
    "sendInput": "send_input",
    "resumeAgent": "wait",  # as exec has it
    "wait": "wait",
    "closeAgent": "close_agent",
}
_COLLAB_AGENT_STATUS = {"pendingInit": "pending_init", "notFound": "not_found"}


def _collab_call(item: dict[str, Any]) -> dict[str, Any] | None:
    """A sub-agent (collaboration) tool call as exec shows it; exec leaves out the calls of
    tools it has no name for and calls that were interrupted."""
    tool = _COLLAB_TOOLS.get(str(item.get("tool")))
    status = item.get("status")
    if tool is None or status == "interrupted":
        return None
    states = {
        str(thread): {
            "status": _COLLAB_AGENT_STATUS.get(str(state.get("status")), state.get("status")),
            "message": state.get("message"),
        }
        for thread, state in (item.get("agentsStates") or {}).items()
    }
    return {
        "type": "collab_tool_call",
        "tool": tool,
        "sender_thread_id": item.get("senderThreadId"),
        "receiver_thread_ids": list(item.get("receiverThreadIds") or []),
        "prompt": item.get("prompt"),
        "agents_states": states,
        "status": _snake_status(status),
    }


def convert_item(item: dict[str, Any]) -> dict[str, Any] | None:
    """One app-server ThreadItem as exec's item, without its id; None for the items exec
    does not show (the user's message, an empty reasoning, ...)."""
    kind = item.get("type")
    if kind == "commandExecution":
        return {
            "type": "command_execution",
            "command": item.get("command", ""),
            "aggregated_output": item.get("aggregatedOutput") or "",
            "exit_code": item.get("exitCode"),
            "status": _snake_status(item.get("status")),
        }
    if kind == "fileChange":
        changes = [{"path": c.get("path"), "kind": _change_kind(c)} for c in item.get("changes") or []]
        status = _snake_status(item.get("status"))
        return {"type": "file_change", "changes": changes, "status": "failed" if status == "declined" else status}
    if kind == "agentMessage":
        return {"type": "agent_message", "text": item.get("text", "")}
    if kind == "reasoning":
        text = "\n".join(str(s) for s in item.get("summary") or [])
        return {"type": "reasoning", "text": text} if text.strip() else None
    if kind == "mcpToolCall":
        result = item.get("result")
        error = item.get("error")
        return {
            "type": "mcp_tool_call",
            "server": item.get("server"),
            "tool": item.get("tool"),
            "arguments": item.get("arguments"),
            "result": None
            if result is None
            else {"content": result.get("content") or [], "structured_content": result.get("structuredContent")},
            "error": None if error is None else {"message": error.get("message")},
            "status": _snake_status(item.get("status")),
        }
    if kind == "collabAgentToolCall":
        return _collab_call(item)
    if kind == "webSearch":
        # exec's line names `id` twice (its item_N, then the search's own id): a JSON reader
        # keeps the last, the search's id, which is what this item carries.
        return {
            "type": "web_search",
            "raw_id": item.get("id"),
            "query": item.get("query", ""),
            "action": _web_search_action(item.get("action")),
        }
    return None


def _item_details(item: dict[str, Any]) -> dict[str, Any]:
    """What the human display shows and exec leaves out: a command's duration, a patch's size."""
    if item.get("type") == "commandExecution" and item.get("durationMs") is not None:
        return {"duration_ms": item.get("durationMs")}
    if item.get("type") == "fileChange":
        return {"changes": [{"path": c.get("path"), **_change_counts(c)} for c in item.get("changes") or []]}
    return {}


class TurnMapper:
    """Turns the notifications of one turn into exec's JSON lines (a small state machine).

    One mapper per run, as exec is one process per turn: its items are numbered from item_0."""

    def __init__(self) -> None:
        self._next_id = 0
        self._ids: dict[str, str] = {}  # app-server item id -> exec id, for items started, not completed
        self.open_items: dict[str, dict[str, Any]] = {}  # the same items, as last shown
        self._todo: dict[str, Any] | None = None
        self.first_usage: dict[str, Any] | None = None
        self.total_usage: dict[str, Any] | None = None
        self.final_message = ""
        self.status = "in_progress"
        self.error: str | None = None  # the last `error` notification's message (exec's "critical" one)
        self.timeout_message: str | None = None  # set by the watchdog: its interrupt fails the turn
        self._streamed: dict[str, str] = {}  # item id -> text so far, from deltas
        self._shown: dict[str, float] = {}  # item id -> when its text last went out

    def _new_id(self) -> str:
        exec_id = f"item_{self._next_id}"
        self._next_id += 1
        return exec_id

    def _started_id(self, raw_id: str) -> str:
        if raw_id not in self._ids:
            self._ids[raw_id] = self._new_id()
        return self._ids[raw_id]

    @staticmethod
    def _with_id(exec_id: str, item: dict[str, Any]) -> dict[str, Any]:
        raw_id = item.pop("raw_id", None)
        return {"id": raw_id if item["type"] == "web_search" else exec_id, **item}

    def _warning(self, message: str) -> list[dict[str, Any]]:
        return [{"type": "item.completed", "item": {"id": self._new_id(), "type": "error", "message": message}}]

    def feed(self, method: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        if method == "turn/started":
            return [{"type": "turn.started"}]
        if method in ("item/agentMessage/delta", "item/reasoning/summaryTextDelta"):
            return self._delta("agent_message" if method.startswith("item/agentMessage") else "reasoning", params)
        if method == "item/started":
            return self._item_started(params.get("item") or {})
        if method == "item/completed":
            return self._item_completed(params.get("item") or {})
        if method == "item/fileChange/patchUpdated":
            raw_id = str(params.get("itemId"))
            item = convert_item({"type": "fileChange", "changes": params.get("changes"), "status": "inProgress"})
            assert item is not None
            return [{"type": "item.updated", "item": self._with_id(self._started_id(raw_id), item)}]
        if method == "turn/plan/updated":
            items = [
                {"text": step.get("step", ""), "completed": step.get("status") == "completed"}
                for step in params.get("plan") or []
            ]
            kind = "item.updated" if self._todo else "item.started"
            self._todo = {"id": self._todo["id"] if self._todo else self._new_id(), "type": "todo_list", "items": items}
            return [{"type": kind, "item": dict(self._todo)}]
        if method == "thread/tokenUsage/updated":
            usage = params.get("tokenUsage") or {}
            if self.first_usage is None:
                self.first_usage = usage
            self.total_usage = usage.get("total")
            return []
        if method == "error":
            error = params.get("error") or {}
            message = _with_details(error.get("message") or "", error.get("additionalDetails"))
            self.error = message
            return [{"type": "error", "message": message}]
        if method == "warning":
            return self._warning(str(params.get("message", "")))
        if method in ("configWarning", "deprecationNotice"):
            return self._warning(_with_details(str(params.get("summary", "")), params.get("details")))
        if method == "model/rerouted":
            reason = str(params.get("reason", ""))
            reason = reason[:1].upper() + reason[1:]  # as Rust's Debug names the variant
            return self._warning(f"model rerouted: {params.get('fromModel')} -> {params.get('toModel')} ({reason})")
        if method == "turn/completed":
            return self._finish(params.get("turn") or {})
        return []

    def _item_started(self, raw: dict[str, Any]) -> list[dict[str, Any]]:
        if raw.get("type") in ("agentMessage", "reasoning"):
            return []  # exec shows them once, complete
        item = convert_item(raw)
        if item is None:
            return []
        raw_id = str(raw.get("id"))
        again = raw.get("type") == "fileChange" and raw_id in self._ids
        shown = self._with_id(self._started_id(raw_id), item)
        self.open_items[raw_id] = shown
        return [{"type": "item.updated" if again else "item.started", "item": shown}]

    def _item_completed(self, raw: dict[str, Any]) -> list[dict[str, Any]]:
        item = convert_item(raw)
        if item is None:
            return []
        raw_id = str(raw.get("id"))
        if raw.get("type") in ("agentMessage", "reasoning"):
            exec_id = self._new_id()
        else:
            exec_id = self._ids.pop(raw_id, "") or self._new_id()
        self.open_items.pop(raw_id, None)
        shown = self._with_id(exec_id, item)
        events: list[dict[str, Any]] = []
        details = _item_details(raw)
        if details:
            events.append({"type": ITEM_DETAILS, "item_id": shown["id"], **details})
        if shown["type"] == "agent_message":
            self.final_message = shown["text"]
        events.append({"type": "item.completed", "item": shown})
        return events

    def _delta(self, kind: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Text as the model writes it, at most every DELTA_INTERVAL_S per item, so a terminal
        can show it live without a flood of events (exec shows it only once complete)."""
        item_id = str(params.get("itemId"))
        text = self._streamed.get(item_id, "") + str(params.get("delta") or "")
        self._streamed[item_id] = text
        now = time.monotonic()
        if not text.strip() or now - self._shown.get(item_id, 0.0) < DELTA_INTERVAL_S:
            return []
        self._shown[item_id] = now
        return [{"type": TEXT, "item_type": kind, "text": text}]

    def turn_usage(self) -> dict[str, Any]:
        """This turn's own tokens: the cumulative total now less the total before the turn."""
        if self.first_usage is None or self.total_usage is None:
            return _usage_json(None)
        end = _usage_json(self.total_usage)
        first_total = _usage_json(self.first_usage.get("total"))
        first_last = _usage_json(self.first_usage.get("last"))
        return {k: end[k] - (first_total[k] - first_last[k]) for k in end}

    def _usage_event(self) -> dict[str, Any]:
        return {"type": TURN_USAGE, "usage": self.turn_usage(), "total": _usage_json(self.total_usage)}

    def _finish(self, turn: dict[str, Any]) -> list[dict[str, Any]]:
        self.status = turn.get("status") or "failed"
        if self.status == "interrupted" and self.timeout_message is None:
            # exec prints nothing more for an interrupted turn; the display wants to know which
            # of the items it showed running were cut short.
            cut = [dict(item, status="failed") for item in self.open_items.values()]
            self.open_items.clear()
            self.error = "turn interrupted"
            return [{"type": TURN_INTERRUPTED, "items": cut}]
        events: list[dict[str, Any]] = []
        if self._todo is not None:
            events.append({"type": "item.completed", "item": dict(self._todo)})
            self._todo = None
        for raw in turn.get("items") or []:
            if str(raw.get("id")) in self._ids:
                events.extend(self._item_completed(raw))
        self.open_items.clear()
        if self.status == "completed":
            events += [self._usage_event(), {"type": "turn.completed", "usage": _usage_json(self.total_usage)}]
            return events
        if self.timeout_message is not None:
            # Our watchdog interrupted a turn whose model stopped answering: that is a failure.
            self.status, self.error = "failed", self.timeout_message
            events.append({"type": "error", "message": self.error})
        else:
            error = turn.get("error") or {}
            if error.get("message"):
                self.error = _with_details(error["message"], error.get("additionalDetails"))
            self.error = self.error or "turn failed"
        events += [self._usage_event(), {"type": "turn.failed", "error": {"message": self.error}}]
        return events


def _usage_json(usage: dict[str, Any] | None) -> dict[str, int]:
    usage = usage or {}
    return {
        "input_tokens": int(usage.get("inputTokens") or 0),
        "cached_input_tokens": int(usage.get("cachedInputTokens") or 0),
        "cache_write_input_tokens": int(usage.get("cacheWriteInputTokens") or 0),
        "output_tokens": int(usage.get("outputTokens") or 0),
        "reasoning_output_tokens": int(usage.get("reasoningOutputTokens") or 0),
    }
