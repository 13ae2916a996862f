"""The MCP wing: every app FrameWire serves, as tools an AI assistant can call.

:mod:`~framewire.gateway.mcp.surface` answers the Model Context Protocol (Streamable HTTP)
at ``/mcp`` with the official SDK, on top of the run, queue and storage cores;
:mod:`~framewire.gateway.mcp.tools` names and describes the tools,
:mod:`~framewire.gateway.mcp.content` turns outputs into tool results, and
:mod:`~framewire.gateway.mcp.bridge` is ``framewire mcp``, the stdio bridge for assistants
that only launch local servers.
"""
