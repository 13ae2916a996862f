from __future__ import annotations

import argparse

import pytest

from framewire.gateway import settings as s


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


def test_tls_needs_both_files() -> None:
    with pytest.raises(ValueError, match="together"):
        s.from_sources(parse(["--ssl-certfile", "c.pem"]), {})


def test_queue_port_must_differ_from_port() -> None:
    with pytest.raises(ValueError, match="--queue-port"):
        s.from_sources(parse(["--port", "8000", "--queue-port", "8000"]), {})


def test_short_token_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        s.from_sources(parse(["--token-secret", "short"]), {})


def test_kernels_are_on_by_default_and_switch_off_by_flag_or_env() -> None:
    assert s.from_sources(parse([]), {}).kernels is True
    assert s.from_sources(parse([]), {"FRAMEWIRE_KERNELS": "0"}).kernels is False
    assert s.from_sources(parse(["--kernels"]), {"FRAMEWIRE_KERNELS": "0"}).kernels is True
    assert s.from_sources(parse(["--no-kernels"]), {}).kernels is False


@pytest.mark.parametrize("flag", [True, False])
def test_serve_hands_the_kernels_setting_to_the_kernels_package(flag: bool) -> None:
    from framewire import cli
    from framewire.kernels import runtime

    before = runtime.enabled()
    try:
        runtime.configure(enabled=not flag)
        cli.configure_kernels(s.Settings(kernels=flag))
        assert runtime.enabled() is flag
    finally:
        runtime.configure(enabled=before)


def test_queue_and_storage_options_are_checked_naming_the_flag() -> None:
    got = s.from_sources(
        parse(["--data-dir", "/srv/fw", "--webhook-retry-base-s", "0.5"]), {"FRAMEWIRE_MAX_QUEUE_LENGTH": "7"}
    )
    assert (got.data_dir, got.webhook_retry_base_s, got.max_queue_length) == ("/srv/fw", 0.5, 7)
    with pytest.raises(ValueError, match="--max-upload-bytes"):
        s.from_sources(parse(["--max-upload-bytes", "0"]), {})
    with pytest.raises(ValueError, match="whsec_"):
        s.from_sources(parse(["--webhook-secret", "plain"]), {})
    with pytest.raises(ValueError, match="--max-job-attempts"):
        s.from_sources(parse(["--max-job-attempts", "0"]), {})


def test_max_batch_size_cap_comes_from_flag_or_env_and_must_be_positive() -> None:
    assert s.from_sources(parse([]), {"FRAMEWIRE_MAX_BATCH_SIZE": "4"}).max_batch_size == 4
    assert s.from_sources(parse(["--max-batch-size", "2"]), {"FRAMEWIRE_MAX_BATCH_SIZE": "4"}).max_batch_size == 2
    with pytest.raises(ValueError, match="--max-batch-size"):
        s.from_sources(parse(["--max-batch-size", "0"]), {})


def test_engine_options_parse_and_reach_the_diffusion_apps() -> None:
    from framewire.cli import build_registry, diffusion_configs

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
        (["--lora", "latent-consistency/lcm-lora-sdv1-5"], "APP=REPO_OR_PATH"),
        (["--hub-timeout-s", "0"], "--hub-timeout-s"),
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
    from framewire.cli import diffusion_configs

    with pytest.raises(ValueError, match="no diffusion app 'echo'"):
        diffusion_configs(s.from_sources(parse(["--weights", "echo=/x"]), {}))


def test_random_offline_and_loras_reach_the_diffusion_apps() -> None:
    from framewire.cli import diffusion_configs
    from framewire.engine.config import LoraSpec

    configs = diffusion_configs(
        s.from_sources(
            parse(
                [
                    "--weights",
                    "random",
                    "--weights",
                    "sdxl-turbo=stabilityai/stable-diffusion-xl-base-1.0",
                    "--lora",
                    "sdxl-turbo=latent-consistency/lcm-lora-sdxl",
                    "--lora",
                    "lcm=/loras/style.safetensors:0.6",
                    "--offline",
                ]
            ),
            {"FRAMEWIRE_HUB_TIMEOUT_S": "3"},
        )
    )
    assert (
        configs["lcm"].weights == "random"
        and configs["sdxl-turbo"].weights == "stabilityai/stable-diffusion-xl-base-1.0"
    )
    assert configs["lcm"].loras == (LoraSpec("/loras/style.safetensors", 0.6),)
    assert configs["sdxl-turbo"].loras == (LoraSpec("latent-consistency/lcm-lora-sdxl", 1.0),)
    assert configs["sdxl-turbo"].loras[0].lcm and not configs["lcm"].loras[0].lcm
    assert configs["lcm"].offline and configs["lcm"].hub_timeout_s == 3.0
    assert s.from_sources({}, {"FRAMEWIRE_WEIGHTS": "random"}).weights == ("random",)


def test_a_lora_for_an_unknown_app_or_with_a_bad_scale_is_refused() -> None:
    from framewire.cli import diffusion_configs

    with pytest.raises(ValueError, match="no diffusion app 'echo'"):
        diffusion_configs(s.from_sources(parse(["--lora", "echo=a/b"]), {}))
    with pytest.raises(ValueError, match="scale a number"):
        diffusion_configs(s.from_sources(parse(["--lora", "lcm=a/b:strong"]), {}))
