/**
 * The page: wires the sketch, the controls, the realtime connection, the frame pump and
 * the live panel together. Everything that talks to the server lives in connection.js;
 * this module only renders and reacts.
 */

import { APPS, buildInput, findApp, formatMs, outputImage, serverTimings } from "./apps.js";
import { KeyStore, TokenSource } from "./auth.js";
import { entryFor, fetchCatalog, isRandom, pickDefault, randomApps, withCode } from "./catalog.js";
import { RealtimeConnection, State, realtimeUrl } from "./connection.js";
import { FramePump } from "./pump.js";
import { Sketchpad } from "./sketch.js";
import { LiveStats } from "./stats.js";

const $ = (id) => document.getElementById(id);
const SETTINGS_ITEM = "framewire.demo.settings";
const SWATCHES = ["#111111", "#e5484d", "#f5a524", "#30a46c", "#0091ff", "#8e4ec6", "#8d6e63", "#ffffff"];
const LOG_LIMIT = 50;
const PANEL_REFRESH_MS = 250;
const SPARK_MIN_SLOTS = 20;

// ---- settings (localStorage; never the API key) -------------------------------------

function loadSettings() {
  try {
    return JSON.parse(localStorage.getItem(SETTINGS_ITEM) ?? "{}") ?? {};
  } catch {
    return {};
  }
}

const saved = loadSettings();
const query = new URLSearchParams(location.search);
/** `value` as a number within [low, high], or `fallback` when it is not a number. */
function bounded(value, low, high, fallback) {
  if (value === null || value === undefined || value === "") return fallback;
  const number = Number(value);
  return Number.isFinite(number) ? Math.min(high, Math.max(low, number)) : fallback;
}

const settings = {
  appId: query.get("app") ?? saved.appId ?? APPS[0].id,
  prompt: typeof saved.prompt === "string" ? saved.prompt : $("prompt").value.trim(),
  seed: Math.round(bounded(saved.seed, 0, 9999, 42)),
  intervalMs: bounded(query.get("interval_ms") ?? saved.intervalMs, 30, 250, 100),
  maxInFlight: bounded(saved.maxInFlight, 1, 2, 2) === 1 ? 1 : 2,
  color: /^#[0-9a-f]{6}$/i.test(saved.color ?? "") ? saved.color : SWATCHES[0],
  size: bounded(saved.size, 2, 64, 12),
  params: saved.params && typeof saved.params === "object" ? saved.params : {}, // per app: { strength, steps }
};
// An app the user named (link or earlier choice) is kept even when the server lacks it;
// the built-in default gives way to the next app, with a note in the log.
let appChosen = query.has("app") || saved.appId !== undefined;
const triedDefaults = new Set();

function saveSettings() {
  try {
    localStorage.setItem(SETTINGS_ITEM, JSON.stringify({ ...settings, appId: appChosen ? settings.appId : undefined }));
  } catch {
    // storage full or disabled: settings simply are not remembered
  }
}

let app = findApp(settings.appId) ?? APPS[0];

// ---- log ----------------------------------------------------------------------------

function log(level, text) {
  const list = $("log");
  const first = list.firstElementChild;
  if (first && first.dataset.text === text) {
    const count = Number(first.dataset.count) + 1;
    first.dataset.count = String(count);
    first.querySelector(".count").textContent = `×${count}`;
    first.querySelector("time").textContent = clock();
    return;
  }
  const item = document.createElement("li");
  item.className = level;
  item.dataset.text = text;
  item.dataset.count = "1";
  const time = document.createElement("time");
  time.textContent = clock();
  const span = document.createElement("span");
  span.textContent = text;
  const count = document.createElement("span");
  count.className = "count";
  item.append(time, span, count);
  list.prepend(item);
  while (list.children.length > LOG_LIMIT) list.lastElementChild.remove();
  $("log-count").textContent = `${list.children.length}`;
}

function clock() {
  return new Date().toLocaleTimeString([], { hour12: false });
}

// ---- sketch and tools -----------------------------------------------------------------

const stats = new LiveStats({ window: 60 });
const sketch = new Sketchpad($("sketch"), { onChange: sketchChanged });
sketch.color = settings.color;
sketch.size = settings.size;

function sketchChanged() {
  $("sketch-hint").classList.toggle("hidden", !sketch.isBlank);
  $("undo").disabled = !sketch.canUndo;
  $("clear").disabled = sketch.isBlank;
  changed();
}

