"""Apps that the benchmark tests load into a real `framewire serve`."""

from __future__ import annotations

import os

from pydantic import BaseModel

from framewire.engine.api import App, realtime


class AnyInput(BaseModel):
    prompt: str = ""


class NoOutput(BaseModel):
    prompt: str = ""


class CrashApp(App):
    """Ends its server process on the first frame, as a crashing native library would."""

    app_id = "test/crash"

    @realtime("/realtime")
    def run(self, inp: AnyInput) -> NoOutput:
        os._exit(3)
