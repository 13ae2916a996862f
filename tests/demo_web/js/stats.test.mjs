import assert from "node:assert/strict";
import { test } from "node:test";

import { LiveStats, Ring, niceCeiling, percentile } from "../../../demo_web/js/stats.js";

test("ring keeps the newest values oldest first once full", () => {
  const ring = new Ring(3);
  for (const v of [1, 2, 3, 4, 5]) ring.push(v);
  assert.deepEqual(ring.toArray(), [3, 4, 5]);
  assert.equal(ring.size, 3);
});

test("ring rejects a zero capacity", () => {
  assert.throws(() => new Ring(0), RangeError);
});

test("percentile interpolates between closest ranks", () => {
  const values = [40, 10, 30, 20, 50];
  assert.equal(percentile(values, 0.5), 30);
  assert.equal(percentile(values, 0), 10);
  assert.equal(percentile(values, 1), 50);
  assert.equal(percentile(values, 0.95), 48);
  assert.equal(percentile([], 0.5), null);
});

test("latency percentiles cover only the last window of frames", () => {
  const stats = new LiveStats({ window: 4 });
  for (const [i, rtt] of [1000, 1000, 10, 20, 30, 40].entries()) stats.recordResult(rtt, i * 100);
  const snap = stats.snapshot(600);
  assert.equal(snap.samples, 4);
  assert.equal(snap.p50, 25);
  assert.ok(snap.p95 < 40 && snap.p95 > 38, `p95 ${snap.p95}`);
  assert.equal(snap.received, 6);
});

test("fps counts arrivals over the window and falls to zero when outputs stop", () => {
  const stats = new LiveStats({ fpsWindowMs: 1000 });
  for (let t = 0; t <= 3000; t += 100) stats.recordResult(5, t); // 10 per second
  assert.equal(Math.round(stats.fps(3000)), 10);
  assert.equal(stats.fps(5000), 0);
});

test("fps before a full window uses the intervals seen so far", () => {
  const stats = new LiveStats({ fpsWindowMs: 2000 });
  stats.recordResult(5, 1000);
  stats.recordResult(5, 1050);
  stats.recordResult(5, 1100);
  assert.equal(Math.round(stats.fps(1100)), 20);
});

test("reset forgets samples and counters", () => {
  const stats = new LiveStats();
  stats.recordSent(100);
  stats.recordResult(5, 1);
  stats.recordDropped(2);
  stats.reset();
  const snap = stats.snapshot(10);
  assert.deepEqual([snap.sent, snap.received, snap.dropped, snap.samples, snap.p50], [0, 0, 0, 0, null]);
  assert.equal(snap.fps, 0);
});

test("an output without a known round trip counts as received and for fps, not in the percentiles", () => {
  const stats = new LiveStats();
  stats.recordResult(null, 0);
  stats.recordResult(40, 100);
  stats.recordResult(null, 200);
  const snap = stats.snapshot(200);
  assert.equal(snap.received, 3);
  assert.equal(snap.samples, 1);
  assert.equal(snap.p50, 40);
  assert.equal(snap.lastRttMs, 40);
  assert.ok(snap.fps > 0);
});

test("the sparkline's scale tops out at a round number at or above the data", () => {
  assert.equal(niceCeiling(0), 1);
  assert.equal(niceCeiling(Number.NaN), 1);
  assert.equal(niceCeiling(7), 10);
  assert.equal(niceCeiling(10), 10);
  assert.equal(niceCeiling(11), 20);
  assert.equal(niceCeiling(21), 25);
  assert.equal(niceCeiling(26), 50);
  assert.equal(niceCeiling(51), 100);
  assert.equal(niceCeiling(0.3), 0.5);
  assert.equal(niceCeiling(1234), 2000);
});
