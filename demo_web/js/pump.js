/**
 * Latest-frame-wins sending with a bounded number of frames in flight.
 *
 * The page calls `request()` whenever the sketch or a parameter changes, as often as it
 * likes. The pump sends at most one frame per `intervalMs` (the first change after a
 * quiet spell goes at once), keeps at most `maxInFlight` frames unanswered, and captures
 * the frame only when it is about to send, so changes made in between are merged into
 * the newest frame instead of queueing. Frames carry an increasing id; the server answers
 * a session's frames in order, so an answer for id N means every older frame still
 * waiting was dropped by the server (its buffer keeps the newest frames).
 */

export class FramePump {
  /**
   * @param {object} opts
   * @param {() => Promise<object>} opts.capture builds the input for the current state
   * @param {(input: object, id: number) => number | false} opts.transmit sends one frame;
   *   returns its size in bytes, or false when there is no open connection
   * @param {number} [opts.intervalMs] least time between two frames
   * @param {number} [opts.maxInFlight] frames sent and not yet answered, at most
   * @param {number} [opts.staleMs] an unanswered frame older than this counts as dropped
   * @param {(bytes: number) => void} [opts.onSent]
   * @param {(count: number) => void} [opts.onDropped]
   * @param {(error: unknown) => void} [opts.onCaptureError]
   */
  constructor({
    capture,
    transmit,
    intervalMs = 100,
    maxInFlight = 2,
    staleMs = 10_000,
    onSent = () => {},
    onDropped = () => {},
    onCaptureError = () => {},
    now = () => performance.now(),
    setTimer = (fn, ms) => setTimeout(fn, ms),
    clearTimer = (handle) => clearTimeout(handle),
  }) {
    this.capture = capture;
    this.transmit = transmit;
    this.intervalMs = intervalMs;
    this.maxInFlight = maxInFlight;
    this.staleMs = staleMs;
    this.onSent = onSent;
    this.onDropped = onDropped;
    this.onCaptureError = onCaptureError;
    this.now = now;
    this.setTimer = setTimer;
    this.clearTimer = clearTimer;
    this.inFlight = new Map(); // id -> sent time, oldest first
    this.nextId = 1;
    this.dirty = false;
    this.capturing = false;
    this.lastSentMs = -Infinity;
    this.timer = null;
    this.merged = 0; // changes folded into an already pending frame
  }

  /** Something changed: make sure a frame with the newest state goes out. */
  request() {
    if (this.dirty) this.merged += 1;
    this.dirty = true;
    this.tick();
  }

  /** The connection is open (again): send what is pending. */
  resume() {
    this.tick();
  }

  /**
   * The answer for frame `id` arrived. Returns `{ rttMs, dropped }` (older frames still
   * waiting are given up as dropped), or null for an id not in flight.
   */
  ack(id) {
    const sentMs = this.inFlight.get(id);
    if (sentMs === undefined) return null;
    const dropped = this.#release(id);
    this.tick();
    return { rttMs: this.now() - sentMs, dropped };
  }

  /** Frame `id` failed on the server (an error for that frame): free its slot. */
  fail(id) {
    if (!this.inFlight.has(id)) return false;
    this.#release(id);
    this.tick();
    return true;
  }

  /** The connection is gone: forget the frames in flight and resend the state later. */
  reset() {
    const lost = this.inFlight.size;
    this.inFlight.clear();
    if (lost) {
      this.dirty = true;
      this.onDropped(lost);
    }
    this.#clearTimer();
  }

  /** Release `id` and every older id; returns how many older ones were dropped. */
  #release(id) {
    let dropped = 0;
    for (const other of [...this.inFlight.keys()]) {
      if (other > id) break;
      this.inFlight.delete(other);
      if (other !== id) dropped += 1;
    }
    if (dropped) this.onDropped(dropped);
    return dropped;
  }

  #expireStale(nowMs) {
    let stale = 0;
    for (const [id, sentMs] of this.inFlight) {
      if (nowMs - sentMs < this.staleMs) break;
      this.inFlight.delete(id);
      stale += 1;
    }
    if (stale) this.onDropped(stale);
  }

  #clearTimer() {
    if (this.timer !== null) {
      this.clearTimer(this.timer);
      this.timer = null;
    }
  }

  #arm(delayMs) {
    this.#clearTimer();
    this.timer = this.setTimer(() => {
      this.timer = null;
      this.tick();
    }, delayMs);
  }

  tick() {
    if (!this.dirty || this.capturing) return;
    const nowMs = this.now();
    this.#expireStale(nowMs);
    if (this.inFlight.size >= this.maxInFlight) {
      // An answer will call tick(); the timer only guards against answers that never come.
      const [, oldestMs] = this.inFlight.entries().next().value;
      this.#arm(Math.max(oldestMs + this.staleMs - nowMs, 1));
      return;
    }
    const waitMs = this.lastSentMs + this.intervalMs - nowMs;
    if (waitMs > 0) {
      this.#arm(waitMs);
      return;
    }
    this.#clearTimer();
    this.#send();
  }

  async #send() {
    this.dirty = false;
    this.capturing = true;
    let input;
    try {
      input = await this.capture();
    } catch (error) {
      this.capturing = false;
      this.onCaptureError(error);
      return;
    }
    this.capturing = false;
    const id = this.nextId;
    const bytes = this.transmit(input, id);
    if (bytes === false) {
      this.dirty = true; // no connection: keep the wish, resume() sends it
      return;
    }
    this.nextId += 1;
    const sentMs = this.now();
    this.inFlight.set(id, sentMs);
    this.lastSentMs = sentMs;
    this.onSent(bytes);
    if (this.dirty) this.tick(); // changes arrived while capturing
  }
}
