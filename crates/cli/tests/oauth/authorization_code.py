"""MCP authorization end to end, with stock clients and no pre-shared
credential: the official MCP SDK's `OAuthClientProvider` (discovery from the
401, RFC 9728 and RFC 8414 metadata, RFC 7591 registration, code + PKCE with
a resource indicator, then MCP calls with the bearer token), authlib's
OAuth2Session (code + PKCE S256, then a refresh), and the refusals: a wrong
PKCE verifier, a reused code, a redirect URI mismatch, a token for another
resource, a reused refresh token, a bad registration and a revoked client.

The browser step is driven headless: the redirect handler fetches the
authorization URL with `requests`, fills the login form (a local user and a
TOTP code computed from the secret the enrolment returned) and reads the
redirect's `Location`, as a browser would follow it to the loopback
callback.

Usage: authorization_code.py CONFIG_JSON. Prints one JSON object of results.
"""

import asyncio
import base64
import hashlib
import hmac
import json
import re
import secrets
import struct
import sys
import time
from urllib.parse import parse_qs, urlencode, urlparse

import httpx2
import requests
from authlib.integrations.requests_client import OAuth2Session
from mcp import ClientSession
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider, TokenStorage
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

CALLBACK = "http://127.0.0.1:47913/callback"


class Users:
    """Local users and their TOTP secrets; each code works once, so every
    login takes the next unused time step of some user (waiting for the next
    30 s window only when all are spent)."""

    def __init__(self, secrets_by_user, pool, last):
        self.secrets = secrets_by_user
        self.pool = pool
        self.last = {u: last.get(u, 0) for u in secrets_by_user}

    @staticmethod
    def code(secret_b32, step):
        key = base64.b32decode(secret_b32 + "=" * (-len(secret_b32) % 8))
        digest = hmac.new(key, struct.pack(">Q", step), hashlib.sha1).digest()
        offset = digest[-1] & 0x0F
        value = struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF
        return f"{value % 1_000_000:06d}"

    def next(self, only=None):
        for _ in range(70):
            if time.time() % 30 > 28.5:
                # Not at the very end of a window: the server must see the
                # same window, or the oldest step falls out of its skew.
                time.sleep(2)
            now = int(time.time()) // 30
            for user in [only] if only else self.pool:
                step = max(self.last[user] + 1, now - 1)
                if step <= now + 1:
                    self.last[user] = step
                    return user, self.code(self.secrets[user], step)
            time.sleep(1)
        raise RuntimeError("no TOTP step left")


def login(cfg, users, authorization_url, user=None, decision="allow"):
    """What a person does in the browser: open the page, log in, allow."""
    page = requests.get(authorization_url, verify=cfg["ca"], allow_redirects=False)
    if page.status_code != 200:
        return {"status": page.status_code, "location": page.headers.get("location"), "body": page.text}
    assert "text/html" in page.headers["content-type"], page.headers
    login_id = re.search(r'name="login" value="([^"]+)"', page.text).group(1)
    name, code = users.next(user)
    answer = requests.post(
        cfg["base"] + "/oauth2/authorize",
        data={"login": login_id, "user": name, "totp": code, "decision": decision},
        verify=cfg["ca"],
        allow_redirects=False,
    )
    return {
        "status": answer.status_code,
        "location": answer.headers.get("location"),
        "page": page.text,
        "user": name,
    }


def query_of(location):
    return {k: v[0] for k, v in parse_qs(urlparse(location).query).items()}


class MemoryStorage(TokenStorage):
    def __init__(self):
        self.tokens = None
        self.client = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken):
        self.tokens = tokens

    async def get_client_info(self):
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull):
        self.client = client_info


async def mcp_sdk(cfg, users, out):
    """The MCP SDK's own OAuth flow against the MCP route."""
    storage = MemoryStorage()
    location = {}

    async def redirect_handler(url):
        location.update(await asyncio.to_thread(login, cfg, users, url))

    async def callback_handler():
        q = query_of(location["location"])
        return AuthorizationCodeResult(code=q["code"], state=q.get("state"), iss=q.get("iss"))

    provider = OAuthClientProvider(
        server_url=cfg["mcp_url"],
        client_metadata=OAuthClientMetadata(
            client_name="MCP SDK host <test>",
            redirect_uris=[CALLBACK],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=storage,
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
    )
    async with httpx2.AsyncClient(verify=cfg["ca"], auth=provider, timeout=20) as http:
        async with streamable_http_client(cfg["mcp_url"], http_client=http) as (read, write, *_):
            async with ClientSession(read, write) as session:
                await session.initialize()
                tools = await session.list_tools()
                result = await session.call_tool("save_note", {"text": "from-mcp-sdk"})
    out["mcp_sdk"] = {
        "tools": sorted(t.name for t in tools.tools),
        "result": " ".join(getattr(c, "text", "") for c in result.content),
        "is_error": result.is_error,
        "token_type": storage.tokens.token_type,
        "has_refresh": storage.tokens.refresh_token is not None,
        "client_name_on_page": "MCP SDK host &lt;test&gt;" in location.get("page", ""),
        "user": location.get("user"),
    }
    return storage


def register(cfg, **metadata):
    body = {"redirect_uris": [CALLBACK], "token_endpoint_auth_method": "none", **metadata}
    return requests.post(cfg["base"] + "/oauth2/register", json=body, verify=cfg["ca"])


def pkce():
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authorize_url(cfg, client_id, challenge, resource, **extra):
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": CALLBACK,
        "state": "st-" + secrets.token_hex(4),
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "resource": resource,
        **extra,
    }
    return cfg["base"] + "/oauth2/authorize?" + urlencode(params)


