// The TypeScript MCP SDK's own OAuth client (an OAuthClientProvider handed to
// StreamableHTTPClientTransport) against a Portcullis MCP route, given
// nothing but the URL: discovery (RFC 9728, RFC 8414), client registration
// (RFC 7591 with mode "dcr"; a Client ID Metadata Document with mode "cimd"),
// code + PKCE + resource, then MCP with the token. The browser step is an
// HTTP client posting the gateway's login form as a user would.
//
// Run from the directory holding node_modules (the test copies it there):
//   NODE_EXTRA_CA_CERTS=ca.pem node ts_oauth_client.mjs flow.json
// flow.json: {url, user, callback, metadata_url, codes: {dcr, cimd}}.
// Prints one JSON object: per mode, what the SDK got and did.
import { readFileSync } from "node:fs";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { UnauthorizedError } from "@modelcontextprotocol/sdk/client/auth.js";

const cfg = JSON.parse(readFileSync(process.argv[2], "utf8"));

/// The login page answered as a user would: the local user and a TOTP code.
async function login(authorizationUrl, totp) {
  const page = await fetch(authorizationUrl, { redirect: "manual" });
  const html = await page.text();
  if (page.status !== 200) throw new Error(`login page: ${page.status} ${html}`);
  const id = /name="login" value="([^"]+)"/.exec(html)?.[1];
  const answer = await fetch(new URL("/oauth2/authorize", authorizationUrl), {
    method: "POST",
    redirect: "manual",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({ login: id, user: cfg.user, totp, decision: "allow" }),
  });
  const location = answer.headers.get("location");
  if (answer.status !== 302 || !location) throw new Error(`login: ${answer.status} ${await answer.text()}`);
  return { code: new URL(location).searchParams.get("code"), html };
}

/// An in-memory OAuthClientProvider, as an MCP host implements one.
class Provider {
  constructor(mode) {
    this.mode = mode;
    if (mode === "cimd") this.clientMetadataUrl = cfg.metadata_url;
  }
  get redirectUrl() {
    return cfg.callback;
  }
  get clientMetadata() {
    return {
      client_name: `TypeScript SDK host (${this.mode})`,
      redirect_uris: [cfg.callback],
      grant_types: ["authorization_code", "refresh_token"],
      response_types: ["code"],
      token_endpoint_auth_method: "none",
    };
  }
  clientInformation() {
    return this.client;
  }
  saveClientInformation(info) {
    this.client = info;
  }
  tokens() {
    return this.saved;
  }
  saveTokens(tokens) {
    this.saved = tokens;
  }
  saveCodeVerifier(verifier) {
    this.verifier = verifier;
  }
  codeVerifier() {
    return this.verifier;
  }
  async redirectToAuthorization(url) {
    this.authorizationUrl = url;
    this.login = await login(url, cfg.codes[this.mode]);
  }
}

async function connect(mode) {
  const provider = new Provider(mode);
  const url = new URL(cfg.url);
  const first = new Client({ name: `ts-${mode}`, version: "1.0.0" });
  let redirected = false;
  try {
    await first.connect(new StreamableHTTPClientTransport(url, { authProvider: provider }));
  } catch (e) {
    if (!(e instanceof UnauthorizedError)) throw e;
    redirected = true;
  }
  const transport = new StreamableHTTPClientTransport(url, { authProvider: provider });
  await transport.finishAuth(provider.login.code);
  const client = new Client({ name: `ts-${mode}`, version: "1.0.0" });
  await client.connect(transport);
  const tools = await client.listTools();
  const result = await client.callTool({ name: "save_note", arguments: { text: `from-ts-sdk-${mode}` } });
  await client.close();
  return {
    redirected,
    client_id: provider.client?.client_id,
    client_name_on_page: provider.login.html.includes(`TypeScript SDK host (${mode})`),
    resource: provider.authorizationUrl.searchParams.get("resource"),
    token_type: provider.saved?.token_type,
    has_refresh: Boolean(provider.saved?.refresh_token),
    tools: tools.tools.map((t) => t.name),
    result: result.content?.[0]?.text,
    is_error: Boolean(result.isError),
  };
}

const out = {};
for (const mode of ["dcr", "cimd"]) {
  try {
    out[mode] = await connect(mode);
  } catch (e) {
    out[mode] = { error: String(e?.stack ?? e) };
  }
}
console.log(JSON.stringify(out));
