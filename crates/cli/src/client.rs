//! The admin-API client the CLI commands use. When the server says a
//! sensitive action needs a human admin's TOTP code (`mfa_required`) and no
//! `--totp` was given, the client asks for one on the terminal, opens a
//! step-up window with it (`POST /admin/v1/session/step-up`) and sends the
//! action again: the window then covers this credential's next sensitive
//! actions too. Without a terminal it never asks and the error stands.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use crate::AdminArgs;
use crate::state_dir::StateDir;

/// A connection to the admin API.
pub struct AdminClient {
    http: reqwest::Client,
    base: String,
    /// The bearer token; `None` when a client certificate authenticates.
    token: Option<String>,
    /// `X-Portcullis-User` / `X-Portcullis-TOTP` for sensitive actions.
    mfa: Option<(Option<String>, String)>,
    /// The human admin to name when asking for a code interactively.
    mfa_user: Option<String>,
}

/// A refused call: the error to show, and whether the server wanted a TOTP
/// code (so that the terminal may be asked for one).
struct Refused {
    error: anyhow::Error,
    mfa_required: bool,
}

impl Refused {
    fn into_error(self) -> anyhow::Error {
        self.error
    }
}

/// Whether the CLI may ask the person at the terminal.
fn interactive() -> bool {
    use std::io::IsTerminal;
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

/// Asks for a TOTP code: six to eight digits, spaces ignored.
fn prompt_code(input: &mut impl std::io::BufRead, out: &mut impl std::io::Write) -> Result<String> {
    write!(out, "TOTP code: ")?;
    out.flush()?;
    let mut line = String::new();
    input.read_line(&mut line)?;
    let code: String = line.chars().filter(|c| !c.is_whitespace()).collect();
    if !(6..=8).contains(&code.len()) || !code.bytes().all(|b| b.is_ascii_digit()) {
        bail!("a TOTP code is 6 to 8 digits");
    }
    Ok(code)
}

impl AdminClient {
    /// Resolves URL, token and CA from flags, environment and the state directory.
    pub fn from_args(args: &AdminArgs) -> Result<Self> {
        let state = StateDir::new(args.state.state_dir.clone());
        let base = match &args.admin_url {
            Some(url) => url.clone(),
            None => read_trimmed(&state.admin_url()).context(
                "cannot find the admin API URL: is `portcullis serve` running with this --state-dir? (or pass --admin-url)",
            )?,
        };
        // A client certificate, when given, is the credential (no token is
        // sent). Otherwise an explicit file wins over the environment, which
        // wins over the state dir.
        let from_env = std::env::var(crate::ENV_ADMIN_TOKEN)
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        let token = match (&args.admin_cert, &args.admin_token_file, from_env) {
            (Some(_), _, _) => None,
            (None, None, Some(token)) => Some(token),
            (None, file, _) => {
                let path = file.clone().unwrap_or_else(|| state.admin_token());
                Some(read_trimmed(&path).with_context(|| {
                    format!(
                        "cannot read the admin token from `{}` (or set {})",
                        path.display(),
                        crate::ENV_ADMIN_TOKEN
                    )
                })?)
            }
        };
        let ca_path: PathBuf = args.ca_cert.clone().unwrap_or_else(|| state.ca_cert());
        let ca_pem = std::fs::read(&ca_path).with_context(|| {
            format!(
                "cannot read the CA certificate `{}` (or pass --ca-cert)",
                ca_path.display()
            )
        })?;
        let mut roots = rustls::RootCertStore::empty();
        use rustls::pki_types::pem::PemObject;
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&ca_pem) {
            roots.add(cert?)?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
        let tls = match &args.admin_cert {
            Some(cert) => {
                let key = args
                    .admin_key
                    .clone()
                    .unwrap_or_else(|| cert.with_extension("key"));
                let chain = rustls::pki_types::CertificateDer::pem_file_iter(cert)
                    .with_context(|| format!("cannot read `{}`", cert.display()))?
                    .collect::<Result<Vec<_>, _>>()
                    .with_context(|| format!("cannot read `{}`", cert.display()))?;
                let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&key)
                    .with_context(|| format!("cannot read the key `{}`", key.display()))?;
                tls.with_client_auth_cert(chain, key)?
            }
            None => tls.with_no_client_auth(),
        };
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(std::time::Duration::from_secs(30))
            .build()?;
        Ok(AdminClient {
            http,
            base: base.trim_end_matches('/').to_string(),
            token,
            mfa: args
                .totp
                .as_ref()
                .map(|code| (args.user.clone(), code.trim().to_string())),
            mfa_user: args.user.clone(),
        })
    }

    /// Opens a step-up window with `--totp`, or a code asked for on the
    /// terminal.
    pub async fn step_up(&self) -> Result<Value> {
        let (user, code) = match &self.mfa {
            Some((user, code)) => (user.clone(), code.clone()),
            None if interactive() => (
                self.mfa_user(),
                prompt_code(&mut std::io::stdin().lock(), &mut std::io::stderr())?,
            ),
            None => bail!("pass --totp CODE (and --user NAME) to step up"),
        };
        let mut request = self
            .http
            .post(self.url("/session/step-up"))
            .json(&serde_json::json!({}))
            .header("x-portcullis-totp", code);
        if let Some(user) = user {
            request = request.header("x-portcullis-user", user);
        }
        self.send_once(request).await.map_err(|e| e.into_error())
    }

    /// The human admin named by --user or `PORTCULLIS_USER`.
    fn mfa_user(&self) -> Option<String> {
        self.mfa_user.clone()
    }

    /// `GET path`, returning the JSON body.
    pub async fn get(&self, path: &str) -> Result<Value> {
        self.send(self.http.get(self.url(path))).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        self.send(self.http.post(self.url(path)).json(body)).await
    }

    /// `DELETE path`, returning the JSON body.
    pub async fn delete(&self, path: &str) -> Result<Value> {
        self.send(self.http.delete(self.url(path))).await
    }

    /// `GET path`, streaming the body into `out`; returns the response headers.
    pub async fn download(
        &self,
        path: &str,
        out: &mut (impl std::io::Write + ?Sized),
    ) -> Result<reqwest::header::HeaderMap> {
        let mut response = self
            .http
            .get(self.url(path))
            .maybe_bearer(self.token.as_deref())
            .timeout(std::time::Duration::from_secs(3600))
            .send()
            .await
            .with_context(|| format!("cannot reach the admin API at {}", self.base))?;
        if !response.status().is_success() {
            bail!("the admin API answered HTTP {}", response.status().as_u16());
        }
        let headers = response.headers().clone();
        while let Some(chunk) = response.chunk().await? {
            out.write_all(&chunk)?;
        }
        Ok(headers)
    }

    fn url(&self, path: &str) -> String {
        format!("{}/admin/v1{path}", self.base)
    }

    async fn send(&self, mut request: reqwest::RequestBuilder) -> Result<Value> {
        if let Some((user, code)) = &self.mfa {
            if let Some(user) = user {
                request = request.header("x-portcullis-user", user);
            }
            request = request.header("x-portcullis-totp", code);
        }
        let retry = request.try_clone();
        match self.send_once(request).await {
            Ok(body) => Ok(body),
            // Asked for a code we did not have: on a terminal, step up once
            // and send the same request again under the open window.
            Err(refused) if refused.mfa_required && self.mfa.is_none() && interactive() => {
                let Some(retry) = retry else {
                    return Err(refused.into_error());
                };
                eprintln!("{:#}", refused.error);
                self.step_up().await?;
                self.send_once(retry).await.map_err(Refused::into_error)
            }
            Err(refused) => Err(refused.into_error()),
        }
    }

    async fn send_once(&self, request: reqwest::RequestBuilder) -> Result<Value, Refused> {
        let refused = |error| Refused {
            error,
            mfa_required: false,
        };
        let response = request
            .maybe_bearer(self.token.as_deref())
            .send()
            .await
            .with_context(|| format!("cannot reach the admin API at {}", self.base))
            .map_err(refused)?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        let error = &body["error"];
        match (error["code"].as_str(), error["message"].as_str()) {
            (Some(code), Some(message)) => Err(Refused {
                error: anyhow!("{message} ({code}, HTTP {})", status.as_u16()),
                mfa_required: code == "mfa_required",
            }),
            _ => Err(refused(anyhow!(
                "the admin API answered HTTP {}",
                status.as_u16()
            ))),
        }
    }
}

fn read_trimmed(path: &std::path::Path) -> Result<String> {
    Ok(std::fs::read_to_string(path)?.trim().to_string())
}

/// Adds the bearer token, when the credential is one.
trait MaybeBearer {
    fn maybe_bearer(self, token: Option<&str>) -> Self;
}

impl MaybeBearer for reqwest::RequestBuilder {
    fn maybe_bearer(self, token: Option<&str>) -> Self {
        match token {
            Some(token) => self.bearer_auth(token),
            None => self,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_asked_for_and_checked() {
        let mut out = Vec::new();
        let code = prompt_code(&mut "123 456\n".as_bytes(), &mut out).unwrap();
        assert_eq!(code, "123456");
        assert_eq!(out, b"TOTP code: ");
        for bad in ["12\n", "abcdef\n", "\n", "123456789\n"] {
            assert!(
                prompt_code(&mut bad.as_bytes(), &mut Vec::new()).is_err(),
                "{bad}"
            );
        }
    }
}
