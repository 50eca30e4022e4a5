"""The official `mcp` SDK's high-level `Client` in its default `mode='auto'`
(probe `server/discover`, fall back to the `initialize` handshake), over
Streamable HTTP: prints the negotiated protocol revision and the tools it
lists, as one JSON line. With CA_PEM, CERT_PEM and KEY_PEM it authenticates
to Portcullis with the agent's client certificate; without, it connects
directly (to compare with what the gateway negotiates).

usage: auto_client.py URL [CA_PEM CERT_PEM KEY_PEM]
"""

import asyncio
import json
import ssl
import sys

import httpx2
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client


async def main(url, tls):
    verify = True
    if tls:
        verify = ssl.create_default_context(cafile=tls[0])
        verify.load_cert_chain(tls[1], tls[2])
    async with httpx2.AsyncClient(verify=verify, timeout=20) as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            listed = await asyncio.wait_for(client.list_tools(), 20)
            result = await asyncio.wait_for(client.call_tool("save_note", {"text": "auto"}), 20)
            text = " ".join(getattr(c, "text", "") for c in result.content)
            print(json.dumps({
                "version": client.protocol_version,
                "tools": sorted(t.name for t in listed.tools),
                "call": text,
            }), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2:5]))
