"""Prerequisites a test needs: on a developer's machine a missing one skips the test and says
what to install; in CI (`CI` set, as CI services do, or `REQUIRE_TEST_PREREQUISITES`, as
`.ci/run` does) it fails it, so that a claim nobody checked never passes for a checked one."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return any(
        os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")
        for name in ("CI", "REQUIRE_TEST_PREREQUISITES")
    )


def skip_unless_ci(why: str) -> NoReturn:
    """Skips with `why`, or fails with it in CI."""
    if in_ci():
        pytest.fail(f"{why} (in CI, so this test may not be skipped)", pytrace=False)
    pytest.skip(why)
