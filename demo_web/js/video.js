/**
 * Camera mode: one live video session over WebRTC, signalled like fal's WMA.
 *
 * The page offers its camera track (sendrecv, so the outputs come back on it) and a data
 * channel, waits for ICE gathering to finish (the server takes no trickle ICE), and posts
 * the offer to `POST /{app}/start-session` with the session's parameters. The answer is the
 * first event of the response's event stream; the response stays open for the session's
 * life, and its last event says why it ended. Parameters change over the data channel
 * (`{prompt: …}`), pings measure the network round trip, and the server sends one `frame`
 * event per output (its time on the server, the frames it dropped).
 *
 * Everything the browser provides (fetch, RTCPeerConnection, timers) comes in through the
 * constructor, so the node tests drive it with fakes.
 */

import { TokenError } from "./auth.js";

export const VideoState = Object.freeze({
  IDLE: "idle",
  STARTING: "connecting",
  LIVE: "live",
  STOPPED: "stopped",
});

/** `POST` URL of a session on `appId`, with the token when there is one. */
export function startSessionUrl(baseUrl, appId, token = null) {
  const url = new URL(`/${appId.replace(/^\/+|\/+$/g, "")}/start-session`, baseUrl);
  if (token) url.searchParams.set("fal_jwt_token", token);
  return url.href;
}

/** Splits an event stream into the JSON of its `data:` events; comments (keep-alives) are skipped. */
export class SseReader {
  constructor() {
    this.buffer = "";
    this.data = [];
  }

  /** Feed decoded text; returns the events it completed. */
  feed(text) {
    this.buffer += text;
    const events = [];
    let newline;
    while ((newline = this.buffer.search(/\r?\n/)) >= 0) {
      const line = this.buffer.slice(0, newline);
      this.buffer = this.buffer.slice(newline + (this.buffer[newline] === "\r" ? 2 : 1));
      if (line === "") {
        if (this.data.length) {
          const joined = this.data.join("\n");
          this.data = [];
          try {
            events.push(JSON.parse(joined));
          } catch {
            // not JSON: not an event this page understands
          }
        }
      } else if (line.startsWith("data:")) {
        this.data.push(line.slice(5).replace(/^ /, ""));
      }
    }
    return events;
  }
}

/** The error body of a refused start: fal's `{detail, error_type}` as one line of text. */
export function refusalText(status, body) {
  let detail = "";
  if (body && typeof body.detail === "string") detail = body.detail;
  else if (body && Array.isArray(body.detail)) {
    detail = body.detail.map((d) => `${(d.loc ?? []).slice(1).join(".")}: ${d.msg}`).join("; ");
  }
  return detail ? `HTTP ${status}: ${detail}` : `HTTP ${status}`;
}

export class CameraSession {
  /**
   * @param {object} opts
   * @param {object} opts.tokens a TokenSource (tokens only when a key is set)
   * @param {function} opts.onState (state, info) — info.reason for STOPPED
   * @param {function} opts.onTrack (event) — the output track arrived
   * @param {function} opts.onFrame (event, roundTripMs) — one output frame's `frame` event
   * @param {function} [opts.onMessage] (message) — `params`, `error`, `pong`…
   */
  constructor({
    tokens,
    onState,
    onTrack,
    onFrame,
    onMessage = () => {},
    baseUrl = globalThis.location?.origin,
    fetch = (...args) => globalThis.fetch(...args),
    PeerConnection = globalThis.RTCPeerConnection,
    now = () => performance.now(),
    setTimer = (fn, ms) => setTimeout(fn, ms),
    clearTimer = (handle) => clearTimeout(handle),
    iceTimeoutMs = 3000,
    pingMs = 1000,
  }) {
    Object.assign(this, { tokens, onState, onTrack, onFrame, onMessage, baseUrl, fetch, PeerConnection });
    Object.assign(this, { now, setTimer, clearTimer, iceTimeoutMs, pingMs });
    this.state = VideoState.IDLE;
    this.generation = 0;
    this.pc = null;
    this.channel = null;
    this.abort = null;
    this.pingTimer = null;
    this.pending = null; // parameters waiting for the channel to open (the newest wins)
    this.rttMs = null;
    this.sessionId = null;
    this.codec = null;
  }

