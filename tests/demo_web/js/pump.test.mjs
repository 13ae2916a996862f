import assert from "node:assert/strict";
import { test } from "node:test";

import { FramePump } from "../../../demo_web/js/pump.js";
import { FakeClock, settle } from "./fakes.mjs";

/** A pump over a fake clock whose capture returns the "state" at capture time. */
function rig({ intervalMs = 100, maxInFlight = 2, staleMs = 10_000, connected = true } = {}) {
  const clock = new FakeClock();
  const world = { state: 0, connected, sent: [], sentAt: [], dropped: 0, captures: 0 };
  const pump = new FramePump({
    intervalMs,
    maxInFlight,
    staleMs,
    now: clock.now,
    setTimer: clock.setTimer,
    clearTimer: clock.clearTimer,
    capture: async () => {
      world.captures += 1;
      return { state: world.state };
    },
    transmit: (input, id) => {
      if (!world.connected) return false;
      world.sent.push({ ...input, id });
      world.sentAt.push(clock.now());
      return 100;
    },
    onDropped: (n) => {
      world.dropped += n;
    },
  });
  return { clock, world, pump };
}

test("the first change after a quiet spell is sent at once", async () => {
  const { world, pump } = rig();
  world.state = 1;
  pump.request();
  await settle();
  assert.deepEqual(world.sent, [{ state: 1, id: 1 }]);
});

test("changes inside the interval merge into one frame with the newest state", async () => {
  const { clock, world, pump } = rig({ intervalMs: 100 });
  world.state = 1;
  pump.request();
  await settle();
  for (let s = 2; s <= 6; s += 1) {
    world.state = s;
    pump.request();
    await clock.advance(10);
  }
  assert.equal(world.sent.length, 1, "nothing more before the interval ends");
  await clock.advance(60);
  assert.deepEqual(
    world.sent.map((f) => f.state),
    [1, 6],
  );
  assert.equal(world.captures, 2, "each frame is captured once, when it is sent");
  assert.equal(pump.merged, 4);
});

test("no more than maxInFlight frames wait for answers", async () => {
  const { clock, world, pump } = rig({ intervalMs: 10, maxInFlight: 2 });
  for (let s = 1; s <= 10; s += 1) {
    world.state = s;
    pump.request();
    await clock.advance(20);
  }
  assert.equal(world.sent.length, 2);
  assert.equal(pump.inFlight.size, 2);
  const answer = pump.ack(1);
  assert.equal(answer.rttMs, clock.now() - world.sentAt[0], "round trip measured from send to answer");
  assert.ok(answer.rttMs >= 150);
  await settle();
  assert.equal(world.sent.length, 3);
  assert.equal(world.sent[2].state, 10, "the freed slot carries the newest state");
});

test("an answer for a newer frame gives up older unanswered frames as dropped", async () => {
  const { clock, world, pump } = rig({ intervalMs: 10, maxInFlight: 3 });
  for (let s = 1; s <= 3; s += 1) {
    world.state = s;
    pump.request();
    await clock.advance(20);
  }
  assert.equal(pump.inFlight.size, 3);
  const answer = pump.ack(3);
  assert.equal(answer.dropped, 2);
  assert.equal(world.dropped, 2);
  assert.equal(pump.inFlight.size, 0);
  assert.equal(pump.ack(1), null, "a late answer for a dropped frame is not counted twice");
});

test("a frame that cannot be sent stays pending and goes out on resume", async () => {
  const { world, pump } = rig({ connected: false });
  world.state = 7;
  pump.request();
  await settle();
  assert.equal(world.sent.length, 0);
  world.connected = true;
  pump.resume();
  await settle();
  assert.deepEqual(world.sent, [{ state: 7, id: 1 }]);
});

test("unanswered frames older than staleMs free their slots", async () => {
  const { clock, world, pump } = rig({ intervalMs: 10, maxInFlight: 1, staleMs: 1000 });
  pump.request();
  await settle();
  world.state = 2;
  pump.request();
  await clock.advance(999);
  assert.equal(world.sent.length, 1);
  await clock.advance(2);
  assert.equal(world.sent.length, 2);
  assert.equal(world.dropped, 1);
});

test("a failed frame frees its slot without counting a drop", async () => {
  const { world, pump } = rig({ maxInFlight: 1 });
  pump.request();
  await settle();
  assert.equal(pump.fail(1), true);
  assert.equal(pump.inFlight.size, 0);
  assert.equal(world.dropped, 0);
  assert.equal(pump.fail(99), false);
});

test("reset counts frames lost with the connection and resends the state", async () => {
  const { clock, world, pump } = rig({ intervalMs: 10 });
  pump.request();
  await settle();
  pump.reset();
  assert.equal(world.dropped, 1);
  assert.equal(pump.inFlight.size, 0);
  await clock.advance(20);
  pump.resume();
  await settle();
  assert.equal(world.sent.length, 2, "the state is sent again after a reconnect");
});
