/**
 * The apps the page can drive, what input each takes and how to read its output.
 *
 * Diffusion apps follow fal's image apps: input `prompt`, `image_url` (JPEG bytes),
 * `strength`, `num_inference_steps`, `guidance_scale`, `seed`, `image_size`,
 * `sync_mode`; output `images[0].content` (bytes) or `images[0].url`, `timings`, `seed`.
 * The echo app takes `image_url` + `prompt` and answers with `image` (bytes).
 */

export const APPS = [
  {
    id: "framewire/lcm",
    label: "LCM",
    detail: "SD 1.5 latent consistency · img2img in 2-8 steps",
    kind: "diffusion",
    steps: { min: 1, max: 8, value: 4 },
    strength: 0.65,
    guidanceScale: 1.0,
  },
  {
    id: "framewire/sdxl-turbo",
    label: "SDXL Turbo",
    detail: "adversarial distillation · img2img in 1-4 steps",
    kind: "diffusion",
    steps: { min: 1, max: 4, value: 2 },
    strength: 0.7,
    guidanceScale: 0.0,
  },
  {
    id: "framewire/echo",
    label: "Echo",
    detail: "no model · returns the sketch, to test the wire",
    kind: "echo",
    steps: null,
    strength: null,
    guidanceScale: null,
  },
];

export function findApp(id) {
  return APPS.find((app) => app.id === id) ?? null;
}

/**
 * The realtime input for `app`.
 * @param {object} app an entry of APPS
 * @param {object} p `prompt`, `image` (Uint8Array JPEG), `strength`, `steps`, `seed`,
 *   `width`, `height`
 */
export function buildInput(app, { prompt, image, strength, steps, seed, width, height }) {
  if (app.kind === "echo") return { prompt, image_url: image };
  return {
    prompt,
    image_url: image,
    strength,
    num_inference_steps: steps,
    guidance_scale: app.guidanceScale,
    seed,
    image_size: { width, height },
    sync_mode: true,
  };
}

/**
 * The parameters of a camera session on `app` (its video endpoint's fields but the frame):
 * the camera frame replaces the sketch, the model's output size follows the camera's.
 */
export function videoParams(app, { prompt, strength, steps, seed }) {
  if (app.kind === "echo") return {};
  return { prompt, strength, num_inference_steps: steps, guidance_scale: app.guidanceScale, seed };
}

const JPEG = [0xff, 0xd8, 0xff];
const PNG = [0x89, 0x50, 0x4e, 0x47];
const WEBP_RIFF = [0x52, 0x49, 0x46, 0x46];

function startsWith(bytes, magic) {
  return bytes.length >= magic.length && magic.every((b, i) => bytes[i] === b);
}

/** The MIME type of encoded image bytes, from their first bytes; null if unknown. */
export function sniffImageType(bytes) {
  if (startsWith(bytes, JPEG)) return "image/jpeg";
  if (startsWith(bytes, PNG)) return "image/png";
  if (startsWith(bytes, WEBP_RIFF)) return "image/webp";
  return null;
}

/**
 * The image in an output of either shape: `{ bytes, url, type }` with exactly one of
 * `bytes` (Uint8Array) or `url` set, or null when the output carries no image.
 */
export function outputImage(output) {
  if (!output || typeof output !== "object") return null;
  const first = Array.isArray(output.images) ? output.images[0] : null;
  if (first && typeof first === "object") {
    if (first.content instanceof Uint8Array && first.content.length) {
      return { bytes: first.content, url: null, type: first.content_type ?? sniffImageType(first.content) };
    }
    if (typeof first.url === "string" && first.url) {
      return { bytes: null, url: first.url, type: first.content_type ?? null };
    }
  }
  if (output.image instanceof Uint8Array && output.image.length) {
    return { bytes: output.image, url: null, type: sniffImageType(output.image) };
  }
  if (typeof output.image_url === "string" && output.image_url) {
    return { bytes: null, url: output.image_url, type: null };
  }
  return null;
}

/**
 * Server-side timings of an output as `[label, text]` pairs, in the server's order.
 * Keys ending in `_ms` are milliseconds; `batch_size` is a count; other numbers are shown
 * as they are.
 */
export function serverTimings(output) {
  const timings = output && typeof output.timings === "object" ? output.timings : null;
  if (!timings) return [];
  const rows = [];
  for (const [key, value] of Object.entries(timings)) {
    if (typeof value !== "number" || !Number.isFinite(value)) continue;
    if (key.endsWith("_ms")) {
      rows.push([key.slice(0, -3).replaceAll("_", " "), `${formatMs(value)} ms`]);
    } else if (key === "batch_size") {
      rows.push(["batch", String(Math.round(value))]);
    } else {
      rows.push([key.replaceAll("_", " "), String(Math.round(value * 100) / 100)]);
    }
  }
  return rows;
}

export function formatMs(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return "—";
  if (ms < 10) return ms.toFixed(1);
  return String(Math.round(ms));
}