  #setState(state, info = {}) {
    this.state = state;
    this.onState(state, info);
  }

  /** Start a session on `appId` with `stream`'s video track and parameters `params`. */
  async start({ appId, stream, params = {} }) {
    this.stop();
    const generation = ++this.generation;
    const stale = () => generation !== this.generation;
    this.#setState(VideoState.STARTING);
    const pc = (this.pc = new this.PeerConnection());
    for (const track of stream.getVideoTracks()) pc.addTransceiver(track, { direction: "sendrecv", streams: [stream] });
    const channel = (this.channel = pc.createDataChannel("params"));
    channel.onopen = () => this.#flush();
    channel.onmessage = (event) => this.#message(event.data);
    pc.ontrack = (event) => this.onTrack(event);
    pc.onconnectionstatechange = () => {
      if (!stale() && pc.connectionState === "failed") this.#stopped("the WebRTC connection failed");
    };
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await this.#iceGathered(pc);
      if (stale()) return;
      let grant = null;
      try {
        grant = await this.tokens.get(appId);
      } catch (error) {
        if (error instanceof TokenError) return this.#stopped(error.message, { status: error.status });
        throw error;
      }
      if (stale()) return;
      this.abort = new AbortController();
      const response = await this.fetch(startSessionUrl(this.baseUrl, appId, grant?.token), {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer", session_params: params }),
        signal: this.abort.signal,
        cache: "no-store",
      });
      if (stale()) return;
      if (!response.ok) {
        let body = null;
        try {
          body = await response.json();
        } catch {
          body = null;
        }
        if (response.status === 401) this.tokens.invalidate?.(appId);
        return this.#stopped(refusalText(response.status, body), {
          status: response.status,
          errorType: body?.error_type ?? null,
        });
      }
      await this.#events(response, pc, stale);
    } catch (error) {
      if (!stale() && error?.name !== "AbortError") this.#stopped(`the session could not start (${error.message ?? error})`);
    }
  }

  async #iceGathered(pc) {
    if (pc.iceGatheringState === "complete") return;
    await new Promise((resolve) => {
      const timer = this.setTimer(resolve, this.iceTimeoutMs); // send what was gathered by then
      pc.addEventListener("icegatheringstatechange", () => {
        if (pc.iceGatheringState === "complete") {
          this.clearTimer(timer);
          resolve();
        }
      });
    });
  }

  async #events(response, pc, stale) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    const sse = new SseReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (stale()) return;
      if (done) break;
      for (const event of sse.feed(decoder.decode(value, { stream: true }))) {
        if (event.type === "answer") {
          this.sessionId = event.session_id ?? null;
          this.codec = event.video_codec ?? null;
          await pc.setRemoteDescription({ type: "answer", sdp: event.sdp });
          if (stale()) return;
          this.#setState(VideoState.LIVE, { sessionId: this.sessionId, codec: this.codec });
          this.#schedulePing();
        } else if (event.type === "end") {
          return this.#stopped(event.reason || "the session ended", { end: event });
        }
      }
    }
    this.#stopped("the server closed the session");
  }

  #stopped(reason, info = {}) {
    this.#teardown();
    this.#setState(VideoState.STOPPED, { reason, ...info });
  }

  #message(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return;
    }
    if (message.type === "pong" && typeof message.t === "number") {
      this.rttMs = this.now() - message.t;
    } else if (message.type === "frame") {
      const roundTrip = this.rttMs === null ? null : this.rttMs + (message.server_ms ?? 0);
      this.onFrame(message, roundTrip);
      return;
    }
    this.onMessage(message);
  }

  #schedulePing() {
    this.#ping();
    this.pingTimer = this.setTimer(() => this.#schedulePing(), this.pingMs);
  }

  #ping() {
    if (this.channel?.readyState === "open") this.channel.send(JSON.stringify({ type: "ping", t: this.now() }));
  }

  /** Change the session's parameters (merged into them on the server, from the next frame). */
  setParams(update) {
    this.pending = { ...(this.pending ?? {}), ...update };
    this.#flush();
  }

  #flush() {
    if (this.pending && this.channel?.readyState === "open") {
      this.channel.send(JSON.stringify({ type: "params", ...this.pending }));
      this.pending = null;
    }
  }

  #teardown() {
    if (this.pingTimer !== null) this.clearTimer(this.pingTimer);
    this.pingTimer = null;
    this.abort?.abort();
    this.abort = null;
    try {
      this.pc?.close();
    } catch {
      // already closed
    }
    this.pc = null;
    this.channel = null;
    this.pending = null;
    this.rttMs = null;
  }

  /** End the session (closing the request ends it on the server too). */
  stop() {
    this.generation += 1;
    const wasActive = this.state !== VideoState.IDLE;
    this.#teardown();
    if (wasActive) this.#setState(VideoState.IDLE);
  }
}
