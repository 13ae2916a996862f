import assert from "node:assert/strict";
import { test } from "node:test";

import { KeyStore, TokenError, TokenSource, aliasOf, tokenOf } from "../../../demo_web/js/auth.js";
import { MemoryStorage, fakeFetch } from "./fakes.mjs";

function keysWith(key) {
  const keys = new KeyStore(new MemoryStorage());
  if (key) keys.set(key);
  return keys;
}

test("the key store trims keys and treats an empty key as none", () => {
  const keys = keysWith(null);
  assert.equal(keys.get(), null);
  assert.equal(keys.set("  id:secret \n"), "id:secret");
  assert.equal(keys.get(), "id:secret");
  assert.equal(keys.set("   "), null);
  assert.equal(keys.get(), null);
});

test("a key survives in memory when the browser refuses storage", () => {
  const refusing = {
    getItem() {
      throw new Error("SecurityError");
    },
    setItem() {
      throw new Error("SecurityError");
    },
    removeItem() {
      throw new Error("SecurityError");
    },
  };
  const keys = new KeyStore(refusing);
  assert.equal(keys.set("id:secret"), "id:secret");
  assert.equal(keys.get(), "id:secret");
  keys.clear();
  assert.equal(keys.get(), null);
});

test("allowed_apps names the alias, as fal clients send it", () => {
  assert.equal(aliasOf("framewire/echo"), "echo");
  assert.equal(aliasOf("fal-ai/fast-lcm-diffusion/realtime"), "fast-lcm-diffusion");
});

test("without a key no token is fetched", async () => {
  const fetch = fakeFetch(() => ({ body: "t" }));
  const tokens = new TokenSource({ keys: keysWith(null), baseUrl: "http://h:1", fetch });
  assert.equal(await tokens.get("framewire/echo"), null);
  assert.equal(fetch.calls.length, 0);
});

test("a token is fetched with the key and cached until near its expiry", async () => {
  let now = 0;
  const fetch = fakeFetch(() => ({ body: `token-${fetch.calls.length}` }));
  const tokens = new TokenSource({ keys: keysWith("id:s"), baseUrl: "http://h:1", fetch, now: () => now });
  assert.deepEqual(await tokens.get("framewire/echo"), { token: "token-1", cached: false });
  const call = fetch.calls[0];
  assert.equal(call.url, "http://h:1/tokens/");
  assert.equal(call.init.method, "POST");
  assert.equal(call.init.headers.Authorization, "Key id:s");
  assert.deepEqual(JSON.parse(call.init.body), { allowed_apps: ["echo"], token_expiration: 120 });
  now = 100_000;
  assert.deepEqual(await tokens.get("framewire/echo"), { token: "token-1", cached: true });
  now = 110_000;
  assert.deepEqual(await tokens.get("framewire/echo"), { token: "token-2", cached: false });
});

test("a new key or an invalidated token fetches a fresh token", async () => {
  const keys = keysWith("a:1");
  const fetch = fakeFetch(() => ({ body: `token-${fetch.calls.length}` }));
  const tokens = new TokenSource({ keys, baseUrl: "http://h:1", fetch, now: () => 0 });
  await tokens.get("framewire/echo");
  keys.set("b:2");
  assert.equal((await tokens.get("framewire/echo")).token, "token-2");
  tokens.invalidate("framewire/echo");
  assert.equal((await tokens.get("framewire/echo")).token, "token-3");
});

test("a refused key raises a TokenError with the server's detail", async () => {
  const fetch = fakeFetch(() => ({ status: 401, body: { detail: "invalid API key" } }));
  const tokens = new TokenSource({ keys: keysWith("id:bad"), baseUrl: "http://h:1", fetch });
  await assert.rejects(tokens.get("framewire/echo"), (error) => {
    assert.ok(error instanceof TokenError);
    assert.equal(error.status, 401);
    assert.equal(error.refused, true);
    assert.match(error.message, /refused.*invalid API key/);
    return true;
  });
});

test("an unreachable server is a TokenError that retrying may fix", async () => {
  const fetch = fakeFetch(() => ({ fail: "Failed to fetch" }));
  const tokens = new TokenSource({ keys: keysWith("id:s"), baseUrl: "http://h:1", fetch });
  await assert.rejects(tokens.get("framewire/echo"), (error) => error.status === 0 && !error.refused);
});

test("token answers are read as a bare string or a wrapped one", () => {
  assert.equal(tokenOf("abc"), "abc");
  assert.equal(tokenOf({ token: "abc" }), "abc");
  assert.equal(tokenOf({ detail: "abc" }), "abc");
  assert.equal(tokenOf({}), null);
  assert.equal(tokenOf(""), null);
});