function setTool(tool) {
  sketch.tool = tool;
  for (const button of document.querySelectorAll(".tool")) {
    const on = button.dataset.tool === tool;
    button.classList.toggle("active", on);
    button.setAttribute("aria-pressed", String(on));
  }
}

function setColour(colour) {
  sketch.color = colour;
  settings.color = colour;
  $("colour").value = colour;
  for (const swatch of document.querySelectorAll(".swatch")) {
    swatch.classList.toggle("active", swatch.dataset.colour === colour);
  }
  document.documentElement.style.setProperty("--ink", colour);
  setTool("pen");
  saveSettings();
}

function setSize(size) {
  const clamped = Math.max(2, Math.min(64, Math.round(size)));
  sketch.size = clamped;
  settings.size = clamped;
  $("size").value = String(clamped);
  $("size-dot").style.setProperty("--dot", `${Math.round(6 + (clamped - 2) * (18 / 62))}px`);
  saveSettings();
}

for (const colour of SWATCHES) {
  const swatch = document.createElement("button");
  swatch.type = "button";
  swatch.className = "swatch";
  swatch.dataset.colour = colour;
  swatch.style.background = colour;
  swatch.title = colour;
  swatch.setAttribute("aria-label", `Colour ${colour}`);
  swatch.addEventListener("click", () => setColour(colour));
  $("swatches").append(swatch);
}
for (const button of document.querySelectorAll(".tool")) {
  button.addEventListener("click", () => setTool(button.dataset.tool));
}
$("colour").addEventListener("input", (event) => setColour(event.target.value));
$("size").addEventListener("input", (event) => setSize(Number(event.target.value)));
$("undo").addEventListener("click", () => sketch.undo());
$("clear").addEventListener("click", () => sketch.clear());

document.addEventListener("keydown", (event) => {
  const typing = event.target instanceof HTMLElement && event.target.closest("textarea, input[type=password]");
  if (typing) return;
  if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "z") {
    event.preventDefault();
    sketch.undo();
  } else if (event.key === "b") setTool("pen");
  else if (event.key === "e") setTool("eraser");
  else if (event.key === "[") setSize(sketch.size - 2);
  else if (event.key === "]") setSize(sketch.size + 2);
});

// ---- parameters -------------------------------------------------------------------------

function paramsOf(appEntry) {
  const stored = settings.params[appEntry.id] ?? {};
  const steps = appEntry.steps ?? { min: 1, max: 8, value: 4 };
  return {
    strength: bounded(stored.strength, 0.05, 1, appEntry.strength ?? 0.65),
    steps: Math.round(bounded(stored.steps, steps.min, steps.max, steps.value)),
  };
}

function showParams() {
  const params = paramsOf(app);
  const diffusion = app.kind === "diffusion";
  $("params").classList.toggle("inactive", !diffusion);
  $("params-note").textContent = diffusion ? "" : `${app.label} ignores these`;
  for (const id of ["strength", "steps", "seed", "seed-dice"]) $(id).disabled = !diffusion;
  if (app.steps) {
    $("steps").min = String(app.steps.min);
    $("steps").max = String(app.steps.max);
  }
  $("strength").value = String(params.strength);
  $("steps").value = String(params.steps);
  $("seed").value = String(settings.seed);
  renderParamOutputs();
}

function renderParamOutputs() {
  $("strength-out").textContent = Number($("strength").value).toFixed(2);
  $("steps-out").textContent = $("steps").value;
  $("seed-out").textContent = $("seed").value;
  $("interval-out").textContent = `${$("interval").value} ms`;
}

function paramChanged() {
  settings.params[app.id] = { strength: Number($("strength").value), steps: Number($("steps").value) };
  settings.seed = Number($("seed").value);
  renderParamOutputs();
  saveSettings();
  changed();
}

for (const id of ["strength", "steps", "seed"]) $(id).addEventListener("input", paramChanged);
$("seed-dice").addEventListener("click", () => {
  $("seed").value = String(Math.floor(Math.random() * 10_000));
  paramChanged();
});

const promptBox = $("prompt");
promptBox.value = settings.prompt;
function fitPrompt() {
  promptBox.style.height = "auto";
  promptBox.style.height = `${promptBox.scrollHeight + 2}px`;
}
promptBox.addEventListener("input", () => {
  settings.prompt = promptBox.value;
  fitPrompt();
  saveSettings();
  changed();
});
promptBox.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) event.preventDefault(); // one line, sent live anyway
});

// ---- stream settings --------------------------------------------------------------------

