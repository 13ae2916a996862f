import assert from "node:assert/strict";
import { beforeEach, test } from "node:test";

import { KeyStore, TokenSource } from "../../../demo_web/js/auth.js";
import {
  RETRY_MAX_MS,
  RealtimeConnection,
  State,
  realtimeUrl,
  retryDelayMs,
} from "../../../demo_web/js/connection.js";
import { decode, encode } from "../../../demo_web/node_modules/@msgpack/msgpack/dist.esm/index.mjs";
import { FakeClock, FakeSocket, MemoryStorage, fakeFetch, settle } from "./fakes.mjs";

beforeEach(() => FakeSocket.reset());

/** A connection over fakes; `server.ready` decides what /ready answers. */
function rig({ key = null, tokenAnswer = null } = {}) {
  const clock = new FakeClock();
  const server = { ready: true, tokens: 0 };
  const keys = new KeyStore(new MemoryStorage());
  if (key) keys.set(key);
  const fetch = fakeFetch((url) => {
    if (url.endsWith("/ready")) return server.ready ? { status: 200, body: { ready: true } } : { fail: "refused" };
    if (url.endsWith("/tokens/")) {
      server.tokens += 1;
      return tokenAnswer ? tokenAnswer(server.tokens) : { body: `tok${server.tokens}` };
    }
    throw new Error(`unexpected fetch ${url}`);
  });
  const events = { states: [], results: [], errors: [] };
  const tokens = new TokenSource({ keys, baseUrl: "http://127.0.0.1:9", fetch, now: clock.now });
  const conn = new RealtimeConnection({
    tokens,
    baseUrl: "http://127.0.0.1:9",
    maxBuffering: 2,
    WebSocket: FakeSocket,
    fetch,
    setTimer: clock.setTimer,
    clearTimer: clock.clearTimer,
    random: () => 0.5,
    onState: (state, info) => events.states.push({ state, ...info }),
    onResult: (output, bytes) => events.results.push({ output, bytes }),
    onError: (error) => events.errors.push(error),
  });
  return { clock, server, conn, events, fetch, keys };
}

async function live(r, appId = "framewire/echo") {
  r.conn.use(appId);
  await settle();
  FakeSocket.last.open();
  assert.equal(r.conn.state, State.LIVE);
  return FakeSocket.last;
}

test("the socket URL follows the page's scheme and carries the query", () => {
  assert.equal(realtimeUrl("http://h:8000", "framewire/echo"), "ws://h:8000/framewire/echo/realtime");
  assert.equal(
    realtimeUrl("https://h", "/framewire/lcm/", { token: "a.b", maxBuffering: 2 }),
    "wss://h/framewire/lcm/realtime?max_buffering=2&fal_jwt_token=a.b",
  );
});

test("retry delays double from 250 ms and stop growing at 3 s", () => {
  const half = () => 0.5;
  assert.deepEqual([0, 1, 2, 3, 4, 10].map((n) => retryDelayMs(n, half)), [250, 500, 1000, 2000, 3000, 3000]);
  assert.equal(retryDelayMs(0, () => 0), 200);
  assert.ok(retryDelayMs(20, () => 1) <= RETRY_MAX_MS * 1.2);
});

test("frames go out as binary msgpack and outputs come back decoded", async () => {
  const r = rig();
  const ws = await live(r);
  assert.equal(ws.binaryType, "arraybuffer");
  assert.equal(ws.url, "ws://127.0.0.1:9/framewire/echo/realtime?max_buffering=2");
  const size = r.conn.send({ prompt: "hi", image_url: new Uint8Array([1, 2]), request_id: 1 });
  assert.equal(ws.sent.length, 1);
  assert.ok(ws.sent[0] instanceof Uint8Array);
  assert.equal(size, ws.sent[0].byteLength);
  assert.deepEqual(decode(ws.sent[0]), { prompt: "hi", image_url: new Uint8Array([1, 2]), request_id: 1 });
  ws.binary(encode({ image: new Uint8Array([9]), request_id: 1 }));
  assert.equal(r.events.results.length, 1);
  assert.deepEqual(r.events.results[0].output.image, new Uint8Array([9]));
});

