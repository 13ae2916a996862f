"""Raw WebSocket handlers on the engine's socket loop: messages both ways, bounds, every way to end."""

from __future__ import annotations

import asyncio
import threading

import pytest
from pydantic import BaseModel

from framewire.engine.api import App, AppRegistry, Socket, SocketClosed, endpoint, realtime, websocket
from framewire.engine.host import LocalEngine
from framewire.engine.sockets import Channel


class SocketApp(App):
    app_id = "test/sockets"

    def __init__(self) -> None:
        self.threads: list[str] = []
        self.ended = asyncio.Event()  # set on the socket loop; read through `ends`
        self.ends: list[str] = []

    @websocket("/echo")
    async def echo(self, ws: Socket) -> None:
        self.threads.append(threading.current_thread().name)
        await ws.accept()
        try:
            async for text in ws.iter_text():
                if text == "bye":
                    await ws.close(4000, "asked to leave")
                    return
                await ws.send_text(text.upper())
        finally:
            self.ends.append("echo")

    @endpoint("/boom", is_websocket=True)
    async def boom(self, ws: Socket) -> None:
        await ws.receive()
        raise RuntimeError("the app broke")

    @websocket("/deaf")
    async def deaf(self, ws: Socket) -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            self.ends.append("deaf")

    @websocket("/talker")
    async def talker(self, ws: Socket) -> None:
        n = 0
        while True:
            await ws.send(str(n).encode())
            n += 1
            self.threads.append(str(n))


@pytest.fixture
async def engine() -> LocalEngine:
    app = SocketApp()
    eng = LocalEngine(AppRegistry([app]))
    await eng.start()
    yield eng
    await eng.stop()


def _socket(eng: LocalEngine, path: str):  # type: ignore[no-untyped-def]
    found = eng.registry.resolve_socket(f"test/sockets/{path}")
    assert found is not None
    return found


async def test_messages_go_both_ways_on_the_socket_loop(engine: LocalEngine) -> None:
    line = await engine.open_socket(_socket(engine, "echo"), {})
    for word in ("a", "b", "c"):
        await line.send(word)
    assert [await line.receive() for _ in range(3)] == ["A", "B", "C"]
    await line.send("bye")
    with pytest.raises(SocketClosed) as closed:
        await line.receive()
    assert (closed.value.code, closed.value.reason) == (4000, "asked to leave")
    app = engine.registry.get("test/sockets")
    assert isinstance(app, SocketApp) and app.threads == ["engine-sockets"]
    with pytest.raises(SocketClosed):
        await line.send("after the close")


async def test_a_failing_handler_closes_with_1011_and_no_traceback(engine: LocalEngine) -> None:
    line = await engine.open_socket(_socket(engine, "boom"), {})
    await line.send(b"x")
    with pytest.raises(SocketClosed) as closed:
        await line.receive()
    assert (
        closed.value.code == 1011 and "RuntimeError" in closed.value.reason and "Traceback" not in closed.value.reason
    )


async def test_the_client_leaving_ends_the_handler(engine: LocalEngine) -> None:
    line = await engine.open_socket(_socket(engine, "echo"), {})
    await line.send("x")
    assert await line.receive() == "X"
    line.close(1001, "gone")
    app = engine.registry.get("test/sockets")
    assert isinstance(app, SocketApp)
    for _ in range(200):
        if "echo" in app.ends:
            break
        await asyncio.sleep(0.01)
    assert app.ends == ["echo"]


async def test_a_handler_that_ignores_its_leaving_client_is_cancelled_after_the_grace() -> None:
    app = SocketApp()
    eng = LocalEngine(AppRegistry([app]))
    eng._sockets.close_grace_s = 0.05
    await eng.start()
    try:
        line = await eng.open_socket(_socket(eng, "deaf"), {})
        await asyncio.sleep(0.05)
        assert eng.open_sockets == 1
        line.close(1000)
        for _ in range(200):
            if not eng.open_sockets:
                break
            await asyncio.sleep(0.01)
        assert eng.open_sockets == 0 and app.ends == ["deaf"]
    finally:
        await eng.stop()


async def test_a_fast_sender_waits_for_its_reader(engine: LocalEngine) -> None:
    line = await engine.open_socket(_socket(engine, "talker"), {})
    await asyncio.sleep(0.2)
    app = engine.registry.get("test/sockets")
    assert isinstance(app, SocketApp)
    assert len(app.threads) <= 16 + 1  # the window, and the send waiting on it
    assert [await line.receive() for _ in range(40)] == [str(n).encode() for n in range(40)]
    line.close(1000)


async def test_stopping_the_engine_closes_open_sockets_with_1001() -> None:
    eng = LocalEngine(AppRegistry([SocketApp()]))
    await eng.start()
    line = await eng.open_socket(_socket(eng, "deaf"), {})
    await eng.stop()
    with pytest.raises(SocketClosed) as closed:
        await line.receive()
    assert closed.value.code == 1001
    with pytest.raises(Exception, match="not running"):
        await eng.open_socket(_socket(eng, "deaf"), {})


async def test_a_channel_holds_its_window_and_hands_out_what_is_left_after_a_close() -> None:
    channel = Channel(window=2)
    await channel.put("a")
    await channel.put("b")
    blocked = asyncio.create_task(channel.put("c"))
    await asyncio.sleep(0.01)
    assert not blocked.done()
    assert await channel.get() == "a"
    await asyncio.wait_for(blocked, 1)
    channel.close(1000, "done")
    assert [await channel.get(), await channel.get()] == ["b", "c"]
    with pytest.raises(SocketClosed):
        await channel.get()


class In(BaseModel):
    n: int = 0


def test_a_websocket_path_may_not_shadow_a_realtime_endpoint() -> None:
    class Clash(App):
        app_id = "test/clash"

        @realtime("/")
        def run(self, inp: In) -> In:
            return inp

        @websocket("/realtime")
        async def raw(self, ws: Socket) -> None:
            return None

    with pytest.raises(ValueError, match="realtime endpoint's path"):
        AppRegistry([Clash()])


def test_websocket_handlers_must_be_async() -> None:
    with pytest.raises(TypeError, match="async def"):

        class Sync(App):
            app_id = "test/sync"

            @websocket("/x")
            def raw(self, ws: Socket) -> None:  # type: ignore[misc]
                return None
