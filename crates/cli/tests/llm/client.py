"""The official `openai` SDK against a Portcullis LLM route, for the tests.

Usage: client.py BASE_URL CA CERT KEY API_KEY SCENARIO
Authenticates with the agent's client certificate (mTLS) and sends API_KEY
(a Portcullis access token bound to that certificate) as the SDK's api_key.
Prints one JSON object with what the scenario saw. Exits 3 with
"SKIPPED: ..." on stderr when the SDK is not installed.
"""
import json
import ssl
import sys

try:
    import openai
except ImportError as e:  # the test prints SKIPPED and passes
    print(f"SKIPPED: the openai package is not installed ({e})", file=sys.stderr)
    sys.exit(3)

base_url, ca, cert, key, api_key, scenario = sys.argv[1:7]
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
client = openai.OpenAI(
    base_url=base_url,
    api_key=api_key,
    max_retries=0,
    http_client=openai.DefaultHttpxClient(verify=ctx),
)
MSG = [{"role": "user", "content": "say hello"}]


def error(e):
    body = e.body if isinstance(e.body, dict) else {}
    err = body.get("error", body) if isinstance(body, dict) else {}
    return {"status": e.status_code, "code": err.get("code"),
            "retry_after": err.get("retry_after"),
            "retry_after_header": e.response.headers.get("retry-after")}


def stream(model, messages):
    chunks, text, usage = 0, "", []
    for c in client.chat.completions.create(model=model, messages=messages, stream=True):
        chunks += 1
        if c.usage is not None:
            usage.append(c.usage.total_tokens)
        for choice in c.choices:
            text += choice.delta.content or ""
    return {"chunks": chunks, "text": text, "usage_chunks": usage}


out = {}
try:
    if scenario == "basic":
        r = client.chat.completions.create(model="gpt-test", messages=MSG)
        out["chat"] = {"text": r.choices[0].message.content, "usage": r.usage.total_tokens}
        out["stream"] = stream("gpt-test", MSG)
        s = client.chat.completions.create(
            model="gpt-test", messages=MSG, stream=True,
            stream_options={"include_usage": True})
        out["stream_with_usage"] = [c.usage.total_tokens for c in s if c.usage is not None]
        out["models"] = sorted(m.id for m in client.models.list())
        out["model"] = client.models.retrieve("gpt-test").id
        e = client.embeddings.create(model="text-embed", input=["a", "b"])
        out["embeddings"] = [len(d.embedding) for d in e.data]
        for name, call in [
            ("denied", lambda: client.chat.completions.create(model="gpt-restricted", messages=MSG)),
            ("denied_stream", lambda: stream("gpt-restricted", MSG)),
            ("unknown", lambda: client.chat.completions.create(model="gpt-nope", messages=MSG)),
            ("hidden", lambda: client.models.retrieve("gpt-restricted")),
            ("embed_denied", lambda: client.embeddings.create(model="gpt-test", input="a")),
        ]:
            try:
                call()
                out[name] = "allowed"
            except openai.APIStatusError as e:
                out[name] = error(e)
    elif scenario in ("requests", "tokens"):
        results = []
        for _ in range(4):
            try:
                if scenario == "tokens":
                    results.append(stream("gpt-test", MSG))
                else:
                    client.chat.completions.create(model="gpt-test", messages=MSG)
                    results.append("ok")
            except openai.APIStatusError as e:
                results.append(error(e))
        out["results"] = results
    elif scenario == "dlp":
        out["stream"] = stream("gpt-test", [
            {"role": "user", "content": "please leak it"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "lookup", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1",
             "content": "config: aws_key=AKIAIOSFODNN7REALKEY"},
        ])
    else:
        raise SystemExit(f"unknown scenario {scenario}")
except openai.APIStatusError as e:
    out["error"] = error(e)
print(json.dumps(out))
