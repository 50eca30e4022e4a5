//! Humans log in at a real OpenID Provider: panva's certified
//! `oidc-provider` (pinned, installed with npm, run by Node on 127.0.0.1 at an
//! ephemeral port; `tests/oidc/provider.mjs`), driven without a browser: an
//! HTTP client follows the redirects and submits the provider's own login and
//! consent forms. Skips visibly when npm or the registry is unavailable.
//!
//! The console: a mapped human gets a session with the mapped role and acts
//! under their name in the audit log; an unmapped one is refused; a callback
//! with a wrong state, in another browser, replayed, or carrying another
//! login's code (its PKCE verifier does not match) is refused. The MCP
//! authorization page: the flow through the issuer yields a token that acts
//! for that user with their groups (also after a refresh), and a user whom
//! policy does not allow is denied through the agent.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::collections::HashMap;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::Value;
use sha2::{Digest, Sha256};
use support::authorization::{CALLBACK, browser, register};
use support::*;

const TESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oidc");
const SCHEMA: &str = include_str!("../../policy/defaults/schema.cedarschema");

/// The agent MCP hosts act through may use the route; users may when their
/// issuer puts them in group `portcullis-owners` (alice), not otherwise
/// (mallory is in `staff`).
const POLICIES: &str = r#"
@id("hosts") permit(principal in Role::"host", action, resource == Route::"api");
@id("owners") permit(principal in Role::"portcullis-owners", action, resource);
"#;

/// Installs the provider (once per machine); `None` (with a visible SKIPPED
/// line) when npm or the registry is unavailable.
fn provider_dir() -> Option<PathBuf> {
    support::npm_installed(
        &format!("{TESTS}/install_provider.sh"),
        "portcullis-test-oidc-provider",
        "OIDC login test (oidc-provider)",
    )
}

/// Starts the provider; its process and port.
fn start_provider(dir: &std::path::Path, secret: &str) -> (Killed, u16) {
    let mut child = Command::new("node")
        .arg(format!("{TESTS}/provider.mjs"))
        .arg(secret)
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("node");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(port) = line.strip_prefix("LISTENING ") {
                let _ = tx.send(port.trim().parse::<u16>().unwrap());
            }
        }
    });
    let port = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the OIDC provider did not start");
    (Killed(child), port)
}

/// A browser's cookies, per origin (enough for these hosts: names do not
/// clash across paths).
#[derive(Default)]
struct Jar(HashMap<String, HashMap<String, String>>);

impl Jar {
    fn origin(url: &str) -> String {
        let u: reqwest::Url = url.parse().unwrap();
        format!("{}://{}", u.scheme(), u.authority())
    }

    fn take(&mut self, url: &str, response: &reqwest::Response) {
        let jar = self.0.entry(Self::origin(url)).or_default();
        for v in response.headers().get_all("set-cookie") {
            let v = v.to_str().unwrap();
            let pair = v.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            let expired = v.to_ascii_lowercase().contains("max-age=0") || value.is_empty();
            if expired {
                jar.remove(name);
            } else {
                jar.insert(name.to_string(), value.to_string());
            }
        }
    }

