"""The per-app OpenAPI documents and the server rules they publish, checked one by one.

(The whole of each document is checked against the server by Schemathesis in
``test_conformance.py``; these tests pin the pieces and the rules behind them.)
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import msgpack
import pytest
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR
from starlette.testclient import TestClient

from framewire.engine.api import FILE_TEXT_PATTERN, AppRegistry, FrameResult
from framewire.engine.apps.echo import EchoApp, EchoInput
from framewire.engine.apps.lcm import LcmApp, LcmInput
from framewire.engine.host import LocalEngine
from framewire.gateway.app import create_app
from framewire.gateway.http import prefers_msgpack
from framewire.gateway.platform.openapi import Surface, openapi_document, schema_refs
from framewire.gateway.requests import validation
from framewire.gateway.settings import Settings
from tests.conftest import BatchingApp, live_surfaces
from tests.gateway.shapes_app import ShapesApp

KEY = "docs:secret-key"


def document(app_id: str, surface: Surface = Surface.RUN, auth: bool = False) -> dict[str, Any]:
    registry = AppRegistry([EchoApp(), LcmApp(), ShapesApp(), BatchingApp()])
    app = registry.get(app_id)
    assert app is not None
    return openapi_document(app, registry, surface, auth)


def validator(doc: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    """A validator for ``schema`` whose ``$ref`` s resolve into ``doc``'s components."""
    return jsonschema.Draft202012Validator({**schema, "components": doc["components"]})


@pytest.fixture
def client(tmp_path: Any) -> Iterator[TestClient]:
    engine = LocalEngine(AppRegistry([EchoApp(), ShapesApp(), BatchingApp()]))
    with TestClient(create_app(Settings(data_dir=str(tmp_path)), engine)) as c:
        yield c


@pytest.mark.parametrize("app_id", ["framewire/echo", "framewire/lcm", "test/shapes", "test/batching"])
@pytest.mark.parametrize("surface", list(Surface))
@pytest.mark.parametrize("auth", [False, True])
def test_documents_are_valid_openapi_3_1_with_every_ref_landing(app_id: str, surface: Surface, auth: bool) -> None:
    doc = document(app_id, surface, auth)
    OPENAPI_31_VALIDATOR.validate(doc)
    schemas = doc["components"]["schemas"]
    for ref in schema_refs(doc):
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
    for schema in schemas.values():
        jsonschema.Draft202012Validator.check_schema(schema)


def test_each_surface_documents_the_operations_it_takes() -> None:
    run = {path: sorted(item) for path, item in document("framewire/lcm", Surface.RUN)["paths"].items()}
    assert run == {
        "/framewire/lcm": ["get", "post"],
        "/framewire/lcm/stream": ["post"],
        "/framewire/lcm/image-to-image": ["get", "post"],
        "/framewire/lcm/image-to-image/stream": ["post"],
        "/framewire/lcm/realtime": ["get"],
        "/framewire/lcm/image-to-image/realtime": ["get"],
        "/framewire/lcm/video/start-session": ["post"],
    }
    queue = {path: sorted(item) for path, item in document("framewire/lcm", Surface.QUEUE)["paths"].items()}
    assert queue == {
        "/framewire/lcm": ["post"],
        "/framewire/lcm/image-to-image": ["post"],
        "/framewire/lcm/requests/{request_id}": ["get"],
        "/framewire/lcm/requests/{request_id}/status": ["get"],
        "/framewire/lcm/requests/{request_id}/status/stream": ["get"],
        "/framewire/lcm/requests/{request_id}/cancel": ["post", "put"],
    }
    # An endpoint at .../realtime: its path runs on POST and opens sessions on GET (no GET run there).
    batching = document("test/batching")["paths"]["/test/batching/realtime"]
    assert batching["get"]["tags"] == ["realtime"] and "requestBody" in batching["post"]


def test_security_is_what_the_server_reads_in_each_mode() -> None:
    off, on = document("framewire/echo"), document("framewire/echo", auth=True)
    assert off["security"] == [] and "securitySchemes" not in off["components"]
    assert on["security"] == [{"falKey": []}, {"falToken": []}]
    schemes = on["components"]["securitySchemes"]
    assert schemes["falKey"] == {**schemes["falKey"], "type": "apiKey", "in": "header", "name": "Authorization"}
    assert schemes["falToken"]["in"] == "query" and schemes["falToken"]["name"] == "fal_jwt_token"
    run = on["paths"]["/framewire/echo"]["post"]["responses"]
    assert {"401", "403", "429"} <= run.keys()
    assert "401" not in off["paths"]["/framewire/echo"]["post"]["responses"]


