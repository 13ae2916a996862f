/**
 * Live numbers for the panel: round-trip latency percentiles over the last N frames,
 * output frames per second, and frame counters. Pure: time comes in as arguments, every
 * buffer is a fixed-size ring.
 */

/** A fixed-capacity ring of numbers; the oldest value is overwritten when full. */
export class Ring {
  constructor(capacity) {
    if (!(capacity >= 1)) throw new RangeError(`capacity must be >= 1, got ${capacity}`);
    this.capacity = capacity;
    this.values = new Float64Array(capacity);
    this.size = 0;
    this.next = 0;
  }

  push(value) {
    this.values[this.next] = value;
    this.next = (this.next + 1) % this.capacity;
    if (this.size < this.capacity) this.size += 1;
  }

  /** Values oldest first. */
  toArray() {
    const out = new Array(this.size);
    const start = (this.next - this.size + this.capacity) % this.capacity;
    for (let i = 0; i < this.size; i += 1) out[i] = this.values[(start + i) % this.capacity];
    return out;
  }

  clear() {
    this.size = 0;
    this.next = 0;
  }
}

/**
 * The q-quantile (0..1) of `values` by linear interpolation between closest ranks;
 * null for no values.
 */
export function percentile(values, q) {
  if (values.length === 0) return null;
  const sorted = Float64Array.from(values).sort();
  const rank = q * (sorted.length - 1);
  const low = Math.floor(rank);
  const high = Math.ceil(rank);
  return sorted[low] + (sorted[high] - sorted[low]) * (rank - low);
}

export class LiveStats {
  /**
   * @param {object} opts
   * @param {number} [opts.window] latency samples kept for the percentiles
   * @param {number} [opts.fpsWindowMs] span over which output frames per second are counted
   */
  constructor({ window = 60, fpsWindowMs = 2000 } = {}) {
    this.window = window;
    this.fpsWindowMs = fpsWindowMs;
    this.rtts = new Ring(window);
    this.arrivals = new Ring(256);
    this.reset();
  }

  reset() {
    this.rtts.clear();
    this.arrivals.clear();
    this.sent = 0;
    this.received = 0;
    this.dropped = 0;
    this.errors = 0;
    this.bytesUp = 0;
    this.bytesDown = 0;
    this.lastRttMs = null;
    this.firstArrivalMs = null;
  }

  /** A frame left the page: `bytes` is its encoded size. */
  recordSent(bytes) {
    this.sent += 1;
    this.bytesUp = bytes;
  }

  /** An output arrived `rttMs` after its frame was sent (null: not known); `atMs` is the arrival time. */
  recordResult(rttMs, atMs, bytes = 0) {
    this.received += 1;
    if (rttMs !== null) this.rtts.push(rttMs);
    this.arrivals.push(atMs);
    if (this.firstArrivalMs === null) this.firstArrivalMs = atMs;
    if (rttMs !== null) this.lastRttMs = rttMs;
    this.bytesDown = bytes;
  }

  /** Frames that were sent but will never be answered (superseded on the server, lost). */
  recordDropped(count = 1) {
    this.dropped += count;
  }

  recordError() {
    this.errors += 1;
  }

  /**
   * Output frames per second: arrivals in the last `fpsWindowMs` over that span; until
   * a whole window has passed since the first arrival, intervals over the time elapsed.
   */
  fps(nowMs) {
    if (this.firstArrivalMs === null) return 0;
    const since = nowMs - this.fpsWindowMs;
    const count = this.arrivals.toArray().filter((t) => t > since).length;
    const elapsed = nowMs - this.firstArrivalMs;
    if (elapsed >= this.fpsWindowMs) return (count * 1000) / this.fpsWindowMs;
    return count > 1 ? ((count - 1) * 1000) / Math.max(elapsed, 1) : 0;
  }

  snapshot(nowMs) {
    const rtts = this.rtts.toArray();
    return {
      p50: percentile(rtts, 0.5),
      p95: percentile(rtts, 0.95),
      samples: rtts.length,
      recent: rtts,
      fps: this.fps(nowMs),
      sent: this.sent,
      received: this.received,
      dropped: this.dropped,
      errors: this.errors,
      bytesUp: this.bytesUp,
      bytesDown: this.bytesDown,
      lastRttMs: this.lastRttMs,
    };
  }
}

/**
 * The top of a chart's scale for data up to `value`: the smallest 1, 2, 2.5 or 5 × 10^n at
 * or above it (so the axis label is a round number). 1 for nothing to show.
 */
export function niceCeiling(value) {
  if (!Number.isFinite(value) || value <= 0) return 1;
  const magnitude = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) {
    // Rounding guards against 10 ** n being a hair off (e.g. 0.30000000000000004).
    const top = Number((step * magnitude).toPrecision(12));
    if (top >= value) return top;
  }
  return 10 * magnitude;
}
