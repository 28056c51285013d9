"""The flags a `codex exec` user reaches for, on `ask`: -o, --output-schema and -i, end to end
(the emulator, the real Codex binary in the sandbox, the scripted model)."""

from __future__ import annotations

import base64
import json
import re
import struct
import time
import zlib
from typing import Any

import pytest

from tests.e2e import Rig
from tests.fakes.model import fail, msg, run, turn

pytestmark = pytest.mark.e2e


def png(rgb: tuple[int, int, int], size: int = 4) -> bytes:
    """A tiny valid PNG of one colour."""
    raw = b"".join(b"\x00" + bytes(rgb) * size for _ in range(size))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _ready(rig: Rig) -> None:
    result = rig.cli("up", "-q")
    assert result.code == 0, result


def _input_images(body: dict[str, Any]) -> list[str]:
    """The image URLs of the user messages in a model request."""
    urls = []
    for item in body.get("input") or []:
        for part in item.get("content") or [] if isinstance(item.get("content"), list) else []:
            if part.get("type") == "input_image":
                urls.append(str(part.get("image_url")))
    return urls


def test_output_last_message_writes_the_final_message(rig: Rig) -> None:
    rig.model.enqueue(turn(msg("not yet"), run("echo step")), turn(msg("the final answer")))
    out = rig.project / "last.txt"
    result = rig.cli("ask", "-o", str(out), "do it")
    assert result.code == 0, result
    assert out.read_text() == "the final answer"
    assert result.stdout == "the final answer\n"


def test_output_last_message_on_a_failed_turn_writes_nothing(rig: Rig) -> None:
    rig.model.enqueue(fail("the model broke"))
    out = rig.project / "last.txt"
    result = rig.cli("ask", "--output-last-message", str(out), "do it")
    assert result.code == 3, result
    assert not out.exists()


def test_output_last_message_without_a_message_writes_it_empty_with_a_warning(rig: Rig) -> None:
    rig.model.enqueue(turn(run("echo quiet")), turn())
    out = rig.project / "last.txt"
    out.write_text("stale")
    result = rig.cli("ask", "-q", "-o", str(out), "say nothing")
    assert result.code == 0, result
    assert out.read_text() == ""
    assert "No last agent message; wrote empty content to" in result.stderr


def test_output_last_message_to_a_missing_directory_is_a_usage_error(rig: Rig) -> None:
    before = len(rig.model.model_requests)
    result = rig.cli("ask", "-o", str(rig.project / "nowhere" / "last.txt"), "do it")
    assert result.code == 2, result
    assert "no such directory" in result.stderr
    assert len(rig.model.model_requests) == before
    assert not rig.record()


def test_output_schema_reaches_the_model_and_the_answer_is_the_json(rig: Rig) -> None:
    schema = {
        "type": "object",
        "properties": {"colour": {"type": "string"}, "count": {"type": "integer"}},
        "required": ["colour", "count"],
        "additionalProperties": False,
    }
    (rig.project / "schema.json").write_text(json.dumps(schema))
    answer = json.dumps({"colour": "red", "count": 3})
    rig.model.enqueue(turn(msg(answer)))
    result = rig.cli("ask", "-q", "--output-schema", "schema.json", "-o", "answer.json", "describe it")
    assert result.code == 0, result
    assert json.loads(result.stdout) == {"colour": "red", "count": 3}
    assert json.loads((rig.project / "answer.json").read_text()) == {"colour": "red", "count": 3}
    text_format = rig.model.model_requests[-1]["body"]["text"]["format"]
    assert text_format["type"] == "json_schema" and text_format["schema"] == schema
    # The schema is for that turn only.
    rig.model.enqueue(turn(msg("free text")))
    again = rig.cli("ask", "-q", "and now in words")
    assert again.code == 0, again
    assert "format" not in (rig.model.model_requests[-1]["body"].get("text") or {})


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "no such file"), ("{not json", "is not JSON"), ("[1, 2]", "not a JSON Schema object")],
)
def test_a_bad_output_schema_is_a_usage_error_before_anything_is_sent(
    rig: Rig, content: str | None, message: str
) -> None:
    if content is not None:
        (rig.project / "schema.json").write_text(content)
    since = time.time()
    result = rig.cli("ask", "--output-schema", "schema.json", "describe it")
    assert result.code == 2, result
    assert message in result.stderr and "Traceback" not in result.stderr
    assert rig.model.model_requests == []
    assert rig.requests(since) == []  # not a single Daytona request


def test_images_are_uploaded_and_reach_the_model(rig: Rig) -> None:
    _ready(rig)
    rig.model.enqueue(turn(msg("ok")), turn(msg("ok")))
    assert rig.cli("ask", "-q", "hello").code == 0  # the first turn also hands over the key
    since = time.time()
    plain = rig.cli("ask", "-q", "hello again")
    assert plain.code == 0, plain
    plain_requests = rig.round_trips(since)
    assert not [r for r in plain_requests if r["path"].endswith("/files/bulk-upload")]
    (rig.project / "red.png").write_bytes(png((255, 0, 0)))
    (rig.project / "shots").mkdir()
    (rig.project / "shots" / "red.png").write_bytes(png((0, 0, 255)))  # same name, other picture
    rig.model.enqueue(turn(msg("a red square and a blue one")))
    since = time.time()
    result = rig.cli("ask", "-q", "-i", "red.png", "--image", "shots/red.png", "what do you see?")
    assert result.code == 0, result
    assert result.stdout == "a red square and a blue one\n"
    urls = _input_images(rig.model.model_requests[-1]["body"])
    assert len(urls) == 2, rig.model.model_requests[-1]["body"]["input"]
    decoded = [base64.b64decode(u.split(",", 1)[1]) for u in urls]
    assert all(u.startswith("data:image/png;base64,") for u in urls)
    assert decoded[0] != decoded[1]  # both files arrived, neither overwrote the other
    # The images travel in one upload request, beside the usual requests of an ask.
    with_images = rig.round_trips(since)
    uploads = [r for r in with_images if r["path"].endswith("/files/bulk-upload")]
    assert len(uploads) == 1, with_images
    assert len(with_images) == len(plain_requests) + 1, (plain_requests, with_images)


def test_a_missing_image_is_a_usage_error(rig: Rig) -> None:
    result = rig.cli("ask", "-i", "nope.png", "what do you see?")
    assert result.code == 2, result
    assert "--image: no such file: nope.png" in result.stderr
    assert rig.model.model_requests == []


def test_help_shows_the_flags(rig: Rig) -> None:
    result = rig.cli("ask", "--help")
    assert result.code == 0, result
    # Each flag on its option line, the short form beside the long one (a bare "-o" or "-i"
    # would be found inside "--output-schema" or "--image").
    for line in (r"-o, --output-last-message FILE", r"--output-schema FILE", r"-i, --image FILE"):
        assert re.search(rf"^\s*{line}\s", result.stdout, re.MULTILINE), (line, result.stdout)
