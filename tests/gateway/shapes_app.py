"""An app of many field shapes, loaded with ``framewire serve --app``: enums, nested models,
lists, bounded and optional numbers, raw bytes, a file input, files and bytes in the output,
and an endpoint whose required object field keeps it off GET runs."""

from __future__ import annotations

import enum

from pydantic import BaseModel, Field

from framewire.engine.api import App, FileInput, InputError, endpoint, realtime


class Mode(enum.Enum):
    FAST = "fast"
    CAREFUL = "careful"


class Size(BaseModel):
    width: int = Field(ge=1, le=64)
    height: int = Field(ge=1, le=64)


class ShapesInput(BaseModel):
    text: str = Field("", max_length=200)
    mode: Mode = Mode.FAST
    count: int = Field(1, ge=1, le=5)
    ratio: float | None = Field(None, gt=0.0, lt=1.0)
    tags: list[str] = Field(default_factory=list, max_length=4)
    size: Size | None = None
    blob: bytes | None = Field(None, max_length=64)
    file_url: FileInput | None = None


class Attachment(BaseModel):
    url: str | None = None
    content: bytes | None = None
    content_type: str = "text/plain"


class ShapesOutput(BaseModel):
    text: str
    mode: Mode
    tags: list[str]
    area: int | None
    blob: bytes | None
    file_bytes: int
    attachments: list[Attachment]
    timings: dict[str, float] = Field(default_factory=dict)


class BoxInput(BaseModel):
    size: Size
    label: str = Field("", max_length=20)


class BoxOutput(BaseModel):
    area: int
    label: str


class ShapesApp(App):
    app_id = "test/shapes"
    title = "Shapes"
    description = "Echoes inputs of many shapes."

    @realtime("/", buffering=2, session_timeout=10.0, max_batch_size=4)
    def run(self, inputs: list[ShapesInput]) -> list[ShapesOutput]:
        return [self._one(inp) for inp in inputs]

    def _one(self, inp: ShapesInput) -> ShapesOutput:
        files = inp.file_url if isinstance(inp.file_url, bytes) else b""
        return ShapesOutput(
            text=inp.text,
            mode=inp.mode,
            tags=inp.tags,
            area=None if inp.size is None else inp.size.width * inp.size.height,
            blob=inp.blob,
            file_bytes=len(files),
            attachments=[Attachment(content=inp.text.encode()[:64]) for _ in range(inp.count)],
        )

    @endpoint("/box")
    def box(self, inp: BoxInput) -> BoxOutput:
        if inp.label == "refuse":
            raise InputError("label: this box is refused", field="label")
        return BoxOutput(area=inp.size.width * inp.size.height, label=inp.label)
