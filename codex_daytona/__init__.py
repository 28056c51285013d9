"""Run OpenAI's Codex agent inside a Daytona sandbox, one command at a time."""

__version__ = "0.1.0"
