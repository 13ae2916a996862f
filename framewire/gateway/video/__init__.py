"""The video wing: live video sessions over WebRTC (aiortc), signalled like fal's WMA.

``POST /{owner}/{alias}[/{path}]/start-session`` takes the client's SDP offer and answers
with a ``text/event-stream`` whose first event is the SDP answer; the request stays open for
the session's life. Camera frames are decoded by the WebRTC stack, handed to the app's
:func:`framewire.engine.api.video` endpoint as pixels through the same engine (and batcher)
as every other frame, and the outputs are encoded back onto a video track.
"""
