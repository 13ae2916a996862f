"""The MCP wing's pure parts: tool names, images out of outputs, error lines, guides, the bridge's URL."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from mcp import types
from pydantic import BaseModel, Field

from framewire.bench.floor import LoopEngine
from framewire.engine.api import App, AppRegistry, endpoint
from framewire.engine.apps.echo import EchoApp
from framewire.gateway.mcp import content
from framewire.gateway.mcp.bridge import mcp_url
from framewire.gateway.mcp.guide import guide
from framewire.gateway.mcp.tools import MAX_NAME, Action, ToolBook, tool_names
from framewire.gateway.platform.auth import Authenticator, AuthError, Principal, StaticKeys, TokenIssuer
from framewire.gateway.platform.catalog import openapi_document
from framewire.gateway.storage.store import FileStore


class In(BaseModel):
    prompt: str = Field(..., max_length=100, description="What | to draw")
    steps: int = Field(4, ge=1, le=8)


class Out(BaseModel):
    n: int


class SubPathApp(App):
    app_id = "acme/tool-maker"
    title = "Tool maker"

    @endpoint("/")
    def root(self, inp: In) -> Out:
        return Out(n=0)

    @endpoint("/image-to-image")
    def sub(self, inp: In) -> Out:
        return Out(n=1)


def test_tool_names_keep_to_safe_characters_and_the_length_limit() -> None:
    assert tool_names(Action.RUN, ["framewire/sdxl-turbo", "fal-ai/x.y/image-to-image"]) == [
        "run_framewire_sdxl-turbo",
        "run_fal-ai_x_y_image-to-image",
    ]
    long_key = "owner/" + "a" * 100
    [name] = tool_names(Action.SUBMIT, [long_key])
    assert len(name) == MAX_NAME and name.startswith("submit_owner_aaa")
    assert tool_names(Action.SUBMIT, [long_key + "b"]) != [name]  # the hash tells long ids apart


def test_ids_that_would_share_a_name_get_distinct_names_whatever_their_order() -> None:
    keys = ["a_b/c", "a/b_c", "other/app"]
    names = tool_names(Action.RUN, keys)
    assert len(set(names)) == 3 and names[2] == "run_other_app"
    assert names[0].startswith("run_a_b_c_") and names[1].startswith("run_a_b_c_")
    assert tool_names(Action.RUN, list(reversed(keys))) == list(reversed(names))


def test_the_tool_book_offers_each_endpoint_to_the_keys_that_may_use_its_app() -> None:
    registry = AppRegistry([EchoApp(), SubPathApp()])
    book = ToolBook(registry)
    everyone = [tool.name for tool in book.definitions(Principal("k"))]
    assert everyone[6:] == [
        "run_framewire_echo",
        "submit_framewire_echo",
        "run_acme_tool-maker",
        "submit_acme_tool-maker",
        "run_acme_tool-maker_image-to-image",
        "submit_acme_tool-maker_image-to-image",
    ]
    scoped = [tool.name for tool in book.definitions(Principal("k", apps=frozenset({"tool-maker"})))]
    assert "run_framewire_echo" not in scoped and "run_acme_tool-maker" in scoped
    run = next(t for t in book.definitions(Principal("k")) if t.name == "run_acme_tool-maker_image-to-image")
    assert run.input_schema == In.model_json_schema()
    assert "submit_acme_tool-maker_image-to-image" in (run.description or "")
    assert book.input_schema("run_acme_tool-maker") == In.model_json_schema()
    assert book.input_schema("get_status") is not None and book.input_schema("run_nothing") is None
    found = book.get("submit_acme_tool-maker")
    assert found is not None and found.action == Action.SUBMIT and found.endpoint.spec.path == ""


def test_inline_images_leave_the_json_and_stored_files_are_found_by_url() -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 20
    inline = "data:image/png;base64," + base64.b64encode(png).decode()
    body = {
        "images": [{"url": "http://other-name:8000/files/" + "A" * 22 + "/out.jpg", "content_type": "image/jpeg"}],
        "preview": inline,
        "raw": "data:application/octet-stream;base64,AAAA",
        "note": "https://example.com/files/not-an-id/x",
    }
    clean, images = content.collect_images(body)
    assert clean["preview"] == "(image/png, 28 bytes: returned as image 2 of this result)"
    assert clean["raw"] == body["raw"] and clean["images"] == body["images"] and clean["note"] == body["note"]
    assert [(i.file, i.data_b64 is not None) for i in images] == [(("A" * 22, "out.jpg"), False), (None, True)]


def test_images_past_the_limits_stay_out_of_the_result() -> None:
    big = "data:image/jpeg;base64," + "A" * (content.MAX_IMAGE_BYTES // 3 * 4 + 8)
    clean, images = content.collect_images({"big": big, "many": ["data:image/gif;base64,R0lG"] * 10})
    assert images and len(images) == content.MAX_IMAGES
    assert "larger than" in clean["big"] and "base64" not in clean["big"]
    assert "past the 8 images" in clean["many"][-1] and "returned as image 8" in clean["many"][7]


async def test_stored_images_are_read_back_and_other_files_are_not(tmp_path: Path) -> None:
    files = FileStore(tmp_path, max_bytes=1 << 20, default_ttl_s=0)
    files.ensure()
    jpeg = files.put_bytes(b"\xff\xd8\xff" + b"1" * 10, "image/jpeg")
    text = files.put_bytes(b"hello", "text/plain")
    body = {"a": "http://h" + jpeg.url_path, "b": "http://h" + text.url_path, "c": "http://h" + jpeg.url_path}
    result = await content.output_result(body, files)
    [image] = [c for c in result.content if isinstance(c, types.ImageContent)]
    assert image.mime_type == "image/jpeg" and base64.b64decode(image.data) == b"\xff\xd8\xff" + b"1" * 10
    assert result.structured_content == body and not result.is_error


def test_error_lines_name_each_failing_field() -> None:
    detail = [
        {"loc": ["body", "image_size", "width"], "msg": "Input should be greater than 0", "type": "x"},
        {"loc": ["body", "prompt"], "msg": "Field required", "type": "missing"},
    ]
    result = content.error(detail, "validation_error", "Invalid input for run_x: ")
    [line] = result.content
    assert isinstance(line, types.TextContent) and result.is_error
    assert line.text == (
        "Invalid input for run_x: image_size.width: Input should be greater than 0; prompt: Field required"
        " (validation_error)"
    )
    assert result.structured_content == {"detail": detail, "error_type": "validation_error"}


def test_a_guide_lists_each_field_with_its_default_and_limits() -> None:
    app = SubPathApp()
    registry = AppRegistry([app])
    book = ToolBook(registry)
    names = {ep.key: book.names_of(ep) for ep in registry.endpoints_of(app).values()}
    page = guide(app, LoopEngine(registry), openapi_document(app, registry), names)
    assert page.startswith("# Tool maker (`acme/tool-maker`)")
    assert "## `acme/tool-maker/image-to-image`" in page and "`run_acme_tool-maker_image-to-image`" in page
    assert "| `prompt` | string | (required) | max length 100 | What \\| to draw |" in page
    assert "| `steps` | integer | `4` | ≥ 1, ≤ 8 |  |" in page


def test_bearer_carries_a_key_only_where_asked() -> None:
    auth = Authenticator(True, StaticKeys(["k1:secret"]), TokenIssuer("t" * 32))
    assert auth.request({"authorization": "Bearer k1:secret"}, bearer_keys=True).key_id == "k1"
    with pytest.raises(AuthError, match="invalid API key"):
        auth.request({"authorization": "Bearer k1:wrong"}, bearer_keys=True)
    with pytest.raises(AuthError, match="invalid token"):
        auth.request({"authorization": "Bearer k1:secret"})  # elsewhere a bearer is a token
    token = auth.tokens.issue(Principal("k1"), ["framewire/echo"], 60)
    assert auth.request({"authorization": f"Bearer {token}"}, bearer_keys=True).apps == frozenset({"framewire/echo"})


def test_the_bridge_takes_a_base_url_or_the_mcp_url() -> None:
    assert mcp_url("http://127.0.0.1:8000") == "http://127.0.0.1:8000/mcp"
    assert mcp_url("https://edge.example/") == "https://edge.example/mcp"
    assert mcp_url("https://edge.example/prefix/mcp") == "https://edge.example/prefix/mcp"
    with pytest.raises(ValueError, match="--url"):
        mcp_url("edge.example:8000")