def test_every_answer_is_declared_with_fal_error_shapes() -> None:
    doc = document("framewire/echo", Surface.QUEUE, auth=True)
    submit = doc["paths"]["/framewire/echo"]["post"]["responses"]
    assert {"200", "400", "401", "403", "405", "422", "429", "500", "503"} <= submit.keys()
    for op in ("status", "", "cancel"):
        path = "/framewire/echo/requests/{request_id}" + (f"/{op}" if op else "")
        method = "put" if op == "cancel" else "get"
        responses = doc["paths"][path][method]["responses"]
        assert responses["404"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
        assert responses["405"]["headers"]["Allow"]["required"] is True
    error = validator(doc, {"$ref": "#/components/schemas/Error"})
    error.validate({"detail": "Path /x not found"})
    error.validate({"detail": [{"loc": ["body", "steps"], "msg": "too big", "type": "less_than_equal"}]})
    assert not error.is_valid({"status": "NOT_FOUND"})  # every error has a detail


def test_queue_shapes_follow_fal() -> None:
    doc = document("framewire/echo", Surface.QUEUE)
    schemas = doc["components"]["schemas"]
    assert set(schemas["QueueSubmitted"]["required"]) >= {
        "status",
        "request_id",
        "response_url",
        "status_url",
        "cancel_url",
        "queue_position",
    }
    status = doc["paths"]["/framewire/echo/requests/{request_id}/status"]["get"]
    assert [p["name"] for p in status["parameters"]] == ["request_id", "logs"]
    queued = validator(doc, status["responses"]["202"]["content"]["application/json"]["schema"])
    urls = {"response_url": "u", "status_url": "u/status", "cancel_url": "u/cancel"}
    request_id = "5a8a3f06-5d5a-4a7c-9d6e-3e4a8d7a0c11"
    queued.validate({"status": "IN_QUEUE", "request_id": request_id, **urls, "queue_position": 0, "logs": None})
    assert not queued.is_valid({"status": "IN_QUEUE", "request_id": request_id, **urls, "logs": None})  # no position
    assert not queued.is_valid({"status": "FAILED", "request_id": request_id, **urls, "logs": None})
    log = {"message": "Running", "level": "INFO", "source": "USER", "timestamp": "2026-01-01T00:00:00+00:00"}
    queued.validate({"status": "IN_PROGRESS", "request_id": request_id, **urls, "logs": [log]})
    done = validator(doc, status["responses"]["200"]["content"]["application/json"]["schema"])
    done.validate({"status": "COMPLETED", "request_id": request_id, **urls, "logs": None, "metrics": {}})
    links = doc["paths"]["/framewire/echo"]["post"]["responses"]["200"]["links"]
    assert {link["operationId"] for link in links.values()} == {"queue_status", "queue_result", "queue_cancel"}


def test_file_fields_take_a_data_uri_an_url_or_bytes_and_nothing_else() -> None:
    doc = document("framewire/lcm")
    image_url = doc["components"]["schemas"]["LcmImageInput"]["properties"]["image_url"]
    assert image_url["pattern"] == FILE_TEXT_PATTERN and image_url["type"] == "string"
    frame = doc["components"]["schemas"]["LcmImageInputMsgpack"]["properties"]["image_url"]
    assert {"type": "string", "format": "binary"} in frame["anyOf"]  # msgpack frames may carry bin
    accepted = validator(doc, image_url)
    for text in ("data:image/jpeg;base64,/9j/4AA=", "https://example.com/cat.png"):
        assert accepted.is_valid(text)
        assert LcmInput.model_validate({"prompt": "p", "image_url": text}).image_url == text
    for text in ("", "cat.png", "data:image/png;base64,!!", "data:,percent%20encoded", "ftp://example.com/x"):
        assert not accepted.is_valid(text)
        with pytest.raises(ValueError, match="base64 data: URI or an http"):
            LcmInput.model_validate({"prompt": "p", "image_url": text})


def test_outputs_are_described_as_each_surface_sends_them() -> None:
    doc = document("framewire/lcm")
    schemas = doc["components"]["schemas"]
    image = schemas["Image"]  # JSON: the file's content is a URL (stored file or data URI)
    assert image["properties"]["content"]["type"] == "null" and "url" in image["required"]  # never bytes
    assert "content" in schemas["ImageMsgpack"]["properties"]  # msgpack: inline bytes
    timings = schemas["ImageOutput"]["properties"]["timings"]["properties"]
    assert timings["target_met"] == {"type": "boolean"} and "queue_ms" in timings
    echo = document("framewire/echo")["components"]["schemas"]["EchoOutput"]["properties"]["image"]
    assert {"type": "string", "pattern": "^data:[^,]*;base64,[A-Za-z0-9+/]*={0,2}$"} in echo["anyOf"]


def test_the_engine_timings_fit_their_schema() -> None:
    result = FrameResult(
        None, None, 1.0, 2.0, 0, latency_ms=3.0, target_latency_ms=5.0, degraded=1, degradation="x", skipped="exact"
    )
    schema = document("framewire/echo")["components"]["schemas"]["EchoOutput"]["properties"]["timings"]
    jsonschema.validate(result.timings, schema)


def test_the_realtime_operation_describes_the_upgrade_and_its_frames() -> None:
    doc = document("framewire/echo")
    op = doc["paths"]["/framewire/echo/realtime"]["get"]
    headers = {p["name"]: p for p in op["parameters"] if p["in"] == "header"}
    assert headers["Upgrade"]["schema"]["const"] == "websocket" and headers["Sec-WebSocket-Version"]["required"]
    assert set(op["responses"]) == {"101", "403", "405", "426", "408", "414", "431", "503"}
    assert op["x-fal-protocol"]["contentType"] == "application/msgpack"
    socket = op["x-framewire-websocket"]
    assert socket["client"]["binary"]["schema"] == {"$ref": "#/components/schemas/EchoInputFrame"}
    assert socket["server"]["binary"]["schema"] == {"$ref": "#/components/schemas/EchoOutputFrame"}
    # Not every endpoint is marked realtime, but every one takes sessions.
    plain = document("framewire/lcm")["paths"]["/framewire/lcm/image-to-image/realtime"]["get"]
    assert "x-fal-protocol" not in plain and "x-framewire-websocket" in plain


def test_a_realtime_session_sends_frames_its_document_describes(client: TestClient) -> None:
    doc = client.get("/models/framewire/echo/openapi.json").json()
    socket = doc["paths"]["/framewire/echo/realtime"]["get"]["x-framewire-websocket"]
    frame_in = validator(doc, socket["client"]["binary"]["schema"])
    frame_out = validator(doc, socket["server"]["binary"]["schema"])
    text = validator(doc, socket["server"]["text"]["schema"])
    sent = {"image_url": b"\xff\xd8jpeg", "prompt": "a frame", "request_id": "r1"}
    frame_in.validate(_as_text(sent))
    with client.websocket_connect("/framewire/echo/realtime") as ws:
        ws.send_bytes(msgpack.packb(sent))
        output = msgpack.unpackb(ws.receive_bytes(), raw=False)
        assert output["image"] == b"\xff\xd8jpeg" and output["request_id"] == "r1"
        frame_out.validate(_as_text(output))
        ws.send_bytes(msgpack.packb({"delay_ms": 5000}))
        text.validate(ws.receive_json())


def _as_text(value: Any) -> Any:
    """msgpack values as JSON Schema reads them: bin is text (``format: binary``)."""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, dict):
        return {k: _as_text(v) for k, v in value.items()}
    return value


