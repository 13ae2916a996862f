/**
 * One realtime session with the server, kept alive across server restarts.
 *
 * Speaks FrameWire's (fal's) realtime protocol: the socket is
 * `ws[s]://HOST/{app}/realtime?max_buffering=N[&fal_jwt_token=T]`; inputs and outputs
 * are binary msgpack maps; control and errors arrive as JSON text frames
 * (`x-fal-error`, `x-fal-message`). Close codes decide what happens next:
 *
 * - 1000 (idle `TIMEOUT`, or a normal close): idle; the next frame opens a new socket.
 * - 4401 with a cached token: the token may predate a server restart, so fetch a new one
 *   once; otherwise, and for 4400/4403/4404: stopped, with the server's reason, until
 *   the user changes something (key, app) and calls `restart()`.
 * - anything else (1001 shutdown, 1006 dropped, 1013 not ready, 1011): retry with
 *   backoff, polling `/ready` first so a restarting server is not hammered.
 */

import { decode, encode } from "@msgpack/msgpack";
import { TokenError } from "./auth.js";

export const State = Object.freeze({
  IDLE: "idle",
  CONNECTING: "connecting",
  LIVE: "live",
  RETRYING: "retrying",
  STOPPED: "stopped",
});

/** Close codes after which retrying cannot help without a change by the user. */
const FATAL_CLOSES = {
  4400: "INVALID_QUERY",
  4401: "UNAUTHORIZED",
  4403: "FORBIDDEN",
  4404: "NOT_FOUND",
};

/** `x-fal-error` codes about the session as a whole (a close follows), not one frame. */
const SESSION_ERRORS = new Set([
  "TIMEOUT",
  "UNAUTHORIZED",
  "FORBIDDEN",
  "NOT_FOUND",
  "INVALID_QUERY",
  "ENGINE_UNAVAILABLE",
  "TOO_MANY_SESSIONS",
]);

export const RETRY_BASE_MS = 250;
export const RETRY_MAX_MS = 3000;
export const OPEN_TIMEOUT_MS = 8000;

/** `ws://host/app/realtime?...` for a page served from `baseUrl` (http or https). */
/**
 * The session error a refused `/tokens/` request stands for: 403 the key may not use the
 * app, 404/422 no such app on the server (the page may then move on to one it has), else
 * the key itself was refused.
 */
export function tokenRefusal(status) {
  if (status === 403) return "FORBIDDEN";
  if (status === 404 || status === 422) return "NOT_FOUND";
  return "UNAUTHORIZED";
}

export function realtimeUrl(baseUrl, appId, { token = null, maxBuffering = null } = {}) {
  const url = new URL(`/${appId.replace(/^\/+|\/+$/g, "")}/realtime`, baseUrl);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  if (maxBuffering !== null) url.searchParams.set("max_buffering", String(maxBuffering));
  if (token) url.searchParams.set("fal_jwt_token", token);
  return url.href;
}

/** Delay before retry number `attempt` (0-based): doubling from 250 ms to 3 s, ±20 % jitter. */
export function retryDelayMs(attempt, random = Math.random) {
  const base = Math.min(RETRY_MAX_MS, RETRY_BASE_MS * 2 ** attempt);
  return Math.round(base * (0.8 + 0.4 * random()));
}

export class RealtimeConnection {
  /**
   * @param {object} opts
   * @param {import("./auth.js").TokenSource} opts.tokens
   * @param {(state: string, info: object) => void} [opts.onState]
   *   info: `{ code, error, reason, retryInMs }` where known
   * @param {(output: object, bytes: number) => void} [opts.onResult]
   * @param {(error: {code: string, reason: string, requestId?: unknown}) => void} [opts.onError]
   *   errors about one frame; the session goes on
   */
  constructor({
    tokens,
    baseUrl = globalThis.location?.origin,
    maxBuffering = 2,
    onState = () => {},
    onResult = () => {},
    onError = () => {},
    WebSocket: WebSocketImpl = globalThis.WebSocket,
    fetch = (...args) => globalThis.fetch(...args),
    setTimer = (fn, ms) => setTimeout(fn, ms),
    clearTimer = (handle) => clearTimeout(handle),
    random = Math.random,
  }) {
    this.tokens = tokens;
    this.baseUrl = baseUrl;
    this.maxBuffering = maxBuffering;
    this.onState = onState;
    this.onResult = onResult;
    this.onError = onError;
    this.WebSocket = WebSocketImpl;
    this.fetch = fetch;
    this.setTimer = setTimer;
    this.clearTimer = clearTimer;
    this.random = random;
    this.appId = null;
    this.state = State.IDLE;
    this.info = {};
    this.ws = null;
    this.generation = 0; // bumped on every (re)start; stale callbacks compare and bail out
    this.attempt = 0;
    this.timer = null;
    this.tokenWasCached = false;
    this.authRetried = false;
    this.sessionError = null; // the last session-level x-fal-error on the current socket
  }

  /** Switch to `appId` (closing any socket to another app) and connect. */
  use(appId) {
    if (appId !== this.appId) {
      this.appId = appId;
      this.restart();
    } else {
      this.connect();
    }
  }

  /** Open a socket when idle (never opened, or closed after the idle timeout). */
  connect() {
    if (this.appId && this.state === State.IDLE) this.restart();
  }

