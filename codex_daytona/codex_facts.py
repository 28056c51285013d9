"""What the tool knows of the pinned Codex (openai-codex 0.163) that the CLI needs while it
parses options: standard library only, so `--help` stays instant."""

from __future__ import annotations

# ReasoningEffort in Codex 0.163's app-server schema.
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max", "ultra")

# The longest text input Codex takes for one turn, in characters (Unicode scalar values, not
# bytes): the app-server refuses more with JSON-RPC -32602 "Input exceeds the maximum length of
# 1048576 characters." (measured on 0.163: 1,048,576 characters pass, one more is refused;
# 524,289 four-byte characters pass).
MAX_INPUT_CHARS = 1 << 20
