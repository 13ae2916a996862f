/**
 * The drawing canvas: pen and eraser with size and colour, undo and clear, for mouse,
 * pen (with pressure) and touch through Pointer Events.
 *
 * The sketch is a list of operations (strokes and clears) replayed onto an opaque
 * background, so undo is exact. The list is bounded: past `maxHistory` operations the
 * oldest is painted into a base layer and can no longer be undone.
 */

const PEN_MIN_WIDTH = 0.3; // a feather-light pen stroke still shows, at 30 % of the size

export class Sketchpad {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {object} [opts]
   * @param {string} [opts.background] the paper colour, also what the eraser paints
   * @param {number} [opts.maxHistory] undoable operations kept
   * @param {() => void} [opts.onChange] called on every visible change
   */
  constructor(canvas, { background = "#ffffff", maxHistory = 100, onChange = () => {} } = {}) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d", { willReadFrequently: false });
    this.background = background;
    this.maxHistory = maxHistory;
    this.onChange = onChange;
    this.tool = "pen";
    this.color = "#111111";
    this.size = 12;
    this.ops = [];
    this.base = document.createElement("canvas");
    this.base.width = canvas.width;
    this.base.height = canvas.height;
    this.baseBlank = true;
    this.active = null; // { pointerId, op }
    this.#paintBackground(this.base.getContext("2d"));
    this.redraw();
    this.#listen();
  }

  get canUndo() {
    return this.ops.length > 0;
  }

  /** True when nothing is drawn (no strokes since the last clear). */
  get isBlank() {
    for (let i = this.ops.length - 1; i >= 0; i -= 1) {
      if (this.ops[i].kind === "clear") return true;
      if (this.ops[i].kind === "stroke") return false;
    }
    return this.baseBlank;
  }

  undo() {
    if (this.active || !this.ops.length) return false;
    this.ops.pop();
    this.redraw();
    this.onChange();
    return true;
  }

  clear() {
    if (this.active || this.isBlank) return false;
    this.#push({ kind: "clear" });
    this.redraw();
    this.onChange();
    return true;
  }

  /** The sketch as JPEG bytes. */
  toJpeg(quality = 0.85) {
    return new Promise((resolve, reject) => {
      this.canvas.toBlob(
        (blob) => {
          if (!blob) reject(new Error("the browser could not encode the sketch as JPEG"));
          else blob.arrayBuffer().then((buffer) => resolve(new Uint8Array(buffer)), reject);
        },
        "image/jpeg",
        quality,
      );
    });
  }

  redraw() {
    const ctx = this.ctx;
    ctx.save();
    ctx.globalCompositeOperation = "copy";
    ctx.drawImage(this.base, 0, 0);
    ctx.restore();
    let start = 0;
    for (let i = 0; i < this.ops.length; i += 1) if (this.ops[i].kind === "clear") start = i;
    for (let i = start; i < this.ops.length; i += 1) this.#paintOp(ctx, this.ops[i]);
  }

  #push(op) {
    this.ops.push(op);
    while (this.ops.length > this.maxHistory) {
      const oldest = this.ops.shift();
      const baseCtx = this.base.getContext("2d");
      this.#paintOp(baseCtx, oldest);
      if (oldest.kind === "clear") this.baseBlank = true;
      else if (oldest.kind === "stroke") this.baseBlank = false;
    }
  }

  #paintBackground(ctx) {
    ctx.save();
    ctx.fillStyle = this.background;
    ctx.fillRect(0, 0, ctx.canvas.width, ctx.canvas.height);
    ctx.restore();
  }

  #paintOp(ctx, op) {
    if (op.kind === "clear") {
      this.#paintBackground(ctx);
      return;
    }
    const count = op.points.length / 3;
    if (count === 1) {
      this.#dot(ctx, op);
      return;
    }
    for (let i = 1; i < count; i += 1) this.#segment(ctx, op, i);
    if (op.done) this.#tail(ctx, op);
  }

  #style(ctx, op, pressure) {
    ctx.strokeStyle = op.tool === "eraser" ? this.background : op.color;
    ctx.fillStyle = ctx.strokeStyle;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.lineWidth = op.pressure ? op.size * (PEN_MIN_WIDTH + (1 - PEN_MIN_WIDTH) * pressure) : op.size;
  }

  #dot(ctx, op) {
    const [x, y, p] = op.points;
    this.#style(ctx, op, p);
    ctx.beginPath();
    ctx.arc(x, y, ctx.lineWidth / 2, 0, Math.PI * 2);
    ctx.fill();
  }

  /**
   * Segment i of a stroke: a quadratic curve through point i-1 between the midpoints
   * of its two neighbouring segments, so joints are smooth and drawing a segment as it
   * arrives paints exactly what a replay paints.
   */
  #segment(ctx, op, i) {
    const pts = op.points;
    const [x0, y0] = i >= 2 ? mid(pts, i - 2, i - 1) : [pts[0], pts[1]];
    const cx = pts[(i - 1) * 3];
    const cy = pts[(i - 1) * 3 + 1];
    const [x1, y1] = mid(pts, i - 1, i);
    this.#style(ctx, op, pts[(i - 1) * 3 + 2]);
    ctx.beginPath();
    ctx.moveTo(x0, y0);
    ctx.quadraticCurveTo(cx, cy, x1, y1);
    ctx.stroke();
  }

  /** From the last midpoint to the last point, once the stroke ends. */
  #tail(ctx, op) {
    const pts = op.points;
    const n = pts.length / 3;
    const [x0, y0] = mid(pts, n - 2, n - 1);
    this.#style(ctx, op, pts[(n - 1) * 3 + 2]);
    ctx.beginPath();
    ctx.moveTo(x0, y0);
    ctx.lineTo(pts[(n - 1) * 3], pts[(n - 1) * 3 + 1]);
    ctx.stroke();
  }

  #point(event) {
    const rect = this.canvas.getBoundingClientRect();
    const x = ((event.clientX - rect.left) * this.canvas.width) / rect.width;
    const y = ((event.clientY - rect.top) * this.canvas.height) / rect.height;
    // Mice report 0.5 while a button is down; only pens carry real pressure.
    const pressure = event.pointerType === "pen" ? event.pressure || 0.5 : 1;
    return [x, y, pressure];
  }

  #listen() {
    const canvas = this.canvas;
    canvas.addEventListener("pointerdown", (event) => {
      if (this.active || !event.isPrimary) return;
      if (event.pointerType === "mouse" && event.button !== 0) return;
      event.preventDefault();
      canvas.setPointerCapture?.(event.pointerId);
      const op = {
        kind: "stroke",
        tool: this.tool,
        color: this.color,
        size: this.size,
        pressure: event.pointerType === "pen",
        points: this.#point(event),
        done: false,
      };
      this.active = { pointerId: event.pointerId, op };
      this.#push(op);
      this.#dot(this.ctx, op);
      this.onChange();
    });
    canvas.addEventListener("pointermove", (event) => {
      if (!this.active || event.pointerId !== this.active.pointerId) return;
      event.preventDefault();
      const op = this.active.op;
      const events = event.getCoalescedEvents?.() ?? [];
      for (const e of events.length ? events : [event]) {
        const [x, y, p] = this.#point(e);
        const n = op.points.length / 3;
        const dx = x - op.points[(n - 1) * 3];
        const dy = y - op.points[(n - 1) * 3 + 1];
        if (dx * dx + dy * dy < 1) continue; // sub-pixel jitter adds points, not ink
        op.points.push(x, y, p);
        if (n === 1) this.redraw(); // the first segment replaces the starting dot
        else this.#segment(this.ctx, op, n);
      }
      this.onChange();
    });
    const end = (event) => {
      if (!this.active || event.pointerId !== this.active.pointerId) return;
      const op = this.active.op;
      this.active = null;
      op.done = true;
      if (op.points.length / 3 >= 2) this.#tail(this.ctx, op);
      canvas.releasePointerCapture?.(event.pointerId);
      this.onChange();
    };
    canvas.addEventListener("pointerup", end);
    canvas.addEventListener("pointercancel", end);
    canvas.addEventListener("lostpointercapture", end);
  }
}

function mid(pts, a, b) {
  return [(pts[a * 3] + pts[b * 3]) / 2, (pts[a * 3 + 1] + pts[b * 3 + 1]) / 2];
}
