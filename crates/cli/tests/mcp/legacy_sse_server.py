"""A legacy MCP server on the HTTP+SSE transport of protocol 2024-11-05
(official `mcp` SDK, `SseServerTransport`): `GET /sse` opens the stream,
whose `endpoint` event names `/messages/?session_id=…` for the POSTs.
`save_note` appends the text it received to NOTES_FILE, so a test sees
what reached the server.

usage: legacy_sse_server.py PORT NOTES_FILE
"""

import sys

from mcp.server.mcpserver import MCPServer

PORT = int(sys.argv[1])
NOTES = sys.argv[2]

server = MCPServer("legacy")


@server.tool()
def save_note(text: str) -> str:
    """Saves a note."""
    with open(NOTES, "a", encoding="utf-8") as f:
        f.write(text + "\n")
    return "saved"


@server.tool()
def wipe_notes() -> str:
    """Deletes every note."""
    open(NOTES, "w", encoding="utf-8").close()
    return "wiped"


if __name__ == "__main__":
    server.run("sse", host="127.0.0.1", port=PORT)
