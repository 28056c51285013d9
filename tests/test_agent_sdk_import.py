"""The agent imports Codex's SDK with its ~1,000 generated pydantic models built on first use
(agent_bundle.sdk): each model still validates, pydantic is left as it was, and any failure
of that falls back to the plain import. Each check runs in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import REPO


def _python(code: str) -> str:
    ran = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == 0, ran.stderr
    return ran.stdout


def test_the_sdk_imports_with_builds_deferred_and_its_models_still_validate() -> None:
    out = _python(
        """
        import pydantic
        from agent_bundle.sdk import import_sdk
        sdk = import_sdk()
        assert import_sdk() is sdk
        from openai_codex.generated import v2_all
        # Deferred: not built at import...
        assert not v2_all.ThreadStartParams.__pydantic_complete__
        assert not v2_all.AbsolutePathBuf.__pydantic_complete__  # a RootModel
        # ... yet each validates, and rejects, as a plainly built one does.
        assert v2_all.AbsolutePathBuf.model_validate("/home/daytona").root == "/home/daytona"
        params = v2_all.ThreadStartParams.model_validate({"cwd": "/home/daytona"})
        assert params.cwd == "/home/daytona" and v2_all.ThreadStartParams.__pydantic_complete__
        try:
            v2_all.ApiKeyAccount.model_validate({"type": "nope"})
        except pydantic.ValidationError:
            print("rejected")
        # pydantic as it was: models made afterwards are built at once.
        assert pydantic.ConfigDict is pydantic.config.ConfigDict
        assert "defer_build" not in pydantic.RootModel.model_config
        class Later(pydantic.BaseModel):
            model_config = pydantic.ConfigDict(populate_by_name=True)
            x: int
        assert Later.__pydantic_complete__
        print("ok")
        """
    )
    assert out.split() == ["rejected", "ok"]


def test_a_failing_deferred_import_falls_back_to_the_plain_one() -> None:
    out = _python(
        """
        import contextlib, pydantic
        import agent_bundle.sdk as sdk_module
        @contextlib.contextmanager
        def broken():
            import openai_codex  # half imported, then it fails
            raise RuntimeError("pydantic changed")
            yield
        sdk_module._deferred_builds = broken
        sdk = sdk_module.import_sdk()
        from openai_codex.generated import v2_all
        assert v2_all.ThreadStartParams.__pydantic_complete__  # built the plain way
        assert sdk.Codex is not None
        print("ok")
        """
    )
    assert out.split() == ["ok"]