$("interval").value = String(settings.intervalMs);
$("interval").addEventListener("input", () => {
  settings.intervalMs = Number($("interval").value);
  pump.intervalMs = settings.intervalMs;
  renderParamOutputs();
  saveSettings();
});

function setMaxInFlight(value) {
  settings.maxInFlight = value;
  pump.maxInFlight = value;
  for (const button of $("inflight").querySelectorAll("button")) {
    const on = Number(button.dataset.value) === value;
    button.classList.toggle("active", on);
    button.setAttribute("aria-pressed", String(on));
  }
  saveSettings();
}

for (const button of $("inflight").querySelectorAll("button")) {
  button.addEventListener("click", () => {
    setMaxInFlight(Number(button.dataset.value));
    changed();
  });
}

// ---- apps -------------------------------------------------------------------------------

const unavailable = new Set();
/** The server's `/models` list (null until read, or when it cannot be). */
let catalog = null;

async function loadCatalog() {
  catalog = await fetchCatalog({ key: keys.get() });
  if (catalog) {
    for (const entry of APPS) if (!entryFor(catalog, entry.id)) unavailable.add(entry.id);
  }
  renderWeightsBanner();
}

/** Apps on random weights make noise: say so at the top of the page, with each one's fix. */
function renderWeightsBanner() {
  const random = randomApps(catalog);
  const banner = $("weights-banner");
  banner.hidden = random.length === 0;
  if (!random.length) return;
  const ids = random.map((r) => r.id);
  $("weights-banner-title").textContent =
    `${ids.join(" and ")} ${ids.length === 1 ? "runs" : "run"} on tiny random weights: ` +
    `${ids.length === 1 ? "its" : "their"} pictures are noise, not a fault of the page.`;
  $("weights-banner-list").replaceChildren(
    ...random.map((r) => {
      const item = document.createElement("li");
      const name = document.createElement("b");
      name.textContent = r.id;
      const why = document.createElement("span");
      why.className = "why";
      why.append(...withCode(r.reason ? `: ${r.reason}.` : "."));
      const fix = document.createElement("span");
      fix.className = "fix";
      fix.append("Fix: ", ...withCode(r.fix || "start the server with real weights (--weights)"));
      item.append(name, why, " ", fix);
      return item;
    }),
  );
}

function renderApps() {
  const box = $("apps");
  box.replaceChildren();
  for (const entry of APPS) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "app";
    button.dataset.app = entry.id;
    button.setAttribute("role", "radio");
    button.setAttribute("aria-checked", String(entry.id === app.id));
    button.classList.toggle("active", entry.id === app.id);
    button.classList.toggle("unavailable", unavailable.has(entry.id));
    button.classList.toggle("random", isRandom(catalog, entry.id));
    button.innerHTML = `<span class="radio"></span><span class="title"></span><span class="detail"></span>`;
    button.querySelector(".title").append(entry.label, Object.assign(document.createElement("span"), {
      className: "id",
      textContent: entry.id,
    }));
    button.querySelector(".detail").textContent = entry.detail;
    button.addEventListener("click", () => chooseApp(entry, { byUser: true }));
    box.append(button);
  }
}

function chooseApp(entry, { byUser }) {
  if (byUser) appChosen = true;
  const switching = entry.id !== app.id;
  app = entry;
  settings.appId = entry.id;
  saveSettings();
  renderApps();
  showParams();
  $("ws-url").textContent = new URL(realtimeUrl(location.origin, entry.id)).pathname;
  $("output-title").textContent = isRandom(catalog, entry.id) ? "Output · random weights (noise)" : "Output";
  if (switching) {
    pump.reset(); // before stats.reset: frames lost with the old app are not the new app's drops
    stats.reset();
    hasOutput = false;
    $("output-pane").dataset.frames = "0";
    clearOutput();
  }
  connection.use(entry.id);
  changed();
}

// ---- connection, pump ---------------------------------------------------------------------

const keys = new KeyStore();
const tokens = new TokenSource({ keys });

const pump = new FramePump({
  intervalMs: settings.intervalMs,
  maxInFlight: settings.maxInFlight,
  capture: async () => {
    const image = await sketch.toJpeg(0.85);
    const params = paramsOf(app);
    return buildInput(app, {
      prompt: promptBox.value.trim(),
      image,
      strength: params.strength,
      steps: params.steps,
      seed: settings.seed,
      width: sketch.canvas.width,
      height: sketch.canvas.height,
    });
  },
  transmit: (input, id) => {
    const bytes = connection.send({ ...input, request_id: id });
    if (bytes !== false) stats.recordSent(bytes);
    return bytes;
  },
  onDropped: (count) => stats.recordDropped(count),
  onCaptureError: (error) => log("error", `could not capture the sketch: ${error.message ?? error}`),
});

