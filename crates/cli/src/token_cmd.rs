//! `portcullis agent token` and `portcullis agent dpop`: the client side of the
//! token endpoint, for agents (and curl users) that cannot do mTLS. The agent's
//! signing key (`<creds>/<name>.jwk`, written by `agent create`) signs the
//! client assertion and, by default, the DPoP proofs the token is bound to.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use portcullis_identity::{ASSERTION_TYPE, Ed25519Key};

use crate::state_dir::StateDir;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Reads `<creds>/<name>.jwk`.
pub fn load_agent_key(creds: &Path, name: &str) -> Result<Ed25519Key> {
    let path = creds.join(format!("{name}.jwk"));
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read the agent's signing key `{}` (written by `portcullis agent create`)",
            path.display()
        )
    })?;
    Ed25519Key::from_private_jwk(&text).map_err(|e| anyhow::anyhow!("`{}`: {e}", path.display()))
}

fn http_client(creds: &Path, name: &str, mtls: bool) -> Result<reqwest::Client> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let ca = creds.join("ca.crt");
    let ca_pem = std::fs::read(&ca).with_context(|| format!("cannot read `{}`", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ca_pem) {
        roots.add(cert?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    let tls = if mtls {
        let cert_path = creds.join(format!("{name}.crt"));
        let key_path = creds.join(format!("{name}.key"));
        let certs = CertificateDer::pem_file_iter(&cert_path)
            .with_context(|| format!("cannot read `{}`", cert_path.display()))?
            .collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(&key_path)
            .with_context(|| format!("cannot read `{}`", key_path.display()))?;
        builder.with_client_auth_cert(certs, key)?
    } else {
        builder.with_no_client_auth()
    };
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(std::time::Duration::from_secs(30))
        .build()?)
}

fn gateway_url(state: &StateDir, gateway: Option<String>) -> Result<String> {
    let url = match gateway {
        Some(url) => url,
        None => std::fs::read_to_string(state.gateway_url())
            .map(|s| s.trim().to_string())
            .context(
                "cannot find the gateway URL: is `portcullis serve` running with this --state-dir? (or pass --gateway)",
            )?,
    };
    Ok(url.trim_end_matches('/').to_string())
}

/// `agent token`: prints a fresh access token.
pub async fn token(
    state: &StateDir,
    name: &str,
    creds: &Path,
    gateway: Option<String>,
    mtls: bool,
    on_behalf_of: Option<&Path>,
    posture: Option<&Path>,
) -> Result<()> {
    let posture = posture
        .map(|path| {
            std::fs::read_to_string(path)
                .map(|s| s.trim().to_string())
                .with_context(|| format!("cannot read the posture statement `{}`", path.display()))
        })
        .transpose()?;
    let key = load_agent_key(creds, name)?;
    let subject = on_behalf_of
        .map(|path| {
            std::fs::read_to_string(path)
                .map(|s| s.trim().to_string())
                .with_context(|| format!("cannot read the user's token `{}`", path.display()))
        })
        .transpose()?;
    let base = gateway_url(state, gateway)?;
    let http = http_client(creds, name, mtls)?;
    // The assertion's audience and the proof's `htu` are the endpoint the
    // gateway publishes, which may be a public name rather than `base`.
    let metadata: serde_json::Value = http
        .get(format!("{base}/.well-known/oauth-authorization-server"))
        .send()
        .await
        .context("cannot reach the gateway")?
        .error_for_status()?
        .json()
        .await?;
    let endpoint = metadata["token_endpoint"]
        .as_str()
        .context("the gateway's metadata has no `token_endpoint`")?;
    let t = now();
    let assertion = key.sign_assertion(name, endpoint, t, 60)?;
    let mut fields = vec![
        ("grant_type", "client_credentials"),
        ("client_assertion_type", ASSERTION_TYPE),
        ("client_assertion", assertion.as_str()),
    ];
    if let Some(subject) = &subject {
        // RFC 8693: the agent (authenticated by its assertion) acts for the
        // user whose token it presents.
        fields[0].1 = "urn:ietf:params:oauth:grant-type:token-exchange";
        fields.push(("subject_token", subject));
        fields.push(("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"));
    }
    if let Some(posture) = &posture {
        fields.push(("posture", posture));
    }
    let form = serde_urlencoded::to_string(&fields)?;
    let mut request = http
        .post(format!("{base}/oauth2/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form);
    if !mtls {
        request = request.header("DPoP", key.sign_dpop_proof("POST", endpoint, None, t)?);
    }
    let response = request.send().await.context("cannot reach the gateway")?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!(
            "the token endpoint refused ({status}): {} {}",
            body["code"].as_str().unwrap_or("?"),
            body["error_description"].as_str().unwrap_or("")
        );
    }
    let token = body["access_token"]
        .as_str()
        .context("the token endpoint sent no access token")?;
    println!("{token}");
    eprintln!(
        "token_type {} expires_in {}s{}",
        body["token_type"].as_str().unwrap_or("?"),
        body["expires_in"],
        if mtls {
            ": send it as `Authorization: Bearer` with the agent's certificate"
        } else {
            ": send it as `Authorization: DPoP` with a proof from `portcullis agent dpop`"
        }
    );
    Ok(())
}

/// `agent dpop`: prints a DPoP proof for one request.
pub fn dpop(
    name: &str,
    creds: &Path,
    method: &str,
    url: &str,
    access_token: Option<&str>,
) -> Result<()> {
    let key = load_agent_key(creds, name)?;
    println!(
        "{}",
        key.sign_dpop_proof(&method.to_ascii_uppercase(), url, access_token, now())?
    );
    Ok(())
}

/// `whoami`: asks the gateway how it sees a credential — the agent's client
/// certificate, or an access token (`--token FILE`, sent with a DPoP proof
/// from the agent's key, or as `Bearer` with the certificate for `--mtls`
/// tokens). Prints the identity and the facts policy receives, or the
/// refusal the gateway gives every request with that credential.
pub async fn whoami(
    state: &StateDir,
    name: &str,
    creds: &Path,
    gateway: Option<String>,
    token_file: Option<&Path>,
    mtls_token: bool,
) -> Result<()> {
    let base = gateway_url(state, gateway)?;
    let url = format!("{base}/.well-known/portcullis/whoami");
    let token = token_file
        .map(|p| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .with_context(|| format!("cannot read the token `{}`", p.display()))
        })
        .transpose()?;
    let with_cert = token.is_none() || mtls_token;
    let http = http_client(creds, name, with_cert)?;
    let mut request = http.get(&url);
    if let Some(token) = &token {
        if mtls_token {
            request = request.header("authorization", format!("Bearer {token}"));
        } else {
            let key = load_agent_key(creds, name)?;
            request = request
                .header("authorization", format!("DPoP {token}"))
                .header(
                    "dpop",
                    key.sign_dpop_proof("GET", &url, Some(token), now())?,
                );
        }
    }
    let response = request.send().await.context("cannot reach the gateway")?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!(
            "the gateway refuses this credential ({status}): {} — {}",
            body["error"]["code"].as_str().unwrap_or("?"),
            body["error"]["message"].as_str().unwrap_or("")
        );
    }
    println!("{}", serde_json::to_string_pretty(&body)?);
    Ok(())
}