test("send refuses while the socket is not open", async () => {
  const r = rig();
  r.conn.use("framewire/echo");
  await settle();
  assert.equal(r.conn.state, State.CONNECTING);
  assert.equal(r.conn.send({ a: 1 }), false);
});

test("an error about one frame is reported and the session stays live", async () => {
  const r = rig();
  const ws = await live(r);
  ws.text({ type: "x-fal-error", error: "VALIDATION_ERROR", reason: "strength: too big", request_id: 4 });
  ws.text({ type: "x-fal-message", action: "timings", timing: 0.01 });
  assert.deepEqual(r.events.errors, [{ code: "VALIDATION_ERROR", reason: "strength: too big", requestId: 4 }]);
  assert.equal(r.conn.state, State.LIVE);
});

test("an app the server lacks stops the connection with the server's reason", async () => {
  const r = rig();
  const ws = await live(r, "framewire/lcm");
  ws.text({ type: "x-fal-error", error: "NOT_FOUND", reason: "no app named 'framewire/lcm'" });
  ws.serverClose(4404, "no app named 'framewire/lcm'");
  assert.equal(r.conn.state, State.STOPPED);
  assert.equal(r.conn.info.error, "NOT_FOUND");
  assert.equal(r.conn.info.reason, "no app named 'framewire/lcm'");
  assert.equal(r.events.errors.length, 0, "a session-level error is a state, not a frame error");
  await r.clock.advance(10_000);
  assert.equal(FakeSocket.instances.length, 1, "no retry after a refusal");
});

test("an idle timeout closes to idle and the next connect reopens", async () => {
  const r = rig();
  const ws = await live(r);
  ws.text({ type: "x-fal-error", error: "TIMEOUT", reason: "no inputs, reconnect when needed!" });
  ws.serverClose(1000);
  assert.equal(r.conn.state, State.IDLE);
  assert.equal(r.conn.info.error, "TIMEOUT");
  await r.clock.advance(10_000);
  assert.equal(FakeSocket.instances.length, 1, "idle does not reconnect by itself");
  r.conn.connect();
  await settle();
  assert.equal(FakeSocket.instances.length, 2);
});

test("a dropped connection retries after /ready answers, with backoff", async () => {
  const r = rig();
  const ws = await live(r);
  r.server.ready = false;
  ws.serverClose(1006);
  assert.equal(r.conn.state, State.RETRYING);
  assert.equal(r.conn.info.retryInMs, 250);
  await r.clock.advance(250);
  assert.equal(FakeSocket.instances.length, 1, "no socket while /ready fails");
  assert.equal(r.conn.info.retryInMs, 500);
  await r.clock.advance(500);
  assert.equal(r.conn.info.retryInMs, 1000);
  r.server.ready = true;
  await r.clock.advance(1000);
  assert.equal(FakeSocket.instances.length, 2);
  FakeSocket.last.open();
  assert.equal(r.conn.state, State.LIVE);
  const readyPolls = r.fetch.calls.filter((c) => c.url.endsWith("/ready")).length;
  assert.equal(readyPolls, 3);
});

test("a server shutting down (1001) and an engine not ready (1013) are retried", async () => {
  for (const code of [1001, 1013, 1011]) {
    FakeSocket.reset();
    const r = rig();
    const ws = await live(r);
    ws.serverClose(code, "server shutting down");
    assert.equal(r.conn.state, State.RETRYING, `close ${code}`);
    await r.clock.advance(300);
    assert.equal(FakeSocket.instances.length, 2, `close ${code} reconnects`);
  }
});

