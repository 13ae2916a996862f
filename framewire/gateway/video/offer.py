"""The ``start-session`` request: its body, the SDP offer's checks, the ICE servers. Pure.

Two body shapes are accepted, as fal's WMA uses both:

- the runner's ``/start-session`` shape: ``{"sdp": "<offer>", "type": "offer", "session_id": "..."}``;
- the session shape: ``{"offer": {"sdp": "<offer>", "type": "offer"}, "session_params": {...}}``.

``session_params`` (either shape) are the video endpoint's input fields but its frame: the
prompt, strength and so on, changed later over the data channel. The offer must be
complete (ICE gathering finished: no trickle ICE), carry a video track the client both
sends and receives (the camera out, the outputs back) and may carry a data channel.
"""

from __future__ import annotations

from typing import Any

from aiortc import RTCConfiguration, RTCIceServer, sdp
from pydantic import BaseModel, ConfigDict, Field, ValidationError

#: The largest ``start-session`` body read (an SDP offer is a few kB).
MAX_BODY_BYTES = 64 * 1024
#: The largest SDP offer accepted.
MAX_SDP_BYTES = 32 * 1024
#: The longest ``session_id`` echoed back.
MAX_SESSION_ID = 128


class OfferError(ValueError):
    """A ``start-session`` request that cannot start a session; the text says why."""


class _Description(BaseModel):
    model_config = ConfigDict(extra="ignore")

    sdp: str = Field(..., max_length=MAX_SDP_BYTES)
    type: str = "offer"


class StartSession(BaseModel):
    """A ``start-session`` body, either of fal's shapes (see the module docstring)."""

    model_config = ConfigDict(extra="ignore")

    sdp: str | None = Field(None, max_length=MAX_SDP_BYTES, description="The client's SDP offer (runner shape).")
    type: str | None = Field(None, description="`offer`.")
    session_id: str | None = Field(None, max_length=MAX_SESSION_ID, description="Echoed in the answer.")
    offer: _Description | None = Field(None, description="The client's SDP offer (session shape).")
    session_params: dict[str, Any] = Field(
        default_factory=dict, description="The endpoint's input fields but the frame; changeable later."
    )

    def description(self) -> _Description:
        """The offer, from whichever shape carried it; :class:`OfferError` when none or not an offer."""
        found = self.offer if self.offer is not None else None
        if found is None and self.sdp is not None:
            found = _Description(sdp=self.sdp, type=self.type or "offer")
        if found is None:
            raise OfferError('the body needs an SDP offer: {"sdp": ..., "type": "offer"} or {"offer": {...}}')
        if found.type != "offer":
            raise OfferError(f"type must be 'offer', got {found.type!r}")
        return found


def parse_body(value: Any) -> StartSession:
    """The body as a :class:`StartSession`; :class:`OfferError` or pydantic's ``ValidationError``."""
    if not isinstance(value, dict):
        raise OfferError(f"the body must be a JSON object, got {type(value).__name__}")
    return StartSession.model_validate(value)


def check_offer(text: str) -> sdp.SessionDescription:
    """The parsed offer if a session can start from it; else :class:`OfferError` naming the fix."""
    if not text.startswith("v=0"):
        raise OfferError("the offer is not SDP (it must start with 'v=0')")
    try:
        parsed = sdp.SessionDescription.parse(text)
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise OfferError(f"the offer is not valid SDP ({type(exc).__name__}: {exc})") from None
    videos = [m for m in parsed.media if m.kind == "video"]
    if not videos:
        raise OfferError("the offer has no video track: add the camera with addTrack before creating the offer")
    if not any(m.direction in (None, "sendrecv") for m in videos):
        got = ", ".join(str(m.direction) for m in videos)
        raise OfferError(f"the video track must be sendrecv (the camera out, the outputs back), got {got}")
    if not any(m.ice_candidates for m in parsed.media):
        raise OfferError(
            "the offer has no ICE candidates: send it once ICE gathering is complete (trickle ICE is not supported)"
        )
    return parsed


def video_codec(answer: str) -> str:
    """The codec an answer chose for video (``video/VP8``), or ``""``."""
    for media in sdp.SessionDescription.parse(answer).media:
        if media.kind == "video" and media.rtp.codecs:
            return str(media.rtp.codecs[0].mimeType)
    return ""


def ice_configuration(servers: tuple[str, ...], username: str | None, credential: str | None) -> RTCConfiguration:
    """The server's ICE configuration from ``--ice-server`` URLs (checked by the settings):
    TURN servers get the credentials."""
    ice = [
        RTCIceServer(urls=url, username=username, credential=credential)
        if url.startswith("turn")
        else RTCIceServer(urls=url)
        for url in servers
    ]
    return RTCConfiguration(iceServers=ice)


def validation_reason(exc: ValidationError) -> str:
    """One line naming each failing field of the body."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())
