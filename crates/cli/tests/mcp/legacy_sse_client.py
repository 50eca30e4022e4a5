"""The official `mcp` SDK's client on the legacy HTTP+SSE transport
(protocol 2024-11-05) through Portcullis, authenticating with the agent's
client certificate: initializes, lists the tools, calls `save_note` and
`wipe_notes`, and prints what it saw as one JSON line.

usage: legacy_sse_client.py URL CA_PEM CERT_PEM KEY_PEM
"""

import asyncio
import json
import ssl
import sys

import httpx2
from mcp import ClientSession
from mcp.client.sse import sse_client


def failure(e):
    error = getattr(e, "error", None)
    if error is not None and hasattr(error, "code"):
        return {"error": error.message, "code": error.code, "data": error.data}
    return {"error": f"{type(e).__name__}: {e}"}


async def main(url, ca, cert, key):
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(cert, key)

    def factory(headers=None, timeout=None, auth=None):
        return httpx2.AsyncClient(verify=ctx, headers=headers, timeout=timeout, auth=auth)

    out = {}
    async with sse_client(url, httpx_client_factory=factory) as (read, write):
        async with ClientSession(read, write) as session:
            init = await asyncio.wait_for(session.initialize(), 20)
            out["version"] = init.protocol_version
            listed = await asyncio.wait_for(session.list_tools(), 20)
            out["tools"] = sorted(t.name for t in listed.tools)
            result = await asyncio.wait_for(session.call_tool("save_note", {"text": "via legacy"}), 20)
            out["save"] = " ".join(getattr(c, "text", "") for c in result.content)
            try:
                result = await asyncio.wait_for(session.call_tool("wipe_notes", {}), 20)
                out["wipe"] = " ".join(getattr(c, "text", "") for c in result.content)
            except Exception as e:  # noqa: BLE001 - the refusal is what the test reads
                out["wipe"] = failure(e)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
