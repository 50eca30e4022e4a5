"""An OpenAI-compatible upstream for the LLM adapter's tests and benchmark.

Speaks POST /v1/chat/completions (JSON, or SSE with `stream: true`, with the
usage chunk when `stream_options.include_usage` is set), POST /v1/embeddings
and GET /v1/models, the way the OpenAI API does. The answer is a fixed text
split into small deltas; a prompt containing "leak" gets an answer with an
AWS access key id split across three deltas; a prompt containing "slow"
streams forty deltas a quarter second apart (ten seconds); one containing
"hold-forever" is never answered. GET /_seen returns every
request it received (path, Authorization header, body) so tests can check
what the gateway forwarded. Prints its port on stdout, then serves until
killed. Standard library only.
"""
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SEEN = []
LOCK = threading.Lock()
DELAY = float(sys.argv[1]) if len(sys.argv) > 1 else 0.002


def answer_for(body):
    text = json.dumps(body.get("messages", []))
    if "leak" in text:
        return ["Your key is ", "AKIAQWA", "DE5R42R", "DZ4JEM", " keep it safe."]
    if "slow" in text:
        return [" word"] * 40
    return ["Hello", " from", " the", " upstream", "."]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _json(self, status, value):
        data = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def do_GET(self):
        if self.path == "/_seen":
            with LOCK:
                return self._json(200, SEEN)
        if self.path == "/v1/models":
            return self._json(200, {"object": "list", "data": []})
        self._json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            return self._json(400, {"error": {"message": "bad json"}})
        with LOCK:
            SEEN.append({
                "path": self.path,
                "authorization": self.headers.get("authorization"),
                "agent": self.headers.get("x-portcullis-agent"),
                "body": body,
            })
        if "hold-forever" in json.dumps(body.get("messages", [])):
            time.sleep(3600)
            return
        model = body.get("model")
        if self.path == "/v1/embeddings":
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            return self._json(200, {
                "object": "list",
                "model": model,
                "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
                         for i in range(len(inputs))],
                "usage": {"prompt_tokens": 4 * len(inputs), "total_tokens": 4 * len(inputs)},
            })
        if self.path != "/v1/chat/completions":
            return self._json(404, {"error": {"message": "not found"}})
        parts = answer_for(body)
        usage = {"prompt_tokens": 7, "completion_tokens": len(parts),
                 "total_tokens": 7 + len(parts)}
        created = int(time.time())
        if not body.get("stream"):
            return self._json(200, {
                "id": "chatcmpl-test", "object": "chat.completion", "created": created,
                "model": model,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "".join(parts)}}],
                "usage": usage,
            })
        include_usage = (body.get("stream_options") or {}).get("include_usage") is True
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()

        def chunk(delta, finish=None, choices=True, use=None):
            c = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": created,
                 "model": model,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if choices else []}
            if include_usage:
                c["usage"] = use
            self._chunk(b"data: " + json.dumps(c).encode() + b"\n\n")

        delay = 0.25 if "slow" in json.dumps(body.get("messages", [])) else DELAY
        chunk({"role": "assistant", "content": ""})
        for p in parts:
            time.sleep(delay)
            chunk({"content": p})
        chunk({}, finish="stop")
        if include_usage:
            chunk(None, choices=False, use=usage)
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