const connection = new RealtimeConnection({
  tokens,
  maxBuffering: 2,
  onState: renderConnection,
  onResult: handleResult,
  onError: handleFrameError,
});

function changed() {
  pump.request();
  connection.connect(); // reopens after an idle timeout; a no-op otherwise
}

function describeStop(info) {
  // The reason is the server's text and may echo the request path: escape it for innerHTML.
  const reason = info.reason ? ` (${escapeHtml(info.reason)})` : "";
  switch (info.error) {
    case "NOT_FOUND":
      return {
        short: `${app.id} is not loaded`, // app ids come from the fixed APPS list
        long: `<b>${app.id}</b> is not loaded on this server${reason}.<br>Start the server with it, e.g. <code>framewire serve --builtin-apps ${app.id.split("/")[1]}</code>, or pick another app.`,
      };
    case "UNAUTHORIZED":
      return {
        short: "API key needed",
        long: `This server requires an API key${reason}. Enter it under <b>API key</b> above.`,
      };
    case "FORBIDDEN":
      return { short: "key not allowed", long: `Your key may not use ${app.id}${reason}.` };
    default:
      return { short: info.error ?? `closed ${info.code}`, long: `The server refused the session${reason}.` };
  }
}

function setOverlay(html, { error = false } = {}) {
  const overlay = $("output-overlay");
  if (html === null) {
    overlay.classList.add("hidden");
    return;
  }
  overlay.innerHTML = `<div>${html}</div>`;
  overlay.classList.toggle("error", error);
  overlay.classList.remove("hidden");
}

const STATE_LABELS = {
  [State.IDLE]: "Idle",
  [State.CONNECTING]: "Connecting…",
  [State.LIVE]: "Live",
  [State.RETRYING]: "Reconnecting",
  [State.STOPPED]: "Stopped",
};

/** What a close code without a reason means, in words. */
const CLOSE_WORDS = {
  1001: "server going away",
  1006: "connection dropped",
  1011: "server error",
  1012: "server restarting",
  1013: "server not ready",
};

let hasOutput = false;
let lastState = null;
let lost = false; // the connection dropped and has not come back yet
let reconnects = 0;

function renderConnection(state, info) {
  const conn = $("conn");
  conn.dataset.state = state;
  $("conn-label").textContent = STATE_LABELS[state];
  $("retry").hidden = state !== State.STOPPED && state !== State.RETRYING;
  $("output-pane").classList.toggle("dim", state !== State.LIVE && state !== State.IDLE);
  let detail = "";
  if (state === State.LIVE) {
    detail = app.id;
    pump.resume();
    pump.request(); // refresh the output for the current state (first frame, or after a reconnect)
    if (lost) {
      reconnects += 1;
      log("info", `reconnected to ${app.id}`);
    }
    lost = false;
    if (hasOutput) setOverlay(null);
    else setOverlay("Waiting for the first frame…");
  } else {
    pump.reset();
  }
  if (state === State.CONNECTING && !hasOutput) setOverlay("Connecting…");
  if (state === State.IDLE && info.error === "TIMEOUT") {
    detail = "resumes when you draw";
    log("info", "the session went idle; it reopens on the next change");
  }
  if (state === State.RETRYING) {
    const why = info.reason || CLOSE_WORDS[info.code] || (info.code ? `closed with ${info.code}` : "server unreachable");
    lost = true;
    detail = `${why} · retry in ${(info.retryInMs / 1000).toFixed(1)} s`;
    setOverlay(`Server unreachable — reconnecting…<br><span class="muted small">${escapeHtml(why)}</span>`);
    if (lastState !== State.RETRYING) log("warn", `connection lost (${why}); reconnecting`);
  }
  if (state === State.STOPPED) {
    if (info.error === "NOT_FOUND") unavailable.add(app.id);
    renderApps();
    if (info.error === "NOT_FOUND" && !appChosen && fallBackFrom(app)) return;
    const text = describeStop(info);
    detail = text.short;
    setOverlay(text.long, { error: true });
    log("error", `${text.short}${info.reason ? ` (${info.reason})` : ""}`);
    if (info.error === "UNAUTHORIZED") showKeyPanel(true);
  }
  $("conn-detail").textContent = detail;
  $("live-state").textContent = `${STATE_LABELS[state].replace("…", "").toLowerCase()} · ${app.id}`;
  lastState = state;
}