    fn header(&self, url: &str) -> String {
        self.0
            .get(&Self::origin(url))
            .map(|c| {
                c.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default()
    }

    fn get(&self, url: &str, name: &str) -> Option<String> {
        self.0.get(&Self::origin(url))?.get(name).cloned()
    }
}

/// One browser: a client that follows no redirects, and its cookies.
struct Browser {
    http: reqwest::Client,
    jar: Jar,
}

impl Browser {
    async fn get(&mut self, url: &str) -> reqwest::Response {
        let response = self
            .http
            .get(url)
            .header("cookie", self.jar.header(url))
            .send()
            .await
            .unwrap();
        self.jar.take(url, &response);
        response
    }

    async fn post(&mut self, url: &str, form: &[(&str, &str)]) -> reqwest::Response {
        let response = self
            .http
            .post(url)
            .header("cookie", self.jar.header(url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(form).unwrap())
            .send()
            .await
            .unwrap();
        self.jar.take(url, &response);
        response
    }

    /// Logs in at the provider as `user` from its authorization URL, as a
    /// person would: its login form, then its consent form. The URL the
    /// provider finally sends the browser to (the gateway's callback).
    async fn at_provider(&mut self, mut url: String, provider: &str, user: &str) -> String {
        for _ in 0..12 {
            if !url.starts_with(provider) {
                return url;
            }
            let response = self.get(&url).await;
            if response.status().is_redirection() {
                url = absolute(provider, response.headers()["location"].to_str().unwrap());
                continue;
            }
            assert_eq!(response.status(), 200, "{url}");
            let page = response.text().await.unwrap();
            let action = between(&page, "action=\"", "\"").expect("a form");
            let prompt = between(&page, "name=\"prompt\" value=\"", "\"").unwrap();
            let form: Vec<(&str, &str)> = match prompt.as_str() {
                "login" => vec![("prompt", "login"), ("login", user), ("password", "any")],
                other => vec![("prompt", other)],
            };
            let response = self.post(&action, &form).await;
            assert!(
                response.status().is_redirection(),
                "{prompt}: {}",
                response.status()
            );
            url = absolute(provider, response.headers()["location"].to_str().unwrap());
        }
        panic!("the provider never sent the browser back");
    }
}

fn absolute(origin: &str, location: &str) -> String {
    if location.starts_with('/') {
        format!("{origin}{location}")
    } else {
        location.to_string()
    }
}

fn between(text: &str, start: &str, end: &str) -> Option<String> {
    let rest = &text[text.find(start)? + start.len()..];
    Some(rest[..rest.find(end)?].to_string())
}

fn query_param(url: &str, name: &str) -> Option<String> {
    let (_, query) = url.split_once('?')?;
    serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .unwrap()
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// The console: start a login, log in at the provider as `user`; the
/// provider's redirect back (not yet followed) and the state cookie.
async fn console_start(b: &mut Browser, admin: &str, provider: &str, user: &str) -> String {
    let r = b.get(&format!("{admin}/console/login/oidc?issuer=0")).await;
    assert_eq!(r.status(), 303);
    let to = r.headers()["location"].to_str().unwrap().to_string();
    assert!(to.starts_with(provider), "{to}");
    for p in [
        "code_challenge_method=S256",
        "nonce=",
        "state=",
        "scope=openid+email+profile+groups",
    ] {
        assert!(to.contains(p), "{p} in {to}");
    }
    b.at_provider(to, provider, user).await
}

#[tokio::test(flavor = "multi_thread")]
async fn humans_log_in_at_a_real_oidc_provider() {
    let Some(provider_dir) = tokio::task::block_in_place(provider_dir) else {
        return;
    };
    install_crypto();
    let secret = hex::encode(rand::random::<[u8; 24]>());
    let (_provider, port) = tokio::task::block_in_place(|| start_provider(&provider_dir, &secret));
    let provider = format!("http://127.0.0.1:{port}");

    let (upstream, _gate) = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(policies.join("schema.cedarschema"), SCHEMA).unwrap();
    std::fs::write(policies.join("users.cedar"), POLICIES).unwrap();
    std::fs::write(dir.path().join("oidc-secret"), format!("{secret}\n")).unwrap();
    let sections = format!(
        "[policy]\ndir = \"policies\"\n\
         [identity.authorization]\nagent = \"mcp-hosts\"\ndynamic_registration = true\nregistration_redirect_hosts = [\"127.0.0.1\", \"localhost\"]\n\
         [[identity.oidc]]\nissuer = \"{provider}\"\naudience = \"portcullis-exchange\"\n\
         client_id = \"portcullis\"\nclient_secret_file = \"oidc-secret\"\ndisplay_name = \"Test IdP\"\n\
         scopes = [\"email\", \"profile\", \"groups\"]\n\
         [[admin.oidc_roles]]\nclaim = \"groups\"\nvalue = \"portcullis-owners\"\nrole = \"owner\"\n\
         [[admin.oidc_roles]]\nclaim = \"email\"\nvalue = \"olga@example.com\"\nrole = \"auditor\"\n{}",
        route("api", "/api", &format!("http://{upstream}"), "internal")
    );
    let cfg = config(dir.path(), &sections, "");
    let server = tokio::task::spawn_blocking(move || Server::start(dir, Some(&cfg)))
        .await
        .unwrap();
    // The secret is never logged.
    assert!(!server.stderr.lock().unwrap().contains(&secret));
    tokio::task::block_in_place(|| {
        server.create_agent("mcp-hosts", &["host"]);
        server.create_agent("victim", &["bystander"]);
    });
    let admin = format!("https://{}", server.admin);
    let new_browser = || Browser {
        http: browser(&server),
        jar: Jar::default(),
    };

    // --- The console ---------------------------------------------------
    let mut alice = new_browser();
    let page = alice.get(&format!("{admin}/console/login")).await;
    assert!(page.text().await.unwrap().contains("Log in with Test IdP"));
    let back = console_start(&mut alice, &admin, &provider, "alice").await;
    assert!(
        back.starts_with(&format!("{admin}/console/login/callback?")),
        "{back}"
    );
    assert!(alice.jar.get(&admin, "__Host-portcullis-oidc").is_some());
    let r = alice.get(&back).await;
    assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());
    assert_eq!(r.headers()["location"], "/console");
    assert!(alice.jar.get(&admin, "__Host-portcullis-console").is_some());
    assert!(
        alice.jar.get(&admin, "__Host-portcullis-oidc").is_none(),
        "state cookie cleared"
    );
    // Replayed: the login is spent.
    let mut replay = new_browser();
    replay.jar.0.insert(
        Jar::origin(&admin),
        HashMap::from([(
            "__Host-portcullis-oidc".to_string(),
            query_param(&back, "state").unwrap(),
        )]),
    );
    assert_eq!(replay.get(&back).await.status(), 401);
    // The session acts as alice, an owner: revoke an agent from the console.
    let page = alice.get(&format!("{admin}/console/agents")).await;
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(page.contains("oidc:alice@example.com"), "{page}");
    let csrf = between(&page, "name=\"csrf\" value=\"", "\"").unwrap();
    let r = alice
        .post(
            &format!("{admin}/console/agents/victim/revoke"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(r.status(), 303);
    let listed: Value = reqwest_json(
        client(&server.ca_pem(), None)
            .get(format!("{admin}/admin/v1/agents/victim"))
            .bearer_auth(server.admin_token()),
    )
    .await;
    assert_eq!(listed["status"], "revoked", "{listed}");
    // Logout ends the session in the store: the old cookie, replayed from
    // another browser, no longer opens a page.
    let cookie = alice.jar.get(&admin, "__Host-portcullis-console").unwrap();
    let mut replay = new_browser();
    replay.jar.0.insert(
        Jar::origin(&admin),
        HashMap::from([("__Host-portcullis-console".to_string(), cookie)]),
    );
    assert_eq!(
        replay
            .get(&format!("{admin}/console/agents"))
            .await
            .status(),
        200
    );
    let r = alice
        .post(&format!("{admin}/console/logout"), &[("csrf", &csrf)])
        .await;
    assert_eq!(r.status(), 303);
    assert_eq!(
        replay
            .get(&format!("{admin}/console/agents"))
            .await
            .status(),
        303,
        "logged out"
    );

    // olga is mapped by e-mail to auditor: she may look, not act.
    let mut olga = new_browser();
    let back = console_start(&mut olga, &admin, &provider, "olga").await;
    assert_eq!(olga.get(&back).await.status(), 303);
    let page = olga
        .get(&format!("{admin}/console/agents"))
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains("oidc:olga@example.com"), "{page}");
    let csrf = between(&page, "name=\"csrf\" value=\"", "\"").unwrap();
    let r = olga
        .post(
            &format!("{admin}/console/agents/mcp-hosts/revoke"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(r.status(), 403);

    // mallory logs in at the provider, but no entry maps her: refused.
    let mut mallory = new_browser();
    let back = console_start(&mut mallory, &admin, &provider, "mallory").await;
    let r = mallory.get(&back).await;
    assert_eq!(r.status(), 403);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("no `[[admin.oidc_roles]]` entry")
    );
    assert!(
        mallory
            .jar
            .get(&admin, "__Host-portcullis-console")
            .is_none()
    );

    // A wrong state; the right callback in another browser; another
    // login's code (its PKCE verifier and nonce are not this login's).
    let mut eve = new_browser();
    let back = console_start(&mut eve, &admin, &provider, "alice").await;
    let wrong = back.replace(
        &format!("state={}", query_param(&back, "state").unwrap()),
        "state=forged",
    );
    assert_eq!(eve.get(&wrong).await.status(), 401);
    let back = console_start(&mut eve, &admin, &provider, "alice").await;
    assert_eq!(
        new_browser().get(&back).await.status(),
        401,
        "another browser"
    );
    let first = console_start(&mut eve, &admin, &provider, "alice").await;
    let first_state = eve.jar.get(&admin, "__Host-portcullis-oidc").unwrap();
    let second = console_start(&mut eve, &admin, &provider, "alice").await;
    let swapped = first.replace(
        &format!("code={}", query_param(&first, "code").unwrap()),
        &format!("code={}", query_param(&second, "code").unwrap()),
    );
    let jar = eve.jar.0.get_mut(&Jar::origin(&admin)).unwrap();
    jar.insert("__Host-portcullis-oidc".into(), first_state);
    let r = eve.get(&swapped).await;
    assert_eq!(
        r.status(),
        401,
        "a code redeemed with another login's verifier"
    );
    assert!(eve.jar.get(&admin, "__Host-portcullis-console").is_none());

    // --- The MCP authorization page -------------------------------------
    let http = browser(&server);
    let client_id = register(&server, &http, "oidc host").await;
    let resource = server.url("/api");
    // The callback opened in another browser gives the client nothing.
    let (_, _, back) = to_callback(&server, &client_id, &resource, &provider, "alice").await;
    let elsewhere = browser(&server).get(&back).send().await.unwrap();
    assert_eq!(elsewhere.status(), 401);
    let (mut b, verifier, back) =
        through_provider(&server, &client_id, &resource, &provider, "alice").await;
    let alice_token = redeem(&server, &mut b, &client_id, &resource, &back, &verifier).await;
    let call = |token: String| {
        let c = client(&server.ca_pem(), None);
        let url = server.url("/api/items");
        async move {
            c.get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(
        call(alice_token["access_token"].as_str().unwrap().into()).await,
        200
    );
    // A refresh keeps the user's issuer and groups.
    let refreshed = reqwest_json(
        http.post(server.url("/oauth2/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(
                serde_urlencoded::to_string([
                    ("grant_type", "refresh_token"),
                    (
                        "refresh_token",
                        alice_token["refresh_token"].as_str().unwrap(),
                    ),
                    ("client_id", &client_id),
                ])
                .unwrap(),
            ),
    )
    .await;
    assert_eq!(
        call(refreshed["access_token"].as_str().unwrap().into()).await,
        200
    );
    // mallory may log in, but policy does not allow her: denied through the agent.
    let (mut b, verifier, back) =
        through_provider(&server, &client_id, &resource, &provider, "mallory").await;
    let mallory_token = redeem(&server, &mut b, &client_id, &resource, &back, &verifier).await;
    assert_eq!(
        call(mallory_token["access_token"].as_str().unwrap().into()).await,
        403
    );

    // The audit log names the humans.
    let records = tokio::task::block_in_place(|| server.audit(2000));
    let by = |principal: &str, action: &str, outcome: &str| {
        records.iter().any(|r| {
            r["principal"] == principal && r["action"] == action && r["outcome"] == outcome
        })
    };
    assert!(by("oidc:alice@example.com", "console.login", "allow"));
    assert!(by("oidc:mallory@example.com", "console.login", "deny"));
    assert!(
        records
            .iter()
            .any(|r| r["principal"] == "oidc:alice@example.com"
                && r["action"].as_str().unwrap_or("").contains("revoke")),
        "the console's revocation is recorded under alice's name"
    );
    let delegated = records
        .iter()
        .filter(|r| r["path"] == "/api/items" && r["outcome"] == "allow")
        .count();
    assert!(delegated >= 2, "alice's calls through the agent");
    // Nothing recorded carries the client secret.
    assert!(!serde_json::to_string(&records).unwrap().contains(&secret));
}

/// The authorization page's flow through the provider for `user`, up to the
/// provider's redirect to the gateway's callback: the browser, the verifier
/// and that callback URL.
async fn to_callback(
    server: &Server,
    client_id: &str,
    resource: &str,
    provider: &str,
    user: &str,
) -> (Browser, String, String) {
    let mut b = Browser {
        http: browser(server),
        jar: Jar::default(),
    };
    let verifier = B64.encode(rand::random::<[u8; 32]>());
    let challenge = B64.encode(Sha256::digest(verifier.as_bytes()));
    let query = serde_urlencoded::to_string([
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", CALLBACK),
        ("state", "s1"),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
        ("resource", resource),
        ("scope", "mcp"),
    ])
    .unwrap();
    let page = b
        .get(&server.url(&format!("/oauth2/authorize?{query}")))
        .await;
    let page = page.text().await.unwrap();
    assert!(page.contains("Log in with Test IdP and allow"), "{page}");
    let login = between(&page, "name=\"login\" value=\"", "\"").unwrap();
    let r = b
        .post(
            &server.url("/oauth2/authorize"),
            &[("login", &login), ("decision", "oidc-0")],
        )
        .await;
    assert_eq!(r.status(), 303);
    let to = r.headers()["location"].to_str().unwrap().to_string();
    let back = b.at_provider(to, provider, user).await;
    assert!(
        back.starts_with(&server.url("/oauth2/authorize/callback?")),
        "{back}"
    );
    (b, verifier, back)
}

/// [`to_callback`], then the callback in the same browser: the browser, the
/// verifier and the redirect to the client.
async fn through_provider(
    server: &Server,
    client_id: &str,
    resource: &str,
    provider: &str,
    user: &str,
) -> (Browser, String, String) {
    let (mut b, verifier, back) = to_callback(server, client_id, resource, provider, user).await;
    let r = b.get(&back).await;
    assert_eq!(r.status(), 302, "{}", r.text().await.unwrap());
    let to_client = r.headers()["location"].to_str().unwrap().to_string();
    assert!(to_client.starts_with(CALLBACK), "{to_client}");
    assert_eq!(query_param(&to_client, "state").as_deref(), Some("s1"));
    (b, verifier, to_client)
}

/// Redeems the code of the client's redirect `back`.
async fn redeem(
    server: &Server,
    b: &mut Browser,
    client_id: &str,
    resource: &str,
    back: &str,
    verifier: &str,
) -> Value {
    let code = query_param(back, "code").expect("a code");
    reqwest_json(
        b.http
            .post(server.url("/oauth2/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(
                serde_urlencoded::to_string([
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", CALLBACK),
                    ("client_id", client_id),
                    ("code_verifier", verifier),
                    ("resource", resource),
                ])
                .unwrap(),
            ),
    )
    .await
}

async fn reqwest_json(request: reqwest::RequestBuilder) -> Value {
    let response = request.send().await.unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert!(status.is_success(), "{status}: {body}");
    body
}
