/**
 * The page's camera mode: the webcam in the left pane, the app's live output video in the
 * right one, the live panel fed from the session's per-frame events.
 *
 * Round trip here is the data channel's ping time plus each frame's time on the server
 * (decoded input to output handed to the encoder); the browser's own encoding and
 * decoding are not in it. Dropped counts the camera frames the server replaced by newer
 * ones before the model took them (video is never queued).
 */

import { CameraSession, VideoState } from "./video.js";

export class CameraMode {
  /**
   * @param {object} opts
   * @param {HTMLVideoElement} opts.local where the webcam shows
   * @param {HTMLVideoElement} opts.remote where the output video plays
   * @param {object} opts.stats a LiveStats
   * @param {object} opts.tokens a TokenSource
   * @param {function} opts.onState (state, info)
   * @param {function} opts.onFrame (event) — after the stats took it
   * @param {function} opts.onMessage (message) — params acks, errors
   */
  constructor({ local, remote, stats, tokens, onState, onFrame, onMessage, media = globalThis.navigator?.mediaDevices }) {
    Object.assign(this, { local, remote, stats, onFrame, media });
    this.stream = null;
    this.dropped = 0;
    this.session = new CameraSession({
      tokens,
      onState,
      onMessage,
      onTrack: (event) => {
        remote.srcObject = event.streams?.[0] ?? new MediaStream([event.track]);
        remote.play?.().catch(() => {}); // autoplay of a muted video is allowed; a refusal only delays it
      },
      onFrame: (event, roundTripMs) => this.#frame(event, roundTripMs),
    });
  }

  get active() {
    return this.stream !== null;
  }

  get state() {
    return this.session.state;
  }

  /** Open the webcam and start a session on `appId`; the camera's refusal is thrown. */
  async start(appId, params) {
    if (!this.stream) {
      this.stream = await this.media.getUserMedia({
        video: { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 30 } },
        audio: false,
      });
      this.local.srcObject = this.stream;
      this.local.play?.().catch(() => {});
    }
    this.dropped = 0;
    await this.session.start({ appId, stream: this.stream, params });
  }

  #frame(event, roundTripMs) {
    const now = performance.now();
    const dropped = Number(event.dropped) || 0;
    const newlyDropped = Math.max(dropped - this.dropped, 0);
    this.dropped = Math.max(dropped, this.dropped);
    // The camera frames this output accounts for: its own and the ones replaced before it.
    for (let i = 0; i <= newlyDropped; i += 1) this.stats.recordSent(0);
    if (newlyDropped) this.stats.recordDropped(newlyDropped);
    this.stats.recordResult(roundTripMs, now, 0); // no round trip until the first ping came back
    this.onFrame(event);
  }

  setParams(params) {
    if (this.session.state === VideoState.LIVE || this.session.state === VideoState.STARTING) {
      this.session.setParams(params);
    }
  }

  /** End the session and let go of the webcam. */
  stop() {
    this.session.stop();
    for (const track of this.stream?.getTracks() ?? []) track.stop();
    this.stream = null;
    this.local.srcObject = null;
    this.remote.srcObject = null;
  }
}
