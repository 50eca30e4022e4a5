//! The authorization-code flow of MCP authorization driven from Rust, as a
//! browser and an MCP host would: enrol a local user, register a client,
//! open the login page, log in with a TOTP code, follow the redirect and
//! redeem the code with its PKCE verifier.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Server, tls_config};

/// The loopback redirect URI the test clients register.
pub const CALLBACK: &str = "http://127.0.0.1:47913/callback";

/// A TOTP code of `secret` for the next unused step of its user (the step
/// is remembered in `last`, as the gateway remembers it: a code works once).
pub fn next_code(secret: &str, last: &mut u64) -> String {
    let mut now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if now % 30 >= 28 {
        // The server must see the same window as the code.
        std::thread::sleep(std::time::Duration::from_secs(3));
        now += 3;
    }
    let step = (*last + 1).max(now / 30 - 1);
    if step > now / 30 + 1 {
        // Every step of this window is spent: wait for the next one.
        std::thread::sleep(std::time::Duration::from_secs(30 - now % 30 + 1));
        return next_code(secret, last);
    }
    *last = step;
    portcullis_identity::TotpSecret::from_base32(secret)
        .unwrap()
        .code_at(step * 30)
}

/// Whether python3 has the stock OAuth clients of `tests/oauth/*.py` (the
/// MCP SDK, authlib, requests); says so visibly when not.
pub fn python_with_flow_clients() -> bool {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import mcp, authlib, requests"])
        .output();
    match probe {
        Ok(o) if o.status.success() => true,
        _ => {
            eprintln!(
                "SKIPPED: MCP authorization flow: python3 with mcp, authlib and requests is not available (requirements-test.txt)"
            );
            false
        }
    }
}

/// A client of the data plane and admin API that does not follow redirects
/// (the login's redirect goes to the client's loopback callback).
pub fn browser(server: &Server) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls_config(&server.ca_pem(), None))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Enrols local user `name` (the first with the admin token alone, later
/// ones with an enrolled user's name and code); returns the TOTP secret.
pub async fn enrol(
    server: &Server,
    http: &reqwest::Client,
    name: &str,
    approver: Option<(&str, String)>,
) -> String {
    let mut request = http
        .post(format!("https://{}/admin/v1/admins", server.admin))
        .bearer_auth(server.admin_token())
        .json(&serde_json::json!({ "name": name }));
    if let Some((user, code)) = approver {
        request = request
            .header("x-portcullis-user", user)
            .header("x-portcullis-totp", code);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 201, "enrol {name}");
    let body: Value = response.json().await.unwrap();
    body["totp_secret"].as_str().unwrap().to_string()
}

/// Registers a public client (RFC 7591); returns its id.
pub async fn register(server: &Server, http: &reqwest::Client, name: &str) -> String {
    let response = http
        .post(server.url("/oauth2/register"))
        .json(&serde_json::json!({
            "client_name": name, "redirect_uris": [CALLBACK],
            "token_endpoint_auth_method": "none",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    body["client_id"].as_str().unwrap().to_string()
}

/// The whole flow for `resource`, logging in as `user` with `code`: the
/// token response (`access_token`, `refresh_token`, …).
pub async fn token_for(
    server: &Server,
    http: &reqwest::Client,
    client_id: &str,
    resource: &str,
    user: &str,
    code: &str,
) -> Value {
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
    let page = http
        .get(server.url(&format!("/oauth2/authorize?{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    let login = page
        .split("name=\"login\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_string();
    let answer = http
        .post(server.url("/oauth2/authorize"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            serde_urlencoded::to_string([
                ("login", login.as_str()),
                ("user", user),
                ("totp", code),
                ("decision", "allow"),
            ])
            .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 302, "login refused");
    let location = answer.headers()["location"].to_str().unwrap().to_string();
    let (_, query) = location.split_once('?').unwrap();
    let params: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap();
    let code = &params.iter().find(|(k, _)| k == "code").unwrap().1;
    let response = http
        .post(server.url("/oauth2/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            serde_urlencoded::to_string([
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("redirect_uri", CALLBACK),
                ("client_id", client_id),
                ("code_verifier", verifier.as_str()),
                ("resource", resource),
            ])
            .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}
