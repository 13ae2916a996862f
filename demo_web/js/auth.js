/**
 * API keys and realtime tokens when the server runs with auth on.
 *
 * Browsers cannot put an `Authorization` header on a WebSocket, so the page trades the
 * user's API key for a short-lived token at `POST /tokens/` (as fal's clients do) and
 * passes it as `fal_jwt_token` on the socket URL. The key stays in this tab's
 * sessionStorage only: it is gone when the tab closes and never reaches localStorage.
 */

const KEY_ITEM = "framewire.apiKey";

/**
 * The user's API key (`id:secret`), kept in one tab's sessionStorage; in memory only
 * when the browser refuses storage (some privacy modes), so it lasts until a reload.
 */
export class KeyStore {
  constructor(storage = globalThis.sessionStorage) {
    this.storage = storage;
    this.memory = null;
  }

  get() {
    try {
      return this.storage?.getItem(KEY_ITEM) || this.memory;
    } catch {
      return this.memory;
    }
  }

  set(key) {
    const trimmed = String(key ?? "").trim();
    if (!trimmed) {
      this.clear();
      return null;
    }
    this.memory = trimmed;
    try {
      this.storage?.setItem(KEY_ITEM, trimmed);
    } catch {
      // storage refused: the in-memory copy serves this page load
    }
    return trimmed;
  }

  clear() {
    this.memory = null;
    try {
      this.storage?.removeItem(KEY_ITEM);
    } catch {
      // nothing was stored
    }
  }
}

/** A refusal from `/tokens/`: `status` is the HTTP status (0 when the server was unreachable). */
export class TokenError extends Error {
  constructor(status, message) {
    super(message);
    this.name = "TokenError";
    this.status = status;
  }

  /** True when retrying with the same key cannot help. */
  get refused() {
    return this.status >= 400 && this.status < 500;
  }
}

/** The alias fal clients put in `allowed_apps`: `owner/alias/...` → `alias`. */
export function aliasOf(appId) {
  const parts = appId.split("/").filter(Boolean);
  return parts.length >= 2 ? parts[1] : parts[0];
}

function detailText(body) {
  if (typeof body === "string") return body;
  if (body && typeof body.detail === "string") return body.detail;
  if (body && Array.isArray(body.detail)) {
    return body.detail.map((d) => `${(d.loc ?? []).join(".")}: ${d.msg}`).join("; ");
  }
  return "";
}

/** The token in a `/tokens/` answer: a bare JSON string, or `{token}` / `{detail}`. */
export function tokenOf(body) {
  if (typeof body === "string" && body) return body;
  if (body && typeof body.token === "string") return body.token;
  if (body && typeof body.detail === "string") return body.detail;
  return null;
}

export class TokenSource {
  /**
   * @param {object} opts
   * @param {KeyStore} opts.keys
   * @param {string} [opts.baseUrl] the server's http(s) origin
   * @param {number} [opts.expirationS] lifetime asked for each token
   */
  constructor({
    keys,
    baseUrl = globalThis.location?.origin,
    expirationS = 120,
    fetch = (...args) => globalThis.fetch(...args),
    now = () => Date.now(),
  }) {
    this.keys = keys;
    this.baseUrl = baseUrl;
    this.expirationS = expirationS;
    this.fetch = fetch;
    this.now = now;
    this.cache = new Map(); // alias -> { token, key, expiresMs }
  }

  /**
   * A token for `appId`: `{ token, cached }`, or null when no key is set (the socket then
   * goes without one, which works when auth is off). Throws TokenError.
   */
  async get(appId) {
    const key = this.keys.get();
    if (!key) return null;
    const alias = aliasOf(appId);
    const hit = this.cache.get(alias);
    // Tokens only matter at the handshake; keep a margin for a slow one.
    if (hit && hit.key === key && hit.expiresMs - this.now() > 15_000) return { token: hit.token, cached: true };
    const token = await this.#fetchToken(key, alias);
    this.cache.set(alias, { token, key, expiresMs: this.now() + this.expirationS * 1000 });
    return { token, cached: false };
  }

  invalidate(appId) {
    this.cache.delete(aliasOf(appId));
  }

  async #fetchToken(key, alias) {
    let response;
    try {
      response = await this.fetch(new URL("/tokens/", this.baseUrl).href, {
        method: "POST",
        headers: { Authorization: `Key ${key}`, "Content-Type": "application/json" },
        body: JSON.stringify({ allowed_apps: [alias], token_expiration: this.expirationS }),
        cache: "no-store",
      });
    } catch (error) {
      throw new TokenError(0, `cannot reach the server for a token (${error.message ?? error})`);
    }
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (!response.ok) {
      const why = detailText(body) || response.statusText || "no detail";
      const what = response.status === 401 ? "the API key was refused" : "no token was issued";
      throw new TokenError(response.status, `${what} (HTTP ${response.status}: ${why})`);
    }
    const token = tokenOf(body);
    if (!token) throw new TokenError(response.status, "the server answered /tokens/ without a token");
    return token;
  }
}
