import assert from "node:assert/strict";
import { test } from "node:test";

import { KeyStore, TokenSource } from "../../../demo_web/js/auth.js";
import { CameraSession, SseReader, VideoState, refusalText, startSessionUrl } from "../../../demo_web/js/video.js";
import { FakeClock, MemoryStorage, fakeFetch, settle } from "./fakes.mjs";

const BASE = "http://127.0.0.1:9";

test("startSessionUrl appends start-session to the app and the token as a query", () => {
  assert.equal(startSessionUrl(BASE, "fal-ai/echo"), `${BASE}/fal-ai/echo/start-session`);
  assert.equal(startSessionUrl(BASE, "/fal-ai/echo/"), `${BASE}/fal-ai/echo/start-session`);
  assert.equal(startSessionUrl(BASE, "fal-ai/echo", "a b"), `${BASE}/fal-ai/echo/start-session?fal_jwt_token=a+b`);
});

test("SseReader joins data lines, skips comments and non-JSON, and keeps partial events", () => {
  const sse = new SseReader();
  assert.deepEqual(sse.feed(": ping\r\n\r\ndata: {\"a\":"), []);
  assert.deepEqual(sse.feed("1}\n\ndata: not json\n\ndata: {\"b\"\ndata: :2}\n"), [{ a: 1 }]);
  assert.deepEqual(sse.feed("\n"), [{ b: 2 }]);
});

test("refusalText names the status and fal's detail, string or validation list", () => {
  assert.equal(refusalText(404, { detail: "no video" }), "HTTP 404: no video");
  assert.equal(
    refusalText(422, { detail: [{ loc: ["body", "strength"], msg: "too big" }] }),
    "HTTP 422: strength: too big",
  );
  assert.equal(refusalText(502, null), "HTTP 502");
});

/** A peer connection stand-in: ICE gathering completes on demand, the data channel is scripted. */
class FakePeer {
  static last = null;

  constructor() {
    FakePeer.last = this;
    this.transceivers = [];
    this.listeners = {};
    this.iceGatheringState = "new";
    this.connectionState = "new";
    this.closed = false;
    this.remote = null;
    this.channel = { readyState: "connecting", sent: [], send: (data) => this.channel.sent.push(JSON.parse(data)) };
  }
  addTransceiver(track, init) {
    this.transceivers.push({ track, init });
  }
  createDataChannel(label) {
    this.channel.label = label;
    return this.channel;
  }
  async createOffer() {
    return { type: "offer", sdp: "v=0 offer" };
  }
  async setLocalDescription(description) {
    this.localDescription = description;
  }
  async setRemoteDescription(description) {
    this.remote = description;
  }
  addEventListener(name, fn) {
    (this.listeners[name] ??= []).push(fn);
  }
  gathered() {
    this.iceGatheringState = "complete";
    for (const fn of this.listeners.icegatheringstatechange ?? []) fn();
  }
  openChannel() {
    this.channel.readyState = "open";
    this.channel.onopen?.();
  }
  message(value) {
    this.channel.onmessage?.({ data: JSON.stringify(value) });
  }
  close() {
    this.closed = true;
  }
}

/** A streamed response body the test writes to, as the server's event stream. */
function eventStream() {
  const encoder = new TextEncoder();
  const waiting = [];
  const chunks = [];
  const reader = {
    read: () =>
      chunks.length ? Promise.resolve(chunks.shift()) : new Promise((resolve) => waiting.push(resolve)),
  };
  const push = (chunk) => (waiting.length ? waiting.shift()(chunk) : chunks.push(chunk));
  return {
    body: { getReader: () => reader },
    event: (value) => push({ value: encoder.encode(`data: ${JSON.stringify(value)}\n\n`), done: false }),
    end: () => push({ value: undefined, done: true }),
  };
}

const stream = { getVideoTracks: () => ["track"] };

function rig({ answer }) {
  const clock = new FakeClock();
  const fetch = async (url, init) => {
    fetch.calls.push({ url, init });
    return answer(url, init);
  };
  fetch.calls = [];
  const events = { states: [], frames: [], messages: [], tracks: 0 };
  const tokens = new TokenSource({ keys: new KeyStore(new MemoryStorage()), baseUrl: BASE, fetch, now: clock.now });
  const session = new CameraSession({
    tokens,
    baseUrl: BASE,
    fetch,
    PeerConnection: FakePeer,
    now: clock.now,
    setTimer: clock.setTimer,
    clearTimer: clock.clearTimer,
    onState: (state, info) => events.states.push([state, info]),
    onTrack: () => (events.tracks += 1),
    onFrame: (event, roundTripMs) => events.frames.push([event, roundTripMs]),
    onMessage: (message) => events.messages.push(message),
  });
  return { clock, fetch, events, session };
}