  /** Start over now, whatever the state: after a new key, or a retry asked by the user. */
  restart() {
    if (!this.appId) return;
    this.attempt = 0;
    this.authRetried = false;
    this.#open();
  }

  /** Send one input map; returns its encoded size, or false when not live. */
  send(input) {
    if (this.state !== State.LIVE || !this.ws) return false;
    const bytes = encode(input);
    this.ws.send(bytes);
    return bytes.byteLength;
  }

  /** Close for good (until the next `use`/`connect`). */
  close() {
    this.#teardown();
    this.#setState(State.IDLE, {});
  }

  #setState(state, info) {
    this.state = state;
    this.info = info;
    this.onState(state, info);
  }

  #cancelTimer() {
    if (this.timer !== null) {
      this.clearTimer(this.timer);
      this.timer = null;
    }
  }

  #teardown() {
    this.generation += 1;
    this.#cancelTimer();
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close(1000, "client switched");
      } catch {
        // already closing; nothing to release
      }
    }
  }

  async #open() {
    this.#teardown();
    const generation = this.generation;
    const appId = this.appId;
    this.#setState(State.CONNECTING, {});
    let grant = null;
    try {
      grant = await this.tokens.get(appId);
    } catch (error) {
      if (generation !== this.generation) return;
      if (error instanceof TokenError && error.refused) {
        this.#setState(State.STOPPED, { code: error.status, error: tokenRefusal(error.status), reason: error.message });
      } else {
        this.#scheduleRetry({ error: "TOKEN", reason: error.message });
      }
      return;
    }
    if (generation !== this.generation) return;
    this.tokenWasCached = Boolean(grant?.cached);
    this.sessionError = null;
    const url = realtimeUrl(this.baseUrl, appId, { token: grant?.token, maxBuffering: this.maxBuffering });
    let ws;
    try {
      ws = new this.WebSocket(url);
    } catch (error) {
      this.#setState(State.STOPPED, { error: "BAD_URL", reason: `cannot open ${url}: ${error.message}` });
      return;
    }
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    this.timer = this.setTimer(() => {
      this.timer = null;
      if (generation === this.generation && this.state === State.CONNECTING) ws.close(); // onclose retries
    }, OPEN_TIMEOUT_MS);
    ws.onopen = () => {
      if (generation !== this.generation) return;
      this.#cancelTimer();
      this.attempt = 0;
      this.#setState(State.LIVE, {});
    };
    ws.onmessage = (event) => {
      if (generation === this.generation) this.#receive(event.data);
    };
    ws.onclose = (event) => {
      if (generation === this.generation) this.#closed(event.code, event.reason);
    };
    ws.onerror = () => {}; // a close event always follows and carries the code
  }

  #receive(data) {
    if (typeof data === "string") {
      let message;
      try {
        message = JSON.parse(data);
      } catch {
        this.onError({ code: "BAD_MESSAGE", reason: `the server sent text that is not JSON: ${data.slice(0, 80)}` });
        return;
      }
      this.#control(message);
      return;
    }
    let output;
    try {
      output = decode(new Uint8Array(data));
    } catch (error) {
      this.onError({ code: "BAD_MESSAGE", reason: `an output frame is not valid msgpack (${error.message})` });
      return;
    }
    if (output && output.type === "x-fal-error") {
      this.#control(output);
      return;
    }
    this.onResult(output, data.byteLength);
  }

  #control(message) {
    if (!message || message.type !== "x-fal-error") return; // x-fal-message timings: nothing to do
    const error = { code: String(message.error ?? "ERROR"), reason: String(message.reason ?? "") };
    if (message.request_id !== undefined) error.requestId = message.request_id;
    if (SESSION_ERRORS.has(error.code)) {
      this.sessionError = error;
      return;
    }
    this.onError(error);
  }

  #closed(code, reason) {
    this.#cancelTimer();
    this.ws = null;
    const said = this.sessionError;
    const info = { code, error: said?.code ?? FATAL_CLOSES[code] ?? null, reason: said?.reason || reason || "" };
    if (code === 1000) {
      this.#setState(State.IDLE, info);
      return;
    }
    if (code === 4401 && this.tokenWasCached && !this.authRetried) {
      // A token from before a server restart is signed with the old secret: get a fresh one.
      this.authRetried = true;
      this.tokens.invalidate(this.appId);
      this.#open();
      return;
    }
    if (code in FATAL_CLOSES) {
      this.#setState(State.STOPPED, info);
      return;
    }
    this.#scheduleRetry(info);
  }

  #scheduleRetry(info) {
    const delayMs = retryDelayMs(this.attempt, this.random);
    this.attempt += 1;
    const generation = this.generation;
    this.#setState(State.RETRYING, { ...info, retryInMs: delayMs });
    this.timer = this.setTimer(async () => {
      this.timer = null;
      if (generation !== this.generation) return;
      if (await this.#serverReady()) {
        if (generation === this.generation) this.#open();
      } else if (generation === this.generation) {
        this.#scheduleRetry({ ...info, error: info.error ?? "UNREACHABLE" });
      }
    }, delayMs);
  }

  async #serverReady() {
    try {
      const response = await this.fetch(new URL("/ready", this.baseUrl).href, { cache: "no-store" });
      return response.ok;
    } catch {
      return false;
    }
  }
}
