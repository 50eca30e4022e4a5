"""A small MCP server over streamable HTTP for the red-team tests: one tool,
`echo`, answered as JSON (no SSE). It prints its port on the first line of
stdout. Lenient on purpose, like many real servers: it answers whatever
tool it is asked for, so only the gateway stands between an agent and an
unlisted tool, and it says back every message it is asked to run, so a
test sees exactly what the gateway forwarded."""
import json
import sys
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOOLS = [{
    "name": "echo",
    "description": "Says its text back.",
    "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}},
}]


def answer(msg):
    if not isinstance(msg, dict) or "id" not in msg:
        return None
    method = msg.get("method")
    if method == "initialize":
        result = {
            "protocolVersion": msg.get("params", {}).get("protocolVersion", "2025-06-18"),
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "redteam-upstream", "version": "1"},
        }
    elif method == "tools/list":
        result = {"tools": TOOLS}
    elif method == "tools/call":
        # The whole message as received: what the gateway forwarded.
        result = {"content": [{"type": "text", "text": json.dumps(msg)}]}
    else:
        result = {}
    return {"jsonrpc": "2.0", "id": msg["id"], "result": result}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        try:
            msg = json.loads(body)
        except ValueError:
            self.send_response(400)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        if isinstance(msg, list):
            out = [a for a in (answer(m) for m in msg) if a is not None]
            out = out or None
        else:
            out = answer(msg)
        if out is None:
            self.send_response(202)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        # A fresh session per initialize (the gateway refuses a session id
        # another route already holds), then the client's own.
        self.send_header("mcp-session-id", self.headers.get("mcp-session-id") or uuid.uuid4().hex)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
sys.stdout.close()
server.serve_forever()