test("a session posts its gathered offer with the parameters, goes live on the answer and ends on the last event", async () => {
  const events_ = eventStream();
  const { clock, fetch, events, session } = rig({
    answer: () => ({ ok: true, status: 200, body: events_.body }),
  });
  const started = session.start({ appId: "fal-ai/echo", stream, params: { prompt: "a cat" } });
  await settle();
  assert.equal(fetch.calls.length, 0, "the offer waits for ICE gathering");
  FakePeer.last.gathered();
  await settle();
  assert.equal(fetch.calls.length, 1);
  const { url, init } = fetch.calls[0];
  assert.equal(url, `${BASE}/fal-ai/echo/start-session`);
  assert.deepEqual(JSON.parse(init.body), { sdp: "v=0 offer", type: "offer", session_params: { prompt: "a cat" } });
  assert.equal(FakePeer.last.transceivers[0].init.direction, "sendrecv");

  events_.event({ type: "answer", sdp: "v=0 answer", session_id: "s1", video_codec: "VP8" });
  await settle();
  assert.deepEqual(FakePeer.last.remote, { type: "answer", sdp: "v=0 answer" });
  assert.deepEqual(events.states.at(-1), [VideoState.LIVE, { sessionId: "s1", codec: "VP8" }]);

  // Parameters set before the channel opens go out when it does, merged, the newest value winning.
  session.setParams({ prompt: "a dog" });
  session.setParams({ prompt: "a fox", strength: 0.5 });
  FakePeer.last.openChannel();
  await clock.advance(1000); // the next ping
  const sent = FakePeer.last.channel.sent;
  assert.deepEqual(sent.find((m) => m.type === "params"), { type: "params", prompt: "a fox", strength: 0.5 });
  const ping = sent.find((m) => m.type === "ping");
  assert.ok(ping, "pings measure the network round trip");

  // A frame before any pong has no round trip; after a pong it is the ping time plus the server's time.
  FakePeer.last.message({ type: "frame", pts: 1, server_ms: 20 });
  await clock.advance(30);
  FakePeer.last.message({ type: "pong", t: clock.now() - 30 });
  FakePeer.last.message({ type: "frame", pts: 2, server_ms: 20 });
  assert.deepEqual(
    events.frames.map(([e, rtt]) => [e.pts, rtt]),
    [
      [1, null],
      [2, 50],
    ],
  );

  events_.event({ type: "end", reason: "the app failed" });
  await started;
  assert.equal(events.states.at(-1)[0], VideoState.STOPPED);
  assert.equal(events.states.at(-1)[1].reason, "the app failed");
  assert.ok(FakePeer.last.closed);
  assert.equal(clock.pending, 0, "no ping timer outlives the session");
});

test("a refused start stops with the server's words and closes the peer connection", async () => {
  const { events, session } = rig({
    answer: () => ({
      ok: false,
      status: 404,
      json: async () => ({ detail: "fal-ai/text takes no video", error_type: "video_not_supported" }),
    }),
  });
  const started = session.start({ appId: "fal-ai/text", stream });
  await settle();
  FakePeer.last.gathered();
  await started;
  const [state, info] = events.states.at(-1);
  assert.equal(state, VideoState.STOPPED);
  assert.equal(info.reason, "HTTP 404: fal-ai/text takes no video");
  assert.equal(info.errorType, "video_not_supported");
  assert.ok(FakePeer.last.closed);
});

test("ICE gathering that never completes sends what it has after the timeout", async () => {
  const { clock, fetch, session } = rig({ answer: () => ({ ok: false, status: 503, json: async () => null }) });
  const started = session.start({ appId: "fal-ai/echo", stream });
  await settle();
  assert.equal(fetch.calls.length, 0);
  await clock.advance(3000);
  await started;
  assert.equal(fetch.calls.length, 1);
});

test("stop during a session aborts its request and a late answer is ignored", async () => {
  const events_ = eventStream();
  const { fetch, events, session } = rig({ answer: () => ({ ok: true, status: 200, body: events_.body }) });
  const started = session.start({ appId: "fal-ai/echo", stream });
  await settle();
  const peer = FakePeer.last;
  peer.gathered();
  await settle();
  session.stop();
  assert.ok(fetch.calls[0].init.signal.aborted);
  assert.ok(peer.closed);
  events_.event({ type: "answer", sdp: "late", session_id: "s2" });
  events_.end();
  await started;
  assert.equal(peer.remote, null);
  assert.deepEqual(
    events.states.map(([s]) => s),
    [VideoState.STARTING, VideoState.IDLE],
  );
});
