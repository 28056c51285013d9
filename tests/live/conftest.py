"""The live suite's report: every check of test_live_contact.py, one row each, printed at the
end of the run so that the first person with keys can paste it in one go."""

from __future__ import annotations

from typing import Any

CHECKS: list[tuple[str, str, str]] = []  # (what, outcome, detail)


def record(what: str, outcome: str, detail: str = "") -> None:
    CHECKS.append((what, outcome, detail.strip().replace("\n", " | ")[:160]))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not CHECKS:
        return
    terminalreporter.section("live checks against real Daytona")
    width = max(len(what) for what, _, _ in CHECKS)
    for what, outcome, detail in CHECKS:
        terminalreporter.write_line(f"{what:<{width}}  {outcome:<8}  {detail}")