test("a socket that never opens is closed and retried", async () => {
  const r = rig();
  r.conn.use("framewire/echo");
  await settle();
  const ws = FakeSocket.last;
  await r.clock.advance(8000);
  assert.ok(ws.closed, "the stuck socket is closed");
  ws.serverClose(1006);
  assert.equal(r.conn.state, State.RETRYING);
});

test("with a key the socket carries a token from /tokens/", async () => {
  const r = rig({ key: "id:s" });
  const ws = await live(r);
  assert.match(ws.url, /fal_jwt_token=tok1$/);
});

test("a cached token refused after a server restart is replaced once", async () => {
  const r = rig({ key: "id:s" });
  let ws = await live(r);
  ws.serverClose(1012);
  await r.clock.advance(300);
  ws = FakeSocket.last;
  assert.match(ws.url, /fal_jwt_token=tok1$/, "the cached token is tried first");
  ws.text({ type: "x-fal-error", error: "UNAUTHORIZED", reason: "invalid token" });
  ws.serverClose(4401);
  await settle();
  assert.equal(FakeSocket.instances.length, 3);
  assert.match(FakeSocket.last.url, /fal_jwt_token=tok2$/);
  FakeSocket.last.open();
  assert.equal(r.conn.state, State.LIVE);
});

test("a fresh token refused, or no key where one is needed, stops with UNAUTHORIZED", async () => {
  const r = rig();
  const ws = await live(r);
  ws.text({ type: "x-fal-error", error: "UNAUTHORIZED", reason: "missing credentials" });
  ws.serverClose(4401);
  assert.equal(r.conn.state, State.STOPPED);
  assert.equal(r.conn.info.error, "UNAUTHORIZED");
  assert.equal(r.conn.info.reason, "missing credentials");
});

test("a key the token endpoint refuses stops without opening a socket", async () => {
  const r = rig({ key: "id:bad", tokenAnswer: () => ({ status: 401, body: { detail: "invalid API key" } }) });
  r.conn.use("framewire/echo");
  await settle();
  assert.equal(FakeSocket.instances.length, 0);
  assert.equal(r.conn.state, State.STOPPED);
  assert.match(r.conn.info.reason, /invalid API key/);
});

test("a token refused because the app does not exist stops as NOT_FOUND, the key as UNAUTHORIZED", async () => {
  const missing = rig({
    key: "id:s",
    tokenAnswer: () => ({ status: 422, body: { detail: "allowed_apps[0]: no app named 'lcm'" } }),
  });
  missing.conn.use("framewire/lcm");
  await settle();
  assert.equal(FakeSocket.instances.length, 0);
  assert.equal(missing.conn.info.error, "NOT_FOUND"); // the page moves on to an app the server has
  assert.match(missing.conn.info.reason, /no app named 'lcm'/);
  const forbidden = rig({ key: "id:s", tokenAnswer: () => ({ status: 403, body: { detail: "not for this app" } }) });
  forbidden.conn.use("framewire/lcm");
  await settle();
  assert.equal(forbidden.conn.info.error, "FORBIDDEN");
});

test("restart after a new key connects again from stopped", async () => {
  const r = rig({ tokenAnswer: (n) => ({ body: `tok${n}` }) });
  const ws = await live(r);
  ws.serverClose(4401);
  assert.equal(r.conn.state, State.STOPPED);
  r.keys.set("id:s");
  r.conn.restart();
  await settle();
  assert.match(FakeSocket.last.url, /fal_jwt_token=tok1$/);
});

test("switching apps closes the old socket and ignores its late events", async () => {
  const r = rig();
  const old = await live(r, "framewire/echo");
  r.conn.use("framewire/lcm");
  await settle();
  assert.deepEqual(old.closed, { code: 1000, reason: "client switched" });
  assert.match(FakeSocket.last.url, /\/framewire\/lcm\/realtime/);
  const results = r.events.results.length;
  old.binary(encode({ image: new Uint8Array([1]) }));
  assert.equal(r.events.results.length, results, "nothing from the old socket reaches the page");
});
