/**
 * What the server says about its apps (`GET /models`): which are loaded, and which run on
 * tiny random weights (their pictures are noise), with the reason and the fix.
 *
 * The page reads it once before it connects, to choose a first app whose output means
 * something, and to put a banner where a person looks when an app's weights are random.
 */

/** Longest wait for `/models` before the page goes on without it. */
export const CATALOG_TIMEOUT_MS = 3000;

/**
 * The server's app list, or null when it cannot be had (an old server, auth without a key,
 * a timeout). Sends the stored API key when there is one.
 */
export async function fetchCatalog({ fetchImpl = globalThis.fetch, key = null, timeoutMs = CATALOG_TIMEOUT_MS } = {}) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  try {
    const headers = key ? { Authorization: `Key ${key}` } : {};
    const response = await fetchImpl("/models", { headers, signal: controller.signal, cache: "no-store" });
    if (!response.ok) return null;
    const body = await response.json();
    return Array.isArray(body?.models) ? body.models : null;
  } catch {
    return null; // unreachable, aborted, or not JSON: the page works without it
  } finally {
    clearTimeout(timer);
  }
}

/** The catalog entry serving `appId` (by id or alias), or null. */
export function entryFor(models, appId) {
  if (!Array.isArray(models)) return null;
  return models.find((m) => m.id === appId || (m.aliases ?? []).includes(appId)) ?? null;
}

/** True when the server marks `appId` as running on random weights. */
export function isRandom(models, appId) {
  return entryFor(models, appId)?.weights === "random";
}

/** `[{ id, reason, fix }]` of every app on random weights, in catalog order. */
export function randomApps(models) {
  if (!Array.isArray(models)) return [];
  return models
    .filter((m) => m.weights === "random")
    .map((m) => ({ id: m.id, reason: m.weights_info?.reason ?? "", fix: m.weights_info?.fix ?? "" }));
}

/**
 * The app to show first when the user has not chosen one: the first of `apps` the server
 * has on real weights; else one that needs no weights (echo mirrors the sketch, which is
 * not noise); else the first the server has. `note` says why, when the first of `apps` was
 * passed over. Without a catalog, the first of `apps`.
 */
export function pickDefault(apps, models) {
  if (!Array.isArray(models)) return { app: apps[0], note: null };
  const loaded = apps.filter((a) => entryFor(models, a.id));
  const real = loaded.find((a) => a.kind !== "echo" && !isRandom(models, a.id));
  const plain = loaded.find((a) => a.kind === "echo");
  const app = real ?? plain ?? loaded[0] ?? apps[0];
  let note = null;
  if (app !== apps[0]) {
    note = entryFor(models, apps[0].id)
      ? `${apps[0].id} runs on random weights (noise); showing ${app.id} first`
      : `${apps[0].id} is not loaded on this server; showing ${app.id} instead`;
  }
  return { app, note };
}

/**
 * Text with `code spans` as DOM nodes (server text is never parsed as HTML).
 * @returns {Node[]}
 */
export function withCode(text, doc = globalThis.document) {
  return String(text)
    .split("`")
    .map((part, i) => {
      if (i % 2 === 0) return doc.createTextNode(part);
      const code = doc.createElement("code");
      code.textContent = part;
      return code;
    });
}