def token(cfg, **form):
    r = requests.post(cfg["base"] + "/oauth2/token", data=form, verify=cfg["ca"])
    return r.status_code, r.json()


def code_for(cfg, users, client_id, resource, user=None):
    verifier, challenge = pkce()
    got = login(cfg, users, authorize_url(cfg, client_id, challenge, resource), user)
    return query_of(got["location"])["code"], verifier


def call_mcp(cfg, bearer, url=None):
    """A bare MCP initialize with a bearer token: the status is enough."""
    r = requests.post(
        url or cfg["mcp_url"],
        headers={
            "authorization": f"Bearer {bearer}",
            "accept": "application/json, text/event-stream",
            "content-type": "application/json",
        },
        data=json.dumps(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "probe", "version": "1"},
                },
            }
        ),
        verify=cfg["ca"],
    )
    return r.status_code


def api(cfg, bearer):
    r = requests.get(cfg["api_url"], headers={"authorization": f"Bearer {bearer}"}, verify=cfg["ca"])
    try:
        body = r.json()
        code = body["error"]["code"] if isinstance(body.get("error"), dict) else body.get("code")
    except (ValueError, KeyError):
        code = None
    return r.status_code, code, r.headers.get("www-authenticate")


def authlib_flow(cfg, users, out):
    """authlib's OAuth2Session: code + PKCE S256 on the HTTP route, then refresh."""
    client = register(cfg, client_name="authlib host").json()
    session = OAuth2Session(
        client["client_id"],
        redirect_uri=CALLBACK,
        code_challenge_method="S256",
        token_endpoint_auth_method="none",
    )
    verifier = secrets.token_urlsafe(48)
    url, state = session.create_authorization_url(
        cfg["base"] + "/oauth2/authorize", code_verifier=verifier, resource=cfg["api_resource"]
    )
    got = login(cfg, users, url)
    tok = session.fetch_token(
        cfg["base"] + "/oauth2/token",
        authorization_response=got["location"],
        code_verifier=verifier,
        resource=cfg["api_resource"],
        verify=cfg["ca"],
    )
    first = dict(tok)
    api_first = api(cfg, tok["access_token"])[0]
    # The token is for the HTTP route: refused on the MCP route.
    other_resource = call_mcp(cfg, tok["access_token"])
    refreshed = session.refresh_token(cfg["base"] + "/oauth2/token", refresh_token=first["refresh_token"], verify=cfg["ca"])
    api_refreshed = api(cfg, refreshed["access_token"])[0]
    out["authlib"] = {
        "token_type": first["token_type"],
        "expires_in": first["expires_in"],
        "scope": first.get("scope"),
        "api": api_first,
        "other_resource": other_resource,
        "rotated": refreshed["refresh_token"] != first["refresh_token"],
        "api_refreshed": api_refreshed,
    }
    # Reuse of the first refresh token: refused, and the family is revoked:
    # the rotated refresh token and the live access tokens stop working.
    status, body = token(
        cfg, grant_type="refresh_token", refresh_token=first["refresh_token"], client_id=client["client_id"]
    )
    status2, body2 = token(
        cfg, grant_type="refresh_token", refresh_token=refreshed["refresh_token"], client_id=client["client_id"]
    )
    out["refresh_reuse"] = {
        "reuse": [status, body.get("error")],
        "successor": [status2, body2.get("error")],
        "access_after": api(cfg, refreshed["access_token"])[0],
    }
    return client


