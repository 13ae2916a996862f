"""The realtime wing: the WebSocket endpoint, per-session buffers and the msgpack wire protocol."""
