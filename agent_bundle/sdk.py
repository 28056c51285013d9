"""OpenAI's Codex Python SDK (`openai_codex`), imported once for the whole agent.

The SDK's import is most of the agent's start: its generated protocol (`generated.v2_all`)
is about 1,000 pydantic models, and pydantic builds each one's validator as its class is
made, 1.5 s of CPU in all on this machine, on a sandbox that may have one CPU. A turn uses a
few dozen of them. So the import asks pydantic to build each model when it is first used
instead (`defer_build`, pydantic's own setting for this), which saves about a third.

pydantic takes that setting per model only, so `ConfigDict` and `RootModel`'s config carry
it while the SDK imports, and are put back after. Anything unexpected falls back to a plain
import: only time is at stake, never a turn.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any

_lock = threading.Lock()


def import_sdk() -> ModuleType:
    """`openai_codex`, imported with its models' builds deferred (by the first call)."""
    with _lock:
        loaded = sys.modules.get("openai_codex")
        if loaded is None:
            try:
                with _deferred_builds():
                    import openai_codex.generated.v2_all
            except Exception:
                for name in [n for n in sys.modules if n.split(".")[0] == "openai_codex"]:
                    del sys.modules[name]
                import openai_codex.generated.v2_all  # noqa: F401
            loaded = sys.modules["openai_codex"]
        return loaded


@contextlib.contextmanager
def _deferred_builds() -> Iterator[None]:
    """Every pydantic model made inside has `defer_build`; pydantic as it was afterwards."""
    import pydantic

    plain = pydantic.ConfigDict
    root: dict[str, Any] = pydantic.RootModel.model_config  # type: ignore[assignment]
    saved = dict(root)

    def deferred(**settings: Any) -> Any:
        return plain(**{"defer_build": True, **settings})

    pydantic.ConfigDict = deferred  # type: ignore[misc,assignment]
    root["defer_build"] = True
    try:
        yield
    finally:
        pydantic.ConfigDict = plain  # type: ignore[misc]
        root.clear()
        root.update(saved)