# -- the rules behind the documents ---------------------------------------------------------------


def test_json_bodies_are_checked_by_json_types(client: TestClient) -> None:
    for body in ({"delay_ms": "5"}, {"prompt": 5}, {"count": True}, {"ratio": "0.5"}, {"mode": 1}):
        path = "/framewire/echo" if "delay_ms" in body or "prompt" in body else "/test/shapes"
        res = client.post(path, json=body)
        assert res.status_code == 422, (body, res.text)
    assert len(client.post("/test/shapes", json={"count": 2.0}).json()["attachments"]) == 2  # 2.0 is an integer
    assert client.post("/test/shapes", json={"mode": "careful", "size": {"width": 2, "height": 3}}).json()["area"] == 6
    assert validation.from_json(EchoInput, {"delay_ms": 1}).delay_ms == 1.0  # an integer is a number


def test_get_runs_read_the_fields_a_query_string_can_carry(client: TestClient) -> None:
    res = client.get("/test/shapes", params={"count": "2", "mode": "careful", "ratio": "0.25", "fal_jwt_token": "x"})
    assert res.status_code == 200 and res.json()["mode"] == "careful" and len(res.json()["attachments"]) == 2
    assert validation.query_fields(LcmInput) is not None and validation.query_fields(LcmInput)["prompt"]["maxLength"]
    limit = validation.query_fields(EchoInput)["prompt"]["maxLength"]  # type: ignore[index]
    too_long = client.get("/framewire/echo", params={"prompt": "x" * (limit + 1)})
    assert too_long.status_code == 422 and too_long.json()["detail"][0]["loc"] == ["query", "prompt"]
    box = client.get("/test/shapes/box")  # a required object field: no GET run
    assert box.status_code == 405 and box.headers["allow"] == "POST"


