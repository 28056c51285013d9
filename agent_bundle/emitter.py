"""A run's events: to its event file, and to whoever listens."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any


class Emitter:
    """Writes a run's events to its event file and, while someone listens, to a stream."""

    def __init__(self, events_path: Path | None, stream: Any, secrets: list[str]) -> None:
        self._stream = stream
        self._file = events_path.open("a", encoding="utf-8") if events_path else None
        self._secrets = [s for s in secrets if s]
        self._lock = threading.Lock()

    def add_secret(self, secret: str) -> None:
        if secret:
            self._secrets.append(secret)

    def emit(self, event: dict[str, Any]) -> None:
        # Every event carries when it was written (`ts`, seconds since the epoch), so a reader
        # can tell how late it arrived; `make bench` measures the CLI's event latency with it.
        event = {**event, "ts": event.get("ts", round(time.time(), 6))}
        line = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
        for secret in self._secrets:
            line = line.replace(secret, "***")
        with self._lock:
            if self._file is not None:
                self._file.write(line + "\n")
                self._file.flush()
            if self._stream is not None:
                try:
                    self._stream.write(line + "\n")
                    self._stream.flush()
                except (OSError, ValueError):
                    # The client went away: the run goes on, its events stay in the file.
                    self._stream = None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
