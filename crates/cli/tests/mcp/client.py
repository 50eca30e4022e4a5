"""MCP client for the gateway's end-to-end tests: the official `mcp` SDK over
Streamable HTTP, authenticating to Portcullis with the agent's client
certificate (mTLS). Reads commands from stdin, one JSON object per line, and
answers each with one JSON line on stdout, so the Rust test can act between
steps (revoke the agent, change a tool) within one MCP session.

usage: client.py URL CA_PEM CERT_PEM KEY_PEM

commands: {"op": "list"} | {"op": "call", "name": ..., "args": {...}} | {"op": "quit"}
answers:  {"ok": true, "tools": [...]} | {"ok": true, "text": ..., "is_error": bool}
          | {"ok": false, "error": ..., "code": ..., "data": {...}}
"""

import asyncio
import json
import ssl
import sys

import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client


def answer(value):
    print(json.dumps(value), flush=True)


def failure(e):
    error = getattr(e, "error", None)
    if error is not None and hasattr(error, "code"):
        return {"ok": False, "error": error.message, "code": error.code, "data": error.data}
    return {"ok": False, "error": f"{type(e).__name__}: {e}", "code": None, "data": None}


async def main(url, ca, cert, key):
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(cert, key)
    loop = asyncio.get_running_loop()
    async with httpx2.AsyncClient(verify=ctx, timeout=20) as http:
        async with streamable_http_client(url, http_client=http) as (read, write, *_):
            async with ClientSession(read, write) as session:
                await session.initialize()
                answer({"ok": True, "ready": True})
                while True:
                    line = await loop.run_in_executor(None, sys.stdin.readline)
                    if not line:
                        return
                    cmd = json.loads(line)
                    try:
                        if cmd["op"] == "quit":
                            answer({"ok": True})
                            return
                        if cmd["op"] == "list":
                            listed = await asyncio.wait_for(session.list_tools(), 20)
                            answer({"ok": True, "tools": sorted(t.name for t in listed.tools)})
                        elif cmd["op"] == "call":
                            result = await asyncio.wait_for(
                                session.call_tool(cmd["name"], cmd.get("args", {})), 20
                            )
                            text = " ".join(getattr(c, "text", "") for c in result.content)
                            answer({"ok": True, "text": text, "is_error": bool(result.is_error)})
                    except Exception as e:  # noqa: BLE001 - every failure is reported to the test
                        answer(failure(e))


if __name__ == "__main__":
    try:
        asyncio.run(main(*sys.argv[1:5]))
    except BaseException as e:  # noqa: BLE001
        answer({"ok": False, "fatal": True, "error": f"{type(e).__name__}: {e}"})