def refusals(cfg, users, client, out):
    cid = client["client_id"]
    res = {}
    # A wrong PKCE verifier.
    code, verifier = code_for(cfg, users, cid, cfg["api_resource"])
    s, b = token(
        cfg,
        grant_type="authorization_code",
        code=code,
        redirect_uri=CALLBACK,
        client_id=cid,
        code_verifier=pkce()[0],
    )
    res["wrong_verifier"] = [s, b.get("error")]
    # The same code again, with the right verifier: it was spent.
    s, b = token(
        cfg, grant_type="authorization_code", code=code, redirect_uri=CALLBACK, client_id=cid, code_verifier=verifier
    )
    res["spent_code"] = [s, b.get("error")]
    # A code redeemed twice: the second redemption revokes the first's token.
    code, verifier = code_for(cfg, users, cid, cfg["api_resource"])
    form = dict(grant_type="authorization_code", code=code, redirect_uri=CALLBACK, client_id=cid, code_verifier=verifier)
    s1, first = token(cfg, **form)
    before = api(cfg, first["access_token"])[0]
    s2, second = token(cfg, **form)
    after = api(cfg, first["access_token"])
    s3, refreshed = token(cfg, grant_type="refresh_token", refresh_token=first["refresh_token"], client_id=cid)
    res["reused_code"] = {
        "first": s1,
        "before": before,
        "second": [s2, second.get("error")],
        "after": list(after[:2]),
        "refresh_after": [s3, refreshed.get("error")],
    }
    # Redirect URI mismatch, at the token endpoint and at the authorization
    # endpoint (answered there, never redirected to an unregistered URI).
    code, verifier = code_for(cfg, users, cid, cfg["api_resource"])
    s, b = token(
        cfg,
        grant_type="authorization_code",
        code=code,
        redirect_uri="http://127.0.0.1:47914/other",
        client_id=cid,
        code_verifier=verifier,
    )
    res["redirect_mismatch_token"] = [s, b.get("error")]
    r = requests.get(
        authorize_url(cfg, cid, pkce()[1], cfg["api_resource"]).replace("47913", "47914"),
        verify=cfg["ca"],
        allow_redirects=False,
    )
    res["redirect_mismatch_authorize"] = [r.status_code, r.json().get("error"), r.headers.get("location")]
    # Resource indicators: missing or not a route → redirected with invalid_target.
    for label, resource in [("no_route", cfg["base"] + "/nowhere"), ("elsewhere", "https://evil.example/mcp")]:
        r = requests.get(authorize_url(cfg, cid, pkce()[1], resource), verify=cfg["ca"], allow_redirects=False)
        res[f"resource_{label}"] = [r.status_code, query_of(r.headers.get("location", "")).get("error")]
    # PKCE is required, S256 only.
    r = requests.get(
        authorize_url(cfg, cid, "x" * 43, cfg["api_resource"], code_challenge_method="plain"),
        verify=cfg["ca"],
        allow_redirects=False,
    )
    res["pkce_plain"] = [r.status_code, query_of(r.headers.get("location", "")).get("error")]
    # A scope other than `mcp`.
    r = requests.get(
        authorize_url(cfg, cid, pkce()[1], cfg["api_resource"], scope="admin"), verify=cfg["ca"], allow_redirects=False
    )
    res["bad_scope"] = [r.status_code, query_of(r.headers.get("location", "")).get("error")]
    # The user denies: access_denied in the redirect, with the state.
    url = authorize_url(cfg, cid, pkce()[1], cfg["api_resource"])
    page = requests.get(url, verify=cfg["ca"])
    login_id = re.search(r'name="login" value="([^"]+)"', page.text).group(1)
    r = requests.post(
        cfg["base"] + "/oauth2/authorize",
        data={"login": login_id, "decision": "deny"},
        verify=cfg["ca"],
        allow_redirects=False,
    )
    q = query_of(r.headers["location"])
    res["denied"] = [r.status_code, q.get("error"), q.get("state") == parse_qs(urlparse(url).query)["state"][0]]
    # A wrong TOTP code: the page again, 401, nothing issued.
    page = requests.get(authorize_url(cfg, cid, pkce()[1], cfg["api_resource"]), verify=cfg["ca"])
    login_id = re.search(r'name="login" value="([^"]+)"', page.text).group(1)
    r = requests.post(
        cfg["base"] + "/oauth2/authorize",
        data={"login": login_id, "user": users.pool[0], "totp": "000000", "decision": "allow"},
        verify=cfg["ca"],
        allow_redirects=False,
    )
    res["wrong_totp"] = [r.status_code, r.headers.get("location")]
    # Registration limits.
    res["register_http_remote"] = register(cfg, redirect_uris=["http://app.example/cb"]).json().get("error")
    res["register_secret"] = register(cfg, token_endpoint_auth_method="client_secret_basic").json().get("error")
    res["register_custom_scheme"] = register(cfg, redirect_uris=["myapp://cb"]).json().get("error")
    big = requests.post(
        cfg["base"] + "/oauth2/register",
        data=json.dumps({"redirect_uris": [CALLBACK], "client_name": "x" * 9000}),
        headers={"content-type": "application/json"},
        verify=cfg["ca"],
    )
    res["register_too_large"] = [big.status_code, big.json().get("error")]
    out["refusals"] = res


