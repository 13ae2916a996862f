import assert from "node:assert/strict";
import { test } from "node:test";

import { CameraMode } from "../../../demo_web/js/camera.js";
import { LiveStats } from "../../../demo_web/js/stats.js";

test("each output counts its camera frame and the ones the server replaced before it", () => {
  const stats = new LiveStats();
  const shown = [];
  const mode = new CameraMode({
    local: {},
    remote: {},
    stats,
    tokens: null,
    onState: () => {},
    onFrame: (event) => shown.push(event.pts),
    media: null,
  });
  mode.session.onFrame({ pts: 0, dropped: 0 }, null); // before the first pong: no round trip yet
  mode.session.onFrame({ pts: 3000, dropped: 3 }, 50);
  mode.session.onFrame({ pts: 6000, dropped: 3 }, 70);
  const snap = stats.snapshot(1000);
  assert.deepEqual(shown, [0, 3000, 6000]);
  assert.equal(snap.received, 3);
  assert.equal(snap.dropped, 3);
  assert.equal(snap.sent, 6, "3 answered + 3 replaced");
  assert.equal(snap.samples, 2);
  assert.equal(snap.lastRttMs, 70);
});