def test_a_body_may_be_left_out_only_where_every_field_has_a_default(client: TestClient) -> None:
    assert client.post("/framewire/echo").status_code == 200
    assert client.post("/test/shapes/box").status_code == 422
    doc = client.get("/models/test/shapes/openapi.json").json()
    assert doc["paths"]["/test/shapes"]["post"]["requestBody"]["required"] is False
    assert doc["paths"]["/test/shapes/box"]["post"]["requestBody"]["required"] is True


def test_unsupported_methods_get_405_with_allow_on_every_route(client: TestClient) -> None:
    cases = [
        ("PUT", "/framewire/echo", "http://testserver", "GET, POST"),
        ("DELETE", "/framewire/echo/stream", "http://testserver", "POST"),
        ("PATCH", "/framewire/echo/realtime", "http://testserver", "GET"),
        ("GET", "/framewire/echo", "http://queue.testserver", "POST"),
        ("POST", "/framewire/echo/requests/abc/status", "http://queue.testserver", "GET, HEAD"),
        ("GET", "/framewire/echo/requests/abc/cancel", "http://queue.testserver", "POST, PUT"),
        ("POST", "/models/framewire/echo/openapi.json", "http://testserver", "GET, HEAD"),
        ("DELETE", "/health", "http://testserver", "GET, HEAD"),
    ]
    for method, path, base, allow in cases:
        res = client.request(method, base + path)
        assert res.status_code == 405, (method, path, res.text)
        assert res.headers["allow"] == allow and res.json()["error_type"] == "method_not_allowed"


def test_plain_http_on_a_websocket_path_gets_426(client: TestClient) -> None:
    for path in ("/framewire/echo/realtime", "/framewire/echo/ws", "/test/batching/realtime"):
        res = client.get(path)
        assert res.status_code == 426 and res.headers["upgrade"] == "websocket"
        assert "WebSocket" in res.json()["detail"]
    assert client.post("/test/batching/realtime", json={"n": 3}).json()["n"] == 3  # and it still runs


def test_paths_no_route_takes_answer_in_fal_shape(client: TestClient) -> None:
    res = client.post("/framewire/echo/requests/a%0Ab/cancel")  # no route takes a newline
    assert res.status_code == 404 and res.json() == {"detail": "Not Found"} and res.headers["x-fal-request-id"]


def test_msgpack_answers_when_the_client_prefers_it(client: TestClient) -> None:
    image = b"\xff\xd8not really a jpeg"
    body = {"image_url": "data:image/jpeg;base64," + base64.b64encode(image).decode(), "count": 1, "text": "hi"}
    res = client.post("/test/shapes", json=body, headers={"accept": "application/msgpack"})
    assert res.status_code == 200 and res.headers["content-type"] == "application/msgpack"
    out = msgpack.unpackb(res.content, raw=False)
    assert out["attachments"][0]["url"].startswith("http://testserver/files/")  # sync_mode off: stored
    doc = client.get("/models/test/shapes/openapi.json").json()
    schema = doc["paths"]["/test/shapes"]["post"]["responses"]["200"]["content"]["application/msgpack"]["schema"]
    validator(doc, schema).validate(_as_text(out))
    echoed = client.post(
        "/framewire/echo", json={"image_url": body["image_url"]}, headers={"accept": "application/msgpack"}
    )
    assert msgpack.unpackb(echoed.content, raw=False)["image"] == image  # bytes inline, not a data URI
    refused = client.post("/test/shapes", json={"count": 9}, headers={"accept": "application/msgpack"})
    assert refused.status_code == 422 and refused.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("accept", "msgpack_wins"),
    [
        (None, False),
        ("*/*", False),
        ("application/msgpack", True),
        ("application/json, application/msgpack", False),
        ("application/json;q=0.5, application/msgpack", True),
        ("application/x-msgpack;q=0.9, */*;q=0.1", True),
        ("application/msgpack;q=0", False),
    ],
)
def test_accept_headers_rank_msgpack_and_json(accept: str | None, msgpack_wins: bool) -> None:
    assert prefers_msgpack(accept) is msgpack_wins


