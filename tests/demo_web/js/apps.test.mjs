import assert from "node:assert/strict";
import { test } from "node:test";

import { APPS, buildInput, findApp, outputImage, serverTimings, sniffImageType } from "../../../demo_web/js/apps.js";

const JPEG = new Uint8Array([0xff, 0xd8, 0xff, 0xe0, 1, 2, 3]);
const PNG = new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a]);

test("the picker lists the three built-in apps", () => {
  assert.deepEqual(
    APPS.map((a) => a.id),
    ["framewire/lcm", "framewire/sdxl-turbo", "framewire/echo"],
  );
  assert.equal(findApp("framewire/echo").kind, "echo");
  assert.equal(findApp("nope/nope"), null);
});

test("diffusion input carries fal's image-app fields with sync_mode on", () => {
  const input = buildInput(findApp("framewire/lcm"), {
    prompt: "a cat",
    image: JPEG,
    strength: 0.5,
    steps: 3,
    seed: 7,
    width: 512,
    height: 384,
  });
  assert.deepEqual(input, {
    prompt: "a cat",
    image_url: JPEG,
    strength: 0.5,
    num_inference_steps: 3,
    guidance_scale: 1.0,
    seed: 7,
    image_size: { width: 512, height: 384 },
    sync_mode: true,
  });
  assert.equal(buildInput(findApp("framewire/sdxl-turbo"), { image: JPEG }).guidance_scale, 0);
});

test("echo input carries only the image and the prompt", () => {
  const input = buildInput(findApp("framewire/echo"), { prompt: "p", image: JPEG, strength: 0.5, steps: 2, seed: 1 });
  assert.deepEqual(input, { prompt: "p", image_url: JPEG });
});

test("output image is read from images[0].content", () => {
  const image = outputImage({ images: [{ content: JPEG, content_type: "image/jpeg", width: 8, height: 8 }] });
  assert.equal(image.bytes, JPEG);
  assert.equal(image.type, "image/jpeg");
  assert.equal(image.url, null);
});

test("output image falls back to images[0].url, then to echo's image bytes", () => {
  assert.deepEqual(outputImage({ images: [{ url: "https://h/x.jpg", content: null }] }), {
    bytes: null,
    url: "https://h/x.jpg",
    type: null,
  });
  const echo = outputImage({ image: PNG, size_bytes: 6 });
  assert.equal(echo.bytes, PNG);
  assert.equal(echo.type, "image/png", "the type is sniffed from the bytes");
  assert.equal(outputImage({ image_url: "data:image/png;base64,AA==" }).url, "data:image/png;base64,AA==");
});

test("outputs without an image give null", () => {
  assert.equal(outputImage({ timings: {} }), null);
  assert.equal(outputImage({ images: [] }), null);
  assert.equal(outputImage({ image: new Uint8Array() }), null);
  assert.equal(outputImage(null), null);
});

test("image types are sniffed from magic bytes", () => {
  assert.equal(sniffImageType(JPEG), "image/jpeg");
  assert.equal(sniffImageType(PNG), "image/png");
  assert.equal(sniffImageType(new Uint8Array([1, 2, 3])), null);
});

test("server timings are labelled, in milliseconds where the key says so", () => {
  const rows = serverTimings({ timings: { queue_ms: 0.42, inference_ms: 38.6, batch_size: 3, steps: 4, note: "x" } });
  assert.deepEqual(rows, [
    ["queue", "0.4 ms"],
    ["inference", "39 ms"],
    ["batch", "3"],
    ["steps", "4"],
  ]);
  assert.deepEqual(serverTimings({}), []);
});