/** The built-in default app is not loaded: move on to the next one, and say so. */
function fallBackFrom(missing) {
  triedDefaults.add(missing.id);
  const next = APPS.find((entry) => !triedDefaults.has(entry.id));
  if (!next) return false;
  log("warn", `${missing.id} is not loaded on this server; showing ${next.id} instead`);
  lastState = State.STOPPED;
  chooseApp(next, { byUser: false });
  return true;
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

$("retry").addEventListener("click", () => connection.restart());

// ---- outputs -------------------------------------------------------------------------------

const outputCanvas = $("output");
const outputCtx = outputCanvas.getContext("2d");
let shownId = 0;
let framesShown = 0;

function clearOutput() {
  outputCtx.fillStyle = "#171a22";
  outputCtx.fillRect(0, 0, outputCanvas.width, outputCanvas.height);
  $("output-meta").textContent = "";
  $("output-latency").hidden = true;
  shownId = 0;
}

function handleResult(output, bytes) {
  const id = output?.request_id;
  const ack = typeof id === "number" ? pump.ack(id) : null;
  if (typeof id === "number" && !ack) return; // an answer from before a reconnect
  const now = performance.now();
  if (ack) stats.recordResult(ack.rttMs, now, bytes);
  const timings = serverTimings(output);
  if (timings.length) renderTimings(timings);
  const image = outputImage(output);
  if (!image) {
    log("warn", `an output of ${app.id} carried no image`);
    return;
  }
  drawOutput(image, id ?? shownId + 1, output, ack?.rttMs ?? null);
}

async function drawOutput(image, id, output, rttMs) {
  let bitmap;
  try {
    const blob = image.bytes
      ? new Blob([image.bytes], { type: image.type ?? "image/jpeg" })
      : await (await fetch(image.url)).blob();
    bitmap = await createImageBitmap(blob);
  } catch (error) {
    log("error", `an output image could not be decoded (${error.message ?? error})`);
    return;
  }
  if (id < shownId) {
    bitmap.close(); // a newer output was drawn while this one decoded
    return;
  }
  shownId = id;
  if (outputCanvas.width !== bitmap.width || outputCanvas.height !== bitmap.height) {
    outputCanvas.width = bitmap.width;
    outputCanvas.height = bitmap.height;
  }
  outputCtx.drawImage(bitmap, 0, 0);
  bitmap.close();
  framesShown += 1;
  hasOutput = true;
  setOverlay(null);
  const meta = [`#${id}`];
  if (output.seed !== undefined && output.seed !== null) meta.push(`seed ${output.seed}`);
  meta.push(`${outputCanvas.width} × ${outputCanvas.height}`);
  $("output-meta").textContent = meta.join(" · ");
  $("output-pane").dataset.frames = String(framesShown);
  if (rttMs !== null) {
    $("output-latency").hidden = false;
    $("output-latency").textContent = `${formatMs(rttMs)} ms`;
  }
}

function handleFrameError(error) {
  if (error.requestId !== undefined) pump.fail(error.requestId);
  stats.recordError();
  log("error", `${error.code}: ${error.reason}`);
}

function renderTimings(rows) {
  const list = $("server-timings");
  list.replaceChildren(
    ...rows.map(([label, value]) => {
      const div = document.createElement("div");
      const dt = document.createElement("dt");
      dt.textContent = label;
      const dd = document.createElement("dd");
      dd.textContent = value;
      div.append(dt, dd);
      return div;
    }),
  );
}

// ---- live panel -------------------------------------------------------------------------------

function kb(bytes) {
  return bytes ? `${(bytes / 1024).toFixed(1)} KB` : "—";
}

function renderPanel() {
  const snap = stats.snapshot(performance.now());
  $("stat-p50").textContent = formatMs(snap.p50);
  $("stat-p95").textContent = formatMs(snap.p95);
  $("stat-fps").textContent = snap.received ? snap.fps.toFixed(1) : "—";
  $("stat-window").textContent = `round trip, last ${snap.samples} frame${snap.samples === 1 ? "" : "s"}`;
  $("stat-sent").textContent = String(snap.sent);
  $("stat-received").textContent = String(snap.received);
  $("stat-dropped").textContent = String(snap.dropped);
  $("stat-dropped").classList.toggle("nonzero", snap.dropped > 0);
  $("stat-errors").textContent = String(snap.errors);
  $("stat-errors").classList.toggle("nonzero", snap.errors > 0);
  $("stat-reconnects").textContent = String(reconnects);
  $("stat-inflight").textContent = `${pump.inFlight.size}/${pump.maxInFlight}`;
  $("stat-up").textContent = kb(snap.bytesUp);
  $("stat-down").textContent = kb(snap.bytesDown);
  drawSparkline(snap);
}

function drawSparkline(snap) {
  const canvas = $("spark");
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  ctx.clearRect(0, 0, width, height);
  const values = snap.recent;
  if (values.length < 2) return;
  const top = Math.max(...values, snap.p95 ?? 0) * 1.15 || 1;
  const pad = 6;
  const slots = Math.max(values.length, SPARK_MIN_SLOTS); // few samples do not stretch across
  const x = (i) => pad + (i * (width - 2 * pad)) / (slots - 1);
  const y = (v) => height - pad - (v / top) * (height - 2 * pad);
  const offset = slots - values.length; // newest at the right edge
  const gradient = ctx.createLinearGradient(0, 0, width, 0);
  gradient.addColorStop(0, "#7c5cff");
  gradient.addColorStop(1, "#22d3ee");
  ctx.beginPath();
  values.forEach((v, i) => (i ? ctx.lineTo(x(i + offset), y(v)) : ctx.moveTo(x(i + offset), y(v))));
  ctx.lineWidth = 3;
  ctx.strokeStyle = gradient;
  ctx.lineJoin = "round";
  ctx.stroke();
  ctx.lineTo(x(values.length - 1 + offset), height);
  ctx.lineTo(x(offset), height);
  ctx.closePath();
  ctx.globalAlpha = 0.12;
  ctx.fillStyle = gradient;
  ctx.fill();
  ctx.globalAlpha = 1;
  if (snap.p50 !== null) {
    ctx.setLineDash([6, 6]);
    ctx.lineWidth = 1.5;
    ctx.strokeStyle = "rgba(233, 235, 241, 0.35)";
    ctx.beginPath();
    ctx.moveTo(pad, y(snap.p50));
    ctx.lineTo(width - pad, y(snap.p50));
    ctx.stroke();
    ctx.setLineDash([]);
  }
}

setInterval(renderPanel, PANEL_REFRESH_MS);

// ---- API key panel ---------------------------------------------------------------------------

function showKeyPanel(needed) {
  $("key-panel").hidden = false;
  $("key-panel").classList.toggle("needed", needed);
  $("key-toggle").setAttribute("aria-expanded", "true");
  renderKeyStatus(needed);
  if (needed) $("key-input").focus();
}

function renderKeyStatus(needed = false) {
  const key = keys.get();
  const status = $("key-status");
  if (key) {
    const id = key.split(":")[0];
    status.textContent = `Using key ${id}:•••• for this tab. Tokens come from /tokens/ and last two minutes.`;
  } else if (needed) {
    status.textContent =
      "This server requires an API key (id:secret). It stays in this tab's sessionStorage; the page trades it at /tokens/ for a short-lived token that opens the socket.";
  }
}

$("key-toggle").addEventListener("click", () => {
  const open = $("key-panel").hidden;
  $("key-panel").hidden = !open;
  $("key-toggle").setAttribute("aria-expanded", String(open));
  if (open) renderKeyStatus();
});

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const key = keys.set($("key-input").value);
  $("key-input").value = "";
  $("key-panel").classList.remove("needed");
  renderKeyStatus();
  log("info", key ? `using API key ${key.split(":")[0]}:••••` : "API key cleared");
  connection.restart();
  loadCatalog().then(() => renderApps()); // with auth on, /models answers only with a key
});

$("key-forget").addEventListener("click", () => {
  keys.clear();
  $("key-input").value = "";
  $("key-status").textContent = "Key forgotten.";
  log("info", "API key forgotten");
  connection.restart();
});

// ---- start ----------------------------------------------------------------------------------

setColour(settings.color);
setSize(settings.size);
setMaxInFlight(settings.maxInFlight);
setTool("pen");
fitPrompt();
sketchChanged();
clearOutput();
if (keys.get()) renderKeyStatus();
await loadCatalog(); // bounded: the page goes on without it
if (!appChosen) {
  const first = pickDefault(APPS, catalog);
  if (first.note) log("warn", first.note);
  app = first.app;
}
chooseApp(app, { byUser: false });
renderPanel();