def dpop_flow(cfg, users, out):
    """A client that sends DPoP proofs gets DPoP-bound tokens (RFC 9449):
    refused as Bearer, and a refresh needs a proof of the same key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    x = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def b64(data):
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    def proof(htm, htu, token=None):
        claims = {"jti": secrets.token_hex(8), "htm": htm, "htu": htu, "iat": int(time.time())}
        if token:
            claims["ath"] = b64(hashlib.sha256(token.encode()).digest())
        header = {"alg": "EdDSA", "typ": "dpop+jwt", "jwk": {"kty": "OKP", "crv": "Ed25519", "x": b64(x)}}
        signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
        return signing_input + "." + b64(key.sign(signing_input.encode()))

    token_url = cfg["base"] + "/oauth2/token"
    cid = register(cfg, client_name="dpop host").json()["client_id"]
    code, verifier = code_for(cfg, users, cid, cfg["api_resource"])
    r = requests.post(
        token_url,
        data=dict(grant_type="authorization_code", code=code, redirect_uri=CALLBACK, client_id=cid, code_verifier=verifier),
        headers={"DPoP": proof("POST", token_url)},
        verify=cfg["ca"],
    )
    tok = r.json()
    access = tok["access_token"]
    as_dpop = requests.get(
        cfg["api_url"],
        headers={"authorization": f"DPoP {access}", "DPoP": proof("GET", cfg["api_url"], access)},
        verify=cfg["ca"],
    ).status_code
    refreshed = requests.post(
        token_url,
        data=dict(grant_type="refresh_token", refresh_token=tok["refresh_token"], client_id=cid),
        headers={"DPoP": proof("POST", token_url)},
        verify=cfg["ca"],
    )
    unproved = requests.post(
        token_url,
        data=dict(grant_type="refresh_token", refresh_token=refreshed.json()["refresh_token"], client_id=cid),
        verify=cfg["ca"],
    )
    out["dpop"] = {
        "token": [r.status_code, tok.get("token_type")],
        "as_dpop": as_dpop,
        "as_bearer": api(cfg, access)[0],
        "refresh_with_proof": [refreshed.status_code, refreshed.json().get("token_type")],
        "refresh_without_proof": [unproved.status_code, unproved.json().get("error")],
    }


def revoke_client(cfg, users, client, out):
    """An admin revokes a client: its tokens stop working at once."""
    cid = client["client_id"]
    code, verifier = code_for(cfg, users, cid, cfg["api_resource"])
    s, tok = token(
        cfg, grant_type="authorization_code", code=code, redirect_uri=CALLBACK, client_id=cid, code_verifier=verifier
    )
    before = api(cfg, tok["access_token"])[0]
    name, code = users.next()
    r = requests.post(
        f"{cfg['admin_url']}/admin/v1/oauth/clients/{cid}/revoke",
        headers={
            "authorization": f"Bearer {cfg['admin_token']}",
            "x-portcullis-user": name,
            "x-portcullis-totp": code,
        },
        verify=cfg["ca"],
    )
    listed = requests.get(
        f"{cfg['admin_url']}/admin/v1/oauth/clients",
        headers={"authorization": f"Bearer {cfg['admin_token']}"},
        verify=cfg["ca"],
    ).json()
    s2, b2 = token(cfg, grant_type="refresh_token", refresh_token=tok["refresh_token"], client_id=cid)
    page = requests.get(authorize_url(cfg, cid, pkce()[1], cfg["api_resource"]), verify=cfg["ca"], allow_redirects=False)
    out["revoked_client"] = {
        "revoke": r.status_code,
        "before": before,
        "after": api(cfg, tok["access_token"])[0],
        "refresh": [s2, b2.get("error")],
        "authorize": [page.status_code, page.json().get("error")],
        "listed_revoked": any(c["client_id"] == cid and c["revoked_at"] for c in listed),
    }


def main():
    cfg = json.load(open(sys.argv[1]))
    users = Users(cfg["users"], cfg["pool"], cfg["last"])
    out = {}
    asyncio.run(mcp_sdk(cfg, users, out))
    client = authlib_flow(cfg, users, out)
    refusals(cfg, users, client, out)
    dpop_flow(cfg, users, out)
    revoke_client(cfg, users, client, out)
    # A user policy forbids: decided as the user too.
    forbidden = register(cfg, client_name="forbidden user host").json()
    code, verifier = code_for(cfg, users, forbidden["client_id"], cfg["api_resource"], user=cfg["forbidden_user"])
    s, tok = token(
        cfg,
        grant_type="authorization_code",
        code=code,
        redirect_uri=CALLBACK,
        client_id=forbidden["client_id"],
        code_verifier=verifier,
    )
    out["forbidden_user"] = list(api(cfg, tok["access_token"])[:2])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
