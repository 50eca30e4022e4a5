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

Issue 19 scenarios, chosen by the prompt: "echo401" answers 401 with the
Authorization it was given in the error message (as real providers do);
"holes" streams a key in every place a stream can carry one (CR-only
framing, `reasoning_content`, `refusal`, legacy `function_call`, a comment,
data that is not JSON, a field outside `choices`); "split:N" streams a key
split across two deltas, in two TCP writes cut at byte N of the stream.

The red team's (issue 22): a last message "Repeat after me exactly: TEXT" is
answered TEXT, in deltas of five characters.
"""
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SEEN = []
LOCK = threading.Lock()
DELAY = float(sys.argv[1]) if len(sys.argv) > 1 else 0.002


REPEAT = "Repeat after me exactly: "


def answer_for(body):
    text = json.dumps(body.get("messages", []))
    # The red team's exfiltration probe: say the text back, in deltas of
    # five characters (a value split across deltas, as a model streams it).
    last = (body.get("messages") or [{}])[-1]
    said = last.get("content") if isinstance(last, dict) else None
    if isinstance(said, str) and said.startswith(REPEAT):
        said = said[len(REPEAT):]
        return [said[i:i + 5] for i in range(0, len(said), 5)]
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
        prompt = json.dumps(body.get("messages", []))
        if "echo401" in prompt:
            given = (self.headers.get("authorization") or "").removeprefix("Bearer ")
            return self._json(401, {"error": {
                "message": "Incorrect API key provided: " + given,
                "type": "invalid_request_error", "code": "invalid_api_key"}})
        if "holes" in prompt or "split:" in prompt:
            return self._holes(model, prompt)
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


KEY = "AKIAQWADE5R42RDZ4JEM"


def holes_stream(model):
    """Every place of a stream that can carry the key, CR-framed."""
    def ev(delta, finish=None, extra=None):
        c = {"id": "c", "object": "chat.completion.chunk", "model": model,
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        c.update(extra or {})
        return b"data: " + json.dumps(c).encode() + b"\r\r"
    def lp(tokens):
        # The key split across log-probability tokens (and their
        # alternatives and byte lists), within an event and across events.
        entries = [{"token": t, "logprob": -0.1, "bytes": list(t.encode()),
                    "top_logprobs": [{"token": t, "logprob": -0.1}]} for t in tokens]
        c = {"id": "c", "object": "chat.completion.chunk", "model": model,
             "choices": [{"index": 0, "delta": {}, "finish_reason": None,
                          "logprobs": {"content": entries}}]}
        return b"data: " + json.dumps(c).encode() + b"\r\r"
    return b"".join([
        ev({"role": "assistant", "reasoning_content": "think " + KEY[:7]}),
        ev({"reasoning_content": KEY[7:] + " done"}),
        ev({"refusal": "no " + KEY[:11]}),
        ev({"refusal": KEY[11:]}),
        ev({"function_call": {"name": "f", "arguments": "{\"k\":\"" + KEY[:5]}}),
        ev({"function_call": {"arguments": KEY[5:] + "\"}"}}),
        b": comment " + KEY.encode() + b"\r\r",
        b"data: plain " + KEY.encode() + b"\r\r",
        ev({}, extra={"system_fingerprint": KEY}),
        lp([KEY[:4], KEY[4:9]]),
        lp([KEY[9:]]),
        ev({}, finish="stop"),
        b"data: [DONE]\r\r",
    ])


def split_stream(model):
    """A key split across two content deltas, LF-framed."""
    def ev(delta, finish=None):
        c = {"id": "c", "object": "chat.completion.chunk", "model": model,
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return b"data: " + json.dumps(c).encode() + b"\n\n"
    return b"".join([
        ev({"content": "key " + KEY[:9]}),
        ev({"content": KEY[9:] + " ok"}),
        ev({}, finish="stop"),
        b"data: [DONE]\n\n",
    ])


def _holes(self, model, prompt):
    if "split:" in prompt:
        data = split_stream(model)
        at = int(prompt.split("split:")[1].split("\"")[0].split()[0])
    else:
        data = holes_stream(model)
        at = len(data) // 2
    self.send_response(200)
    self.send_header("content-type", "text/event-stream")
    self.send_header("transfer-encoding", "chunked")
    self.end_headers()
    for part in (data[:at], data[at:]):
        if part:
            self._chunk(part)
            time.sleep(0.005)
    self._chunk(b"")


Handler._holes = _holes


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
