import assert from "node:assert/strict";
import { test } from "node:test";

import { APPS } from "../../../demo_web/js/apps.js";
import { fetchCatalog, isRandom, pickDefault, randomApps, withCode } from "../../../demo_web/js/catalog.js";

const ECHO = { id: "framewire/echo", aliases: [] };
const lcm = (weights) => ({
  id: "framewire/lcm",
  aliases: ["fal-ai/fast-lcm-diffusion"],
  weights,
  weights_info: { source: "x", reason: "cannot reach the Hub", fix: "run `framewire pull lcm`", loras: [] },
});
const turbo = (weights) => ({ id: "framewire/sdxl-turbo", aliases: [], weights, weights_info: { reason: "", fix: "" } });

test("the first app with real weights is shown first", () => {
  assert.equal(pickDefault(APPS, [lcm("real"), turbo("real"), ECHO]).app.id, "framewire/lcm");
  assert.equal(pickDefault(APPS, [lcm("real"), turbo("real"), ECHO]).note, null);
  const second = pickDefault(APPS, [lcm("random"), turbo("real"), ECHO]);
  assert.equal(second.app.id, "framewire/sdxl-turbo");
  assert.match(second.note, /framewire\/lcm runs on random weights/);
});

test("with every diffusion app on random weights, echo comes first: a mirror, not noise", () => {
  const { app, note } = pickDefault(APPS, [lcm("random"), turbo("random"), ECHO]);
  assert.equal(app.id, "framewire/echo");
  assert.match(note, /random weights \(noise\); showing framewire\/echo first/);
});

test("apps the server lacks are passed over; without a catalog the first app stays", () => {
  const { app, note } = pickDefault(APPS, [ECHO]);
  assert.equal(app.id, "framewire/echo");
  assert.match(note, /framewire\/lcm is not loaded on this server; showing framewire\/echo instead/);
  assert.equal(pickDefault(APPS, null).app.id, "framewire/lcm");
  assert.equal(pickDefault(APPS, [lcm("random")]).app.id, "framewire/lcm", "random is better than nothing");
});

test("random apps are listed with their reason and fix, found by id or alias", () => {
  const models = [lcm("random"), turbo("real"), ECHO];
  assert.deepEqual(randomApps(models), [
    { id: "framewire/lcm", reason: "cannot reach the Hub", fix: "run `framewire pull lcm`" },
  ]);
  assert.ok(isRandom(models, "fal-ai/fast-lcm-diffusion"));
  assert.ok(!isRandom(models, "framewire/echo") && !isRandom(null, "framewire/lcm"));
});

test("the catalog is read with the stored key, and a failure means no catalog", async () => {
  const seen = [];
  const ok = async (url, init) => {
    seen.push([url, init.headers]);
    return { ok: true, json: async () => ({ models: [ECHO] }) };
  };
  assert.deepEqual(await fetchCatalog({ fetchImpl: ok, key: "id:secret" }), [ECHO]);
  assert.deepEqual(seen, [["/models", { Authorization: "Key id:secret" }]]);
  assert.equal(await fetchCatalog({ fetchImpl: async () => ({ ok: false }) }), null);
  assert.equal(
    await fetchCatalog({
      fetchImpl: async () => {
        throw new TypeError("network");
      },
    }),
    null,
  );
});

test("a catalog that never answers is given up on", async () => {
  const hang = (url, init) =>
    new Promise((_, reject) => init.signal.addEventListener("abort", () => reject(new Error("aborted"))));
  const started = Date.now();
  assert.equal(await fetchCatalog({ fetchImpl: hang, timeoutMs: 50 }), null);
  assert.ok(Date.now() - started < 2000);
});

test("backticks in server text become code elements, never HTML", () => {
  const doc = {
    createTextNode: (text) => ({ text }),
    createElement: (tag) => ({ tag, textContent: "" }),
  };
  const nodes = withCode("run `framewire pull lcm` then <b>restart</b>", doc);
  assert.deepEqual(nodes, [
    { text: "run " },
    { tag: "code", textContent: "framewire pull lcm" },
    { text: " then <b>restart</b>" },
  ]);
});
