from __future__ import annotations

import pytest
from pydantic import BaseModel

from framewire.engine.api import App, AppRegistry, endpoint, realtime, split_app_id
from framewire.engine.apps.echo import EchoApp
from tests.conftest import BatchingApp


class In(BaseModel):
    x: int


class Out(BaseModel):
    y: int


class TwoEndpoints(App):
    app_id = "acme/two"
    aliases = ("fal-ai/two-alias",)

    @endpoint("/")
    def root(self, inp: In) -> Out:
        return Out(y=inp.x)

    @realtime("/image-to-image", max_batch_size=4)
    def i2i(self, inputs: list[In]) -> list[Out]:
        return [Out(y=2 * i.x) for i in inputs]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("fal-ai/fast-lcm-diffusion", ("fal-ai/fast-lcm-diffusion", "fast-lcm-diffusion", "")),
        ("fal-ai/flux/dev", ("fal-ai/flux", "flux", "dev")),
        ("workflows/me/flow/x/y", ("workflows/me/flow", "flow", "x/y")),
        ("123-my-app", ("123/my-app", "my-app", "")),
        ("/a/b/", ("a/b", "b", "")),
    ],
)
def test_split_app_id_follows_the_fal_clients(given: str, expected: tuple[str, str, str]) -> None:
    assert split_app_id(given) == expected


def test_split_app_id_refuses_an_id_without_owner() -> None:
    with pytest.raises(ValueError, match="owner/alias"):
        split_app_id("lonely")


def test_models_and_batching_are_read_from_type_hints() -> None:
    eps = TwoEndpoints().endpoints()
    assert set(eps) == {"", "image-to-image"}
    assert eps[""].input_model is In and eps[""].output_model is Out and not eps[""].batched
    assert eps["image-to-image"].batched and eps["image-to-image"].max_batch_size == 4
    assert eps["image-to-image"].spec.realtime


def test_unbatched_handler_refuses_a_batch_size() -> None:
    class Bad(App):
        app_id = "acme/bad"

        @endpoint("/", max_batch_size=4)
        def root(self, inp: In) -> Out:
            return Out(y=1)

    with pytest.raises(TypeError, match="list\\[In\\]"):
        Bad().endpoints()


def test_handler_without_pydantic_models_is_refused() -> None:
    class Bad(App):
        app_id = "acme/bad"

        @endpoint("/")
        def root(self, inp: dict) -> dict:  # type: ignore[type-arg]
            return {}

    with pytest.raises(TypeError, match="not a pydantic model"):
        Bad().endpoints()


def test_registry_resolves_ids_aliases_and_realtime_paths() -> None:
    reg = AppRegistry([TwoEndpoints(), EchoApp(), BatchingApp()])
    assert reg.resolve("acme/two").spec.path == ""
    assert reg.resolve("fal-ai/two-alias/image-to-image").spec.path == "image-to-image"
    # realtime: an endpoint declared at "<sub>/realtime" wins, else the one at "<sub>"
    assert reg.resolve("test/batching", realtime=True).spec.path == "realtime"
    assert reg.resolve("framewire/echo", realtime=True).spec.path == ""
    assert reg.resolve("acme/two/image-to-image", realtime=True).spec.path == "image-to-image"
    with pytest.raises(LookupError, match="no app named 'nobody/here'"):
        reg.resolve("nobody/here")
    with pytest.raises(LookupError, match="no endpoint at path '/missing'"):
        reg.resolve("acme/two/missing")


def test_registry_refuses_a_taken_name() -> None:
    reg = AppRegistry([TwoEndpoints()])

    class Clash(TwoEndpoints):
        app_id = "acme/other"
        aliases = ("acme/two",)

    with pytest.raises(ValueError, match="already taken"):
        reg.add(Clash())


def test_decorators_validate_their_settings() -> None:
    with pytest.raises(ValueError, match="buffering"):
        realtime(buffering=0)
    with pytest.raises(ValueError, match="max_batch_size"):
        endpoint(max_batch_size=0)


class _NoFrameIn(BaseModel):
    prompt: str = ""


def test_a_video_endpoint_needs_a_frame_field_in_and_out() -> None:
    from framewire.engine.api import video

    class NoFrame(App):
        app_id = "test/noframe"

        @video("/video")
        def run(self, inp: _NoFrameIn) -> _NoFrameIn:
            return inp

    with pytest.raises(TypeError, match="needs a VideoFrame"):
        AppRegistry([NoFrame()])
    with pytest.raises(ValueError, match="max_side"):
        video("/v", max_side=8)


def test_a_video_frame_holds_exactly_its_pixels() -> None:
    from pydantic import ValidationError

    from framewire.engine.api import VideoFrame, VideoSpec

    assert VideoFrame(width=2, height=2, data=bytes(12)).data == bytes(12)
    with pytest.raises(ValidationError, match="has 12 bytes, got 11"):
        VideoFrame(width=2, height=2, data=bytes(11))
    assert VideoSpec(512, 8).frame_size(1280, 720) == (512, 288)
    assert VideoSpec(1280, 2).frame_size(641, 481) == (640, 480)  # never larger, sides even
