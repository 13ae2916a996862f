from __future__ import annotations

import argparse

import pytest

from gateway import settings as s


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    s.add_arguments(parser)
    return parser.parse_args(argv)


def test_flag_beats_env_beats_default() -> None:
    env = {"FRAMEWIRE_PORT": "9001", "FRAMEWIRE_HOST": "0.0.0.0"}
    got = s.from_sources(parse(["--port", "9002"]), env)
    assert got.port == 9002 and got.host == "0.0.0.0" and got.max_frame_bytes == s.Settings().max_frame_bytes


def test_repeatable_and_comma_lists_are_flattened() -> None:
    got = s.from_sources(parse(["--app", "a:B", "--app", "c:D,e:F"]), {})
    assert got.apps == ("a:B", "c:D", "e:F")
    assert s.from_sources(parse([]), {"FRAMEWIRE_ALLOWED_ORIGINS": "https://x, https://y"}).allowed_origins == (
        "https://x",
        "https://y",
    )


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(ValueError, match="FRAMEWIRE_AUTH='maybe'"):
        s.from_sources(parse([]), {"FRAMEWIRE_AUTH": "maybe"})


def test_auth_without_keys_is_a_startup_error_naming_the_fix() -> None:
    with pytest.raises(ValueError, match="--api-key"):
        s.from_sources(parse(["--auth"]), {})


def test_tls_needs_both_files() -> None:
    with pytest.raises(ValueError, match="together"):
        s.from_sources(parse(["--ssl-certfile", "c.pem"]), {})


def test_queue_port_must_differ_from_port() -> None:
    with pytest.raises(ValueError, match="--queue-port"):
        s.from_sources(parse(["--port", "8000", "--queue-port", "8000"]), {})


def test_short_token_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        s.from_sources(parse(["--token-secret", "short"]), {})


def test_engine_options_parse_and_reach_the_diffusion_apps() -> None:
    from gateway.cli import build_registry, diffusion_configs

    got = s.from_sources(
        parse(["--weights", "lcm=/models/lcm", "--backend", "compile", "--batch-buckets", "1,4", "--tiny-vae"]),
        {"FRAMEWIRE_WARMUP_SIZES": "256x256,512x768", "FRAMEWIRE_DEVICE": "cuda:1"},
    )
    configs = diffusion_configs(got)
    assert configs["lcm"].weights == "/models/lcm" and configs["sdxl-turbo"].weights is None
    assert configs["lcm"].backend == "compile" and configs["lcm"].batch_buckets == (1, 4)
    assert configs["lcm"].warmup_sizes == ((256, 256), (512, 768)) and configs["lcm"].device == "cuda:1"
    assert configs["sdxl-turbo"].tiny_vae
    registry = build_registry(got)  # constructing the apps loads no model
    assert {a.app_id for a in registry} == {"framewire/echo", "framewire/lcm", "framewire/sdxl-turbo"}
    assert registry.get("fal-ai/fast-turbo-diffusion") is registry.get("framewire/sdxl-turbo")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--weights", "lcm"], "APP=FOLDER"),
        (["--backend", "onnx"], "--backend must be one of eager, compile, tensorrt"),
        (["--dtype", "int8"], "--dtype"),
        (["--warmup-sizes", "512"], "WIDTHxHEIGHT"),
        (["--batch-buckets", "0,2"], "--batch-buckets"),
    ],
)
def test_bad_engine_options_name_the_flag(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        s.from_sources(parse(argv), {})


def test_weights_for_an_unknown_app_are_refused() -> None:
    from gateway.cli import diffusion_configs

    with pytest.raises(ValueError, match="no diffusion app 'echo'"):
        diffusion_configs(s.from_sources(parse(["--weights", "echo=/x"]), {}))
