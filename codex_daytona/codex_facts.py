"""What the tool knows of the pinned Codex (openai-codex 0.163) that the CLI needs while it
parses options: standard library only, so `--help` stays instant."""

from __future__ import annotations

# ReasoningEffort in Codex 0.163's app-server schema.
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max", "ultra")
