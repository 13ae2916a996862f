// Test doubles for the page's modules: a manual clock with timers, a scripted WebSocket.

/** A clock whose timers fire only when the test advances it. */
export class FakeClock {
  constructor() {
    this.nowMs = 0;
    this.timers = new Map();
    this.nextHandle = 1;
    this.now = () => this.nowMs;
    this.setTimer = (fn, ms) => {
      const handle = this.nextHandle++;
      this.timers.set(handle, { at: this.nowMs + ms, fn });
      return handle;
    };
    this.clearTimer = (handle) => {
      this.timers.delete(handle);
    };
  }

  get pending() {
    return this.timers.size;
  }

  /** Move time forward by `ms`, firing due timers in order (and settling promises between). */
  async advance(ms) {
    const end = this.nowMs + ms;
    for (;;) {
      let due = null;
      for (const [handle, timer] of this.timers) {
        if (timer.at <= end && (due === null || timer.at < due[1].at)) due = [handle, timer];
      }
      if (due === null) break;
      this.timers.delete(due[0]);
      this.nowMs = Math.max(this.nowMs, due[1].at);
      due[1].fn();
      await settle();
    }
    this.nowMs = end;
    await settle();
  }
}

/** Let pending promise callbacks run. */
export async function settle() {
  for (let i = 0; i < 5; i += 1) await new Promise((resolve) => setImmediate(resolve));
}

/** A WebSocket stand-in: records what the code under test sends; the test plays the server. */
export class FakeSocket {
  static instances = [];

  constructor(url) {
    this.url = url;
    this.sent = [];
    this.closed = null;
    this.binaryType = "blob";
    FakeSocket.instances.push(this);
  }

  static get last() {
    return FakeSocket.instances[FakeSocket.instances.length - 1];
  }

  static reset() {
    FakeSocket.instances = [];
  }

  send(data) {
    this.sent.push(data);
  }

  close(code = 1000, reason = "") {
    this.closed = { code, reason };
  }

  // ---- the server's side ----
  open() {
    this.onopen?.({});
  }

  text(message) {
    this.onmessage?.({ data: typeof message === "string" ? message : JSON.stringify(message) });
  }

  binary(bytes) {
    this.onmessage?.({ data: bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) });
  }

  serverClose(code, reason = "") {
    this.onerror?.({});
    this.onclose?.({ code, reason });
  }
}

/** A fetch stand-in answering from a function `(url, init) => {status, body}`. */
export function fakeFetch(answer) {
  const calls = [];
  const fetch = async (url, init = {}) => {
    calls.push({ url, init });
    const { status = 200, body = null, fail = null } = await answer(url, init);
    if (fail) throw new TypeError(fail);
    return {
      ok: status >= 200 && status < 300,
      status,
      statusText: String(status),
      json: async () => {
        if (body === undefined) throw new SyntaxError("no body");
        return body;
      },
    };
  };
  fetch.calls = calls;
  return fetch;
}

/** A Storage stand-in (sessionStorage's interface). */
export class MemoryStorage {
  constructor() {
    this.items = new Map();
  }
  getItem(key) {
    return this.items.has(key) ? this.items.get(key) : null;
  }
  setItem(key, value) {
    this.items.set(key, String(value));
  }
  removeItem(key) {
    this.items.delete(key);
  }
}