def test_an_empty_bytes_output_is_a_data_uri_not_a_server_error(client: TestClient) -> None:
    res = client.post("/framewire/echo", json={"image_url": "data:image/png;base64,"})
    assert res.status_code == 200 and res.json()["image"] == "data:application/octet-stream;base64,"


def test_documents_follow_the_surface_and_the_auth_mode(tmp_path: Any) -> None:
    engine = LocalEngine(AppRegistry([EchoApp()]))
    settings = Settings(data_dir=str(tmp_path), auth=True, api_keys=(KEY,))
    with TestClient(create_app(settings, engine)) as c:
        headers = {"Authorization": f"Key {KEY}"}
        run = c.get("/models/framewire/echo/openapi.json", headers=headers).json()
        queue = c.get("http://queue.testserver/models/framewire/echo/openapi.json", headers=headers).json()
    assert run["servers"] == [{"url": "http://testserver"}] and "/framewire/echo/stream" in run["paths"]
    assert queue["servers"] == [{"url": "http://queue.testserver"}]
    assert (
        "/framewire/echo/requests/{request_id}/status" in queue["paths"]
        and "/framewire/echo/stream" not in queue["paths"]
    )
    assert run["security"] == queue["security"] == [{"falKey": []}, {"falToken": []}]


# -- the limits, as the hardened server enforces them ----------------------------------------------

SMALL_LIMITS = {"max_body_bytes": 4096, "max_input_items": 100, "max_header_bytes": 2048, "max_connections": 64}


def test_every_refusal_of_a_limit_is_declared_with_its_number(tmp_path: Any) -> None:
    settings = Settings(data_dir=str(tmp_path), **SMALL_LIMITS)  # type: ignore[arg-type]
    with live_surfaces(settings, [EchoApp()]) as (run_address, queue_address):
        run_doc = httpx.get(f"http://{run_address}/models/framewire/echo/openapi.json").json()
        queue_doc = httpx.get(f"http://{queue_address}/models/framewire/echo/openapi.json").json()
        # One connection per request: each refusal is then the answer to that request alone.
        run, queue = f"http://{run_address}/framewire/echo", f"http://{queue_address}/framewire/echo"
        answers = [
            ("post", httpx.post(run, json={"prompt": "x" * 5000}), "4096"),  # bytes
            ("post", httpx.post(run, json={"more": list(range(200))}), "100"),  # items
            ("post", httpx.post(run, content=b"{}", headers={"content-type": "text/plain"}), None),
            ("post", httpx.post(run, json={}, headers={"origin": "http://evil.example"}), None),
            ("get", httpx.get(run, headers={"x-padding": "p" * 3000}), "2048"),
            ("get", httpx.get(run, params={"prompt": "p" * 3000}), "2048"),
            ("post", httpx.post(queue, json={"prompt": "x" * 5000}), "4096"),
        ]
    statuses = []
    for method, res, number in answers:
        doc = queue_doc if res.url.port == int(queue_address.rsplit(":", 1)[1]) else run_doc
        declared = doc["paths"]["/framewire/echo"][method]["responses"]
        statuses.append(res.status_code)
        assert str(res.status_code) in declared, (method, res.status_code, res.text)
        response = declared[str(res.status_code)]
        validator(doc, response["content"]["application/json"]["schema"]).validate(res.json())
        if number is not None:
            assert number in response["description"], response["description"]
    assert statuses == [413, 413, 415, 403, 431, 414, 413]
    for doc in (run_doc, queue_doc):
        limits = doc["info"]["x-framewire-limits"]
        assert {k: limits[k] for k in SMALL_LIMITS} == SMALL_LIMITS
    socket = run_doc["paths"]["/framewire/echo/realtime"]["get"]["x-framewire-websocket"]["client"]["binary"]
    assert socket["maxBytes"] == Settings().max_frame_bytes and socket["maxItems"] == 100


def test_get_runs_and_the_status_poll_take_no_body_so_declare_no_body_limits() -> None:
    run = document("framewire/echo")["paths"]["/framewire/echo"]
    assert {"413", "415"} <= run["post"]["responses"].keys()
    assert not {"413", "415"} & run["get"]["responses"].keys()
    assert {"408", "414", "431", "503"} <= run["get"]["responses"].keys()
    status = document("framewire/echo", Surface.QUEUE)["paths"]["/framewire/echo/requests/{request_id}/status"]
    assert "413" not in status["get"]["responses"] and "431" in status["get"]["responses"]
