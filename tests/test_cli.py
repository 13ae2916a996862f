"""What a first-time user of the command line meets: where data lives, what is refused,
what start-up errors say, and that nothing the tool did not write is ever deleted."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import msgpack
import platformdirs
import pytest
from starlette.testclient import TestClient

from framewire import cli
from framewire.bench import servers
from framewire.engine.api import AppRegistry
from framewire.engine.apps.echo import EchoApp
from framewire.engine.host import LocalEngine
from framewire.gateway.app import create_app
from framewire.gateway.platform import logs
from framewire.gateway.settings import Settings, from_sources
from tests.conftest import ROOT, free_port, wait_ready

ADMIN = {"authorization": "Key root:rootsecret-0123456789"}


# -- init-weights never deletes what it did not write ---------------------------------------------


def test_init_weights_refuses_a_folder_holding_other_files_and_keeps_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "models"
    (folder / "real_model").mkdir(parents=True)
    (folder / "real_model" / "unet.safetensors").write_bytes(b"precious")
    assert cli.main(["init-weights", "--arch", "tiny", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "real_model" in err and "--force" in err and "nothing was changed" in err
    assert (folder / "real_model" / "unet.safetensors").read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir()] == ["models"]  # no temporary folder left behind


def test_init_weights_replaces_its_own_folder_but_not_one_with_files_added(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "w"
    assert cli.main(["init-weights", "--arch", "tiny", str(folder)]) == 0
    assert cli.main(["init-weights", "--arch", "tiny", "--seed", "1", str(folder)]) == 0  # its own: replaced
    assert "seed=1" in (folder / "RANDOM_WEIGHTS").read_text()
    (folder / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert cli.main(["init-weights", "--arch", "tiny", str(folder)]) == 2
    assert "notes.txt" in capsys.readouterr().err
    assert (folder / "notes.txt").read_text() == "mine"
    assert cli.main(["init-weights", "--arch", "tiny", "--force", str(folder)]) == 0
    assert not (folder / "notes.txt").exists() and (folder / "RANDOM_WEIGHTS").is_file()


# -- one data dir, said out loud -------------------------------------------------------------------


def test_the_default_data_dir_is_the_user_data_dir_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FRAMEWIRE_DATA_DIR", raising=False)
    expected = platformdirs.user_data_dir("framewire", appauthor=False)
    monkeypatch.chdir(tmp_path)
    assert from_sources({}).data_dir == expected
    assert Path(expected).is_absolute()
    monkeypatch.setenv("FRAMEWIRE_DATA_DIR", str(tmp_path / "env"))
    assert from_sources({}).data_dir == str(tmp_path / "env")
    assert from_sources({"data_dir": str(tmp_path / "flag")}).data_dir == str(tmp_path / "flag")


def test_keys_and_usage_say_which_data_dir_and_never_make_an_empty_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    monkeypatch.setenv("FRAMEWIRE_DATA_DIR", str(data))
    monkeypatch.chdir(tmp_path)
    for argv in (["keys", "list"], ["usage"], ["keys", "revoke", "x"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert f"data dir {data}" in err and "no FrameWire store" in err and "--data-dir" in err
    assert not data.exists() and not (tmp_path / "var").exists()
    assert cli.main(["keys", "create", "--name", "a"]) == 0
    assert f"data dir {data}" in capsys.readouterr().err
    assert (data / "framewire.db").is_file()
    assert cli.main(["keys", "list"]) == 0
    out, err = capsys.readouterr()
    assert "\ta\t" in out and f"data dir {data}" in err


# -- app ids are checked where they are typed -------------------------------------------------------


def test_keys_create_refuses_an_unknown_app_and_takes_ids_aliases_and_short_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = ["--data-dir", str(tmp_path)]
    assert cli.main(["keys", "create", "--app", "ehco", *data]) == 2
    err = capsys.readouterr().err
    assert "'ehco'" in err and "framewire/echo" in err
    assert not (tmp_path / "framewire.db").exists()  # refused before the store is touched
    for name in ("echo", "framewire/echo", "fal-ai/fast-lcm-diffusion", "fast-lcm-diffusion"):
        assert cli.main(["keys", "create", "--app", name, "--json", *data]) == 0
        assert json.loads(capsys.readouterr().out)["apps"] == [name]
    # An app the server loads with --app module:object is known when named the same way.
    assert cli.main(["keys", "create", "--app", "test/batching", *data]) == 2
    load = ["--load-app", "tests.conftest:BatchingApp"]
    assert cli.main(["keys", "create", "--app", "test/batching", *load, *data]) == 0


def test_usage_of_an_alias_matches_the_rest_answer_and_unknown_apps_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(auth=True, api_keys=("root:rootsecret-0123456789",), data_dir=str(tmp_path))
    engine = LocalEngine(AppRegistry([EchoApp()]))
    with (
        TestClient(create_app(settings, engine)) as client,
        client.websocket_connect("/framewire/echo/realtime", headers=ADMIN) as ws,
    ):
        for i in range(3):
            ws.send_bytes(msgpack.packb({"prompt": str(i), "request_id": i}))
            assert msgpack.unpackb(ws.receive_bytes())["request_id"] == i
    with TestClient(create_app(settings, LocalEngine(AppRegistry([EchoApp()])))) as client:
        rest = client.get("/v1/usage?granularity=total&app=echo", headers=ADMIN).json()
    assert rest["totals"]["requests"] == 3
    for name in ("echo", "framewire/echo"):
        assert cli.main(["usage", "--granularity", "total", "--app", name, "--json", "--data-dir", str(tmp_path)]) == 0
        report = json.loads(capsys.readouterr().out)
        assert (report["time_series"], report["totals"]) == (rest["time_series"], rest["totals"])
    assert cli.main(["usage", "--app", "ehco", "--data-dir", str(tmp_path)]) == 2
    assert "'ehco'" in capsys.readouterr().err


# -- start-up: quiet, one plain sentence when it cannot start --------------------------------------


def test_serve_with_auth_and_no_key_says_one_sentence_before_any_banner(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "framewire.cli", "serve", "--auth", "--port", str(free_port())]
    done = subprocess.run([*cmd, "--data-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""  # no "FrameWire serving" banner
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"framewire keys create --admin --data-dir {tmp_path}" in lines[0] and "--api-key id:secret" in lines[0]
    assert "[redacted]" not in lines[0] and "Traceback" not in done.stderr


def test_serve_names_the_fix_when_the_data_dir_cannot_be_written(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    cmd = [sys.executable, "-m", "framewire.cli", "serve", "--port", str(free_port()), "--data-dir", str(blocked)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert f"cannot write the data dir {blocked}" in done.stderr and "--data-dir" in done.stderr


def test_logs_are_text_on_a_terminal_and_json_otherwise() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert logs.resolve_format("auto", Tty()) == "text"
    assert logs.resolve_format("auto", io.StringIO()) == "json"
    assert logs.resolve_format("json", Tty()) == "json" and logs.resolve_format("text", io.StringIO()) == "text"


def test_a_cpu_start_prints_no_kernel_fallbacks_or_library_noise(tmp_path: Path) -> None:
    """A CPU serve of the tiny LCM: FrameWire's own lines only, not one per unfused kernel."""
    port = free_port()
    cmd = [sys.executable, "-m", "framewire.cli", "serve", "--port", str(port), "--builtin-apps", "lcm"]
    cmd += ["--weights", "random", "--device", "cpu", "--warmup-sizes", "64x64", "--data-dir", str(tmp_path)]
    cmd += ["--log-format", "text"]
    env = {k: v for k, v in os.environ.items() if k not in cli.QUIET_LIBRARIES}
    with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        try:
            wait_ready(port, proc, timeout_s=120)  # a loaded 2-core machine builds the model slowly
        finally:
            servers.stop_process(proc)
        assert proc.stdout is not None
        output = proc.stdout.read()
    assert f"data in {tmp_path}" in output
    assert "not on CUDA" not in output and "torchvision" not in output and "it/s]" not in output
    assert "framewire/lcm ready" in output
    assert not any(line.startswith("{") for line in output.splitlines())  # --log-format text


def test_quiet_libraries_keeps_what_the_user_set_and_stays_out_of_debug() -> None:
    env: dict[str, str] = {"TRANSFORMERS_VERBOSITY": "info"}
    cli.quiet_libraries(Settings(), env)
    assert env["TRANSFORMERS_VERBOSITY"] == "info" and env["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    debug: dict[str, str] = {}
    cli.quiet_libraries(Settings(log_level="debug"), debug)
    assert debug == {}


# -- benchmark servers keep to themselves ----------------------------------------------------------


def test_benchmark_servers_use_a_temporary_data_dir_and_log_under_the_given_folder(tmp_path: Path) -> None:
    server = servers.start(servers.ServerConfig(servers.FRAMEWIRE, builtin_apps=("echo",)), tmp_path / "logs")
    try:
        assert server.data_dir is not None and (server.data_dir / "framewire.db").is_file()
        assert tmp_path not in server.data_dir.parents and ROOT not in server.data_dir.parents
        command = server.settings()["command"]
        assert isinstance(command, list) and command[command.index("--data-dir") + 1] == str(server.data_dir)
    finally:
        server.stop()
    assert not server.data_dir.exists()
    assert [p.parent for p in tmp_path.rglob("*.log")] == [tmp_path / "logs"]
